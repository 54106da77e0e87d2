# Facial keypoint service: TorchServe 0.12 serving the committed TorchScript model.
#
#   GPU image:  docker build -t facekp:gpu .
#               docker run --gpus all -p 8080:8080 facekp:gpu
#   CPU image:  docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t facekp:cpu .
#   Local test: make image-test (a debootstrap base and a local torch wheel: scripts/image_test.sh)
#   KServe predictor without TorchServe (Open Inference Protocol v2 on 8080):
#               docker build --target kserve -t facekp-kserve:gpu .     (k8s/kserve-predictor/)
#
# The same image runs on a GPU node and on a CPU-only one: TorchServe hands the worker a GPU
# when nvidia-smi in the container lists one (NVIDIA container toolkit), else it uses the CPU.
# See docs/deployment.md.

# Pinned by tag and digest (the multi-arch index of python:3.11.14-slim-bookworm). Registries are not
# reachable from the build machines here, so refresh it with
#   docker buildx imagetools inspect python:3.11-slim-bookworm
# The local test build replaces it with a Debian bookworm stand-in (BASE_IMAGE).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
FROM ${BASE_IMAGE} AS base

# Extra package index for torch: https://download.pytorch.org/whl/cpu makes the CPU image. Unset, torch
# 2.13.0 comes from PyPI with its CUDA libraries (the GPU image).
ARG TORCH_INDEX_URL
# A folder of local wheels (pip --find-links), e.g. a CPU torch wheel bind-mounted into the build.
ARG PIP_FIND_LINKS

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Java 17 for TorchServe's frontend (skipped where the base has a JRE already), and the service user.
# hadolint ignore=DL3008
RUN if ! command -v java >/dev/null; then \
        mkdir -p /usr/share/man/man1 \
        && apt-get update \
        && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && java -XX:-UsePerfData -version \
    && groupadd --gid 10001 model-server \
    && useradd --no-log-init --uid 10001 --gid 10001 --create-home --home-dir /home/model-server \
        --shell /usr/sbin/nologin model-server

# The project's pins, less the clients (locust; the video client's av, scipy, tqdm) and training's onnx, in a
# venv: one layer that only changes with requirements.txt.
COPY requirements.txt requirements-nodeps.txt /tmp/
RUN python3 -m venv /opt/venv \
    && grep -v -E '^(locust|av|scipy|tqdm|onnx)([^A-Za-z0-9_.-]|$)' /tmp/requirements.txt > /tmp/requirements.serve.txt \
    && /opt/venv/bin/pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r /tmp/requirements.serve.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements-nodeps.txt \
    && /opt/venv/bin/python -c "import torch, ts, yaml, onnxruntime; print('torch', torch.__version__)" \
    && rm /tmp/requirements.txt /tmp/requirements.serve.txt /tmp/requirements-nodeps.txt
ENV PATH=/opt/venv/bin:$PATH

# keypoints.mar and faces.mar, built here by the project's own build_archive() (facekp/archive.py): the same handler,
# modules it imports, model config and TorchScript check as `make archive`.
COPY facekp/ /tmp/build/facekp/
COPY handler/ /tmp/build/handler/
COPY config/model-config.yaml config/faces-config.yaml /tmp/build/config/
COPY model_store/keypoints.pt model_store/keypoints.views1.int8.onnx model_store/keypoints.views2.int8.onnx \
    /tmp/build/model_store/
RUN PYTHONPATH=/tmp/build python -m facekp.torchserve archive \
    && install -d -m 0755 /opt/facekp/model-store /opt/facekp/config \
    && install -m 0644 /tmp/build/model_store/keypoints.mar /tmp/build/model_store/faces.mar /opt/facekp/model-store/ \
    && rm -rf /tmp/build

# GPUs for the NVIDIA container toolkit: the driver libraries and nvidia-smi, which TorchServe uses to count them.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LOG_LOCATION=/home/model-server/logs \
    METRICS_LOCATION=/home/model-server/logs \
    HOME=/home/model-server

# --- the KServe predictor without TorchServe: kserve's ModelServer over the same model and handler functions.
FROM base AS kserve
COPY requirements-kserve.txt /tmp/requirements-kserve.txt
RUN /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements-kserve.txt \
    && /opt/venv/bin/python -c "import kserve; print('kserve', kserve.__version__)" \
    && rm /tmp/requirements-kserve.txt
COPY facekp/ /opt/facekp/app/facekp/
COPY handler/ /opt/facekp/app/handler/
COPY config/model-config.yaml /opt/facekp/app/config/model-config.yaml
COPY model_store/keypoints.pt model_store/keypoints.views1.int8.onnx model_store/keypoints.views2.int8.onnx \
    /opt/facekp/app/model_store/
USER 10001:10001
WORKDIR /opt/facekp/app
# 8080 REST (v2 and v1), 8081 gRPC v2: KServe's custom predictor ports (k8s/kserve-predictor, -grpc).
EXPOSE 8080 8081
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=5)"]
CMD ["python", "-m", "handler.kserve_server", "run", "--bind", "0.0.0.0", "--http_port", "8080", "--grpc_port", "8081"]

# --- TorchServe's frontend with a file sent as a form read as a file, and ?points= read: one class
# (handler/frontend/, facekp/frontend.py) compiled against the installed jar by a JDK the image does not keep.
FROM base AS frontend
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jdk-headless \
    && rm -rf /var/lib/apt/lists/*
COPY facekp/ /tmp/build/facekp/
COPY handler/frontend/ /tmp/build/handler/frontend/
RUN PYTHONPATH=/tmp/build python -m facekp.frontend /opt/facekp/frontend

# --- TorchServe (the default target: the last stage).
FROM base AS torchserve
COPY config/config.container.properties /opt/facekp/config/config.properties
# TorchServe's launcher puts the folder it starts in (WORKDIR) first on the frontend's class path.
COPY --from=frontend /opt/facekp/frontend/org /home/model-server/org
COPY config/healthcheck.py /opt/facekp/healthcheck.py
# The request path's warm-up once the models answer (the JVM compiles it: docs/photos.md), beside TorchServe.
COPY facekp/warm_up.py /opt/facekp/warm_up.py
USER 10001:10001
WORKDIR /home/model-server
# 8080 inference, 8081 management (bound to 127.0.0.1 inside the container), 8082 Prometheus metrics.
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=15s --timeout=6s --start-period=180s --retries=3 \
    CMD ["python3", "/opt/facekp/healthcheck.py", "--quiet"]

# TorchServe in the foreground. Its launcher does not pass SIGTERM on to the Java frontend, so this
# shell (PID 1) turns SIGTERM/SIGINT into `torchserve --stop`, waits for the frontend to shut its
# workers down, and exits 0; it exits 1 if TorchServe ends by itself. The warm-up runs once, beside it.
STOPSIGNAL SIGTERM
CMD ["/bin/sh", "-c", "trap 'torchserve --stop; wait $ts; exit 0' TERM INT; torchserve --start --foreground --ncs --disable-token-auth --model-store /opt/facekp/model-store --models keypoints=keypoints.mar faces=faces.mar --ts-config /opt/facekp/config/config.properties & ts=$!; python /opt/facekp/warm_up.py http://127.0.0.1:8080 & wait $ts; echo 'torchserve exited' >&2; exit 1"]
