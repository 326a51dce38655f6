"""Probe the attention backends, then time SD1.5 + ControlNet once per usable backend, same seed.

The models have SD1.5's real shapes with random weights (no download), fp16 on CUDA. Each row is the
median of --repeats runs after one warm-up, with the peak GPU memory and the largest pixel difference
(images as floats in [0, 1]) against SDPA's output. `--tiny` runs the same code on the smoke shapes on
the CPU, so the script is tested in CI.

    python benchmarks/attention_backends.py --out benchmarks/results/attention.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attention_backend  # noqa: E402  (must run before diffusers is imported)


def control_image(size: int):
    """Edges of a few boxes and a circle, as ControlNet Canny sees them."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    for i in range(4):
        k = size // 10
        draw.rectangle([k * (1 + i), k * (2 + i), k * (5 + i), k * (6 + i // 2)], outline="white")
    draw.ellipse([size // 2, size // 8, size - size // 8, size // 2], outline="white")
    return Image.fromarray(np.asarray(image))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke shapes on the CPU (for tests)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    device = "cpu" if args.tiny else "cuda"
    report = attention_backend.prepare("auto", device)
    print(report.table(), flush=True)

    import numpy as np
    import torch
    from diffusers import UniPCMultistepScheduler

    pipe = load_pipeline(args.tiny, device)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    control = control_image(args.size)

    def generate() -> np.ndarray:
        return pipe("a photo", image=control, num_inference_steps=args.steps, guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]

    rows, reference = [], None
    backends = ["sdpa"] + [c.name for c in report.candidates if c.usable and c.name != "sdpa"]
    for backend in backends:
        attention_backend.apply(pipe, backend)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        generate()  # warm-up
        seconds, image = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            image = generate()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        reference = image if reference is None else reference
        rows.append({"backend": backend, "seconds_per_image": round(statistics.median(seconds), 4),
                     "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else
                     None, "max_abs_diff_vs_sdpa": float(np.abs(image - reference).max()),
                     "finite": bool(np.isfinite(image).all())})
        print(rows[-1], flush=True)

    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "size": args.size, "steps": args.steps, "repeats": args.repeats, "report": report.as_dict(),
              "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print_table(result, report)
    return 0


def load_pipeline(tiny: bool, device: str):
    """The SD1.5 + ControlNet architecture with random weights (the smoke shapes with `tiny`), saved and loaded
    back as real weights are."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from studio.engine.tiny_models import build_diffusion_models

    dtype = torch.float32 if tiny else torch.float16
    variant = None if tiny else "fp16"
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        built = build_diffusion_models(Path(folder), "tiny" if tiny else "sd15", device)
        controlnet = ControlNetModel.from_pretrained(built.controlnet, variant=variant, dtype=dtype)
        pipe = StableDiffusionControlNetPipeline.from_pretrained(built.sd15, controlnet=controlnet, variant=variant,
                                                                 dtype=dtype, safety_checker=None)
        print(f"built and loaded the models in {time.perf_counter() - started:.1f} s", flush=True)
    return pipe


def print_table(result: dict, report) -> None:
    print(f"\n{result['device']}, torch {result['torch']}, {result['size']}x{result['size']}, {result['steps']} "
          f"UniPC steps, CFG 7.5, median of {result['repeats']}\n")
    print("| backend | s / image | peak GiB | max abs diff vs sdpa | finite |\n| --- | --- | --- | --- | --- |")
    for row in result["rows"]:
        print(f"| {row['backend']} | {row['seconds_per_image']:.3f} | {row['peak_vram_gib'] or '-'} | "
              f"{row['max_abs_diff_vs_sdpa']:.4f} | {row['finite']} |")
    for candidate in report.candidates:
        if not candidate.usable:
            print(f"| {candidate.name} | not run: {candidate.reason} | | | |")


if __name__ == "__main__":
    sys.exit(main())
