"""The sync-free UniPC computes what diffusers' UniPC computes."""

from __future__ import annotations

import torch
from diffusers import UniPCMultistepScheduler

from schedulers import AsyncUniPCMultistepScheduler, make_scheduler

CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def run(scheduler, steps: int = 10) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    scheduler.set_timesteps(steps, device="cpu")
    for t in scheduler.timesteps:
        model_output = torch.tanh(sample) * 0.3 + 0.01 * t / 1000  # a smooth stand-in for a UNet
        sample = scheduler.step(model_output, t, sample).prev_sample
    return sample


def test_async_unipc_matches_diffusers_unipc_step_for_step():
    expected = run(UniPCMultistepScheduler(**CONFIG))
    got = run(AsyncUniPCMultistepScheduler(**CONFIG))
    assert torch.allclose(got, expected, atol=1e-6)


def test_the_solve_patch_is_scoped_to_the_corrector():
    solve = torch.linalg.solve
    scheduler = make_scheduler("unipc", UniPCMultistepScheduler(**CONFIG).config)
    assert isinstance(scheduler, AsyncUniPCMultistepScheduler)
    run(scheduler)
    assert torch.linalg.solve is solve
