"""`audit scan`: vulnerability scan of the SBOM's Python components with pip-audit, online or offline.

The release command uses `scan_sbom`, `write_json`, `write_markdown` and `check_gate`.
"""

from __future__ import annotations

from audit.scan.gate import check_gate
from audit.scan.model import ScanReport
from audit.scan.report_json import write_json
from audit.scan.report_markdown import write_markdown
from audit.scan.scan import scan_sbom

__all__ = ["ScanReport", "check_gate", "scan_sbom", "write_json", "write_markdown"]
