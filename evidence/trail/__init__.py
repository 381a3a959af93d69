"""`evidence trail`: an audit-trail report from the edge's OTLP JSON Lines span files and hash-chained audit files.

Layers, each testable alone:

- `inputs`: which files (rotated siblings, directories), what each holds, their lines (IO);
- `otlp`: one line to tuples (sans-IO decoding of the server's exact format);
- `aggregate` with `sketch` and `incidents`: the bounded single-pass summary (sans-IO, clock-free);
- `report` with `svg`: the summary as deterministic JSON and self-contained HTML;
- `read`: the loop that joins them; `command`: the CLI shell.
"""

from evidence.trail.aggregate import Settings, TrailAggregator
from evidence.trail.read import read_trail
from evidence.trail.report import render_html, render_json

__all__ = ["Settings", "TrailAggregator", "read_trail", "render_html", "render_json"]
