"""Whole frames and multi-face scenes with known keypoints, and how a photo-path answer is scored.

    python -m facekp.photos calibrate     # DETECTOR_LAYOUT of handler/roll.py, from the training people

The frames (../shared/data/frames: 2 per person, the 15 keypoints in frame pixels) are data set
images: never committed. Scenes are built from them: several frames pasted at different scales
onto one 1280x960 canvas (faces from 12 to 150 px between the outer eye corners).

Scoring, per labelled face: found if some answered face has its keypoints' centre inside the
labelled face's keypoint box (grown by 25 %); NME = mean point error / distance between the outer
eye corners (the 300-W convention). An answered face that matches no pasted frame is a false face
(faces inside a pasted frame that match no label may be real, unlabelled people, and are not
counted either way).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from facekp import data as facedata
from facekp import metrics
from facekp.contract import KEYPOINT_NAMES, MEAN_LAYOUT, OUTER_EYES, rescale_pixels

DEFAULT_FRAMES = facedata.REPO_ROOT.parent / "shared" / "data" / "frames"
SCENE_SIZE = (1280, 960)


@dataclass
class Frame:
    path: Path
    person: str
    keypoints: np.ndarray  # (15, 2) frame pixels
    keypoints68: np.ndarray | None = None  # (68, 2) frame pixels, iBUG order, where frames.csv has them

    def labels(self, points: int = 15) -> np.ndarray:
        if points == 68 and self.keypoints68 is None:
            raise facedata.DataError(f"{self.path.name}: frames.csv has no 68-point labels (p68_k_x, p68_k_y)")
        return self.keypoints68 if points == 68 else self.keypoints


@dataclass
class Scene:
    """An image and the labelled faces in it: (15, 2) keypoints each, and the regions pasted."""

    image: Image.Image
    faces: list[np.ndarray]
    regions: list[tuple[float, float, float, float]] = field(default_factory=list)  # x0, y0, x1, y1
    name: str = ""
    path_bytes: bytes = b""  # a frame is sent as its own file; a built scene as JPEG


def load_frames(folder: str | Path | None = None, split: str = "all") -> list[Frame]:
    """The frames of frames.csv of the people of `split` (facekp.data.SPLITS)."""
    folder = Path(folder or DEFAULT_FRAMES)
    table = folder / "frames.csv"
    if not table.exists():
        raise facedata.DataError(f"frames not found at {table}: pass --data FRAMES_DIR (../shared/data/frames)")
    frames = []
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            if facedata.in_split(row["person"], split):
                points = np.array([[float(row[f"{n}_x"]), float(row[f"{n}_y"])] for n in KEYPOINT_NAMES])
                ibug = (np.array([[float(row[f"p68_{k}_x"]), float(row[f"p68_{k}_y"])] for k in range(68)])
                        if "p68_0_x" in row else None)
                frames.append(Frame(folder / "images" / row["file"], row["person"], points, ibug))
    return frames


def frame_scene(frame: Frame, points: int = 15) -> Scene:
    image = Image.open(frame.path).convert("RGB")
    return Scene(image, [frame.labels(points)], [(0, 0, *image.size)], frame.path.name)


def rotate_scene(scene: Scene, degrees: float) -> Scene:
    """The scene turned clockwise by `degrees` as seen in the image (a head rolled that way), on a canvas grown to
    hold all of it (black corners), its labels turned with it; a pasted region becomes the box around its
    turned corners."""
    from handler.square import turn_image, turned_points

    if degrees % 360 == 0:
        return scene
    turned = Image.fromarray(turn_image(np.asarray(scene.image), degrees))

    def move(points: np.ndarray) -> np.ndarray:
        return turned_points(points, degrees, scene.image.size, turned.size)

    regions = []
    for x0, y0, x1, y1 in scene.regions:
        corners = move(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - 0.5) + 0.5  # edges, as the regions
        regions.append((*corners.min(0), *corners.max(0)))
    return Scene(turned, [move(face) for face in scene.faces], regions, f"{scene.name}@{degrees:g}")


def rotated_for_sending(scene: Scene, degrees: float) -> Scene:
    """rotate_scene, with its image encoded once as it is sent (JPEG q95)."""
    turned = rotate_scene(scene, degrees)
    turned.path_bytes = jpeg_bytes(turned.image, 95)
    return turned


def hardened(scene: Scene, case: str, seed: int = 0) -> Scene:
    """The scene as a hard photo of HARD_CASES shows it, its labels where the face now is; encoded as it is sent
    (JPEG q95, or q8 for "jpeg8")."""
    from PIL import ImageFilter

    rng = np.random.default_rng(seed)
    image, faces, regions = scene.image, scene.faces, scene.regions
    if case == "blur":
        image = image.filter(ImageFilter.GaussianBlur(2.5))
    elif case == "dark":  # an underexposed, noisy shot
        light = (np.asarray(image, np.float64) / 255) ** 2.2 * 0.35
        dark = light * 255 + rng.normal(0, 3, (image.height, image.width, 3))
        image = Image.fromarray(dark.clip(0, 255).astype(np.uint8))
    elif case == "mask":  # the lower face covered, as by a medical mask: from the nose tip down
        image = image.copy()
        pen = ImageDraw.Draw(image)
        for points in faces:
            nose, eyes = points[KEYPOINT_NAMES.index("nose_tip")], eye_distance(points)
            mouth = points[[KEYPOINT_NAMES.index(n) for n in ("mouth_left_corner", "mouth_right_corner")]]
            centre = mouth.mean(0)
            pen.rectangle([centre[0] - 0.75 * eyes, nose[1] - 0.05 * eyes, centre[0] + 0.75 * eyes,
                           centre[1] + 0.75 * eyes], fill=(190, 205, 215))
    elif case == "small":
        scale = 0.35
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
        faces = [rescale_pixels(points, scale) for points in faces]
        regions = [tuple(v * scale for v in region) for region in regions]
    elif case != "jpeg8":
        raise ValueError(f"no such hard case {case!r}: one of {', '.join(HARD_CASES)}")
    hard = Scene(image, faces, regions, f"{scene.name}/{case}")
    hard.path_bytes = jpeg_bytes(image, 8 if case == "jpeg8" else 95)
    return hard


HARD_CASES = ("blur", "dark", "jpeg8", "mask", "small")
"""Photos as they come hard: Gaussian blur of radius 2.5; dark (gamma 2.2 of the light, x 0.35, noise); JPEG
quality 8; the lower face covered; the photo at 0.35 of its size."""


def eye_distance(points: np.ndarray) -> float:
    """Between the outer eye corners: of the 15 named keypoints, or iBUG points 36 and 45 of the 68."""
    first, second = OUTER_EYES if len(points) == len(KEYPOINT_NAMES) else metrics.OUTER_EYE_CORNERS
    return float(np.linalg.norm(points[first] - points[second]))


def build_scene(frames: list[Frame], rng: np.random.Generator, faces: int = 6,
                eye_px: tuple[float, float] = (12.0, 150.0), name: str = "", points: int = 15) -> Scene:
    """`faces` frames pasted without overlap onto a noisy gradient, each scaled so that its labelled face's
    outer eye corners are a log-uniform draw from eye_px apart."""
    width, height = SCENE_SIZE
    ramp = np.linspace(60, 190, width)[None, :, None] * np.ones((height, 1, 3))
    canvas = Image.fromarray((ramp + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8))
    placed: list[tuple[float, float, float, float]] = []
    labels = []
    for frame in rng.choice(frames, size=faces, replace=False):
        photo = Image.open(frame.path).convert("RGB")
        target = float(np.exp(rng.uniform(*np.log(eye_px))))
        scale = target / eye_distance(frame.keypoints)
        w, h = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
        if w >= width or h >= height:
            continue
        for _ in range(50):  # a free spot, else leave this frame out
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            if all(x + w <= a or b <= x or y + h <= c or d <= y for a, c, b, d in placed):
                canvas.paste(photo.resize((w, h), Image.Resampling.LANCZOS), (x, y))
                placed.append((x, y, x + w, y + h))
                labels.append(rescale_pixels(frame.labels(points), [w / photo.width, h / photo.height], [x, y]))
                break
    return Scene(canvas, labels, placed, name)


def build_scenes(frames: list[Frame], count: int, seed: int = 0, points: int = 15) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [build_scene(frames, rng, faces=int(rng.integers(2, 7)), name=f"scene_{k}", points=points)
            for k in range(count)]


@dataclass
class SceneScore:
    found: list[bool] = field(default_factory=list)  # per labelled face
    eye_px: list[float] = field(default_factory=list)
    nme: list[float] = field(default_factory=list)  # per found face
    false_faces: int = 0
    images: int = 0
    point_errors: list[np.ndarray] = field(default_factory=list)  # per found face: each point's error / eye distance
    confidences: list[np.ndarray] = field(default_factory=list)  # per found face: each point's (NaN: none answered)

    def add(self, scene: Scene, answered: list[np.ndarray]) -> None:
        """answered: the keypoints of each face the service returned, (15, 2) or (68, 2) as the labels, or with
        each point's confidence as a third column."""
        self.images += 1
        used = set()
        for truth in scene.faces:
            low, high = truth.min(0), truth.max(0)
            grow = 0.25 * (high - low)
            best, best_nme = None, np.inf
            for k, answer in enumerate(answered):
                points = answer[:, :2]
                centre = points.mean(0)
                if k not in used and np.all(centre >= low - grow) and np.all(centre <= high + grow):
                    nme = float(np.linalg.norm(points - truth, axis=1).mean() / eye_distance(truth))
                    if nme < best_nme:
                        best, best_nme = k, nme
            self.found.append(best is not None)
            self.eye_px.append(eye_distance(truth))
            if best is not None:
                used.add(best)
                self.nme.append(best_nme)
                answer = answered[best]
                self.point_errors.append(np.linalg.norm(answer[:, :2] - truth, axis=1) / eye_distance(truth))
                self.confidences.append(answer[:, 2] if answer.shape[1] > 2 else np.full(len(answer), np.nan))
        for k, answer in enumerate(answered):
            cx, cy = answer[:, :2].mean(0)
            if k not in used and not any(a <= cx <= b and c <= cy <= d for a, c, b, d in scene.regions):
                self.false_faces += 1

    def summary(self, min_eye_px: float = 20.0) -> dict:
        found, eyes, nme = np.array(self.found), np.array(self.eye_px), np.array(self.nme)
        big = eyes >= min_eye_px
        return {"faces": len(found), "recall": float(found.mean()) if len(found) else float("nan"),
                f"recall_eyes_{min_eye_px:g}px_up": float(found[big].mean()) if big.any() else float("nan"),
                "nme_pct": 100 * float(nme.mean()) if len(nme) else float("nan"),
                "nme_over_10pct": 100 * float((nme > 0.1).mean()) if len(nme) else float("nan"),
                "false_faces_per_image": self.false_faces / max(1, self.images), "images": self.images,
                "confidence": self.confidence_report()}

    def confidence_report(self) -> dict | None:
        """How well the answered confidence ranks the found faces' point errors (None: no confidence answered)."""
        if not self.confidences or not np.isfinite(np.concatenate(self.confidences)).all():
            return None
        report = metrics.confidence_report(np.concatenate(self.confidences), np.concatenate(self.point_errors))
        report.pop("reliability")
        return report


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def answered_keypoints(answer: dict) -> list[np.ndarray]:
    """Each face's (P, 3): x, y and confidence (NaN where the answer has none)."""
    return [np.array([[p["x"], p["y"], p.get("confidence", np.nan)] for p in face["keypoints"]])
            for face in answer["faces"]]


Scorer = Callable[..., tuple["SceneScore", np.ndarray, list[str]]]
"""Called as scorer(scenes, points=P): the score, each image's milliseconds and the errors. The service over HTTP
(score_over_http with its url and concurrency bound) or dlib in-process (facekp.dlib_baseline)."""


def score_over_http(url: str, scenes: list[Scene], concurrency: int = 1, timeout: float = 60.0, points: int = 15
                    ) -> tuple[SceneScore, np.ndarray, list[str]]:
    """Send every scene (frames as their JPEG file, scenes as JPEG q90) to url asking for `points` points;
    score, latencies (ms), errors."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from facekp.replies import RETRY_STATUSES, backoff_s

    score, errors = SceneScore(), []
    latencies = np.full(len(scenes), np.nan)
    answers: list[list[np.ndarray] | None] = [None] * len(scenes)
    local = threading.local()

    def one(i: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        scene = scenes[i]
        body = scene.path_bytes or jpeg_bytes(scene.image)
        try:
            started = time.perf_counter()
            for attempt in range(6):
                reply = session.put(url, data=body, headers={"Points": str(points)}, timeout=timeout)
                if reply.status_code not in RETRY_STATUSES:
                    break
                time.sleep(backoff_s(attempt))
            latencies[i] = (time.perf_counter() - started) * 1000
            if reply.status_code != 200:
                raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
            answers[i] = answered_keypoints(reply.json())
        except Exception as err:  # counted, reported, never stops the run
            errors.append(f"{scene.name}: {type(err).__name__}: {err}")

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(scenes))))
    for scene, answer in zip(scenes, answers, strict=True):
        score.add(scene, answer or [])
    return score, latencies[np.isfinite(latencies)], errors


def evaluate_main(target: str, scorer: Scorer, data: str | None, split: str, scenes: int, seed: int = 0,
                  points: int = 15, roll: float = 0.0, hard: str | None = None) -> int:
    """`python -m facekp.evaluate --model faces` (or dlib): whole frames, then multi-face scenes, on the 15 named
    keypoints or the 68 iBUG points, answered by scorer; target names it in the progress lines. With roll, every
    image is first turned that many degrees clockwise (rotate_scene) and sent as JPEG q95; with hard, made one of
    HARD_CASES (hardened) first."""
    frames = load_frames(data, split)
    tests = {"frames": [frame_scene(f, points) for f in frames], "scenes": build_scenes(frames, scenes, seed, points)}
    for scene, frame in zip(tests["frames"], frames, strict=True):
        scene.path_bytes = frame.path.read_bytes()  # the frame's own JPEG file, as a user would send it
    if hard:
        tests = {name: [hardened(scene, hard, k) for k, scene in enumerate(items)] for name, items in tests.items()}
    if roll % 360:
        tests = {name: [rotated_for_sending(scene, roll) for scene in items] for name, items in tests.items()}
    failed = 0
    for name, items in tests.items():
        if not items:  # --scenes 0
            continue
        print(f"sending {len(items)} {name} of {len(set(f.person for f in frames))} people ({split}) to {target}",
              file=sys.stderr)
        score, latencies, errors = scorer(items, points=points)
        summary = score.summary()
        failed += len(errors)
        for line in errors[:5]:
            print(f"  failed: {line}", file=sys.stderr)
        turned = (f" turned {roll:g} degrees" if roll % 360 else "") + (f", {hard}" if hard else "")
        print(f"{name}{turned}, {points} points: {summary['faces']} labelled faces in {summary['images']} images: "
              f"recall {summary['recall']:.3f}"
              f" (eyes >= 20 px apart: {summary['recall_eyes_20px_up']:.3f}), NME {summary['nme_pct']:.2f} %, "
              f"NME > 10 %: {summary['nme_over_10pct']:.1f} % of faces, false faces per image "
              f"{summary['false_faces_per_image']:.3f}; latency ms p50 {np.percentile(latencies, 50):.0f} "
              f"p95 {np.percentile(latencies, 95):.0f}")
        if summary["confidence"]:
            print(f"{name}, confidence of the {points} points of the faces found: "
                  f"{metrics.describe_confidence(summary['confidence'])}")
    return 1 if failed else 0


def calibrate(frames: list[Frame]) -> np.ndarray:
    """Mean position of the detector's 5 landmarks in training-framed crops (handler.roll.DETECTOR_LAYOUT)."""
    from handler.face_detector import FaceDetector
    from handler.square import fit_square

    detector = FaceDetector()
    marks = []
    for frame in frames:
        found = detector.detect(np.asarray(Image.open(frame.path).convert("RGB")))
        if not found:
            continue
        nearest = min(found, key=lambda d: np.linalg.norm(d.landmarks.mean(0) - frame.keypoints.mean(0)))
        square = fit_square(frame.keypoints, MEAN_LAYOUT)
        marks.append(square.to_crop(nearest.landmarks))
    print(f"{len(marks)} of {len(frames)} training frames with a detection", file=sys.stderr)
    return np.mean(marks, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["calibrate"])
    parser.add_argument("--data", default=None, help="the frames folder (frames.csv, images/)")
    args = parser.parse_args(argv)
    try:
        frames = load_frames(args.data, "train")
    except facedata.DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    layout = calibrate(frames)
    print("DETECTOR_LAYOUT = np.array(" + str(np.round(layout, 2).tolist()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
