"""Hardened XML parsing for documents that come from cameras (or from clients, in the sim).

defusedxml refuses DTDs, entity declarations and external references; the size limit is
checked before parsing so a camera cannot make the gateway hold an unbounded document.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

MAX_XML_BYTES = 512 * 1024


def parse_xml(data: bytes, *, limit: int = MAX_XML_BYTES) -> ET.Element:
    """Parse ``data`` into an element tree or raise ``ValueError`` saying why not."""
    if len(data) > limit:
        raise ValueError(f"XML document of {len(data)} bytes exceeds the limit of {limit}")
    if not data.strip():
        raise ValueError("empty document where XML was expected")
    try:
        return DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise ValueError(f"XML with forbidden constructs ({type(exc).__name__})") from None
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML ({exc})") from None


def local_name(tag: str) -> str:
    """``{namespace}name`` -> ``name``."""
    return tag.rsplit("}", 1)[-1]


def namespace(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def child(parent: ET.Element, name: str) -> ET.Element | None:
    """First child whose local name is ``name``, whatever its namespace."""
    for element in parent:
        if local_name(element.tag) == name:
            return element
    return None


def child_text(parent: ET.Element, name: str) -> str | None:
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
