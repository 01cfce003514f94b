# scoregraph: a gRPC inference graph that scores payment transactions in real time.
#
#   make demo    set everything up from nothing, start the graph, score live transactions, show the result
#   make test    run the whole test suite
#   make help    every target
#
# Two Python environments: .venv (the services, Feast, training; numpy 2) and .venv-triton (tritonserver from
# the nvidia-pytriton wheel and the model's runtime; numpy<2, which Triton's Python backend stub needs).
# Everything generated lands in data/, gen/ and services/predict/model_repository*/ (all git-ignored).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3.11
# Library deprecation chatter (ibis, feast) buries the progress lines.
export PYTHONWARNINGS := ignore::DeprecationWarning,ignore::FutureWarning
VENV := .venv
TRITON_VENV := .venv-triton
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
FEAST := cd services/features/feature_repo && $(CURDIR)/$(VENV)/bin/feast
SITE := $(VENV)/lib/python3.11/site-packages
BUF := node_modules/.buf/node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto' | sort)
MODEL := services/predict/model_repository/fraud_mlp/1/model.onnx

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# --- environments ------------------------------------------------------------------------------------------

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q -e ".[dev]"
	touch $@

$(TRITON_VENV)/.installed: $(VENV)/.installed
	test -x $(TRITON_VENV)/bin/python || $(UV) venv -q -p $(PYTHON) $(TRITON_VENV)
	VIRTUAL_ENV=$(TRITON_VENV) $(UV) pip install -q "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime==1.31.1"
	touch $@

env: $(VENV)/.installed $(TRITON_VENV)/.installed ## create both Python environments

# --- contracts -----------------------------------------------------------------------------------------------

gen/python/.generated: $(PROTOS) $(VENV)/.installed
	rm -rf gen/python && mkdir -p gen/python
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen/python --pyi_out=gen/python \
		--grpc_python_out=gen/python $(PROTOS)
	echo "$(CURDIR)/gen/python" > $(SITE)/scoregraph_gen.pth
	touch $@

protos: gen/python/.generated ## generate Python gRPC code from protos/ into gen/python

$(BUF):
	npm install --silent --no-save --prefix node_modules/.buf @bufbuild/buf@1.75.0

lint-protos: $(BUF) ## buf lint and format check of protos/
	$(BUF) lint protos
	$(BUF) format -d --exit-code protos

# --- data, features, model -----------------------------------------------------------------------------------

data/raw/history.parquet: $(VENV)/.installed services/synthetic/transactions.py
	$(PY) -m services.synthetic --out data/raw

data/features/transactions.parquet: data/raw/history.parquet services/features/aggregates.py
	$(PY) -m services.features.build --raw $< --out data/features

# New feature tables replace the store: incremental materialization would only add rows newer than the last run.
data/feast/materialized: data/features/transactions.parquet services/features/feature_repo/definitions.py
	rm -rf data/feast && mkdir -p data/feast
	$(FEAST) apply
	$(FEAST) materialize-incremental "$$(date -u +%Y-%m-%dT%H:%M:%S)"
	touch $@

features: data/feast/materialized ## synthetic data, feature tables, feast apply + materialize (SQLite)

$(MODEL): data/feast/materialized services/predict/training.py services/predict/triton_backend.py \
		services/predict/repository.py
	$(PY) -m services.predict.training --version 1

build: env protos features $(MODEL) ## build everything from nothing: environments, data, feature store, model
	@echo "built: data/, Feast registry and online store, Triton repositories (CPU and GPU) with model card"

# --- running ------------------------------------------------------------------------------------------------

up: build ## start tritonserver and every service; Gateway.Score on localhost:50051 until Ctrl-C
	$(PY) -m services.stack up

demo: build ## build what is missing, start the stack, score live transactions, show the result, stop
	$(PY) -m services.stack demo

bench: build ## latency and throughput of the graph beside the floors and the monolith (results/, about 14 min)
	$(PY) -m services.bench

# --- checks --------------------------------------------------------------------------------------------------

lint: $(VENV)/.installed ## ruff
	$(VENV)/bin/ruff check .

test: build lint-protos ## the whole test suite (buf lint; unit, integration against real Triton/Feast/Redis; e2e)
	$(VENV)/bin/pytest -q

test-unit: env protos ## only the tests that start no real dependency
	$(VENV)/bin/pytest -q -m "not integration and not e2e"

clean: ## remove everything generated (keeps the environments)
	rm -rf data gen results services/predict/model_repository services/predict/model_repository_gpu

.PHONY: help env protos lint-protos features build up demo bench lint test test-unit clean
