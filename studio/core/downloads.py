"""What a run hands out: files named by the seed and the time of the run, and one zip with all of them.

Pure: built from a GenerationResult, no model and no Streamlit, so the page and the tests share it.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import datetime
from typing import Any

from studio.core.image_io import encoded_image
from studio.core.run_card import png_with_run_card


def stamp(card: dict) -> str:
    """The run's creation time as it goes into file names: 20261126-153544."""
    return datetime.fromisoformat(card["created"]).strftime("%Y%m%d-%H%M%S")


def file_name(kind: str, seed: int, card: dict, extension: str) -> str:
    return f"{kind}-{seed}-{stamp(card)}.{extension}"


def detections_csv(detections: list) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "label", "class_id", "confidence", "x1", "y1", "x2", "y2"])
    for det in detections:
        writer.writerow([det.id, det.label, det.class_id, f"{det.confidence:.4f}", *(f"{v:.1f}" for v in det.box)])
    return buffer.getvalue()


def result_files(result: Any) -> dict[str, bytes]:
    """Every file of a run by name: each shown image (A1111 infotext of its own seed inside), the control
    image, the repaint mask when there is one, each detailed object's crop and mask, the detections as CSV and
    the run card as JSON."""
    card, seed = result.run_card, result.seed
    files = {file_name("result", result.seeds[i], card, "png"): png_with_run_card(image, card, i)
             for i, image in enumerate(result.images) if not result.flagged[i]}
    files[file_name("control", seed, card, "png")] = png_with_run_card(result.control_image, card)
    if card.get("regenerate", {}).get("mode", "all") != "all":
        files[file_name("mask", seed, card, "png")] = png_with_run_card(result.mask, card)
    for outcome in result.objects:  # each detail crop as it was sampled, and its mask there
        entry = outcome.entry
        if entry["crop_box"][2:] != card["size"] or entry["crop_box"][:2] != [0, 0]:
            number = f"object{entry['id']}"
            seed_of = result.seeds[outcome.image]
            files[file_name(f"{number}-crop", seed_of, card, "png")] = encoded_image(outcome.crop, "PNG")
            files[file_name(f"{number}-mask", seed_of, card, "png")] = encoded_image(outcome.mask, "PNG")
    files[file_name("detections", seed, card, "csv")] = detections_csv(result.detections).encode()
    files[file_name("run_card", seed, card, "json")] = json.dumps(card, indent=2).encode()
    return files


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()
