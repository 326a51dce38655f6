"""SD1.5 + ControlNet side by side: the seed's configuration, diffusers' default and this project's presets.

The models have SD1.5's real shapes (UNet 860M, ControlNet 361M, VAE 84M, CLIP text 123M parameters; a
rank-64 distillation LoRA over LCM-LoRA's layers; TAESD) with random weights, built on the spot (no
download). Every row runs in this one process on a freshly loaded pipeline, after one warm-up call, and
reports the median of --repeats calls, the peak GPU memory, the warm-up time (CUDA-graph capture included)
and the largest pixel difference (floats in [0, 1]) against diffusers' default pipeline at the same size,
seed and inputs (rows of another preset run other steps: no difference is reported for them).

Each call is what the page's Generate button costs: diffusers is handed the control image, and the project's
pipeline the page's preview (detections and control image, computed before the click, as the page does).

    python benchmarks/bench_pipeline.py           # on a CUDA GPU; writes benchmarks/results/<date>-<gpu>.json
    python benchmarks/bench_pipeline.py --quick   # the same code on the tiny models on the CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import attention_backend  # noqa: E402  (must run before diffusers is imported)
from flops import T4_TFLOPS, RunFlops, non_gemm_share, t4_estimate_s  # noqa: E402

PROMPT = "a cozy cottage in a watercolor painting"
SEED = 1234
# (config, runner, short side, images per call, preset, TAESD final decode, what to repaint, photo)
ROWS = (
    ("diffusers-default", "diffusers", 512, 1, "quality", False, "all", "square"),
    ("seed-sliced", "sliced", 512, 1, "quality", False, "all", "square"),
    ("project-eager", "project-eager", 512, 1, "quality", False, "all", "square"),
    ("project-default", "project", 512, 1, "quality", False, "all", "square"),
    ("project-control-end-0.5", "project", 512, 1, "quality", False, "all", "square"),
    ("project-fast", "project", 512, 1, "fast", False, "all", "square"),
    ("project-turbo", "project", 512, 1, "turbo", False, "all", "square"),
    ("project-turbo-taesd", "project", 512, 1, "turbo", True, "all", "square"),
    ("project-fast-eager", "project-eager", 512, 1, "fast", False, "all", "square"),
    ("project-inpaint-objects", "project", 512, 1, "quality", False, "objects", "square"),
    ("project-inpaint-objects-eager", "project-eager", 512, 1, "quality", False, "objects", "square"),
    ("diffusers-default-768", "diffusers", 768, 1, "quality", False, "all", "square"),
    ("project-default-768", "project", 768, 1, "quality", False, "all", "square"),
    ("project-default-batch4", "project", 512, 4, "quality", False, "all", "square"),
    ("project-compile", "project-compile", 512, 1, "quality", False, "all", "square"),
    ("project-default-1024x768", "project", 768, 1, "quality", False, "all", "wide"),
    ("project-detail-3-objects", "project", 768, 1, "quality", False, "detail", "wide"),
    ("project-detail-3-objects-fast", "project", 768, 1, "fast", False, "detail", "wide"),
    ("project-fast-1024x768", "project", 768, 1, "fast", False, "all", "wide"),
    ("project-objects-3-prompts", "project", 768, 1, "fast", False, "objects-3-prompts", "wide"),
    ("project-regional-3-prompts", "project", 768, 1, "fast", False, "regional-3-prompts", "wide"),
    ("project-soft-objects", "project", 512, 1, "quality", False, "soft-objects", "square"),
)
# The repaint rows that are not a mode of their own: three objects with three prompts (a pass each, or one pass with
# regional prompts) and the objects row with soft edits.
THREE_PROMPTS = {0: "a red ball", 1: "a wooden crate", 2: "a green pyramid"}
REPAINTS = {"objects-3-prompts": dict(regenerate="objects", object_prompts=THREE_PROMPTS),
            "regional-3-prompts": dict(regenerate="objects", object_prompts=THREE_PROMPTS,
                                       object_prompt_mode="one_pass"),
            "soft-objects": dict(regenerate="objects", soft_mask=True, control_feather=16)}
# Rows that end the ControlNet's window early (control_end): it is not evaluated on the steps after it.
CONTROL_END = {"project-control-end-0.5": 0.5}
# project-preset-switch: the presets one pipeline goes through, in order
SWITCHES = ("quality", "fast", "quality", "turbo")
# The benchmarks' detector has random weights and finds nothing: a repaint row repaints one fixed detection, a
# box over the middle of the photo (a sixth of it), as a person who picked one object would.
MIDDLE = (0.3, 0.3, 0.7, 0.7)
# A detail row details three objects of the wide photo (the sample scene at 1024x768): its circle, square and
# triangle, as the fixture detector finds them, in the photo's pixels.
THREE_OBJECTS = (("circle", (784, 80, 960, 258)), ("square", (140, 338, 400, 596)), ("triangle", (462, 304, 738, 576)))


def photos() -> dict[str, Any]:
    """The square photo (a crop of the sample scene) and the wide one (the whole scene at 1024x768)."""
    from PIL import Image

    from studio.core.image_io import load_image

    scene = load_image(ROOT / "assets" / "sample_scene.png")
    return {"square": scene.crop((64, 0, 448, 384)), "wide": scene.resize((1024, 768), Image.Resampling.LANCZOS)}


class Bench:
    """Loads each row's pipeline from the same folders and times it."""

    def __init__(self, folders: dict[str, Path], device: str, steps: int, repeats: int,
                 profile: tuple[str, ...] = ()) -> None:
        import torch

        self.torch, self.profile = torch, profile
        self.folders, self.device, self.steps, self.repeats = folders, device, steps, repeats
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.photos = photos()
        self.photo = self.photos["square"]
        self.share = 0.0  # the non-GEMM share of the time (measure_share)

    def measure_share(self) -> float:
        """The non-GEMM share of one Quality call at 512x512 (64 on the CPU), eager, on this device."""
        pipe = self.pipeline(graphs=False)
        call = self.project_call(pipe, 512 if self.device == "cuda" else 64, 1, "quality")
        call()  # warm-up
        self.share = non_gemm_share(call, self.device)
        del pipe, call
        return self.share

    def request(self, size: int, batch: int, preset: str = "quality", fast_decode: bool = False,
                regenerate: str = "all", control_end: float = 1.0):
        from inference_pipeline import GenerationRequest

        steps = self.steps if preset == "quality" else None  # the preset's own
        repaint = REPAINTS.get(regenerate, {"regenerate": regenerate})
        return GenerationRequest(prompt=PROMPT, preset=preset, steps=steps, resolution=size, num_images=batch,
                                 seed=SEED, fast_decode=fast_decode, control_end=control_end,
                                 detail_resolution=512 if self.device == "cuda" else 64, **repaint)

    def diffusers_call(self, size: int, batch: int, sliced: bool) -> Callable[[], list[Any]]:
        from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler

        from studio.core.control_image import build_control_image, place_image
        from studio.core.sizes import fit_size

        variant = "fp16" if self.device == "cuda" else None
        controlnet = ControlNetModel.from_pretrained(self.folders["controlnet"], variant=variant, dtype=self.dtype)
        pipe = StableDiffusionControlNetPipeline.from_pretrained(self.folders["sd15"], controlnet=controlnet,
                                                                 variant=variant, dtype=self.dtype,
                                                                 safety_checker=None).to(self.device)
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        if sliced:
            pipe.enable_attention_slicing(1)
        request = self.request(size, batch)
        placed, _ = place_image(self.photo, fit_size(*self.photo.size, size))
        control = build_control_image(placed, low=request.canny_low, high=request.canny_high)

        def call() -> list[Any]:
            generators = [self.torch.Generator("cpu").manual_seed(SEED + i) for i in range(batch)]
            return pipe(prompt=request.full_prompt, negative_prompt=request.negative_prompt, image=control,
                        num_inference_steps=self.steps, guidance_scale=request.guidance_scale,
                        num_images_per_prompt=batch, generator=generators).images

        return call

    def pipeline(self, graphs: bool = True, compile: bool = False):
        from inference_pipeline import InferencePipeline
        from studio.core.settings import Settings, parse_bool

        settings = Settings(models="sd15", sd15_model=str(self.folders["sd15"]),
                            controlnet_model=str(self.folders["controlnet"]), yolo_model=str(self.folders["yolo"]),
                            taesd_model=str(self.folders["taesd"]), preset_lora_fast=str(self.folders["distill_lora"]),
                            preset_lora_turbo=str(self.folders["turbo_lora"]),
                            device=self.device, cuda_graphs=graphs, compile=compile,
                            channels_last=parse_bool("CHANNELS_LAST", os.environ.get("CHANNELS_LAST", "1")))
        return InferencePipeline(settings=settings)

    def project_call(self, pipe, size: int, batch: int, preset: str, fast_decode: bool = False,
                     regenerate: str = "all", photo: str = "square", control_end: float = 1.0
                     ) -> Callable[[], list[Any]]:
        """What Generate costs: the page's preview is made before the click and handed to the job."""
        request = self.request(size, batch, preset, fast_decode, regenerate, control_end)
        picture = self.photos[photo]
        preview = pipe.preview_from(picture, self.detections(pipe, picture, regenerate), request)

        def call() -> list[Any]:
            result = pipe.generate(picture, request, preview=preview)
            self.fast_path, self.steps_run = result.run_card["fast_path"], result.run_card["steps_done"]
            self.timings = result.timings
            return result.images

        return call

    def detections(self, pipe, picture: Any, regenerate: str) -> list[Any]:
        """The detector's answer, or where a row repaints objects, fixed ones (the random detector finds none)."""
        from studio.core.detections import Detection

        width, height = picture.size
        if regenerate in ("detail", "objects-3-prompts", "regional-3-prompts"):
            scale = width / 1024
            return [Detection(label, i, 0.9 - 0.1 * i, tuple(v * scale for v in box))
                    for i, (label, box) in enumerate(THREE_OBJECTS)]
        if regenerate != "all":
            return [Detection("object", 0, 1.0, (MIDDLE[0] * width, MIDDLE[1] * height, MIDDLE[2] * width,
                                                 MIDDLE[3] * height))]
        return pipe.detect(picture)

    def timed(self, call: Callable[[], list[Any]]) -> float:
        started = time.perf_counter()
        call()
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return time.perf_counter() - started

    def preset_switch(self) -> dict[str, Any]:
        """project-preset-switch: one pipeline goes Quality -> Fast -> Quality -> Turbo; each switched run's time
        minus the median of the same preset's runs without a switch (weights restored and the set's fused weights
        copied in, graphs recaptured where needed: everything a switch costs once each preset has been used;
        `first_use_extra_s` is the first use of each, LoRA loaded and fused and graphs captured)."""
        pipe = self.pipeline()
        calls = {preset: self.project_call(pipe, 512 if self.device == "cuda" else 64, 1, preset)
                 for preset in ("quality", "fast", "turbo")}
        steady, first = {}, {}
        for preset, call in calls.items():
            first[preset] = self.timed(call)  # its first use: LoRA loaded and fused, graphs captured
            steady[preset] = statistics.median(self.timed(call) for _ in range(self.repeats))
        extra: dict[str, list[float]] = {}
        for _ in range(self.repeats):
            calls[SWITCHES[0]]()  # each round starts from the first preset
            for before, after in zip(SWITCHES, SWITCHES[1:]):
                extra.setdefault(f"{before}->{after}", []).append(self.timed(calls[after]) - steady[after])
        switches = {name: round(statistics.median(values), 4) for name, values in extra.items()}
        return {"config": "project-preset-switch", "size": 512 if self.device == "cuda" else 64, "batch": 1,
                "preset": "+".join(SWITCHES), "steady_s": {k: round(v, 4) for k, v in steady.items()},
                "first_use_extra_s": {k: round(first[k] - steady[k], 4) for k in steady},
                "switch_extra_s": switches, "max_switch_extra_s": max(switches.values()),
                "fast_path": self.fast_path}

    def print_profile(self, config: str, call: Callable[[], list[Any]]) -> None:
        """One more call under the PyTorch profiler: where its time goes, on the host and on the GPU."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        with profile(activities=activities) as prof:
            call()
            if self.device == "cuda":
                self.torch.cuda.synchronize()
        averages = prof.key_averages()
        for sort in ("self_cpu_time_total", "self_cuda_time_total")[:2 if self.device == "cuda" else 1]:
            print(f"\nprofile of {config}, by {sort}:\n" +
                  averages.table(sort_by=sort, row_limit=20, max_name_column_width=50), flush=True)

    def run(self, config: str, runner: str, size: int, batch: int, preset: str, fast_decode: bool,
            regenerate: str, photo: str) -> tuple[dict[str, Any], Any]:
        torch = self.torch
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
        self.steps_run = self.steps
        if runner in ("diffusers", "sliced"):
            call = self.diffusers_call(size, batch, sliced=runner == "sliced")
        else:
            pipe = self.pipeline(graphs=runner != "project-eager", compile=runner == "project-compile")
            call = self.project_call(pipe, size, batch, preset, fast_decode, regenerate, photo,
                                     CONTROL_END.get(config, 1.0))
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        call()
        warmup = time.perf_counter() - started
        seconds, images = [], None
        for _ in range(self.repeats):
            started = time.perf_counter()
            images = call()
            if self.device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        per_call = statistics.median(seconds)
        if config in self.profile:
            self.print_profile(config, call)
        row = {"config": config, "size": size, "photo": photo, "batch": batch, "preset": preset,
               "steps": self.steps_run, "taesd_decode": fast_decode, "regenerate": regenerate,
               "seconds_per_image": round(per_call / batch, 4),
               "steps_per_second": round(self.steps_run / per_call, 2), "warmup_s": round(warmup, 2),
               "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if self.device == "cuda"
               else None}
        if runner.startswith("project"):
            row["fast_path"], row["last_call_timings"] = self.fast_path, self.timings
            flops = RunFlops(pipe.pipe, pipe.denoiser.taesd)
            with flops.counting():  # one more call, untimed: the evaluations it really ran
                call()
            row["evaluations"] = {f"{what} {'x'.join(map(str, shape))}": samples
                                  for (what, shape), samples in sorted(flops.calls.items())}
            row["tflops_per_image"] = round(flops.tflops() / batch, 6)
            row["t4_estimate_s"] = round(t4_estimate_s(row["tflops_per_image"], self.share), 6)
        if regenerate in ("detail", "objects-3-prompts", "regional-3-prompts"):
            row["seconds_per_object"] = round(per_call / (batch * len(THREE_OBJECTS)), 4)
        del call
        return row, images[0]  # type: ignore[index]


def build_folders(folder: Path, quick: bool) -> dict[str, Path]:
    from studio.engine import tiny_models

    if quick:  # where APP_CACHE_DIR keeps them (built there once), else built in `folder`
        paths = tiny_models.ensure_tiny_models(Path(os.environ.get("APP_CACHE_DIR") or folder))
    else:
        paths = tiny_models.build_diffusion_models(folder, "sd15", "cuda")
        tiny_models.build_yolo(folder / "yolo.pt")
    turbo = folder / "turbo-lora" / paths.distill_lora.name  # another file: Fast and Turbo fuse separate sets
    turbo.parent.mkdir(exist_ok=True)
    shutil.copyfile(paths.distill_lora, turbo)
    return {"sd15": paths.sd15, "controlnet": paths.controlnet, "yolo": paths.yolo if quick else folder / "yolo.pt",
            "distill_lora": paths.distill_lora, "turbo_lora": turbo, "taesd": paths.taesd}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"{result['device']}, torch {result['torch']}, diffusers {result['diffusers']}, "
             f"quality: {result['steps']} UniPC steps, CFG 7.5; fast: 4 TCD steps, turbo: 2 LCM steps, CFG 1; "
             f"median of {result['repeats']} after a warm-up, {result['date']}", "",
             "| config | size | batch | steps | s / image | steps / s | peak GiB | warm-up s "
             "| max abs diff vs default | TFLOP / image | T4 estimate s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        diff = row["max_abs_diff_vs_default"]
        lines.append(f"| {row['config']} | {row['size']} | {row['batch']} | {row['steps']} | "
                     f"{row['seconds_per_image']:.3f} | {row['steps_per_second']:.1f} | "
                     f"{row['peak_vram_gib'] or '-'} | {row['warmup_s']:.1f} | "
                     f"{'-' if diff is None else f'{diff:.4f}'} | {row.get('tflops_per_image', '-')} | "
                     f"{row.get('t4_estimate_s', '-')} |")
    lines.append(f"\nT4 estimate: TFLOP / {result['t4']['tflops']} TFLOP/s / (1 - {result['t4']['non_gemm_share']}), "
                 "the non-GEMM share of a Quality call's operator time measured here")
    switch = result.get("preset_switch")
    if switch:
        lines += ["", "| project-preset-switch | " + " | ".join(switch["switch_extra_s"]) + " |",
                  "| --- |" + " --- |" * len(switch["switch_extra_s"]),
                  "| extra s over the same preset without a switch | " +
                  " | ".join(f"{v:.3f}" for v in switch["switch_extra_s"].values()) + " |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models on the CPU, 2 steps, 64 px (for tests)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=None, help="comma-separated configs to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated configs to leave out")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    parser.add_argument("--profile", default="", help="comma-separated configs to profile once after timing")
    args = parser.parse_args(argv)
    device = "cpu" if args.quick else "cuda"
    steps, repeats = (2, 1) if args.quick else (args.steps, args.repeats)
    attention_backend.prepare("auto", device)

    import diffusers
    import numpy as np
    import torch

    rows_to_run = [row for row in ROWS if (args.only is None or row[0] in args.only.split(","))
                   and row[0] not in args.skip.split(",")]
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    results, references, fast_path_images = [], {}, {}
    result = {"device": gpu, "torch": torch.__version__, "diffusers": diffusers.__version__, "steps": steps,
              "repeats": repeats, "date": date.today().isoformat(), "rows": results}
    card = re.sub(r"[^a-z0-9]+", "-", gpu.lower())
    out = args.out or ROOT / "benchmarks" / "results" / f"{result['date']}-{card}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        bench = Bench(build_folders(Path(folder), args.quick), device, steps, repeats,
                      tuple(filter(None, args.profile.split(","))))
        result["t4"] = {"tflops": T4_TFLOPS, "non_gemm_share": round(bench.measure_share(), 4)}
        for config, runner, size, batch, preset, fast_decode, regenerate, photo in rows_to_run:
            size = 64 if args.quick else size
            row, image = bench.run(config, runner, size, batch, preset, fast_decode, regenerate, photo)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
            if runner == "diffusers":
                references[size] = pixels
            reference = references.get(size) if (preset, fast_decode, regenerate, photo) == \
                ("quality", False, "all", "square") and config not in CONTROL_END else None
            same_run = (size, batch, preset, fast_decode, regenerate, photo)
            if runner == "project":
                fast_path_images[same_run] = pixels
            elif runner == "project-eager" and same_run in fast_path_images:  # the fast path's pixels, eager
                row["max_abs_diff_vs_fast_path"] = float(np.abs(pixels - fast_path_images[same_run]).max())
            row["max_abs_diff_vs_default"] = None if reference is None else float(np.abs(pixels - reference).max())
            print(json.dumps(row), flush=True)
            results.append(row)
            out.write_text(json.dumps(result, indent=2) + "\n")  # after every row: a cut-short run keeps its rows
        if args.only is None or "project-preset-switch" in args.only.split(","):
            result["preset_switch"] = bench.preset_switch()
            print(json.dumps(result["preset_switch"]), flush=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}\n\n{markdown(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
