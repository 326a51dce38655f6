"""Loading every model the app uses, from local folders, the Hugging Face cache or the Hub, failing fast with a
message a person can act on. The Hub is asked once, at start-up; whatever loads later (the presets'
distillation LoRAs) is a local file by then, so nothing asks a server while a run holds the GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.catalog import LORA_FILE, MODELS, ULTRALYTICS, model, sources
from studio.core.errors import ModelLoadError, short_error
from studio.core.settings import Settings
from studio.engine import tiny_models

log = logging.getLogger(__name__)

# Ultralytics: no pip auto-install, no analytics and no DNS probe at import (it can hang on a closed network);
# YOLO_OFFLINE turns its usage events off without writing to the user's own Ultralytics settings file.
os.environ["YOLO_AUTOINSTALL"] = "False"
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")


def hub_reachable(timeout_s: float) -> bool:
    """One HEAD request to the Hub through huggingface_hub's own HTTP session (so HTTP(S)_PROXY and the
    endpoint settings apply): seconds, where huggingface_hub's downloads retry for minutes."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s, follow_redirects=False)
        return True
    except httpx.HTTPError:
        return False


def tiny_sources(settings: Settings) -> dict[str, str]:
    """The offline smoke set, built on the fly, under the same keys as the real one."""
    paths = tiny_models.ensure_tiny_models(settings.cache_dir)
    found = {"sd15": paths.sd15, "controlnet": paths.controlnet, "yolo": paths.yolo, "taesd": paths.taesd,
             # a local OPEN_VOCAB_MODEL file, or the shapes segmenter finding its classes by name (name_finder.py)
             "open_vocab": settings.open_vocab_model if Path(settings.open_vocab_model).is_file() else paths.yolo,
             "inpaint": paths.inpaint if settings.sd15_inpaint_model else None,
             **{m.key: paths.distill_lora for m in MODELS if m.key.startswith("lora_")}}
    return {key: str(path) for key, path in found.items() if path is not None}


@dataclass
class Loaded:
    """What `ModelLoader.load` gives: the ControlNet pipeline, the detector, the optional TAESD and inpainting
    UNet, and each preset's distillation LoRA as a local file (or the reason it has none)."""

    pipe: Any
    detector: Any
    taesd: Any | None
    inpaint_unet: Any | None
    distill_loras: dict[str, str]
    missing_loras: dict[str, str]


class ModelLoader:
    def __init__(self, settings: Settings, device: str, dtype: Any) -> None:
        self.settings, self.device, self.dtype = settings, device, dtype
        self.tiny = settings.models == "tiny"
        self.sources = tiny_sources(settings) if self.tiny else sources(settings)
        # asked once: every model below loads from the Hub or only from local copies by this answer
        self.online = not self.tiny and hub_reachable(settings.hub_timeout_s)

    def load(self) -> Loaded:
        self.check_models_can_be_had()
        pipe = self.diffusion()
        distill, missing = self.distill_loras()
        return Loaded(pipe, self.detector(), self.taesd(), self.inpaint_unet(), distill, missing)

    def check_models_can_be_had(self) -> None:
        """Without the Hub, name every required model that is neither a local file or folder nor in the caches,
        at once (loading stops at the first)."""
        if self.tiny or self.online:
            return
        missing = [f"the {item.what} '{self.sources[item.key]}' ({item.env})" for item in MODELS
                   if item.required and item.key in self.sources and not self.available(item.key)]
        if missing:
            raise ModelLoadError(
                f"The Hugging Face Hub cannot be reached from here, and these models are neither local files or "
                f"folders nor in the caches: {'; '.join(missing)}. Ways out: set those variables to local copies, "
                f"give this machine internet access, or start with MODELS=tiny to use the offline smoke models.")

    def available(self, key: str) -> bool:
        """The model is a local file or folder, or in the Hugging Face (or, for the detector, Ultralytics') cache."""
        source = self.sources[key]
        if Path(source).expanduser().exists():
            return True
        if key in ULTRALYTICS:
            from ultralytics import settings as yolo_settings

            return (Path(yolo_settings["weights_dir"]) / source).is_file()
        return self.cached_file(source, model(key).probe) is not None

    @staticmethod
    def cached_file(repo: str, name: str) -> str | None:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        try:
            cached = try_to_load_from_cache(repo, name)
        except HFValidationError:
            return None
        return cached if isinstance(cached, str) else None

    def from_pretrained(self, cls: Any, key: str, **kwargs: Any) -> Any:
        """`cls.from_pretrained` for a local folder or a Hub id, failing fast with a message a person can act on."""
        source, item = self.sources[key], model(key)
        local = Path(source).expanduser()
        variant = self.settings.variant
        if local.is_dir():
            has_variant = any(f".{variant}." in p.name for p in local.rglob("*"))
            return cls.from_pretrained(local, variant=variant if has_variant else None, dtype=self.dtype, **kwargs)
        try:
            try:
                return cls.from_pretrained(source, variant=variant, dtype=self.dtype, local_files_only=not self.online,
                                           **kwargs)
            except (OSError, ValueError) as exc:  # a repository without that variant: its plain weights
                if "variant" not in str(exc) and f".{variant}." not in str(exc):
                    raise
                return cls.from_pretrained(source, dtype=self.dtype, local_files_only=not self.online, **kwargs)
        except Exception as exc:
            where = ("it is not in the local Hugging Face cache and the Hub cannot be reached from here"
                     if not self.online else short_error(exc))
            raise ModelLoadError(
                f"Could not load the {item.what} '{source}': {where}. Ways out: set {item.env} to a local folder "
                f"that holds the model in diffusers format, give this machine internet access, or start with "
                f"MODELS=tiny to use the offline smoke models.") from exc

    def diffusion(self) -> Any:
        import torch

        from studio.engine.control_embedding import embed_once_per_image
        from studio.engine.control_gate import GatedControlNet
        from studio.engine.pipelines import ControlNetPipeline

        controlnet = self.from_pretrained(GatedControlNet, "controlnet")  # skips its calls at scale 0
        embed_once_per_image(controlnet)
        checker = {} if self.settings.safety_checker else {"safety_checker": None}
        pipe = self.from_pretrained(ControlNetPipeline, "sd15", controlnet=controlnet,
                                    requires_safety_checker=False, **checker)
        pipe.set_progress_bar_config(disable=True)
        pipe.runs_on = torch.device(self.device)
        return pipe.to(self.device)

    def detector(self) -> Any:
        from ultralytics import YOLO

        source = self.sources["yolo"]
        try:
            return YOLO(source)
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load the detector '{source}': {short_error(exc)}. Ways out: set YOLO_MODEL to a local "
                f".pt file, give this machine internet access, or start with MODELS=tiny.") from exc

    def open_vocab(self) -> Any:
        """The segmenter that finds things by name (YOLOE; a closed-vocabulary YOLO finds its own classes by
        name). Loaded at the first request that names things, not at start."""
        from ultralytics import YOLO

        source = self.sources["open_vocab"]
        try:
            return YOLO(source)  # a YOLOE checkpoint comes back as Ultralytics' YOLOE
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load the open-vocabulary segmenter '{source}' that finds things by name: "
                f"{short_error(exc)}. Ways out: set OPEN_VOCAB_MODEL to a local YOLOE .pt file, run the prefetch "
                f"with internet access, or leave 'Find by name' empty to use the detector's classes.") from exc

    def taesd(self) -> Any | None:
        """TAESD for live previews and the fast decode, or None (not configured, or it fails to load: then
        previews use a linear latent-to-RGB map and the app still starts)."""
        if "taesd" not in self.sources:
            return None
        from diffusers import AutoencoderTiny

        try:
            return self.from_pretrained(AutoencoderTiny, "taesd").to(self.device)
        except ModelLoadError as exc:
            log.warning("%s Live previews use a linear approximation instead.", exc)
            return None

    def inpaint_unet(self) -> Any | None:
        """The 9-channel UNet of an inpainting checkpoint, or None (then the base UNet inpaints); one that was asked
        for and fails stops the start."""
        if "inpaint" not in self.sources:
            return None
        from diffusers import UNet2DConditionModel

        return self.from_pretrained(UNet2DConditionModel, "inpaint", subfolder="unet").to(self.device)

    def distill_loras(self) -> tuple[dict[str, str], dict[str, str]]:
        """Each preset's distillation LoRA as a local file: ({preset: path}, {preset: why it has none})."""
        found, missing = {}, {}
        for key, source in self.sources.items():
            if key.startswith("lora_"):
                preset = key.removeprefix("lora_")
                try:
                    found[preset] = self.local_lora(source)
                except Exception as exc:  # the preset is then unavailable and says why; the app still starts
                    missing[preset] = str(exc) if isinstance(exc, FileNotFoundError) else short_error(exc)
        return found, missing

    def local_lora(self, source: str) -> str:
        """A local file or folder as it is, a cached Hub file, or the Hub file downloaded now."""
        if Path(source).expanduser().exists():
            return str(Path(source).expanduser())
        cached = self.cached_file(source, LORA_FILE)
        if cached is not None:
            return cached
        if not self.online:
            raise FileNotFoundError("it is not in the local Hugging Face cache and the Hub cannot be reached from here")
        from huggingface_hub import hf_hub_download

        return hf_hub_download(source, LORA_FILE)
