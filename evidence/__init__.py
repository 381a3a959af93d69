"""edgeward evidence: what an operator hands a DORA regulator (audit-trail reports now; evidence packs later)."""

__version__ = "0.1.0"
