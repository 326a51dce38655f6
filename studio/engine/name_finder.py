"""Find things by name: Ultralytics' open-vocabulary segmenter (YOLOE) takes the names a request gives as its
classes for that call, so "the wooden door, logo" come back as detections with masks and ids, picked, prompted
and repainted like the detector's. Each name's text embedding is computed once per process by Ultralytics' text
encoder (MobileCLIP, fetched at first use or by the prefetch); names the checkpoint already carries need none.

A closed-vocabulary model (the smoke set's shapes segmenter, any YOLO) stands behind the same interface: a name
finds the classes it contains ("the red square" finds squares), so the whole flow runs offline."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from studio.core.detections import Detection, numbered
from studio.core.errors import ModelLoadError, short_error
from studio.engine.detector import Detector

# Ultralytics' text encoders by the variant a YOLOE names (ultralytics.nn.text_model.build_text_model: tripwire),
# and the package their tokenizer imports as `clip` (Ultralytics installs it itself only where auto-install is on,
# which loading.py turns off).
TEXT_ENCODER_FILES = {"mobileclip:blt": "mobileclip_blt.ts", "mobileclip2:b": "mobileclip2_b.ts"}
TOKENIZER_PACKAGE = "git+https://github.com/ultralytics/CLIP.git"


class NameFinder:
    """One segmenter that finds named things, behind its own lock (a call sets the classes, then predicts).
    Detections are labelled with the request's names; a detection's class id is its name's place in them."""

    def __init__(self, model: Any, device: str, on_device: Callable[[], AbstractContextManager[None]]) -> None:
        self.model = model
        self.detector = Detector(model, device, on_device)
        self.open_vocabulary = hasattr(model, "get_text_pe")  # Ultralytics' YOLOE
        self._embeddings = self._carried_embeddings() if self.open_vocabulary else {}
        self._lock = threading.Lock()

    def __call__(self, image: Any, names: tuple[str, ...], conf: float = 0.25,
                 iou: float = 0.45) -> list[Detection]:
        with self._lock:
            if not self.open_vocabulary:
                return self._by_class_name(image, names, conf, iou)
            self._use(names)
            return self.detector(image, conf, iou)

    def _carried_embeddings(self) -> dict[str, Any]:
        """The class embeddings a YOLOE checkpoint was saved with (by name): these names need no text encoder."""
        embeddings = getattr(self.model.model, "pe", None)
        names = list(self.model.names.values())
        if embeddings is None or embeddings.shape[1] != len(names):
            return {}
        return {name.lower(): embeddings[0, i].detach().cpu() for i, name in enumerate(names)}

    def _use(self, names: tuple[str, ...]) -> None:
        """Make `names` the model's classes, embedding the names it has not seen."""
        import torch

        new = [name for name in names if name not in self._embeddings]
        if new:
            try:
                embedded = self.model.get_text_pe(new)
            except Exception as exc:
                known = ", ".join(sorted(self._embeddings)[:12]) or "none"
                raise ModelLoadError(
                    f"The open-vocabulary segmenter's text encoder could not be had, so '{', '.join(new)}' cannot "
                    f"be looked for: {short_error(exc)}. Ways out: install its tokenizer (pip install "
                    f"{TOKENIZER_PACKAGE}) and run the prefetch with internet access (it fetches the encoder), or "
                    f"name only things the model knows already ({known}).") from exc
            self._embeddings.update({name: embedded[0, i].detach().cpu() for i, name in enumerate(new)})
        if list(self.model.names.values()) != list(names):
            weights = next(self.model.model.parameters())
            stacked = torch.stack([self._embeddings[name] for name in names])[None]
            self.model.set_classes(list(names), stacked.to(weights.device, weights.dtype))

    def _by_class_name(self, image: Any, names: tuple[str, ...], conf: float, iou: float) -> list[Detection]:
        """A closed vocabulary: each name finds the model's classes whose name it contains as a word."""
        owner: dict[int, int] = {}
        for index, name in enumerate(names):
            for class_id, class_name in self.detector.names.items():
                if re.search(rf"\b{re.escape(class_name.lower())}s?\b", name):
                    owner.setdefault(class_id, index)
        if not owner:
            return []
        found = self.detector(image, conf, iou, tuple(sorted(owner)))
        return numbered([replace(d, label=names[owner[d.class_id]], class_id=owner[d.class_id]) for d in found])
