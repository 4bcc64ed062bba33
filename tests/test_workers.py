"""Several worker processes behind one RTSP port: each camera ingested once, every client
served whichever worker accepted its connection."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from gateway.sim.runner import SimFleet
from tests.conftest import gateway_config_text, require, run_tool


async def test_two_workers_share_the_rtsp_port(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    require("ffprobe")
    text = gateway_config_text(fleet, tmp_path, vms_password, server_extra="workers = 2")
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
            events = [
                json.loads(await asyncio.wait_for(proc.stdout.readline(), 60)) for _ in range(3)
            ]
            assert events[0] == {"event": "supervisor", "workers": 2}
            assert [e["event"] for e in events[1:]] == ["ready", "ready"]
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
                        f"rtsp://vms:{vms_password}@127.0.0.1:{port}/{camera}/main",
                        timeout=30,
                    )
                    assert code == 0, err
                    assert out.strip() == codec
            for cam in fleet.cameras:
                assert cam.rtsp is not None
                upstreams = [c for c in cam.rtsp.clients() if c.source is cam.hubs["main"]]
                assert len(upstreams) == 1, f"{cam.device.name}: one upstream per stream"
            logged = log_path.read_text()
            assert "handed to the camera's worker" in logged
            assert "Traceback" not in logged
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                finally:
                    if proc.returncode is None:
                        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
