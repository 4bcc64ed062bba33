"""A simulated camera: RTSP with the vendor's paths and Digest realm, plus its HTTP faces.

Video and audio come from clips encoded once (``gateway.sim.clips``) and looped at real-time
pace. Each clip frame is packetized once per process and shared by every simulated camera
using that clip, so a simulated camera costs a timer and some header stamping per frame.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.codecs import packetizer_for
from gateway.codecs.base import Packetizer
from gateway.digest import DigestAuthenticator
from gateway.media.hub import StreamHub
from gateway.rtp.frame import Frame, Subscriber
from gateway.rtsp.server import RtspServer, ServerLimits
from gateway.rtsp.source import SourceStats, SourceTrack, StreamSource
from gateway.sim.clips import Clip, ClipSpec, load_clip
from gateway.sim.device import RTSP_QUIRKS, SimDevice
from gateway.sim.latency import latency_sei

log = logging.getLogger("gateway.sim")

# Modules that add a face to the camera's HTTP app with install(app, device[, **kw]).
HTTP_FACES = (
    "gateway.sim.hikvision",
    "gateway.sim.dahua",
    "gateway.sim.onvif",
    "gateway.sim.phonehome",
)
TICK_SLACK = 0.002
IGNORED_PARAMS = ("transportmode", "unicast", "proto", "profile")
SERVER_NAMES = {"hikvision": "Hikvision-Webs", "dahua": "Rtsp Server/3.0"}

_payload_cache: dict[tuple[int, int], list[list[bytes]]] = {}
# The "private-nal" quirk's packet: NAL type 30 (nal_ref_idc 0), then vendor bytes.
PRIVATE_NAL = b"\x1e" + b"vendor-private-data"


def _payloads(clip: Clip, track: int) -> list[list[bytes]]:
    """RTP payloads of every frame of one clip track, built once per process."""
    key = (id(clip), track)
    cached = _payload_cache.get(key)
    if cached is None:
        params = clip.video if track == 0 else clip.audio
        assert params is not None
        frames = clip.video_frames if track == 0 else clip.audio_frames
        packetizer = packetizer_for(params)
        cached = [packetizer.packetize(f.data, f.keyframe) for f in frames]
        _payload_cache[key] = cached
    return cached


class ClipPlayer:
    """Feeds one hub from a clip at real-time pace, looping seamlessly. UpstreamControl."""

    def __init__(
        self,
        hub: StreamHub,
        clip: Clip,
        *,
        with_audio: bool = True,
        timestamp_sei: bool = False,
        free_running: bool = False,
        rng: random.Random | None = None,
        private_nal: bool = False,
    ) -> None:
        self.hub = hub
        self.clip = clip
        self.timestamp_sei = timestamp_sei
        # The "private-nal" quirk (gateway.sim.device.RTSP_QUIRKS), for H.264 video.
        self.private_nal = private_nal and clip.video.name == "H264"
        # Free running: a session joins the encoder wherever it is (a random point of the
        # clip, usually mid-GOP), as with a camera whose encoder runs all the time; cameras
        # connected together then do not send their keyframes in step. Otherwise every
        # session starts at the clip's first keyframe.
        self.free_running = free_running
        self._rng = rng or random.Random()
        self.with_audio = with_audio and clip.audio is not None
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._vi = 0  # next video frame (absolute count, across loops)
        self._ai = 0
        audio_rate = clip.audio.clock_rate if clip.audio is not None else 8000
        self._audio_duration = clip.duration * audio_rate // 90000

    def start(self) -> None:
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        params = [self.clip.video] + ([self.clip.audio] if self.with_audio else [])
        self.hub.upstream_opened(params)  # type: ignore[arg-type]
        self._t0 = self._loop.time()
        self._vi = self._ai = 0
        if self.free_running:
            self._join_at(self._rng.randrange(len(self.clip.video_frames)))
            # Nor do independent cameras capture in phase: the encoder's frame clock starts
            # anywhere within one frame period. (Cameras started together would otherwise
            # send every frame in the same millisecond, a burst no real site produces.)
            frame_period = self.clip.duration / len(self.clip.video_frames) / 90000
            self._t0 += self._rng.random() * frame_period
        self._tick()

    def _join_at(self, index: int) -> None:
        """Start at video frame ``index`` (and the audio from the same instant)."""
        clip = self.clip
        pts = clip.video_frames[index].pts
        self._vi = index
        self._t0 -= pts / 90000
        if clip.audio is not None:
            audio_pts = pts * clip.audio.clock_rate // 90000
            self._ai = next(
                (i for i, f in enumerate(clip.audio_frames) if f.pts >= audio_pts),
                len(clip.audio_frames),
            )

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _tick(self) -> None:
        assert self._loop is not None
        clip = self.clip
        # Timers fire with millisecond granularity (libuv) and may fire early; anything
        # due within the slack goes out now instead of re-arming for a sub-ms wait.
        elapsed = self._loop.time() - self._t0 + TICK_SLACK
        arrival = time.monotonic()
        video = clip.video_frames
        nv = len(video)
        vpayloads = _payloads(clip, 0)
        hub = self.hub
        while True:
            k, i = divmod(self._vi, nv)
            frame = video[i]
            pts = frame.pts + k * clip.duration
            if pts / 90000 > elapsed:
                next_due = pts / 90000
                break
            payloads = vpayloads[i]
            if self.timestamp_sei:
                payloads = [latency_sei(clip.video.name), *payloads]
            if self.private_nal:
                payloads = [*payloads[:-1], PRIVATE_NAL, payloads[-1]]
            hub.push_payloads(0, pts, frame.keyframe, payloads, arrival)
            self._vi += 1
        if self.with_audio:
            # Audio keeps its own 20 ms pace, as a camera sends it: relays see the same
            # packet rhythm as from real devices.
            audio = clip.audio_frames
            assert clip.audio is not None
            rate = clip.audio.clock_rate
            apayloads = _payloads(clip, 1)
            na = len(audio)
            while na:
                k, i = divmod(self._ai, na)
                frame = audio[i]
                pts = frame.pts + k * self._audio_duration
                if pts / rate > elapsed:
                    next_due = min(next_due, pts / rate)
                    break
                hub.push_payloads(1, pts, frame.keyframe, apayloads[i], arrival)
                self._ai += 1
        self._handle = self._loop.call_at(self._t0 + next_due, self._tick)


@dataclass(frozen=True)
class StreamSpec:
    main: ClipSpec
    sub: ClipSpec


class SimCamera:
    """One simulated camera: device state, one hub per stream, RTSP and HTTP servers."""

    def __init__(
        self,
        device: SimDevice,
        streams: StreamSpec,
        *,
        limits: ServerLimits | None = None,
        timestamp_sei: bool = False,
        free_running: bool = False,
    ) -> None:
        self.device = device
        self.streams = streams
        self.timestamp_sei = timestamp_sei
        self.free_running = free_running
        self.limits = limits or ServerLimits()
        self.hubs: dict[str, StreamHub] = {}
        # What the RTSP server serves per stream: the hub, or it described otherwise.
        self.sources: dict[str, StreamSource] = {}
        self.players: dict[str, ClipPlayer] = {}
        self.rtsp: RtspServer | None = None
        self.http_runner: web.AppRunner | None = None
        self.app: web.Application | None = None

    async def start(self) -> None:
        dev = self.device
        unknown = dev.rtsp_quirks - set(RTSP_QUIRKS)
        if unknown:
            raise ValueError(f"unknown RTSP quirk(s) {sorted(unknown)}; known: {RTSP_QUIRKS}")
        paths = dev.rtsp_paths()
        for key in sorted(set(paths.values())):
            spec = self.streams.sub if key.startswith("sub") else self.streams.main
            clip = await asyncio.to_thread(load_clip, spec)
            # Streams play only while someone watches, as a camera's RTSP server sends
            # only to its clients; each session starts at a keyframe (clip frame 0) unless
            # the encoder is free running.
            hub = StreamHub(f"{dev.name}/{key}", on_demand=True, linger=1.0)
            player = ClipPlayer(
                hub,
                clip,
                timestamp_sei=self.timestamp_sei,
                free_running=self.free_running,
                private_nal="private-nal" in dev.rtsp_quirks,
            )
            self.hubs[key] = hub
            self.sources[key] = (
                InterleavedModeSource(hub) if "interleaved-sdp" in dev.rtsp_quirks else hub
            )
            self.players[key] = player
            hub.attach_upstream(player)
        auth = DigestAuthenticator(
            dev.realm(),
            {dev.username: dev.password},
            secrets.token_bytes(32),
            allow_basic=dev.vendor == "dahua",
        )
        # Firmware matches paths case-insensitively and ignores extra query parameters
        # such as transportmode=unicast.
        lower = {p.lower(): k for p, k in paths.items()}

        def resolve(path: str) -> StreamSource | None:
            key = lower.get(_strip_params(path, IGNORED_PARAMS).lower())
            return self.sources.get(key) if key else None

        self.rtsp = RtspServer(
            resolve,
            authenticator=auth,
            server_name=SERVER_NAMES.get(dev.vendor, "rtsp"),
            limits=self.limits,
        )
        await self.rtsp.start(dev.host, dev.rtsp_port)
        dev.rtsp_port = self.rtsp.port
        await self._start_http()

    async def _start_http(self) -> None:
        dev = self.device
        app = web.Application(client_max_size=1024 * 1024)
        for name in HTTP_FACES:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name == name:
                    continue
                raise
            if name.endswith(".onvif"):
                module.install(app, dev, rtsp_url_for=self.rtsp_url)
                app.middlewares.append(_onvif_faults(dev))
            else:
                module.install(app, dev)
        self.app = app
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, dev.host, dev.http_port, reuse_address=True)
        await site.start()
        self.http_runner = runner
        server = site._server  # the bound port when 0 was asked for
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            dev.http_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def rtsp_url(self, stream: str, host: str | None = None) -> str:
        """The URL a client of the camera uses for ``stream`` ("main"/"sub")."""
        path = next(p for p, k in self.device.rtsp_paths().items() if k == stream)
        return f"rtsp://{host or self.device.host}:{self.device.rtsp_port}{path}"

    async def stop(self) -> None:
        for hub in self.hubs.values():
            hub.close()
        if self.rtsp is not None:
            await self.rtsp.close()
        if self.http_runner is not None:
            await self.http_runner.cleanup()

    def upstream_sessions(self) -> int:
        """RTSP sessions currently open on this camera (what the tests count)."""
        return len(self.rtsp.sessions) if self.rtsp else 0


class _InterleavedModePacketizer(Packetizer):
    """A track's packetizer as the SDP sees it: H.264 lines saying packetization-mode=2."""

    def __init__(self, inner: Packetizer) -> None:
        self.inner = inner
        self.params = inner.params
        self.payload_type = inner.payload_type

    def packetize(self, frame: bytes, keyframe: bool) -> list[bytes]:
        return self.inner.packetize(frame, keyframe)

    def sdp_attributes(self) -> list[str]:
        return [
            line.replace("packetization-mode=1", "packetization-mode=2")
            for line in self.inner.sdp_attributes()
        ]


@dataclass(frozen=True)
class _DescribedTrack:
    index: int
    ssrc: int
    is_video: bool
    packetizer: Packetizer


class InterleavedModeSource:
    """The "interleaved-sdp" quirk: a hub served as it is, but described with H.264
    packetization-mode=2 (interleaved), as some firmware does while sending mode-1 packets.
    FFmpeg reads such a stream; the gateway's native client does not take the mode."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub

    @property
    def key(self) -> str:
        return self.hub.key

    @property
    def tracks(self) -> list[SourceTrack]:
        return [
            _DescribedTrack(t.index, t.ssrc, t.is_video, _InterleavedModePacketizer(t.packetizer))
            for t in self.hub.tracks
        ]

    @property
    def stats(self) -> SourceStats:
        return self.hub.stats

    async def wait_ready(self, timeout: float) -> bool:
        return await self.hub.wait_ready(timeout)

    def subscribe(self, sub: Subscriber) -> list[Frame]:
        return self.hub.subscribe(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.hub.unsubscribe(sub)

    def rtp_info(self, gop: Sequence[Frame]) -> list[tuple[int, int]]:
        return self.hub.rtp_info(gop)


def _onvif_faults(device: SimDevice) -> Any:
    """The camera's ONVIF face misbehaves like its vendor pages when a fault is active."""
    from gateway.sim.httpauth import play_faults

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/onvif/"):
            faulty = await play_faults(request, device)
            if faulty is not None:
                return faulty
        return await handler(request)

    return middleware


def _strip_params(path: str, names: Sequence[str]) -> str:
    base, _, query = path.partition("?")
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0].lower() not in names]
    return base + ("?" + "&".join(kept) if kept else "")
