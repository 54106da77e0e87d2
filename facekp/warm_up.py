"""Warm a just-started TorchServe: its Java frontend answers the first requests slowly until the JVM has compiled
the request path, so `make serve` sends it a few hundred tiny requests before it says it is ready, and the
container runs this file beside TorchServe (standard library, requests and Pillow only: it runs as a script):

    python3 warm_up.py http://127.0.0.1:8080 --wait 300     # once every route answers, warm them and exit

On a 2-core Xeon (2026-12-08) a 170x211 photo took 19.6-24 ms p50 at /predictions/faces right after the start and
about 16 ms after 800 such requests (4 s); lowering the JIT's thresholds (vmargs) was no faster
(docs/photos.md#where-a-photos-time-goes).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image

ROUTES = ("keypoints", "faces")
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


def wait_for_answers(inference_url: str, routes: tuple[str, ...], timeout: float) -> bool:
    """True once every route answers a tiny image with 200 (its workers are up); False after `timeout` s."""
    body, deadline = tiny_image(), time.monotonic() + timeout
    waiting = list(routes)
    while waiting and time.monotonic() < deadline:
        try:
            if requests.put(f"{inference_url}/predictions/{waiting[0]}", data=body, timeout=10).status_code == 200:
                waiting.pop(0)
                continue
        except requests.RequestException:
            pass
        time.sleep(1.0)
    return not waiting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Warm a just-started TorchServe's request path up.")
    parser.add_argument("url", help="the inference address, e.g. http://127.0.0.1:8080")
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated model names")
    parser.add_argument("--requests", type=int, default=WARM_UP_REQUESTS, help="tiny requests to each route")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for every route to answer")
    args = parser.parse_args(argv)
    routes = tuple(filter(None, args.routes.split(",")))
    if not wait_for_answers(args.url, routes, args.wait):
        print(f"warm-up: {', '.join(routes)} did not all answer within {args.wait:.0f} s; not warmed", file=sys.stderr)
        return 1
    try:
        seconds = warm_up(args.url, routes, args.requests)
    except requests.RequestException as err:  # the server stopping meanwhile, say
        print(f"warm-up: stopped: {err}", file=sys.stderr)
        return 1
    print(f"warmed up: {args.requests} tiny requests to each of {', '.join(routes)} in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
