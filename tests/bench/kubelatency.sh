#!/usr/bin/env bash
# What the webhook adds to a create through a real kube-apiserver (docs/BENCHMARKS.md, "Through
# the API server"): usage `KUBEBUILDER_ASSETS=/path/to/envtest/bin bash tests/bench/kubelatency.sh`.
#
# Builds the release binaries, starts a private PostgreSQL (durable commits, as in production,
# unless BENCH_DURABLE=0) and runs target/release/kubelatency: a private control plane, the real
# dedupe-admission and a no-op webhook on the same TLS/HTTP stack, BENCH_CREATES (300)
# sequential creates per case on one connection, the cases interleaved in rounds. Prints one
# JSON line: p50/p90/p99 of unlabelled creates (no webhook called), the floor (the no-op
# webhook) and the dedupe webhook (each create a new delivery, claimed), and dedupe - floor.
# Knobs: BENCH_CREATES (300), BENCH_DURABLE (1), BENCH_SKIP_BUILD=1 (reuse target/release),
# BENCH_WEBHOOK_ARGS (extra dedupe-admission flags). Runs BENCH_REPEAT (3) times.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
REL="$ROOT/target/release"
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
for i in $(seq 1 "$BENCH_REPEAT"); do
  # shellcheck disable=SC2086
  env -u DATABASE_URL "${durable[@]}" "$REL/with-postgres" -- \
    "$REL/kubelatency" --creates "$BENCH_CREATES" --webhook-args $BENCH_WEBHOOK_ARGS 2>/dev/null | tail -1
done
