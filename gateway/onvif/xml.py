"""Hardened XML parsing, SOAP envelopes and faults: the one SOAP stack of the project.

Requests are parsed with lxml configured so that no entity is expanded, no DTD is loaded and
no network is touched; a DOCTYPE is refused outright, the body size is capped before parsing
and the element depth and count are capped after. Responses are built as text with
:func:`el`, which escapes every value it is given, inside an :func:`envelope` declaring all
ONVIF prefixes once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from gateway.safexml import MAX_BODY_BYTES, hardened_parser, parse_xml

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
WSA = "http://www.w3.org/2005/08/addressing"
WSA2004 = "http://schemas.xmlsoap.org/ws/2004/08/addressing"

# Every prefix a response may use; declared once on the Envelope.
NS: dict[str, str] = {
    "env": SOAP12,
    "xs": "http://www.w3.org/2001/XMLSchema",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "tt": "http://www.onvif.org/ver10/schema",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tr2": "http://www.onvif.org/ver20/media/wsdl",
    "tev": "http://www.onvif.org/ver10/events/wsdl",
    "tptz": "http://www.onvif.org/ver20/ptz/wsdl",
    "timg": "http://www.onvif.org/ver20/imaging/wsdl",
    "ter": "http://www.onvif.org/ver10/error",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "wstop": "http://docs.oasis-open.org/wsn/t-1",
    "tns1": "http://www.onvif.org/ver10/topics",
    "wsa": WSA,
    "tnshik": "http://www.hikvision.com/2011/event/topics",
}

# --------------------------------------------------------------------------- building


class Xml(str):
    """Markup that is already well-formed; :func:`el` inserts it as is."""

    __slots__ = ()


def el(
    tag: str,
    *content: str | Iterable[Xml] | None,
    attrs: Mapping[str, str | None] | None = None,
) -> Xml:
    """``<tag attrs>content</tag>``: plain ``str`` content is escaped, :class:`Xml` is not.

    ``None`` content and ``None`` attribute values are left out; an iterable of :class:`Xml`
    is joined, so ``el("tt:List", (el("tt:Item", x) for x in xs))`` works.
    """
    parts: list[str] = []
    for item in content:
        if item is None:
            continue
        if isinstance(item, Xml):
            parts.append(item)
        elif isinstance(item, str):
            parts.append(escape(item))
        else:
            parts.extend(item)
    attr_text = ""
    if attrs:
        attr_text = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items() if v is not None)
    if not parts:
        return Xml(f"<{tag}{attr_text}/>")
    return Xml(f"<{tag}{attr_text}>{''.join(parts)}</{tag}>")


def text(value: bool | int | float | str) -> str:
    """A value as XML Schema text (booleans lower-case, floats without exponent noise)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6)).removesuffix(".0") if value.is_integer() else f"{value:g}"
    return str(value)


def raw(node: etree._Element) -> Xml:
    """An element received from elsewhere (e.g. a camera reply), re-serialised as markup."""
    return Xml(etree.tostring(node, encoding="unicode", with_tail=False))


def parse_markup(markup: Xml) -> etree._Element:
    """Markup built with :func:`el` (prefixes as declared on our envelopes) as an element."""
    decls = "".join(f' xmlns:{p}="{uri}"' for p, uri in NS.items())
    wrapper = etree.fromstring(f"<wrapper{decls}>{markup}</wrapper>", hardened_parser())
    return wrapper[0]


def envelope(body: Xml, *, header: Xml | None = None, soap_ns: str = SOAP12) -> bytes:
    """A complete SOAP envelope as UTF-8 bytes, all known prefixes declared on the root."""
    decls = "".join(f' xmlns:{p}="{uri}"' for p, uri in NS.items() if p != "env")
    head = f"<env:Header>{header}</env:Header>" if header else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<env:Envelope xmlns:env="{soap_ns}"{decls}>'
        f"{head}<env:Body>{body}</env:Body></env:Envelope>"
    ).encode()


def content_type(soap_ns: str) -> str:
    if soap_ns == SOAP11:
        return "text/xml; charset=utf-8"
    return "application/soap+xml; charset=utf-8"


# --------------------------------------------------------------------------- faults


class SoapFault(Exception):
    """A SOAP fault to send back: ``code`` is "Sender" or "Receiver", ``subcodes`` are
    ONVIF ``ter:`` names from the outermost in (e.g. ``("ter:Action", "ter:MaxNVTProfiles")``)."""

    def __init__(
        self, code: str, subcodes: tuple[str, ...], reason: str, *, http_status: int | None = None
    ) -> None:
        super().__init__(reason)
        if code not in ("Sender", "Receiver"):
            raise ValueError(f"SOAP fault code must be Sender or Receiver, not {code!r}")
        self.code = code
        self.subcodes = subcodes
        self.reason = reason
        self.http_status = http_status or (400 if code == "Sender" else 500)

    def to_xml(self, soap_ns: str = SOAP12) -> Xml:
        if soap_ns == SOAP11:
            # SOAP 1.1 has no subcodes: the innermost ONVIF code is the faultcode.
            fault_code = (
                self.subcodes[-1]
                if self.subcodes
                else f"env:{'Client' if self.code == 'Sender' else 'Server'}"
            )
            return el(
                "env:Fault",
                el("faultcode", fault_code),
                el("faultstring", self.reason),
            )
        sub: Xml | None = None
        for name in reversed(self.subcodes):
            sub = el("env:Subcode", el("env:Value", name), sub)
        return el(
            "env:Fault",
            el("env:Code", el("env:Value", f"env:{self.code}"), sub),
            el("env:Reason", el("env:Text", self.reason, attrs={"xml:lang": "en"})),
        )

    def to_bytes(self, soap_ns: str = SOAP12) -> bytes:
        return envelope(self.to_xml(soap_ns), soap_ns=soap_ns)


def action_not_supported(operation: str) -> SoapFault:
    return SoapFault(
        "Receiver", ("ter:ActionNotSupported",), f"operation {operation} is not supported"
    )


def not_authorized(reason: str = "sender not authorized") -> SoapFault:
    return SoapFault("Sender", ("ter:NotAuthorized",), reason)


def invalid_arg(subcode: str, reason: str) -> SoapFault:
    return SoapFault("Sender", ("ter:InvalidArgVal", subcode), reason)


def operation_prohibited(reason: str) -> SoapFault:
    return SoapFault("Sender", ("ter:OperationProhibited",), reason)


# --------------------------------------------------------------------------- requests


@dataclass
class SoapRequest:
    """A parsed SOAP request: the operation is the first element child of the Body."""

    soap_ns: str
    header: etree._Element | None
    operation: etree._Element

    @classmethod
    def parse(cls, data: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> SoapRequest:
        root = parse_xml(data, max_bytes=max_bytes)
        qname = etree.QName(root)
        if qname.localname != "Envelope" or qname.namespace not in (SOAP12, SOAP11):
            raise ValueError(f"root element is {root.tag}, not a SOAP 1.2 or 1.1 Envelope")
        soap_ns = qname.namespace
        header = root.find(f"{{{soap_ns}}}Header")
        body = root.find(f"{{{soap_ns}}}Body")
        if body is None:
            raise ValueError("SOAP Envelope has no Body")
        operation = next((c for c in body if isinstance(c.tag, str)), None)
        if operation is None:
            raise ValueError("SOAP Body is empty")
        return cls(soap_ns=soap_ns, header=header, operation=operation)

    @property
    def namespace(self) -> str:
        return etree.QName(self.operation).namespace or ""

    @property
    def name(self) -> str:
        return etree.QName(self.operation).localname

    def header_text(self, localname: str) -> str | None:
        """A WS-Addressing header (MessageID, To, Action) of either WS-A version."""
        if self.header is None:
            return None
        for ns in (WSA, WSA2004):
            node = self.header.find(f"{{{ns}}}{localname}")
            if node is not None and node.text:
                return node.text.strip()
        return None


# --------------------------------------------------------------------------- reading


def child(node: etree._Element | None, localname: str) -> etree._Element | None:
    """The first child named ``localname`` in any namespace (clients disagree on prefixes
    but never on local names inside an ONVIF operation)."""
    if node is None:
        return None
    for c in node:
        if isinstance(c.tag, str) and etree.QName(c).localname == localname:
            return c
    return None


def children(node: etree._Element | None, localname: str) -> list[etree._Element]:
    if node is None:
        return []
    return [c for c in node if isinstance(c.tag, str) and etree.QName(c).localname == localname]


def child_text(node: etree._Element | None, *path: str) -> str | None:
    for name in path:
        node = child(node, name)
        if node is None:
            return None
    if node is None:
        return None
    return (node.text or "").strip()


def parse_bool(value: str | None, *, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError(f"{value!r} is not an xs:boolean")
