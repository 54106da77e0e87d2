"""Train the shipped model end to end: its two teachers, then their student, exported with its served views.

    python train/run.py                       # the whole recipe on all 295 people (teachers too): ~55 min on a
                                              # 2-core Xeon with AMX, ~110 on a 2-core EPYC, minutes on a GPU
    python train/run.py --from-teachers       # the student alone, from the committed train/teachers/ (~22 min)
    python train/run.py --fold 0 --out runs/f0   # the recipe on fold 0's training people, scored on its others
    python train/run.py --teachers a.pt+b.pt --no-all-people --out runs/s   # a student of teachers of your own
    python train/run.py --quick --out /tmp/m  # every part in about a minute: a smoke run

Writes OUT/keypoints.pt (TorchScript) and OUT/model_card.json; a run that trains its teachers also writes
OUT/teachers/{long,short}.pt with their cards. The recipe's parts (architectures, epochs, seeds, views) are
named in train/recipe.py; the settings are the rest (Config in train/config.py), each also a command-line flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from facekp import data as facedata
from facekp import metrics
from facekp.contract import denormalize
from train import calibrate, quantized
from train.augment import AugmentConfig
from train.config import QUICK_SETTINGS, Config
from train.exported import (
    CARD_FILE,
    COMMITTED_TEACHERS,
    MODEL_FILE,
    TEACHERS_DIR,
    card_beside,
    command_line,
    load_teacher,
    predict,
    to_tensors,
    write_model,
)
from train.loop import (
    Faces,
    build_net,
    device_name,
    train_network,
    training_device,
    training_layout,
    training_precision,
)
from train.model import ServingModel, count_parameters, shift_views
from train.recipe import RECIPES, TEACHER_VIEWS, Recipe


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-teachers", action="store_true",
                        help="the student alone, from the committed teachers: --teachers "
                             + "+".join(os.path.relpath(path) for path in COMMITTED_TEACHERS))
    for f in dataclasses.fields(Config):
        if f.name == "augment":
            continue
        flags = dict.fromkeys(["--" + f.name.replace("_", "-"), "--" + f.name])  # --view-reuse or --view_reuse
        if isinstance(f.default, bool):
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default {f.default}")
        else:
            parser.add_argument(*flags, dest=f.name, type=type(f.default), default=None,
                                help=f"default {f.default!r}")
    parser.add_argument("--quick", dest="recipe", action="store_const", const="quick",
                        help="--recipe quick: every part in about a minute, for tests and smoke runs")
    for f in dataclasses.fields(AugmentConfig):
        parser.add_argument(f"--aug-{f.name.replace('_', '-')}", dest=f"aug_{f.name}", type=float, default=None,
                            help=f"augmentation, default {f.default}")
    args = vars(parser.parse_args(argv))
    if args.pop("from_teachers"):
        if args["teachers"]:
            parser.error("--from-teachers names the committed teachers: give it or --teachers, not both")
        args["teachers"] = "+".join(os.path.relpath(path) for path in COMMITTED_TEACHERS)
    cfg = Config(**(QUICK_SETTINGS if args.get("recipe") == "quick" else {}))
    for key, value in args.items():
        if value is None:
            continue
        if key.startswith("aug_"):
            setattr(cfg.augment, key[4:], value)
        else:
            setattr(cfg, key, value)
    if cfg.fold >= 0:  # a fold run validates on its fold's people, so it cannot train on them
        if args.get("all_people"):
            parser.error("--fold validates on the fold's people: it cannot also train on --all-people")
        cfg.all_people = False
    committed = [path for path in cfg.teachers.split("+") if path and Path(path).resolve().parent == TEACHERS_DIR]
    if committed and not cfg.all_people:
        parser.error(f"{committed[0]} trained on every person, so a student of it would be validated on faces "
                     "its teacher saw: train the teachers too (no --teachers) or name files trained without them")
    for path in cfg.teachers.split("+") if cfg.teachers else []:
        if not Path(path).is_file():
            parser.error(f"--teachers {path}: no such file (a TorchScript model from train/run.py)")
    if cfg.recipe not in RECIPES:
        parser.error(f"--recipe is one of {', '.join(RECIPES)} (train/recipe.py)")
    if cfg.view_reuse < 1 or cfg.val_every < 1:
        parser.error("--view-reuse and --val-every are numbers of epochs, at least 1")
    if not 0 <= cfg.distill <= 1:
        parser.error("--distill is a weight in [0, 1]")
    if cfg.folds < 2 or cfg.fold >= cfg.folds:
        parser.error("--fold must be below --folds, and --folds at least 2")
    try:
        training_device(cfg.device)
    except ValueError as err:
        parser.error(str(err))
    return cfg


def split_rule(cfg: Config) -> str:
    if cfg.all_people:
        return ("every person trains (--all-people); the 'validation' people below are the fixed split's, "
                "seen in training: their score is not an estimate")
    if cfg.fold < 0:
        return f"by person, crc32(name) % 100 < {facedata.VALIDATION_PERCENT} -> validation"
    return f"by person, crc32(name) % {cfg.folds} == {cfg.fold} -> validation (fold {cfg.fold} of {cfg.folds})"


def load_faces(cfg: Config, recipe: Recipe) -> tuple[Faces, facedata.FaceData, dict]:
    """The run's training and validation faces (by person), as tensors and as the validation FaceData, and
    the card's description of them."""
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
    if recipe.max_faces:
        train_faces = train_faces.subset(np.arange(min(recipe.max_faces, len(train_faces))))
    aux68 = cfg.aux68 > 0
    if aux68 and train_faces.keypoints68 is None:
        print("the data has no keypoints68: training without the auxiliary targets")
        aux68 = False
    x_train, y_train = to_tensors(train_faces, aux68)
    seen = " (seen in training)" if cfg.all_people else " other people"
    print(f"data: {faces.source}: {len(train_faces)} training faces of {len(set(train_faces.people))} people, "
          f"{len(val_faces)} validation faces of {len(set(val_faces.people))}{seen}")
    described = {"path": faces.source, "faces": len(faces), "train_faces": len(train_faces),
                 "train_people": len(set(train_faces.people)), "split": split_rule(cfg)}
    return Faces(x_train, y_train, to_tensors(val_faces)[0], val_faces.keypoints), val_faces, described


def given_teacher(path: Path) -> dict:
    """A teacher file's line in the card: its command and minutes, from its own card when it has one."""
    card_file = card_beside(path)
    card = {} if card_file is None else json.loads(card_file.read_text())
    return {"stage": f"teacher {path.stem}", "file": str(path), "command": card.get("command"),
            "minutes": card.get("training_minutes"), "validation_score": card.get("validation", {}).get("score")}


def reseeded(recipe: Recipe, offset: int) -> Recipe:
    """The recipe with offset added to every stage's seed: the same recipe, another draw of its randomness."""
    if not offset:
        return recipe
    again = [dataclasses.replace(stage, seed=stage.seed + offset) for stage in (*recipe.teachers, recipe.student)]
    return dataclasses.replace(recipe, teachers=tuple(again[:-1]), student=again[-1])


def train(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.time()
    recipe = reseeded(RECIPES[cfg.recipe], cfg.seed)
    device = training_device(cfg.device)
    precision = training_precision(cfg.precision, device)
    faces, val_faces, described = load_faces(cfg, recipe)
    out = Path(cfg.out)
    command = command_line()
    teacher_files = [Path(path) for path in cfg.teachers.split("+")] if cfg.teachers else []
    to_train = () if teacher_files else recipe.teachers
    plan = [*(f"teacher {s.name} ({s.epochs} epochs)" for s in to_train), f"student ({recipe.student.epochs} epochs)"]
    teachers = f"widths {to_train[0].widths}" if to_train else cfg.teachers
    student_parameters = count_parameters(build_net(recipe.student, faces.aux68))
    print(f"recipe {recipe.name}: {precision} on {device_name(device)}; teachers {teachers}; student widths "
          f"{recipe.student.widths}, {student_parameters:,} parameters, exported with views 1, 2 and 6 "
          f"(forward(): {recipe.served.passes}); plan: " + " + ".join(plan), flush=True)

    common = {"precision": precision, "device": device_name(device), "data": described,
              "config": dataclasses.asdict(cfg), "recipe": recipe.name, "command": command}
    stages: list[dict] = [given_teacher(path) for path in teacher_files]
    for k, stage in enumerate(to_train):
        later = sum(s.epochs for s in to_train[k + 1:]) + recipe.student.epochs
        stage_start = time.time()
        net, history = train_network(cfg, stage, faces, precision, f"[teacher {stage.name}]", epochs_after=later,
                                     device=device)
        path = out / "teachers" / f"{stage.name}.pt"
        minutes = round((time.time() - stage_start) / 60, 2)
        card = write_model(ServingModel(net, TEACHER_VIEWS.flip), stage, TEACHER_VIEWS, path, path.with_suffix(".json"),
                           val_faces, cfg.all_people, {**common, "training_minutes": minutes, "history": history})
        stages.append({"stage": f"teacher {stage.name}", "file": str(path), "command": command, "minutes": minutes,
                       "validation_score": card["validation"]["score"]})
        teacher_files.append(path)
        print(f"saved {path}: validation score {card['validation']['score']:.1f}, {minutes:.1f} min", flush=True)

    spec = "+".join(str(path) for path in teacher_files)
    teacher = load_teacher(spec).to(device, memory_format=training_layout(precision, device))  # as its inputs
    teacher_pred = denormalize(predict(teacher, faces.x_val))
    teacher_card = {"source": spec, "validation_score": metrics.score(teacher_pred, faces.val_keypoints),
                    "validation_rmse_px": metrics.rmse_px(teacher_pred, faces.val_keypoints)}
    print(f"teacher: {spec}: validation score {teacher_card['validation_score']:.1f}", flush=True)
    stage_start = time.time()
    student, history = train_network(cfg, recipe.student, faces, precision, "[student]", teacher=teacher,
                                     device=device)
    minutes = round((time.time() - stage_start) / 60, 2)
    exported = ServingModel(student, recipe.served.flip, shift_views(recipe.served.shift)).eval()
    confidence = (calibrate.described(calibrate.CALIBRATION, json.loads(calibrate.CALIBRATION.read_text()))
                  if calibrate.apply(exported) else "uncalibrated: every point 0.5 (train/calibrate.py)")
    stages.append({"stage": "student", "file": str(out / MODEL_FILE), "command": command, "minutes": minutes})
    card = write_model(exported, recipe.student, recipe.served, out / MODEL_FILE, out / CARD_FILE, val_faces,
                       cfg.all_people, {**common, "teacher": teacher_card, "stages": stages, "confidence": confidence,
                        "training_minutes": round((time.time() - start) / 60, 2), "history": history})
    if cfg.recipe != "quick":  # the files of the CPU's runtime, onnx-int8, calibrated on faces it trained on
        quantized.write_int8_files(out / MODEL_FILE, quantized.sample(faces.x_train.numpy()))
    print(f"saved {out / MODEL_FILE} ({card['size_bytes'] / 1e6:.1f} MB, {card['network_passes_per_face']} network "
          f"passes per face) and {out / CARD_FILE}: validation score {card['validation']['score']:.1f} (teacher "
          f"{teacher_card['validation_score']:.1f}), rmse {card['validation']['rmse_px']:.3f} px, "
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
