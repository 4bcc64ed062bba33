"""Simulator clips: real libx264/libx265/G.711/AAC encodes, decoded back with PyAV."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import cast

import av
import numpy as np
import pytest

from gateway.codecs.h264 import split_annexb
from gateway.media.hub import StreamHub
from gateway.sim import clips
from gateway.sim.camera import ClipPlayer
from gateway.sim.clips import Clip, ClipSpec, load_clip

H264_PCMU = ClipSpec(
    "H264", 320, 240, fps=25, gop_seconds=1.0, bitrate=600_000, seconds=2.0, audio="PCMU"
)
H264_PCMA = ClipSpec(
    "H264", 320, 240, fps=25, gop_seconds=0.4, bitrate=400_000, seconds=2.0, audio="PCMA"
)
H265_AAC = ClipSpec(
    "H265",
    320,
    240,
    fps=25,
    gop_seconds=1.0,
    bitrate=600_000,
    seconds=2.0,
    audio="AAC",
    audio_rate=16000,
)
SPECS = [H264_PCMU, H264_PCMA, H265_AAC]
PARAMETER_SET_TYPES = {"H264": [7, 8], "H265": [32, 33, 34]}
SLICE_TYPES = {"H264": range(1, 6), "H265": range(32)}
DECODERS = {"H264": "h264", "H265": "hevc", "PCMU": "pcm_mulaw", "PCMA": "pcm_alaw", "AAC": "aac"}


def nal_type(codec: str, nal: bytes | memoryview) -> int:
    return nal[0] & 0x1F if codec == "H264" else (nal[0] >> 1) & 0x3F


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def loaded(cache_dir: Path) -> dict[ClipSpec, Clip]:
    return {spec: load_clip(spec, cache_dir) for spec in SPECS}


@pytest.fixture(params=SPECS, ids=lambda s: f"{s.codec}-{s.audio}")
def clip(request: pytest.FixtureRequest, loaded: dict[ClipSpec, Clip]) -> Clip:
    return loaded[request.param]


def test_video_decodes_across_two_loops(clip: Clip) -> None:
    decoder = av.CodecContext.create(DECODERS[clip.spec.codec], "r")
    pictures = []
    for frame in clip.video_frames * 2:  # the loop seam must decode like any other frame
        pictures += decoder.decode(av.Packet(frame.data))
    pictures += decoder.decode(None)
    assert len(pictures) == 2 * clip.spec.frame_count
    assert {(p.width, p.height) for p in pictures} == {(320, 240)}
    luma = [p.to_ndarray(format="gray") for p in pictures[:2]]
    # A moving, noisy pattern: not flat, and consecutive pictures differ.
    assert luma[0].std() > 10
    assert np.abs(luma[0].astype(int) - luma[1]).mean() > 2


def test_keyframes_exactly_every_gop_and_seamless_loop(clip: Clip) -> None:
    spec = clip.spec
    frames = clip.video_frames
    assert len(frames) == spec.frame_count == round(spec.loop_seconds * spec.fps)
    assert frames[0].keyframe
    assert [i for i, f in enumerate(frames) if f.keyframe] == list(
        range(0, spec.frame_count, spec.gop_frames)
    )
    assert [f.pts for f in frames] == [i * 90000 // spec.fps for i in range(len(frames))]
    assert clip.duration == len(frames) * 90000 // spec.fps
    assert clip.duration % (spec.gop_frames * 90000 // spec.fps) == 0


def test_parameter_sets_in_band_before_every_keyframe(clip: Clip) -> None:
    codec = clip.spec.codec
    assert clip.video.name == codec and clip.video.clock_rate == 90000
    assert (clip.video.width, clip.video.height) == (320, 240)
    assert [nal_type(codec, p) for p in clip.video.parameter_sets] == PARAMETER_SET_TYPES[codec]
    assert clip.video.profile in {"High", "Main"}
    for frame in clip.video_frames:
        # 4-byte start codes only, as FFmpeg's RTP depacketizer produces them.
        assert frame.data.startswith(b"\x00\x00\x00\x01")
        assert frame.data.count(b"\x00\x00\x01") == frame.data.count(b"\x00\x00\x00\x01")
        nals = split_annexb(frame.data)
        types = [nal_type(codec, n) for n in nals]
        if frame.keyframe:
            first_slice = next(i for i, t in enumerate(types) if t in SLICE_TYPES[codec])
            wanted = PARAMETER_SET_TYPES[codec]
            sets = [bytes(n) for n in nals[:first_slice] if nal_type(codec, n) in wanted]
            assert tuple(sets) == clip.video.parameter_sets
        else:
            assert not set(types) & set(PARAMETER_SET_TYPES[codec])


def test_bitrate_within_tolerance(clip: Clip) -> None:
    target = clip.spec.bitrate
    assert 0.75 * target <= clip.video_bitrate <= 1.25 * target
    fps = clip.spec.fps
    for start in range(0, len(clip.video_frames), fps):
        second = clip.video_frames[start : start + fps]
        bits = sum(len(f.data) for f in second) * 8
        assert 0.6 * target <= bits <= 1.4 * target, f"second at frame {start}: {bits} bit"


def test_audio_frames_decode_and_fit_the_loop(clip: Clip) -> None:
    spec = clip.spec
    assert clip.audio is not None and clip.audio.name == spec.audio
    assert clip.audio.clock_rate == spec.audio_rate and clip.audio.channels == 1
    assert clip.audio_duration == spec.audio_rate * 2
    block = 1024 if spec.audio == "AAC" else spec.audio_rate // 50
    assert [f.pts for f in clip.audio_frames] == [
        i * block for i in range(clip.audio_duration // block)
    ]
    decoder = av.CodecContext.create(DECODERS[spec.audio], "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoder.sample_rate = spec.audio_rate
    decoder.layout = "mono"
    if spec.audio == "AAC":
        assert clip.audio.config[:2] == bytes([0x14, 0x08])  # AAC-LC, 16 kHz, mono
        decoder.extradata = clip.audio.config
    else:
        assert {len(f.data) for f in clip.audio_frames} == {160}
    samples = []
    for frame in clip.audio_frames:
        decoded = decoder.decode(av.Packet(frame.data))
        assert sum(d.samples for d in decoded) == block
        samples += [d.to_ndarray().ravel() for d in decoded]
    audio = np.concatenate(samples).astype(np.float64)
    if spec.audio != "AAC":
        audio /= 32768
    # The 440 Hz tone is at 0.2 of full scale: RMS about 0.14 plus the beeps.
    assert 0.1 < np.sqrt(np.mean(audio[2048:] ** 2)) < 0.4


def test_second_load_uses_memory_then_disk_cache(tmp_path: Path) -> None:
    spec = ClipSpec("H264", 160, 120, fps=10, gop_seconds=1.0, bitrate=100_000, seconds=1.0)
    before = clips.clips_generated
    first = load_clip(spec, tmp_path)
    assert clips.clips_generated == before + 1
    path = clips.clip_path(spec, tmp_path)
    stat = path.stat()
    assert load_clip(spec, tmp_path) is first  # shared by every camera with this spec
    frames = first.video_frames
    del first
    gc.collect()  # the in-memory cache holds clips weakly: this load must read the file
    second = load_clip(spec, tmp_path)
    assert clips.clips_generated == before + 1
    assert second.video_frames == frames
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".lock"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_corrupt_cache_file_is_regenerated(tmp_path: Path, damage: str) -> None:
    spec = ClipSpec("H264", 160, 120, fps=10, gop_seconds=1.0, bitrate=100_000, seconds=1.0)
    path = clips.clip_path(spec, tmp_path)
    good = clips.clip_to_bytes(clips.generate_clip(spec))
    if damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        path.write_bytes(good[:-10] + bytes([good[-10] ^ 0xFF]) + good[-9:])
    with pytest.raises(ValueError):
        clips.clip_from_bytes(path.read_bytes(), spec)
    before = clips.clips_generated
    clip = load_clip(spec, tmp_path)
    assert clips.clips_generated == before + 1
    assert len(clip.video_frames) == 10
    assert clips.clip_from_bytes(path.read_bytes(), spec).video_frames == clip.video_frames


def test_cache_file_of_another_spec_is_rejected() -> None:
    spec = ClipSpec("H264", 160, 120, fps=10, gop_seconds=1.0, bitrate=100_000, seconds=1.0)
    data = clips.clip_to_bytes(clips.generate_clip(spec))
    other = ClipSpec("H264", 160, 120, fps=10, gop_seconds=1.0, bitrate=200_000, seconds=1.0)
    with pytest.raises(ValueError, match="different spec"):
        clips.clip_from_bytes(data, other)
    assert spec.cache_name() != other.cache_name()


def test_concurrent_processes_encode_once(tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "gateway.sim.clips",
        "--codec",
        "H264",
        "--width",
        "160",
        "--height",
        "120",
        "--fps",
        "10",
        "--gop-seconds",
        "1",
        "--seconds",
        "2",
        "--bitrate",
        "100000",
        "--audio",
        "PCMA",
        "--cache-dir",
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(out.split()[0] for out in outputs) == ["cached", "generated"]
    assert "20 frames" in outputs[0] and "audio PCMA 8000 Hz" in outputs[0]
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".clip"]) == 1


def test_default_loop_length_depends_on_codec() -> None:
    assert ClipSpec("H264").seconds == 10.0
    assert ClipSpec("H265").seconds == 4.0
    assert ClipSpec("H265") == ClipSpec("H265", seconds=4.0)
    assert ClipSpec("H265").cache_name() == ClipSpec("H265", seconds=4.0).cache_name()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codec": "MJPEG"}, "codec must be one of H264, H265"),
        ({"width": 321}, "width must be even"),
        ({"fps": 7}, "fps must divide 90000"),
        ({"gop_seconds": 0.5, "fps": 25}, "whole number of frames"),
        ({"seconds": 3.0}, "whole number"),
        ({"audio": "OPUS"}, "audio must be one of"),
        ({"audio": "PCMU", "audio_rate": 8001}, "audio_rate must be one of"),
        ({"bitrate": 10}, "bitrate must be in"),
    ],
)
def test_invalid_spec_raises_precise_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClipSpec(**kwargs)  # type: ignore[arg-type]


class PushRecorder:
    """What a ClipPlayer calls on its hub, recorded."""

    def __init__(self) -> None:
        self.pushes: list[tuple[int, int, bool]] = []
        self.first_push_at: float | None = None
        self.pushed = asyncio.Event()

    def upstream_opened(self, params: object) -> None:
        pass

    def push_payloads(
        self, track: int, pts: int, keyframe: bool, payloads: object, arrival: float
    ) -> None:
        if self.first_push_at is None:
            self.first_push_at = asyncio.get_running_loop().time()
        self.pushes.append((track, pts, keyframe))
        self.pushed.set()


@pytest.mark.parametrize("free_running", [False, True])
async def test_player_starts_at_the_first_keyframe_or_free_running_mid_clip(
    loaded: dict[ClipSpec, Clip], free_running: bool
) -> None:
    """Free running, a session joins the clip at a random frame with the audio of the same
    instant, at a random phase within one frame period (cameras connected together then
    send neither keyframes nor frames in step)."""
    clip = loaded[H264_PCMU]
    assert clip.audio is not None
    recorder = PushRecorder()
    player = ClipPlayer(
        cast(StreamHub, recorder), clip, free_running=free_running, rng=random.Random(7)
    )
    started = asyncio.get_running_loop().time()
    player.start()  # sends what is due (at once unless free running), then re-arms a timer
    await asyncio.wait_for(recorder.pushed.wait(), 5)
    player.stop()
    rng = random.Random(7)
    index = rng.randrange(len(clip.video_frames)) if free_running else 0
    assert recorder.first_push_at is not None
    delay = recorder.first_push_at - started
    if free_running:
        frame_period = clip.duration / len(clip.video_frames) / 90000
        phase = rng.random() * frame_period
        assert phase > 0.005  # the seed picks a phase the timer cannot round away
        # libuv timers have millisecond resolution and the player's slack may fire early.
        assert phase - 0.003 <= delay < phase + 0.5
    else:
        assert delay < 0.5
    video = [pts for track, pts, _ in recorder.pushes if track == 0]
    audio = [pts for track, pts, _ in recorder.pushes if track == 1]
    assert video == [clip.video_frames[index].pts]
    assert index > 0 or not free_running  # the seed picks a frame after the first
    joined = clip.video_frames[index].pts * clip.audio.clock_rate // 90000
    first_audio = next(f.pts for f in clip.audio_frames if f.pts >= joined)
    assert audio[:1] == [first_audio]
