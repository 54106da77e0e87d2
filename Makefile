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

$(VENV)/.runtime: requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.kserve: requirements-kserve.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-kserve.txt
	@touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime $(VENV)/.kserve
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

## serve: build model_store/keypoints.mar, start TorchServe in the background, wait for a READY worker
serve: $(VENV)/.runtime samples
	$(PY) -m facekp.torchserve start

## stop: stop the service started by `make serve` and its workers
stop: $(VENV)/.runtime
	$(PY) -m facekp.torchserve stop

.PHONY: serve-kserve stop-kserve
KSERVE_PORT ?= 8085
KSERVE_GRPC_PORT ?= 8086

## serve-kserve: the KServe predictor without TorchServe (Open Inference Protocol v2): REST on
## 127.0.0.1:$(KSERVE_PORT), gRPC on 127.0.0.1:$(KSERVE_GRPC_PORT) (KSERVE_GRPC_PORT=0: no gRPC)
serve-kserve: $(VENV)/.kserve
	$(PY) -m handler.kserve_server start --http_port $(KSERVE_PORT) --grpc_port $(KSERVE_GRPC_PORT)

stop-kserve: $(VENV)/.runtime
	$(PY) -m handler.kserve_server stop

status: $(VENV)/.runtime
	$(PY) -m facekp.torchserve status

archive: $(VENV)/.runtime
	$(PY) -m facekp.torchserve archive

## samples: a few faces of validation people as PNG/JPEG in samples/ (git-ignored), when the data set is found
samples: $(VENV)/.runtime
	@test -f samples/face_0.png || $(PY) -m facekp.samples --out samples --if-found

## train: the shipped recipe end to end (two teachers, then their student, on all 295 people: ~55 min on a 2-core Xeon with AMX; TRAIN_ARGS=--from-teachers: the student alone, ~22 min); writes model_store/keypoints.pt and model_card.json
TRAIN_ARGS ?=
train: $(VENV)/.runtime
	$(PY) train/run.py $(TRAIN_ARGS)

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

.PHONY: image-test hadolint

## image-test: build the image from the Dockerfile with podman and smoke-test it (installs podman if missing; ~6 min cold, ~30 s warm)
image-test:
	bash scripts/image_test.sh

## hadolint: lint the Dockerfile (also run by `make test`, tests/test_dockerfile.py)
hadolint: $(VENV)/.dev
	$(VENV)/bin/hadolint Dockerfile

.PHONY: loadtest bench overload bench-gpu
USERS ?= 16
SPAWN_RATE ?= 16
DURATION ?= 60s
P95_MS ?= 500
LOADTEST_URL ?= http://$(HOST):$(INFERENCE_PORT)
LOADTEST_MODEL ?= keypoints

## loadtest: headless Locust against a running service (make serve) for DURATION at USERS users; reports in
## loadtest/reports/; fails on any failed request or p95 > P95_MS. e.g. make loadtest USERS=32 DURATION=5m
## LOADTEST_MODEL=faces sends the photo mix (whole frames, 1280x960 multi-face scenes) to /predictions/faces
loadtest: $(VENV)/.runtime
	$(PY) -m loadtest.run --host $(LOADTEST_URL) --users $(USERS) --spawn-rate $(SPAWN_RATE) \
		--duration $(DURATION) --p95-ms $(P95_MS) --model $(LOADTEST_MODEL)

## bench: the shipped model against the four-pass one of commit 9a2cdaa side by side (GFLOP, in-process and
## served faces/s, p50/p99, score), then in-process ceiling vs served throughput/latency for a grid of
## configurations (own TorchServes on free ports, ~14 min); writes docs/performance/models.csv, bench.csv,
## bench.png and the numbers in docs/performance.md
bench: $(VENV)/.dev
	$(PY) -m loadtest.models_compare
	$(PY) -m loadtest.benchmark

## bench-gpu: the GPU path on any CUDA machine in one run (model faces/s by batch and precision, a handler
## worker, the photo path, a training step, the score as served); without CUDA one line and exit 0.
## BENCH_GPU_ARGS=--train also trains the whole recipe (teachers, then student) on the GPU
BENCH_GPU_ARGS ?=
bench-gpu: $(VENV)/.dev
	$(PY) -m loadtest.gpu_bench $(BENCH_GPU_ARGS)

## overload: more clients than the service can take (256 backing-off clients, open loop at 1x/2x/4x capacity),
## recovery after the spike; own TorchServe on free ports, ~4 min per config; docs/reliability/overload.csv
OVERLOAD_CONFIGS ?= shipped
overload: $(VENV)/.dev
	$(PY) -m loadtest.overload --configs $(OVERLOAD_CONFIGS)
