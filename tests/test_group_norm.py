"""The channels-last GroupNorm computes what torch's GroupNorm computes, and stays out of the way elsewhere."""

from __future__ import annotations

import pytest
import torch

from studio.engine import group_norm


@pytest.mark.parametrize("shape, groups", [((1, 320, 16, 12), 32), ((2, 64, 9, 7), 8), ((1, 8, 4, 4), 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_torch_group_norm_in_float32(shape, groups, affine):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3 + 1.5).to(memory_format=torch.channels_last)
    weight, bias = (torch.randn(shape[1]), torch.randn(shape[1])) if affine else (None, None)
    got = group_norm.group_norm_nhwc(x, groups, weight, bias, 1e-5)
    expected = torch.nn.functional.group_norm(x, groups, weight, bias, 1e-5)
    assert got.shape == x.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-5), (got - expected).abs().max()


def test_in_float16_it_is_as_close_to_float32_as_torchs_own_half_kernel():
    torch.manual_seed(1)
    x = (torch.randn(1, 128, 24, 20) * 4 + 10).half().to(memory_format=torch.channels_last)  # a large mean
    weight, bias = torch.randn(128).half(), torch.randn(128).half()
    exact = torch.nn.functional.group_norm(x.float(), 32, weight.float(), bias.float(), 1e-6)
    ours = (group_norm.group_norm_nhwc(x, 32, weight, bias, 1e-6).float() - exact).abs().max()
    torchs = (torch.nn.functional.group_norm(x, 32, weight, bias, 1e-6).float() - exact).abs().max()
    assert ours <= 2 * torchs


def test_enable_wraps_every_group_norm_and_leaves_cpu_and_contiguous_input_to_torch():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(),
                                torch.nn.GroupNorm(2, 8))
    assert group_norm.enable(model) == 2 and group_norm.enable(model) == 0  # once only
    norms = [m for m in model if isinstance(m, torch.nn.GroupNorm)]
    assert all(isinstance(m.forward, group_norm.ChannelsLastGroupNorm) for m in norms)
    x = torch.randn(1, 8, 6, 6)
    norm = model[1]
    assert torch.equal(norm(x), torch.nn.functional.group_norm(x, 4, norm.weight, norm.bias, norm.eps))
