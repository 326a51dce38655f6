"""A run's FLOPs as the benchmark counts them (benchmarks/flops.py): the evaluations that really ran, each at the
cost PyTorch counts for its module and size on the meta device."""

from __future__ import annotations

import sys

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from inference_pipeline import GenerationRequest

from helpers import ROOT, sample_scene

sys.path.insert(0, str(ROOT / "benchmarks"))
from flops import RunFlops, t4_estimate_s  # noqa: E402


def test_a_runs_flops_equal_pytorchs_count_of_the_same_run_and_skipped_controlnet_calls_cost_nothing(tiny_pipeline):
    scene = sample_scene((64, 64))
    request = GenerationRequest(prompt="a red box", steps=6, resolution=64, seed=5, control_end=0.5)
    preview = tiny_pipeline.preview(scene, request)
    tiny_pipeline.generate(scene, request, preview=preview)  # the prompt's embeddings are computed once, before
    counted = RunFlops(tiny_pipeline.pipe, tiny_pipeline.denoiser.taesd)
    # attention through SDPA's math kernel: matrix products PyTorch counts (its fused CPU kernel goes uncounted)
    with counted.counting(), FlopCounterMode(display=False) as pytorch, sdpa_kernel(SDPBackend.MATH):
        tiny_pipeline.generate(scene, request, preview=preview)
    assert dict(counted.calls) == {("unet", (4, 8, 8)): 12, ("controlnet", (4, 8, 8)): 6, ("vae-decode", (4, 8, 8)): 1}
    assert dict(counted.reused) == {(3, 64, 64): 4}, "the CFG batch's embedding computed at the first call only"
    assert abs(counted.tflops() - pytorch.get_total_flops() / 1e12) <= 1e-3 * counted.tflops()
    unet, controlnet = counted.per_sample(("unet", (4, 8, 8))), counted.per_sample(("controlnet", (4, 8, 8)))
    assert 0 < controlnet < unet


def test_the_t4_estimate_is_the_counted_work_at_the_t4s_rate_over_its_share_of_the_time():
    assert t4_estimate_s(42.7, 0.0) == 1.0 and t4_estimate_s(42.7, 0.5) == 2.0
