# One entry point for people and CI. `make run` serves on SQLite; `make test` runs everything.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
BUF     := node_modules/.bin/buf
PROTO   := protos/costsim/analytics/v1/analytics.proto
GEN     := service/_generated
STAMP   := $(VENV)/.installed

.PHONY: help install proto proto-check lint typecheck manifests test test-fast run migrate bench soak clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

$(BUF): package.json
	npm install --no-audit --no-fund --silent
	touch $(BUF)

install: $(STAMP) $(BUF) ## Create .venv with the service and its dev tools; install buf.

proto: $(STAMP) ## Regenerate the Python code for the .proto contract.
	rm -rf $(GEN) && mkdir -p $(GEN)
	PATH=$(BIN):$$PATH $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=$(GEN) --grpc_python_out=$(GEN) \
	  --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTO)
	for d in costsim costsim/analytics costsim/analytics/v1; do touch $(GEN)/$$d/__init__.py; done
	touch $(GEN)/costsim/py.typed

proto-check: proto ## Fail when the checked-in generated code is stale.
	@git diff --exit-code --stat -- $(GEN) && test -z "$$(git status --porcelain -- $(GEN))" \
	  || { echo "generated code is stale: run 'make proto' and commit"; exit 1; }

# The Kubernetes manifests against the API schemas of the oldest and newest versions they
# target (kubernetes-validate ships the schemas; the kustomization is not an API object).
KUBE_VERSIONS ?= 1.30.0 1.37.0
MANIFESTS := $(filter-out deploy/kubernetes/kustomization.yaml,$(wildcard deploy/kubernetes/*.yaml)) \
  deploy/canary-cronjob.yaml

manifests: install ## Validate the Kubernetes manifests in deploy/ (strict schemas).
	for v in $(KUBE_VERSIONS); do $(BIN)/kubernetes-validate --strict --quiet -k $$v $(MANIFESTS) || exit 1; done

lint: install typecheck manifests ## buf lint, ruff, mypy, the Kubernetes manifests.
	$(BUF) lint
	$(BIN)/ruff check service migrations tests bench
	$(BIN)/ruff format --check service migrations tests bench

typecheck: install ## mypy --strict over the package as it is imported, and over the tests.
	rm -rf .typecheck && mkdir -p .typecheck/costsim_analytics
	for f in service/*; do ln -s ../../$$f .typecheck/costsim_analytics/; done
	ln -s ../../migrations .typecheck/costsim_analytics/migrations
	ln -s ../service/_generated/costsim .typecheck/costsim
	ln -s ../tests .typecheck/tests
	$(BIN)/mypy

test: install proto-check lint ## Everything CI runs: generated-code check, lint, all tests on SQLite and PostgreSQL.
	$(BIN)/pytest

test-fast: install ## Unit tests only.
	$(BIN)/pytest -m unit

migrate: install ## Apply the Alembic revisions to COSTSIM_DATABASE_URL (SQLite under ./var by default).
	$(BIN)/costsim-analytics migrate

run: migrate ## Install, migrate and serve on the defaults (SQLite, 127.0.0.1:50051).
	$(BIN)/costsim-analytics serve

bench: install ## Benchmarks against PostgreSQL (COSTSIM_BENCH_DATABASE_URL).
	$(PY) bench/ingest.py
	$(PY) bench/client.py
	$(PY) bench/reports.py
	$(PY) bench/auth.py
	$(PY) bench/explain.py
	$(PY) bench/tracing.py
	$(PY) bench/processes.py

SOAK_SECONDS ?= 300
soak: install ## Mixed load with a database cut and a SIGKILL on a schedule (SOAK_SECONDS, 300).
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS)

clean: ## Remove the virtualenv, node_modules and local state.
	rm -rf $(VENV) node_modules var .pytest_cache .mypy_cache .ruff_cache
