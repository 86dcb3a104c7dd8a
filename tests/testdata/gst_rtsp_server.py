#!/usr/bin/python3
"""A GStreamer RTSP server (gst-rtsp-server through python3-gi) for the pull-source tests.

Usage: gst_rtsp_server.py USER PASSWORD [tcp-only]
Serves rtsp://127.0.0.1:PORT/test (H.264 from videotestsrc, x264enc) behind Digest
authentication on an ephemeral port, prints "PORT <n>" once listening, runs until killed.
Media goes over whichever transport the client asks (UDP unicast or TCP interleaved); with
`tcp-only` a UDP SETUP is answered 461 Unsupported Transport.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstRtsp", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

user, password = sys.argv[1], sys.argv[2]
tcp_only = sys.argv[3:] == ["tcp-only"]
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service("0")
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=25/1 "
    "! x264enc tune=zerolatency key-int-max=25 ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
factory.set_shared(True)
if tcp_only:
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
factory.add_role_from_structure(
    Gst.Structure.new_from_string(
        "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
    )
)
auth = GstRtspServer.RTSPAuth()
token = GstRtspServer.RTSPToken.new()
token.set_string("media.factory.role", "user")
auth.add_digest(user, password, token)
auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
server.set_auth(auth)
server.get_mount_points().add_factory("/test", factory)
server.attach(None)
print("PORT", server.get_bound_port(), flush=True)
GLib.MainLoop().run()
