"""Pre-encoded clips that simulated cameras loop at real-time pace.

Encoding video costs far more CPU than relaying it, so a clip is encoded once with PyAV
(libx264/libx265, G.711 or AAC audio), cached on disk, and shared in memory by every simulated
camera with the same :class:`ClipSpec`. A clip starts on a keyframe and is a whole number of
GOPs long, so frame ``i`` of loop ``k`` is sent with ``pts + k * duration`` and the stream
never breaks.

Frames are handed over the way FFmpeg's RTSP demuxer would hand them to the gateway: video as
Annex-B access units with 4-byte start codes and the parameter sets in band before every
keyframe, audio as 20 ms G.711 blocks or raw AAC frames.

Pre-generate clips (the benchmark and the setup script do, so timing runs never encode)::

    python3 -m gateway.sim.clips --codec H264 --width 1920 --height 1080 --audio PCMU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import struct
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from gateway.codecs.base import CodecParams
from gateway.codecs.h264 import split_annexb
from gateway.files import write_atomically

VIDEO_CLOCK_RATE = 90_000
VIDEO_CODECS = ("H264", "H265")
AUDIO_CODECS = ("PCMU", "PCMA", "AAC")
# Sampling rates an AAC AudioSpecificConfig can name by index (ISO/IEC 14496-3 table 1.18).
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
AAC_FRAME_SAMPLES = 1024
G711_BLOCK_SECONDS = Fraction(1, 50)  # 20 ms, what cameras send per RTP packet
MAX_DIMENSION = 8192
# Loop length when ClipSpec.seconds is None. libx265 (ultrafast) encodes 1080p about 3x slower
# than libx264 (veryfast) here: 10 s took 27 s against 9.5 s on 2 cores, so H.265 loops are
# shorter to keep generation near 10 s.
DEFAULT_SECONDS = {"H264": 10.0, "H265": 4.0}

# Bump when the generator or the file layout changes: old cache files then no longer match.
FORMAT_VERSION = 1
_MAGIC = b"ONVIFGW-CLIP\n"
_HEADER_LEN = struct.Struct(">I")

# NAL unit types: parameter sets that must precede every keyframe, and keyframe slices.
_H264_PARAMETER_SETS = (7, 8)  # SPS, PPS
_H264_IDR = 5
_H265_PARAMETER_SETS = (32, 33, 34)  # VPS, SPS, PPS
_H265_IRAP = range(16, 24)  # BLA, IDR, CRA and reserved IRAP types
_H264_PROFILES = {66: "Baseline", 77: "Main", 88: "Extended", 100: "High"}
_H265_PROFILES = {1: "Main", 2: "Main10", 3: "MainStillPicture"}


@dataclass(frozen=True)
class ClipSpec:
    """What to encode. Equal specs share one cache file and one in-memory :class:`Clip`."""

    codec: str = "H264"
    width: int = 1920
    height: int = 1080
    fps: int = 25
    gop_seconds: float = 2.0
    bitrate: int = 4_000_000
    seconds: float | None = None  # None: DEFAULT_SECONDS[codec]
    audio: str | None = None
    audio_rate: int = 8000

    def __post_init__(self) -> None:
        if self.codec not in VIDEO_CODECS:
            raise ValueError(f"codec must be one of {', '.join(VIDEO_CODECS)}, not {self.codec!r}")
        if self.seconds is None:
            # Resolved here so ClipSpec(codec="H265") equals (and caches as) the explicit spec.
            object.__setattr__(self, "seconds", DEFAULT_SECONDS[self.codec])
        for name in ("width", "height"):
            value = getattr(self, name)
            if not 16 <= value <= MAX_DIMENSION or value % 2:
                raise ValueError(f"{name} must be even and in 16..{MAX_DIMENSION}, not {value}")
        if not 1 <= self.fps <= 120 or VIDEO_CLOCK_RATE % self.fps:
            raise ValueError(f"fps must divide {VIDEO_CLOCK_RATE} and be in 1..120, not {self.fps}")
        if self.gop_frames < 1 or self.gop_frames != self.gop_seconds * self.fps:
            raise ValueError(
                f"gop_seconds * fps must be a whole number of frames, "
                f"not {self.gop_seconds} * {self.fps}"
            )
        gops = self.loop_seconds * self.fps / self.gop_frames
        if gops < 1 or gops != round(gops):
            raise ValueError(
                f"seconds must be a whole number (at least 1) of {self.gop_seconds} s GOPs "
                f"so the clip loops seamlessly, not {self.seconds}"
            )
        if not 16_000 <= self.bitrate <= 100_000_000:
            raise ValueError(f"bitrate must be in 16000..100000000 bit/s, not {self.bitrate}")
        if self.audio is not None:
            if self.audio not in AUDIO_CODECS:
                raise ValueError(
                    f"audio must be one of {', '.join(AUDIO_CODECS)} or None, not {self.audio!r}"
                )
            if self.audio_rate not in AAC_RATES:
                raise ValueError(f"audio_rate must be one of {AAC_RATES}, not {self.audio_rate}")
            if self.audio != "AAC" and self.audio_rate * G711_BLOCK_SECONDS.numerator % (
                G711_BLOCK_SECONDS.denominator
            ):
                raise ValueError(f"audio_rate {self.audio_rate} has no whole 20 ms G.711 block")
            if (self.duration * self.audio_rate) % VIDEO_CLOCK_RATE:
                raise ValueError(
                    f"the clip ({self.frame_count} frames) is not a whole number of "
                    f"{self.audio_rate} Hz audio samples"
                )

    @property
    def gop_frames(self) -> int:
        return round(self.gop_seconds * self.fps)

    @property
    def loop_seconds(self) -> float:
        return DEFAULT_SECONDS[self.codec] if self.seconds is None else self.seconds

    @property
    def frame_count(self) -> int:
        return round(self.loop_seconds * self.fps)

    @property
    def frame_ticks(self) -> int:
        """Video clock ticks (90 kHz) per frame."""
        return VIDEO_CLOCK_RATE // self.fps

    @property
    def duration(self) -> int:
        """Length of one loop in video clock ticks."""
        return self.frame_count * self.frame_ticks

    @property
    def audio_samples(self) -> int:
        """Length of one loop in audio samples (the audio RTP clock)."""
        return self.duration * self.audio_rate // VIDEO_CLOCK_RATE

    def cache_name(self) -> str:
        """File name in the cache: readable prefix, hash of every field and the format."""
        fields = json.dumps(
            {"format": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True
        ).encode()
        digest = hashlib.sha256(fields).hexdigest()[:16]
        audio = f"-{self.audio}{self.audio_rate}" if self.audio else ""
        return f"{self.codec}-{self.width}x{self.height}-{self.fps}fps{audio}-{digest}.clip"


@dataclass(frozen=True, slots=True)
class ClipFrame:
    """One frame: ``pts`` in the track's RTP clock (90 kHz video, sample rate for audio)."""

    pts: int
    keyframe: bool
    data: bytes


@dataclass(frozen=True)
class Clip:
    """One encoded loop. ``duration`` is in video clock ticks; loop ``k`` adds ``k * duration``."""

    spec: ClipSpec
    video: CodecParams
    video_frames: tuple[ClipFrame, ...]
    audio: CodecParams | None
    audio_frames: tuple[ClipFrame, ...]
    duration: int

    @property
    def audio_duration(self) -> int:
        """Length of one loop in audio clock ticks (samples); 0 without audio."""
        return self.spec.audio_samples if self.audio is not None else 0

    @property
    def video_bitrate(self) -> float:
        """Average video bit rate in bit/s, as measured on the encoded frames."""
        size = sum(len(frame.data) for frame in self.video_frames)
        return size * 8 * VIDEO_CLOCK_RATE / self.duration


def _nal_type(codec: str, nal: bytes) -> int:
    return nal[0] & 0x1F if codec == "H264" else (nal[0] >> 1) & 0x3F


# --------------------------------------------------------------------------- test pattern

# 3x5 bitmaps for the burned-in frame counter and clock.
_GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001010010010",
    "8": "111101111101111",
    "9": "111101111001111",
    ":": "000010000010000",
    ".": "000000000000010",
    " ": "000000000000000",
}


class _Pattern:
    """Luma/chroma planes of a scrolling test pattern with a frame counter and a clock.

    A scrolling gradient is what motion search predicts well; the per-frame noise (a window at
    a pseudo-random offset into one precomputed noise field) is what it cannot, so the encoder
    really spends the target bit rate instead of padding.
    """

    def __init__(self, width: int, height: int, fps: int) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.noise_margin = 64
        rng = np.random.default_rng(20240601)
        self.noise = rng.integers(
            0, 20, size=(height + self.noise_margin, width + self.noise_margin), dtype=np.uint8
        )
        # Luma ramp, 256 columns wider than the picture so scrolling is a slice; limited range
        # 16..215 plus noise stays within 16..235.
        levels = (16 + np.arange(256, dtype=np.uint16) * 200 // 255).astype(np.uint8)
        diagonal = np.add.outer(np.arange(height) // 2, np.arange(width + 256))
        self.ramp = levels[diagonal % 256]
        cw, ch = width // 2, height // 2
        self.chroma_u = (
            (64 + np.arange(cw + 256) % 256 // 2).astype(np.uint8)[None, :].repeat(ch, axis=0)
        )
        self.chroma_v = (
            (64 + np.arange(ch + 256) % 256 // 2).astype(np.uint8)[:, None].repeat(cw, axis=1)
        )
        self.scale = max(2, height // 60)
        self.bar_width = max(4, width // 40) // 2 * 2

    def fill(self, frame: av.VideoFrame, index: int) -> None:
        w, h, m = self.width, self.height, self.noise_margin
        # Write straight into the frame's planes (rows may be padded beyond the width).
        y_plane, u_plane, v_plane = (
            np.asarray(p).reshape(p.height, p.line_size) for p in frame.planes
        )
        y = y_plane[:h, :w]
        shift = (index * 4) % 256
        ny, nx = (index * 37) % m, (index * 53) % m
        np.add(self.ramp[:, shift : shift + w], self.noise[ny : ny + h, nx : nx + w], out=y)
        bar = (index * w // (2 * self.fps)) % (w - self.bar_width)
        y[:, bar : bar + self.bar_width] = 235
        cshift = (index * 2) % 256
        u_plane[: h // 2, : w // 2] = self.chroma_u[:, cshift : cshift + w // 2]
        v_plane[: h // 2, : w // 2] = self.chroma_v[cshift : cshift + h // 2, :]
        seconds, frames = divmod(index, self.fps)
        self._text(y, f"{index:06d} {seconds // 60:02d}:{seconds % 60:02d}.{frames:02d}")

    def _text(self, y: np.ndarray, text: str) -> None:
        s = self.scale
        x0 = y0 = s * 2
        width = min(len(text) * 4 * s + s, y.shape[1] - x0)
        y[y0 - s : y0 + 6 * s, x0 - s : x0 - s + width] = 16
        for i, char in enumerate(text):
            glyph = np.array([c == "1" for c in _GLYPHS[char]]).reshape(5, 3)
            block = np.kron(glyph, np.ones((s, s), dtype=bool))
            x = x0 + i * 4 * s
            if x + 3 * s > y.shape[1]:
                break
            region = y[y0 : y0 + 5 * s, x : x + 3 * s]
            region[block] = 235


# --------------------------------------------------------------------------- encoding


def _video_encoder(spec: ClipSpec) -> av.VideoCodecContext:
    gop = spec.gop_frames
    kbit = spec.bitrate // 1000
    if spec.codec == "H264":
        ctx = av.CodecContext.create("libx264", "w")
        # zerolatency: no B-frames and no lookahead, so packets come out in display order;
        # nal-hrd=cbr adds filler when the picture is too easy, so every second carries the
        # target rate like a camera in CBR mode.
        options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "nal-hrd": "cbr",
            "x264-params": (
                f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:"
                f"vbv-maxrate={kbit}:vbv-bufsize={kbit}"
            ),
        }
    else:
        ctx = av.CodecContext.create("libx265", "w")
        # open-gop=0 makes every keyframe an IDR; repeat-headers puts VPS/SPS/PPS before each.
        options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x265-params": (
                f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:open-gop=0:"
                f"repeat-headers=1:vbv-maxrate={kbit}:vbv-bufsize={kbit}:strict-cbr=1:"
                "info=0:log-level=error"
            ),
        }
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width = spec.width
    ctx.height = spec.height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, spec.fps)
    ctx.framerate = Fraction(spec.fps)
    ctx.bit_rate = spec.bitrate
    ctx.options = options
    return ctx


def _encode_video(spec: ClipSpec) -> tuple[CodecParams, tuple[ClipFrame, ...]]:
    ctx = _video_encoder(spec)
    pattern = _Pattern(spec.width, spec.height, spec.fps)
    packets: list[av.Packet] = []
    for index in range(spec.frame_count):
        frame = av.VideoFrame(spec.width, spec.height, "yuv420p")
        pattern.fill(frame, index)
        frame.pts = index
        packets.extend(ctx.encode(frame))
    packets.extend(ctx.encode(None))
    if len(packets) != spec.frame_count:
        raise RuntimeError(f"encoder returned {len(packets)} packets for {spec.frame_count} frames")

    parameter_set_types = _H264_PARAMETER_SETS if spec.codec == "H264" else _H265_PARAMETER_SETS
    frames: list[ClipFrame] = []
    parameter_sets: dict[int, bytes] = {}
    for index, packet in enumerate(packets):
        if packet.pts != index:
            raise RuntimeError(f"encoder reordered frames: packet {index} has pts {packet.pts}")
        nals = [bytes(nal) for nal in split_annexb(bytes(packet))]
        types = [_nal_type(spec.codec, nal) for nal in nals]
        if spec.codec == "H264":
            keyframe = _H264_IDR in types
        else:
            keyframe = any(t in _H265_IRAP for t in types)
        if keyframe != (index % spec.gop_frames == 0):
            raise RuntimeError(f"irregular keyframes: frame {index} keyframe={keyframe}")
        if keyframe:
            missing = [t for t in parameter_set_types if t not in types]
            if missing:
                raise RuntimeError(f"keyframe {index} lacks parameter sets of NAL types {missing}")
            if not parameter_sets:
                parameter_sets = {t: nal for t, nal in zip(types, nals, strict=True)}
        # 4-byte start codes throughout, as FFmpeg's RTP depacketizers emit them.
        data = b"".join(b"\x00\x00\x00\x01" + nal for nal in nals)
        frames.append(ClipFrame(index * spec.frame_ticks, keyframe, data))

    sets = tuple(parameter_sets[t] for t in parameter_set_types)
    if spec.codec == "H264":
        profile = _H264_PROFILES.get(sets[0][1], str(sets[0][1]))
    else:
        # SPS: 2-byte NAL header, 1 byte of ids, then general_profile_space/tier/profile_idc.
        profile = _H265_PROFILES.get(sets[1][3] & 0x1F, str(sets[1][3] & 0x1F))
    params = CodecParams(
        name=spec.codec,
        media="video",
        clock_rate=VIDEO_CLOCK_RATE,
        width=spec.width,
        height=spec.height,
        parameter_sets=sets,
        profile=profile,
    )
    return params, tuple(frames)


def _audio_signal(spec: ClipSpec) -> np.ndarray:
    """One loop of mono s16 audio: a 440 Hz tone with a 1 kHz beep at each whole second."""
    rate = spec.audio_rate
    t = np.arange(spec.audio_samples) / rate
    tone = 0.2 * np.sin(2 * np.pi * 440 * t)
    beep = np.where((t % 1.0) < 0.1, 0.3 * np.sin(2 * np.pi * 1000 * t), 0.0)
    return ((tone + beep) * 32767).astype(np.int16)


def _encode_audio(spec: ClipSpec) -> tuple[CodecParams, tuple[ClipFrame, ...]]:
    assert spec.audio is not None
    rate = spec.audio_rate
    encoder_name = {"PCMU": "pcm_mulaw", "PCMA": "pcm_alaw", "AAC": "aac"}[spec.audio]
    ctx = av.CodecContext.create(encoder_name, "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = rate
    ctx.layout = "mono"
    ctx.time_base = Fraction(1, rate)
    if spec.audio == "AAC":
        ctx.format = "fltp"
        ctx.bit_rate = 32_000 if rate <= 16_000 else 64_000
        block = AAC_FRAME_SAMPLES
    else:
        ctx.format = "s16"
        block = rate * G711_BLOCK_SECONDS.numerator // G711_BLOCK_SECONDS.denominator
    ctx.open()
    signal = _audio_signal(spec)
    packets: list[av.Packet] = []
    for start in range(0, len(signal), block):
        chunk = signal[start : start + block]
        if spec.audio == "AAC":
            samples = (chunk.astype(np.float32) / 32768).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        else:
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        packets.extend(ctx.encode(frame))
    packets.extend(ctx.encode(None))

    # AAC: the encoder's priming frame has a negative pts, and only whole frames fit in the
    # loop; the remainder (under 1024 samples) is a gap at the loop point that RTP receivers
    # play out as silence. G.711 blocks divide the loop exactly (checked below).
    frames = tuple(
        ClipFrame(p.pts, True, bytes(p))
        for p in packets
        if p.pts is not None and p.pts >= 0 and p.pts + block <= spec.audio_samples
    )
    if spec.audio == "AAC":
        config = bytes(ctx.extradata or b"")
        if not config:
            raise RuntimeError("AAC encoder produced no AudioSpecificConfig")
        params = CodecParams("AAC", "audio", rate, channels=1, config=config, profile="LC")
    else:
        if len(frames) * block != spec.audio_samples:
            raise RuntimeError(f"G.711 encoder returned {len(frames)} blocks of {block} samples")
        params = CodecParams(spec.audio, "audio", rate, channels=1)
    return params, frames


# Incremented by every encode: lets callers (and tests) see whether a load hit the cache.
clips_generated = 0


def generate_clip(spec: ClipSpec) -> Clip:
    """Encode ``spec`` now (seconds of CPU at 1080p); :func:`load_clip` is what callers want."""
    global clips_generated
    video, video_frames = _encode_video(spec)
    audio: CodecParams | None = None
    audio_frames: tuple[ClipFrame, ...] = ()
    if spec.audio is not None:
        audio, audio_frames = _encode_audio(spec)
    clips_generated += 1
    return Clip(spec, video, video_frames, audio, audio_frames, spec.duration)


# --------------------------------------------------------------------------- cache file


def _params_to_json(params: CodecParams) -> dict[str, Any]:
    return {
        "name": params.name,
        "media": params.media,
        "clock_rate": params.clock_rate,
        "channels": params.channels,
        "width": params.width,
        "height": params.height,
        "parameter_sets": [p.hex() for p in params.parameter_sets],
        "config": params.config.hex(),
        "profile": params.profile,
    }


def _params_from_json(raw: dict[str, Any]) -> CodecParams:
    return CodecParams(
        name=str(raw["name"]),
        media=str(raw["media"]),
        clock_rate=int(raw["clock_rate"]),
        channels=int(raw["channels"]),
        width=int(raw["width"]),
        height=int(raw["height"]),
        parameter_sets=tuple(bytes.fromhex(p) for p in raw["parameter_sets"]),
        config=bytes.fromhex(raw["config"]),
        profile=str(raw["profile"]),
    )


def clip_to_bytes(clip: Clip) -> bytes:
    """Cache file layout: magic, header length, JSON header, then every frame's data in order.

    The header holds the spec, codec parameters, per-frame (pts, keyframe, size) and a SHA-256
    of the payload, so a truncated or damaged file is detected rather than half-played.
    """
    payload = b"".join(f.data for f in (*clip.video_frames, *clip.audio_frames))
    header = {
        "format": FORMAT_VERSION,
        "spec": dataclasses.asdict(clip.spec),
        "duration": clip.duration,
        "video": _params_to_json(clip.video),
        "audio": _params_to_json(clip.audio) if clip.audio else None,
        "video_frames": [[f.pts, int(f.keyframe), len(f.data)] for f in clip.video_frames],
        "audio_frames": [[f.pts, int(f.keyframe), len(f.data)] for f in clip.audio_frames],
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return _MAGIC + _HEADER_LEN.pack(len(encoded)) + encoded + payload


def clip_from_bytes(data: bytes, spec: ClipSpec) -> Clip:
    """Parse a cache file written by :func:`clip_to_bytes`; ``ValueError`` if it is unusable."""
    if not data.startswith(_MAGIC):
        raise ValueError("not a clip file (bad magic)")
    offset = len(_MAGIC)
    if len(data) < offset + _HEADER_LEN.size:
        raise ValueError("clip file truncated in its header length")
    (header_len,) = _HEADER_LEN.unpack_from(data, offset)
    offset += _HEADER_LEN.size
    if offset + header_len > len(data):
        raise ValueError(f"clip file truncated: header of {header_len} bytes does not fit")
    try:
        header = json.loads(data[offset : offset + header_len])
        payload = memoryview(data)[offset + header_len :]
        if header["format"] != FORMAT_VERSION:
            raise ValueError(f"clip file format {header['format']}, expected {FORMAT_VERSION}")
        if ClipSpec(**header["spec"]) != spec:
            raise ValueError("clip file holds a different spec")
        if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
            raise ValueError("clip file payload checksum mismatch")
        position = 0
        tracks: list[tuple[ClipFrame, ...]] = []
        for key in ("video_frames", "audio_frames"):
            frames = []
            for pts, keyframe, size in header[key]:
                chunk = bytes(payload[position : position + size])
                frames.append(ClipFrame(int(pts), bool(keyframe), chunk))
                position += size
            tracks.append(tuple(frames))
        if position != len(payload):
            raise ValueError(f"clip file frame sizes sum to {position}, payload is {len(payload)}")
        return Clip(
            spec=spec,
            video=_params_from_json(header["video"]),
            video_frames=tracks[0],
            audio=_params_from_json(header["audio"]) if header["audio"] else None,
            audio_frames=tracks[1],
            duration=int(header["duration"]),
        )
    except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"clip file header is malformed: {exc!r}") from exc


def default_cache_dir() -> Path:
    env = os.environ.get("ONVIF_GATEWAY_CLIP_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "onvif-gateway" / "clips"


def clip_path(spec: ClipSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / spec.cache_name()


def _read_cached(path: Path, spec: ClipSpec) -> Clip | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return clip_from_bytes(data, spec)
    except ValueError:
        return None  # corrupt or stale: the caller regenerates and replaces it


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes so N simulators starting together encode a clip once."""
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


# Clips in use, shared by every camera with the same spec; freed when the last one drops it.
_loaded: weakref.WeakValueDictionary[tuple[ClipSpec, Path], Clip] = weakref.WeakValueDictionary()
_key_locks: dict[tuple[ClipSpec, Path], threading.Lock] = {}
_key_locks_guard = threading.Lock()


def load_clip(
    spec: ClipSpec, cache_dir: str | os.PathLike[str] | None = None, *, force: bool = False
) -> Clip:
    """The clip for ``spec``: from memory, else from the disk cache, else encoded and cached.

    Blocking (file IO, possibly seconds of encoding): call it from a thread or at startup.
    ``force`` re-encodes even when a valid cache file exists.
    """
    path = clip_path(spec, cache_dir).resolve()
    key = (spec, path)
    with _key_locks_guard:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        clip = None if force else _loaded.get(key)
        if clip is not None:
            return clip
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path):
            clip = None if force else _read_cached(path, spec)
            if clip is None:
                clip = generate_clip(spec)
                write_atomically(path, clip_to_bytes(clip))
        _loaded[key] = clip
        return clip


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m gateway.sim.clips",
        description="Pre-generate a simulator clip into the cache (no-op if already cached).",
    )
    defaults = ClipSpec()
    parser.add_argument("--codec", choices=VIDEO_CODECS, default=defaults.codec)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--fps", type=int, default=defaults.fps)
    parser.add_argument("--gop-seconds", type=float, default=defaults.gop_seconds)
    parser.add_argument("--bitrate", type=int, default=defaults.bitrate, help="bit/s")
    parser.add_argument(
        "--seconds", type=float, help=f"loop length; default {DEFAULT_SECONDS} by codec"
    )
    parser.add_argument("--audio", choices=(*AUDIO_CODECS, "none"), default="none")
    parser.add_argument("--audio-rate", type=int, default=defaults.audio_rate)
    parser.add_argument("--cache-dir", help=f"default: {default_cache_dir()}")
    parser.add_argument("--force", action="store_true", help="re-encode even if cached")
    args = parser.parse_args(argv)
    try:
        spec = ClipSpec(
            codec=args.codec,
            width=args.width,
            height=args.height,
            fps=args.fps,
            gop_seconds=args.gop_seconds,
            bitrate=args.bitrate,
            seconds=args.seconds,
            audio=None if args.audio == "none" else args.audio,
            audio_rate=args.audio_rate,
        )
    except ValueError as exc:
        parser.error(str(exc))
    before = clips_generated
    started = time.monotonic()
    clip = load_clip(spec, args.cache_dir, force=args.force)
    elapsed = time.monotonic() - started
    action = "generated" if clips_generated > before else "cached"
    audio = f", audio {clip.audio.name} {clip.audio.clock_rate} Hz" if clip.audio else ""
    print(
        f"{action} {clip_path(spec, args.cache_dir)}: {spec.codec} {clip.video.profile} "
        f"{spec.width}x{spec.height} {spec.fps} fps, {len(clip.video_frames)} frames "
        f"({spec.loop_seconds:g} s, GOP {spec.gop_frames}), {clip.video_bitrate / 1000:.0f} kbit/s"
        f"{audio}, in {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
