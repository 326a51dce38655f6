"""The job layer with the tiny models on the CPU: order of service, cancelling, failures, two workers, estimates."""

from __future__ import annotations

import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest

from inference_pipeline import GenerationRequest, InferencePipeline
from studio.core.settings import Settings
from studio.engine.devices import CPU_THREADS, worker_devices
from studio.serving.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobQueue, estimate_start

QUICK = GenerationRequest(prompt="a red box", steps=2, resolution=64, seed=4)


def wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextmanager
def held(*pipelines: InferencePipeline):
    """Hold the pipelines' GPU locks: their workers take a job and then wait, so queue states are exact."""
    for pipe in pipelines:
        pipe._lock.acquire()
    try:
        yield
    finally:
        for pipe in pipelines:
            pipe._lock.release()


@pytest.fixture(scope="module")
def second_pipeline(model_cache) -> InferencePipeline:
    return InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device="cpu", outputs_dir=None))


@pytest.fixture
def queue(tiny_pipeline):
    jobs = JobQueue([tiny_pipeline])
    yield jobs
    jobs.shutdown()


@pytest.fixture
def two_workers(tiny_pipeline, second_pipeline):
    jobs = JobQueue([tiny_pipeline, second_pipeline])
    yield jobs
    jobs.shutdown()


def test_jobs_are_served_first_come_first_served(queue, tiny_pipeline, photo):
    with held(tiny_pipeline):
        jobs = [queue.submit(photo, GenerationRequest(steps=1, resolution=64, seed=seed), owner="a")
                for seed in (1, 2, 3)]
        wait_for(lambda: jobs[0].state == RUNNING)
        assert [job.state for job in jobs] == [RUNNING, QUEUED, QUEUED]
        assert [queue.position(job) for job in jobs] == [None, 1, 2]
    wait_for(lambda: all(job.state == DONE for job in jobs))
    assert [job.started for job in jobs] == sorted(job.started for job in jobs)
    assert [job.result.seed for job in jobs] == [1, 2, 3]
    assert all(job.worker == "cpu" and job.finished >= job.started for job in jobs)


def test_cancel_while_queued_never_starts_the_job(queue, tiny_pipeline, photo):
    with held(tiny_pipeline):
        first = queue.submit(photo, QUICK, owner="a")
        second = queue.submit(photo, QUICK, owner="b")
        wait_for(lambda: first.state == RUNNING)
        queue.cancel(second)
        assert second.state == CANCELLED and queue.position(second) is None and queue.waiting == 0
    wait_for(lambda: first.state == DONE)
    assert second.started is None and second.result is None and second.step == 0
    assert second.image is None, "an ended job that shows no result lets its photo go"
    assert first.image is not None and first.detections is None, "a result is shown beside its photo"


def test_cancel_while_running_stops_at_the_next_step(queue, photo):
    job = queue.submit(photo, GenerationRequest(steps=150, resolution=64, seed=1), owner="a")
    wait_for(lambda: job.step >= 2)
    queue.cancel(job)
    wait_for(lambda: not job.active)
    assert job.state == CANCELLED
    assert job.result.cancelled and job.result.images == []
    assert 2 <= job.result.run_card["steps_done"] < 150
    assert job.image is None and job.preview is None
    after = queue.submit(photo, QUICK, owner="a")  # the worker serves on at once
    wait_for(lambda: not after.active)
    assert after.state == DONE and after.result.images


def test_a_failing_job_reports_its_message_and_the_worker_serves_the_next(queue, photo, tmp_path):
    missing_lora = queue.submit(photo, GenerationRequest(steps=1, resolution=64, lora=str(tmp_path / "nope.bin")),
                                owner="a")
    broken = queue.submit(photo, QUICK, owner="a", detections=["not a detection"])  # a bug, not a person's error
    fine = queue.submit(photo, QUICK, owner="a")
    wait_for(lambda: not fine.active)
    assert missing_lora.state == FAILED and "LoRA" in missing_lora.message and "nope.bin" in missing_lora.message
    assert broken.state == FAILED and broken.message.startswith("The run failed unexpectedly (AttributeError")
    assert fine.state == DONE and fine.result.images and fine.message is None
    assert missing_lora.image is None and broken.image is None and broken.detections is None


def test_two_workers_serve_two_jobs_at_once(two_workers, tiny_pipeline, second_pipeline, photo):
    with held(tiny_pipeline, second_pipeline):
        first = two_workers.submit(photo, GenerationRequest(steps=2, resolution=64, seed=10), owner="a")
        second = two_workers.submit(photo, GenerationRequest(steps=2, resolution=64, seed=20), owner="b")
        wait_for(lambda: first.state == RUNNING and second.state == RUNNING)
        assert two_workers.running == 2 and two_workers.waiting == 0
    wait_for(lambda: first.state == DONE and second.state == DONE)
    assert (first.result.seed, second.result.seed) == (10, 20)
    assert not np.array_equal(np.asarray(first.result.images[0]), np.asarray(second.result.images[0]))


def test_given_detections_are_used_instead_of_detecting_again(queue, tiny_pipeline, photo):
    detections = tiny_pipeline.detect(photo)
    runs = tiny_pipeline.detector.runs
    job = queue.submit(photo, QUICK, owner="a", detections=detections)
    wait_for(lambda: not job.active)
    assert job.state == DONE and job.result.detections == detections
    assert tiny_pipeline.detector.runs == runs


def test_queue_positions_and_estimated_start_from_measured_speed(queue, tiny_pipeline, photo):
    warm = queue.submit(photo, QUICK, owner="a")
    wait_for(lambda: not warm.active)
    per_step = queue.workers[0].seconds_per_step
    assert per_step and per_step > 0
    with held(tiny_pipeline):
        running = queue.submit(photo, GenerationRequest(steps=10, resolution=64), owner="a")
        wait_for(lambda: running.state == RUNNING)
        waiting = [queue.submit(photo, GenerationRequest(steps=4, resolution=64), owner=o) for o in "bc"]
        assert [queue.position(job) for job in waiting] == [1, 2]
        first, second = (queue.eta_s(job) for job in waiting)
        assert first == pytest.approx(10 * per_step) and second == pytest.approx(14 * per_step)
        assert queue.eta_s(running) is None
    wait_for(lambda: not waiting[-1].active)


def test_before_any_run_ended_the_estimate_comes_from_the_running_job(tiny_pipeline, photo):
    queue = JobQueue([tiny_pipeline])
    try:
        with held(tiny_pipeline):
            running = queue.submit(photo, GenerationRequest(steps=150, resolution=64), owner="a")
            waiting = queue.submit(photo, QUICK, owner="b")
            wait_for(lambda: running.state == RUNNING)
            assert queue.eta_s(waiting) is None, "nothing measured yet"
        wait_for(lambda: running.step >= 3)
        eta = queue.eta_s(waiting)
        assert eta is not None and 0 < eta <= 150 * running.seconds_per_step() * 1.5
        queue.cancel(running)
    finally:
        queue.shutdown()


@pytest.mark.parametrize("remaining, ahead, expected", [
    ([0.0], [], 0.0), ([5.0], [], 5.0), ([5.0], [3.0, 2.0], 10.0), ([5.0, 1.0], [], 1.0),
    ([5.0, 1.0], [4.0], 5.0), ([5.0, 1.0], [4.0, 4.0], 5.0), ([5.0, 1.0], [4.0, 4.0, 1.0], 6.0)])
def test_estimated_start_hands_each_waiting_job_to_the_first_free_worker(remaining, ahead, expected):
    assert estimate_start(remaining, ahead) == expected


def test_shutdown_cancels_what_waits_and_ends_the_workers(tiny_pipeline, photo):
    queue = JobQueue([tiny_pipeline])
    with held(tiny_pipeline):
        running = queue.submit(photo, QUICK, owner="a")
        wait_for(lambda: running.state == RUNNING)
        waiting = queue.submit(photo, QUICK, owner="b")
        stopping = threading.Thread(target=queue.shutdown)
        stopping.start()
        wait_for(lambda: waiting.state == CANCELLED)
    stopping.join(60)
    assert not queue.workers[0].thread.is_alive()
    with pytest.raises(RuntimeError, match="shut down"):
        queue.submit(photo, QUICK, owner="a")


def test_worker_devices(monkeypatch):
    import torch

    assert worker_devices(Settings(device="cpu")) == ["cpu"]
    assert worker_devices(Settings(device="cuda:1")) == ["cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_devices(Settings()) == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices(Settings()) == ["cuda:0", "cuda:1"]
    assert worker_devices(Settings(gpus=(1,))) == ["cuda:1"]
    with pytest.raises(ValueError, match="GPUS names GPU 2, but this machine has 2"):
        worker_devices(Settings(gpus=(0, 2)))


def test_a_queue_from_settings_serves_on_the_cpu(model_cache, photo):
    queue = JobQueue.for_settings(Settings(models="tiny", cache_dir=model_cache, device="cpu", outputs_dir=None))
    try:
        assert [worker.name for worker in queue.workers] == ["cpu"]
        job = queue.submit(photo, QUICK, owner="a")
        wait_for(lambda: not job.active)
        assert job.state == DONE
    finally:
        queue.shutdown()


@pytest.mark.slow  # a benchmark script in a process of its own: make test runs it, make test-fast does not
def test_jobs_benchmark_script_writes_both_rows(tmp_path, model_cache):
    import json
    import subprocess
    import sys

    from helpers import ROOT

    out = tmp_path / "jobs.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_jobs.py", "--quick", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "APP_CACHE_DIR": str(model_cache)})  # the session's tiny models
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    local = result["local"]
    assert local["workers"] == ["cpu", "cpu"] and result["steps"] == 2
    assert [row["config"] for row in local["rows"]] == ["one-job", "two-jobs"]
    assert all(row["seconds"] > 0 for row in local["rows"])
    assert local["two_jobs_over_one_job"] == round(local["rows"][1]["seconds"] / local["rows"][0]["seconds"], 3)
    assert re.search(r"\| local \| 2 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", proc.stdout), proc.stdout


def test_a_job_gives_the_pixels_of_a_direct_call_in_any_thread(queue, photo, tiny_pipeline):
    """Ultralytics lowers the calling thread's torch threads at its first CPU prediction; each run sets them
    back, so a worker thread, the main thread and any other thread compute the same pixels."""
    request = GenerationRequest(steps=2, resolution=64, seed=11)
    job = queue.submit(photo, request, owner="a")
    wait_for(lambda: not job.active)
    main = np.asarray(tiny_pipeline.generate(photo, request).images[0])
    others: list[tuple[np.ndarray, int]] = []

    def fresh_thread() -> None:  # a thread of its own that detects first (Ultralytics lowers its threads there)
        import torch

        tiny_pipeline.detect(photo)
        others.append((np.asarray(tiny_pipeline.generate(photo, request).images[0]), torch.get_num_threads()))

    threads = [threading.Thread(target=fresh_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
        thread.join(120)
    assert np.array_equal(np.asarray(job.result.images[0]), main)
    assert len(others) == 2 and all(np.array_equal(pixels, main) for pixels, _ in others)
    assert [count for _, count in others] == [CPU_THREADS, CPU_THREADS]


def test_a_hub_lora_is_fetched_before_its_job_takes_a_worker(queue, tiny_pipeline, photo, monkeypatch, tmp_path):
    """An 8 s download must not hold the only worker while a 1-step job of another visitor waits: the LoRA is
    fetched first, the other job runs meanwhile, and the worker then finds the file already here."""
    from studio.engine import loras

    from helpers import make_lora

    lora = make_lora(tiny_pipeline.model_ids["sd15"] + "/unet", tmp_path)
    downloads = []

    def slow_download(repo_id, settings):
        downloads.append(threading.current_thread().name)
        time.sleep(2.0)
        return str(lora)

    monkeypatch.setattr(loras, "_download", slow_download)
    styled = queue.submit(photo, replace(QUICK, lora="someone/ink-style-lora"), owner="a")
    assert styled.stage == "fetch" and queue.position(styled) is None
    plain = queue.submit(photo, QUICK, owner="b")
    wait_for(lambda: not styled.active and not plain.active)
    assert (styled.state, plain.state) == (DONE, DONE), styled.message
    assert plain.finished < styled.started, "the other visitor's job ran during the download"
    assert len(downloads) == 1 and downloads[0].startswith("lora-fetch"), "one download, off the workers"
    assert [entry["role"] for entry in styled.result.run_card["loras"]] == ["style"]
    assert styled.result.run_card["request"]["lora"] == "someone/ink-style-lora"


def test_a_lora_that_cannot_be_fetched_fails_its_job_with_the_reason(queue, photo, monkeypatch):
    from studio.core.errors import LoraError
    from studio.engine import loras

    def offline(repo_id, settings):
        raise LoraError(f"The LoRA '{repo_id}' could not be looked up on the Hub (ConnectError).")

    monkeypatch.setattr(loras, "_download", offline)
    job = queue.submit(photo, replace(QUICK, lora="someone/unreachable-lora"), owner="a")
    wait_for(lambda: not job.active)
    assert job.state == FAILED and job.message == ("The LoRA 'someone/unreachable-lora' could not be looked up on "
                                                   "the Hub (ConnectError).")


def test_an_unexpected_error_while_fetching_ends_the_job_with_a_short_message(queue, photo, monkeypatch):
    from studio.engine import loras

    def broken(repo_id, settings):
        raise KeyError("siblings")

    monkeypatch.setattr(loras, "_download", broken)
    job = queue.submit(photo, replace(QUICK, lora="someone/broken-listing-lora"), owner="a")
    wait_for(lambda: not job.active, timeout_s=30)
    assert job.state == FAILED and job.message.startswith("The LoRA could not be fetched (KeyError: 'siblings')")


def test_a_job_nobody_follows_is_cancelled_after_abandon_s_and_one_that_is_followed_runs_on(tiny_pipeline, photo):
    queue = JobQueue([tiny_pipeline], abandon_s=1.0)
    try:
        with held(tiny_pipeline):
            followed = queue.submit(photo, GenerationRequest(steps=150, resolution=64, seed=1), owner="a")
            orphan = queue.submit(photo, QUICK, owner="b")
            wait_for(lambda: followed.state == RUNNING)
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:  # the page polls its job; nobody polls the orphan
                followed.touch()
                time.sleep(0.1)
            assert orphan.state == CANCELLED and "nobody followed it for 1 s" in orphan.message
            assert followed.state == RUNNING and not followed.cancel_requested
        wait_for(lambda: followed.step >= 1)
        wait_for(lambda: followed.state == CANCELLED, timeout_s=30)  # its visitor went too: stopped mid-run
        assert followed.result is not None and 1 <= followed.result.run_card["steps_done"] < 150
    finally:
        queue.shutdown()


def test_a_visitor_finds_its_running_job_then_its_waiting_one_and_nobody_elses(queue, tiny_pipeline, photo):
    with held(tiny_pipeline):
        running = queue.submit(photo, QUICK, owner="a")
        wait_for(lambda: running.state == RUNNING)
        waiting = queue.submit(photo, QUICK, owner="a")
        other = queue.submit(photo, QUICK, owner="b")
        assert queue.active_job("a") is running and queue.active_job("b") is other and queue.active_job("c") is None
        queue.cancel(running)
    wait_for(lambda: running.state == CANCELLED)
    assert queue.active_job("a") in (waiting, None) and waiting.state != CANCELLED
    wait_for(lambda: not waiting.active)
    assert queue.active_job("a") is None and waiting.state == DONE
