"""One client's RTSP session of the asyncio RTSP server (:mod:`gateway.rtsp.server`): the
subscriber a stream source's fan-out writes to, carrying the frames interleaved on the
client's TCP connection or as RTP/RTCP datagrams from the server's shared UDP sockets,
within the client's send budget.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.rtp.frame import Frame
from gateway.rtp.interleaved import interleave
from gateway.rtsp.source import StreamSource

if TYPE_CHECKING:
    from gateway.rtsp.server import RtspServer
    from gateway.rtsp.server_connection import RtspConnection

log = logging.getLogger("gateway.rtsp")


class ServerSession:
    """One client's RTSP session on one stream; the source calls ``deliver`` per frame."""

    __slots__ = (
        "budget",
        "bytes_sent",
        "channels",
        "conn",
        "dropped",
        "frames_sent",
        "id",
        "last_activity",
        "over_since",
        "playing",
        "server",
        "source",
        "stall_timeout",
        "started",
        "tcp",
        "udp_targets",
        "video_track",
        "waiting_keyframe",
    )

    def __init__(
        self, server: RtspServer, conn: RtspConnection, source: StreamSource, tcp: bool
    ) -> None:
        self.server = server
        self.conn = conn
        self.source = source
        self.id = secrets.token_hex(8)
        self.tcp = tcp
        self.channels: dict[int, int] = {}  # track -> interleaved RTP channel
        self.udp_targets: dict[int, tuple[tuple[str, int], tuple[str, int]]] = {}
        self.playing = False
        self.waiting_keyframe = True
        self.over_since: float | None = None
        self.budget = server.limits.send_budget
        self.stall_timeout = server.limits.stall_timeout
        self.last_activity = server.clock()
        self.started = self.last_activity
        self.frames_sent = 0
        self.bytes_sent = 0
        self.dropped = 0
        self.video_track = 0

    # -- Subscriber

    def deliver(self, frame: Frame, now: float) -> None:
        if not self.playing:
            return
        track = frame.track
        if self.waiting_keyframe:
            if not (frame.keyframe and track == self.video_track):
                return
            self.waiting_keyframe = False
        if not self.tcp:
            self._deliver_udp(frame, now)
            return
        channel = self.channels.get(track)
        if channel is None:
            return
        transport = self._writable_transport(now)
        if transport is None:
            return
        data = frame.interleaved(channel)
        transport.write(data)
        self._count_sent(len(data), 1)

    def _deliver_udp(self, frame: Frame, now: float) -> None:
        target = self.udp_targets.get(frame.track)
        udp = self.server.udp_rtp
        if target is None or udp is None:
            return
        if _udp_backlog(udp) > self.budget:
            self._skip(now)
            return
        self.over_since = None
        sendto = udp.sendto
        addr = target[0]
        for packet in frame.packets():
            sendto(packet, addr)
        self._count_sent(frame.size, 1)

    def deliver_many(self, frames: Sequence[Frame], now: float) -> None:
        """Frames that arrived together: the same choices as :meth:`deliver` frame by frame,
        then one ``writelines`` (a single ``writev``) over TCP."""
        if not self.playing:
            return
        if not self.tcp:
            for frame in frames:
                self.deliver(frame, now)
            return
        transport = self._writable_transport(now)
        if transport is None:
            return
        channels = self.channels
        parts = []
        for frame in frames:
            if self.waiting_keyframe:
                if not (frame.keyframe and frame.track == self.video_track):
                    continue
                self.waiting_keyframe = False
            channel = channels.get(frame.track)
            if channel is not None:
                parts.append(frame.interleaved(channel))
        if not parts:
            return
        transport.writelines(parts)
        self._count_sent(sum(map(len, parts)), len(parts))

    def _count_sent(self, size: int, frames: int) -> None:
        self.bytes_sent += size
        self.frames_sent += frames
        stats = self.source.stats
        stats.bytes_out += size
        stats.frames_out += frames

    def _writable_transport(self, now: float) -> asyncio.Transport | None:
        """The TCP transport when this client is within its send budget; over it, the frame
        is skipped (see :meth:`_skip`) and None returned."""
        transport = self.conn.transport
        if transport is None:
            return None
        if transport.get_write_buffer_size() > self.budget:
            self._skip(now)
            return None
        self.over_since = None
        return transport

    def _skip(self, now: float) -> None:
        # Over budget: drop until the next keyframe so the client resumes cleanly, and give
        # up on a client that has not drained for stall_timeout.
        self.dropped += 1
        self.source.stats.dropped_frames += 1
        self.waiting_keyframe = True
        if self.over_since is None:
            self.over_since = now
        elif now - self.over_since > self.stall_timeout:
            self.source.stats.slow_disconnects += 1
            self.close_for(f"client stalled for more than {self.stall_timeout:g}s")

    def deliver_rtcp(self, track: int, packet: bytes) -> None:
        if not self.playing:
            return
        if self.tcp:
            channel = self.channels.get(track)
            transport = self.conn.transport
            if channel is None or transport is None:
                return
            if transport.get_write_buffer_size() <= self.budget:
                transport.write(interleave(channel + 1, packet))
        else:
            target = self.udp_targets.get(track)
            if target is not None and self.server.udp_rtcp is not None:
                self.server.udp_rtcp.sendto(packet, target[1])

    def resync(self) -> None:
        self.waiting_keyframe = True

    def close_for(self, reason: str) -> None:
        log.info(
            "client session closed",
            extra={
                "stream": self.source.key,
                "session": self.id,
                "peer": self.conn.peer_text,
                "reason": reason,
            },
        )
        self.server.end_session(self)
        if self.tcp:
            self.conn.close()

    # -- control

    def play(self) -> tuple[list[tuple[int, int]], list[Frame]] | None:
        """Start delivery; returns (seq, rtptime) per track and the GOP to send first."""
        if self.playing:
            return None
        gop = self.source.subscribe(self)
        self.playing = True
        self.waiting_keyframe = not gop
        return self.source.rtp_info(gop), gop

    def pause(self) -> None:
        if self.playing:
            self.playing = False
            self.source.unsubscribe(self)
            self.waiting_keyframe = True


def _udp_backlog(transport: asyncio.DatagramTransport) -> int:
    """Bytes queued in a datagram transport (asyncio and uvloop have it; typeshed lacks it)."""
    size: int = transport.get_write_buffer_size()  # type: ignore[attr-defined]
    return size
