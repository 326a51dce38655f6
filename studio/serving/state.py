"""The server's shared objects, made once per process: the model set in use, the job queue (one worker per GPU),
the page's preview caches and each visitor's latest page batch.

Module-level, not in Streamlit's caches: any browser can send Streamlit's `clear_cache` message, which empties
`st.cache_resource`; and the HTTP API, which runs outside every script, must use the same queue as the page.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from PIL import Image

from studio.core.errors import JobsBackendError, ModelLoadError, short_error
from studio.core.request import GenerationRequest
from studio.core.settings import Settings
from studio.serving.batch_jobs import BatchRun
from studio.serving.jobs import JobQueue
from studio.serving.prefetch import NO_INTERNET
from studio.serving.previews import Previews
from studio.serving.saved_settings import SavedSettings

log = logging.getLogger(__name__)
READY = "ready"
WARM_UP = GenerationRequest(prompt="warm-up", steps=2, seed=0)  # the page's default size and guidance
_lock = threading.Lock()
_chosen: dict[str, str] = {}
_queues: dict[str, JobQueue] = {}
_previews: dict[str, Previews] = {}
_progress: dict[str, str] = {}
_batches: dict[str, BatchRun] = {}  # visitor -> their latest batch, so a reload finds it
_saved = SavedSettings()


def models() -> str:
    """The model set this server uses: MODELS, until the page switches to the smoke models."""
    return _chosen.get("models") or Settings.from_env().models


def use_models(name: str) -> None:
    """Switch the whole server to another model set (the page's "Use the offline smoke models")."""
    _chosen["models"] = name


def use_backend(name: str) -> None:
    """Run the jobs elsewhere from now on (the page's "Use the local job queue" when a Ray cluster is away)."""
    _chosen["backend"] = name


def server_settings() -> Settings:
    return Settings.from_env(models=models(), jobs_backend=_chosen.get("backend"))


def open_queue(settings: Settings) -> JobQueue:
    """The job queue of `settings`' backend: this process's workers, or a Ray Serve deployment (ray_jobs.py)."""
    if settings.jobs_backend == "ray":
        from studio.serving.ray_jobs import RayJobQueue

        return RayJobQueue.for_settings(settings)
    return JobQueue.for_settings(settings)


def jobs() -> JobQueue:
    """The job queue of the model set in use, loaded at the first call (minutes for the real models: a second
    caller waits for the same load). A ModelLoadError or JobsBackendError is raised again at the next call."""
    name = models()
    with _lock:
        if name not in _queues:
            settings = server_settings()
            log.info("loading the %s models (once per server process; jobs: %s)", name, settings.jobs_backend)
            _queues[name] = open_queue(settings)
        return _queues[name]


def warm_up() -> None:
    """Load the models and run one short generation on every worker at the default size (CUDA graphs captured
    there), so that the first visitor's run starts at once; `readiness()` says how far it got. Started by the
    server when it starts (server.py), in a thread of its own."""
    name = models()
    _progress[name] = "loading the models"
    try:
        queue = jobs()
        _progress[name] = "warming up"
        picture = Image.new("RGB", (WARM_UP.resolution, WARM_UP.resolution), (128, 128, 128))
        for pipeline in queue.pipelines:
            pipeline.generate(picture, WARM_UP, detections=[])
    except ModelLoadError as exc:
        from studio.engine.loading import hub_reachable

        offline = not hub_reachable(Settings.from_env(models=name).hub_timeout_s)
        _progress[name] = f"failed: {NO_INTERNET if offline else exc}"
        return
    except JobsBackendError as exc:
        _progress[name] = f"failed: {exc}"
        return
    except Exception as exc:  # a bug or a broken model: the page shows it too; the launcher must not wait for ever
        log.exception("warming up failed")
        _progress[name] = f"failed: {short_error(exc)}"
        return
    _progress[name] = READY


def readiness() -> str:
    """"ready", "loading the models", "warming up", "failed: <why>", or "not started" (a server without
    warm-up: the models load at the first visit)."""
    return _progress.get(models(), "not started")


def loaded() -> JobQueue | None:
    """The queue when its models are loaded; None while they load or before anything asked for them."""
    return _queues.get(models())


def previews() -> Previews:
    queue = jobs()
    with _lock:
        if models() not in _previews:
            _previews[models()] = Previews(queue.pipelines[0])
        return _previews[models()]


def settings() -> Settings:
    """The settings the server runs with (the loaded pipeline's, or the environment's before the load)."""
    queue = loaded()
    return queue.pipelines[0].settings if queue is not None else server_settings()


def setting(name: str) -> Any:
    """One setting the server runs with (`queue_poll_s`, `trusted_proxy_hops`). A broken environment is for the
    model load to report, in the page; until then the setting's default."""
    try:
        return getattr(settings(), name)
    except ValueError:
        return getattr(Settings, name)


def batch(owner: str) -> BatchRun | None:
    """The visitor's latest batch from the page, on its way or ended (its zip still to download). An ended batch
    whose page has not looked for ABANDON_S is let go (its visitor left; its pictures are in the outputs folder),
    everyone's at once, so a visitor who never comes back holds nothing."""
    now, patience = time.time(), setting("abandon_s")
    with _lock:
        for left in [who for who, run in _batches.items() if not run.active and now - run.seen > patience]:
            del _batches[left]
        return _batches.get(owner)


def start_batch(run: BatchRun) -> BatchRun:
    with _lock:
        _batches[run.owner] = run.start()
    return run


def saved_settings() -> SavedSettings:
    """The visitors' page settings (saved_settings.py), one store per server process."""
    return _saved


def reset() -> None:
    """Forget everything (tests: a fresh server with other settings); running workers are stopped."""
    with _lock:
        for run in _batches.values():
            run.cancel()
        _batches.clear()
        _saved.clear()
        for queue in _queues.values():
            queue.shutdown()
        _queues.clear()
        _previews.clear()
        _chosen.clear()
        _progress.clear()
