#!/usr/bin/env bash
# Faults under load (issue 8), against a release relay on ports BASE..BASE+10 (default 24000, below the ephemeral range)
# with a throw-away data directory, simulated cameras (`loadgen devices`, alarms at
# ALARM_RATE per device per minute, each tagged and logged with the reply it got: --alarm-log)
# and a partner webhook that records every alarm it accepts (bench/webhook-recorder.py on
# BASE+20). A sampler records the relay's RSS, the devices online and the alarm queue's gauges
# once a second (OUT/samples.jsonl).
#
#   bench/faults.sh kill9     kill -9 of the relay under load (DEVICES cameras, STREAMS of them
#                             watched by `loadgen viewers`), restart on the same data directory
#                             after RESTART_AFTER seconds: time until every camera is back
#                             online, streams playing again, every alarm the relay answered 200
#                             delivered to the webhook (compared by tag), the store reopened
#                             (the restart, then `relay pki list` offline).
#   bench/faults.sh webhook   the webhook down for DOWN seconds (process stopped), then slow
#                             (answers after SLOW_DELAY s for SLOW seconds), then answering 500
#                             for FAIL seconds, recovering after each until the queue drained:
#                             queue depth, oldest undelivered age and relay RSS per phase, and
#                             every alarm answered 200 delivered.
#   bench/faults.sh soak      DEVICES cameras (default 9,800: the descriptor limit) online for
#                             SOAK seconds with alarms and stream churn (rounds of `loadgen
#                             viewers`, STREAMS streams for CHURN seconds each, a new range of
#                             cameras every round): relay RSS and open descriptors over time
#                             (OUT/devices.svg), growth after the WARMUP seconds, streams and
#                             viewers left once the churn stopped, every alarm answered 200
#                             delivered.
#
# REUSE=1 keeps OUT's data directory and identity cache from an earlier run of the same
# scenario (provisioning 9,900 cameras takes ~11 minutes); everything else starts afresh.
#
# Prints a Markdown summary; everything (logs, reports, samples) stays in OUT
# (default /tmp/faults-SCENARIO). Exit code 1 when an acknowledged alarm was not delivered.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
scenario="${1:-kill9}"
base="${BASE:-24000}"
out="${OUT:-/tmp/faults-$scenario}"
case "$scenario" in
  kill9) devices="${DEVICES:-300}"; alarm_rate="${ALARM_RATE:-2}" ;;
  webhook) devices="${DEVICES:-200}"; alarm_rate="${ALARM_RATE:-3}" ;;
  soak) devices="${DEVICES:-9800}"; alarm_rate="${ALARM_RATE:-0.1}" ;;
  *) echo "usage: $0 kill9|webhook|soak" >&2; exit 2 ;;
esac
streams="${STREAMS:-20}"
restart_after="${RESTART_AFTER:-2}"
down="${DOWN:-120}"
slow="${SLOW:-60}"
slow_delay="${SLOW_DELAY:-2}"
fail="${FAIL:-60}"
soak="${SOAK:-1800}"
churn="${CHURN:-50}"
warmup="${WARMUP:-300}"
online_timeout="${ONLINE_TIMEOUT:-900}"
api="127.0.0.1:$((base + 9))"
# The webhook recorder binds late, after the cameras connected: keep it below the ephemeral
# range (32768-60999) when BASE is in it, or a camera's connection may already hold the port.
hook_port="${HOOK_PORT:-$((base + 20))}"

if [ "${REUSE:-0}" = 1 ] && [ -d "$out/ids" ]; then
  find "$out" -mindepth 1 -maxdepth 1 ! -name data ! -name ids -exec rm -rf {} +
else
  rm -rf "$out"
fi
mkdir -p "$out/data" "$out/ids"
{ echo "alarm_webhook = \"http://127.0.0.1:$hook_port/alarm\""; relay_listen "$base"; } >"$out/relay.toml"
cargo build -q --release -p relay -p loadgen

relay_pid=""; devices_pid=""; hook_pid=""; sampler_pid=""
stop_all() {
  for pid in "$devices_pid" "$sampler_pid" "$hook_pid" "$relay_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
now() { date +%s.%N; }
log() { echo "[$(date +%T)] $*" >&2; }

start_relay() {
  target/release/relay serve --data "$out/data" --config "$out/relay.toml" \
    >>"$out/relay.log" 2>&1 &
  relay_pid=$!
  echo "$relay_pid" >"$out/relay.pid"
  for _ in $(seq 200); do curl -sf "http://$api/healthz" >/dev/null && return 0; sleep 0.05; done
  echo "relay did not start: see $out/relay.log" >&2; exit 1
}
start_hook() {
  python3 bench/webhook-recorder.py "$hook_port" "$out/webhook.jsonl" "$out/webhook.mode" \
    >>"$out/webhook.log" 2>&1 &
  hook_pid=$!
  for _ in $(seq 50); do
    ss -ltn "sport = :$hook_port" | grep -q LISTEN && return 0
    kill -0 "$hook_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "webhook recorder did not listen on $hook_port: see $out/webhook.log" >&2; exit 1
}
stop_hook() { kill "$hook_pid" 2>/dev/null; wait "$hook_pid" 2>/dev/null || true; hook_pid=""; }
hook_mode() { echo "$*" >"$out/webhook.mode"; log "webhook: $*"; }
online() {
  curl -s "http://$api/v1.0/devices?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["totalRows"])' 2>/dev/null || echo 0
}
# A metric's value, summed over its labelled series (rop_streams{state="live"}, ...).
metric() {
  curl -s "http://$api/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {sum += $2} END {print sum + 0}'
}
# Waits until every device is online (at most ONLINE_TIMEOUT seconds); with a file argument,
# appends "unix-time online" lines.
wait_online() {
  local n deadline=$(( $(date +%s) + online_timeout ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    n=$(online)
    [ -n "${1:-}" ] && echo "$(now) $n" >>"$1"
    [ "$n" -ge "$devices" ] && return 0
    sleep 0.1
  done
  return 1
}
wait_drained() {
  local limit=$1
  for _ in $(seq "$limit"); do
    [ "$(metric rop_alarms_queue_depth)" = "0" ] && return 0; sleep 1
  done
  return 1
}

# Once a second: relay RSS and open descriptors, devices online, streams and viewers, alarm
# queue gauges and counters.
sampler() {
  exec python3 - "$out" "$api" <<'PY'
import json, os, sys, time, urllib.request
out, api = sys.argv[1], sys.argv[2]
def get(path):
    try:
        return urllib.request.urlopen(f"http://{api}{path}", timeout=1).read().decode()
    except Exception:
        return None
names = ["rop_streams", "rop_viewers", "rop_alarms_queue_depth", "rop_alarms_oldest_undelivered_age_seconds",
         "rop_alarms_received_total", "rop_alarms_delivered_total", "rop_alarms_retried_total",
         "rop_alarms_dropped_total"]
start = time.time()
with open(f"{out}/samples.jsonl", "a") as f:
    while not os.path.exists(f"{out}/stop-sampler"):
        s = {"t": round(time.time() - start, 2), "unix": time.time()}
        try:
            pid = open(f"{out}/relay.pid").read().strip()
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    s["rss_mb"] = int(line.split()[1]) / 1024
            s["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        except Exception:
            s["rss_mb"] = None
        try:
            s["mode"] = open(f"{out}/webhook.mode").read().strip()
        except Exception:
            s["mode"] = "ok"
        text = get("/metrics")
        if text is not None:
            for line in text.splitlines():
                parts = line.split()
                key = parts[0].split("{")[0] if parts else ""
                if key in names and len(parts) == 2:
                    s[key] = s.get(key, 0) + float(parts[1])
        body = get("/v1.0/devices?limit=1")
        s["online"] = json.loads(body)["totalRows"] if body else None
        f.write(json.dumps(s) + "\n"); f.flush()
        time.sleep(max(0, 1 - (time.time() - start) % 1))
PY
}

hook_mode ok
start_hook
start_relay
sampler & sampler_pid=$!
t0=$(now)
case "$scenario" in
  kill9) run_for=100s ;;
  webhook) run_for=60m ;;
  # The cameras stop by themselves soon after the churn, so their loadgen writes its report
  # and chart.
  soak) run_for="$((soak + 30))s" ;;
esac
# The soak charts the relay's RSS and descriptors from the devices' loadgen (--server-pid).
chart=(); [ "$scenario" = soak ] && chart=(--server-pid "$relay_pid" --svg "$out/devices.svg")
target/release/loadgen devices --api "$api" --devices "$devices" --identities "$out/ids" \
  --ramp 200/s --duration "$run_for" --online-timeout "${online_timeout}s" \
  --alarm-rate "$alarm_rate" --alarm-log "$out/alarms.tsv" "${chart[@]}" \
  --synthetic 1M --quiet --report "$out/devices.json" >"$out/devices.log" 2>&1 &
devices_pid=$!
wait_online || { echo "only $(online) of $devices devices came online" >&2; exit 1; }
log "$devices devices online after $(python3 -c "print(f'{$(now) - $t0:.1f}')") s"

if [ "$scenario" = kill9 ]; then
  target/release/loadgen viewers --api "$api" --streams "$streams" --duration 30s --quiet \
    --report "$out/viewers-before.json" >"$out/viewers-before.log" 2>&1 &
  viewers_pid=$!
  # The webhook goes down 10 s before the kill, so that the relay holds a backlog of
  # acknowledged alarms when it dies; it is back once the relay is.
  sleep 10
  stop_hook; log "webhook down"
  sleep 10
  backlog=$(metric rop_alarms_queue_depth)
  rss_before=$(awk '/VmRSS/ {print $2/1024}' "/proc/$relay_pid/status")
  log "kill -9 relay $relay_pid (RSS $rss_before MB, $(metric rop_alarms_received_total) alarms received, $backlog waiting, $(metric rop_viewers) viewers)"
  t_kill=$(now)
  kill -9 "$relay_pid"; wait "$relay_pid" 2>/dev/null || true
  sleep "$restart_after"
  t_restart=$(now)
  start_relay
  t_up=$(now)
  start_hook
  wait_online "$out/online-after-restart" || { echo "only $(online) of $devices back online" >&2; exit 1; }
  t_back=$(now)
  log "relay answering $(python3 -c "print(f'{$t_up - $t_restart:.2f}')") s after its restart; all devices online $(python3 -c "print(f'{$t_back - $t_restart:.2f}')") s after it"
  wait "$viewers_pid" || true
  target/release/loadgen viewers --api "$api" --streams "$streams" --duration 10s --quiet \
    --server-pid "$relay_pid" --report "$out/viewers-after.json" >"$out/viewers-after.log" 2>&1 || true
  wait "$devices_pid" || true; devices_pid=""
  wait_drained 120 || log "queue not drained: $(metric rop_alarms_queue_depth) waiting"
  rss_after=$(awk '/VmRSS/ {print $2/1024}' "/proc/$relay_pid/status")
  kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true; relay_pid=""
  if target/release/relay pki status --data "$out/data" >"$out/pki-status.txt" 2>&1; then
    store="opens cleanly offline (\`relay pki status\`: $(grep -c '^device ' "$out/pki-status.txt") device certificates)"
  else
    store="FAILED to open: see $out/pki-status.txt"
  fi
  python3 - "$out" "$t_kill" "$t_restart" "$t_up" "$t_back" "$rss_before" "$rss_after" "$store" "$backlog" <<'PY'
import json, sys
out, t_kill, t_restart, t_up, t_back = sys.argv[1], *map(float, sys.argv[2:6])
rss_before, rss_after, store, backlog = sys.argv[6], sys.argv[7], sys.argv[8], sys.argv[9]
polls = [tuple(map(float, l.split())) for l in open(f"{out}/online-after-restart")]
def share_online(fraction, total):
    for t, n in polls:
        if n >= fraction * total:
            return f"{t - t_restart:.1f}"
    return "never"
dev = json.load(open(f"{out}/devices.json"))["outcome"]
before = json.load(open(f"{out}/viewers-before.json"))["summary"]
after = json.load(open(f"{out}/viewers-after.json"))["summary"]
print("| measure | value |\n|---|---|")
rows = [
    ("devices", dev["devices"]),
    ("relay answering after its restart", f"{t_up - t_restart:.2f} s"),
    ("all devices online again after the restart", f"{t_back - t_restart:.2f} s (kill to all online: {t_back - t_kill:.2f} s)"),
    ("50 % / 90 % of the devices online after the restart", f"{share_online(0.5, dev['devices'])} / {share_online(0.9, dev['devices'])} s"),
    ("acknowledged alarms waiting in the queue at the kill", backlog),
    ("device reconnects / provisioned again", f'{dev["reconnects"]} / {dev["provisioned"] + dev["from_cache"] - dev["devices"]}'),
    ("device errors", ", ".join(f"{n} {k}" for k, n in dev["error_kinds"].items())),
    ("streams before the kill: viewers with keyframe / disconnected", f'{before["viewers_with_keyframe"]} / {before["disconnects"]}'),
    ("streams after the restart: viewers with keyframe / lost packets", f'{after["viewers_with_keyframe"]}/{after["viewers_requested"]} / {after["lost_packets"]}'),
    ("relay RSS before the kill / after the run", f"{rss_before} / {rss_after} MB"),
    ("store", store),
]
for k, v in rows:
    print(f"| {k} | {v} |")
PY
elif [ "$scenario" = soak ]; then
  t_online=$(now)
  mkdir -p "$out/churn"
  round=0
  while python3 -c "import sys; sys.exit(0 if $(now) - $t_online < $soak else 1)"; do
    first=$(( (round * streams) % (devices - streams) ))
    target/release/loadgen viewers --api "$api" --streams "$streams" --first-index "$first" \
      --duration "${churn}s" --ramp 50/s --quiet --report "$out/churn/$round.json" \
      >"$out/churn/$round.log" 2>&1 || true
    log "churn round $round (cameras $first..$((first + streams - 1))): $(python3 -c "
import json; s = json.load(open('$out/churn/$round.json'))['summary']
print(f\"{s['viewers_with_keyframe']}/{s['viewers_requested']} with keyframe, {s['lost_packets']} lost, {s['disconnects']} disconnects\")" 2>/dev/null || echo 'no report'), RSS $(awk '/VmRSS/ {print $2/1024}' "/proc/$relay_pid/status") MB, $(ls "/proc/$relay_pid/fd" | wc -l) fds"
    round=$((round + 1))
  done
  t_churn_end=$(now)
  # Streams end stream_linger_secs (10 s) and a sweep (1 s) after their last viewer.
  sleep 20
  left_streams=$(metric rop_streams); left_viewers=$(metric rop_viewers)
  wait "$devices_pid" 2>/dev/null || true
  devices_pid=""
  wait_drained 120 || log "queue not drained: $(metric rop_alarms_queue_depth) waiting"
  python3 - "$out" "$t_online" "$t_churn_end" "$warmup" "$left_streams" "$left_viewers" <<'PY'
import glob, json, sys
out, t_online, t_end, warmup = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
left_streams, left_viewers = sys.argv[5], sys.argv[6]
samples = [json.loads(l) for l in open(f"{out}/samples.jsonl")]
soak = [s for s in samples if t_online <= s["unix"] <= t_end and s.get("rss_mb")]
after = [s for s in soak if s["unix"] >= t_online + warmup]
rounds = [json.load(open(p))["summary"] for p in glob.glob(f"{out}/churn/*.json")]
dev = json.load(open(f"{out}/devices.json"))["outcome"]
base = after[0]
# A churn round's streams swing RSS by +-15 MB from one sample to the next: flatness is judged
# on 5-minute window means (the last window once full), first against last.
window = 300
means = []
for start in range(int(after[0]["unix"]), int(t_end) - window + 1, window):
    w = [s["rss_mb"] for s in after if start <= s["unix"] < start + window]
    if w:
        means.append(sum(w) / len(w))
growth = (means[-1] - means[0]) / means[0] * 100 if means else float("nan")
peak = (max(means) - means[0]) / means[0] * 100 if means else float("nan")
rows = [
    ("devices online / asked", f'{dev["came_online"]} / {dev["devices"]}'),
    ("soak (every device online, churn running)", f"{t_end - t_online:.0f} s, warm-up {warmup:.0f} s"),
    ("churn rounds / viewers with keyframe / asked", f'{len(rounds)} / {sum(r["viewers_with_keyframe"] for r in rounds)} / {sum(r["viewers_requested"] for r in rounds)}'),
    ("lost packets / viewer disconnects over all rounds", f'{sum(r["lost_packets"] for r in rounds)} / {sum(r["disconnects"] for r in rounds)}'),
    ("relay RSS after warm-up / at the end / most", f'{base["rss_mb"]:.1f} / {after[-1]["rss_mb"]:.1f} / {max(s["rss_mb"] for s in after):.1f} MB'),
    ("relay RSS, 5-minute means after warm-up", " / ".join(f"{m:.1f}" for m in means) + " MB"),
    ("RSS growth after warm-up, 5-minute means (last / most vs first)", f"{growth:+.2f} % / {peak:+.2f} %"),
    ("relay open descriptors after warm-up / at the end / most", f'{base["fds"]} / {after[-1]["fds"]} / {max(s["fds"] for s in after)}'),
    ("streams / viewers left 20 s after the churn stopped", f"{left_streams} / {left_viewers}"),
    ("device reconnects, errors", f'{dev["reconnects"]}, ' + (", ".join(f"{n} {k}" for k, n in dev["error_kinds"].items()) or "none")),
]
print("| measure | value |")
print("|---|---|")
for k, v in rows:
    print(f"| {k} | {v} |")
PY
else
  sleep 20
  phase() { echo "$1 $(now)" >>"$out/phases"; }
  phase ok
  stop_hook; phase down; log "webhook down for $down s"; sleep "$down"
  start_hook; phase "recover-down"; wait_drained 600 || true
  hook_mode slow "$slow_delay"; phase slow; sleep "$slow"
  hook_mode ok; phase "recover-slow"; wait_drained 600 || true
  hook_mode status 500; phase fail; sleep "$fail"
  hook_mode ok; phase "recover-fail"; wait_drained 600 || true
  phase end
  # (A background job of a script ignores SIGINT.)
  kill -TERM "$devices_pid" 2>/dev/null || true; wait "$devices_pid" 2>/dev/null || true
  devices_pid=""
  sleep 3; wait_drained 120 || true
  phase done
  python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
samples = [json.loads(l) for l in open(f"{out}/samples.jsonl")]
phases = [l.split() for l in open(f"{out}/phases")]
print("| phase | seconds | alarms received | delivered | max queue depth | max oldest undelivered age s | relay RSS MB min-max |")
print("|---|---|---|---|---|---|---|")
for (name, start), (_, end) in zip(phases, phases[1:]):
    start, end = float(start), float(end)
    w = [s for s in samples if start <= s["unix"] < end and "rop_alarms_queue_depth" in s]
    if not w:
        continue
    rss = [s["rss_mb"] for s in w if s.get("rss_mb")]
    recv = w[-1]["rop_alarms_received_total"] - w[0]["rop_alarms_received_total"]
    dlv = w[-1]["rop_alarms_delivered_total"] - w[0]["rop_alarms_delivered_total"]
    print(f'| {name} | {end - start:.0f} | {recv:.0f} | {dlv:.0f} | {max(s["rop_alarms_queue_depth"] for s in w):.0f} '
          f'| {max(s["rop_alarms_oldest_undelivered_age_seconds"] for s in w):.1f} | {min(rss):.1f}-{max(rss):.1f} |')
last = samples[-1]
print(f'\nretried attempts {last.get("rop_alarms_retried_total", 0):.0f}, dropped {last.get("rop_alarms_dropped_total", 0):.0f}')
hook = [json.loads(l) for l in open(f"{out}/webhook.jsonl")]
starts = {name: float(t) for name, t in phases}
for name in ("recover-down", "recover-slow", "recover-fail"):
    ok = [r["t"] for r in hook if r["t"] >= starts[name] and 200 <= r["status"] < 300]
    if ok:
        print(f"{name}: first alarm accepted {ok[0] - starts[name]:.1f} s after the webhook was well again")
PY
fi

touch "$out/stop-sampler"
# Every alarm the relay answered 200 must have reached the webhook (answered 2xx there).
python3 - "$out" <<'PY'
import json, sys, collections
out = sys.argv[1]
acked, answered = set(), collections.Counter()
# A fleet split over processes logs one file per process (alarms.tsv.0, alarms.tsv.1, ...).
import glob
for line in (l for path in sorted(glob.glob(f"{out}/alarms.tsv*")) for l in open(path)):
    uid, ai, code = line.rstrip("\n").split("\t")
    answered[code] += 1
    if code == "200":
        acked.add((uid, ai))
delivered, attempts, ids = {}, 0, collections.Counter()
for line in open(f"{out}/webhook.jsonl"):
    r = json.loads(line)
    attempts += 1
    if 200 <= r["status"] < 300:
        delivered.setdefault((r["uid"], r["AItype"]), set()).add(r["eventId"])
        ids[r["eventId"]] += 1
missing = acked - delivered.keys()
unanswered_delivered = delivered.keys() - acked
dupes = sum(n - 1 for n in ids.values() if n > 1)
print(f"\nalarms answered by the relay: {dict(answered)}; webhook requests {attempts}, "
      f"distinct alarms delivered {len(delivered)}, event ids delivered more than once {dupes}, "
      f"delivered but not answered 200 (in flight at the kill) {len(unanswered_delivered)}")
print(f"acknowledged and NOT delivered: {len(missing)}" + (f" e.g. {sorted(missing)[:5]}" if missing else ""))
sys.exit(1 if missing else 0)
PY
