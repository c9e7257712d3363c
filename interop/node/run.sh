#!/bin/sh
# Node interop tier: xmpp.js (@xmpp/client) over WebSocket and TCP, strophe.js over BOSH,
# against the herald binary. Dependencies are pinned in package-lock.json (npm ci).
#   interop/node/run.sh [node --test args...]
# HERALD_BIN: binary to test (default: build target/debug/herald with cargo).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

command -v node >/dev/null 2>&1 || { echo "interop/node: node (>= 20.10) is required" >&2; exit 2; }
if [ ! -d "$here/node_modules" ] || ! cmp -s "$here/package-lock.json" "$here/node_modules/.package-lock.json.ci"; then
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$here/package-lock.json" "$here/node_modules/.package-lock.json.ci"
fi

if [ -z "${HERALD_BIN:-}" ]; then
    (cd "$root" && cargo build -q -p herald)
    HERALD_BIN="$root/target/debug/herald"
fi
export HERALD_BIN
[ -x "$HERALD_BIN" ] || { echo "interop/node: $HERALD_BIN is not executable" >&2; exit 2; }

cd "$here"
# Each test bounds its own waits; `timeout` guards the whole run.
exec timeout -k 10 300 node --test --test-concurrency=1 --test-timeout=120000 "$@" test/
