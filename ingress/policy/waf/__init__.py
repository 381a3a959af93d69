"""The request firewall: pattern sets matched in one linear pass over normalised request inputs.

`Firewall` turns a config's `[waf]` into engines; `WafEngine.inspect_head`
and `inspect_body` turn a request's plain values into a `Verdict` or None.
"""

from ingress.policy.waf.engine import BODY_METHODS, WafEngine
from ingress.policy.waf.firewall import Firewall
from ingress.policy.waf.patterns import PatternFileError, load_pattern_set
from ingress.policy.waf.verdict import Verdict

__all__ = ["BODY_METHODS", "Firewall", "PatternFileError", "Verdict", "WafEngine", "load_pattern_set"]
