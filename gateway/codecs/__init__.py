"""RTP payload formats (sans-IO): one module per codec behind ``gateway.codecs.base``.

The registry maps a codec name to its packetizer and depacketizer, and turns an SDP media
section from a camera into :class:`CodecParams`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from gateway.codecs import aac, g711, h264, h265
from gateway.codecs.base import DEFAULT_MAX_PAYLOAD, CodecParams, Depacketizer, Packetizer
from gateway.codecs.sdp import MediaDescription

SUPPORTED = ("H264", "H265", "AAC", "PCMU", "PCMA")
# Codecs whose every RTP payload is a whole frame on its own, so a relay can hand each packet
# over as it comes (no reassembly, no frame boundaries to find).
SELF_CONTAINED_PAYLOADS = ("PCMU", "PCMA")

# SDP encoding names and FFmpeg codec names -> our codec names.
_ALIASES = {
    "H264": "H264",
    "AVC": "H264",
    "H265": "H265",
    "HEVC": "H265",
    "AAC": "AAC",
    "MPEG4-GENERIC": "AAC",
    "PCMU": "PCMU",
    "PCM_MULAW": "PCMU",
    "PCMA": "PCMA",
    "PCM_ALAW": "PCMA",
}

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "SELF_CONTAINED_PAYLOADS",
    "SUPPORTED",
    "CodecParams",
    "Depacketizer",
    "Packetizer",
    "codec_name",
    "depacketizer_for",
    "packetizer_for",
    "params_from_sdp_media",
]


def codec_name(name: str) -> str:
    """Our codec name for an SDP encoding name or FFmpeg codec name; ValueError if unknown."""
    canonical = _ALIASES.get(name.upper())
    if canonical is None:
        raise ValueError(f"unsupported codec {name!r}; supported: {', '.join(SUPPORTED)}")
    return canonical


def packetizer_for(
    params: CodecParams, payload_type: int | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> Packetizer:
    """A packetizer for ``params``; default payload types: 96 video, 97 AAC, static G.711."""
    name = codec_name(params.name)
    if name == "H264":
        return h264.H264Packetizer(
            params, 96 if payload_type is None else payload_type, max_payload
        )
    if name == "H265":
        return h265.H265Packetizer(
            params, 96 if payload_type is None else payload_type, max_payload
        )
    if name == "AAC":
        return aac.AacPacketizer(params, 97 if payload_type is None else payload_type, max_payload)
    return g711.G711Packetizer(params, payload_type, max_payload)


def depacketizer_for(params_or_name: CodecParams | str) -> Depacketizer:
    """A depacketizer for a codec; AAC reads sizelength/indexlength/indexdeltalength from
    ``params.extra`` (the SDP fmtp) when given."""
    if isinstance(params_or_name, str):
        name = codec_name(params_or_name)
        extra: dict[str, str] = {}
    else:
        name = codec_name(params_or_name.name)
        extra = params_or_name.extra
    if name == "H264":
        return h264.H264Depacketizer()
    if name == "H265":
        return h265.H265Depacketizer()
    if name == "AAC":
        try:
            return aac.AacDepacketizer(
                int(extra.get("sizelength", aac.SIZE_LENGTH)),
                int(extra.get("indexlength", aac.INDEX_LENGTH)),
                int(extra.get("indexdeltalength", aac.INDEX_LENGTH)),
            )
        except ValueError as exc:
            raise ValueError(f"bad AAC fmtp: {exc}") from None
    return g711.G711Depacketizer()


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"SDP {what} is not valid base64: {value[:40]!r}") from None


def params_from_sdp_media(media: MediaDescription) -> CodecParams:
    """CodecParams for a camera's SDP media section (parameter sets, AAC config, size)."""
    name = codec_name(media.encoding or "?")
    fmtp = media.fmtp
    parameter_sets: tuple[bytes, ...] = ()
    config = b""
    width = height = 0
    if name == "H264":
        sprop = fmtp.get("sprop-parameter-sets", "")
        parameter_sets = tuple(
            _b64(part, "sprop-parameter-sets") for part in sprop.split(",") if part.strip()
        )
        sps = next((p for p in parameter_sets if p and p[0] & 0x1F == h264.NAL_SPS), None)
        if sps is not None:
            width, height = _resolution(h264.parse_sps, sps)
    elif name == "H265":
        parameter_sets = tuple(
            _b64(fmtp[key], key) for key in ("sprop-vps", "sprop-sps", "sprop-pps") if fmtp.get(key)
        )
        sps = next(
            (p for p in parameter_sets if len(p) > 2 and h265.nal_type(p) == h265.NAL_SPS), None
        )
        if sps is not None:
            width, height = _resolution(h265.parse_sps, sps)
    elif name == "AAC":
        config_hex = fmtp.get("config", "")
        try:
            config = bytes.fromhex(config_hex)
        except ValueError:
            raise ValueError(f"SDP AAC config is not hex: {config_hex[:40]!r}") from None
    clock_rate = media.clock_rate or (90000 if media.media == "video" else 8000)
    channels = media.channels or 1
    return CodecParams(
        name=name,
        media=media.media,
        clock_rate=clock_rate,
        channels=channels,
        width=width,
        height=height,
        parameter_sets=parameter_sets,
        config=config,
        extra=dict(fmtp),
    )


def _resolution(
    parse: Callable[[bytes], h264.H264Sps | h265.H265Sps], sps: bytes
) -> tuple[int, int]:
    # A camera's odd SPS must not stop the stream: the size is only informative.
    try:
        parsed = parse(sps)
    except ValueError:
        return 0, 0
    return parsed.width, parsed.height
