"""What a repaint does, pass by pass, before any model runs: which detected objects a request picks, and for
each inpainting pass the crop of the picture it samples, at which size, under which control image and mask,
with which prompt.

- "objects": one pass over the whole picture for the objects that use the main prompt, then one pass for each
  object with a prompt of its own (`object_prompts`); or, with `object_prompt_mode="one_pass"`, one pass for them
  all whose `regions` give each such object its prompt inside its mask (regional prompts).
- "background": one pass over the whole picture, everything but the objects.
- "detail" (ADetailer's flow, with ControlNet): one pass per object, in id order, on its box grown by
  `detail_padding`, sampled with the short side at `detail_resolution` and scaled back.

Pure image work (milliseconds), so the page shows every detail crop at its working size before the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from studio.core.control_image import (NoMatchingDetectionsError, build_control_image, chosen, edge_map_control,
                                       region_mask)
from studio.core.detections import Detection, with_ids
from studio.core.request import GenerationRequest
from studio.core.sizes import MULTIPLE, fit_size

DETAIL_FEATHER = 4  # ADetailer's mask blur: a detail pass's mask is feathered at least this much (px)
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Region:
    """A part of a regional pass with a prompt of its own: its mask ("L" at the picture's size) and its prompts."""

    mask: Image.Image
    prompt: str | None
    negative: str | None


def select(detections: Sequence[Detection], request: GenerationRequest, size: tuple[int, int]) -> list[Detection]:
    """The objects a request acts on, in id order: by id (`objects`), or else by class (`control_classes`); none
    smaller than `min_object_area` of a picture of `size`; at most `max_objects`, the most confident."""
    found = with_ids(list(detections))
    if request.objects is not None:
        found = [d for d in found if d.id in set(request.objects)]
    else:
        found = chosen(found, request.control_classes)
    found = [d for d in found if d.area >= request.min_object_area * size[0] * size[1]]
    if request.max_objects is not None:
        found = sorted(found, key=lambda d: (-d.confidence, d.id))[:request.max_objects]
    return sorted(found, key=lambda d: d.id)


@dataclass(frozen=True)
class RepaintPass:
    """One inpainting pass: the crop `box` of the picture (the whole picture for "objects" and "background"),
    sampled at `size` under `control`, repainting `mask` ("L" at the picture's size, 0 outside this pass) with
    `prompt` and `negative` (None: the request's), and inside each of `regions` with that region's."""

    objects: tuple[Detection, ...]
    box: Box
    size: tuple[int, int]
    mask: Image.Image
    control: Image.Image
    prompt: str | None = None
    negative: str | None = None
    regions: tuple[Region, ...] = ()

    def prompts_for(self, det: Detection, request: GenerationRequest) -> tuple[str, str]:
        """The prompt and negative prompt `det` is repainted with in this pass."""
        own = request.prompts_for(det.id) if self.regions else (self.prompt, self.negative)
        return own[0] or request.prompt, own[1] or request.negative_prompt

    @property
    def whole(self) -> bool:
        return self.box == (0, 0, *self.mask.size) and self.size == self.mask.size

    def crop(self, picture: Image.Image) -> Image.Image:
        """The part of `picture` this pass samples, at its working size."""
        return picture if self.whole else picture.crop(self.box).resize(self.size, Image.Resampling.LANCZOS)

    def working_mask(self) -> Image.Image:
        return self.mask if self.whole else self.mask.crop(self.box).resize(self.size, Image.Resampling.BILINEAR)

    def paste(self, picture: Image.Image, sampled: Image.Image) -> Image.Image:
        """`picture` with the sampled crop scaled back and blended in through the mask: where the mask is 0 the
        picture is kept pixel for pixel."""
        left, top, right, bottom = self.box
        back = sampled if self.whole else sampled.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
        mask = self.mask.crop(self.box)
        out = picture.copy()
        reach = mask.getbbox()  # only where the mask is above 0 is anything mixed (a few objects: a small part)
        if reach is not None:
            base = picture.crop(self.box).crop(reach)
            out.paste(blend(base, back.crop(reach), mask.crop(reach)), (left + reach[0], top + reach[1]))
        return out


@dataclass(frozen=True)
class ObjectOutcome:
    """A repainted object of output `image`: its run-card entry, the crop as it was sampled and the mask there."""

    image: int
    entry: dict[str, Any]
    crop: Image.Image
    mask: Image.Image = field(repr=False)


def blend(base: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """`generated` inside the mask, `base` outside it, pixel for pixel, mixed in between: rounded
    (base * (255 - m) + generated * m) / 255 in 16-bit integers (at most 65025 + 127). No quotient by the odd 255
    lies halfway between two integers: this is the float mix, rounded, in a quarter less time."""
    weight = np.asarray(mask, np.uint16)[..., None]
    mixed = np.asarray(base, np.uint16) * (255 - weight) + np.asarray(generated, np.uint16) * weight
    return Image.fromarray(((mixed + 127) // 255).astype(np.uint8))


def control_for(picture: Image.Image, selected: list[Detection], request: GenerationRequest
                ) -> tuple[Image.Image, list[str]]:
    """The control image of `picture` as the request asks, guided by the objects already selected."""
    if request.control_source == "edge_map":
        return edge_map_control(picture, request.invert_edge_map), []
    options = dict(low=request.canny_low, high=request.canny_high, padding=request.control_padding,
                   feather=request.control_feather, background_weight=request.background_weight)
    try:
        return build_control_image(picture, selected, mode=request.control_mode, **options), []
    except NoMatchingDetectionsError as exc:
        return build_control_image(picture, mode="full", **options), [f"{exc} The whole image's edges are used "
                                                                      "instead."]


def plan(picture: Image.Image, selected: list[Detection], request: GenerationRequest, control: Image.Image,
         max_side: int) -> list[RepaintPass]:
    """The passes of a repaint of `picture` (detections in its pixels, already selected); none for "all"."""
    if request.regenerate == "all" or not selected:
        return []
    if request.regenerate == "detail":
        return [detail_pass(picture, det, request, max_side) for det in selected]
    whole, size = (0, 0, *picture.size), picture.size
    if request.regenerate == "background":
        return [RepaintPass((), whole, size, _mask(size, selected, request, invert=True), control)]
    shared = [d for d in selected if request.prompts_for(d.id) == (None, None)]
    if request.object_prompt_mode == "one_pass" and len(shared) < len(selected):
        regions = tuple(Region(_mask(size, [det], request), *request.prompts_for(det.id))
                        for det in selected if det not in shared)
        return [RepaintPass(tuple(selected), whole, size, _mask(size, selected, request), control, regions=regions)]
    passes = [RepaintPass(tuple(shared), whole, size, _mask(size, shared, request), control)] if shared else []
    for det in (d for d in selected if d not in shared):
        passes.append(RepaintPass((det,), whole, size, _mask(size, [det], request), control,
                                  *request.prompts_for(det.id)))
    return passes


def detail_pass(picture: Image.Image, det: Detection, request: GenerationRequest, max_side: int) -> RepaintPass:
    """One object's detail pass: its box grown by `detail_padding`, sampled at `detail_resolution` (short side),
    under the Canny control of that crop at that size."""
    box = grown_box(det.box, request.detail_padding, picture.size)
    size = working_size((box[2] - box[0], box[3] - box[1]), request.detail_resolution, max_side)
    scale_x, scale_y = size[0] / (box[2] - box[0]), size[1] / (box[3] - box[1])
    local = replace(det, box=((det.box[0] - box[0]) * scale_x, (det.box[1] - box[1]) * scale_y,
                              (det.box[2] - box[0]) * scale_x, (det.box[3] - box[1]) * scale_y),
                    polygon=tuple(((x - box[0]) * scale_x, (y - box[1]) * scale_y) for x, y in det.polygon)
                    if det.polygon else None)
    crop = picture.crop(box).resize(size, Image.Resampling.LANCZOS)
    control, _ = control_for(crop, [local], request)
    feathered = replace(request, control_feather=max(request.control_feather, DETAIL_FEATHER))
    return RepaintPass((det,), box, size, _mask(picture.size, [det], feathered), control,
                       *request.prompts_for(det.id))


def grown_box(box: tuple[float, float, float, float], padding: int, size: tuple[int, int]) -> Box:
    """`box` grown by `padding` px on every side, in whole pixels inside the picture, at least MULTIPLE wide."""
    width, height = size
    left, top = max(0, math.floor(box[0] - padding)), max(0, math.floor(box[1] - padding))
    right, bottom = min(width, math.ceil(box[2] + padding)), min(height, math.ceil(box[3] + padding))
    if right - left < MULTIPLE:
        left = max(0, min(left, width - MULTIPLE))
        right = min(width, left + MULTIPLE)
    if bottom - top < MULTIPLE:
        top = max(0, min(top, height - MULTIPLE))
        bottom = min(height, top + MULTIPLE)
    return left, top, right, bottom


def working_size(crop: tuple[int, int], short_side: int, max_side: int) -> tuple[int, int]:
    """A crop's sampling size: its short side at `short_side` (snapped to 8, like every size), smaller when its
    long side would pass `max_side`."""
    size = fit_size(*crop, short_side)
    while max(size) > max_side and short_side > MULTIPLE:
        short_side -= MULTIPLE
        size = fit_size(*crop, short_side)
    return size


def denoise_schedule(steps: int, strength: float, longest: int) -> tuple[int, float, int]:
    """(schedule length, strength to hand diffusers, steps run) for a repaint at `strength`: the request's steps
    are the steps that run (Fast: 4 per object), on a schedule `steps / strength` long, as A1111 does with
    "exact steps"; `longest` caps it (the scheduler's own limit; LCM and TCD allow 50), and then fewer run."""
    if strength >= 1.0:
        return steps, 1.0, steps
    if strength <= 0.0:  # nothing to denoise: the picture is kept
        return 0, 0.0, 0
    length = min(math.ceil(steps / strength - 1e-9), longest)
    run = max(1, min(steps, int(length * strength + 1e-9)))
    return length, run / length + 1e-9, run  # diffusers runs int(length * strength) steps: exactly `run`


def _mask(size: tuple[int, int], detections: list[Detection], request: GenerationRequest,
          invert: bool = False) -> Image.Image:
    region = region_mask(size, detections, request.control_padding, request.control_feather)
    return Image.fromarray(np.round((1.0 - region if invert else region) * 255).astype(np.uint8), "L")


def union(masks: list[Image.Image]) -> Image.Image:
    return Image.fromarray(np.maximum.reduce([np.asarray(m) for m in masks]), "L")
