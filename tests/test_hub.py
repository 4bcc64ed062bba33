"""The fan-out hub on its own: RTP identity across reconnects, GOP cache, codec changes."""

from __future__ import annotations

import asyncio
import struct

import pytest

from gateway.codecs.base import CodecParams
from gateway.media.hub import Frame, StreamHub
from gateway.media.inbox import (
    INBOX_DEFAULT_BYTES,
    INBOX_MAX_BYTES,
    INBOX_MIN_BYTES,
    FrameInbox,
    inbox_budget,
)

SPS = bytes.fromhex("6764000dacb40a0fd080000003008000001971300186a000d7249000")
PPS = bytes.fromhex("68ef3cb0")
H264 = CodecParams(
    name="H264", media="video", clock_rate=90000, width=320, height=240, parameter_sets=(SPS, PPS)
)
H265 = CodecParams(name="H265", media="video", clock_rate=90000)
PCMU = CodecParams(name="PCMU", media="audio", clock_rate=8000)


class Recorder:
    """A subscriber that keeps what it was given (the RTSP session's interface)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.batches: list[int] = []
        self.rtcp: list[tuple[int, bytes]] = []
        self.resyncs = 0
        self.closed: str | None = None

    def deliver(self, frame: Frame, now: float) -> None:
        self.frames.append(frame)

    def deliver_many(self, frames: list[Frame], now: float) -> None:
        self.batches.append(len(frames))
        self.frames.extend(frames)

    def deliver_rtcp(self, track: int, packet: bytes) -> None:
        self.rtcp.append((track, packet))

    def resync(self) -> None:
        self.resyncs += 1

    def close_for(self, reason: str) -> None:
        self.closed = reason


def access_unit(keyframe: bool, size: int = 3000) -> bytes:
    slice_nal = (b"\x65" if keyframe else b"\x41") + bytes(range(256)) * (size // 256)
    prefix = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x00\x01" + PPS if keyframe else b""
    return prefix + b"\x00\x00\x00\x01" + slice_nal


def rtp_fields(frame: Frame) -> list[tuple[int, int, int, bool]]:
    out = []
    for packet in frame.packets():
        b1, seq, ts, ssrc = struct.unpack("!xBHII", bytes(packet[:12]))
        out.append((seq, ts, ssrc, bool(b1 & 0x80)))
    return out


def make_hub() -> StreamHub:
    hub = StreamHub("cam/main")
    hub.upstream_opened([H264, PCMU])
    return hub


def test_frames_are_stamped_once_with_continuous_sequence_numbers() -> None:
    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub)
    for i in range(10):
        hub.push(0, 1000 + i * 3600, i % 5 == 0, access_unit(i % 5 == 0), arrival=i / 25)
    seqs = [seq for f in sub.frames for seq, *_ in rtp_fields(f)]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    for frame in sub.frames:
        fields = rtp_fields(frame)
        assert {ts for _, ts, _, _ in fields} == {frame.timestamp}
        assert [m for *_, m in fields] == [False] * (len(fields) - 1) + [True]
    # Timestamps start at zero offset and advance by the source's frame spacing.
    assert [f.timestamp for f in sub.frames[:3]] == [0, 3600, 7200]


def test_interleaved_blob_is_shared_and_rebuilt_only_for_other_channels() -> None:
    hub = make_hub()
    a, b = Recorder(), Recorder()
    hub.subscribe(a)
    hub.subscribe(b)
    hub.push(0, 0, True, access_unit(True, 6000), arrival=0.0)
    frame = a.frames[0]
    assert b.frames[0] is frame
    assert frame.interleaved(0) is frame.blob
    other = frame.interleaved(4)
    assert frame.interleaved(4) is other
    assert other[1] == 4 and other[4:] != b"" and len(other) == len(frame.blob)
    # Every '$' header of the other layout names channel 4, payloads untouched.
    pos = 0
    for packet in frame.packets():
        length = len(packet)
        assert other[pos] == 0x24 and other[pos + 1] == 4
        assert other[pos + 2 : pos + 4] == length.to_bytes(2, "big")
        assert other[pos + 4 : pos + 4 + length] == packet
        pos += 4 + length
    assert pos == len(other) and frame.packet_count > 1


def test_gop_cache_starts_at_the_latest_keyframe() -> None:
    hub = make_hub()
    hub.push(0, 0, False, access_unit(False), arrival=0.0)  # nothing to start from yet
    assert hub.gop == []
    for i in range(1, 8):
        hub.push(0, i * 3600, i in (2, 6), access_unit(i in (2, 6)), arrival=i / 25)
    hub.push(1, 100, False, b"\xff" * 160, arrival=0.3)
    gop = hub.subscribe(Recorder())
    # Nothing before the first keyframe is stamped: the outgoing clock starts there.
    assert gop[0].keyframe and gop[0].timestamp == (6 - 2) * 3600
    assert [f.track for f in gop] == [0, 0, 1]
    info = hub.rtp_info(gop)
    assert info[0] == (gop[0].first_seq, gop[0].timestamp)
    assert info[1] == (gop[2].first_seq, gop[2].timestamp)


def test_gop_cache_is_bounded() -> None:
    hub = StreamHub("cam/main", gop_cache_bytes=20_000)
    hub.upstream_opened([H264])
    hub.push(0, 0, True, access_unit(True, 6000), arrival=0.0)
    for i in range(1, 10):
        hub.push(0, i * 3600, False, access_unit(False, 6000), arrival=i / 25)
    assert hub.gop == []  # over budget: new clients wait for the next keyframe instead


def test_reconnect_keeps_rtp_identity_and_resyncs_clients() -> None:
    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub)
    hub.push(0, 500, True, access_unit(True), arrival=10.0)
    hub.push(0, 4100, False, access_unit(False), arrival=10.04)
    last = sub.frames[-1]
    ssrc = rtp_fields(last)[0][2]
    next_seq = (rtp_fields(last)[-1][0] + 1) & 0xFFFF
    hub.upstream_failed("connection reset")
    assert hub.state == "down" and hub.gop == []
    hub.upstream_opened([H264, PCMU])  # new session: source timestamps restart near zero
    assert sub.resyncs == 1 and sub.closed is None
    # The new session starts mid-GOP: those frames are dropped before they take a number.
    delivered = len(sub.frames)
    hub.push(0, 3, False, access_unit(False), arrival=12.0)
    hub.push(1, 3, False, b"\xff" * 160, arrival=12.0)
    assert len(sub.frames) == delivered
    hub.push(0, 7, True, access_unit(True), arrival=12.04)
    first = rtp_fields(sub.frames[-1])[0]
    assert first[0] == next_seq
    assert first[2] == ssrc
    # The outgoing clock advanced by the 2 s wall-clock gap, not jumped back.
    assert sub.frames[-1].timestamp == (last.timestamp + 2 * 90000) & 0xFFFFFFFF
    assert hub.stats.reconnects == 1


def test_codec_change_closes_clients_so_they_renegotiate() -> None:
    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub)
    hub.upstream_opened([H265, PCMU])
    assert sub.closed == "codec changed upstream"
    assert hub.subscribers == []
    assert hub.tracks[0].params.name == "H265"


def test_malformed_upstream_frame_is_counted_not_raised() -> None:
    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub)
    hub.push(0, 0, True, b"no start code here", arrival=0.0)
    assert hub.stats.malformed_frames == 1
    assert sub.frames == []


def test_relayed_camera_payloads_go_out_as_they_came_or_are_rebuilt() -> None:
    """Native ingest: the camera's payloads are sent under the hub's RTP identity; payloads
    too large for the MTU are depacketized and packetized again; broken ones are dropped."""
    from gateway.codecs.h264 import H264Depacketizer, H264Packetizer

    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub)
    camera = H264Packetizer(H264, max_payload=1200)
    key = camera.packetize(access_unit(True), True)
    hub.push_relayed(0, 0, True, key, arrival=0.0)
    delta = camera.packetize(access_unit(False), False)
    hub.push_relayed(0, 3600, False, delta, arrival=0.04)
    assert hub.stats.relayed_frames == 2 and hub.stats.repacketized_frames == 0
    assert [bytes(p[12:]) for p in sub.frames[0].packets()] == key
    assert [bytes(p[12:]) for p in sub.frames[1].packets()] == delta

    jumbo = H264Packetizer(H264, max_payload=8000).packetize(access_unit(False, 6000), False)
    hub.push_relayed(0, 7200, False, jumbo, arrival=0.08)
    assert hub.stats.repacketized_frames == 1
    rebuilt = [bytes(p[12:]) for p in sub.frames[2].packets()]
    assert len(rebuilt) > 1 and all(len(p) <= 1400 for p in rebuilt)
    depacketizer = H264Depacketizer()
    frames = [
        f for i, p in enumerate(rebuilt) for f in depacketizer.push(p, i == len(rebuilt) - 1, 1)
    ]
    assert frames == [access_unit(False, 6000)]

    seqs = [seq for f in sub.frames for seq, *_ in rtp_fields(f)]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    assert [f.timestamp - sub.frames[0].timestamp for f in sub.frames] == [0, 3600, 7200]

    lone_fragment = b"\x7c\x81" + b"\x00" * 2000  # an FU-A start, no end: dropped silently
    hub.push_relayed(0, 10800, False, [lone_fragment], arrival=0.12)
    truncated_stap_a = b"\x78\x00\x40"  # announces a 64-byte NAL unit that is not there
    hub.push_relayed(0, 14400, False, [truncated_stap_a], arrival=0.16)
    assert hub.stats.malformed_frames == 1
    assert len(sub.frames) == 3


def test_batching_hub_delivers_what_arrived_together_at_flush() -> None:
    """Native ingest: the frames of one socket read reach each client in one call (one write),
    in order; a lone frame goes the usual way; a newcomer never gets a held frame twice."""
    from gateway.media.hub import MAX_BATCH_FRAMES

    hub = make_hub()
    hub.batching = True
    first = Recorder()
    hub.subscribe(first)
    hub.push(0, 0, True, access_unit(True), arrival=0.0)
    hub.push(1, 0, False, b"\x7f" * 160, arrival=0.0)
    assert first.frames == []
    hub.flush()
    assert first.batches == [2] and [f.track for f in first.frames] == [0, 1]
    hub.push(0, 3600, False, access_unit(False), arrival=0.04)
    hub.flush()
    hub.flush()  # nothing held: nothing sent again
    assert first.batches == [2] and len(first.frames) == 3

    hub.push(1, 160, False, b"\x7f" * 160, arrival=0.06)
    second = Recorder()
    gop = hub.subscribe(second)  # the held frame goes to the first client, the GOP to the new
    assert len(first.frames) == 4 and second.frames == []
    assert [f.timestamp for f in gop] == [f.timestamp for f in first.frames]

    for i in range(MAX_BATCH_FRAMES):  # a feeder that never flushes still gets them out
        hub.push(1, 320 + 160 * i, False, b"\x7f" * 160, arrival=0.08)
    assert second.batches == [MAX_BATCH_FRAMES]
    seqs = [seq for f in first.frames for seq, *_ in rtp_fields(f) if f.track == 1]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]


def test_g711_blocks_split_across_packets_advance_timestamps() -> None:
    hub = StreamHub("cam/main")
    hub.upstream_opened([H264, PCMU])
    sub = Recorder()
    hub.subscribe(sub)
    hub.push(0, 0, True, access_unit(True), arrival=0.0)
    hub.push(1, 8000, False, b"\x7f" * 3200, arrival=0.0)  # 400 ms of samples in one frame
    audio = sub.frames[-1]
    fields = rtp_fields(audio)
    assert len(fields) > 1
    timestamps = [ts for _, ts, _, _ in fields]
    assert timestamps == sorted(timestamps) and timestamps[0] == audio.timestamp
    assert timestamps[-1] - timestamps[0] < 3200


def test_keyframe_access_unit_round_trips_for_snapshots() -> None:
    hub = make_hub()
    au = access_unit(True, 20_000)
    hub.push(0, 0, True, au, arrival=0.0)
    unit = hub.keyframe_access_unit()
    assert unit is not None
    params, data = unit
    assert params is hub.tracks[0].params
    assert data.endswith(au.split(b"\x00\x00\x00\x01")[-1])


@pytest.mark.parametrize("linger", [0.05])
async def test_on_demand_upstream_stops_after_the_last_client(linger: float) -> None:
    import asyncio

    class Feeder:
        def __init__(self) -> None:
            self.started = 0
            self.stopped = asyncio.Event()

        def start(self) -> None:
            self.started += 1

        def stop(self) -> None:
            self.stopped.set()

        def restart(self) -> None:
            pass

    hub = StreamHub("cam/main", on_demand=True, linger=linger)
    feeder = Feeder()
    hub.attach_upstream(feeder)
    assert feeder.started == 0  # nothing until a client asks
    sub = Recorder()
    hub.subscribe(sub)
    assert feeder.started == 1 and hub.state == "connecting"
    hub.unsubscribe(sub)
    await asyncio.wait_for(feeder.stopped.wait(), 5)
    assert hub.state == "idle"


async def test_on_demand_upstream_started_for_describe_alone_stops_again() -> None:
    """A DESCRIBE (or an ONVIF probe) with no PLAY after it must not keep the camera
    connection open forever."""
    import asyncio

    class Feeder:
        def __init__(self, hub: StreamHub) -> None:
            self.hub = hub
            self.stopped = asyncio.Event()

        def start(self) -> None:
            asyncio.get_running_loop().call_soon(self.hub.upstream_opened, [H264])

        def stop(self) -> None:
            self.stopped.set()

        def restart(self) -> None:
            pass

    hub = StreamHub("cam/main", on_demand=True, linger=0.05)
    feeder = Feeder(hub)
    hub.attach_upstream(feeder)
    assert await hub.wait_ready(5.0)
    assert hub.tracks and not feeder.stopped.is_set()
    await asyncio.wait_for(feeder.stopped.wait(), 5)
    assert hub.state == "idle"


def test_relayed_g711_packets_keep_their_samples_and_timestamps() -> None:
    """Native ingest: a camera's G.711 packet goes on as it came; one over our MTU is split
    into whole 20 ms blocks with timestamps that advance per block."""
    hub = StreamHub("cam/main")
    hub.upstream_opened([H264, PCMU])
    sub = Recorder()
    hub.subscribe(sub)
    hub.push(0, 0, True, access_unit(True), arrival=0.0)
    samples = bytes(range(160))
    hub.push_relayed(1, 8000, False, [samples], arrival=0.0)
    assert hub.stats.relayed_frames == 1 and hub.stats.repacketized_frames == 0
    audio = sub.frames[-1]
    assert [bytes(p[12:]) for p in audio.packets()] == [samples]
    assert rtp_fields(audio)[0][1] == audio.timestamp

    jumbo = bytes(range(256)) * 10  # 320 ms of samples in one packet, over the MTU
    hub.push_relayed(1, 8160, False, [jumbo], arrival=0.02)
    assert hub.stats.repacketized_frames == 1
    split = sub.frames[-1]
    packets = [bytes(p[12:]) for p in split.packets()]
    assert b"".join(packets) == jumbo and all(len(p) % 160 == 0 for p in packets[:-1])
    timestamps = [ts for _, ts, _, _ in rtp_fields(split)]
    assert timestamps[1] - timestamps[0] == len(packets[0])


def interleaved_span(payloads: list[bytes], seq: int = 500, ts: int = 9000) -> bytes:
    """A camera's packets of one frame as they arrive on an interleaved connection."""
    out = b""
    for i, payload in enumerate(payloads):
        marker = 0x80 if i == len(payloads) - 1 else 0
        packet = struct.pack("!BBHII", 0x80, marker | 96, seq + i, ts, 0xCAFE) + payload
        out += b"$\x00" + len(packet).to_bytes(2, "big") + packet
    return out


@pytest.mark.parametrize("stamp", ["C", "Python reference"])
def test_spans_go_out_as_relayed_payloads_do_or_take_their_way(
    stamp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """push_span writes the hub's headers over the camera's: the same packets as push_relayed
    would send for those payloads, in sequence. Keyframes (parameter sets), aggregation
    packets, oversized payloads and broken framing take push_relayed's way. Both builds of
    the stamping (C, and the Python a checkout without a compiler runs)."""
    import gateway.media.hub as hub_module
    from gateway.codecs.h264 import H264Packetizer
    from gateway.rtp import spans

    if stamp != "C":
        monkeypatch.setattr(hub_module, "stamp_span", spans.reference_stamp_span)

    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub)
    camera = H264Packetizer(H264, max_payload=1200)
    key = camera.packetize(access_unit(True), True)
    span = b"junk" + interleaved_span(key) + b"more"
    hub.push_span(0, 0, True, span, 4, len(span) - 4, arrival=0.0)
    delta = camera.packetize(access_unit(False), False)
    span = interleaved_span(delta)
    hub.push_span(0, 3600, False, span, 0, len(span), arrival=0.04)
    assert hub.stats.relayed_frames == 2 and hub.stats.repacketized_frames == 0
    assert [bytes(p[12:]) for p in sub.frames[0].packets()] == key
    assert [bytes(p[12:]) for p in sub.frames[1].packets()] == delta
    twin = make_hub()
    twin.subscribe(twin_sub := Recorder())
    twin.push_relayed(0, 0, True, key, arrival=0.0)
    twin.push_relayed(0, 3600, False, delta, arrival=0.04)
    ours, theirs = sub.frames[1], twin_sub.frames[1]
    assert [len(p) for p in ours.packets()] == [len(p) for p in theirs.packets()]
    assert (ours.size, ours.packet_count, ours.keyframe) == (
        theirs.size,
        theirs.packet_count,
        False,
    )
    assert [(m, ts - sub.frames[0].timestamp) for _, ts, _, m in rtp_fields(ours)] == [
        (m, ts - twin_sub.frames[0].timestamp) for _, ts, _, m in rtp_fields(theirs)
    ]
    assert {ssrc for _, _, ssrc, _ in rtp_fields(ours)} == {hub.tracks[0].ssrc}

    stap_a = b"\x18" + len(b"\x06sei").to_bytes(2, "big") + b"\x06sei"
    stap_a += len(delta[0]).to_bytes(2, "big") + delta[0]
    span = interleaved_span([stap_a, *delta[1:]])  # sound: relayed by the list way
    hub.push_span(0, 7200, False, span, 0, len(span), arrival=0.08)
    assert hub.stats.relayed_frames == 3
    assert bytes(sub.frames[2].packets()[0][12:]) == stap_a
    jumbo = H264Packetizer(H264, max_payload=8000).packetize(access_unit(False, 6000), False)
    span = interleaved_span(jumbo)
    hub.push_span(0, 10800, False, span, 0, len(span), arrival=0.12)
    assert hub.stats.repacketized_frames == 1
    assert all(len(p) <= 1412 for p in sub.frames[3].packets())
    hub.push_span(0, 14400, False, span, 0, len(span) - 1, arrival=0.16)  # cut short
    assert hub.stats.malformed_frames == 1 and len(sub.frames) == 4

    seqs = [seq for f in sub.frames for seq, *_ in rtp_fields(f)]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    assert sum(f.packet_count for f in sub.frames) == hub.tracks[0].packet_count


def test_cached_frames_and_the_bitrate_window_add_no_objects_for_the_cyclic_gc() -> None:
    """A GOP's worth of frames in the cache and the bitrate window must not be objects the
    cyclic GC tracks: with thousands a second, each young-generation pass walked them all
    (milliseconds of the event loop, with nothing to collect)."""
    import gc

    hub = make_hub()
    hub.push(0, 0, True, access_unit(True), arrival=0.0)
    hub.subscribe(sub := Recorder())
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1, 400):
        hub.push(0, 3600 * i, False, access_unit(False, 600), arrival=i / 25)
        hub.push_payloads(1, 160 * i, False, [b"\xff" * 160], arrival=i / 25)
    last_sent = sub.frames[-1]
    sub.frames.clear()  # the recorder's Frames are tracked objects of its own
    gc.collect()
    assert len(hub.gop) == 799 and hub.bitrate > 0
    assert len(gc.get_objects()) - before < 50
    # What the cache gives back is what went out.
    fields = ("track", "keyframe", "timestamp", "first_seq", "blob", "packet_count", "arrival")
    cached = hub.gop[-1]
    assert [getattr(cached, f) for f in fields] == [getattr(last_sent, f) for f in fields]
    assert (cached.track, cached.packet_count, cached.arrival) == (1, 1, 399 / 25)


def test_rate_meter_averages_over_its_window_and_forgets_what_is_older() -> None:
    from gateway.media.stream_stats import RateMeter

    meter = RateMeter(window=5.0, bucket=0.5)
    assert meter.rate() == 0.0
    meter.add(0.0, 1000)
    assert meter.rate() == 0.0  # one addition: no time to divide by
    meter.add(0.04, 1000)
    assert meter.rate() == pytest.approx(50_000)
    for i in range(2, 250):  # 25 frames of 1000 bytes a second for 10 s
        meter.add(i * 0.04, 1000)
    assert meter.rate() == pytest.approx(25_000, rel=0.03)
    for i in range(250, 500):  # then twice the rate: the first 10 s are out of the window
        meter.add(i * 0.04, 2000)
    assert meter.rate() == pytest.approx(50_000, rel=0.03)
    meter.add(60.0, 10)  # after a minute of silence nothing old is left to average
    meter.add(61.0, 10)
    assert meter.rate() == pytest.approx(20.0)  # both over the one second between them


async def test_hub_states_follow_the_transition_table() -> None:
    """Every state change goes through one table: an upstream is started only from idle,
    a failure of a stopped hub leaves it idle, and any new session makes it live."""
    from gateway.media.hub import HubState

    class Feeder:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def start(self) -> None:
            self.calls.append("start")

        def stop(self) -> None:
            self.calls.append("stop")

        def restart(self) -> None:
            self.calls.append("restart")

    hub = StreamHub("cam/main", on_demand=True)
    feeder = Feeder()
    hub.attach_upstream(feeder)
    assert hub.state is HubState.IDLE and feeder.calls == []
    hub.upstream_failed("a late report")  # nothing wanted the upstream: still idle
    assert hub.state is HubState.IDLE
    hub.subscribe(Recorder())
    hub.subscribe(Recorder())  # already connecting: not started twice
    assert hub.state is HubState.CONNECTING and feeder.calls == ["start"]
    hub.upstream_failed("refused")
    assert hub.state is HubState.DOWN and hub.state == "down"
    hub.upstream_opened([CodecParams("H264", "video", 90000)])
    assert hub.state is HubState.LIVE and hub.last_error == ""
    hub.close()
    assert hub.state is HubState.IDLE and feeder.calls == ["start", "stop"]


async def test_frame_inbox_holds_a_bounded_number_of_bytes() -> None:
    loop = asyncio.get_running_loop()
    handled: list[tuple[object, ...]] = []
    drained = asyncio.Event()

    def handle(item: tuple[object, ...]) -> None:
        handled.append(item)
        drained.set()

    inbox = FrameInbox(loop, handle, max_bytes=1000)
    assert inbox.put(("frame", 1), 600) and inbox.put(("frame", 2), 400)
    assert not inbox.put(("frame", 3), 1)  # full: the ingest resyncs at the next keyframe
    assert inbox.put(("failed", "why"))  # control items carry no payload
    assert inbox.overflows == 1 and inbox.queued_bytes == 1000
    await drained.wait()
    assert [i[1] for i in handled] == [1, 2, "why"] and inbox.queued_bytes == 0
    assert inbox.put(("frame", 4), 1000)  # room again once the loop caught up


def test_inbox_budget_follows_the_bitrate_within_bounds() -> None:
    assert inbox_budget(0) == INBOX_DEFAULT_BYTES  # nothing measured yet
    assert inbox_budget(4_000_000) == 2_000_000  # 4 s of 4 Mbit/s
    assert inbox_budget(64_000) == INBOX_MIN_BYTES
    assert inbox_budget(10**10) == INBOX_MAX_BYTES
