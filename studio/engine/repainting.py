"""Repaint passes on the loaded components: each pass (core/repaint_plan.py) is one call of diffusers' ControlNet
inpainting pipeline on its crop, at its working size, with its own prompt (or a prompt per region: regional
attention, regional_attention.py) and the request's strength, for every output image at once; the feathered mask
can act as a strength per pixel (soft edits, soft_edit.py); the sampled crop is colour-corrected when asked,
scaled back and blended in through the pass's mask, so outside every mask the picture stays as it was, pixel for
pixel.

`detail_outputs` is ADetailer's flow: the detector runs on each generated picture and every object it finds
(with the request's class, count and size filters) gets a detail pass there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from studio.core.color import match_colors, seam_score
from studio.core.detections import Detection, numbered
from studio.core.presets import TCD_GAMMA
from studio.core.repaint_plan import ObjectOutcome, RepaintPass, denoise_schedule, detail_pass, select
from studio.core.request import GenerationRequest
from studio.engine.live_preview import decode_preview, preview_steps
from studio.engine.regional_attention import regional
from studio.engine.soft_edit import SoftMask

LONGEST_SCHEDULE = 1000  # SD1.5's training timesteps


class Cancelled(Exception):
    """`should_cancel` said stop; raised from the step callback, caught in `Denoiser.run`."""

    def __init__(self, steps_done: int) -> None:
        super().__init__(f"cancelled after {steps_done} steps")
        self.steps_done = steps_done


@dataclass
class Steps:
    """Steps counted over every pass of a run: progress, live previews and cancel see one run."""

    total: int
    on_step: Callable[[int, int], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    on_preview: Callable[[int, Image.Image], None] | None = None
    taesd: Any | None = None
    done: int = 0

    def callback(self, steps: int, size: tuple[int, int], soft: SoftMask | None = None
                 ) -> Callable[..., dict[str, Any]]:
        """diffusers' `callback_on_step_end` for a call of `steps` steps at `size`; with `soft`, it also moves the
        pipeline's mask on (it needs "mask" among the callback's tensor inputs)."""
        previews = set(preview_steps(steps)) if self.on_preview is not None else set()

        def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            self.done += 1
            if soft is not None:
                soft.advance(step, tensors["mask"])
            if step + 1 in previews:
                self.on_preview(self.done, decode_preview(tensors["latents"], self.taesd, size))  # type: ignore[misc]
            if self.on_step is not None:
                self.on_step(self.done, max(self.total, self.done))
            if self.should_cancel is not None and self.should_cancel():
                raise Cancelled(self.done)
            return tensors

        return step_end


@dataclass
class Repainted:
    """Pictures after their passes, which the safety checker flagged, notes and each object's outcome."""

    pictures: list[Image.Image]
    flagged: list[bool]
    notes: list[str] = field(default_factory=list)
    objects: list[ObjectOutcome] = field(default_factory=list)


def steps_per_pass(request: GenerationRequest, scheduler: Any) -> int:
    return denoise_schedule(request.steps, request.strength, longest(scheduler))[2]


def longest(scheduler: Any) -> int:
    """The longest schedule `scheduler` takes: LCM and TCD sample from their distillation's 50 steps."""
    return getattr(scheduler.config, "original_inference_steps", None) or LONGEST_SCHEDULE


def repaint(denoiser: Any, request: GenerationRequest, scheduler: Any, pictures: list[Image.Image],
            passes: list[RepaintPass], seeds: list[int], steps: Steps, first_image: int = 0) -> Repainted:
    """Run `passes` in order on `pictures` (one per seed); `first_image` numbers the pictures in the card."""
    done = Repainted(list(pictures), [False] * len(pictures))
    length, strength, run_steps = denoise_schedule(request.steps, request.strength, longest(scheduler))
    if run_steps == 0:
        done.notes.append("Denoising strength 0 keeps the picture as it is: nothing was repainted.")
        return done
    inpaint = denoiser.inpaint_pipeline()
    inpaint.scheduler = scheduler
    soft_edges = request.soft_mask and inpaint.unet.config.in_channels == 4
    if request.soft_mask and not soft_edges:
        done.notes.append("Soft edges need the base model's repaint: the inpainting checkpoint (SD15_INPAINT_MODEL) "
                          "takes the mask as an input, so it repainted with the hard mask.")
    for plan in passes:
        crops = [plan.crop(picture) for picture in done.pictures]
        prompt_embeds, negative_embeds, attention = embeddings(denoiser, request, plan)
        mask = plan.working_mask()
        soft = SoftMask(mask, run_steps) if soft_edges else None
        with regional(inpaint.unet) if attention else contextlib.nullcontext(), inpaint.keeping_encodes(crops):
            output = inpaint(image=crops if len(crops) > 1 else crops[0],
                             mask_image=soft.released(1) if soft else mask, control_image=plan.control,
                             strength=strength, num_inference_steps=length, prompt_embeds=prompt_embeds,
                             negative_prompt_embeds=negative_embeds, guidance_scale=request.guidance_scale,
                             num_images_per_prompt=len(crops),
                             generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                             controlnet_conditioning_scale=request.controlnet_scale,
                             control_guidance_start=request.control_start, control_guidance_end=request.control_end,
                             guess_mode=request.guess_mode, height=plan.size[1], width=plan.size[0],
                             eta=TCD_GAMMA if request.scheduler == "tcd" else 0.0,
                             callback_on_step_end=steps.callback(run_steps, plan.size, soft),
                             callback_on_step_end_tensor_inputs=["latents", "mask"] if soft else ["latents"],
                             output_type="latent", cross_attention_kwargs=attention)
        sampled, flagged, notes = denoiser.decode(output.images, request.fast_decode)
        if request.color_match:
            sampled = [match_colors(image, crop, mask) for image, crop in zip(sampled, crops)]
        before, done.pictures = done.pictures, [plan.paste(p, image) for p, image in zip(done.pictures, sampled)]
        done.flagged = [a or b for a, b in zip(done.flagged, flagged)]
        done.notes += [note for note in notes if note not in done.notes]
        seams = [seam_score(done.pictures[i], before[i], plan.mask) for i in range(len(crops))]  # one per pass
        done.objects += [outcome(first_image + i, det, plan, request, sampled[i], mask, seams[i])
                         for i in range(len(crops)) for det in plan.objects]
    return done


def embeddings(denoiser: Any, request: GenerationRequest, plan: RepaintPass
               ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor] | None]:
    """The prompt and negative embeddings of a pass and, for a regional pass, the cross-attention arguments that
    give each region its own: the regions' embeddings after the main prompt's, and their masks at the latents'
    size (the main prompt's first: wherever no region is)."""
    main = replace(request, prompt=plan.prompt or request.prompt,
                   negative_prompt=plan.negative or request.negative_prompt)
    prompt_embeds, negative_embeds = denoiser.prompt_embeddings(main)
    if not plan.regions:
        return prompt_embeds, negative_embeds, None
    own = [denoiser.prompt_embeddings(replace(request, prompt=region.prompt or request.prompt,
                                              negative_prompt=region.negative or request.negative_prompt))
           for region in plan.regions]
    prompt_embeds = torch.cat([prompt_embeds, *(p for p, _ in own)], dim=1)
    if negative_embeds is not None:
        negative_embeds = torch.cat([negative_embeds, *(n for _, n in own)], dim=1)
    scale = denoiser.pipe.vae_scale_factor  # a latent pixel per 8x8 pixels
    latent = (plan.size[1] // scale, plan.size[0] // scale)
    masks = torch.stack([torch.from_numpy(np.asarray(region.mask.resize(latent[::-1], Image.Resampling.BOX),
                                                     np.float32) / 255.0) for region in plan.regions])
    masks = torch.cat([(1.0 - masks.amax(dim=0, keepdim=True)).clamp_min(0.0), masks])
    return prompt_embeds, negative_embeds, {"region_masks": masks.to(prompt_embeds.device, prompt_embeds.dtype)}


def outcome(image: int, det: Detection, plan: RepaintPass, request: GenerationRequest, sampled: Image.Image,
            mask: Image.Image, seam: float) -> ObjectOutcome:
    """The run card's entry for one repainted object, with its crop as sampled and its mask there."""
    prompt, negative = plan.prompts_for(det, request)
    entry = {"image": image, "id": det.id, "class": det.label, "confidence": round(det.confidence, 4),
             "box": [round(v, 1) for v in det.box], "prompt": prompt, "negative_prompt": negative,
             "crop_box": list(plan.box), "one_pass": bool(plan.regions),
             "working_size": list(plan.size), "strength": request.strength, "color_match": request.color_match,
             "seam": seam}
    return ObjectOutcome(image, entry, sampled, mask)


def detail_outputs(denoiser: Any, request: GenerationRequest, scheduler: Any, pictures: list[Image.Image],
                   seeds: list[int], steps: Steps, detect: Callable[[Image.Image], list[Detection]],
                   max_side: int) -> Repainted:
    """ADetailer's flow: detect on each generated picture, then detail every object found that the request's
    class, count and size filters keep (ids of the photo's objects mean nothing on another picture)."""
    done = Repainted([], [])
    wanted = replace(request, objects=None, regenerate="detail", detail_output=False)
    for i, (picture, seed) in enumerate(zip(pictures, seeds)):
        found = select(numbered(detect(picture)), wanted, picture.size)
        passes = [detail_pass(picture, det, wanted, max_side) for det in found]
        steps.total += len(passes) * steps_per_pass(request, scheduler)
        one = repaint(denoiser, wanted, scheduler, [picture], passes, [seed], steps, first_image=i)
        done.pictures += one.pictures
        done.flagged += one.flagged
        done.notes += [note for note in one.notes if note not in done.notes]
        done.objects += one.objects
        if not passes:
            done.notes.append(f"The detail pass found no object to detail in image {i + 1}.")
    return done
