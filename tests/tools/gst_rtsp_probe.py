"""A real GStreamer RTSP client for the tests (runs under Debian's /usr/bin/python3 with gi).

Plays an RTSP URL with rtspsrc, decodes every video track and counts decoded video frames
and audio buffers; prints one JSON line and exits 0 once ``--frames`` video frames were
decoded, 1 on error or timeout.

    /usr/bin/python3 gst_rtsp_probe.py URL --user U --password P --protocols tcp --frames 50
"""

import argparse
import json
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--user", default="")
    ap.add_argument("--password", default="")
    ap.add_argument("--protocols", default="tcp", choices=("tcp", "udp"))
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    Gst.init(None)
    pipeline = Gst.Pipeline.new("probe")
    src = Gst.ElementFactory.make("rtspsrc", "src")
    src.set_property("location", args.url)
    src.set_property("protocols", args.protocols)
    src.set_property("latency", 100)
    if args.user:
        src.set_property("user-id", args.user)
        src.set_property("user-pw", args.password)
    pipeline.add(src)
    result = {"video_frames": 0, "audio_buffers": 0, "caps": [], "error": None}
    loop = GLib.MainLoop()

    def on_video(_sink, _buf=None) -> None:
        result["video_frames"] += 1
        if result["video_frames"] >= args.frames:
            GLib.idle_add(loop.quit)

    def on_pad(_src, pad) -> None:
        caps = pad.get_current_caps().to_string()
        result["caps"].append(caps)
        if "media=(string)video" in caps:
            chain = ["decodebin", "videoconvert", "fakesink"]
        elif "media=(string)audio" in caps:
            chain = ["decodebin", "audioconvert", "fakesink"]
        else:
            return
        elements = [Gst.ElementFactory.make(n) for n in chain]
        sink = elements[-1]
        sink.set_property("signal-handoffs", True)
        sink.set_property("sync", False)
        if chain[1] == "videoconvert":
            sink.connect("handoff", lambda s, b, p: on_video(s))
        else:
            sink.connect(
                "handoff",
                lambda s, b, p: result.__setitem__("audio_buffers", result["audio_buffers"] + 1),
            )
        for e in elements:
            pipeline.add(e)
            e.sync_state_with_parent()
        decode, convert = elements[0], elements[1]
        decode.connect("pad-added", lambda d, p: p.link(convert.get_static_pad("sink")))
        convert.link(sink)
        pad.link(decode.get_static_pad("sink"))

    src.connect("pad-added", on_pad)
    bus = pipeline.get_bus()
    bus.add_signal_watch()

    def on_message(_bus, msg) -> None:
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            result["error"] = f"{err.message} ({dbg})"
            loop.quit()
        elif msg.type == Gst.MessageType.EOS:
            loop.quit()

    bus.connect("message", on_message)
    GLib.timeout_add(
        int(args.timeout * 1000),
        lambda: (result.__setitem__("error", result["error"] or "timeout"), loop.quit()),
    )
    pipeline.set_state(Gst.State.PLAYING)
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    print(json.dumps(result))
    return 0 if result["video_frames"] >= args.frames and not result["error"] else 1


if __name__ == "__main__":
    sys.exit(main())
