"""The shipped recipe as named, frozen parts: two teachers, their student, and the views it is served with.

Each network is a Stage: its architecture, its length and its seed. The numbers are the ones the shipped
model was trained with (docs/accuracy.md has the five-fold estimate of each choice); changing one is a new
recipe, to be measured with train/cv.py before it replaces these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

NETWORK_BLOCKS = (1, 1, 2, 2)  # residual blocks per stage (48x48, 24x24, 12x12, 6x6)
NETWORK_HEAD = (2, 3)  # 3x3 convolutions fusing the stages at 24x24, and the heatmaps' kernel


@dataclass(frozen=True)
class Stage:
    """One network of the recipe, trained from its own seed."""

    name: str  # also its file's name under OUT/teachers/ for a teacher
    widths: tuple[int, ...]  # channels of the 48x48, 24x24, 12x12 and 6x6 stages
    epochs: int
    seed: int  # initialization, batch order, augmentation
    lr_floor: float  # the cosine schedule ends at lr * lr_floor
    blocks: tuple[int, ...] = NETWORK_BLOCKS
    head: tuple[int, int] = NETWORK_HEAD


@dataclass(frozen=True)
class Views:
    """The test-time views averaged inside the exported file: the face as it is, moved shift pixels down-right
    and up-left (0: not moved), each also mirrored when flip."""

    flip: bool
    shift: int

    @property
    def passes(self) -> int:
        return (3 if self.shift else 1) * (2 if self.flip else 1)


@dataclass(frozen=True)
class Recipe:
    """What train/run.py trains: the teachers (each served with its mirrored pass), then their student."""

    name: str
    teachers: tuple[Stage, ...]
    student: Stage
    served: Views
    max_faces: int = 0  # train on the first N faces only (0: all)


TEACHER_LONG = Stage("long", widths=(16, 32, 96, 192), epochs=120, seed=2, lr_floor=0.25)
TEACHER_SHORT = Stage("short", widths=(16, 32, 96, 192), epochs=60, seed=0, lr_floor=0.0)
# The 24x24 stage and the heatmap head twice a teacher's width: +55 % a pass, and a better student.
STUDENT = Stage("student", widths=(16, 64, 96, 192), epochs=100, seed=0, lr_floor=0.25)
SERVED_VIEWS = Views(flip=True, shift=3)
TEACHER_VIEWS = Views(flip=True, shift=0)

SHIPPED = Recipe("shipped", teachers=(TEACHER_LONG, TEACHER_SHORT), student=STUDENT, served=SERVED_VIEWS)

_TINY = dict(widths=(8, 16, 32, 64), epochs=3, seed=0, lr_floor=0.25, blocks=(1, 1, 1, 1))
HEAD11 = Recipe("head11", teachers=SHIPPED.teachers, student=dataclasses.replace(STUDENT, head=(1, 1)),
                served=SERVED_VIEWS)
"""Experiment: the shipped recipe with a lighter student head (one fusing 3x3 convolution, 1x1 heatmaps): 12 %
less time a face in bf16 on one EPYC thread. Leaves with its verdict (docs/accuracy.md)."""

QUICK = Recipe("quick", teachers=(Stage("quick", **_TINY),), student=Stage("student", **_TINY), served=SERVED_VIEWS,
               max_faces=1024)
"""A run of about a minute with every part of the shipped one: for tests and smoke runs, not for scores."""

RECIPES = {recipe.name: recipe for recipe in (SHIPPED, HEAD11, QUICK)}
"""The recipes train/run.py trains by name (--recipe NAME)."""
