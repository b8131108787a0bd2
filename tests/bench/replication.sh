#!/usr/bin/env bash
# Replication benchmark (docs/BENCHMARKS.md, "Synchronous standby"): usage
# `bash tests/bench/replication.sh`.
#
# What a synchronous standby costs the claim path. Builds the release binaries once, starts a
# private primary and a streaming standby (pg_basebackup -R) from the installed PostgreSQL
# binaries, both durable (fsync=on, synchronous_commit=on), dev certificates and the real
# dedupe-admission on loopback against the primary; then, in ONE run against the same servers,
# alternates the standby between asynchronous (synchronous_standby_names = '') and synchronous
# ('*', reloaded, waited for sync_state = sync) and runs loadgen (tests/src/bin/loadgen/):
#   async-max / sync-max    max-rate, every request a new delivery (claimed): claims/s and p99;
#   async-rate / sync-rate  fixed-rate open loop at BENCH_RATE req/s: p99 at a steady load.
# The machine's load average and busy CPU are recorded per scenario. Everything it starts is
# stopped on exit. Results: BENCH_OUT (default target/bench/replication/): one JSON per
# scenario and summary.md (the table for the docs).
#
# Knobs (environment): BENCH_CONNECTIONS (16), BENCH_DURATION_SECS (15), BENCH_WARMUP_SECS (5),
# BENCH_RATE (300), BENCH_OUT, BENCH_SKIP_BUILD=1 (reuse target/release), PG_BIN.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
REL="$ROOT/target/release"

: "${BENCH_CONNECTIONS:=16}"
: "${BENCH_DURATION_SECS:=15}"
: "${BENCH_WARMUP_SECS:=5}"
: "${BENCH_RATE:=300}"
: "${BENCH_OUT:=$ROOT/target/bench/replication}"
: "${BENCH_SKIP_BUILD:=0}"

for tool in jq psql python3; do
  command -v "$tool" >/dev/null || { echo "replication.sh: needs $tool on PATH" >&2; exit 1; }
done
if [[ "$BENCH_SKIP_BUILD" != 1 ]]; then
  echo "== building release binaries (once; ~7 min cold on 2 cores)"
  cargo build --release --locked -p dedupe-admission -p dedupe-tests -p certs-dev
fi

# The server binaries: $PG_BIN, else initdb's real directory (PATH may hold symlinks), else
# the newest /usr/lib/postgresql/*/bin.
if [[ -z "${PG_BIN:-}" ]]; then
  if command -v initdb >/dev/null; then
    PG_BIN="$(dirname "$(readlink -f "$(command -v initdb)")")"
  else
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  fi
fi
[[ -x "$PG_BIN/pg_basebackup" ]] || { echo "replication.sh: no pg_basebackup in PG_BIN=$PG_BIN" >&2; exit 1; }

# initdb refuses root: run the servers as the postgres user then.
AS_PG=()
if [[ "$(id -u)" == 0 ]]; then AS_PG=(runuser -u postgres --); fi

WORK="$(mktemp -d /tmp/dedupe-bench-repl-XXXXXX)"
[[ ${#AS_PG[@]} -gt 0 ]] && chown postgres: "$WORK"
mkdir -p "$BENCH_OUT"
rm -f "$BENCH_OUT"/*.json "$BENCH_OUT"/summary.md
WEBHOOK_PID=""
STARTED=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cleanup() {
  if [[ -n "$WEBHOOK_PID" ]]; then kill -TERM "$WEBHOOK_PID" 2>/dev/null || true; wait "$WEBHOOK_PID" 2>/dev/null || true; fi
  for data in "${STARTED[@]}"; do "${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

P1="$(free_port)"
P2="$(free_port)"
PRIMARY="postgres://postgres@127.0.0.1:$P1/postgres"

echo "== primary on $P1, standby on $P2 ($PG_BIN)"
"${AS_PG[@]}" "$PG_BIN/initdb" -D "$WORK/primary" -U postgres --auth=trust -E UTF8 --no-locale --no-instructions >/dev/null
# Durable on both sides: the comparison is what the standby's round trip adds to a commit.
cat >>"$WORK/primary/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 100
shared_buffers = 128MB
fsync = on
synchronous_commit = on
wal_level = replica
max_wal_senders = 10
synchronous_standby_names = ''
EOF
"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$WORK/primary" -o "-p $P1" -l "$WORK/primary.log" -w start >/dev/null
STARTED+=("$WORK/primary")
"${AS_PG[@]}" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$P1" -U postgres -D "$WORK/standby" -R -X stream -c fast
"${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$WORK/standby" -o "-p $P2" -l "$WORK/standby.log" -w start >/dev/null
STARTED+=("$WORK/standby")

# Sets synchronous_standby_names on the primary and waits until the standby reports STATE.
replication() { # NAMES STATE
  psql "$PRIMARY" -qAt -c "ALTER SYSTEM SET synchronous_standby_names = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
  for _ in $(seq 1 300); do
    [[ "$(psql "$PRIMARY" -qAt -c "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'")" == "$2" ]] && return 0
    sleep 0.1
  done
  echo "replication.sh: the standby never became $2" >&2; exit 1
}

"$REL/certs-dev" --out "$WORK/certs" --dns localhost --ip 127.0.0.1 >/dev/null 2>&1
LOG="$WORK/webhook.log"
env DATABASE_URL="$PRIMARY" "$REL/dedupe-admission" --kube-lookup off --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --log-format json \
  --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" </dev/null >"$LOG" 2>&1 &
WEBHOOK_PID=$!
LINE=""
for _ in $(seq 1 300); do
  LINE="$(grep -m1 '"dedupe-admission serving"' "$LOG" || true)"
  [[ -n "$LINE" ]] && break
  kill -0 "$WEBHOOK_PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$LINE" ]] || { cat "$LOG" >&2; echo "replication.sh: webhook did not start" >&2; exit 1; }
LISTEN="$(jq -r .listen <<<"$LINE")"

machine_ticks() { awk '/^cpu /{ print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat; }

run() { # NAME async|sync LOADGEN-ARGS...
  local name="$1" mode="$2" before after load; shift 2
  if [[ "$mode" == sync ]]; then replication '*' sync; else replication '' async; fi
  echo "== $name ($mode standby)"
  read -r -a before <<<"$(machine_ticks)"
  "$REL/loadgen" run --target "$LISTEN" --ca "$WORK/certs/ca.crt" --server-name localhost \
    --connections "$BENCH_CONNECTIONS" --duration-secs "$BENCH_DURATION_SECS" \
    --warmup-secs "$BENCH_WARMUP_SECS" --label "$name" --json "$@" >"$WORK/$name.json"
  read -r -a after <<<"$(machine_ticks)"
  load="$(cut -d' ' -f1 /proc/loadavg)"
  jq --arg standby "$mode" --argjson load "$load" \
    --argjson busy $(( after[0] - before[0] )) --argjson total $(( after[1] - before[1] )) \
    '. + {standby: $standby, loadavg_1m_after: $load, machine_busy_pct: ($busy * 100 / $total)}' \
    "$WORK/$name.json" >"$BENCH_OUT/$name.json"
  jq -r '"   \(.throughput_rps | floor) claims/s, ok \(.ok), errors \(.errors); ms p50 \(.latency_ms.p50) p99 \(.latency_ms.p99) max \(.latency_ms.max); machine busy \(.machine_busy_pct | floor)%, load \(.loadavg_1m_after)"' \
    "$BENCH_OUT/$name.json"
}

echo "== machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
run async-max async --mode max-rate --deliveries new
run sync-max sync --mode max-rate --deliveries new
run async-rate async --mode fixed-rate --rate "$BENCH_RATE" --deliveries new
run sync-rate sync --mode fixed-rate --rate "$BENCH_RATE" --deliveries new

{
  echo "| scenario | standby | claims/s | p50 ms | p99 ms | max ms | errors | machine busy | load (1 min) |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for name in async-max sync-max async-rate sync-rate; do
    jq -r '"| \(.label) | \(.standby) | \(.throughput_rps | round) | \(.latency_ms.p50 * 100 | round / 100) | \(.latency_ms.p99 * 100 | round / 100) | \(.latency_ms.max * 10 | round / 10) | \(.errors) | \(.machine_busy_pct | round) % | \(.loadavg_1m_after) |"' \
      "$BENCH_OUT/$name.json"
  done
} >"$BENCH_OUT/summary.md"
echo
cat "$BENCH_OUT/summary.md"
