# The few commands a newcomer needs. `make help` lists them; README.md explains them.
#
# Python: a virtual environment in .venv (made from python3.11), unless one is already active
# (VIRTUAL_ENV or CONDA_PREFIX), in which case that one is used. Override with VENV=path.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# ---- settings (override on the command line: make pipeline DATASET=synthetic) --------------------
PY_BASE ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null || echo python3)
VENV ?= $(or $(VIRTUAL_ENV),$(CONDA_PREFIX),.venv)
PYTHON ?= $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
EXTRAS ?= offline,backends,server,spark,dev

DATASET ?= ml-1m
RAW_DIR ?=
FALLBACK_SYNTHETIC ?= yes
S0_ARGS ?=
PROFILE ?= embedded
DATA_DIR := $(or $(RECSYS_DATA_DIR),data)

HOST ?= $(or $(RECSYS_HOST),127.0.0.1)
PORT ?= $(or $(RECSYS_PORT),5000)
WORKERS ?= $(or $(GUNICORN_WORKERS),2)
# THREADS empty: the gunicorn config chooses (3 when a role is on a server, 2 when all are in process)
THREADS ?= $(GUNICORN_THREADS)
DEMO_USERS ?= 1 2 3
PYTEST_ARGS ?=
# The live tier runs only where an outside Elasticsearch is configured; pytest reports it as not run otherwise.
TEST_TIERS ?= unit or integration or services or e2e$(if $(RECSYS_TEST_ES_URL), or live)
BENCH_ARGS ?=

COMPOSE ?= docker compose
SERVICES ?=

PACKAGES := data_exchange_center offline offline_to_online online
INSTALL_STAMP := $(VENV)/.recsys-installed
# SKIP_INSTALL=1: run the stages with the environment as it is (tests drive the Makefile this way).
SKIP_INSTALL ?=
INSTALL_DEP := $(if $(filter 1 yes,$(SKIP_INSTALL)),,install)
URL = http://$(HOST):$(PORT)
GUNICORN = RECSYS_PROFILE=$(PROFILE) RECSYS_HOST=$(HOST) RECSYS_PORT=$(PORT) \
	$(PYTHON) -m gunicorn -c python:online.main.gunicorn_conf --bind $(HOST):$(PORT) --workers $(WORKERS) $(if $(THREADS),--threads $(THREADS)) \
	--access-logfile - 'online.main.s1_server:create_app()'

export PATH := $(abspath $(VENV))/bin:$(PATH)

# The compose profile talks to the services from the host with the settings in .env.
ifeq ($(PROFILE),compose)
ifneq ($(wildcard .env),)
include .env
export $(shell sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' .env)
endif
endif

# Polls a URL until it answers, while the process PID is alive. Args: URL TIMEOUT_S PID.
define WAIT_FOR_HEALTH
import os, sys, time, urllib.request
url, timeout_s, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + timeout_s
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"the server (pid {pid}) exited before answering {url}")
    try:
        urllib.request.urlopen(url, timeout=2).read()
        sys.exit(0)
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"no answer from {url} after {timeout_s:.0f} s")
        time.sleep(0.5)
endef
export WAIT_FOR_HEALTH

# Exits 1 when something already listens on HOST:PORT. Args: HOST PORT.
define PORT_IS_FREE
import socket, sys
with socket.socket() as s:
    s.settimeout(1)
    busy = s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0
sys.exit(f"{sys.argv[1]}:{sys.argv[2]} is in use: stop that process or run with PORT=<another port>" if busy else 0)
endef
export PORT_IS_FREE

.PHONY: help install demo pipeline offline offline-to-online publish check serve test triton-venv lint bench up down \
	clean distclean

help: ## list the targets and their settings
	@echo "Usage: make TARGET [VAR=value ...]"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Settings: DATASET=$(DATASET) (ml-1m|ml-100k|ml-latest-small|ml-25m|ml-32m|synthetic)"
	@echo "          RAW_DIR=$(RAW_DIR) (a local copy of the dataset, e.g. ../shared/datasets/ml-1m)"
	@echo "          FALLBACK_SYNTHETIC=$(FALLBACK_SYNTHETIC) (yes: a failed download falls back to the synthetic dataset)"
	@echo "          S0_ARGS=$(S0_ARGS) (extra s0 flags, e.g. '--n-users 500 --seed 7' for synthetic)"
	@echo "          PROFILE=$(PROFILE) (embedded|compose)   HOST=$(HOST) PORT=$(PORT)"
	@echo "          WORKERS=$(WORKERS) THREADS=$(or $(THREADS),auto)   VENV=$(VENV)   SERVICES=$(SERVICES)"

install: $(INSTALL_STAMP) ## install the package and every extra (CPU torch first) into VENV

$(PYTHON):
	$(PY_BASE) -m venv $(VENV)

$(INSTALL_STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install $(TORCH_PIP_ARGS) "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[$(EXTRAS)]"
	@touch $@

demo: install ## install, run the whole pipeline, start the server, ask it for DEMO_USERS, stop it
	@$(MAKE) pipeline
	@$(PYTHON) -c "$$PORT_IS_FREE" $(HOST) $(PORT)
	@echo "==> starting the server on $(URL) (log: $(DATA_DIR)/reports/demo-server.log)"
	@$(GUNICORN) > $(DATA_DIR)/reports/demo-server.log 2>&1 & server_pid=$$!; \
	trap 'kill -TERM $$server_pid 2>/dev/null || true; wait $$server_pid 2>/dev/null || true' EXIT; \
	$(PYTHON) -c "$$WAIT_FOR_HEALTH" $(URL)/health 120 $$server_pid \
		|| { tail -n 40 $(DATA_DIR)/reports/demo-server.log; exit 1; }; \
	echo "==> recommendations for users $(DEMO_USERS)"; \
	$(PYTHON) -m online.main.s2_client --url $(URL) --users $(DEMO_USERS); \
	echo "==> stopping the server"
	@echo
	@echo "Metrics: $(DATA_DIR)/reports/metrics.json"
	@echo "Report:  $(DATA_DIR)/reports/report.md"

pipeline: $(INSTALL_DEP) ## every stage in order: offline, publish (PROFILE), and on embedded the check
	@$(MAKE) offline
	@$(MAKE) publish
ifeq ($(PROFILE),compose)
	@echo "==> published to the compose stores. Next: 'make up' (starts feast, triton and the service),"
	@echo "    then 'make check PROFILE=compose' (Triton scores what PyTorch scored)."
else
	@$(MAKE) check
endif

offline: $(INSTALL_DEP) ## offline stages: fetch (DATASET, RAW_DIR), split, terms, recall, features, training, report
	@echo "==> offline/preprocess/s0_fetch_data ($(DATASET))"
	$(PYTHON) -m offline.preprocess.s0_fetch_data --dataset $(DATASET) $(if $(RAW_DIR),--raw-dir $(RAW_DIR)) \
		$(if $(filter yes,$(FALLBACK_SYNTHETIC)),--fallback-synthetic) $(S0_ARGS)
	$(PYTHON) -m offline.preprocess.s1_data_split
	$(PYTHON) -m offline.preprocess.s2_term_trans
	$(PYTHON) -m offline.recall.s1_term_recall
	$(PYTHON) -m offline.recall.s2_vector_recall
	$(PYTHON) -m offline.recall.s3_item_to_item
	$(PYTHON) -m offline.rank.s1_feature_engi
	$(PYTHON) -m offline.rank.s2_model_train
	@echo "==> offline/evaluate/s1_topk_report (selects the final-score policy on validation, then evaluates)"
	$(PYTHON) -m offline.evaluate.s1_topk_report

offline-to-online: $(INSTALL_DEP) ## publish, then check offline == online scores (compose: Triton must be up)
	@$(MAKE) publish
	@$(MAKE) check

publish: $(INSTALL_DEP) ## publish the artifacts to the PROFILE's stores (users, items, features, model)
	@echo "==> offline_to_online (--profile $(PROFILE))"
	$(PYTHON) -m offline_to_online.recall.s1_user_to_redis --profile $(PROFILE)
	$(PYTHON) -m offline_to_online.recall.s2_item_to_es --profile $(PROFILE)
	$(PYTHON) -m offline_to_online.rank.s1_feature_to_feast --profile $(PROFILE)
	$(PYTHON) -m offline_to_online.rank.s2_model_to_triton --profile $(PROFILE)

check: $(INSTALL_DEP) ## the published ranker scores what PyTorch scored (ONNX Runtime; Triton on compose)
	$(PYTHON) -m offline_to_online.rank.s3_check_offline_and_online --profile $(PROFILE)

serve: install ## run the online service with gunicorn on HOST:PORT (PROFILE, WORKERS, THREADS)
	@$(PYTHON) -c "$$PORT_IS_FREE" $(HOST) $(PORT)
	$(GUNICORN)

test: install triton-venv lint ## install, set up the Triton venv, lint, type-check, run all test tiers
	@rc=0; $(PYTHON) -m pytest -m "$(TEST_TIERS)" $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); that is a failure" >&2; fi; \
	exit $$rc

triton-venv: ## make .venv-triton with nvidia-pytriton (a real tritonserver for integration tests)
	RECSYS_TRITON_PYTHON="$${RECSYS_TRITON_PYTHON:-$(PY_BASE)}" bash scripts/setup_triton_venv.sh

lint: install ## ruff on the repository, mypy on the packages
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy $(PACKAGES)

bench: install ## offline stage timings and online load benchmark (scripts/bench_*.py, BENCH_ARGS)
	$(PYTHON) scripts/bench_offline.py $(BENCH_ARGS)
	$(PYTHON) scripts/bench_online.py $(BENCH_ARGS)

up: ## docker compose up (SERVICES, default all) and wait until healthy; copies the ES CA to .certs/
	@test -f .env || { echo "no .env: run 'cp .env.example .env' and set ELASTIC_PASSWORD" >&2; exit 1; }
	@if [ -z "$(SERVICES)" ] || echo " $(SERVICES) " | grep -qE ' (feast|triton|recsys) '; then \
		test -f $(DATA_DIR)/feature_repo/feature_store.yaml \
		&& ls $(DATA_DIR)/model_repository/*/config.pbtxt >/dev/null 2>&1 \
		|| { echo "feast and triton serve the generated repositories: run 'make up SERVICES=\"redis elasticsearch\"'" \
			"then 'make pipeline PROFILE=compose' first" >&2; exit 1; }; \
	fi
	$(COMPOSE) up -d --build --wait $(SERVICES)
	@if [ -z "$(SERVICES)" ] || echo " $(SERVICES) " | grep -q ' elasticsearch '; then \
		mkdir -p .certs && echo '*' > .certs/.gitignore; \
		$(COMPOSE) cp elasticsearch:/usr/share/elasticsearch/config/certs/ca/ca.crt .certs/es-http-ca.crt; \
		echo "Elasticsearch CA certificate: .certs/es-http-ca.crt (RECSYS_ES_CA_CERTS)"; \
	fi

down: ## docker compose down (add DOWN_ARGS=-v to delete the volumes too)
	$(COMPOSE) down $(DOWN_ARGS)

clean: ## delete generated artifacts under DATA_DIR (keeps downloaded raw data) and caches
	rm -rf $(addprefix $(DATA_DIR)/,dataset preprocess recall rank reports online feature_repo model_repository model_repository_python benchmarks)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -not -path './.venv*' -prune -exec rm -rf {} +

distclean: clean ## clean, and delete downloaded raw data, .venv, .venv-triton and .certs
	rm -rf $(DATA_DIR)/raw .venv .venv-triton .certs
