"""H.264/H.265 payload formats on real encoder output (PyAV libx264/libx265), decoded again by
PyAV and by a real ffmpeg receiving our RTP over loopback UDP with our SDP."""

from __future__ import annotations

import functools
import io
import socket
import subprocess
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from gateway.codecs import h264, h265, packetizer_for
from gateway.codecs.base import CodecParams
from gateway.codecs.h264 import split_annexb
from gateway.codecs.sdp import SdpTrack, session_sdp
from tests.rtp_wire import RtpPacket, build_packets


@dataclass(frozen=True)
class VideoCodec:
    name: str  # ours: H264 / H265
    encoder: str  # PyAV encoder
    decoder: str
    raw_format: str  # ffmpeg demuxer for an Annex-B elementary stream
    parameter_set_types: tuple[int, ...]
    module: object

    def nal_type(self, nal: bytes | memoryview) -> int:
        return nal[0] & 0x1F if self.name == "H264" else (nal[0] >> 1) & 0x3F


H264 = VideoCodec("H264", "libx264", "h264", "h264", (7, 8), h264)
H265 = VideoCodec("H265", "libx265", "hevc", "hevc", (32, 33, 34), h265)
CODECS = pytest.mark.parametrize("codec", [H264, H265], ids=["h264", "h265"])


def _picture(i: int, width: int, height: int) -> np.ndarray:
    """A moving gradient with a moving noise patch: keyframes of a few KB (fragmented)."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, ((x + y) // 2) % 256], -1)
    image = image.astype(np.uint8)
    noise = np.random.default_rng(1).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    image[40:120, 10 + 5 * i : 90 + 5 * i] = noise
    return image


@functools.cache
def encode(
    codec: VideoCodec, width: int = 320, height: int = 240, frames: int = 12
) -> tuple[tuple[bytes, bool], ...]:
    """Annex-B access units (decode order, no B-frames) and their keyframe flags."""
    context = av.CodecContext.create(codec.encoder, "w")
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = Fraction(1, 25)
    context.framerate = Fraction(25)
    context.gop_size = 6
    context.max_b_frames = 0
    if codec.encoder == "libx265":
        context.options = {"x265-params": "log-level=error"}
    units = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(_picture(i, width, height), format="rgb24")
        frame.pts = i
        units += [(bytes(p), bool(p.is_keyframe)) for p in context.encode(frame)]
    units += [(bytes(p), bool(p.is_keyframe)) for p in context.encode(None)]
    return tuple(units)


def relay(packetizer: object, units: list[tuple[bytes, bool]]) -> list[bytes]:
    """Packetize, stamp, parse and depacketize every access unit."""
    assert isinstance(packetizer, h264.NalPacketizer)
    depacketizer = (
        h264.H264Depacketizer()
        if isinstance(packetizer, h264.H264Packetizer)
        else h265.H265Depacketizer()
    )
    out: list[bytes] = []
    seq = 65000
    for i, (unit, keyframe) in enumerate(units):
        payloads = packetizer.packetize(unit, keyframe)
        for packet in build_packets(payloads, 96, seq, 3600 * i, 99):
            rtp = RtpPacket.parse(packet)
            out.extend(depacketizer.push(rtp.payload, rtp.marker, rtp.timestamp))
        seq += len(payloads)
    return out


def decode(codec: VideoCodec, units: list[bytes]) -> list[np.ndarray]:
    decoder = av.CodecContext.create(codec.decoder, "r")
    pictures = []
    for unit in [*units, None]:
        for frame in decoder.decode(av.Packet(unit) if unit is not None else None):
            pictures.append(frame.to_ndarray(format="yuv420p"))
    return pictures


def nals(unit: bytes) -> list[bytes]:
    return [bytes(n) for n in split_annexb(unit)]


@CODECS
def test_real_stream_round_trip_decodes_identically(codec: VideoCodec) -> None:
    units = list(encode(codec))
    assert sum(k for _, k in units) == 2
    assert max(len(u) for u, _ in units) > 1400  # keyframes are fragmented
    out = relay(packetizer_for(CodecParams(codec.name, "video", 90000)), units)
    assert [nals(u) for u in out] == [nals(u) for u, _ in units]
    decoded = decode(codec, out)
    assert len(decoded) == 12
    reference = decode(codec, [u for u, _ in units])
    assert all(np.array_equal(a, b) for a, b in zip(decoded, reference, strict=True))


@CODECS
def test_out_of_band_parameter_sets_are_sent_before_every_keyframe(codec: VideoCodec) -> None:
    units = list(encode(codec))
    sets = tuple(n for n in nals(units[0][0]) if codec.nal_type(n) in codec.parameter_set_types)
    assert len(sets) == len(codec.parameter_set_types)
    stripped = [
        (
            b"".join(
                b"\x00\x00\x00\x01" + n
                for n in nals(u)
                if codec.nal_type(n) not in codec.parameter_set_types
            ),
            k,
        )
        for u, k in units
    ]
    packetizer = packetizer_for(CodecParams(codec.name, "video", 90000, parameter_sets=sets))
    out = relay(packetizer, stripped)
    assert [nals(u)[: len(sets)] == list(sets) for u in out] == [k for _, k in units]
    # A client joining at the second keyframe decodes without any out-of-band data.
    second = [i for i, (_, k) in enumerate(units) if k][1]
    decoded = decode(codec, out[second:])
    assert len(decoded) == len(units) - second
    reference = decode(codec, [u for u, _ in units])[second:]
    assert all(np.array_equal(a, b) for a, b in zip(decoded, reference, strict=True))


@CODECS
def test_extradata_parameter_sets_annexb_and_iso(codec: VideoCodec) -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream(codec.encoder, rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        if codec.encoder == "libx265":
            stream.codec_context.options = {"x265-params": "log-level=error:bframes=0"}
        frame = av.VideoFrame.from_ndarray(_picture(0, 320, 240), format="rgb24")
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            if codec.encoder == "libx265":
                # libx265 through PyAV sometimes leaves the flushed packet's dts
                # uninitialised, which the MP4 muxer refuses; without B-frames dts == pts.
                packet.dts = packet.pts
            output.mux(packet)
        annexb_extradata = bytes(stream.codec_context.extradata)
    buffer.seek(0)
    with av.open(buffer) as source:
        iso_extradata = bytes(source.streams.video[0].codec_context.extradata)
    assert annexb_extradata.startswith(b"\x00\x00")
    assert iso_extradata[0] == 1  # avcC / hvcC configurationVersion
    parse = codec.module.parameter_sets_from_extradata  # type: ignore[attr-defined]
    from_annexb = parse(annexb_extradata)
    assert [codec.nal_type(n) for n in from_annexb] == list(codec.parameter_set_types)
    assert parse(iso_extradata) == from_annexb
    assert parse(b"") == ()
    with pytest.raises(ValueError, match="record"):
        parse(iso_extradata[:12])


@CODECS
@pytest.mark.parametrize(("width", "height"), [(320, 240), (330, 186)])
def test_sps_resolution_with_cropping(codec: VideoCodec, width: int, height: int) -> None:
    unit, _ = encode(codec, width, height, frames=1)[0]
    sps = next(n for n in nals(unit) if codec.nal_type(n) == codec.parameter_set_types[-2])
    parsed = codec.module.parse_sps(sps)  # type: ignore[attr-defined]
    assert (parsed.width, parsed.height) == (width, height)
    assert (parsed.bit_depth_luma_minus8, parsed.chroma_format_idc) == (0, 1)
    with pytest.raises(ValueError, match="SPS"):
        codec.module.parse_sps(sps[:6])  # type: ignore[attr-defined]


def _udp_port_bound(port: int) -> bool:
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        local = line.split()[1]
        if int(local.rsplit(":", 1)[1], 16) == port:
            return True
    return False


def _free_even_udp_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1] & ~1
        if not _udp_port_bound(port) and not _udp_port_bound(port + 1):
            return port


def _md5s(framemd5: str) -> list[str]:
    return [
        line.rsplit(",", 1)[1].strip()
        for line in framemd5.splitlines()
        if line and not line.startswith("#")
    ]


@CODECS
def test_ffmpeg_decodes_our_rtp_with_our_sdp(codec: VideoCodec, tmp_path: Path) -> None:
    units = list(encode(codec))
    packetizer = packetizer_for(CodecParams(codec.name, "video", 90000))
    payloads = [packetizer.packetize(u, k) for u, k in units]  # learns the parameter sets
    port = _free_even_udp_port()
    sdp = session_sdp(
        [SdpTrack.for_packetizer(packetizer, "trackID=0", port=port)],
        "test",
        "127.0.0.1",
        1,
        connection_addr="127.0.0.1",
    )
    sdp_path = tmp_path / "stream.sdp"
    sdp_path.write_text(sdp)
    raw_path = tmp_path / "stream.raw"
    raw_path.write_bytes(b"".join(u for u, _ in units))
    frames = "8"  # fewer than sent: the last ones may wait for more input in the decoder
    receiver = subprocess.Popen(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-protocol_whitelist",
            "file,udp,rtp",
            "-probesize",
            "32",
            "-analyzeduration",
            "0",
            "-i",
            str(sdp_path),
            "-frames:v",
            frames,
            "-fps_mode",
            "passthrough",
            "-f",
            "framemd5",
            "-",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not _udp_port_bound(port):  # ffmpeg has bound its RTP port
            assert receiver.poll() is None, receiver.stderr.read() if receiver.stderr else ""
            assert time.monotonic() < deadline, "ffmpeg never bound its RTP port"
            time.sleep(0.01)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            seq = 0
            for i, frame_payloads in enumerate(payloads):
                for packet in build_packets(frame_payloads, 96, seq, 3600 * i, 0x5EED):
                    sender.sendto(packet, ("127.0.0.1", port))
                seq += len(frame_payloads)
        out, err = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
    assert receiver.returncode == 0, err.decode()
    reference = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            codec.raw_format,
            "-i",
            str(raw_path),
            "-frames:v",
            frames,
            "-f",
            "framemd5",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    received = _md5s(out.decode())
    assert len(received) == int(frames)
    assert received == _md5s(reference.stdout.decode())
