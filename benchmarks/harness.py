"""One measurement (a relay, a set of cameras, M readers per stream) and the ladders of them.

A measurement: start the relay in front of the running cameras, attach the readers (in one
or more reader processes), let the streams settle for ``warmup`` seconds, then read every
counter at the start and the end of a window of ``duration`` seconds: the relay's CPU time
(its whole process tree from /proc), the bytes, frames and RTP sequence gaps each reader saw,
the latency stamps (kernel receive time of the readers' sockets, and when the reader
process handled them), and the time to first keyframe of late readers attached in the window.
Resident memory is sampled over the whole measurement. Nothing here asserts a timing; it only
reports, and :func:`held` says whether a load was carried (every reader attached, no loss,
every reader received its frames in real time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import relays as relays_mod
from benchmarks.procstat import (
    TreeSample,
    load_average,
    load_below_relay,
    machine_cpu_ticks,
    sample_tree,
    scheduling,
    steal_share,
)
from benchmarks.readers import LatencyHistogram
from benchmarks.relays import (
    OWN_PROCESS_GROUP,
    CameraStream,
    Relay,
    camera_preexec,
    die_with_parent,
    python_env,
    reader_preexec,
    stop_process_group,
    wait_ready,
)

log = logging.getLogger("benchmarks")

FPS = 25  # both profiles' video rate
# A reader "sustains" its stream when it got at least this share of the frames due in the
# window (the window's edges can cut one frame on either side).
REALTIME_SHARE = 0.97
RSS_SAMPLE_INTERVAL = 0.25


@dataclass(frozen=True)
class Options:
    profile: str = "bench"
    duration: float = 10.0
    warmup: float = 3.0
    late_readers: int = 4
    late_timeout: float = 5.0
    reader_procs: int = 1
    camera_procs: int = 1
    py_spy: str | None = None  # where to write a py-spy raw profile of the next gateway run
    workdir: Path | None = None
    stall_probe: bool = True  # run benchmarks.stalls through each window


@dataclass(frozen=True)
class Step:
    shape: str  # "fanout" (1 camera, many readers) or "many" (N cameras, few readers)
    codec: str
    cameras: int
    readers_per_stream: int

    @property
    def label(self) -> str:
        return f"{self.shape} {self.codec} {self.cameras}x{self.readers_per_stream}"


# --------------------------------------------------------------------------- cameras


class CameraFleet:
    """Simulated cameras in ``procs`` processes (benchmarks.cameras)."""

    def __init__(self, count: int, codec: str, profile: str, procs: int, workdir: Path) -> None:
        self.count = count
        self.codec = codec
        self.profile = profile
        self.procs_wanted = max(1, min(procs, count))
        self.workdir = workdir
        self.password = os.urandom(8).hex()
        self.processes: list[asyncio.subprocess.Process] = []
        self.streams: list[CameraStream] = []
        # camera key ("cam3") -> (process index, the simulator's own camera name)
        self.names: dict[str, tuple[int, str]] = {}

    async def start(self) -> list[CameraStream]:
        share = [
            self.count // self.procs_wanted + (i < self.count % self.procs_wanted)
            for i in range(self.procs_wanted)
        ]
        for i, n in enumerate(share):
            argv = [sys.executable, "-m", "benchmarks.cameras", "--count", str(n)]
            argv += ["--profile", self.profile, "--codec", self.codec]
            argv += ["--password", self.password]
            stderr = open(self.workdir / f"cameras{i}.stderr.log", "wb")  # noqa: SIM115
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                    env=python_env(),
                    process_group=OWN_PROCESS_GROUP,
                    preexec_fn=camera_preexec,
                )
            finally:
                stderr.close()
            self.processes.append(proc)
            ready = await wait_ready(proc, f"camera process {i}", 120.0)
            for cam in ready["cameras"]:
                key = f"cam{len(self.names) + 1}"
                self.names[key] = (i, cam["name"])
                path = cam["main_url"].split(f":{cam['rtsp_port']}", 1)[1]
                self.streams.append(
                    CameraStream(
                        key=f"{key}/main",
                        camera=key,
                        host=cam["host"],
                        rtsp_port=cam["rtsp_port"],
                        http_port=cam["http_port"],
                        path=path,
                        username=cam["username"],
                        password=self.password,
                        codec=self.codec,
                        audio="PCMU",
                    )
                )
        return self.streams

    async def sessions(self) -> dict[str, int]:
        """Playing upstream sessions per stream key, as each simulated camera counts them."""
        out: dict[str, int] = {}
        for i, proc in enumerate(self.processes):
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"stats\n")
            await proc.stdin.drain()
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), 10.0)
                if not line:
                    raise RuntimeError(f"camera process {i} exited")
                event = json.loads(line)
                if event.get("event") == "stats":
                    break
            for key, (proc_index, name) in self.names.items():
                if proc_index == i:
                    out[f"{key}/main"] = event["sessions"].get(f"{name}/main", 0)
        return out

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                total += sample_tree(proc.pid).cpu_seconds
        return total

    async def stop(self) -> None:
        for proc in self.processes:
            if proc.stdin is not None:
                proc.stdin.close()  # end of input: the process stops its cameras and exits
        for proc in self.processes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10.0)
            await stop_process_group(proc, grace=2.0)
        self.processes.clear()


# --------------------------------------------------------------------------- readers


class ReaderProcess:
    """One ``benchmarks.readers`` process and its JSON-lines conversation."""

    def __init__(self, index: int, workdir: Path) -> None:
        self.index = index
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, jobs: list[dict[str, Any]]) -> None:
        stderr = open(self.workdir / f"readers{self.index}.stderr.log", "wb")  # noqa: SIM115
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.readers",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=python_env(),
                process_group=OWN_PROCESS_GROUP,
                preexec_fn=reader_preexec,
                limit=64 * 1024 * 1024,
            )
        finally:
            stderr.close()
        await self.send({"streams": jobs})

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"reader process {self.index}: no {event!r} in {timeout:g}s")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                continue
            if not line:
                tail = (self.workdir / f"readers{self.index}.stderr.log").read_text(
                    errors="replace"
                )[-2000:]
                raise RuntimeError(f"reader process {self.index} exited before {event!r}: {tail}")
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("event") == event:
                    return message

    async def stop(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 15.0)
            await stop_process_group(self.proc, grace=2.0)


# --------------------------------------------------------------------------- one measurement


@dataclass
class MemoryWatch:
    """Peak resident memory of a process tree, sampled until stopped."""

    pid: int
    peak_rss: int = 0
    hwm: int = 0
    processes: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def sample(self) -> TreeSample | None:
        try:
            tree = sample_tree(self.pid)
        except ProcessLookupError:
            return None
        self.peak_rss = max(self.peak_rss, tree.rss_bytes)
        self.hwm = max(self.hwm, tree.hwm_bytes)
        self.processes = max(self.processes, len(tree.pids))
        return tree

    def start(self) -> None:
        async def loop() -> None:
            while True:
                self.sample()
                await asyncio.sleep(RSS_SAMPLE_INTERVAL)

        self.task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.sample()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of a small sample."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 1)))  # ceil
    return ordered[min(rank, len(ordered)) - 1]


async def measure(
    relay: Relay, fleet: CameraFleet, step: Step, opts: Options, workdir: Path
) -> dict[str, Any]:
    """Run ``relay`` in front of ``fleet`` with the step's readers; return its figures."""
    streams = fleet.streams
    result: dict[str, Any] = {"relay": relay.name, **asdict(step)}
    result["streams"] = len(streams)
    result["readers"] = len(streams) * step.readers_per_stream
    result["load_average"] = [round(x, 2) for x in load_average()]
    readers: list[ReaderProcess] = []
    watch: MemoryWatch | None = None
    profiler: asyncio.subprocess.Process | None = None
    stall_probe: asyncio.subprocess.Process | None = None
    try:
        await relay.start(streams, workdir)
        if relay.pid is not None:
            watch = MemoryWatch(relay.pid)
            watch.start()
        targets = [relay.target(s) for s in streams]
        procs = max(1, min(opts.reader_procs, len(targets)))
        shares: list[list[int]] = [list(range(i, len(targets), procs)) for i in range(procs)]
        for i, share in enumerate(shares):
            reader = ReaderProcess(i, workdir)
            readers.append(reader)
            await reader.start([targets[j].as_job(step.readers_per_stream) for j in share])
        attach_timeout = 60.0 + 0.25 * result["readers"]
        attached = [await r.expect("attached", attach_timeout) for r in readers]
        result["readers_attached"] = sum(a["ok"] for a in attached)
        result["attach_errors"] = [e for a in attached for e in a["errors"]]

        start = time.time() + opts.warmup
        end = start + opts.duration
        # Late readers spread over the window, each on a stream of its own process.
        late_plan: list[list[dict[str, Any]]] = [[] for _ in readers]
        for k in range(opts.late_readers):
            stream = k % len(targets)
            proc = stream % procs
            at = start + (k + 1) * opts.duration / (opts.late_readers + 1)
            late_plan[proc].append({"at": at, "stream": shares[proc].index(stream)})
        for reader, late in zip(readers, late_plan, strict=True):
            await reader.send(
                {"start": start, "end": end, "late": late, "late_timeout": opts.late_timeout}
            )
        if opts.stall_probe:
            # Started now, it begins at the window: its own start-up is not in the window.
            stall_probe = await start_stall_probe(opts.duration, start)
        await asyncio.sleep(max(0.0, start - time.time()))
        relay_start = _sample_relay(relay)
        result["scheduling"] = load_scheduling(relay, fleet, readers)
        cameras_start = fleet.cpu_seconds()
        machine_start = machine_cpu_ticks()
        if opts.py_spy and relay.pid is not None and relay.name.startswith("gateway"):
            profiler = await start_py_spy(relay.pid, opts.duration, Path(opts.py_spy), workdir)
        await asyncio.sleep(opts.duration / 2)
        sessions = await fleet.sessions()
        await asyncio.sleep(max(0.0, end - time.time()))
        relay_end = _sample_relay(relay)
        result["steal_share"] = steal_share(machine_start, machine_cpu_ticks())
        if relay.pid is not None and relay_end is None:
            result["relay_exited"] = True
        cameras_end = fleet.cpu_seconds()
        reports = [
            await r.expect("result", opts.late_timeout + opts.duration + 60.0) for r in readers
        ]
        if profiler is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(profiler.wait(), 30.0)
        result.update(
            summarize(reports, step, opts, relay_start, relay_end, watch, sessions, len(streams))
        )
        result["camera_cpu_seconds"] = round(cameras_end - cameras_start, 3)
        if stall_probe is not None:
            result["vcpu_stalls"] = await read_stall_probe(stall_probe)
    except RuntimeError as exc:
        log.error("%s %s failed: %s", relay.name, step.label, exc)
        result["error"] = str(exc)
    finally:
        for reader in readers:
            await reader.stop()
        if watch is not None:
            await watch.stop()
            result.setdefault("peak_rss_mib", round(watch.peak_rss / 2**20, 1))
        if profiler is not None:
            await stop_process_group(profiler, grace=5.0)
        if stall_probe is not None:
            await stop_process_group(stall_probe, grace=1.0)
        await relay.stop()
    result["held"] = held(result)
    return result


async def start_stall_probe(seconds: float, start_at: float) -> asyncio.subprocess.Process:
    """``benchmarks.stalls`` through the window from ``start_at`` (epoch seconds): how long
    the virtual CPUs stood still."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.stalls",
        "--seconds",
        str(seconds),
        "--start-at",
        repr(start_at),
        "--json",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=python_env(),
        process_group=OWN_PROCESS_GROUP,
        preexec_fn=die_with_parent,
    )


async def read_stall_probe(proc: asyncio.subprocess.Process) -> dict[str, Any] | None:
    """The probe's counts, or None when it gave none (the row then shows "-")."""
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30.0)
        report = json.loads(out.decode().strip().splitlines()[-1])
    except (TimeoutError, ValueError, IndexError):
        return None
    return report if isinstance(report, dict) else None


def summarize(
    reports: list[dict[str, Any]],
    step: Step,
    opts: Options,
    relay_start: TreeSample | None,
    relay_end: TreeSample | None,
    watch: MemoryWatch | None,
    sessions: dict[str, int],
    streams: int,
) -> dict[str, Any]:
    per_reader = [r for rep in reports for r in rep["readers"]]
    late = [x for rep in reports for x in rep["late"]]
    # Headline latency: the kernel's receive time of the reader's socket minus the camera's
    # stamp; "app": when the reader process handled the read (its own scheduling included).
    latency = LatencyHistogram()
    app_latency = LatencyHistogram()
    for rep in reports:
        latency.merge(LatencyHistogram({int(k): n for k, n in rep["latency_us"].items()}))
        app_latency.merge(LatencyHistogram({int(k): n for k, n in rep["latency_app_us"].items()}))
    expected = FPS * opts.duration
    frames = [r["video_frames"] for r in per_reader]
    sustained = [
        r
        for r in per_reader
        if r["error"] is None and r["lost"] == 0 and r["video_frames"] >= REALTIME_SHARE * expected
    ]
    relayed_bits = 8 * sum(r["bytes"] for r in per_reader)
    out: dict[str, Any] = {
        "duration": opts.duration,
        "frames_expected_per_reader": expected,
        "frames_received_min": min(frames) if frames else 0,
        "frames_received_mean": round(statistics.fmean(frames), 1) if frames else 0,
        "readers_sustained": len(sustained),
        "reader_errors": [r["error"] for r in per_reader if r["error"]][:10],
        "packets_lost": sum(r["lost"] for r in per_reader),
        "timestamp_backwards": sum(r["timestamp_backwards"] for r in per_reader),
        "relayed_gbit": round(relayed_bits / 1e9, 4),
        "relayed_mbit_per_s": round(relayed_bits / 1e6 / opts.duration, 1),
        "latency_samples": latency.total,
        "latency_p50_ms": latency.percentile(0.50),
        "latency_p99_ms": latency.percentile(0.99),
        "latency_max_ms": latency.percentile(1.0),
        "latency_app_p50_ms": app_latency.percentile(0.50),
        "latency_app_p99_ms": app_latency.percentile(0.99),
        "receive_timestamp": " / ".join(sorted({rep["receive_timestamp"] for rep in reports})),
        "reader_cpu_seconds": round(sum(rep["reader_cpu_seconds"] for rep in reports), 3),
    }
    ttff = [x["first_frame_time"] for x in late if x["first_frame_time"] is not None]
    out["ttff_samples"] = len(ttff)
    out["ttff_errors"] = [x["error"] for x in late if x["error"]]
    out["ttff_p50_ms"] = _ms(percentile(ttff, 0.50))
    out["ttff_p99_ms"] = _ms(percentile(ttff, 0.99))
    out["ttff_max_ms"] = _ms(max(ttff) if ttff else None)
    counts = list(sessions.values())
    out["upstream_sessions_per_camera_max"] = max(counts) if counts else None
    out["upstream_sessions_per_camera_mean"] = round(statistics.fmean(counts), 2) if counts else 0
    if relay_start is not None and relay_end is not None:
        cpu = relay_end.cpu_seconds - relay_start.cpu_seconds
        out["relay_cpu_seconds"] = round(cpu, 3)
        out["relay_cpu_share"] = round(cpu / opts.duration, 3)  # cores busy
        waited = relay_end.run_wait_seconds - relay_start.run_wait_seconds
        out["relay_run_wait_share"] = round(waited / opts.duration, 3)
        gbit = relayed_bits / 1e9
        out["cpu_s_per_gbit"] = round(cpu / gbit, 4) if gbit else None
    if watch is not None:
        watch.sample()
        out["peak_rss_mib"] = round(watch.peak_rss / 2**20, 1)
        out["rss_per_stream_mib"] = round(watch.peak_rss / 2**20 / streams, 2)
        out["relay_processes"] = watch.processes
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def load_scheduling(
    relay: Relay, fleet: CameraFleet, readers: list[ReaderProcess]
) -> dict[str, Any]:
    """How the relay and the load processes are scheduled, and (with ``--load-priority low``)
    every way the load is not below the relay."""
    try:
        cameras = [scheduling(p.pid) for p in fleet.processes]
        readers_ = [scheduling(r.proc.pid) for r in readers if r.proc is not None]
        # No relay process ("direct"): the harness's own scheduling stands in.
        ours = scheduling(relay.pid if relay.pid is not None else os.getpid())
    except ProcessLookupError as exc:
        return {"error": f"process {exc} exited"}
    out: dict[str, Any] = {"relay": ours, "cameras": cameras, "readers": readers_}
    if relays_mod.LOAD_LOW:
        out["problems"] = load_below_relay(ours, cameras, readers_)
        for problem in out["problems"]:
            log.warning("load not below the relay: %s", problem)
    return out


def _sample_relay(relay: Relay) -> TreeSample | None:
    """The relay's tree now; None when it has no process or its process is gone."""
    if relay.pid is None:
        return None
    try:
        return sample_tree(relay.pid, run_wait=True)
    except ProcessLookupError:
        return None


def held(result: dict[str, Any]) -> bool:
    """Whether the relay carried this load: every reader attached and real time, no loss."""
    return (
        "error" not in result
        and not result.get("relay_exited")
        and result.get("readers_attached") == result.get("readers")
        and result.get("readers_sustained") == result.get("readers")
        and result.get("packets_lost") == 0
        and not result.get("attach_errors")
    )


async def start_py_spy(
    pid: int, duration: float, output: Path, workdir: Path
) -> asyncio.subprocess.Process:
    """py-spy record (raw collapsed stacks) of ``pid`` and its children for ``duration``.

    Idle threads are left out (py-spy's default), so shares are of the samples in which a
    thread was running; time in C (uvloop, FFmpeg) is charged to the Python frame that
    called it. (``--native`` would show the C frames but counts threads blocked in poll and
    futex waits as busy, which hides where the CPU goes.)
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    py_spy = relays_mod.which_py_spy()
    if py_spy is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(int(duration))]
    argv += ["--rate", "100", "--format", "raw", "--subprocesses", "--threads", "--nonblocking"]
    argv += ["-o", str(output)]
    stderr = open(workdir / "py-spy.stderr.log", "wb")  # noqa: SIM115
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            process_group=OWN_PROCESS_GROUP,
            preexec_fn=die_with_parent,
        )
    finally:
        stderr.close()


# --------------------------------------------------------------------------- ladders


async def run_ladder(
    steps: list[Step], relays: list[Relay], opts: Options, on_result: Any = None
) -> list[dict[str, Any]]:
    """Measure every relay at every step, cameras shared within a step.

    Steps of one ladder (same shape and codec) grow the load; a relay that fails to hold a
    step is not measured at the larger steps of that ladder.
    """
    results: list[dict[str, Any]] = []
    failed: set[tuple[str, str, str]] = set()
    base = opts.workdir or Path(tempfile.mkdtemp(prefix="onvif-gw-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    for n, step in enumerate(steps):
        todo = [r for r in relays if (r.name, step.shape, step.codec) not in failed]
        if not todo:
            continue
        workdir = base / f"step{n:02d}"
        workdir.mkdir(exist_ok=True)
        fleet = CameraFleet(step.cameras, step.codec, opts.profile, opts.camera_procs, workdir)
        try:
            await fleet.start()
            for relay in todo:
                relay_dir = workdir / relay.name
                relay_dir.mkdir(exist_ok=True)
                log.info("measuring %s through %s", step.label, relay.name)
                result = await measure(relay, fleet, step, opts, relay_dir)
                results.append(result)
                if on_result is not None:
                    on_result(result)
                if not result["held"]:
                    failed.add((relay.name, step.shape, step.codec))
        finally:
            await fleet.stop()
    return results
