"""Device management service (ver10/device/wsdl) of a virtual device.

Read operations describe the virtual device (the real camera's identity, the gateway's
addresses as the client reached them); operations that would change the network, time,
users, firmware or factory state are refused; SystemReboot reconnects the camera's streams.

Network getters show only what the VMS side sees of the device: the address it connected
to, that interface's default route; never the host's resolvers nor anything of the camera
network. Getters of features the gateway does not have (relays, IP filter, dynamic DNS,
certificates, geolocation) answer with their empty or "off" value, as such a camera would:
some clients refuse to add a device whose getter faults.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from urllib.parse import quote

from lxml import etree

from gateway.onvif import netinfo
from gateway.onvif.core import SERVICE_PATHS, Call, Handler, empty_answer
from gateway.onvif.xml import NS, SoapFault, Xml, el, operation_prohibited, text

log = logging.getLogger(__name__)

TDS = NS["tds"]
_tasks: set[asyncio.Task[None]] = set()


def _bool(value: bool) -> str:
    return text(value)


def _date_time(ts: float) -> Xml:
    moment = datetime.fromtimestamp(ts, UTC)
    return Xml(
        el(
            "tt:Time",
            el("tt:Hour", str(moment.hour)),
            el("tt:Minute", str(moment.minute)),
            el("tt:Second", str(moment.second)),
        )
        + el(
            "tt:Date",
            el("tt:Year", str(moment.year)),
            el("tt:Month", str(moment.month)),
            el("tt:Day", str(moment.day)),
        )
    )


async def get_system_date_and_time(call: Call) -> Xml:
    now = _date_time(call.now)
    return el(
        "tds:GetSystemDateAndTimeResponse",
        el(
            "tds:SystemDateAndTime",
            el("tt:DateTimeType", "NTP"),
            el("tt:DaylightSavings", "false"),
            el("tt:TimeZone", el("tt:TZ", "UTC0")),
            el("tt:UTCDateTime", now),
            el("tt:LocalDateTime", now),
        ),
    )


def device_service_capabilities(call: Call) -> Xml:
    # TLS 1.2 (and later) when the device is served over HTTPS ([server] onvif_https_offset).
    tls12 = _bool(call.device.https_port is not None)
    return el(
        "tds:Capabilities",
        el(
            "tds:Network",
            attrs={
                "IPFilter": "false",
                "ZeroConfiguration": "false",
                "IPVersion6": "false",
                "DynDNS": "false",
                "Dot11Configuration": "false",
                "HostnameFromDHCP": "false",
                "NTP": "0",
            },
        ),
        el(
            "tds:Security",
            attrs={
                "TLS1.0": "false",
                "TLS1.1": "false",
                "TLS1.2": tls12,
                "OnboardKeyGeneration": "false",
                "AccessPolicyConfig": "false",
                "DefaultAccessPolicy": "false",
                "Dot1X": "false",
                "RemoteUserHandling": "false",
                "X.509Token": "false",
                "SAMLToken": "false",
                "KerberosToken": "false",
                "UsernameToken": "true",
                "HttpDigest": "true",
                "RELToken": "false",
                "MaxUsers": "1",
            },
        ),
        el(
            "tds:System",
            attrs={
                "DiscoveryResolve": "false",
                "DiscoveryBye": "true",
                "RemoteDiscovery": "false",
                "SystemBackup": "false",
                "SystemLogging": "false",
                "FirmwareUpgrade": "false",
                "HttpFirmwareUpgrade": "false",
                "HttpSystemBackup": "false",
                "HttpSystemLogging": "false",
                "HttpSupportInformation": "false",
            },
        ),
    )


async def get_service_capabilities(call: Call) -> Xml:
    return el("tds:GetServiceCapabilitiesResponse", device_service_capabilities(call))


async def get_capabilities(call: Call) -> Xml:
    from gateway.onvif import events, imaging, media, ptz

    # Category is a list in the schema; clients send one element per category.
    categories = {
        name
        for c in call.op
        if etree.QName(c).localname == "Category"
        for name in (c.text or "").split()
    } or {"All"}
    unknown = categories - {"All", "Analytics", "Device", "Events", "Imaging", "Media", "PTZ"}
    if unknown:
        raise no_such_service(f"unknown capability category {' '.join(sorted(unknown))}")
    every = "All" in categories
    dev = call.device
    parts: list[Xml] = []
    if every or "Device" in categories:
        parts.append(
            el(
                "tt:Device",
                el("tt:XAddr", call.http_url(SERVICE_PATHS["device"])),
                el(
                    "tt:Network",
                    el("tt:IPFilter", "false"),
                    el("tt:ZeroConfiguration", "false"),
                    el("tt:IPVersion6", "false"),
                    el("tt:DynDNS", "false"),
                ),
                el(
                    "tt:System",
                    el("tt:DiscoveryResolve", "false"),
                    el("tt:DiscoveryBye", "true"),
                    el("tt:RemoteDiscovery", "false"),
                    el("tt:SystemBackup", "false"),
                    el("tt:SystemLogging", "false"),
                    el("tt:FirmwareUpgrade", "false"),
                    el("tt:SupportedVersions", el("tt:Major", "2"), el("tt:Minor", "60")),
                ),
                el("tt:IO", el("tt:InputConnectors", "0"), el("tt:RelayOutputs", "0")),
                el(
                    "tt:Security",
                    el("tt:TLS1.1", "false"),
                    el("tt:TLS1.2", _bool(dev.https_port is not None)),
                    el("tt:OnboardKeyGeneration", "false"),
                    el("tt:AccessPolicyConfig", "false"),
                    el("tt:X.509Token", "false"),
                    el("tt:SAMLToken", "false"),
                    el("tt:KerberosToken", "false"),
                    el("tt:RELToken", "false"),
                ),
            )
        )
    if every or "Events" in categories:
        parts.append(events.legacy_capabilities(call))
    # The schema's order: Analytics, Device, Events, Imaging, Media, PTZ.
    if (every or "Imaging" in categories) and dev.has_imaging():
        parts.append(imaging.legacy_capabilities(call))
    if every or "Media" in categories:
        parts.append(media.legacy_capabilities(call))
    if (every or "PTZ" in categories) and dev.has_ptz():
        parts.append(ptz.legacy_capabilities(call))
    if not parts or (not every and len(parts) < len(categories)):
        missing = " ".join(sorted(categories - {"All"}))
        raise no_such_service(f"this device has no {missing} service")
    return el("tds:GetCapabilitiesResponse", el("tds:Capabilities", parts))


def no_such_service(reason: str) -> SoapFault:
    """What ONVIF Core asks for a GetCapabilities category the device does not have."""
    return SoapFault("Receiver", ("ter:ActionNotSupported", "ter:NoSuchService"), reason)


async def get_services(call: Call) -> Xml:
    from gateway.onvif import events, imaging, media, media2, ptz

    include = call.arg("IncludeCapability") in ("true", "1")
    dev = call.device
    entries: list[tuple[str, str, Xml, tuple[int, int]]] = [
        (TDS, "device", device_service_capabilities(call), (2, 60)),
        (NS["trt"], "media", media.service_capabilities(call), (2, 60)),
        (NS["tr2"], "media2", media2.service_capabilities(call), (2, 60)),
        (NS["tev"], "events", events.service_capabilities(call), (2, 60)),
    ]
    if dev.has_ptz():
        claims = await ptz.camera_claims(call) if include else None
        entries.append((NS["tptz"], "ptz", ptz.service_capabilities(claims), (2, 60)))
    if dev.has_imaging():
        entries.append((NS["timg"], "imaging", imaging.service_capabilities(), (2, 60)))
    services = [
        el(
            "tds:Service",
            el("tds:Namespace", ns),
            el("tds:XAddr", call.http_url(SERVICE_PATHS[key])),
            el("tds:Capabilities", caps) if include else None,
            el("tds:Version", el("tt:Major", str(major)), el("tt:Minor", str(minor))),
        )
        for ns, key, caps, (major, minor) in entries
    ]
    return el("tds:GetServicesResponse", services)


async def get_device_information(call: Call) -> Xml:
    ident = call.device.identity()
    return el(
        "tds:GetDeviceInformationResponse",
        el("tds:Manufacturer", ident.manufacturer),
        el("tds:Model", ident.model),
        el("tds:FirmwareVersion", ident.firmware),
        el("tds:SerialNumber", ident.serial),
        el("tds:HardwareId", ident.hardware_id or ident.model),
    )


def _scope_value(value: str) -> str:
    return quote(value.strip().replace(" ", "_"), safe="._~-") or "unknown"


def scopes(device_name: str, model: str, location: str, ptz: bool) -> list[str]:
    base = "onvif://www.onvif.org"
    items = [
        f"{base}/type/video_encoder",
        f"{base}/type/Network_Video_Transmitter",
        f"{base}/Profile/Streaming",
        f"{base}/hardware/{_scope_value(model)}",
        f"{base}/name/{_scope_value(device_name)}",
    ]
    if ptz:
        items.insert(1, f"{base}/type/ptz")
    if location:
        items.append(f"{base}/location/{_scope_value(location)}")
    return items


def device_scopes(call: Call) -> list[str]:
    dev = call.device
    return scopes(dev.name, dev.identity().model, dev.location(), dev.has_ptz())


async def get_scopes(call: Call) -> Xml:
    return el(
        "tds:GetScopesResponse",
        (
            el("tds:Scopes", el("tt:ScopeDef", "Fixed"), el("tt:ScopeItem", s))
            for s in device_scopes(call)
        ),
    )


def _hostname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:63].strip("-") or "camera"


async def get_hostname(call: Call) -> Xml:
    return el(
        "tds:GetHostnameResponse",
        el(
            "tds:HostnameInformation",
            el("tt:FromDHCP", "false"),
            el("tt:Name", _hostname(call.device.name)),
        ),
    )


async def get_network_interfaces(call: Call) -> Xml:
    iface = netinfo.interface_for_address(call.local_ip)
    name = iface.name if iface else "eth0"
    prefix = iface.prefix_length if iface else (32 if ":" not in call.local_ip else 128)
    mtu = iface.mtu if iface else 1500
    if ":" in call.local_ip:
        ip_block = el(
            "tt:IPv6",
            el("tt:Enabled", "true"),
            el(
                "tt:Config",
                el("tt:AcceptRouterAdvert", "false"),
                el("tt:DHCP", "Off"),
                el(
                    "tt:Manual",
                    el("tt:Address", call.local_ip),
                    el("tt:PrefixLength", str(prefix)),
                ),
            ),
        )
    else:
        ip_block = el(
            "tt:IPv4",
            el("tt:Enabled", "true"),
            el(
                "tt:Config",
                el(
                    "tt:Manual",
                    el("tt:Address", call.local_ip),
                    el("tt:PrefixLength", str(prefix)),
                ),
                el("tt:DHCP", "false"),
            ),
        )
    return el(
        "tds:GetNetworkInterfacesResponse",
        el(
            "tds:NetworkInterfaces",
            el("tt:Enabled", "true"),
            el(
                "tt:Info",
                el("tt:Name", name),
                el("tt:HwAddress", call.device.mac()),
                el("tt:MTU", str(mtu)),
            ),
            ip_block,
            attrs={"token": name},
        ),
    )


async def get_dns(call: Call) -> Xml:
    # The gateway's own resolvers belong to the host (and its DNS sinkhole to the camera
    # network); the VMS side is given no name service, so there is nothing to show.
    return el("tds:GetDNSResponse", el("tds:DNSInformation", el("tt:FromDHCP", "false")))


async def get_network_default_gateway(call: Call) -> Xml:
    """The default route of the interface the VMS reached us on, when it leaves that way."""
    iface = netinfo.interface_for_address(call.local_ip)
    router = netinfo.default_gateway(iface.name) if iface is not None else None
    return el(
        "tds:GetNetworkDefaultGatewayResponse",
        el("tds:NetworkGateway", el("tt:IPv4Address", router) if router else None),
    )


async def get_zero_configuration(call: Call) -> Xml:
    iface = netinfo.interface_for_address(call.local_ip)
    return el(
        "tds:GetZeroConfigurationResponse",
        el(
            "tds:ZeroConfiguration",
            el("tt:InterfaceToken", iface.name if iface else "eth0"),
            el("tt:Enabled", "false"),
        ),
    )


async def get_ip_address_filter(call: Call) -> Xml:
    # An empty deny list: the device filters nobody (the gateway's firewall does, elsewhere).
    return el("tds:GetIPAddressFilterResponse", el("tds:IPAddressFilter", el("tt:Type", "Deny")))


async def get_dynamic_dns(call: Call) -> Xml:
    return el(
        "tds:GetDynamicDNSResponse", el("tds:DynamicDNSInformation", el("tt:Type", "NoUpdate"))
    )


async def get_system_log(call: Call) -> Xml:
    """System log: what this virtual device was asked to do (SystemReboot requests); the
    access log is not kept per device (the gateway logs requests in its own log)."""
    log_type = call.arg("LogType") or "System"
    if log_type not in ("System", "Access"):
        raise SoapFault("Sender", ("ter:InvalidArgVal",), f"LogType {log_type!r}")
    lines = (
        [f"SystemReboot: reconnected the streams of {names}" for names in call.device.reboots]
        if log_type == "System"
        else []
    )
    return el("tds:GetSystemLogResponse", el("tds:SystemLog", el("tt:String", "\n".join(lines))))


async def get_access_policy(call: Call) -> Xml:
    # No access policy file: every operation needs the one VMS account.
    return el("tds:GetAccessPolicyResponse", el("tds:PolicyFile", el("tt:Data", "")))


async def get_ntp(call: Call) -> Xml:
    # The gateway keeps time for the cameras; towards the VMS it has no NTP client settings.
    return el("tds:GetNTPResponse", el("tds:NTPInformation", el("tt:FromDHCP", "false")))


async def get_network_protocols(call: Call) -> Xml:
    def proto(name: str, port: int) -> Xml:
        return el(
            "tds:NetworkProtocols",
            el("tt:Name", name),
            el("tt:Enabled", "true"),
            el("tt:Port", str(port)),
        )

    # The port the request came by for its own protocol (behind port forwarding it is the
    # one the VMS knows), the configured one for the other.
    dev = call.device
    http = dev.port if call.secure else call.local_port
    https = call.local_port if call.secure else dev.https_port
    return el(
        "tds:GetNetworkProtocolsResponse",
        proto("HTTP", http) if dev.http else None,
        proto("HTTPS", https) if https is not None else None,
        proto("RTSP", dev.rtsp_port),
    )


async def get_discovery_mode(call: Call) -> Xml:
    mode = "Discoverable" if call.device.settings.discovery else "NonDiscoverable"
    return el("tds:GetDiscoveryModeResponse", el("tds:DiscoveryMode", mode))


async def get_wsdl_url(call: Call) -> Xml:
    return el(
        "tds:GetWsdlUrlResponse",
        el("tds:WsdlUrl", "http://www.onvif.org/Documents/Specifications.aspx"),
    )


async def get_users(call: Call) -> Xml:
    return el(
        "tds:GetUsersResponse",
        el(
            "tds:User",
            el("tt:Username", call.device.username),
            el("tt:UserLevel", "Administrator"),
        ),
    )


async def get_endpoint_reference(call: Call) -> Xml:
    return el("tds:GetEndpointReferenceResponse", el("tds:GUID", call.device.uuid))


async def system_reboot(call: Call) -> Xml:
    """Reconnect the camera streams instead of rebooting anything."""
    names = [slot.name for slot in call.device.slots]
    for slot in call.device.slots:
        task = asyncio.create_task(_reconnect(slot.name, slot.backend.reconnect()))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    call.device.reboots.append(",".join(names))
    return el(
        "tds:SystemRebootResponse",
        el("tds:Message", f"Reconnecting the streams of {', '.join(names)}"),
    )


async def _reconnect(name: str, job: object) -> None:
    try:
        await job  # type: ignore[misc]
    except Exception:
        log.exception("reconnecting %s after SystemReboot failed", name)


REFUSED = {
    "SetHostname": "the gateway's host name",
    "SetHostnameFromDHCP": "the gateway's host name",
    "SetDNS": "the gateway's DNS settings",
    "SetNTP": "the gateway's NTP settings",
    "SetNetworkInterfaces": "the gateway's network interfaces",
    "SetNetworkProtocols": "the gateway's network protocols",
    "SetNetworkDefaultGateway": "the gateway's default gateway",
    "SetZeroConfiguration": "the gateway's network configuration",
    "SetIPAddressFilter": "the gateway's address filter",
    "AddIPAddressFilter": "the gateway's address filter",
    "RemoveIPAddressFilter": "the gateway's address filter",
    "SetDynamicDNS": "the gateway's dynamic DNS",
    "SetSystemDateAndTime": "the gateway's clock",
    "SetSystemFactoryDefault": "factory defaults",
    "UpgradeSystemFirmware": "firmware",
    "StartFirmwareUpgrade": "firmware",
    "StartSystemRestore": "system restore",
    "RestoreSystem": "system restore",
    "CreateUsers": "users",
    "DeleteUsers": "users",
    "SetUser": "users",
    "SetDiscoveryMode": "discovery",
    "SetRemoteDiscoveryMode": "discovery",
    "SetScopes": "scopes",
    "AddScopes": "scopes",
    "RemoveScopes": "scopes",
    "SetRelayOutputSettings": "relay outputs",
    "SetRelayOutputState": "relay outputs",
}


def _refuse(what: str) -> Handler:
    async def refuse(call: Call) -> Xml:
        raise operation_prohibited(
            f"{call.soap.name}: {what} cannot be changed through the gateway"
        )

    return refuse


OPERATIONS: dict[tuple[str, str], Handler] = {
    (TDS, "GetSystemDateAndTime"): get_system_date_and_time,
    (TDS, "GetCapabilities"): get_capabilities,
    (TDS, "GetServices"): get_services,
    (TDS, "GetServiceCapabilities"): get_service_capabilities,
    (TDS, "GetDeviceInformation"): get_device_information,
    (TDS, "GetScopes"): get_scopes,
    (TDS, "GetHostname"): get_hostname,
    (TDS, "GetNetworkInterfaces"): get_network_interfaces,
    (TDS, "GetDNS"): get_dns,
    (TDS, "GetNTP"): get_ntp,
    (TDS, "GetNetworkProtocols"): get_network_protocols,
    (TDS, "GetDiscoveryMode"): get_discovery_mode,
    (TDS, "GetWsdlUrl"): get_wsdl_url,
    (TDS, "GetUsers"): get_users,
    (TDS, "GetEndpointReference"): get_endpoint_reference,
    (TDS, "SystemReboot"): system_reboot,
    (TDS, "GetNetworkDefaultGateway"): get_network_default_gateway,
    (TDS, "GetZeroConfiguration"): get_zero_configuration,
    (TDS, "GetIPAddressFilter"): get_ip_address_filter,
    (TDS, "GetDynamicDNS"): get_dynamic_dns,
    (TDS, "GetSystemLog"): get_system_log,
    (TDS, "GetAccessPolicy"): get_access_policy,
    (TDS, "GetRelayOutputs"): empty_answer("tds:GetRelayOutputsResponse"),
    (TDS, "GetCertificates"): empty_answer("tds:GetCertificatesResponse"),
    (TDS, "GetGeoLocation"): empty_answer("tds:GetGeoLocationResponse"),
}
OPERATIONS.update({(TDS, name): _refuse(what) for name, what in REFUSED.items()})

PRE_AUTH = {
    (TDS, "GetWsdlUrl"),
    (TDS, "GetServices"),
    (TDS, "GetServiceCapabilities"),
    (TDS, "GetCapabilities"),
    (TDS, "GetHostname"),
    (TDS, "GetSystemDateAndTime"),
    (TDS, "GetEndpointReference"),
}
