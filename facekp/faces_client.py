"""Asking a running service for every face of a photo (/predictions/faces), from any number of threads.

Each thread keeps its own requests.Session (connections reused, none shared across threads); a "full, retry
later" answer (503, 507) is retried after facekp.replies' jittered pause; a service that cannot be reached at
all raises ServiceDown, which names the address and how to start one.
"""

from __future__ import annotations

import threading
import time

import requests

from facekp.replies import RETRY_STATUSES, backoff_s

DEFAULT_URL = "http://127.0.0.1:8080"
"""Where `make serve` answers."""
RETRIES = 5
"""Retries of a 503/507 answer before the image counts as failed."""


class ServiceDown(ConnectionError):
    """No service answers at the address (refused, unknown host, or it went away)."""

    def __init__(self, url: str, reason: object):
        super().__init__(f"no service answers at {url} ({short_reason(reason)}): start one with `make serve`, "
                         "or pass --url")
        self.url = url


class ImageFailed(RuntimeError):
    """The service answered this image with an error (or not in time): the image has no answer."""


def short_reason(error: object) -> str:
    """'connection refused' rather than urllib3's nested repr, where that is what happened."""
    text = str(error)
    for known in ("Connection refused", "Name or service not known", "Connection reset", "Connection aborted"):
        if known.lower() in text.lower():
            return known.lower()
    return text[:200]


class FacesClient:
    """POST images to `url`/predictions/faces; safe to call from several threads at once."""

    def __init__(self, url: str = DEFAULT_URL, points: int = 15, timeout: float = 60.0, retries: int = RETRIES):
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/predictions/faces"
        self.points = points
        self.timeout, self.retries = timeout, retries
        self.local = threading.local()

    def http(self) -> requests.Session:
        """This thread's requests.Session."""
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def check(self) -> None:
        """ServiceDown unless something answers HTTP at the address (TorchServe's /ping; any status will do)."""
        try:
            self.http().get(f"{self.url}/ping", timeout=10)
        except requests.RequestException as err:
            raise ServiceDown(self.url, err) from None

    def ask(self, body: bytes, content_type: str | None = None, faces_hint: str | None = None) -> dict:
        """The service's answer for one image ({"faces": [...], "image": {...}}); ImageFailed, or ServiceDown.
        faces_hint: where its faces are already known (the Faces-Hint header: handler.faces.hinted_faces)."""
        headers = {"Points": str(self.points), **({"Content-Type": content_type} if content_type else {}),
                   **({"Faces-Hint": faces_hint} if faces_hint else {})}
        try:
            for attempt in range(self.retries + 1):
                reply = self.http().post(self.endpoint, data=body, headers=headers, timeout=self.timeout)
                if reply.status_code not in RETRY_STATUSES or attempt == self.retries:
                    break
                time.sleep(backoff_s(attempt))  # full: come back later, not at once
        except requests.ConnectionError as err:
            raise ServiceDown(self.url, err) from None
        except requests.RequestException as err:  # a timeout, a malformed answer
            raise ImageFailed(f"{type(err).__name__}: {err}") from None
        if reply.status_code != 200:
            raise ImageFailed(f"HTTP {reply.status_code}: {reply.text[:200]}")
        try:
            answer = reply.json()
        except ValueError as err:
            raise ImageFailed(f"not a JSON answer: {err}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("faces"), list):
            raise ImageFailed(f"not a faces answer: {reply.text[:200]}")
        return answer
