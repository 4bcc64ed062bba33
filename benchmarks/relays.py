"""The relays under test, each started as its own process so /proc measures it alone.

``gateway``: ``python3 -m gateway run --config FILE`` (the product's own entry point, uvloop).
``gstreamer``: GStreamer's RTSP server relaying each camera through a shared media factory
(benchmarks/gst_relay.py under Debian's /usr/bin/python3).
``direct``: no relay; readers play the cameras themselves (the floor of the measured latency).

Every relay process runs in its own session (process group) and is stopped with the whole
group, first SIGTERM then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GST_PYTHON = "/usr/bin/python3"
GST_RELAY = Path(__file__).with_name("gst_relay.py")
READY_TIMEOUT = 60.0
REPO_ROOT = Path(__file__).resolve().parent.parent
VMS_USER = "vms"


@dataclass(frozen=True)
class CameraStream:
    """One camera stream as a relay pulls it. ``key`` is ``"<camera>/<stream>"``."""

    key: str
    camera: str
    host: str
    rtsp_port: int
    http_port: int
    path: str
    username: str
    password: str
    codec: str
    audio: str | None

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.rtsp_port}{self.path}"

    @property
    def url_with_credentials(self) -> str:
        return f"rtsp://{self.username}:{self.password}@{self.host}:{self.rtsp_port}{self.path}"


@dataclass(frozen=True)
class ReaderTarget:
    """Where readers play one stream through the relay."""

    key: str
    url: str
    username: str
    password: str

    def as_job(self, readers: int) -> dict[str, Any]:
        return {
            "key": self.key,
            "url": self.url,
            "username": self.username,
            "password": self.password,
            "readers": readers,
        }


def python_env(source: Path = REPO_ROOT) -> dict[str, str]:
    """The environment for a ``python3 -m`` child: ``source`` (this checkout unless another
    one is measured) first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), env.get("PYTHONPATH")) if p)
    return env


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for every child: SIGTERM it when the harness dies, however it dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# Whether the load runs below the relay (``--load-priority low``), as if on other machines:
# the relay under test gets the CPU first, the readers next, the cameras last. The readers
# come before the cameras because a reader held off the CPU overstates latency (a read's
# kernel receive stamp is that of its last segment, so every frame before it in the same
# read looks late), while a camera held off the CPU only sends later: it stamps a frame as
# it sends it.
LOAD_LOW = False
READER_NICE = 19  # weight 15 against the relay's 1024 at nice 0


def camera_preexec() -> None:
    """``preexec_fn`` for camera processes: as :func:`die_with_parent`, and under SCHED_IDLE
    when :data:`LOAD_LOW` is set."""
    die_with_parent()
    if LOAD_LOW:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def reader_preexec() -> None:
    """``preexec_fn`` for reader processes: as :func:`die_with_parent`, and at
    :data:`READER_NICE` when :data:`LOAD_LOW` is set."""
    die_with_parent()
    if LOAD_LOW:
        os.setpriority(os.PRIO_PROCESS, 0, READER_NICE)


# Every child is put in a process group of its own (so it can be stopped with everything it
# started) but stays in the harness's session: with sched_autogroup on, each new session
# is a scheduling group of its own with a nice-0 share, and a SCHED_IDLE process alone in
# its group would compete with the relay as an equal.
OWN_PROCESS_GROUP = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_range(n: int) -> int:
    """The first of ``n`` consecutive TCP ports that were free a moment ago.

    Taken below the kernel's ephemeral range, so outgoing connections (the relay's own
    upstream sessions among them) cannot take one of them before the relay binds it.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        base = random.randrange(10000, max(10001, low - n))
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1")


async def wait_ready(proc: asyncio.subprocess.Process, what: str, timeout: float) -> dict:
    """The process's ``{"event": "ready"}`` line; RuntimeError if it exits or times out."""
    assert proc.stdout is not None

    async def read() -> dict:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{what} exited (status {await proc.wait()}) before ready")
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "ready":
                    return event

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise RuntimeError(f"{what} not ready within {timeout:g}s") from None


async def stop_process_group(proc: asyncio.subprocess.Process, grace: float = 8.0) -> None:
    """SIGTERM the process's group, SIGKILL it after ``grace`` seconds."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    # Also whatever the process left behind in its group (worker processes).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()


class Relay:
    """Base: a relay process started in ``workdir`` in front of ``streams``."""

    name = "relay"
    process: asyncio.subprocess.Process | None = None
    source = REPO_ROOT  # the checkout a Python relay runs from

    def available(self) -> str | None:
        """None when this relay can run here, else why not."""
        return None

    async def start(self, streams: list[CameraStream], workdir: Path) -> None:
        raise NotImplementedError

    def target(self, stream: CameraStream) -> ReaderTarget:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def stop(self) -> None:
        if self.process is not None:
            await stop_process_group(self.process)
            self.process = None

    async def _spawn(self, argv: list[str], workdir: Path) -> dict[str, Any]:
        stderr = open(workdir / f"{self.name}.stderr.log", "wb")  # noqa: SIM115 - kept open
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=workdir,
                env=python_env(self.source),
                process_group=OWN_PROCESS_GROUP,
                preexec_fn=die_with_parent,
            )
        finally:
            stderr.close()
        try:
            return await wait_ready(self.process, self.name, READY_TIMEOUT)
        except Exception as exc:
            await self.stop()
            tail = (workdir / f"{self.name}.stderr.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}; its stderr ends with:\n{tail}") from exc
        except BaseException:
            await self.stop()
            raise


class GatewayRelay(Relay):
    """The gateway under test: ``python3 -m gateway run`` with a configuration for the fleet.

    ``ingest`` and ``workers`` are written to ``[server]`` only when given: plain ``gateway``
    is the configuration a user gets by default. ``source``: another checkout of the gateway
    to run (an older commit, for a before/after in one run); its name is appended as
    ``@name``."""

    def __init__(
        self, workers: int | None = None, ingest: str | None = None, source: Path | None = None
    ) -> None:
        self.workers = workers
        self.ingest = ingest
        self.name = "gateway" + (f"-{ingest}" if ingest else "")
        self.name += f"-w{workers}" if workers else ""
        if source is not None:
            self.source = source
            self.name += f"@{source.name}"
        self.password = os.urandom(9).hex()
        self.port = 0

    async def start(self, streams: list[CameraStream], workdir: Path) -> None:
        cameras = sorted({s.camera: s for s in streams}.values(), key=lambda s: s.key)
        subs = {s.camera for s in streams if s.key.endswith("/sub")}
        # One range for the RTSP port and the ONVIF device ports (one per camera, plus the
        # NVR-mode device's): two draws could overlap, as neither is bound until the gateway
        # starts (a 64-camera run once drew its RTSP port inside the ONVIF range).
        self.port = free_port_range(len(cameras) + 2)
        lines = [
            f"state_dir = {json.dumps(str(workdir / 'state'))}",
            "[server]",
            'bind = "127.0.0.1"',
            f"rtsp_port = {self.port}",
            f"onvif_base_port = {self.port + 1}",
            *([f"workers = {self.workers}"] if self.workers else []),
            *([f'ingest = "{self.ingest}"'] if self.ingest else []),
            "[vms]",
            f'username = "{VMS_USER}"',
            f'password = "{self.password}"',
            "[onvif]",
            "discovery = false",
        ]
        for cam in cameras:
            # PTZ disabled: the simulated cameras have none, and probing them is not relaying.
            lines += [
                "[[camera]]",
                f'name = "{cam.camera}"',
                'vendor = "hikvision"',
                f'host = "{cam.host}"',
                f"rtsp_port = {cam.rtsp_port}",
                f"http_port = {cam.http_port}",
                f"username = {json.dumps(cam.username)}",
                f"password = {json.dumps(cam.password)}",
                # Only the streams readers play are pulled, as the peers do.
                f"substream = {'true' if cam.camera in subs else 'false'}",
                'ptz = "disabled"',
            ]
        config = workdir / "gateway.toml"
        config.write_text("\n".join(lines) + "\n")
        argv = [sys.executable, "-m", "gateway", "run", "--config", str(config)]
        await self._spawn(argv, workdir)

    def target(self, stream: CameraStream) -> ReaderTarget:
        url = f"rtsp://127.0.0.1:{self.port}/{stream.key}"
        return ReaderTarget(stream.key, url, VMS_USER, self.password)


class GStreamerRelay(Relay):
    """gst-rtsp-server with a shared ``rtspsrc ! depay ! parse ! pay`` factory per stream."""

    name = "gstreamer"

    def __init__(self) -> None:
        self.port = 0

    def available(self) -> str | None:
        if not os.access(GST_PYTHON, os.X_OK):
            return f"{GST_PYTHON} not found"
        probe = (
            "import gi; gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import GstRtspServer"
        )
        import subprocess

        done = subprocess.run([GST_PYTHON, "-c", probe], capture_output=True, timeout=30)
        if done.returncode:
            return "gir1.2-gst-rtsp-server-1.0 is not installed for " + GST_PYTHON
        return None

    async def start(self, streams: list[CameraStream], workdir: Path) -> None:
        self.port = free_port_range(1)
        spec = [
            {
                "path": "/" + s.key,
                "url": s.url_with_credentials,
                "codec": s.codec,
                "audio": s.audio,
            }
            for s in streams
        ]
        (workdir / "gst_streams.json").write_text(json.dumps(spec))
        argv = [GST_PYTHON, str(GST_RELAY), "--port", str(self.port), "--streams"]
        await self._spawn([*argv, str(workdir / "gst_streams.json")], workdir)

    def target(self, stream: CameraStream) -> ReaderTarget:
        url = f"rtsp://127.0.0.1:{self.port}/{stream.key}"
        return ReaderTarget(stream.key, url, "", "")


class DirectRelay(Relay):
    """No relay: the readers play the cameras (what the harness itself adds to latency)."""

    name = "direct"

    async def start(self, streams: list[CameraStream], workdir: Path) -> None:
        return None

    def target(self, stream: CameraStream) -> ReaderTarget:
        return ReaderTarget(stream.key, stream.url, stream.username, stream.password)


def make_relay(name: str) -> Relay:
    """``gateway`` (the default configuration), ``gateway-native``/``gateway-pyav`` (that
    ingest only), each with ``-wK`` for K worker processes and ``@DIR`` to run the gateway
    of another checkout; ``gstreamer`` or ``direct``."""
    name, at, checkout = name.partition("@")
    source: Path | None = None
    if at:
        source = Path(checkout).resolve()
        if not name.startswith("gateway") or not (source / "gateway" / "__main__.py").is_file():
            raise ValueError(f"{checkout!r} is not a checkout of the gateway (gateway@DIR only)")
    if name == "gateway" or name.startswith("gateway-"):
        workers: int | None = None
        ingest: str | None = None
        for part in name.split("-")[1:]:
            if part in ("native", "pyav") and ingest is None:
                ingest = part
            elif part[:1] == "w" and part[1:].isdigit() and int(part[1:]) >= 1:
                workers = int(part[1:])
            else:
                raise ValueError(f"unknown gateway variant {name!r}: gateway[-native|-pyav][-wK]")
        return GatewayRelay(workers, ingest, source)
    if name == "gstreamer":
        return GStreamerRelay()
    if name == "direct":
        return DirectRelay()
    raise ValueError(f"unknown relay {name!r}: gateway[-native|-pyav][-wK], gstreamer or direct")


def which_py_spy() -> str | None:
    """py-spy on PATH, or beside this Python (a venv's bin when the venv is not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if os.access(beside, os.X_OK) else None)
