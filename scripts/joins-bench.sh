#!/usr/bin/env bash
# Joins into one large group, and what a member of it waits meanwhile (chatd-bench joins).
#
#   scripts/joins-bench.sh [OUT.jsonl] [CHATD_BINARY] [-- CHATD-BENCH JOINS FLAGS...]
#
# Defaults: OUT=joins.jsonl, the release build of this checkout, 10,000 members and 3,000
# newcomers joining at 300 a second. The server runs on core 0 and the tool on core 1 when
# `taskset` exists; per-address and per-user connection caps are off for the run (one address
# opens all the connections).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-joins.jsonl}
BIN=${2:-./target/release/chatd}
shift 2 || shift $# || true
[ "${1:-}" = "--" ] && shift
cargo build --release --quiet --bin chatd --bin chatd-bench
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then CORE0=(taskset -c 0); CORE1=(taskset -c 1); else CORE0=(); CORE1=(); fi
ulimit -n 65536 2>/dev/null || true
DATA=$(mktemp -d)
PORT=${PORT:-$((20000 + RANDOM % 10000))}
CHATD_MAX_CONNECTIONS_PER_ADDRESS=0 CHATD_MAX_CONNECTIONS_PER_USER=0 \
  "${CORE0[@]}" "$BIN" --listen "127.0.0.1:$PORT" --data-dir "$DATA" --log-level warn \
  --jwt-secret bench-secret-of-32-bytes-or-longer --max-queued-bytes 268435456 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
kill -0 "$PID" 2>/dev/null || { echo "chatd did not start" >&2; exit 1; }
"${CORE1[@]}" ./target/release/chatd-bench --server "127.0.0.1:$PORT" --server-pid "$PID" \
  --duration 10s joins "$@" | tee /dev/stderr | tail -1 >> "$OUT"
