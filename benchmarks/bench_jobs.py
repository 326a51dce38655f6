"""One job against two jobs at once, through the job queue with one worker per GPU.

Full-size SD1.5 + ControlNet with random weights (built on the spot, no download), 512x512, 20 UniPC steps,
the fast path on. After a warm-up that gives every worker a job, it times, in this one process, the wall time
from submitting until every job is done: one job alone, then two jobs submitted together. With two GPUs the
two jobs run side by side, so they should take about as long as one.

    python benchmarks/bench_jobs.py            # on the CUDA GPUs; writes benchmarks/results/<date>-<gpu>-x<N>.json
    python benchmarks/bench_jobs.py --quick    # two CPU workers on the tiny models (for tests)
"""

from __future__ import annotations

import argparse
import json
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
                     "fast_path_failures": job.result.run_card["fast_path"].get("failures")} for job in submitted)
    return elapsed


def make_queue(quick: bool, folder: Path):
    """Two CPU workers on the tiny models, or one worker per GPU on the full-size random-weight models."""
    from inference_pipeline import InferencePipeline
    from studio.core.settings import Settings
    from studio.engine import tiny_models
    from studio.serving.jobs import JobQueue

    if quick:
        settings = Settings(models="tiny", cache_dir=folder, device="cpu")
        return JobQueue([InferencePipeline(settings=settings) for _ in range(2)])
    built = tiny_models.build_diffusion_models(folder, "sd15", "cuda")
    tiny_models.build_yolo(folder / "yolo.pt")
    return JobQueue.for_settings(Settings(models="sd15", sd15_model=str(built.sd15),
                                          controlnet_model=str(built.controlnet), yolo_model=str(folder / "yolo.pt")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two CPU workers, tiny models, 64 px, 2 steps")
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
    with tempfile.TemporaryDirectory() as folder:
        queue = make_queue(args.quick, Path(folder))
        gpu = "cpu" if args.quick else torch.cuda.get_device_name(0)
        workers = [worker.name for worker in queue.workers]
        try:
            for _ in range(2):  # warm-up: every worker captures its graphs
                wall_time(queue, photo, request, len(workers))
            one_jobs: list[dict] = []
            two_jobs: list[dict] = []
            one = [wall_time(queue, photo, request, 1, one_jobs) for _ in range(args.repeats)]
            two = [wall_time(queue, photo, request, 2, two_jobs) for _ in range(args.repeats)]
        finally:
            queue.shutdown()
    rows = [{"config": "one-job", "seconds": round(statistics.median(one), 4), "runs": [round(s, 4) for s in one],
             "jobs": one_jobs},
            {"config": "two-jobs", "seconds": round(statistics.median(two), 4), "runs": [round(s, 4) for s in two],
             "jobs": two_jobs}]
    ratio = rows[1]["seconds"] / rows[0]["seconds"]
    result = {"device": gpu, "workers": workers, "torch": torch.__version__, "size": size, "steps": steps,
              "repeats": args.repeats, "date": date.today().isoformat(), "rows": rows,
              "two_jobs_over_one_job": round(ratio, 3)}
    card = re.sub(r"[^a-z0-9]+", "-", gpu.lower())
    out = args.out or ROOT / "benchmarks" / "results" / f"{result['date']}-{card}-x{len(workers)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}\n\n{gpu}, workers {', '.join(workers)}, {size}x{size}, {steps} steps, median of "
          f"{args.repeats}\n\n| config | seconds (wall, all jobs done) |\n| --- | --- |")
    for row in rows:
        print(f"| {row['config']} | {row['seconds']:.3f} |")
    print(f"\ntwo jobs take {ratio:.2f}x the time of one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
