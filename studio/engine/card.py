"""The run card of one run: every setting, the seeds, the models, the engine's state and the timings, so that
a run can be repeated (core/run_card.py writes it into PNGs and as A1111 text)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from studio.core.control_image import mask_share
from studio.core.preparation import ControlPreview
from studio.core.request import GenerationRequest
from studio.core.run_card import public_source


def regenerate_card(request: GenerationRequest, prepared: ControlPreview) -> dict[str, Any]:
    """What was repainted: the mode, where the mask came from (segmentation masks or boxes), the objects (ids)
    and classes it was made of, and the repainted share of the picture."""
    if prepared.mask is None:
        return {"mode": "all", "mask_source": None, "classes": [], "objects": [], "repainted_share": 1.0}
    selected = prepared.selected
    sources = {"seg" if d.polygon else "box" for d in selected}
    return {"mode": request.regenerate, "mask_source": "+".join(sorted(sources)),
            "classes": sorted({d.label for d in selected}), "objects": [d.id for d in selected],
            "repainted_share": mask_share(prepared.mask)}


def run_card(request: GenerationRequest, seeds: list[int], size: tuple[int, int], loras: dict[str, tuple[str, float]],
             engine: dict[str, Any], **outcome: Any) -> dict[str, Any]:
    """`engine` is what the pipeline says of itself (models, device, attention, fast path, versions); `outcome`
    what this run gave (timings, cancelled, steps_done, fidelity, warnings, flagged, regenerate, objects)."""
    return {
        "request": {**asdict(request), "lora": public_source(request.lora)},
        "seed": request.seed,
        "seeds": seeds,
        "size": list(size),
        "preset": request.preset,
        "loras": [{"role": "distillation" if name == "distill" else name, "id": public_source(source),
                   "weight": weight} for name, (source, weight) in loras.items()],
        **engine,
        **outcome,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
