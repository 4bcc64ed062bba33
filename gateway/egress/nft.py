"""The nftables ruleset that isolates the camera network: render, apply, read back, count.

The ruleset lives in its own table, ``inet onvif_gateway``; nothing here touches any other
table. :func:`render` is pure (config in, commented ruleset text out) and needs no nftables.
:func:`apply` loads the text with ``nft -f`` (the file deletes and recreates the table in one
transaction, so the swap is atomic) and reads the table back to check it is in place.
:func:`read_counters` and :func:`read_attempts` read the per-camera counters and the sets of
recently blocked destinations with ``nft -j``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config

FAMILY = "inet"
TABLE = "onvif_gateway"
UNKNOWN_COUNTER = "unknown_source"
LOG_PREFIX = "onvif-gw drop {label}: "
# Kernel log lines per source: enough to see that a camera tries, not enough to flood.
LOG_RATE = "limit rate 10/minute burst 5 packets"
# Blocked destinations remembered per source for the report (elements expire after a week).
ATTEMPT_SET_SIZE = 16384
ATTEMPT_TIMEOUT = "7d"
DNS_PORT = 53
NTP_PORT = 123
# FFmpeg's default RTP client port range (rtsp demuxer min_port/max_port): with RTSP over
# UDP the camera sends RTP from its side as new flows, which conntrack cannot tie to the
# RTSP session (there is no RTSP conntrack helper in the mainline kernel).
RTP_CLIENT_PORTS = (5000, 65000)
INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\*?$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressConfigError(ValueError):
    """The configuration cannot produce a ruleset (exit code 2 on the command line)."""


class NftError(RuntimeError):
    """nft is missing, lacks privileges, or rejected the ruleset (exit code 3)."""


@dataclass(frozen=True)
class Source:
    """One camera-side address with its own counter: one camera, or several sharing a host."""

    address: IPAddress
    cameras: tuple[str, ...]

    @property
    def counter(self) -> str:
        return f"cam_{self.cameras[0]}"

    @property
    def chain(self) -> str:
        return f"drop_{self.counter}"

    @property
    def label(self) -> str:
        return "+".join(self.cameras)


@dataclass
class Ruleset:
    text: str
    sources: list[Source]
    warnings: list[str] = field(default_factory=list)

    def counter_sources(self) -> dict[str, str]:
        """Counter name -> source address ("" for the unknown-source counter)."""
        mapping = {s.counter: str(s.address) for s in self.sources}
        mapping[UNKNOWN_COUNTER] = ""
        return mapping


def camera_sources(config: Config) -> tuple[list[Source], list[str]]:
    """The per-address counters for the configured cameras, and warnings about cameras whose
    host cannot have one (a DNS name) or lies outside the camera subnets."""
    warnings: list[str] = []
    network = config.camera_network
    subnets = [ipaddress.ip_network(s) for s in network.subnets] if network else []
    by_address: dict[IPAddress, list[str]] = {}
    for camera in config.cameras:
        try:
            address = ipaddress.ip_address(camera.host)
        except ValueError:
            warnings.append(
                f"camera {camera.name}: host {camera.host!r} is not an IP address, so its drops "
                f"count as unknown source; give the camera a fixed address in the config"
            )
            continue
        if subnets and not any(address in net for net in subnets):
            warnings.append(
                f"camera {camera.name}: {address} is outside camera_network.subnets; only its "
                f"traffic arriving on the camera interface is filtered"
            )
        by_address.setdefault(address, []).append(camera.name)
    sources = [Source(addr, tuple(names)) for addr, names in by_address.items()]
    return sources, warnings


def _set_block(name: str, kind: str, elements: Sequence[object], comment: str) -> list[str]:
    return [
        f"\t# {comment}",
        f"\tset {name} {{",
        f"\t\ttype {kind}",
        "\t\tflags interval",
        f"\t\telements = {{ {', '.join(str(e) for e in elements)} }}",
        "\t}",
        "",
    ]


def _attempt_set(name: str, kind: str, comment: str) -> list[str]:
    return [
        f"\t# {comment}",
        f"\tset {name} {{",
        f"\t\ttype {kind}",
        "\t\tflags dynamic, timeout",
        f"\t\ttimeout {ATTEMPT_TIMEOUT}",
        f"\t\tsize {ATTEMPT_SET_SIZE}",
        "\t\tcounter",
        "\t}",
        "",
    ]


def render(config: Config) -> Ruleset:
    """The complete, commented ruleset for ``config``; raises EgressConfigError."""
    network = config.camera_network
    if network is None:
        raise EgressConfigError(
            f"{config.source}: no [camera_network] section: nothing to isolate "
            "(set interface, address and subnets)"
        )
    if not INTERFACE_RE.match(network.interface):
        raise EgressConfigError(
            f"{config.source}: camera_network.interface {network.interface!r} is not an "
            "interface name (letters, digits, '_', '.', ':', '@', '-'; at most 15)"
        )
    if not network.subnets:
        raise EgressConfigError(f"{config.source}: camera_network.subnets is empty")
    gateway = ipaddress.ip_address(network.address)
    subnets = [ipaddress.ip_network(s) for s in network.subnets]
    allow = [ipaddress.ip_network(s) for s in network.allow]
    sources, warnings = camera_sources(config)
    if not any(gateway in net for net in subnets):
        warnings.append(
            f"camera_network.address {gateway} is outside camera_network.subnets; cameras must "
            "reach it on their own link for DNS and NTP"
        )
    nets4 = [n for n in subnets if n.version == 4]
    nets6 = [n for n in subnets if n.version == 6]
    allow4 = [n for n in allow if n.version == 4]
    allow6 = [n for n in allow if n.version == 6]
    src4 = [s for s in sources if s.address.version == 4]
    src6 = [s for s in sources if s.address.version == 6]
    iface = network.interface
    ip = "ip" if gateway.version == 4 else "ip6"

    out: list[str] = [
        "#!/usr/sbin/nft -f",
        f"# onvif-gateway egress ruleset, rendered from {config.source}",
        f"# Camera network: interface {iface}, gateway address {gateway}, "
        f"subnets {', '.join(map(str, subnets))}",
        f"# DNS sinkhole: {'on' if network.dns_sinkhole else 'off'}; "
        f"NTP server: {'on' if network.ntp_server else 'off'}; "
        f"exceptions (allow): {', '.join(map(str, allow)) or 'none'}",
        "#",
        "# Cameras may reach nothing but the gateway's own DNS and NTP services; replies to the",
        "# gateway's own connections (RTSP pulls, HTTP/ONVIF calls) still come back. Everything",
        "# else they send is counted per camera, logged (rate-limited) and dropped.",
        "#",
        "# Load it with `onvif-gateway egress apply --config FILE`. It touches only its own table:",
        "# the next two lines create the table if it is absent and delete it, so the whole file",
        "# replaces the table in one atomic transaction and never touches other tables.",
        "",
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        "",
        f"table {FAMILY} {TABLE} {{",
        "\t# Blocked-packet counters, one per camera address; `onvif-gateway egress status` reads",
        "\t# them. Cameras that share an address (channels of one NVR) share its counter.",
    ]
    for source in sources:
        out += [
            f"\tcounter {source.counter} {{",
            f'\t\tcomment "camera {source.label} ({source.address})"',
            "\t}",
        ]
    out += [
        f"\tcounter {UNKNOWN_COUNTER} {{",
        '\t\tcomment "camera-side addresses that are no configured camera"',
        "\t}",
        "",
    ]
    if nets4:
        out += _set_block("camera_nets4", "ipv4_addr", nets4, "The camera subnets (IPv4).")
    if nets6:
        out += _set_block("camera_nets6", "ipv6_addr", nets6, "The camera subnets (IPv6).")
    if allow4:
        out += _set_block(
            "allow4", "ipv4_addr", allow4, "Site exceptions: cameras may reach these."
        )
    if allow6:
        out += _set_block("allow6", "ipv6_addr", allow6, "Site exceptions (IPv6).")
    out += _attempt_set(
        "attempts4",
        "ipv4_addr . ipv4_addr . inet_proto . inet_service",
        "Blocked TCP/UDP attempts: source . destination . protocol . port, with packet counts.",
    )
    out += _attempt_set(
        "attempts4_other",
        "ipv4_addr . ipv4_addr . inet_proto",
        "Blocked attempts by other protocols (ICMP, ...): source . destination . protocol.",
    )
    out += _attempt_set(
        "attempts6",
        "ipv6_addr . ipv6_addr . inet_proto . inet_service",
        "Blocked IPv6 TCP/UDP attempts.",
    )
    out += _attempt_set(
        "attempts6_other",
        "ipv6_addr . ipv6_addr . inet_proto",
        "Blocked IPv6 attempts by other protocols.",
    )

    # --- hooks: pick out camera-side traffic, leave everything else to other tables
    out += [
        "\t# Packets for the gateway itself. Priority filter - 10: judged before the usual",
        "\t# filter tables; non-camera traffic returns untouched (policy accept) so other",
        "\t# tables keep deciding about it.",
        "\tchain input {",
        "\t\ttype filter hook input priority filter - 10; policy accept;",
        "\t\t# The gateway talking to itself (its address is inside the camera subnet).",
        '\t\tiifname "lo" return',
        "\t\t# Anything arriving on the camera interface, and camera addresses arriving",
        "\t\t# anywhere else (spoofed or misrouted), is camera traffic.",
        f'\t\tiifname "{iface}" jump camera_input',
    ]
    if nets4:
        out.append("\t\tip saddr @camera_nets4 jump camera_input")
    if nets6:
        out.append("\t\tip6 saddr @camera_nets6 jump camera_input")
    out += [
        "\t}",
        "",
        "\t# Packets routed through the gateway: the cameras' way to the VMS LAN and the WAN.",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter - 10; policy accept;",
        f'\t\tiifname "{iface}" jump camera_forward',
    ]
    if nets4:
        out.append("\t\tip saddr @camera_nets4 jump camera_forward")
    if nets6:
        out.append("\t\tip6 saddr @camera_nets6 jump camera_forward")
    out += ["\t}", ""]

    # --- what cameras may send to the gateway
    out += [
        "\tchain camera_input {",
        "\t\t# Replies to connections the gateway opened to the cameras (RTSP pulls, ISAPI/CGI",
        "\t\t# and ONVIF calls), and ICMP errors about them.",
        "\t\tct state established,related accept",
        "\t\t# IPv6 neighbour discovery on the link, so the gateway and cameras can address",
        "\t\t# each other; hop limit 255 proves it was not routed. Router solicitations, MLD",
        "\t\t# and all other IPv6 from cameras are dropped below.",
        "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
        "\t\t# Multicast leaks: UPnP/SSDP discovery and mDNS announcements. Dropped explicitly so",
        "\t\t# that no exception below can let them through.",
        "\t\tip daddr 239.255.255.250 udp dport 1900 goto camera_drop",
        "\t\tip6 daddr { ff02::c, ff05::c } udp dport 1900 goto camera_drop",
        "\t\tip daddr 224.0.0.251 udp dport 5353 goto camera_drop",
        "\t\tip6 daddr ff02::fb udp dport 5353 goto camera_drop",
    ]
    if network.dns_sinkhole:
        out += [
            "\t\t# The gateway's DNS sinkhole: every name answered locally, nothing forwarded.",
            f"\t\t{ip} daddr {gateway} udp dport {DNS_PORT} accept",
            f"\t\t{ip} daddr {gateway} tcp dport {DNS_PORT} accept",
        ]
    if network.ntp_server:
        out += [
            "\t\t# The gateway's NTP server: the cameras' only source of time.",
            f"\t\t{ip} daddr {gateway} udp dport {NTP_PORT} accept",
        ]
    udp_cameras = [
        (c.name, ipaddress.ip_address(c.host))
        for c in config.cameras
        if c.transport == "udp"
        and any(str(s.address) == c.host for s in sources)
        and ipaddress.ip_address(c.host).version == gateway.version
    ]
    for name, address in udp_cameras:
        family = "ip" if address.version == 4 else "ip6"
        low, high = RTP_CLIENT_PORTS
        out += [
            f"\t\t# Camera {name} streams RTSP over UDP: its RTP/RTCP arrives as new flows to the",
            '\t\t# gateway\'s RTP client ports. Prefer transport = "tcp" to close this.',
            f"\t\t{family} saddr {address} {ip} daddr {gateway} udp dport {low}-{high} accept",
        ]
        warnings.append(
            f"camera {name}: transport 'udp' opens UDP {low}-{high} on the gateway to it; "
            "transport 'tcp' needs no opening"
        )
    if allow4:
        out += [
            "\t\t# Site exceptions that are addresses of this gateway.",
            "\t\tip daddr @allow4 accept",
        ]
    if allow6:
        out.append("\t\tip6 daddr @allow6 accept")
    out += [
        "\t\t# Everything else: the gateway's RTSP, ONVIF, admin, SSH, ... are not for cameras.",
        "\t\tgoto camera_drop",
        "\t}",
        "",
        "\tchain camera_forward {",
        "\t\t# Replies on connections opened from the other side (e.g. an integrator reaching",
        "\t\t# a camera's web page through the gateway); cameras never open one themselves.",
        "\t\tct state established,related accept",
        "\t\tip daddr 239.255.255.250 udp dport 1900 goto camera_drop",
        "\t\tip daddr 224.0.0.251 udp dport 5353 goto camera_drop",
    ]
    if allow4:
        out += ["\t\t# Site exceptions (e.g. a syslog host).", "\t\tip daddr @allow4 accept"]
    if allow6:
        out.append("\t\tip6 daddr @allow6 accept")
    out += [
        "\t\t# Everything else, IPv4 and IPv6: vendor clouds, DDNS, public NTP, the VMS LAN.",
        "\t\tgoto camera_drop",
        "\t}",
        "",
    ]

    # --- the drop path: remember, count, log, drop
    out += [
        "\t# Every dropped camera packet comes here: its destination is remembered in the",
        "\t# attempts sets, then it is counted against its camera, logged and dropped. A full",
        "\t# set only stops remembering; the packet is still counted and dropped.",
        "\tchain camera_drop {",
        "\t\tmeta l4proto { tcp, udp } update @attempts4 "
        "{ ip saddr . ip daddr . meta l4proto . th dport }",
        "\t\tmeta nfproto ipv4 meta l4proto != { tcp, udp } update @attempts4_other "
        "{ ip saddr . ip daddr . meta l4proto }",
        "\t\tmeta l4proto { tcp, udp } update @attempts6 "
        "{ ip6 saddr . ip6 daddr . meta l4proto . th dport }",
        "\t\tmeta nfproto ipv6 meta l4proto != { tcp, udp } update @attempts6_other "
        "{ ip6 saddr . ip6 daddr . meta l4proto }",
    ]
    if src4:
        elements = ", ".join(f"{s.address} : goto {s.chain}" for s in src4)
        out.append(f"\t\tip saddr vmap {{ {elements} }}")
    if src6:
        elements = ", ".join(f"{s.address} : goto {s.chain}" for s in src6)
        out.append(f"\t\tip6 saddr vmap {{ {elements} }}")
    out += ["\t\tgoto drop_unknown", "\t}", ""]
    for source in sources:
        out += _drop_chain(source.chain, source.counter, source.label)
    out += _drop_chain("drop_unknown", UNKNOWN_COUNTER, "unknown")
    out[-1] = "}"
    return Ruleset(text="\n".join(out) + "\n", sources=sources, warnings=warnings)


def _drop_chain(chain: str, counter: str, label: str) -> list[str]:
    prefix = LOG_PREFIX.format(label=label)
    return [
        f"\tchain {chain} {{",
        f'\t\tcounter name "{counter}"',
        f'\t\t{LOG_RATE} log prefix "{prefix}" level info',
        "\t\tdrop",
        "\t}",
        "",
    ]


# --------------------------------------------------------------------------- running nft


@dataclass(frozen=True)
class Nft:
    """How to run nft; ``prefix`` lets tests run it elsewhere (``ip netns exec NAME``)."""

    binary: str = "nft"
    prefix: tuple[str, ...] = ()

    def run(self, *args: str, stdin: str | None = None) -> str:
        command = [*self.prefix, self.binary, *args]
        try:
            done = subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=30, check=False
            )
        except FileNotFoundError:
            raise NftError(
                f"{self.binary} not found: install nftables (Debian: apt-get install nftables)"
            ) from None
        except subprocess.TimeoutExpired:
            raise NftError(f"{' '.join(command)} did not finish in 30 s") from None
        if done.returncode != 0:
            message = done.stderr.strip() or f"exit code {done.returncode}"
            if "Operation not permitted" in message or "Permission denied" in message:
                raise NftError(
                    f"nft needs root (CAP_NET_ADMIN) to change or read the ruleset: {message}"
                )
            raise NftError(f"nft {' '.join(args)} failed: {message}")
        return done.stdout


_CAP_NET_ADMIN = 12


def may_read() -> bool:
    """Whether this process may read the ruleset's counters (CAP_NET_ADMIN is effective)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


def check(text: str, nft: Nft | None = None) -> None:
    """Have nft parse and validate the ruleset without loading it (``nft -c -f``)."""
    _load(text, nft or Nft(), check_only=True)


def _load(text: str, nft: Nft, *, check_only: bool) -> None:
    fd, path = tempfile.mkstemp(prefix="onvif-gateway-", suffix=".nft")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        nft.run(*(["-c"] if check_only else []), "-f", path)
    finally:
        os.unlink(path)


@dataclass(frozen=True)
class TableState:
    handle: int
    chains: dict[str, str | None]  # chain name -> hook ("input", "forward") or None
    counters: dict[str, tuple[int, int]]  # counter name -> (packets, bytes)


def _objects(document: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(document)
    except json.JSONDecodeError as exc:
        raise NftError(f"nft -j printed something that is not JSON: {exc}") from None
    items = data.get("nftables") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise NftError("nft -j output has no 'nftables' array")
    return [item for item in items if isinstance(item, dict)]


def parse_table(document: str) -> TableState:
    """The table handle, chains and counters from ``nft -j list table inet onvif_gateway``."""
    handle = -1
    chains: dict[str, str | None] = {}
    counters: dict[str, tuple[int, int]] = {}
    for item in _objects(document):
        if "table" in item and item["table"].get("name") == TABLE:
            handle = int(item["table"].get("handle", -1))
        elif "chain" in item and item["chain"].get("table") == TABLE:
            chains[str(item["chain"]["name"])] = item["chain"].get("hook")
        elif "counter" in item and item["counter"].get("table") == TABLE:
            c = item["counter"]
            counters[str(c["name"])] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return TableState(handle=handle, chains=chains, counters=counters)


def read_table(nft: Nft | None = None) -> TableState | None:
    """The live table, or None when it is not loaded."""
    try:
        document = (nft or Nft()).run("-j", "list", "table", FAMILY, TABLE)
    except NftError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise
    return parse_table(document)


def read_counters(nft: Nft | None = None) -> TableState | None:
    """Counters only (``nft -j list counters table inet onvif_gateway``) plus the handle."""
    runner = nft or Nft()
    table = read_table(runner)
    if table is None:
        return None
    document = runner.run("-j", "list", "counters", "table", FAMILY, TABLE)
    counters = parse_table(document).counters
    return TableState(handle=table.handle, chains=table.chains, counters=counters)


@dataclass(frozen=True)
class BlockedDestination:
    source: str
    destination: str
    protocol: str
    port: int | None
    packets: int
    bytes: int


def parse_attempts(document: str) -> list[BlockedDestination]:
    """Elements of an attempts set from ``nft -j list set inet onvif_gateway NAME``."""
    found: list[BlockedDestination] = []
    for item in _objects(document):
        the_set = item.get("set")
        if not isinstance(the_set, dict):
            continue
        for element in the_set.get("elem", []):
            inner = element.get("elem", element) if isinstance(element, dict) else element
            value = inner.get("val") if isinstance(inner, dict) else inner
            counter = inner.get("counter", {}) if isinstance(inner, dict) else {}
            parts = value.get("concat") if isinstance(value, dict) else None
            if not isinstance(parts, list) or len(parts) not in (3, 4):
                continue
            port = int(parts[3]) if len(parts) == 4 else None
            found.append(
                BlockedDestination(
                    source=str(parts[0]),
                    destination=str(parts[1]),
                    protocol=str(parts[2]),
                    port=port,
                    packets=int((counter or {}).get("packets", 0)),
                    bytes=int((counter or {}).get("bytes", 0)),
                )
            )
    return found


ATTEMPT_SETS = ("attempts4", "attempts4_other", "attempts6", "attempts6_other")


def read_attempts(nft: Nft | None = None) -> list[BlockedDestination]:
    runner = nft or Nft()
    found: list[BlockedDestination] = []
    for name in ATTEMPT_SETS:
        found += parse_attempts(runner.run("-j", "list", "set", FAMILY, TABLE, name))
    return found


def apply(config: Config, nft: Nft | None = None) -> tuple[Ruleset, TableState]:
    """Render, check, load atomically and verify; raises NftError when anything is off."""
    runner = nft or Nft()
    ruleset = render(config)
    _load(ruleset.text, runner, check_only=True)
    _load(ruleset.text, runner, check_only=False)
    state = read_table(runner)
    if state is None:
        raise NftError(f"table {FAMILY} {TABLE} is not there after loading it")
    missing = [
        f"chain {name}" for name in ("input", "forward") if state.chains.get(name) != name
    ] + [f"counter {name}" for name in ruleset.counter_sources() if name not in state.counters]
    if missing:
        raise NftError(
            f"table {FAMILY} {TABLE} loaded but incomplete: missing {', '.join(missing)}"
        )
    return ruleset, state
