"""Show the out-of-memory chain recover on a real GPU: fill most of its memory, then generate big.

SD1.5 + ControlNet with the real shapes and random weights. First a 512x512 run as a reference, then all
but --headroom GiB of the GPU is taken by another tensor and a --size x --size run of --images images is
asked for: it runs out of memory, and the pipeline must recover with a remedy and say which. Last, the memory
is given back and the 512x512 run is repeated: the pipeline must be as it was.

    python benchmarks/oom_recovery.py --out oom.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import attention_backend  # noqa: E402  (must run before diffusers is imported)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--headroom", type=float, default=3.0, help="GiB left free besides the models")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    attention_backend.prepare("auto", "cuda")

    import numpy as np
    import torch

    from inference_pipeline import GenerationRequest, InferencePipeline
    from studio.core.image_io import load_image
    from studio.core.settings import Settings
    from studio.engine import tiny_models

    gib = 2**30
    photo = load_image(ROOT / "assets" / "sample_scene.png").crop((64, 0, 448, 384))
    with tempfile.TemporaryDirectory() as folder:
        built = tiny_models.build_diffusion_models(Path(folder), "sd15", "cuda")
        sd15, controlnet = built.sd15, built.controlnet
        tiny_models.build_yolo(Path(folder) / "yolo.pt")
        pipe = InferencePipeline(settings=Settings(models="sd15", sd15_model=str(sd15), device="cuda",
                                                   controlnet_model=str(controlnet),
                                                   yolo_model=str(Path(folder) / "yolo.pt")))
    small = GenerationRequest(prompt="a watercolor cottage", steps=args.steps, resolution=512, seed=5)
    before = pipe.generate(photo, small)
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    hog = torch.empty(int(free - args.headroom * gib), dtype=torch.uint8, device="cuda")
    free_after_hog = torch.cuda.mem_get_info()[0]
    big = GenerationRequest(prompt="a watercolor cottage", steps=args.steps, width=args.size, height=args.size,
                            num_images=args.images, seed=5)
    started = time.perf_counter()
    try:
        recovered = pipe.generate(photo, big)
        outcome = {"images": len(recovered.images), "size": list(recovered.images[0].size),
                   "warnings": recovered.warnings, "seconds": round(time.perf_counter() - started, 2)}
    except Exception as exc:  # noqa: BLE001  (reported, not hidden)
        outcome = {"error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - started, 2)}
    del hog
    torch.cuda.empty_cache()
    after = pipe.generate(photo, small)
    diff = float(np.abs(np.asarray(after.images[0], np.float32) - np.asarray(before.images[0], np.float32)).max())
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "total_gib": round(total / gib, 1),
              "free_while_filled_gib": round(free_after_hog / gib, 2), "request": {"size": args.size,
              "images": args.images, "steps": args.steps}, "outcome": outcome,
              "after": {"max_abs_diff_vs_before_0_255": diff, "fast_path": after.run_card["fast_path"],
                        "attention": after.run_card["attention"]["in_use"], "warnings": after.warnings}}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = "warnings" in outcome and outcome["warnings"] and diff <= 1.0 and not after.warnings
    print(f"\n| card | GiB free while filled | asked for | outcome | usable after |\n| --- | --- | --- | --- | --- |\n"
          f"| {result['device']} | {result['free_while_filled_gib']} | {args.images} x {args.size}x{args.size}, "
          f"{args.steps} steps | {outcome.get('warnings') or outcome.get('error')} | "
          f"{'yes' if ok else 'NO'} (max diff {diff:.0f}/255) |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
