"""The schedulers the app offers (`core/catalog.SCHEDULERS`), each built from the model's own config.

UniPC, the default, is subclassed so that its step never waits for the GPU. diffusers keeps its sigmas on
the CPU and copies them to the device every step, finds its first step by searching the timesteps, and its
corrector solves a small linear system with `torch.linalg.solve`, whose error check reads the result back:
each of these is a host synchronisation, so the CPU cannot queue the next step while the GPU replays the
current one. Same arithmetic, same pictures. LCM and TCD, the schedulers of the fast presets, get the same
treatment (`_SyncFreeConsistency`).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, LCMScheduler,
                       TCDScheduler, UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_lcm import LCMSchedulerOutput
from diffusers.schedulers.scheduling_tcd import TCDSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from studio.core.catalog import SCHEDULERS


class AsyncUniPCMultistepScheduler(UniPCMultistepScheduler):
    """UniPC without host synchronisations inside the denoising loop."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
        super().set_timesteps(num_inference_steps, device=device, **kwargs)
        self.sigmas = self.sigmas.to(self.timesteps.device)
        # Start at the first timestep unless a pipeline says otherwise (img2img calls set_begin_index after
        # this): finding the start by searching the timesteps would read a GPU tensor back at step one.
        self.set_begin_index(0)

    def multistep_uni_c_bh_update(self, this_model_output: torch.Tensor, *, last_sample: torch.Tensor,
                                  this_sample: torch.Tensor, order: int) -> torch.Tensor:
        """diffusers' UniC corrector (B(h) version), step for step, except that its system `R @ rhos = b` is
        solved by `solve_ex` without the error check (the system is never singular: R's rows are powers of
        distinct step ratios), so nothing is read back to the host."""
        outputs, m0, x = self.model_outputs, self.model_outputs[-1], last_sample
        device = this_sample.device
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index].to(device))
        alpha_s0, sigma_s0 = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index - 1].to(device))
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = torch.log(alpha_t) - torch.log(sigma_t) - lambda_s0

        rks, d1s = [], []
        for i in range(1, order):
            alpha_si, sigma_si = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index - (i + 1)].to(device))
            rk = (torch.log(alpha_si) - torch.log(sigma_si) - lambda_s0) / h
            rks.append(rk)
            d1s.append((outputs[-(i + 1)] - m0) / rk)
        rks = torch.stack([*rks, torch.ones((), device=device)])

        hh = -h if self.predict_x0 else h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        if self.config.solver_type == "bh1":
            b_h = hh
        elif self.config.solver_type == "bh2":
            b_h = torch.expm1(hh)
        else:
            raise NotImplementedError(f"solver_type {self.config.solver_type!r}")
        rows, b, factorial = [], [], 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial

        if order == 1:
            rhos_c = torch.ones(1, dtype=x.dtype, device=device) * 0.5
        else:
            rhos_c = torch.linalg.solve_ex(torch.stack(rows), torch.stack(b))[0].to(device).to(x.dtype)
        corr_res = torch.einsum("k,bkc...->bc...", rhos_c[:-1], torch.stack(d1s, dim=1)) if d1s else 0
        d1_t = this_model_output - m0
        if self.predict_x0:
            x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0 - alpha_t * b_h * (corr_res + rhos_c[-1] * d1_t)
        else:
            x_t = alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0 - sigma_t * b_h * (corr_res + rhos_c[-1] * d1_t)
        return x_t.to(x.dtype)


class _SyncFreeConsistency:
    """For the consistency schedulers (LCM, TCD), whose step waits for the GPU three ways in diffusers: it indexes
    `alphas_cumprod`, a CPU table, with the GPU timestep; it asks `prev_timestep >= 0` of a GPU tensor; and it
    draws each step's noise from the run's CPU generators and copies it over with a blocking copy. Here the table
    lives beside the timesteps, the step reads its timesteps from a host copy of the schedule, and the noise of
    every step is drawn at the first one (the same draws in the same order: nothing else draws in between) and
    copied in one non-blocking transfer. diffusers' step runs as if it were the last one (no noise), and the
    noise is added after it with diffusers' own expression."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
        super().set_timesteps(num_inference_steps, device=device, **kwargs)  # type: ignore[misc]
        self.alphas_cumprod = self.alphas_cumprod.to(self.timesteps.device)
        self.final_alpha_cumprod = self.final_alpha_cumprod.to(self.timesteps.device)
        self.host_timesteps = self.timesteps.cpu()
        self.noise: torch.Tensor | None = None
        self.set_begin_index(0)

    def _quiet_step(self, step: Any, model_output: torch.Tensor, sample: torch.Tensor,
                    **kwargs: Any) -> tuple[int, torch.Tensor, torch.Tensor]:
        """diffusers' step on the host schedule, told that this is the last step: (index, its prev_sample, its
        second output)."""
        index = self._step_index if self._step_index is not None else self._begin_index
        steps, on_device = self.num_inference_steps, self.timesteps
        self.timesteps, self.num_inference_steps = self.host_timesteps, index + 1
        try:
            prev_sample, second = step(model_output, self.host_timesteps[index], sample, return_dict=False,
                                       **kwargs)
        finally:
            self.timesteps, self.num_inference_steps = on_device, steps
        return index, prev_sample, second

    def _noise(self, index: int, like: torch.Tensor, generator: Any) -> torch.Tensor:
        """This step's noise, as `randn_tensor(shape, generator, device, dtype)` would draw it."""
        if self.noise is None:
            draws = [randn_tensor(like.shape, generator=generator, device=torch.device("cpu"), dtype=like.dtype)
                     for _ in range(index, self.num_inference_steps - 1)]
            stacked = torch.stack(draws)
            if like.device.type == "cuda":
                stacked = stacked.pin_memory()
            self.noise = stacked.to(like.device, non_blocking=True)
            self.noise_start = index
        return self.noise[index - self.noise_start]

    @staticmethod
    def _output(prev_sample: torch.Tensor, second: torch.Tensor, return_dict: bool, cls: Any) -> Any:
        return cls(prev_sample, second) if return_dict else (prev_sample, second)


# Each step spells out diffusers' signature: pipelines pass `generator` (and `eta`) only to a step that names it.
class AsyncLCMScheduler(_SyncFreeConsistency, LCMScheduler):
    """LCMScheduler without host synchronisations in its step; same arithmetic, same noise."""

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True) -> Any:
        index, denoised, _ = self._quiet_step(super().step, model_output, sample)
        prev_sample = denoised
        if index != self.num_inference_steps - 1:
            following = index + 1
            prev_timestep = self.host_timesteps[following] if following < len(self.host_timesteps) \
                else self.host_timesteps[index]
            alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
            beta_prod_t_prev = 1 - alpha_prod_t_prev
            noise = self._noise(index, denoised, generator)
            prev_sample = alpha_prod_t_prev.sqrt() * denoised + beta_prod_t_prev.sqrt() * noise
        return self._output(prev_sample, denoised, return_dict, LCMSchedulerOutput)


class AsyncTCDScheduler(_SyncFreeConsistency, TCDScheduler):
    """TCDScheduler without host synchronisations in its step; same arithmetic, same noise."""

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, eta: float = 0.3,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True) -> Any:
        index, pred_noised_sample, _ = self._quiet_step(super().step, model_output, sample, eta=eta)
        prev_sample = pred_noised_sample
        if eta > 0 and index != self.num_inference_steps - 1:
            following = index + 1
            prev_timestep = self.host_timesteps[following] if following < len(self.host_timesteps) \
                else torch.tensor(0)
            timestep_s = torch.floor((1 - eta) * prev_timestep).to(dtype=torch.long)
            alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
            alpha_prod_s = self.alphas_cumprod[timestep_s]
            noise = self._noise(index, pred_noised_sample, generator)
            prev_sample = (alpha_prod_t_prev / alpha_prod_s).sqrt() * pred_noised_sample + (
                1 - alpha_prod_t_prev / alpha_prod_s).sqrt() * noise
        return self._output(prev_sample, pred_noised_sample, return_dict, TCDSchedulerOutput)


_BUILDERS = {
    "unipc": lambda config: AsyncUniPCMultistepScheduler.from_config(config),
    "dpmpp_2m_karras": lambda config: DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", use_karras_sigmas=True),
    "euler_a": lambda config: EulerAncestralDiscreteScheduler.from_config(config),
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "lcm": lambda config: AsyncLCMScheduler.from_config(config),
    "tcd": lambda config: AsyncTCDScheduler.from_config(config),
}


if set(_BUILDERS) != set(SCHEDULERS):
    raise ImportError(f"schedulers.py builds {sorted(_BUILDERS)} but the catalog offers {sorted(SCHEDULERS)}")


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler of the named kind."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown scheduler {name!r}")
    return _BUILDERS[name](config)
