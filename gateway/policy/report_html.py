"""Customer-facing compliance report: one self-contained HTML page from an audit's JSON.

Built from ``AuditReport.to_json()`` (the same data as ``audit --json``), every value
escaped; no scripts, no external resources, prints cleanly.
"""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #e4e4e4;vertical-align:top}
th{background:#f4f4f4}.muted{color:#666}.pill{padding:.1em .5em;border-radius:.8em;color:#fff}
.critical{background:#8b0000}.high{background:#c0392b}.medium{background:#d68910}
.low{background:#2e86c1}.info{background:#7f8c8d}.compliant{background:#1e8449}
.non_compliant{background:#c0392b}.error{background:#6c3483}.accepted{background:#7f8c8d}
code{font-size:.95em}@media print{.pill{border:1px solid #000;color:#000}}
"""


def _pill(text: str, css: str) -> str:
    return f'<span class="pill {escape(css)}">{escape(text.replace("_", " "))}</span>'


def _finding_row(f: dict[str, Any]) -> str:
    links = " ".join(
        f'<a href="{escape(url)}">source {i}</a>' for i, url in enumerate(f.get("sources", []), 1)
    )
    status = f["status"]
    if status == "accepted":
        accepted = f.get("accepted") or {}
        status_html = _pill("accepted risk", "accepted") + (
            f'<div class="muted">{escape(str(accepted.get("reason", "")))}'
            f" (until {escape(str(accepted.get('until', '')))})</div>"
        )
    else:
        status_html = _pill("open", f["severity"])
    change = ""
    if "current" in f:
        change = f"<code>{escape(str(f['current']))}</code>"
        if "desired" in f:
            change += f" &rarr; <code>{escape(str(f['desired']))}</code>"
    kev = " <strong>KEV</strong>" if f.get("kev") else ""
    notes = "".join(f'<div class="muted">{escape(n)}</div>' for n in f.get("notes", []))
    return (
        "<tr>"
        f"<td><code>{escape(f['id'])}</code>{kev}</td>"
        f"<td>{_pill(f['severity'], f['severity'])}</td>"
        f"<td>{escape(f['title'])}{notes}<div class='muted'>{links}</div></td>"
        f"<td>{change}</td>"
        f"<td>{escape(f['action'])}</td>"
        f"<td>{status_html}</td>"
        "</tr>"
    )


def render(report: dict[str, Any], *, title: str = "Camera compliance report") -> str:
    summary = report["summary"]
    counts = summary["open_findings"]
    rows = []
    for cam in report["cameras"]:
        identity = cam.get("identity") or {}
        firmware = cam.get("firmware") or {}
        open_count = sum(1 for f in cam["findings"] if f["status"] == "open")
        rows.append(
            "<tr>"
            f"<td><a href='#cam-{escape(cam['name'])}'>{escape(cam['name'])}</a></td>"
            f"<td>{escape(cam['vendor'])}</td>"
            f"<td>{escape(identity.get('model', ''))}</td>"
            f"<td>{escape(firmware.get('text', ''))}</td>"
            f"<td>{open_count}</td>"
            f"<td>{_pill(cam['status'], cam['status'])}</td>"
            "</tr>"
        )
    sections = []
    for cam in report["cameras"]:
        identity = cam.get("identity") or {}
        firmware = cam.get("firmware") or {}
        body = []
        if cam.get("error"):
            body.append(
                f"<p>{_pill('error', 'error')} {escape(cam['error']['message'])}</p>"
                "<p class='muted'>The camera could not be checked; the findings below, if any,"
                " are from its last successful check.</p>"
            )
        body.append(
            "<table><tr><th>Model</th><th>Serial</th><th>MAC</th><th>Firmware</th>"
            "<th>Services on</th></tr><tr>"
            f"<td>{escape(identity.get('model', '-'))}</td>"
            f"<td>{escape(identity.get('serial', '-'))}</td>"
            f"<td>{escape(identity.get('mac', '-'))}</td>"
            f"<td>{escape(firmware.get('text', '-'))}</td>"
            f"<td>{escape(', '.join(cam.get('services', [])) or 'none')}</td></tr></table>"
        )
        if cam["findings"]:
            body.append(
                "<table><tr><th>Finding</th><th>Severity</th><th>What</th><th>Current"
                " &rarr; required</th><th>Recommended action</th><th>Status</th></tr>"
                + "".join(_finding_row(f) for f in cam["findings"])
                + "</table>"
            )
        elif not cam.get("error"):
            body.append("<p>No findings: the camera complies with the site policy.</p>")
        sections.append(
            f"<h2 id='cam-{escape(cam['name'])}'>{escape(cam['name'])} "
            f"{_pill(cam['status'], cam['status'])}</h2>"
            f"<p class='muted'>{escape(cam['vendor'])} at {escape(cam['host'])}</p>" + "".join(body)
        )
    severity_line = ", ".join(f"{n} {escape(s)}" for s, n in counts.items() if n) or "none"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"<p class='muted'>Generated {escape(report['generated_at'])} by onvif-gateway "
        f"{escape(report['gateway_version'])}. Firmware is never changed by the gateway;"
        " telemetry settings are enforced and re-checked on a schedule.</p>"
        f"<p><strong>{summary['compliant']}</strong> of {summary['cameras']} camera(s) compliant;"
        f" {summary['errors']} could not be checked. Open findings: {severity_line}."
        f" Accepted risks: {summary['accepted_findings']}.</p>"
        "<table><tr><th>Camera</th><th>Vendor</th><th>Model</th><th>Firmware</th>"
        "<th>Open findings</th><th>Status</th></tr>"
        + "".join(rows)
        + "</table>"
        + "".join(sections)
        + "</body></html>\n"
    )
