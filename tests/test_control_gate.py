"""The ControlNet runs only on the steps where it acts (studio/engine/control_gate.py), and the pictures are those of
diffusers' own run, which evaluates it at every step and multiplies the residuals outside its window by 0."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from inference_pipeline import GenerationRequest
from studio.engine.control_gate import GatedControlNet
from studio.engine.cuda_graphs import model_name

from helpers import pixels, sample_scene

BASE = GenerationRequest(prompt="a red box", steps=20, resolution=64, seed=7, scheduler="unipc")


@contextmanager
def counted(pipe):
    """The ControlNet's evaluations (a forward hook fires only when the model runs), by the batch they ran on."""
    batches: list[int] = []
    handle = pipe.controlnet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        yield batches
    finally:
        handle.remove()


@contextmanager
def ungated(pipe):
    """diffusers' behaviour: the ControlNet evaluated at every step, its residuals scaled by 0 outside the window."""
    pipe.controlnet.skip_at_zero_scale = False
    try:
        yield
    finally:
        del pipe.controlnet.skip_at_zero_scale


def test_the_loaded_controlnet_is_the_gated_one_and_run_cards_name_it_as_diffusers_does(tiny_pipeline):
    assert isinstance(tiny_pipeline.pipe.controlnet, GatedControlNet)
    assert model_name(tiny_pipeline.pipe.controlnet) == "ControlNetModel"
    assert model_name(tiny_pipeline.pipe.unet) == "UNet2DConditionModel"


@pytest.mark.parametrize("window, calls", [(dict(control_end=0.5), 10), (dict(control_start=0.25), 15),
                                           (dict(control_start=0.2, control_end=0.6), 8),
                                           (dict(controlnet_scale=0.0), 0), (dict(), 20)])
def test_the_controlnet_runs_only_inside_its_window_and_the_pixels_are_diffusers(tiny_pipeline, window, calls):
    scene, request = sample_scene((64, 64)), GenerationRequest(**{**BASE.__dict__, **window})
    with counted(tiny_pipeline.pipe) as gated:
        result = tiny_pipeline.generate(scene, request)
    with ungated(tiny_pipeline.pipe), counted(tiny_pipeline.pipe) as every_step:
        reference = tiny_pipeline.generate(scene, request)
    assert len(gated) == calls and len(every_step) == 20
    assert set(gated) <= {2}, "one evaluation of the CFG batch per step"
    assert np.array_equal(pixels(result), pixels(reference))


def test_guess_mode_with_cfg_gets_zero_residuals_of_the_right_shapes_and_the_same_pixels(tiny_pipeline):
    scene = sample_scene((88, 72))  # latents 11x9: odd sides, rounded up by each downsampler
    request = GenerationRequest(**{**BASE.__dict__, "guess_mode": True, "control_start": 0.5, "resolution": 72,
                                   "steps": 6})
    with counted(tiny_pipeline.pipe) as gated:
        result = tiny_pipeline.generate(scene, request)
    with ungated(tiny_pipeline.pipe):
        reference = tiny_pipeline.generate(scene, request)
    assert gated == [1, 1, 1], "guess mode: the conditional half only, the last 3 of 6 steps"
    assert np.array_equal(pixels(result), pixels(reference))


def test_zero_residuals_match_the_shapes_the_controlnet_gives(tiny_pipeline):
    import torch

    net = tiny_pipeline.pipe.controlnet
    sample = torch.zeros(2, 4, 9, 7)
    hint = torch.zeros(2, 3, 72, 56)
    text = torch.zeros(2, 77, net.config.cross_attention_dim)
    with torch.no_grad():
        down, mid = net.forward(sample, 10, text, controlnet_cond=hint, return_dict=False)
    zeros, zero_mid = net.zero_residuals(sample)
    assert [z.shape for z in zeros] == [d.shape for d in down] and zero_mid.shape == mid.shape
    assert all(z.abs().sum() == 0 for z in zeros) and zero_mid.abs().sum() == 0
