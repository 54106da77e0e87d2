# Facial keypoint service: train, package, serve, test.
# `make serve` and `make test` work on a fresh clone: they create .venv and install the pins.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
INFERENCE_PORT ?= 8080
MANAGEMENT_PORT ?= 8081
METRICS_PORT ?= 8082
export HOST INFERENCE_PORT MANAGEMENT_PORT METRICS_PORT

.PHONY: serve stop status archive samples train evaluate test lint clean

$(VENV)/.runtime: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

## serve: build model_store/keypoints.mar, start TorchServe in the background, wait for a READY worker
serve: $(VENV)/.runtime samples
	$(PY) -m facekp.server start

## stop: stop the service started by `make serve` and its workers
stop: $(VENV)/.runtime
	$(PY) -m facekp.server stop

status: $(VENV)/.runtime
	$(PY) -m facekp.server status

archive: $(VENV)/.runtime
	$(PY) -m facekp.server archive

## samples: a few faces of validation people as PNG/JPEG in samples/ (git-ignored)
samples: $(VENV)/.runtime
	@test -f samples/face_0.png || $(PY) -m facekp.samples --out samples

## train: the default training recipe; writes model_store/keypoints.pt and model_card.json
train: $(VENV)/.runtime
	$(PY) train/run.py

## evaluate: score the running service over HTTP on the validation people
evaluate: $(VENV)/.runtime
	$(PY) -m facekp.evaluate --url http://$(HOST):$(INFERENCE_PORT) --split validation

## test: lint and the whole test suite (starts its own TorchServe on free ports)
test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

clean: stop
	rm -rf .serve samples model_store/*.mar
