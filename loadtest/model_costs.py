"""Cost and score of TorchScript keypoint models in-process: the table of every model tried.

    python -m loadtest.model_costs model_store/keypoints.pt runs/student-split-w24/keypoints.pt
    python -m loadtest.model_costs --paths frozen MODEL.pt        # frozen as served only

For each file and each way of running it (float32 / bfloat16 autocast, the file's graph as
traced / frozen as the handlers run it): GFLOP per face, faces/s of the model alone (no
decoding) at batch 1 and 32 with all torch threads, the GFLOP/s that makes, and the score on
the validation people of the person split (scored against models trained without them only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from handler.inference import model_runner
from loadtest.cpu import wait_for_quiet
from loadtest.models_compare import faces_per_s, gflop_per_face, validation_score

PATHS = {"traced": False, "frozen": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--paths", default="traced,frozen", help="traced (the file as is), frozen (as served)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    inputs = rng.random((256, 1, 96, 96), dtype=np.float32)  # the model's cost does not depend on the pixels
    cpu = torch.device("cpu")
    print("| model | precision | graph | GFLOP per face | faces/s bs1 | faces/s bs32 | GFLOP/s at bs32 | score |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.models:
        gflop = gflop_per_face(torch.jit.load(str(path)).eval())
        for precision in args.precisions.split(","):
            for graph in args.paths.split(","):
                run = model_runner(torch.jit.load(str(path)).eval(), cpu, precision, PATHS[graph])
                wait_for_quiet(60)
                bs1, bs32 = (faces_per_s(run, inputs, b, args.seconds) for b in (1, 32))
                score = validation_score(run)
                print(f"| {path} | {precision} | {graph} | {gflop:.3f} | {bs1:.0f} | {bs32:.0f} | {gflop * bs32:.0f} | "
                      f"{'no data' if score is None else f'{score:.1f}'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
