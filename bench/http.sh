#!/usr/bin/env bash
# Client API benchmark (issue 6): wrk against GET /v1.0/devices (DEVICES simulated cameras
# online, from loadgen) and POST /v1.0/devices/{uid}/live/play-session, side by side with nginx
# serving a small static file on loopback in the same run, so the numbers read as ratios to a
# well-known HTTP server on the same machine at the same moment.
#
# The relay runs with one shard (the client API is on the control plane's own thread either
# way) and nginx with one worker: requests/s per core is requests/s of that one thread.
#
# Usage: bench/http.sh [OUT_DIR]
# Environment: DURATION=10s CONNECTIONS=32 THREADS=1 DEVICES=100 BASE_PORT=63000
#              CARGO_TARGET_DIR (default: <repo>/target) NO_BUILD=1 (use built binaries)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
OUT=${1:-$ROOT/target/bench-http/$(date +%Y%m%d-%H%M%S)}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
DEVICES=${DEVICES:-100}
BASE=${BASE_PORT:-63000}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { echo "[http $(date +%H:%M:%S)] $*" >&2; }
for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required (apt-get install wrk nginx-light curl)" >&2; exit 1; }
done
[ -n "${NO_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -p relay -p loadgen >&2)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# ----- relay -----
port() { echo $((BASE + $1)); }
cat > "$OUT/relay.toml" <<TOML
hostname = "127.0.0.1"
$(relay_listen "$BASE")
TOML
API=127.0.0.1:$(port 9)
"$BIN/relay" serve --data "$OUT/data" --config "$OUT/relay.toml" --shards 1 >"$OUT/relay.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://$API/healthz" >/dev/null && break; sleep 0.1; done

# ----- devices -----
"$BIN/loadgen" devices --api "$API" --host 127.0.0.1 --devices "$DEVICES" --ramp 500/s \
  --duration 1h >"$OUT/loadgen.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  online=$(curl -s "http://$API/v1.0/devices" | python3 -c 'import json,sys; print(json.load(sys.stdin)["totalRows"])' 2>/dev/null || echo 0)
  [ "$online" -ge "$DEVICES" ] && break
  sleep 0.2
done
log "$online devices online"
UID_=$(curl -s "http://$API/v1.0/devices?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["uid"])')

# ----- nginx: one worker, a 1 KiB static file -----
NGX=$OUT/nginx
mkdir -p "$NGX/html" "$NGX/logs"
head -c 1024 /dev/zero | tr '\0' 'x' >"$NGX/html/small.txt"
cat >"$NGX/nginx.conf" <<CONF
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$(port 20); root $NGX/html; }
}
CONF
nginx -c "$NGX/nginx.conf" -p "$NGX" -g 'daemon off;' &
pids+=($!)
sleep 0.5

# ----- wrk -----
cat >"$OUT/play.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"channel":0,"streamType":"mainStream"}'
wrk.headers["Content-Type"] = "application/json"
LUA
run() { # name url [script]
  local name=$1 url=$2
  shift 2
  log "wrk $name"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$OUT/wrk-$name.txt"
}
run nginx "http://127.0.0.1:$(port 20)/small.txt"
run devices "http://$API/v1.0/devices"
run play "http://$API/v1.0/devices/$UID_/live/play-session" -s "$OUT/play.lua"
run nginx-again "http://127.0.0.1:$(port 20)/small.txt"

# ----- report -----
python3 - "$OUT" "$DEVICES" <<'PY'
import re, sys, pathlib
out = pathlib.Path(sys.argv[1])
def parse(name):
    text = (out / f"wrk-{name}.txt").read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    def ms(v, unit):
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", text).groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, p99, int(non2xx.group(1)) if non2xx else 0
ngx = [parse("nginx"), parse("nginx-again")]
base_rps = sum(r for r, _, _ in ngx) / 2
base_p99 = sum(p for _, p, _ in ngx) / 2
lines = ["| target | requests/s (1 core) | vs nginx | p99 ms | vs nginx | non-2xx |", "|---|---|---|---|---|---|"]
for name, label in [("nginx", "nginx 1 KiB static file"), ("devices", f"GET /v1.0/devices ({sys.argv[2]} online)"),
                    ("play", "POST live/play-session"), ("nginx-again", "nginx again")]:
    rps, p99, bad = parse(name)
    lines.append(f"| {label} | {rps:,.0f} | {rps / base_rps:.2f} | {p99:.2f} | {p99 / base_p99:.2f} | {bad} |")
report = "\n".join(lines)
(out / "report.md").write_text(report + "\n")
print(report)
PY
