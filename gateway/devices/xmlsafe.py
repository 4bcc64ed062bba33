"""Hardened XML parsing for documents that come from cameras (or from clients, in the sim),
and edits that leave a camera's document byte for byte as it was, but for the values changed.

Parsing is the project's one hardened parser (:func:`gateway.onvif.xml.parse_xml`: no DTD,
no entities, no network, size, depth and element count capped). :class:`XmlDocument` keeps
the bytes a camera sent with the byte span of every element, so a write puts back exactly
the camera's own form (declaration, namespace declarations, prefixes or none, attribute
quoting, whitespace, empty-element style) with only the intended texts replaced: embedded
ISAPI parsers refuse documents in any other form.
"""

from __future__ import annotations

import xml.parsers.expat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias
from xml.sax.saxutils import escape

from lxml import etree

from gateway.safexml import parse_xml as parse_untrusted

MAX_XML_BYTES = 512 * 1024

Element: TypeAlias = etree._Element


def parse_xml(data: bytes, *, limit: int = MAX_XML_BYTES) -> Element:
    """Parse ``data`` into an element tree or raise ``ValueError`` saying why not."""
    if not data.strip():
        raise ValueError("empty document where XML was expected")
    return parse_untrusted(data, max_bytes=limit)


@dataclass(frozen=True)
class _Span:
    start: int  # the "<" of the start tag
    content: int  # just after the start tag's ">"
    end: int  # the "<" of the end tag; -1 for an empty-element tag ("<a/>")
    qname: bytes  # the tag as written, prefix included


def _tag_end(data: bytes, start: int) -> int:
    """Index just past the ``>`` closing the start tag at ``start`` (quotes respected)."""
    quote = 0
    for index in range(start + 1, len(data)):
        byte = data[index]
        if quote:
            if byte == quote:
                quote = 0
        elif byte in b"\"'":
            quote = byte
        elif byte == ord(">"):
            return index + 1
    raise ValueError("unterminated start tag")


def _spans(data: bytes) -> list[_Span]:
    """Byte spans of every element, in document order (the order of ``root.iter()``).

    Only called on bytes the hardened parser accepted, so no DTD or entity can be present;
    expat is used because it reports byte offsets, which lxml does not.
    """
    parser = xml.parsers.expat.ParserCreate()
    opened: list[tuple[int, int, bytes, int]] = []  # (start, content, qname, order)
    found: dict[int, _Span] = {}
    counter = 0

    def start(name: str, _attrs: object) -> None:
        nonlocal counter
        begin = parser.CurrentByteIndex
        content = _tag_end(data, begin)
        opened.append((begin, content, name.encode("utf-8"), counter))
        counter += 1

    def end(_name: str) -> None:
        begin, content, qname, order = opened.pop()
        empty = data[content - 2 : content] == b"/>"
        found[order] = _Span(begin, content, -1 if empty else parser.CurrentByteIndex, qname)

    def refuse(*_args: object) -> None:
        raise ValueError("XML with a DTD or entity declaration refused")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise ValueError(f"malformed XML ({exc})") from None
    return [found[i] for i in range(counter)]


class XmlDocument:
    """A document as a camera sent it: the bytes, the parsed tree, each element's span.

    Read values from :attr:`root`; :meth:`edited` returns the original bytes with the text of
    the given leaf elements replaced and nothing else touched.
    """

    def __init__(self, data: bytes, *, limit: int = MAX_XML_BYTES) -> None:
        self.raw = data
        self.root = parse_xml(data, limit=limit)
        self._elements = list(self.root.iter())
        spans = _spans(data)
        if len(spans) != len(self._elements):
            raise ValueError("XML document with content the gateway cannot edit in place")
        self._spans = spans
        self.encoding = (self.root.getroottree().docinfo.encoding or "UTF-8").lower()

    def _span(self, element: Element) -> _Span:
        for candidate, span in zip(self._elements, self._spans, strict=True):
            if candidate is element:
                return span
        raise KeyError("element is not part of this document")

    def edited(self, texts: Mapping[Element, str]) -> bytes:
        """The original bytes with each leaf element's text set to the value given."""
        data = self.raw
        replacements: list[tuple[int, int, bytes]] = []
        for element, text in texts.items():
            if len(element):
                raise ValueError(f"{local_name(element.tag)} holds elements, not a value")
            span = self._span(element)
            value = escape(text).encode(self.encoding, errors="xmlcharrefreplace")
            if span.end < 0:  # <a/> becomes <a>value</a>, attributes as written
                opening = data[span.start : span.content - 2].rstrip() + b">"
                replacements.append(
                    (span.start, span.content, opening + value + b"</" + span.qname + b">")
                )
            else:
                replacements.append((span.content, span.end, value))
        for begin, end, value in sorted(replacements, reverse=True):
            data = data[:begin] + value + data[end:]
        return data


def local_name(tag: object) -> str:
    """``{namespace}name`` -> ``name``."""
    return str(tag).rsplit("}", 1)[-1]


def namespace(tag: object) -> str:
    text = str(tag)
    return text[1:].split("}", 1)[0] if text.startswith("{") else ""


def child(parent: Element, name: str) -> Element | None:
    """First child whose local name is ``name``, whatever its namespace."""
    for element in parent:
        if local_name(element.tag) == name:
            return element
    return None


def child_text(parent: Element, name: str) -> str | None:
    element = child(parent, name)
    if element is None:
        return None
    return (element.text or "").strip()


def looks_like_html(body: bytes) -> bool:
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head[:256]


def describe_body(body: bytes) -> str:
    """A short, printable description of an unexpected body for an error message."""
    if not body.strip():
        return "an empty body"
    if looks_like_html(body):
        return "an HTML page"
    snippet = body[:40].decode("latin-1").encode("unicode_escape").decode("ascii")
    return f"{len(body)} bytes that are not what the API defines ({snippet!r}...)"
