#!/bin/sh
# Interop tier: the herald binary driven by real slixmpp clients.
#   interop/run.sh [pytest args...]
# HERALD_BIN: binary to test (default: build target/debug/herald with cargo).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import slixmpp, pytest, pytest_asyncio, pytest_timeout' 2>/dev/null \
    || ! cmp -s "$here/requirements.txt" "$venv/.requirements.txt"; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/.requirements.txt"
fi

if [ -z "${HERALD_BIN:-}" ]; then
    (cd "$root" && cargo build -q -p herald)
    HERALD_BIN="$root/target/debug/herald"
fi
export HERALD_BIN
[ -x "$HERALD_BIN" ] || { echo "interop: $HERALD_BIN is not executable" >&2; exit 2; }

cd "$here"
# pytest.ini sets a 60 s per-test timeout (pytest-timeout) and faulthandler dumps at 50 s;
# `timeout` guards the whole run in case something outlives them.
exec timeout -k 10 300 "$venv/bin/python" -m pytest -q "$@"
