"""RtpReceiver's sequence accounting (RFC 3550 appendix A.3), in memory. (The benchmarks'
lean reader counts with RtpReceiver itself.)"""

from __future__ import annotations

import struct

from gateway.rtp.receiver import (
    SEQ_AHEAD,
    SEQ_DUPLICATE,
    SEQ_LATE,
    RtpReceiver,
    TrackStats,
    sequence_step,
)


def pcmu(seq: int, ts: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts, 0x99) + b"\x7f" * 8


def receiver() -> RtpReceiver:
    return RtpReceiver(TrackStats(0, "audio", "PCMU", 8000, "rtsp://h/s/trackID=0"))


def test_sequence_step_across_the_wrap() -> None:
    # Highest 65535 (extended), first 65530: 6 expected, 6 received.
    assert sequence_step(65530, 65535, 2, 7, 0) == (SEQ_AHEAD, 65538, 2)  # 0 and 1 missing
    assert sequence_step(65530, 65538, 0, 8, 0) == (SEQ_LATE, 65538, 1)  # one came late
    assert sequence_step(65530, 65538, 2, 9, 0) == (SEQ_DUPLICATE, 65538, 1)


def test_receiver_counts_loss_reordering_and_duplicates_over_a_wrap() -> None:
    track = receiver()
    for seq in (65533, 65534, 65535, 2, 0, 2, 3):
        track.feed(pcmu(seq), 0.0)
    stats = track.stats
    assert (stats.packets, stats.lost, stats.reordered, stats.duplicates) == (7, 1, 1, 1)
    assert stats.frames == 6  # every G.711 packet but the duplicate is a frame
