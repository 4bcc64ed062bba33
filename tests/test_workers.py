"""Several worker processes behind one RTSP port: each camera ingested once, every client
served whichever worker accepted its connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import Config, ConfigError, loads
from gateway.sim.runner import SimFleet
from gateway.workers import WorkerPlan, usable_cores, worker_plan
from tests.admin_support import admin_config_text
from tests.conftest import free_port, require, run_tool
from tests.test_cli import GATEWAY


@dataclass
class Workers:
    """A gateway run as a supervisor of worker processes, from ``config_path``."""

    proc: asyncio.subprocess.Process
    config_path: Path
    rtsp_port: int
    admin_url: str
    admin_password: str
    killed: bool = False  # the test killed the supervisor: no clean exit to check

    def worker_pids(self) -> dict[int, int]:
        """Each worker's process id, by worker index (from the supervisor's children)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        pids = {}
        for pid in map(int, children.split()):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            pids[int(argv[argv.index("--worker-index") + 1])] = pid
        return pids

    def handoff_dir(self) -> Path:
        argv = Path(f"/proc/{self.worker_pids()[0]}/cmdline").read_bytes().decode().split("\0")
        return Path(argv[argv.index("--handoff-dir") + 1])


async def _event(stdout: asyncio.StreamReader, log_path: Path) -> dict[str, object]:
    """The gateway's next event line; if none comes within 60 s, the failure shows the end
    of its log (a blocked worker's loop watch says where it is stuck)."""
    try:
        line = await asyncio.wait_for(stdout.readline(), 60)
    except TimeoutError:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise AssertionError(
            f"no event from the gateway within 60 s; its log ends:\n{tail}"
        ) from None
    event: dict[str, object] = json.loads(line)
    return event


@contextlib.asynccontextmanager
async def running_workers(
    fleet: SimFleet, tmp_path: Path, vms_password: str, count: int = 2
) -> AsyncIterator[Workers]:
    """``onvif-gateway run`` with ``workers = count`` in front of ``fleet``, the admin API
    over plain HTTP on loopback; yields once every worker is ready, stops it after (and
    checks it stopped cleanly, without a traceback in its log)."""
    admin_password = "adm-" + vms_password[-8:] + "-Secr3t"
    admin_port = free_port()
    text = admin_config_text(fleet, tmp_path, vms_password, admin_password, admin_port, tls=False)
    text = text.replace("[server]\n", f"[server]\nworkers = {count}\n", 1)
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(text)
    port = int(
        next(line.split("=")[1] for line in text.splitlines() if line.startswith("rtsp_port"))
    )
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        try:
            assert proc.stdout is not None
            events = [await _event(proc.stdout, log_path) for _ in range(count + 1)]
            assert events[0] == {"event": "supervisor", "workers": count}
            assert [e["event"] for e in events[1:]] == ["ready"] * count
            workers = Workers(
                proc, config_path, port, f"http://127.0.0.1:{admin_port}", admin_password
            )
            yield workers
            assert "Traceback" not in log_path.read_text()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                finally:
                    if proc.returncode is None:
                        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 or workers.killed


async def _exited(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not a child of ours) ends within ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.add_reader(fd, lambda: ended.done() or ended.set_result(True))
    try:
        return await asyncio.wait_for(ended, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_workers_end_with_their_supervisor_however_it_dies(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    # SIGKILL leaves the supervisor no chance to stop them: the kernel tells them instead,
    # and the port, the cameras' sessions and the state database are free again.
    async with running_workers(fleet, tmp_path, vms_password) as workers:
        pids = workers.worker_pids()
        workers.killed = True
        workers.proc.kill()
        for pid in pids.values():
            assert await _exited(pid, 30), f"worker {pid} outlived its supervisor"
    assert "shutting down" in (tmp_path / "gateway.log").read_text()


async def test_two_workers_share_the_rtsp_port(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    require("ffprobe")
    async with running_workers(fleet, tmp_path, vms_password) as workers:
        # Enough connections that the kernel's SO_REUSEPORT spread sends some of them
        # to the worker that does not own the camera.
        for _ in range(6):
            for camera, codec in (("hik1", "h264"), ("dahua1", "hevc")):
                code, out, err = await run_tool(
                    "ffprobe",
                    "-v",
                    "error",
                    "-rtsp_transport",
                    "tcp",
                    "-select_streams",
                    "v",
                    "-show_entries",
                    "stream=codec_name",
                    "-of",
                    "csv=p=0",
                    f"rtsp://vms:{vms_password}@127.0.0.1:{workers.rtsp_port}/{camera}/main",
                    timeout=30,
                )
                assert code == 0, err
                assert out.strip() == codec
        for cam in fleet.cameras:
            assert cam.rtsp is not None
            upstreams = [c for c in cam.rtsp.clients() if c.source is cam.hubs["main"]]
            assert len(upstreams) == 1, f"{cam.device.name}: one upstream per stream"
        # `status` asks the admin port, which answers for both workers: every camera, each
        # listed once, in the file's order.
        code, out, err = await run_tool(
            *GATEWAY, "status", "--config", str(workers.config_path), "--json", timeout=60
        )
        assert code == 0, err
        status = json.loads(out)
        assert status["workers"] == 2
        assert [c["name"] for c in status["cameras"]] == ["hik1", "dahua1"]
        log_text = (tmp_path / "gateway.log").read_text()
        assert "handed to the camera's worker" in log_text
        # The workers share the log: each of their lines says which one wrote it.
        listening = [line for line in log_text.splitlines() if "RTSP server listening" in line]
        assert sorted(line.split("worker=")[1][0] for line in listening) == ["0", "1"]


def _site_text(cameras: int, server: str = "") -> str:
    blocks = "".join(
        f'[[camera]]\nname = "cam{k}"\nvendor = "generic"\nhost = "192.0.2.{10 + k}"\n'
        f'username = "u"\npassword = "p"\nmain_url = "rtsp://192.0.2.{10 + k}/main"\n'
        for k in range(cameras)
    )
    return f'[server]\n{server}\n[vms]\nusername = "vms"\npassword = "pw-long"\n{blocks}'


def _site(cameras: int, server: str = "") -> Config:
    return loads(_site_text(cameras, server))


def test_auto_is_the_default_and_runs_a_worker_per_core_up_to_one_per_camera() -> None:
    assert _site(3).server.workers == "auto"
    assert worker_plan(_site(3), cores=2) == WorkerPlan(2)
    assert worker_plan(_site(3), cores=8) == WorkerPlan(3)  # no idle process per core
    assert worker_plan(_site(0), cores=8) == WorkerPlan(1)  # no camera yet: one process
    assert worker_plan(_site(5), cores=1) == WorkerPlan(1)  # a one-core box: one process
    assert worker_plan(_site(3), cores=0) == WorkerPlan(1)


def test_an_explicit_worker_count_is_kept() -> None:
    assert worker_plan(_site(1, "workers = 4"), cores=1) == WorkerPlan(4)
    assert worker_plan(_site(9, "workers = 1"), cores=8) == WorkerPlan(1)
    for bad in ("workers = 0", "workers = 65", 'workers = "many"', "workers = true"):
        with pytest.raises(ConfigError) as info:
            _site(1, bad)
        assert "server.workers" in dict(info.value.problems), bad


def test_auto_with_rtsps_runs_one_worker_and_says_why() -> None:
    plan = worker_plan(_site(4, "rtsps_port = 8322"), cores=4)
    assert plan.count == 1
    assert plan.note is not None and "RTSPS" in plan.note and "not 4" in plan.note
    # Nothing to say when one worker is all "auto" would choose anyway.
    assert worker_plan(_site(4, "rtsps_port = 8322"), cores=1) == WorkerPlan(1)


def test_usable_cores_follows_the_affinity_mask() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))


async def test_check_shows_the_resolved_worker_count(tmp_path: Path) -> None:
    from tests.test_cli import gateway_cli

    path = tmp_path / "gateway.toml"
    site = _site(3, "rtsps_port = 8322")
    path.write_text(_site_text(3, "rtsps_port = 8322"))
    plan = worker_plan(site)
    code, out, err = await gateway_cli("check", "--config", str(path), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["workers"] == plan.count == 1 and summary["workers_setting"] == "auto"
    assert summary["notices"] == ([plan.note] if plan.note else [])
    code, out, err = await gateway_cli("check", "--config", str(path))
    assert code == 0, err
    assert "1 process (workers = auto)" in " ".join(out.split())
