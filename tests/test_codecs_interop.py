"""Our depacketizers, RTCP and SDP parsers on what a real ffmpeg sends: ffmpeg encodes (or
copies) a stream to RTP on loopback, we receive its RTP and RTCP and read its SDP file."""

from __future__ import annotations

import itertools
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from gateway.codecs import depacketizer_for, params_from_sdp_media
from gateway.codecs.h264 import split_annexb
from gateway.codecs.sdp import parse_sdp
from gateway.rtp.packet import SenderReport, unix_from_ntp
from tests.rtp_wire import RtpPacket, parse_rtcp_compound


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on loopback at an even port and the next one (RTP and RTCP)."""
    for _ in range(100):
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        rtp.bind(("127.0.0.1", 0))
        port = rtp.getsockname()[1]
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if port % 2:
                raise OSError("odd port")
            rtcp.bind(("127.0.0.1", port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        return rtp, rtcp
    raise RuntimeError("no free even/odd UDP port pair on loopback")


def _drain(sock: socket.socket) -> Iterator[bytes]:
    """Everything already queued on the socket (ffmpeg has exited: nothing more comes)."""
    sock.setblocking(False)
    while True:
        try:
            yield sock.recv(65536)
        except BlockingIOError:
            return


def ffmpeg_to_rtp(tmp_path: Path, args: list[str]) -> tuple[list[RtpPacket], list[bytes], str]:
    """Run ffmpeg with an RTP output to our sockets; (RTP packets, RTCP datagrams, SDP)."""
    rtp, rtcp = _bind_pair()
    port = rtp.getsockname()[1]
    sdp_path = tmp_path / "ffmpeg.sdp"
    with rtp, rtcp:
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                *args,
                "-f",
                "rtp",
                "-sdp_file",
                str(sdp_path),
                f"rtp://127.0.0.1:{port}?rtcpport={port + 1}&pkt_size=1200",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        packets = [RtpPacket.parse(d) for d in _drain(rtp)]
        reports = list(_drain(rtcp))
    return packets, reports, sdp_path.read_text()


def depacketize(packets: list[RtpPacket], encoding: str, sdp: str) -> list[bytes]:
    media = parse_sdp(sdp).media[0]
    depacketizer = depacketizer_for(params_from_sdp_media(media))
    # Loopback keeps the order; check it anyway, a gap would make the comparison meaningless.
    assert all(
        ((b.sequence_number - a.sequence_number) & 0xFFFF) == 1
        for a, b in itertools.pairwise(packets)
    )
    assert {p.payload_type for p in packets} == {media.payload_type}
    assert media.encoding == encoding
    frames = []
    for packet in packets:
        frames.extend(depacketizer.push(packet.payload, packet.marker, packet.timestamp))
    return frames


@pytest.mark.parametrize(
    ("encoder", "encoding", "raw_format"),
    [("libx264", "H264", "h264"), ("libx265", "H265", "hevc")],
)
def test_video_from_ffmpeg(tmp_path: Path, encoder: str, encoding: str, raw_format: str) -> None:
    source = tmp_path / "source.raw"
    encode = [
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25:duration=0.4",
        "-c:v",
        encoder,
        "-bf",
        "0",
        "-g",
        "5",
        "-pix_fmt",
        "yuv420p",
    ]
    if encoder == "libx265":
        encode += ["-x265-params", "log-level=error"]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", *encode, "-f", raw_format, str(source)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    packets, reports, sdp = ffmpeg_to_rtp(
        tmp_path, ["-f", raw_format, "-i", str(source), "-c", "copy"]
    )
    assert max(len(p.payload) for p in packets) <= 1200 - 12
    frames = depacketize(packets, encoding, sdp)
    # The same NAL units as the file (ffmpeg drops nothing but the start codes).
    sent = [bytes(n) for n in split_annexb(source.read_bytes())]
    received = [bytes(n) for frame in frames for n in split_annexb(frame)]
    assert received == sent
    assert len(frames) == 10
    params = params_from_sdp_media(parse_sdp(sdp).media[0])
    assert (params.width, params.height) == (320, 240)
    # ffmpeg sends an RTCP sender report for the stream.
    sender_reports = [
        p for d in reports for p in parse_rtcp_compound(d) if isinstance(p, SenderReport)
    ]
    assert sender_reports
    assert {r.ssrc for r in sender_reports} == {packets[0].ssrc}
    assert unix_from_ntp(sender_reports[0].ntp_timestamp) > 1_600_000_000


def test_aac_from_ffmpeg_with_several_access_units_per_packet(tmp_path: Path) -> None:
    packets, _, sdp = ffmpeg_to_rtp(
        tmp_path,
        [
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=16000:duration=1",
            "-c:a",
            "aac",
            "-b:a",
            "24k",
            "-ac",
            "1",
        ],
    )
    media = parse_sdp(sdp).media[0]
    assert media.fmtp["mode"].lower() == "aac-hbr"
    units = depacketize(packets, "MPEG4-GENERIC", sdp)
    # ffmpeg aggregates access units, so there are more units than packets.
    assert len(units) > len(packets)
    params = params_from_sdp_media(media)
    assert (params.name, params.clock_rate, params.channels) == ("AAC", 16000, 1)
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = params.config
    samples = np.concatenate(
        [f.to_ndarray()[0] for u in units for f in decoder.decode(av.Packet(u))]
    )
    # ffmpeg keeps its last few buffered access units at the end: count what was sent.
    assert len(units) == sum(int.from_bytes(p.payload[:2], "big") // 16 for p in packets)
    assert len(samples) == 1024 * len(units)
    # A 440 Hz tone: the strongest frequency of the decoded signal.
    spectrum = np.abs(np.fft.rfft(samples[2048:]))
    peak = np.argmax(spectrum) * 16000 / len(samples[2048:])
    assert abs(peak - 440) < 5
