"""Which style LoRAs a visitor may use: `.safetensors` files inside LORA_DIR and Hub ids listed in LORA_HUB_IDS.

A free path or Hub id in a public app is a file-system oracle (a file, a folder and nothing used to answer
differently) and a download button for any repository of any size. So visitors choose from the operator's
list, every refusal reads the same, a Hub LoRA's size is checked before it is downloaded, and the caller
resolves (and downloads) before its run takes the GPU. ALLOW_ANY_LORA=1 gives back free text on a private
machine.
"""

from __future__ import annotations

from pathlib import Path

from studio.core.catalog import LORA_FILE
from studio.core.errors import LoraError
from studio.core.settings import Settings

REFUSED = ("That LoRA is not offered here: choose one from the list (the server's operator offers LoRAs with "
           "LORA_DIR and LORA_HUB_IDS).")


def offered(settings: Settings) -> list[str]:
    """The names a visitor may choose: files under LORA_DIR (relative paths), then the listed Hub ids."""
    names: list[str] = []
    if settings.lora_dir is not None and settings.lora_dir.is_dir():
        root = settings.lora_dir.resolve()
        names += sorted(p.relative_to(root).as_posix() for p in root.rglob("*.safetensors")
                        if p.is_file() and p.resolve().is_relative_to(root))  # no link out of the folder
    return names + [hub_id for hub_id in settings.lora_hub_ids if hub_id not in names]


def resolve(choice: str, settings: Settings) -> str:
    """What to load for a visitor's choice: a local `.safetensors` path (a listed Hub LoRA is downloaded
    first, its size checked against LORA_MAX_MB, once per server). Raises LoraError, with the same message for
    anything not offered."""
    if settings.allow_any_lora:
        return choice if Path(choice).expanduser().exists() else download(choice, settings)
    if choice in settings.lora_hub_ids:
        return download(choice, settings)
    if settings.lora_dir is not None:
        root = settings.lora_dir.resolve()
        path = (root / choice).resolve()
        if path.is_relative_to(root) and path.suffix == ".safetensors" and path.is_file():
            return str(path)
    raise LoraError(REFUSED)


def needs_download(choice: str, settings: Settings) -> bool:
    """True when resolving `choice` may ask the Hub: the job queue then resolves it before the job takes a worker."""
    free_hub_id = settings.allow_any_lora and not Path(choice).expanduser().exists()
    return (choice in settings.lora_hub_ids or free_hub_id) and (choice, settings) not in _downloaded


_downloaded: dict[tuple[str, Settings], str] = {}


def download(repo_id: str, settings: Settings) -> str:
    """A Hub LoRA's local file, downloaded on the first call only (later calls ask no server)."""
    if (repo_id, settings) not in _downloaded:
        _downloaded[repo_id, settings] = _download(repo_id, settings)
    return _downloaded[repo_id, settings]


def _download(repo_id: str, settings: Settings) -> str:
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = HfApi().model_info(repo_id, files_metadata=True, timeout=settings.hub_timeout_s)
    except Exception as exc:  # offline, gone, private: the run goes on without it, and says why
        raise LoraError(f"The LoRA '{repo_id}' could not be looked up on the Hub ({type(exc).__name__}).") from None
    files = [s for s in info.siblings or [] if s.rfilename.endswith(".safetensors")]
    if not files:
        raise LoraError(f"The LoRA '{repo_id}' has no .safetensors file (other formats can run code).")
    chosen = next((s for s in files if s.rfilename.endswith(LORA_FILE)), files[0])
    if chosen.size is None:
        raise LoraError(f"The LoRA '{repo_id}' ({chosen.rfilename}) does not say its size on the Hub, so it is not "
                        f"downloaded (at most {settings.lora_max_mb} MB are, LORA_MAX_MB).")
    size_mb = chosen.size / 2**20
    if size_mb > settings.lora_max_mb:
        raise LoraError(f"The LoRA '{repo_id}' ({chosen.rfilename}, {size_mb:,.0f} MB) is larger than the "
                        f"{settings.lora_max_mb} MB allowed (LORA_MAX_MB).")
    return hf_hub_download(repo_id, chosen.rfilename)
