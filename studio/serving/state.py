"""The server's shared objects, made once per process: the model set in use, the job queue (one worker per GPU)
and the page's preview caches.

Module-level, not in Streamlit's caches: any browser can send Streamlit's `clear_cache` message, which empties
`st.cache_resource`; and the HTTP API, which runs outside every script, must use the same queue as the page.
"""

from __future__ import annotations

import threading

from studio.core.settings import Settings
from studio.serving.jobs import JobQueue
from studio.serving.previews import Previews

_lock = threading.Lock()
_chosen: dict[str, str] = {}
_queues: dict[str, JobQueue] = {}
_previews: dict[str, Previews] = {}


def models() -> str:
    """The model set this server uses: MODELS, until the page switches to the smoke models."""
    return _chosen.get("models") or Settings.from_env().models


def use_models(name: str) -> None:
    """Switch the whole server to another model set (the page's "Use the offline smoke models")."""
    _chosen["models"] = name


def jobs() -> JobQueue:
    """The job queue of the model set in use, loaded at the first call (minutes for the real models: a second
    caller waits for the same load). A ModelLoadError is raised again at the next call, not kept."""
    name = models()
    with _lock:
        if name not in _queues:
            _queues[name] = JobQueue.for_settings(Settings.from_env(models=name))
        return _queues[name]


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
    return queue.pipelines[0].settings if queue is not None else Settings.from_env(models=models())


def reset() -> None:
    """Forget everything (tests: a fresh server with other settings); running workers are stopped."""
    with _lock:
        for queue in _queues.values():
            queue.shutdown()
        _queues.clear()
        _previews.clear()
        _chosen.clear()
