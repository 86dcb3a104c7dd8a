#!/usr/bin/env python3
"""Records the exact bytes curl sends, for the HTTP codec fixtures in this directory.

Usage: record_curl.py OUT_FILE -- CURL_ARGS...   (use the URL placeholder {url})
Starts a one-connection HTTP/1.1 server on 127.0.0.1, runs curl against it, answers every
request with an empty 200 (and `100 Continue` when asked), and writes every byte received.
"""
import re
import socket
import subprocess
import sys
import threading


def serve(listener, received):
    conn, _ = listener.accept()
    conn.settimeout(5)
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            received.extend(chunk)
        head, _, rest = buf.partition(b"\r\n\r\n")
        if re.search(rb"(?im)^expect:\s*100-continue", head):
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if m:
            need = int(m.group(1))
            while len(rest) < need:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                rest += chunk
                received.extend(chunk)
            buf = rest[need:]
        elif re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
            while b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                rest += chunk
                received.extend(chunk)
            buf = rest[rest.index(b"0\r\n\r\n") + 5:]
        else:
            buf = rest
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def main():
    out, args = sys.argv[1], sys.argv[3:]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    url = "http://127.0.0.1:%d" % listener.getsockname()[1]
    received = bytearray()
    server = threading.Thread(target=serve, args=(listener, received), daemon=True)
    server.start()
    subprocess.run(["curl", "-sS", "-o", "/dev/null"] + [a.replace("{url}", url) for a in args], check=True)
    server.join(2)
    with open(out, "wb") as f:
        f.write(received)


main()
