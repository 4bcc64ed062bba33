"""SOAP on the wire, shared by the gateway's ONVIF services (towards a VMS) and its ONVIF
clients (towards cameras): the namespaces, markup built as text (:func:`el` escapes every
value it is given, :class:`Xml` is markup already well-formed), whole envelopes, reading
parsed replies by local name, and :class:`SoapFault`, a fault to send or one received.

Parsing untrusted XML is :mod:`gateway.safexml`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

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


def raw(node: etree._Element) -> Xml:
    """An element received from elsewhere (e.g. a camera reply), re-serialised as markup."""
    return Xml(etree.tostring(node, encoding="unicode", with_tail=False))


def envelope(body: Xml, *, header: Xml | None = None, soap_ns: str = SOAP12) -> bytes:
    """A complete SOAP envelope as UTF-8 bytes, all known prefixes declared on the root."""
    decls = "".join(f' xmlns:{p}="{uri}"' for p, uri in NS.items() if p != "env")
    head = f"<env:Header>{header}</env:Header>" if header else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<env:Envelope xmlns:env="{soap_ns}"{decls}>'
        f"{head}<env:Body>{body}</env:Body></env:Envelope>"
    ).encode()


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
