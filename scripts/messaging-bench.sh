#!/usr/bin/env bash
# Messaging benchmarks: one or more chatd binaries run the same scenarios in interleaved rounds,
# so a slow spell of the machine hits all of them; one JSON line per run goes to OUT.
#
#   scripts/messaging-bench.sh [OUT.jsonl] [CHATD_BINARY...]
#
# Defaults: OUT=messaging.jsonl, the binary of this checkout (built first). ROUNDS (3) and
# DURATION (8s) set the work. The server runs on core 0 and the load tool on core 1 when
# `taskset` exists. Scenarios, each on a fresh data dir:
#   dm x4      50 pairs, 4 unacknowledged sends per user (--sync normal)
#   dm x1      50 pairs, 1 unacknowledged send per user, and echo x1 (100 connections, one
#              message in flight) against the same server in the same run
#   full x4    dm x4 with --sync full, then echo x1 alone and echo x1 while dm x4 runs, to
#              show whether the disk reaches the other connections
#   group 10   one sender flat out (16 unacknowledged) to a group of 10
#   echo x8, broadcast 1000   the transport alone (as in compare.sh), to see that it did not move
set -euo pipefail
# The load tool opens every connection from 127.0.0.1 and many per user: no per-address or
# per-user connection caps (set through the environment, which older builds ignore).
export CHATD_MAX_CONNECTIONS_PER_ADDRESS=0 CHATD_MAX_CONNECTIONS_PER_USER=0
cd "$(dirname "$0")/.."
OUT=${1:-messaging.jsonl}
shift || true
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
PORT=${PORT:-18093}
if [ $# -eq 0 ]; then
  cargo build --release --quiet --bin chatd --bin chatd-bench
  set -- ./target/release/chatd
else
  cargo build --release --quiet --bin chatd-bench
fi
BENCH=./target/release/chatd-bench
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then CORE0=(taskset -c 0); CORE1=(taskset -c 1); else CORE0=(); CORE1=(); fi
DATA=$(mktemp -d)
SERVER_PID=
start_server() { # BINARY [FLAGS...]
  local bin=$1; shift
  rm -rf "${DATA:?}"/*
  # Builds with per-user rates get them out of the way too (older builds lack the flags).
  if "$bin" --help | grep -q -- --send-rate; then
    set -- --send-rate 1000000 --send-burst 1000000 "$@"
  fi
  "${CORE0[@]}" "$bin" --listen "127.0.0.1:$PORT" --data-dir "$DATA" --echo --log-level warn \
    --jwt-secret bench-secret-of-32-bytes-or-longer --command-rate 1000000 --command-burst 1000000 \
    --max-queued-bytes 67108864 "$@" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "chatd did not start" >&2; exit 1
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap 'stop_server; rm -rf "$DATA"' EXIT

run() { # LABEL BINARY ROUND SCENARIO...
  local label=$1 bin=$2 round=$3; shift 3
  echo "== $label ($bin, round $round)" >&2
  "${CORE1[@]}" "$BENCH" --server "127.0.0.1:$PORT" --server-pid "$SERVER_PID" --duration "$DURATION" "$@" \
    | tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(label='$label', binary='$bin', round=$round); print(json.dumps(d))" >> "$OUT"
}

: > "$OUT"
for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    start_server "$bin"
    run "dm x4" "$bin" "$round" dm --pairs 50 --inflight 4
    stop_server
    start_server "$bin"
    run "dm x1" "$bin" "$round" dm --pairs 50 --inflight 1
    run "echo x1" "$bin" "$round" echo --connections 100 --inflight 1 --size 64
    stop_server
    start_server "$bin" --sync full
    run "full x4" "$bin" "$round" dm --pairs 50 --inflight 4
    run "full: echo x1 alone" "$bin" "$round" echo --connections 10 --inflight 1 --size 64
    "${CORE1[@]}" "$BENCH" --server "127.0.0.1:$PORT" --duration "$DURATION" dm --pairs 50 --inflight 4 >/dev/null 2>&1 &
    LOAD=$!
    sleep 1
    run "full: echo x1 beside dm" "$bin" "$round" echo --connections 10 --inflight 1 --size 64
    wait "$LOAD" || true
    stop_server
    start_server "$bin"
    run "group 10" "$bin" "$round" group --members 10 --senders 1 --inflight 16
    run "echo x8" "$bin" "$round" echo --connections 100 --inflight 8 --size 64
    run "broadcast 1000" "$bin" "$round" broadcast --receivers 1000 --size 64
    stop_server
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = []
for r in rows:
    k = (r["label"], r["binary"])
    if k not in keys:
        keys.append(k)
print(f"{'scenario':<26}{'binary':<34}{'per s':>10}{'per CPU-s':>11}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}")
for label, binary in keys:
    rs = [r for r in rows if r["label"] == label and r["binary"] == binary]
    med = lambda k: statistics.median(r.get(k, 0) for r in rs)
    print(f"{label:<26}{binary[-33:]:<34}{med('per_sec'):>10.0f}{med('per_server_cpu_s'):>11.0f}"
          f"{med('p50_us')/1000:>9.2f}{med('p99_us')/1000:>9.2f}{med('p999_us')/1000:>10.2f}")
PY
