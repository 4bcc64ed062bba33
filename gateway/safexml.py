"""Parsing untrusted XML: one hardened parser for every document that comes from outside (a
VMS's SOAP request, a camera's ISAPI answer, a WS-Discovery datagram).

lxml is configured so that no entity is expanded, no DTD is loaded and no network is
touched; a DOCTYPE or entity declaration is refused outright, the size is capped before
parsing and the element depth and count after.
"""

from __future__ import annotations

import re

from lxml import etree

MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 48
MAX_ELEMENTS = 10_000

_DECL_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)


def hardened_parser() -> etree.XMLParser:
    """An lxml parser that expands no entity, loads no DTD and touches no network."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


def parse_xml(
    data: bytes,
    *,
    max_bytes: int = MAX_BODY_BYTES,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
) -> etree._Element:
    """Parse untrusted XML or raise ``ValueError`` saying what was refused."""
    if len(data) > max_bytes:
        raise ValueError(f"XML document of {len(data)} bytes exceeds the limit of {max_bytes}")
    # Some clients send a line break or spaces before ``<?xml``, which XML forbids there and
    # libxml2 refuses; it carries nothing, so it is dropped.
    data = data.lstrip(b" \t\r\n")
    if not data:
        raise ValueError("empty XML document")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4]:
        # UTF-16/32 would hide a DOCTYPE from the byte scan below.
        raise ValueError("XML document must be UTF-8")
    if _DECL_RE.search(data):
        raise ValueError("XML document with a DOCTYPE or entity declaration refused")
    try:
        root = etree.fromstring(data, hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"malformed XML: {exc.msg}") from None
    if root is None:
        raise ValueError("empty XML document")
    if root.getroottree().docinfo.doctype:
        raise ValueError("XML document with a DOCTYPE refused")
    depth = 0
    count = 0
    for event, _node in etree.iterwalk(root, events=("start", "end")):
        if event == "start":
            depth += 1
            count += 1
            if depth > max_depth:
                raise ValueError(f"XML nesting deeper than {max_depth} levels refused")
            if count > max_elements:
                raise ValueError(f"XML document with more than {max_elements} elements refused")
        else:
            depth -= 1
    return root
