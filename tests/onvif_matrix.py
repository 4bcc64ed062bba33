"""The ONVIF conformance matrix: results recorded by tests/test_onvif_conformance.py, written
as JSON and Markdown under the session's pytest temporary directory and printed in the
terminal summary (``pytest_terminal_summary`` is re-exported by tests/conftest.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MARKS = {"pass": "pass", "fail": "FAIL", "xfail": "xfail", "n/a": "n/a"}


@dataclass(frozen=True)
class Result:
    client: str
    device: str
    operation: str
    result: str  # pass | fail | xfail | n/a
    detail: str = ""


RESULTS: list[Result] = []


def record(client: str, device: str, operation: str, result: str, detail: str = "") -> None:
    RESULTS.append(Result(client, device, operation, result, detail.replace("\n", " ")[:240]))


def render(results: list[Result]) -> str:
    devices = list(dict.fromkeys(r.device for r in results))
    rows = list(dict.fromkeys((r.client, r.operation) for r in results))
    cell: dict[tuple[str, str, str], str] = {}
    for r in results:
        # A result from a test that could run (e.g. onvif-util in network namespaces) wins
        # over the "n/a" another test recorded for the same cell.
        key = (r.client, r.operation, r.device)
        if cell.get(key) in (None, "n/a"):
            cell[key] = MARKS[r.result]
    lines = [
        "| client | operation | " + " | ".join(devices) + " |",
        "|---|---|" + "---|" * len(devices),
    ]
    for client, operation in rows:
        marks = [cell.get((client, operation, d), "") for d in devices]
        lines.append(f"| {client} | {operation} | " + " | ".join(marks) + " |")
    notes = [r for r in results if r.result in ("fail", "xfail") and r.detail]
    if notes:
        lines.append("")
        lines += [f"- {r.result}: {r.client}, {r.operation}, {r.device}: {r.detail}" for r in notes]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not RESULTS:
        return
    table = render(RESULTS)
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        base = Path(factory.getbasetemp())
        (base / "onvif-conformance.md").write_text(table + "\n", encoding="utf-8")
        (base / "onvif-conformance.json").write_text(
            json.dumps([asdict(r) for r in RESULTS], indent=1), encoding="utf-8"
        )
        terminalreporter.write_line(f"written to {base}/onvif-conformance.{{md,json}}")
    terminalreporter.write_sep("=", "ONVIF conformance matrix")
    for line in table.splitlines():
        terminalreporter.write_line(line)
