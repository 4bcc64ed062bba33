"""The nftables ruleset: rendered text, validated by nft in a throwaway namespace, applied
atomically without touching other tables; counters folded into the store; CLI exit codes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway.egress import nft
from gateway.egress.store import load_counters, open_egress, save_counters
from gateway.store import Store

REPO = Path(__file__).resolve().parent.parent

BASE = """
state_dir = "{state}"
[vms]
username = "vms"
password = "vms-secret"

[[camera]]
name = "front"
vendor = "hikvision"
host = "192.168.50.10"
username = "admin"
password = "x"

[[camera]]
name = "nvr-ch2"
vendor = "dahua"
host = "192.168.50.11"
username = "admin"
password = "x"
transport = "udp"

[[camera]]
name = "nvr-ch3"
vendor = "dahua"
host = "192.168.50.11"
channel = 3
username = "admin"
password = "x"

[[camera]]
name = "by-name"
vendor = "hikvision"
host = "cam7.site.lan"
username = "admin"
password = "x"

[camera_network]
interface = "eth1"
address = "192.168.50.1"
subnets = ["192.168.50.0/24", "fd00:50::/64"]
allow = ["192.168.60.5", "fd00:60::/64"]
dns_sinkhole = {dns}
ntp_server = {ntp}
"""


def load(tmp_path: Path, *, dns: bool = True, ntp: bool = True, text: str | None = None) -> Path:
    path = tmp_path / "gateway.toml"
    body = text or BASE.format(state=tmp_path / "state", dns=str(dns).lower(), ntp=str(ntp).lower())
    path.write_text(body, encoding="utf-8")
    return path


def test_render_is_complete_and_commented(tmp_path: Path) -> None:
    ruleset = nft.render(cfgmod.load(load(tmp_path)))
    text = ruleset.text
    lines = text.splitlines()
    # Only its own table, replaced atomically: create-if-absent, delete, recreate.
    assert "table inet onvif_gateway" in lines
    assert lines.index("table inet onvif_gateway") < lines.index("delete table inet onvif_gateway")
    tables = {line.split("{")[0].strip() for line in lines if line.startswith("table ")}
    assert tables == {"table inet onvif_gateway"}
    # One counter per camera address; cameras sharing an address share it.
    assert "\tcounter cam_front {" in lines
    assert "\tcounter cam_nvr-ch2 {" in lines
    assert "cam_nvr-ch3" not in text
    assert 'comment "camera nvr-ch2+nvr-ch3 (192.168.50.11)"' in text
    assert "\tcounter unknown_source {" in lines
    assert 'log prefix "onvif-gw drop front: "' in text
    assert 'log prefix "onvif-gw drop nvr-ch2+nvr-ch3: "' in text
    assert "192.168.50.10 : goto drop_cam_front" in text
    # Services on the camera-side address, and nothing else of the gateway's.
    assert "ip daddr 192.168.50.1 udp dport 53 accept" in text
    assert "ip daddr 192.168.50.1 tcp dport 53 accept" in text
    assert "ip daddr 192.168.50.1 udp dport 123 accept" in text
    assert "ct state established,related accept" in text
    assert "ip daddr 239.255.255.250 udp dport 1900 goto camera_drop" in text
    assert "ip6 daddr ff02::fb udp dport 5353 goto camera_drop" in text
    assert "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept" in text
    assert "elements = { 192.168.60.5/32 }" in text
    assert "ip6 daddr @allow6 accept" in text
    # The UDP-transport camera gets its RTP opening, with a warning.
    assert "ip saddr 192.168.50.11 ip daddr 192.168.50.1 udp dport 5000-65000 accept" in text
    # Every rule line inside a chain is preceded somewhere by a comment explaining it.
    assert text.count("\t\t# ") >= 15
    warnings = " ".join(ruleset.warnings)
    assert "by-name: host 'cam7.site.lan' is not an IP address" in warnings
    assert "nvr-ch2: transport 'udp' opens UDP 5000-65000" in warnings


def test_services_switched_off_are_not_opened(tmp_path: Path) -> None:
    text = nft.render(cfgmod.load(load(tmp_path, dns=False, ntp=False))).text
    assert "dport 53 accept" not in text
    assert "dport 123 accept" not in text


def test_render_refuses_configs_it_cannot_isolate(tmp_path: Path) -> None:
    no_network = BASE.split("[camera_network]")[0].format(state=tmp_path)
    with pytest.raises(nft.EgressConfigError, match=r"no \[camera_network\] section"):
        nft.render(cfgmod.load(load(tmp_path, text=no_network)))
    bad_iface = BASE.format(state=tmp_path, dns="true", ntp="true").replace(
        'interface = "eth1"', 'interface = "eth1\\" accept #"'
    )
    with pytest.raises(nft.EgressConfigError, match="is not an interface name"):
        nft.render(cfgmod.load(load(tmp_path, text=bad_iface)))


def test_parse_table_and_attempts_from_nft_json() -> None:
    table = json.dumps(
        {
            "nftables": [
                {"metainfo": {"version": "1.0.6"}},
                {"table": {"family": "inet", "name": "onvif_gateway", "handle": 7}},
                {"chain": {"table": "onvif_gateway", "name": "input", "hook": "input"}},
                {"chain": {"table": "onvif_gateway", "name": "camera_drop"}},
                {
                    "counter": {
                        "table": "onvif_gateway",
                        "name": "cam_a",
                        "packets": 4,
                        "bytes": 240,
                    }
                },
                {"counter": {"table": "other", "name": "cam_a", "packets": 99, "bytes": 1}},
            ]
        }
    )
    state = nft.parse_table(table)
    assert state.handle == 7
    assert state.chains == {"input": "input", "camera_drop": None}
    assert state.counters == {"cam_a": (4, 240)}
    attempts = json.dumps(
        {
            "nftables": [
                {
                    "set": {
                        "name": "attempts4",
                        "elem": [
                            {
                                "elem": {
                                    "val": {"concat": ["192.168.50.10", "10.0.0.3", "tcp", 8555]},
                                    "counter": {"packets": 3, "bytes": 180},
                                }
                            },
                            {"elem": {"val": {"concat": ["192.168.50.10", "10.0.0.3", "icmp"]}}},
                        ],
                    }
                }
            ]
        }
    )
    found = nft.parse_attempts(attempts)
    assert found[0] == nft.BlockedDestination("192.168.50.10", "10.0.0.3", "tcp", 8555, 3, 180)
    assert (found[1].protocol, found[1].port, found[1].packets) == ("icmp", None, 0)
    with pytest.raises(nft.NftError, match="not JSON"):
        nft.parse_table("garbage")


def test_counter_deltas_survive_ruleset_reloads() -> None:
    store = open_egress(Store(":memory:"))
    sources = {"cam_a": "192.168.50.10"}
    first = save_counters(store, nft.TableState(1, {}, {"cam_a": (5, 300)}), sources, 1.0)
    assert (first[0].packets, first[0].total_packets) == (5, 5)
    same = save_counters(store, nft.TableState(1, {}, {"cam_a": (8, 480)}), sources, 2.0)
    assert (same[0].packets, same[0].total_packets) == (3, 8)
    # Reloaded table (new handle): its counters restart at zero, the reading is all new.
    reloaded = save_counters(store, nft.TableState(2, {}, {"cam_a": (2, 120)}), sources, 3.0)
    assert (reloaded[0].packets, reloaded[0].total_packets) == (2, 10)
    [row] = load_counters(store)
    assert (row["packets"], row["bytes"], row["source"]) == (10, 600, "192.168.50.10")


# --------------------------------------------------------------------------- real nft


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("nft validation in a namespace needs root")
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("needs nft and ip (nftables, iproute2)")
    name = f"og-nft-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.netns
def test_nft_accepts_the_rendered_ruleset(tmp_path: Path, namespace: str) -> None:
    runner = nft.Nft(prefix=("ip", "netns", "exec", namespace))
    for dns, ntp in ((True, True), (False, False)):
        nft.check(nft.render(cfgmod.load(load(tmp_path, dns=dns, ntp=ntp))).text, runner)
    with pytest.raises(nft.NftError, match="failed"):
        nft.check("table inet onvif_gateway { chain c { nonsense } }", runner)


@pytest.mark.netns
def test_apply_replaces_only_its_own_table(tmp_path: Path, namespace: str) -> None:
    runner = nft.Nft(prefix=("ip", "netns", "exec", namespace))
    runner.run(
        "-f",
        "-",
        stdin="table inet site {\n\tchain keep {\n\t\ttype filter hook input priority 0;\n\t}\n}\n",
    )
    config = cfgmod.load(load(tmp_path))
    _, first = nft.apply(config, runner)
    assert first.chains["input"] == "input" and first.chains["forward"] == "forward"
    assert set(first.counters) == {"cam_front", "cam_nvr-ch2", "unknown_source"}
    _, second = nft.apply(config, runner)  # idempotent, and a new table each time
    assert second.handle != first.handle
    tables = runner.run("list", "tables")
    assert "table inet site" in tables and "table inet onvif_gateway" in tables
    assert "chain keep" in runner.run("list", "table", "inet", "site")
    assert nft.read_attempts(runner) == []


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "egress", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=(env or dict(os.environ)) | {"PYTHONPATH": str(REPO)},
        timeout=60,
    )


def test_cli_render_and_exit_codes(tmp_path: Path) -> None:
    config = load(tmp_path)
    done = run_cli("render", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("#!/usr/sbin/nft -f")
    assert "warning: camera by-name" in done.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[vms]\nusername = 1\n", encoding="utf-8")
    done = run_cli("render", "--config", str(broken))
    assert done.returncode == 2
    assert "vms.username: must be a str" in done.stderr
    assert "Traceback" not in done.stderr
    # Without nft on PATH, apply and status fail clearly with the runtime exit code.
    no_nft = dict(os.environ) | {"PATH": str(tmp_path / "empty-bin")}
    for action in ("apply", "status"):
        done = run_cli(action, "--config", str(config), env=no_nft)
        assert done.returncode == 3, done.stderr
        assert "nft not found: install nftables" in done.stderr
        assert "Traceback" not in done.stderr
    # The report works from the store alone and says the live counters were not read.
    done = run_cli("report", "--config", str(config), "--json", env=no_nft)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [c["name"] for c in report["cameras"]] == ["front", "nvr-ch2", "nvr-ch3", "by-name"]
    assert report["cameras"][1]["shares_host_with"] == ["nvr-ch3"]
    assert "live counters not read" in report["note"]
