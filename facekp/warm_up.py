"""Warm a just-started TorchServe: its Java frontend answers the first requests slowly until the JVM has compiled
the request path, so `make serve` sends it a few hundred tiny requests before it says it is ready.

On a 2-core Xeon (2026-12-08) a 170x211 photo took 19.6-24 ms p50 at /predictions/faces right after the start and
about 16 ms after 800 such requests (4 s); lowering the JIT's thresholds (vmargs) was no faster
(docs/photos.md#where-a-photos-time-goes).
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image

WARM_UP_REQUESTS = 400
"""Per route. The answers are cheap: a 16x16 grey square holds no face, and one crop is one batch of a pass."""


def tiny_image() -> bytes:
    """A 16x16 grey PNG: an image every route accepts and answers fast."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, "PNG")
    return buffer.getvalue()


def warm_up(inference_url: str, routes: tuple[str, ...], requests_per_route: int = WARM_UP_REQUESTS,
            concurrency: int = 4, headers: Mapping[str, str] | None = None) -> float:
    """Send each route requests_per_route tiny images over `concurrency` keep-alive connections; the seconds it
    took. A refused request is not an error here: the path it took is warm all the same."""
    body, started = tiny_image(), time.perf_counter()

    def send(count: int) -> None:
        with requests.Session() as session:
            for _ in range(count):
                for route in routes:
                    session.put(f"{inference_url}/predictions/{route}", data=body, headers=headers, timeout=30)

    share, extra = divmod(requests_per_route, concurrency)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, [share + (k < extra) for k in range(concurrency)]))
    return time.perf_counter() - started
