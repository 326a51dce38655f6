"""Train the fixture detectors: tiny YOLOv8s that find (and, with --segment, outline) circles, squares and triangles.

They give the tests and the offline smoke mode real, non-empty detections and masks without any download. The
images are drawn here from a seed, the models are YOLOv8's own architectures at a tiny width, trained on the CPU
in minutes, scored on a held-out set (mAP50 is printed, and with --segment the mean mask IoU against the drawn
shapes; below --min-map50 or --min-iou the script fails and saves nothing), and saved in half precision.

    python tools/train_shapes_detector.py              # writes assets/shapes_detector.pt
    python tools/train_shapes_detector.py --segment    # writes assets/shapes_segmenter.pt
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


def outline(kind: int, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """The polygon a shape is drawn as (a circle as 48 points)."""
    x1, y1, x2, y2 = box
    if CLASSES[kind] == "circle":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
        return [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in angles]
    if CLASSES[kind] == "square":
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    return [((x1 + x2) / 2, y1), (x2, y2), (x1, y2)]


def shape_mask(kind: int, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """The boolean mask of one drawn shape, drawn the way `draw_scene` draws it."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1, x2, y2 = box
    if CLASSES[kind] == "circle":
        draw.ellipse(box, fill=255)
    elif CLASSES[kind] == "square":
        draw.rectangle(box, fill=255)
    else:
        side = x2 - x1
        draw.polygon([(x1 + side // 2, y1), (x1 + side, y1 + side), (x1, y1 + side)], fill=255)
    return np.asarray(canvas) > 0


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


def write_split(folder: Path, split: str, count: int, rng: np.random.Generator, segment: bool) -> None:
    """Pictures and YOLO labels: boxes, or with `segment` polygons (normalised x y pairs)."""
    images, labels = folder / "images" / split, folder / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(count):
        image, boxes = draw_scene(rng)
        image.save(images / f"{i:05d}.png")
        if segment:
            lines = [f"{k} " + " ".join(f"{x / IMAGE_SIZE:.6f} {y / IMAGE_SIZE:.6f}" for x, y in outline(k, b))
                     for k, b in boxes]
        else:
            lines = [f"{k} {(b[0] + b[2]) / 2 / IMAGE_SIZE:.6f} {(b[1] + b[3]) / 2 / IMAGE_SIZE:.6f} "
                     f"{(b[2] - b[0]) / IMAGE_SIZE:.6f} {(b[3] - b[1]) / IMAGE_SIZE:.6f}" for k, b in boxes]
        (labels / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")


def mean_mask_iou(model, rng: np.random.Generator, count: int = 100) -> float:
    """Mean over every drawn shape of the IoU between it and the best-matching predicted mask (0 if none)."""
    ious = []
    for _ in range(count):
        image, shapes = draw_scene(rng)
        result = model.predict(image, imgsz=IMAGE_SIZE, retina_masks=True, device="cpu", verbose=False)[0]
        predicted = result.masks.data.numpy() > 0.5 if result.masks is not None else np.zeros((0, *image.size[::-1]))
        for kind, box in shapes:
            truth = shape_mask(kind, box, image.size)
            best = max(((truth & p).sum() / (truth | p).sum() for p in predicted), default=0.0)
            ious.append(float(best))
    return float(np.mean(ious))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--min-map50", type=float, default=0.9)
    parser.add_argument("--segment", action="store_true", help="train the segmentation model (masks)")
    parser.add_argument("--min-iou", type=float, default=0.85, help="with --segment: the mean mask IoU required")
    parser.add_argument("--out", type=Path, default=None, help="default: assets/shapes_detector.pt or "
                                                                "assets/shapes_segmenter.pt")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "assets" / ("shapes_segmenter.pt" if args.segment else "shapes_detector.pt")

    from ultralytics import YOLO, settings
    from ultralytics.utils import YAML
    from ultralytics.utils.checks import check_yaml

    settings.update({"sync": False})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(2026)
        for split, count in (("train", args.train_images), ("val", 100), ("test", 200)):
            write_split(folder / "data", split, count, rng, args.segment)
        data = folder / "shapes.yaml"
        YAML.save(data, {"path": str(folder / "data"), "train": "images/train", "val": "images/val",
                         "test": "images/test", "names": dict(enumerate(CLASSES))})
        arch = YAML.load(check_yaml("yolov8-seg.yaml" if args.segment else "yolov8.yaml"))
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
        if args.segment:
            iou = mean_mask_iou(YOLO(best), np.random.default_rng(7))
            print(f"held-out mean mask IoU: {iou:.3f} (100 new pictures)")
            if iou < args.min_iou:
                print(f"below the required {args.min_iou}: nothing saved", file=sys.stderr)
                return 1
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(best, out)
        print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
