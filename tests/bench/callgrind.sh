#!/usr/bin/env bash
# Instructions per request in the webhook (docs/BENCHMARKS.md, "Instructions per request"):
# usage `bash tests/bench/callgrind.sh`. Instruction counts do not depend on what else the
# machine is doing, so this judges a change where timings on a shared 2-core machine cannot.
#
# Starts a private PostgreSQL and, for each scenario, the release dedupe-admission under
# `valgrind --tool=callgrind` twice: once for BENCH_SMALL and once for BENCH_LARGE requests
# sent by loadgen over one kept-alive HTTPS connection (one request at a time: every group
# commit batch holds one claim, so the count does not depend on timing). The difference of
# the two totals over the difference of the counts is what one more request costs, without
# start-up, TLS handshake and shutdown. Scenarios: `new` (every request a new delivery,
# claimed), `duplicate` (a redelivery of a claimed one, denied), `new-nogc` (new, with
# --group-commit false). Prints one line per scenario: instructions per request.
# Knobs: BENCH_SMALL (200), BENCH_LARGE (1200), BENCH_SCENARIOS ("new duplicate new-nogc"),
# BENCH_SKIP_BUILD=1 (reuse target/release), BENCH_OUT (target/bench/callgrind).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
REL="$ROOT/target/release"
: "${BENCH_SMALL:=200}"
: "${BENCH_LARGE:=1200}"
: "${BENCH_SCENARIOS:=new duplicate new-nogc}"
: "${BENCH_SKIP_BUILD:=0}"
: "${BENCH_OUT:=$ROOT/target/bench/callgrind}"
export BENCH_SMALL BENCH_LARGE BENCH_SCENARIOS BENCH_OUT

if [[ "${1:-}" != "--inner" ]]; then
  command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
  if [[ "$BENCH_SKIP_BUILD" != 1 ]]; then
    echo "== building release binaries (~7 min cold on 2 cores)"
    cargo build --release --locked -p dedupe-admission -p dedupe-tests -p certs-dev
  fi
  exec env -u DATABASE_URL "$REL/with-postgres" -- bash "${BASH_SOURCE[0]}" --inner
fi

mkdir -p "$BENCH_OUT"
certs="$BENCH_OUT/certs"
"$REL/certs-dev" --out "$certs" --dns localhost --ip 127.0.0.1 >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Instructions (Ir) of one webhook run that answers $2 requests of kind $1.
measure() {
  local scenario="$1" requests="$2" port metrics out pid deliveries=new
  port="$(free_port)"; metrics="$(free_port)"
  out="$BENCH_OUT/callgrind.$scenario.$requests"
  local extra=()
  [[ "$scenario" == new-nogc ]] && extra=(--group-commit false)
  [[ "$scenario" == duplicate ]] && deliveries=duplicate
  valgrind --tool=callgrind --callgrind-out-file="$out" "$REL/dedupe-admission" \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" \
    --tls-cert "$certs/tls.crt" --tls-key "$certs/tls.key" \
    --kube-lookup off --reconcile off --log-format json "${extra[@]}" \
    >"$out.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$REL/loadgen" run --target "127.0.0.1:$port" --ca "$certs/ca.crt" --connections 1 \
    --deliveries "$deliveries" --duplicate-set 16 --requests "$requests" \
    --warmup-secs 0 --duration-secs 3600 --timeout-ms 60000 --json >"$out.loadgen.json"
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^totals:|^summary:/ {print $2; exit}' "$out"
}

for scenario in $BENCH_SCENARIOS; do
  small="$(measure "$scenario" "$BENCH_SMALL")"
  large="$(measure "$scenario" "$BENCH_LARGE")"
  per=$(( (large - small) / (BENCH_LARGE - BENCH_SMALL) ))
  echo "$scenario: $per instructions per request (Ir $small for $BENCH_SMALL, $large for $BENCH_LARGE)"
done
