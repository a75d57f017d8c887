#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after another and prints, per target, the executions
# and whether it crashed. Needs a nightly toolchain and `cargo +nightly install cargo-fuzz`.
# Never part of CI: run it by hand (under `nice -n 19` on a shared machine).
#
# usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 600 s each, every target)
#
# The committed seeds (fuzz/seeds/TARGET) are copied into the working corpus (fuzz/corpus/TARGET,
# not committed), which keeps what the fuzzer finds between runs. A crash leaves its input in
# fuzz/artifacts/TARGET/; the whole libFuzzer output of a run is in fuzz/artifacts/TARGET/run.log.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-600}
shift $(($# > 0 ? 1 : 0))
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi

# The last line of libFuzzer's final stats (-print_final_stats) named $1, from the log $2.
stat() { grep -oE "^stat::$1: *[0-9]+" "$2" | tail -n1 | grep -oE '[0-9]+$' || echo '?'; }

printf '%-14s %8s %12s %8s  %s\n' target seconds executions exec/s result
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  cp "seeds/$t"/* "corpus/$t/"
  log="artifacts/$t/run.log"
  cargo +nightly fuzz build "$t" 2>"$log" # so that the timing below is fuzzing only
  start=$(date +%s)
  status=0
  # -timeout: an input that takes 10 s is a hang, reported like a crash.
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -timeout=10 \
    -print_final_stats=1 >>"$log" 2>&1 || status=$?
  result="no crash"
  if [ "$status" -ne 0 ]; then
    result="CRASH (exit $status): $(grep -oE 'Test unit written to \S+' "$log" | cut -d' ' -f5 | xargs)"
  fi
  printf '%-14s %8s %12s %8s  %s\n' "$t" $(($(date +%s) - start)) \
    "$(stat number_of_executed_units "$log")" "$(stat average_exec_per_sec "$log")" "$result"
done
