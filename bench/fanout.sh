#!/usr/bin/env bash
# Relay fan-out benchmark (issue 3): one publisher fanned out to 1, 10, 100 and 1000 RTSP viewers
# over loopback, for several streams (`clip`: the ~100 kbit/s H.264+AAC fixture; `hd4M`, `hd16M`...:
# a 720p30 H.264 test pattern at that bitrate, encoded once up front and published with -c copy),
# with the loopback TCP ceiling (iperf3) measured in the same run.
#
# For every row it records: relayed Gbit/s (bytes the viewers received per second, times 8),
# the ratio to iperf3, relay CPU per shard (from /proc/PID/task/*/stat, sampled by loadgen),
# syscalls per relayed packet (perf tracepoints syscalls:sys_enter_* on the relay for a 5 s window
# in the steady state; strace -c if perf cannot), and the share of the relay's CPU samples spent
# in userspace memcpy/memmove/memset (perf record -e cpu-clock), the measurable side of "no
# payload copies in userspace".
#
# Usage: bench/fanout.sh [OUT_DIR]
# Environment: VIEWERS="1 10 100 1000" RAMP=200/s DURATION= (default: ramp + 4 s + 4 s clean + 3 x 5 s traced) STREAMS="clip hd4M"
#              SHARDS= (relay shards; default: all cores) LOADGEN_SHARDS=1
#              CARGO_TARGET_DIR (default: <repo>/target) NO_BUILD=1 (use built binaries)
#              TRACE=0: no perf/strace windows (they perturb the relay: the uprobes trap on every
#              memcpy call, which at 1000 viewers halves the relay's throughput while attached)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/lib.sh"
OUT=${1:-$ROOT/target/bench-fanout/$(date +%Y%m%d-%H%M%S)}
VIEWERS=${VIEWERS:-"1 10 100 1000"}
DURATION=${DURATION:-}
# After the last viewer joins, the viewers catch up on the cached GOP for a few seconds.
SETTLE=4
CLEAN=4
RAMP=${RAMP:-200/s}
STREAMS=${STREAMS:-"clip hd4M"}
LOADGEN_SHARDS=${LOADGEN_SHARDS:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
WINDOW=5
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { echo "[fanout $(date +%H:%M:%S)] $*" >&2; }

# ----- tools -----
need() { command -v "$1" >/dev/null 2>&1; }
if ! need iperf3 && [ "$(id -u)" = 0 ]; then
    log "installing iperf3"
    DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3 >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3 >/dev/null 2>&1; } || true
fi
for tool in ffmpeg jq iperf3; do
    need "$tool" || { echo "fanout: $tool is required" >&2; exit 1; }
done
SYSCALL_TOOL=none
if [ "${TRACE:-1}" = 0 ]; then
    : # no tracing at all: clean throughput and CPU figures and charts
elif need perf && perf stat -e syscalls:sys_enter_sendmsg -- true >/dev/null 2>&1; then
    SYSCALL_TOOL=perf
elif need strace; then
    SYSCALL_TOOL=strace
fi
log "syscall counting: $SYSCALL_TOOL; output: $OUT"

if [ -z "${NO_BUILD:-}" ]; then
    log "building release binaries in $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR nice -n 10 cargo build --release -p relay -p loadgen)
fi

ulimit -n "$(ulimit -Hn)"
log "open-file limit $(ulimit -n)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# ----- loopback ceiling -----
iperf() {
    local port
    port=$(free_port)
    iperf3 -s -p "$port" -1 >/dev/null 2>&1 &
    local server=$!
    # No probe connection: `-1` serves exactly one client.
    for _ in 1 2 3 4 5; do
        sleep 0.5
        iperf3 -c 127.0.0.1 -p "$port" -t 5 -J >"$OUT/iperf3-$1.json" && break
    done
    wait "$server" 2>/dev/null || true
    jq '.end.sum_received.bits_per_second / 1e7 | round / 100' "$OUT/iperf3-$1.json"
}
IPERF_BEFORE=$(iperf before)
log "iperf3 loopback before: $IPERF_BEFORE Gbit/s"

# ----- the relay -----
DATA=$(mktemp -d)
RTSP_PORT=$(free_port)
cat >"$OUT/relay.toml" <<EOF
hostname = "127.0.0.1"
${SHARDS:+shards = $SHARDS}
$(relay_listen 0 "$RTSP_PORT")
EOF
RUST_LOG=${RUST_LOG:-warn} "$BIN/relay" serve --data "$DATA" --config "$OUT/relay.toml" >"$OUT/relay.log" 2>&1 &
RELAY=$!
PIDS+=("$RELAY")
wait_port "$RTSP_PORT" || { cat "$OUT/relay.log"; exit 1; }
log "relay pid $RELAY on rtsp 127.0.0.1:$RTSP_PORT, threads: $(cat /proc/$RELAY/task/*/comm | sort | uniq -c | tr -s ' \n' ' ')"

url() { "$BIN/relay" url "$1" --data "$DATA" --uid "$2" --config "$OUT/relay.toml" --ttl 4h; }

# ----- streams -----
stream_file() {
    case $1 in
    clip) echo "$ROOT/tests/testdata/clip_h264_aac.mp4" ;;
    hd*)
        local bitrate=${1#hd}
        local file=$OUT/hd_$bitrate.mp4
        if [ ! -s "$file" ]; then
            log "encoding a 20 s 1280x720@30 H.264 test pattern at $bitrate"
            nice -n 10 ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 \
                -t 20 -c:v libx264 -preset veryfast -b:v "$bitrate" -maxrate "$bitrate" \
                -bufsize "$bitrate" -g 30 -pix_fmt yuv420p "$file"
        fi
        echo "$file"
        ;;
    esac
}

# Counts the relay's syscalls for WINDOW seconds; prints "sendmsg other" (other = sendto, write,
# writev, recvfrom and io_uring_enter: everything else the data path may call).
count_syscalls() {
    local out=$1
    case $SYSCALL_TOOL in
    perf)
        perf stat -x, -o "$out" -e syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_io_uring_enter \
            -p "$RELAY" -- sleep "$WINDOW" >/dev/null 2>&1
        awk -F, '/sys_enter_sendmsg/{s=$1} /sys_enter_(sendto|write|writev|recvfrom|io_uring_enter)/{o+=$1} END{print s+0, o+0}' "$out"
        ;;
    strace)
        timeout "$WINDOW" strace -f -c -e trace=sendmsg,sendto,write,writev,recvfrom,io_uring_enter -p "$RELAY" -o "$out" >/dev/null 2>&1 || true
        awk '$NF=="sendmsg"{s=$4} $NF~/^(sendto|write|writev|recvfrom|io_uring_enter)$/{o+=$4} END{print s+0, o+0}' "$out"
        ;;
    *) echo "0 0" ;;
    esac
}

# Share of the relay's CPU samples in userspace memcpy/memmove/memset during WINDOW seconds.
copy_share() {
    local out=$1
    if [ "${TRACE:-1}" = 0 ] || ! need perf; then echo null; return; fi
    perf record -q -e cpu-clock -F 999 -p "$RELAY" -o "$out.data" -- sleep "$WINDOW" >/dev/null 2>&1 || { echo null; return; }
    perf report -q -i "$out.data" --stdio --sort sym --percent-limit 0 2>/dev/null >"$out.txt" || { echo null; return; }
    # User-space symbols are marked [.]; kernel ones [k].
    awk '/\[\.\]/ && tolower($0) ~ /(memcpy|memmove|memset)/ { gsub("%","",$1); s+=$1 } END { printf "%.2f\n", s+0 }' "$out.txt"
}

# Userspace bytes copied and zeroed: uprobes on glibc's memmove/memcpy and memset variants (all
# one function family per CPU; memcpy is an alias of memmove), summing their length argument
# over WINDOW seconds. Copies the compiler inlines (fixed small sizes such as the 4-byte
# interleaved header) are not calls and are not counted; they are bounded per packet.
UPROBES=()
setup_uprobes() {
    if [ "${TRACE:-1}" = 0 ] || ! need perf; then return 0; fi
    local libc
    libc=$(ldd "$BIN/relay" | awk '/libc.so/{print $3}')
    [ -n "$libc" ] || return 0
    perf probe -q -d 'probe_libc:fanout_*' >/dev/null 2>&1 || true
    local isa kind func offset event
    for kind in memmove memset; do
        for isa in sse2 avx avx2 evex avx512; do
            func=__${kind}_${isa}_unaligned_erms
            event=fanout_${kind}_$isa
            # Uprobes refuse some VEX-encoded first instructions (memset's vmovd): then probe
            # the second instruction, where the length is still in %rdx.
            for offset in 0 $(gdb -batch -ex "disassemble $func" "$libc" 2>/dev/null | awk -F'[<>+]' 'NR == 3 { print $3 }'); do
                perf probe -q -d "probe_libc:$event" >/dev/null 2>&1 || true
                perf probe -q -x "$libc" --add "$event=$func+$offset len=%dx:u64" >/dev/null 2>&1 || break
                # Validate on a running process: an unsupported probe point only fails when the
                # probe is inserted into an existing mapping.
                sleep 2 &
                if perf record -q -e "probe_libc:$event" -p $! -o /dev/null -- sleep 0.1 >/dev/null 2>&1; then
                    UPROBES+=("probe_libc:$event")
                    break
                fi
                perf probe -q -d "probe_libc:$event" >/dev/null 2>&1 || true
            done
        done
    done
    log "uprobes: ${UPROBES[*]:-none}"
}
remove_uprobes() { [ ${#UPROBES[@]} -eq 0 ] || perf probe -q -d 'probe_libc:fanout_*' >/dev/null 2>&1 || true; }
# Prints "memmove_bytes memset_bytes" for WINDOW seconds of the relay.
copied_bytes() {
    local out=$1
    if [ ${#UPROBES[@]} -eq 0 ]; then echo "null null"; return; fi
    local events
    events=$(IFS=,; echo "${UPROBES[*]}")
    perf record -q -e "$events" -p "$RELAY" -o "$out.data" -- sleep "$WINDOW" >/dev/null 2>&1 || { echo "null null"; return; }
    perf script -i "$out.data" -F event,trace 2>/dev/null | awk '
        { for (i = 1; i <= NF; i++) if ($i ~ /^len=/) { n = substr($i, 5) + 0 } }
        /fanout_memmove/ { m += n } /fanout_memset/ { z += n }
        END { printf "%d %d\n", m, z }'
}
setup_uprobes
trap 'remove_uprobes; cleanup' EXIT

ROWS=$OUT/rows.jsonl
: >"$ROWS"
for stream in $STREAMS; do
    file=$(stream_file "$stream")
    uid="BENCH${stream^^}"  # stream keys are ASCII alphanumeric
    uid=${uid//[^A-Z0-9]/}
    publish=$(url publish "$uid")
    play=$(url play "$uid")
    log "publishing $file"
    ffmpeg -hide_banner -nostdin -loglevel error -re -stream_loop -1 -i "$file" -c copy \
        -f rtsp -rtsp_transport tcp "$publish" >"$OUT/publisher-$stream.log" 2>&1 &
    publisher=$!
    PIDS+=("$publisher")
    for n in $VIEWERS; do
        tag="$stream-$n"
        # Timeline from loadgen's start: ramp, SETTLE s, a CLEAN window (throughput and CPU with
        # no tracing attached), then three WINDOW-second windows: syscall counts, CPU profile,
        # copied bytes (each divides by the packets or bytes relayed in its own window).
        clean_from=$(awk -v n="$n" -v r="${RAMP%/s}" -v s="$SETTLE" 'BEGIN { printf "%d", (n - 1) / r + s + 0.999 }')
        clean_to=$((clean_from + CLEAN))
        traced=$((3 * WINDOW))
        [ "${TRACE:-1}" = 0 ] && traced=0
        duration=${DURATION:-$((clean_to + traced + 4))s}
        log "$tag: $n viewers for $duration"
        start=$(date +%s.%N)
        "$BIN/loadgen" rtsp --play-url "$play" --viewers "$n" --duration "$duration" --ramp "$RAMP" \
            --shards "$LOADGEN_SHARDS" --server-pid "$RELAY" --report "$OUT/$tag.json" --svg "$OUT/$tag.svg" \
            --expect "loss=0,disconnects=0,failed=0" >"$OUT/$tag.txt" 2>"$OUT/$tag.progress" &
        loadgen=$!
        since() { awk -v s="$start" -v now="$(date +%s.%N)" 'BEGIN { printf "%.2f", now - s }'; }
        sleep "$((clean_to + 1))"
        w1=$(since)
        if [ "${TRACE:-1}" = 0 ]; then
            sendmsg=0 other=0 copies=null w3=$w1 memmove=null memset=null
        else
            read -r sendmsg other < <(count_syscalls "$OUT/$tag.syscalls")
            copies=$(copy_share "$OUT/$tag.perf")
            w3=$(since)
            read -r memmove memset < <(copied_bytes "$OUT/$tag.uprobes")
        fi
        status=0
        wait "$loadgen" || status=$?
        cat "$OUT/$tag.txt" >&2
        jq -c --arg stream "$stream" --argjson n "$n" --argjson sendmsg "$sendmsg" --argjson other "$other" \
            --argjson window "$WINDOW" --argjson copies "$copies" --argjson status "$status" \
            --argjson memmove "$memmove" --argjson memset "$memset" \
            --argjson clean_from "$clean_from" --argjson clean_to "$clean_to" --argjson w1 "$w1" --argjson w3 "$w3" '
            def within($a; $b): [.samples[] | select(.t_secs > $a + 0.5 and .t_secs <= $b + 0.5)];
            def mean(f): if length == 0 then null else (map(f) | add / length) end;
            within($clean_from; $clean_to) as $clean
            | within($w1; $w1 + $window) as $syscall_window
            | within($w3; $w3 + $window) as $copy_window
            | {
                stream: $stream, viewers: $n, exit: $status,
                gbps: ($clean | mean(.rx_bits_per_sec) / 1e9),
                packets_per_sec: ($clean | mean(.rx_packets_per_sec)),
                gbps_whole_run: .summary.steady_gbps,
                viewer_mbps_p50: .summary.viewer_mbps.p50,
                lost: .summary.lost_packets, disconnects: .summary.disconnects, failed: .summary.viewers_failed,
                ttfk_p50_ms: .summary.ttfk_ms.p50, ttfk_p99_ms: .summary.ttfk_ms.p99,
                setup_p99_ms: .summary.setup_ms.p99,
                server_cpu: ($clean | mean(.server.cpu_pct)),
                shard_cpu: ([$clean[].server.threads | to_entries[]
                    | select((.key | startswith("shard")) and (.key | contains("#") | not))]
                    | group_by(.key) | map({key: .[0].key, value: (map(.value) | add / ($clean | length))}) | from_entries),
                rss_mb: .summary.server.rss_mb_max,
                loadgen_cpu: ($clean | mean(.loadgen_cpu_pct)),
                sendmsg_per_packet: (($syscall_window | mean(.rx_packets_per_sec)) as $pps
                    | if ($pps // 0) > 0 and ($sendmsg + $other) > 0 then $sendmsg / ($pps * $window) else null end),
                other_syscalls_per_packet: (($syscall_window | mean(.rx_packets_per_sec)) as $pps
                    | if ($pps // 0) > 0 and ($sendmsg + $other) > 0 then $other / ($pps * $window) else null end),
                userspace_copy_cpu_pct: $copies,
                memmove_bytes_per_byte: (($copy_window | mean(.rx_bits_per_sec / 8)) as $bps
                    | if $memmove == null or ($bps // 0) == 0 then null else $memmove / ($bps * $window) end),
                memset_bytes_per_byte: (($copy_window | mean(.rx_bits_per_sec / 8)) as $bps
                    | if $memset == null or ($bps // 0) == 0 then null else $memset / ($bps * $window) end)
            }' "$OUT/$tag.json" >>"$ROWS"
    done
    kill "$publisher" 2>/dev/null || true
    wait "$publisher" 2>/dev/null || true
done

IPERF_AFTER=$(iperf after)
log "iperf3 loopback after: $IPERF_AFTER Gbit/s"
IPERF=$(awk -v a="$IPERF_BEFORE" -v b="$IPERF_AFTER" 'BEGIN { printf "%.2f", (a + b) / 2 }')

{
    echo "Machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | sed 's/^ *//'), kernel $(uname -r)"
    echo "Tree: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); relay shards: ${SHARDS:-all cores}; loadgen shards: $LOADGEN_SHARDS; ramp $RAMP"
    echo "iperf3 loopback: before $IPERF_BEFORE, after $IPERF_AFTER, mean $IPERF Gbit/s (single TCP stream)"
    echo
    echo "| stream | viewers | relayed Gbit/s | vs iperf3 | relay CPU % per shard | sendmsg / packet | other syscalls / packet | userspace memcpy/memset % of relay CPU | userspace bytes copied (zeroed) per relayed byte | loss | TTFK p50 / p99 ms | loadgen CPU % |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    jq -r --argjson iperf "$IPERF" '[
        .stream, .viewers,
        (.gbps * 10000 | round / 10000),
        ((.gbps / $iperf * 10000 | round) / 100 | tostring + " %"),
        (.shard_cpu | to_entries | map("\(.key) \(.value | round)") | join(", ")),
        (if .sendmsg_per_packet == null then "-" else (.sendmsg_per_packet * 1000 | round / 1000) end),
        (if .other_syscalls_per_packet == null then "-" else (.other_syscalls_per_packet * 1000 | round / 1000) end),
        (.userspace_copy_cpu_pct // "-"),
        (if .memmove_bytes_per_byte == null then "-" else "\(.memmove_bytes_per_byte * 10000 | round / 10000) (\(.memset_bytes_per_byte * 10000 | round / 10000))" end),
        "\(.lost) lost, \(.disconnects) disc.",
        "\(.ttfk_p50_ms | round) / \(.ttfk_p99_ms | round)",
        (.loadgen_cpu | round)
    ] | "| " + (map(tostring) | join(" | ")) + " |"' "$ROWS"
} | tee "$OUT/table.md"
log "done: $OUT/table.md"
