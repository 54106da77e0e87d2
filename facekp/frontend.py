"""TorchServe's frontend with a file sent as a form read as a file, and ?points= read (handler/frontend/).

TorchServe 0.12 decodes a body sent as application/x-www-form-urlencoded (`curl --data-binary`'s default) as
an HTML form and answers 500 when it is an image; its /predictions route drops the query string. The one
class that reads every request first is compiled here into the folder TorchServe starts in, which its
launcher puts first on the frontend's class path, so that it takes the place of the jar's (docs/reliability.md).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

from facekp.data import REPO_ROOT

SOURCE = REPO_ROOT / "handler" / "frontend" / "HttpRequestHandler.java"
CLASS = Path("org/pytorch/serve/http/HttpRequestHandler.class")
"""Where the compiled class lies under the folder TorchServe starts in."""


def torchserve_jars() -> Path:
    """The folder of TorchServe's frontend jar, in the installed ts package."""
    spec = importlib.util.find_spec("ts")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("TorchServe (the ts package) is not installed")
    return Path(spec.submodule_search_locations[0]) / "frontend"


def compile_frontend(start_dir: Path, javac: str | None = None) -> str | None:
    """Compile the frontend's request handler into start_dir (kept while newer than its source). None when it
    is there; else why not, for a warning: without it the service runs as TorchServe ships it."""
    target = start_dir / CLASS
    if target.is_file() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return None
    javac = javac or shutil.which("javac")
    if javac is None:
        return ("javac (a Java 17 JDK) not found: the frontend runs as TorchServe ships it, so curl --data-binary "
                "without an image Content-Type gets HTTP 500 and ?points=68 is ignored (use curl -T, -H 'Points: 68')")
    try:
        jars = torchserve_jars()
    except FileNotFoundError as err:
        return str(err)
    try:
        result = subprocess.run([javac, "-nowarn", "--release", "17", "-cp", str(jars / "*"), "-d", str(start_dir),
                                 str(SOURCE)], capture_output=True, text=True)
    except OSError as err:
        return f"javac could not run: {err}"
    if result.returncode:
        target.unlink(missing_ok=True)
        return f"javac could not compile {SOURCE.name}: {(result.stdout + result.stderr).strip()[-500:]}"
    return None


def main() -> int:
    """python -m facekp.frontend DIR: compile into DIR (the Dockerfile's build stage)."""
    import sys

    if len(sys.argv) != 2:
        print("usage: python -m facekp.frontend START_DIR", file=sys.stderr)
        return 2
    reason = compile_frontend(Path(sys.argv[1]))
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    print(f"compiled {Path(sys.argv[1]) / CLASS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
