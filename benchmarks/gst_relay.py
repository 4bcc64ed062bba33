"""GStreamer's RTSP server relaying the simulated cameras: the peer integrators would use.

Runs under Debian's ``/usr/bin/python3`` (which has ``gi`` and gir1.2-gst-rtsp-server-1.0),
so it imports nothing from the gateway. One shared media factory per camera stream:

    ( rtspsrc location=URL latency=0 ! rtph264depay ! h264parse config-interval=-1
      ! rtph264pay name=pay0 pt=96   rtspsrc. ! rtppcmudepay ! rtppcmupay name=pay1 pt=0 )

A shared factory pulls the camera once, on the first client, for every client of the path.
Prints one JSON line ``{"event": "ready", "port": N}`` when listening; stops on SIGTERM/SIGINT.

    /usr/bin/python3 benchmarks/gst_relay.py --port 8600 --streams streams.json

``streams.json``: ``[{"path": "/cam1/main", "url": "rtsp://u:p@127.0.0.1:554/...",
"codec": "H264", "audio": "PCMU"}]`` (codec H264 or H265, audio PCMU, PCMA or null).
"""

import argparse
import json
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

VIDEO_CHAINS = {
    "H264": "rtph264depay ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96",
    "H265": "rtph265depay ! h265parse config-interval=-1 ! rtph265pay name=pay0 pt=96",
}
AUDIO_CHAINS = {
    "PCMU": "rtppcmudepay ! rtppcmupay name=pay1 pt=0",
    "PCMA": "rtppcmadepay ! rtppcmapay name=pay1 pt=8",
}


def launch_line(url: str, codec: str, audio: str | None) -> str:
    if codec not in VIDEO_CHAINS:
        raise ValueError(f"codec must be one of {', '.join(VIDEO_CHAINS)}, not {codec!r}")
    if audio is not None and audio not in AUDIO_CHAINS:
        raise ValueError(f"audio must be one of {', '.join(AUDIO_CHAINS)} or null, not {audio!r}")
    # Quoted so that '&' or '?' in a camera URL survive the launch-line parser.
    parts = [
        f'rtspsrc name=src location="{url}" latency=0 protocols=tcp',
        f"src. ! queue ! {VIDEO_CHAINS[codec]}",
    ]
    if audio is not None:
        parts.append(f"src. ! queue ! {AUDIO_CHAINS[audio]}")
    return "( " + " ".join(parts) + " )"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--streams", required=True, help="JSON file: list of path/url/codec/audio")
    args = ap.parse_args()
    with open(args.streams, encoding="utf-8") as fh:
        streams = json.load(fh)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.bind)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for stream in streams:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(stream["url"], stream["codec"], stream.get("audio")))
        factory.set_shared(True)
        factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        mounts.add_factory(stream["path"], factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.bind}:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, loop.quit)
    print(json.dumps({"event": "ready", "port": server.get_bound_port()}), flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
