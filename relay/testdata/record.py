#!/usr/bin/env python3
"""Records the RTSP fixtures in this directory from real clients (ffmpeg, GStreamer).

A minimal RTSP server on 127.0.0.1 answers just enough for a client to reach RECORD (publish) or
PLAY (player), and logs the exact bytes the client sent. The request text (every RTSP message,
in order, interleaved `$` frames removed) and the first few KiB of interleaved frames are saved.

Usage: python3 relay/testdata/record.py            (re-records every fixture; needs ffmpeg, gst)
"""

import os
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
INTERLEAVED_BYTES = 6 * 1024

PLAY_SDP = (
    "v=0\r\n"
    "o=- 0 0 IN IP4 127.0.0.1\r\n"
    "s=relay\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "t=0 0\r\n"
    "a=control:*\r\n"
    "a=range:npt=now-\r\n"
    "m=video 0 RTP/AVP 96\r\n"
    "a=rtpmap:96 H264/90000\r\n"
    "a=fmtp:96 packetization-mode=1;profile-level-id=64000d;"
    "sprop-parameter-sets=Z2QADazZQUH7ARAAAAMAEAAAAwMg8UKZYA==,aOvjyyLA\r\n"
    "a=control:trackID=0\r\n"
    "m=audio 0 RTP/AVP 97\r\n"
    "a=rtpmap:97 mpeg4-generic/16000/1\r\n"
    "a=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
    "indexdeltalength=3;config=1408\r\n"
    "a=control:trackID=1\r\n"
)


def split_messages(data):
    """Splits a client byte stream into RTSP message bytes and interleaved frames."""
    messages, frames, pos = [], [], 0
    while pos < len(data):
        if data[pos] == 0x24:
            if pos + 4 > len(data):
                break
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if pos + 4 + length > len(data):
                break
            frames.append(data[pos : pos + 4 + length])
            pos += 4 + length
            continue
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = data[pos : end + 4]
        body_len = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                body_len = int(line.split(b":", 1)[1])
        if end + 4 + body_len > len(data):
            break
        messages.append(data[pos : end + 4 + body_len])
        pos = end + 4 + body_len
    return messages, frames


def serve_one(listener, log):
    conn, _ = listener.accept()
    conn.settimeout(5)
    buf = b""
    handled = 0
    deadline = None
    try:
        while deadline is None or time.time() < deadline:
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            log.append(chunk)
            messages, frames = split_messages(buf)
            for msg in messages[handled:]:
                handled += 1
                conn.sendall(answer(msg))
                if msg.startswith((b"RECORD", b"PLAY")):
                    deadline = time.time() + 1.5
            if sum(len(f) for f in frames) > 4 * INTERLEAVED_BYTES:
                break
    finally:
        conn.close()


def answer(msg):
    head = msg.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    method = lines[0].split(" ")[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    out = ["RTSP/1.0 200 OK", "CSeq: " + headers.get("cseq", "0")]
    body = ""
    if method == "OPTIONS":
        out.append(
            "Public: OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, "
            "GET_PARAMETER, SET_PARAMETER"
        )
    elif method == "DESCRIBE":
        url = lines[0].split(" ")[1]
        out.append("Content-Base: " + url.rstrip("/") + "/")
        out.append("Content-Type: application/sdp")
        body = PLAY_SDP
    elif method == "SETUP":
        transport = headers.get("transport", "").split(",")[0]
        out.append("Transport: " + transport + ";ssrc=1234ABCD")
        out.append("Session: 12345678;timeout=60")
    elif method in ("PLAY", "RECORD"):
        out.append("Session: 12345678;timeout=60")
        if method == "PLAY":
            out.append("Range: npt=0.000-")
    if body:
        out.append("Content-Length: %d" % len(body))
    return ("\r\n".join(out) + "\r\n\r\n" + body).encode()


def record(name, client_cmd, path="/live/x", binary_name=None):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    url = "rtsp://127.0.0.1:%d%s" % (port, path)
    log = []
    server = threading.Thread(target=serve_one, args=(listener, log))
    server.start()
    cmd = [arg.replace("URL", url) for arg in client_cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server.join(timeout=20)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    listener.close()
    data = b"".join(log).replace(str(port).encode(), b"8554")
    messages, frames = split_messages(data)
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(b"".join(messages))
    if binary_name:
        out, size = [], 0
        for frame in frames:
            if size + len(frame) > INTERLEAVED_BYTES and size > 0:
                break
            out.append(frame)
            size += len(frame)
        with open(os.path.join(HERE, binary_name), "wb") as f:
            f.write(b"".join(out))
    print(name, len(messages), "messages,", len(frames), "frames", file=sys.stderr)


FFMPEG_SRC = [
    "ffmpeg", "-nostdin", "-re",
    "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
    "-t", "2", "-pix_fmt", "yuv420p",
]


def main():
    record(
        "ffmpeg_announce_h264_aac.txt",
        FFMPEG_SRC + ["-c:v", "libx264", "-g", "25", "-bf", "0", "-c:a", "aac",
                      "-f", "rtsp", "-rtsp_transport", "tcp", "URL"],
        binary_name="ffmpeg_record_h264_aac_interleaved.bin",
    )
    record(
        "ffmpeg_announce_h265_aac.txt",
        FFMPEG_SRC + ["-c:v", "libx265", "-g", "25", "-bf", "0", "-c:a", "aac",
                      "-f", "rtsp", "-rtsp_transport", "tcp", "URL"],
        binary_name="ffmpeg_record_h265_aac_interleaved.bin",
    )
    record(
        "ffmpeg_play_requests.txt",
        ["ffmpeg", "-nostdin", "-rtsp_transport", "tcp", "-i", "URL", "-t", "1", "-f", "null", "-"],
    )
    record(
        "gstreamer_announce_h264.txt",
        ["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=50", "!",
         "video/x-raw,width=320,height=240,framerate=25/1", "!", "openh264enc", "!",
         "h264parse", "!", "rtspclientsink", "location=URL", "protocols=tcp"],
        binary_name="gstreamer_record_h264_interleaved.bin",
    )
    record(
        "gstreamer_setup_tcp.txt",
        ["gst-launch-1.0", "-q", "rtspsrc", "location=URL", "protocols=tcp", "!", "fakesink"],
    )
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc=size=320x240:rate=25", "-t", "1", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "25", "-bf", "0",
         "-x264-params", "aud=1", "-f", "h264", os.path.join(HERE, "clip_h264.264")],
        check=True,
    )
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc=size=320x240:rate=25", "-t", "1", "-pix_fmt", "yuv420p", "-c:v", "libx265", "-g", "25", "-bf", "0",
         "-f", "hevc", os.path.join(HERE, "clip_h265.265")],
        check=True,
    )
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
         "sine=frequency=440:sample_rate=16000", "-t", "1", "-c:a", "aac", "-f", "adts",
         os.path.join(HERE, "clip_aac_16k_mono.aac")],
        check=True,
    )


if __name__ == "__main__":
    main()
