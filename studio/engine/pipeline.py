"""YOLO detection -> Canny control image -> Stable Diffusion 1.5 + ControlNet, behind one lock.

    pipe = InferencePipeline(models="tiny")           # or "sd15" for the real weights
    result = pipe.generate(load_image("photo.jpg"), GenerationRequest(prompt="a watercolor fox"))

The attention backend is chosen (and broken packages quarantined) before diffusers is imported. Loading lives in
loading.py, detection in detector.py, the control image in core/preparation.py, denoising and its fallbacks in
denoise.py; this class ties them together for one device.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import attention_backend
from studio.core.control_image import edge_fidelity
from studio.core.detections import Detection
from studio.core.errors import InvalidRequestError, LoraError, short_error
from studio.core.image_io import load_image
from studio.core.preparation import ControlPreview, prepare
from studio.core.presets import PRESETS, distilled_by
from studio.core.request import SEED_MAX, GenerationRequest, GenerationResult
from studio.core.run_card import library_versions, public_source
from studio.core.settings import Settings
from studio.engine import devices, fast_path
from studio.engine.card import regenerate_card, run_card
from studio.engine.denoise import Denoised, Denoiser, Run
from studio.engine.detector import Detector
from studio.engine.loading import ModelLoader
from studio.engine.lora_fusion import FusedLoras, LoraLoadFailed
from studio.engine.loras import resolve as resolve_lora
from studio.engine.name_finder import NameFinder

Lora = dict[str, tuple[str, float]]  # adapter ("distill", "style") -> (local file, weight)


class InferencePipeline:
    """Loads the detector and the diffusion models once, on one device; `generate` runs one request at a time
    (the GPU lock), while `detect` and `preview` never wait for it (the detector has a lock of its own)."""

    def __init__(self, models: str | None = None, device: str | None = None, attention: str | None = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env(models=models, device=device, attention=attention)
        started = time.perf_counter()
        self.attention = attention_backend.prepare(self.settings.attention, self.settings.device)
        import torch

        device = self.settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = "cuda:0" if device == "cuda" else device  # an explicit index: one pipeline per GPU
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self._lock = threading.Lock()
        loader = self._loader = ModelLoader(self.settings, self.device, self.dtype)
        self.model_ids = {"set": self.settings.models, **loader.sources}
        self._finder: NameFinder | None = None  # loaded at the first request that finds things by name
        self._finder_loading = threading.Lock()
        with self.on_device():
            loaded = loader.load()
            self.pipe, self.taesd, self.inpaint_unet = loaded.pipe, loaded.taesd, loaded.inpaint_unet
            self.detector = Detector(loaded.detector, self.device, self.on_device)
            if self.device.startswith("cuda"):
                # Ultralytics warms its model up with CUDA random numbers at the first prediction; done here,
                # never while another thread captures a CUDA graph on this GPU (that would break the capture).
                self.detect(np.zeros((64, 64, 3), np.uint8))
            attention_backend.apply(self.pipe, self.attention.chosen)
            extra = (self.inpaint_unet,) if self.inpaint_unet is not None else ()
            modules = (self.pipe.unet, self.pipe.controlnet, self.pipe.vae, *extra)
            graphs, self.fast_path = fast_path.prepare(modules, self.device, self.settings)
            self.denoiser = Denoiser(self.pipe, self.device, self.attention.chosen, graphs, self.settings.compile,
                                     self.taesd, self.inpaint_unet)
        self.distill_loras, self.missing_loras = loaded.distill_loras, loaded.missing_loras
        self._scheduler_config = self.pipe.scheduler.config  # every scheduler is built from the model's own
        self._schedulers: dict[str, Any] = {}
        self.versions = library_versions()
        self.loras = FusedLoras(self.pipe)  # the distillation and style LoRAs, fused into the weights
        self.load_seconds = time.perf_counter() - started

    @property
    def busy(self) -> bool:
        """True while a generation holds the GPU (a second caller would wait)."""
        return self._lock.locked()

    @property
    def attention_in_use(self) -> str:
        return self.denoiser.attention_in_use

    @property
    def attention_fallback(self) -> str | None:
        return self.denoiser.attention_fallback

    def on_device(self) -> contextlib.AbstractContextManager[None]:
        return devices.on_device(self.device)

    def detect(self, image: Any, conf: float = 0.25, iou: float = 0.45,
               classes: tuple[int, ...] | list[int] | None = None, names: tuple[str, ...] = ()) -> list[Detection]:
        """Objects in `image`, most confident first, boxes in the image's pixels: of the detector's `classes`,
        or, when `names` are given, the things so named (the open-vocabulary segmenter)."""
        if names:
            return self.finder()(image, names, conf, iou)
        return self.detector(image, conf, iou, classes)

    def detect_for(self, image: Any, request: GenerationRequest) -> list[Detection]:
        """What `request`'s detection settings find in `image`."""
        return self.detect(image, request.detect_conf, request.detect_iou, request.detect_classes,
                           request.find_names)

    def finder(self) -> NameFinder:
        """The open-vocabulary segmenter, loaded once. On a GPU its first prediction (Ultralytics' warm-up draws
        CUDA random numbers) runs under the GPU lock, never while a generation captures a CUDA graph; so a
        generation loads it before taking that lock."""
        with self._finder_loading:
            if self._finder is None:
                with self.on_device():
                    finder = NameFinder(self._loader.open_vocab(), self.device, self.on_device)
                    if self.device.startswith("cuda"):
                        with self._lock:
                            finder.detector(np.zeros((64, 64, 3), np.uint8))
                self._finder = finder
            return self._finder

    def preview(self, image: Any, request: GenerationRequest | None = None) -> ControlPreview:
        """Detect and build the control image exactly as `generate` would, without denoising."""
        request = request or GenerationRequest()
        image = load_image(image, self.settings.max_pixels, self.settings.max_aspect)
        return self.preview_from(image, self.detect_for(image, request), request)

    def preview_from(self, image: Any, detections: list[Detection], request: GenerationRequest) -> ControlPreview:
        """The control image and repaint mask from detections already made (pure image work: milliseconds)."""
        return prepare(image, detections, request, self.settings.max_side)

    def _scheduler(self, name: str) -> Any:
        """One scheduler object per name, all from the model's own scheduler config."""
        if name not in self._schedulers:
            from studio.engine.schedulers import make_scheduler

            self._schedulers[name] = make_scheduler(name, self._scheduler_config)
        return self._schedulers[name]

    def loras_for(self, request: GenerationRequest) -> Lora:
        """The LoRAs a request runs with, as local files: its preset's distillation LoRA (resolved at load) and
        the style LoRA (resolved now: a listed Hub LoRA is downloaded once, before the GPU lock)."""
        wanted, source = {}, distilled_by(request.preset, request.scheduler)
        if source is not None:
            preset = PRESETS[source]
            if source not in self.distill_loras:
                raise LoraError(f"The {preset.label} preset's distillation LoRA "
                                f"'{public_source(self.model_ids[f'lora_{source}'])}' is not available here "
                                f"({self.missing_loras.get(source, 'not loaded')}). Fetch it first (python "
                                "launch.py --prefetch, or the notebook's prefetch cell), or choose the Quality preset.")
            wanted["distill"] = (self.distill_loras[source], preset.lora_weight)
        if request.lora:
            wanted["style"] = (resolve_lora(request.lora, self.settings), request.lora_weight)
        if wanted and self.inpaint_unet is not None and request.regenerate != "all":
            raise InvalidRequestError(
                "With an inpainting checkpoint (SD15_INPAINT_MODEL), repainting objects or the background runs on "
                "that checkpoint's own UNet, and LoRAs are fused into the base UNet only: choose the Quality preset "
                "and no style LoRA, or repaint everything.")
        return wanted

    def _use_loras(self, wanted: Lora) -> None:
        """Make `wanted` the LoRAs fused into the weights (lora_fusion.py); with none, the base weights exactly. A
        LoRA that does not fit leaves the base weights and raises LoraError, which says which one and what to do."""
        if wanted == self.loras.active:
            return
        try:
            self.loras.set(wanted, self._load_lora)
        except LoraLoadFailed as failed:
            why = short_error(failed.cause).replace(str(Path(failed.source).parent), "…")
            what = "the preset's distillation LoRA" if failed.adapter == "distill" else "the LoRA"
            raise LoraError(f"{what.capitalize()} '{public_source(failed.source)}' cannot be used with this SD1.5 "
                            f"model ({why}). Generating without it works as before.") from failed.cause
        finally:
            self.denoiser.weights_changed()

    def _load_lora(self, source: str, adapter: str) -> None:
        """A local `.safetensors` file or a folder holding one (nothing here asks the Hub)."""
        path = Path(source).expanduser()
        if path.is_file() and path.suffix != ".safetensors":
            raise ValueError("only .safetensors files are loaded (other formats can run code)")
        folder, name = (path.parent, {"weight_name": path.name}) if path.is_file() else (path, {})
        self.pipe.load_lora_weights(str(folder), adapter_name=adapter, use_safetensors=True, **name)

    def generate(self, image: Any, request: GenerationRequest | None = None,
                 on_step: Callable[[int, int], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 on_stage: Callable[[str], None] | None = None,
                 detections: list[Detection] | None = None,
                 preview: ControlPreview | None = None,
                 on_preview: Callable[[int, Any], None] | None = None) -> GenerationResult:
        """Detect, build the control image and denoise. Same seed, same pixels.

        `on_stage` hears "detect", "control" and "generate" as each stage starts; `on_step(step, total)`
        after every denoising step; `should_cancel()` is asked after every step; `on_preview(step, image)`
        every few steps (live_preview.py). `detections`, or a whole `preview` (`preview()`'s answer for this
        image and request), are used instead of computing them again."""
        stage = on_stage or (lambda name: None)
        request = request or GenerationRequest()
        image = load_image(image, self.settings.max_pixels, self.settings.max_aspect)
        seed = request.seed if request.seed is not None else random.randint(0, SEED_MAX - request.num_images)
        seeds = [(seed + i) % (SEED_MAX + 1) for i in range(request.num_images)]
        loras = self.loras_for(request)
        if request.find_names:
            self.finder()  # loaded before the GPU lock (see finder): the detail pass of the outputs uses it too
        with self._lock, self.on_device():
            self._use_loras(loras)
            t0 = time.perf_counter()
            if preview is None and detections is None:  # the stage is named only when it runs
                stage("detect")
                detections = self.detect_for(image, request)
            t1 = time.perf_counter()
            stage("control")
            prepared = preview or self.preview_from(image, detections or [], request)
            t2 = time.perf_counter()
            stage("generate")
            denoised = self.denoiser.run(Run(
                request, prepared, seeds, self._scheduler(request.scheduler),
                lambda size: prepare(image, prepared.detections, request, self.settings.max_side, size),
                on_step, should_cancel, on_preview, self._output_detector(request), self.settings.max_side))
            t3 = time.perf_counter()
        timings = {"detect_s": t1 - t0, "control_s": t2 - t1, "generate_s": t3 - t2, "total_s": t3 - t0}
        return self._result(request, seed, seeds, denoised, timings, loras)

    def _result(self, request: GenerationRequest, seed: int, seeds: list[int], denoised: Denoised,
                timings: dict[str, float], loras: Lora) -> GenerationResult:
        prepared, images = denoised.prepared, denoised.images or []
        control = prepared.control_image
        fidelity = [edge_fidelity(output, control, mask=prepared.mask) for output in images]  # repaints: inside
        warnings = [*prepared.warnings, *self._prompt_warnings(request), *denoised.notes]
        distilled = f"lora_{distilled_by(request.preset, request.scheduler)}"
        named = {name: (request.lora if name == "style" else self.model_ids[distilled], weight)
                 for name, (_, weight) in loras.items()}
        card = run_card(replace(request, seed=seed), seeds, control.size, named,
                        self.engine_card(request), timings={k: round(v, 4) for k, v in timings.items()},
                        cancelled=denoised.images is None, steps_done=denoised.steps_done, fidelity=fidelity,
                        warnings=warnings, flagged=denoised.flagged, regenerate=regenerate_card(request, prepared),
                        objects=[outcome.entry for outcome in denoised.objects])
        mask = prepared.mask if prepared.mask is not None else Image.new("L", control.size, 255)
        return GenerationResult(images=images, control_image=control, detections=prepared.detections, seed=seed,
                                seeds=seeds, timings=timings, run_card=card, mask=mask,
                                cancelled=denoised.images is None, fidelity=fidelity, warnings=warnings,
                                flagged=denoised.flagged, objects=denoised.objects)

    def _output_detector(self, request: GenerationRequest) -> Callable[[Any], list[Detection]]:
        """What the detail pass of `detail_output` detects with: the request's detection settings."""
        return lambda picture: self.detect_for(picture, request)

    def engine_card(self, request: GenerationRequest) -> dict[str, Any]:
        """What the run card says of this pipeline: models, scheduler, decoder, device, attention, fast path."""
        graphs = self.denoiser.graph_stats
        return {
            "models": {key: public_source(source) for key, source in self.model_ids.items()},
            "scheduler": type(self._scheduler(request.scheduler)).__name__,
            "decoder": "TAESD" if request.fast_decode and self.taesd is not None else "VAE",
            "device": devices.describe(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": {"chosen": self.attention.chosen, "why": self.attention.why, "in_use": self.attention_in_use,
                          "fallback": self.attention_fallback, "quarantined": self.attention.quarantined},
            "fast_path": {"state": self.fast_path, **(asdict(graphs) if graphs else {})},
            "versions": self.versions,
        }

    def _prompt_warnings(self, request: GenerationRequest) -> list[str]:
        """CLIP reads 77 tokens (75 of text); diffusers drops the rest, so say what was dropped."""
        tokenizer, found = self.pipe.tokenizer, []
        limit = tokenizer.model_max_length - 2
        for label, text in (("prompt", request.full_prompt), ("negative prompt", request.negative_prompt)):
            ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
            if len(ids) > limit:
                dropped = tokenizer.decode(ids[limit:]).strip()
                quoted = dropped if len(dropped) <= 100 else dropped[:100].rstrip() + "…"
                found.append(f"The {label} is {len(ids)} tokens long and CLIP reads {limit}, so its end was "
                             f"ignored: \"{quoted}\".")
        return found
