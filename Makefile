# cemesh: `make run` starts cemesh on the embedded default; `make test` runs every test.
# Both create .venv when it is missing and install what they need.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck servers console-vendor bench bench-buses bench-batch bench-costs bench-filters bench-servers bench-control-plane bench-invoker bench-oidc bench-metrics clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/cemesh serve --host $(HOST) --port $(PORT)

# The servers that tests start by themselves (PostgreSQL, ...): installed when missing.
servers:
	sh tests/support/install_servers.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: $(VENV)/.installed-dev servers lint typecheck
	$(BIN)/pytest -q

# Fetch the web console's front-end libraries again from npm (pinned in the script; needs npm).
console-vendor:
	sh deploy/console/vendor.sh

# End-to-end benchmark against its ceiling (~1 min; installs wrk when missing and root).
bench: $(VENV)/.installed-dev
	sh bench/install_wrk.sh
	$(BIN)/python bench/e2e.py

# cemesh end to end on kafka, nats, redis, pubsub beside each bus's raw client rate (~3-4 min).
bench-buses: $(VENV)/.installed-dev
	sh bench/install_wrk.sh
	$(BIN)/python bench/buses.py

# Batched ingress (100 events per request) on the memory bus beside the bare app, and on Kafka.
bench-batch: $(VENV)/.installed-dev
	sh bench/install_wrk.sh
	$(BIN)/python bench/batch.py

# Cost table: 1, 10, 100 Triggers per event and 1 KiB / 64 KiB / 1 MiB events (~3 min).
bench-costs: $(VENV)/.installed-dev
	sh bench/install_wrk.sh
	$(BIN)/python bench/cost_table.py

# Matching one event against 1,000 Triggers of mixed filter dialects (issue 6; seconds), then
# against 10,000 Triggers with the Trigger index beside the full scan (issue 14; ~1 min).
# The ingress under uvicorn and granian (and uvicorn's own settings), side by side in one run.
bench-servers: $(VENV)/.installed-dev
	sh bench/install_wrk.sh
	$(BIN)/python bench/http_servers.py

bench-filters: $(VENV)/.installed-dev
	$(BIN)/python bench/filters.py
	$(BIN)/python bench/filters.py --mix scale --triggers 10000

# Apply 1,000 Triggers, restart with 10,000, memory per Trigger (issue 14; minutes today).
bench-control-plane: $(VENV)/.installed-dev
	$(BIN)/python bench/control_plane.py

# What the function invoker adds over calling a replica directly, and cold start (issue 5).
bench-invoker: $(VENV)/.installed-dev
	$(BIN)/python bench/invoker.py

# What the per-Broker/Trigger metrics cost: the recording in process, then over HTTP (issue 15).
bench-metrics: $(VENV)/.installed-dev
	sh bench/install_wrk.sh
	$(BIN)/python bench/metrics_cost.py
	$(BIN)/python bench/metrics_overhead.py

# Ingress events/s without OIDC, with it (verified-token cache), and with every token checked.
bench-oidc: $(VENV)/.installed-dev
	sh bench/install_wrk.sh
	$(BIN)/python bench/oidc.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
