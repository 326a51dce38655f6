"""The sync-free UniPC computes what diffusers' UniPC computes, and touches nothing outside itself."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import LCMScheduler, TCDScheduler, UniPCMultistepScheduler

from studio.core.catalog import SCHEDULERS
from studio.engine import schedulers
from studio.engine.schedulers import AsyncLCMScheduler, AsyncTCDScheduler, AsyncUniPCMultistepScheduler, make_scheduler

from helpers import ROOT

CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def trajectory(scheduler, steps: int = 10, **step_kwargs) -> list[torch.Tensor]:
    """Every intermediate sample of a short denoising loop with a smooth stand-in for the UNet."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    scheduler.set_timesteps(steps, device="cpu")
    samples = []
    for t in scheduler.timesteps:
        model_output = torch.tanh(sample) * 0.3 + 0.01 * t / 1000
        sample = scheduler.step(model_output, t, sample, **step_kwargs).prev_sample
        samples.append(sample)
    return samples


@pytest.mark.parametrize("overrides", [{}, {"solver_order": 3}, {"prediction_type": "v_prediction"},
                                       {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
                                       {"predict_x0": False, "final_sigmas_type": "sigma_min"}])
def test_async_unipc_matches_diffusers_unipc_at_every_step(overrides):
    expected = trajectory(UniPCMultistepScheduler(**CONFIG, **overrides))
    got = trajectory(AsyncUniPCMultistepScheduler(**CONFIG, **overrides))
    assert len(got) == len(expected) == 10
    for step, (a, b) in enumerate(zip(got, expected)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), f"step {step} differs by {(a - b).abs().max()}"


@pytest.mark.parametrize("ours, theirs, kwargs", [(AsyncLCMScheduler, LCMScheduler, {}),
                                                   (AsyncTCDScheduler, TCDScheduler, {"eta": 0.3})])
@pytest.mark.parametrize("steps", [1, 4, 6])
@pytest.mark.parametrize("generators", [1, 2])
def test_consistency_schedulers_match_diffusers_at_every_step(ours, theirs, kwargs, steps, generators):
    """Their noise included (drawn ahead here): the same generator seeds give the same trajectory, with one
    generator or one per image."""
    def seeded():
        if generators == 1:
            return torch.Generator().manual_seed(5)
        return [torch.Generator().manual_seed(5 + i) for i in range(generators)]

    expected = trajectory(theirs(**CONFIG), steps, generator=seeded(), **kwargs)
    scheduler = ours(**CONFIG)
    got = trajectory(scheduler, steps, generator=seeded(), **kwargs)
    assert len(got) == len(expected) == steps
    for step, (a, b) in enumerate(zip(got, expected)):
        assert torch.equal(a, b), f"step {step} differs by {(a - b).abs().max()}"
    assert scheduler.begin_index == 0  # no timestep search at the first step


def test_the_corrector_leaves_torch_linalg_solve_alone():
    """While a corrector step runs (in this thread or another), a singular system must still raise."""
    probes = []

    class Probing(AsyncUniPCMultistepScheduler):
        def _sigma_to_alpha_sigma_t(self, sigma):  # called from inside the corrector
            try:
                torch.linalg.solve(torch.zeros(2, 2), torch.ones(2))
                probes.append("returned")
            except RuntimeError:
                probes.append("raised")
            return super()._sigma_to_alpha_sigma_t(sigma)

    trajectory(Probing(**CONFIG))
    assert probes and set(probes) == {"raised"}


def test_no_project_code_assigns_torch_linalg_solve():
    offenders = [path.name for path in ROOT.glob("**/*.py") if ".venv" not in path.parts
                 and re.search(r"torch\.linalg\.solve\s*=(?!=)", path.read_text())]
    assert offenders == []


def test_every_scheduler_the_request_accepts_is_built():
    config = UniPCMultistepScheduler(**CONFIG).config
    built = {name: type(make_scheduler(name, config)).__name__ for name in SCHEDULERS}
    assert built == {"unipc": "AsyncUniPCMultistepScheduler", "dpmpp_2m_karras": "DPMSolverMultistepScheduler",
                     "euler_a": "EulerAncestralDiscreteScheduler", "ddim": "DDIMScheduler",
                     "lcm": "AsyncLCMScheduler", "tcd": "AsyncTCDScheduler"}
    assert set(schedulers._BUILDERS) == set(SCHEDULERS)
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("lms", config)


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_lcm_and_tcd_are_asked_for_at_most_the_steps_diffusers_takes(name):
    """A request past the catalog's limit is refused up front, naming the scheduler; diffusers' own limit (its
    distillation's 50 steps) is the catalog's, so a run past it would have failed in the middle of a job."""
    from studio.core.request import GenerationRequest, InvalidRequestError

    most = SCHEDULERS[name].most_steps
    scheduler = make_scheduler(name, UniPCMultistepScheduler(**CONFIG).config)
    scheduler.set_timesteps(most, device="cpu")
    with pytest.raises(ValueError, match="is smaller than `num_inference_steps`"):
        scheduler.set_timesteps(most + 1, device="cpu")
    assert GenerationRequest(scheduler=name, steps=most).steps == most
    with pytest.raises(InvalidRequestError, match=f"the {re.escape(SCHEDULERS[name].label)} scheduler samples at "
                                                  f"most {most} steps, got {most + 1}"):
        GenerationRequest(scheduler=name, steps=most + 1)
    assert [n for n, s in SCHEDULERS.items() if s.most_steps] == ["lcm", "tcd"]
