"""Core commands: ``run``, ``check``, ``demo``, ``init``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway import config as cfgmod
from gateway.cli import EXIT_FINDINGS, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE

log = logging.getLogger("gateway")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the gateway",
        description="Run the gateway: ingest every camera stream, serve RTSP and "
        "ONVIF to the VMS network, and the admin API. SIGHUP reloads the "
        "configuration without dropping unaffected streams.",
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser(
        "check",
        help="validate a configuration file",
        description="Validate a configuration file without starting anything. "
        "Exit 0 when valid, 1 with every problem listed otherwise.",
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser(
        "demo",
        help="simulated cameras served through the gateway",
        description="Start one simulated Hikvision and one simulated Dahua camera "
        "and the gateway in front of them, print the URLs and credentials, and "
        "run until Ctrl-C.",
    )
    p.add_argument("--rtsp-port", type=int, default=8554)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--state-dir", default=None, help="default: a temporary directory")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser(
        "init",
        help="write a commented starter configuration",
        description="Write a commented starter configuration with freshly "
        "generated VMS and admin passwords (there are no default passwords).",
    )
    p.add_argument("--output", "-o", default="onvif-gateway.toml", metavar="FILE")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=cmd_init)


def load_config_or_exit(path: str) -> cfgmod.Config | int:
    try:
        return cfgmod.load(path)
    except cfgmod.ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = cfgmod.load(args.config)
    except cfgmod.ConfigError as exc:
        if args.json:
            print(
                json.dumps(
                    {
                        "valid": False,
                        "problems": [
                            {"file": exc.source, "key": k, "message": m} for k, m in exc.problems
                        ],
                    }
                )
            )
        else:
            print(f"{exc}", file=sys.stderr)
            print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return EXIT_FINDINGS
    summary = {
        "valid": True,
        "file": config.source,
        "rtsp": f"rtsp://{config.server.bind}:{config.server.rtsp_port}/",
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
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{config.source}: valid; {len(config.cameras)} camera(s), RTSP on "
            f"{config.server.bind}:{config.server.rtsp_port}"
        )
        for cam in summary["cameras"]:
            print(
                f"  {cam['name']:<20} {cam['vendor']:<10} {cam['host']:<16} "
                f"{' '.join(cam['streams'])}"
            )
    return EXIT_OK


def _event_loop_run(coro: Any) -> int:
    try:
        import uvloop

        return int(uvloop.run(coro))
    except ImportError:
        return int(asyncio.run(coro))


def cmd_run(args: argparse.Namespace) -> int:
    loaded = load_config_or_exit(args.config)
    if isinstance(loaded, int):
        return loaded
    from gateway import log as gwlog

    gwlog.setup(
        json_lines=args.log_json or loaded.log.json, verbose=args.verbose, level=loaded.log.level
    )
    return _event_loop_run(_run(loaded, args.config))


async def _run(config: cfgmod.Config, path: str) -> int:
    from gateway.runtime import Gateway

    gateway = Gateway(config)
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        await gateway.stop()
        return EXIT_RUNTIME
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def reload() -> None:
        try:
            new = cfgmod.load(path)
        except cfgmod.ConfigError as exc:
            log.error("reload refused: configuration invalid", extra={"problems": str(exc)})
            return
        task = asyncio.ensure_future(gateway.reload(new))
        task.add_done_callback(_log_reload_failure)

    loop.add_signal_handler(signal.SIGHUP, reload)
    print(
        json.dumps({"event": "ready", "rtsp_port": gateway.rtsp.port if gateway.rtsp else 0}),
        flush=True,
    )
    await stop.wait()
    log.info("shutting down")
    await gateway.stop()
    return EXIT_OK


def _log_reload_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reload failed", extra={"error": str(task.exception())})


def cmd_init(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() and not args.force:
        print(f"{out} exists; use --force to overwrite", file=sys.stderr)
        return EXIT_USAGE
    text = STARTER_CONFIG.format(
        vms_password=secrets.token_urlsafe(18), admin_password=secrets.token_urlsafe(18)
    )
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(out, 0o600)
    print(
        f"wrote {out} (mode 0600) with generated VMS and admin passwords; "
        f"edit the [[camera]] blocks, then run: onvif-gateway check --config {out}"
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    return _event_loop_run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from gateway.runtime import Gateway
    from gateway.sim.runner import SimFleet, default_stream_specs

    camera_password = secrets.token_urlsafe(12)
    fleet = SimFleet.build(
        hikvision=1,
        dahua=1,
        host="127.0.0.1",
        username="admin",
        password=camera_password,
        specs=default_stream_specs("demo"),
        motion_interval=20.0,
        ptz=True,
    )
    print("Preparing simulated cameras (clips are encoded once and cached)...", flush=True)
    await fleet.start()
    vms_password = secrets.token_urlsafe(12)
    admin_password = secrets.token_urlsafe(12)
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="onvif-gateway-demo-")
    text = fleet.gateway_config(
        bind=args.bind,
        rtsp_port=args.rtsp_port,
        vms_user="vms",
        vms_password=vms_password,
        admin_password=admin_password,
        state_dir=state_dir,
    )
    config = cfgmod.loads(text, source="<demo>")
    gateway = Gateway(config)
    try:
        await gateway.start()
    except OSError as exc:
        print(f"cannot start the gateway: {exc}", file=sys.stderr)
        await fleet.stop()
        return EXIT_RUNTIME
    assert gateway.rtsp is not None
    host = args.bind
    lines = [
        "",
        "onvif-gateway demo is running. Press Ctrl-C to stop.",
        "",
        f"VMS credentials:   user 'vms'  password '{vms_password}'",
    ]
    if config.admin is not None:
        lines.append(
            f"Dashboard:         http://{host}:{config.admin.port}/  "
            f"(user 'admin' password '{admin_password}')"
        )
    lines.append("RTSP streams (through the gateway):")
    for cam in config.cameras:
        for stream in cam.stream_names():
            lines.append(
                f"  rtsp://vms:{vms_password}@{host}:{gateway.rtsp.port}/{cam.name}/{stream}"
            )
    for i, cam in enumerate(config.cameras):
        port = cam.onvif_port or config.server.onvif_base_port + i
        lines.append(f"ONVIF device {cam.name}: http://{host}:{port}/onvif/device_service")
    lines += [
        "",
        f"Try: ffplay -rtsp_transport tcp rtsp://vms:{vms_password}@{host}:"
        f"{gateway.rtsp.port}/{config.cameras[0].name}/main",
        "",
    ]
    print("\n".join(lines), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await gateway.stop()
    await fleet.stop()
    return EXIT_OK


STARTER_CONFIG = """\
# onvif-gateway configuration. Validate with: onvif-gateway check --config THIS_FILE
# Passwords below were generated by 'onvif-gateway init'; keep this file mode 0600.
# Any password may instead be given as password_env = "VAR" or password_file = "/path".

# Where the inventory, findings, audit log and egress records are kept (SQLite).
state_dir = "/var/lib/onvif-gateway"

[server]
bind = "127.0.0.1"          # the gateway's address on the VMS network
rtsp_port = 8554            # streams: rtsp://HOST:8554/<camera>/main and /<camera>/sub
onvif_base_port = 8000      # camera k (0-based) is ONVIF device http://HOST:8000+k/
# session_timeout = 60      # seconds an idle UDP client session is kept
# client_send_budget = 4194304   # bytes a slow client may lag before skipping to a keyframe
# client_stall_timeout = 10.0    # seconds a client may stay over budget before it is dropped

[vms]                       # the account VMSes use; never a camera's own credentials
username = "vms"
password = "{vms_password}"
# allow_basic = false       # RTSP Basic auth for old clients (Digest is always offered)

[admin]                     # admin API, dashboard and /metrics
bind = "127.0.0.1"
port = 8080
username = "admin"
password = "{admin_password}"

# [camera_network]          # egress isolation: see 'onvif-gateway egress --help'
# interface = "eth1"
# address = "192.168.50.1"
# subnets = ["192.168.50.0/24"]
# dns_sinkhole = true
# ntp_server = true
# allow = []

# One block per camera. The stream paths are /<name>/main and /<name>/sub.
[[camera]]
name = "lobby"
vendor = "hikvision"        # hikvision | dahua | generic
host = "192.168.50.10"
rtsp_port = 554
http_port = 80              # the camera's web/ISAPI/CGI/ONVIF port
username = "admin"
password_env = "LOBBY_CAMERA_PASSWORD"
channel = 1                 # NVR channel (Hikvision 101/102, Dahua channel=1&subtype=0/1)
# main_url = "rtsp://..."   # override the vendor template (generic cameras, odd firmware)
# sub_url = "rtsp://..."
# on_demand = false         # true: connect upstream only while a VMS client watches
# transport = "tcp"         # or "udp"
# ptz = "enabled"           # enabled | no-presets | disabled
"""
