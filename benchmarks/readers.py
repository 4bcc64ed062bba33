"""Reader process: many RTSP readers in one uvloop, counting what a relay delivers.

Each reader is a :class:`gateway.rtsp.client.RtspReader` (TCP interleaved, no depacketizing)
that checks RTP sequence continuity and timestamps and counts frames; it also reads the
wall-clock stamp the simulated camera put in every video frame (an SEI message), so
``receive time - stamp`` is the latency from the camera sending the frame to this reader
receiving it through the relay.

The harness drives it with JSON lines on standard input:

1. a job: ``{"streams": [{"key", "url", "username", "password", "readers"}]}``; the process
   attaches every reader and answers ``{"event": "attached", "ok": N, "errors": [...]}``;
2. a window: ``{"start": T0, "end": T1, "late": [{"at": T, "stream": i}], "late_timeout": s}``
   in wall-clock seconds; counters are read at T0 and T1, late readers are attached at their
   ``at`` times (time to first frame), and ``{"event": "result", ...}`` is printed at the end.

End of standard input at any point closes every reader and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.rtsp.client import ReceivedFrame, RtspClientError, RtspReader
from gateway.sim.latency import find_timestamp

# Latency histogram: 50 us bins up to 100 ms, 1 ms bins above (mergeable across processes).
FINE_BIN_US = 50
FINE_LIMIT_US = 100_000
COARSE_BIN_US = 1000
ATTACH_CONCURRENCY = 16


def latency_bin(us: int) -> int:
    """The lower edge (us) of the histogram bin holding ``us``."""
    if us < 0:
        return 0
    if us < FINE_LIMIT_US:
        return us - us % FINE_BIN_US
    return us - us % COARSE_BIN_US


class LatencyHistogram:
    """Counts of latency samples per bin; percentiles answered with bin resolution."""

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})

    def add(self, us: int) -> None:
        key = latency_bin(us)
        self.counts[key] = self.counts.get(key, 0) + 1

    def merge(self, other: LatencyHistogram) -> None:
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentile(self, q: float) -> float | None:
        """The upper edge (ms) of the bin where the ``q`` quantile (0..1) falls."""
        total = self.total
        if not total:
            return None
        rank = q * total
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                width = FINE_BIN_US if key < FINE_LIMIT_US else COARSE_BIN_US
                return (key + width) / 1000
        return (max(self.counts) + COARSE_BIN_US) / 1000


class StampedReader(RtspReader):
    """An RtspReader that also reads the camera's SEI time stamp in every video frame."""

    def __init__(self, *args: Any, latency: LatencyHistogram | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.latency = latency
        self.recording = False

    def _on_rtp(self, track: Any, packet: bytes, now: float) -> None:
        super()._on_rtp(track, packet, now)
        if not self.recording or not track.is_video or len(packet) < 14 or packet[0] & 0x10:
            return
        first = packet[12 + 4 * (packet[0] & 0x0F)]
        if track.codec == "H264":
            nal_type = first & 0x1F
            carries_sei = nal_type == 6 or nal_type == 24  # SEI, or STAP-A holding one
        else:
            nal_type = (first >> 1) & 0x3F
            carries_sei = nal_type == 39 or nal_type == 48  # prefix SEI, or AP holding one
        if carries_sei:
            stamp = find_timestamp(packet)
            if stamp is not None and self.latency is not None:
                self.latency.add((time.time_ns() - stamp) // 1000)


@dataclass
class Counters:
    video_frames: int = 0
    audio_frames: int = 0
    packets: int = 0
    bytes: int = 0
    lost: int = 0
    duplicates: int = 0
    timestamp_backwards: int = 0

    @classmethod
    def read(cls, reader: RtspReader) -> Counters:
        out = cls()
        for track in reader.tracks:
            if track.media == "video":
                out.video_frames += track.frames
            else:
                out.audio_frames += track.frames
            out.packets += track.packets
            out.bytes += track.bytes
            out.lost += track.lost
            out.duplicates += track.duplicates
            out.timestamp_backwards += track.timestamp_backwards
        return out

    def minus(self, other: Counters) -> dict[str, int]:
        return {k: v - getattr(other, k) for k, v in self.__dict__.items()}


@dataclass
class Attached:
    stream: int
    reader: StampedReader
    at_start: Counters = field(default_factory=Counters)
    error: str | None = None
    task: asyncio.Task[None] | None = None

    def watch(self) -> None:
        # Record the session's failure as soon as it happens (a relay dropping us mid-run).
        async def watcher() -> None:
            try:
                await self.reader.run_for(1e9)
            except RtspClientError as exc:
                self.error = str(exc)

        self.task = asyncio.create_task(watcher())


async def attach(
    streams: list[dict[str, Any]], latency: LatencyHistogram
) -> tuple[list[Attached], list[str]]:
    gate = asyncio.Semaphore(ATTACH_CONCURRENCY)
    errors: list[str] = []

    async def one(index: int, spec: dict[str, Any]) -> Attached | None:
        async with gate:
            reader = StampedReader(
                spec["url"], spec.get("username"), spec.get("password"), latency=latency
            )
            try:
                await reader.start()
            except (RtspClientError, OSError) as exc:
                errors.append(f"{spec['key']}: {exc}")
                return None
            attached = Attached(index, reader)
            attached.watch()
            return attached

    jobs = [one(i, s) for i, s in enumerate(streams) for _ in range(int(s["readers"]))]
    done = await asyncio.gather(*jobs)
    return [a for a in done if a is not None], errors


async def late_reader(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Attach, wait for the first complete video keyframe, report PLAY -> keyframe, leave."""
    loop = asyncio.get_running_loop()
    keyframe: asyncio.Future[None] = loop.create_future()
    reader: StampedReader

    def on_frame(frame: ReceivedFrame) -> None:
        if frame.keyframe and not keyframe.done():
            keyframe.set_result(None)

    reader = StampedReader(spec["url"], spec.get("username"), spec.get("password"))
    reader.on_frame = on_frame
    started = loop.time()
    result: dict[str, Any] = {"stream": spec["key"], "first_frame_time": None, "error": None}
    try:
        await reader.start()
        await asyncio.wait_for(keyframe, timeout)
        result["first_frame_time"] = reader.stats.first_frame_time
        result["attach_to_keyframe"] = loop.time() - started
    except (RtspClientError, OSError) as exc:
        result["error"] = str(exc)
    except TimeoutError:
        result["error"] = f"no keyframe within {timeout}s"
    finally:
        await reader.close()
    return result


async def sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def run() -> int:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def next_message() -> dict[str, Any] | None:
        line = await stdin.readline()
        return json.loads(line) if line.strip() else None

    job = await next_message()
    if job is None:
        return 0
    streams: list[dict[str, Any]] = job["streams"]
    latency = LatencyHistogram()
    readers, errors = await attach(streams, latency)
    emit({"event": "attached", "ok": len(readers), "errors": errors[:20]})
    try:
        window = await next_message()
        if window is None:
            return 0
        await sleep_until(window["start"])
        for a in readers:
            a.at_start = Counters.read(a.reader)
            a.reader.recording = True
        cpu_start = cpu_seconds()
        emit({"event": "window_start", "t": time.time()})
        late_jobs = []
        for late in window.get("late", []):

            async def delayed(at: float = late["at"], spec: dict[str, Any] = late) -> Any:
                await sleep_until(at)
                return await late_reader(
                    {**streams[spec["stream"]]}, float(window.get("late_timeout", 5.0))
                )

            late_jobs.append(asyncio.create_task(delayed()))
        await sleep_until(window["end"])
        per_reader = []
        for a in readers:
            a.reader.recording = False
            delta = Counters.read(a.reader).minus(a.at_start)
            per_reader.append({"stream": streams[a.stream]["key"], "error": a.error, **delta})
        cpu = cpu_seconds() - cpu_start
        late_results = await asyncio.gather(*late_jobs)
        emit(
            {
                "event": "result",
                "readers": per_reader,
                "late": late_results,
                "latency_us": {str(k): n for k, n in latency.counts.items()},
                "reader_cpu_seconds": round(cpu, 3),
                "attach_errors": errors,
            }
        )
    finally:
        for a in readers:
            if a.task is not None:
                a.task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(a.reader.close() for a in readers), return_exceptions=True)
    return 0


def main() -> int:
    import uvloop

    return int(uvloop.run(run()))


if __name__ == "__main__":
    sys.exit(main())
