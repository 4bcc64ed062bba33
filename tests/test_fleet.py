"""A site split across several gateways (``[fleet]``, gateway.fleet): which cameras a shard
owns, how that moves when cameras or shards change, the config errors, what ``check`` says,
and ONVIF device uuids that stay the same when a camera moves to another gateway."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway import fleet as fleetmod
from gateway import sections
from gateway.onvif.config import nvr_port_of
from gateway.onvif.service import InventoryIdentities, OnvifService
from gateway.policy.config import parse_policy
from gateway.runtime import Gateway
from gateway.sim.runner import SimFleet
from tests.conftest import free_port, gateway_config_text
from tests.test_cli import gateway_cli

ROOT = Path(__file__).resolve().parent.parent
SECRET = "0f" * 32
NAMES = [f"cam-{i:03d}" for i in range(600)]


def site_text(names: list[str], fleet: str) -> str:
    cameras = "".join(
        f'[[camera]]\nname = "{name}"\nhost = "10.0.{i // 200}.{i % 200 + 1}"\n'
        'vendor = "hikvision"\n'
        for i, name in enumerate(names)
    )
    return (
        '[server]\nbind = "127.0.0.1"\nonvif_base_port = 20000\n'
        '[vms]\nusername = "vms"\npassword = "vms-password"\n' + fleet + cameras
    )


def load(names: list[str], fleet: str) -> cfgmod.Config:
    config = cfgmod.loads(site_text(names, fleet), source="site.toml")
    sections.validate(config)
    return config


def problems(fleet: str, names: list[str] | None = None) -> list[str]:
    with pytest.raises(cfgmod.ConfigError) as caught:
        load(names or ["lobby"], fleet)
    return [caught.value.describe(k, m) for k, m in caught.value.problems]


# --------------------------------------------------------------------------- the hash


def test_the_shard_of_a_camera_is_fixed_by_its_name_and_the_shard_count() -> None:
    # Pinned values: a change of the hash would move cameras between running gateways.
    assert [fleetmod.shard_of(n, 3) for n in ("lobby", "yard", "gate", "dock")] == [2, 1, 0, 1]
    assert fleetmod.shard_of("lobby", 1) == 0
    assert all(0 <= fleetmod.shard_of(n, 7) < 7 for n in NAMES)
    with pytest.raises(ValueError):
        fleetmod.shard_of("lobby", 0)


def test_the_shard_does_not_depend_on_pythons_salted_hash() -> None:
    code = (
        "import json; from gateway.fleet import shard_of; "
        f"print(json.dumps([shard_of(n, 5) for n in {NAMES[:50]!r}]))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "random")
    }
    assert len(runs) == 1
    assert json.loads(runs.pop()) == [fleetmod.shard_of(n, 5) for n in NAMES[:50]]


def test_order_of_the_file_and_added_cameras_move_nothing_else() -> None:
    names = NAMES[:40]
    settings = "[fleet]\nshards = 4\nshard = 2\n"
    owned = {c.name for c in fleetmod.own(load(names, settings)).cameras}
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    assert {c.name for c in fleetmod.own(load(shuffled, settings)).cameras} == owned
    # A camera added anywhere in the file: only it can join this shard, no other leaves.
    grown = [*names[:10], "new-camera", *names[10:]]
    after = {c.name for c in fleetmod.own(load(grown, settings)).cameras}
    assert after - {"new-camera"} == owned


@pytest.mark.parametrize("shards", [2, 3, 8])
def test_one_more_shard_moves_only_what_the_new_shard_takes(shards: int) -> None:
    before = {n: fleetmod.shard_of(n, shards) for n in NAMES}
    after = {n: fleetmod.shard_of(n, shards + 1) for n in NAMES}
    moved = [n for n in NAMES if before[n] != after[n]]
    assert all(after[n] == shards for n in moved)  # only to the new shard
    expected = len(NAMES) / (shards + 1)
    assert 0.75 * expected < len(moved) < 1.25 * expected
    # Back down: only the removed shard's cameras move.
    assert all(before[n] == after[n] for n in NAMES if after[n] != shards)
    # And the shards stay balanced.
    counts = [list(after.values()).count(k) for k in range(shards + 1)]
    assert max(counts) < 1.35 * expected and min(counts) > 0.65 * expected


# --------------------------------------------------------------------------- configuration


def test_own_narrows_the_site_to_the_shard_with_site_wide_onvif_ports() -> None:
    names = ["lobby", "yard", "gate", "dock"]
    site = load(names, "[fleet]\nshards = 3\nshard = 1\n")
    owned = fleetmod.own(site)
    assert [c.name for c in owned.cameras] == ["yard", "dock"]
    assert [c.onvif_port for c in owned.cameras] == [20001, 20003]
    assert owned.site_cameras == tuple(names)
    assert fleetmod.own(owned) is owned  # already narrowed: applied twice, the same
    part = fleetmod.selection(owned)
    assert part is not None and part.owned == ("yard", "dock") and part.per_shard == (1, 2, 1)
    assert part.summary() == (
        "fleet shard 1 of 3 (configured): owns 2 of 4 camera(s); cameras per shard: 1, 2, 1"
    )
    # The NVR device's default port stays after the site's last camera.
    assert nvr_port_of(owned, None) == 20004
    # Without [fleet] the file is the site.
    plain = load(names, "")
    assert fleetmod.own(plain) is plain and fleetmod.selection(plain) is None


def test_policy_may_name_a_camera_another_shard_serves() -> None:
    text = site_text(["lobby", "yard", "gate"], "[fleet]\nshards = 3\nshard = 0\n")
    text += '[policy.telemetry]\nntp_server = "10.0.9.1"\n'
    text += '[policy.telemetry.camera.yard]\ncloud = "off"\n'
    site = cfgmod.loads(text, source="site.toml")
    sections.validate(site)
    owned = fleetmod.own(site)
    assert [c.name for c in owned.cameras] == ["gate"]
    parse_policy(owned)  # yard is the site's, not unknown


def test_shard_from_the_statefulset_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = '[fleet]\nshards = 3\nshard = "from-hostname"\n'
    monkeypatch.setenv("HOSTNAME", "onvif-gateway-2")
    settings = fleetmod.parse_fleet(load(["lobby"], fleet))
    assert settings is not None and (settings.shard, settings.source) == (
        2,
        "host name onvif-gateway-2",
    )
    monkeypatch.setenv("HOSTNAME", "onvif-gateway-3")
    assert problems(fleet) == [
        "fleet.shard: host name 'onvif-gateway-3' names shard 3, but shards = 3 "
        "(replicas and shards must agree)"
    ]
    monkeypatch.setenv("HOSTNAME", "edge-node")
    [message] = problems(fleet)
    assert message.startswith("fleet.shard: host name 'edge-node' does not end in -K")


@pytest.mark.parametrize(
    ("fleet", "expected"),
    [
        ("[fleet]\nshard = 0\n", "fleet.shards: is required"),
        ("[fleet]\nshards = 0\nshard = 0\n", "fleet.shards: must be 1..256"),
        ("[fleet]\nshards = 2\nshard = 2\n", "fleet.shard: must be 0..1 (shards = 2)"),
        (
            '[fleet]\nshards = 2\nshard = "hostname"\n',
            "fleet.shard: must be a number or \"from-hostname\", not 'hostname'",
        ),
        (
            '[fleet]\nshards = 2\nshard = 0\nidentity_secert = "x"\n',
            'fleet.identity_secert: unknown key (did you mean "identity_secret"?)',
        ),
        (
            '[fleet]\nshards = 2\nshard = 0\nidentity_secret = "short"\n',
            "fleet.identity_secret: is shorter than 32 characters (e.g. openssl rand -hex 32)",
        ),
        (
            '[fleet]\nshards = 2\nshard = 0\nidentity_secret_file = "${NO_SUCH_DIR}/identity"\n',
            "fleet.identity_secret_file: environment variable NO_SUCH_DIR is not set "
            "(used in '${NO_SUCH_DIR}/identity')",
        ),
    ],
)
def test_mistakes_are_one_line_errors(fleet: str, expected: str) -> None:
    assert expected in problems(fleet)


def test_the_identity_secret_file_expands_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "identity").write_text(SECRET + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    fleet = (
        "[fleet]\nshards = 2\nshard = 1\n"
        'identity_secret_file = "${CREDENTIALS_DIRECTORY}/identity"\n'
    )
    settings = fleetmod.parse_fleet(load(["lobby"], fleet))
    assert settings is not None and settings.identity_secret == cfgmod.Secret(SECRET)
    assert SECRET not in repr(settings)


def test_bind_may_name_the_environment_variable_holding_the_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every shard reads one file but binds its own node's address (Kubernetes: the
    downward API's status.hostIP in NODE_IP)."""
    text = (
        '[server]\nbind = "${NODE_IP}"\n[vms]\nusername = "vms"\npassword = "p"\n'
        '[admin]\nbind = "${NODE_IP}"\nusername = "admin"\npassword = "a"\n'
    )
    monkeypatch.setenv("NODE_IP", "10.20.0.7")
    config = cfgmod.loads(text)
    assert config.server.bind == "10.20.0.7"
    assert config.admin is not None and config.admin.bind == "10.20.0.7"
    monkeypatch.setenv("NODE_IP", "node-7")
    with pytest.raises(cfgmod.ConfigError, match=r"server\.bind: 'node-7' is not an IP address"):
        cfgmod.loads(text)
    monkeypatch.delenv("NODE_IP")
    with pytest.raises(cfgmod.ConfigError) as caught:
        cfgmod.loads(text)
    assert caught.value.problems == [
        ("server.bind", "environment variable NODE_IP is not set (used in '${NODE_IP}')"),
        ("admin.bind", "environment variable NODE_IP is not set (used in '${NODE_IP}')"),
    ]


def test_the_fleet_keys_are_in_the_schema() -> None:
    from gateway.schema import schema

    described = schema()["properties"]["fleet"]["properties"]
    assert set(described) == {
        "shards",
        "shard",
        "identity_secret",
        "identity_secret_env",
        "identity_secret_file",
    }


async def test_check_says_which_shard_and_how_many_cameras(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    fleet = "[fleet]\nshards = 3\nshard = 1\n"
    path.write_text(site_text(["lobby", "yard", "gate", "dock"], fleet))
    code, out, err = await gateway_cli("check", "--config", str(path), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert [c["name"] for c in summary["cameras"]] == ["yard", "dock"]
    assert summary["fleet"]["owned"] == ["yard", "dock"]
    assert summary["fleet"]["site_cameras"] == 4
    assert any("identity_secret" in w for w in summary["warnings"])
    onvif = next(p for p in summary["ports"] if p["service"] == "ONVIF")
    assert onvif["ports"] == "20001, 20003"
    code, out, err = await gateway_cli("check", "--config", str(path))
    assert code == 0 and "fleet shard 1 of 3 (configured): owns 2 of 4 camera(s)" in out


# --------------------------------------------------------------------------- identities


def test_a_camera_keeps_its_uuid_across_shard_counts_with_the_shared_secret(
    tmp_path: Path,
) -> None:
    secret = cfgmod.Secret(SECRET)
    name = next(n for n in NAMES if fleetmod.shard_of(n, 2) != fleetmod.shard_of(n, 5))
    shared = fleetmod.device_uuid(secret, name)
    assert shared.startswith("urn:uuid:")
    assert fleetmod.device_uuid(cfgmod.Secret("1e" * 32), name) != shared
    # Two gateways, each with its own state directory, serve the camera with that uuid.
    two = InventoryIdentities(str(tmp_path / "two-shards"))
    five = InventoryIdentities(str(tmp_path / "five-shards"))
    try:
        assert two.device_uuid(name, "urn:uuid:computed", shared) == shared
        assert five.device_uuid(name, "urn:uuid:computed", shared) == shared
        # Without it each derives its own from a random secret in its state directory.
        alone_a = two.device_uuid("other", "urn:uuid:computed")
        alone_b = five.device_uuid("other", "urn:uuid:computed")
        assert alone_a != alone_b
        # A uuid once served stays, also when a shared secret is configured later.
        assert two.device_uuid("other", "urn:uuid:computed", shared) == alone_a
    finally:
        two.close()
        five.close()


def fleet_section(shards: int, shard: int, *, secret: bool) -> str:
    text = f"[fleet]\nshards = {shards}\nshard = {shard}\n"
    return text + (f'identity_secret = "{SECRET}"\n' if secret else "")


async def test_gateways_of_a_fleet_serve_their_own_cameras_with_shared_uuids(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    probe = cfgmod.loads(gateway_config_text(fleet, tmp_path, vms_password))
    names = [cam.name for cam in probe.cameras]
    name = names[0]
    gateways: list[Gateway] = []
    admin_password = "admin-" + "p" * 20

    def write(where: str, shards: int, secret: bool) -> Path:
        text = gateway_config_text(fleet, tmp_path / where, vms_password)
        text += "[onvif]\ndiscovery = false\n"
        text += (
            f'[admin]\nbind = "127.0.0.1"\nport = {free_port()}\nusername = "admin"\n'
            f'password = "{admin_password}"\n'
        )
        text += fleet_section(shards, fleetmod.shard_of(name, shards), secret=secret)
        path = tmp_path / f"{where}.toml"
        path.write_text(text)
        return path

    def onvif_of(gw: Gateway) -> OnvifService:
        return next(s for s in gw.services if isinstance(s, OnvifService))

    def check_owned(gw: Gateway, shards: int) -> set[str]:
        owned = {
            n for n in names if fleetmod.shard_of(n, shards) == fleetmod.shard_of(name, shards)
        }
        assert set(gw.cameras) == owned and name in owned
        for other in set(names) - owned:
            assert gw.resolve(f"/{other}/main") is None
        assert set(onvif_of(gw).cameras) == owned
        return owned

    async def start(where: str, shards: int, secret: bool) -> Gateway:
        gw = Gateway(sections.load_site(write(where, shards, secret)))
        gateways.append(gw)
        await gw.start()
        check_owned(gw, shards)
        return gw

    try:
        two = await start("two", 2, True)
        three = await start("three", 3, True)
        alone = await start("alone", 3, False)
        # Three shards leave a camera to another shard: the check above was not vacuous.
        assert set(names) - set(three.cameras)
        expected = fleetmod.device_uuid(cfgmod.Secret(SECRET), name)
        assert onvif_of(two).device(name).uuid == onvif_of(three).device(name).uuid == expected
        assert onvif_of(alone).device(name).uuid != expected

        # status asks the running shard and says which shard it is.
        code, out, err = await gateway_cli("status", "--config", str(three.config.source), "--json")
        assert code in (0, 1), err
        body = json.loads(out)
        assert {c["name"] for c in body["cameras"]} == set(three.cameras)
        assert body["fleet"]["shard"] == fleetmod.shard_of(name, 3)
        assert body["fleet"]["site_cameras"] == len(names)

        # The site grows to three shards: a reload hands the other cameras off, and the
        # camera that stays keeps its device and uuid.
        moved = Path(two.config.source)
        moved.write_text(
            moved.read_text().replace(
                fleet_section(2, fleetmod.shard_of(name, 2), secret=True),
                fleet_section(3, fleetmod.shard_of(name, 3), secret=True),
            )
        )
        changes = await two.reload(sections.load_site(moved))
        assert set(changes["removed"]) == set(names) - set(three.cameras)
        check_owned(two, 3)
        assert onvif_of(two).device(name).uuid == expected
    finally:
        for gw in gateways:
            await gw.stop()


def test_egress_of_a_shard_covers_only_its_cameras(tmp_path: Path) -> None:
    from tests.test_egress_nft import BASE, run_cli

    names = ["front", "nvr-ch2", "nvr-ch3", "by-name"]
    shard = fleetmod.shard_of("front", 3)
    owned = [n for n in names if fleetmod.shard_of(n, 3) == shard]
    assert 0 < len(owned) < len(names)
    path = tmp_path / "gateway.toml"
    text = BASE.format(state=tmp_path / "state", dns="true", ntp="true")
    path.write_text(text + f"\n[fleet]\nshards = 3\nshard = {shard}\n")
    no_nft = dict(os.environ) | {"PATH": str(tmp_path / "empty-bin")}
    done = run_cli("report", "--config", str(path), "--json", env=no_nft)
    assert done.returncode == 0, done.stderr
    assert [c["name"] for c in json.loads(done.stdout)["cameras"]] == owned
    done = run_cli("render", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "camera front " in done.stdout  # the rule comments name the cameras
    for name in set(names) - set(owned):
        assert name not in done.stdout
