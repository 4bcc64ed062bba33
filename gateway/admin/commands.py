"""CLI: ``passwd`` (a salted hash for an ``[[admin.user]]`` account) and ``audit-log`` (the
administration trail and the camera changes, from the state database); and the certificate
step of ``init``."""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from gateway.cli import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from gateway.config import ADMIN_ROLES, ConfigError, add_config_argument, load
from gateway.files import write_atomically


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "passwd",
        help="hash a password for an [[admin.user]] account",
        description="Read a new password for admin account NAME (asked twice on a terminal, "
        "one line from standard input otherwise, or generated with --generate) and print "
        "the [[admin.user]] block with its salted scrypt hash. With --output the hash goes "
        "to FILE (mode 0600) and the block names it as password_hash_file.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", choices=ADMIN_ROLES, default="viewer", help="default viewer")
    p.add_argument("--output", "-o", metavar="FILE", help="write the hash to FILE")
    p.add_argument("--generate", action="store_true", help="generate a password and print it once")
    p.set_defaults(handler=cmd_passwd)

    p = sub.add_parser(
        "audit-log",
        help="who administered the gateway, and what changed on the cameras",
        description="Print the administration audit trail (sign-ins, failed sign-ins, "
        "reloads, enforce/audit runs, reconnects: account, source address, result) and the "
        "camera changes the gateway made, merged by time, from the state database of FILE.",
    )
    add_config_argument(p)
    p.add_argument("--json", action="store_true", help='print JSON: {"entries": [...]}')
    p.add_argument("--limit", type=int, default=500, help="newest N of each kind (default 500)")
    p.add_argument("--kind", choices=("all", "admin", "camera"), default="all", help="default all")
    p.set_defaults(handler=cmd_audit_log)


def _read_password(generate: bool) -> str | None:
    if generate:
        import secrets

        return secrets.token_urlsafe(18)
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if first != getpass.getpass("Again: "):
            print("the passwords differ", file=sys.stderr)
            return None
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_passwd(args: argparse.Namespace) -> int:
    from gateway.passwords import hash_password

    password = _read_password(args.generate)
    if password is None:
        return EXIT_USAGE
    if len(password) < 8:
        print("the password must have at least 8 characters", file=sys.stderr)
        return EXIT_USAGE
    hashed = hash_password(password)
    lines = ["[[admin.user]]", f"name = {json.dumps(args.name)}", f'role = "{args.role}"']
    if args.output:
        out = Path(args.output)
        write_atomically(out, (hashed + "\n").encode(), mode=0o600)
        lines.append(f"password_hash_file = {json.dumps(str(out.resolve()))}")
    else:
        lines.append(f"password_hash = {json.dumps(hashed)}")
    print("\n".join(lines))
    if args.generate:
        print(f"# generated password (shown once): {password}", file=sys.stderr)
    return EXIT_OK


def cmd_audit_log(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 100_000:
        print("--limit must be between 1 and 100000", file=sys.stderr)
        return EXIT_USAGE
    try:
        loaded = load(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    from gateway.admin.trail import AdminTrail
    from gateway.policy.db import PolicyStore
    from gateway.store import Store

    try:
        store = Store.in_state_dir(loaded.state_dir)
        try:
            entries: list[dict[str, Any]] = []
            if args.kind in ("all", "admin"):
                for e in AdminTrail(store).entries(args.limit):
                    entries.append({"kind": "admin", **e.to_json()})
            if args.kind in ("all", "camera"):
                for c in PolicyStore(store).audit_log(None, args.limit):
                    entries.append({"kind": "camera", **c.to_json()})
        finally:
            store.close()
    except (OSError, sqlite3.Error) as exc:
        print(f"cannot read the state database in {loaded.state_dir}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    entries.sort(key=lambda e: (e["at"], e["kind"], e["id"]))
    if args.json:
        print(json.dumps({"entries": entries}, indent=2))
        return EXIT_OK
    for entry in entries:
        _print_entry(entry)
    if not entries:
        print("no entries", file=sys.stderr)
    return EXIT_OK


def _print_entry(e: dict[str, Any]) -> None:
    when = datetime.datetime.fromtimestamp(e["at"], datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if e["kind"] == "admin":
        target = f" {e['target']}" if e["target"] else ""
        print(
            f"{when}  {e['account']} ({e['role'] or '-'}, {e['method']}) from "
            f"{e['source']}: {e['action']}{target}: {e['result']}"
        )
    else:
        state = "verified" if e["verified"] else "NOT verified"
        print(
            f"{when}  {e['actor']}: {e['camera']} {e['key']}: "
            f"{e['before']!r} -> {e['after']!r} ({state})"
        )
