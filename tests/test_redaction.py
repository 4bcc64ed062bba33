"""Camera-side secrets (SNMP communities, FTP/SMTP/PPPoE/DDNS/NAS passwords, Wi-Fi and other
keys, cloud codes) never leave the gateway: the vendor clients redact them as they read every
table the simulator has, and the inventory store redacts what older versions stored."""

from __future__ import annotations

import re
import time
from pathlib import Path

from gateway.devices.base import REDACTED, is_secret_key
from gateway.devices.dahua import DahuaClient, flatten_table
from gateway.devices.hikvision import HikvisionClient
from gateway.devices.http import CameraHttp
from gateway.policy.db import PolicyStore
from gateway.sim import dahua as sim_dahua
from gateway.store import Store
from tests.test_policy_support import PASSWORD, make_device, sim_cameras

# Words a camera-side secret's key contains, from the vendors' tables (independent of the
# product's own pattern, so a key it misses fails here).
SECRET_WORDS = re.compile(
    r"password|passwd|pwd|community|psk|passphrase|secret|token|verificationcode|key\d*$", re.I
)
MARKER = "marker-secret-7f3a"


def _http(name: str, port: int) -> CameraHttp:
    return CameraHttp(name, "127.0.0.1", port, "admin", PASSWORD, timeout=5.0)


def assert_redacted(settings: dict[str, str]) -> None:
    assert MARKER not in repr(settings)
    for key, value in settings.items():
        if SECRET_WORDS.search(key):
            assert is_secret_key(key), key
            assert value in ("", REDACTED), (key, value)


async def test_every_dahua_table_comes_out_redacted() -> None:
    device = make_device("gate", "dahua", model="IPC-HFW3441E-AS", firmware="2.800", build="x")
    sim_dahua.reset(device)
    secret_keys = [
        key
        for name, table in device.settings.items()
        if not name.startswith("_")
        for key, value in flatten_table(name, table).items()
        if SECRET_WORDS.search(key) and not isinstance(value, bool)
    ]
    assert "SNMP.GetCommunity" in secret_keys  # "public" out of the box
    for key in secret_keys:
        sim_dahua.set_value(device, key, MARKER)
    async with sim_cameras(device) as (cam,):
        client = DahuaClient(_http("gate", cam.port), "admin", PASSWORD)
        try:
            settings = await client.read_settings()
        finally:
            await client.close()
    assert settings["SNMP.GetCommunity"] == REDACTED
    assert_redacted(settings)


async def test_every_hikvision_document_comes_out_redacted() -> None:
    device = make_device(
        "lobby", "hikvision", model="DS-2CD2132F-IWS", firmware="V5.4.0", build="b"
    )
    async with sim_cameras(device) as (cam,):
        client = HikvisionClient(_http("lobby", cam.port))
        try:
            settings = await client.read_settings()
        finally:
            await client.close()
    assert settings["EZVIZ.verificationCode"] == REDACTED
    assert_redacted(settings)


def test_keys_of_known_secret_tables_by_vendor() -> None:
    # Wi-Fi, SNMPv3, Ehome and cloud keys as the vendors name them.
    for key in (
        "WLan.eth2.Keys[0]",
        "WLan.eth2.Key",
        "WirelessSecurity.WPA.sharedKey",
        "WirelessSecurity.WEP.encryptionKey1",
        "SNMPAdvanced.privacyKey",
        "SNMP.trapCommunity",
        "PPPoE.Password",
        "Ehome.key",
        "EZVIZ.verificationCode",
    ):
        assert is_secret_key(key), key
    for key in ("WLan.eth2.KeyID", "WLan.eth2.Encryption", "SNMP.Enable", "DDNS[0].HostName"):
        assert not is_secret_key(key), key


def test_the_inventory_store_never_gives_a_secret_back(tmp_path: Path) -> None:
    store = Store.in_state_dir(tmp_path)
    policy = PolicyStore(store)
    # As an older version stored it: the community in the clear.
    store.execute(
        "INSERT INTO policy_inventory(camera, taken_at, vendor, identity, services, settings,"
        " error) VALUES ('gate', 1, 'dahua', NULL, '[]', ?, NULL)",
        ('{"SNMP.GetCommunity": "public", "SNMP.Enable": "false"}',),
    )
    snapshot = policy.snapshot("gate")
    assert snapshot is not None
    assert snapshot["settings"] == {"SNMP.GetCommunity": REDACTED, "SNMP.Enable": "false"}
    policy.save_inventory(
        "gate",
        "dahua",
        {"model": "m"},
        [],
        {"SNMP.GetCommunity": "private", "SNMP.Enable": "false"},
        None,
        time.time(),
    )
    events = policy.save_inventory(
        "gate",
        "dahua",
        {"model": "m"},
        [],
        {"SNMP.GetCommunity": "other", "SNMP.Enable": "true"},
        None,
        time.time(),
    )
    # The events (which the policy loop logs) say the community changed, not to what.
    assert any(e.key == "SNMP.GetCommunity" for e in events)
    dump = repr(events) + repr(policy.snapshots()) + repr(policy.history())
    for secret in ("public", "private", "other"):
        assert secret not in dump
    store.close()


def test_device_uuids_come_from_the_gateways_secret_and_old_ones_stay(tmp_path: Path) -> None:
    from gateway.onvif.service import UUID_MIGRATIONS, InventoryIdentities

    public = "urn:uuid:9b2d8b5e-0000-5000-8000-000000000001"  # what the camera's address gives
    # Upgrading: a device served by an older version keeps the uuid it was first served with.
    old = Store.in_state_dir(tmp_path / "a")
    old.migrate("onvif", UUID_MIGRATIONS[:1])
    old.execute(
        "INSERT INTO onvif_device_uuid(camera, uuid, first_served) VALUES ('cam0', ?, 1)",
        (public,),
    )
    old.close()
    one = InventoryIdentities(str(tmp_path / "a"))
    assert one.device_uuid("cam0", public) == public
    fresh = one.device_uuid("cam1", public)
    assert fresh != public and fresh.startswith("urn:uuid:")
    one.close()
    again = InventoryIdentities(str(tmp_path / "a"))
    assert again.device_uuid("cam1", public) == fresh  # remembered
    again.close()
    # Another gateway (another secret) derives another uuid from the same camera.
    other = InventoryIdentities(str(tmp_path / "b"))
    assert other.device_uuid("cam1", public) not in (public, fresh)
    other.close()
