#!/usr/bin/env bash
# Relay CPU per device stream in each stream mode (issue 4's benchmark, issue 7's scenario 5).
#
# One release relay (BASE..BASE+10, default 49000, throw-away data directory), STREAMS simulated
# cameras (`loadgen devices`, synthetic H.264 at BITRATE), STREAMS viewers (`loadgen viewers`,
# one per camera) for DURATION, once per mode:
#   tcp         ROP_STREAM_ENCRYPT_MODE=TCP         (the platform's "TCP": encryptTCP framing, clear)
#   selective   ROP_STREAM_ENCRYPT_MODE=encryptTCP  loadgen --encrypt keyframes
#   encrypt-all ROP_STREAM_ENCRYPT_MODE=encryptTCP  loadgen --encrypt all
#   tls         ROP_STREAM_ENCRYPT_MODE=TLS         (61006, mutual TLS)
# The relay's CPU is read from /proc by the viewers' loadgen (--server-pid), averaged over the
# steady window (after every viewer has its keyframe). Prints a Markdown table with each mode's
# CPU per stream and its ratio to tcp, and leaves every report in OUT (default /tmp/stream-modes).
#
#   STREAMS=100 BITRATE=2M DURATION=30s bench/stream-modes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
base="${BASE:-49000}"
streams="${STREAMS:-100}"
bitrate="${BITRATE:-2M}"
duration="${DURATION:-30s}"
modes="${MODES:-tcp selective encrypt-all tls}"
out="${OUT:-/tmp/stream-modes}"
rm -rf "$out"; mkdir -p "$out/data" "$out/ids"
relay_listen "$base" >"$out/relay.toml"
cargo build -q --release -p relay -p loadgen
api="127.0.0.1:$((base + 9))"
relay_pid=""; devices_pid=""
stop() {
  [ -n "$devices_pid" ] && kill "$devices_pid" 2>/dev/null && wait "$devices_pid" 2>/dev/null || true
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
  relay_pid=""; devices_pid=""
}
trap stop EXIT

for mode in $modes; do
  case "$mode" in
    tcp) server_mode=TCP; encrypt=keyframes ;;
    selective) server_mode=encryptTCP; encrypt=keyframes ;;
    encrypt-all) server_mode=encryptTCP; encrypt=all ;;
    tls) server_mode=TLS; encrypt=keyframes ;;
    *) echo "unknown mode $mode" >&2; exit 1 ;;
  esac
  echo "== $mode: relay with ROP_STREAM_ENCRYPT_MODE=$server_mode, $streams cameras at $bitrate" >&2
  ROP_STREAM_ENCRYPT_MODE=$server_mode target/release/relay serve --data "$out/data" \
    --config "$out/relay.toml" >"$out/relay-$mode.log" 2>&1 &
  relay_pid=$!
  for _ in $(seq 100); do curl -sf "http://$api/healthz" >/dev/null && break; sleep 0.2; done
  # The cameras run longer than the viewers; the identity cache makes every mode after the
  # first skip provisioning.
  target/release/loadgen devices --api "$api" --devices "$streams" --identities "$out/ids" \
    --ramp 200/s --duration 30m --encrypt "$encrypt" --synthetic "$bitrate" --quiet \
    --report "$out/devices-$mode.json" >"$out/devices-$mode.log" 2>&1 &
  devices_pid=$!
  for _ in $(seq 300); do
    online=$(curl -s "http://$api/v1.0/devices" | python3 -c 'import json,sys; print(json.load(sys.stdin)["totalRows"])' 2>/dev/null || echo 0)
    [ "$online" -ge "$streams" ] && break
    sleep 1
  done
  echo "   $online cameras online" >&2
  target/release/loadgen viewers --api "$api" --streams "$streams" --viewers-per-stream 1 \
    --duration "$duration" --ramp 100/s --server-pid "$relay_pid" --quiet \
    --report "$out/viewers-$mode.json" --svg "$out/viewers-$mode.svg" >"$out/viewers-$mode.log" 2>&1 || true
  stop
done

python3 - "$out" $modes <<'PY'
import json, sys
out, modes = sys.argv[1], sys.argv[2:]
rows = {}
for mode in modes:
    r = json.load(open(f"{out}/viewers-{mode}.json"))
    s = r["summary"]
    steady = [x["server"]["cpu_pct"] for x in r["samples"]
              if x.get("server") and x["t_secs"] >= s["steady_from_secs"]]
    cpu = sum(steady) / len(steady) if steady else float("nan")
    rows[mode] = dict(cpu=cpu, played=s["viewers_played"], keyframe=s["viewers_with_keyframe"],
                      gbps=s["steady_gbps"], lost=s["lost_packets"], disc=s["disconnects"],
                      lat=s["latency_ms"], rss=(s.get("server") or {}).get("rss_mb_max"))
base = rows.get("tcp", {}).get("cpu")
print("| mode | streams playing | relayed Gbit/s | relay CPU % (2 shards) | CPU % per stream | vs tcp | lost packets | latency p50 / p99 ms | relay RSS MB |")
print("|---|---|---|---|---|---|---|---|---|")
for mode, x in rows.items():
    per = x["cpu"] / x["played"] if x["played"] else float("nan")
    ratio = f'{x["cpu"] / base:.2f}x' if base else "-"
    lat = x["lat"] or {}
    print(f'| {mode} | {x["keyframe"]}/{x["played"]} | {x["gbps"]:.3f} | {x["cpu"]:.1f} | {per:.3f} | {ratio} '
          f'| {x["lost"]} | {lat.get("p50", float("nan")):.1f} / {lat.get("p99", float("nan")):.1f} | {x["rss"]} |')
PY
