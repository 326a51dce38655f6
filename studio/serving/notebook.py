"""The pipeline inside a notebook, with no server and no tunnel: photos in, pictures shown below the cell and
written to the outputs folder (on Kaggle /kaggle/working/outputs, which a saved version keeps as its output).

    from studio.serving import notebook
    pipe = InferencePipeline(models="sd15")
    notebook.run(pipe, notebook.photos("/kaggle/input/my-photos"), GenerationRequest(prompt="…", preset="fast"))

Used where a tunnel is not wanted or not allowed (Kaggle has blocked web UIs and many tunnels; ngrok's free plan
carries 1 GB a month), and in "Save & Run All", where nobody opens a page.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from studio.core.detections import draw_detections
from studio.core.errors import EXPECTED_ERRORS
from studio.core.image_io import load_image
from studio.core.request import SEED_MAX, GenerationRequest, GenerationResult
from studio.serving import outputs
from studio.serving.batch import SUFFIXES

OWNER = "notebook"
SHOWN_SIDE = 384  # each picture's long side inline: three in a row fit a notebook's width


def photos(source: str | Path | None, uploads: Iterable[Any] = (), fallback: Path | None = None
           ) -> list[tuple[str, bytes]]:
    """The photos to use, as (name, bytes): a picture file, or a folder's pictures in name order; else the files
    of an upload widget (ipywidgets' FileUpload value: a tuple of files in version 8, a dict by name in 7); else
    `fallback`."""
    if source:
        path = Path(source).expanduser()
        if path.is_dir():
            return [(p.name, p.read_bytes()) for p in sorted(path.iterdir()) if p.suffix.lower() in SUFFIXES]
        return [(path.name, path.read_bytes())]
    if isinstance(uploads, dict):
        uploaded = [(name, bytes(item["content"])) for name, item in uploads.items()]
    else:
        uploaded = [(item["name"], bytes(item["content"])) for item in uploads]
    if uploaded or fallback is None:
        return uploaded
    return [(fallback.name, fallback.read_bytes())]


def run(pipeline: Any, pictures: list[tuple[str, bytes]], request: GenerationRequest,
        show: bool = True) -> list[GenerationResult]:
    """Each photo through the pipeline (photo i with the seed `seed + i`), shown inline and saved in the outputs
    folder; a photo that cannot be used gets one line and the others go on."""
    base = request.seed if request.seed is not None else 0
    results = []
    for index, (name, data) in enumerate(pictures):
        try:
            image = load_image(data, pipeline.settings.max_pixels)
            result = pipeline.generate(image, replace(request, seed=(base + index) % (SEED_MAX + 1)))
        except EXPECTED_ERRORS as exc:
            print(f"{name}: {exc}")
            continue
        saved = save(pipeline, result)
        if show:
            display_row(name, image, result, saved)
        results.append(result)
    return results


def save(pipeline: Any, result: GenerationResult) -> str:
    """Where the pictures were written, or why not (the pictures are still shown)."""
    root = pipeline.settings.outputs_dir
    if root is None:
        return "not saved (OUTPUTS_DIR is empty)"
    try:
        written = outputs.save(root, result, OWNER, uuid.uuid4().hex[:12])
    except outputs.OutputsError as exc:
        return str(exc)
    return f"saved in {written[0].parent}"


def display_row(name: str, image: Any, result: GenerationResult, saved: str) -> None:
    """The photo with its detections, the control image and the results, below the cell."""
    from IPython.display import Markdown, display

    shown = [draw_detections(image, result.detections), result.control_image.convert("RGB"),
             *(picture.copy() for picture in result.images)]  # copies: the results keep their full size
    for picture in shown:
        picture.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    display(Markdown(f"**{name}**: {len(result.detections)} objects detected, seeds "
                     f"{', '.join(map(str, result.seeds))}, {result.timings['total_s']:.1f} s; {saved}"))
    display(*shown)
