"""``onvif-gateway sim``: serve simulated Hikvision and Dahua cameras."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
from pathlib import Path

from gateway.cli import EXIT_OK, EXIT_RUNTIME
from gateway.files import write_atomically


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sim",
        help="serve simulated Hikvision/Dahua cameras",
        description="Serve simulated cameras with the vendors' RTSP paths, Digest realms, HTTP "
        "APIs (ISAPI, CGI/RPC, ONVIF) and quirks, from clips encoded once and looped at "
        "real-time pace. Prints one JSON line describing the cameras when ready.",
    )
    p.add_argument("--hikvision", type=int, default=1, metavar="N")
    p.add_argument("--dahua", type=int, default=1, metavar="N")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--rtsp-port", type=int, default=0, help="first RTSP port (0: any free)")
    p.add_argument("--http-port", type=int, default=0, help="first HTTP port (0: any free)")
    p.add_argument("--username", default="admin")
    p.add_argument("--password", default=None, help="default: generated and printed")
    p.add_argument(
        "--profile",
        choices=("demo", "test", "bench"),
        default="demo",
        help="stream sizes: demo 720p, test tiny, bench 1080p 4 Mbit/s",
    )
    p.add_argument(
        "--codec", choices=("H264", "H265"), default=None, help="main stream codec for every camera"
    )
    p.add_argument("--model", default=None)
    p.add_argument("--firmware", default=None)
    p.add_argument("--build", default=None)
    p.add_argument("--ptz", action="store_true", help="the first camera has PTZ")
    p.add_argument("--motion-interval", type=float, default=0.0, metavar="SECONDS")
    p.add_argument(
        "--phone-home", action="store_true", help="cameras try to reach their vendors' clouds"
    )
    p.add_argument(
        "--timestamp-sei",
        action="store_true",
        help="stamp every video frame with its send time (latency benchmarks)",
    )
    p.add_argument(
        "--discovery",
        action="store_true",
        help="cameras answer ONVIF WS-Discovery probes (for 'onvif-gateway discover')",
    )
    p.add_argument(
        "--gateway-config",
        metavar="FILE",
        help="also write a gateway configuration fronting these cameras",
    )
    p.set_defaults(handler=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    try:
        import uvloop

        return int(uvloop.run(_sim(args)))
    except ImportError:
        return int(asyncio.run(_sim(args)))


async def _sim(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gateway.sim.runner import SimFleet, default_stream_specs

    specs = default_stream_specs(args.profile)
    if args.codec:
        specs = {v: replace(s, main=replace(s.main, codec=args.codec)) for v, s in specs.items()}
    password = args.password or secrets.token_urlsafe(12)
    overrides = {k: getattr(args, k) for k in ("model", "firmware", "build") if getattr(args, k)}
    fleet = SimFleet.build(
        hikvision=args.hikvision,
        dahua=args.dahua,
        host=args.host,
        username=args.username,
        password=password,
        specs=specs,
        rtsp_port=args.rtsp_port,
        http_port=args.http_port,
        motion_interval=args.motion_interval,
        ptz=args.ptz,
        phone_home=args.phone_home,
        timestamp_sei=args.timestamp_sei,
        discovery=args.discovery,
        overrides=overrides,
    )
    try:
        await fleet.start()
    except OSError as exc:
        print(f"cannot start the simulated cameras: {exc}", file=sys.stderr)
        await fleet.stop()
        return EXIT_RUNTIME
    if args.gateway_config:
        target = Path(args.gateway_config)
        # The state beside the file it belongs to, not in a shared, guessable /tmp path.
        state_dir = target.resolve().parent / f"{target.stem}-state"
        text = fleet.gateway_config(
            bind="127.0.0.1",
            rtsp_port=8554,
            vms_user="vms",
            vms_password=secrets.token_urlsafe(12),
            state_dir=str(state_dir),
            policy=True,
        )
        try:
            # It holds the cameras' and the VMS's passwords: 0600 whatever the umask.
            write_atomically(target, text.encode(), mode=0o600)
        except OSError as exc:
            print(f"cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
            await fleet.stop()
            return EXIT_RUNTIME
    ready = {"event": "ready", "cameras": fleet.describe()}
    if not args.password:
        ready["password"] = password  # generated: the operator needs it once
    print(json.dumps(ready), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await fleet.stop()
    return EXIT_OK
