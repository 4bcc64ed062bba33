"""The GOP cache: the frames of a stream from its last video keyframe on, held compactly so a
new client can start decoding at once."""

from __future__ import annotations

import struct

from gateway.rtp.frame import Frame


class GopCache:
    """The frames from the last keyframe on, kept for new clients, as plain numbers and blobs.

    At 64 cameras some 5,000 frames a second pass through the caches. Kept as Frame objects
    (or tuples), each was one more object for every young-generation pass of the cyclic GC
    to walk: the passes found nothing to collect yet took milliseconds of the event loop.
    Here a cached frame adds a packed record to a bytearray and its blob to a list."""

    __slots__ = ("_blobs", "_fields", "size")
    # track, keyframe, timestamp, first_seq, packet_count, arrival
    _FIELDS = struct.Struct("=B?IHId")

    def __init__(self) -> None:
        self._blobs: list[bytes | bytearray] = []
        self._fields = bytearray()  # the other fields, packed, one record per frame
        self.size = 0  # bytes of RTP held

    def __len__(self) -> int:
        return len(self._blobs)

    def append(self, frame: Frame) -> None:
        self._blobs.append(frame.blob)
        self._fields += self._FIELDS.pack(
            frame.track,
            frame.keyframe,
            frame.timestamp,
            frame.first_seq,
            frame.packet_count,
            frame.arrival,
        )
        self.size += frame.size

    def clear(self) -> None:
        self._blobs.clear()
        self._fields.clear()
        self.size = 0

    def frame(self, index: int) -> Frame:
        track, keyframe, timestamp, first_seq, count, arrival = self._FIELDS.unpack_from(
            self._fields, index * self._FIELDS.size
        )
        return Frame(track, keyframe, timestamp, first_seq, self._blobs[index], count, arrival)

    def frames(self) -> list[Frame]:
        return [self.frame(i) for i in range(len(self._blobs))]
