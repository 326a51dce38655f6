"""Helpers the test modules share: pixels as numbers, the bundled scene, a free port, the page under AppTest and
a real LoRA for the tiny UNet."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample_scene.png"
OUTPUTS = Path(os.environ["OUTPUTS_DIR"])  # the tests' outputs folder (conftest.py sets it before any test module)


def pixels(picture: Any) -> np.ndarray:
    """A picture as signed integers (differences do not wrap); a result gives its images stacked."""
    if hasattr(picture, "images"):
        assert picture.images, picture.warnings
        return np.stack([np.asarray(image, dtype=np.int16) for image in picture.images])
    return np.asarray(picture, dtype=np.int16)


def sample_scene(size: tuple[int, int] | None = None) -> Image.Image:
    """The bundled sample scene (512x384), resized when `size` is given."""
    scene = Image.open(SAMPLE).convert("RGB")
    return scene.resize(size) if size else scene


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_page(timeout: float = 180):
    """The app's page under AppTest, not yet run (the environment says which models and device)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)


def make_lora(unet_folder, out_folder, cross_attention_dim: int | None = None) -> Path:
    """A real LoRA for the tiny UNet (or, with another `cross_attention_dim`, for a UNet it does not fit),
    trained by nobody: its B matrices are random so that it visibly changes the output."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = dict(UNet2DConditionModel.load_config(unet_folder))
    if cross_attention_dim:
        config["cross_attention_dim"] = cross_attention_dim
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config(config)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out_folder, unet_lora_layers=state, safe_serialization=True)
    return Path(out_folder) / "pytorch_lora_weights.safetensors"
