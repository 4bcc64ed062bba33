"""CLI: ``inventory``, ``audit`` and ``enforce``.

Exit codes: 0 compliant / success; 1 findings, unverified changes or per-camera errors;
2 configuration error (the ConfigError text, no traceback); 3 runtime failure (state
directory unusable, ...). Progress goes to stderr, reports to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

from gateway.config import Config, ConfigError, add_config_argument, load
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
    p.set_defaults(handler=cmd_enforce)


def _common(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


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
    store = _open_store(config)
    if isinstance(store, int):
        return store
    from gateway.policy import audit, inventory

    progress = None if args.json else _progress
    try:
        if kind == "inventory":
            result: Any = asyncio.run(
                inventory.run_inventory(config, store, timeout=policy.request_timeout)
            )
        elif kind == "audit":
            result = asyncio.run(audit.run_audit(config, store, policy=policy, progress=progress))
        else:
            result = asyncio.run(audit.run_enforce(config, store, policy=policy, progress=progress))
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
    elif kind == "inventory":
        _print_inventory(data)
    else:
        _print_report(data)
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


def _console() -> Any:
    from rich.console import Console

    # Colours only on a terminal; plain text when piped or redirected.
    tty = sys.stdout.isatty()
    return Console(
        force_terminal=tty, no_color=not tty, highlight=False, width=None if tty else 120
    )


def _print_inventory(data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="Camera inventory")
    for column in ("camera", "vendor", "model", "serial", "mac", "firmware", "services on"):
        table.add_column(column)
    for cam in data["cameras"]:
        ident = cam["identity"] or {}
        if cam["error"]:
            table.add_row(
                cam["name"], cam["vendor"], "", "", "", "", f"[magenta]{cam['error']['message']}"
            )
            continue
        firmware = f"{ident.get('firmware', '')} {ident.get('build', '')}".strip()
        table.add_row(
            cam["name"],
            cam["vendor"],
            ident.get("model", ""),
            ident.get("serial", ""),
            ident.get("mac", ""),
            firmware,
            ", ".join(cam["services"]) or "-",
        )
    console = _console()
    console.print(table)
    for cam in data["cameras"]:
        _print_extras(console, cam)


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


def _print_report(data: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    kind = "Enforce" if data["schema"].endswith("enforce") else "Audit"
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
            mark = "[green]ok[/]" if change["verified"] else "[red]NOT VERIFIED[/]"
            console.print(
                f"  set {escape(change['key'])}: {escape(str(change['before']))} -> "
                f"{escape(change['after'])} {mark}"
            )
        if cam["findings"]:
            table = Table(show_header=True, box=None, pad_edge=False, padding=(0, 1))
            for column in ("severity", "id", "finding", "current -> required", "action"):
                table.add_column(column)
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
