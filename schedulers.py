"""The schedulers the app offers (`generation_request.SCHEDULERS`), each built from the model's own config.

UniPC, the default, is subclassed so that its step never waits for the GPU. diffusers keeps its sigmas on
the CPU and copies them to the device every step, finds its first step by searching the timesteps, and its
corrector solves a small linear system with `torch.linalg.solve`, whose error check reads the result back:
each of these is a host synchronisation, so the CPU cannot queue the next step while the GPU replays the
current one. Same arithmetic, same pictures.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, LCMScheduler,
                       TCDScheduler, UniPCMultistepScheduler)


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


class _TablesOnDevice:
    """For the consistency schedulers (LCM, TCD): diffusers' step indexes `alphas_cumprod`, a CPU table, with
    the GPU timestep (a copy to the host every step) and asks `prev_timestep >= 0` of a GPU tensor (a wait for
    the GPU every step). Here the table lives beside the timesteps, the step reads the next timestep from a
    host copy of the schedule, and the first step starts at the first timestep instead of searching for it."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
        super().set_timesteps(num_inference_steps, device=device, **kwargs)  # type: ignore[misc]
        self.alphas_cumprod = self.alphas_cumprod.to(self.timesteps.device)
        self.final_alpha_cumprod = self.final_alpha_cumprod.to(self.timesteps.device)
        self.host_timesteps = self.timesteps.cpu()
        self.set_begin_index(0)

    def _step_with_host_schedule(self, step: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
                                 **kwargs: Any) -> Any:
        """diffusers' step, given this step's timestep and the schedule it looks ahead in from the host copy
        (the GPU timestep the pipeline passes holds the same value)."""
        index = self._step_index if self._step_index is not None else self._begin_index
        on_device, self.timesteps = self.timesteps, self.host_timesteps
        try:
            return step(model_output, self.host_timesteps[index], sample, **kwargs)
        finally:
            self.timesteps = on_device


# Each step spells out diffusers' signature: pipelines pass `generator` (and `eta`) only to a step that names it.
class AsyncLCMScheduler(_TablesOnDevice, LCMScheduler):
    """LCMScheduler without host synchronisations in its step; same arithmetic."""

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True) -> Any:
        return self._step_with_host_schedule(super().step, model_output, timestep, sample, generator=generator,
                                             return_dict=return_dict)


class AsyncTCDScheduler(_TablesOnDevice, TCDScheduler):
    """TCDScheduler without host synchronisations in its step; same arithmetic."""

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, eta: float = 0.3,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True) -> Any:
        return self._step_with_host_schedule(super().step, model_output, timestep, sample, eta=eta,
                                             generator=generator, return_dict=return_dict)


_BUILDERS = {
    "unipc": lambda config: AsyncUniPCMultistepScheduler.from_config(config),
    "dpmpp_2m_karras": lambda config: DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", use_karras_sigmas=True),
    "euler_a": lambda config: EulerAncestralDiscreteScheduler.from_config(config),
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "lcm": lambda config: AsyncLCMScheduler.from_config(config),
    "tcd": lambda config: AsyncTCDScheduler.from_config(config),
}


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler of the named kind."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown scheduler {name!r}")
    return _BUILDERS[name](config)
