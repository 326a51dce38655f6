"""The errors whose message is written for the person who asked: the page, the job queue and (later) the HTTP
API show the message as it is. Anything else is a bug: logged with its traceback, shown as a short line."""

from __future__ import annotations


class InvalidImageError(ValueError):
    """The input cannot be used as an image."""


class InvalidRequestError(ValueError):
    """A generation setting is out of range or cannot work; the message names the setting."""


class ModelLoadError(RuntimeError):
    """Weights could not be loaded; the message names the model and the ways out."""


class GenerationError(RuntimeError):
    """A run failed for a reason the person can act on; the message says how."""


class LoraError(ValueError):
    """A LoRA could not be used; the base model is unchanged and the message says why."""


class JobsBackendError(RuntimeError):
    """The job backend cannot be used (a Ray cluster that cannot be reached); the message says why and what to do."""


class TooManyJobsError(ValueError):
    """A client already has its running and queued jobs, or the queue is full; the message says which."""


EXPECTED_ERRORS = (InvalidImageError, InvalidRequestError, ModelLoadError, GenerationError, LoraError,
                   TooManyJobsError)


def short_error(exc: BaseException) -> str:
    """An unexpected error in one line: its type and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]
