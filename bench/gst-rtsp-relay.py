#!/usr/bin/python3
"""A RECORD-to-PLAY RTSP relay made of Debian's gst-rtsp-server (GstRtspServer 1.22), for
bench/peers.sh: the same `loadgen rtsp` load against GStreamer's RTSP server as against ours.

gst-rtsp-server serves a RECORD session (ANNOUNCE/SETUP mode=record/RECORD) into one pipeline
and a PLAY session out of another, but has no way to feed one from the other; this glue does it.
Stream N is published to rtsp://HOST:PORT/live/N (a RECORD factory: depayloader, h264parse that
repeats SPS/PPS before every IDR, appsink) and played from rtsp://HOST:PORT/play/N (a *shared*
PLAY factory: one appsrc, h264parse, payloader for all of that stream's players). Each access
unit the RECORD pipeline hands its appsink is pushed into the PLAY pipeline's appsrc, if one
exists (players are there), restamped with the PLAY pipeline's running time. Both factories
are TCP interleaved only, like the relay's RTSP server. Glue only: no media handling of ours.

Usage: gst-rtsp-relay.py [--port 8554] [--address 127.0.0.1] [--streams 100] [--latency-ms 0]
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

CAPS = "video/x-h264,stream-format=byte-stream,alignment=au"
RECORD_LAUNCH = (
    "( rtph264depay name=depay0 ! h264parse config-interval=-1 ! "
    f"{CAPS} ! appsink name=sink emit-signals=true sync=false async=false max-buffers=100 drop=true )"
)
PLAY_LAUNCH = (
    f"( appsrc name=src is-live=true format=time do-timestamp=true caps={CAPS} "
    "max-bytes=4000000 block=false ! h264parse config-interval=-1 ! "
    "rtph264pay name=pay0 pt=96 config-interval=-1 )"
)

# The PLAY pipeline's appsrc of each stream (N of /play/N) while it has players.
sources = {}


def on_sample(appsink, key):
    sample = appsink.emit("pull-sample")
    if sample is None:
        return Gst.FlowReturn.EOS
    src = sources.get(key)
    if src is not None:
        # A shallow copy (the memory is shared) whose stamps appsrc replaces with its own
        # pipeline's running time.
        buffer = sample.get_buffer().copy()
        buffer.pts = Gst.CLOCK_TIME_NONE
        buffer.dts = Gst.CLOCK_TIME_NONE
        src.emit("push-buffer", buffer)
    return Gst.FlowReturn.OK


class RecordFactory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, key, latency_ms):
        super().__init__()
        self.set_launch(RECORD_LAUNCH)
        self.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
        self.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        self.set_latency(latency_ms)
        self.connect("media-configure", self.configure, key)

    @staticmethod
    def configure(_factory, media, key):
        media.get_element().get_by_name("sink").connect("new-sample", on_sample, key)


class PlayFactory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, key, latency_ms):
        super().__init__()
        self.set_launch(PLAY_LAUNCH)
        self.set_shared(True)
        self.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        self.set_latency(latency_ms)
        self.connect("media-configure", self.configure, key)

    @staticmethod
    def configure(_factory, media, key):
        src = media.get_element().get_by_name("src")
        sources[key] = src

        def unprepared(_media):
            if sources.get(key) is src:
                del sources[key]

        media.connect("unprepared", unprepared)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", default="8554")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--streams", type=int, default=100, help="paths /live/0.. to serve")
    parser.add_argument("--latency-ms", type=int, default=0, help="RECORD jitter buffer")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(args.port)
    # A DESCRIBE of /play/N blocks its client thread until the media has data, which comes
    # from the publisher's client: with the default single client thread that is a deadlock.
    # One thread per client, as GStreamer's own examples for live sources do.
    server.get_thread_pool().set_max_threads(-1)
    mounts = server.get_mount_points()
    # DESCRIBE and ANNOUNCE need an exact mount point: one pair of factories per stream.
    for n in range(args.streams):
        mounts.add_factory(f"/live/{n}", RecordFactory(n, args.latency_ms))
        mounts.add_factory(f"/play/{n}", PlayFactory(n, args.latency_ms))
    if server.attach(None) == 0:
        sys.exit(f"gst-rtsp-relay: cannot listen on {args.address}:{args.port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"gst-rtsp-relay: rtsp://{args.address}:{args.port}/live/N -> /play/N", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
