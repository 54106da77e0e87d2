"""The model archives (.mar): the TorchScript file, a handler, the project modules it imports, its model-config.yaml.

`make archive`, `make serve`, the Dockerfile, the tests and the benchmarks all build them here. What
goes into an archive besides the model is found from the handler's own imports (modulefinder, within
the project's packages), so a module the handler starts to use is packed without anyone listing it.
"""

from __future__ import annotations

import modulefinder
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from facekp.contract import VIEW_SETTINGS
from facekp.data import REPO_ROOT
from handler.inference import int8_file

MODEL_FILE = REPO_ROOT / "model_store" / "keypoints.pt"
MODEL_STORE = REPO_ROOT / "model_store"
MODEL_CONFIG = REPO_ROOT / "config" / "model-config.yaml"
FACES_CONFIG = REPO_ROOT / "config" / "faces-config.yaml"
PROJECT_PACKAGES = ("facekp", "handler")
"""The project's packages a handler may import; everything else (torch, ts, numpy) is the server's."""
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class ModelSpec:
    """One model of the service: its name, its handler (a file of handler/) and its model-config.yaml."""

    name: str
    handler: str
    config: Path


KEYPOINTS = ModelSpec("keypoints", "keypoint_handler.py", MODEL_CONFIG)
FACES = ModelSpec("faces", "faces_handler.py", FACES_CONFIG)
MODELS = {spec.name: spec for spec in (KEYPOINTS, FACES)}
"""Every model `make serve` serves: the 96x96 crop contract and the photo path (both use keypoints.pt)."""


class ArchiveError(Exception):
    """The archive could not be built; the message says what to do."""


class _ProjectImports(modulefinder.ModuleFinder):
    """modulefinder that follows imports only into the project's packages."""

    def find_module(self, name, path, parent=None):
        if path is None and name not in PROJECT_PACKAGES:  # a top-level import from outside the project
            raise ImportError(name)
        return super().find_module(name, path, parent)


def handler_modules(handler: Path, root: Path = REPO_ROOT) -> list[Path]:
    """The project's files that `handler` imports, directly or not, packages' __init__.py included;
    relative to root, sorted."""
    finder = _ProjectImports(path=[str(root)])
    finder.run_script(str(handler))
    files = {Path(module.__file__).resolve() for name, module in finder.modules.items()
             if name != "__main__" and module.__file__}
    return sorted(file.relative_to(root.resolve()) for file in files)


def build_archive(model_file: Path = MODEL_FILE, export_dir: Path = MODEL_STORE,
                  model_config: Path | None = None, spec: ModelSpec = KEYPOINTS) -> Path:
    """Package the TorchScript model, the spec's handler and the modules it imports into <name>.mar, with the
    model's int8 ONNX files (handler.inference.int8_file) where they lie beside it."""
    model_config = model_config or spec.config
    if not model_file.is_file():
        raise ArchiveError(f"model file {model_file} is missing: train one with `python train/run.py` "
                           "or restore it with `git checkout model_store/`")
    _check_torchscript(model_file)
    export_dir.mkdir(parents=True, exist_ok=True)
    handler = REPO_ROOT / "handler" / spec.handler
    with tempfile.TemporaryDirectory() as staging:
        # The archiver flattens each extra folder into the archive's root; staging the
        # packages one level down keeps `handler.processing` and `facekp.contract` importable.
        for module in handler_modules(handler):
            (Path(staging) / module).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / module, Path(staging) / module)
        for int8 in (int8_file(model_file, views) for views in VIEW_SETTINGS):  # runtime onnx-int8's files
            if int8.is_file():
                shutil.copy2(int8, Path(staging) / int8.name)
        cmd = [str(BIN / "torch-model-archiver"), "--model-name", spec.name, "--version", "1.0",
               "--serialized-file", str(model_file), "--handler", str(handler),
               "--extra-files", staging, "--config-file", str(model_config),
               "--export-path", str(export_dir), "--force"]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise ArchiveError(f"torch-model-archiver failed:\n{result.stdout}{result.stderr}")
    return export_dir / f"{spec.name}.mar"


def _check_torchscript(model_file: Path) -> None:
    import torch

    try:
        torch.jit.load(str(model_file), map_location="cpu")
    except Exception as err:
        raise ArchiveError(f"model file {model_file} is not a loadable TorchScript model ({err}); "
                           "retrain: `python train/run.py`, or restore: `git checkout model_store/`") from None
