#!/usr/bin/env bash
# Runs the transport scenarios (echo, broadcast fan-out, idle connections) against chatd, Node's
# `ws` and Bun's built-in server (uWebSockets), both installed from the npm registry into a
# temporary folder, and the echo and
# broadcast ones against a raw TCP server that moves the same bytes without WebSocket work
# (`chatd-bench raw-server`), and prints the figures side by side with ratios. Every server gets
# core 0, the load tool core 1.
#
# usage: scripts/compare.sh [OUT.jsonl]
# env:   DURATION (default 10s)  WS_VERSION (default 8.23.0)  BUN_VERSION (default 1.4.5; Bun is
#        skipped where its linux-x64 package does not run)  IDLE (default 10000)
#        ROUNDS (default 1; each round runs every server once, interleaved, and the table shows
#        medians)
set -euo pipefail
# The load tool opens every connection from 127.0.0.1 and many per user: no per-address or
# per-user connection caps (set through the environment, which older builds ignore).
export CHATD_MAX_CONNECTIONS_PER_ADDRESS=0 CHATD_MAX_CONNECTIONS_PER_USER=0
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp --suffix=.jsonl)}
DURATION=${DURATION:-10s}
WS_VERSION=${WS_VERSION:-8.23.0}
BUN_VERSION=${BUN_VERSION:-1.4.5}
IDLE=${IDLE:-10000}
ROUNDS=${ROUNDS:-1}
cargo build --release --quiet --bin chatd --bin chatd-bench
command -v node >/dev/null || { echo "node is needed for the comparison" >&2; exit 2; }

WORK=$(mktemp -d)
DATA="$WORK/data"
PID=
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
( cd "$WORK" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund "ws@$WS_VERSION" >/dev/null )
SERVERS="chatd ws"
BUN="$WORK/node_modules/@oven/bun-linux-x64/bin/bun"
if ( cd "$WORK" && npm install --silent --no-audit --no-fund "@oven/bun-linux-x64@$BUN_VERSION" >/dev/null 2>&1 ) && "$BUN" --version >/dev/null 2>&1; then
  SERVERS="chatd ws bun"
else
  echo "Bun $BUN_VERSION is not available here; comparing with ws only" >&2
fi
# The same two endpoints on Bun's server (uWebSockets underneath): publish() reaches every
# subscriber but the sender.
cat > "$WORK/bun-server.js" <<'JS'
const port = Number(process.argv[2]);
Bun.serve({
  port,
  hostname: "127.0.0.1",
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (server.upgrade(req, { data: { path } })) return;
    return new Response("not found", { status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: 16 << 20,
    backpressureLimit: 64 << 20,
    open(ws) { if (ws.data.path === "/broadcast") ws.subscribe("room"); },
    message(ws, message) {
      if (ws.data.path === "/broadcast") ws.publish("room", message);
      else ws.send(message);
    },
  },
});
console.error(`bun ${Bun.version} listening on ${port}`);
JS
# A ws server with the same two endpoints as `chatd --echo`: /echo and /broadcast.
cat > "$WORK/server.js" <<'JS'
const { WebSocketServer } = require('ws');
const port = Number(process.argv[2]);
const wss = new WebSocketServer({ port, host: '127.0.0.1', perMessageDeflate: false, maxPayload: 16 << 20 });
const room = new Set();
wss.on('connection', (sock, req) => {
  if (req.url === '/broadcast') {
    room.add(sock);
    sock.on('close', () => room.delete(sock));
    sock.on('message', (data, isBinary) => {
      for (const peer of room) if (peer !== sock) peer.send(data, { binary: isBinary });
    });
  } else {
    sock.on('message', (data, isBinary) => sock.send(data, { binary: isBinary }));
  }
});
wss.on('listening', () => console.error(`ws ${require('ws/package.json').version} listening on ${port}`));
JS

# Core pinning as a command prefix (not a function: a function in the background would be a
# subshell, and $! would name the subshell instead of the server).
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then CORE0=(taskset -c 0); CORE1=(taskset -c 1); else CORE0=(); CORE1=(); fi
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "server on $1 did not start" >&2; exit 1
}
start() {
  kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true
  case $1 in
    chatd) rm -rf "$DATA"; "${CORE0[@]}" ./target/release/chatd --listen 127.0.0.1:9331 --data-dir "$DATA" --echo \
             --log-level warn --max-message-size 16777216 --max-queued-bytes 67108864 & PID=$!; PORT=9331 ;;
    ws)    "${CORE0[@]}" node "$WORK/server.js" 9332 & PID=$!; PORT=9332 ;;
    bun)   "${CORE0[@]}" "$BUN" "$WORK/bun-server.js" 9335 & PID=$!; PORT=9335 ;;
    raw-echo) "${CORE0[@]}" ./target/release/chatd-bench --server 127.0.0.1:9333 raw-server & PID=$!; PORT=9333 ;;
    raw-broadcast) "${CORE0[@]}" ./target/release/chatd-bench --server 127.0.0.1:9334 raw-server --broadcast & PID=$!; PORT=9334 ;;
  esac
  wait_port $PORT
}
run() {
  local server=$1 label=$2; shift 2
  echo "== $server: $label" >&2
  "${CORE1[@]}" ./target/release/chatd-bench --server "127.0.0.1:$PORT" --server-pid $PID --duration "$DURATION" "$@" \
    | tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(server='$server', label='$label'); print(json.dumps(d))" >> "$OUT"
}

: > "$OUT"
# Rounds interleave the servers, so a slow spell of a shared machine hits all of them; the table
# shows each figure's median over the rounds.
for round in $(seq "$ROUNDS"); do
  for server in $SERVERS; do
    start $server
    run $server "echo 100x8 64B" echo --connections 100 --inflight 8 --size 64
    run $server "broadcast 1000 64B" broadcast --receivers 1000 --size 64
    start $server
    run $server "idle $IDLE" connect --connections "$IDLE" --path /echo --hold 2s
  done
  start raw-echo
  run raw "echo 100x8 64B" --raw echo --connections 100 --inflight 8 --size 64
  start raw-broadcast
  run raw "broadcast 1000 64B" --raw broadcast --receivers 1000 --size 64
done

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
import statistics
groups = {}
for r in rows:
    groups.setdefault((r['server'], r['label']), []).append(r)
def median_row(rs):
    keys = {k for r in rs for k, v in r.items() if isinstance(v, (int, float))}
    return {k: statistics.median(r[k] for r in rs if k in r) for k in keys}
by = {key: median_row(rs) for key, rs in groups.items()}
print(f"medians over {max(len(rs) for rs in groups.values())} round(s)")
labels = list(dict.fromkeys(r['label'] for r in rows))
def fig(r, key): return r.get(key, float('nan')) if r else float('nan')
print(f"{'scenario':<20}{'metric':<22}{'chatd':>12}{'ws':>12}{'chatd/ws':>9}{'bun':>12}{'chatd/bun':>10}{'raw TCP':>12}{'raw/chatd':>10}")
for label in labels:
    c, w, u, r = (by.get((s, label)) for s in ('chatd', 'ws', 'bun', 'raw'))
    metrics = [('per_sec', 'per second'), ('per_server_cpu_s', 'per server CPU-s'), ('p99_us', 'p99 latency us')]
    if label.startswith('idle'):
        metrics = [('rss_kib_per_conn', 'KiB per connection'), ('handshakes_per_s', 'handshakes per s')]
    for key, name in metrics:
        a, b, y, x = fig(c, key), fig(w, key), fig(u, key), fig(r, key)
        ratio = lambda p, q: p / q if q and q == q else float('nan')
        print(f"{label:<20}{name:<22}{a:>12.2f}{b:>12.2f}{ratio(a, b):>9.2f}{y:>12.2f}{ratio(a, y):>10.2f}"
              f"{x:>12.2f}{ratio(x, a):>10.2f}")
print(f"(JSON lines in {sys.argv[1]})")
PY
