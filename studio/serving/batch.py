"""Many photos, one prompt: every picture of a folder through the pipeline, one PNG each, resumable.

    python -m studio.batch photos/ outputs/ --preset fast --prompt "a watercolor"

Each output is `<photo's name>.png` (`<photo's name with its extension>.png` where two photos share a name, as
`a.png` and `a.jpg` do) with its run card and A1111 text inside, written whole (a temporary file, then a rename),
so a run killed at any moment leaves no half-written file, and a rerun makes only the outputs that are missing.
A photo that cannot be used (unreadable, damaged, larger than MAX_UPLOAD_MB or MAX_PIXELS) gets one line on stderr
and the others go on. Photo number i (in name order) gets the seed `seed + i`, so a rerun makes the same pictures.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from studio.core.errors import EXPECTED_ERRORS, InvalidImageError
from studio.core.image_io import load_image
from studio.core.presets import PRESETS
from studio.core.request import SEED_MAX, GenerationRequest
from studio.core.run_card import png_with_run_card
from studio.serving.outputs import write_whole

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


@dataclass
class Tally:
    made: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{len(self.made)} made, {len(self.skipped)} already there, {len(self.failed)} failed."


def photos_in(folder: Path) -> list[Path]:
    """The pictures of a folder (not its subfolders), in name order: the order that numbers their seeds."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def output_names(photos: list[Path]) -> dict[Path, str]:
    """Each photo's output file name: its stem, or its whole name where stems repeat, and a number where even
    that is taken, so no two photos ever write one file."""
    stems, names, used = Counter(photo.stem for photo in photos), {}, set()
    for photo in photos:
        base = photo.stem if stems[photo.stem] == 1 else photo.name
        name, number = f"{base}.png", 1
        while name in used:
            number += 1
            name = f"{base}-{number}.png"
        names[photo] = name
        used.add(name)
    return names


def read_photo(photo: Path, max_bytes: int) -> bytes:
    """The photo's bytes, refused by its size before a byte is read; a file the system cannot read is a message."""
    try:
        size = photo.stat().st_size
        if size > max_bytes:
            raise InvalidImageError(f"The file is {size / 2**20:.0f} MB, more than the {max_bytes // 2**20} MB "
                                    "allowed (MAX_UPLOAD_MB).")
        return photo.read_bytes()
    except OSError as exc:
        raise InvalidImageError(f"The file cannot be read ({exc.strerror or exc}).") from None


def run(pipeline, inputs: Path, outputs: Path, request: GenerationRequest, progress: bool = True) -> Tally:
    """Every photo of `inputs` whose output is missing from `outputs`, in name order."""
    from tqdm import tqdm

    outputs.mkdir(parents=True, exist_ok=True)
    tally, photos, settings = Tally(), photos_in(inputs), pipeline.settings
    names = output_names(photos)
    base = request.seed if request.seed is not None else 0
    for index, photo in enumerate(tqdm(photos, unit="photo", disable=not progress)):
        target = outputs / names[photo]
        if target.exists():
            tally.skipped.append(photo.name)
            continue
        try:
            image = load_image(read_photo(photo, settings.max_upload_mb * 2**20), settings.max_pixels,
                               settings.max_aspect)
            result = pipeline.generate(image, replace(request, seed=(base + index) % (SEED_MAX + 1), num_images=1))
        except EXPECTED_ERRORS as exc:
            tally.failed[photo.name] = str(exc)
            print(f"{photo.name}: {exc}", file=sys.stderr)
            continue
        write_whole(target, png_with_run_card(result.images[0], result.run_card))
        tally.made.append(photo.name)
    return tally


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m studio.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", type=Path, help="a folder of photos (PNG, JPEG, WebP, GIF)")
    parser.add_argument("outputs", type=Path, help="where the PNGs go; the photos whose PNG is there are skipped")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--preset", choices=list(PRESETS), default="fast")
    parser.add_argument("--seed", type=int, default=0, help="the first photo's seed; the next ones count up")
    parser.add_argument("--resolution", type=int, default=GenerationRequest.resolution)
    parser.add_argument("--models", choices=("sd15", "tiny"), default=None, help="default: MODELS or sd15")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not args.inputs.is_dir():
        print(f"{args.inputs} is not a folder of photos.", file=sys.stderr)
        return 2
    try:
        request = GenerationRequest(prompt=args.prompt, preset=args.preset, seed=args.seed, resolution=args.resolution)
    except EXPECTED_ERRORS as exc:
        print(exc, file=sys.stderr)
        return 2
    from studio.core.settings import Settings
    from studio.engine.pipeline import InferencePipeline

    pipeline = InferencePipeline(settings=Settings.from_env(models=args.models))
    tally = run(pipeline, args.inputs, args.outputs, request)
    print(tally.summary())
    return 1 if tally.failed else 0
