"""Denoise with fallbacks: one run of the diffusers ControlNet pipeline, and what saves it on a real GPU.

- An attention backend that passed its probe can still fail on real shapes: the run switches to SDPA once
  and says so. Only errors raised inside the attention processors (or the xformers / flash-attn packages)
  count; any other error is the run's own and propagates.
- Out of GPU memory: free it, then retry with each remedy of `remedies.REMEDIES` added to the previous, and
  last at a smaller size (the run prepared again there); every remedy is undone afterwards.
- An fp16 VAE can overflow into NaN (a black picture): the latents are decoded again in float32.

Around the loop it keeps what a few-step run would otherwise pay every time: the prompt embeddings of an
unchanged prompt are reused, and the final decode is one CUDA-graph replay (cuda_graphs.py) followed by one
host synchronisation.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

import attention_backend
from studio.core.detections import Detection
from studio.core.errors import GenerationError, short_error
from studio.core.preparation import ControlPreview
from studio.core.presets import TCD_GAMMA
from studio.core.repaint_plan import ObjectOutcome
from studio.core.request import GenerationRequest
from studio.engine import cuda_graphs
from studio.engine.remedies import REMEDIES, smaller
from studio.engine.repainting import Cancelled, Steps, detail_outputs, repaint, steps_per_pass

ATTENTION_PACKAGES = ("xformers", "flash_attn")
PROMPT_CACHE_ENTRIES = 8


@dataclass(frozen=True)
class Run:
    """One run as the denoiser sees it: what to make, under which control, and whom to tell. `rebuild(size)`
    prepares the same run at another size (the out-of-memory remedy); `detect(picture)` finds the objects of a
    generated picture (the detail pass of `detail_output`)."""

    request: GenerationRequest
    prepared: ControlPreview
    seeds: list[int]
    scheduler: Any
    rebuild: Callable[[tuple[int, int]], ControlPreview]
    on_step: Callable[[int, int], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    on_preview: Callable[[int, Image.Image], None] | None = None
    detect: Callable[[Image.Image], list[Detection]] | None = None
    max_side: int = 2048


@dataclass
class Denoised:
    """What one run gave: the images (None when cancelled), which of them the safety checker flagged, the
    preparation they were made with (a smaller one when the out-of-memory chain had to shrink the run), the
    steps done, notes for the person and each repainted object's outcome."""

    images: list[Image.Image] | None
    prepared: ControlPreview
    steps_done: int
    flagged: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    objects: list[ObjectOutcome] = field(default_factory=list)


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
        self.extra_unets = (inpaint_unet,) if inpaint_unet is not None else ()
        self.attention_in_use = attention
        self.attention_fallback: str | None = None
        self.graph_stats = cuda_graphs.enable(pipe, compile, self.extra_unets) if graphs else None
        self._inpaint: Any | None = None
        self._prompts: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    def weights_changed(self) -> None:
        """A LoRA was fused or the base weights came back: cached prompt embeddings are stale, and the graphs are
        when the weights moved to other memory (changed in place, the captured graphs read the new values)."""
        self._prompts.clear()
        if self.graph_stats is not None and cuda_graphs.moved(self.pipe, self.extra_unets):
            self.refresh_graphs()

    def refresh_graphs(self) -> None:
        """Graphs captured before a change of attention processors or weight memory are stale: recapture."""
        if self.graph_stats is not None:
            cuda_graphs.disable(self.pipe, self.extra_unets)
            self.graph_stats = cuda_graphs.enable(self.pipe, self.compile, self.extra_unets)

    def apply_attention(self, backend: str) -> None:
        attention_backend.apply(self.pipe, backend)
        if self._inpaint is not None and self.inpaint_unet is not None:
            attention_backend.apply(self._inpaint, backend)

    def inpaint_pipeline(self) -> Any:
        """diffusers' ControlNet inpainting pipeline over the loaded components (no second copy of the weights),
        with the inpainting checkpoint's UNet when one is loaded."""
        if self._inpaint is None:
            from studio.engine.pipelines import RepaintPipeline

            extra = {"unet": self.inpaint_unet} if self.inpaint_unet is not None else {}
            # from_pipe casts every shared module to `dtype`, float32 unless told: that would turn the loaded
            # fp16 weights into float32 ones (twice the memory, the captured graphs left pointing at freed ones).
            # It also leaves out a component whose class is not exactly its type hint: the GatedControlNet.
            self._inpaint = RepaintPipeline.from_pipe(self.pipe, controlnet=self.pipe.controlnet,
                                                      dtype=self.pipe.unet.dtype, **extra)
            self._inpaint.set_progress_bar_config(disable=True)
            self._inpaint.runs_on = self.pipe.runs_on
            if self.inpaint_unet is not None:
                attention_backend.apply(self._inpaint, self.attention_in_use)
        return self._inpaint

    def run(self, run: Run) -> Denoised:
        """Denoise `run`; with repaint passes, only their masks are repainted and the rest of the picture is kept."""
        try:
            try:
                return self._with_attention_fallback(run)
            except torch.cuda.OutOfMemoryError:
                return self._recover_from_oom(run)
        except Cancelled as cancelled:
            return Denoised(None, run.prepared, cancelled.steps_done)

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

    def _with_attention_fallback(self, run: Run) -> Denoised:
        try:
            return self._call_pipe(run)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            if (self.attention_in_use == "sdpa" or isinstance(exc, torch.cuda.OutOfMemoryError)
                    or not self._raised_by_attention(exc)):
                raise
            self.attention_fallback = (f"{self.attention_in_use} failed at its first real call "
                                       f"({short_error(exc)}); switched to sdpa")
            self.apply_attention("sdpa")
            self.attention_in_use = "sdpa"
            self.refresh_graphs()
            return self._call_pipe(run)

    def _recover_from_oom(self, run: Run) -> Denoised:
        labels, applied = [], []
        graphs = self.graph_stats is not None
        if graphs:
            cuda_graphs.disable(self.pipe, self.extra_unets)
        try:
            for remedy in (*REMEDIES, None):
                free_gpu_memory()
                if remedy is None:  # last: the whole run prepared again at a smaller size
                    size = smaller(run.prepared.size)
                    run = replace(run, prepared=run.rebuild(size))
                    labels.append(f"a smaller size ({size[0]}x{size[1]})")
                elif remedy.apply(self):
                    labels.append(remedy.label)
                    applied.append(remedy)
                else:
                    continue
                try:
                    denoised = self._with_attention_fallback(run)
                except torch.cuda.OutOfMemoryError:
                    continue
                denoised.notes.append(f"The GPU ran out of memory; the run succeeded with {', '.join(labels)}.")
                return denoised
            raise GenerationError(f"The GPU ran out of memory even with {', '.join(labels)}. Try fewer images per "
                                  "run or a lower resolution.")
        finally:
            for remedy in reversed(applied):
                remedy.undo(self)
            free_gpu_memory()
            if graphs:
                self.graph_stats = cuda_graphs.enable(self.pipe, self.compile, self.extra_unets)

    def _call_pipe(self, run: Run) -> Denoised:
        request, prepared = run.request, run.prepared
        passes = prepared.passes
        total = len(passes) * steps_per_pass(request, run.scheduler) if passes else request.steps
        steps = Steps(total, run.on_step, run.should_cancel, run.on_preview, self.taesd)
        if passes:
            done = repaint(self, request, run.scheduler, [prepared.picture] * len(run.seeds), passes, run.seeds, steps)
            images, flagged, notes, objects = done.pictures, done.flagged, done.notes, done.objects
        else:
            images, flagged, notes = self._generate(run, steps)
            objects = []
        if request.detail_output and run.detect is not None:
            done = detail_outputs(self, request, run.scheduler, images, run.seeds, steps, run.detect, run.max_side)
            images, objects = done.pictures, done.objects
            flagged = [a or b for a, b in zip(flagged, done.flagged)]
            notes += done.notes
        return Denoised(images, prepared, steps.done, flagged, notes, objects)

    def _generate(self, run: Run, steps: Steps) -> tuple[list[Image.Image], list[bool], list[str]]:
        """The whole picture from noise under the control image."""
        request, prepared = run.request, run.prepared
        # One CPU generator per image: image i of seed s is image 0 of seed s+i (up to batch rounding).
        generators = [torch.Generator("cpu").manual_seed(s) for s in run.seeds]
        prompt_embeds, negative_embeds = self.prompt_embeddings(request)
        self.pipe.scheduler = run.scheduler
        output = self.pipe(image=prepared.control_image, prompt_embeds=prompt_embeds,
                           negative_prompt_embeds=negative_embeds, num_inference_steps=request.steps,
                           guidance_scale=request.guidance_scale, num_images_per_prompt=request.num_images,
                           generator=generators, controlnet_conditioning_scale=request.controlnet_scale,
                           control_guidance_start=request.control_start, control_guidance_end=request.control_end,
                           guess_mode=request.guess_mode, height=prepared.size[1], width=prepared.size[0],
                           eta=TCD_GAMMA if request.scheduler == "tcd" else 0.0,
                           callback_on_step_end=steps.callback(request.steps, prepared.size), output_type="latent")
        return self.decode(output.images, request.fast_decode)

    def prompt_embeddings(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP's embeddings of the prompt (and of the negative prompt when CFG is on), computed once per text."""
        guided = request.guided
        key = (request.full_prompt, request.negative_prompt, guided)
        if key not in self._prompts:
            with torch.no_grad():
                self._prompts[key] = self.pipe.encode_prompt(request.full_prompt, self.pipe.device, 1, guided,
                                                             request.negative_prompt or None)
            while len(self._prompts) > PROMPT_CACHE_ENTRIES:
                self._prompts.popitem(last=False)
        self._prompts.move_to_end(key)
        return self._prompts[key]

    def decode(self, latents: torch.Tensor, fast: bool = False) -> tuple[list[Image.Image], list[bool], list[str]]:
        """Latents to pictures (by TAESD when `fast` and it is loaded), which of them the safety checker flagged,
        and notes; a NaN or all-black fp16 decode is decoded once more in float32."""
        vae, notes = self.pipe.vae, []
        if fast and self.taesd is None:
            notes.append("TAESD is not available here, so the full VAE decoded the picture.")
        with torch.no_grad():
            if fast and self.taesd is not None:
                pixels = self.taesd.decode(latents.to(self.taesd.dtype), return_dict=False)[0]
            else:
                pixels = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
                if bool(~torch.isfinite(pixels).all() | (pixels.max() <= -0.99)):  # one host sync
                    pixels = self._decode_in_float32(latents)
                    notes.append("The VAE decode gave NaN or an all-black picture; it was decoded again in float32.")
            pixels, flagged = self.pipe.run_safety_checker(pixels, pixels.device, pixels.dtype)
        images = self.pipe.image_processor.postprocess(pixels.float(), output_type="pil",
                                                       do_denormalize=[True] * pixels.shape[0])
        flagged = [bool(hidden) for hidden in flagged] if flagged is not None else [False] * len(images)
        notes += [f"Image {i + 1} was flagged by the safety checker and is not shown."
                  for i, hidden in enumerate(flagged) if hidden]
        return images, flagged, notes

    def _decode_in_float32(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        dtype = vae.dtype
        vae.to(torch.float32)
        try:  # eager: a graph captured with the float32 weights would outlive them
            return cuda_graphs.eager(vae.decode)(latents.float() / vae.config.scaling_factor, return_dict=False)[0]
        finally:
            vae.to(dtype)
            self.refresh_graphs()  # the round trip reallocated the VAE's weights under its decode graph
