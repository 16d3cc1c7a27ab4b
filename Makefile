# The two commands a new user needs:  make up  (the local stack)  and  make test.
# Both install what they need first; nothing is installed globally.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup up test test-fast lint synth build clean

setup: $(STAMP) node_modules/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

up: setup                    ## build, publish and serve every model on 127.0.0.1:8080
	$(BIN)/onnxlift up

test: setup                  ## the whole suite: unit, infra, integration (moto), e2e (HTTP)
	$(BIN)/python -m pytest

test-fast: setup             ## everything but the tests that start the local stack
	$(BIN)/python -m pytest -m "not e2e"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint functions/inference/Dockerfile functions/sagemaker/Dockerfile

synth: setup                 ## the real cdk CLI, cdk-nag AwsSolutions on
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk synth --quiet

build: setup
	$(BIN)/onnxlift build --all

clean:
	rm -rf cdk.out .pytest_cache .ruff_cache
