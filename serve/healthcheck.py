"""Container health: exit 0 only when every worker of the model is READY.

TorchServe's /ping answers Healthy while a worker crash-loops, so the image's HEALTHCHECK and
the Kubernetes startup, readiness and liveness probes all run this one check instead. It asks
the management API, which stays on 127.0.0.1 inside the container, and uses the standard
library only, so it runs with any python3 in the image.

    python3 healthcheck.py [--url http://127.0.0.1:8081] [--model keypoints] [--timeout 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

DEFAULT_URL = os.environ.get("FACEKP_MANAGEMENT_URL", "http://127.0.0.1:8081")
DEFAULT_MODEL = os.environ.get("FACEKP_MODEL_NAME", "keypoints")


def worker_states(url: str, model: str, timeout: float) -> list[str]:
    """The status of each of the model's workers, as the management API reports them."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/models/{model}", timeout=timeout) as reply:
        described = json.load(reply)
    return [str(worker.get("status")) for worker in described[0].get("workers", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 only when all of the model's workers are READY.")
    parser.add_argument("--url", default=DEFAULT_URL, help="TorchServe management API")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds for the HTTP call")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        states = worker_states(args.url, args.model, args.timeout)
    except (OSError, ValueError, LookupError, AttributeError) as err:  # URLError is an OSError
        print(f"unhealthy: cannot read the workers of '{args.model}' from {args.url}: {err}", file=sys.stderr)
        return 1
    if states and all(state == "READY" for state in states):
        if not args.quiet:
            print(f"healthy: {len(states)} worker(s) READY for '{args.model}'")
        return 0
    print(f"unhealthy: workers of '{args.model}': {states or 'none'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
