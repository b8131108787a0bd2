#!/usr/bin/env bash
# Store-level claim benchmark (docs/BENCHMARKS.md, "Group commit"): usage `bash tests/bench/claims.sh`.
#
# On a private PostgreSQL with durable commits (fsync=on, synchronous_commit=on), in one run:
#   pgbench      one unique INSERT … ON CONFLICT DO NOTHING per claim, CALLERS clients (the
#                durable baseline: one commit, one WAL flush per claim);
#   claimbench   (tests/src/bin/claimbench.rs) CALLERS concurrent callers of ClaimStore::claim,
#                new deliveries, without group commit and with it for each IN_FLIGHT value;
#                then a redelivery storm (every caller claiming one delivery).
# No HTTP or TLS: what the store path costs. The last line holds the ratios.
#
# Knobs: CALLERS (32), POOL (32), DURATION (10 s), WARMUP (2), IN_FLIGHT ("1 2 4 8"),
# MAX_BATCH (64), OUT (target/bench/claims).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
REL="$ROOT/target/release"
: "${CALLERS:=32}" "${POOL:=32}" "${DURATION:=10}" "${WARMUP:=2}" "${IN_FLIGHT:=1 2 4 8}" "${MAX_BATCH:=64}"
: "${OUT:=$ROOT/target/bench/claims}"
export CALLERS POOL DURATION WARMUP IN_FLIGHT MAX_BATCH OUT

if [[ "${1:-}" != "--inner" ]]; then
  if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    cargo build --release --locked -p dedupe-tests --bin claimbench --bin loadgen --bin with-postgres
  fi
  exec env -u DATABASE_URL WITH_POSTGRES_DURABLE=1 "$REL/with-postgres" -- bash "${BASH_SOURCE[0]}" --inner
fi

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt
PGBENCH="$(command -v pgbench || true)"
for dir in ${PG_BIN:-} $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
  if [[ -x "$dir/pgbench" ]]; then PGBENCH="$dir/pgbench"; break; fi
done
[[ -n "$PGBENCH" ]] || { echo "claims.sh: pgbench not found" >&2; exit 1; }
echo "== PostgreSQL: $(psql "$DATABASE_URL" -qAt -c "SELECT current_setting('server_version') || ', fsync=' || current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit')"); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"

bench() { # label claimbench-args...
  local label="$1"; shift
  "$REL/claimbench" --callers "$CALLERS" --pool-size "$POOL" --duration-secs "$DURATION" \
    --warmup-secs "$WARMUP" --label "$label" "$@" >"$OUT/$label.json"
  jq -c --arg load "$(cut -d' ' -f1 /proc/loadavg)" '. + {load: $load}' "$OUT/$label.json" | tee "$OUT/$label.tmp" && mv "$OUT/$label.tmp" "$OUT/$label.json"
}

# The table exists after the first claimbench run (it migrates); pgbench needs it first.
"$REL/claimbench" --callers 1 --duration-secs 1 --warmup-secs 0 >/dev/null
vars=()
while IFS= read -r line; do vars+=(-D "$line"); done < <(
  "$REL/loadgen" pgbench-script --deliveries new --statement insert --out "$OUT/insert.sql")
(cd "$OUT" && "$PGBENCH" -n -M prepared -c "$CALLERS" -j 2 -T "$WARMUP" -f insert.sql "${vars[@]}" "$DATABASE_URL" >/dev/null 2>&1)
(cd "$OUT" && "$PGBENCH" -n -M prepared -c "$CALLERS" -j 2 -T "$DURATION" -f insert.sql "${vars[@]}" "$DATABASE_URL" >"$OUT/pgbench.txt" 2>&1)
tps="$(awk '/^tps = /{ print $3; exit }' "$OUT/pgbench.txt")"
avg="$(awk '/^latency average = /{ print $4; exit }' "$OUT/pgbench.txt")"
echo "{\"label\":\"pgbench-insert\",\"tps\":$tps,\"latency_avg_ms\":$avg,\"load\":\"$(cut -d' ' -f1 /proc/loadavg)\"}" | tee "$OUT/pgbench-insert.json"

bench plain
for f in $IN_FLIGHT; do bench "gc-$f" --group-commit --in-flight "$f" --max-batch "$MAX_BATCH"; done
bench storm-plain --storm
bench storm-gc --storm --group-commit --max-batch "$MAX_BATCH"

best="$(jq -s -r 'map(select(.group_commit and (.storm | not))) | max_by(.claims_per_sec) | .label' "$OUT"/gc-*.json)"
r() { jq -r -n --slurpfile a "$1" --argjson b "$2" '$a[0].claims_per_sec / $b * 100 | round / 100'; }
echo "ratios (vs pgbench durable insert, $CALLERS callers): plain $(r "$OUT/plain.json" "$tps"), best group commit ($best) $(r "$OUT/$best.json" "$tps"); storm plain / new plain $(jq -r -n --slurpfile a "$OUT/storm-plain.json" --slurpfile b "$OUT/plain.json" '$a[0].claims_per_sec / $b[0].claims_per_sec * 100 | round / 100')"
