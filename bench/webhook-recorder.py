#!/usr/bin/env python3
"""A partner's alarm webhook for the fault runs (bench/faults.sh): records every alarm it
accepts and behaves as the mode file says, read again for every request.

    webhook-recorder.py PORT LOG MODE_FILE

LOG gets one JSON line per request: {"t": unix seconds, "status": answered, "eventId", "uid",
"AItype"}. MODE_FILE holds one of:
    ok            answer 200 at once
    slow SECONDS  answer 200 after SECONDS
    status CODE   answer CODE (500, 503, ...) at once
(missing file: ok). "Down" is the process not running: bench/faults.sh stops and restarts it.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, LOG, MODE_FILE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()


def mode():
    try:
        with open(MODE_FILE) as f:
            words = f.read().split()
    except FileNotFoundError:
        return ("ok", None)
    if not words:
        return ("ok", None)
    return (words[0], float(words[1]) if len(words) > 1 else None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without TCP_NODELAY each response would wait for
    # the delayed ACK of the first (40 ms), which would be this receiver's limit, not the relay's.
    disable_nagle_algorithm = True

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        kind, arg = mode()
        status = 200
        if kind == "slow" and arg:
            time.sleep(arg)
        elif kind == "status" and arg:
            status = int(arg)
        try:
            alarm = json.loads(body)
        except ValueError:
            alarm = {}
        record = {
            "t": time.time(),
            "status": status,
            "eventId": alarm.get("eventId"),
            "uid": alarm.get("uid"),
            "AItype": alarm.get("AItype"),
        }
        with lock, open(LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        reply = b"{}"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.allow_reuse_address = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
