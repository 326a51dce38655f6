"""Fetch every weight the app will use before it starts, with one progress bar over the total size.

Without it the first page load sits on a spinner for minutes while SD1.5 (2 GB in fp16), the ControlNet,
TAESD, the presets' LoRAs and the detector download one after another. Files already in the Hugging Face
cache are not fetched again, and a local folder or file named in the settings is left alone. With the tiny
model set there is nothing to fetch: the set is built locally.

    python launch.py --prefetch              # in a terminal (MODELS, SD15_MODEL, ... as for the app)
    prefetch.run(Settings.from_env())        # the notebook's prefetch cell
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from studio.core.catalog import LORA_FILE, MODELS, ULTRALYTICS, sources
from studio.core.settings import Settings

NO_INTERNET = ("The Hugging Face Hub cannot be reached from here, so no weights can be fetched. On Kaggle, turn on "
               "Settings → Internet in the notebook (it needs a verified phone number), then run this again; "
               "elsewhere, check the network or set SD15_MODEL and CONTROLNET_MODEL to local folders.")


class PrefetchError(RuntimeError):
    """Fetching could not start or stopped; the message is one sentence for the person."""


@dataclass(frozen=True)
class Wanted:
    """A Hub repository and the files of it that the app loads."""

    what: str
    repo: str
    folders: tuple[str, ...] = ("",)  # the folders whose weights load ("" for the repository's top)
    weight_name: str | None = None  # one named weight file instead (a LoRA)


def wanted(settings: Settings) -> list[Wanted]:
    """The Hub repositories the real model set loads (the catalog's models, the listed style LoRAs); local paths
    and the Ultralytics models (it fetches its own) are not listed."""
    found = sources(settings)
    items = []
    for item in MODELS:
        if item.key in found and item.key not in ULTRALYTICS:
            folders = item.folders + (("safety_checker",) if item.key == "sd15" and settings.safety_checker else ())
            items.append(Wanted(item.what, found[item.key], folders, item.weight_name))
    items += [Wanted(f"style LoRA {hub_id}", hub_id, weight_name=LORA_FILE) for hub_id in settings.lora_hub_ids]
    return [item for item in items if not Path(item.repo).expanduser().exists()]


def choose_files(item: Wanted, listing: dict[str, int], variant: str) -> dict[str, int]:
    """The files of `listing` ({path: bytes}) that loading `item` reads: every config, tokenizer and scheduler
    file, and per weight folder its `variant` safetensors when the repository has them, else its safetensors."""
    if item.weight_name:
        return {name: size for name, size in listing.items() if PurePosixPath(name).name == item.weight_name}
    chosen = {name: size for name, size in listing.items() if fnmatch.fnmatch(name, "*.json")
              or fnmatch.fnmatch(name, "*.txt")}
    for folder in item.folders:
        inside = {name: size for name, size in listing.items() if str(PurePosixPath(name).parent).strip(".") == folder
                  and name.endswith(".safetensors")}
        preferred = {name: size for name, size in inside.items() if name.endswith(f".{variant}.safetensors")}
        chosen.update(preferred or inside)
    return chosen


def run(settings: Settings, say: Callable[[str], None] = print) -> dict[str, int]:
    """Fetch what is missing; returns counts: files, bytes in all, bytes fetched now."""
    if settings.models == "tiny":
        from studio.engine import tiny_models

        paths = tiny_models.ensure_tiny_models(settings.cache_dir)
        files = [p for p in paths.sd15.parent.rglob("*") if p.is_file()] + [paths.yolo]
        total = sum(p.stat().st_size for p in files)
        say(f"Tiny model set: {len(files)} files, {total / 2**20:.1f} MB, built locally in {paths.sd15.parent} "
            "(nothing to fetch).")
        return {"files": len(files), "bytes": total, "fetched": 0}
    from studio.engine.loading import hub_reachable

    if not hub_reachable(settings.hub_timeout_s):
        raise PrefetchError(NO_INTERNET)
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return _fetch(settings, say)
    except (OSError, httpx.HTTPError, HfHubHTTPError) as exc:  # dropped, refused, full: one sentence
        raise PrefetchError(f"Fetching stopped: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}. "
                            "Files fetched so far are kept; run it again to go on.") from exc


def _fetch(settings: Settings, say: Callable[[str], None]) -> dict[str, int]:
    from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
    from tqdm.auto import tqdm

    api, plan = HfApi(), []
    for item in wanted(settings):
        info = api.model_info(item.repo, files_metadata=True, timeout=settings.hub_timeout_s * 6)
        listing = {s.rfilename: s.size or 0 for s in info.siblings or []}
        files = choose_files(item, listing, settings.variant)
        if not files:
            raise FileNotFoundError(f"{item.what}: '{item.repo}' has none of the files the app loads.")
        plan += [(item, name, size) for name, size in sorted(files.items())]
    missing = [(item, name, size) for item, name, size in plan
               if not isinstance(try_to_load_from_cache(item.repo, name), str)]
    total, to_fetch = sum(size for *_, size in plan), sum(size for *_, size in missing)
    say(f"{len(plan)} files, {total / 2**30:.2f} GB in all; {len(missing)} to fetch ({to_fetch / 2**30:.2f} GB), "
        f"{len(plan) - len(missing)} already cached.")
    with tqdm(total=to_fetch, unit="B", unit_scale=True, desc="Fetching weights") as bar:
        for item, name, size in missing:
            bar.set_postfix_str(f"{item.what}: {name}")
            hf_hub_download(item.repo, name)
            bar.update(size)
    say(_fetch_ultralytics("Detector", settings.yolo_model)[0])
    for line in _fetch_open_vocab(settings.open_vocab_model):
        say(line)
    return {"files": len(plan), "bytes": total, "fetched": to_fetch}


def _fetch_ultralytics(what: str, name: str) -> tuple[str, Path]:
    """Ultralytics' own download (from its GitHub releases) into its weights folder, unless it is there: what
    happened, and where the file is."""
    if Path(name).expanduser().is_file():
        return f"{what}: {name} is a local file.", Path(name).expanduser()
    from ultralytics import settings as yolo_settings
    from ultralytics.utils.downloads import attempt_download_asset

    target = Path(yolo_settings["weights_dir"]) / name
    if target.is_file():
        return f"{what}: {name} already fetched.", target
    target.parent.mkdir(parents=True, exist_ok=True)
    attempt_download_asset(str(target))
    return f"{what}: {name} fetched ({target.stat().st_size / 2**20:.1f} MB).", target


def _fetch_open_vocab(name: str) -> list[str]:
    """The find-by-name segmenter and, for a YOLOE, its text encoder; says so when the encoder's tokenizer
    package is missing (installing packages is left to the person)."""
    import importlib.util

    from ultralytics import YOLO

    from studio.engine.name_finder import TEXT_ENCODER_FILES, TOKENIZER_PACKAGE

    said, path = _fetch_ultralytics("Open-vocabulary segmenter", name)
    variant = getattr(YOLO(path).model, "text_model", None)
    if variant is None:  # a closed-vocabulary model finds its own classes by name: no text encoder
        return [said]
    lines = [said, _fetch_ultralytics("Its text encoder", TEXT_ENCODER_FILES[variant])[0]]
    if importlib.util.find_spec("clip") is None:
        lines.append(f"Its tokenizer is not installed; finding things by name needs: pip install {TOKENIZER_PACKAGE}")
    return lines
