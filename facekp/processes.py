"""Background server processes: free ports, pid files, waiting until ready, stopping a process group.

What TorchServe's launcher (facekp.torchserve) and the kserve predictor's (handler.kserve_server)
both need to run a server in the background on this machine.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Ready = TypeVar("Ready")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether another program already listens on host:port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_until(ready: Callable[[], Ready | None], timeout: float, interval: float = 0.5) -> Ready | None:
    """ready()'s first answer that is not None, polled every `interval` s; None after `timeout` s.

    ready() raises to give up early (the process exited, its workers crash-loop).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = ready()
        if answer is not None:
            return answer
        time.sleep(interval)
    return None


class PidFile:
    """The pid of a background process we started, kept in a file so that another command can stop it."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, pid: int) -> None:
        self.path.write_text(str(pid))

    def running(self) -> int | None:
        """The pid while that process lives, else None."""
        try:
            pid = int(self.path.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM to its process group (it leads one of its own), SIGKILL after `timeout` s;
        True if it was running."""
        pid = self.running()
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            if wait_until(lambda: True if self.running() is None else None, timeout, 0.1) is None:
                os.killpg(pid, signal.SIGKILL)
        self.path.unlink(missing_ok=True)
        return pid is not None
