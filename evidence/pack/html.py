"""index.html for humans: one self-contained page (inline CSS, no scripts, no external assets).

Every value is escaped; the page is rendered from pack.json's data only, so what a person reads and what
a machine reads cannot disagree.
"""

from __future__ import annotations

from html import escape
from typing import Any

NO_EVIDENCE = '<span class="gap">no evidence in this pack</span>'
CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1040px;color:#1b2430;background:#fff}
h1{font-size:1.6em;margin:0 0 .2em}h2{margin-top:1.6em;border-bottom:2px solid #d5dbe3;padding-bottom:.2em}
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{border:1px solid #d5dbe3;padding:.3em .5em;
text-align:left;vertical-align:top}th{background:#eef2f7}code{font-size:.9em;word-break:break-all}
#figures{display:flex;flex-wrap:wrap;gap:.8em}.figure{background:#0b4f8a;color:#fff;padding:.7em 1em;
border-radius:6px;min-width:9em}.figure .n{font-size:1.7em;font-weight:700}.gap{color:#9b1c1c;font-weight:600}
.ok{color:#0f6b2f;font-weight:600}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _figure(number: Any, label: str) -> str:
    return f'<div class="figure"><div class="n">{_e(number)}</div><div>{_e(label)}</div></div>'


def render_index(pack: dict[str, Any]) -> bytes:
    release = pack["release"]
    gaps = pack["gaps"]
    tests = pack.get("tests") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>DORA evidence pack: edgeward {_e(release['version'])}</title><style>{CSS}</style></head><body>",
        f"<h1>DORA evidence pack: edgeward {_e(release['version'])}</h1>",
        f"<p>Build <code>{_e(release['build_id'])}</code>, executable sha256 "
        f"<code>{_e(release['executable_sha256'])}</code>, source <code>{_e(release['source_commit'])}</code>."
        f" Generated {_e(pack['generated_at'])}. Schema <code>{_e(pack['schema'])}</code>.</p>",
        '<div id="figures">',
        _figure(len(pack["files"]), "files in the pack"),
        _figure(len(pack["article_map"]), "DORA articles mapped"),
        _figure(len(gaps), "gaps listed"),
        _figure(pack["register_rows"], "third-party register rows"),
        _figure(f"{tests['passed']}/{tests['tests']}" if tests else "none", "tests passed"),
        _figure(pack["verification"]["result"], "release verification"),
        "</div>",
        "<h2>Article map</h2><table><tr><th>Article</th><th>Requirement</th><th>Evidence</th><th>Gaps</th></tr>",
    ]
    for row in pack["article_map"]:
        evidence = "<br>".join(
            f"{_e(item['evidence'])}: " + ", ".join(f"<code>{_e(f)}</code>" for f in item["files"])
            for item in row["evidence"]
        )
        gap_text = "<br>".join(f'<span class="gap">{_e(g)}</span>' for g in row["gaps"]) or "none"
        parts.append(
            f"<tr><td><b>{_e(row['article'])}</b><br>{_e(row['title'])}</td><td>{_e(row['requirement'])}</td>"
            f"<td>{evidence or NO_EVIDENCE}</td><td>{gap_text}</td></tr>"
        )
    parts.append("</table><h2>Gaps</h2><ul>")
    parts += [f'<li class="gap">{_e(g)}</li>' for g in gaps] or ["<li>none</li>"]
    parts.append("</ul>")
    tls = pack.get("tls") or []
    parts.append("<h2>TLS assessment</h2>")
    if tls:
        parts.append(
            "<table><tr><th>Listener</th><th>Protocols</th><th>Suites</th><th>ALPN (h2, http/1.1 offered)</th>"
            "<th>Client auth</th><th>No client cert refused</th><th>Leaf certificate</th></tr>"
        )
        for row in tls:
            parts.append(
                f"<tr><td>{_e(row['listener'])}</td><td>{_e(', '.join(row['versions']))}</td><td>{_e(row['suites'])}"
                f"</td><td>{_e(row['alpn'])}</td><td>{_e(row['client_auth'])}</td><td>{_e(row['no_cert_refused'])}"
                f"</td><td>{_e(row['leaf'])}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append('<p class="gap">not assessed (gap)</p>')
    parts.append(f"<h2>Release verification</h2><pre>{_e(pack['verification']['summary'])}</pre>")
    changes = pack.get("changes")
    parts.append("<h2>Changes since the previous release</h2>")
    if changes:
        parts.append(
            f"<p>{_e(changes['previous_tag'])} .. <code>{_e(changes['to'])}</code>: {len(changes['commits'])} "
            f"commits; {_e(changes['diffstat'])}</p>"
        )
    else:
        parts.append('<p class="gap">no previous tag given (gap)</p>')
    parts.append("<h2>Files</h2><table><tr><th>File</th><th>SHA-256</th></tr>")
    parts += [f"<tr><td><code>{_e(n)}</code></td><td><code>{_e(d)}</code></td></tr>" for n, d in pack["files"].items()]
    parts.append("</table><p>Verify with <code>evidence verify PACK --key release.pub</code>.</p></body></html>\n")
    return "\n".join(parts).encode("utf-8")
