#!/usr/bin/env bash
# The pruner benchmark (docs/BENCHMARKS.md, "Pruner"). Not a test: run it by hand.
#
#   tests/bench/pruner.sh
#
# Seeds ROWS claims of which EXPIRED are past the 7-day retention, then, in the same run,
# on identical data each time:
#   1. a baseline: a fixed-rate stream of claims (pgbench running the webhook's own claim
#      statement, with the webhook's application_name) with nothing else going on -> its p99;
#   2. with no claim traffic: the release dedupe-pruner for each of QUIET_CONFIGS, and one
#      single `DELETE ... WHERE claimed_at < cutoff` -> throughput ratio (target >= 0.7);
#   3. for each of CONFIGS: the stream alone for PAIRED_SECONDS (a paired baseline), then the
#      pruner with the stream still running -> throughput, the longest batch transaction
#      (from its per-batch events), the stream's p99 during the prune against the p99 just
#      before it; then the single DELETE with the stream running.
# and prints a table, then on its last line the issue's ratios: quiet default / DELETE
# (>= 0.7), the default's claims p99 during / before (<= 1.2), its longest batch (<= 250 ms)
# and its throughput against fixed pacing (>= 1.0).
#
# Knobs (environment):
#   ROWS=2000000 EXPIRED=1000000  table size and how much of it is expired
#   CONFIGS="default fixed"       pruner configurations run with the claim stream: "default"
#                                 (adaptive pacing), "fixed" (default size and pause, fixed
#                                 pacing), "quietNx" (adaptive with --quiet-batch-factor N)
#                                 or BATCH:PAUSE_MS pairs (fixed pacing),
#                                 e.g. CONFIGS="default fixed 5000:0 10000:10"
#   QUIET_CONFIGS="default"       configurations run with no claim traffic (same names)
#   RATE=200 CLIENTS=4            the claim stream: claims per second, connections
#   BASELINE_SECONDS=30           length of the separate baseline stream at the start
#   PAIRED_SECONDS=10             stream alone right before each prune (the paired baseline:
#                                 other load on a shared machine drifts over minutes)
#   OUT=target/bench/pruner       where logs and the result table go
#   PRUNER=path                   a pruner binary to use instead of building the release one
#
# Everything runs on 127.0.0.1: a private PostgreSQL started by with-postgres (removed at
# the end), the pruner and pgbench. Every load stops by itself (pgbench -T bounds).
set -euo pipefail
[[ -z ${TRACE:-} ]] || set -x

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

if [[ "${1:-}" != "--inner" ]]; then
    cd "$root"
    echo "== building the release pruner (slow the first time) and loadgen (it writes the claim script)" >&2
    if [[ -z ${PRUNER:-} ]]; then cargo build --release -p dedupe-pruner; fi
    cargo build -q -p dedupe-tests --bin loadgen
    with_pg=""
    for candidate in target/release/with-postgres target/debug/with-postgres; do
        if [[ -x $candidate ]]; then with_pg=$candidate; break; fi
    done
    if [[ -z $with_pg ]]; then
        cargo build -p dedupe-tests --bin with-postgres
        with_pg=target/debug/with-postgres
    fi
    # A private server, not whatever DATABASE_URL points at.
    unset DATABASE_URL
    exec "$with_pg" -- "$0" --inner "$@"
fi

cd "$root"
ROWS=${ROWS:-2000000}
EXPIRED=${EXPIRED:-1000000}
CONFIGS=${CONFIGS:-default fixed}
QUIET_CONFIGS=${QUIET_CONFIGS:-default}
RATE=${RATE:-200}
CLIENTS=${CLIENTS:-4}
BASELINE_SECONDS=${BASELINE_SECONDS:-30}
OUT=${OUT:-$root/target/bench/pruner}
WARMUP=3     # seconds of stream before the measured window (connections, prepares)
PAIRED_SECONDS=${PAIRED_SECONDS:-10}  # stream alone right before each prune: its paired baseline
SETTLE=3     # seconds of stream after it: pgbench is stopped with SIGTERM (a background job
             # ignores SIGINT) and loses its unflushed log tail, which must lie outside the window
STREAM_CAP=1800  # pgbench -T: the stream stops by itself even if this script dies

: "${DATABASE_URL:?with-postgres sets DATABASE_URL}"
case $DATABASE_URL in
    *127.0.0.1* | *localhost*) ;;
    *) echo "refusing to load a non-loopback database: $DATABASE_URL" >&2; exit 1 ;;
esac
# psql and pgbench: next to the server binaries with-postgres used, else on PATH, else
# the newest /usr/lib/postgresql/*/bin.
tool() {
    local dir
    for dir in ${PG_BIN:-} $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x $dir/$1 ]]; then echo "$dir/$1"; return; fi
    done
    command -v "$1" || { echo "$1 not found (install the PostgreSQL client tools)" >&2; exit 1; }
}
psql_bin=$(tool psql)
pgbench_bin=$(tool pgbench)
pruner=${PRUNER:-$root/target/release/dedupe-pruner}
command -v jq >/dev/null || { echo "jq is required (apt-get install jq)" >&2; exit 1; }
schema=bench_pruner
sep='?'; [[ $DATABASE_URL == *\?* ]] && sep='&'
pruner_url="${DATABASE_URL}${sep}options=-csearch_path%3D${schema}"
export PGOPTIONS="-c search_path=${schema}"
mkdir -p "$OUT"
rm -f "$OUT"/*.log.* "$OUT"/*.jsonl "$OUT"/*.txt

psql() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$DATABASE_URL" "$@"; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $* }"; }

stream_pid=""
cleanup() { if [[ -n $stream_pid ]]; then kill -TERM "$stream_pid" 2>/dev/null || true; wait "$stream_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

# --- the claim stream: the webhook's claim statement (CLAIM_INSERT, shared/sql/claim_insert.sql), verbatim, as
# `loadgen pgbench-script` writes it for the webhook benchmark too: a new delivery per
# claim; loadgen prints the fixed parameters as name=value lines, passed on with -D.
claim_vars=()
while IFS= read -r var; do claim_vars+=(-D "$var"); done \
    < <("$root/target/debug/loadgen" pgbench-script --deliveries new --out "$OUT/claim.sql")

stream_start() { # name seconds
    # The webhook's application_name, as the claims' sessions have in production.
    PGAPPNAME=orchestration-dedupe "$pgbench_bin" -n -M prepared -c "$CLIENTS" -j 2 -R "$RATE" -T "$2" "${claim_vars[@]}" \
        -f "$OUT/claim.sql" --log --log-prefix="$OUT/$1.log" "$DATABASE_URL" >"$OUT/$1.pgbench.txt" 2>&1 &
    stream_pid=$!
}
stream_stop() {
    kill -TERM "$stream_pid" 2>/dev/null || true
    wait "$stream_pid" 2>/dev/null || true
    stream_pid=""
}
# "count p50 p99 max" (ms) of the claims that completed within [from, to].
latency() { # name from to
    cat "$OUT/$1".log.* | awk -v a="$2" -v b="$3" \
        '$3 ~ /^[0-9]+$/ { t = $5 + $6 / 1e6; if (t >= a && t <= b) printf "%.3f\n", $3 / 1000 }' |
        sort -n | awk '{ v[NR] = $1 } END {
            n = NR; if (n == 0) { print "0 0 0 0"; exit }
            i50 = int(n * 0.50 + 0.999999); i99 = int(n * 0.99 + 0.999999)
            printf "%d %.2f %.2f %.2f\n", n, v[i50], v[i99], v[n] }'
}

# --- identical data every time: same rows, same insert order (claimed_at order, as the
# webhook writes them), random-looking keys; expired rows 8..37 days old, the rest 0..6 ---
seed() {
    psql -c "TRUNCATE orchestration_dedupe_claims" \
        -c "INSERT INTO orchestration_dedupe_claims
                (delivery_id, scope, namespace, orchestration, run_namespace, run_name, run_uid, state,
                 claimed_at, updated_at)
            SELECT md5(i::text), 'orchestration', 'agents', 'codex-autonomous', 'agents',
                   'codex-autonomous-' || i, md5('uid' || i), 'confirmed', t, t
              FROM (SELECT i, CASE WHEN i <= $EXPIRED
                        THEN now() - interval '37 days' + make_interval(secs => i * (29 * 86400.0 / $EXPIRED))
                        ELSE now() - interval '6 days'
                             + make_interval(secs => (i - $EXPIRED) * (6 * 86400.0 / greatest($ROWS - $EXPIRED, 1)))
                        END AS t
                      FROM generate_series(1, $ROWS) i) s" \
        -c "VACUUM (ANALYZE) orchestration_dedupe_claims" \
        -c "CHECKPOINT"
    local expired
    expired=$(psql -At -c "SELECT count(*) FROM orchestration_dedupe_claims WHERE claimed_at < now() - interval '7 days'")
    [[ $expired == "$EXPIRED" ]] || { echo "seeding went wrong: $expired expired" >&2; exit 1; }
}

echo "== PostgreSQL: $(psql -At -c 'SHOW server_version'), $(nproc) cores; schema $schema" >&2
psql -c "DROP SCHEMA IF EXISTS $schema CASCADE" -c "CREATE SCHEMA $schema"
# The pruner's own migrations make the table (and its claimed_at index).
"$pruner" --database-url "$pruner_url" --log-format json --dry-run >"$OUT/migrate.jsonl"

echo "== seeding $ROWS claims, $EXPIRED expired (again before every run)" >&2
seeded=$(now)
seed
printf '   %.0f s per seeding\n' "$(calc "$(now) - $seeded")" >&2

echo "== baseline: claims at $RATE/s for ${BASELINE_SECONDS}s, nothing else running" >&2
t0=$(now)
stream_start baseline $((WARMUP + BASELINE_SECONDS))
wait "$stream_pid"; stream_pid=""
read -r base_n base_p50 base_p99 base_max <<<"$(latency baseline "$(calc "$t0 + $WARMUP")" "$(now)")"
echo "   $base_n claims: p50 $base_p50 ms, p99 $base_p99 ms, max $base_max ms" >&2

# Fresh data for one case; with the claim stream (stream=yes), the stream starts and runs
# alone for PAIRED_SECONDS first, the paired baseline: paired_from is where it began.
start_case() { # label stream
    seed
    paired_from=""
    [[ $2 == yes ]] || return 0
    stream_start "$1" "$STREAM_CAP"
    sleep "$WARMUP"
    paired_from=$(now)
    sleep "$PAIRED_SECONDS"
}
# After the case: the stream's last claims complete, then it stops.
end_case() { # stream
    [[ $1 == yes ]] || return 0
    sleep "$SETTLE"
    stream_stop
}
# The claims' figures during [t0, t1] (n p50 p99 max) and the paired baseline's p99.
case_latency() { # label t0 t1
    read -r n p50 p99 max <<<"$(latency "$1" "$2" "$3")"
    read -r _ _ pre_p99 _ <<<"$(latency "$1" "$paired_from" "$2")"
}

# One pruner run on freshly seeded data: with the claim stream (stream=yes: the paired
# baseline just before, the claims' p99 during) or without it (stream=no).
results=()
run_pruner_case() { # label stream size pause flags...
    local label=$1 stream=$2 size=$3 pause=$4; shift 4
    local flags=("$@")
    echo "== pruner $label (batch $size, pause $pause ms, ${flags[*]:-defaults}), claim stream: $stream" >&2
    start_case "$label" "$stream"
    local vacuums_before vacuums autovacuum t0 t1 load
    vacuums_before=$(psql -At -c "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'orchestration_dedupe_claims'")
    t0=$(now)
    "$pruner" --database-url "$pruner_url" --log-format json "${flags[@]}" >"$OUT/$label.jsonl"
    t1=$(now)
    end_case "$stream"
    load=$(cut -d' ' -f1 /proc/loadavg)
    vacuums=$(psql -At -c "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'orchestration_dedupe_claims'")
    autovacuum=$([[ $vacuums != "$vacuums_before" ]] && echo yes || echo no)
    local deleted loop_rps batches longest batch_p99 full left secs rps n=- p50 p99=- max=- pre_p99=-
    deleted=$(jq -r 'select(.message == "prune finished") | .deleted' "$OUT/$label.jsonl")
    loop_rps=$(jq -r 'select(.message == "prune finished") | .rows_per_second' "$OUT/$label.jsonl")
    batches=$(jq -r 'select(.message == "prune finished") | .batches' "$OUT/$label.jsonl")
    full=$(jq -r 'select(.message == "batch committed" and .pace == "full") | .batch' "$OUT/$label.jsonl" | wc -l)
    jq -r 'select(.message == "batch committed") | .batch_ms' "$OUT/$label.jsonl" | sort -n >"$OUT/$label.batch_ms.txt"
    longest=$(tail -1 "$OUT/$label.batch_ms.txt")
    batch_p99=$(awk '{ v[NR] = $1 } END { print v[int(NR * 0.99 + 0.999999)] }' "$OUT/$label.batch_ms.txt")
    left=$(psql -At -c "SELECT count(*) FROM orchestration_dedupe_claims WHERE claimed_at < now() - interval '7 days'")
    [[ $deleted == "$EXPIRED" && $left == 0 ]] || echo "   WARNING: deleted $deleted, $left expired left" >&2
    secs=$(calc "$t1 - $t0")
    rps=$(calc "$deleted / $secs")
    [[ $stream == yes ]] && case_latency "$label" "$t0" "$t1"
    printf '   deleted %s in %s batches (%s at full pace), %.2f s wall, %.0f rows/s (loop alone %s); longest batch %s ms (p99 %s); claims p99 %s ms (%s claims; %s ms just before); load %s; autovacuum during it: %s\n' \
        "$deleted" "$batches" "$full" "$secs" "$rps" "$loop_rps" "$longest" "$batch_p99" "$p99" "$n" "$pre_p99" "$load" "$autovacuum" >&2
    results+=("$label|$stream|$size|$pause|$deleted|$batches|$full|$secs|$rps|$loop_rps|$longest|$batch_p99|$n|$p99|$pre_p99|$max|$load|$autovacuum")
}

# One `DELETE ... WHERE claimed_at < cutoff` on the same freshly seeded data.
single_delete() { # label stream
    local label=$1 stream=$2 t0 t1 out
    echo "== one single DELETE ... WHERE claimed_at < cutoff, claim stream: $stream" >&2
    start_case "$label" "$stream"
    t0=$(now)
    out=$(psql -c "DELETE FROM orchestration_dedupe_claims WHERE claimed_at < now() - make_interval(days => 7)" -v QUIET=0)
    t1=$(now)
    end_case "$stream"
    local load deleted secs rps n=- p50 p99=- max=- pre_p99=-
    load=$(cut -d' ' -f1 /proc/loadavg)
    deleted=$(grep -oP 'DELETE \K[0-9]+' <<<"$out")
    secs=$(calc "$t1 - $t0")
    rps=$(calc "$deleted / $secs")
    [[ $stream == yes ]] && case_latency "$label" "$t0" "$t1"
    printf '   deleted %s in %.2f s, %.0f rows/s; claims p99 %s ms (%s claims), max %s ms; load %s\n' \
        "$deleted" "$secs" "$rps" "$p99" "$n" "$max" "$load" >&2
    results+=("$label|$stream|-|-|$deleted|1|-|$secs|$rps|-|$(printf "%.0f" "$(calc "$secs * 1000")")|-|$n|$p99|$pre_p99|$max|$load|-")
}

default_size=$(grep -oP 'DEFAULT_BATCH_SIZE: u32 = \K[0-9_]+' pruner/src/config.rs | tr -d _)
default_pause=$(grep -oP 'DEFAULT_BATCH_PAUSE_MS: u64 = \K[0-9_]+' pruner/src/config.rs | tr -d _)
# A configuration name -> "size pause flags...": `default` (adaptive pacing, the shipped
# default), `fixed` (the default size and pause, always: the pre-adaptive behaviour), or
# quietNx (adaptive, batches N times the default size while nobody claims) or
# BATCH:PAUSE_MS (fixed pacing at that size and pause).
config_args() {
    case $1 in
        default) echo "$default_size $default_pause" ;;
        fixed) echo "$default_size $default_pause --pacing fixed" ;;
        quiet*x) f=${1#quiet}; echo "$default_size $default_pause --quiet-batch-factor ${f%x}" ;;
        *) echo "${1%%:*} ${1##*:} --pacing fixed --batch-size ${1%%:*} --batch-pause-ms ${1##*:}" ;;
    esac
}

# No claim traffic: the pruner against one DELETE on the same data.
for config in $QUIET_CONFIGS; do
    read -r -a a <<<"$(config_args "$config")"
    run_pruner_case "quiet-$config" no "${a[@]}"
done
single_delete quiet-single no
# With the claim stream.
for config in $CONFIGS; do
    read -r -a a <<<"$(config_args "$config")"
    run_pruner_case "stream-$config" yes "${a[@]}"
done
single_delete stream-single yes

field() { # label index
    local r
    for r in "${results[@]}"; do
        if [[ ${r%%|*} == "$1" ]]; then IFS='|' read -r -a f <<<"$r"; echo "${f[$2]}"; return; fi
    done
    echo ""
}
ratio() { if [[ -n $1 && -n $2 && $1 != - && $2 != - ]]; then printf '%.2f' "$(calc "$1 / $2")"; else echo "-"; fi; }

{
    echo "Pruner benchmark, $(date -u +%Y-%m-%dT%H:%MZ): $ROWS claims, $EXPIRED expired; claim stream $RATE/s over $CLIENTS connections;"
    echo "PostgreSQL $(psql -At -c 'SHOW server_version') (private, fsync $(psql -At -c 'SHOW fsync')), $(nproc) cores; load = 1-minute load average after the run."
    echo "Baseline claims (no prune): $base_n claims, p50 $base_p50 ms, p99 $base_p99 ms, max $base_max ms."
    echo
    echo "| run | claim stream | batch | pause ms | deleted | batches (full pace) | wall s | rows/s (wall) | vs single DELETE, same traffic | rows/s (loop alone) | longest batch ms (<= 250) | p99 batch ms | claims during: n, p99 ms | claims p99 just before, ms | during / just before (<= 1.2) | during / baseline | claims max ms | load | autovacuum |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for r in "${results[@]}"; do
        IFS='|' read -r label stream size pause deleted batches full secs rps loop_rps longest batch_p99 n p99 pre_p99 max load autovacuum <<<"$r"
        single=$(field "$([[ $stream == yes ]] && echo stream || echo quiet)-single" 8)
        printf '| %s | %s | %s | %s | %s | %s (%s) | %.2f | %.0f | %s | %s | %s | %s | %s, %s | %s | %s | %s | %s | %s | %s |\n' \
            "$label" "$stream" "$size" "$pause" "$deleted" "$batches" "$full" "$secs" "$rps" \
            "$(ratio "$rps" "$single")" "$loop_rps" "$longest" "$batch_p99" "$n" "$p99" "$pre_p99" \
            "$(ratio "$p99" "$pre_p99")" "$(ratio "$p99" "$base_p99")" "$max" "$load" "$autovacuum"
    done
    echo
    # The issue's targets, one line: no traffic, the default against one DELETE (>= 0.7);
    # with the stream, the default's claims p99 during / just before (<= 1.2), its longest
    # batch (<= 250 ms) and its throughput against fixed pacing at the default size and pause
    # (>= 1.0; "-" when `fixed` was not among CONFIGS).
    printf 'ratios: quiet default / single DELETE = %s (>= 0.7); stream default: claims p99 during / before = %s (<= 1.2), longest batch = %s ms (<= 250), rows/s vs fixed pacing = %s (>= 1.0)\n' \
        "$(ratio "$(field quiet-default 8)" "$(field quiet-single 8)")" \
        "$(ratio "$(field stream-default 13)" "$(field stream-default 14)")" \
        "$(field stream-default 10)" \
        "$(ratio "$(field stream-default 8)" "$(field stream-fixed 8)")"
} | tee "$OUT/results.md"
echo "(logs in $OUT)" >&2
