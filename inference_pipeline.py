"""YOLO detection -> Canny control image -> Stable Diffusion 1.5 + ControlNet, behind one lock.

    pipe = InferencePipeline(models="tiny")           # or "sd15" for the real weights
    result = pipe.generate(load_image("photo.jpg"), GenerationRequest(prompt="a watercolor fox"))

The attention backend is chosen (and broken packages quarantined) before diffusers is imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

import attention_backend
import tiny_models
from denoise import Denoiser, GenerationError, Repaint, short_error
from control_image import (NoMatchingDetectionsError, build_control_image,
                           chosen, edge_fidelity, edge_map_control, fit_size, place_image, repaint_mask)
from detections import Detection
from generation_request import (NEGATIVE_PROMPT, SCHEDULERS, SEED_MAX, ControlPreview, GenerationRequest,
                                GenerationResult, InvalidRequestError)
from image_io import InvalidImageError, load_image
from lora_fusion import FusedLoras, LoraLoadFailed
from loras import LoraError, resolve as resolve_lora
from presets import PRESETS
from run_card import library_versions, public_source
from settings import Settings

log = logging.getLogger(__name__)

__all__ = ["NEGATIVE_PROMPT", "SCHEDULERS", "ControlPreview", "GenerationError", "GenerationRequest",
           "GenerationResult", "InferencePipeline", "InvalidImageError", "InvalidRequestError", "LoraError",
           "ModelLoadError", "load_image"]

# Torch's intra-op threads on the CPU. Ultralytics sets the calling thread's count to cores - 1 at its first CPU
# prediction (1 on two cores), and a worker thread inherits no setting: each run sets it back to this.
CPU_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

# Ultralytics: no pip auto-install, no analytics, no DNS probe at import (it can hang on a closed network).
os.environ["YOLO_AUTOINSTALL"] = "False"
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

class ModelLoadError(RuntimeError):
    """Weights could not be loaded; the message names the model and the ways out."""


def _hub_reachable(timeout_s: float) -> bool:
    """One HEAD request to the Hub through huggingface_hub's own HTTP session (so HTTP(S)_PROXY and the
    endpoint settings apply): seconds, where huggingface_hub's downloads retry for minutes."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s, follow_redirects=False)
        return True
    except httpx.HTTPError:
        return False


def _polygon(outline: Any) -> tuple[tuple[float, float], ...] | None:
    """A segmentation mask's outline (Ultralytics' points in image pixels) as plain data; None without one."""
    if outline is None or len(outline) < 3:
        return None
    return tuple((round(float(x), 1), round(float(y), 1)) for x, y in outline)


class InferencePipeline:
    """Loads the detector and the diffusion models once, on one device; `generate` runs one request at a time.

    Two locks: `generate` holds the GPU lock for a whole run, and the detector has its own, so a preview's
    detection never waits for a generation (nor a generation for a preview)."""

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
        self._detector_lock = threading.Lock()
        self.detector_runs = 0  # how often the detector ran: the page's caches are judged by it
        self.model_ids = self._model_sources()
        # asked once: every model below loads from the Hub or only from local copies by this answer
        self._online = self.model_ids["set"] != "tiny" and _hub_reachable(self.settings.hub_timeout_s)
        self._check_models_can_be_had()
        with self.on_device():
            self.pipe = self._load_diffusion()
            self._scheduler_config = self.pipe.scheduler.config  # every scheduler is built from the model's own
            self.detector = self._load_detector()
            if self.device.startswith("cuda"):
                # Ultralytics warms its model up with CUDA random numbers at the first prediction; done here,
                # never while another thread captures a CUDA graph on this GPU (that would break the capture).
                self.detect(np.zeros((64, 64, 3), np.uint8))
            attention_backend.apply(self.pipe, self.attention.chosen)
            self.taesd = self._load_taesd()
            self.inpaint_unet = self._load_inpaint_unet()
            self.denoiser = Denoiser(self.pipe, self.device, self.attention.chosen, self._fast_path_wanted(),
                                     self.settings.compile, self.taesd, self.inpaint_unet)
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

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        """Make this pipeline's GPU the current one for the calling thread (CUDA streams, graphs and
        Ultralytics follow the current device); on the CPU, give the calling thread every core."""
        import torch

        if self.device.startswith("cuda"):
            with torch.cuda.device(self.device):
                yield
        else:
            torch.set_num_threads(CPU_THREADS)
            yield

    # -- loading ---------------------------------------------------------------------------------------

    def _model_sources(self) -> dict[str, str]:
        if self.settings.models == "tiny":
            paths = tiny_models.ensure_tiny_models(self.settings.cache_dir)
            return {"set": "tiny", "sd15": str(paths.sd15), "controlnet": str(paths.controlnet),
                    "yolo": str(paths.yolo), "taesd": str(paths.taesd),
                    **({"inpaint": str(paths.inpaint)} if self.settings.sd15_inpaint_model else {}),
                    **{f"lora_{name}": str(paths.distill_lora) for name, p in PRESETS.items() if p.lora}}
        overrides = dict(self.settings.preset_loras)
        inpaint = {"inpaint": self.settings.sd15_inpaint_model} if self.settings.sd15_inpaint_model else {}
        return {"set": "sd15", "sd15": self.settings.sd15_model, "controlnet": self.settings.controlnet_model, **inpaint,
                "yolo": self.settings.yolo_model, **({"taesd": self.settings.taesd_model} if self.settings.taesd_model
                                                     else {}),
                **{f"lora_{name}": overrides.get(name, p.lora) for name, p in PRESETS.items() if p.lora}}

    def _check_models_can_be_had(self) -> None:
        """Without the Hub, name every model that is neither a local file or folder nor in the caches, at once
        (loading stops at the first)."""
        if self.model_ids["set"] == "tiny" or self._online:
            return
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        missing = []
        for what, key, env_var, probe in (("Stable Diffusion 1.5 model", "sd15", "SD15_MODEL", "model_index.json"),
                                          ("ControlNet", "controlnet", "CONTROLNET_MODEL", "config.json")):
            source = self.model_ids[key]
            if Path(source).expanduser().is_dir():
                continue
            try:
                cached = try_to_load_from_cache(source, probe)
            except HFValidationError:
                cached = None
            if not isinstance(cached, str):
                missing.append(f"the {what} '{source}' ({env_var})")
        yolo = self.model_ids["yolo"]
        if not Path(yolo).expanduser().is_file():
            from ultralytics import settings as yolo_settings

            if not (Path(yolo_settings["weights_dir"]) / yolo).is_file():
                missing.append(f"the detector '{yolo}' (YOLO_MODEL)")
        if missing:
            raise ModelLoadError(
                f"The Hugging Face Hub cannot be reached from here, and these models are neither local files or "
                f"folders nor in the caches: {'; '.join(missing)}. Ways out: set those variables to local copies, "
                f"give this machine internet access, or start with MODELS=tiny to use the offline smoke models.")

    def _from_pretrained(self, cls: Any, source: str, what: str, env_var: str, **kwargs: Any) -> Any:
        """`cls.from_pretrained` for a local folder or a Hub id, failing fast with a message a person can act on."""
        local = Path(source).expanduser()
        if local.is_dir():
            variant = self.settings.variant if any(f".{self.settings.variant}." in p.name for p in
                                                   local.rglob("*")) else None
            return cls.from_pretrained(local, variant=variant, dtype=self.dtype, **kwargs)
        online = self._online
        try:
            try:
                return cls.from_pretrained(source, variant=self.settings.variant, dtype=self.dtype,
                                           local_files_only=not online, **kwargs)
            except (OSError, ValueError) as exc:
                if "variant" not in str(exc):
                    raise
                return cls.from_pretrained(source, dtype=self.dtype, local_files_only=not online, **kwargs)
        except Exception as exc:
            where = ("it is not in the local Hugging Face cache and the Hub cannot be reached from here"
                     if not online else short_error(exc))
            raise ModelLoadError(
                f"Could not load the {what} '{source}': {where}. Ways out: set {env_var} to a local folder "
                f"that holds the model in diffusers format, give this machine internet access, or start with "
                f"MODELS=tiny to use the offline smoke models.") from exc

    def _load_diffusion(self) -> Any:
        from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

        controlnet = self._from_pretrained(ControlNetModel, self.model_ids["controlnet"], "ControlNet",
                                           "CONTROLNET_MODEL")
        checker = {} if self.settings.safety_checker else {"safety_checker": None}
        pipe = self._from_pretrained(StableDiffusionControlNetPipeline, self.model_ids["sd15"],
                                     "Stable Diffusion 1.5 model", "SD15_MODEL", controlnet=controlnet,
                                     requires_safety_checker=False, **checker)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def _load_detector(self) -> Any:
        from ultralytics import YOLO, settings as yolo_settings

        yolo_settings.update({"sync": False})
        source = self.model_ids["yolo"]
        try:
            return YOLO(source)
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load the detector '{source}': {short_error(exc)}. Ways out: set YOLO_MODEL to a local "
                f".pt file, give this machine internet access, or start with MODELS=tiny.") from exc

    def _load_taesd(self) -> Any | None:
        """TAESD for live previews and the fast decode; without it previews use a linear map (live_preview.py)."""
        source = self.model_ids.get("taesd")
        if source is None:
            return None
        from diffusers import AutoencoderTiny

        try:
            taesd = self._from_pretrained(AutoencoderTiny, source, "TAESD", "TAESD_MODEL")
        except ModelLoadError as exc:
            log.warning("%s Live previews use a linear approximation instead.", exc)
            return None
        return taesd.to(self.device)

    def _load_inpaint_unet(self) -> Any | None:
        """The UNet of an inpainting checkpoint (SD15_INPAINT_MODEL: a Hub id or a folder with unet/), or None:
        then the base UNet inpaints, keeping the picture outside the mask by blending latents every step."""
        source = self.model_ids.get("inpaint")
        if source is None:
            return None
        from diffusers import UNet2DConditionModel

        unet = self._from_pretrained(UNet2DConditionModel, source, "inpainting model", "SD15_INPAINT_MODEL",
                                     subfolder="unet")
        return unet.to(self.device)

    def _fast_path_wanted(self) -> bool:
        """channels_last (with its GroupNorm) on CUDA, and CUDA graphs unless turned off; `fast_path` says what
        is on and why."""
        if not self.device.startswith("cuda"):
            self.fast_path = "off: CUDA graphs need a CUDA GPU"
            return False
        import torch

        import group_norm

        if self.settings.channels_last:
            models = (self.pipe.unet, self.pipe.controlnet, self.pipe.vae,
                      *((self.inpaint_unet,) if self.inpaint_unet is not None else ()))
            for module in models:
                module.to(memory_format=torch.channels_last)
            group_norm.enable(*models)
        if not self.settings.cuda_graphs:
            self.fast_path = "off: CUDA_GRAPHS=0"
            return False
        self.fast_path = "on: UNet, ControlNet and VAE decode replayed from CUDA graphs"
        if self.settings.compile:
            self.fast_path += ", compiled by torch.compile (the first image of each size compiles for minutes)"
        return True

    def _scheduler(self, name: str) -> Any:
        """One scheduler object per name, all from the model's own scheduler config."""
        if name not in self._schedulers:
            from schedulers import make_scheduler

            self._schedulers[name] = make_scheduler(name, self._scheduler_config)
        return self._schedulers[name]

    def _use_loras(self, wanted: dict[str, tuple[str, float]]) -> None:
        """Make `wanted` ({adapter: (source, weight)}: "distill" and "style") the LoRAs fused into the weights
        (lora_fusion.py); with none, the base weights exactly. A LoRA that does not fit leaves the base weights
        and raises LoraError, which says which one and what to do."""
        if wanted == self.loras.active:
            return
        try:
            self.loras.set(wanted, self._load_lora)
        except LoraLoadFailed as failed:
            why = short_error(failed.cause).replace(str(Path(failed.source).parent), "…")
            if failed.adapter == "distill":
                raise LoraError(f"The preset's distillation LoRA '{public_source(failed.source)}' could not be "
                                f"loaded ({why}). Fetch it first (python launch.py --prefetch, or the notebook's "
                                "prefetch cell), or choose the Quality preset.") from failed.cause
            raise LoraError(f"The LoRA '{public_source(failed.source) or ''}' cannot be used with this SD1.5 model "
                            f"({why}). Generating without it works as before.") from failed.cause
        finally:
            self.denoiser.weights_changed()

    def _load_lora(self, source: str, adapter: str) -> None:
        path = Path(source).expanduser()
        if path.is_file():
            if path.suffix != ".safetensors":
                raise ValueError("only .safetensors files are loaded (other formats can run code)")
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
        else:
            local_only = not path.is_dir() and not _hub_reachable(self.settings.hub_timeout_s)
            self.pipe.load_lora_weights(source, adapter_name=adapter, use_safetensors=True,
                                        local_files_only=local_only)

    def loras_for(self, request: GenerationRequest, style: str | None) -> dict[str, tuple[str, float]]:
        """The adapters a request runs with: its preset's distillation LoRA and the (resolved) style LoRA."""
        wanted = {}
        preset = PRESETS[request.preset]
        if preset.lora:
            wanted["distill"] = (self.model_ids[f"lora_{request.preset}"], preset.lora_weight)
        if style:
            wanted["style"] = (style, request.lora_weight)
        return wanted

    # -- running ---------------------------------------------------------------------------------------

    def detect(self, image: Any, conf: float = 0.25, iou: float = 0.45,
               classes: tuple[int, ...] | list[int] | None = None) -> list[Detection]:
        """Objects in `image`, most confident first, boxes in the image's pixels."""
        with self._detector_lock, self.on_device():
            self.detector_runs += 1
            result = self.detector.predict(image, conf=conf, iou=iou, classes=list(classes) if classes else None,
                                           device=self.device, half=self.device != "cpu", verbose=False)[0]
            if self.device == "cpu":
                import torch

                torch.set_num_threads(CPU_THREADS)
        height, width = result.orig_shape
        log.info("detector ran on %s (%dx%d): %d objects", self.device, width, height, len(result.boxes))
        names = result.names
        outlines = result.masks.xy if result.masks is not None else [None] * len(result.boxes)
        found = [Detection(str(names[int(cls)]), int(cls), float(score), tuple(float(v) for v in box),
                           _polygon(outline))
                 for box, score, cls, outline in zip(result.boxes.xyxy.tolist(), result.boxes.conf.tolist(),
                                                     result.boxes.cls.tolist(), outlines)]
        return sorted(found, key=lambda d: -d.confidence)

    def preview(self, image: Any, request: GenerationRequest | None = None) -> ControlPreview:
        """Detect and build the control image exactly as `generate` would, without denoising."""
        request = request or GenerationRequest()
        image = load_image(image, self.settings.max_pixels, self.settings.max_aspect)
        detections = self.detect(image, request.detect_conf, request.detect_iou, request.detect_classes)
        return self.preview_from(image, detections, request)

    def preview_from(self, image: Any, detections: list[Detection], request: GenerationRequest) -> ControlPreview:
        """The control image and, when part of the picture is repainted, the repaint mask, from detections
        already made (pure image work: milliseconds)."""
        placed = self._placed(image, detections, request)
        control, warnings = self._control(placed, request)
        mask = None
        if request.regenerate != "all":
            try:
                mask = self._repaint(placed, request).mask
            except NoMatchingDetectionsError as exc:
                warnings = [*warnings, f"{exc} The whole picture would be repainted."]
        return ControlPreview(control, detections, warnings, mask)

    def _placed(self, image: Any, detections: list[Detection], request: GenerationRequest
                ) -> tuple[Any, list[Detection]]:
        """The input at the output size, and the detections mapped there (boxes and outlines)."""
        size = ((request.width, request.height) if request.width else
                fit_size(*image.size, request.resolution, request.size_multiple))
        if max(size) > self.settings.max_side:  # checked before anything is resized
            raise InvalidRequestError(f"The output would be {size[0]}x{size[1]} pixels; its long side may be at most "
                                      f"{self.settings.max_side}. Choose a lower resolution, or crop the photo.")
        placed, placement = place_image(image, size, request.resize_mode)
        return placed, [replace(d, box=placement.map_box(d.box), polygon=placement.map_polygon(d.polygon))
                        for d in detections]

    def repaint(self, image: Any, detections: list[Detection], request: GenerationRequest) -> Repaint:
        """What `request.regenerate` repaints of `image` at the output size (pure image work, like the control
        image: the page draws it over the preview)."""
        return self._repaint(self._placed(image, detections, request), request)

    @staticmethod
    def _repaint(placed: tuple[Any, list[Detection]], request: GenerationRequest) -> Repaint:
        picture, mapped = placed
        mask = repaint_mask(picture.size, mapped, request.regenerate, request.control_classes,
                            request.control_padding, request.control_feather)
        return Repaint(picture, Image.fromarray(np.round(mask * 255).astype(np.uint8), "L"))

    def control_image(self, image: Any, detections: list[Detection], request: GenerationRequest
                      ) -> tuple[Any, list[str]]:
        """The control image at the output size; Canny runs there, so every edge lands on an output pixel.
        Pure image work (no model): the page rebuilds it live while Canny sliders move."""
        return self._control(self._placed(image, detections, request), request)

    @staticmethod
    def _control(placed: tuple[Any, list[Detection]], request: GenerationRequest) -> tuple[Any, list[str]]:
        picture, mapped = placed
        if request.control_source == "edge_map":
            return edge_map_control(picture, request.invert_edge_map), []
        options = dict(low=request.canny_low, high=request.canny_high, classes=request.control_classes,
                       padding=request.control_padding, feather=request.control_feather,
                       background_weight=request.background_weight)
        try:
            return build_control_image(picture, mapped, mode=request.control_mode, **options), []
        except NoMatchingDetectionsError as exc:
            return build_control_image(picture, mode="full", **options), [f"{exc} The whole image's edges were "
                                                                          "used instead."]

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
        style = resolve_lora(request.lora, self.settings) if request.lora else None  # a download: before the lock
        loras = self.loras_for(request, style)
        if loras and self.inpaint_unet is not None and request.regenerate != "all":
            raise InvalidRequestError(
                "With an inpainting checkpoint (SD15_INPAINT_MODEL), repainting objects or the background runs on "
                "that checkpoint's own UNet, and LoRAs are fused into the base UNet only: choose the Quality preset "
                "and no style LoRA, or repaint everything.")
        with self._lock, self.on_device():
            self._use_loras(loras)
            stage("detect")
            t0 = time.perf_counter()
            if preview is not None:
                detections = preview.detections
            elif detections is None:
                detections = self.detect(image, request.detect_conf, request.detect_iou, request.detect_classes)
            t1 = time.perf_counter()
            stage("control")
            # the input at the output size, once: for the control image (without a preview) and the repaint mask
            placed = self._placed(image, detections, request) if preview is None or request.regenerate != "all" \
                else None
            if preview is not None:
                control, warnings = preview.control_image, list(preview.warnings)
            else:
                control, warnings = self._control(placed, request)
            warnings += self._prompt_warnings(request)
            repaint = None
            if request.regenerate != "all":
                try:
                    repaint = self._repaint(placed, request)
                except NoMatchingDetectionsError as exc:
                    warnings.append(f"{exc} The whole picture was repainted instead.")
            t2 = time.perf_counter()
            stage("generate")
            denoised = self.denoiser.run(control, request, seeds, self._scheduler(request.scheduler), on_step,
                                         should_cancel, on_preview, repaint)
            warnings += denoised.notes
            t3 = time.perf_counter()
        timings = {"detect_s": t1 - t0, "control_s": t2 - t1, "generate_s": t3 - t2, "total_s": t3 - t0}
        images, control, cancelled = denoised.images or [], denoised.control, denoised.images is None
        fidelity = [edge_fidelity(output, control) for output in images]
        card = self._run_card(replace(request, seed=seed), seeds, control.size, timings, cancelled,
                              denoised.steps_done, loras)
        flagged = [bool(image.info.get("flagged")) for image in images]
        mask = denoised.repaint.mask if denoised.repaint is not None else Image.new("L", control.size, 255)
        card.update(fidelity=fidelity, warnings=warnings, flagged=flagged,
                    regenerate=self._regenerate_card(request, detections, mask, denoised.repaint is not None))
        return GenerationResult(images, control, detections, seed, timings, card, cancelled, seeds, fidelity,
                                warnings, flagged, mask)

    @staticmethod
    def _regenerate_card(request: GenerationRequest, detections: list[Detection], mask: Any,
                         masked: bool) -> dict[str, Any]:
        """What was repainted: the mode, where the mask came from (segmentation masks or boxes), the classes
        and the repainted share of the picture."""
        if not masked:
            return {"mode": "all", "mask_source": None, "classes": [], "repainted_share": 1.0}
        selected = chosen(detections, request.control_classes)
        sources = {"seg" if d.polygon else "box" for d in selected}
        return {"mode": request.regenerate, "mask_source": "+".join(sorted(sources)),
                "classes": sorted({d.label for d in selected}),
                "repainted_share": round(float(np.asarray(mask, np.float32).mean() / 255.0), 4)}

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

    def _run_card(self, request: GenerationRequest, seeds: list[int], size: tuple[int, int],
                  timings: dict[str, float], cancelled: bool, steps_done: int,
                  loras: dict[str, tuple[str, float]]) -> dict[str, Any]:
        import torch

        device = self.device if self.device == "cpu" else f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        graphs = self.denoiser.graph_stats
        return {
            "request": {**asdict(request), "lora": public_source(request.lora)},
            "seed": request.seed,
            "seeds": seeds,
            "size": list(size),
            "models": {key: public_source(source) for key, source in self.model_ids.items()},
            "scheduler": type(self._scheduler(request.scheduler)).__name__,
            "preset": request.preset,
            "loras": [{"role": "distillation" if name == "distill" else name, "id": public_source(source),
                       "weight": weight} for name, (source, weight) in loras.items()],
            "decoder": "TAESD" if request.fast_decode and self.taesd is not None else "VAE",
            "device": device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": {"chosen": self.attention.chosen, "why": self.attention.why, "in_use": self.attention_in_use,
                          "fallback": self.attention_fallback, "quarantined": self.attention.quarantined},
            "fast_path": {"state": self.fast_path, **(asdict(graphs) if graphs else {})},
            "versions": self.versions,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "cancelled": cancelled,
            "steps_done": steps_done,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
