# BEV — `make help` lists the targets.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup run status lab test test-fast lint protos protos-check deploy-files demo bench deploy-thanos deploy-starlord deploy-oracle1 \
	undeploy-thanos undeploy-starlord undeploy-oracle1 clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-16s %s\n", $$1, $$2}'

setup: ## create .venv and install everything (engines, models, dev tools); safe to re-run
	@bash scripts/setup.sh

run: ## start the whole fleet on this machine (same as `bev up`); Ctrl-C stops it
	$(VENV)/bin/bev up

status: ## print every running service instance
	$(VENV)/bin/bev status

test: ## run the whole test suite against real engines (and the web UI's unit tests)
	cd services/gateway/web && npx vitest run
	$(PY) -m pytest

test-fast: ## the suite without the slow end-to-end fleet test
	cd services/gateway/web && npx vitest run
	$(PY) -m pytest -m "not slow"

lint: ## ruff + mypy --strict over libs and services (CI runs it)
	$(VENV)/bin/ruff check libs services tests bench conftest.py
	$(VENV)/bin/mypy

protos: ## regenerate typed stubs and RPC classes from protos/ into libs/
	$(PY) -m bev.codegen --clean

deploy-files: ## regenerate deploy/<node>/docker-compose.yml, prometheus.yml, the latency rule thresholds and the Grafana dashboards from deploy/manifest.yaml and the protos
	$(VENV)/bin/bev deploy render

lab: ## the fleet as three nodes on this machine, one network namespace each (root); Ctrl-C stops it
	$(VENV)/bin/bev lab up --dir .bev-lab

demo: ## serve the demo world, start the fleet on it, run an investigation, print the report and its recall
	$(PY) -m services.swarm.demo.investigate

bench: ## run every benchmark in bench/ (each prints one JSON line last)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# DEPLOY_FLAGS: more options for `bev deploy up`, e.g. DEPLOY_FLAGS="--no-build --health-timeout 900".
deploy-thanos deploy-starlord deploy-oracle1: deploy-%: ## start that node's containers (run on the node; needs BEV_VAULT__TOKEN)
	$(VENV)/bin/bev deploy up $* $(DEPLOY_FLAGS)

undeploy-thanos undeploy-starlord undeploy-oracle1: undeploy-%: ## stop that node's containers (volumes are kept)
	$(VENV)/bin/bev deploy down $*

clean: ## remove local state (.bev, .bev-lab) — engines' data included
	rm -rf .bev .bev-lab
