"""Where a student's training step goes: augmentation, the teacher's answer, the student's own step.

    python train/studies/step_cost.py                      # the default run's teacher (train/teachers/long.pt+short.pt)
    python train/studies/step_cost.py --teacher A.pt+B.pt  # another teacher
    python train/studies/step_cost.py --student-widths 16 96 128 256   # another student

A benchmark, not a test: it times one batch of random faces for each part, on this machine, in the
precision training picks here. Run it with nothing else training; docs/accuracy.md has its output.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from facekp.contract import IMAGE_SIZE, NUM_KEYPOINTS
from facekp.machine import machine
from handler.inference import autocast, choose_precision
from train.augment import augment
from train.config import Config
from train.exported import COMMITTED_TEACHERS, card_beside, exported_networks, load_teacher, predict
from train.loop import build_net, weight_average
from train.model import ServingModel
from train.recipe import STUDENT

VALIDATION_FACES = 593  # the fixed split's validation people, which train/run.py scores every --val-every epochs


def milliseconds(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of one call after warm-up (the traced file's first calls profile its graph)."""
    for _ in range(5):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def rebuilt(spec: str) -> torch.nn.Module:
    """The teacher's networks rebuilt as modules, with their mirrored pass: the traced files' arithmetic."""
    files = [exported_networks(Path(path)) for path in spec.split("+")]
    return ServingModel([ServingModel(nets, mirrored) for nets, mirrored in files], flip=False).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="+".join(os.path.relpath(path) for path in COMMITTED_TEACHERS))
    parser.add_argument("--student-widths", type=int, nargs="+", default=list(STUDENT.widths))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--train-faces", type=int, default=3601, help="faces an epoch trains on (all people: 3601)")
    args = parser.parse_args(argv)
    for path in args.teacher.split("+"):
        if card_beside(Path(path)) is None:
            parser.error(f"--teacher {path}: no model card beside it (a model from train/run.py)")
    cfg = Config()
    stage = dataclasses.replace(STUDENT, widths=tuple(args.student_widths))
    precision = choose_precision(cfg.precision, torch.device("cpu"))
    torch.manual_seed(0)
    images = torch.rand(cfg.batch_size, 1, IMAGE_SIZE, IMAGE_SIZE).contiguous(memory_format=torch.channels_last)
    targets = torch.rand(cfg.batch_size, NUM_KEYPOINTS + 68, 2) - 0.5
    student = build_net(stage, aux68=True).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)

    def answer(teacher: torch.nn.Module) -> Callable[[], object]:
        def step() -> torch.Tensor:
            with torch.no_grad(), autocast(precision):
                return teacher(images).float()
        return step

    def student_step() -> None:
        with autocast(precision):
            loss = student(images).float().abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ema = weight_average(student, cfg.ema_decay)
    faces = torch.rand(VALIDATION_FACES, 1, IMAGE_SIZE, IMAGE_SIZE)
    steps_per_epoch = -(-args.train_faces // cfg.batch_size)

    def validation() -> None:  # as train_network scores its EMA weights
        predict(ServingModel(ema.module, flip=True), faces)

    parts = [
        ("augmentation", lambda: augment(images, targets, cfg.augment, gen, student.mirror)),
        ("teacher, the traced files (mirrored)",  # what training runs by default
         answer(load_teacher(args.teacher).to(memory_format=torch.channels_last))),
        ("teacher, rebuilt from their cards (mirrored; not used: slower than the files here)",
         answer(rebuilt(args.teacher).to(memory_format=torch.channels_last))),
        ("teacher, rebuilt, without the mirrored pass (load_teacher(flip=False))",
         answer(load_teacher(args.teacher, flip=False).to(memory_format=torch.channels_last))),
        ("student: forward, backward, AdamW", student_step),
        ("student: the EMA of its weights", lambda: ema.update_parameters(student)),
    ]
    print(f"{machine()}, {precision}, {torch.get_num_threads()} threads, batch {cfg.batch_size}; "
          f"teacher {args.teacher}; student widths {stage.widths}", flush=True)
    for name, step in parts:
        print(f"{milliseconds(step, args.repeats):7.1f} ms  {name}", flush=True)
    whole = milliseconds(validation, max(3, args.repeats // 5))
    print(f"{whole / steps_per_epoch:7.1f} ms  validation after each epoch: {whole / 1000:.2f} s for "
          f"{VALIDATION_FACES} faces and their mirror images (float32), "
          f"over an epoch's {steps_per_epoch} steps of {args.train_faces} faces (train/run.py: every "
          f"{cfg.val_every} epochs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
