#!/usr/bin/env bash
# The per-claim cost table of docs/BENCHMARKS.md ("Per-claim cost against its targets"), every
# row beside its baseline in the same run: `KUBEBUILDER_ASSETS=/path/to/envtest/bin bash
# tests/bench/targets.sh` on a quiet machine (~15 min after the release build).
#
# Runs, in order, with one release build shared by all of them:
#   1. callgrind.sh: instructions per request (new, duplicate, new without group commit);
#   2. webhook.sh, durable phase: durable claims/s through the webhook (TLS, 32 connections)
#      against pgbench's one durable INSERT per claim, and the CPU each side spends per claim;
#   3. kubelatency.sh: p50 of creates through a real kube-apiserver, the dedupe webhook against
#      a no-op webhook (the floor), BENCH_REPEAT times (skipped without KUBEBUILDER_ASSETS);
#   4. pruner.sh, PRUNER_RUNS times with no claim traffic: the pruner against one DELETE of the
#      same expired rows.
# and prints one table. Knobs: BENCH_SKIP_BUILD=1 (reuse target/release), PRUNER_RUNS (3),
# BENCH_REPEAT (3, kubelatency), OUT (target/bench/targets). Each script's own knobs pass
# through (docs/BENCHMARKS.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
: "${BENCH_SKIP_BUILD:=0}"
: "${PRUNER_RUNS:=3}"
: "${OUT:=$ROOT/target/bench/targets}"
mkdir -p "$OUT"
command -v jq >/dev/null || { echo "targets.sh: needs jq" >&2; exit 1; }

if [[ "$BENCH_SKIP_BUILD" != 1 ]]; then
  echo "== building release binaries (~7 min cold on 2 cores)"
  cargo build --release --locked -p dedupe-admission -p dedupe-pruner -p dedupe-tests -p certs-dev
fi
export BENCH_SKIP_BUILD=1

echo "== 1/4 instructions per request (callgrind)"
BENCH_OUT="$OUT/callgrind" bash tests/bench/callgrind.sh 2>&1 | tee "$OUT/callgrind.txt" | grep 'instructions per request'

echo "== 2/4 durable claims through the webhook vs pgbench"
BENCH_PHASES=durable BENCH_OUT="$OUT/webhook" bash tests/bench/webhook.sh >"$OUT/webhook.txt" 2>&1
tail -1 "$OUT/webhook.txt"

echo "== 3/4 latency through a real kube-apiserver"
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  bash tests/bench/kubelatency.sh 2>"$OUT/kubelatency.err" | grep '^{' >"$OUT/kubelatency.jsonl" || true
  jq -c '{dedupe_minus_floor_p50_ms, claim_statement_p50_ms, floor_minus_unlabelled_p50_ms}' "$OUT/kubelatency.jsonl"
else
  echo "(skipped: KUBEBUILDER_ASSETS is not set)"
  : >"$OUT/kubelatency.jsonl"
fi

echo "== 4/4 the idle pruner vs one DELETE, $PRUNER_RUNS runs"
: >"$OUT/pruner.txt"
for i in $(seq 1 "$PRUNER_RUNS"); do
  # No stream configurations (CONFIGS is one space: none), a short stream baseline.
  QUIET_CONFIGS=default CONFIGS=" " BASELINE_SECONDS=5 OUT="$OUT/pruner-$i" \
    PRUNER="$ROOT/target/release/dedupe-pruner" bash tests/bench/pruner.sh 2>/dev/null | tail -1 | tee -a "$OUT/pruner.txt"
done

# ------------------------------------------------------------------ the table
w="$OUT/webhook/durable-new.json"
p="$OUT/webhook/pgbench-durable-insert.json"
ratio=$(jq -n --slurpfile w "$w" --slurpfile p "$p" '$w[0].throughput_rps / $p[0].tps * 100 | round / 100')
cpu=$(jq -rn --slurpfile w "$w" --slurpfile p "$p" \
  '"\($w[0].per_request_us.webhook | round) + \($w[0].per_request_us.postgres | round) (pgbench: \($p[0].per_transaction_us.pgbench | round) + \($p[0].per_transaction_us.postgres | round))"')
latency=$(jq -rs 'def range(f): map(f * 100 | round / 100) | sort | "\(first)–\(last)";
  if length == 0 then "–"
  else "\(range(.dedupe_minus_floor_p50_ms)) ms (the claim statement alone: \(range(.claim_statement_p50_ms)) ms)" end' "$OUT/kubelatency.jsonl")
pruner=$(sed -n 's/.*quiet default \/ single DELETE = \([0-9.]*\).*/\1/p' "$OUT/pruner.txt" | paste -sd' ')
{
  echo "| measure | measured | target | goal |"
  echo "| --- | --- | --- | --- |"
  echo "| durable claims/s through the webhook vs pgbench's durable insert | ${ratio}x | >= 0.8x | >= 1.0x |"
  echo "| CPU per durable claim, webhook + PostgreSQL, us | $cpu | webhook <= 30, PostgreSQL <= 25 | sum <= pgbench's |"
  echo "| added p50 latency through kube-apiserver beyond the no-op floor | $latency | <= 0.3 ms | 0 |"
  echo "| idle pruner vs one DELETE (1M expired of 2M), $PRUNER_RUNS runs | $pruner | >= 0.7x | >= 0.9x |"
  echo
  grep 'instructions per request' "$OUT/callgrind.txt"
} | tee "$OUT/table.md"
