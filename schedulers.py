"""The schedulers the app offers (inference_pipeline.SCHEDULERS), built from the model's own config.

UniPC, the default, is wrapped so that its step never waits for the GPU. diffusers keeps its sigmas on
the CPU and copies a scalar to the device several times a step, and its corrector solves a 2x2 system with
`torch.linalg.solve`, whose error check reads the result back: each of these is a host synchronisation, so
the CPU cannot queue the next step while the GPU replays the current one. Same arithmetic, same pictures.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       UniPCMultistepScheduler)

@contextlib.contextmanager
def _solve_without_error_check() -> Iterator[None]:
    """`torch.linalg.solve` as `solve_ex` without its check, for the corrector's 2x2 system (never
    singular: its rows are powers of distinct step ratios). Only the pipeline's lock holder runs this."""
    solve = torch.linalg.solve
    torch.linalg.solve = lambda a, b, **kwargs: torch.linalg.solve_ex(a, b)[0]
    try:
        yield
    finally:
        torch.linalg.solve = solve


class AsyncUniPCMultistepScheduler(UniPCMultistepScheduler):
    """UniPC without host synchronisations inside the denoising loop."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
        super().set_timesteps(num_inference_steps, device=device, **kwargs)
        self.sigmas = self.sigmas.to(self.timesteps.device)

    def multistep_uni_c_bh_update(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with _solve_without_error_check():
            return super().multistep_uni_c_bh_update(*args, **kwargs)


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler of the named kind."""
    if name == "unipc":
        return AsyncUniPCMultistepScheduler.from_config(config)
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", use_karras_sigmas=True)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}")
