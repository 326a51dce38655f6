"""Every finished picture on disk, as A1111 keeps an outputs folder: nothing made is lost with a closed tab.

    OUTPUTS_DIR/2026-12-01/3f2c9a1b-result-1234-20261201-153544.png   (run card and A1111 text inside)
                           3f2c9a1b-control-1234-20261201-153544.png
                           3f2c9a1b-mask-1234-20261201-153544.png       (when only part was repainted)
                           index.jsonl                                   (one line per run: whose, which files)

The job's worker writes them as the job ends, whether or not anyone still watches. Each file is written whole (a
temporary file, then a rename). A full or read-only disk costs a warning on the result, never the result.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from studio.core.downloads import result_files

KEPT = ("result", "control", "mask")  # the zip's other files (CSV, JSON, crops) are in the PNGs' run card


class OutputsError(Exception):
    """The outputs folder cannot take the pictures (full, read-only, gone); the message says so."""


def write_whole(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` either does not exist or holds all of it. The temporary file is
    created new under a random name (O_EXCL), so a file or link planted where it would go cannot redirect it."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        temporary.chmod(0o644)  # mkstemp's 0600 would keep the pictures from their owner's other tools
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save(root: Path, result: Any, owner: str, job_id: str) -> list[Path]:
    """Write a finished run's pictures into today's folder under `root`; returns their paths. Raises
    OutputsError with a message for the person when the disk refuses."""
    day = root / time.strftime("%Y-%m-%d", time.localtime())
    try:
        day.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in result_files(result).items():
            if name.split("-", 1)[0] in KEPT:
                written.append(day / f"{job_id[:8]}-{name}")
                write_whole(written[-1], data)
        line = {"job": job_id, "owner": owner, "seed": result.seed, "files": [path.name for path in written],
                "time": result.run_card.get("created")}
        with open(day / "index.jsonl", "a", encoding="utf-8") as index:
            index.write(json.dumps(line) + "\n")
    except OSError as exc:
        raise OutputsError(f"The pictures could not be saved in the outputs folder ({exc.strerror or exc}); "
                           "download them from this page.") from exc
    return written
