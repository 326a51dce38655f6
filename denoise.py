"""Denoise with fallbacks: one run of the diffusers ControlNet pipeline, and what saves it on a real GPU.

- An attention backend that passed its probe can still fail on real shapes: the run switches to SDPA once
  and says so. Only errors raised inside the attention processors (or the xformers / flash-attn packages)
  count; any other error is the run's own and propagates.
- Out of GPU memory: free it, then retry with attention slicing, VAE tiling, model CPU offload and a smaller
  size, each added to the previous; every remedy is undone afterwards.
- An fp16 VAE can overflow into NaN (a black picture): the latents are decoded again in float32.

Around the loop it keeps what a few-step run would otherwise pay every time: the prompt embeddings of an
unchanged prompt are reused, and the final decode is one CUDA-graph replay (cuda_graphs.py) followed by one
host synchronisation.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

import attention_backend
import cuda_graphs
from generation_request import GenerationRequest
from live_preview import decode_preview, preview_steps
from presets import TCD_GAMMA

# Tried in this order when the GPU runs out of memory; each one stays on for the retries after it.
OOM_REMEDIES = ("attention slicing", "VAE tiling", "model CPU offload", "a smaller size")
ATTENTION_PACKAGES = ("xformers", "flash_attn")
PROMPT_CACHE_ENTRIES = 8


class GenerationError(RuntimeError):
    """A run failed for a reason the person can act on; the message says how."""


class Cancelled(Exception):
    """`should_cancel` said stop; raised from the step callback, caught in `Denoiser.run`."""

    def __init__(self, steps_done: int) -> None:
        super().__init__(f"cancelled after {steps_done} steps")
        self.steps_done = steps_done


@dataclass
class Repaint:
    """A regeneration of part of the picture: the input at the output size, and the mask of what is repainted
    ("L", 255: repainted, 0: kept exactly, in between: blended)."""

    image: Image.Image
    mask: Image.Image

    def resized(self, size: tuple[int, int]) -> Repaint:
        return Repaint(self.image.resize(size, Image.Resampling.LANCZOS),
                       self.mask.resize(size, Image.Resampling.BILINEAR))

    def composite(self, generated: Image.Image) -> Image.Image:
        """The generated picture inside the mask, the input outside it, pixel for pixel."""
        weight = np.asarray(self.mask, np.float32)[..., None] / 255.0
        blended = np.asarray(self.image, np.float32) * (1.0 - weight) + np.asarray(generated, np.float32) * weight
        result = Image.fromarray(np.round(blended).astype(np.uint8))
        result.info.update(generated.info)
        return result


@dataclass
class Denoised:
    """What one run gave: the images (None when cancelled), the control image they were made with (smaller
    when the out-of-memory chain had to shrink it, and the repaint mask with it), the steps done and notes for
    the person."""

    images: list[Image.Image] | None
    control: Image.Image
    steps_done: int
    notes: list[str] = field(default_factory=list)
    repaint: Repaint | None = None


def short_error(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]


def free_gpu_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        with cuda_graphs.CAPTURE_LOCK:  # empty_cache touches every GPU, another may be capturing
            torch.cuda.empty_cache()


class Denoiser:
    """Owns the state the fallbacks change: the attention backend in use and the CUDA graphs."""

    def __init__(self, pipe: Any, device: str, attention: str, graphs: bool, compile: bool = False,
                 taesd: Any | None = None, inpaint_unet: Any | None = None) -> None:
        self.pipe, self.device, self.compile, self.taesd = pipe, device, compile, taesd
        self.inpaint_unet = inpaint_unet  # an inpainting checkpoint's 9-channel UNet, or None: the base UNet inpaints
        self.attention_in_use = attention
        self.attention_fallback: str | None = None
        self.graph_stats = self._enable_graphs() if graphs else None
        self._inpaint: Any | None = None
        self._prompts: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    def weights_changed(self) -> None:
        """A LoRA was loaded, reweighted or dropped: cached prompt embeddings and captured graphs are stale."""
        self._prompts.clear()
        self.refresh_graphs()

    def _enable_graphs(self) -> cuda_graphs.GraphStats:
        extra = (self.inpaint_unet,) if self.inpaint_unet is not None else ()
        return cuda_graphs.enable(self.pipe, compile=self.compile, extra_unets=extra)

    def _disable_graphs(self) -> None:
        cuda_graphs.disable(self.pipe, extra_unets=(self.inpaint_unet,) if self.inpaint_unet is not None else ())

    def refresh_graphs(self) -> None:
        """Graphs captured before a change of weights or attention processors are stale: recapture."""
        if self.graph_stats is not None:
            self._disable_graphs()
            self.graph_stats = self._enable_graphs()

    def _apply_attention(self, backend: str) -> None:
        attention_backend.apply(self.pipe, backend)
        if self._inpaint is not None and self.inpaint_unet is not None:
            attention_backend.apply(self._inpaint, backend)

    def inpaint_pipeline(self) -> Any:
        """diffusers' ControlNet inpainting pipeline over the loaded components (no second copy of the weights),
        with the inpainting checkpoint's UNet when one is loaded."""
        if self._inpaint is None:
            from repaint_pipeline import RepaintPipeline  # diffusers: imported once the attention backend is set

            extra = {"unet": self.inpaint_unet} if self.inpaint_unet is not None else {}
            # from_pipe casts every shared module to `dtype`, float32 unless told: that would turn the loaded
            # fp16 weights into float32 ones (twice the memory, the captured graphs left pointing at freed ones)
            self._inpaint = RepaintPipeline.from_pipe(self.pipe, dtype=self.pipe.unet.dtype, **extra)
            self._inpaint.set_progress_bar_config(disable=True)
            if self.inpaint_unet is not None:
                attention_backend.apply(self._inpaint, self.attention_in_use)
        return self._inpaint

    def run(self, control: Image.Image, request: GenerationRequest, seeds: list[int], scheduler: Any,
            on_step: Callable[[int, int], None] | None = None,
            should_cancel: Callable[[], bool] | None = None,
            on_preview: Callable[[int, Image.Image], None] | None = None,
            repaint: Repaint | None = None) -> Denoised:
        """Denoise `request` under `control`; with `repaint`, only its mask is repainted and the rest of its
        image is kept exactly."""
        def attempt(ctl: Image.Image, rp: Repaint | None) -> tuple[list[Image.Image], list[str]]:
            return self._with_attention_fallback(ctl, rp, request, seeds, scheduler, on_step, should_cancel,
                                                 on_preview)

        try:
            try:
                images, notes = attempt(control, repaint)
                return Denoised(images, control, request.steps, notes, repaint)
            except torch.cuda.OutOfMemoryError:
                return self._recover_from_oom(control, repaint, request, attempt)
        except Cancelled as cancelled:
            return Denoised(None, control, cancelled.steps_done, repaint=repaint)

    def _raised_by_attention(self, exc: BaseException) -> bool:
        """True when the error comes from an attention processor or an attention package."""
        processors = {id(p) for module in attention_backend.attention_modules(self.pipe)
                      for p in module.attn_processors.values()}
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if id(frame.f_locals.get("self")) in processors or \
                    str(frame.f_globals.get("__name__", "")).startswith(ATTENTION_PACKAGES):
                return True
            tb = tb.tb_next
        return False

    def _with_attention_fallback(self, control: Image.Image, repaint: Repaint | None, request: GenerationRequest,
                                 seeds: list[int], scheduler: Any, on_step: Callable[[int, int], None] | None,
                                 should_cancel: Callable[[], bool] | None,
                                 on_preview: Callable[[int, Image.Image], None] | None
                                 ) -> tuple[list[Image.Image], list[str]]:
        try:
            return self._call_pipe(control, repaint, request, seeds, scheduler, on_step, should_cancel, on_preview)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            if (self.attention_in_use == "sdpa" or isinstance(exc, torch.cuda.OutOfMemoryError)
                    or not self._raised_by_attention(exc)):
                raise
            self.attention_fallback = (f"{self.attention_in_use} failed at its first real call "
                                       f"({short_error(exc)}); switched to sdpa")
            self._apply_attention("sdpa")
            self.attention_in_use = "sdpa"
            self.refresh_graphs()
            return self._call_pipe(control, repaint, request, seeds, scheduler, on_step, should_cancel, on_preview)

    def _recover_from_oom(self, control: Image.Image, repaint: Repaint | None, request: GenerationRequest,
                          attempt: Callable[[Image.Image, Repaint | None], tuple[list[Image.Image], list[str]]]
                          ) -> Denoised:
        applied: list[str] = []
        graphs = self.graph_stats is not None
        if graphs:
            self._disable_graphs()
        try:
            for remedy in OOM_REMEDIES:
                free_gpu_memory()
                if remedy == "attention slicing":
                    self._apply_attention("sliced")
                elif remedy == "VAE tiling":
                    self.pipe.vae.enable_tiling()
                elif remedy == "model CPU offload":
                    if not self.device.startswith("cuda"):
                        continue
                    self.pipe.enable_model_cpu_offload(device=self.device)
                else:
                    size = tuple(max(64, int(side * 0.75) // 8 * 8) for side in control.size)
                    control = control.resize(size, Image.Resampling.BILINEAR)
                    repaint = repaint.resized(size) if repaint is not None else None
                    remedy = f"a smaller size ({size[0]}x{size[1]})"
                applied.append(remedy)
                try:
                    images, notes = attempt(control, repaint)
                except torch.cuda.OutOfMemoryError:
                    continue
                return Denoised(images, control, request.steps, notes + [
                    f"The GPU ran out of memory; the run succeeded with {', '.join(applied)}."], repaint)
            raise GenerationError(f"The GPU ran out of memory even with {', '.join(applied)}. Try fewer images per "
                                  "run or a lower resolution.")
        finally:
            self._apply_attention(self.attention_in_use)
            self.pipe.vae.disable_tiling()
            if "model CPU offload" in applied:
                self.pipe.remove_all_hooks()
                self.pipe.to(self.device)
            free_gpu_memory()
            if graphs:
                self.graph_stats = self._enable_graphs()

    def _call_pipe(self, control: Image.Image, repaint: Repaint | None, request: GenerationRequest,
                   seeds: list[int], scheduler: Any, on_step: Callable[[int, int], None] | None,
                   should_cancel: Callable[[], bool] | None,
                   on_preview: Callable[[int, Image.Image], None] | None) -> tuple[list[Image.Image], list[str]]:
        previews = set(preview_steps(request.steps)) if on_preview is not None else set()

        def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if step + 1 in previews:
                on_preview(step + 1, decode_preview(tensors["latents"], self.taesd, control.size))  # type: ignore[misc]
            if on_step is not None:
                on_step(step + 1, request.steps)
            if should_cancel is not None and should_cancel():
                raise Cancelled(step + 1)
            return tensors

        # One CPU generator per image: image i of seed s is image 0 of seed s+i (up to batch rounding).
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        prompt_embeds, negative_embeds = self._prompt_embeddings(request)
        common = dict(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                      num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                      num_images_per_prompt=request.num_images, generator=generators,
                      controlnet_conditioning_scale=request.controlnet_scale,
                      control_guidance_start=request.control_start, control_guidance_end=request.control_end,
                      guess_mode=request.guess_mode, height=control.height, width=control.width,
                      eta=TCD_GAMMA if request.scheduler == "tcd" else 0.0,
                      callback_on_step_end=step_end, output_type="latent")
        if repaint is None:
            self.pipe.scheduler = scheduler
            output = self.pipe(image=control, **common)
        else:
            inpaint = self.inpaint_pipeline()
            inpaint.scheduler = scheduler
            output = inpaint(image=repaint.image, mask_image=repaint.mask, control_image=control, strength=1.0,
                             **common)
        images, notes = self._decode(output.images, request.fast_decode)
        if repaint is not None:
            images = [repaint.composite(image) for image in images]
        return images, notes

    def _prompt_embeddings(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP's embeddings of the prompt (and of the negative prompt when CFG is on), computed once per text."""
        guided = request.guidance_scale > 1
        key = (request.full_prompt, request.negative_prompt, guided)
        if key not in self._prompts:
            with torch.no_grad():
                self._prompts[key] = self.pipe.encode_prompt(request.full_prompt, self.pipe.device, 1, guided,
                                                             request.negative_prompt or None)
            while len(self._prompts) > PROMPT_CACHE_ENTRIES:
                self._prompts.popitem(last=False)
        self._prompts.move_to_end(key)
        return self._prompts[key]

    def _decode(self, latents: torch.Tensor, fast: bool = False) -> tuple[list[Image.Image], list[str]]:
        """Latents to pictures (by TAESD when `fast` and it is loaded); a NaN or all-black fp16 decode is
        decoded once more in float32."""
        vae, notes = self.pipe.vae, []
        if fast and self.taesd is None:
            notes.append("TAESD is not available here, so the full VAE decoded the picture.")
        with torch.no_grad():
            if fast and self.taesd is not None:
                pixels = self.taesd.decode(latents.to(self.taesd.dtype), return_dict=False)[0]
                broken = False
            else:
                pixels = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
                broken = bool(~torch.isfinite(pixels).all() | (pixels.max() <= -0.99))  # one host sync
            if broken:
                dtype = vae.dtype
                vae.to(torch.float32)
                try:  # eager: a graph captured with the float32 weights would outlive them
                    pixels = cuda_graphs.eager(vae.decode)(latents.float() / vae.config.scaling_factor,
                                                           return_dict=False)[0]
                finally:
                    vae.to(dtype)
                    self.refresh_graphs()  # the round trip reallocated the VAE's weights under its decode graph
                notes.append("The VAE decode gave NaN or an all-black picture; it was decoded again in float32.")
            pixels, flagged = self.pipe.run_safety_checker(pixels, pixels.device, pixels.dtype)
        images = self.pipe.image_processor.postprocess(pixels.float(), output_type="pil",
                                                       do_denormalize=[True] * pixels.shape[0])
        for i, hidden in enumerate(flagged or []):
            if hidden:
                images[i].info["flagged"] = True  # travels with the picture through the fallbacks
                notes.append(f"Image {i + 1} was flagged by the safety checker and is not shown.")
        return images, notes
