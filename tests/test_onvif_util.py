"""Debian's ``onvif-util`` (onvif-tools, built on libonvif) against the gateway.

onvif-util finds devices by WS-Discovery with multicast loopback switched off, so the gateway
(and the simulated cameras behind it) run in a network namespace made by this test, joined by
a veth pair to a second namespace where onvif-util runs as the VMS would::

    og-ugw-<tag>: sim cameras on 127.0.0.1, gateway on gw0 10.213.7.1/24
        |  veth
    og-uvms-<tag>: vms0 10.213.7.2/24, onvif-util, ffprobe

Every address exists only inside these namespaces; both are deleted (and every process
started in them stopped) even when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.onvif_matrix import record
from tests.test_egress_netns import Lab, process_log, read_line, sh

pytestmark = pytest.mark.netns

GATEWAY_IP = "10.213.7.1"
VMS_IP = "10.213.7.2"
VMS_PASSWORD = "vms-" + secrets.token_hex(6)
CAMERA_PASSWORD = "cam-" + secrets.token_hex(6)
# Rows of the conformance matrix (tests/test_onvif_conformance.py) this test fills in.
MATRIX_DEVICES = {"hik1": "Hikvision H.264", "dahua1": "Dahua H.265"}


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in ("ip", "onvif-util", "ffprobe") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (iproute2, onvif-tools, ffmpeg)"
    return None


class Pair(Lab):
    """Two namespaces joined by a veth pair (the egress test's Lab, minus its LAN);
    ``close`` stops every process started and deletes both."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = {"gw": f"og-ugw-{tag}", "vms": f"og-uvms-{tag}"}
        self.processes: list[subprocess.Popen[bytes]] = []

    def build(self) -> None:
        gw, vms = self.ns["gw"], self.ns["vms"]
        for name in (gw, vms):
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", gw, "link", "add", "gw0", "type", "veth", "peer", "name", "vms0")
        sh("ip", "-n", gw, "link", "set", "vms0", "netns", vms)
        for ns, dev, address in ((gw, "gw0", GATEWAY_IP), (vms, "vms0", VMS_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            # Multicast (WS-Discovery) leaves through the veth.
            sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)

    def vms_run(self, *args: str, stdin: str = "", timeout: float = 60, code: int = 0) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns["vms"], *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == code, f"{args[0]} exited {done.returncode}: {done.stderr}"
        return done.stdout


@pytest.fixture
def pair() -> Iterator[Pair]:
    reason = skip_reason()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    pair = Pair()
    try:
        pair.build()
        yield pair
    finally:
        pair.close()


def gateway_config(path: Path, cameras: list[dict[str, object]], state_dir: Path) -> Path:
    lines = [
        f'state_dir = "{state_dir}"',
        "[server]",
        f'bind = "{GATEWAY_IP}"',
        "rtsp_port = 8554",
        "onvif_base_port = 8000",
        "[vms]",
        'username = "vms"',
        f'password = "{VMS_PASSWORD}"',
    ]
    for cam in cameras:
        lines += [
            "[[camera]]",
            f'name = "{cam["name"]}"',
            f'vendor = "{cam["vendor"]}"',
            f'host = "{cam["host"]}"',
            f"rtsp_port = {cam['rtsp_port']}",
            f"http_port = {cam['http_port']}",
            'username = "admin"',
            f'password = "{CAMERA_PASSWORD}"',
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_gateway_ready(process: subprocess.Popen[bytes], timeout: float) -> list[dict[str, object]]:
    """The gateway's ready line(s): one, or one per worker after the supervisor's line when
    ``workers = "auto"`` chose several processes."""
    first = json.loads(read_line(process, timeout))
    if first.get("event") != "supervisor":
        return [first]
    return [json.loads(read_line(process, timeout)) for _ in range(int(first["workers"]))]


def test_onvif_util_discovers_lists_profiles_and_rtsp(pair: Pair, tmp_path: Path) -> None:
    sim = pair.start(
        "gw",
        *("-m", "gateway", "sim", "--profile", "test", "--host", "127.0.0.1"),
        *("--password", CAMERA_PASSWORD),
    )
    ready = json.loads(read_line(sim, 120))
    assert ready["event"] == "ready"
    names = {cam["name"] for cam in ready["cameras"]}
    assert names == {"hik1", "dahua1"}
    config = gateway_config(tmp_path / "gateway.toml", ready["cameras"], tmp_path / "state")
    gateway = pair.start("gw", "-m", "gateway", "run", "--config", str(config))
    for ready_line in wait_gateway_ready(gateway, 60):
        assert ready_line == {"event": "ready", "rtsp_port": 8554}

    # Discovery from the VMS namespace: both virtual devices answer with their names.
    listed = pair.vms_run("onvif-util", "-a", timeout=30)
    assert f"{GATEWAY_IP} hik1(" in listed and f"{GATEWAY_IP} dahua1(" in listed, listed

    # Log in (onvif-util finds the device by multicast, then signs every request with a
    # PasswordDigest UsernameToken), list profiles and the RTSP URI. A device offers its
    # profiles once its streams have been seen, a moment after start-up.
    script = "get profiles\nget rtsp\nquit\n"
    deadline = time.monotonic() + 30
    while True:
        out = pair.vms_run("onvif-util", "-u", "vms", "-p", VMS_PASSWORD, GATEWAY_IP, stdin=script)
        if "Token 1:" in out or time.monotonic() > deadline:
            break
    assert "successfully connected to host" in out, out
    match = re.search(r"name:\s+(\w+)", out)
    assert match is not None and match.group(1) in names, out
    camera = match.group(1)
    device = MATRIX_DEVICES[camera]
    record("onvif-util", device, "discover (-a)", "pass")
    # libonvif 1.4.4 reuses one nonce for every request within a second: the gateway lets
    # that repeat through from the same address for Get* requests (gateway.onvif.security).
    assert "NotAuthorized" not in out, out
    assert f"Token 0: {camera}_main" in out and f"Token 1: {camera}_sub" in out, out
    uri = f"rtsp://{GATEWAY_IP}:8554/{camera}/main"
    assert uri in out, out
    record("onvif-util", device, "get profiles, get rtsp", "pass")

    # `get network` (GetNetworkInterfaces, GetNetworkDefaultGateway, GetDNS) failed entirely
    # before the gateway answered GetNetworkDefaultGateway.
    network = pair.vms_run(
        "onvif-util", "-u", "vms", "-p", VMS_PASSWORD, GATEWAY_IP, stdin="get network\nquit\n"
    )
    assert "ERROR" not in network and f"IP Address: {GATEWAY_IP}" in network, network
    # No default route leaves through the veth: none is shown, and no host resolver.
    assert re.search(r"Gateway:\s*\n", network) and re.search(r"DNS:\s*\n", network), network
    record("onvif-util", device, "get network", "pass")

    # libonvif 1.4.4 signs every request of a second with one nonce, and requests a fraction
    # of a millisecond apart with one Created: 20 sessions back to back, not one refused.
    refused = []
    for _ in range(20):
        session = pair.vms_run(
            "onvif-util", "-u", "vms", "-p", VMS_PASSWORD, GATEWAY_IP, stdin=script
        )
        if "NotAuthorized" in session or "Token 1:" not in session:
            refused.append(session)
    assert not refused, f"{refused[0]}\n--- the gateway's log ends:\n{process_log(gateway)[-4000:]}"

    # The URI onvif-util printed plays from the VMS namespace.
    probed = json.loads(
        pair.vms_run(
            *("ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_streams"),
            *("-of", "json", uri.replace("rtsp://", f"rtsp://vms:{VMS_PASSWORD}@")),
        )
    )
    codecs = {s["codec_type"]: s["codec_name"] for s in probed["streams"]}
    assert codecs["video"] == ("h264" if camera == "hik1" else "hevc")

    # Wrong credentials are refused, not answered.
    refused = pair.vms_run(
        "onvif-util", "-u", "vms", "-p", "wrong", GATEWAY_IP, stdin=script, code=1
    )
    assert "NotAuthorized" in refused and "Token 0:" not in refused, refused
