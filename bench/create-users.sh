#!/usr/bin/env bash
# Creates benchmark accounts on Herald with the CLI: PREFIX<i>@DOMAIN, password PWPREFIX<i>
# (herald-bench's defaults: user<i> / pass<i>).
#
#   bench/create-users.sh HERALD_BIN CONFIG DOMAIN COUNT [FIRST] [PREFIX] [PWPREFIX] [JOBS]
#
# Each `herald user add` opens the database and derives SCRAM keys (~10 ms), so 1000 users
# take ~10 s; JOBS (default 2) run in parallel. Accounts that already exist are skipped.
# For ejabberd use `ejabberdctl register`, for Prosody `prosodyctl register` (bench/README.md).
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
bin=$1 cfg=$2 domain=$3 count=$4
first=${5:-1} prefix=${6:-user} pwprefix=${7:-pass} jobs=${8:-2}
last=$((first + count - 1))
existing=$(mktemp)
trap 'rm -f "$existing"' EXIT
"$bin" -c "$cfg" user list "$domain" >"$existing" 2>/dev/null || true
seq "$first" "$last" | while read -r i; do
  grep -qxF "$prefix$i@$domain" "$existing" || echo "$i"
done | BIN=$bin CFG=$cfg DOMAIN=$domain PREFIX=$prefix PWPREFIX=$pwprefix \
  xargs -r -n 1 -P "$jobs" sh -c \
  'printf "%s\n" "$PWPREFIX$1" | "$BIN" -c "$CFG" user add "$PREFIX$1@$DOMAIN" --password-stdin >/dev/null' _
echo "accounts $prefix$first..$prefix$last@$domain ready" >&2
