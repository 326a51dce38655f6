"""Cheap previews: what the page shows before a run, computed once per input and reused by every rerun.

Streamlit reruns the page on every widget event. Without these caches each rerun decoded the upload,
ran YOLO and ran Canny again. Here:
- an upload is decoded once per content (keyed by a hash of its bytes); a bad one is remembered as its message
  (a string: an exception would hold its traceback and, through it, a copy of the upload);
- detections are computed once per (image, confidence, IoU, classes): a Canny slider never runs the detector;
- the control image is rebuilt from cached detections, which takes milliseconds, so it follows the sliders, and
  the last ones are kept per (image, request), so one rerun builds each once.
The caches are bounded by bytes (PREVIEW_CACHE_MB); an upload's entries are its visitor's own, the samples'
are shared.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from studio.core.detections import Detection
from studio.core.errors import InvalidImageError
from studio.core.image_io import load_image
from studio.core.preparation import ControlPreview
from studio.core.request import GenerationRequest
from studio.engine.pipeline import InferencePipeline
from studio.serving.cache import ByteLRU

DETECTION_BYTES = 200  # a detection's box, label and scores; its outline's points are counted on top


def image_bytes(value: Any) -> int:
    """A decoded RGB image's pixel bytes, or a message's length."""
    if isinstance(value, str):
        return len(value)
    width, height = value.size
    return width * height * len(value.getbands())


def detections_bytes(detections: list[Detection]) -> int:
    return sum(DETECTION_BYTES + 16 * len(d.polygon or ()) for d in detections)


def preview_bytes(preview: ControlPreview) -> int:
    """The placed photo, the control image, the mask, and each repaint pass's mask and control image."""
    passes = [image for plan in preview.passes for image in (plan.mask, plan.control)]
    return sum(image_bytes(image) for image in (preview.picture, preview.control_image, preview.mask, *passes)
               if image)


class Previews:
    """Decoded uploads, detections and control images for the page, from one pipeline's detector."""

    def __init__(self, pipeline: InferencePipeline, max_bytes: int | None = None) -> None:
        self.pipeline = pipeline
        budget = max_bytes if max_bytes is not None else pipeline.settings.preview_cache_mb * 2**20
        self._images = ByteLRU(budget, image_bytes)
        self._detections = ByteLRU(max(budget // 64, 2**20), detections_bytes)
        # the page asks twice per rerun (Generate's check and the control panel): one build serves both
        self._previews = ByteLRU(max(budget // 4, 2**20), preview_bytes)

    def image(self, data: bytes | str | Path, visitor: str = "") -> tuple[Any, str]:
        """The RGB image of an upload's bytes (or a file path: the samples) and the key that names it in the
        caches. An upload is cached per visitor: a shared entry would answer a second visitor's upload of the
        same photo in milliseconds instead of seconds, telling them that someone else had uploaded it.
        Raises InvalidImageError, with the same message each time, for what cannot be used."""
        if isinstance(data, (str, Path)):
            key = f"path:{Path(data).resolve()}"
        else:
            key = f"{visitor}:sha1:" + hashlib.sha1(data).hexdigest()

        def decode() -> Any:
            settings = self.pipeline.settings
            try:
                return load_image(data, max_pixels=settings.max_pixels, max_aspect=settings.max_aspect)
            except InvalidImageError as exc:
                return str(exc)

        decoded = self._images.get_or_make(key, decode)
        if isinstance(decoded, str):
            raise InvalidImageError(decoded)
        return decoded, key

    def detections(self, image: Any, key: str, request: GenerationRequest) -> list[Detection]:
        """The detector's answer for this image and the request's detection settings, computed once."""
        classes = tuple(sorted(request.detect_classes)) if request.detect_classes else None
        names = request.find_names
        return self._detections.get_or_make(
            (key, request.detect_conf, request.detect_iou, None if names else classes, names),
            lambda: self.pipeline.detect(image, request.detect_conf, request.detect_iou, classes, names))

    def preview(self, image: Any, key: str, request: GenerationRequest) -> ControlPreview:
        """Detections (cached) and the control image this request would use, with the repaint mask when it
        repaints part of the picture (rebuilt: milliseconds). Raises InvalidRequestError when the output would
        be too large."""
        return self._previews.get_or_make(
            (key, request), lambda: self.pipeline.preview_from(image, self.detections(image, key, request), request))
