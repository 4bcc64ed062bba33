"""RTSP: sans-IO messages, parser and Transport header; asyncio server and client on top.

Authentication is :mod:`gateway.digest`.

- :mod:`gateway.rtsp.message`: requests/responses, ``$`` framing, connection parser
- :mod:`gateway.rtsp.headers`: header values (CSeq, Session, Range, RTP-Info, option tags)
- :mod:`gateway.rtsp.url`: RTSP URLs (split, strip credentials, resolve ``a=control``)
- :mod:`gateway.rtsp.transport`: the Transport header
- :mod:`gateway.rtsp.server`: the asyncio RTSP server (listeners, limits, shared UDP sockets),
  with :mod:`gateway.rtsp.server_connection` (one connection: protocol and request handling)
  and :mod:`gateway.rtsp.server_session` (client sessions and their media transport)
- :mod:`gateway.rtsp.source`: the :class:`StreamSource` protocol the server serves
- :mod:`gateway.rtsp.client_connection`: the client end of a connection, sans-IO
- :mod:`gateway.rtsp.client`: the asyncio RTSP reader (native ingest, tests, benchmarks)
"""

from gateway.rtsp.message import (
    NEED_DATA,
    Headers,
    InterleavedFrame,
    RtspConnectionParser,
    RtspProtocolError,
    RtspRequest,
    RtspResponse,
)
from gateway.rtsp.transport import TransportSpec, parse_transport_header

__all__ = [
    "NEED_DATA",
    "Headers",
    "InterleavedFrame",
    "RtspConnectionParser",
    "RtspProtocolError",
    "RtspRequest",
    "RtspResponse",
    "TransportSpec",
    "parse_transport_header",
]
