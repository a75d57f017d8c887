#!/usr/bin/env bash
# What a long list of groups costs the other users: chatd-bench's group-list scenario against one
# or more chatd binaries, one JSON line per run to OUT.
#
#   scripts/group-list-bench.sh [OUT.jsonl] [CHATD_BINARY...]
#
# Defaults: OUT=group-list.jsonl, the binary of this checkout (built first). BASE_REV=<git rev>
# also builds that revision's chatd (from `git archive`, in its own target dir) and runs it
# first, for a before/after comparison. Each binary runs, on a fresh data dir:
#   one creator    one account makes N_GROUPS public groups (default 17280) as fast as the server
#                  answers, or as many as the server lets it own
#   many creators  N_GROUPS public groups made by accounts of PER_CREATOR (default 100) each
# then POLLERS (3) connections poll group.list, one request in flight and at most POLL_RATE (40)
# per second each, below the default command rate of 50, following `next` from page to page
# when the server pages; a bystander's whoami round trip is measured quiet and during DURATION
# (10s) of polling. The server runs on core 0 and the load tool on core 1 when `taskset` exists.
# The server is started with high command and group-creation rates so that the groups are made
# quickly; the pollers pace themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-group-list.jsonl}
shift || true
GROUPS_N=${N_GROUPS:-17280}
PER_CREATOR=${PER_CREATOR:-100}
POLLERS=${POLLERS:-3}
POLL_RATE=${POLL_RATE:-40}
DURATION=${DURATION:-10s}
PORT=${PORT:-18094}
cargo build --release --quiet --bin chatd --bin chatd-bench
if [ $# -eq 0 ]; then
  set -- ./target/release/chatd
fi
if [ -n "${BASE_REV:-}" ]; then
  base_src=$(mktemp -d)
  git archive "$BASE_REV" | tar -x -C "$base_src"
  (cd "$base_src" && CARGO_TARGET_DIR="$OLDPWD/target/base-build" cargo build --release --quiet --bin chatd)
  rm -rf "$base_src"
  set -- ./target/base-build/release/chatd "$@"
fi
BENCH=./target/release/chatd-bench
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then CORE0=(taskset -c 0); CORE1=(taskset -c 1); else CORE0=(); CORE1=(); fi
DATA=$(mktemp -d)
SERVER_PID=
start_server() { # BINARY
  rm -rf "${DATA:?}"/*
  local extra=()
  # Builds with per-user creation rates and connection caps: lift those too, so that the groups
  # are made quickly by many creators from one address (older builds lack the flags).
  if "$1" --help | grep -q -- --group-create-rate; then
    extra+=(--group-create-rate 1000000 --group-create-burst 1000000)
  fi
  if "$1" --help | grep -q -- --max-connections-per-address; then
    extra+=(--max-connections-per-address 0 --max-connections-per-user 0)
  fi
  "${CORE0[@]}" "$1" --listen "127.0.0.1:$PORT" --data-dir "$DATA" --log-level warn \
    --jwt-secret bench-secret-of-32-bytes-or-longer --command-rate 1000000 --command-burst 1000000 "${extra[@]}" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "chatd did not start" >&2; exit 1
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap 'stop_server; rm -rf "$DATA"' EXIT

run() { # LABEL BINARY PER_CREATOR
  local label=$1 bin=$2 per=$3
  echo "== $label ($bin)" >&2
  start_server "$bin"
  "${CORE1[@]}" "$BENCH" --server "127.0.0.1:$PORT" --server-pid "$SERVER_PID" --duration "$DURATION" \
    --jwt-secret bench-secret-of-32-bytes-or-longer group-list --groups "$GROUPS_N" --per-creator "$per" --pollers "$POLLERS" --poll-rate "$POLL_RATE" \
    | tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(label='$label', binary='$bin'); print(json.dumps(d))" >> "$OUT"
  stop_server
}

: > "$OUT"
for bin in "$@"; do
  run "one creator" "$bin" "$GROUPS_N"
  run "many creators" "$bin" "$PER_CREATOR"
done
python3 - "$OUT" <<'EOF'
import json, sys
print(f"{'binary':<36} {'run':<14} {'groups':>7} {'list bytes':>10} {'list alone':>10} {'whoami quiet p50/p99':>21} {'whoami polled p50/p99':>22} {'lists':>6}")
for line in open(sys.argv[1]):
    d = json.loads(line)
    ms = lambda k: d.get(k, 0) / 1000
    print(f"{d['binary']:<36} {d['label']:<14} {d.get('groups_created', 0):>7.0f} {d.get('list_reply_bytes', 0):>10.0f} "
          f"{ms('list_alone_p50_us'):>8.2f}ms {ms('whoami_quiet_p50_us'):>9.2f}/{ms('whoami_quiet_p99_us'):<8.2f}ms "
          f"{ms('p50_us'):>10.2f}/{ms('p99_us'):<8.2f}ms {d.get('lists', 0):>6.0f}")
EOF
