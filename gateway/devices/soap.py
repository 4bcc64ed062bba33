"""The gateway's SOAP client towards a camera's own ONVIF services.

Every SOAP request the gateway sends a camera (motion event subscriptions, PTZ and Imaging
operations forwarded from a VMS, the ONVIF inventory the policy audit reads) goes through
:class:`CameraSoap`: over the camera's :class:`~gateway.devices.http.CameraHttp` (HTTP
Digest when the camera asks for it, the camera's timeouts), signed with a WS-Security
UsernameToken dated by the camera's clock (:meth:`CameraSoap.sync_clock`), and the reply
parsed with the hardened parser with its size capped. :meth:`CameraSoap.service_addresses`
finds the camera's services. A fault the camera answers with comes back as the
:class:`~gateway.soap.SoapFault` it carries (code and ONVIF subcodes), so a forwarded
operation can pass it on unchanged; an unusable reply is a :class:`CameraSoapError` (with
the HTTP status it came with).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

from lxml import etree
from yarl import URL

from gateway.devices.http import CameraHttp
from gateway.devices.xmlsafe import describe_body, looks_like_html
from gateway.safexml import parse_xml
from gateway.soap import (
    NS,
    SOAP12,
    WSSE,
    WSU,
    SoapFault,
    Xml,
    child,
    child_text,
    children,
    el,
)

MAX_REPLY_BYTES = 1024 * 1024  # one SOAP reply from the camera
DEVICE_PATH = "/onvif/device_service"  # the device service's address ONVIF Core fixes
PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
# Prefixes the requests' bodies may use; declared on every envelope sent.
REQUEST_PREFIXES = ("tds", "trt", "tev", "tptz", "timg", "wsnt", "wsa", "tt")
# GetCapabilities' categories and the services' WSDL namespaces they stand for.
CAPABILITY_SERVICES = {
    "Device": NS["tds"],
    "Media": NS["trt"],
    "Events": NS["tev"],
    "PTZ": NS["tptz"],
    "Imaging": NS["timg"],
}


class CameraSoapError(ValueError):
    """The camera's answer is not a usable SOAP reply (or came with an unexpected status).

    ``status`` is the HTTP status it came with (0 when the answer was refused for its size
    before it was read), ``body`` its first bytes, to say what the camera sent instead.
    """

    def __init__(self, message: str, *, status: int = 0, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body[:256]


class CameraReplyTooLarge(CameraSoapError):
    """The camera's answer is longer than the client accepts."""


def username_token(username: str, password: str, now: float) -> Xml:
    """A WS-Security header with a PasswordDigest UsernameToken for ``now`` (camera time)."""
    nonce = os.urandom(16)
    created = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    digest = base64.b64encode(
        hashlib.sha1(nonce + created.encode() + password.encode()).digest()
    ).decode()
    return el(
        "wsse:Security",
        el(
            "wsse:UsernameToken",
            el("wsse:Username", username),
            el("wsse:Password", digest, attrs={"Type": PASSWORD_DIGEST}),
            el("wsse:Nonce", base64.b64encode(nonce).decode()),
            el("wsu:Created", created),
        ),
        attrs={"s:mustUnderstand": "1", "xmlns:wsse": WSSE, "xmlns:wsu": WSU},
    )


def soap_request(body: str, *, action: str, to: str, security: str | None) -> bytes:
    """A SOAP 1.2 request envelope with WS-Addressing Action and To."""
    header = el("wsa:Action", action) + el("wsa:To", to) + (security or "")
    namespaces = " ".join(f'xmlns:{prefix}="{NS[prefix]}"' for prefix in REQUEST_PREFIXES)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<s:Envelope xmlns:s="{SOAP12}" {namespaces}>'
        f"<s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault_from_reply(fault: etree._Element, camera: str) -> SoapFault:
    """A camera's SOAP fault (1.2 or 1.1) as a :class:`SoapFault` with its ONVIF subcodes."""
    ns = etree.QName(fault).namespace
    if ns == SOAP12:
        code = fault.findtext(f"{{{SOAP12}}}Code/{{{SOAP12}}}Value") or "Receiver"
        subcodes: list[str] = []
        node = fault.find(f"{{{SOAP12}}}Code/{{{SOAP12}}}Subcode")
        while node is not None and len(subcodes) < 4:
            value = (node.findtext(f"{{{SOAP12}}}Value") or "").strip()
            if value:
                subcodes.append("ter:" + value.split(":")[-1])
            node = node.find(f"{{{SOAP12}}}Subcode")
        reason = (fault.findtext(f"{{{SOAP12}}}Reason/{{{SOAP12}}}Text") or "").strip()
    else:
        code = "Sender" if "Client" in (fault.findtext("faultcode") or "") else "Receiver"
        subcodes = []
        reason = (fault.findtext("faultstring") or "").strip()
    side = "Sender" if code.split(":")[-1] in ("Sender", "Client") else "Receiver"
    return SoapFault(side, tuple(subcodes), f"camera {camera}: {reason or 'fault'}")


def reply_body(data: bytes, camera: str, *, max_bytes: int = MAX_REPLY_BYTES) -> etree._Element:
    """The first element of a SOAP reply's Body. The camera's fault is raised as the
    :class:`SoapFault` it carries; anything unusable as :class:`CameraSoapError`."""
    try:
        root = parse_xml(data, max_bytes=max_bytes)
    except ValueError as exc:
        raise CameraSoapError(f"unusable SOAP reply: {exc}") from None
    body = child(root, "Body")
    first = next((c for c in body if isinstance(c.tag, str)), None) if body is not None else None
    if first is None:
        raise CameraSoapError("SOAP reply without a Body element")
    if etree.QName(first).localname == "Fault":
        raise fault_from_reply(first, camera)
    return first


class CameraSoap:
    """SOAP calls to one camera's ONVIF services. See the module docstring.

    :attr:`offset` (camera clock minus ours) dates the UsernameTokens; :meth:`sync_clock`
    reads it from the camera, as its window for ``Created`` may be narrow.
    """

    def __init__(
        self,
        http: CameraHttp,
        username: str,
        password: str,
        *,
        clock: Callable[[], float] = time.time,
        max_reply: int = MAX_REPLY_BYTES,
    ) -> None:
        self.http = http
        self.username = username
        self._password = password
        self.clock = clock
        self.max_reply = max_reply
        self.offset = 0.0

    def url(self, path: str) -> URL:
        """``path`` on the camera as the gateway reaches it."""
        return URL(self.http.base_url, encoded=True).join(URL(path, encoded=True))

    def on_camera(self, address: str) -> URL:
        """An address the camera gave, pointed at the host and port the gateway reaches it on
        (cameras behind NAT or with several addresses report one that may not be reachable)."""
        url = URL(address.strip(), encoded=True)
        if not url.is_absolute() or url.scheme not in ("http", "https"):
            raise CameraSoapError(f"unusable service address {address[:80]!r}")
        return self.url(url.raw_path_qs)

    async def call(
        self,
        url: URL,
        operation: str,
        namespace: str,
        body: str,
        *,
        read_timeout: float,
        signed: bool = True,
    ) -> etree._Element:
        """Send ``body`` (the operation element) as ``namespace/operation``, signed unless
        ``signed`` is false; the reply's Body element."""
        action = f"{namespace}/{operation}"
        security = None
        if signed:
            security = username_token(self.username, self._password, self.clock() + self.offset)
        data = soap_request(body, action=action, to=str(url), security=security)
        return await self.post(url, action, data, read_timeout=read_timeout)

    async def post(
        self, url: URL, action: str, envelope: bytes, *, read_timeout: float
    ) -> etree._Element:
        """Send a complete (already signed) envelope; the reply's Body element."""
        headers = {"Content-Type": f'application/soap+xml; charset=utf-8; action="{action}"'}
        response = await self.http.open(
            "POST", url.raw_path_qs, body=envelope, headers=headers, read_timeout=read_timeout
        )
        operation = action.rsplit("/", 1)[-1]
        async with response:
            status = response.status
            length = response.content_length
            if length is not None and length > self.max_reply:
                raise CameraReplyTooLarge(f"{operation}: answer of {length} bytes", status=status)
            reply = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                reply += chunk
                if len(reply) > self.max_reply:
                    raise CameraReplyTooLarge(
                        f"{operation}: answer larger than {self.max_reply} bytes", status=status
                    )
        data = bytes(reply)
        # A SOAP fault comes with 400 or 500; a 401, a 404 or an error page is no SOAP reply.
        if status not in (200, 400, 500) or looks_like_html(data):
            raise CameraSoapError(
                f"{operation}: HTTP {status} with {describe_body(data)}", status=status, body=data
            )
        try:
            return reply_body(data, self.http.camera, max_bytes=self.max_reply)
        except CameraSoapError as exc:
            raise CameraSoapError(f"{operation}: {exc}", status=status, body=data) from None

    async def sync_clock(self, device_url: URL, *, read_timeout: float) -> None:
        """Set :attr:`offset` from the camera's GetSystemDateAndTime; left as it is when the
        camera gives no usable UTC time.

        ONVIF answers GetSystemDateAndTime without authentication, and a token dated by a
        clock the camera disagrees with could be refused: it is asked unsigned first, and
        signed only when the camera refuses that with a fault.
        """
        request = el("tds:GetSystemDateAndTime")
        try:
            reply = await self.call(
                device_url,
                "GetSystemDateAndTime",
                NS["tds"],
                request,
                read_timeout=read_timeout,
                signed=False,
            )
        except SoapFault:
            reply = await self.call(
                device_url, "GetSystemDateAndTime", NS["tds"], request, read_timeout=read_timeout
            )
        utc = child(child(reply, "SystemDateAndTime"), "UTCDateTime")
        date, clock_time = child(utc, "Date"), child(utc, "Time")
        try:
            camera_now = datetime(
                int(child_text(date, "Year") or ""),
                int(child_text(date, "Month") or ""),
                int(child_text(date, "Day") or ""),
                int(child_text(clock_time, "Hour") or ""),
                int(child_text(clock_time, "Minute") or ""),
                int(child_text(clock_time, "Second") or ""),
                tzinfo=UTC,
            ).timestamp()
        except ValueError:
            return  # no usable UTC time: assume the camera's clock is ours (NTP via gateway)
        self.offset = camera_now - self.clock()

    async def service_addresses(self, device_url: URL, *, read_timeout: float) -> dict[str, URL]:
        """The camera's services (WSDL namespace -> address on the camera as the gateway
        reaches it): from GetServices, or from GetCapabilities on cameras without it."""
        addresses: dict[str, URL] = {}
        try:
            reply = await self.call(
                device_url,
                "GetServices",
                NS["tds"],
                el("tds:GetServices", el("tds:IncludeCapability", "false")),
                read_timeout=read_timeout,
            )
        except SoapFault:
            reply = None  # older cameras lack GetServices
        for service in children(reply, "Service"):
            namespace, xaddr = child_text(service, "Namespace"), child_text(service, "XAddr")
            if namespace and xaddr:
                with contextlib.suppress(CameraSoapError):
                    addresses[namespace] = self.on_camera(xaddr)
        if addresses:
            return addresses
        reply = await self.call(
            device_url,
            "GetCapabilities",
            NS["tds"],
            el("tds:GetCapabilities", el("tds:Category", "All")),
            read_timeout=read_timeout,
        )
        capabilities = child(reply, "Capabilities")
        for name, namespace in CAPABILITY_SERVICES.items():
            xaddr = child_text(capabilities, name, "XAddr")
            if xaddr:
                with contextlib.suppress(CameraSoapError):
                    addresses[namespace] = self.on_camera(xaddr)
        return addresses
