"""Snapshots: real H.264/H.265 keyframes from simulator clips, JPEGs decoded back with PyAV."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from gateway.codecs.base import CodecParams
from gateway.codecs.h264 import split_annexb
from gateway.media.snapshot import SnapshotCache, encode_jpeg
from gateway.sim.clips import Clip, ClipSpec, load_clip

DECODERS = {"H264": "h264", "H265": "hevc"}


@pytest.fixture(scope="module", params=["H264", "H265"])
def clip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Clip:
    spec = ClipSpec(request.param, 320, 240, fps=25, gop_seconds=1.0, bitrate=500_000, seconds=1.0)
    return load_clip(spec, tmp_path_factory.mktemp("clips"))


def decode_jpeg(jpeg: bytes) -> av.VideoFrame:
    with av.open(io.BytesIO(jpeg), format="jpeg_pipe") as container:
        assert container.streams.video[0].codec_context.name == "mjpeg"
        return next(container.decode(video=0))


def reference_luma(clip: Clip) -> np.ndarray:
    decoder = av.CodecContext.create(DECODERS[clip.spec.codec], "r")
    frames = decoder.decode(av.Packet(clip.video_frames[0].data)) + decoder.decode(None)
    return frames[0].to_ndarray(format="gray").astype(int)


def test_jpeg_of_keyframe_shows_the_picture(clip: Clip) -> None:
    jpeg = encode_jpeg(clip.video, clip.video_frames[0].data)
    assert jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
    picture = decode_jpeg(jpeg)
    assert (picture.width, picture.height) == (320, 240)
    # Same picture: full-range JPEG luma vs limited-range video luma, both mapped to gray.
    difference = np.abs(picture.to_ndarray(format="gray").astype(int) - reference_luma(clip))
    assert difference.mean() < 8


def test_parameter_sets_only_out_of_band(clip: Clip) -> None:
    vps_sps_pps = set(clip.video.parameter_sets)
    slices = [bytes(n) for n in split_annexb(clip.video_frames[0].data)]
    stripped = b"".join(b"\x00\x00\x01" + n for n in slices if n not in vps_sps_pps)
    assert len(stripped) < len(clip.video_frames[0].data)
    picture = decode_jpeg(encode_jpeg(clip.video, stripped))
    assert (picture.width, picture.height) == (320, 240)
    without_sets = dataclasses.replace(clip.video, parameter_sets=())
    with pytest.raises(ValueError, match="access unit"):
        encode_jpeg(without_sets, stripped)


@pytest.mark.parametrize(
    ("max_width", "size"), [(160, (160, 120)), (101, (100, 76)), (640, (320, 240))]
)
def test_max_width_scales_down_keeping_aspect(
    clip: Clip, max_width: int, size: tuple[int, int]
) -> None:
    picture = decode_jpeg(encode_jpeg(clip.video, clip.video_frames[0].data, max_width=max_width))
    assert (picture.width, picture.height) == size


def test_quality_trades_size(clip: Clip) -> None:
    sizes = [len(encode_jpeg(clip.video, clip.video_frames[0].data, quality=q)) for q in (10, 95)]
    assert sizes[0] * 1.5 < sizes[1]


def test_jpeg_passes_ffprobe(clip: Clip, tmp_path: Path) -> None:
    path = tmp_path / "snap.jpg"
    path.write_bytes(encode_jpeg(clip.video, clip.video_frames[0].data, max_width=200))
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert probe.stdout.strip() == "mjpeg,200,150"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("H264", b"", "empty access unit"),
        ("H264", b"\x00\x00\x00\x01\x65" + b"\xff" * 200, "H264 access unit does not decode"),
        ("H265", b"hello, world" * 20, "H265 access unit does not decode"),
        ("MJPEG", b"\xff\xd8\xff\xd9", r"cannot snapshot 'MJPEG' video \(only H264, H265\)"),
    ],
)
def test_garbage_raises_value_error(name: str, data: bytes, message: str) -> None:
    params = CodecParams(name, "video", 90000)
    with pytest.raises(ValueError, match=message):
        encode_jpeg(params, data)


def test_non_keyframe_raises_value_error(clip: Clip) -> None:
    with pytest.raises(ValueError, match=r"decoded into no picture \(not a keyframe"):
        encode_jpeg(clip.video, clip.video_frames[1].data)


def test_bad_arguments(clip: Clip) -> None:
    with pytest.raises(ValueError, match=r"quality must be in 1\.\.100"):
        encode_jpeg(clip.video, clip.video_frames[0].data, quality=0)
    with pytest.raises(ValueError, match="max_width must be at least 16"):
        encode_jpeg(clip.video, clip.video_frames[0].data, max_width=8)


# --------------------------------------------------------------------------- SnapshotCache


class Producer:
    """Counts calls; each call blocks until ``release`` is set, then returns a numbered JPEG."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self) -> bytes:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise ValueError("no picture")
        return f"jpeg-{self.calls}".encode()


async def test_concurrent_callers_share_one_call() -> None:
    cache = SnapshotCache(max_age=0.0)  # nothing is ever fresh: sharing is the only reuse
    produce = Producer()
    waiters = [asyncio.create_task(cache.get("cam1/main", 10.0, produce)) for _ in range(5)]
    await produce.started.wait()
    produce.release.set()
    assert await asyncio.gather(*waiters) == [b"jpeg-1"] * 5
    assert produce.calls == 1
    assert await cache.get("cam1/main", 10.0, produce) == b"jpeg-2"


async def test_max_age_respected() -> None:
    cache = SnapshotCache(max_age=1.0)
    produce = Producer()
    produce.release.set()
    assert await cache.get("s", 100.0, produce) == b"jpeg-1"
    assert await cache.get("s", 100.99, produce) == b"jpeg-1"
    assert produce.calls == 1
    assert await cache.get("s", 101.0, produce) == b"jpeg-2"
    assert await cache.get("other", 101.0, produce) == b"jpeg-3"  # per stream
    cache.discard("s")
    assert await cache.get("s", 101.0, produce) == b"jpeg-4"


async def test_failure_reaches_every_waiter_and_is_not_cached() -> None:
    cache = SnapshotCache(max_age=5.0)
    produce = Producer()
    produce.fail = True
    waiters = [asyncio.create_task(cache.get("s", 0.0, produce)) for _ in range(3)]
    await produce.started.wait()
    produce.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [str(r) for r in results] == ["no picture"] * 3
    produce.fail = False
    assert await cache.get("s", 0.0, produce) == b"jpeg-2"


async def test_cancelled_caller_does_not_cancel_others() -> None:
    cache = SnapshotCache(max_age=5.0)
    produce = Producer()
    first = asyncio.create_task(cache.get("s", 0.0, produce))
    second = asyncio.create_task(cache.get("s", 0.0, produce))
    await produce.started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    produce.release.set()
    assert await second == b"jpeg-1"
    assert produce.calls == 1


async def test_bounded_least_recently_used() -> None:
    cache = SnapshotCache(max_age=60.0, max_entries=2)
    produce = Producer()
    produce.release.set()
    for key in ("a", "b"):
        await cache.get(key, 0.0, produce)
    await cache.get("a", 1.0, produce)  # a is now more recent than b
    await cache.get("c", 1.0, produce)
    assert len(cache) == 2 and produce.calls == 3
    assert await cache.get("a", 2.0, produce) == b"jpeg-1"
    assert await cache.get("b", 2.0, produce) == b"jpeg-4"  # b was evicted


def test_cache_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_entries must be at least 1"):
        SnapshotCache(max_entries=0)
    with pytest.raises(ValueError, match="max_age must not be negative"):
        SnapshotCache(max_age=-1)
