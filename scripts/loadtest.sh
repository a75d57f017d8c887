#!/usr/bin/env bash
# Builds the release binaries, starts chatd on a temporary data dir, runs the standard load
# scenarios with chatd-bench, and prints a results table. Finishes in a few minutes on 2 cores.
#
# usage: scripts/loadtest.sh [OUT.jsonl]
# env:   DURATION (default 10s)  GROUP_SIZES (default "10 100 1000")  IDLE (default "1000 10000")
#        The server runs on core 0 and the load tool on core 1 when `taskset` exists.
set -euo pipefail
# The load tool opens every connection from 127.0.0.1 and many per user: no per-address or
# per-user connection caps (set through the environment, which older builds ignore).
export CHATD_MAX_CONNECTIONS_PER_ADDRESS=0 CHATD_MAX_CONNECTIONS_PER_USER=0
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp --suffix=.jsonl)}
DURATION=${DURATION:-10s}
GROUP_SIZES=${GROUP_SIZES:-10 100 1000}
IDLE=${IDLE:-1000 10000}
PORT=${PORT:-9321}
cargo build --release --quiet --bin chatd --bin chatd-bench

# Core pinning as a command prefix (not a function: a function in the background would be a
# subshell, and $! would name the subshell instead of the server).
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then CORE0=(taskset -c 0); CORE1=(taskset -c 1); else CORE0=(); CORE1=(); fi
DATA=$(mktemp -d)
SERVER_PID=
start_server() {
  rm -rf "$DATA"/*
  "${CORE0[@]}" ./target/release/chatd --listen "127.0.0.1:$PORT" --data-dir "$DATA" --echo --log-level warn \
    --jwt-secret bench-secret-of-32-bytes-or-longer --command-rate 1000000 --command-burst 1000000 \
    --send-rate 1000000 --send-burst 1000000 --group-create-rate 1000000 --group-create-burst 1000000 \
    --login-rate 100000 --login-burst 100000 --max-queued-bytes 67108864 "$@" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "chatd did not start" >&2; exit 1
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap 'stop_server; rm -rf "$DATA"' EXIT

bench() {
  local label=$1; shift
  echo "== $label" >&2
  "${CORE1[@]}" ./target/release/chatd-bench --server "127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
    --duration "$DURATION" "$@" | tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); d['label']='$label'; print(json.dumps(d))" >> "$OUT"
}

: > "$OUT"
start_server
bench "echo 100x8 64B" echo --connections 100 --inflight 8 --size 64
bench "broadcast 1000 64B" broadcast --receivers 1000 --size 64
stop_server
for n in $IDLE; do
  start_server
  bench "idle ws $n" connect --connections "$n" --path /echo --hold 2s
  stop_server
  start_server
  bench "idle chat $n" connect --connections "$n" --path /ws --hold 2s
  stop_server
done
start_server
bench "dm 50 pairs" dm --pairs 50 --inflight 4
for g in $GROUP_SIZES; do
  bench "group $g flat out" group --members "$g" --senders 1 --inflight 16
done
bench "login storm 20/s" login --members 100 --rate 200 --logins-per-sec 20
stop_server

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'scenario':<22}{'conns':>7}{'per s':>12}{'per srv CPU s':>15}{'p50 us':>9}{'p99 us':>9}{'p99.9':>9}{'KiB/conn':>10}{'errors':>8}")
for r in rows:
    print(f"{r['label']:<22}{r['connections']:>7}{r['per_sec']:>12.0f}{r.get('per_server_cpu_s', 0):>15.0f}"
          f"{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['p999_us']:>9.0f}{r.get('rss_kib_per_conn', float('nan')):>10.2f}{r['errors']:>8}")
print(f"(JSON lines in {sys.argv[1]})")
PY
