"""Egress isolation proven on the real kernel: network namespaces made by the test.

Topology (every address exists only inside namespaces this test creates)::

    camera: eth0 192.168.50.10, 192.168.50.99 (no camera), fd00:50::10
      |
    gateway: gw-cam 192.168.50.1, fd00:50::1 | gw-lan 10.77.0.1, fd00:77::1
                                                 |
    lan (a bridge) ---- vms: 10.77.0.2 ---- internet: 10.77.0.3, fd00:77::3

The same probes are run from the camera before and after the ruleset is applied in the
gateway namespace, so the test fails if the ruleset does nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from gateway.egress.ntp import STRATUM_UNSYNCHRONIZED, kernel_clock_state
from gateway.sim.phonehome import Target

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parent.parent
CAMERA_IP = "192.168.50.10"
UNKNOWN_IP = "192.168.50.99"
GATEWAY_CAM_IP = "192.168.50.1"
GATEWAY_LAN_IP = "10.77.0.1"
VMS_IP = "10.77.0.2"
INTERNET_IP = "10.77.0.3"
INTERNET_IP6 = "fd00:77::3"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespace tests need root"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"network namespace tests need {' and '.join(missing)} (iproute2, nftables)"
    probe = f"ogprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done


class Lab:
    """Five namespaces with unique names; ``close`` removes them and every process started."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = {role: f"og-{role}-{tag}" for role in ("cam", "gw", "lan", "vms", "inet")}
        self.processes: list[subprocess.Popen[bytes]] = []

    def build(self) -> None:
        ns = self.ns
        for name in ns.values():
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
            # No duplicate address detection: addresses (link-local ones too) usable at once.
            for scope in ("all", "default"):
                sh(
                    "ip",
                    "netns",
                    "exec",
                    name,
                    "sysctl",
                    "-q",
                    "-w",
                    f"net.ipv6.conf.{scope}.accept_dad=0",
                )
        # camera <-> gateway camera leg
        sh(
            "ip",
            "-n",
            ns["cam"],
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "gw-cam",
            "netns",
            ns["gw"],
        )
        # gateway LAN leg, VMS and internet hosts on a switch
        sh("ip", "-n", ns["lan"], "link", "add", "br0", "type", "bridge")
        for role, port, peer in (
            ("gw", "l-gw", "gw-lan"),
            ("vms", "l-vms", "eth0"),
            ("inet", "l-inet", "eth0"),
        ):
            sh(
                "ip",
                "-n",
                ns["lan"],
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                ns[role],
            )
            sh("ip", "-n", ns["lan"], "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns["lan"], "link", "set", "br0", "up")

        def addr(role: str, dev: str, *addresses: str) -> None:
            for address in addresses:
                extra = ["nodad"] if ":" in address else []
                sh("ip", "-n", ns[role], "addr", "add", address, "dev", dev, *extra)
            sh("ip", "-n", ns[role], "link", "set", dev, "up")

        addr("cam", "eth0", f"{CAMERA_IP}/24", f"{UNKNOWN_IP}/24", "fd00:50::10/64")
        addr("gw", "gw-cam", f"{GATEWAY_CAM_IP}/24", "fd00:50::1/64")
        addr("gw", "gw-lan", f"{GATEWAY_LAN_IP}/24", "fd00:77::1/64")
        addr("vms", "eth0", f"{VMS_IP}/24", "fd00:77::2/64")
        addr("inet", "eth0", f"{INTERNET_IP}/24", f"{INTERNET_IP6}/64")
        sh("ip", "-n", ns["cam"], "route", "add", "default", "via", GATEWAY_CAM_IP)
        sh("ip", "-n", ns["cam"], "-6", "route", "add", "default", "via", "fd00:50::1")
        for role, via, via6 in (
            ("inet", GATEWAY_LAN_IP, "fd00:77::1"),
            ("vms", GATEWAY_LAN_IP, "fd00:77::1"),
        ):
            sh("ip", "-n", ns[role], "route", "add", "192.168.50.0/24", "via", via)
            sh("ip", "-n", ns[role], "-6", "route", "add", "fd00:50::/64", "via", via6)
        sh("ip", "netns", "exec", ns["gw"], "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", ns["gw"], "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")

    def run(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns[role], *args, check=check)

    def python(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(role, sys.executable, *args, check=check)

    def start(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        # Its log goes to a file: a pipe nobody reads fills after 64 KiB, and the process's
        # next log line then blocks its event loop (every request unanswered from then on).
        log_file = tempfile.TemporaryFile()  # noqa: SIM115  (closed by close())
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[role], sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)},
        )
        _logs[process.pid] = log_file
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
            log_file = _logs.pop(process.pid, None)
            if log_file is not None:
                log_file.close()
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


_buffers: dict[int, bytes] = {}
_logs: dict[int, IO[bytes]] = {}  # each started process's log file, by pid


def process_log(process: subprocess.Popen[bytes]) -> str:
    """What a process started by Lab.start has logged so far."""
    log_file = _logs.get(process.pid)
    if log_file is None:
        return ""
    log_file.seek(0)
    return log_file.read().decode(errors="replace")


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The next stdout line of ``process``; fails with its stderr if it exits or times out.

    Reads the pipe with os.read into a buffer of our own: a buffered file object could hold
    lines that select() no longer sees."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = _buffers.get(process.pid, b"")
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"no output within {timeout} s from {process.args}")
            chunk = os.read(fd, 65536)
            if not chunk:
                process.wait(5)
                raise AssertionError(
                    f"{process.args} exited ({process.returncode}): {process_log(process)}"
                )
            buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    _buffers[process.pid] = rest
    return line.decode()


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _skip_reason()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def write_config(path: Path, state_dir: Path, **extra: str) -> Path:
    text = f"""
state_dir = "{state_dir}"

[server]
bind = "{GATEWAY_LAN_IP}"
rtsp_port = {extra.get("rtsp_port", "8554")}

[vms]
username = "vms"
password = "{extra.get("vms_password", "vms-secret")}"

[[camera]]
name = "{extra.get("camera_name", "front")}"
vendor = "{extra.get("vendor", "hikvision")}"
host = "{CAMERA_IP}"
username = "admin"
password = "{extra.get("camera_password", "cam-secret")}"
{extra.get("camera_extra", "")}

[camera_network]
interface = "gw-cam"
address = "{GATEWAY_CAM_IP}"
subnets = ["192.168.50.0/24", "fd00:50::/64"]
dns_sinkhole = true
ntp_server = true
"""
    path.write_text(text, encoding="utf-8")
    return path


PROBE_TARGETS = [
    f"tcp:{INTERNET_IP}:8555",
    f"udp:{INTERNET_IP}:8800",
    f"icmp:{INTERNET_IP}",
    f"tcp:[{INTERNET_IP6}]:8555",
    f"icmp:{INTERNET_IP6}",
    f"tcp:{VMS_IP}:8554",
]


def probe(lab: Lab, *extra: str, source: str | None = None) -> dict[str, dict[str, Any]]:
    args = ["-m", "gateway.sim.phonehome", "probe", "--vendor", "hikvision", "--timeout", "1.5"]
    for target in PROBE_TARGETS:
        args += ["--target", target]
    if source:
        args += ["--source", source]
    done = lab.python("cam", *args, *extra)
    return {f"{r['kind']} {r['target']}": r for r in json.loads(done.stdout)}


def cloud_contacts_until_marker(lab: Lab, cloud: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    """Contacts the internet host saw, up to a marker connection from the VMS host.

    The VMS host reaches the internet host directly on the LAN, so its contact always
    arrives, and arrives after anything the camera sent earlier."""
    lab.python(
        "vms",
        "-m",
        "gateway.sim.phonehome",
        "probe",
        "--no-ssdp",
        "--timeout",
        "5",
        "--target",
        f"tcp:{INTERNET_IP}:8555",
    )
    contacts = []
    while True:
        contact = json.loads(read_line(cloud, 10))
        if contact["peer"] == VMS_IP:
            return contacts
        contacts.append(contact)


def test_cameras_reach_nothing_but_the_gateway(lab: Lab, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.toml", tmp_path / "state")
    cloud = lab.start(
        "inet",
        "-m",
        "gateway.sim.phonehome",
        "cloud",
        "--listen",
        INTERNET_IP,
        "--listen",
        INTERNET_IP6,
        "--tcp",
        "8555",
        "--udp",
        "8800",
    )
    assert json.loads(read_line(cloud, 20)) == {"ready": True}
    vms_listener = lab.start(
        "vms", "-m", "gateway.sim.phonehome", "cloud", "--listen", VMS_IP, "--tcp", "8554"
    )
    assert json.loads(read_line(vms_listener, 20)) == {"ready": True}

    # Before: the camera reaches the internet host by every protocol, and the VMS LAN.
    before = probe(lab, "--no-ssdp")
    for key, result in before.items():
        assert result["reached"], f"before the ruleset, {key} should pass: {result}"
    seen = cloud_contacts_until_marker(lab, cloud)
    assert {(c["protocol"], c["peer"]) for c in seen} >= {("tcp", CAMERA_IP), ("udp", CAMERA_IP)}

    # Apply the rendered ruleset in the gateway namespace, through the CLI.
    applied = lab.python(
        "gw", "-m", "gateway", "egress", "apply", "--config", str(config), "--json"
    )
    assert {"input", "forward"} <= set(json.loads(applied.stdout)["chains"])
    served = lab.start(
        "gw", "-m", "gateway", "egress", "serve", "--config", str(config), "--poll-interval", "0"
    )
    assert read_line(served, 20).startswith("egress services ready")

    # After: nothing gets out; DNS and NTP are answered by the gateway.
    after = probe(lab, "--dns", GATEWAY_CAM_IP, "--ntp", GATEWAY_CAM_IP)
    for target in PROBE_TARGETS:
        parsed = Target.parse(target)
        result = after[f"{parsed.protocol} {parsed}"]
        assert not result["reached"], f"after the ruleset, {target} must be blocked: {result}"
    assert cloud_contacts_until_marker(lab, cloud) == []
    dns_results = [r for r in after.values() if r["kind"] == "dns"]
    assert dns_results, "the simulated camera looked up its vendor's names"
    assert {r["data"].get("rcode") for r in dns_results} == {"NXDOMAIN"}, dns_results
    looked_up = {r["data"]["name"] for r in dns_results}
    assert "litedev.hik-connect.com" in looked_up
    ntp_result = after[f"ntp {GATEWAY_CAM_IP}"]
    assert ntp_result["outcome"] == "answered"
    assert abs(ntp_result["data"]["server_time"] - time.time()) < 5
    clock = kernel_clock_state()  # the namespaces share the kernel's clock
    if clock.synchronized:
        assert ntp_result["data"]["stratum"] == 3 and ntp_result["data"]["leap"] != 3
    else:
        assert ntp_result["data"]["stratum"] == STRATUM_UNSYNCHRONIZED
        assert ntp_result["data"]["leap"] == 3

    # An address in the camera subnet that is no configured camera.
    stranger = lab.python(
        "cam",
        "-m",
        "gateway.sim.phonehome",
        "probe",
        "--no-ssdp",
        "--timeout",
        "1",
        "--source",
        UNKNOWN_IP,
        "--target",
        f"udp:{INTERNET_IP}:8800",
    )
    assert not json.loads(stranger.stdout)[0]["reached"]

    # The gateway itself still reaches the camera (its RTSP pulls and HTTP calls).
    cam_service = lab.start(
        "cam",
        "-m",
        "gateway.sim.phonehome",
        "cloud",
        "--listen",
        CAMERA_IP,
        "--tcp",
        "554",
        "--udp",
        "5554",
    )
    assert json.loads(read_line(cam_service, 20)) == {"ready": True}
    outbound = lab.python(
        "gw",
        "-m",
        "gateway.sim.phonehome",
        "probe",
        "--no-ssdp",
        "--timeout",
        "5",
        "--target",
        f"tcp:{CAMERA_IP}:554",
        "--target",
        f"udp:{CAMERA_IP}:5554",
        "--target",
        f"icmp:{CAMERA_IP}",
    )
    for result in json.loads(outbound.stdout):
        assert result["reached"], f"the gateway must still reach the camera: {result}"

    # Counters per camera, through `egress status --json`.
    status = json.loads(
        lab.python(
            "gw", "-m", "gateway", "egress", "status", "--config", str(config), "--json"
        ).stdout
    )
    counters = {row["counter"]: row for row in status["counters"]}
    assert counters["cam_front"]["cameras"] == ["front"]
    assert counters["cam_front"]["packets"] >= 5
    assert counters["unknown_source"]["packets"] >= 1  # the stranger and the camera's IPv6

    # Stop the services (they flush DNS records to the store), then the report.
    served.terminate()
    assert served.wait(10) == 0
    report = json.loads(
        lab.python(
            "gw", "-m", "gateway", "egress", "report", "--config", str(config), "--json"
        ).stdout
    )
    [front] = report["cameras"]
    assert front["name"] == "front"
    assert front["blocked_packets"] >= 5
    destinations = {
        (d["protocol"], d["destination"], d["port"]) for d in front["blocked_destinations"]
    }
    assert ("tcp", INTERNET_IP, 8555) in destinations
    assert ("udp", INTERNET_IP, 8800) in destinations
    assert ("icmp", INTERNET_IP, None) in destinations
    assert ("tcp", VMS_IP, 8554) in destinations
    services = {d["port"]: d["service"] for d in front["blocked_destinations"]}
    assert services[8800] == "Dahua P2P (Easy4IP) rendezvous"
    names = {q["name"]: q for q in front["dns"]}
    assert names["litedev.hik-connect.com"]["category"] == "hik-connect"
    assert names["www.hik-online.com"]["category"] == "vendor-ddns"
    assert front["dns_phone_home"] >= len(dns_results) - 0
    unknown = {s["source"] for s in report["unknown"]["sources"]}
    assert UNKNOWN_IP in unknown
    assert "fd00:50::10" in unknown  # the camera's IPv6 address is not its configured host


def read_event(process: subprocess.Popen[bytes], event: str, timeout: float) -> dict[str, Any]:
    """The first JSON line on stdout whose "event" is ``event`` (other lines are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        line = read_line(process, max(deadline - time.monotonic(), 0.1))
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(message, dict) and message.get("event") == event:
            return message


@pytest.mark.slow
def test_vms_plays_the_isolated_camera_through_the_gateway(lab: Lab, tmp_path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg as the VMS-side RTSP client")
    sim = lab.start(
        "cam",
        "-m",
        "gateway",
        "sim",
        "--hikvision",
        "1",
        "--dahua",
        "0",
        "--host",
        CAMERA_IP,
        "--rtsp-port",
        "554",
        "--http-port",
        "80",
        "--profile",
        "test",
        "--password",
        "cam-secret",
    )
    [camera] = read_event(sim, "ready", 180)["cameras"]
    config = write_config(
        tmp_path / "gateway.toml",
        tmp_path / "state",
        camera_name=camera["name"],
        camera_extra='rtsp_port = 554\nhttp_port = 80\ntransport = "tcp"',
    )
    lab.python("gw", "-m", "gateway", "egress", "apply", "--config", str(config))
    gateway = lab.start("gw", "-m", "gateway", "run", "--config", str(config))
    read_event(gateway, "ready", 60)

    url = f"rtsp://vms:vms-secret@{GATEWAY_LAN_IP}:8554/{camera['name']}/main"
    played = lab.run(
        "vms",
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-i",
        url,
        "-map",
        "0:v",
        "-frames:v",
        "30",
        "-f",
        "null",
        "-",
        check=False,
    )
    assert played.returncode == 0, played.stderr[-2000:]

    # Meanwhile the camera is still cut off, and the gateway's own sinkhole answers it.
    after = probe(lab, "--dns", GATEWAY_CAM_IP, "--lookup", "www.hik-online.com", "--no-ssdp")
    assert not after[f"tcp tcp:{INTERNET_IP}:8555"]["reached"]
    assert after[f"dns {GATEWAY_CAM_IP}:53 A www.hik-online.com"]["data"]["rcode"] == "NXDOMAIN"
