"""A visitor's past runs, read back from the outputs folder (outputs.py writes it): the history lives on disk,
not in a browser session, so a reload, a dropped phone connection or a new tab with the same link finds it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from studio.core import display

DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
LENGTH = 12  # runs shown, newest first
THUMB_SIDE = 160


@dataclass(frozen=True)
class Run:
    """One finished run on disk: its job id, whose it is, its first seed, when, and its result PNGs."""

    job: str
    owner: str
    seed: int
    time: str | None
    pictures: tuple[Path, ...]


def runs(root: Path | None, owner: str | None, limit: int = LENGTH) -> list[Run]:
    """The newest `limit` runs of `owner` (None: everybody's) whose pictures are still there, newest first."""
    if root is None or not root.is_dir():
        return []
    found: list[Run] = []
    for day in sorted((p for p in root.iterdir() if p.is_dir() and DAY.fullmatch(p.name)), reverse=True):
        for run in reversed(day_runs(day)):
            if owner is None or run.owner == owner:
                found.append(run)
                if len(found) == limit:
                    return found
    return found


def day_runs(day: Path) -> list[Run]:
    """One day's runs in the order they ended; a line cut short by a crash, or pictures deleted since, are
    passed over."""
    try:
        lines = (day / "index.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
            pictures = tuple(day / name for name in entry["files"] if "-result-" in name)
            run = Run(str(entry["job"]), str(entry["owner"]), int(entry["seed"]), entry.get("time"), pictures)
        except (ValueError, KeyError, TypeError):
            continue
        if pictures and all(path.is_file() for path in pictures):
            found.append(run)
    return found


@lru_cache(maxsize=256)
def thumbnail(path: Path, modified_ns: int, side: int = THUMB_SIDE) -> bytes:
    """A small JPEG of a saved picture, made once per file (its modification time in the key)."""
    with Image.open(path) as image:
        return display.photo(image.convert("RGB"), side)
