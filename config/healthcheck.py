"""Container health: exit 0 only when every worker of every model (keypoints, faces) is READY.

TorchServe's /ping answers Healthy while a worker crash-loops, so the image's HEALTHCHECK and
the Kubernetes startup, readiness and liveness probes all run this one check instead. It asks
the management API, which stays on 127.0.0.1 inside the container, and uses the standard
library only, so it runs with any python3 in the image.

    python3 healthcheck.py [--url http://127.0.0.1:8081] [--model keypoints,faces] [--timeout 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

DEFAULT_URL = os.environ.get("FACEKP_MANAGEMENT_URL", "http://127.0.0.1:8081")
DEFAULT_MODEL = os.environ.get("FACEKP_MODEL_NAME", "keypoints,faces")


def worker_states(url: str, model: str, timeout: float) -> list[str]:
    """The status of each of the model's workers, as the management API reports them."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/models/{model}", timeout=timeout) as reply:
        described = json.load(reply)
    return [str(worker.get("status")) for worker in described[0].get("workers", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 only when all of the models' workers are READY.")
    parser.add_argument("--url", default=DEFAULT_URL, help="TorchServe management API")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="comma-separated model names")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds for the HTTP call")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    ready = 0
    for model in filter(None, args.model.split(",")):
        try:
            states = worker_states(args.url, model, args.timeout)
        except (OSError, ValueError, LookupError, AttributeError) as err:  # URLError is an OSError
            print(f"unhealthy: cannot read the workers of '{model}' from {args.url}: {err}", file=sys.stderr)
            return 1
        if not states or any(state != "READY" for state in states):
            print(f"unhealthy: workers of '{model}': {states or 'none'}", file=sys.stderr)
            return 1
        ready += len(states)
    if not args.quiet:
        print(f"healthy: {ready} worker(s) READY for '{args.model}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
