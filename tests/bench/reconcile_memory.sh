#!/usr/bin/env bash
# The reconciler's memory (docs/BENCHMARKS.md, "Reconciler memory"): usage
# `KUBEBUILDER_ASSETS=/path/to/k8s/bin bash tests/bench/reconcile_memory.sh`.
#
# On a private kube-apiserver + etcd (loopback) and a private PostgreSQL, in one run:
# creates RUNS OrchestrationRuns, each with a PARAM_BYTES parameter (CONCURRENCY creates in
# flight), then measures each release binary in turn — the baseline (the reconciler before
# the slim index, built from BASELINE_REV, or BASELINE_BIN) and this tree's — with
# `--reconcile on --kube-lookup off`: RSS idle (an empty namespace), the back-fill's peak
# (VmHWM), RSS after the list, and after each of RELISTS API-server restarts.
# tests/src/bin/reconcilemem.rs does the work; one JSON line per binary.
#
# Knobs: RUNS (10000), PARAM_BYTES (4096), CONCURRENCY (32), RELISTS (2),
# BASELINE_REV (1dac2f8), BASELINE_BIN (unset: built from BASELINE_REV), OUT (target/bench/reconcile).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
: "${RUNS:=10000}" "${PARAM_BYTES:=4096}" "${CONCURRENCY:=32}" "${RELISTS:=2}"
: "${BASELINE_REV:=1dac2f8}" "${OUT:=$ROOT/target/bench/reconcile}"
: "${KUBEBUILDER_ASSETS:?set KUBEBUILDER_ASSETS to a directory with kube-apiserver and etcd}"
mkdir -p "$OUT"

if [[ -z "${BASELINE_BIN:-}" ]]; then
  base="$OUT/baseline-src"
  if [[ ! -x "$base/target/release/dedupe-admission" ]]; then
    rm -rf "$base" && mkdir -p "$base"
    git archive "$BASELINE_REV" | tar -x -C "$base"
    (cd "$base" && cargo build --release --locked -p dedupe-admission)
  fi
  BASELINE_BIN="$base/target/release/dedupe-admission"
fi
cargo build --release --locked -p dedupe-admission
# The load generator and the harness are not what is measured: a debug build will do.
cargo build --locked -p dedupe-tests --bin reconcilemem --bin with-postgres

env -u DATABASE_URL "$ROOT/target/debug/with-postgres" -- "$ROOT/target/debug/reconcilemem" \
  --runs "$RUNS" --param-bytes "$PARAM_BYTES" --concurrency "$CONCURRENCY" --relists "$RELISTS" \
  --binary "baseline=$BASELINE_BIN" --binary "this=$ROOT/target/release/dedupe-admission" \
  | tee "$OUT/runs-$RUNS.jsonl"
