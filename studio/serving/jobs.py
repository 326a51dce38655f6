"""Generation as jobs: a first-come-first-served queue, served by one worker per GPU.

A Streamlit page reruns its script on every widget event; a run that lived inside the script died with
it. Here a job lives in the server process: the page submits it and renders it, and no rerun can touch it.

    queue = JobQueue.for_settings(Settings.from_env())      # one worker (and pipeline) per GPU, or the CPU
    job = queue.submit(image, GenerationRequest(prompt="a fox"), owner=session_id)
    queue.position(job), queue.eta_s(job)                     # while it waits
    job.state, job.stage, job.step, job.total, job.preview    # while it runs
    job.cancel()                                              # queued: at once; running: at the next step
    job.touch()                                               # its visitor still watches (else: cancelled)
    job.result or job.message                                 # when it ended

Each worker owns its own `InferencePipeline` on its own device and runs one job at a time on it.
"""

from __future__ import annotations

import atexit
import heapq
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from studio.core.detections import Detection
from studio.core.errors import EXPECTED_ERRORS, LoraError, TooManyJobsError, short_error
from studio.core.preparation import ControlPreview, bounded_input
from studio.core.request import GenerationRequest, GenerationResult
from studio.core.settings import Settings
from studio.engine.devices import describe, worker_devices
from studio.engine.loras import needs_download, resolve
from studio.engine.pipeline import InferencePipeline
from studio.serving import outputs

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)


@dataclass(eq=False)
class Job:
    """One generation: what was asked, by whom, and how far it got. Read from any thread; written by the
    queue and its worker only."""

    request: GenerationRequest
    image: Any
    owner: str
    detections: list[Detection] | None = None  # the preview's, for this image and the request's detection settings
    preview_of_control: ControlPreview | None = None  # the page's preview for this image and request, if any
    batch: str | None = None  # the page batch (batch_jobs.py) it belongs to: that batch follows it, not the job view
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = QUEUED
    stage: str | None = None  # "fetch" (its LoRA) before it queues; "detect", "control", "generate" while running
    step: int = 0
    total: int = 0
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    denoising_since: float | None = None
    finished: float | None = None
    worker: str | None = None  # the device that ran it
    result: GenerationResult | None = None
    message: str | None = None  # why it failed
    preview: Any | None = None  # the latest live preview (a PIL image) while it denoises
    preview_step: int = 0
    seen: float = field(default_factory=time.time)  # the last time its visitor (a page, an API client) looked
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        self.total = self.request.steps

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def seconds_per_step(self) -> float | None:
        """This job's own denoising speed so far, while it runs."""
        if self.denoising_since is None or self.step == 0:
            return None
        return (time.time() - self.denoising_since) / self.step

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def touch(self) -> None:
        """Its visitor still looks at it: a job nobody polls for `abandon_s` is cancelled (a closed tab)."""
        self.seen = time.time()

    def cancel(self) -> None:
        """Ask the job to stop: a queued job never starts, a running one stops after its current step."""
        self._cancel.set()

    def end(self, state: str, message: str | None = None) -> None:
        """The job ended: what only its run needed goes (its detections, the page's preview, the live preview),
        and the photo too unless it is DONE (the page shows a result beside its photo). An ended job is kept for
        its visitor to read (API_RESULT_TTL_S), so what it keeps is only what can still be read."""
        if message is not None:
            self.message = message
        self.state, self.finished = state, time.time()
        self.detections = self.preview_of_control = self.preview = None
        if state != DONE:
            self.image = None


def size_key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def estimate_start(remaining_s: list[float], ahead_s: list[float]) -> float:
    """Seconds until a job can start: every worker first finishes what it runs (`remaining_s`, one entry per
    worker, 0 when idle), then the jobs ahead in the queue (`ahead_s`) go, in order, to the worker free first."""
    free_at = list(remaining_s)
    heapq.heapify(free_at)
    for cost in ahead_s:
        heapq.heappush(free_at, heapq.heappop(free_at) + cost)
    return free_at[0]


class Worker:
    """One pipeline, one thread, one job at a time; measures its seconds per step for the queue's estimates."""

    def __init__(self, pipeline: InferencePipeline, queue: JobQueue) -> None:
        self.pipeline, self.queue = pipeline, queue
        self.name = pipeline.device
        self.job: Job | None = None
        self.seconds_per_step: float | None = None  # a whole run (detection and decoding too) per step
        self.thread = threading.Thread(target=self._serve, name=f"worker-{self.name}", daemon=True)

    def _serve(self) -> None:
        while True:
            job = self.queue._next(self)
            if job is None:
                return
            self.queue._finished(self, job, self._run(job))

    def _generate(self, job: Job) -> GenerationResult | None:
        """The job's run on this worker's pipeline, reporting its stage, steps and previews on the job."""

        def on_stage(stage: str) -> None:
            job.stage = stage
            if stage == "generate":
                job.denoising_since = time.time()

        def on_step(step: int, total: int) -> None:
            job.step, job.total = step, total

        def on_preview(step: int, image: Any) -> None:
            job.preview, job.preview_step = image, step

        return self.pipeline.generate(job.image, job.request, on_step=on_step, should_cancel=job._cancel.is_set,
                                      on_stage=on_stage, detections=job.detections, preview=job.preview_of_control,
                                      on_preview=on_preview)

    def _run(self, job: Job) -> str:
        """Run one job; returns the state it ended in (the result or the message is set first). The run itself is
        `_generate`'s: here, or on a Ray Serve replica (ray_jobs.py); what follows it is the same."""
        if job.cancel_requested:
            return CANCELLED
        try:
            result = self._generate(job)
            if result is None:  # cancelled before a replica took it
                return CANCELLED
        except EXPECTED_ERRORS as exc:
            job.message = str(exc)
            return FAILED
        except Exception as exc:  # a bug or a broken model: the worker must live on and serve the next job
            log.exception("job %s failed on %s", job.id, self.name)
            job.message = f"The run failed unexpectedly ({short_error(exc)}). It was logged; the next run may work."
            return FAILED
        if not result.cancelled and self.pipeline.settings.outputs_dir is not None:
            try:
                outputs.save(self.pipeline.settings.outputs_dir, result, job.owner, job.id)
            except outputs.OutputsError as exc:
                result.warnings.append(str(exc))
        job.result = result
        steps_done = result.run_card["steps_done"]
        if steps_done:
            per_step = result.timings["total_s"] / steps_done
            self.seconds_per_step = per_step if self.seconds_per_step is None else \
                0.5 * self.seconds_per_step + 0.5 * per_step
        if not result.cancelled and steps_done and result.images:
            self.queue.step_seconds[(job.request.preset, size_key(result.images[0].size))] = \
                result.timings["total_s"] / steps_done / len(result.images)
        return CANCELLED if result.cancelled else DONE


_LIVE_QUEUES: weakref.WeakSet[JobQueue] = weakref.WeakSet()


@atexit.register
def _shut_down_live_queues() -> None:
    """At interpreter exit, stop the workers first: a daemon thread left inside a torch kernel aborts the
    process ("terminate called without an active exception")."""
    for queue in list(_LIVE_QUEUES):
        queue.shutdown()


class JobQueue:
    """First come, first served, over one worker per pipeline."""

    def __init__(self, pipelines: list[InferencePipeline], abandon_s: float | None = None) -> None:
        if not pipelines:
            raise ValueError("a job queue needs at least one pipeline")
        self.pipelines = pipelines
        self.abandon_s = pipelines[0].settings.abandon_s if abandon_s is None else abandon_s
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._fetching: set[Job] = set()  # fetching their style LoRA before they queue
        self._stopping = False
        # (preset, "WxH") -> seconds per step and image of the last finished run there, detection and decoding
        # included: measured here, on this server's GPU
        self.step_seconds: dict[tuple[str, str], float] = {}
        self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="lora-fetch")
        self.workers = self._make_workers(pipelines)
        for worker in self.workers:
            worker.thread.start()
        threading.Thread(target=self._reap, name="job-reaper", daemon=True).start()
        _LIVE_QUEUES.add(self)

    def _make_workers(self, pipelines: list[InferencePipeline]) -> list[Worker]:
        return [Worker(pipe, self) for pipe in pipelines]

    @classmethod
    def for_settings(cls, settings: Settings) -> JobQueue:
        """One pipeline per GPU (`settings.gpus`, default every visible one), loaded side by side; one on the
        CPU when there is no GPU; exactly one when `settings.device` names a device."""
        devices = worker_devices(settings)
        # The first loads alone (it builds or downloads what the others then find cached), the rest side by side.
        first = InferencePipeline(settings=replace(settings, device=devices[0]))
        with ThreadPoolExecutor(max(1, len(devices) - 1)) as pool:
            others = list(pool.map(lambda d: InferencePipeline(settings=replace(settings, device=d)), devices[1:]))
        return cls([first, *others])

    # -- what the page calls ---------------------------------------------------------------------------

    def submit(self, image: Any, request: GenerationRequest, owner: str, detections: list[Detection] | None = None,
               preview: ControlPreview | None = None, batch: str | None = None) -> Job:
        """Queue a job. A style LoRA that must come from the Hub is fetched first, in a thread of its own (the job
        shows the stage "fetch" meanwhile), so a download never holds a worker that other jobs wait for."""
        settings = self.pipelines[0].settings
        if isinstance(image, Image.Image):  # what waits in the queue is bounded by the output, not the upload
            image, detections, preview = bounded_input(image, request, settings.max_side, detections, preview)
        job = Job(request, image, owner, detections, preview, batch)
        fetch = bool(request.lora and needs_download(request.lora, settings))
        with self._cond:
            if self._stopping:
                raise RuntimeError("the job queue has been shut down")
            self._check_limits(owner, settings)
            if fetch:
                job.stage = "fetch"
                self._fetching.add(job)
            else:
                self._queue(job)  # under the same lock as the check: two submits cannot both pass it
        if fetch:
            self._fetcher.submit(self._fetch_then_queue, job, settings)
        return job

    def _check_limits(self, owner: str, settings: Settings) -> None:
        """Each owner (a visitor, an API client) may have one running job and `max_queued_per_visitor` waiting;
        the queue holds at most `max_queue`. Called with the lock held; raises TooManyJobsError."""
        running = [w.job for w in self.workers if w.job is not None]
        mine = sum(job.owner == owner for job in (*self._waiting, *self._fetching, *running))
        allowed = 1 + settings.max_queued_per_visitor
        if mine >= allowed:
            raise TooManyJobsError(f"You already have {mine} run{'s' if mine > 1 else ''} on the way; each visitor "
                                   f"may have {allowed} at once (one running, {allowed - 1} waiting). Wait for one "
                                   "to end, or cancel one.")
        if len(self._waiting) + len(self._fetching) >= settings.max_queue:
            raise TooManyJobsError(f"The queue is full ({settings.max_queue} runs waiting). Try again in a minute.")

    def _fetch_then_queue(self, job: Job, settings: Settings) -> None:
        try:
            self._fetch(job, settings)
        finally:
            with self._cond:
                self._fetching.discard(job)

    def _fetch(self, job: Job, settings: Settings) -> None:
        try:
            resolve(job.request.lora, settings)  # type: ignore[arg-type]  # downloads once; the worker's is a lookup
        except LoraError as exc:
            job.end(FAILED, str(exc))
            return
        except Exception as exc:  # a bug: the job must end, not wait in "fetch" for ever
            log.exception("fetching the LoRA of job %s failed", job.id)
            job.message = f"The LoRA could not be fetched ({short_error(exc)}). It was logged; try again."
            job.end(FAILED)
            return
        job.stage = None
        self._queue(job)

    def _queue(self, job: Job) -> None:
        with self._cond:
            if job.cancel_requested or self._stopping:
                job.end(CANCELLED)
                return
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Cancel a job: a queued one leaves the queue at once, a running one stops after its current step."""
        job.cancel()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                job.end(CANCELLED)

    def active_job(self, owner: str) -> Job | None:
        """The owner's running job, else its first waiting one: what a reloaded page re-attaches to (a batch's jobs
        are followed by their batch)."""
        with self._cond:
            running = [w.job for w in self.workers if w.job is not None and w.job.owner == owner and not w.job.batch]
            waiting = [job for job in (*self._fetching, *self._waiting) if job.owner == owner and not job.batch]
        return (running + waiting)[0] if running or waiting else None

    def _reap(self) -> None:
        """Cancel the jobs nobody has looked at for `abandon_s` (a closed tab, a script that went away): they
        would hold a GPU, or a place in the queue, for no one."""
        while not self._stopping:
            time.sleep(min(1.0, self.abandon_s / 4))
            with self._cond:
                jobs = [*self._waiting, *self._fetching, *(w.job for w in self.workers if w.job is not None)]
            for job in jobs:
                if job.active and time.time() - job.seen > self.abandon_s and not job.cancel_requested:
                    log.info("job %s abandoned: nobody looked at it for %.0f s", job.id, time.time() - job.seen)
                    job.message = f"Cancelled: nobody followed it for {self.abandon_s:.0f} s (the page was closed)."
                    self.cancel(job)

    def position(self, job: Job) -> int | None:
        """1 for the next job to start, 2 for the one after it, …; None once it runs or ended."""
        with self._cond:
            return self._waiting.index(job) + 1 if job in self._waiting else None

    def eta_s(self, job: Job) -> float | None:
        """Seconds until a queued job starts, from the workers' measured seconds per step (or, before any run
        has ended, the running jobs' speed so far); None when nothing was measured yet, or once the job runs."""
        with self._cond:
            if job not in self._waiting:
                return None
            speeds = [w.seconds_per_step for w in self.workers if w.seconds_per_step] or \
                [w.job.seconds_per_step() for w in self.workers if w.job and w.job.seconds_per_step()]
            if not speeds:
                return None
            per_step = sum(speeds) / len(speeds)
            ahead = [waiting.total * per_step for waiting in list(self._waiting)[:self._waiting.index(job)]]
            remaining = [max(w.job.total - w.job.step, 0) * per_step if w.job else 0.0 for w in self.workers]
        return estimate_start(remaining, ahead)

    def seconds_per_image(self, preset: str, size: tuple[int, int], steps: int) -> float | None:
        """What one image of `steps` steps takes at `size` with `preset`, from the last such run here (None: none)."""
        per_step = self.step_seconds.get((preset, size_key(size)))
        return per_step * steps if per_step is not None else None

    def devices(self) -> list[str]:
        """One line per worker: its device and, on a GPU, its name and the memory in use (the page's sidebar)."""
        return [describe(worker.name, memory=True) for worker in self.workers]

    def on_gpu(self) -> bool:
        """Whether the jobs run on a GPU (the page opens on a faster preset without one)."""
        return any(worker.name.startswith("cuda") for worker in self.workers)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def running(self) -> int:
        return sum(worker.job is not None for worker in self.workers)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Cancel everything, let the workers finish their current step and end."""
        with self._cond:
            self._stopping = True
            for job in self._waiting:
                job.cancel()
                job.end(CANCELLED)
            self._waiting.clear()
            for worker in self.workers:
                if worker.job is not None:
                    worker.job.cancel()
            self._cond.notify_all()
        self._fetcher.shutdown(wait=False, cancel_futures=True)
        for worker in self.workers:
            worker.thread.join(timeout_s)

    # -- what the workers call -------------------------------------------------------------------------

    def _next(self, worker: Worker) -> Job | None:
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            job = self._waiting.popleft()
            job.state, job.started, job.worker = RUNNING, time.time(), worker.name
            worker.job = job
            return job

    def _finished(self, worker: Worker, job: Job, state: str) -> None:
        with self._cond:
            job.end(state)
            worker.job = None
