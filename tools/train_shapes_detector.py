"""Train the fixture detector: a tiny YOLOv8 that finds circles, squares and triangles.

It gives the tests and the offline smoke mode real, non-empty detections without any download. The images
are drawn here from a seed, the model is YOLOv8's own architecture at a tiny width, trained on the CPU in
minutes, scored on a held-out set (mAP50 is printed; below --min-map50 the script fails and saves nothing),
and saved in half precision.

    python tools/train_shapes_detector.py            # writes assets/shapes_detector.pt
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("circle", "square", "triangle")
IMAGE_SIZE = 256


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]], margin: int = 4) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin
               for b in boxes)


def draw_scene(rng: np.random.Generator, size: int = IMAGE_SIZE, max_shapes: int = 4
               ) -> tuple[Image.Image, list[tuple[int, tuple[int, int, int, int]]]]:
    """A picture of up to `max_shapes` filled shapes that do not touch; returns it with (class, box) labels."""
    base = rng.integers(0, 256, 3)
    gradient = np.linspace(0, 1, size)[None, :, None] * rng.integers(-60, 60, 3)
    pixels = np.clip(base + gradient + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    labels: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            side = int(rng.integers(size // 10, size // 3))
            x1, y1 = (int(v) for v in rng.integers(0, size - side, 2))
            box = (x1, y1, x1 + side, y1 + side)
            if not _overlaps(box, [b for _, b in labels]):
                break
        else:
            continue
        color = tuple(int(v) for v in (base + rng.choice([-1, 1], 3) * rng.integers(90, 160, 3)) % 256)
        kind = int(rng.integers(0, len(CLASSES)))
        if CLASSES[kind] == "circle":
            draw.ellipse(box, fill=color)
        elif CLASSES[kind] == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(x1 + side // 2, y1), (x1 + side, y1 + side), (x1, y1 + side)], fill=color)
        labels.append((kind, box))
    return image, labels


def write_split(folder: Path, split: str, count: int, rng: np.random.Generator) -> None:
    images, labels = folder / "images" / split, folder / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(count):
        image, boxes = draw_scene(rng)
        image.save(images / f"{i:05d}.png")
        lines = [f"{k} {(b[0] + b[2]) / 2 / IMAGE_SIZE:.6f} {(b[1] + b[3]) / 2 / IMAGE_SIZE:.6f} "
                 f"{(b[2] - b[0]) / IMAGE_SIZE:.6f} {(b[3] - b[1]) / IMAGE_SIZE:.6f}" for k, b in boxes]
        (labels / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--min-map50", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "shapes_detector.pt")
    args = parser.parse_args(argv)

    from ultralytics import YOLO, settings
    from ultralytics.utils import YAML
    from ultralytics.utils.checks import check_yaml

    settings.update({"sync": False})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(2026)
        for split, count in (("train", args.train_images), ("val", 100), ("test", 200)):
            write_split(folder / "data", split, count, rng)
        data = folder / "shapes.yaml"
        YAML.save(data, {"path": str(folder / "data"), "train": "images/train", "val": "images/val",
                         "test": "images/test", "names": dict(enumerate(CLASSES))})
        arch = YAML.load(check_yaml("yolov8.yaml"))
        arch.update(nc=len(CLASSES), scales={"f": [0.33, 0.125, 256]})
        YAML.save(folder / "shapes-yolov8.yaml", arch)
        model = YOLO(folder / "shapes-yolov8.yaml")
        model.train(data=str(data), epochs=args.epochs, imgsz=IMAGE_SIZE, batch=32, workers=2, device="cpu",
                    plots=False, project=str(folder / "runs"), name="train", exist_ok=True, seed=0,
                    deterministic=True, amp=False, verbose=False, patience=0)
        best = Path(model.trainer.best)
        scored = YOLO(best).val(data=str(data), split="test", imgsz=IMAGE_SIZE, batch=32, device="cpu",
                                plots=False, verbose=False, project=str(folder / "runs"), name="test")
        map50 = float(scored.box.map50)
        print(f"held-out mAP50: {map50:.3f} (200 images, {args.epochs} epochs)")
        if map50 < args.min_map50:
            print(f"below the required {args.min_map50}: nothing saved", file=sys.stderr)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(best, args.out)
        print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
