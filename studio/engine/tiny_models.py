"""Offline models: a tiny SD1.5-shaped ControlNet pipeline built in seconds, the fixture shape detector,
and the full-size random-weight SD1.5 + ControlNet and YOLOv8n that the benchmarks time.

The diffusion models have random weights, so their pictures are noise, but they are saved in the real
formats (`save_pretrained`, Ultralytics `.pt`) and loaded back through the code that loads real weights.
The latent geometry is SD1.5's: VAE scale factor 8, 4 latent channels, 77 CLIP positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RECIPE_VERSION = "7"
# The fixture models: tiny YOLOv8s trained on drawn circles, squares and triangles by
# tools/train_shapes_detector.py, so that the smoke mode and the tests see real, non-empty detections. The
# segmenter (masks too) is the smoke mode's detector; the box-only detector stands for box-only models.
ASSETS = Path(__file__).resolve().parents[2] / "assets"
SHAPES_SEGMENTER = ASSETS / "shapes_segmenter.pt"
SHAPES_DETECTOR = ASSETS / "shapes_detector.pt"


@dataclass(frozen=True)
class TinyModelPaths:
    sd15: Path
    controlnet: Path
    yolo: Path
    distill_lora: Path  # a distillation-LoRA stand-in: the fast presets load it where the real ones would go
    taesd: Path  # an AutoencoderTiny with SD1.5's latent geometry: live previews and the fast decode
    inpaint: Path  # an inpainting checkpoint's layout (unet/ with 9 input channels), for SD15_INPAINT_MODEL


def tiny_model_paths(folder: Path) -> TinyModelPaths:
    folder = Path(folder) / f"tiny-v{RECIPE_VERSION}"
    return TinyModelPaths(sd15=folder / "sd15", controlnet=folder / "controlnet", yolo=SHAPES_SEGMENTER,
                          distill_lora=folder / "distill-lora" / "pytorch_lora_weights.safetensors",
                          taesd=folder / "taesd", inpaint=folder / "inpaint")


def ensure_tiny_models(folder: Path) -> TinyModelPaths:
    """Build the tiny diffusion models under `folder` unless a complete build is already there."""
    paths = tiny_model_paths(folder)
    done = paths.sd15.parent / "complete"
    if not done.exists():
        paths.sd15.parent.mkdir(parents=True, exist_ok=True)
        _build_diffusion(paths)
        done.write_text(RECIPE_VERSION)
    return paths


# How strongly the random ControlNet's embedding answers an edge map and its residuals push the UNet (see
# make_control_matter): measured so that another control image changes the residuals by about their own size.
CONTROL_EMBEDDING_GAIN = 32.0
CONTROL_OUTPUT_GAIN = 0.3

# Words the tiny tokenizer knows whole, so that the default prompts cost as many tokens as with CLIP's.
TINY_WORDS = ("a an the of in on with and photo painting watercolor cozy cottage house sun tree box red blue "
              "green best quality extremely detailed longbody lowres bad anatomy hands missing fingers extra "
              "digit fewer digits cropped worst low").split()


def _tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    # CLIP's byte-level BPE: every character is a token, and the merges below spell out TINY_WORDS.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in sorted(ByteLevel.alphabet()):
            vocab[char + suffix] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
            parts = [pair[0] + pair[1], *parts[2:]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


# Tiny: a few MB, seconds on a CPU. Full: SD1.5's real shapes (UNet 860M, ControlNet 361M, VAE 84M,
# CLIP text 123M parameters), for benchmarks that must cost what real weights cost.
TINY = {
    "unet": dict(sample_size=64, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(2, 4),
                 cross_attention_dim=32, norm_num_groups=8,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
    "controlnet": dict(conditioning_embedding_out_channels=(8, 8, 16, 16)),
    "vae": dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64),
    "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    "taesd": dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                  num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)),
    "lora": dict(r=4, std=0.05),
}
SD15 = {
    "unet": dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "controlnet": dict(conditioning_embedding_out_channels=(16, 32, 96, 256)),
    "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512),
    "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 hidden_act="quick_gelu", vocab_size=49408),
    "taesd": dict(),  # diffusers' defaults are TAESD's shapes
    "lora": dict(r=64, std=0.02),  # LCM-LoRA SD1.5's rank
}
# The layers a distillation LoRA adapts: attention, feed-forward, projections and the ResNet convolutions, as
# LCM-LoRA does (its 67M parameters at rank 64), so that the benchmarks pay what a real one costs.
DISTILL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                   "conv2", "conv_shortcut", "time_emb_proj"]


def build_diffusion_models(folder: Path, arch: str = "sd15", device: str = "cuda") -> TinyModelPaths:
    """SD1.5-shaped ControlNet pipeline, distillation LoRA and TAESD with random weights (`arch` "sd15": the
    real shapes, saved in fp16 like the Hub's variant; "tiny": the smoke shapes)."""
    root = Path(folder) / arch
    paths = TinyModelPaths(sd15=root / "sd15", controlnet=root / "controlnet", yolo=Path(),
                           distill_lora=root / "distill-lora" / "pytorch_lora_weights.safetensors",
                           taesd=root / "taesd", inpaint=root / "inpaint")
    _build_diffusion(paths, SD15 if arch == "sd15" else TINY, device=device, half=arch == "sd15")
    return paths


def _build_diffusion(paths: TinyModelPaths, arch: dict = TINY, device: str = "cpu", half: bool = False) -> None:
    import torch
    from diffusers import (AutoencoderKL, AutoencoderTiny, ControlNetModel, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel, UniPCMultistepScheduler)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **arch["unet"])
        controlnet = ControlNetModel.from_unet(unet, **arch["controlnet"])
        make_control_matter(controlnet)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",)
                            * 4, up_block_types=("UpDecoderBlock2D",) * 4, **arch["vae"])
        tokenizer = _tokenizer()
        text = {"vocab_size": len(tokenizer), **arch["text"]}
        text_encoder = CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                                    pad_token_id=1, **text))
    scheduler = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        num_train_timesteps=1000)
    safety_checker, feature_extractor = _safety_checker(arch is TINY)
    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             controlnet=controlnet, scheduler=scheduler, safety_checker=safety_checker,
                                             feature_extractor=feature_extractor, requires_safety_checker=False)
    variant = "fp16" if half else None
    if half:
        pipe.to(torch.float16)
    pipe.save_pretrained(paths.sd15, variant=variant)
    controlnet.save_pretrained(paths.controlnet, variant=variant)
    with torch.device(device):
        taesd = AutoencoderTiny(**arch["taesd"])
    (taesd.to(torch.float16) if half else taesd).save_pretrained(paths.taesd, variant=variant)
    with torch.device(device):  # the 9 channels: latents, the mask, the masked picture's latents
        inpaint_unet = UNet2DConditionModel(in_channels=9, out_channels=4, **arch["unet"])
    (inpaint_unet.to(torch.float16) if half else inpaint_unet).save_pretrained(paths.inpaint / "unet", variant=variant)
    _save_distill_lora(unet, paths.distill_lora, **arch["lora"])


def _save_distill_lora(unet, path: Path, r: int, std: float) -> None:
    """A random LoRA over DISTILL_TARGETS (lora_B drawn with `std`, so that it changes the pictures), saved
    in the diffusers format that `load_lora_weights` reads."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet.add_adapter(LoraConfig(r=r, lora_alpha=r, target_modules=DISTILL_TARGETS, init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, std)
    StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=get_peft_model_state_dict(unet),
                                              weight_name=path.name, safe_serialization=True)
    unet.delete_adapters("default")


def make_control_matter(controlnet, embedding_gain: float = CONTROL_EMBEDDING_GAIN,
                        output_gain: float = CONTROL_OUTPUT_GAIN) -> None:
    """Random weights under which the control image shows in the pixels.

    `from_unet` zero-initialises the ControlNet's output convolutions and the last convolution of its
    conditioning embedding, and with default init the embedding barely depends on its input: then the
    control image, the scale, start/end and guess mode change nothing, and a test could not tell a pipeline
    that ignores them. He-normal weights with zero biases in the embedding (its last convolution times
    `embedding_gain`: a sparse edge map through eight He-normal convolutions is otherwise 30x weaker than the
    latents it is added to) and small random output convolutions (`output_gain` times He-normal) make the
    control show while the outputs stay finite and the pictures unsaturated."""
    import torch

    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in (embedding.conv_in, *embedding.blocks, embedding.conv_out):
            torch.nn.init.kaiming_normal_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
        embedding.conv_out.weight.mul_(embedding_gain)
        for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            torch.nn.init.kaiming_normal_(conv.weight)
            conv.weight.mul_(output_gain)
            torch.nn.init.zeros_(conv.bias)


def _safety_checker(tiny: bool) -> tuple:
    """A tiny CLIP-based safety checker with SD1.5's interface (only for the tiny set: the benchmarks
    measure the default, which runs without one)."""
    if not tiny:
        return None, None
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    return checker, CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_yolo(path: Path) -> None:
    """A random-weight YOLOv8n with the COCO class names, saved as an Ultralytics checkpoint: the benchmarks'
    detector, which costs what Ultralytics' nano detectors cost."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils import YAML
    from ultralytics.utils.checks import check_yaml

    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml")
    model.model.names = YAML.load(check_yaml("coco.yaml"))["names"]
    model.save(path)


def build_yoloe(path: Path, names: tuple[str, ...]) -> None:
    """A random-weight YOLOE nano segmenter that carries text embeddings for `names` (random ones: no text
    encoder is needed offline), saved as an Ultralytics checkpoint. Its heads are set so that, untrained, it
    still finds things with masks for the find-by-name flow to work on."""
    import torch
    from ultralytics import YOLOE

    torch.manual_seed(0)
    model = YOLOE("yoloe-26n-seg.yaml")
    embeddings = torch.nn.functional.normalize(torch.randn(1, len(names), 512), dim=-1)
    model.set_classes(list(names), embeddings)
    segment = model.model.model[-1]
    for head in (*segment.cv4, *getattr(segment, "one2one_cv4", ())):  # one-to-one: the end-to-end head
        head.bias.data.fill_(1000.0)  # every place scores 1, so the untrained model finds boxes
    # and every box gets a mask: positive prototypes (SiLU of 1) times positive coefficients
    segment.proto.cv3.bn.weight.data.zero_()
    segment.proto.cv3.bn.bias.data.fill_(1.0)
    for coefficients in (*segment.cv5, *getattr(segment, "one2one_cv5", ())):
        coefficients[-1].weight.data.zero_()
        coefficients[-1].bias.data.fill_(1.0)
    model.save(path)
