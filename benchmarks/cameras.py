"""Camera process: N simulated Hikvision cameras stamping every video frame with the time.

Started by the harness as its own process so the relay under test is measured alone::

    python3 -m benchmarks.cameras --count 8 --profile bench --codec H264 --password X

Prints ``{"event": "ready", "cameras": [...]}`` (each with ``main_url``/``sub_url``) once
listening. Then each line ``stats`` on standard input is answered with
``{"event": "stats", "sessions": {"<camera>/<stream>": playing clients}}`` so the harness can
count upstream connections per camera. End of standard input (the harness exiting for any
reason) or SIGTERM stops the cameras, so no camera process outlives a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from dataclasses import replace

PROFILES = ("test", "bench")
CODECS = ("H264", "H265")


def build_fleet(count: int, profile: str, codec: str, password: str) -> object:
    from gateway.sim.runner import SimFleet, default_stream_specs

    specs = default_stream_specs(profile)
    specs = {v: replace(s, main=replace(s.main, codec=codec)) for v, s in specs.items()}
    return SimFleet.build(
        hikvision=count,
        dahua=0,
        host="127.0.0.1",
        username="admin",
        password=password,
        specs=specs,
        timestamp_sei=True,
        # Independent cameras: keyframes out of step, as on a real site (all in step, every
        # relay would face a burst of every camera's keyframe at once each GOP).
        free_running=True,
    )


def prepare(profile: str, codecs: tuple[str, ...]) -> list[str]:
    """Encode (or find in the cache) every clip the runs will loop: never inside a timed run."""
    from gateway.sim.clips import clip_path, load_clip
    from gateway.sim.runner import default_stream_specs

    done = []
    for codec in codecs:
        pair = default_stream_specs(profile)["hikvision"]
        for spec in (replace(pair.main, codec=codec), pair.sub):
            load_clip(spec)
            done.append(str(clip_path(spec)))
    return done


async def serve(args: argparse.Namespace) -> int:
    from gateway.sim.runner import SimFleet

    fleet = build_fleet(args.count, args.profile, args.codec, args.password)
    assert isinstance(fleet, SimFleet)
    try:
        await fleet.start()
    except OSError as exc:
        print(f"cannot start the simulated cameras: {exc}", file=sys.stderr)
        await fleet.stop()
        return 1
    if not args.with_sub:
        # Nobody reads the sub streams in this run: do not spend the machine's CPU on them.
        for cam in fleet.cameras:
            for key, player in cam.players.items():
                if key.startswith("sub"):
                    player.stop()
    print(json.dumps({"event": "ready", "cameras": fleet.describe()}), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while True:
            line = await reader.readline()
            if not line:
                break  # the harness went away
            if line.strip() == b"stats":
                sessions = {
                    f"{cam.device.name}/{key}": len(hub.subscribers)
                    for cam in fleet.cameras
                    for key, hub in cam.hubs.items()
                }
                print(json.dumps({"event": "stats", "sessions": sessions}), flush=True)
        stop.set()

    task = asyncio.create_task(commands())
    await stop.wait()
    task.cancel()
    await fleet.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.cameras", description=__doc__)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--profile", choices=PROFILES, default="bench")
    ap.add_argument("--codec", choices=CODECS, default="H264", help="main stream codec")
    ap.add_argument("--password", required=True)
    ap.add_argument("--with-sub", action="store_true", help="keep the sub streams playing")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be at least 1")
    import uvloop

    return int(uvloop.run(serve(args)))


if __name__ == "__main__":
    sys.exit(main())
