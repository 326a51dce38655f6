"""GroupNorm on SD1.5's channels-last fp16 activations: torch's kernel against group_norm.py's, per shape.

    python benchmarks/group_norm_bench.py        # on a CUDA GPU; prints microseconds per call and the error
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine import group_norm  # noqa: E402

# (batch, channels, height, width): UNet and ControlNet at 512x512 (latents 64x64), CFG batch 2, VAE decoder.
SHAPES = [(1, 320, 64, 64), (1, 640, 32, 32), (1, 1280, 16, 16), (1, 1280, 8, 8), (2, 320, 64, 64),
          (1, 512, 64, 64), (1, 512, 128, 128), (1, 256, 256, 256), (1, 128, 512, 512)]


def time_us(fn, repeats: int = 50) -> float:
    """GPU time per call, replayed from a CUDA graph as the pipeline runs it (no launch overhead)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(10):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (repeats * 10)


def main() -> None:
    print(torch.cuda.get_device_name())
    print("| shape | torch µs | ours µs | torch err | ours err |")
    print("| --- | --- | --- | --- | --- |")
    for shape in SHAPES:
        x = (torch.randn(shape, device="cuda") * 3 + 2).half().to(memory_format=torch.channels_last)
        w, b = torch.randn(shape[1], device="cuda").half(), torch.randn(shape[1], device="cuda").half()
        exact = torch.nn.functional.group_norm(x.float(), 32, w.float(), b.float(), 1e-6)
        native = torch.nn.functional.group_norm(x, 32, w, b, 1e-6)
        ours = group_norm.group_norm_nhwc(x, 32, w, b, 1e-6)
        t_native = time_us(lambda x=x, w=w, b=b: torch.nn.functional.group_norm(x, 32, w, b, 1e-6).contiguous(
            memory_format=torch.channels_last))  # what the next channels-last convolution pays for
        t_ours = time_us(lambda x=x, w=w, b=b: group_norm.group_norm_nhwc(x, 32, w, b, 1e-6))
        print(f"| {shape} | {t_native:.1f} | {t_ours:.1f} | {(native.float() - exact).abs().max():.4f} | "
              f"{(ours.float() - exact).abs().max():.4f} |")


if __name__ == "__main__":
    main()
