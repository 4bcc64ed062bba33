"""The client end of one RTSP connection (sans-IO): bytes in, RTSP messages out, media to the
tracks' :class:`~gateway.rtp.receiver.RtpReceiver`.

While playing, the connection carries mostly ``$`` frames; they are taken straight from the
received bytes (:func:`~gateway.rtp.interleaved.walk_interleaved`, no event objects) and only
the rest (a response, a server's request) goes through the RTSP parser. A frame cut by a
read waits for the next one (at most one frame is kept).
"""

from __future__ import annotations

from gateway.rtp.interleaved import FRAME_START, Channels, walk_interleaved
from gateway.rtsp.message import InterleavedFrame, RtspConnectionParser, RtspRequest, RtspResponse

_NONE: tuple[RtspRequest | RtspResponse, ...] = ()


class ClientConnection:
    """Feed it what the server sent; it returns the RTSP messages among it.

    ``channels`` maps interleaved channels to receivers (filled in as SETUP answers).
    :meth:`receive` raises :class:`~gateway.rtsp.message.RtspProtocolError` on malformed
    input, after which the connection is unusable.
    """

    def __init__(self, max_body: int = 256 * 1024) -> None:
        self.parser = RtspConnectionParser("client", max_body=max_body)
        self.channels: Channels = {}
        self._partial = b""  # the start of a "$" frame the last read cut (fast path)

    def receive(self, data: bytes, now: float) -> tuple[RtspRequest | RtspResponse, ...]:
        parser = self.parser
        channels = self.channels
        if self._partial:
            data = self._partial + data
            self._partial = b""
        if parser.idle:
            pos = walk_interleaved(data, channels, now)
            if pos == len(data) or data[pos] == FRAME_START:
                if pos < len(data):
                    self._partial = data[pos:]
                return _NONE
            if pos:
                data = data[pos:]
        parser.feed(data)
        messages: list[RtspRequest | RtspResponse] = []
        for event in parser.events():
            if isinstance(event, InterleavedFrame):
                target = channels.get(event.channel)
                if target is not None:
                    track, is_rtcp = target
                    if is_rtcp:
                        track.rtcp()
                    else:
                        track.feed(event.payload, now)
            else:
                messages.append(event)
        # Back to the fast path once only the start of a "$" frame is left.
        self._partial = parser.take_interleaved_start()
        return tuple(messages)
