"""RTP and RTCP on the wire (sans-IO), below the RTSP server, client and the media hub.

- :mod:`gateway.rtp.packet`: RTP/RTCP packet types, header structs, NTP time
- :mod:`gateway.rtp.spans`: the relay path's per-packet walks over interleaved RTP (Python
  reference; ``_spans.c`` is the same in C, used when built)
"""
