"""``python3 -m benchmarks.pathcost``: the Python cost of the native ingest -> fan-out path.

No sockets and no other processes, so the figure hardly depends on what else the machine
runs: one loop of a bench-profile camera's clip (1080p25 H.264 4 Mbit/s with SEI stamps, PCMU
audio) are laid out as the TCP-interleaved bytes a camera sends, then fed in 64 KiB reads to
the RTSP reader's protocol object (``gateway.rtsp.client``), through ``NativeIngest`` and the
hub, to four in-memory client sessions doing the TCP delivery bookkeeping of
``ServerSession.deliver`` (their ``write`` only counts bytes). It prints the CPU time per
second of camera video, best of ``--rounds``, and what 64 cameras would cost.

``--profile test`` uses the tiny test clip (the smoke test). ``--source DIR`` imports
``gateway`` from another checkout (e.g. a worktree of an older commit) so two states can be
compared on the same machine in the same minute.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from typing import Any

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=pathcost\r\nt=0 0\r\n"
    b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n"
    b"a=control:trackID=0\r\nm=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=control:trackID=1\r\n"
)
URL = "rtsp://127.0.0.1:1/pathcost"
READ_SIZE = 64 * 1024


class CountingTransport:
    def __init__(self) -> None:
        self.bytes = 0

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)


class MemorySession:
    """The TCP branch of ``ServerSession.deliver``, writing to a counting transport."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.transport = CountingTransport()
        self.channels = {0: 0, 1: 2}
        self.budget = 1 << 30
        self.over_since: float | None = None
        self.bytes_sent = 0
        self.frames_sent = 0

    def deliver(self, frame: Any, now: float) -> None:
        channel = self.channels.get(frame.track)
        if channel is None or self.transport.get_write_buffer_size() > self.budget:
            return
        self.over_since = None
        data = frame.interleaved(channel)
        self.transport.write(data)
        self.bytes_sent += len(data)
        self.hub.stats.bytes_out += len(data)
        self.frames_sent += 1
        self.hub.stats.frames_out += 1

    def deliver_many(self, frames: Any, now: float) -> None:
        parts = []
        for frame in frames:
            channel = self.channels.get(frame.track)
            if channel is not None:
                parts.append(frame.interleaved(channel))
        size = sum(map(len, parts))
        self.transport.write(b"".join(parts))  # one writev in the real session
        self.bytes_sent += size
        self.frames_sent += len(parts)
        self.hub.stats.bytes_out += size
        self.hub.stats.frames_out += len(parts)

    def deliver_rtcp(self, track: int, packet: bytes) -> None:
        pass

    def resync(self) -> None:
        pass

    def close_for(self, reason: str) -> None:
        pass


class Collector(MemorySession):
    """Keeps what a camera would send, as interleaved bytes."""

    def __init__(self, hub: Any) -> None:
        super().__init__(hub)
        self.blobs: list[bytes] = []

    def deliver(self, frame: Any, now: float) -> None:
        self.blobs.append(frame.interleaved(frame.track * 2))


def camera_bytes(profile: str, loops: int = 1) -> tuple[list[bytes], float]:
    """``loops`` loops of a camera's clip (H.264 + PCMU) as they go over TCP, one after the
    other (sequence numbers and timestamps run on, as from a camera), and one loop's duration."""
    from gateway.media.hub import StreamHub
    from gateway.sim.camera import _payloads
    from gateway.sim.clips import load_clip
    from gateway.sim.latency import latency_sei
    from gateway.sim.runner import default_stream_specs

    clip = load_clip(default_stream_specs(profile)["hikvision"].main)
    assert clip.audio is not None
    hub = StreamHub("camera")
    hub.upstream_opened([clip.video, clip.audio])
    collector = Collector(hub)
    hub.subscribe(collector)
    video, audio = _payloads(clip, 0), _payloads(clip, 1)
    events = [(f.pts / 90000, 0, i) for i, f in enumerate(clip.video_frames)]
    events += [(f.pts / clip.audio.clock_rate, 1, i) for i, f in enumerate(clip.audio_frames)]
    audio_duration = clip.duration * clip.audio.clock_rate // 90000
    out = []
    for loop in range(loops):
        for _, track, i in sorted(events):
            if track == 0:
                frame = clip.video_frames[i]
                payloads = [latency_sei("H264"), *video[i]]
                pts = frame.pts + loop * clip.duration
                hub.push_payloads(0, pts, frame.keyframe, payloads, 0.0)
            else:
                sample = clip.audio_frames[i]
                pts = sample.pts + loop * audio_duration
                hub.push_payloads(1, pts, sample.keyframe, audio[i], 0.0)
        out.append(b"".join(collector.blobs))
        collector.blobs.clear()
    return out, clip.duration / 90000


async def measure(rounds: int, profile: str = "bench") -> float:
    """CPU seconds per second of camera stream, best of ``rounds``."""
    from gateway.media.hub import StreamHub
    from gateway.media.native_ingest import NativeIngest

    client = importlib.import_module("gateway.rtsp.client")
    # Each round plays the next loop, so every packet is in sequence as from a real camera.
    streams, seconds = camera_bytes(profile, rounds + 1)
    hub = StreamHub("cam/main")
    ingest = NativeIngest(hub, URL, username="", password="", display_url=URL)
    options: dict[str, Any] = {"on_frame": ingest._on_frame, "depacketize": True}
    names = client.RtspReader.__init__.__code__.co_varnames
    for mode in ("relay_payloads", "video_payloads"):  # its name in older checkouts
        if mode in names:
            options[mode] = True
            break
    if "on_span" in names:
        options["on_span"] = ingest._on_span
    reader = client.RtspReader(URL, **options)
    reader._describe_tracks(SDP, URL + "/")
    # The sans-IO connection holds the channel map from this checkout on.
    connection = getattr(reader, "connection", None)
    channels = reader._channels if connection is None else connection.channels
    for index, track in enumerate(reader._tracks):
        channels[2 * index] = (track, False)
        channels[2 * index + 1] = (track, True)
    if hasattr(hub, "flush"):  # as NativeIngest's session sets it up
        hub.batching = True
        reader.on_batch_end = hub.flush
    params = ingest._select_tracks(reader.codec_params)
    assert params is not None
    hub.upstream_opened(params)
    for _ in range(4):
        hub.subscribe(MemorySession(hub))
    protocol = client._ControlProtocol(reader)
    rounds_reads = [
        [stream[i : i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)] for stream in streams
    ]
    for chunk in rounds_reads[0]:  # warm-up: caches, the hub's GOP
        protocol.data_received(chunk)
    best = float("inf")
    for reads in rounds_reads[1:]:
        started = time.process_time()
        for chunk in reads:
            protocol.data_received(chunk)
        best = min(best, time.process_time() - started)
    if any(track.lost or track.reordered for track in reader.stats.tracks):
        raise SystemExit("the reader saw packets out of sequence: the path measured is not")
    if hub.stats.frames_out == 0:
        raise SystemExit("nothing reached the sessions: the path is broken")
    return best / seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.pathcost", description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--source", help="a checkout to import gateway from")
    ap.add_argument("--profile", choices=("bench", "test"), default="bench")
    args = ap.parse_args(argv)
    if args.source:
        sys.path.insert(0, args.source)
    per_second = asyncio.run(measure(args.rounds, args.profile))
    print(
        f"{per_second * 1000:.2f} ms of CPU per camera-second "
        f"(64 cameras x 4 clients: {per_second * 64:.3f} cores of Python)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
