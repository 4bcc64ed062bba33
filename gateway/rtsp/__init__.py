"""RTSP: sans-IO messages, parser and Transport header; asyncio server and client on top.

Authentication is :mod:`gateway.digest`.

- :mod:`gateway.rtsp.message`: requests/responses, ``$`` framing, connection parser, helpers
- :mod:`gateway.rtsp.transport`: the Transport header
- :mod:`gateway.rtsp.server`: the asyncio RTSP server
- :mod:`gateway.rtsp.client`: an efficient asyncio RTSP reader (tests, benchmarks, CLI)
"""

from gateway.rtsp.message import (
    NEED_DATA,
    Headers,
    InterleavedFrame,
    RtspConnectionParser,
    RtspProtocolError,
    RtspRequest,
    RtspResponse,
    interleave,
    interleave_many,
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
    "interleave",
    "interleave_many",
    "parse_transport_header",
]
