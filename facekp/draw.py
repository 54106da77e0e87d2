"""Draw the service's answer onto the photo: boxes and the 15 keypoints, or the 68, of every face (PNG).

    python -m facekp.draw samples/astronaut.png -o docs/photos/astronaut.png --points 68
    python -m facekp.draw photo.jpg -o out.png --url http://127.0.0.1:8080

Subject-left points are red, subject-right blue, midline and jaw green (as in the data set's preview);
a point the service is not confident of (under --grey-below) is grey.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from facekp.faces_client import DEFAULT_URL, FacesClient

COLOURS = {"left": (230, 40, 40), "right": (40, 90, 230), "mid": (30, 180, 60)}
UNSURE = (150, 150, 150)
LABEL = (255, 220, 0)  # boxes and their labels
GREY_BELOW = 0.5  # the confidence under which a point is drawn grey: less likely right than wrong


def side_of(name: str) -> str:
    words = name.split("_")
    return "left" if "left" in words else "right" if "right" in words else "mid"


def score_label(face: dict) -> str:
    """A photo's face is labelled with the detector's score."""
    return f"{face['score']:.2f}"


def draw_faces(canvas: Image.Image, faces: list[dict], grey_below: float = GREY_BELOW,
               label: Callable[[dict], str] = score_label, font: ImageFont.ImageFont | None = None) -> Image.Image:
    """`canvas` with every face of an answer drawn on it, in place: its box, its label above the box, and its
    points in their side's colour (grey where the confidence is under grey_below)."""
    pen = ImageDraw.Draw(canvas)
    unit = max(1.0, max(canvas.size) / 400)
    for face in faces:
        box = face["box"]
        pen.rectangle([box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]],
                      outline=LABEL, width=max(1, round(unit)))
        radius = max(1.5, min(box["width"] / (60 if len(face["keypoints"]) <= 15 else 100), 3 * unit))
        for point in face["keypoints"]:
            x, y = point["x"], point["y"]
            sure = point.get("confidence", 1.0) >= grey_below
            pen.ellipse([x - radius, y - radius, x + radius, y + radius],
                        fill=COLOURS[side_of(point["name"])] if sure else UNSURE)
        text_height = font.size if isinstance(font, ImageFont.FreeTypeFont) else 12 * unit
        pen.text((box["x"], max(0, box["y"] - text_height)), label(face), fill=LABEL, font=font)
    return canvas


def draw(photo: Image.Image, answer: dict, grey_below: float = GREY_BELOW) -> Image.Image:
    """The photo (EXIF orientation applied, as the service sees it) with the answer drawn on it; points with a
    confidence under grey_below in grey."""
    return draw_faces(ImageOps.exif_transpose(photo).convert("RGB"), answer["faces"], grey_below)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photo", type=Path)
    parser.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--url", default=DEFAULT_URL, help="the service (make serve)")
    parser.add_argument("--points", type=int, choices=(15, 68), default=15, help="the 15 named keypoints or the 68")
    parser.add_argument("--grey-below", type=float, default=GREY_BELOW, help="confidence under which a point is grey")
    args = parser.parse_args(argv)
    try:
        answer = FacesClient(args.url, args.points).ask(args.photo.read_bytes())
    except (OSError, RuntimeError) as err:  # ServiceDown, ImageFailed, an unreadable photo
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(Image.open(args.photo), answer, args.grey_below).save(args.out)
    print(f"wrote {args.out}: {len(answer['faces'])} face(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
