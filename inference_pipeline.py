"""YOLO detection -> Canny control image -> Stable Diffusion 1.5 + ControlNet, behind one lock.

    pipe = InferencePipeline(models="tiny")           # or "sd15" for the real weights
    result = pipe.generate(load_image("photo.jpg"), GenerationRequest(prompt="a watercolor fox"))

The attention backend is chosen (and broken packages quarantined) before diffusers is imported.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import attention_backend
import cuda_graphs
import tiny_models
from control_image import (NoMatchingDetectionsError, build_control_image, edge_fidelity, edge_map_control,
                           fit_size, place_image)
from detections import Detection
from generation_request import (NEGATIVE_PROMPT, SCHEDULERS, SEED_MAX, ControlPreview, GenerationRequest,
                                GenerationResult, InvalidRequestError)
from image_io import InvalidImageError, load_image
from run_card import library_versions
from settings import Settings

__all__ = ["NEGATIVE_PROMPT", "SCHEDULERS", "ControlPreview", "GenerationError", "GenerationRequest",
           "GenerationResult", "InferencePipeline", "InvalidImageError", "InvalidRequestError", "LoraError",
           "ModelLoadError", "load_image"]

# Ultralytics: no pip auto-install, no analytics, no DNS probe at import (it can hang on a closed network).
os.environ["YOLO_AUTOINSTALL"] = "False"
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

# Tried in this order when the GPU runs out of memory; each one stays on for the retries after it.
OOM_REMEDIES = ("attention slicing", "VAE tiling", "model CPU offload", "a smaller size")


class ModelLoadError(RuntimeError):
    """Weights could not be loaded; the message names the model and the ways out."""


class GenerationError(RuntimeError):
    """A run failed for a reason the person can act on; the message says how."""


class LoraError(ValueError):
    """A LoRA could not be used; the base model is unchanged and the message says why."""


class _Cancelled(Exception):
    def __init__(self, steps_done: int) -> None:
        super().__init__(f"cancelled after {steps_done} steps")
        self.steps_done = steps_done


def _hub_reachable(timeout_s: float) -> bool:
    """A TCP connect to the Hugging Face endpoint: seconds, where huggingface_hub retries for minutes."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s):
            return True
    except OSError:
        return False


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _short(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]


class InferencePipeline:
    """Loads the detector and the diffusion models once; `generate` runs one request at a time."""

    def __init__(self, models: str | None = None, device: str | None = None, attention: str | None = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env(models=models, device=device, attention=attention)
        started = time.perf_counter()
        self.attention = attention_backend.prepare(self.settings.attention, self.settings.device)
        import torch

        self.device = self.settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self._lock = threading.Lock()
        self.model_ids = self._model_sources()
        self.pipe = self._load_diffusion()
        self._scheduler_config = self.pipe.scheduler.config  # every scheduler is built from the model's own
        self.detector = self._load_detector()
        attention_backend.apply(self.pipe, self.attention.chosen)
        self.attention_in_use = self.attention.chosen
        self.attention_fallback: str | None = None
        self.graph_stats = self._enable_fast_path()
        self._schedulers: dict[str, Any] = {}
        self.versions = library_versions()
        self._lora: tuple[str, float] | None = None
        self.load_seconds = time.perf_counter() - started

    @property
    def busy(self) -> bool:
        """True while a run holds the GPU (a second caller would wait)."""
        return self._lock.locked()

    # -- loading ---------------------------------------------------------------------------------------

    def _model_sources(self) -> dict[str, str]:
        if self.settings.models == "tiny":
            paths = tiny_models.ensure_tiny_models(self.settings.cache_dir)
            return {"set": "tiny", "sd15": str(paths.sd15), "controlnet": str(paths.controlnet),
                    "yolo": str(paths.yolo)}
        return {"set": "sd15", "sd15": self.settings.sd15_model, "controlnet": self.settings.controlnet_model,
                "yolo": self.settings.yolo_model}

    def _from_pretrained(self, cls: Any, source: str, what: str, env_var: str, **kwargs: Any) -> Any:
        """`cls.from_pretrained` for a local folder or a Hub id, failing fast with a message a person can act on."""
        local = Path(source).expanduser()
        if local.is_dir():
            variant = self.settings.variant if any(f".{self.settings.variant}." in p.name for p in
                                                   local.rglob("*")) else None
            return cls.from_pretrained(local, variant=variant, dtype=self.dtype, **kwargs)
        online = _hub_reachable(self.settings.hub_timeout_s)
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
                     if not online else _short(exc))
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
                f"Could not load the detector '{source}': {_short(exc)}. Ways out: set YOLO_MODEL to a local "
                f".pt file, give this machine internet access, or start with MODELS=tiny.") from exc

    def _enable_fast_path(self) -> cuda_graphs.GraphStats | None:
        """channels_last and CUDA graphs on CUDA; `fast_path` says what is on and why."""
        if not self.device.startswith("cuda"):
            self.fast_path = "off: CUDA graphs need a CUDA GPU"
            return None
        import torch

        for module in (self.pipe.unet, self.pipe.controlnet, self.pipe.vae):
            module.to(memory_format=torch.channels_last)
        if not self.settings.cuda_graphs:
            self.fast_path = "off: CUDA_GRAPHS=0"
            return None
        self.fast_path = "on: UNet and ControlNet replayed from CUDA graphs"
        if self.settings.compile:
            self.fast_path += ", compiled by torch.compile (the first image of each size compiles for minutes)"
        return cuda_graphs.enable(self.pipe, compile=self.settings.compile)

    def _refresh_graphs(self) -> None:
        """Graphs captured before a change of weights or attention processors are stale: recapture."""
        if self.graph_stats is not None:
            cuda_graphs.disable(self.pipe)
            self.graph_stats = cuda_graphs.enable(self.pipe, compile=self.settings.compile)

    def _scheduler(self, name: str) -> Any:
        """One scheduler object per name, all from the model's own scheduler config."""
        if name not in self._schedulers:
            from schedulers import make_scheduler

            self._schedulers[name] = make_scheduler(name, self._scheduler_config)
        return self._schedulers[name]

    def _use_lora(self, source: str | None, weight: float) -> None:
        """Load, reweight or drop the style LoRA; unloading restores the base weights exactly."""
        wanted = (source, weight) if source else None
        if wanted == self._lora:
            return
        if self._lora is not None and (source is None or source != self._lora[0]):
            self.pipe.unload_lora_weights()
            self._lora = None
        if source and self._lora is None:
            try:
                self._load_lora(source)
            except Exception as exc:
                self.pipe.unload_lora_weights()
                self._refresh_graphs()
                raise LoraError(f"The LoRA '{source}' cannot be used with this SD1.5 model ({_short(exc)}). "
                                "Generating without it works as before.") from exc
        if source:
            self.pipe.set_adapters(["style"], adapter_weights=[weight])
        self._lora = wanted
        self._refresh_graphs()

    def _load_lora(self, source: str) -> None:
        path = Path(source).expanduser()
        if path.is_file():
            if path.suffix != ".safetensors":
                raise ValueError("only .safetensors files are loaded (other formats can run code)")
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="style")
        else:
            local_only = not path.is_dir() and not _hub_reachable(self.settings.hub_timeout_s)
            self.pipe.load_lora_weights(source, adapter_name="style", use_safetensors=True,
                                        local_files_only=local_only)

    # -- running ---------------------------------------------------------------------------------------

    def detect(self, image: Any, conf: float = 0.25, iou: float = 0.45,
               classes: tuple[int, ...] | list[int] | None = None) -> list[Detection]:
        """Objects in `image`, most confident first, boxes in the image's pixels."""
        with self._lock:
            return self._detect(image, conf, iou, classes)

    def _detect(self, image: Any, conf: float, iou: float, classes: tuple[int, ...] | list[int] | None
                ) -> list[Detection]:
        device = "cuda:0" if self.device == "cuda" else self.device
        result = self.detector.predict(image, conf=conf, iou=iou, classes=list(classes) if classes else None,
                                       device=device, half=device != "cpu", verbose=False)[0]
        names = result.names
        found = [Detection(str(names[int(cls)]), int(cls), float(score), tuple(float(v) for v in box))
                 for box, score, cls in zip(result.boxes.xyxy.tolist(), result.boxes.conf.tolist(),
                                            result.boxes.cls.tolist())]
        return sorted(found, key=lambda d: -d.confidence)

    def preview(self, image: Any, request: GenerationRequest | None = None) -> ControlPreview:
        """Detect and build the control image exactly as `generate` would, without denoising."""
        request = request or GenerationRequest()
        image = load_image(image, max_pixels=self.settings.max_pixels)
        detections = self.detect(image, request.detect_conf, request.detect_iou, request.detect_classes)
        control, warnings = self._control(image, detections, request)
        return ControlPreview(control, detections, warnings)

    def _control(self, image: Any, detections: list[Detection], request: GenerationRequest
                 ) -> tuple[Any, list[str]]:
        """The control image at the output size; Canny runs there, so every edge lands on an output pixel."""
        size = ((request.width, request.height) if request.width else
                fit_size(*image.size, request.resolution, request.size_multiple))
        placed, placement = place_image(image, size, request.resize_mode)
        if request.control_source == "edge_map":
            return edge_map_control(placed, request.invert_edge_map), []
        boxes = [replace(d, box=placement.map_box(d.box)) for d in detections]
        options = dict(low=request.canny_low, high=request.canny_high, classes=request.control_classes,
                       padding=request.control_padding, feather=request.control_feather,
                       background_weight=request.background_weight)
        try:
            return build_control_image(placed, boxes, mode=request.control_mode, **options), []
        except NoMatchingDetectionsError as exc:
            return build_control_image(placed, mode="full", **options), [f"{exc} The whole image's edges were "
                                                                         "used instead."]

    def generate(self, image: Any, request: GenerationRequest | None = None,
                 on_step: Callable[[int, int], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 on_stage: Callable[[str], None] | None = None) -> GenerationResult:
        """Detect, build the control image and denoise. Same seed, same pixels.

        `on_stage` hears "detect", "control" and "generate" as each stage starts; `on_step(step, total)`
        after every denoising step; `should_cancel()` is asked after every step."""
        stage = on_stage or (lambda name: None)
        request = request or GenerationRequest()
        image = load_image(image, max_pixels=self.settings.max_pixels)
        seed = request.seed if request.seed is not None else random.randint(0, SEED_MAX - request.num_images)
        seeds = [(seed + i) % (SEED_MAX + 1) for i in range(request.num_images)]
        with self._lock:
            self._use_lora(request.lora, request.lora_weight)
            stage("detect")
            t0 = time.perf_counter()
            detections = self._detect(image, request.detect_conf, request.detect_iou, request.detect_classes)
            t1 = time.perf_counter()
            stage("control")
            control, warnings = self._control(image, detections, request)
            warnings += self._prompt_warnings(request)
            t2 = time.perf_counter()
            stage("generate")
            images, control, steps_done, notes = self._denoise(control, request, seeds, on_step, should_cancel)
            warnings += notes
            t3 = time.perf_counter()
        timings = {"detect_s": t1 - t0, "control_s": t2 - t1, "generate_s": t3 - t2, "total_s": t3 - t0}
        fidelity = [edge_fidelity(output, control) for output in images or []]
        card = self._run_card(replace(request, seed=seed), seeds, control.size, timings, images is None, steps_done)
        flagged = [bool(image.info.get("flagged")) for image in images or []]
        card.update(fidelity=fidelity, warnings=warnings, flagged=flagged)
        return GenerationResult(images or [], control, detections, seed, timings, card, images is None, seeds,
                                fidelity, warnings, flagged)

    def _prompt_warnings(self, request: GenerationRequest) -> list[str]:
        """CLIP reads 77 tokens (75 of text); diffusers drops the rest, so say what was dropped."""
        tokenizer, found = self.pipe.tokenizer, []
        limit = tokenizer.model_max_length - 2
        for label, text in (("prompt", request.full_prompt), ("negative prompt", request.negative_prompt)):
            ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
            if len(ids) > limit:
                dropped = tokenizer.decode(ids[limit:]).strip()
                found.append(f"The {label} is {len(ids)} tokens long and CLIP reads {limit}, so its end was "
                             f"ignored: \"{dropped}\".")
        return found

    def _denoise(self, control: Any, request: GenerationRequest, seeds: list[int],
                 on_step: Callable[[int, int], None] | None, should_cancel: Callable[[], bool] | None
                 ) -> tuple[list[Any] | None, Any, int, list[str]]:
        """The images (None when cancelled), the control image they used, the steps done and notes for the
        person (a fallback that was needed)."""
        import torch

        def run(ctl: Any) -> tuple[list[Any], list[str]]:
            return self._attempt(ctl, request, seeds, on_step, should_cancel)

        try:
            try:
                images, notes = run(control)
                return images, control, request.steps, notes
            except torch.cuda.OutOfMemoryError:
                return self._recover_from_oom(control, request, run)
        except _Cancelled as cancelled:
            return None, control, cancelled.steps_done, []

    def _attempt(self, control: Any, request: GenerationRequest, seeds: list[int],
                 on_step: Callable[[int, int], None] | None, should_cancel: Callable[[], bool] | None
                 ) -> tuple[list[Any], list[str]]:
        import torch

        try:
            return self._call_pipe(control, request, seeds, on_step, should_cancel)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            if self.attention_in_use == "sdpa" or isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            # A backend that passed its probe can still fail on real shapes: fall back to SDPA once.
            self.attention_fallback = f"{self.attention_in_use} failed at its first real call ({_short(exc)}); " \
                                      "switched to sdpa"
            attention_backend.apply(self.pipe, "sdpa")
            self.attention_in_use = "sdpa"
            self._refresh_graphs()
            return self._call_pipe(control, request, seeds, on_step, should_cancel)

    def _recover_from_oom(self, control: Any, request: GenerationRequest,
                          run: Callable[[Any], tuple[list[Any], list[str]]]) -> tuple[list[Any], Any, int, list[str]]:
        """Out of GPU memory: free it, then retry with each remedy in turn; every remedy is undone after."""
        import torch
        from PIL import Image

        applied: list[str] = []
        graphs = self.graph_stats is not None
        if graphs:
            cuda_graphs.disable(self.pipe)
        try:
            for remedy in OOM_REMEDIES:
                _free_gpu_memory()
                if remedy == "attention slicing":
                    attention_backend.apply(self.pipe, "sliced")
                elif remedy == "VAE tiling":
                    self.pipe.vae.enable_tiling()
                elif remedy == "model CPU offload":
                    if not self.device.startswith("cuda"):
                        continue
                    self.pipe.enable_model_cpu_offload()
                else:
                    size = tuple(max(64, int(side * 0.75) // 8 * 8) for side in control.size)
                    control = control.resize(size, Image.Resampling.BILINEAR)
                    remedy = f"a smaller size ({size[0]}x{size[1]})"
                applied.append(remedy)
                try:
                    images, notes = run(control)
                except torch.cuda.OutOfMemoryError:
                    continue
                return images, control, request.steps, notes + [
                    f"The GPU ran out of memory; the run succeeded with {', '.join(applied)}."]
            raise GenerationError(f"The GPU ran out of memory even with {', '.join(applied)}. Try fewer images per "
                                  "run or a lower resolution.")
        finally:
            attention_backend.apply(self.pipe, self.attention_in_use)
            self.pipe.vae.disable_tiling()
            if "model CPU offload" in applied:
                self.pipe.remove_all_hooks()
                self.pipe.to(self.device)
            _free_gpu_memory()
            if graphs:
                self.graph_stats = cuda_graphs.enable(self.pipe, compile=self.settings.compile)

    def _call_pipe(self, control: Any, request: GenerationRequest, seeds: list[int],
                   on_step: Callable[[int, int], None] | None,
                   should_cancel: Callable[[], bool] | None) -> tuple[list[Any], list[str]]:
        import torch

        def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, request.steps)
            if should_cancel is not None and should_cancel():
                raise _Cancelled(step + 1)
            return tensors

        # One CPU generator per image: image i of seed s is image 0 of seed s+i (up to batch rounding).
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        self.pipe.scheduler = self._scheduler(request.scheduler)
        output = self.pipe(prompt=request.full_prompt, negative_prompt=request.negative_prompt or None,
                           image=control, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                           num_images_per_prompt=request.num_images, generator=generators,
                           controlnet_conditioning_scale=request.controlnet_scale,
                           control_guidance_start=request.control_start, control_guidance_end=request.control_end,
                           guess_mode=request.guess_mode, height=control.height, width=control.width,
                           callback_on_step_end=step_end, output_type="latent")
        return self._decode(output.images)

    def _decode(self, latents: Any) -> tuple[list[Any], list[str]]:
        """Latents to pictures. An fp16 VAE can overflow into NaN (a black picture): then decode once more
        in float32."""
        import torch

        vae, notes = self.pipe.vae, []
        with torch.no_grad():
            pixels = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
            if not torch.isfinite(pixels).all() or pixels.max() <= -0.99:
                dtype = vae.dtype
                vae.to(torch.float32)
                try:
                    pixels = vae.decode(latents.float() / vae.config.scaling_factor, return_dict=False)[0]
                finally:
                    vae.to(dtype)
                notes.append("The VAE decode gave NaN or an all-black picture; it was decoded again in float32.")
            pixels, flagged = self.pipe.run_safety_checker(pixels, pixels.device, pixels.dtype)
        images = self.pipe.image_processor.postprocess(pixels.float(), output_type="pil",
                                                       do_denormalize=[True] * pixels.shape[0])
        for i, hidden in enumerate(flagged or []):
            if hidden:
                images[i].info["flagged"] = True  # travels with the picture through the fallbacks
                notes.append(f"Image {i + 1} was flagged by the safety checker and is not shown.")
        return images, notes

    def _run_card(self, request: GenerationRequest, seeds: list[int], size: tuple[int, int],
                  timings: dict[str, float], cancelled: bool, steps_done: int) -> dict[str, Any]:
        import torch

        device = self.device if self.device == "cpu" else f"{self.device} ({torch.cuda.get_device_name()})"
        return {
            "request": asdict(request),
            "seed": request.seed,
            "seeds": seeds,
            "size": list(size),
            "models": dict(self.model_ids),
            "scheduler": type(self._scheduler(request.scheduler)).__name__,
            "device": device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": {"chosen": self.attention.chosen, "why": self.attention.why, "in_use": self.attention_in_use,
                          "fallback": self.attention_fallback, "quarantined": self.attention.quarantined},
            "fast_path": {"state": self.fast_path, **(asdict(self.graph_stats) if self.graph_stats else {})},
            "versions": self.versions,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "cancelled": cancelled,
            "steps_done": steps_done,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
