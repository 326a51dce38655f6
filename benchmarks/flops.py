"""FLOPs of one SD1.5 + ControlNet evaluation, the VAE decode and encode and TAESD's decode at 512x512, counted by
PyTorch.

The models are built with SD1.5's real shapes on the meta device (no memory, no weights) and run once under
`torch.utils.flop_counter.FlopCounterMode`; the README's T4 estimates divide these by a T4's measured rate.

    python benchmarks/flops.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine.tiny_models import SD15  # noqa: E402


def count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def main() -> None:
    from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **SD15["unet"])
        controlnet = ControlNetModel.from_unet(unet, **SD15["controlnet"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            **SD15["vae"])
        taesd = AutoencoderTiny()
        latents, text = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
        hint, t = torch.randn(1, 3, 512, 512), torch.tensor([500])

    def evaluation() -> None:
        down, mid = controlnet(latents, t, text, controlnet_cond=hint, return_dict=False)
        unet(latents, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    rows = {"UNet + ControlNet, one evaluation (batch 1)": count(evaluation),
            "VAE decode": count(lambda: vae.decode(latents)),
            "VAE encode (a repaint's or detail crop's photo)": count(lambda: vae.encode(hint)),
            "TAESD decode": count(lambda: taesd.decode(latents))}
    print("| 512x512 | TFLOP |\n| --- | --- |")
    for name, tflop in rows.items():
        print(f"| {name} | {tflop:.3f} |")


if __name__ == "__main__":
    main()
