"""What a Kaggle image has before the notebook's first cell, and the wheels its install cell needs beyond that.

`python tests/kaggle_env.py FOLDER` (run by `make test`, once per change of requirements_kaggle.txt) downloads
into FOLDER every wheel that `pip install -r requirements_kaggle.txt` installs on top of PREINSTALLED, at the
versions this Python has: the notebook test then installs from FOLDER alone (`--no-index --find-links`), the same
real install without a trip to the package index."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PREINSTALLED = ("torch", "torchvision", "numpy", "pillow", "ipykernel")  # on a Kaggle image before any cell runs
GUI_OPENCV = "opencv-python==4.13.0.92"  # Kaggle's own OpenCV (ultralytics asks for this build)


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def needed(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """These distributions of this Python and everything they require, extras included (markers evaluated here)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [(name, frozenset()) for name in names]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (canonical(name), extras)
        if key in done:
            continue
        done.add(key)
        try:
            dist = seen.setdefault(key[0], metadata.distribution(name))
        except metadata.PackageNotFoundError:
            continue
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra})
                                                 for extra in ("", *extras)):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return list(seen.values())


def kaggle_wheels() -> list[str]:
    """`name==version` for each distribution the install cell adds to a Kaggle image."""
    wanted = [Requirement(line).name for line in (ROOT / "requirements_kaggle.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    there = {canonical(dist.metadata["Name"]) for dist in needed(PREINSTALLED)}
    pins = {f"{canonical(dist.metadata['Name'])}=={dist.version}" for dist in needed(tuple(wanted))
            if canonical(dist.metadata["Name"]) not in there}
    return sorted(pins | {GUI_OPENCV})


def main(folder: str) -> int:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", folder, *kaggle_wheels()]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
