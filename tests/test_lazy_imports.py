"""What a running gateway loads: PyAV, numpy and zeep only on the paths that use them.

FFmpeg's libraries behind PyAV alone are tens of MiB resident; a gateway whose cameras use
the native ingest and that nobody asks for a snapshot should never load them (issue 19).
The gateway runs in a subprocess of its own, so this test's imports (the simulated cameras
use PyAV) cannot hide what the gateway imported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.sim.runner import SimFleet
from tests.conftest import gateway_config_text, run_tool

HEAVY = ("av", "numpy", "zeep", "onvif")

PROBE = """
import asyncio, json, sys
from gateway.config import load
from gateway.runtime import Gateway

HEAVY = {heavy!r}


def loaded():
    return sorted(m for m in HEAVY if m in sys.modules)


async def main():
    gateway = Gateway(load(sys.argv[1]))
    await gateway.start()
    try:
        for cam in gateway.cameras.values():
            for hub in cam.hubs.values():
                assert await hub.wait_keyframe(60), hub.key + " never got a keyframe"
        print(json.dumps({{"streaming": loaded()}}), flush=True)
        await gateway.snapshot(next(iter(gateway.cameras)), "main")
        print(json.dumps({{"snapshot": loaded()}}), flush=True)
    finally:
        await gateway.stop()


asyncio.run(main())
"""


async def test_native_ingest_without_snapshots_loads_no_pyav_numpy_or_zeep(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    config = tmp_path / "gateway.toml"
    # PTZ and Imaging forwarding talk to the camera's own ONVIF services (a camera-side
    # ONVIF client, whatever it is built on): off here, to see what streaming alone loads.
    config.write_text(
        gateway_config_text(
            fleet,
            tmp_path,
            vms_password,
            server_extra='ingest = "native"',
            camera_extra='ptz = "disabled"\nimaging = "disabled"',
        )
    )
    code, out, err = await run_tool(
        sys.executable,
        "-c",
        PROBE.format(heavy=HEAVY),
        str(config),
        timeout=120,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    assert code == 0, err[-3000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines[0] == {"streaming": []}, lines
    # A snapshot needs the decoder: PyAV is loaded then, and only then.
    assert "av" in lines[1]["snapshot"], lines
