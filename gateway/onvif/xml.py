"""SOAP as the virtual devices serve it: parsed requests, the faults they answer with, and
the wire pieces they share with the camera clients (:mod:`gateway.soap`, re-exported here).

Requests are parsed with the hardened parser (:mod:`gateway.safexml`: no entity expanded, no
DTD loaded, no network touched, a DOCTYPE refused, size capped before parsing and depth and
element count after). Responses are built as text with :func:`el`, which escapes every value
it is given, inside an :func:`envelope` declaring all ONVIF prefixes once.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from gateway.safexml import MAX_BODY_BYTES, hardened_parser, parse_xml
from gateway.soap import (
    NS,
    SOAP11,
    SOAP12,
    WSA,
    WSA2004,
    WSSE,
    WSU,
    SoapFault,
    Xml,
    child,
    child_text,
    children,
    el,
    envelope,
    raw,
)

__all__ = [
    "MAX_BODY_BYTES",
    "NS",
    "SOAP11",
    "SOAP12",
    "WSA",
    "WSA2004",
    "WSSE",
    "WSU",
    "SoapFault",
    "SoapRequest",
    "Xml",
    "action_not_supported",
    "child",
    "child_text",
    "children",
    "content_type",
    "el",
    "envelope",
    "invalid_arg",
    "not_authorized",
    "operation_prohibited",
    "parse_bool",
    "parse_markup",
    "parse_xml",
    "raw",
    "text",
]

# --------------------------------------------------------------------------- building


def text(value: bool | int | float | str) -> str:
    """A value as XML Schema text (booleans lower-case, floats without exponent noise)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6)).removesuffix(".0") if value.is_integer() else f"{value:g}"
    return str(value)


def parse_markup(markup: Xml) -> etree._Element:
    """Markup built with :func:`el` (prefixes as declared on our envelopes) as an element."""
    decls = "".join(f' xmlns:{p}="{uri}"' for p, uri in NS.items())
    wrapper = etree.fromstring(f"<wrapper{decls}>{markup}</wrapper>", hardened_parser())
    return wrapper[0]


def content_type(soap_ns: str) -> str:
    if soap_ns == SOAP11:
        return "text/xml; charset=utf-8"
    return "application/soap+xml; charset=utf-8"


# --------------------------------------------------------------------------- faults


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


def parse_bool(value: str | None, *, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError(f"{value!r} is not an xs:boolean")
