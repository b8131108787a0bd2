#!/usr/bin/env bash
# What the webhook adds to a create through a real kube-apiserver (docs/BENCHMARKS.md, "Through
# the API server"): usage `KUBEBUILDER_ASSETS=/path/to/envtest/bin bash tests/bench/kubelatency.sh`.
#
# Builds the release binaries, starts a private PostgreSQL (durable commits, as in production,
# unless BENCH_DURABLE=0) and runs target/release/kubelatency: a private control plane, the real
# dedupe-admission and a no-op webhook on the same TLS/HTTP stack, BENCH_CREATES (300)
# sequential creates per case on one connection, the cases interleaved in rounds. Prints one
# JSON line: p50/p90/p99 of unlabelled creates (no webhook called), the floor (the no-op
# webhook) and the dedupe webhook (each create a new delivery, claimed), and dedupe - floor;
# then, on a fresh server started the same way, the p50 of the webhook's claim statement run
# alone by pgbench on one connection (claim_statement_p50_ms): the store's share.
# Knobs: BENCH_CREATES (300), BENCH_DURABLE (1), BENCH_SKIP_BUILD=1 (reuse target/release),
# BENCH_WEBHOOK_ARGS (extra dedupe-admission flags). Runs BENCH_REPEAT (3) times.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
REL="$ROOT/target/release"

# Inside with-postgres (`--claim-roundtrip`): the store's share of the webhook's latency on
# its own. pgbench on one connection runs the webhook's claim statement (CLAIM_INSERT,
# written out by `loadgen pgbench-script`), one new delivery per transaction, sequentially
# as the creates are; prints the p50 in ms of BENCH_CREATES transactions after 30 warm-up.
if [[ "${1:-}" == "--claim-roundtrip" ]]; then
  PGBENCH=""
  for dir in ${PG_BIN:-} $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$dir/pgbench" ]]; then PGBENCH="$dir/pgbench"; PSQL="$dir/psql"; break; fi
  done
  [[ -n "$PGBENCH" ]] || { echo "kubelatency.sh: pgbench not found" >&2; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$DATABASE_URL" -c "CREATE SCHEMA roundtrip"
  PGOPTIONS="-c search_path=roundtrip" "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$DATABASE_URL" \
    -f "$ROOT/shared/migrations/0001_claims.sql"
  vars=()
  while IFS= read -r line; do vars+=(-D "$line"); done < <(
    "$REL/loadgen" pgbench-script --deliveries new --statement claim --out "$work/claim.sql")
  # The webhook's sessions: search_path aside, statement_timeout = its store timeout + 0.5 s.
  export PGOPTIONS="-c search_path=roundtrip -c statement_timeout=2500"
  (cd "$work" && "$PGBENCH" -n -M prepared -c 1 -j 1 -t $((BENCH_CREATES + 30)) --log \
    -f "$work/claim.sql" "${vars[@]}" "$DATABASE_URL" >/dev/null 2>&1)
  # pgbench --log: column 3 is the transaction's latency in µs.
  tail -n +31 "$work"/pgbench_log.* | awk '{ print $3 / 1000 }' | sort -n |
    awk '{ v[NR] = $1 } END { printf "%.3f\n", v[int((NR + 1) / 2)] }'
  exit 0
fi
: "${BENCH_CREATES:=300}"
: "${BENCH_DURABLE:=1}"
: "${BENCH_SKIP_BUILD:=0}"
: "${BENCH_REPEAT:=3}"
: "${BENCH_WEBHOOK_ARGS:=}"
[[ -n "${KUBEBUILDER_ASSETS:-}" ]] || { echo "kubelatency.sh: set KUBEBUILDER_ASSETS (kube-apiserver, etcd)" >&2; exit 1; }
if [[ "$BENCH_SKIP_BUILD" != 1 ]]; then
  echo "== building release binaries (~7 min cold on 2 cores)"
  cargo build --release --locked -p dedupe-admission -p dedupe-tests
fi
durable=()
[[ "$BENCH_DURABLE" == 1 ]] && durable=(WITH_POSTGRES_DURABLE=1)
export BENCH_CREATES
for i in $(seq 1 "$BENCH_REPEAT"); do
  # shellcheck disable=SC2086
  # A failed repeat (its stderr in target/bench/kubelatency.err) is reported and skipped.
  mkdir -p "$ROOT/target/bench"
  line="$(env -u DATABASE_URL "${durable[@]}" "$REL/with-postgres" -- \
    "$REL/kubelatency" --creates "$BENCH_CREATES" --webhook-args $BENCH_WEBHOOK_ARGS \
    2>"$ROOT/target/bench/kubelatency.err" | tail -1)" || true
  [[ "$line" == "{"* ]] || { echo "kubelatency.sh: repeat $i failed (target/bench/kubelatency.err)" >&2; continue; }
  # Right after, on a server started the same way: the claim statement alone.
  claim="$(env -u DATABASE_URL "${durable[@]}" "$REL/with-postgres" -- bash "$0" --claim-roundtrip 2>/dev/null)" || claim=null
  jq -c --argjson claim "$claim" \
    '. + {claim_statement_p50_ms: $claim,
          dedupe_minus_floor_minus_claim_p50_ms:
            (if $claim == null then null else ((.dedupe_minus_floor_p50_ms - $claim) * 1000 | round / 1000) end)}' <<<"$line"
done
