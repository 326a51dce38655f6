"""The sample pictures a visitor can start from without an upload."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def find_samples() -> dict[str, Path]:
    """The bundled scene, and the two photos that ship inside the Ultralytics package."""
    samples = {"Shapes scene": ASSETS / "sample_scene.png"}
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.submodule_search_locations:
        photos = Path(spec.submodule_search_locations[0]) / "assets"
        samples.update({name: photos / file for name, file in (("Bus (photo)", "bus.jpg"),
                                                                ("Two people (photo)", "zidane.jpg"))
                        if (photos / file).exists()})
    return samples


SAMPLES = find_samples()
