"""Run TorchServe: start it in the background, wait until every worker is READY, stop it.

`make serve`, `make stop`, the tests and the benchmarks all go through this module, so a
service started by hand behaves exactly like the one under test. The archives it serves are
facekp.archive's.

    python -m facekp.torchserve start [--inference-port 8080 ...]
    python -m facekp.torchserve stop
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from facekp.archive import BIN, FACES, MODEL_FILE, MODEL_STORE, MODELS, ArchiveError, build_archive
from facekp.data import REPO_ROOT
from facekp.frontend import compile_frontend
from facekp.processes import free_port, port_in_use, wait_until
from facekp.warm_up import WARM_UP_REQUESTS, warm_up

MODEL_NAME = "keypoints"
TRY_IMAGE = "samples/astronaut_face.png"
"""A committed public-domain face (see samples/SOURCE.md): always there, with or without the data set."""
SHIPPED_CONFIG = REPO_ROOT / "config" / "config.properties"
RUN_DIR = REPO_ROOT / ".serve"
TRY_PHOTO = "samples/astronaut.png"
CRASH_LOOP_STOPS = 3
"""Worker stops during start-up after which waiting for READY is pointless."""


class ServiceError(Exception):
    """The service could not be started or reached; the message says what to do."""


def free_ports(host: str = "127.0.0.1") -> dict[str, int]:
    """Free loopback ports for every listener of a Service: Service(**free_ports(), ...)."""
    return {name: free_port(host) for name in ("inference_port", "management_port", "metrics_port",
                                               "grpc_inference_port", "grpc_management_port")}


@dataclass
class Service:
    """One TorchServe instance with its own folder for config, logs and pid file."""

    run_dir: Path = RUN_DIR
    model_store: Path = MODEL_STORE
    host: str = "127.0.0.1"
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    token_auth: bool = False
    config: Path = SHIPPED_CONFIG
    extra_config: dict[str, str] = field(default_factory=dict)
    models_from_config: bool = False
    """Load the models that the config's model_snapshot names (KServe's layout) instead of --models."""
    models: tuple[str, ...] = (MODEL_NAME,)
    """The models to load, each from <name>.mar beside the archive given to start()."""

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def _env(self) -> dict[str, str]:
        # TorchServe keeps its pid file in the temp folder: one per instance lets several run side by side.
        tmp = self.run_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def _write_config(self) -> Path:
        lines = [line for line in self.config.read_text().splitlines()
                 if not line.startswith(("inference_address", "management_address", "metrics_address", "grpc_",
                                         "disable_token_authorization", *self.extra_config))]
        lines += [f"inference_address={self.inference_url}", f"management_address={self.management_url}",
                  f"metrics_address={self.metrics_url}",
                  # TorchServe always opens its gRPC ports too: keep them on this host and out of the way.
                  f"grpc_inference_address={self.host}", f"grpc_inference_port={self.grpc_inference_port}",
                  f"grpc_management_address={self.host}", f"grpc_management_port={self.grpc_management_port}",
                  f"disable_token_authorization={'false' if self.token_auth else 'true'}"]
        lines += [f"{key}={value}" for key, value in self.extra_config.items()]
        path = self.run_dir / "config.properties"
        path.write_text("\n".join(lines) + "\n")
        return path

    def pid(self) -> int | None:
        """The frontend's pid while it runs, else None."""
        pid_file = self.run_dir / "tmp" / ".model_server.pid"
        try:
            pid = int(pid_file.read_text().strip())
            if "org.pytorch.serve.ModelServer" in psutil.Process(pid).cmdline():
                return pid
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def check_can_start(self) -> None:
        """Refuse early, with a clear message, what would make TorchServe fail or clash."""
        if self.pid():
            raise ServiceError(f"the service in {self.run_dir} is already running (pid {self.pid()}): "
                               "stop it first with `make stop`")
        for name, port in [("inference", self.inference_port), ("management", self.management_port),
                           ("metrics", self.metrics_port), ("grpc_inference", self.grpc_inference_port),
                           ("grpc_management", self.grpc_management_port)]:
            if port_in_use(self.host, port):
                raise ServiceError(f"{name} port {self.host}:{port} is already in use by another program; "
                                   f"free it or pick another port (e.g. make serve {name.upper()}_PORT=...)")

    def start(self, archive: Path | None = None) -> None:
        """Start TorchServe in the background; returns once the frontend is launched."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.check_can_start()
        archive = archive or self.model_store / f"{MODEL_NAME}.mar"
        if not archive.is_file():
            raise ServiceError(f"model archive {archive} is missing: build it with `make archive`")
        shutil.rmtree(self.log_dir, ignore_errors=True)
        not_patched = compile_frontend(self.run_dir)  # TorchServe starts in run_dir: its class path begins there
        if not_patched:
            print(f"warning: {not_patched}", file=sys.stderr)
        cmd = ["torchserve", "--start", "--ncs", "--model-store", str(archive.parent.resolve()),
               "--ts-config", str(self._write_config())]
        if not self.models_from_config:
            cmd += ["--models", *(f"{name}={name}.mar" if name != MODEL_NAME else f"{name}={archive.name}"
                                  for name in self.models)]
        if not self.token_auth:
            cmd.append("--disable-token-auth")
        # Not a pipe: the frontend inherits the launcher's stdout and would hold a pipe open forever.
        console = self.run_dir / "torchserve.out"
        with open(console, "w") as out:
            code = subprocess.run(cmd, cwd=self.run_dir, env=self._env(), stdout=out,
                                  stderr=subprocess.STDOUT).returncode
        said = console.read_text(errors="replace")
        if code or "already running" in said:
            raise ServiceError(f"torchserve did not start:\n{said}")

    def workers(self, model: str = MODEL_NAME) -> list[dict]:
        """The model's workers as the management API reports them (empty if unreachable)."""
        try:
            reply = requests.get(f"{self.management_url}/models/{model}", timeout=5, headers=self.auth_header())
            reply.raise_for_status()
            return reply.json()[0].get("workers", [])
        except (requests.RequestException, ValueError, IndexError, KeyError):
            return []

    def auth_header(self, api: str = "management") -> dict[str, str]:
        """The header a request to `api` (management or inference) needs where --token-auth is on."""
        key_file = self.run_dir / "key_file.json"
        if not self.token_auth or not key_file.exists():
            return {}
        return {"Authorization": f"Bearer {json.loads(key_file.read_text())[api]['key']}"}

    def wait_ready(self, timeout: float = 120.0) -> list[dict]:
        """Block until every worker is READY. /ping says Healthy even while workers crash-loop."""

        def ready() -> list[dict] | None:
            if not self.pid():
                raise ServiceError(f"TorchServe exited during start-up.\n{self.log_tail()}")
            workers = [self.workers(model) for model in self.models]
            if all(w and all(one.get("status") == "READY" for one in w) for w in workers):
                return [one for w in workers for one in w]
            if self.worker_stops() >= CRASH_LOOP_STOPS:
                raise ServiceError(f"the model's worker crashed {self.worker_stops()} times while starting.\n"
                                   f"{self.log_tail()}")
            return None

        workers = wait_until(ready, timeout)
        if workers is None:
            raise ServiceError(f"no READY worker after {timeout:.0f} s.\n{self.log_tail()}")
        return workers

    def worker_stops(self) -> int:
        """How often a worker has stopped since start (TorchServe restarts crashed workers)."""
        log = self.log_dir / "ts_log.log"
        return log.read_text(errors="replace").count("-> WORKER_STOPPED") if log.exists() else 0

    def log_tail(self, lines: int = 30) -> str:
        tails = []
        for name in ("model_log.log", "ts_log.log"):
            path = self.log_dir / name
            if path.exists():
                text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                tails.append(f"--- {path} (last {lines} lines) ---\n{text}")
        return "\n".join(tails) or f"(no logs in {self.log_dir})"

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the frontend and its workers; True if something was running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            family = []
        subprocess.run(["torchserve", "--stop"], cwd=self.run_dir, env=self._env(), capture_output=True)
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for proc in alive:  # a worker that ignored the frontend's shutdown
            proc.kill()
        psutil.wait_procs(alive, timeout=5)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the keypoint service with TorchServe.")
    parser.add_argument("action", choices=["archive", "start", "stop", "status"])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--inference-port", type=int, default=int(os.environ.get("INFERENCE_PORT", 8080)))
    parser.add_argument("--management-port", type=int, default=int(os.environ.get("MANAGEMENT_PORT", 8081)))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8082)))
    parser.add_argument("--grpc-inference-port", type=int, default=int(os.environ.get("GRPC_INFERENCE_PORT", 7070)))
    parser.add_argument("--grpc-management-port", type=int, default=int(os.environ.get("GRPC_MANAGEMENT_PORT", 7071)))
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help="config, logs and pid file (default .serve/)")
    parser.add_argument("--token-auth", action="store_true", help="require TorchServe's API keys")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for a READY worker")
    parser.add_argument("--model-file", type=Path, default=MODEL_FILE, help="TorchScript model to package")
    parser.add_argument("--warm-up", type=int, default=WARM_UP_REQUESTS, metavar="N",
                        help="tiny requests sent to each route once ready, so that the JVM compiles the request path "
                             "before the first user's (0: none)")
    args = parser.parse_args(argv)
    service = Service(run_dir=args.run_dir, host=args.host, inference_port=args.inference_port,
                      management_port=args.management_port, metrics_port=args.metrics_port,
                      grpc_inference_port=args.grpc_inference_port, grpc_management_port=args.grpc_management_port,
                      token_auth=args.token_auth)
    try:
        if args.action == "archive":
            print(f"built {build_archive(args.model_file)} and {build_archive(args.model_file, spec=FACES)}")
        elif args.action == "start":
            service.check_can_start()
            archive = build_archive(args.model_file)
            build_archive(args.model_file, spec=FACES)
            print(f"built {archive} and faces.mar; starting TorchServe (logs in {service.log_dir}) ...", flush=True)
            service.models = tuple(MODELS)
            service.start(archive)
            workers = service.wait_ready(args.timeout)
            if args.warm_up > 0:
                seconds = warm_up(service.inference_url, tuple(MODELS), args.warm_up,
                                  headers=service.auth_header("inference"))
                print(f"warmed up: {args.warm_up} tiny requests to each model in {seconds:.1f} s", flush=True)
            print(f"ready: {len(workers)} worker(s) READY for models {', '.join(MODELS)} "
                  f"(inference {service.inference_url}, management {service.management_url}, "
                  f"metrics {service.metrics_url})")
            print(f"try:  curl -T {TRY_IMAGE} {service.inference_url}/predictions/{MODEL_NAME}")
            print(f"      curl -T {TRY_PHOTO} {service.inference_url}/predictions/{FACES.name}")
            print("stop: make stop")
        elif args.action == "stop":
            print("stopped" if service.stop() else f"no service running from {service.run_dir}")
        else:
            pid = service.pid()
            print(f"running (pid {pid}), workers: {service.workers()}" if pid else "not running")
    except (ServiceError, ArchiveError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
