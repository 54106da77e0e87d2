"""Score an exported model's networks with test-time views moved by 0..N pixels, without exporting anything.

    python train/views_probe.py runs/tta-m1e120/fold_4/keypoints.pt          # a fold's network, on its people
    git show bcb5090:model_store/keypoints.pt > runs/bcb5090.pt && git show bcb5090:model_store/model_card.json \
        > runs/bcb5090.json && python train/views_probe.py runs/bcb5090.pt   # a pair, on the fixed split

Each network of the file (rebuilt from its card, train/run.py's exported_networks) is scored on the people
its card validated on, with its mirrored pass and the face moved ±1..±N px (train/model.py's shift_views),
then the networks together: what `--student-tta-shift` would give a model, to compare before choosing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from facekp import metrics  # noqa: E402
from facekp.contract import denormalize  # noqa: E402
from train import run  # noqa: E402
from train.cv import fold_people  # noqa: E402
from train.model import ServingModel, shift_views  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a TorchScript model from train/run.py, its card beside it")
    parser.add_argument("--max-shift", type=int, default=4, help="moved views from ±1 to this many px; default 4")
    args = parser.parse_args(argv)
    rebuilt = run.exported_networks(args.model)
    if rebuilt is None:
        parser.error(f"{args.model} has no model card beside it: its networks cannot be rebuilt")
    nets, _ = rebuilt
    config = json.loads(run.card_beside(args.model).read_text())["config"]
    val, images = fold_people(config["data"], config.get("fold", -1), config.get("folds", 5))
    print(f"{len(nets)} network(s), {len(val)} faces of {len(set(val.people))} people; each with its mirrored pass")
    for shift in range(args.max_shift + 1):
        models = [ServingModel(net, flip=True, shifts=shift_views(shift)) for net in nets]
        if len(nets) > 1:
            models.append(ServingModel(models, flip=False))
        scores = [metrics.score(denormalize(run.predict(model.eval(), images)), val.keypoints) for model in models]
        label = "as it is" if shift == 0 else f"and moved ±{shift} px"
        print(f"{label:17s} " + "  ".join(f"{score:6.1f}" for score in scores), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
