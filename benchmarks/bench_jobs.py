"""One job against two jobs at once, through the job queue with one worker per GPU, or through Ray Serve.

Full-size SD1.5 + ControlNet with random weights (built on the spot, no download), 512x512, 20 UniPC steps,
the fast path on. After a warm-up that gives every worker a job, it times, in this one process, the wall time
from submitting until every job is done: one job alone, then two jobs submitted together. With two GPUs the
two jobs run side by side, so they should take about as long as one.

    python benchmarks/bench_jobs.py                  # on the CUDA GPUs; writes results/<date>-<gpu>-x<N>.json
    python benchmarks/bench_jobs.py --backend ray    # the same jobs on a Ray Serve deployment, one replica per GPU
    python benchmarks/bench_jobs.py --backend both   # both, and the Ray path's cost over the local one for one job
    python benchmarks/bench_jobs.py --quick          # two CPU workers on the tiny models (for tests)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import attention_backend  # noqa: E402  (must run before diffusers is imported)

SEED = 1234


def wall_time(queue, photo, request, jobs: int, seen: list[dict] | None = None) -> float:
    """Seconds from submitting `jobs` jobs together until the last one is done; each job's worker, time in
    `generate` and fast-path state are appended to `seen`."""
    from studio.serving.jobs import DONE

    started = time.perf_counter()
    submitted = [queue.submit(photo, request, owner=f"bench-{i}") for i in range(jobs)]
    while any(job.active for job in submitted):
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    failed = [job.message for job in submitted if job.state != DONE]
    if failed:
        raise RuntimeError(f"a benchmark job failed: {failed[0]}")
    if seen is not None:
        seen.extend({"worker": job.worker, "generate_s": round(job.result.timings["generate_s"], 4),
                     "timings": {name: round(value, 4) for name, value in job.result.timings.items()},
                     "fast_path_failures": job.result.run_card["fast_path"].get("failures")} for job in submitted)
    return elapsed


def model_environment(quick: bool, folder: Path) -> dict[str, str]:
    """The settings of the benchmark's models, as the environment (Ray's replicas read theirs from it)."""
    from studio.engine import tiny_models

    if quick:  # the tiny models where APP_CACHE_DIR keeps them (built there once), else built in `folder`
        return {"MODELS": "tiny", "APP_CACHE_DIR": os.environ.get("APP_CACHE_DIR") or str(folder)}
    built = tiny_models.build_diffusion_models(folder, "sd15", "cuda")
    tiny_models.build_yolo(folder / "yolo.pt")
    return {"MODELS": "sd15", "SD15_MODEL": str(built.sd15), "CONTROLNET_MODEL": str(built.controlnet),
            "YOLO_MODEL": str(folder / "yolo.pt")}


def make_queue(quick: bool, backend: str):
    """Two CPU workers (or replicas) on the tiny models, or one per GPU on the full-size random-weight models."""
    from inference_pipeline import InferencePipeline
    from studio.core.settings import Settings
    from studio.serving.jobs import JobQueue

    if backend == "ray":
        from studio.serving.ray_jobs import RayJobQueue

        return RayJobQueue.for_settings(Settings.from_env(jobs_backend="ray", ray_replicas=2 if quick else None))
    if quick:
        return JobQueue([InferencePipeline(settings=Settings.from_env(device="cpu")) for _ in range(2)])
    return JobQueue.for_settings(Settings.from_env())


def measure(queue, photo, request, repeats: int) -> list[dict]:
    """One job alone, then two together, `repeats` times each after a warm-up that gives every worker a job."""
    try:
        for _ in range(2):  # warm-up: every worker (every replica) captures its graphs
            wall_time(queue, photo, request, len(queue.workers))
        one_jobs: list[dict] = []
        two_jobs: list[dict] = []
        one = [wall_time(queue, photo, request, 1, one_jobs) for _ in range(repeats)]
        two = [wall_time(queue, photo, request, 2, two_jobs) for _ in range(repeats)]
    finally:
        queue.shutdown()
    return [{"config": "one-job", "seconds": round(statistics.median(one), 4), "runs": [round(s, 4) for s in one],
             "jobs": one_jobs},
            {"config": "two-jobs", "seconds": round(statistics.median(two), 4), "runs": [round(s, 4) for s in two],
             "jobs": two_jobs}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two CPU workers, tiny models, 64 px, 2 steps")
    parser.add_argument("--backend", choices=("local", "ray", "both"), default="local")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    device = "cpu" if args.quick else "cuda"
    attention_backend.prepare("auto", device)

    import torch

    from inference_pipeline import GenerationRequest
    from studio.core.image_io import load_image

    photo = load_image(ROOT / "assets" / "sample_scene.png").crop((64, 0, 448, 384))
    size, steps = (64, 2) if args.quick else (512, 20)
    request = GenerationRequest(prompt="a cozy cottage in a watercolor painting", steps=steps, resolution=size,
                                seed=SEED)
    backends = ("local", "ray") if args.backend == "both" else (args.backend,)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        os.environ.update(model_environment(args.quick, Path(folder)))
        for backend in backends:
            queue = make_queue(args.quick, backend)
            workers = [worker.name for worker in queue.workers]
            rows = measure(queue, photo, request, args.repeats)
            results[backend] = {"workers": workers, "rows": rows,
                                "two_jobs_over_one_job": round(rows[1]["seconds"] / rows[0]["seconds"], 3)}
    gpu = "cpu" if args.quick else torch.cuda.get_device_name(0)
    result = {"device": gpu, "gpus": 0 if args.quick else torch.cuda.device_count(), "torch": torch.__version__,
              "size": size, "steps": steps, "repeats": args.repeats, "date": date.today().isoformat(), **results}
    if len(backends) == 2:
        one = {backend: results[backend]["rows"][0]["seconds"] for backend in backends}
        result["ray_over_local_one_job_s"] = round(one["ray"] - one["local"], 4)
    report(result, backends, args.out)
    return 0


def report(result: dict, backends: tuple[str, ...], out: Path | None) -> None:
    card = re.sub(r"[^a-z0-9]+", "-", result["device"].lower())
    suffix = "" if backends == ("local",) else "-" + "-".join(backends)
    count = result["gpus"] or len(result[backends[0]]["workers"])
    out = out or ROOT / "benchmarks" / "results" / f"{result['date']}-{card}-x{count}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}\n\n{result['device']}, torch {result['torch']}, {result['size']}x{result['size']}, "
          f"{result['steps']} steps, median of {result['repeats']}\n\n| backend | workers | one job (s) | two jobs (s) "
          "| two / one |\n| --- | --- | --- | --- | --- |")
    for backend in backends:
        rows = result[backend]["rows"]
        print(f"| {backend} | {len(result[backend]['workers'])} | {rows[0]['seconds']:.3f} | {rows[1]['seconds']:.3f} "
              f"| {result[backend]['two_jobs_over_one_job']:.2f}x |")
    if "ray_over_local_one_job_s" in result:
        print(f"\nthe Ray path costs {result['ray_over_local_one_job_s'] * 1000:.0f} ms more than the local one "
              "for one job")


if __name__ == "__main__":
    sys.exit(main())
