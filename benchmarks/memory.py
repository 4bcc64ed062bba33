"""Resident memory of the gateway: its baseline, and what each camera stream adds to it.

``python3 -m benchmarks.memory --cameras 16`` starts simulated cameras (benchmarks.cameras,
the ``bench`` profile: 1080p25 H.264 at 4 Mbit/s, 2 s GOP) and, one after the other, two
gateways from this checkout (``python3 -m gateway run``, one worker process):

1. with no camera: the **baseline**, the process's resident memory (VmRSS) once idle;
2. with the N cameras' main streams ingested (nobody watching): the gateway's RSS over a
   window once every stream is live, and from its ``/metrics`` the bytes each stream's GOP
   cache holds (``onvif_gateway_stream_gop_cache_bytes``: the frames from the last keyframe
   on, as the gateway counts them, sampled through the window; the largest is reported, as
   the cache grows from one keyframe to a whole GOP and starts again).

**Per stream** = (RSS with N streams - baseline) / N, beside the GOP cache's largest size:
what a stream costs beyond the frames it must hold for a new client to start at once. The
target (issue 19) is at most the GOP cache plus 1 MiB. RSS counts every page the process
touched and still holds, Python's and the C libraries' alike; the GOP figure is the payload
the gateway chose to keep, so the difference is the honest overhead.

3. with ``--tracemalloc``, a third run of the same N streams in a process that traces Python
   allocations (``python3 -m benchmarks.memory trace``, the gateway's runtime in-process, not
   its CLI): the top allocation sites after the window, to say where the Python share goes.
   Tracing costs memory of its own, so this run's RSS is not used.

``--markdown FILE`` writes a section for benchmarks/RESULTS.md; ``--output FILE`` the JSON.
``--ingest`` chooses the ingest (``native`` by default; ``pyav`` adds FFmpeg and its reader
threads). ``--profile test`` and two cameras make the smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import CameraFleet
from benchmarks.procstat import machine_description, sample_tree
from benchmarks.relays import GatewayRelay, free_port

MIB = 1024 * 1024
ADMIN_USER = "bench"
SAMPLE_INTERVAL = 0.5
LIVE_TIMEOUT = 90.0
TARGET_OVERHEAD = 1 * MIB  # per stream, beyond its GOP cache (issue 19)


@dataclass
class Phase:
    """One gateway run: its resident memory over the window, and its streams' GOP caches."""

    streams: int
    rss_samples: list[int] = field(default_factory=list)
    gop_max: dict[str, int] = field(default_factory=dict)  # stream -> largest cache seen

    @property
    def rss(self) -> int:
        return int(statistics.median(self.rss_samples)) if self.rss_samples else 0


class MeasuredGateway(GatewayRelay):
    """The benchmarks' gateway relay, with its admin API on loopback (plain HTTP) so its
    ``/metrics`` can be read, and one worker process (memory per process is measured).
    With ``trace``, the process is ``benchmarks.memory trace`` on the same configuration."""

    def __init__(
        self, ingest: str, *, imaging: bool = False, trace: list[str] | None = None
    ) -> None:
        super().__init__(1, ingest)
        self.imaging = imaging
        self.admin_port = 0
        self.admin_password = os.urandom(12).hex()
        self.trace = trace

    async def _spawn(self, argv: list[str], workdir: Path) -> dict[str, Any]:
        self.admin_port = free_port()
        config = workdir / "gateway.toml"
        text = config.read_text()
        admin = (
            f'[admin]\nbind = "127.0.0.1"\nport = {self.admin_port}\ntls = false\n'
            f'username = "{ADMIN_USER}"\npassword = "{self.admin_password}"\n'
        )
        # [admin] goes before the first [[camera]], so it is not read as the camera's table.
        head, sep, cameras = text.partition("[[camera]]")
        if not self.imaging:
            # Imaging forwarding keeps a client of the camera's own ONVIF service: a cost
            # of the camera's ONVIF device, not of its stream (--imaging measures it too).
            cameras = cameras.replace('ptz = "disabled"', 'ptz = "disabled"\nimaging = "disabled"')
        config.write_text(head + admin + sep + cameras)
        if self.trace is not None:
            argv = [sys.executable, "-m", "benchmarks.memory", "trace", "--config", str(config)]
            argv += self.trace
        return await super()._spawn(argv, workdir)

    async def metrics(self) -> dict[tuple[str, str], float]:
        """``(metric, stream) -> value`` of the per-stream series of ``/metrics``."""
        token = base64.b64encode(f"{ADMIN_USER}:{self.admin_password}".encode()).decode()
        request = (
            f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{self.admin_port}\r\n"
            f"Authorization: Basic {token}\r\nConnection: close\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", self.admin_port)
        try:
            writer.write(request.encode())
            raw = await asyncio.wait_for(reader.read(), 10.0)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/metrics answered {head.splitlines()[0]!r}")
        return parse_stream_series(body.decode(errors="replace"))


def parse_stream_series(text: str) -> dict[tuple[str, str], float]:
    """The samples labelled with a camera and a stream, keyed by (metric, camera/stream)."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, _, rest = line.partition("{")
        labels_text, _, value = rest.rpartition("} ")
        labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
        camera, stream = labels.get("camera", "").strip('"'), labels.get("stream", "").strip('"')
        if camera and stream and "state" not in labels and "kind" not in labels:
            with contextlib.suppress(ValueError):
                out[(name, f"{camera}/{stream}")] = float(value)
    return out


async def wait_live(gateway: MeasuredGateway, keys: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        series = await gateway.metrics()
        down = [k for k in keys if series.get(("onvif_gateway_stream_up", k)) != 1.0]
        if not down:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"streams not live after {timeout:g} s: {', '.join(down[:5])}")
        await asyncio.sleep(SAMPLE_INTERVAL)


async def run_phase(streams: list[Any], args: argparse.Namespace, workdir: Path) -> Phase:
    """Start a gateway in front of ``streams``, wait until they are live and ``settle``
    seconds more, then sample its RSS (and the streams' GOP caches) for ``window`` seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    gateway = MeasuredGateway(args.ingest, imaging=args.imaging)
    phase = Phase(streams=len(streams))
    keys = [s.key for s in streams]
    await gateway.start(streams, workdir)
    try:
        assert gateway.pid is not None
        await wait_live(gateway, keys, LIVE_TIMEOUT)
        await asyncio.sleep(args.settle)
        end = time.monotonic() + args.window
        while time.monotonic() < end:
            phase.rss_samples.append(sample_tree(gateway.pid).rss_bytes)
            series = await gateway.metrics()
            for key in keys:
                size = int(series.get(("onvif_gateway_stream_gop_cache_bytes", key), 0))
                phase.gop_max[key] = max(phase.gop_max.get(key, 0), size)
            await asyncio.sleep(SAMPLE_INTERVAL)
    finally:
        await gateway.stop()
    return phase


async def run_trace(
    streams: list[Any], args: argparse.Namespace, workdir: Path
) -> list[dict[str, Any]]:
    """The top allocation sites of a traced gateway run (``trace`` below, a subprocess)."""
    workdir.mkdir(parents=True, exist_ok=True)
    options = ["--settle", str(args.settle), "--window", str(args.window), "--top", str(args.top)]
    relay = MeasuredGateway(args.ingest, imaging=args.imaging, trace=options)
    await relay.start(streams, workdir)
    try:
        assert relay.process is not None and relay.process.stdout is not None
        line = await asyncio.wait_for(
            relay.process.stdout.readline(), LIVE_TIMEOUT + args.settle + args.window
        )
        return list(json.loads(line)["top"])
    finally:
        await relay.stop()


# --------------------------------------------------------------------------- traced run


async def trace_gateway(config_path: str, settle: float, window: float, top: int) -> int:
    """The gateway's runtime under tracemalloc: prints ``ready``, then after the streams
    are live and the window has passed, ``{"top": [...]}`` (allocation sites by size)."""
    from gateway.config import load
    from gateway.runtime import Gateway

    tracemalloc.start(1)
    gateway = Gateway(load(config_path))
    await gateway.start()
    try:
        print(json.dumps({"event": "ready"}), flush=True)
        for cam in gateway.cameras.values():
            for hub in cam.hubs.values():
                await hub.wait_keyframe(LIVE_TIMEOUT)
        await asyncio.sleep(settle + window)
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        stats = snapshot.statistics("lineno")[:top]
        rows = [
            {
                "site": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                "bytes": s.size,
                "blocks": s.count,
            }
            for s in stats
        ]
        total = sum(s.size for s in snapshot.statistics("filename"))
        print(json.dumps({"top": rows, "traced_bytes": total}), flush=True)
    finally:
        await gateway.stop()
    return 0


# --------------------------------------------------------------------------- report


def summarize(
    baseline: Phase, loaded: Phase, trace: list[dict[str, Any]] | None, args: argparse.Namespace
) -> dict[str, Any]:
    streams = max(loaded.streams, 1)
    per_stream = (loaded.rss - baseline.rss) / streams
    gop = [v for v in loaded.gop_max.values() if v > 0]
    gop_mean = statistics.mean(gop) if gop else None
    return {
        "machine": machine_description(),
        "profile": args.profile,
        "codec": args.codec,
        "ingest": args.ingest,
        "imaging_forwarding": args.imaging,
        "cameras": loaded.streams,
        "settle_seconds": args.settle,
        "window_seconds": args.window,
        "baseline_rss_mib": round(baseline.rss / MIB, 1),
        "loaded_rss_mib": round(loaded.rss / MIB, 1),
        "per_stream_rss_mib": round(per_stream / MIB, 2),
        # The gateway's own count; None from a gateway without the metric (older builds).
        "gop_cache_mib": round(gop_mean / MIB, 2) if gop_mean is not None else None,
        "per_stream_over_gop_mib": (
            round((per_stream - gop_mean) / MIB, 2) if gop_mean is not None else None
        ),
        "target_met": (per_stream <= gop_mean + TARGET_OVERHEAD) if gop_mean else None,
        "tracemalloc_top": trace,
    }


def render_markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        "## Memory per stream",
        "",
        f"`python3 -m benchmarks.memory --cameras {result['cameras']} --ingest "
        f"{result['ingest']}` ({result['profile']} profile, {result['codec']}, one worker "
        f"process, nobody watching; {machine.get('cpu_model', '')}, {machine.get('nproc', '')} "
        "cores). RSS is VmRSS of the gateway process (median over the window); the GOP cache "
        "is the largest size the gateway's `onvif_gateway_stream_gop_cache_bytes` showed in "
        "the window, averaged over the streams.",
        "",
        "| cameras | baseline RSS | RSS with streams | per stream | GOP cache per stream "
        "| per stream beyond the GOP cache |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    gop = result["gop_cache_mib"]
    over = result["per_stream_over_gop_mib"]
    lines.append(
        f"| {result['cameras']} | {result['baseline_rss_mib']:.1f} MiB "
        f"| {result['loaded_rss_mib']:.1f} MiB | {result['per_stream_rss_mib']:.2f} MiB "
        f"| {'-' if gop is None else f'{gop:.2f} MiB'} "
        f"| {'-' if over is None else f'{over:+.2f} MiB'} |"
    )
    if result["tracemalloc_top"]:
        lines += [
            "",
            "Largest Python allocation sites with the same streams (tracemalloc, one frame):",
            "",
            "| site | KiB | blocks |",
            "|---|---:|---:|",
        ]
        for row in result["tracemalloc_top"]:
            site = row["site"].replace(str(Path(__file__).resolve().parent.parent) + "/", "")
            lines.append(f"| `{site}` | {row['bytes'] / 1024:.0f} | {row['blocks']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    fleet = CameraFleet(args.cameras, args.codec, args.profile, args.camera_procs, workdir)
    try:
        streams = await fleet.start()
        baseline = await run_phase([], args, workdir / "base")
        loaded = await run_phase(streams, args, workdir / "loaded")
        trace = await run_trace(streams, args, workdir / "trace") if args.tracemalloc else None
    finally:
        await fleet.stop()
    return summarize(baseline, loaded, trace, args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["trace"]:
        tp = argparse.ArgumentParser(prog="python3 -m benchmarks.memory trace")
        tp.add_argument("--config", required=True)
        tp.add_argument("--settle", type=float, default=5.0)
        tp.add_argument("--window", type=float, default=10.0)
        tp.add_argument("--top", type=int, default=15)
        targs = tp.parse_args(argv[1:])
        return asyncio.run(trace_gateway(targs.config, targs.settle, targs.window, targs.top))
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.memory", description=__doc__)
    ap.add_argument("--cameras", type=int, default=16, help="simulated cameras (main streams)")
    ap.add_argument("--profile", choices=("bench", "test"), default="bench")
    ap.add_argument("--codec", choices=("H264", "H265"), default="H264")
    ap.add_argument("--ingest", choices=("auto", "native", "pyav"), default="auto")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after every stream is live")
    ap.add_argument("--window", type=float, default=10.0, help="seconds of sampling")
    ap.add_argument("--camera-procs", type=int, default=1)
    ap.add_argument(
        "--imaging",
        action="store_true",
        help="keep Imaging forwarding on (a client of each camera's ONVIF service)",
    )
    ap.add_argument("--tracemalloc", action="store_true", help="also the top allocation sites")
    ap.add_argument("--top", type=int, default=15, help="allocation sites listed")
    ap.add_argument("--output", help="write the result as JSON here")
    ap.add_argument("--markdown", help="write a RESULTS.md section here ('-': stdout)")
    ap.add_argument("--workdir", help="keep logs and configurations here (else a temp dir)")
    args = ap.parse_args(argv)
    if args.cameras < 1:
        ap.error("--cameras must be at least 1")
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-mem-")))
        result = asyncio.run(measure(args, workdir))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    markdown = render_markdown(result)
    if args.markdown == "-":
        print(markdown)
    elif args.markdown:
        Path(args.markdown).write_text(markdown)
    print(
        f"baseline {result['baseline_rss_mib']:.1f} MiB; {result['cameras']} streams: "
        f"{result['loaded_rss_mib']:.1f} MiB, {result['per_stream_rss_mib']:.2f} MiB per stream "
        f"(GOP cache {result['gop_cache_mib']} MiB)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
