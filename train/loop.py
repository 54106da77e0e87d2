"""Training one network: augmented views, the loss against labels and a teacher, AdamW on a warmup-cosine
schedule, and the EMA of the weights that is scored and exported. On the CPU or a CUDA GPU."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from facekp import metrics
from facekp.contract import NUM_KEYPOINTS, denormalize
from handler.inference import autocast, choose_precision
from train.augment import augment
from train.exported import predict
from train.model import KeypointNet, ServingModel, label_x_offset_px
from train.recipe import Stage

if TYPE_CHECKING:
    from train.config import Config

CPU = torch.device("cpu")
Teacher = Callable[[torch.Tensor], torch.Tensor]
Views = Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]  # images, targets, teacher's answers


@dataclass
class Faces:
    """A run's faces as tensors: training images and targets (15 points, then the 68 when used), and the
    validation images with their pixel labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    val_keypoints: np.ndarray

    @property
    def aux68(self) -> bool:
        return self.y_train.shape[1] > NUM_KEYPOINTS


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


def keypoint_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 over labelled coordinates only: rows with missing keypoints still teach the rest."""
    known = torch.isfinite(target)
    return (pred[known] - target[known]).abs().mean()


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warmup, then a cosine from peak down to peak * floor."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_net(stage: Stage, aux68: bool) -> KeypointNet:
    return KeypointNet(stage.widths, stage.blocks, extra_points=68 if aux68 else 0, head=stage.head)


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


def training_layout(precision: str, device: torch.device = CPU) -> torch.memory_format:
    """The memory layout a network trains in: channels-last, where oneDNN's convolutions run 1.3x faster in bf16;
    in fp32 on a CPU the standard one, since oneDNN's AVX-512 1x1 convolution crashes computing its weights'
    gradient on channels-last there (torch 2.13, a segmentation fault on a 2-core EPYC), for 1.1x at best."""
    return torch.contiguous_format if precision == "fp32" and device.type == "cpu" else torch.channels_last


def fresh_views(faces: Faces, order: torch.Tensor, cfg: Config, gen: torch.Generator, mirror: Callable,
                teacher: Teacher | None, precision: str, kept: list | None = None, device: torch.device = CPU) -> Views:
    """One epoch of newly augmented views (images, targets, the teacher's answers or None) on device, in batches.

    Augmentation runs on device too (its random numbers from the seeded CPU generator). With kept (a
    list), each batch is also appended to it for replayed_views.
    """
    for idx in order.split(cfg.batch_size):
        images, target = augment(faces.x_train[idx].to(device), faces.y_train[idx].to(device), cfg.augment, gen,
                                 mirror)
        images = images.contiguous(memory_format=training_layout(precision, device))
        taught = None
        if teacher is not None:
            with torch.no_grad(), autocast(precision, device.type):
                taught = teacher(images).float()
        if kept is not None:
            kept.append((images.detach(), target.detach(), taught))
        yield images, target, taught


def replayed_views(kept: list, batch_size: int, flip: float, gen: torch.Generator, mirror: Callable,
                   layout: torch.memory_format = torch.channels_last) -> Views:
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
                # mirror() takes every point the net predicts, and the 15 permute among themselves, so the
                # labels' auxiliary points only fill the shape
                both = torch.cat([answer[flipped], label[flipped][:, NUM_KEYPOINTS:]], dim=1)
                answer[flipped] = mirror(both)[:, :NUM_KEYPOINTS]
            label[flipped] = mirror(label[flipped])  # carries the label offset's gradient, as in augment()
        yield view.contiguous(memory_format=layout), label, answer


def train_network(cfg: Config, stage: Stage, faces: Faces, precision: str, tag: str, teacher: Teacher | None = None,
                  epochs_after: int = 0, device: torch.device = CPU) -> tuple[KeypointNet, list[dict]]:
    """Train one network of the recipe on device; returns the EMA weights (on the CPU) and the history.

    With a teacher, the 15 keypoints learn from (1 - distill) x labels + distill x the teacher's keypoints for
    the same augmented view, each view's answers kept for view_reuse epochs; the 68 auxiliary points from the
    labels alone. epochs_after: the epochs of the stages still to come, for the time left.
    """
    print(f"{tag} training {'a student of the teacher' if teacher else 'a network'}, seed {stage.seed}, "
          f"{stage.epochs} epochs, {precision}{'' if device.type == 'cpu' else ' on ' + device_name(device)}",
          flush=True)
    torch.manual_seed(stage.seed)
    gen = torch.Generator().manual_seed(stage.seed)
    net = build_net(stage, faces.aux68).to(device, memory_format=training_layout(precision, device))
    ema = weight_average(net, cfg.ema_decay)
    decay = [p for name, p in net.named_parameters() if p.ndim > 1 and name != "label_offset"]
    no_decay = [p for name, p in net.named_parameters() if p.ndim <= 1 or name == "label_offset"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = math.ceil(len(faces.x_train) / cfg.batch_size)
    total_steps = stage.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    reuse = cfg.view_reuse if teacher is not None else 1
    history, step, start = [], 0, time.time()
    for epoch in range(1, stage.epochs + 1):
        net.train()
        if (epoch - 1) % reuse == 0:
            order = torch.randperm(len(faces.x_train), generator=gen)
            kept: list = []
            batches = fresh_views(faces, order, cfg, gen, net.mirror, teacher, precision,
                                  kept if reuse > 1 else None, device)
        else:
            batches = replayed_views(kept, cfg.batch_size, cfg.augment.flip, gen, net.mirror,
                                     training_layout(precision, device))
        losses = []
        for images, target, taught in batches:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, cfg.lr, stage.lr_floor)
            with autocast(precision, device.type):
                pred = net(images).float()
            loss = keypoint_loss(pred[:, :NUM_KEYPOINTS], target[:, :NUM_KEYPOINTS])
            if teacher is not None:
                loss = (1 - cfg.distill) * loss + cfg.distill * keypoint_loss(pred[:, :NUM_KEYPOINTS], taught)
            if faces.aux68:
                loss = loss + cfg.aux68 * keypoint_loss(pred[:, NUM_KEYPOINTS:], target[:, NUM_KEYPOINTS:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(net)
            losses.append(loss.item())
            step += 1
        row = {"member": tag, "seed": stage.seed, "epoch": epoch, "train_loss": float(np.mean(losses))}
        if epoch % cfg.val_every == 0 or epoch == stage.epochs:  # the EMA weights scored: read only
            pred = denormalize(predict(ServingModel(ema.module, flip=True), faces.x_val))
            row.update(val_score=metrics.score(pred, faces.val_keypoints),
                       val_rmse_px=metrics.rmse_px(pred, faces.val_keypoints),
                       label_x_offset_px=label_x_offset_px(ema.module))
        elapsed = time.time() - start
        history.append({**row, "minutes": elapsed / 60})
        left = elapsed / epoch * (stage.epochs - epoch + epochs_after)  # the whole run, roughly
        scored = (f"val score {row['val_score']:7.1f}  rmse {row['val_rmse_px']:.3f}px  "
                  f"label x offset {row['label_x_offset_px']:+.2f}px" if "val_score" in row else "")
        print(f"{tag} epoch {epoch:3d}/{stage.epochs}  loss {row['train_loss']:.4f}  {scored:55}  "
              f"{elapsed / 60:5.1f} min  ~{left / 60:.1f} min left", flush=True)
    return ema.module.to("cpu", memory_format=torch.contiguous_format).eval(), history  # exported as before
