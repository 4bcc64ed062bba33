"""Fan-out hub: one upstream per camera stream, any number of clients.

The hub owns the RTP identity of a stream (SSRC, sequence numbers, timestamps per track), so
clients see one continuous RTP stream across upstream reconnects. Each incoming frame is
packetized once, stamped once and laid out once as a TCP-interleaved blob; every client gets
the same bytes with one ``write`` per frame (UDP clients get slices of the same blob).

A GOP cache (frames since the last video keyframe) lets a new client start decoding at once.
Clients have a send budget: a client whose socket backlog exceeds it skips to the next
keyframe, and one backlogged for too long is disconnected, so a stalled client costs at most
its budget and never delays the others.

Everything here runs on the event loop thread; ingest threads hand frames over through
:class:`gateway.media.inbox.FrameInbox`. The GOP cache is :mod:`gateway.media.gop_cache`, the
counters and bitrate meter :mod:`gateway.media.stream_stats`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway.cancellation import wait_for
from gateway.codecs import depacketizer_for, packetizer_for
from gateway.codecs.base import RELAY_MAX_PAYLOAD, CodecParams, Packetizer
from gateway.media.gop_cache import GopCache
from gateway.media.stream_stats import RateMeter, StreamStats
from gateway.rtp.frame import Frame, Subscriber
from gateway.rtp.interleaved import INTERLEAVED_HEADER, interleaved_payloads
from gateway.rtp.packet import SenderReport, ntp_from_unix
from gateway.rtp.spans import stamp_span

log = logging.getLogger("gateway.media")

# Frames a batching hub holds before it delivers on its own (its feeder should flush sooner).
MAX_BATCH_FRAMES = 64
# Cap on the bytes a GOP cache may hold; a camera with a very long GOP falls back to making
# new clients wait for the next keyframe rather than holding unbounded memory.
DEFAULT_GOP_CACHE_BYTES = 12 * 1024 * 1024
SR_INTERVAL = 5.0


@dataclass
class Track:
    """One RTP stream of a hub, with the state that must survive upstream reconnects."""

    index: int
    params: CodecParams
    packetizer: Packetizer
    payload_type: int
    ssrc: int
    seq: int
    # Outgoing timestamp = source timestamp + offset (mod 2^32); the offset is re-based
    # at the first frame of every upstream session so the outgoing clock runs on.
    ts_offset: int = 0
    rebase: bool = True
    last_ts: int | None = None
    last_wallclock: float = 0.0
    packet_count: int = 0
    octet_count: int = 0

    @property
    def clock_rate(self) -> int:
        return self.params.clock_rate

    @property
    def is_video(self) -> bool:
        return self.params.media == "video"


class HubState(StrEnum):
    """Where a hub's upstream is; the values are what the admin API and metrics show."""

    IDLE = "idle"  # no upstream wanted (on demand without clients, or closed)
    CONNECTING = "connecting"  # started, no session yet
    LIVE = "live"  # a session is delivering
    DOWN = "down"  # wanted but failed; the feeder retries on its own


# Every state change a hub makes: event -> {state before: state after}. A state missing
# from an event's map stays as it is.
_TRANSITIONS: dict[str, dict[HubState, HubState]] = {
    "start": {HubState.IDLE: HubState.CONNECTING},
    "stop": {s: HubState.IDLE for s in (HubState.CONNECTING, HubState.LIVE, HubState.DOWN)},
    "opened": {s: HubState.LIVE for s in HubState},
    "failed": {s: HubState.DOWN for s in (HubState.CONNECTING, HubState.LIVE, HubState.DOWN)},
    "closed": {s: HubState.IDLE for s in HubState},
}


class UpstreamControl(Protocol):
    """The hub's handle on whatever feeds it (ingest thread, simulator clip player)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def restart(self) -> None: ...


class StreamHub:
    """The single upstream of one camera stream and everything subscribed to it."""

    def __init__(
        self,
        key: str,
        *,
        on_demand: bool = False,
        linger: float = 10.0,
        gop_cache_bytes: int = DEFAULT_GOP_CACHE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.on_demand = on_demand
        self.linger = linger
        self.gop_cache_bytes = gop_cache_bytes
        self.clock = clock
        self.wallclock = wallclock
        self.tracks: list[Track] = []
        self.subscribers: list[Subscriber] = []
        self._gop = GopCache()
        self.stats = StreamStats()
        self._state = HubState.IDLE
        self.last_error = ""
        # Unix time the stream went down (kept through the feeder's retries), else None.
        self.down_since: float | None = None
        self.upstream: UpstreamControl | None = None
        self.upstream_sessions = 0
        self._ready = asyncio.Event()
        self._keyframe_cached = asyncio.Event()
        self._linger_handle: asyncio.TimerHandle | None = None
        self._last_sr = 0.0
        self._bitrate = RateMeter()
        self.fps = 0.0
        self._frames_since_key = 0
        self._last_key_ts: int | None = None
        self._await_keyframe = True
        self.listeners: list[Callable[[str, StreamHub], None]] = []
        # Batching: frames that arrive together (one socket read of the native ingest) are
        # held until flush() and reach each client in one write instead of one per frame.
        self.batching = False
        self._batch: list[Frame] = []

    @property
    def state(self) -> HubState:
        return self._state

    def _move(self, event: str) -> bool:
        """Apply ``event`` to the state (see _TRANSITIONS); True if the state changed."""
        after = _TRANSITIONS[event].get(self._state, self._state)
        changed = after is not self._state
        self._state = after
        return changed

    # ------------------------------------------------------------------ upstream side

    def attach_upstream(self, upstream: UpstreamControl) -> None:
        self.upstream = upstream
        if not self.on_demand:
            self._start_upstream()

    def _start_upstream(self) -> None:
        if self.upstream is not None and self._move("start"):
            self.upstream.start()

    def _stop_upstream(self) -> None:
        if self.upstream is not None and self._state is not HubState.IDLE:
            self.upstream.stop()
            self._move("stop")
            self.down_since = None
            self._ready.clear()
            self._clear_gop()

    def upstream_opened(self, params: Sequence[CodecParams]) -> None:
        """A new upstream session is up with these tracks (first video, then audio)."""
        self.upstream_sessions += 1
        if self.tracks:
            old = [(t.params.name, t.params.media) for t in self.tracks]
            new = [(p.name, p.media) for p in params]
            if old != new:
                # Clients negotiated the old SDP; they cannot follow a codec change, so
                # they are closed and reconnect to get the new description.
                log.warning(
                    "codec changed, closing clients to renegotiate",
                    extra={"stream": self.key, "old": old, "new": new},
                )
                for sub in list(self.subscribers):
                    sub.close_for("codec changed upstream")
                self.subscribers.clear()
                self.tracks = []
        if not self.tracks:
            self.tracks = [self._new_track(i, p) for i, p in enumerate(params)]
        else:
            for track, p in zip(self.tracks, params, strict=True):
                if p != track.params:
                    track.params = p
                    track.packetizer = packetizer_for(p, track.payload_type)
                track.rebase = True
            self.stats.reconnects += 1
            # Frames before the new session's first keyframe cannot be decoded by clients
            # that missed the end of the old one.
            for sub in self.subscribers:
                sub.resync()
        self._clear_gop()
        self._batch = []  # anything held from the old session must not follow the resync
        self._last_key_ts = None
        self._await_keyframe = True
        self._move("opened")
        self.last_error = ""
        self.down_since = None
        self._ready.set()
        self._notify("up")

    def upstream_failed(self, error: str) -> None:
        """The upstream session ended or could not open; the feeder retries on its own."""
        was_live = self._state is HubState.LIVE
        if self._move("failed"):
            self.down_since = self.wallclock()
        self.last_error = error
        self._clear_gop()
        if was_live:
            self._notify("down")

    def _new_track(self, index: int, params: CodecParams) -> Track:
        packetizer = packetizer_for(params)
        return Track(
            index=index,
            params=params,
            packetizer=packetizer,
            payload_type=packetizer.payload_type,
            ssrc=random.getrandbits(32),
            seq=random.getrandbits(16),
        )

    def push(
        self, track_index: int, timestamp: int, keyframe: bool, data: bytes, arrival: float
    ) -> None:
        """One access unit from upstream; ``timestamp`` in the track's clock units."""
        track = self.tracks[track_index]
        try:
            payloads = track.packetizer.packetize(data, keyframe)
        except ValueError as exc:
            self._drop_malformed(exc)
            return
        self.push_payloads(track_index, timestamp, keyframe, payloads, arrival)

    def push_relayed(
        self,
        track_index: int,
        timestamp: int,
        keyframe: bool,
        payloads: Sequence[bytes],
        arrival: float,
    ) -> None:
        """One complete access unit as the camera's own RTP payloads (native ingest).

        They go out as they came, under the hub's RTP identity, when the codec allows it;
        otherwise (oversized packets, a packetization mode clients were not offered) the
        frame is depacketized and packetized again like a PyAV frame.
        """
        track = self.tracks[track_index]
        relayed = track.packetizer.relay(payloads, keyframe)
        if relayed is not None:
            self.stats.relayed_frames += 1
            self.push_payloads(track_index, timestamp, keyframe, relayed, arrival)
            return
        self.stats.repacketized_frames += 1
        # A fresh depacketizer per frame: nothing of a refused frame can leak into the next.
        depacketizer = depacketizer_for(track.params)
        frames: list[bytes] = []
        last = len(payloads) - 1
        try:
            for i, payload in enumerate(payloads):
                frames.extend(depacketizer.push(payload, i == last, timestamp))
        except ValueError as exc:
            self._drop_malformed(exc)
            return
        for data in frames:
            self.push(track_index, timestamp, keyframe, data, arrival)

    def _drop_malformed(self, error: ValueError) -> None:
        self.stats.malformed_frames += 1
        log.warning(
            "malformed frame from camera dropped",
            extra={"stream": self.key, "error": str(error), "ratelimit": True},
        )

    def push_span(
        self,
        track_index: int,
        timestamp: int,
        keyframe: bool,
        data: bytes,
        start: int,
        end: int,
        arrival: float,
    ) -> None:
        """One complete frame as it came in on a TCP-interleaved connection (native ingest):
        ``data[start:end]`` holds its RTP packets, each with its ``$`` prefix and a plain
        12-byte header. They go out with the headers rewritten to the hub's RTP identity, the
        payloads untouched and copied once, when the codec passes every payload as it is;
        keyframes and everything else take :meth:`push_relayed`'s way."""
        track = self.tracks[track_index]
        table = track.packetizer.relay_table
        if table is not None and not keyframe:
            ts = self._admit(track, timestamp, keyframe, arrival)
            if ts < 0:
                return
            frame = self._stamp_span(track, ts, data, start, end, arrival, table)
            if frame is not None:
                self.stats.relayed_frames += 1
                self._publish(track, frame, keyframe, ts, arrival)
                return
        try:
            payloads = interleaved_payloads(data, start, end)
        except ValueError as exc:
            self._drop_malformed(exc)
            return
        self.push_relayed(track_index, timestamp, keyframe, payloads, arrival)

    def push_payloads(
        self,
        track_index: int,
        timestamp: int,
        keyframe: bool,
        payloads: Sequence[bytes],
        arrival: float,
    ) -> None:
        """One access unit, already packetized (the simulator caches payloads per clip)."""
        if not payloads:
            return
        track = self.tracks[track_index]
        ts = self._admit(track, timestamp, keyframe, arrival)
        if ts >= 0:
            frame = self._stamp(track, ts, keyframe, payloads, arrival)
            self._publish(track, frame, keyframe, ts, arrival)

    def _admit(self, track: Track, timestamp: int, keyframe: bool, arrival: float) -> int:
        """The outgoing RTP timestamp for a frame about to be stamped, or -1 to drop it.
        Calling it again for the same frame gives the same answer."""
        if self._await_keyframe:
            # After an upstream (re)connect nothing is stamped before the first video
            # keyframe: clients resume on it with no gap in their RTP sequence numbers.
            if not (keyframe and track.is_video):
                return -1
            self._await_keyframe = False
        if track.rebase:
            if track.last_ts is None:
                track.ts_offset = -timestamp
            else:
                # Continue the outgoing clock by the wall-clock gap since the last frame.
                gap = max(arrival - track.last_wallclock, 0.0)
                step = int(gap * track.clock_rate) or 1
                track.ts_offset = track.last_ts + step - timestamp
            track.rebase = False
        ts = (timestamp + track.ts_offset) & 0xFFFFFFFF
        track.last_ts = ts
        track.last_wallclock = arrival
        return ts

    def _publish(self, track: Track, frame: Frame, keyframe: bool, ts: int, arrival: float) -> None:
        stats = self.stats
        stats.frames_in += 1
        stats.bytes_in += frame.size
        is_video = track.is_video
        if is_video:
            if keyframe:
                self._on_keyframe(arrival, ts, track.clock_rate)
            self._frames_since_key += 1
        self._bitrate.add(arrival, frame.size)
        self._cache(frame, is_video)

        now = arrival
        if self.batching:
            self._batch.append(frame)
            if len(self._batch) >= MAX_BATCH_FRAMES:
                self.flush()
        else:
            for sub in self.subscribers:
                sub.deliver(frame, now)
        if now - self._last_sr >= SR_INTERVAL:
            self._send_sender_reports(now)

    def flush(self) -> None:
        """Deliver the frames held since the last flush (batching hubs)."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        now = batch[-1].arrival
        if len(batch) == 1:
            for sub in self.subscribers:
                sub.deliver(batch[0], now)
        else:
            for sub in self.subscribers:
                sub.deliver_many(batch, now)

    def _stamp(
        self, track: Track, ts: int, keyframe: bool, payloads: Sequence[bytes], arrival: float
    ) -> Frame:
        pack = INTERLEAVED_HEADER.pack
        channel = track.index * 2
        pt = track.payload_type
        ssrc = track.ssrc
        seq = first_seq = track.seq
        parts: list[bytes] = []
        last = len(payloads) - 1
        # G.711 blocks split across packets advance the timestamp per packet.
        offsets = track.packetizer.timestamp_offsets(payloads)
        for i, payload in enumerate(payloads):
            length = len(payload) + 12
            pts = ts if offsets is None else (ts + offsets[i]) & 0xFFFFFFFF
            parts.append(
                pack(b"$", channel, length, 0x80, pt | 0x80 if i == last else pt, seq, pts, ssrc)
            )
            parts.append(payload)
            seq = (seq + 1) & 0xFFFF
        track.seq = seq
        count = len(payloads)
        track.packet_count += count
        blob = b"".join(parts)
        track.octet_count += len(blob) - 16 * count
        return Frame(track.index, keyframe, ts, first_seq, blob, count, arrival)

    def _stamp_span(
        self,
        track: Track,
        ts: int,
        data: bytes,
        start: int,
        end: int,
        arrival: float,
        table: bytes,
    ) -> Frame | None:
        """The frame from interleaved packets with our headers written over theirs, or None
        (and the track untouched) when a payload may not go on as it is."""
        stamped = stamp_span(
            data,
            start,
            end,
            track.index * 2,
            track.payload_type,
            track.seq,
            ts,
            track.ssrc,
            track.packetizer.relay_min_payload + 12,
            RELAY_MAX_PAYLOAD + 12,
            table,
        )
        if stamped is None:
            return None
        blob, count = stamped
        first_seq = track.seq
        track.seq = (first_seq + count) & 0xFFFF
        track.packet_count += count
        track.octet_count += end - start - 16 * count
        return Frame(track.index, False, ts, first_seq, blob, count, arrival)

    def _on_keyframe(self, now: float, ts: int, clock_rate: int) -> None:
        # GOP length and frame rate from RTP timestamps, not arrival times, so network
        # jitter does not show up in what ONVIF reports as the encoder's settings.
        stats = self.stats
        if self._last_key_ts is not None:
            ticks = (ts - self._last_key_ts) & 0xFFFFFFFF
            if 0 < ticks < 60 * clock_rate:
                stats.gop_frames = self._frames_since_key
                stats.gop_seconds = ticks / clock_rate
                self.fps = stats.gop_frames / stats.gop_seconds
        self._last_key_ts = ts
        self._frames_since_key = 0
        stats.last_keyframe_ts = now
        stats.keyframes += 1

    @property
    def bitrate(self) -> float:
        """Bits per second over the last few seconds of ingest (RTP payload and headers)."""
        return self._bitrate.rate() * 8

    def _cache(self, frame: Frame, is_video: bool) -> None:
        gop = self._gop
        if is_video and frame.keyframe:
            gop.clear()
            gop.append(frame)
            if not self._keyframe_cached.is_set():
                self._keyframe_cached.set()
            return
        if not gop:
            return  # nothing decodable to start from until the next keyframe
        if gop.size + frame.size > self.gop_cache_bytes:
            self._clear_gop()
            return
        gop.append(frame)

    def _clear_gop(self) -> None:
        self._gop.clear()
        self._keyframe_cached.clear()

    @property
    def gop(self) -> list[Frame]:
        """The cached frames from the last keyframe on, for a new client to start with."""
        return self._gop.frames()

    @property
    def gop_cache_size(self) -> int:
        """Bytes of frames the GOP cache holds now (at most ``gop_cache_bytes``)."""
        return self._gop.size

    @property
    def has_keyframe(self) -> bool:
        """A keyframe is cached: a new client gets a picture at once (and a snapshot can be
        taken)."""
        return bool(self._gop)

    def _send_sender_reports(self, now: float) -> None:
        self._last_sr = now
        ntp = ntp_from_unix(time.time())
        for track in self.tracks:
            if track.last_ts is None:
                continue
            rtp_now = track.last_ts + int((now - track.last_wallclock) * track.clock_rate)
            packet = bytes(
                SenderReport(
                    track.ssrc,
                    ntp,
                    rtp_now & 0xFFFFFFFF,
                    track.packet_count & 0xFFFFFFFF,
                    track.octet_count & 0xFFFFFFFF,
                )
            )
            for sub in self.subscribers:
                sub.deliver_rtcp(track.index, packet)

    # ------------------------------------------------------------------ client side

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the stream's tracks are known (first upstream session opened)."""
        if self.tracks:
            return True
        await self._wake_for(self._ready, timeout)
        return bool(self.tracks)

    async def wait_keyframe(self, timeout: float) -> bool:
        """Wait until a keyframe is cached (a snapshot of an idle on-demand stream wakes
        it); the stream goes idle again after the linger time if nobody subscribes."""
        if self.has_keyframe:
            return True
        await self._wake_for(self._keyframe_cached, timeout)
        return self.has_keyframe

    async def _wake_for(self, event: asyncio.Event, timeout: float) -> None:
        """Start the upstream if it is not running and wait for ``event``, at most
        ``timeout`` seconds."""
        self._cancel_linger()
        self._start_upstream()
        try:
            await wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            # Started for a DESCRIBE, a probe or a snapshot that may never be followed by a
            # PLAY: an on-demand upstream then stops again after the linger time.
            if self.on_demand and not self.subscribers and self._linger_handle is None:
                self._schedule_linger()

    def subscribe(self, sub: Subscriber) -> list[Frame]:
        """Add a client; returns the cached GOP it should be sent first."""
        self._cancel_linger()
        self._start_upstream()
        # Held frames go to the clients that were there; the newcomer has them in the GOP.
        self.flush()
        self.subscribers.append(sub)
        self._notify("client")
        return self.gop

    def unsubscribe(self, sub: Subscriber) -> None:
        try:
            self.subscribers.remove(sub)
        except ValueError:
            return
        self._notify("client")
        if self.on_demand and not self.subscribers:
            self._schedule_linger()

    def _schedule_linger(self) -> None:
        self._cancel_linger()
        loop = asyncio.get_running_loop()
        self._linger_handle = loop.call_later(self.linger, self._linger_expired)

    def _cancel_linger(self) -> None:
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None

    def _linger_expired(self) -> None:
        self._linger_handle = None
        if not self.subscribers:
            log.info("on-demand stream idle, closing upstream", extra={"stream": self.key})
            self._stop_upstream()

    def rtp_info(self, gop: Sequence[Frame]) -> list[tuple[int, int]]:
        """(seq, rtptime) of the first packet each track's client will receive."""
        out = []
        for track in self.tracks:
            first = next((f for f in gop if f.track == track.index), None)
            if first is not None:
                out.append((first.first_seq, first.timestamp))
            else:
                out.append((track.seq, (track.last_ts or 0) & 0xFFFFFFFF))
        return out

    def restart_upstream(self) -> None:
        """Reconnect the camera (SystemReboot, admin action); clients stay connected."""
        if self.upstream is not None and self._state is not HubState.IDLE:
            self.upstream.restart()

    def close(self) -> None:
        """For good (the gateway stops, or a reload removed or replaced the camera): the
        clients are closed, the upstream stopped and let go, and the cached frames freed at
        once rather than whenever the hub itself is collected."""
        self._cancel_linger()
        for sub in list(self.subscribers):
            sub.close_for("gateway shutting down")
        self.subscribers.clear()
        if self.upstream is not None:
            self.upstream.stop()
            self.upstream = None
        self._move("closed")
        self.down_since = None
        self._clear_gop()
        self._batch = []
        self.listeners.clear()

    def _notify(self, event: str) -> None:
        for listener in self.listeners:
            try:
                listener(event, self)
            except Exception:  # a broken listener must not break the stream
                log.exception("stream listener failed", extra={"stream": self.key})

    def keyframe_access_unit(self) -> tuple[CodecParams, bytes] | None:
        """The latest video keyframe's access unit, for snapshots (depacketized lazily)."""
        if not self._gop or not self.tracks:
            return None
        first = self._gop.frame(0)
        track = self.tracks[first.track]
        depack = depacketizer_for(track.params)
        units: list[bytes] = []
        packets = first.packets()
        for i, pkt in enumerate(packets):
            data = bytes(pkt)
            units.extend(depack.push(data[12:], i == len(packets) - 1, first.timestamp))
        if not units:
            return None
        return track.params, units[-1]
