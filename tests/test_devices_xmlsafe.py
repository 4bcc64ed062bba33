"""In-place edits of camera documents: only the texts change, whatever the document's form."""

from __future__ import annotations

import pytest

from gateway.devices.dahua import DahuaClient
from gateway.devices.errors import DeviceUnsupportedError
from gateway.devices.hikvision import locate
from gateway.devices.http import CameraHttp
from gateway.devices.xmlsafe import XmlDocument, parse_xml

HIK = "http://www.hikvision.com/ver20/XMLSchema"


def edit(data: bytes, changes: dict[str, str]) -> bytes:
    document = XmlDocument(data)
    return document.edited({locate(document.root, k.split(".")): v for k, v in changes.items()})


@pytest.mark.parametrize(
    ("before", "changes", "after"),
    [
        # Default namespace, declaration with a space before "?>", LF layout.
        (
            b'<?xml version="1.0" encoding="UTF-8" ?>\n<UPnP version="1.0" xmlns="'
            + HIK.encode()
            + b'">\n<enabled>true</enabled>\n<name>cam</name>\n</UPnP>\n',
            {"enabled": "false"},
            b'<?xml version="1.0" encoding="UTF-8" ?>\n<UPnP version="1.0" xmlns="'
            + HIK.encode()
            + b'">\n<enabled>false</enabled>\n<name>cam</name>\n</UPnP>\n',
        ),
        # CRLF, indentation, single-quoted attributes and a ">" inside one, kept as written.
        (
            b"<a x='1>2'>\r\n  <b  c=\"q\">old</b>\r\n  <d>keep</d>\r\n</a>",
            {"b": "new"},
            b"<a x='1>2'>\r\n  <b  c=\"q\">new</b>\r\n  <d>keep</d>\r\n</a>",
        ),
        # An empty element written <a/> gets a value: the only form change a write makes.
        (
            b'<NTPServer xmlns="' + HIK.encode() + b'"><hostName/><portNo>123</portNo></NTPServer>',
            {"hostName": "ntp.example", "portNo": "123"},
            b'<NTPServer xmlns="' + HIK.encode() + b'"><hostName>ntp.example</hostName>'
            b"<portNo>123</portNo></NTPServer>",
        ),
        (
            b'<r><e a="1" /></r>',
            {"e": "v"},
            b'<r><e a="1">v</e></r>',
        ),
        # Prefixed documents stay prefixed; entities in old values are replaced whole and new
        # values escaped.
        (
            b'<h:r xmlns:h="urn:x"><h:v>a &amp; b</h:v><h:w>&lt;x&gt;</h:w></h:r>',
            {"v": "c < d & e"},
            b'<h:r xmlns:h="urn:x"><h:v>c &lt; d &amp; e</h:v><h:w>&lt;x&gt;</h:w></h:r>',
        ),
        # Mixed namespaces and a comment (firmware notes) are kept.
        (
            b'<E xmlns="' + HIK.encode() + b'"><!-- note --><s xmlns="urn:mmmm">'
            b"<h>x</h></s><enabled>true</enabled></E>",
            {"s.h": "y", "enabled": "false"},
            b'<E xmlns="' + HIK.encode() + b'"><!-- note --><s xmlns="urn:mmmm">'
            b"<h>y</h></s><enabled>false</enabled></E>",
        ),
        # A UTF-8 byte order mark and non-ASCII text before the edited element.
        (
            "\ufeff<r><n>Café €</n><v>1</v></r>".encode(),
            {"v": "2"},
            "\ufeff<r><n>Café €</n><v>2</v></r>".encode(),
        ),
    ],
)
def test_only_the_texts_change(before: bytes, changes: dict[str, str], after: bytes) -> None:
    assert edit(before, changes) == after
    parse_xml(after)  # still well-formed


def test_a_document_in_another_encoding_gets_values_it_can_hold() -> None:
    before = b'<?xml version="1.0" encoding="ISO-8859-1"?>\n<r><n>caf\xe9</n></r>'
    assert edit(before, {"n": "gar\u00e7on \u20ac"}) == (
        b'<?xml version="1.0" encoding="ISO-8859-1"?>\n<r><n>gar\xe7on &#8364;</n></r>'
    )


@pytest.mark.parametrize(
    "hostile",
    [
        b'<!DOCTYPE r [<!ENTITY a "aaaa">]><r><v>&a;</v></r>',
        b'<!DOCTYPE r SYSTEM "http://example.invalid/r.dtd"><r/>',
        b"<r><v>unterminated</r>",
        b"",
        b"\xff\xfe<\x00r\x00/\x00>\x00",
    ],
)
def test_hostile_or_broken_documents_are_refused(hostile: bytes) -> None:
    with pytest.raises(ValueError):
        XmlDocument(hostile)


def test_a_container_element_is_not_a_value() -> None:
    document = XmlDocument(b"<r><s><h>x</h></s></r>")
    with pytest.raises(ValueError, match="holds elements"):
        document.edited({locate(document.root, ["s"]): "v"})
    with pytest.raises(KeyError):
        locate(document.root, ["s", "missing"])


def test_dahua_keys_are_sent_as_the_table_spells_them() -> None:
    client = DahuaClient(CameraHttp("dh", "127.0.0.1", 9, "u", "p"), "u", "p")
    table = {"SNMP.SNMPV2": "true", "SNMP.Enable": "true", "DDNS[1].Enable": "true"}
    assert client._as_read(table, {"SNMP.snmpv2": "false", "DDNS[1].Enable": "false"}) == {
        "SNMP.SNMPV2": "false",
        "DDNS[1].Enable": "false",
    }
    with pytest.raises(DeviceUnsupportedError, match=r"DDNS\[2\]\.Enable: not available"):
        client._as_read(table, {"DDNS[2].Enable": "false"})
