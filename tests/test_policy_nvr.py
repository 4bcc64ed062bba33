"""A recorder (NVR) upstream for several cameras: one device, its channels, its policy.

Each channel is a ``[[camera]]`` with the recorder's host and port and its ``channel``. The
recorder is read and the telemetry policy applied to it once; every channel camera gets its
inventory and findings; the inventory lists the cameras the recorder reports.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from gateway.config import load
from gateway.policy.audit import run_audit, run_enforce
from gateway.policy.db import PolicyStore
from gateway.policy.inventory import run_inventory
from gateway.sim import dahua as sim_dahua
from gateway.store import Store
from tests.test_policy_audit import CLEAN, SCHEMA
from tests.test_policy_support import (
    enable_all_telemetry,
    make_device,
    sim_cameras,
    write_config,
)


@pytest.mark.parametrize(
    ("vendor", "options"),
    [
        ("hikvision", {}),
        ("hikvision", {"isapi_namespace": "isapi", "mixed_namespaces": True}),
        ("dahua", {}),
        ("dahua", {"cgi_available": False}),
    ],
    ids=["hikvision", "hikvision-isapi-mixed", "dahua-cgi", "dahua-rpc"],
)
async def test_nvr_with_channels(tmp_path: Path, vendor: str, options: dict[str, object]) -> None:
    model = "DS-7608NI-K2" if vendor == "hikvision" else "DHI-NVR4208-8P-4KS2"
    # Firmware newer than every advisory for recorders, so only telemetry decides.
    firmware = {"firmware": "V4.85.000", "build": "build 251010"} if vendor == "hikvision" else {}
    device = make_device(
        "nvr", vendor, model=model, channels=4, **(firmware or CLEAN[vendor]), **options
    )
    async with sim_cameras(device) as (nvr,):
        if vendor == "dahua":
            sim_dahua.reset(device)  # with the recorder's RemoteDevice table
        enable_all_telemetry(device)
        config = load(write_config(tmp_path, [nvr], timeout=3.0))
        names = [f"nvr-ch{n}" for n in range(1, 5)]
        store = Store.in_state_dir(config.state_dir)
        try:
            inventory = await run_inventory(config, store)
            (record,) = inventory.cameras  # one device, read once
            assert record.error is None and record.members == names
            recorder = record.to_json()["recorder"]
            assert recorder["cameras"] == names
            assert [c["channel"] for c in recorder["channels"]] == [1, 2, 3, 4]
            assert all(c["address"] for c in recorder["channels"])

            enforced = await run_enforce(config, store)
            jsonschema.validate(enforced.to_json(), SCHEMA)
            assert enforced.exit_code() == 0, enforced.to_json()
            (audit,) = enforced.cameras
            assert (
                audit.changes and audit.to_json(with_changes=True)["recorder"]["cameras"] == names
            )
            # The policy was applied to the recorder itself, once per table or document.
            written = [w[0] if vendor == "hikvision" else w for w in device.writes]
            assert len(written) == len(set(map(str, written)))

            again = await run_audit(config, store)
            assert again.exit_code() == 0 and again.cameras[0].status == "compliant"
            # Every channel camera has the recorder's inventory and findings.
            pstore = PolicyStore(store)
            for name in names:
                snapshot = pstore.snapshot(name)
                assert snapshot is not None and snapshot["identity"]["model"] == model
                assert pstore.findings(name) == pstore.findings(names[0])
        finally:
            store.close()
