#!/usr/bin/env bash
# Peers (issue 7, scenario 6): other RTSP relays under the same `loadgen rtsp` load as ours, on
# the same machine in the same run, with the loopback TCP ceiling (iperf3) beside them.
#
# Servers (SERVERS, in this order; the first is the baseline of every ratio):
#   relay                  ours: release build, ports BASE..BASE+10, throw-away data directory,
#                          signed publish/play URLs from `relay url publish|play --count S`
#   xiu                    xiu from crates.io (`cargo install xiu --locked` into TOOLS/xiu when
#                          not on PATH; about 15 minutes); publish and play on the same URL
#   gst-rtsp-server        Debian's GStreamer RTSP server with bench/gst-rtsp-relay.py, the glue
#                          that hands a RECORD session's access units to a shared PLAY media
#   node-rtsp-rtmp-server  from npm (installed into TOOLS/npm), RECORD and PLAY over TCP
# Every server is started afresh for every size in SIZES (STREAMSxVIEWERS per stream), under
#   loadgen rtsp --publisher loadgen --bitrate BITRATE (synthetic H.264 with SEI send stamps, so
#   the viewers measure frame latency through any server) --server-pid PID (its CPU and RSS)
# for the ramp, the loadgen's 4 s settle, then STEADY seconds: the steady window every figure
# is taken from. A server that does not hold a size is a result (the table says why), not an
# error. Then `loadgen peers` prints the ratio tables and draws OUT/peers.svg.
#
# Ramp: xiu's RTSP session ids are the current second, so two clients whose SETUPs fall in the
# same second get mixed up; its publishers and players start at XIU_RAMP (< 1/s). The others
# start at RAMP. The ramp does not enter the figures (the steady window starts 4 s after the last
# viewer is due), only the run's length; RAMP=0.9/s gives every server the same ramp.
#
# Usage: bench/peers.sh [OUT_DIR]
# Environment: SIZES="1x1 10x1 1x50 10x10" SERVERS="relay xiu gst-rtsp-server node-rtsp-rtmp-server"
#              RAMP=20/s XIU_RAMP=0.9/s STEADY=15 BITRATE=2M BASE=24000
#              TOOLS=<repo>/target/peers-tools (where xiu and the npm server are installed)
#              CARGO_TARGET_DIR (default <repo>/target) NO_BUILD=1 (use the built binaries)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
OUT=${1:-$ROOT/target/bench-peers/$(date +%Y%m%d-%H%M%S)}
SIZES=${SIZES:-"1x1 10x1 1x50 10x10"}
SERVERS=${SERVERS:-"relay xiu gst-rtsp-server node-rtsp-rtmp-server"}
RAMP=${RAMP:-20/s}
XIU_RAMP=${XIU_RAMP:-0.9/s}
STEADY=${STEADY:-15}
BITRATE=${BITRATE:-2M}
# Below the kernel's ephemeral range (32768-60999 by default), which a busy machine's client
# connections occupy.
BASE=${BASE:-24000}
TOOLS=${TOOLS:-$ROOT/target/peers-tools}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
NODE_SERVER=node-rtsp-rtmp-server@0.4.0
# The loadgen's settle time after the last viewer is due (loadgen/src/report.rs SETTLE_SECS).
SETTLE=4
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$OUT" "$TOOLS"
OUT=$(cd "$OUT" && pwd)
TOOLS=$(cd "$TOOLS" && pwd)
log() { echo "[peers $(date +%H:%M:%S)] $*" >&2; }
need() { command -v "$1" >/dev/null 2>&1; }

# ----- what the servers need -----
apt_install() {
    local missing=() package
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    log "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
apt_install iperf3 jq python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
wants() { [[ " $SERVERS " == *" $1 "* ]]; }

XIU=$(command -v xiu || echo "$TOOLS/xiu/bin/xiu")
if wants xiu && [ ! -x "$XIU" ]; then
    apt_install cmake pkg-config libopus-dev
    log "building xiu from crates.io into $TOOLS/xiu (about 15 minutes; log: $TOOLS/xiu-install.log)"
    nice -n 10 cargo install xiu --locked --root "$TOOLS/xiu" >"$TOOLS/xiu-install.log" 2>&1 \
        || { tail -20 "$TOOLS/xiu-install.log" >&2; exit 1; }
fi
NODE_DIR=$TOOLS/npm/node_modules/${NODE_SERVER%@*}
if wants node-rtsp-rtmp-server && [ ! -f "$NODE_DIR/server.js" ]; then
    need npm || apt_install nodejs npm
    log "installing $NODE_SERVER from npm into $TOOLS/npm"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" "$NODE_SERVER" >/dev/null
fi

if [ -z "${NO_BUILD:-}" ]; then
    log "building release binaries in $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR nice -n 10 cargo build -q --release -p relay -p loadgen)
fi
ulimit -n "$(ulimit -Hn)"

SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
IPERF_PID=""
DATA=$(mktemp -d)
cleanup() {
    stop_server
    [ -z "$IPERF_PID" ] || kill "$IPERF_PID" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

# ----- the loopback ceiling -----
iperf_port=$((BASE + 40))
iperf3 -s -1 -B 127.0.0.1 -p "$iperf_port" >/dev/null 2>&1 &
IPERF_PID=$!
sleep 0.5
iperf3 -c 127.0.0.1 -p "$iperf_port" -t 5 -J >"$OUT/iperf3.json"
wait "$IPERF_PID" 2>/dev/null || true
IPERF_PID=""
log "iperf3 loopback: $(jq '.end.sum_received.bits_per_second / 1e7 | round / 100' "$OUT/iperf3.json") Gbit/s"

# ----- the servers -----
# Each starts one server on its port(s) and sets SERVER_PID, PUBLISH and PLAY (URL templates
# with {n}, or @FILE lists) for `streams` streams.
start_relay() {
    local streams=$1 port=$((BASE + 8))
    cat >"$OUT/relay.toml" <<EOF
hostname = "127.0.0.1"
$(relay_listen "$BASE")
EOF
    rm -rf "$DATA/relay"
    RUST_LOG=${RUST_LOG:-warn} "$BIN/relay" serve --data "$DATA/relay" --config "$OUT/relay.toml" \
        >>"$OUT/relay.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$port" || return 1
    local kind
    for kind in publish play; do
        "$BIN/relay" url "$kind" --data "$DATA/relay" --config "$OUT/relay.toml" --uid 'PEER{n}' \
            --count "$streams" --ttl 4h >"$OUT/relay-$kind.txt"
    done
    PUBLISH=@$OUT/relay-publish.txt PLAY=@$OUT/relay-play.txt
}
start_xiu() {
    local port=$((BASE + 20))
    "$XIU" --rtsp "$port" --log warn >>"$OUT/xiu.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$port" || return 1
    PUBLISH="rtsp://127.0.0.1:$port/live/s{n}" PLAY=$PUBLISH
}
start_gst() {
    local port=$((BASE + 21))
    /usr/bin/python3 "$ROOT/bench/gst-rtsp-relay.py" --port "$port" --streams "$1" >>"$OUT/gst-rtsp-server.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$port" || return 1
    PUBLISH="rtsp://127.0.0.1:$port/live/{n}" PLAY="rtsp://127.0.0.1:$port/play/{n}"
}
start_node() {
    # Its ports (RTSP/HTTP, RTMP, RTP/RTCP over UDP) and receiver sockets come from its config
    # module: set them before its server.js reads them. It listens on 0.0.0.0 (hard-coded);
    # the load only goes to 127.0.0.1.
    local port=$((BASE + 30))
    mkdir -p "$DATA/node"
    node -e '
        const [dir, base, tmp] = [process.argv[1], +process.argv[2], process.argv[3]];
        const config = require(dir + "/config");
        Object.assign(config, {
            serverPort: base, rtmpServerPort: base + 1,
            audioRTPServerPort: base + 2, audioRTCPServerPort: base + 3,
            videoRTPServerPort: base + 4, videoRTCPServerPort: base + 5,
            rtspVideoDataUDPListenPort: base + 6, rtspVideoControlUDPListenPort: base + 7,
            rtspAudioDataUDPListenPort: base + 8, rtspAudioControlUDPListenPort: base + 9,
            videoControlReceiverPath: tmp + "/vc", audioControlReceiverPath: tmp + "/ac",
            videoDataReceiverPath: tmp + "/vd", audioDataReceiverPath: tmp + "/ad",
            recordedDir: null,
        });
        require(dir + "/server");
    ' "$NODE_DIR" "$port" "$DATA/node" >>"$OUT/node-rtsp-rtmp-server.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$port" || return 1
    PUBLISH="rtsp://127.0.0.1:$port/live/s{n}" PLAY=$PUBLISH
}

start() {
    case $1 in
    relay) start_relay "$2" ;;
    xiu) start_xiu ;;
    gst-rtsp-server) start_gst "$2" ;;
    node-rtsp-rtmp-server) start_node ;;
    *) echo "peers: unknown server $1" >&2; return 1 ;;
    esac
}

RUNS=()
SKIPPED=$OUT/skipped.md
: >"$SKIPPED"
for server in $SERVERS; do
    ramp=$RAMP
    [ "$server" = xiu ] && ramp=$XIU_RAMP
    for size in $SIZES; do
        streams=${size%x*} per_stream=${size#*x}
        viewers=$((streams * per_stream))
        tag=$server-${streams}x$per_stream
        # Publishers, then viewers, at the ramp; then the settle and the steady window.
        duration=$(awk -v n="$viewers" -v r="${ramp%/s}" -v s="$SETTLE" -v w="$STEADY" \
            'BEGIN { printf "%d", (n - 1) / r + s + w + 0.999 }')
        log "$tag: $streams streams x $per_stream viewers, ramp $ramp, ${duration}s"
        if ! start "$server" "$streams"; then
            log "$server did not start; see $OUT/$server.log"
            echo "- $server at $streams x $per_stream: the server did not start (\`$server.log\`)" >>"$SKIPPED"
            stop_server
            continue
        fi
        status=0
        "$BIN/loadgen" rtsp --streams "$streams" --viewers-per-stream "$per_stream" \
            --publish-url "$PUBLISH" --play-url "$PLAY" --publisher loadgen --bitrate "$BITRATE" \
            --ramp "$ramp" --duration "${duration}s" --server-pid "$SERVER_PID" --quiet \
            --report "$OUT/$tag.json" --svg "$OUT/$tag.svg" >"$OUT/$tag.txt" 2>&1 || status=$?
        stop_server
        if [ -s "$OUT/$tag.json" ]; then
            RUNS+=(--run "$server=$OUT/$tag.json")
            log "$tag: $(grep -m1 'steady' "$OUT/$tag.txt" || tail -1 "$OUT/$tag.txt") (exit $status)"
        else
            why=$(grep -v '^\s*$' "$OUT/$tag.txt" | tail -1)
            log "$tag: no report: $why"
            echo "- $server at $streams x $per_stream: no run: $why" >>"$SKIPPED"
        fi
    done
done

{
    echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r), load average before the run: $LOAD"
    echo "Tree: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); each stream $BITRATE (loadgen synthetic H.264, 25 fps, GOP 50); steady window ${STEADY} s; ramp $RAMP (xiu $XIU_RAMP)"
    echo
    "$BIN/loadgen" peers "${RUNS[@]}" --baseline "${SERVERS%% *}" --iperf3 "$OUT/iperf3.json" \
        --bitrate "$BITRATE" --svg "$OUT/peers.svg"
    if [ -s "$SKIPPED" ]; then
        echo
        echo "Not run:"
        cat "$SKIPPED"
    fi
} | tee "$OUT/table.md"
log "done: $OUT/table.md, $OUT/peers.svg"
