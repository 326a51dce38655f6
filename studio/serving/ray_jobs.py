"""Jobs on a Ray Serve cluster: the job queue the page and the HTTP API already use (jobs.py: the limits per
visitor, positions, estimates, cancel, the reaper), whose workers hand each job to a Ray Serve deployment of the
pipeline instead of running it in this process.

    JOBS_BACKEND=ray RAY_ADDRESS=auto make run     # join the cluster this machine is part of (`ray start …`)
    JOBS_BACKEND=ray RAY_ADDRESS=local make run    # start a Ray instance in this process, to try it on one machine

Each replica loads the pipeline once (on one GPU, or on the CPU when the cluster has none) and runs one job at a
time (`max_ongoing_requests=1`); there are RAY_REPLICAS of them, or as many as Ray's autoscaler keeps between one
and the cluster's GPUs (`target_ongoing_requests=1`). This server keeps one worker per replica that may exist, so
the deployment sees every job that could run and its autoscaler sees the demand; the jobs beyond wait here, in
the fair queue. Steps, previews and cancel travel through a small named actor, the board; pictures travel as
lossless WebP or PNG bytes and requests as dicts (core/wire.py). A replica that dies mid-job fails that job with
a message; Ray starts a new one and the next job is served.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from studio.core import wire
from studio.core.errors import EXPECTED_ERRORS, GenerationError, JobsBackendError, short_error
from studio.core.request import GenerationResult, request_from
from studio.core.settings import Settings, variables
from studio.engine.pipeline import InferencePipeline
from studio.serving.jobs import RUNNING, Job, JobQueue, Worker

log = logging.getLogger(__name__)

NAMESPACE = "yolo-controlnet-studio"
BOARD = "progress-board"
APP = "studio"
SHUTDOWN_POLL_S = 0.2
POLL_S = 0.1
ROOT = Path(__file__).resolve().parents[2]
STOPPED = "The worker that ran this job stopped (its process ended); try again."
FULL = ("The Ray cluster has more jobs waiting than it takes from one server (max_queued_requests): another "
        "server sends it work too. Try again in a moment.")


class Board:
    """What the replicas report and the server reads: each job's replica, stage, step and latest preview; and
    which jobs were cancelled. An async actor, so that a replica can wait for a job's cancel without asking
    after every step."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.flags: dict[str, asyncio.Event] = {}
        self.forgotten: deque[str] = deque(maxlen=1000)  # a replica's late news of these is dropped

    def _flag(self, job_id: str) -> asyncio.Event:
        return self.flags.setdefault(job_id, asyncio.Event())

    async def update(self, job_id: str, fields: dict[str, Any]) -> None:
        if job_id not in self.forgotten:
            self.jobs.setdefault(job_id, {}).update(fields)

    async def get(self, job_id: str) -> dict[str, Any]:
        return self.jobs.get(job_id, {})

    async def cancel(self, job_id: str) -> None:
        self._flag(job_id).set()

    async def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.flags and self.flags[job_id].is_set()

    async def cancelled(self, job_id: str) -> None:
        """Returns when the job is cancelled (or forgotten)."""
        await self._flag(job_id).wait()

    async def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self._flag(job_id).set()
        self.flags.pop(job_id, None)
        self.forgotten.append(job_id)


class Reporter:
    """A replica's news of one job for the board, none of which holds up the denoising loop: steps are sent
    without waiting for an answer, previews are encoded and sent by a thread of their own, and a cancel is heard
    through one waiting call to the board, whose answer the loop looks for after each step (it has come or not)."""

    def __init__(self, board: Any, job_id: str, sender: ThreadPoolExecutor) -> None:
        self.board, self.job_id, self.sender = board, job_id, sender
        self.cancel_heard = board.cancelled.remote(job_id)

    def stage(self, stage: str) -> None:
        self.board.update.remote(self.job_id, {"stage": stage})

    def step(self, step: int, total: int) -> None:
        self.board.update.remote(self.job_id, {"step": step, "total": total})

    def preview(self, step: int, image: Image.Image) -> None:
        self.sender.submit(self._send_preview, step, image)

    def _send_preview(self, step: int, image: Image.Image) -> None:
        self.board.update.remote(self.job_id, {"preview": wire.encoded(image), "preview_step": step})

    def should_cancel(self) -> bool:
        import ray

        ready, _ = ray.wait([self.cancel_heard], timeout=0)
        return bool(ready)


class Replica:
    """One pipeline, loaded once when the replica starts; one job at a time."""

    def __init__(self, environment: dict[str, str]) -> None:
        os.environ.update(environment)
        self.pipeline = InferencePipeline(settings=Settings.from_env())
        self.sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="previews")
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    def run(self, job_id: str, photo: bytes, request: dict, detections: list[dict] | None) -> dict | None:
        """The job's result as plain data; None when it was cancelled before it started; {"error": message} when
        the request cannot run. Every job runs on the replica's one thread of its own, as on a local worker: Serve
        may call from a different thread each time, and the detector's first call on a new thread costs about
        a tenth of a second (its CUDA libraries' handles)."""
        return self.worker.submit(self._run, job_id, photo, request, detections).result()

    def _run(self, job_id: str, photo: bytes, request: dict, detections: list[dict] | None) -> dict | None:
        import ray

        board = ray.get_actor(BOARD, namespace=NAMESPACE)
        if ray.get(board.is_cancelled.remote(job_id)):
            return None
        board.update.remote(job_id, {"replica": os.getpid()})
        report = Reporter(board, job_id, self.sender)
        try:
            result = self.pipeline.generate(
                wire.picture(photo), request_from(request), detections=wire.detections_of(detections),
                on_stage=report.stage, on_step=report.step, on_preview=report.preview,
                should_cancel=report.should_cancel)
        except EXPECTED_ERRORS as exc:
            return {"error": str(exc)}
        return wire.result_data(result)


class RayWorker(Worker):
    """A worker of this server's queue that runs its job on the deployment: it forwards the job, follows the
    board while the replica works, and stops the job there when it is cancelled here."""

    def __init__(self, pipeline: InferencePipeline, queue: RayJobQueue, number: int) -> None:
        super().__init__(pipeline, queue)
        self.name = f"replica slot {number + 1}"
        self.handle, self.board = queue.handle, queue.board

    def _generate(self, job: Job) -> GenerationResult | None:
        from ray.exceptions import ActorDiedError, ActorUnavailableError
        from ray.serve.exceptions import BackPressureError

        response = self.handle.run.remote(job.id, wire.encoded(job.image), wire.request_data(job.request),
                                          wire.detections_data(job.detections))
        told = False
        try:
            while True:
                try:
                    answer = response.result(timeout_s=POLL_S)
                    break
                except TimeoutError:  # Ray's GetTimeoutError, or Serve's while no replica has taken it yet
                    self._follow(job)
                if job.cancel_requested and not told:
                    self.board.cancel.remote(job.id)
                    told = True
        except (ActorDiedError, ActorUnavailableError) as exc:
            log.warning("job %s: its replica stopped (%s)", job.id, short_error(exc))
            raise GenerationError(STOPPED) from exc
        except BackPressureError as exc:
            raise GenerationError(FULL) from exc
        finally:
            self._follow(job)
            self.board.forget.remote(job.id)
        if answer is not None and "error" in answer:
            raise GenerationError(answer["error"])
        return None if answer is None else wire.result_of(answer)

    def _follow(self, job: Job) -> None:
        """The board's news of the job onto the job, which the page and the API read."""
        import ray

        news = ray.get(self.board.get.remote(job.id))
        if "replica" in news:
            job.worker = f"replica pid {news['replica']}"
        if news.get("stage") == "generate" and job.stage != "generate":
            job.denoising_since = time.time()
        job.stage = news.get("stage", job.stage)
        job.step, job.total = news.get("step", job.step), news.get("total", job.total)
        if news.get("preview_step", 0) > job.preview_step:
            job.preview, job.preview_step = wire.picture(news["preview"]), news["preview_step"]


class RayJobQueue(JobQueue):
    """The job queue over a Ray Serve deployment. `pipelines[0]` is this server's own, on its CPU: the page's
    previews (detections, control image) and the system panel; the replicas do the generating."""

    def __init__(self, front: InferencePipeline, handle: Any, board: Any, slots: int, *, started: bool,
                 deployed: bool, gpus: bool = False) -> None:
        self.handle, self.board, self.slots, self.gpus = handle, board, slots, gpus
        self.started, self.deployed = started, deployed
        super().__init__([front])

    def _make_workers(self, pipelines: list[InferencePipeline]) -> list[Worker]:
        return [RayWorker(pipelines[0], self, number) for number in range(self.slots)]

    @classmethod
    def for_settings(cls, settings: Settings) -> RayJobQueue:
        """Join (or start) Ray, deploy the pipeline, and load this server's own pipeline for the previews.
        Raises JobsBackendError with a message when the cluster cannot be reached."""
        import ray

        started = settings.ray_address == "local" and not ray.is_initialized()
        join_or_start(settings.ray_address)
        board = ray.remote(Board).options(name=BOARD, get_if_exists=True, num_cpus=0).remote()
        handle, slots, deployed = deploy(settings)
        front = InferencePipeline(settings=replace(settings, device="cpu", cuda_graphs=False))
        return cls(front, handle, board, slots, started=started, deployed=deployed,
                   gpus=ray.cluster_resources().get("GPU", 0) > 0)

    def cancel(self, job: Job) -> None:
        """As the local queue's, and a job on a replica hears it at its next step (not at the next poll)."""
        super().cancel(job)
        if job.state == RUNNING:
            self.board.cancel.remote(job.id)

    def devices(self) -> list[str]:
        return [f"Ray Serve, {len(self.workers)} replica slot{'s' if len(self.workers) > 1 else ''} "
                f"(RAY_ADDRESS={self.pipelines[0].settings.ray_address})"]

    def on_gpu(self) -> bool:
        return self.gpus  # the replicas take a GPU each where the cluster has them

    def shutdown(self, timeout_s: float = 30.0) -> None:
        super().shutdown(timeout_s)
        import ray
        from ray import serve

        if ray.is_initialized():
            if self.deployed:
                serve.delete(APP)
            if self.started:
                ray.shutdown()


def join_or_start(address: str) -> None:
    """`ray.init` in a thread that lives as long as this process: a Ray instance started here runs its GCS and
    raylet as children that Linux kills when the *thread* that started them ends (they are started with a parent
    death signal), and the server's warm-up thread or a page's script thread ends soon. Raises JobsBackendError
    when the cluster cannot be reached."""
    import ray

    outcome: queue.Queue[BaseException | None] = queue.Queue()
    code = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))  # the replicas import this app

    def driver() -> None:
        try:
            ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True, runtime_env={"env_vars": {"PYTHONPATH": code}})
        except Exception as exc:  # handed to the caller, which says what it means
            outcome.put(exc)
            return
        outcome.put(None)
        threading.Event().wait()

    threading.Thread(target=driver, name="ray-driver", daemon=True).start()
    problem = outcome.get()
    if problem is not None:
        raise JobsBackendError(
            f"The Ray cluster at RAY_ADDRESS={address} cannot be reached ({short_error(problem)}). Start it "
            "(`ray start --head`), fix RAY_ADDRESS, or use the local job queue.") from None


def replica_environment() -> dict[str, str]:
    """This app's settings and the Hub's variables from this process, for the replicas (which read no .env)."""
    environment = {name: value for name, value in os.environ.items()
                   if name in variables() or name.startswith(("HF_", "HUGGINGFACE_"))}
    environment.pop("DEVICE", None)  # each replica runs where Ray puts it
    return environment


def application(args: dict[str, str]) -> Any:
    """The pipeline as a Ray Serve application, one GPU a replica (half a CPU when the cluster has no GPU).
    Also the builder that `serve deploy deploy/serve_config.yaml` and KubeRay's RayService name: `args` are
    settings for the replicas (MODEL_ID, …) on top of this process's; the config may set the replicas."""
    import ray
    from ray import serve

    replicas = int(args.get("RAY_REPLICAS") or os.environ.get("RAY_REPLICAS") or 0)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    scaling = {"num_replicas": replicas} if replicas else {"autoscaling_config": {
        "min_replicas": 1, "max_replicas": max(gpus, 1), "target_ongoing_requests": 1}}
    # One job at a time on a replica (its CUDA graphs replay one run); each caller (a front server's handle) may
    # queue one job per replica there could be, which its workers never pass: beyond, Serve refuses at once.
    most = replicas or max(gpus, 1)
    # A replica being stopped looks for running jobs every SHUTDOWN_POLL_S (Serve's default: 2 s, also when idle).
    deployment = serve.deployment(Replica, name="pipeline", max_ongoing_requests=1, max_queued_requests=most, **scaling,
                                  graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S,
                                  ray_actor_options={"num_gpus": 1 if gpus else 0, "num_cpus": 0 if gpus else 0.5})
    return deployment.bind({**replica_environment(), **{name: str(value) for name, value in args.items()}})


def deploy(settings: Settings) -> tuple[Any, int, bool]:
    """The handle of the pipeline's Serve application: the one already running on the cluster (deployed from a
    config file or by KubeRay), else this server deploys it. Also the most replicas it may have (RAY_REPLICAS,
    else the cluster's GPUs) and whether this server deployed it (and so deletes it when it stops)."""
    import ray
    from ray import serve

    most = settings.ray_replicas or max(int(ray.cluster_resources().get("GPU", 0)), 1)
    running = serve.status().applications.get(APP)
    if running is not None and running.status == "RUNNING":
        return serve.get_app_handle(APP), most, False
    serve.start(http_options={"location": "NoServer"})
    arguments = {"RAY_REPLICAS": str(settings.ray_replicas)} if settings.ray_replicas else {}
    return serve.run(application(arguments), name=APP, route_prefix=None), most, True
