#!/usr/bin/env bash
# Runs the browser test of the built-in web client (chat.test.mjs; see the notes at its top).
# Needs a built server (cargo build --release, or CHATD_BIN) and Debian's Chromium
# (apt-get install -y chromium, or CHROMIUM); installs the npm packages from the lock file.
set -euo pipefail
cd "$(dirname "$0")"

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
    echo "no Chromium at $chromium: apt-get install -y chromium (or set CHROMIUM)" >&2
    exit 1
fi

# npm ci when node_modules is missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
fi

exec node chat.test.mjs "$@"
