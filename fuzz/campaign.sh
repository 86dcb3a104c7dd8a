#!/usr/bin/env bash
# A longer fuzzing campaign: every target in turn for SECONDS (default 240) at the lowest CPU
# priority, one process at a time, corpus kept in fuzz/corpus/<target> (grows across runs) and
# seeded from fuzz/seeds and fuzz/regressions. Prints one summary row per target (executions,
# coverage, features, corpus, peak RSS, crash files) and leaves the full libFuzzer logs in LOGS.
# Build first: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O
set -uo pipefail
cd "$(dirname "$0")"
seconds="${1:-240}"
logs="${LOGS:-/tmp/fuzz-campaign}"
bin=target/x86_64-unknown-linux-gnu/release
mkdir -p "$logs"
targets="${TARGETS:-$(ls fuzz_targets | sed 's/\.rs$//')}"
printf '| target | seconds | execs | exec/s | cov | ft | corpus | peak RSS MB | crashes |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  dirs=("corpus/$t")
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  nice -n 19 "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${dirs[@]}" >"$logs/$t.log" 2>&1
  execs=$(grep -oE 'stat::number_of_executed_units:[[:space:]]*[0-9]+' "$logs/$t.log" | grep -o '[0-9]*$')
  speed=$(grep -oE 'stat::average_exec_per_sec:[[:space:]]*[0-9]+' "$logs/$t.log" | grep -o '[0-9]*$')
  rss=$(grep -oE 'stat::peak_rss_mb:[[:space:]]*[0-9]+' "$logs/$t.log" | grep -o '[0-9]*$')
  last=$(grep -E '^#[0-9]+' "$logs/$t.log" | grep 'cov:' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
  corp=$(grep -o 'corp: [0-9]*/[0-9A-Za-z]*' <<<"$last" | sed 's/corp: //')
  crashes=$(find "artifacts/$t" -type f | wc -l)
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$seconds" "${execs:-?}" \
    "${speed:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$crashes"
done
