"""What a training run writes and how it is read back: the TorchScript file, the card beside it, and the
networks inside it, rebuilt as modules for a student's teacher or a study."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from facekp import data as facedata
from facekp import metrics
from facekp.contract import IMAGE_SIZE, KEYPOINT_NAMES, denormalize, normalize
from facekp.data import REPO_ROOT
from facekp.machine import machine
from train.model import (
    KeypointNet,
    ServingModel,
    count_parameters,
    label_x_offset_px,
    networks_from_weights,
    shift_views,
)
from train.recipe import Stage, Views

MODEL_FILE = "keypoints.pt"
CARD_FILE = "model_card.json"
# The shipped model's teachers: trained on every person, so only an all-people student may learn from them;
# a run that validates on held-out people trains its own.
TEACHERS_DIR = REPO_ROOT / "train" / "teachers"
COMMITTED_TEACHERS = (TEACHERS_DIR / "long.pt", TEACHERS_DIR / "short.pt")


def to_tensors(faces: facedata.FaceData, aux68: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N,1,96,96) in [0,1]; targets (N,15,2), or (N,15+68,2) with the auxiliary points."""
    images = torch.from_numpy(faces.images).float().div_(255).unsqueeze(1)
    points = faces.keypoints
    if aux68:
        points = np.concatenate([points, faces.keypoints68], axis=1)
    return images, torch.from_numpy(normalize(points))


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Normalized predictions (N, 15, 2) for model in eval mode, on the model's device."""
    model.eval()
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device  # CPU if neither
    return torch.cat([model(images[i:i + batch].to(device)).cpu() for i in range(0, len(images), batch)]).numpy()


def export(model: torch.nn.Module, path: Path) -> None:
    """TorchScript by tracing: ServingModel's forward has no data-dependent branch (batch size stays free).

    A model of one network is traced with its view settings too (facekp.contract.VIEW_SETTINGS), so that a
    server picks one, two or six views and reads the 68 points and their uncertainty from the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    methods = ServingModel.VIEW_METHODS if isinstance(model, ServingModel) and len(model.nets) == 1 else ()
    torch.jit.trace_module(model.eval(), {"forward": probe, **dict.fromkeys(methods, probe)}).save(str(path))


def command_line() -> str:
    """The command that ran, as typed from the repository root: train/run.py itself or train/cv.py around it."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO_ROOT).as_posix() if script.is_relative_to(REPO_ROOT) else sys.argv[0]
    return " ".join(["python", shown, *sys.argv[1:]])


def card_beside(model_file: Path) -> Path | None:
    """The card of an exported model: X.json beside X.pt (a teacher), else model_card.json."""
    for card_file in (model_file.with_suffix(".json"), model_file.parent / CARD_FILE):
        if card_file.is_file():
            return card_file
    return None


def card_architecture(card: dict) -> tuple[tuple[int, ...], tuple[int, ...], int, tuple[int, int]]:
    """(widths, blocks, views' shift, head) of the network(s) a card describes. Cards written before the recipe
    had names keep them in their config (a student's in student_widths, its shift in student_tta_shift); cards
    written before the head was a choice have the recipe's first one."""
    if "network" in card:
        network = card["network"]
        return (tuple(network["widths"]), tuple(network["blocks"]), card["views"]["shift"],
                tuple(network.get("head", (2, 3))))
    config = card["config"]
    student = config.get("student", False)  # cards from before the student (commit bcb5090) lack these
    widths = config["student_widths"] if student else config["widths"]
    if config.get("head", "heatmap") != "heatmap" or config.get("heatmap_size", 24) != 24 \
            or config.get("head_width", 0) not in (0, widths[1]):
        raise ValueError("the card of an architecture no longer built (a regression head, a 48x48 heatmap or a "
                         "head width of its own): rebuild it at the commit that trained it")
    shift = config.get("student_tta_shift", 0) if student and config["student_flip_tta"] else 0
    return tuple(widths), tuple(config["blocks"]), shift, (2, 3)


def exported_networks(model_file: Path) -> tuple[list[KeypointNet], bool] | None:
    """The networks inside an exported model and whether it mirrors them, rebuilt from the file's weights with
    the architecture its card records; None for a file without a card. ValueError when they answer otherwise."""
    card_file = card_beside(model_file)
    if card_file is None:
        return None
    card = json.loads(card_file.read_text())
    widths, blocks, shift, head = card_architecture(card)
    traced = torch.jit.load(str(model_file), map_location="cpu").eval()
    nets = networks_from_weights(traced.state_dict(), widths, blocks, head)
    shifts = shift_views(shift)
    passes = card.get("network_passes_per_face", len(nets) * (2 if card["config"].get("flip_tta") else 1))
    flip = passes == 2 * len(nets) * len(shifts)
    probe = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    with torch.inference_mode():
        if not torch.allclose(ServingModel(nets, flip, shifts).eval()(probe), traced(probe), atol=1e-5):
            raise ValueError(f"{card_file} does not describe {model_file}: the rebuilt networks answer differently")
    return nets, flip


def load_teacher(spec: str, flip: bool = True) -> torch.nn.Module:
    """`A.pt` or `A.pt+B.pt`: a teacher of models already trained (their mean).

    flip=False runs each file's networks without their mirrored pass (train/studies/step_cost.py): they are
    rebuilt from the file's card, as the traced file cannot leave it out. Otherwise the files run as they are.
    """
    models: list[torch.nn.Module] = []
    for path in spec.split("+"):
        if flip:
            models.append(torch.jit.load(path, map_location="cpu").eval())
            continue
        rebuilt = exported_networks(Path(path))
        if rebuilt is None:
            raise ValueError(f"{path} has no model card beside it: its mirrored pass cannot be dropped")
        models.append(ServingModel(rebuilt[0], flip=False).eval())
    return models[0] if len(models) == 1 else ServingModel(models, flip=False).eval()  # their mean


def write_model(model: ServingModel, stage: Stage, views: Views, path: Path, card_path: Path,
                validation_faces: facedata.FaceData, seen_in_training: bool, fields: dict) -> dict:
    """Export model (one network of the recipe with its served views) to path and its card to card_path: what it
    is, how it scores on validation_faces, and the run's fields (config, data, command, history...)."""
    export(model, path)
    images, _ = to_tensors(validation_faces)
    truth = validation_faces.keypoints
    pred = denormalize(predict(model, images))
    (net,) = model.nets
    validation = {"score": metrics.score(pred, truth), "rmse_px": metrics.rmse_px(pred, truth),
                  "rmse_px_per_keypoint": metrics.rmse_px_by_name(pred, truth),
                  "label_x_offset_px": [label_x_offset_px(net)],
                  "faces": len(validation_faces), "people": len(set(validation_faces.people)),
                  "seen_in_training": seen_in_training}
    if model.passes_per_net > 1:
        validation["score_without_flip_tta"] = metrics.score(
            denormalize(predict(ServingModel(net, flip=False), images)), truth)
    card = {
        "model_file": path.name,
        "input": "(N, 1, 96, 96) float32 grayscale in [0, 1]",
        "output": "(N, 15, 2) normalized (x, y) = (pixel - 48) / 48, keypoints in 'keypoints' order",
        "keypoints": list(KEYPOINT_NAMES),
        "network_passes_per_face": model.passes_per_net,
        "network": {"stage": stage.name, "widths": list(stage.widths), "blocks": list(stage.blocks),
                    "head": list(stage.head), "epochs": stage.epochs, "seed": stage.seed},
        "views": dataclasses.asdict(views),
        "validation": validation,
        "parameters": count_parameters(model),
        "size_bytes": path.stat().st_size,
        **fields,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine(),  # training minutes differ 1.5-2x between CPUs (a 2-core Xeon with AMX, a 2-core EPYC)
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card
