#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and integration tests (SQLite and PostgreSQL),
# and the interop tiers (slixmpp; xmpp.js and strophe.js in Node). Installs and starts
# what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# PostgreSQL: the storage conformance suite and a server-level test need it. Start the
# local cluster if it is installed but stopped; install it if missing.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
# Trust auth on this machine kind; make sure the role the tests use exists.
psql -h 127.0.0.1 -U postgres -d postgres -qtAc 'select 1' >/dev/null

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test (unit, integration, storage conformance on SQLite and PostgreSQL)"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # nextest does not run doctests
  cargo test --workspace --doc -q
else
  cargo test --workspace --no-fail-fast
fi

log "server integration tests again, on PostgreSQL"
HERALD_TEST_STORAGE=postgres cargo test -p herald-server --tests -q

log "interop: slixmpp against the real binary"
cargo build -p herald -q
HERALD_BIN="$PWD/target/debug/herald" bash interop/run.sh

log "interop again, on PostgreSQL"
HERALD_TEST_STORAGE=postgres HERALD_BIN="$PWD/target/debug/herald" bash interop/run.sh

log "interop: xmpp.js (WebSocket, TCP) and strophe.js (BOSH) in Node against the real binary"
HERALD_BIN="$PWD/target/debug/herald" sh interop/node/run.sh
