"""CLI: ``inventory``, ``audit`` and ``enforce``.

Exit codes: 0 compliant / success; 1 findings, unverified changes or per-camera errors;
2 configuration error (the ConfigError text, no traceback); 3 runtime failure (state
directory unusable, ...). Progress goes to stderr, reports to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

from gateway.cli import console
from gateway.config import Config, ConfigError, add_config_argument, load
from gateway.config_reader import did_you_mean
from gateway.policy.config import parse_policy
from gateway.store import Store

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inventory",
        help="read model, serial, MAC, firmware and services of every camera",
        description="Read every managed camera and record an inventory snapshot and history.",
    )
    _common(p)
    p.set_defaults(handler=cmd_inventory)

    p = sub.add_parser(
        "audit",
        help="report firmware vulnerabilities and telemetry settings against the policy",
        description="Check every camera against the firmware advisories, the site rules and "
        "the telemetry policy. Changes nothing on the cameras.",
    )
    _common(p)
    p.add_argument("--html", metavar="FILE", help="also write a customer-facing HTML report")
    p.set_defaults(handler=cmd_audit)

    p = sub.add_parser(
        "enforce",
        help="apply the telemetry policy to every camera, verify, and record before/after",
        description="Apply the telemetry policy (cloud/P2P, UPnP, DDNS, NTP, telnet/SSH, "
        "e-mail/FTP), read every change back to verify it and record it in the audit log. "
        "Firmware is never changed.",
    )
    _common(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read the cameras and print the changes enforce would make; write nothing",
    )
    p.set_defaults(handler=cmd_enforce)


def _common(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument(
        "--camera",
        action="append",
        metavar="NAME",
        help="only this camera (repeat for several; default: every camera)",
    )
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the report as JSON")
    form.add_argument("--csv", action="store_true", help="print one CSV row per camera")
    p.add_argument("--wide", action="store_true", help="every column, however wide the terminal")


def _load(path: str) -> tuple[Config, Any] | int:
    try:
        config = load(path)
        return config, parse_policy(config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE


def _open_store(config: Config) -> Store | int:
    try:
        return Store.in_state_dir(config.state_dir)
    except (OSError, sqlite3.Error) as exc:
        print(f"cannot open the state database in {config.state_dir}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _progress(camera: str, message: str) -> None:
    print(f"{camera}: {message}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, kind: str) -> int:
    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    config, policy = loaded
    chosen = args.camera
    known = [c.name for c in config.cameras]
    for name in chosen or ():
        if name not in known:
            print(f"--camera: no camera named {name!r}{did_you_mean(name, known)}", file=sys.stderr)
            return EXIT_USAGE
    store = _open_store(config)
    if isinstance(store, int):
        return store
    from gateway.policy import audit, inventory

    progress = None if args.json or args.csv else _progress
    try:
        if kind == "inventory":
            result: Any = asyncio.run(
                inventory.run_inventory(
                    config, store, timeout=policy.request_timeout, cameras=chosen
                )
            )
        elif kind == "audit":
            result = asyncio.run(
                audit.run_audit(config, store, policy=policy, progress=progress, cameras=chosen)
            )
        else:
            result = asyncio.run(
                audit.run_enforce(
                    config,
                    store,
                    policy=policy,
                    progress=progress,
                    cameras=chosen,
                    dry_run=args.dry_run,
                )
            )
    except (OSError, sqlite3.Error) as exc:
        print(f"{kind} failed: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        store.close()
    data = result.to_json()
    if getattr(args, "html", None):
        from gateway.policy.report_html import render

        try:
            Path(args.html).write_text(render(data), encoding="utf-8")
        except OSError as exc:
            print(f"cannot write {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_RUNTIME
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.csv:
        _print_csv(data, kind)
    elif kind == "inventory":
        _print_inventory(data, args.wide)
    else:
        _print_report(data, args.wide)
    return int(result.exit_code())


def cmd_inventory(args: argparse.Namespace) -> int:
    return _run(args, "inventory")


def cmd_audit(args: argparse.Namespace) -> int:
    return _run(args, "audit")


def cmd_enforce(args: argparse.Namespace) -> int:
    return _run(args, "enforce")


_STYLES = {
    "critical": "bold white on red",
    "high": "bold red",
    "medium": "yellow",
    "low": "cyan",
    "info": "dim",
    "compliant": "green",
    "non_compliant": "red",
    "error": "magenta",
    "accepted": "dim",
}


# Inventory columns: the first four fit an 80-column terminal; --wide (or --csv/--json)
# gives every one.
INVENTORY_COLUMNS = ("camera", "model", "firmware", "mac", "vendor", "serial", "services on")
NARROW_INVENTORY = 4


def _console(wide: bool) -> Any:
    return console(wide=wide)


def _inventory_rows(data: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for cam in data["cameras"]:
        ident = cam["identity"] or {}
        error = (cam["error"] or {}).get("message", "")
        rows.append(
            {
                "camera": cam["name"],
                "model": ident.get("model", ""),
                "firmware": f"{ident.get('firmware', '')} {ident.get('build', '')}".strip(),
                "mac": ident.get("mac", ""),
                "vendor": cam["vendor"],
                "serial": ident.get("serial", ""),
                "services on": ", ".join(cam.get("services") or []),
                "error": error,
            }
        )
    return rows


def _print_inventory(data: dict[str, Any], wide: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    columns = INVENTORY_COLUMNS if wide else INVENTORY_COLUMNS[:NARROW_INVENTORY]
    table = Table(title="Camera inventory", box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in _inventory_rows(data):
        if row["error"]:
            cells = [escape(row["camera"]), f"[magenta]{escape(row['error'])}[/]"]
            table.add_row(*cells, *[""] * (len(columns) - 2))
            continue
        table.add_row(*(escape(row[c]) or "-" for c in columns))
    out = _console(wide)
    out.print(table)
    if not wide:
        out.print("(--wide adds vendor, serial and services; --csv and --json give everything)")
    for cam in data["cameras"]:
        _print_extras(out, cam)


def _print_csv(data: dict[str, Any], kind: str) -> None:
    """One row per camera (inventory) or per finding and change (audit, enforce)."""
    out = csv.writer(sys.stdout, lineterminator="\n")
    if kind == "inventory":
        out.writerow([*INVENTORY_COLUMNS, "error"])
        for row in _inventory_rows(data):
            out.writerow([row[c] for c in (*INVENTORY_COLUMNS, "error")])
        return
    out.writerow(
        ["camera", "status", "kind", "severity", "id", "title", "current", "required", "action"]
    )
    for cam in data["cameras"]:
        if cam["error"]:
            out.writerow([cam["name"], cam["status"], "error", "", "", cam["error"]["message"]])
        for f in cam["findings"]:
            severity = "accepted" if f["status"] == "accepted" else f["severity"]
            out.writerow(
                [
                    cam["name"],
                    cam["status"],
                    "finding",
                    severity,
                    f["id"],
                    f["title"],
                    f.get("current", ""),
                    f.get("desired", ""),
                    f["action"],
                ]
            )
        for change in cam.get("changes", []):
            state = (
                "planned"
                if change.get("planned")
                else ("verified" if change["verified"] else "not verified")
            )
            out.writerow(
                [
                    cam["name"],
                    cam["status"],
                    "change",
                    state,
                    change["key"],
                    "",
                    change["before"] or "",
                    change["after"],
                    change["error"] or "",
                ]
            )


def _print_extras(console: Any, cam: dict[str, Any]) -> None:
    """What the firmware lacks, and the cameras a recorder records."""
    from rich.markup import escape

    missing = cam.get("not_available") or []
    if missing:
        names = [m if isinstance(m, str) else m["setting"] for m in missing]
        console.print(
            f"  {escape(cam['name'])}: not available on this firmware: {escape(', '.join(names))}"
        )
    recorder = cam.get("recorder")
    if recorder:
        console.print(
            f"  {escape(cam['name'])}: recorder for {escape(', '.join(recorder['cameras']))}"
        )
        for channel in recorder["channels"]:
            console.print(
                f"    channel {channel['channel']}: {escape(channel['name'])}"
                f" {escape(channel['address'])} ({escape(channel['protocol'])})"
            )


def _print_report(data: dict[str, Any], wide: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console(wide)
    kind = "Enforce" if data["schema"].endswith("enforce") else "Audit"
    if data.get("dry_run"):
        kind = "Enforce (dry run: nothing written)"
    for cam in data["cameras"]:
        status = cam["status"]
        firmware = (cam["firmware"] or {}).get("text", "?")
        model = (cam["identity"] or {}).get("model", "?")
        console.print(
            f"[bold]{escape(cam['name'])}[/] ({cam['vendor']} {escape(model)}, {escape(firmware)})"
            f" [{_STYLES[status]}]{status.replace('_', '-')}[/]"
        )
        if cam["error"]:
            console.print(f"  [magenta]{escape(cam['error']['message'])}[/]")
        _print_extras(console, cam)
        for change in cam.get("changes", []):
            if change.get("planned"):
                verb, mark = "would set", "[yellow](dry run)[/]"
            else:
                verb = "set"
                mark = "[green]ok[/]" if change["verified"] else "[red]NOT VERIFIED[/]"
            console.print(
                f"  {verb} {escape(change['key'])}: {escape(str(change['before']))} -> "
                f"{escape(change['after'])} {mark}"
            )
        if cam["findings"]:
            table = Table(show_header=True, box=None, pad_edge=False, padding=(0, 1))
            for column in ("severity", "id", "finding", "current -> required", "action"):
                table.add_column(column, overflow="fold")
            for f in cam["findings"]:
                style = _STYLES["accepted"] if f["status"] == "accepted" else _STYLES[f["severity"]]
                label = "accepted" if f["status"] == "accepted" else f["severity"]
                change = ""
                if "current" in f:
                    change = f"{f['current']} -> {f.get('desired', '')}"
                table.add_row(
                    f"[{style}]{label}[/]",
                    escape(f["id"]),
                    escape(f["title"]),
                    escape(change),
                    escape(f["action"]),
                )
            console.print(table)
    s = data["summary"]
    counts = ", ".join(f"{n} {k}" for k, n in s["open_findings"].items() if n) or "no findings"
    console.print(
        f"\n{kind}: {s['compliant']}/{s['cameras']} compliant, {s['non_compliant']} "
        f"non-compliant, {s['errors']} error(s); open: {counts}; accepted: "
        f"{s['accepted_findings']}"
    )
