"""``onvif-gateway discover``: find the cameras on the camera network and print their
``[[camera]]`` blocks.

A WS-Discovery Probe goes out (multicast on the interface holding ``--address``, plus any
``--target`` addresses directly); every device that answers is then asked, without
credentials, one HTTP question that tells its vendor: Hikvision answers
``/ISAPI/System/deviceInfo`` (a challenge in its ``IP Camera(...)`` realm, or the document),
Dahua answers ``/cgi-bin/magicBox.cgi?action=getDeviceType`` (realm ``Login to ...``, or
``type=``). Anything else is a generic ONVIF camera.

Exit codes: 0 cameras found; 1 none found; 2 usage or configuration error; 3 runtime failure
(no such interface, cannot send the probe).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import re
import sys
from dataclasses import asdict, dataclass
from urllib.parse import unquote, urlsplit

import aiohttp

from gateway.config import CAMERA_NAME_RE, ConfigError, load
from gateway.onvif.discovery import (
    MULTICAST_GROUP,
    PORT,
    ProbeMatch,
    interface_address,
    probe,
)

EXIT_FOUND, EXIT_NONE, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3
SCOPE_PREFIX = "onvif://www.onvif.org/"
VENDOR_PROBES = (
    ("hikvision", "/ISAPI/System/deviceInfo"),
    ("dahua", "/cgi-bin/magicBox.cgi?action=getDeviceType"),
)
MAX_PROBE_BODY = 16 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "discover",
        help="find ONVIF cameras on the camera network, print [[camera]] blocks",
        description="Send a WS-Discovery probe on the camera network, tell each answering "
        "camera's vendor with one unauthenticated HTTP request, and print ready-to-paste "
        "[[camera]] blocks (or JSON). Exit 0 when cameras were found, 1 when none answered.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--interface", metavar="IF", help="camera-side interface, e.g. eth1")
    where.add_argument("--address", metavar="IP", help="the gateway's camera-side IPv4 address")
    where.add_argument(
        "--config", metavar="FILE", help="take the address from [camera_network] of this config"
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="IP",
        help="also probe this address directly (unicast); may be repeated",
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to collect answers (default 3)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=PORT,
        help=f"WS-Discovery UDP port the devices listen on (default {PORT})",
    )
    parser.add_argument(
        "--no-vendor-probe", action="store_true", help="do not ask found devices for their vendor"
    )
    parser.add_argument("--json", action="store_true", help="print the cameras as JSON")
    parser.set_defaults(handler=cmd_discover)


@dataclass
class FoundCamera:
    urn: str
    host: str
    http_port: int
    xaddrs: list[str]
    scopes: list[str]
    name: str
    model: str
    vendor: str  # hikvision | dahua | generic
    evidence: str  # what told the vendor


def scope_values(scopes: tuple[str, ...] | list[str], category: str) -> list[str]:
    prefix = f"{SCOPE_PREFIX}{category}/"
    return [unquote(s[len(prefix) :]) for s in scopes if s.startswith(prefix)]


def camera_name(preferred: str, host: str, taken: set[str]) -> str:
    """A valid, unused ``[[camera]] name`` from the device's name scope, else its address."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", preferred).strip("-_")[:40]
    if not base or not CAMERA_NAME_RE.match(base):
        base = "cam-" + re.sub(r"[^A-Za-z0-9]+", "-", host).strip("-")
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def _realm(challenges: list[str]) -> str:
    for value in challenges:
        match = re.search(r'realm="([^"]*)"', value)
        if match:
            return match.group(1)
    return ""


def vendor_from_answer(path: str, status: int, realm: str, body: bytes) -> str | None:
    """The vendor an unauthenticated answer reveals, or None."""
    if status not in (200, 401):
        return None
    if realm.startswith("IP Camera(") or b"hikvision.com" in body:
        return "hikvision"
    if realm.startswith("Login to ") or (
        path.startswith("/cgi-bin/") and body.startswith(b"type=")
    ):
        return "dahua"
    return None


async def tell_vendor(session: aiohttp.ClientSession, host: str, port: int) -> tuple[str, str]:
    """(vendor, evidence) from at most two unauthenticated GETs."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for _vendor, path in VENDOR_PROBES:
        try:
            async with session.get(f"http://{authority}{path}", allow_redirects=False) as resp:
                body = await resp.content.read(MAX_PROBE_BODY)
                realm = _realm(resp.headers.getall("WWW-Authenticate", []))
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            continue
        vendor = vendor_from_answer(path, status, realm, body)
        if vendor is not None:
            detail = f'realm "{realm}"' if realm else f"HTTP {status}"
            return vendor, f"{path.split('?')[0]} answered {detail}"
    return "generic", "no vendor API answered"


def _endpoint(match: ProbeMatch) -> tuple[str, int] | None:
    """Host and port of the first usable http XAddr."""
    for xaddr in match.xaddrs:
        parts = urlsplit(xaddr)
        if parts.scheme in ("http", "https") and parts.hostname:
            return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    return None


async def discover(
    address: str, targets: list[str], timeout: float, vendor_probe: bool, port: int = PORT
) -> list[FoundCamera]:
    probes = [probe(address, timeout=timeout, target=MULTICAST_GROUP, port=port)]
    probes += [probe(address, timeout=timeout, target=t, types="", port=port) for t in targets]
    matches: dict[str, ProbeMatch] = {}
    for found in await asyncio.gather(*probes):
        for match in found:
            matches.setdefault(match.address, match)
    cameras: list[FoundCamera] = []
    taken: set[str] = set()
    timeout_cfg = aiohttp.ClientTimeout(total=max(2.0, timeout))
    async with aiohttp.ClientSession(timeout=timeout_cfg) as session:
        endpoints = {urn: _endpoint(m) for urn, m in matches.items()}
        usable = [(urn, ep) for urn, ep in endpoints.items() if ep is not None]
        if vendor_probe:
            vendors = await asyncio.gather(*(tell_vendor(session, *ep) for _, ep in usable))
        else:
            vendors = [("generic", "vendor probe skipped")] * len(usable)
        for (urn, (host, port)), (vendor, evidence) in zip(usable, vendors, strict=True):
            match = matches[urn]
            names = scope_values(match.scopes, "name")
            models = scope_values(match.scopes, "hardware")
            cameras.append(
                FoundCamera(
                    urn=urn,
                    host=host,
                    http_port=port,
                    xaddrs=list(match.xaddrs),
                    scopes=list(match.scopes),
                    name=camera_name(names[0] if names else "", host, taken),
                    model=models[0] if models else "",
                    vendor=vendor,
                    evidence=evidence,
                )
            )
    cameras.sort(key=lambda c: (_sort_key(c.host), c.http_port))
    return cameras


def _sort_key(host: str) -> tuple[int, str]:
    try:
        return (0, f"{int(ipaddress.ip_address(host)):040d}")
    except ValueError:
        return (1, host)


def toml_block(camera: FoundCamera) -> str:
    env = "CAMERA_" + re.sub(r"[^A-Z0-9]", "_", camera.name.upper()) + "_PASSWORD"
    lines = [
        f"# {camera.urn}: {camera.evidence}",
        "[[camera]]",
        f"name = {json.dumps(camera.name)}",
        f"vendor = {json.dumps(camera.vendor)}",
        f"host = {json.dumps(camera.host)}",
        f"http_port = {camera.http_port}",
        'username = "admin"  # the camera account the gateway uses',
        f"password_env = {json.dumps(env)}",
    ]
    if camera.model:
        lines.append(f"model = {json.dumps(camera.model)}")
    if camera.vendor == "generic":
        lines.append(
            "# generic camera: add main_url (and sub_url) = its RTSP URLs, e.g. from "
            "the camera's ONVIF GetStreamUri"
        )
    return "\n".join(lines)


def _address(args: argparse.Namespace) -> str | None:
    """The camera-side IPv4 address to probe from; prints why when there is none."""
    if args.address:
        try:
            ip = ipaddress.ip_address(args.address)
        except ValueError:
            print(f"discover: {args.address!r} is not an IP address", file=sys.stderr)
            return None
        if ip.version != 4:
            print("discover: WS-Discovery here needs an IPv4 address", file=sys.stderr)
            return None
        return args.address
    if args.interface:
        return interface_address(args.interface)  # OSError: handled by the caller
    if args.config:
        config = load(args.config)  # ConfigError: handled by the caller
        if config.camera_network is None:
            print(f"discover: {args.config} has no [camera_network] section", file=sys.stderr)
            return None
        return config.camera_network.address
    print("discover: give --interface, --address or --config", file=sys.stderr)
    return None


def cmd_discover(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.timeout > 60:
        print("discover: --timeout must be between 0 and 60 seconds", file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.port <= 65535:
        print("discover: --port must be between 1 and 65535", file=sys.stderr)
        return EXIT_USAGE
    try:
        address = _address(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"discover: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if address is None:
        return EXIT_USAGE
    try:
        cameras = asyncio.run(
            discover(address, list(args.target), args.timeout, not args.no_vendor_probe, args.port)
        )
    except OSError as exc:
        print(f"discover: cannot probe from {address}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if args.json:
        print(json.dumps([asdict(c) for c in cameras], indent=2))
    elif cameras:
        print("\n\n".join(toml_block(c) for c in cameras))
    if not cameras:
        print(f"discover: no ONVIF device answered from {address}", file=sys.stderr)
        return EXIT_NONE
    if not args.json:
        print(f"\n# {len(cameras)} camera(s) found from {address}", file=sys.stderr)
    return EXIT_FOUND
