"""A batch from the page: many photos (or a zip of them), one request, one job each through the job queue, and one
zip of the results at the end.

The batch submits one job at a time, so it holds one place in the queue like any visitor's run and other
visitors are served between its photos. Photo number i gets the seed `seed + i`. A photo that cannot be used is
counted and named in the zip's `errors.txt`; the others go on. The page polls the batch; a batch nobody polls
for the queue's `abandon_s` loses its running job to the reaper, as any closed tab's run does, and stops.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
import uuid
import zipfile
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from studio.core.errors import EXPECTED_ERRORS, TooManyJobsError
from studio.core.image_io import load_image
from studio.core.request import SEED_MAX, GenerationRequest
from studio.core.run_card import png_with_run_card
from studio.serving.batch import SUFFIXES
from studio.serving.jobs import CANCELLED, DONE, Job, JobQueue

log = logging.getLogger(__name__)

MAX_PHOTOS = 200
WAIT_S = 0.2


class BatchError(ValueError):
    """The uploads cannot make a batch (no pictures, too many, a zip that cannot be read); the message says why."""


def photos_of(uploads: list[tuple[str, bytes]], max_bytes: int) -> list[tuple[str, bytes]]:
    """The pictures among the uploads, a zip's unpacked (its pictures in name order, folders' and hidden files
    skipped), each at most `max_bytes` once unpacked."""
    photos: list[tuple[str, bytes]] = []
    for name, data in uploads:
        if name.lower().endswith(".zip"):
            photos += zip_photos(name, data, max_bytes)
        else:
            photos.append((name, data))
        if len(photos) > MAX_PHOTOS:
            raise BatchError(f"A batch takes at most {MAX_PHOTOS} photos; split it into smaller ones.")
    if not photos:
        raise BatchError("There are no pictures among these files (PNG, JPEG, WebP or GIF, or a zip of them).")
    return photos


def zip_photos(name: str, data: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = sorted((m for m in archive.infolist() if not m.is_dir()), key=lambda m: m.filename)
            pictures = [m for m in members if PurePosixPath(m.filename).suffix.lower() in SUFFIXES
                        and not PurePosixPath(m.filename).name.startswith(".")][:MAX_PHOTOS + 1]
            too_large = [m.filename for m in pictures if m.file_size > max_bytes]
            if too_large:
                raise BatchError(f"'{too_large[0][:80]}' in {name} is larger than {max_bytes // 2**20} MB unpacked.")
            return [(PurePosixPath(m.filename).name, archive.read(m)) for m in pictures]
    except zipfile.BadZipFile as exc:
        raise BatchError(f"'{name[:80]}' is not a zip file that can be read.") from exc


class BatchRun:
    """One batch on its way: `done` of `total` made, `failed` lines, the running `job`, and `archive` (the zip's
    bytes) once it has ended. Read from any thread; written by its own thread, and by `cancel`."""

    def __init__(self, queue: JobQueue, photos: list[tuple[str, bytes]], request: GenerationRequest,
                 owner: str) -> None:
        seed = request.seed if request.seed is not None else random.randint(0, SEED_MAX)
        # Object ids and their prompts name one photo's detections: each photo has its own.
        self.request = replace(request, seed=seed, objects=None, object_prompts=None, object_negative_prompts=None)
        self.queue, self.photos, self.owner = queue, photos, owner
        self.id = uuid.uuid4().hex[:8]
        self.total, self.done = len(photos), 0
        self.failed: list[str] = []
        self.job: Job | None = None
        self.state = "running"
        self.archive: bytes | None = None
        self.seen = time.time()
        self._cancel = threading.Event()
        self._zip_buffer = io.BytesIO()
        self._thread = threading.Thread(target=self._run, name=f"batch-{self.id}", daemon=True)

    def start(self) -> BatchRun:
        self._thread.start()
        return self

    @property
    def active(self) -> bool:
        return self.state == "running"

    @property
    def handled(self) -> int:
        """Photos made or failed so far: the `n` of the page's "n of total"."""
        return self.done + len(self.failed)

    def touch(self) -> None:
        """Its page still looks: the running job is kept alive for it, and the ended batch's zip kept
        (state.batch lets it go `abandon_s` after its page last looked)."""
        self.seen = time.time()

    def cancel(self) -> None:
        self._cancel.set()
        if self.job is not None:
            self.queue.cancel(self.job)

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            with zipfile.ZipFile(self._zip_buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed
                for index, (name, data) in enumerate(self.photos):
                    if self._cancel.is_set():
                        break
                    self.photos[index] = (name, b"")  # a photo's bytes go once its job has them
                    self._one(archive, index, name, data)
                    del data
                if self.failed:
                    archive.writestr("errors.txt", "\n".join(self.failed) + "\n")
        except Exception:  # a bug: the batch must end, and say so
            log.exception("batch %s failed", self.id)
            self.failed.append("The batch stopped unexpectedly (it was logged).")
        self.archive, self.photos = self._zip_buffer.getvalue(), []
        self._zip_buffer = io.BytesIO()
        self.state = "cancelled" if self._cancel.is_set() else "done"

    def _one(self, archive: zipfile.ZipFile, index: int, name: str, data: bytes) -> None:
        settings = self.queue.pipelines[0].settings
        seed = (self.request.seed + index) % (SEED_MAX + 1)  # type: ignore[operator]
        try:
            image = load_image(data, settings.max_pixels)
        except EXPECTED_ERRORS as exc:
            self.failed.append(f"{name}: {exc}")
            return
        job = self._submit(image, replace(self.request, seed=seed))
        if job is None:
            return
        if job.state == DONE and job.result is not None:
            for i, picture in enumerate(job.result.images):
                suffix = f"-{i + 1}" if len(job.result.images) > 1 else ""
                png = png_with_run_card(picture, job.result.run_card, i)
                archive.writestr(f"{PurePosixPath(name).stem}-{job.result.seeds[i]}{suffix}.png", png)
            self.done += 1
        elif job.state == CANCELLED:
            self._cancel.set()  # cancelled by its visitor, or by the reaper once nobody looked
        else:
            self.failed.append(f"{name}: {job.message}")

    def _submit(self, image: Any, request: GenerationRequest) -> Job | None:
        """Queue one photo's job and wait for it to end, keeping it alive while the page looks; None when the batch
        was cancelled before its turn."""
        while not self._cancel.is_set():
            try:
                self.job = self.queue.submit(image, request, owner=self.owner, batch=self.id)
                break
            except TooManyJobsError:  # the visitor's own runs from the page go first
                time.sleep(WAIT_S)
        else:
            return None
        job = self.job
        while job.active:
            if time.time() - self.seen < self.queue.abandon_s:
                job.touch()
            time.sleep(WAIT_S)
        return job
