#!/usr/bin/env bash
# Webhook benchmark (docs/BENCHMARKS.md, "Webhook"): usage `bash tests/bench/webhook.sh`.
#
# Builds the release binaries once, starts a private PostgreSQL (target/release/with-postgres),
# dev certificates and the real dedupe-admission on loopback, then in ONE run, against the same
# database server:
#   pgbench   running the webhook's own claim statement (dedupe_store::sql::CLAIM_INSERT, written out
#             by `loadgen pgbench-script`) with the same client count, -M prepared: the baseline;
#   loadgen   (tests/src/bin/loadgen/) over HTTPS keep-alive connections:
#             (a) max-rate, every request a new delivery (claimed),
#             (b) max-rate, every request a duplicate of a small claimed set (409 deny),
#             (c) fixed-rate open loop at BENCH_RATE req/s (latency from the scheduled send),
#             (d) = (a) again with the per-decision log events filtered out (what logging costs);
# and samples the webhook's RSS (VmRSS, VmHWM) and the CPU time of webhook, PostgreSQL and
# loadgen per scenario. Everything it starts is stopped on exit. Results: BENCH_OUT (default
# target/bench/webhook/): one JSON per scenario and summary.md (the table for the docs).
#
# Then, on a second private PostgreSQL with durable commits (fsync=on, synchronous_commit=on):
#   pgbench   one unique INSERT … ON CONFLICT DO NOTHING per claim (`loadgen pgbench-script
#             --statement insert`), BENCH_DURABLE_CONNECTIONS clients: the durable baseline;
#   loadgen   max-rate new deliveries and a redelivery storm (every connection sending the
#             same delivery), with group commit on and off, the webhook's pool as large as
#             the client count.
# The last line printed holds the ratios against their targets.
#
# Knobs (environment): BENCH_PHASES ("same-sql durable"), BENCH_DURABLE_CONNECTIONS (32),
# BENCH_DURABLE_POOL_SIZE (32), BENCH_CONNECTIONS (16), BENCH_DURATION_SECS (20), BENCH_WARMUP_SECS (5),
# BENCH_RATE (1000), BENCH_DUPLICATE_SET (64), BENCH_POOL_SIZE (webhook default), BENCH_OUT,
# BENCH_SKIP_BUILD=1 (reuse target/release), BENCH_TASKSET=1 (pin loadgen/pgbench to CPU 0
# and the webhook to CPU 1; PostgreSQL unpinned).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
REL="$ROOT/target/release"

: "${BENCH_CONNECTIONS:=16}"
: "${BENCH_DURATION_SECS:=20}"
: "${BENCH_WARMUP_SECS:=5}"
: "${BENCH_RATE:=1000}"
: "${BENCH_DUPLICATE_SET:=64}"
: "${BENCH_POOL_SIZE:=}"
: "${BENCH_OUT:=$ROOT/target/bench/webhook}"
: "${BENCH_SKIP_BUILD:=0}"
: "${BENCH_TASKSET:=0}"
: "${BENCH_PHASES:=same-sql durable}"
: "${BENCH_DURABLE_CONNECTIONS:=32}"
: "${BENCH_DURABLE_POOL_SIZE:=32}"
export BENCH_PHASES BENCH_DURABLE_CONNECTIONS BENCH_DURABLE_POOL_SIZE
export BENCH_CONNECTIONS BENCH_DURATION_SECS BENCH_WARMUP_SECS BENCH_RATE BENCH_DUPLICATE_SET \
  BENCH_POOL_SIZE BENCH_OUT BENCH_TASKSET

if [[ "${1:-}" != "--inner" ]]; then
  for tool in jq psql; do
    command -v "$tool" >/dev/null || { echo "webhook.sh: needs $tool on PATH" >&2; exit 1; }
  done
  if [[ "$BENCH_SKIP_BUILD" != 1 ]]; then
    echo "== building release binaries (once; ~7 min cold on 2 cores)"
    cargo build --release --locked -p dedupe-admission -p dedupe-tests -p certs-dev
  fi
  # Always a private PostgreSQL for the run, never one named by the environment: first the
  # test server's settings (fsync off) for the same-SQL comparison, then a durable one
  # (fsync=on, synchronous_commit=on) for the durable-insert comparison and the storm.
  if [[ "$BENCH_PHASES" == *same-sql* ]]; then
    env -u DATABASE_URL "$REL/with-postgres" -- bash "${BASH_SOURCE[0]}" --inner same-sql
  fi
  if [[ "$BENCH_PHASES" == *durable* ]]; then
    env -u DATABASE_URL WITH_POSTGRES_DURABLE=1 "$REL/with-postgres" -- bash "${BASH_SOURCE[0]}" --inner durable
  fi
  echo
  [[ -f "$BENCH_OUT/summary.md" ]] && cat "$BENCH_OUT/summary.md"
  [[ -f "$BENCH_OUT/durable.md" ]] && cat "$BENCH_OUT/durable.md"
  # The issue's ratios, on the last line.
  ratio() { jq -r -n --slurpfile a "$1" --slurpfile b "$2" --arg ka "$3" --arg kb "$4" \
    '($a[0][$ka] / $b[0][$kb]) * 100 | round / 100' 2>/dev/null || echo "-"; }
  j="$BENCH_OUT"
  echo "ratios: same-SQL (a) new $(ratio "$j/a-new.json" "$j/pgbench-new.json" throughput_rps tps), (b) duplicates $(ratio "$j/b-duplicate.json" "$j/pgbench-duplicate.json" throughput_rps tps); durable, ${BENCH_DURABLE_CONNECTIONS} connections: webhook new / pgbench insert = $(ratio "$j/durable-new.json" "$j/pgbench-durable-insert.json" throughput_rps tps) (>= 0.8), group commit off = $(ratio "$j/durable-new-nogc.json" "$j/pgbench-durable-insert.json" throughput_rps tps), storm / new = $(ratio "$j/durable-storm.json" "$j/durable-new.json" throughput_rps throughput_rps) (>= 0.9)"
  exit 0
fi

# ---------------------------------------------------------------- inside with-postgres
# pgbench from the server's own bin directory ($PG_BIN may hold symlinks to it), else PATH.
PGBENCH=""
if [[ -n "${PG_BIN:-}" ]]; then
  for dir in "$PG_BIN" "$(dirname "$(readlink -f "$PG_BIN/initdb")")"; do
    if [[ -x "$dir/pgbench" ]]; then PGBENCH="$dir/pgbench"; break; fi
  done
fi
: "${PGBENCH:=$(command -v pgbench || true)}"
[[ -n "$PGBENCH" ]] || { echo "webhook.sh: pgbench not found (PG_BIN=${PG_BIN:-})" >&2; exit 1; }
C="$BENCH_CONNECTIONS"
D="$BENCH_DURATION_SECS"
W="$BENCH_WARMUP_SECS"
WORK="$(mktemp -d /tmp/dedupe-bench-XXXXXX)"
mkdir -p "$BENCH_OUT"
PHASE="${2:-same-sql}"
if [[ "$PHASE" == durable ]]; then
  rm -f "$BENCH_OUT"/durable* "$BENCH_OUT"/pgbench-durable*
else
  rm -f "$BENCH_OUT"/[a-d]-*.json "$BENCH_OUT"/pgbench-new* "$BENCH_OUT"/pgbench-duplicate* "$BENCH_OUT"/pgbench-rate* "$BENCH_OUT"/summary.md
fi
DB="dedupe_bench_$$"
WEBHOOK_PID=""
SAMPLER_PID=""

stop_webhook() {
  if [[ -n "$WEBHOOK_PID" ]] && kill -0 "$WEBHOOK_PID" 2>/dev/null; then
    kill -TERM "$WEBHOOK_PID" 2>/dev/null || true
    wait "$WEBHOOK_PID" 2>/dev/null || true
  fi
  WEBHOOK_PID=""
}
cleanup() {
  if [[ -n "$SAMPLER_PID" ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  stop_webhook
  psql "$DATABASE_URL" -qAt -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ "$DATABASE_URL" =~ ^(postgres(ql)?://[^/?]*)/[^?]*(\?.*)?$ ]] ||
  { echo "webhook.sh: cannot derive a database URL from DATABASE_URL" >&2; exit 1; }
BENCH_URL="${BASH_REMATCH[1]}/$DB${BASH_REMATCH[3]}"
psql "$DATABASE_URL" -qAt -c "CREATE DATABASE $DB" >/dev/null

# The postmaster, to account PostgreSQL's CPU (its own, its live children's, its reaped children's).
PG_PID="$(head -1 "$(psql "$BENCH_URL" -qAt -c 'SHOW data_directory')/postmaster.pid")"

# Command prefixes that pin the client side to CPU 0 and the webhook to CPU 1 (BENCH_TASKSET=1).
PIN_CLIENT=()
PIN_WEBHOOK=()
if [[ "$BENCH_TASKSET" == 1 ]]; then PIN_CLIENT=(taskset -c 0); PIN_WEBHOOK=(taskset -c 1); fi

# CPU ticks (1/100 s): utime+stime of one process; of PostgreSQL; of the whole machine.
proc_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() {
  local total child
  total="$(awk '{ sub(/.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$PG_PID/stat")"
  for child in $(pgrep -P "$PG_PID" || true); do
    total=$((total + $(proc_ticks "$child")))
  done
  echo "$total"
}
machine_ticks() { awk '/^cpu /{ print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat; }

# This shell's reaped children (loadgen, pgbench): cutime+cstime.
client_ticks() { awk '{ sub(/.*\) /, ""); print $14 + $15 }' "/proc/$$/stat"; }

snapshot() { # -> "webhook postgres clients machine-busy machine-total" (ticks)
  local m w=0
  m="$(machine_ticks)"
  [[ -n "$WEBHOOK_PID" ]] && w="$(proc_ticks "$WEBHOOK_PID")"
  echo "$w $(pg_ticks) $(client_ticks) $m"
}
cpu_json() { # BEFORE AFTER -> JSON with CPU seconds over the interval
  local b a
  read -r -a b <<<"$1"
  read -r -a a <<<"$2"
  jq -n --argjson w $(( a[0] - b[0] )) --argjson p $(( a[1] - b[1] )) --argjson c $(( a[2] - b[2] )) \
    --argjson busy $(( a[3] - b[3] )) --argjson total $(( a[4] - b[4] )) \
    '{webhook_cpu_secs: ($w/100), postgres_cpu_secs: ($p/100), client_cpu_secs: ($c/100),
      machine_busy_secs: ($busy/100), machine_cpu_secs: ($total/100),
      others_cpu_secs: ((($busy - $w - $p - $c) / 100) | if . < 0 then 0 else . end),
      machine_busy_pct: (if $total > 0 then $busy * 100 / $total else null end)}'
}

sample_rss() { # PID OUT: peak VmRSS (kB) seen while running
  local pid="$1" out="$2" max=0 rss
  echo 0 >"$out"
  while kill -0 "$pid" 2>/dev/null; do
    rss="$(awk '/^VmRSS:/{ print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)"
    if (( ${rss:-0} > max )); then max="$rss"; echo "$max" >"$out"; fi
    sleep 0.2
  done
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

start_webhook() { # RUST_LOG value
  local log="$WORK/webhook.log" line="" pool=()
  [[ -n "$BENCH_POOL_SIZE" ]] && pool=(--pool-size "$BENCH_POOL_SIZE")
  "${PIN_WEBHOOK[@]}" env RUST_LOG="$1" DATABASE_URL="$BENCH_URL" "$REL/dedupe-admission" \
    --kube-lookup off --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log-format json \
    --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" "${pool[@]}" ${WEBHOOK_EXTRA_ARGS:-} \
    </dev/null >"$log" 2>&1 &
  WEBHOOK_PID=$!
  # If this shell is killed without running its EXIT trap (with-postgres answers SIGTERM with
  # SIGKILL), the webhook must not outlive it.
  local webhook="$WEBHOOK_PID"
  ( while kill -0 $$ 2>/dev/null && kill -0 "$webhook" 2>/dev/null; do sleep 1; done
    kill -TERM "$webhook" 2>/dev/null || true ) >/dev/null 2>&1 &
  for _ in $(seq 1 300); do
    line="$(grep -m1 '"dedupe-admission serving"' "$log" || true)"
    [[ -n "$line" ]] && break
    kill -0 "$WEBHOOK_PID" 2>/dev/null || { cat "$log" >&2; echo "webhook.sh: webhook exited" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n "$line" ]] || { cat "$log" >&2; echo "webhook.sh: webhook did not start" >&2; exit 1; }
  LISTEN="$(jq -r .listen <<<"$line")"
  echo "   webhook pid $WEBHOOK_PID on $LISTEN (RUST_LOG=$1)"
}

run_loadgen() { # NAME LOADGEN-ARGS...
  local name="$1" before after; shift
  echo "== webhook: $name"
  sample_rss "$WEBHOOK_PID" "$WORK/$name.rss" & SAMPLER_PID=$!
  local log_before; log_before="$(stat -c %s "$WORK/webhook.log")"
  before="$(snapshot)"
  "${PIN_CLIENT[@]}" "$REL/loadgen" run --target "$LISTEN" --ca "$WORK/certs/ca.crt" --server-name localhost \
    --connections "$C" --duration-secs "$D" --warmup-secs "$W" --label "$name" --json "$@" \
    >"$WORK/$name.loadgen.json"
  after="$(snapshot)"
  kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
  local log_bytes=$(( $(stat -c %s "$WORK/webhook.log") - log_before ))
  jq -n --slurpfile l "$WORK/$name.loadgen.json" --argjson cpu "$(cpu_json "$before" "$after")" \
    --argjson rss_kb "$(cat "$WORK/$name.rss")" --argjson hwm_kb "$(status_kb "$WEBHOOK_PID" VmHWM)" \
    --argjson log_bytes "$log_bytes" \
    '$l[0] + $cpu + {rss_peak_kb: $rss_kb, hwm_kb: $hwm_kb, log_bytes: $log_bytes}
     | . + {per_request_us: {
         webhook: (.webhook_cpu_secs * 1e6 / .completed_including_warmup),
         postgres: (.postgres_cpu_secs * 1e6 / .completed_including_warmup),
         loadgen: .loadgen_cpu_us_per_request},
         log_bytes_per_request: (.log_bytes / .completed_including_warmup)}' \
    >"$BENCH_OUT/$name.json"
  jq -r '"   \(.throughput_rps | floor) req/s, ok \(.ok), errors \(.errors) \(.errors_by_kind), missed \(.missed); ms p50 \(.latency_ms.p50) p99 \(.latency_ms.p99) p99.9 \(.latency_ms.p99_9) max \(.latency_ms.max); RSS peak \(.rss_peak_kb) kB; CPU µs/req webhook \(.per_request_us.webhook|floor) pg \(.per_request_us.postgres|floor) loadgen \(.per_request_us.loadgen|floor); machine busy \(.machine_busy_pct|floor)% (others \(.others_cpu_secs) CPU s)"' \
    "$BENCH_OUT/$name.json"
}

run_pgbench() { # NAME new|duplicate [extra pgbench args...]
  local name="$1" kind="$2" before after vars=() script; shift 2
  script="$WORK/$name.sql"
  echo "== pgbench: $name"
  local line
  while IFS= read -r line; do vars+=(-D "$line"); done < <(
    "$REL/loadgen" pgbench-script --deliveries "$kind" --duplicate-set "$BENCH_DUPLICATE_SET" \
      --statement "${PGBENCH_STATEMENT:-claim}" --out "$script")
  [[ -f "$script.setup.sql" ]] && psql "$BENCH_URL" -qAt -v ON_ERROR_STOP=1 -f "$script.setup.sql" >/dev/null
  local common=(-n -M prepared -c "$C" -j 1 -f "$script" "${vars[@]}" "$@")
  # The webhook's sessions run with statement_timeout = the store timeout + 0.5 s (db.rs,
  # default 2000 ms); pgbench's get the same, so both sides arm the same per-statement timer.
  export PGOPTIONS="-c statement_timeout=2500"
  # Warm-up, not recorded (loadgen's warm-up is the same length).
  # Both in $WORK: with --log, pgbench writes pgbench_log.* into its working directory.
  if (( W > 0 )); then
    (cd "$WORK" && "${PIN_CLIENT[@]}" "$PGBENCH" "${common[@]}" -T "$W" "$BENCH_URL" >/dev/null 2>&1)
    rm -f "$WORK"/pgbench_log.*
  fi
  before="$(snapshot)"
  (cd "$WORK" && "${PIN_CLIENT[@]}" "$PGBENCH" "${common[@]}" -T "$D" "$BENCH_URL" >"$WORK/$name.txt" 2>&1)
  after="$(snapshot)"
  unset PGOPTIONS
  cp "$WORK/$name.txt" "$BENCH_OUT/$name.txt"
  local tps processed failed avg
  tps="$(awk '/^tps = /{ print $3; exit }' "$WORK/$name.txt")"
  processed="$(awk -F': ' '/^number of transactions actually processed/{ split($2, a, "/"); print a[1]; exit }' "$WORK/$name.txt")"
  failed="$(awk -F': ' '/^number of failed transactions/{ split($2, a, " "); print a[1]; exit }' "$WORK/$name.txt")"
  avg="$(awk '/^latency average = /{ print $4; exit }' "$WORK/$name.txt")"
  [[ -n "$tps" ]] || { cat "$WORK/$name.txt" >&2; echo "webhook.sh: pgbench failed" >&2; exit 1; }
  local pct='null'
  if compgen -G "$WORK/pgbench_log.*" >/dev/null; then
    # -R with --log: per-transaction latency (col 3, µs) + schedule lag (col 7, µs) = from the
    # scheduled start, as loadgen measures it.
    pct="$(cat "$WORK"/pgbench_log.* | awk '{ print ($3 + $7) / 1000 }' | sort -n | awk '
      { v[NR] = $1 } END { n = NR; if (n == 0) { print "null"; exit }
        i50 = int(n*0.5+0.999999); i99 = int(n*0.99+0.999999); i999 = int(n*0.999+0.999999)
        printf "{\"p50\":%s,\"p99\":%s,\"p99_9\":%s,\"max\":%s}\n", v[i50], v[i99], v[i999], v[n] }')"
    rm -f "$WORK"/pgbench_log.*
  fi
  jq -n --arg name "$name" --argjson tps "$tps" --argjson processed "${processed:-0}" \
    --argjson failed "${failed:-0}" --argjson avg "${avg:-0}" --argjson latency "$pct" \
    --argjson cpu "$(cpu_json "$before" "$after")" --argjson clients "$C" --argjson d "$D" \
    '{label: $name, clients: $clients, duration_secs: $d, tps: $tps, transactions: $processed,
      failed: $failed, latency_avg_ms: $avg, latency_ms: $latency} + $cpu
     | . + {per_transaction_us: {postgres: (.postgres_cpu_secs * 1e6 / ([.transactions, 1] | max)),
                                 pgbench: (.client_cpu_secs * 1e6 / ([.transactions, 1] | max))}}' \
    >"$BENCH_OUT/$name.json"
  jq -r '"   \(.tps | floor) TPS (\(.transactions) transactions, \(.failed) failed), avg \(.latency_avg_ms) ms; CPU µs/tx PostgreSQL \(.per_transaction_us.postgres|floor) pgbench \(.per_transaction_us.pgbench|floor); machine busy \(.machine_busy_pct|floor)% (others \(.others_cpu_secs) CPU s)"' \
    "$BENCH_OUT/$name.json"
}

# ---------------------------------------------------------------- the run
echo "== machine: $(nproc) CPUs ($(awk -F': ' '/^model name/{ print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/{ printf "%.0f GiB", $2/1048576 }' /proc/meminfo)"
echo "== PostgreSQL: $(psql "$BENCH_URL" -qAt -c "SELECT current_setting('server_version') || ', fsync=' || current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit') || ', shared_buffers=' || current_setting('shared_buffers')")"
[[ "$PHASE" == durable ]] || echo "== $C connections/clients, ${W}s warm-up + ${D}s measured per scenario; taskset=$BENCH_TASKSET"
"$REL/certs-dev" --out "$WORK/certs" --dns localhost --ip 127.0.0.1 >/dev/null 2>&1

if [[ "$PHASE" == durable ]]; then
  # Durable commits: pgbench doing one unique INSERT … ON CONFLICT DO NOTHING per claim (one
  # commit, one WAL flush each) against the webhook at the same client count, the webhook's
  # pool as large; then one delivery redelivered by every connection at once.
  C="$BENCH_DURABLE_CONNECTIONS"
  BENCH_POOL_SIZE="$BENCH_DURABLE_POOL_SIZE"
  echo "== durable phase: $C connections, webhook pool $BENCH_POOL_SIZE, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  # The webhook first: its migrations make the table pgbench inserts into.
  WEBHOOK_EXTRA_ARGS="--group-commit true" start_webhook info
  PGBENCH_STATEMENT=insert run_pgbench pgbench-durable-insert new
  run_loadgen durable-new --mode max-rate --deliveries new
  run_loadgen durable-storm --mode max-rate --deliveries duplicate --duplicate-set 1
  stop_webhook
  WEBHOOK_EXTRA_ARGS="--group-commit false" start_webhook info
  run_loadgen durable-new-nogc --mode max-rate --deliveries new
  run_loadgen durable-storm-nogc --mode max-rate --deliveries duplicate --duplicate-set 1
  stop_webhook
  {
    echo
    echo "Durable ($(psql "$BENCH_URL" -qAt -c "SELECT 'fsync=' || current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit')"), $C connections, webhook pool $BENCH_POOL_SIZE):"
    echo
    echo "| scenario | req/s (TPS) | ratio | p50 / p99 / p99.9 ms | CPU µs/claim: webhook + PostgreSQL + client | errors | RSS peak | machine busy / others' CPU s |"
    echo "| --- | ---: | ---: | --- | --- | ---: | ---: | --- |"
    base="$BENCH_OUT/pgbench-durable-insert.json"
    jq -r '"| pgbench: one INSERT … ON CONFLICT DO NOTHING per claim | \(.tps | round) | 1.00 | avg \(.latency_avg_ms) | – + \(.per_transaction_us.postgres | round) + \(.per_transaction_us.pgbench | round) | \(.failed) | – | \(.machine_busy_pct | round) % / \(.others_cpu_secs) |"' "$base"
    for name in durable-new durable-new-nogc durable-storm durable-storm-nogc; do
      jq -r -n --slurpfile w "$BENCH_OUT/$name.json" --slurpfile p "$base" --arg name "$name" '
        def f(x): (x * 100 | round / 100 | tostring);
        ($w[0]) as $w | ($p[0]) as $p |
        "| webhook \($name) | \($w.throughput_rps | round) | \(f($w.throughput_rps / $p.tps)) | \(f($w.latency_ms.p50)) / \(f($w.latency_ms.p99)) / \(f($w.latency_ms.p99_9)) | \($w.per_request_us.webhook | round) + \($w.per_request_us.postgres | round) + \($w.per_request_us.loadgen | round) | \($w.errors)/\($w.requests) | \($w.rss_peak_kb / 1024 | . * 10 | round / 10) MiB | \($w.machine_busy_pct | round) % / \($w.others_cpu_secs) |"'
    done
    echo
    echo "Load average after the durable phase: $(cut -d' ' -f1-3 /proc/loadavg)."
  } >"$BENCH_OUT/durable.md"
  exit 0
fi

start_webhook info

run_pgbench pgbench-new new
run_loadgen a-new --mode max-rate --deliveries new
run_pgbench pgbench-duplicate duplicate
run_loadgen b-duplicate --mode max-rate --deliveries duplicate --duplicate-set "$BENCH_DUPLICATE_SET"
run_pgbench pgbench-rate new -R "$BENCH_RATE" --log
run_loadgen c-rate --mode fixed-rate --rate "$BENCH_RATE" --deliveries new
HWM_KB="$(status_kb "$WEBHOOK_PID" VmHWM)"
stop_webhook

# Same as (a), with the per-decision log events (target dedupe_admission::handler) filtered out.
start_webhook 'info,dedupe_admission::handler=warn'
run_loadgen d-new-nolog --mode max-rate --deliveries new
stop_webhook

# ---------------------------------------------------------------- the table
# "CPU/claim" adds up every party's CPU per request: webhook + PostgreSQL + loadgen, and for
# pgbench PostgreSQL + pgbench. Their quotient ("CPU ratio") is what the throughput ratio tends
# to on a dedicated machine where all of them share the same cores; "other load" is the CPU
# other processes on the machine used meanwhile (it depresses whichever side it hits).
{
  echo "| scenario | webhook req/s | pgbench TPS | ratio | webhook p50 / p99 / p99.9 ms | pgbench p50 / p99 ms | CPU µs/claim: webhook + PostgreSQL + loadgen | pgbench: PostgreSQL + pgbench | CPU ratio | webhook RSS peak | other load (webhook / pgbench run) |"
  echo "| --- | ---: | ---: | ---: | --- | --- | --- | --- | ---: | ---: | --- |"
  row() { # LOADGEN-JSON PGBENCH-JSON TITLE
    jq -r -n --slurpfile w "$BENCH_OUT/$1.json" --slurpfile p "$BENCH_OUT/$2.json" --arg title "$3" '
      def f(x): if x == null then "–" else (x * 100 | round / 100 | tostring) end;
      def pct(x): "\((x.others_cpu_secs * 100 / x.machine_cpu_secs) | round) %";
      ($w[0]) as $w | ($p[0]) as $p |
      ($w.per_request_us.webhook + $w.per_request_us.postgres + $w.per_request_us.loadgen) as $wc |
      ($p.per_transaction_us.postgres + $p.per_transaction_us.pgbench) as $pc |
      "| \($title) | \($w.throughput_rps | round) | \($p.tps | round) | \(if $w.mode == "max-rate" then f($w.throughput_rps / $p.tps) else "–" end) | \(f($w.latency_ms.p50)) / \(f($w.latency_ms.p99)) / \(f($w.latency_ms.p99_9)) | \(if $p.latency_ms then "\(f($p.latency_ms.p50)) / \(f($p.latency_ms.p99))" else "avg \(f($p.latency_avg_ms))" end) | \($w.per_request_us.webhook | round) + \($w.per_request_us.postgres | round) + \($w.per_request_us.loadgen | round) = \($wc | round) | \($p.per_transaction_us.postgres | round) + \($p.per_transaction_us.pgbench | round) = \($pc | round) | \(f($pc / $wc)) | \($w.rss_peak_kb / 1024 | . * 10 | round / 10) MiB | \(pct($w)) / \(pct($p)) |"'
  }
  row a-new pgbench-new "(a) max-rate, new deliveries (claimed)"
  row b-duplicate pgbench-duplicate "(b) max-rate, duplicates (409)"
  row c-rate pgbench-rate "(c) fixed $BENCH_RATE req/s, new deliveries"
  row d-new-nolog pgbench-new "(d) = (a), decision logs filtered out"
  echo
  echo "Webhook VmHWM (peak RSS since start) after (a)–(c): $(( HWM_KB / 1024 )) MiB."
  echo "Errors: $(jq -r -s 'map("\(.label) \(.errors)/\(.requests)") | join(", ")' "$BENCH_OUT"/[a-d]-*.json)."
  echo "Max latency ms: $(jq -r -s 'map("\(.label) \(.latency_ms.max * 10 | round / 10)") | join(", ")' "$BENCH_OUT"/[a-d]-*.json)."
  echo "Decision log volume: $(jq -r '.log_bytes_per_request | round' "$BENCH_OUT/a-new.json") bytes/request (JSON, stdout)."
} >"$BENCH_OUT/summary.md"
echo "Load average after the same-SQL phase: $(cut -d' ' -f1-3 /proc/loadavg)." >>"$BENCH_OUT/summary.md"
