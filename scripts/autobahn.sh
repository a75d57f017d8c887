#!/usr/bin/env bash
# Runs the Autobahn|TestSuite fuzzing client (cases 1.* to 10.*) against `chatd --echo`.
#
# usage: scripts/autobahn.sh [CASES] [OUTDIR]
#   CASES   case patterns (default 'all,-12.*,-13.*': everything but compression, which chatd
#           does not negotiate)
#   OUTDIR  where the reports go (default: a temporary folder, printed at the end)
# env:
#   AUTOBAHN_RUN  a command that runs the fuzzing client: `$AUTOBAHN_RUN URL OUTDIR CASES`, and
#                 exits 0 only when no case FAILED (for example a local install of wstest wrapped
#                 in a script). Without it, the official Docker image is used where a Docker
#                 engine runs.
# The server runs with 16 MiB message and frame limits (the output queue cap follows), since case group 9 sends messages of up
# to 16 MiB, some in 65,536 fragments.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${1:-all,-12.*,-13.*}
OUT=${2:-$(mktemp -d)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cargo build --release --quiet
LOG="$OUT/chatd.log"
./target/release/chatd --echo --listen 127.0.0.1:0 --log-level info \
  --max-message-size 16777216 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  ADDR=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$LOG" | head -1)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "${ADDR:-}" ] || { echo "chatd did not start:"; cat "$LOG"; exit 1; }
URL="ws://$ADDR/echo"
echo "chatd --echo at $URL (pid $PID); reports in $OUT"

if [ -n "${AUTOBAHN_RUN:-}" ]; then
  $AUTOBAHN_RUN "$URL" "$OUT" "$CASES"
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  python3 - "$URL" "$CASES" > "$OUT/fuzzingclient.json" <<'PY'
import json, sys
url, cases = sys.argv[1:3]
inc = [c for c in cases.split(",") if c and not c.startswith("-")]
inc = ["*"] if inc == ["all"] else inc
exc = [c[1:] for c in cases.split(",") if c.startswith("-")]
print(json.dumps({"outdir": "/reports", "servers": [{"agent": "chatd", "url": url}],
                  "cases": inc, "exclude-cases": exc, "exclude-agent-cases": {}}))
PY
  docker run --rm --net=host -v "$OUT:/reports" crossbario/autobahn-testsuite \
    wstest -m fuzzingclient -s /reports/fuzzingclient.json
  python3 - "$OUT/index.json" <<'PY'
import json, sys, collections
d = json.load(open(sys.argv[1]))
counts = collections.Counter(r["behavior"] for cases in d.values() for r in cases.values())
print("autobahn:", dict(counts))
sys.exit(1 if counts.get("FAILED") else 0)
PY
else
  echo "No fuzzing client: set AUTOBAHN_RUN, or run where a Docker engine is available." >&2
  exit 2
fi
