# The two ways in: `make demo` and `make test` (see README.md).
# Both use DATABASE_URL when set, else a PostgreSQL at 127.0.0.1:5432, else a private
# throwaway PostgreSQL started from the installed server binaries (tests/src/bin/with-postgres.rs).

CARGO ?= cargo
# One build profile for everything (dev): CI builds once and the tests reuse it.
WITH_PG = $(CARGO) run --quiet --locked -p dedupe-tests --bin with-postgres --

.PHONY: test demo lint unit build chart-test

## test: formatting, clippy, then every test (unit, store, end-to-end, chart) against PostgreSQL
test: lint unit chart-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

# The end-to-end tests run the real binaries from target/debug, so build them first
# (the same dev profile the tests use: one build for both).
unit:
	$(CARGO) build --locked --workspace
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(WITH_PG) $(CARGO) nextest run --locked --workspace --no-fail-fast; \
	else \
		echo "cargo-nextest not found; using cargo test (install: cargo install cargo-nextest --locked)"; \
		$(WITH_PG) $(CARGO) test --locked --workspace --no-fail-fast; \
	fi

build:
	$(CARGO) build --locked --workspace

## demo: starts the webhook over TLS against PostgreSQL, replays a duplicate delivery, runs the pruner
demo:
	$(CARGO) build --locked --workspace
	$(WITH_PG) $(CARGO) run --quiet --locked -p dedupe-tests --bin demo

## chart-test: the Helm chart, offline (no helm binary, no cluster): lint, render, schema,
## Kubernetes 1.33 validation, and the flags/env it passes checked against the binaries' --help;
## the PrometheusRule's alerts unit-tested with promtool; the kubectl-dedupe plugin.
## Python >= 3.10 with pip; the pinned tools go into a project-local venv, installed once.
## promtool comes from PATH, else from Debian's `prometheus` package, extracted into the venv
## (tests/chart/install-promtool.sh; apt-get update on a fresh machine needs root, as CI runs).
PYTHON ?= python3
VENV ?= .venv
CHART_TEST_DEPS = $(VENV)/.chart-test-deps
PROMTOOL = $(VENV)/bin/promtool

# Builds the whole workspace, as `unit` does: the same feature set, so after `unit` this
# is a no-op (building two packages alone would unify features differently and rebuild).
chart-test: $(CHART_TEST_DEPS) $(PROMTOOL)
	$(CARGO) build --locked --workspace
	PROMTOOL=$(abspath $(PROMTOOL)) PYTHONDONTWRITEBYTECODE=1 $(VENV)/bin/python -m pytest -c tests/chart/pytest.ini tests/chart

$(PROMTOOL): tests/chart/install-promtool.sh | $(CHART_TEST_DEPS)
	sh tests/chart/install-promtool.sh $@

$(CHART_TEST_DEPS): tests/chart/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "chart-test needs Python >= 3.10 with pip and venv (set PYTHON=...)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/chart/requirements.txt
	@touch $@
