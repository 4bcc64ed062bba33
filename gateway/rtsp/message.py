"""RTSP 1.0 messages (RFC 2326, syntax as tightened by RFC 7826) and a sans-IO connection parser.

Wire types: :class:`RtspRequest`, :class:`RtspResponse`, :class:`InterleavedFrame` (``$``
framing of RTP/RTCP over the RTSP connection). :class:`RtspConnectionParser` takes bytes with
``feed`` and hands out one event at a time with ``next_event``; it never blocks and never reads
a clock. Protocol violations raise :class:`RtspProtocolError` carrying the status a server
should answer with before closing the connection.

Header values (Session, Range, RTP-Info, CSeq, option-tag lists) are
:mod:`gateway.rtsp.headers`; URL helpers are :mod:`gateway.rtsp.url`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, Literal

from gateway.rtp.interleaved import FRAME_START, frame_end, interleave
from gateway.rtsp.headers import TOKEN_RE, parse_cseq

RTSP_VERSION: Final = "RTSP/1.0"

REASONS: Final[dict[int, str]] = {
    100: "Continue",
    200: "OK",
    201: "Created",
    250: "Low on Storage Space",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    303: "See Other",
    304: "Not Modified",
    305: "Use Proxy",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    451: "Parameter Not Understood",
    452: "Conference Not Found",
    453: "Not Enough Bandwidth",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    456: "Header Field Not Valid for Resource",
    457: "Invalid Range",
    458: "Parameter Is Read-Only",
    459: "Aggregate Operation Not Allowed",
    460: "Only Aggregate Operation Allowed",
    461: "Unsupported Transport",
    462: "Destination Unreachable",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "RTSP Version Not Supported",
    551: "Option not supported",
}

# RFC 2326 token characters (no separators, no controls).
_STATUS_LINE_RE = re.compile(r"^(RTSP/\d+\.\d+) ([0-9]{3})(?: (.*))?$")
_VERSION_RE = re.compile(r"^RTSP/\d+\.\d+$")


class RtspProtocolError(Exception):
    """The peer broke the protocol; ``status`` is what a server answers before closing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {REASONS.get(status, 'Error')}: {message}")
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- headers


class Headers:
    """Ordered header fields; lookups ignore case, repeated names are kept in order."""

    __slots__ = ("_items",)

    def __init__(
        self, items: Mapping[str, str] | Iterable[tuple[str, str]] | Headers | None = None
    ) -> None:
        self._items: list[tuple[str, str]] = []
        if items is None:
            return
        if isinstance(items, Headers):
            self._items = list(items._items)
            return
        pairs = items.items() if isinstance(items, Mapping) else items
        for name, value in pairs:
            self.add(name, value)

    def add(self, name: str, value: str | int) -> None:
        text = str(value)
        if not TOKEN_RE.match(name):
            raise ValueError(f"invalid header name {name!r}")
        if "\r" in text or "\n" in text:
            raise ValueError(f"header {name} value contains a line break")
        self._items.append((name, text))

    def set(self, name: str, value: str | int) -> None:
        """Replace every field called ``name`` with one field."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        lower = name.lower()
        self._items = [(n, v) for n, v in self._items if n.lower() != lower]

    def get(self, name: str, default: str | None = None) -> str | None:
        lower = name.lower()
        for n, v in self._items:
            if n.lower() == lower:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for n, v in self._items if n.lower() == lower]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def encode(self) -> bytes:
        return b"".join(f"{n}: {v}\r\n".encode() for n, v in self._items)


HeadersInit = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


def _with_length(headers: Headers, body: bytes) -> bytes:
    """Header block; Content-Length is written from the body, never trusted from the caller."""
    out = Headers((n, v) for n, v in headers if n.lower() != "content-length")
    if body:
        out.add("Content-Length", len(body))
    return out.encode()


# --------------------------------------------------------------------------- messages


class RtspRequest:
    __slots__ = ("body", "headers", "method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: HeadersInit = None,
        body: bytes = b"",
        version: str = RTSP_VERSION,
    ) -> None:
        if not TOKEN_RE.match(method):
            raise ValueError(f"invalid method {method!r}")
        if not uri or any(c in uri for c in " \r\n"):
            raise ValueError(f"invalid request URI {uri!r}")
        self.method = method
        self.uri = uri
        self.headers = Headers(headers)
        self.body = body
        self.version = version

    @property
    def cseq(self) -> int | None:
        value = self.headers.get("CSeq")
        return None if value is None else parse_cseq(value)

    @classmethod
    def parse(cls, data: bytes) -> RtspRequest:
        """Exactly one complete request (mostly for tests and tools)."""
        event = _parse_single(data, "server")
        assert isinstance(event, RtspRequest)
        return event

    def __bytes__(self) -> bytes:
        head = f"{self.method} {self.uri} {self.version}\r\n".encode()
        return head + _with_length(self.headers, self.body) + b"\r\n" + self.body

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RtspRequest) and bytes(self) == bytes(other)

    def __repr__(self) -> str:
        return f"RtspRequest({self.method!r}, {self.uri!r}, cseq={self.headers.get('CSeq')})"


class RtspResponse:
    __slots__ = ("body", "headers", "reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: HeadersInit = None,
        body: bytes = b"",
        version: str = RTSP_VERSION,
    ) -> None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid status code {status}")
        self.status = status
        self.reason = REASONS.get(status, "Unknown") if reason is None else reason
        if "\r" in self.reason or "\n" in self.reason:
            raise ValueError("reason phrase contains a line break")
        self.headers = Headers(headers)
        self.body = body
        self.version = version

    @classmethod
    def for_request(
        cls,
        request: RtspRequest,
        status: int,
        headers: HeadersInit = None,
        body: bytes = b"",
        reason: str | None = None,
    ) -> RtspResponse:
        """A response echoing the request's CSeq, and its Session unless ``headers`` set one."""
        out = Headers()
        cseq = request.headers.get("CSeq")
        if cseq is not None:
            out.add("CSeq", cseq)
        extra = Headers(headers)
        session = request.headers.get("Session")
        if session is not None and "Session" not in extra and status != 454:
            out.add("Session", session)
        for name, value in extra:
            if name.lower() != "cseq":
                out.add(name, value)
        return cls(status, reason, out, body)

    @classmethod
    def parse(cls, data: bytes) -> RtspResponse:
        """Exactly one complete response (mostly for tests and tools)."""
        event = _parse_single(data, "client")
        if not isinstance(event, RtspResponse):
            raise ValueError("not an RTSP response")
        return event

    @property
    def cseq(self) -> int | None:
        value = self.headers.get("CSeq")
        return None if value is None else parse_cseq(value)

    def __bytes__(self) -> bytes:
        head = f"{self.version} {self.status} {self.reason}\r\n".encode()
        return head + _with_length(self.headers, self.body) + b"\r\n" + self.body

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RtspResponse) and bytes(self) == bytes(other)

    def __repr__(self) -> str:
        return f"RtspResponse({self.status}, {self.reason!r}, cseq={self.headers.get('CSeq')})"


class InterleavedFrame:
    """One ``$ channel length payload`` block (RFC 2326 section 10.12)."""

    __slots__ = ("channel", "payload")

    def __init__(self, channel: int, payload: bytes) -> None:
        self.channel = channel
        self.payload = payload

    @classmethod
    def parse(cls, data: bytes) -> InterleavedFrame:
        if len(data) < 4:
            raise ValueError(f"interleaved frame needs 4 header bytes, got {len(data)}")
        if data[0] != FRAME_START:
            raise ValueError(f"interleaved frame must start with '$', got 0x{data[0]:02x}")
        if len(data) != frame_end(data, 0):
            raise ValueError(
                f"interleaved frame declares {frame_end(data, 0) - 4} payload bytes, "
                f"got {len(data) - 4}"
            )
        return cls(data[1], bytes(data[4:]))

    def __bytes__(self) -> bytes:
        return interleave(self.channel, self.payload)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, InterleavedFrame)
            and self.channel == other.channel
            and self.payload == other.payload
        )

    def __repr__(self) -> str:
        return f"InterleavedFrame(channel={self.channel}, {len(self.payload)} bytes)"


# --------------------------------------------------------------------------- parser


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

RtspEvent = RtspRequest | RtspResponse | InterleavedFrame | _NeedData


class RtspConnectionParser:
    """Bytes in, RTSP events out, for one connection.

    ``role="server"`` accepts requests (and ``$`` frames, e.g. RTCP from TCP clients);
    ``role="client"`` accepts responses and server-initiated requests (ANNOUNCE,
    GET_PARAMETER, SET_PARAMETER, REDIRECT). After :class:`RtspProtocolError` the parser is
    unusable and the connection should be closed.

    The buffer never holds more than one complete unit (``max_header_bytes`` of header
    section plus ``max_body``, or one 65539-byte ``$`` frame) beyond the bytes of the last
    ``feed``, as long as the caller drains events after each feed.
    """

    __slots__ = (
        "_buffer",
        "_failed",
        "_head",
        "_scanned",
        "max_body",
        "max_header_bytes",
        "max_headers",
        "role",
    )

    def __init__(
        self,
        role: Literal["server", "client"] = "server",
        max_header_bytes: int = 16384,
        max_headers: int = 64,
        max_body: int = 65536,
    ) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        self.role = role
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body
        self._buffer = bytearray()
        # How far the search for the blank line ending the header section got already.
        self._scanned = 0
        # A parsed start line + headers waiting for its body: (message, content_length).
        self._head: tuple[RtspRequest | RtspResponse, int] | None = None
        self._failed: RtspProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events."""
        return len(self._buffer)

    @property
    def idle(self) -> bool:
        """Between units: nothing buffered and no message waiting for its body."""
        return not self._buffer and self._head is None

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def take_interleaved_start(self) -> bytes:
        """The buffered bytes when they are only the start of a ``$`` frame (no message
        pending), handed over so a caller can complete the frame itself; else ``b""``."""
        buf = self._buffer
        if self._head is not None or not buf or buf[0] != FRAME_START:
            return b""
        if len(buf) >= 4 and len(buf) >= frame_end(buf, 0):
            return b""  # a complete frame: still the parser's to return
        return self.take_buffered()

    def take_buffered(self) -> bytes:
        """Hand over the bytes received but not yet parsed (when passing the connection to
        another process); the parser starts afresh."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        self._head = None
        return data

    def events(self) -> Iterator[RtspRequest | RtspResponse | InterleavedFrame]:
        """Every complete event in the buffer, in order (``$`` frames without a call each)."""
        buf = self._buffer
        while True:
            if buf and buf[0] == FRAME_START and self._head is None:
                size = len(buf)
                if size < 4:
                    return
                end = frame_end(buf, 0)
                if size < end:
                    return
                frame = InterleavedFrame(buf[1], bytes(memoryview(buf)[4:end]))
                del buf[:end]
                yield frame
                continue
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event  # type: ignore[misc]

    def next_event(self) -> RtspEvent:
        buf = self._buffer
        # Fast path: interleaved RTP. No regex, no decoding, one copy of the payload.
        if buf and buf[0] == FRAME_START and self._head is None:
            if len(buf) < 4:
                return NEED_DATA
            end = frame_end(buf, 0)
            if len(buf) < end:
                return NEED_DATA
            frame = InterleavedFrame(buf[1], bytes(memoryview(buf)[4:end]))
            del buf[:end]
            return frame
        if self._failed is not None:
            raise self._failed
        try:
            return self._next_message()
        except RtspProtocolError as exc:
            self._failed = exc
            raise

    def _next_message(self) -> RtspEvent:
        buf = self._buffer
        if self._head is not None:
            message, length = self._head
            if len(buf) < length:
                return NEED_DATA
            message.body = bytes(memoryview(buf)[:length])
            del buf[:length]
            self._head = None
            return message
        # Blank lines between messages are allowed (RFC 7826 section 20.2.1 tolerance).
        skip = 0
        size = len(buf)
        while skip < size and buf[skip] in (0x0D, 0x0A):
            skip += 1
        if skip:
            del buf[:skip]
            self._scanned = 0
            if not buf:
                return NEED_DATA
            if buf[0] == FRAME_START:
                return self.next_event()
        end, body_start = self._find_header_end()
        if end < 0:
            if len(buf) > self.max_header_bytes:
                raise RtspProtocolError(
                    413, f"header section exceeds {self.max_header_bytes} bytes"
                )
            return NEED_DATA
        if body_start > self.max_header_bytes:
            raise RtspProtocolError(413, f"header section exceeds {self.max_header_bytes} bytes")
        head = bytes(memoryview(buf)[:end])
        del buf[:body_start]
        self._scanned = 0
        message, length = self._parse_head(head)
        if length == 0:
            return message
        self._head = (message, length)
        return self._next_message()

    def _find_header_end(self) -> tuple[int, int]:
        """(end of last header line, start of body), or (-1, -1) while incomplete."""
        buf = self._buffer
        # Step back 2 bytes: the terminator may straddle the previous search's end.
        start = max(0, self._scanned - 2)
        limit = self.max_header_bytes + 4
        while True:
            nl = buf.find(b"\n", start, limit)
            if nl < 0:
                self._scanned = min(len(buf), limit)
                return -1, -1
            after = nl + 1
            if after < len(buf) and buf[after] == 0x0A:
                return nl, after + 1
            if after + 1 < len(buf) and buf[after] == 0x0D and buf[after + 1] == 0x0A:
                return nl, after + 2
            if after + 1 >= len(buf) and (after >= len(buf) or buf[after] == 0x0D):
                # Can't tell yet whether a blank line follows.
                self._scanned = nl
                return -1, -1
            start = after

    def _parse_head(self, head: bytes) -> tuple[RtspRequest | RtspResponse, int]:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = head.decode("latin-1")
        lines = text.split("\n")
        start_line = lines[0].rstrip("\r")
        headers = Headers()
        count = 0
        for raw in lines[1:]:
            line = raw.rstrip("\r")
            if not line:
                continue
            if line[0] in " \t":
                # Obsolete line folding: continuation of the previous field.
                if not headers._items:
                    raise RtspProtocolError(400, "continuation line before any header")
                name, value = headers._items[-1]
                headers._items[-1] = (name, f"{value} {line.strip()}")
                continue
            name, sep, value = line.partition(":")
            name = name.strip()
            if not sep or not TOKEN_RE.match(name):
                raise RtspProtocolError(400, f"malformed header line {line[:80]!r}")
            count += 1
            if count > self.max_headers:
                raise RtspProtocolError(400, f"more than {self.max_headers} header fields")
            headers._items.append((name, value.strip()))
        message = self._parse_start_line(start_line, headers)
        return message, self._content_length(headers)

    def _parse_start_line(self, line: str, headers: Headers) -> RtspRequest | RtspResponse:
        if line.startswith("RTSP/"):
            if self.role == "server":
                raise RtspProtocolError(400, f"expected a request, got status line {line[:80]!r}")
            match = _STATUS_LINE_RE.match(line)
            if match is None:
                raise RtspProtocolError(400, f"malformed status line {line[:80]!r}")
            version, status, reason = match.groups()
            if int(status) < 100:
                raise RtspProtocolError(400, f"invalid status code {status}")
            if version != RTSP_VERSION:
                raise RtspProtocolError(505, f"unsupported version {version}")
            response = RtspResponse(int(status), reason or "", version=version)
            response.headers = headers
            return response
        parts = line.split(" ")
        if len(parts) != 3 or not all(parts):
            raise RtspProtocolError(400, f"malformed request line {line[:80]!r}")
        method, uri, version = parts
        if not TOKEN_RE.match(method):
            raise RtspProtocolError(400, f"invalid method {method[:40]!r}")
        if version != RTSP_VERSION:
            if _VERSION_RE.match(version) or version.startswith("HTTP/"):
                raise RtspProtocolError(505, f"unsupported version {version[:20]}")
            raise RtspProtocolError(400, f"malformed protocol version {version[:20]!r}")
        request = RtspRequest(method, uri, version=version)
        request.headers = headers
        return request

    def _content_length(self, headers: Headers) -> int:
        values = headers.get_all("Content-Length")
        if not values:
            return 0
        if len(set(values)) > 1:
            raise RtspProtocolError(400, f"conflicting Content-Length values {values[:4]}")
        value = values[0]
        if not value.isdigit() or not value.isascii() or len(value) > 12:
            raise RtspProtocolError(400, f"invalid Content-Length {value[:20]!r}")
        length = int(value)
        if length > self.max_body:
            raise RtspProtocolError(413, f"body of {length} bytes exceeds {self.max_body}")
        return length


def _parse_single(data: bytes, role: Literal["server", "client"]) -> RtspRequest | RtspResponse:
    parser = RtspConnectionParser(role, max_body=max(65536, len(data)))
    parser.feed(data)
    try:
        event = parser.next_event()
    except RtspProtocolError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(event, RtspRequest | RtspResponse):
        raise ValueError("incomplete RTSP message" if event is NEED_DATA else "not a message")
    if parser.buffered:
        raise ValueError(f"{parser.buffered} bytes after the message")
    return event
