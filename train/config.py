"""The training settings that are not the recipe's named parts (train/recipe.py): data, split, device and
the optimization, each also a flag of train/run.py. Product settings only: an experiment gets a flag while it
is measured, and leaves with its verdict (docs/accuracy.md's ablation table keeps it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from train.augment import AugmentConfig


@dataclass
class Config:
    data: str = ""  # npz or Kaggle CSV; empty = $FACEKP_DATA or ../shared/data/facial_keypoints/
    out: str = "model_store"
    teachers: str = ""  # "": train the recipe's teachers first; A.pt+B.pt: the student learns from their mean
    recipe: str = "shipped"  # one of train/recipe.py's RECIPES; --quick: "quick" (tiny, 3 epochs, 1024 faces)
    all_people: bool = True  # train on every person (the shipped model); validation people are then seen
    fold: int = -1  # -1: the fixed 15 % validation people; k: validate on fold k of --folds (train/cv.py)
    folds: int = 5
    device: str = "auto"  # auto: CUDA when there is a GPU, else the CPU | cuda | cpu
    precision: str = "auto"  # auto: bfloat16 autocast on CUDA and where the CPU has AMX / AVX-512 BF16, else fp32
    threads: int = 0  # torch threads (0 = torch's default)
    seed: int = 0  # added to every stage's seed (train/recipe.py): 0 is the shipped recipe, 1, 2, ... its seed spread
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    ema_decay: float = 0.998
    distill: float = 0.5  # weight of the teacher's keypoints against the labels in the student's loss
    aux68: float = 0.5  # weight of the 68-point labels as auxiliary targets (0 = off)
    view_reuse: int = 2  # the student's augmented views and their teacher answers serve this many epochs
    val_every: int = 5  # score the validation faces every this many epochs (and after the last)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


QUICK_SETTINGS = {"all_people": False, "aux68": 0.0}  # what --quick changes besides the recipe
