"""The Python API: YOLO detection -> Canny control image -> Stable Diffusion 1.5 + ControlNet.

    from inference_pipeline import InferencePipeline, GenerationRequest, load_image
    pipe = InferencePipeline(models="tiny")           # or "sd15" for the real weights
    result = pipe.generate(load_image("photo.jpg"), GenerationRequest(prompt="a watercolor fox"))
    result.images, result.control_image, result.detections, result.seed, result.timings, result.run_card

Every name a script needs, from the layers of the `studio` package (core: plain data and images; engine: the
models). Constructing an InferencePipeline chooses the attention backend before diffusers is imported.
"""

from __future__ import annotations

from studio.core.errors import GenerationError, InvalidImageError, InvalidRequestError, LoraError, ModelLoadError
from studio.core.image_io import load_image
from studio.core.preparation import ControlPreview
from studio.core.request import NEGATIVE_PROMPT, GenerationRequest, GenerationResult
from studio.engine.pipeline import InferencePipeline

__all__ = ["NEGATIVE_PROMPT", "ControlPreview", "GenerationError", "GenerationRequest", "GenerationResult",
           "InferencePipeline", "InvalidImageError", "InvalidRequestError", "LoraError", "ModelLoadError",
           "load_image"]
