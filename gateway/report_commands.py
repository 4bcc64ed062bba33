"""The command line's reports: ``check`` (what a configuration sets up: cameras, streams,
worker processes, the ports to open) and the output of ``status`` (a running gateway's streams
from its admin API), as tables, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from gateway import config as cfgmod
from gateway import fleet, ports, sections
from gateway.cli import EXIT_FINDINGS, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, console
from gateway.workers import worker_plan


def cmd_check(args: argparse.Namespace) -> int:
    if not Path(args.config).is_file():
        print(f"{args.config}: cannot read the file (no such file)", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = fleet.own(sections.load_site(args.config))
    except cfgmod.ConfigError as exc:
        if args.json:
            print(
                json.dumps(
                    {
                        "valid": False,
                        "problems": [
                            {
                                "file": exc.source,
                                "key": k,
                                "message": m,
                                "where": exc.describe(k, m).removesuffix(f": {m}"),
                            }
                            for k, m in exc.problems
                        ],
                    }
                )
            )
        else:
            print(f"{exc}", file=sys.stderr)
            print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return EXIT_FINDINGS
    summary: dict[str, Any] = {
        "valid": True,
        "file": config.source,
        "rtsp": f"rtsp://{config.server.bind}:{config.server.rtsp_port}/",
        **(
            {"rtsps": f"rtsps://{_url_host(config.server.bind)}:{config.server.rtsps_port}/"}
            if config.server.rtsps_port is not None
            else {}
        ),
        "cameras": [
            {
                "name": c.name,
                "vendor": c.vendor,
                "host": c.host,
                "streams": [f"/{c.name}/{s}" for s in c.stream_names()],
                "on_demand": c.on_demand,
                "enabled": c.enabled,
            }
            for c in config.cameras
        ],
    }
    part = fleet.selection(config)
    if part is not None:
        summary["fleet"] = part.to_json()
    plan = worker_plan(config)
    summary["workers"] = plan.count
    summary["workers_setting"] = config.server.workers
    notices = [plan.note] if plan.note else []
    summary["notices"] = notices
    warnings: list[str] = []
    if part is not None and part.warning:
        warnings.append(part.warning)
    if config.admin is not None:
        scheme = "https" if config.admin.tls else "http"
        summary["admin"] = f"{scheme}://{_url_host(config.admin.bind)}:{config.admin.port}/"
        if not config.admin.tls:
            warnings.append(
                "admin.tls = false: the admin API runs over plain HTTP; passwords are only "
                "accepted from loopback (sign-in form and Basic refused from other hosts)"
            )
    summary["warnings"] = warnings
    listening = ports.listeners(config)
    summary["ports"] = [listener.to_json() for listener in listening]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for notice in notices:
        print(f"note: {notice}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    from rich.table import Table

    out = console()
    admin = f", admin on {summary['admin']}" if "admin" in summary else ""
    rtsps = f", RTSPS on port {config.server.rtsps_port}" if "rtsps" in summary else ""
    processes = _workers_text(plan.count, config.server.workers)
    out.print(
        f"[green]{config.source}: valid[/]; {len(config.cameras)} camera(s), {processes}, "
        f"RTSP on {config.server.bind}:{config.server.rtsp_port}{rtsps}{admin}"
    )
    if part is not None:
        out.print(part.summary(), markup=False)
    _print_ports(out, listening)
    if not summary["cameras"]:
        out.print("no [[camera]] yet: add one block per camera", markup=False)
        return EXIT_OK
    table = Table("camera", "vendor", "host", "streams", "on demand", "enabled")
    for cam in summary["cameras"]:
        table.add_row(
            cam["name"],
            cam["vendor"],
            cam["host"],
            " ".join(cam["streams"]),
            "yes" if cam["on_demand"] else "no",
            "yes" if cam["enabled"] else "[yellow]no[/]",
        )
    out.print(table)
    return EXIT_OK


def _workers_text(count: int, setting: int | str) -> str:
    """``2 worker processes (auto)``: the resolved count, and whether it was chosen."""
    text = "1 process" if count == 1 else f"{count} worker processes"
    return f"{text} (workers = {setting})" if setting == cfgmod.WORKERS_AUTO else text


def _print_ports(out: Any, listening: list[ports.Listener]) -> None:
    """The ports table of ``check``: what to open in the firewalls, and from where."""
    from rich.markup import escape
    from rich.table import Table

    table = Table("listens", "proto", "address", "ports", "from", "note", box=None, pad_edge=False)
    for item in listening:
        table.add_row(
            *(escape(v) for v in (item.service, item.protocol, item.address, item.ports)),
            escape(item.side),
            escape(item.note),
        )
    out.print(table)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


async def _status(config: cfgmod.Config, args: argparse.Namespace) -> int:
    import aiohttp

    from gateway.admin.tls import status_client
    from gateway.digest import DigestClient

    assert config.admin is not None
    try:
        base, username, password, ssl_context = status_client(config.admin, config.state_dir)
    except ValueError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = "/api/v1/cameras"
    timeout = aiohttp.ClientTimeout(total=args.timeout)

    async def ask(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | int:
        """The cameras the admin API lists, or the exit code after saying why not."""
        digest = DigestClient(username, password, allow_basic=False)
        try:
            async with session.get(url + path) as response:
                if response.status == 401:
                    digest.handle_challenge(response.headers.getall("WWW-Authenticate", []))
            headers = {"Authorization": digest.authorization("GET", path) or ""}
            async with session.get(url + path, headers=headers) as response:
                if response.status == 401:
                    print(f"{url}: the [admin] credentials were refused", file=sys.stderr)
                    return EXIT_RUNTIME
                if response.status != 200:
                    print(f"{url}{path}: HTTP {response.status}", file=sys.stderr)
                    return EXIT_RUNTIME
                answer: dict[str, Any] = await response.json()
                return answer
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            print(
                f"cannot reach the admin API at {url}: {exc or type(exc).__name__}",
                file=sys.stderr,
            )
            return EXIT_RUNTIME

    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(ssl=ssl_context)
    ) as session:
        first = await ask(session, base)
        if isinstance(first, int):
            return first
    # The admin port answers for every worker process; one that did not answer is named.
    body: dict[str, Any] = {
        "cameras": list(first["cameras"]),
        "workers": int(first.get("worker", {}).get("count", 1)),
    }
    for missing in first.get("unanswered", []):
        print(
            f"worker {missing['worker']} did not answer ({missing['error']}); not shown: "
            + ", ".join(missing["cameras"]),
            file=sys.stderr,
        )
    if first.get("unanswered"):
        return EXIT_RUNTIME
    order = {cam.name: k for k, cam in enumerate(config.cameras)}
    cameras = sorted(body["cameras"], key=lambda cam: order.get(cam["name"], len(order)))
    body["cameras"] = cameras
    # Every stream that should deliver frames does; an idle on-demand stream (nobody
    # watching) and a disabled camera are as they should be.
    down = [
        (f"{cam['name']}/{s['stream']}", s)
        for cam in cameras
        for s in cam["streams"]
        if s.get("should_stream", cam["enabled"]) and s["state"] != "live"
    ]
    part = fleet.selection(config)  # validated (or only [admin] read: None)
    if args.json:
        if part is not None:
            body["fleet"] = part.to_json()
        print(json.dumps(body, indent=2))
        return EXIT_FINDINGS if down else EXIT_OK
    rows = [
        {
            "camera": cam["name"],
            "stream": s["stream"],
            "state": s["state"],
            "codec": s["codec"] or "",
            "size": f"{s['width']}x{s['height']}" if s["width"] else "",
            "bitrate": f"{s['bitrate'] / 1e6:.2f} Mbit/s" if s["bitrate"] is not None else "",
            "clients": str(s["clients"]),
            "fps": f"{s['fps']:g}" if s["fps"] is not None else "",
            "reconnects": str(s["reconnects"]),
            "ingest": _ingest_cell(s),
            "last error": _last_error(s),
        }
        for cam in cameras
        for s in cam["streams"] or [_DISABLED]
    ]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(STATUS_COLUMNS)
        writer.writerows([row[c] for c in STATUS_COLUMNS] for row in rows)
        return EXIT_FINDINGS if down else EXIT_OK
    from rich.markup import escape
    from rich.table import Table

    # The first seven columns fit an 80-column terminal; --wide adds the rest.
    columns = STATUS_COLUMNS if args.wide else STATUS_COLUMNS[:7]
    table = Table(*columns, box=None, pad_edge=False)
    styles = {"live": "green", "down": "red", "idle": "cyan", "disabled": "dim"}
    for row in rows:
        cells = [escape(row[c]) or "-" for c in columns]
        cells[2] = f"[{styles.get(row['state'], 'yellow')}]{cells[2]}[/]"
        table.add_row(*cells)
    out = console(wide=args.wide)
    if part is not None:
        out.print(part.summary(), markup=False)
    out.print(table)
    if body["workers"] > 1:
        out.print(f"{body['workers']} worker processes", markup=False)
    for path, s in down:
        # Under the table, so an 80-column terminal shows why without --wide.
        why = ", ".join(x for x in (s["state"], _last_error(s)) if x)
        out.print(f"[red]not streaming:[/] {escape(path)} ({escape(why)})")
    for cam in cameras:
        for s in cam["streams"]:
            fallback = s.get("ingest_fallback")
            if fallback:
                why = f"{fallback['reason']}: {fallback['detail']}"
                out.print(
                    f"[yellow]on PyAV until the next reload:[/] "
                    f"{escape(cam['name'])}/{escape(s['stream'])} ({escape(why)})"
                )
    return EXIT_FINDINGS if down else EXIT_OK


STATUS_COLUMNS = (
    "camera",
    "stream",
    "state",
    "codec",
    "size",
    "bitrate",
    "clients",
    "fps",
    "reconnects",
    "ingest",
    "last error",
)
# A disabled camera's one row (gateways that list no streams for it).
_DISABLED: dict[str, Any] = {
    "stream": "-",
    "state": "disabled",
    "codec": "",
    "width": 0,
    "height": 0,
    "bitrate": None,
    "clients": 0,
    "fps": None,
    "reconnects": 0,
    "last_error": "",
}


def _ingest_cell(stream: dict[str, Any]) -> str:
    """``native``, ``pyav``, or ``pyav (unsupported_sdp)`` for a stream that fell back."""
    kind = stream.get("ingest") or ""
    fallback = stream.get("ingest_fallback")
    return f"{kind} ({fallback['reason']})" if fallback else kind


def _last_error(stream: dict[str, Any]) -> str:
    """The stream's last error, with when it went down (``since 23:10:05Z: ...``)."""
    error = stream.get("last_error") or ""
    since = stream.get("down_since")
    if since:
        return f"since {since[11:]}: {error}" if error else f"since {since[11:]}"
    return error
