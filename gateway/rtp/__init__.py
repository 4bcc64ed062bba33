"""RTP and RTCP on the wire (sans-IO), below the RTSP server, client and the media hub.

- :mod:`gateway.rtp.packet`: RTP/RTCP packet types, header structs, NTP time
- :mod:`gateway.rtp.frame`: a frame as a stream sends it, and the subscriber protocol
- :mod:`gateway.rtp.receiver`: one track's receiving side, RFC 3550 accounting, frames out
- :mod:`gateway.rtp.spans`: the relay path's per-packet walks over interleaved RTP (Python
  reference; ``_spans.c`` is the same in C, used when built)
"""
