"""Several worker processes, each owning a shard of the cameras, behind one RTSP port.

``[server] workers = N`` (or ``"auto"``, resolved by :func:`worker_plan`) makes
``onvif-gateway run`` a supervisor of N workers. Worker w ingests and serves the cameras
whose index k satisfies ``k % N == w``, so capacity grows with cores (the GIL binds one
process to about one core).

Every worker listens on the VMS-facing RTSP port with SO_REUSEPORT, so the kernel spreads
connections among them. A worker that accepts a connection for a camera it does not own
passes the connected socket (SCM_RIGHTS over a Unix socket) together with the request bytes
it already read to the owner, which carries on as if it had accepted the connection itself;
clients never notice. All workers share one Digest nonce secret, so a client that
authenticated against one worker is accepted by another.

Worker 0 also runs the site-wide services (policy loop, egress DNS/NTP, nftables polling)
and serves the admin API, dashboard and /metrics of the whole gateway on the configured
admin port; each other worker serves its admin API only to worker 0, on a Unix socket in
the workers' private directory (:mod:`gateway.admin.siblings`). Each worker serves its own
ONVIF devices (on the cameras' usual ports).
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config import WORKERS_AUTO, Config, onvif_port_of

log = logging.getLogger("gateway.workers")

NONCE_SECRET_ENV = "ONVIF_GATEWAY_NONCE_SECRET"
# The supervisor's process id, as its workers see it (to notice that it is gone).
SUPERVISOR_ENV = "ONVIF_GATEWAY_SUPERVISOR"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
MAX_HANDOFF_BYTES = 65536
_LENGTH = struct.Struct("!I")


@dataclass(frozen=True)
class WorkerPlan:
    """How many worker processes a configuration runs, and why fewer than asked or usable."""

    count: int
    # One line for the log and ``check`` when "auto" chose fewer workers than usable cores.
    note: str | None = None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API: every core the system has
        return max(1, os.cpu_count() or 1)


def worker_plan(config: Config, cores: int | None = None) -> WorkerPlan:
    """Resolve ``[server] workers``: an integer is the operator's choice; ``"auto"`` is one
    worker per usable core (``cores``, else :func:`usable_cores`), at most one per camera,
    and one when RTSPS is on (a TLS session cannot be handed to the worker owning the
    camera; ``check`` refuses an explicit count above one with RTSPS)."""
    setting = config.server.workers
    if setting != WORKERS_AUTO:
        return WorkerPlan(int(setting))
    available = usable_cores() if cores is None else max(1, cores)
    count = max(1, min(available, len(config.cameras)))
    if count > 1 and config.server.rtsps_port is not None:
        return WorkerPlan(
            1,
            f'workers = "auto": 1 worker process, not {count}, because RTSPS is on '
            "(TLS sessions cannot be handed between workers)",
        )
    return WorkerPlan(count)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    handoff_dir: str

    def owns(self, camera_index: int) -> bool:
        return camera_index % self.count == self.index

    def socket_path(self, worker: int) -> str:
        return os.path.join(self.handoff_dir, f"worker-{worker}.sock")

    def admin_socket_path(self, worker: int) -> str:
        """Where worker ``worker`` (not 0) serves its admin API to worker 0."""
        return os.path.join(self.handoff_dir, f"admin-{worker}.sock")


def shard_config(config: Config, shard: Shard) -> Config:
    """The site configuration as one worker runs it: its cameras (ONVIF ports pinned to
    their site-wide values) and the site-wide services on worker 0 only. ``[admin]`` is
    kept as configured: worker 0 listens on its port, the others on a Unix socket."""
    cameras = tuple(
        dataclasses.replace(cam, onvif_port=onvif_port_of(config.server, cam, k))
        for k, cam in enumerate(config.cameras)
        if shard.owns(k)
    )
    sections = dict(config.sections)
    camera_network = config.camera_network
    if shard.index:
        sections.pop("policy", None)
        camera_network = None
    return dataclasses.replace(
        config, cameras=cameras, sections=sections, camera_network=camera_network
    )


def owner_of(config: Config, shard: Shard, camera: str) -> int | None:
    """The worker that owns ``camera`` in the site configuration, None if none does."""
    for k, cam in enumerate(config.cameras):
        if cam.name == camera:
            return k % shard.count
    return None


# --------------------------------------------------------------------------- hand-off


def send_connection(path: str, sock: socket.socket, data: bytes) -> None:
    """Pass a connected socket and the bytes already read from it to another worker."""
    if len(data) > MAX_HANDOFF_BYTES:
        raise ValueError(f"hand-off of {len(data)} bytes exceeds {MAX_HANDOFF_BYTES}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(2.0)
        channel.connect(path)
        fds = array.array("i", [sock.fileno()])
        channel.sendmsg(
            [_LENGTH.pack(len(data)) + data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
        )
        # Wait for the owner's acknowledgement, so our close cannot race its adoption.
        channel.recv(1)


class HandoffServer:
    """Receives connections handed over by sibling workers and adopts them.

    A plain Unix socket read with ``recvmsg`` on the event loop: asyncio's stream servers
    read with ``recv``, which would drop the passed descriptor.
    """

    def __init__(self, path: str, adopt: Callable[[socket.socket, bytes], None]) -> None:
        self.path = path
        self.adopt = adopt
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[socket.socket] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with _suppress_missing():
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._sock is not None and self._loop is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._pending.add(conn)
        self._loop.add_reader(conn.fileno(), self._receive, conn)
        # A sibling that connects and sends nothing is dropped.
        self._loop.call_later(2.0, self._drop, conn)

    def _drop(self, conn: socket.socket) -> None:
        if conn in self._pending:
            self._pending.discard(conn)
            if self._loop is not None:
                self._loop.remove_reader(conn.fileno())
            conn.close()

    def _receive(self, conn: socket.socket) -> None:
        assert self._loop is not None
        self._loop.remove_reader(conn.fileno())
        self._pending.discard(conn)
        try:
            msg, ancdata, _, _ = conn.recvmsg(
                MAX_HANDOFF_BYTES + _LENGTH.size, socket.CMSG_SPACE(4 * 4)
            )
            fds = [
                fd
                for level, kind, payload in ancdata
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                for fd in array.array("i", payload[: len(payload) - len(payload) % 4])
            ]
            if len(msg) < _LENGTH.size or not fds:
                for fd in fds:
                    os.close(fd)
                raise ValueError("malformed hand-off message")
            (length,) = _LENGTH.unpack_from(msg)
            data = msg[_LENGTH.size :]
            for extra in fds[1:]:
                os.close(extra)
            client = socket.socket(fileno=fds[0])
            if len(data) != length:
                client.close()
                raise ValueError("hand-off message truncated")
            client.setblocking(False)
            self.adopt(client, bytes(data))
            conn.send(b"\x01")
        except (OSError, ValueError) as exc:
            log.warning("connection hand-off failed", extra={"error": str(exc)})
        finally:
            conn.close()

    async def close(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        for conn in list(self._pending):
            self._drop(conn)
        with _suppress_missing():
            os.unlink(self.path)


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, FileNotFoundError)


# --------------------------------------------------------------------------- supervisor


def run_supervisor(config_path: str, count: int, argv_prefix: list[str]) -> int:
    """Start ``count`` workers, forward signals, restart any that dies."""
    handoff_dir = tempfile.mkdtemp(prefix="onvif-gateway-workers-")
    os.chmod(handoff_dir, 0o700)
    env = dict(os.environ)
    env[NONCE_SECRET_ENV] = secrets.token_hex(32)
    env[SUPERVISOR_ENV] = str(os.getpid())
    stopping = False

    def spawn(index: int) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            *argv_prefix,
            "run",
            "--config",
            config_path,
            "--worker-index",
            str(index),
            "--worker-count",
            str(count),
            "--handoff-dir",
            handoff_dir,
        ]
        return subprocess.Popen(cmd, env=env)

    workers = {i: spawn(i) for i in range(count)}
    restarts: dict[int, list[float]] = {i: [] for i in range(count)}

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    print(f'{{"event": "supervisor", "workers": {count}}}', flush=True)
    exit_code = 0
    try:
        while workers:
            for index, proc in list(workers.items()):
                code = proc.poll()
                if code is None:
                    continue
                if stopping:
                    del workers[index]
                    exit_code = max(exit_code, code if code > 0 else 0)
                    continue
                now = time.monotonic()
                recent = [t for t in restarts[index] if now - t < 60] + [now]
                restarts[index] = recent
                if len(recent) > 5:
                    log.error(
                        "worker keeps failing, stopping the gateway",
                        extra={"worker": index, "exit_code": code},
                    )
                    stopping = True
                    forward(signal.SIGTERM, None)
                    exit_code = 3
                    continue
                log.warning(
                    "worker exited, restarting it", extra={"worker": index, "exit_code": code}
                )
                workers[index] = spawn(index)
            time.sleep(0.2)
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
        for path in Path(handoff_dir).glob("*"):
            with _suppress_missing():
                path.unlink()
        with _suppress_missing():
            os.rmdir(handoff_dir)
    return exit_code


def end_with_supervisor() -> bool:
    """Have the kernel send this worker SIGTERM when its supervisor dies, however it dies
    (SIGKILL, OOM killer): a worker left behind would keep the RTSP port, its cameras'
    sessions and the state database, and the next gateway started would share them with it.
    False if the supervisor is gone already (the worker should not start)."""
    import ctypes

    expected = os.environ.get(SUPERVISOR_ENV)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning(
            "cannot follow the supervisor (prctl failed)", extra={"errno": ctypes.get_errno()}
        )
    # The supervisor may have died before prctl: then this process has a new parent.
    return expected is None or str(os.getppid()) == expected


def internal_token() -> str:
    """The token worker 0 shows the other workers' internal admin API: derived from the
    secret the supervisor gives its workers (so it is per run), never the secret itself."""
    return hmac.new(nonce_secret(), b"onvif-gateway admin channel", hashlib.sha256).hexdigest()


def nonce_secret() -> bytes:
    """The Digest nonce secret shared by the workers of one supervisor (random otherwise)."""
    value = os.environ.get(NONCE_SECRET_ENV)
    if value:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    return secrets.token_bytes(32)
