"""The ControlNet's conditioning embedding runs once per control image (studio/engine/control_embedding.py), and the
pictures are those of diffusers' own run, which computes it at every step."""

from __future__ import annotations

import gc
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

from inference_pipeline import GenerationRequest
from studio.engine.control_embedding import EmbeddingPerImage, embed_once_per_image

from helpers import pixels, sample_scene

REQUEST = GenerationRequest(prompt="a red box", steps=12, resolution=64, seed=3, scheduler="unipc")


@contextmanager
def computed(embedding: torch.nn.Module):
    """The embeddings actually computed: its first convolution runs only then."""
    inputs: list[torch.Tensor] = []
    handle = embedding.conv_in.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    try:
        yield inputs
    finally:
        handle.remove()


@contextmanager
def every_step(embedding: EmbeddingPerImage):
    embedding.reuse = False
    try:
        yield
    finally:
        del embedding.reuse


@pytest.fixture
def embedding() -> EmbeddingPerImage:
    torch.manual_seed(0)
    module = torch.nn.Module()
    module.controlnet_cond_embedding = ControlNetConditioningEmbedding(8, conditioning_channels=3,
                                                                       block_out_channels=(4, 4))
    torch.nn.init.normal_(module.controlnet_cond_embedding.conv_out.weight)  # diffusers starts it at zero
    embed_once_per_image(module)
    return module.controlnet_cond_embedding.eval()


def test_a_run_computes_the_embedding_once_and_gives_diffusers_pixels(tiny_pipeline):
    embedding = tiny_pipeline.pipe.controlnet.controlnet_cond_embedding
    assert isinstance(embedding, EmbeddingPerImage)
    scene = sample_scene((64, 64))
    with computed(embedding) as once:
        result = tiny_pipeline.generate(scene, REQUEST)
    with every_step(embedding), computed(embedding) as each_step:
        reference = tiny_pipeline.generate(scene, REQUEST)
    assert len(once) == 1 and len(each_step) == 12
    assert np.array_equal(pixels(result), pixels(reference))
    assert embedding._kept is None, "the run's control tensor is gone, and with it the kept embedding"


def test_another_picture_in_the_same_pipeline_gets_its_own_embedding(tiny_pipeline):
    embedding = tiny_pipeline.pipe.controlnet.controlnet_cond_embedding
    first, second = sample_scene((64, 64)), sample_scene((64, 64)).rotate(90)
    tiny_pipeline.generate(first, REQUEST)
    with computed(embedding) as seen:
        result = tiny_pipeline.generate(second, REQUEST)
    with every_step(embedding):
        reference = tiny_pipeline.generate(second, REQUEST)
    assert len(seen) == 1
    assert np.array_equal(pixels(result), pixels(reference))


def test_the_same_tensor_is_reused_but_a_change_in_place_or_an_equal_copy_is_computed_again(embedding):
    hint = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), computed(embedding) as seen:
        first = embedding(hint)
        assert embedding(hint) is first and len(seen) == 1
        hint.mul_(0.5)
        changed = embedding(hint)
        copy = embedding(hint.clone())
    assert len(seen) == 3
    assert not torch.equal(changed, first) and torch.equal(copy, changed)


def test_nothing_is_kept_with_autograd_on_on_an_inference_tensor_or_when_turned_off(embedding):
    hint = torch.rand(1, 3, 16, 16)
    with computed(embedding) as seen:
        embedding(hint), embedding(hint)
        with torch.inference_mode():
            frozen = torch.rand(1, 3, 16, 16)
            embedding(frozen), embedding(frozen)
        with torch.no_grad(), every_step(embedding):
            embedding(hint), embedding(hint)
    assert len(seen) == 6 and embedding._kept is None


def test_the_kept_embedding_goes_with_its_input(embedding):
    hint = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        embedding(hint)
    assert embedding._kept is not None
    del hint
    gc.collect()
    assert embedding._kept is None


def test_only_diffusers_own_embedding_is_converted():
    holder = torch.nn.Module()
    holder.controlnet_cond_embedding = torch.nn.Conv2d(3, 8, 3)
    with pytest.raises(TypeError, match="ControlNetConditioningEmbedding"):
        embed_once_per_image(holder)
