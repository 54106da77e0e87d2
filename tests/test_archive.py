"""What goes into each .mar besides the model: the project modules its handler imports, found, not listed."""

from __future__ import annotations

from pathlib import Path

from facekp.archive import FACES, KEYPOINTS, handler_modules
from facekp.data import REPO_ROOT


def _modules(handler: str) -> set[str]:
    return {str(path) for path in handler_modules(REPO_ROOT / "handler" / handler)}


def test_the_keypoint_handler_takes_what_it_imports_and_nothing_else():
    modules = _modules(KEYPOINTS.handler)
    assert {"handler/__init__.py", "handler/base.py", "handler/processing.py", "handler/inference.py",
            "handler/kserve_protocol.py", "facekp/__init__.py", "facekp/contract.py"} <= modules
    assert not modules & {"handler/faces.py", "handler/face_detector.py", "facekp/torchserve.py", "facekp/data.py"}


def test_the_faces_handler_also_takes_the_photo_path():
    assert {"handler/faces.py", "handler/face_detector.py"} <= _modules(FACES.handler)


def test_a_module_imported_at_second_hand_is_found(tmp_path: Path):
    for package in ("handler", "facekp"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "facekp" / "deep.py").write_text("import numpy\n")
    (tmp_path / "handler" / "helper.py").write_text("def f():\n    from facekp import deep\n")
    (tmp_path / "handler" / "h.py").write_text("import torch\nfrom handler.helper import f\n")
    assert [str(p) for p in handler_modules(tmp_path / "handler" / "h.py", tmp_path)] == [
        "facekp/__init__.py", "facekp/deep.py", "handler/__init__.py", "handler/helper.py"]
