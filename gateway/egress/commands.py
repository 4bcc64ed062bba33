"""``onvif-gateway egress render|apply|status|report|serve``.

Exit codes: 0 ok; 1 problems found (table not loaded or incomplete); 2 configuration
error; 3 runtime failure (nft missing, not root, cannot bind, store unwritable).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

from gateway import config as gateway_config
from gateway import fleet
from gateway.egress import nft as nftables

EXIT_OK, EXIT_PROBLEMS, EXIT_CONFIG, EXIT_RUNTIME = 0, 1, 2, 3


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    egress = subparsers.add_parser(
        "egress",
        help="camera network isolation: nftables ruleset, DNS sinkhole, NTP, report",
        description="Isolate the camera network: render, review and apply the nftables "
        "ruleset, read its counters, and report the cameras' phone-home attempts.",
    )
    sub = egress.add_subparsers(dest="egress_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, handler: Callable[[argparse.Namespace], int]) -> Any:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        gateway_config.add_config_argument(parser)
        parser.set_defaults(handler=handler)
        return parser

    render_p = action("render", "print the commented nftables ruleset for review", _render)
    render_p.add_argument(
        "--check", action="store_true", help="also have nft validate it (nft -c; needs root)"
    )
    apply_p = action("apply", "load the ruleset atomically and check it is in place", _apply)
    apply_p.add_argument("--json", action="store_true", help="print the result as JSON")
    _if_configured(apply_p, "the systemd unit applies this way before every start and reload")
    status_p = action("status", "blocked-packet counters per camera (stored as deltas)", _status)
    status_p.add_argument("--json", action="store_true", help="print the counters as JSON")
    _if_configured(status_p, "onvif-gateway-egress-counters.timer reads them this way")
    report_p = action("report", "per camera: blocked connections and DNS phone-home", _report)
    report_form = report_p.add_mutually_exclusive_group()
    report_form.add_argument("--json", action="store_true", help="print the report as JSON")
    report_form.add_argument(
        "--csv", action="store_true", help="one CSV row per blocked destination and DNS name"
    )
    report_p.add_argument(
        "--no-refresh",
        action="store_true",
        help="report from the store only, without reading the live nftables counters",
    )
    serve_p = action("serve", "run the DNS sinkhole and NTP server in the foreground", _serve)
    serve_p.add_argument(
        "--upstream-stratum",
        type=int,
        default=2,
        help="stratum of the gateway's own time source (default 2; answers say one more)",
    )
    serve_p.add_argument("--ntp-upstream", metavar="ADDR", help="address of that time source")
    serve_p.add_argument(
        "--poll-interval", type=float, default=60.0, help="seconds between counter reads (0: off)"
    )


def _if_configured(parser: argparse.ArgumentParser, why: str) -> None:
    parser.add_argument(
        "--if-configured",
        action="store_true",
        help=f"do nothing (exit 0) when the config has no [camera_network]; {why}",
    )


def _unconfigured(args: argparse.Namespace, config: gateway_config.Config) -> bool:
    """True (and said) when ``--if-configured`` was given and there is nothing to do."""
    if args.if_configured and config.camera_network is None:
        print(f"{config.source}: no [camera_network]: nothing to do", file=sys.stderr)
        return True
    return False


def _load_config(args: argparse.Namespace) -> gateway_config.Config | None:
    try:
        # A fleet shard isolates only the cameras it serves (gateway.fleet).
        return fleet.own(gateway_config.load(args.config))
    except gateway_config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _open_store(config: gateway_config.Config) -> Any:
    from gateway.store import Store

    return Store.in_state_dir(config.state_dir)


def _render(args: argparse.Namespace) -> int:
    config = _load_config(args)
    if config is None:
        return EXIT_CONFIG
    try:
        ruleset = nftables.render(config)
    except nftables.EgressConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    for warning in ruleset.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.check:
        try:
            nftables.check(ruleset.text)
        except nftables.NftError as exc:
            print(exc, file=sys.stderr)
            return EXIT_RUNTIME
        print("nft -c: the ruleset is valid", file=sys.stderr)
    sys.stdout.write(ruleset.text)
    return EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    config = _load_config(args)
    if config is None:
        return EXIT_CONFIG
    if _unconfigured(args, config):
        return EXIT_OK
    try:
        ruleset, state = nftables.apply(config)
    except nftables.EgressConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except nftables.NftError as exc:
        print(f"egress apply: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    for warning in ruleset.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    result = {
        "table": f"{nftables.FAMILY} {nftables.TABLE}",
        "handle": state.handle,
        "chains": sorted(state.chains),
        "counters": sorted(state.counters),
        "warnings": ruleset.warnings,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"loaded table {result['table']} (handle {state.handle}): "
            f"{len(state.chains)} chains, {len(state.counters)} counters"
        )
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from gateway.egress.report import refresh

    config = _load_config(args)
    if config is None:
        return EXIT_CONFIG
    if _unconfigured(args, config):
        return EXIT_OK
    try:
        store = _open_store(config)
        result = refresh(config, store)
    except nftables.NftError as exc:
        print(f"egress status: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except (OSError, sqlite3.Error) as exc:
        print(f"egress status: cannot use the store in {config.state_dir}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if not result.table_loaded:
        message = (
            f"table {nftables.FAMILY} {nftables.TABLE} is not loaded: "
            "run `onvif-gateway egress apply`"
        )
        if args.json:
            print(json.dumps({"loaded": False, "counters": [], "problem": message}, indent=2))
        print(message, file=sys.stderr)
        return EXIT_PROBLEMS
    sources, _ = nftables.camera_sources(config)
    names = {s.counter: list(s.cameras) for s in sources}
    rows: list[dict[str, Any]] = [
        {
            "counter": d.counter,
            "cameras": names.get(d.counter, []),
            "source": d.source or None,
            "packets": d.total_packets,
            "new_packets": d.packets,
        }
        for d in result.deltas
    ]
    missing = [c for c in names if c not in {d.counter for d in result.deltas}]
    if args.json:
        print(json.dumps({"loaded": True, "counters": rows, "missing": missing}, indent=2))
    else:
        print(f"{'camera':<24} {'source':<40} {'blocked':>10} {'new':>8}")
        for row in rows:
            label = "+".join(row["cameras"]) or "(unknown sources)"
            source = row["source"] or "-"
            print(f"{label:<24} {source:<40} {row['packets']:>10} {row['new_packets']:>8}")
        for counter in missing:
            print(f"missing counter {counter}: the loaded ruleset is older than the config")
    return EXIT_PROBLEMS if missing else EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from gateway.egress.report import egress_report, refresh

    config = _load_config(args)
    if config is None:
        return EXIT_CONFIG
    try:
        store = _open_store(config)
    except (OSError, sqlite3.Error) as exc:
        print(f"egress report: cannot use the store in {config.state_dir}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    live_note = None
    if not args.no_refresh:
        try:
            if not refresh(config, store).table_loaded:
                live_note = "the ruleset is not loaded; counters are as last stored"
        except nftables.NftError as exc:
            live_note = f"live counters not read ({exc}); showing what is stored"
    report = egress_report(config, store)
    report["note"] = live_note
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    if args.csv:
        _report_csv(report)
        return EXIT_OK
    if live_note:
        print(f"note: {live_note}")
    for camera in report["cameras"]:
        print(
            f"{camera['name']} ({camera['vendor']}, {camera['host']}): "
            f"{camera['blocked_packets']} blocked packets, {camera['dns_queries']} DNS queries "
            f"({camera['dns_phone_home']} to known vendor/telemetry domains)"
        )
        for d in camera["blocked_destinations"]:
            where = d["destination"] + (f":{d['port']}" if d["port"] is not None else "")
            print(f"  blocked {d['protocol']:<5} {where:<45} x{d['packets']}  {d['service'] or ''}")
        for q in camera["dns"]:
            seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(q["last_seen"]))
            print(
                f"  dns     {q['qtype']:<5} {q['name']:<45} x{q['count']}  "
                f"{q['category_label']} (last {seen})"
            )
    unknown = report["unknown"]
    if unknown["blocked_packets"] or unknown["sources"]:
        print(f"unknown sources: {unknown['blocked_packets']} blocked packets")
        for source in unknown["sources"]:
            print(
                f"  {source['source']}: {len(source['blocked_destinations'])} destinations, "
                f"{len(source['dns'])} DNS names"
            )
    return EXIT_OK


def _report_csv(report: dict[str, Any]) -> None:
    if report["note"]:
        print(f"note: {report['note']}", file=sys.stderr)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(
        ["camera", "kind", "protocol", "destination", "port", "count", "label", "last_seen"]
    )
    for camera in report["cameras"]:
        for d in camera["blocked_destinations"]:
            out.writerow(
                [
                    camera["name"],
                    "blocked",
                    d["protocol"],
                    d["destination"],
                    "" if d["port"] is None else d["port"],
                    d["packets"],
                    d["service"] or "",
                    "",
                ]
            )
        for q in camera["dns"]:
            seen = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(q["last_seen"]))
            out.writerow(
                [
                    camera["name"],
                    "dns",
                    q["qtype"],
                    q["name"],
                    "",
                    q["count"],
                    q["category_label"],
                    seen,
                ]
            )


def _serve(args: argparse.Namespace) -> int:
    config = _load_config(args)
    if config is None:
        return EXIT_CONFIG
    if config.camera_network is None:
        print(f"{config.source}: no [camera_network] section: nothing to serve", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(_serve_async(config, args))
    except (OSError, sqlite3.Error, ValueError) as exc:
        print(f"egress serve: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


async def _serve_async(config: gateway_config.Config, args: argparse.Namespace) -> int:
    from gateway.egress.services import start_egress_services

    store = _open_store(config)
    services = await start_egress_services(
        config,
        store,
        upstream_stratum=args.upstream_stratum,
        ntp_upstream=args.ntp_upstream,
        poll_interval=args.poll_interval,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    address = config.camera_network.address if config.camera_network else ""
    parts = []
    if services.dns is not None:
        parts.append(f"dns={address}:{services.dns.port}")
    if services.ntp is not None:
        parts.append(f"ntp={address}:{services.ntp.port}")
    print("egress services ready " + " ".join(parts), flush=True)
    try:
        await stop.wait()
    finally:
        await services.close()
        store.close()
    return EXIT_OK
