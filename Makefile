# The two ways in: `make demo` and `make test` (see README.md).
# Both use DATABASE_URL when set, else a PostgreSQL at 127.0.0.1:5432, else a private
# throwaway PostgreSQL started from the installed server binaries (tests/src/bin/with-postgres.rs).
# With KUBEBUILDER_ASSETS set (a directory holding kube-apiserver and etcd, envtest's layout),
# `make test` also starts a real Kubernetes control plane for the kube_* tests
# (tests/src/bin/with-kube.rs); without it those tests are skipped, and it says so.

CARGO ?= cargo
# One build profile for everything (dev): CI builds once and the tests reuse it. The
# wrappers are run as built, not through `cargo run`: a cargo started by `cargo run` inherits
# its CARGO_* environment and would rebuild crates whose fingerprints read it.
BIN = $(or $(CARGO_TARGET_DIR),target)/debug
WITH_PG = $(BIN)/with-postgres --
WITH_KUBE = $(BIN)/with-kube --
# The real-API-server tests: test binaries named kube_*.
KUBE_TEST_FILES = $(wildcard tests/tests/kube_*.rs)
NON_KUBE_TEST_TARGETS = $(patsubst tests/tests/%.rs,--test %,$(filter-out $(KUBE_TEST_FILES),$(wildcard tests/tests/*.rs)))
KUBE_SKIPPED = echo "make: skipped $$(cat $(KUBE_TEST_FILES) | grep -c '^\#\[tokio::test') real-API-server tests ($(notdir $(KUBE_TEST_FILES))): KUBEBUILDER_ASSETS is not set. To run them, point it at a directory with kube-apiserver and etcd, e.g. KUBEBUILDER_ASSETS=\$$(setup-envtest use 1.32 -p path) make test"

.PHONY: test demo lint unit build chart-test

## test: formatting, clippy, then every test (unit, store, end-to-end, real API server, chart)
test: lint unit chart-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

build:
	$(CARGO) build --locked --workspace

# The end-to-end tests run the real binaries from target/debug, so build them first
# (the same dev profile the tests use: one build for both).
unit: build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		if [ -n "$$KUBEBUILDER_ASSETS" ]; then \
			$(WITH_PG) $(WITH_KUBE) $(CARGO) nextest run --locked --workspace --no-fail-fast; \
		else \
			$(WITH_PG) $(CARGO) nextest run --locked --workspace --no-fail-fast -E 'not binary(/^kube_/)'; \
			status=$$?; $(KUBE_SKIPPED); exit $$status; \
		fi; \
	else \
		echo "cargo-nextest not found; using cargo test (install: cargo install cargo-nextest --locked)"; \
		if [ -n "$$KUBEBUILDER_ASSETS" ]; then \
			$(WITH_PG) $(WITH_KUBE) $(CARGO) test --locked --workspace --no-fail-fast; \
		else \
			$(WITH_PG) $(CARGO) test --locked --workspace --exclude dedupe-tests --no-fail-fast && \
			$(WITH_PG) $(CARGO) test --locked -p dedupe-tests --lib --bins $(NON_KUBE_TEST_TARGETS) --no-fail-fast; \
			status=$$?; $(KUBE_SKIPPED); exit $$status; \
		fi; \
	fi

## demo: starts the webhook over TLS against PostgreSQL, replays a duplicate delivery, runs the pruner
demo: build
	$(WITH_PG) $(BIN)/demo

## chart-test: the Helm chart, offline (no helm binary, no cluster): lint, render, schema,
## Kubernetes 1.33 validation, and the flags/env it passes checked against the binaries' --help;
## the PrometheusRule's alerts unit-tested with promtool; the kubectl-dedupe plugin; and, with
## KUBEBUILDER_ASSETS set, the rendered chart applied server-side to a real kube-apiserver.
## Python >= 3.10 with pip; the pinned tools go into a project-local venv, installed once.
## promtool comes from PATH, else from Debian's `prometheus` package, extracted into the venv
## (tests/chart/install-promtool.sh; apt-get update on a fresh machine needs root, as CI runs).
PYTHON ?= python3
VENV ?= .venv
CHART_TEST_DEPS = $(VENV)/.chart-test-deps
PROMTOOL = $(VENV)/bin/promtool
CHART_ENV = PROMTOOL=$(abspath $(PROMTOOL)) PYTHONDONTWRITEBYTECODE=1
CHART_PYTEST = $(VENV)/bin/python -m pytest -c tests/chart/pytest.ini tests/chart

# Builds the whole workspace, as `unit` does: the same feature set, so after `unit` this
# is a no-op (building two packages alone would unify features differently and rebuild).
chart-test: $(CHART_TEST_DEPS) $(PROMTOOL) build
	@if [ -n "$$KUBEBUILDER_ASSETS" ]; then $(CHART_ENV) $(WITH_KUBE) $(CHART_PYTEST); else $(CHART_ENV) $(CHART_PYTEST); fi

$(PROMTOOL): tests/chart/install-promtool.sh | $(CHART_TEST_DEPS)
	sh tests/chart/install-promtool.sh $@

$(CHART_TEST_DEPS): tests/chart/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "chart-test needs Python >= 3.10 with pip and venv (set PYTHON=...)"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/chart/requirements.txt
	@touch $@
