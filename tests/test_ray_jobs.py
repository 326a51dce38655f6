"""The jobs on a Ray Serve deployment (studio/serving/ray_jobs.py): the session's Ray instance on loopback (the
`ray_address` fixture), two CPU replicas of the tiny pipeline; the same queue as the local backend, the same
pixels."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from inference_pipeline import GenerationRequest
from studio.core.errors import JobsBackendError
from studio.core.settings import Settings
from studio.serving import state
from studio.serving.jobs import CANCELLED, DONE, FAILED, RUNNING

from helpers import app_page, pixels

ray = pytest.importorskip("ray")
from studio.serving.ray_jobs import APP, STOPPED, RayJobQueue  # noqa: E402

LONG = GenerationRequest(prompt="a red box", steps=150, resolution=128, seed=5)


def wait(*jobs, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(job.active for job in jobs):
        assert time.monotonic() < deadline, [job.state for job in jobs]
        time.sleep(0.05)


def wait_until(condition, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "it never happened"
        time.sleep(0.05)


def test_a_cluster_that_cannot_be_reached_says_so_and_the_page_offers_the_local_queue(app_env, monkeypatch):
    assert not ray.is_initialized()
    monkeypatch.setenv("JOBS_BACKEND", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # no cluster was started on this machine
    with pytest.raises(JobsBackendError, match=r"The Ray cluster at RAY_ADDRESS=auto cannot be reached .*ray start"):
        RayJobQueue.for_settings(Settings.from_env())
    state.reset()
    try:
        app = app_page().run()
        assert "The jobs cannot run on the Ray cluster." in app.error[0].value and not app.exception
        next(b for b in app.button if b.label == "Use the local job queue instead").click().run()
        assert not app.error and app.file_uploader(key="upload-0")
        assert type(state.jobs()).__name__ == "JobQueue"
    finally:
        state.reset()


def test_the_jobs_benchmark_measures_the_ray_path_beside_the_local_one(tmp_path, ray_address, model_cache):
    import json
    import subprocess
    import sys

    from helpers import ROOT

    out = tmp_path / "jobs.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_jobs.py", "--quick", "--backend", "both", "--repeats",
                           "1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "RAY_ADDRESS": ray_address, "APP_CACHE_DIR": str(model_cache)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ray"]["workers"] == ["replica slot 1", "replica slot 2"]
    assert all(job["worker"].startswith("replica pid") for row in result["ray"]["rows"] for job in row["jobs"])
    one = {backend: result[backend]["rows"][0]["seconds"] for backend in ("local", "ray")}
    assert result["ray_over_local_one_job_s"] == round(one["ray"] - one["local"], 4)
    assert "| ray | 2 |" in proc.stdout and "the Ray path costs" in proc.stdout


@pytest.fixture(scope="module")
def ray_queue(model_cache, ray_address):
    saved = dict(os.environ)
    os.environ.update(MODELS="tiny", APP_CACHE_DIR=str(model_cache), DEVICE="cpu")
    queue = RayJobQueue.for_settings(Settings.from_env(jobs_backend="ray", ray_address=ray_address, ray_replicas=2))
    assert queue.deployed, "a server that stopped (tests/browser/test_browser_ray.py's) deleted its application"
    yield queue
    queue.shutdown()
    os.environ.clear()
    os.environ.update(saved)


def replica_pid(job) -> int:
    return int(job.worker.removeprefix("replica pid "))


def test_two_jobs_together_run_on_two_replicas_with_the_local_backends_pixels(ray_queue, tiny_pipeline, photo):
    request = GenerationRequest(prompt="a red box", steps=3, resolution=64, seed=11)
    jobs = [ray_queue.submit(photo, request, owner=f"visitor {i}") for i in range(2)]
    wait(*jobs)
    assert [job.state for job in jobs] == [DONE, DONE], [job.message for job in jobs]
    assert len({replica_pid(job) for job in jobs}) == 2 and os.getpid() not in {replica_pid(job) for job in jobs}
    local = tiny_pipeline.generate(photo, request)
    for job in jobs:
        assert np.array_equal(pixels(job.result), pixels(local)) and job.result.seeds == local.seeds
        assert job.result.run_card["request"] == local.run_card["request"]
    assert ray_queue.step_seconds, "the queue measured the replicas' speed, as the local one does"


def test_cancel_of_a_running_job_stops_it_at_its_next_step(ray_queue, photo):
    job = ray_queue.submit(photo, LONG, owner="canceller")
    wait_until(lambda: job.step >= 3)
    ray_queue.cancel(job)
    at = ray.get(ray_queue.board.get.remote(job.id)).get("step", job.step)
    wait(job)
    assert job.state == CANCELLED and job.result.run_card["steps_done"] <= at + 1


def test_a_queued_jobs_place_moves_up_as_the_replicas_free(ray_queue, photo):
    jobs = [ray_queue.submit(photo, LONG, owner=f"queuer {i}") for i in range(4)]
    wait_until(lambda: [job.state for job in jobs[:2]] == [RUNNING, RUNNING])
    assert [ray_queue.position(job) for job in jobs] == [None, None, 1, 2] and ray_queue.waiting == 2
    ray_queue.cancel(jobs[0])
    wait_until(lambda: ray_queue.position(jobs[3]) == 1)
    assert jobs[2].state == RUNNING
    for job in jobs:
        ray_queue.cancel(job)
    wait(*jobs)


def test_a_second_server_uses_the_application_already_running_and_leaves_it_running(ray_queue, ray_address, photo):
    second = RayJobQueue.for_settings(Settings.from_env(jobs_backend="ray", ray_address=ray_address, ray_replicas=2))
    assert (second.deployed, second.started) == (False, False)
    try:
        job = second.submit(photo, GenerationRequest(prompt="a red box", steps=2, resolution=64, seed=4), owner="b")
        wait(job)
        assert job.state == DONE and job.worker.startswith("replica pid")
    finally:
        second.shutdown()
    from ray import serve

    assert serve.status().applications[APP].status == "RUNNING" and ray.is_initialized()
    assert run_pair(ray_queue, photo, "first server")


def test_the_serve_config_and_the_rayservice_deploy_this_application():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from studio.core.settings import variables
    from studio.serving import ray_jobs

    from helpers import ROOT

    config = yaml.safe_load((ROOT / "deploy/serve_config.yaml").read_text())
    service = yaml.safe_load((ROOT / "deploy/rayservice.yaml").read_text())
    assert service["kind"] == "RayService" and service["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    for text in (config, yaml.safe_load(service["spec"]["serveConfigV2"])):
        (app,) = ServeDeploySchema.model_validate(text).applications
        module, name = app.import_path.split(":")
        assert (module, getattr(ray_jobs, name)) == ("studio.serving.ray_jobs", ray_jobs.application)
        assert app.name == APP and [d.name for d in app.deployments] == ["pipeline"]
        assert app.deployments[0].max_ongoing_requests == 1 and set(app.args) <= set(variables())
        assert app.deployments[0].max_queued_requests == app.deployments[0].autoscaling_config["max_replicas"]


def run_pair(queue, photo, owner: str) -> set[int]:
    """Two quick jobs at once (so on two replicas when two are up); both must succeed. Their replicas' pids."""
    quick = GenerationRequest(prompt="a red box", steps=2, resolution=64, seed=3)
    pair = [queue.submit(photo, quick, owner=f"{owner} {i}") for i in range(2)]
    wait(*pair)
    assert [job.state for job in pair] == [DONE, DONE], [job.message for job in pair]
    return {replica_pid(job) for job in pair}


def test_a_replica_killed_during_a_job_fails_that_job_and_a_new_replica_serves_the_next(ray_queue, photo):
    replicas = run_pair(ray_queue, photo, "before")
    assert len(replicas) == 2
    job = ray_queue.submit(photo, LONG, owner="unlucky")
    wait_until(lambda: job.worker is not None and job.worker.startswith("replica pid") and job.step >= 1)
    killed = replica_pid(job)
    os.kill(killed, signal.SIGKILL)
    wait(job)
    assert (job.state, job.message) == (FAILED, STOPPED)
    deadline, served = time.monotonic() + 180, set()
    while not served - replicas:  # the survivor serves at once; the replica Ray starts anew soon after
        assert time.monotonic() < deadline, f"no new replica: {served}"
        served |= run_pair(ray_queue, photo, "after")
    assert killed not in served
