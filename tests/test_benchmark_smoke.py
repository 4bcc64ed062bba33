"""The benchmark harness, run small: it must keep counting correctly (never timings).

Two simulated cameras at the test profile, two readers per stream, the gateway (and
GStreamer's RTSP server when Debian's gi bindings are there) through ``benchmarks.run``; then
a relay that drops RTP packets and a relay killed mid-window, to show loss and failure are
counted rather than hidden.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from benchmarks import run as bench_run
from benchmarks.harness import CameraFleet, Options, Step, measure
from benchmarks.readers import LatencyHistogram, latency_bin
from benchmarks.relays import (
    REPO_ROOT,
    CameraStream,
    GatewayRelay,
    GStreamerRelay,
    ReaderTarget,
    Relay,
    make_relay,
    python_env,
)

pytestmark = pytest.mark.slow

SMALL = Options(profile="test", duration=2.0, warmup=1.0, late_readers=2, late_timeout=5.0)


def test_run_writes_results_for_gateway_and_gstreamer(tmp_path: Path) -> None:
    gstreamer_missing = GStreamerRelay().available()  # None when it can run here
    relays = "gateway" if gstreamer_missing else "gateway,gstreamer"
    out = tmp_path / "results" / "latest.json"
    argv = ["--profile", "test", "--codecs", "H264", "--shapes", "many"]
    argv += ["--many-cameras", "2", "--many-readers", "2", "--duration", "2", "--warmup", "1"]
    argv += ["--late-readers", "2", "--relays", relays, "--output", str(out)]
    argv += ["--markdown", str(tmp_path / "RESULTS.md"), "--plot", str(tmp_path / "load.png")]
    argv += ["--workdir", str(tmp_path / "work")]
    assert bench_run.main(argv) == 0

    doc = json.loads(out.read_text())
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["pyav"]
    by_relay = {r["relay"]: r for r in doc["results"]}
    assert set(by_relay) == set(relays.split(","))
    for name, result in by_relay.items():
        assert "error" not in result, (name, result.get("error"))
        assert result["readers"] == 4 and result["readers_attached"] == 4, name
        assert result["frames_expected_per_reader"] == 50
        assert result["frames_received_min"] > 0, name  # every reader counted frames
        assert result["relayed_gbit"] > 0 and result["relay_cpu_seconds"] > 0, name
        assert result["peak_rss_mib"] > 0, name
        assert result["latency_samples"] > 0, name  # SEI stamps came through the relay
        assert result["latency_p50_ms"] <= result["latency_p99_ms"], name
        # The headline latency is the kernel's receive time; the reader's own handling comes
        # after it, so every quantile of the "app" latency is at least the kernel one.
        assert result["receive_timestamp"] == "kernel (SO_TIMESTAMPNS)", name
        assert result["latency_app_p50_ms"] >= result["latency_p50_ms"], name
        assert result["latency_app_p99_ms"] >= result["latency_p99_ms"], name
        assert result["ttff_samples"] == 2, (name, result["ttff_errors"])
        # One upstream session per camera, however many readers.
        assert result["upstream_sessions_per_camera_max"] == 1, name
        # The stall probe ran through the 2 s window (1 ms sleeps).
        stalls = result["vcpu_stalls"]
        assert 100 <= stalls["samples"] <= 2000, (name, stalls)
        assert 0 <= stalls["over_20ms"] <= stalls["over_10ms"] <= stalls["over_5ms"], name
        # The relay's run-queue wait was read from schedstat (thread-seconds per second).
        assert 0 <= result["relay_run_wait_share"] < 64, name
        # The load ran below the relay, and in its autogroup where the kernel has them.
        sched = result["scheduling"]
        assert sched["problems"] == [], (name, sched)
        assert [c["policy"] for c in sched["cameras"]] == ["SCHED_IDLE"], name
        assert [r["nice"] for r in sched["readers"]] == [19], name
        groups = {p["autogroup"] for p in (sched["relay"], *sched["cameras"], *sched["readers"])}
        assert len(groups) == 1, (name, sched)
    if "gstreamer" in by_relay:
        (ratio,) = doc["ratios"]
        assert ratio["relay"] == "gstreamer" and ratio["cpu_s_per_gbit"] is not None
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "| many H264 2x2 | gateway |" in markdown
    assert "python3 -m benchmarks.run --profile test" in markdown
    assert "kernel receive timestamp of the reader's socket (SO_TIMESTAMPNS)" in markdown
    assert "readers at nice 19, in the relay's scheduling autogroup" in markdown
    assert (
        "| p99 app ms | reader CPU (cores) | relay threads waiting for a CPU | steal | "
        "vCPU stalls > 10 ms (longest) |"
    ) in markdown


class LossyProxy(Relay):
    """Readers play the cameras through a TCP proxy that drops every ``every``-th RTP packet
    of interleaved channel 0 (video) going to the reader."""

    name = "lossy"

    def __init__(self, every: int) -> None:
        self.every = every
        self.dropped = 0
        self.forwarded = 0
        self.server: asyncio.Server | None = None
        self.upstream: dict[str, CameraStream] = {}

    async def start(self, streams: list[CameraStream], workdir: Path) -> None:
        self.upstream = {s.key: s for s in streams}
        camera = streams[0]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(camera.host, camera.rtsp_port)
            pump_up = asyncio.create_task(self._copy(reader, up_writer))
            try:
                await self._filter(up_reader, writer)
            finally:
                pump_up.cancel()
                up_writer.close()
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)

    async def _copy(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()

    async def _filter(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """RTSP responses pass whole; ``$`` blocks pass except the dropped ones."""
        while True:
            first = await src.read(1)
            if not first:
                return
            if first == b"$":
                header = await src.readexactly(3)
                payload = await src.readexactly(int.from_bytes(header[1:3], "big"))
                if header[0] == 0:
                    self.forwarded += 1
                    if self.forwarded % self.every == 0:
                        self.dropped += 1
                        continue
                dst.write(first + header + payload)
            else:
                head = first + await src.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                dst.write(head + (await src.readexactly(length) if length else b""))
            await dst.drain()

    def target(self, stream: CameraStream) -> ReaderTarget:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        url = f"rtsp://127.0.0.1:{port}{stream.path}"
        return ReaderTarget(stream.key, url, stream.username, stream.password)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


async def test_dropped_packets_are_counted_as_loss(tmp_path: Path) -> None:
    fleet = CameraFleet(1, "H264", "test", 1, tmp_path)
    proxy = LossyProxy(every=25)
    try:
        await fleet.start()
        opts = Options(**{**SMALL.__dict__, "late_readers": 0})
        result = await measure(proxy, fleet, Step("many", "H264", 1, 2), opts, tmp_path)
    finally:
        await fleet.stop()
    assert proxy.dropped > 0
    assert result["readers_attached"] == 2
    assert result["packets_lost"] > 0
    assert result["readers_sustained"] < 2  # a reader with a gap does not count as sustained
    assert result["held"] is False


class KilledGateway(GatewayRelay):
    """The gateway, SIGKILLed half-way through the measured window."""

    def __init__(self, kill_after: float) -> None:
        super().__init__(1)
        self.kill_after = kill_after
        self.killed = asyncio.Event()

    async def start(self, streams: list[CameraStream], workdir: Path) -> None:
        await super().start(streams, workdir)
        assert self.process is not None
        pid = self.process.pid

        def kill() -> None:
            os.killpg(pid, signal.SIGKILL)
            self.killed.set()

        # The fault is the scenario: it happens at a set point of the run, it syncs nothing.
        asyncio.get_running_loop().call_later(self.kill_after, kill)


async def test_killed_relay_fails_the_step(tmp_path: Path) -> None:
    fleet = CameraFleet(1, "H264", "test", 1, tmp_path)
    relay = KilledGateway(kill_after=SMALL.warmup + 6.0)  # attach takes a few seconds
    opts = Options(**{**SMALL.__dict__, "duration": 8.0, "late_readers": 0})
    try:
        await fleet.start()
        result = await measure(relay, fleet, Step("many", "H264", 1, 2), opts, tmp_path)
    finally:
        await fleet.stop()
    assert relay.killed.is_set()
    assert result["held"] is False
    assert result.get("relay_exited") is True
    assert result["reader_errors"], "readers must report the dropped sessions"


def test_latency_histogram_percentiles() -> None:
    hist = LatencyHistogram()
    for us in [100] * 98 + [5_000, 250_000]:
        hist.add(us)
    assert hist.total == 100
    assert hist.percentile(0.5) == 0.15  # the 100-150 us bin, upper edge in ms
    assert hist.percentile(0.99) == 5.05
    assert hist.percentile(1.0) == 251.0
    assert latency_bin(-3) == 0 and latency_bin(123_456) == 123_000
    merged = LatencyHistogram(hist.counts)
    merged.merge(hist)
    assert merged.total == 200 and merged.percentile(0.5) == 0.15


async def test_pathcost_drives_frames_through_the_native_path() -> None:
    """The socket-free cost probe of the ingest -> fan-out path still reaches the sessions
    (it refuses to print a figure otherwise), and gives a positive cost."""
    from benchmarks import pathcost

    assert await pathcost.measure(1, "test") > 0


def test_stall_count_by_threshold() -> None:
    from benchmarks.stalls import StallCount

    count = StallCount()
    for late in (0.02, 4.9, 5.1, 12.0, 25.5, 0.3):
        count.add(late)
    assert count.as_dict() == {
        "samples": 6,
        "max_ms": 25.5,
        "over_5ms": 3,
        "over_10ms": 2,
        "over_20ms": 1,
    }


def test_a_failed_step_is_one_table_row() -> None:
    """A relay's error (often with its stderr's tail) stays on its own row of the table."""
    from benchmarks.report import results_table

    failed = {
        "relay": "gateway",
        "shape": "many",
        "codec": "H264",
        "cameras": 64,
        "readers_per_stream": 4,
        "error": "gateway not ready within 60s; its stderr ends with:\nINFO | camera up\n",
        "held": False,
    }
    head, rule, row = results_table([failed])
    assert row.startswith("| many H264 64x4 | gateway | error: gateway not ready within 60s")
    assert "\n" not in row and row.count("|") == head.count("|") == rule.count("|")


def test_relay_names_say_what_the_gateway_is_configured_with() -> None:
    """Plain ``gateway`` is the default configuration (no ingest or workers line)."""
    expected = {
        "gateway": (None, None),
        "gateway-w2": (None, 2),
        "gateway-native": ("native", None),
        "gateway-pyav": ("pyav", None),
        "gateway-pyav-w2": ("pyav", 2),
        "gateway-native-w2": ("native", 2),
    }
    for name, (ingest, workers) in expected.items():
        relay = make_relay(name)
        assert isinstance(relay, GatewayRelay) and relay.name == name
        assert (relay.ingest, relay.workers) == (ingest, workers)
    for bad in ("gateway-ffmpeg", "gateway-native-pyav", "gateway-w0"):
        with pytest.raises(ValueError, match="gateway\\[-native\\|-pyav\\]\\[-wK\\]"):
            make_relay(bad)


def test_a_gateway_relay_can_run_another_checkout(tmp_path: Path) -> None:
    """``gateway-native@DIR`` runs DIR's gateway (a before/after in one run); DIR must be a
    checkout of it."""
    relay = make_relay(f"gateway-native@{REPO_ROOT}")
    assert isinstance(relay, GatewayRelay) and relay.ingest == "native"
    assert relay.name == f"gateway-native@{REPO_ROOT.name}" and relay.source == REPO_ROOT
    assert python_env(relay.source)["PYTHONPATH"].split(os.pathsep)[0] == str(REPO_ROOT)
    with pytest.raises(ValueError, match="not a checkout of the gateway"):
        make_relay(f"gateway@{tmp_path}")
    with pytest.raises(ValueError, match="not a checkout of the gateway"):
        make_relay(f"gstreamer@{REPO_ROOT}")
