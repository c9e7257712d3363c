#!/usr/bin/env bash
# CI smoke test for herald-bench: builds herald and herald-bench (debug), starts Herald with
# a temporary configuration on free loopback ports, creates 20 accounts, runs the `chat`
# scenario (a few hundred messages) and fails if any login fails or any message is lost,
# duplicated or misrouted. The server is stopped with SIGTERM. Takes ~15 s once built.
#
#   bench/smoke.sh            (env: USERS=20 RATE=100 DURATION=3 CARGO=cargo)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
users=${USERS:-20}
rate=${RATE:-100}
duration=${DURATION:-3}
cargo=${CARGO:-cargo}

"$cargo" build --quiet -p herald -p herald-bench
target=$("$cargo" metadata --format-version 1 --no-deps 2>/dev/null |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target=${target:-$root/target}
herald=$target/debug/herald
bench=$target/debug/herald-bench

tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Port 0 everywhere: the server picks free ports and logs them.
cat >"$tmp/herald.toml" <<CFG
[server]
domains = ["example.test"]
data_dir = "$tmp/data"
shutdown_grace_secs = 2
[listen]
c2s = ["127.0.0.1:0"]
c2s_direct_tls = ["127.0.0.1:0"]
http = []
https = []
component = []
CFG

"$root/bench/create-users.sh" "$herald" "$tmp/herald.toml" example.test "$users" 2>/dev/null

env -u HERALD_LOG "$herald" -c "$tmp/herald.toml" serve >"$tmp/server.log" 2>&1 &
server_pid=$!
port=
for _ in $(seq 1 100); do
  port=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/server.log" |
    grep -o 'c2s=\[127\.0\.0\.1:[0-9]*' | head -n1 | sed 's/.*://') || true
  [ -n "$port" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "smoke: herald did not start:" >&2
    cat "$tmp/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "smoke: no c2s port in the server log:" >&2
  cat "$tmp/server.log" >&2
  exit 1
fi

status=0
"$bench" --port "$port" --domain example.test --users "$users" --arrival-rate 100 \
  --server-pid "$server_pid" --json "$tmp/chat.json" --markdown --quiet \
  chat --rate "$rate" --duration "$duration" --drain 10 || status=$?

kill -TERM "$server_pid"
if ! wait "$server_pid"; then
  echo "smoke: herald did not exit cleanly on SIGTERM" >&2
  status=1
fi
server_pid=

if [ "$status" -ne 0 ]; then
  echo "smoke: FAILED (herald-bench exit $status)" >&2
  sed 's/\x1b\[[0-9;]*m//g' "$tmp/server.log" | tail -n 20 >&2
  exit 1
fi
echo "smoke: OK"
