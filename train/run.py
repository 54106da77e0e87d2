"""Train the facial keypoint CNN and write the TorchScript model and its model card.

    python train/run.py                       # the shipped model: a student of the committed teachers, all people
    python train/run.py --quick --out /tmp/m  # a one-minute smoke run
    python train/run.py --members 2 --no-all-people --out runs/m2   # train two teachers, then their student
    python train/run.py --no-student --members 1 --no-all-people --out runs/m1   # one network alone (two passes)
    python train/run.py --teacher model_store/keypoints.pt --members 0   # distil from a model already trained
    python train/run.py --teacher a/keypoints.pt+b/keypoints.pt --members 0   # from the mean of two models
    python train/run.py --view-reuse 1        # a fresh teacher answer for every view: slower, no better

Every setting lives in Config below; each field is also a command-line flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from facekp import data as facedata
from facekp import metrics
from facekp.contract import (
    HALF,
    IMAGE_SIZE,
    KEYPOINT_NAMES,
    NUM_KEYPOINTS,
    denormalize,
    normalize,
)
from facekp.data import REPO_ROOT
from facekp.machine import machine
from handler.inference import autocast, choose_precision
from train.augment import AugmentConfig, augment
from train.model import KeypointNet, ServingModel, count_parameters, networks_from_weights, shift_views

MODEL_FILE = "keypoints.pt"
CARD_FILE = "model_card.json"
CPU = torch.device("cpu")
# The shipped model's teachers (docs/accuracy.md): trained on every person, so only an --all-people
# student may learn from them; a run that validates on held-out people trains or names its own.
TEACHERS_DIR = REPO_ROOT / "train" / "teachers"
COMMITTED_TEACHERS = (TEACHERS_DIR / "long.pt", TEACHERS_DIR / "short.pt")


@dataclass
class Config:
    data: str = ""  # npz or Kaggle CSV; empty = $FACEKP_DATA or ../shared/data/facial_keypoints/
    out: str = "model_store"
    seed: int = 0
    fold: int = -1  # -1: the fixed 15 % validation people; k: validate on fold k of --folds (train/cv.py)
    folds: int = 5
    all_people: bool = True  # train on every person (the shipped model); validation people are then seen
    members: int = 0  # networks trained as the teacher (or exported, --no-student); 0: the student of --teacher
    epochs: int = 50
    student: bool = True  # distil the members (or --teacher) into one network, exported alone (with its mirror)
    teacher: str = ""  # a TorchScript keypoint model (A+B: their mean) to distil from; with --members 0 and
    # none given, the committed teachers (train/teachers/long.pt+short.pt)
    # 60 left the student 2.4 % below its teacher; 100 score as 120 over five folds, in a fifth less time
    # (docs/accuracy.md)
    student_epochs: int = 100
    # the 24x24 stage and heatmap head twice a member's width: +55 % a pass, 702.4 over five folds at 120 epochs
    # (docs/accuracy.md)
    student_widths: tuple[int, ...] = (16, 64, 96, 192)
    student_flip_tta: bool = True  # also average the student with its mirrored pass (two passes per face)
    # with student_flip_tta, the student also answers the face moved this many pixels down-right and up-left,
    # each view with its mirror (6 passes; 0: off): +1.4 % on fold 4 (docs/accuracy.md). Test time only:
    # train/studies/mirror.py --tta-shift gives it to a student already trained
    student_tta_shift: int = 3
    teacher_flip: bool = True  # the teacher answers each view with its mirrored pass too (twice its cost)
    # the teacher also answers each view moved this many pixels down-right and up-left, as --student-tta-shift
    # (0: off; 3: three times its cost)
    teacher_tta_shift: int = 0
    distill: float = 0.5  # weight of the teacher's keypoints against the labels in the student's loss
    # live: the teacher answers every augmented view | cached: once per face, its answer moved with each
    # view's geometry (the student's epoch 25 % faster, 1.2 % lower on fold 0: docs/accuracy.md)
    teacher_views: str = "live"
    # live views serve this many epochs: each epoch's augmented views and the teacher's answers to them are
    # replayed, reshuffled and a random half mirrored, for view_reuse - 1 more epochs (teacher cost / view_reuse)
    view_reuse: int = 2  # the teacher answers every other epoch: -23 % time on fold 4, no loss on folds 3-4
    precision: str = "auto"  # auto: bfloat16 autocast on CUDA and where the CPU has AMX / AVX-512 BF16, else fp32
    device: str = "auto"  # auto: CUDA when there is a GPU, else the CPU | cuda | cpu
    batch_size: int = 64
    lr: float = 3e-3
    lr_floor: float = 0.25  # the cosine ends at lr * lr_floor (a 120-epoch network lost 2 % to its low-lr tail)
    weight_decay: float = 0.05  # with train/augment.py's stretch, shear and erasing: +1.7 % over five folds
    warmup_epochs: float = 1.0
    ema_decay: float = 0.998
    head: str = "heatmap"  # heatmap (soft-argmax) | regression
    widths: tuple[int, ...] = (16, 32, 96, 192)
    blocks: tuple[int, ...] = (1, 1, 2, 2)
    head_width: int = 0  # channels of the heatmap head's fusion (0 = widths[1])
    heatmap_size: int = 24  # 24 (from the 24x24 stage) or 48 (adds the 48x48 stage)
    loss: str = "l1"  # l1 | mse
    aux68: float = 0.5  # weight of the 68-point labels as auxiliary targets (0 = off)
    flip_tta: bool = True  # average with the mirrored pass inside the exported model
    max_train: int = 0  # use only the first N training faces (0 = all); for smoke runs
    train_people: float = 1.0  # train on this seeded share of the training people: a learning curve (docs/accuracy.md)
    threads: int = 0  # torch threads (0 = torch's default)
    # score the validation faces every this many epochs (and after the last): a pass over them costs about a fifth of
    # a student's epoch on all people (train/studies/step_cost.py), and changes nothing that is learned
    val_every: int = 5
    augment: AugmentConfig = field(default_factory=AugmentConfig)


QUICK = {"epochs": 3, "student_epochs": 3, "members": 1, "all_people": False, "max_train": 1024, "aux68": 0.0,
         "widths": (8, 16, 32, 64), "student_widths": (8, 16, 32, 64), "blocks": (1, 1, 1, 1)}


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a run of under a minute, for tests: " + str(QUICK))
    for f in dataclasses.fields(Config):
        if f.name == "augment":
            continue
        default = f.default
        flags = dict.fromkeys(["--" + f.name.replace("_", "-"), "--" + f.name])  # --student-epochs or _epochs
        if isinstance(default, tuple):
            parser.add_argument(*flags, dest=f.name, type=int, nargs="+", default=None, help=f"default {default}")
        elif isinstance(default, bool):
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default {default}")
        else:
            parser.add_argument(*flags, dest=f.name, type=type(default), default=None, help=f"default {default!r}")
    for f in dataclasses.fields(AugmentConfig):
        parser.add_argument(f"--aug-{f.name.replace('_', '-')}", dest=f"aug_{f.name}", type=float, default=None,
                            help=f"augmentation, default {f.default}")
    args = vars(parser.parse_args(argv))
    cfg = Config(**(QUICK if args.pop("quick") else {}))
    for key, value in args.items():
        if value is None:
            continue
        if key.startswith("aug_"):
            setattr(cfg.augment, key[4:], value)
        else:
            setattr(cfg, key, tuple(value) if isinstance(value, list) else value)
    if cfg.epochs < 1 or cfg.student_epochs < 1 or cfg.members < 0:
        parser.error("--epochs and --student-epochs must be at least 1, --members at least 0")
    if cfg.fold >= 0:  # a fold run validates on its fold's people, so it cannot train on them
        if args.get("all_people"):
            parser.error("--fold validates on the fold's people: it cannot also train on --all-people")
        cfg.all_people = False
    if cfg.members == 0 and not cfg.student:
        parser.error("--no-student exports the networks it trains: give --members N")
    if cfg.members == 0 and not cfg.teacher:
        cfg.teacher = "+".join(os.path.relpath(path) for path in COMMITTED_TEACHERS)
    committed = [path for path in cfg.teacher.split("+") if path and Path(path).resolve().parent == TEACHERS_DIR]
    if committed and not cfg.all_people:
        parser.error(f"{committed[0]} trained on every person, so a student of it would be validated on faces "
                     "its teacher saw: give --members N (teachers of its own) or --teacher files trained without them")
    if cfg.teacher and not cfg.student:
        parser.error("--teacher is only used by the student")
    for path in cfg.teacher.split("+") if cfg.teacher else []:
        if not Path(path).is_file():
            parser.error(f"--teacher {path}: no such file (a TorchScript model from train/run.py)")
        if not cfg.teacher_flip and card_beside(Path(path)) is None:
            parser.error(f"--no-teacher-flip: --teacher {path} has no model card beside it to rebuild it from")
    if cfg.student_tta_shift < 0 or cfg.teacher_tta_shift < 0:
        parser.error("--student-tta-shift and --teacher-tta-shift are pixels, 0 or more")
    if cfg.teacher_views not in ("live", "cached"):
        parser.error("--teacher-views is live or cached")
    if cfg.teacher_views == "cached" and args.get("view_reuse") is None:
        cfg.view_reuse = 1  # the default replays live views; cached answers have nothing to replay
    if cfg.view_reuse < 1 or (cfg.view_reuse > 1 and cfg.teacher_views != "live"):
        parser.error("--view-reuse is at least 1, and above 1 only with --teacher-views live")
    if cfg.val_every < 1:
        parser.error("--val-every is a number of epochs, at least 1")
    if not 0 < cfg.train_people <= 1:
        parser.error("--train-people is a share of the training people, in (0, 1]")
    if not 0 <= cfg.distill <= 1:
        parser.error("--distill is a weight in [0, 1]")
    if cfg.folds < 2 or cfg.fold >= cfg.folds:
        parser.error("--fold must be below --folds, and --folds at least 2")
    try:
        training_device(cfg.device)
    except ValueError as err:
        parser.error(str(err))
    return cfg


def training_device(setting: str) -> torch.device:
    """The device of --device: auto is CUDA when torch sees a GPU, else the CPU; ValueError says why not."""
    if setting not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device is auto, cuda or cpu, got {setting!r}")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: torch {torch.__version__} sees no CUDA device here (--device auto or cpu)")
    return torch.device("cuda" if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()) else "cpu")


def training_precision(setting: str, device: torch.device, native_bf16: bool | None = None) -> str:
    """bf16 or fp32 for --precision on this device: auto is bfloat16 autocast on a GPU that has it natively
    (native_bf16; None: ask torch. Older GPUs only emulate it), else the handlers' choice."""
    if setting == "auto" and device.type == "cuda":
        if native_bf16 is None:
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16" if native_bf16 else "fp32"
    return choose_precision(setting, device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


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


def keypoint_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over labelled coordinates only: rows with missing keypoints still teach the rest."""
    known = torch.isfinite(target)
    diff = pred[known] - target[known]
    return diff.abs().mean() if kind == "l1" else diff.pow(2).mean()


def label_x_offset_px(net: KeypointNet) -> float:
    """How far right of the pixels the labels sit on average, as learned from flipped faces."""
    return float(net.label_offset.detach()[:, 0].mean()) * HALF


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warmup, then a cosine from peak down to peak * floor."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_net(cfg: Config, use_aux: bool, student: bool = False) -> KeypointNet:
    return KeypointNet(cfg.student_widths if student else cfg.widths, cfg.blocks, cfg.head,
                       extra_points=68 if use_aux else 0, head_width=cfg.head_width, heatmap_size=cfg.heatmap_size)


Teacher = Callable[[torch.Tensor], torch.Tensor]
Views = Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]  # images, targets, teacher's answers


def _mirror_with_taught(net: KeypointNet, kp: torch.Tensor) -> torch.Tensor:
    """net.mirror for labels (N, points, 2) followed by the teacher's 15 keypoints (--teacher-views cached)."""
    labels, taught = kp[:, :-NUM_KEYPOINTS], kp[:, -NUM_KEYPOINTS:]
    return torch.cat([net.mirror(labels), _mirror_taught(net.mirror, taught, labels)], dim=1)


def _mirror_taught(mirror: Callable, taught: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The teacher's 15 keypoints mirrored as labels are: mirror() takes every point the net predicts, and the
    15 permute among themselves, so the labels' auxiliary points only fill the shape."""
    return mirror(torch.cat([taught, labels[:, NUM_KEYPOINTS:]], dim=1))[:, :NUM_KEYPOINTS]


def card_beside(model_file: Path) -> Path | None:
    """The card of a model this script exported: X.json beside X.pt (train/teachers/), else model_card.json."""
    for card_file in (model_file.with_suffix(".json"), model_file.parent / CARD_FILE):
        if card_file.is_file():
            return card_file
    return None


def exported_networks(model_file: Path) -> tuple[list[KeypointNet], bool] | None:
    """The networks inside a model this script exported and whether it mirrors them, rebuilt with the
    widths its card records; None for a file without a card."""
    card_file = card_beside(model_file)
    if card_file is None:
        return None
    card = json.loads(card_file.read_text())
    config = card["config"]
    traced = torch.jit.load(str(model_file), map_location="cpu").eval()
    student = config.get("student", False)  # cards from before the student (commit bcb5090) lack these
    widths = config["student_widths"] if student else config["widths"]
    nets = networks_from_weights(traced.state_dict(), tuple(widths), tuple(config["blocks"]), config["head"],
                                 config["head_width"], config["heatmap_size"])
    shifts = shift_views(config.get("student_tta_shift", 0) if student and config["student_flip_tta"] else 0)
    passes = card.get("network_passes_per_face", len(nets) * (2 if config.get("flip_tta") else 1))
    flip = passes == 2 * len(nets) * len(shifts)
    probe = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    with torch.inference_mode():
        if not torch.allclose(ServingModel(nets, flip, shifts).eval()(probe), traced(probe), atol=1e-5):
            raise ValueError(f"{card_file} does not describe {model_file}: the rebuilt networks answer differently")
    return nets, flip


def load_teacher(spec: str, flip: bool = True) -> torch.nn.Module:
    """`A.pt` or `A.pt+B.pt`: a teacher of several models already trained (their mean), without training one.

    flip=False (--no-teacher-flip) runs each file's networks without their mirrored pass: they are rebuilt
    from the file's card, as the traced file cannot leave it out. Otherwise the files run as they are.
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
    return models[0] if len(models) == 1 else ServingModel(models, flip=False).eval()  # their mean, as of members


def build_teacher(cfg: Config, nets: list[KeypointNet], device: torch.device = CPU) -> torch.nn.Module:
    """What the student learns from: --teacher's files, else this run's members; each view also answered
    mirrored (--teacher-flip) and moved (--teacher-tta-shift), as a served model would answer it; on device."""
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher, cfg.teacher_flip)
    else:  # the members themselves move to device with it (nn.Module.to): only the teacher uses them after this
        teacher = ServingModel(nets, cfg.teacher_flip).eval()
    if cfg.teacher_tta_shift:
        teacher = ServingModel([teacher], flip=False, shifts=shift_views(cfg.teacher_tta_shift)).eval()
    return teacher.to(device, memory_format=torch.channels_last)  # its inputs are channels-last: 1.3x (train_network)


def _fresh_views(x_train: torch.Tensor, y_train: torch.Tensor, order: torch.Tensor, cfg: Config,
                 gen: torch.Generator, mirror: Callable, teacher: Teacher | None, precision: str,
                 kept: list | None = None, device: torch.device = CPU) -> Views:
    """One epoch of newly augmented views (images, targets, the teacher's answers or None) on device, in batches.

    Augmentation runs on device too (its random numbers from the seeded CPU generator). With kept (a
    list), each batch is also appended to it for _replayed_views.
    """
    for idx in order.split(cfg.batch_size):
        images, target = augment(x_train[idx].to(device), y_train[idx].to(device), cfg.augment, gen, mirror)
        images = images.contiguous(memory_format=torch.channels_last)
        taught = None
        if teacher is not None:
            with torch.no_grad(), autocast(precision, device.type):
                taught = teacher(images).float()
        if kept is not None:
            kept.append((images.detach(), target.detach(), taught))
        yield images, target, taught


def _replayed_views(kept: list, batch_size: int, flip: float, gen: torch.Generator, mirror: Callable) -> Views:
    """The last fresh epoch's batches of views again (--view-reuse): reshuffled, and a random half mirrored, the labels
    and the teacher's answers with them (a mirrored teacher's answer to a mirror image is exactly that)."""
    images, target, taught = (torch.cat(part) for part in zip(*kept, strict=True))
    for idx in torch.randperm(len(images), generator=gen).split(batch_size):
        view, label, answer = images[idx], target[idx], taught[idx]
        flipped = (torch.rand(len(idx), generator=gen) < flip).to(view.device)
        if flipped.any():
            view, label, answer = view.clone(), label.clone(), answer.clone()
            view[flipped] = view[flipped].flip(-1)
            with torch.no_grad():  # a fixed target, as the live teacher's answers are
                answer[flipped] = _mirror_taught(mirror, answer[flipped], label[flipped])
            label[flipped] = mirror(label[flipped])  # carries the label offset's gradient, as in augment()
        yield view.contiguous(memory_format=torch.channels_last), label, answer


def weight_average(net: KeypointNet, decay: float) -> AveragedModel:
    """The EMA of the weights that is scored and exported; its decay warms up so early epochs are not kept long.

    On a GPU the same average is a tensor clamp with the step count on the GPU: a Python min() over a GPU
    tensor would wait for the GPU once per weight tensor. On the CPU it stays as it was, to the bit.
    """
    device = next(net.parameters()).device
    if device.type == "cpu":
        def average(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            return avg + (new - avg) * (1 - min(decay, (1 + n) / (10 + n)))

        return AveragedModel(net, use_buffers=True, avg_fn=average)

    def average_on_device(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return avg + (new - avg) * (1 - torch.clamp((1 + n) / (10 + n), max=decay))

    return AveragedModel(net, device=device, use_buffers=True, avg_fn=average_on_device)


def train_network(cfg: Config, seed: int, tag: str, epochs: int, x_train: torch.Tensor, y_train: torch.Tensor,
                  x_val: torch.Tensor, val_keypoints: np.ndarray, use_aux: bool, precision: str,
                  teacher: Teacher | None = None, flip_tta: bool = True,
                  epochs_after: int = 0, device: torch.device = CPU) -> tuple[KeypointNet, list[dict]]:
    """Train one network from its own seed on device; returns the EMA weights (on the CPU) and the history.

    With a teacher, the 15 keypoints learn from (1 - distill) x labels + distill x the teacher's
    keypoints for the same augmented view; the 68 auxiliary points from the labels alone.
    """
    print(f"{tag} training {'a student of the teacher' if teacher else 'a network'}, seed {seed}, "
          f"{epochs} epochs, {precision}{'' if device.type == 'cpu' else ' on ' + device_name(device)}", flush=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # channels-last: oneDNN's convolutions run 1.3x faster on it in bf16 (1.1x in fp32), the same math.
    net = build_net(cfg, use_aux, student=teacher is not None).to(device, memory_format=torch.channels_last)
    ema = weight_average(net, cfg.ema_decay)
    mirror, cached = net.mirror, teacher is not None and cfg.teacher_views == "cached"
    if cached:
        # The teacher answers each training face once; its keypoints then ride along with the labels
        # through the augmentation's geometry (its photometry they ignore): no teacher pass per step.
        y_train = torch.cat([y_train, torch.from_numpy(predict(teacher, x_train))], dim=1)
        mirror = functools.partial(_mirror_with_taught, net)
    decay = [p for name, p in net.named_parameters() if p.ndim > 1 and name != "label_offset"]
    no_decay = [p for name, p in net.named_parameters() if p.ndim <= 1 or name == "label_offset"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total_steps = epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    reuse = cfg.view_reuse if teacher is not None and not cached else 1
    history, step, start = [], 0, time.time()
    for epoch in range(1, epochs + 1):
        net.train()
        if (epoch - 1) % reuse == 0:
            order = torch.randperm(len(x_train), generator=gen)
            kept: list = []
            batches = _fresh_views(x_train, y_train, order, cfg, gen, mirror, None if cached else teacher,
                                   precision, kept if reuse > 1 else None, device)
        else:
            batches = _replayed_views(kept, cfg.batch_size, cfg.augment.flip, gen, mirror)
        losses = []
        for images, target, taught in batches:
            if cached:
                target, taught = target[:, :-NUM_KEYPOINTS], target[:, -NUM_KEYPOINTS:]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, cfg.lr, cfg.lr_floor)
            with autocast(precision, device.type):
                pred = net(images).float()
            loss = keypoint_loss(pred[:, :NUM_KEYPOINTS], target[:, :NUM_KEYPOINTS], cfg.loss)
            if teacher is not None:
                loss = (1 - cfg.distill) * loss + cfg.distill * keypoint_loss(pred[:, :NUM_KEYPOINTS], taught, cfg.loss)
            if use_aux:
                loss = loss + cfg.aux68 * keypoint_loss(pred[:, NUM_KEYPOINTS:], target[:, NUM_KEYPOINTS:], cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(net)
            losses.append(loss.item())
            step += 1
        row = {"member": tag, "seed": seed, "epoch": epoch, "train_loss": float(np.mean(losses))}
        if epoch % cfg.val_every == 0 or epoch == epochs:  # the EMA weights scored: read only, nothing learned
            pred = denormalize(predict(ServingModel(ema.module, flip_tta), x_val))
            row.update(val_score=metrics.score(pred, val_keypoints), val_rmse_px=metrics.rmse_px(pred, val_keypoints),
                       label_x_offset_px=label_x_offset_px(ema.module))
        elapsed = time.time() - start
        history.append({**row, "minutes": elapsed / 60})
        left = elapsed / epoch * (epochs - epoch) + elapsed / epoch * epochs_after  # the whole run, roughly
        scored = (f"val score {row['val_score']:7.1f}  rmse {row['val_rmse_px']:.3f}px  "
                  f"label x offset {row['label_x_offset_px']:+.2f}px" if "val_score" in row else "")
        print(f"{tag} epoch {epoch:3d}/{epochs}  loss {row['train_loss']:.4f}  {scored:55}  "
              f"{elapsed / 60:5.1f} min  ~{left / 60:.1f} min left", flush=True)
    return ema.module.to("cpu", memory_format=torch.contiguous_format).eval(), history  # exported as before


def export(model: torch.nn.Module, path: Path) -> None:
    """TorchScript by tracing: ServingModel's forward has no data-dependent branch (batch size stays free)."""
    torch.jit.trace(model, torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)).save(str(path))


def command_line() -> str:
    """The command that ran, as typed from the repository root: train/run.py itself or train/cv.py around it."""
    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parent.parent
    shown = script.relative_to(root).as_posix() if script.is_relative_to(root) else sys.argv[0]
    return " ".join(["python", shown, *sys.argv[1:]])


def split_rule(cfg: Config) -> str:
    if cfg.all_people:
        return ("every person trains (--all-people); the 'validation' people below are the fixed split's, "
                "seen in training: their score is not an estimate")
    if cfg.fold < 0:
        return f"by person, crc32(name) % 100 < {facedata.VALIDATION_PERCENT} -> validation"
    return f"by person, crc32(name) % {cfg.folds} == {cfg.fold} -> validation (fold {cfg.fold} of {cfg.folds})"


def train(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.time()
    device = training_device(cfg.device)
    precision = training_precision(cfg.precision, device)
    faces = facedata.load(cfg.data or None)
    train_faces, val_faces = facedata.split_by_person(faces, cfg.fold, cfg.folds)
    if cfg.all_people:
        train_faces = faces
    complete = facedata.complete_rows(train_faces)
    if not complete.all():
        print(f"{(~complete).sum()} training rows have missing keypoints; the loss masks them")
    val_complete = facedata.complete_rows(val_faces)
    if not val_complete.all():
        print(f"dropping {(~val_complete).sum()} validation rows with missing keypoints from scoring")
        val_faces = val_faces.subset(np.flatnonzero(val_complete))
    if cfg.train_people < 1:
        train_faces = facedata.keep_people(train_faces, cfg.train_people)
    if cfg.max_train:
        train_faces = train_faces.subset(np.arange(min(cfg.max_train, len(train_faces))))
    use_aux = cfg.aux68 > 0
    if use_aux and train_faces.keypoints68 is None:
        print("the data has no keypoints68: training without the auxiliary targets")
        use_aux = False
    x_train, y_train = to_tensors(train_faces, use_aux)
    x_val, _ = to_tensors(val_faces)
    seen = " (seen in training)" if cfg.all_people else " other people"
    print(f"data: {faces.source}: {len(train_faces)} training faces of {len(set(train_faces.people))} people, "
          f"{len(val_faces)} validation faces of {len(set(val_faces.people))}{seen}")

    # Members differ only by seed (initialization, batch order, augmentation); seeds of runs
    # with different --seed never overlap. The student's seed follows the members'.
    seeds = [cfg.seed * (cfg.members + 1) + k for k in range(cfg.members + 1)]
    plan = [("member", cfg.epochs)] * cfg.members + ([("student", cfg.student_epochs)] if cfg.student else [])
    print(f"model: {cfg.head} head, blocks {cfg.blocks}; members: widths {cfg.widths}, "
          f"{count_parameters(build_net(cfg, use_aux)):,} parameters; student: widths {cfg.student_widths}, "
          f"{count_parameters(build_net(cfg, use_aux, student=True)):,}; {precision} on {device_name(device)}; plan: "
          + " + ".join(f"{kind} ({epochs} epochs)" for kind, epochs in plan), flush=True)

    def epochs_after(k: int) -> int:
        return sum(epochs for _, epochs in plan[k + 1:])

    nets, member_scores, history = [], [], []
    for k in range(cfg.members):
        net, net_history = train_network(cfg, seeds[k], f"[member {k + 1}/{cfg.members}]", cfg.epochs, x_train,
                                         y_train, x_val, val_faces.keypoints, use_aux, precision,
                                         flip_tta=cfg.flip_tta, epochs_after=epochs_after(k), device=device)
        nets.append(net)
        member_scores.append(net_history[-1]["val_score"])
        history += net_history
    ensemble = ServingModel(nets, cfg.flip_tta).eval() if nets else None
    teacher_card: dict = {}
    if cfg.student:
        teacher = build_teacher(cfg, nets, device)
        teacher_pred = denormalize(predict(teacher, x_val))
        source = cfg.teacher or f"the {len(nets)} members of this run, mirrored {cfg.teacher_flip}"
        if cfg.teacher_tta_shift:
            source += f", views moved ±{cfg.teacher_tta_shift} px"
        teacher_card = {"source": source,
                        "validation_score": metrics.score(teacher_pred, val_faces.keypoints),
                        "validation_rmse_px": metrics.rmse_px(teacher_pred, val_faces.keypoints)}
        print(f"teacher: {teacher_card['source']}: validation score {teacher_card['validation_score']:.1f}",
              flush=True)
        student, student_history = train_network(cfg, seeds[-1], "[student]", cfg.student_epochs, x_train,
                                                 y_train, x_val, val_faces.keypoints, use_aux, precision,
                                                 teacher=teacher, flip_tta=cfg.student_flip_tta, device=device)
        history += student_history
        views = shift_views(cfg.student_tta_shift if cfg.student_flip_tta else 0)  # the bare pass without
        exported = ServingModel(student, cfg.student_flip_tta, views).eval()
    else:
        exported = ensemble

    pred = denormalize(predict(exported, x_val))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    export(exported, out / MODEL_FILE)
    exported_nets = list(exported.nets)
    card = {
        "model_file": MODEL_FILE,
        "input": "(N, 1, 96, 96) float32 grayscale in [0, 1]",
        "output": "(N, 15, 2) normalized (x, y) = (pixel - 48) / 48, keypoints in 'keypoints' order",
        "keypoints": list(KEYPOINT_NAMES),
        "network_passes_per_face": len(exported_nets) * exported.passes_per_net,
        "validation": {
            "score": metrics.score(pred, val_faces.keypoints),
            "rmse_px": metrics.rmse_px(pred, val_faces.keypoints),
            "rmse_px_per_keypoint": metrics.rmse_px_by_name(pred, val_faces.keypoints),
            "score_per_member": member_scores,
            "label_x_offset_px": [label_x_offset_px(net) for net in exported_nets],
            "faces": len(val_faces),
            "people": len(set(val_faces.people)),
            "seen_in_training": cfg.all_people,
        },
        "teacher": teacher_card,
        "members": len(nets),
        "member_seeds": seeds[:cfg.members],
        "student_seed": seeds[-1] if cfg.student else None,
        "parameters": count_parameters(exported),
        "size_bytes": (out / MODEL_FILE).stat().st_size,
        "training_minutes": round((time.time() - start) / 60, 2),
        "precision": precision,
        "device": device_name(device),
        "data": {"path": faces.source, "faces": len(faces), "train_faces": len(train_faces),
                 "train_people": len(set(train_faces.people)), "split": split_rule(cfg)},
        "config": dataclasses.asdict(cfg),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": machine(),  # training_minutes differ 1.5-2x between CPUs (a 2-core Xeon with AMX, a 2-core EPYC)
        "command": command_line(),
        "history": history,
    }
    if exported.passes_per_net > 1:
        card["validation"]["score_without_flip_tta"] = metrics.score(
            denormalize(predict(ServingModel(exported_nets, False), x_val)), val_faces.keypoints)
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    members = ", ".join(f"{s:.1f}" for s in card["validation"]["score_per_member"])
    teacher_note = f", teacher {teacher_card['validation_score']:.1f}" if teacher_card else ""
    print(f"saved {out / MODEL_FILE} ({card['size_bytes'] / 1e6:.1f} MB, {card['network_passes_per_face']} "
          f"network pass(es) per face) and {out / CARD_FILE}: validation score {card['validation']['score']:.1f} "
          f"(members alone: {members or '-'}{teacher_note}), rmse {card['validation']['rmse_px']:.3f} px, "
          f"{card['training_minutes']:.1f} min", flush=True)
    return card


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        train(cfg)
    except facedata.DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
