# The two commands a new user needs:  make up  (the local stack)  and  make test.
# Both install what they need first; nothing is installed globally.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements/dev.lock
# checkov, in its own venv: it pins packaging<24 and boto3 ~=1.35, below dev.lock.
SCAN_VENV  := .venv-scan
SCAN_LOCK  := requirements/scan.lock
SCAN_STAMP := $(SCAN_VENV)/.installed
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup up test test-fast lint synth build clean lock image-build image-push deploy-local

setup: $(STAMP) $(SCAN_STAMP) node_modules/.installed

# Exact installs: every package from the hashed lock, nothing resolved on the day; then the
# project itself (no deps, no build isolation: its build backend is in the lock too). Not
# --no-deps for the lock: pip then installs dependencies first, and aws-cdk-lib must land after
# aws-cdk.cloud-assembly-schema, whose files it overwrites with its own.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

# The scanner venv (tests/infra/test_infra_scanners.py runs .venv-scan/bin/checkov): the same
# exact, hashed, wheels-only install, made anew whenever its lock changes.
$(SCAN_STAMP): $(SCAN_LOCK)
	rm -rf $(SCAN_VENV)
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install --quiet --require-hashes --only-binary :all: -r $(SCAN_LOCK)
	$(SCAN_VENV)/bin/pip check
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

up: setup                    ## build, publish and serve every model on 127.0.0.1:8080
	$(BIN)/onnxlift up

test: setup                  ## the whole suite: unit, infra, integration (moto), e2e (HTTP)
	$(BIN)/python -m pytest

test-fast: setup             ## no model build, no servers: unit, infra, contract (under 2 minutes)
	$(BIN)/python -m pytest -m "not e2e and not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint functions/inference/Dockerfile functions/sagemaker/Dockerfile

synth: setup                 ## the real cdk CLI, cdk-nag AwsSolutions on
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk synth --quiet

build: setup
	$(BIN)/onnxlift build --all

# The deploy rehearsal (README, "Rehearsing a deploy"): the real cdk CLI, bootstrap + deploy in
# ECR mode, against moto server on 127.0.0.1; prints what was created and what moto could not.
deploy-local: setup
	$(BIN)/onnxlift deploy-local

# The images ECR mode deploys (README, "Prebuilt images"): make image-push MODEL=minilm VERSION=3 REPO=onnxlift
image-build: setup
	$(BIN)/onnxlift image build $(MODEL) $(VERSION)

image-push: setup
	$(BIN)/onnxlift image push $(MODEL) $(VERSION) --repository $(REPO)

# Re-pin deliberately, then commit the locks on their own. torch is the CPU build on this
# machine's disk (/opt/wheels); the image locks leave out what their base images ship.
UV_LOCK := $(BIN)/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock"
BASE_IMAGE_SHIPS := boto3 botocore s3transfer jmespath python-dateutil six urllib3
# Declared dependencies serving never imports (tests/serving/test_serving_image.py serves a
# request with them blocked): tokenizers' Hub client (only from_pretrained uses it) and what
# onnxruntime needs for its tools, not for InferenceSession.
NOT_IMPORTED := huggingface-hub hf-xet fsspec httpx2 httpcore2 h11 anyio idna truststore tqdm \
	pyyaml click filelock packaging protobuf flatbuffers
lock: setup
	$(UV_LOCK) pyproject.toml requirements/build-backend.in --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links /opt/wheels -o $(LOCK)
	$(UV_LOCK) requirements/scan.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o $(SCAN_LOCK)
	$(UV_LOCK) functions/inference/requirements.in --python-version 3.12 \
		--python-platform x86_64-manylinux_2_28 $(BASE_IMAGE_SHIPS:%=--no-emit-package %) \
		$(NOT_IMPORTED:%=--no-emit-package %) -o functions/inference/requirements.txt
	$(UV_LOCK) functions/sagemaker/requirements.in --python-version 3.12 \
		--python-platform x86_64-manylinux_2_28 -o functions/sagemaker/requirements.txt

clean:
	rm -rf cdk.out .pytest_cache .ruff_cache
