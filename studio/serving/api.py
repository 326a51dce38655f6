"""The HTTP API under /api/v1, served by the page's own server and queue (server.py): scripts submit jobs, follow
them (state, queue position, ETA, step, live preview), cancel them and fetch the PNGs, each with its run card and
A1111 text inside. One queue for the page and the API: their jobs wait in one line and see each other's places.

With APP_PASSWORD set, every call but /health needs `Authorization: Bearer <password or token>` (a token from
POST /api/v1/token); wrong ones are answered 401, later and later (access.Backoff, per client). Per client (its
token; its address without a password): one running job and MAX_QUEUED_PER_VISITOR queued, 429 beyond.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from studio.core.errors import EXPECTED_ERRORS, InvalidImageError, InvalidRequestError, TooManyJobsError
from studio.core.image_io import encoded_image, load_image
from studio.core.presets import PRESETS
from studio.core.request import request_from
from studio.core.run_card import png_with_run_card, public_source
from studio.serving import access, openapi, state
from studio.serving.jobs import DONE, Job, JobQueue
from studio.serving.previews import image_bytes

API = "/api/v1"
log = logging.getLogger(__name__)
MAX_REQUEST_JSON = 64 * 1024


class ApiError(Exception):
    """An answer other than success: its HTTP status and a message for the person reading it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Kept:
    """An API job, whose client it belongs to, and its PNGs (encoded once, at the first download)."""

    job: Job
    owner: str
    pngs: dict[int, bytes] = field(default_factory=dict)


class Registry:
    """The API's jobs by id: kept API_RESULT_TTL_S after they end. Everything a kept job holds (its photo, its
    images, their PNGs, a live preview) counts toward API_RESULT_MB, in whatever state the job is; past it, the
    oldest ended jobs go first (a waiting or running job is bounded by the queue's per-visitor limits)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, Kept] = OrderedDict()

    def add(self, job: Job, owner: str) -> None:
        self._kept[job.id] = Kept(job, owner)
        self.prune()

    def get(self, job_id: str, owner: str) -> Kept:
        self.prune()
        kept = self._kept.get(job_id)
        if kept is None or kept.owner != owner:  # another client's job is nobody's business: not found
            raise ApiError(404, f"No job {job_id[:40]!r} here (jobs are kept {state.settings().api_result_ttl_s} s "
                                "after they end).")
        kept.job.touch()  # a client that polls keeps its job; one that went away has it cancelled (ABANDON_S)
        return kept

    def held_bytes(self) -> int:
        return sum(map(_held_bytes, self._kept.values()))

    def prune(self) -> None:
        settings = state.settings()
        cutoff = time.time() - settings.api_result_ttl_s
        for job_id in [i for i, k in self._kept.items() if k.job.finished and k.job.finished < cutoff]:
            del self._kept[job_id]
        ended = [k for k in self._kept.values() if k.job.finished]
        held = self.held_bytes()
        while ended and held > settings.api_result_mb * 2**20:
            oldest = ended.pop(0)
            held -= _held_bytes(oldest)
            del self._kept[oldest.job.id]


def _held_bytes(kept: Kept) -> int:
    """What a kept job holds in memory: its photo, its live preview, its images and their encoded PNGs."""
    job = kept.job
    images = job.result.images if job.result else []
    pictures = [image for image in (job.image, job.preview, *images) if image is not None]
    return sum(map(image_bytes, pictures)) + sum(map(len, kept.pngs.values()))


REGISTRY = Registry()


def client_of(request: Request) -> str:
    return access.client_key(request.headers.get("x-forwarded-for"), request.client.host if request.client else None,
                             state.setting("trusted_proxy_hops"))


def credential_of(request: Request) -> str | None:
    """A bearer token, or the password of HTTP basic auth (what ngrok's basic auth in front of the tunnel sends)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2] or None
        except (ValueError, UnicodeDecodeError):
            return None
    return None


async def authorize(request: Request) -> str:
    """The owner a call counts as; 401 without the password or a token. A valid token passes at once; a password
    guess waits for its client's turn (access.Backoff), and one more than a minute away is refused unchecked."""
    credential, client = credential_of(request), client_of(request)
    if access.password() is None or access.valid_token(credential):
        return access.owner_of(credential, client)
    wait = access.BACKOFF.turn(client, wait=True)
    if wait is None:
        raise ApiError(429, f"Too many wrong passwords from {client}: try again in "
                            f"{math.ceil(access.BACKOFF.wait_s(client))} s.")
    await asyncio.sleep(wait)  # held back without holding a thread
    if access.is_password(credential):
        access.BACKOFF.succeeded(client)
        return access.owner_of(credential, client)
    log.warning("wrong API password (failure %d in a row from %s)", access.BACKOFF.failures(client), client)
    raise ApiError(401, "This server needs its password: send 'Authorization: Bearer <password or token>'.")


def endpoint(handler: Callable[[Request, str], Awaitable[Response]], *, open_: bool = False
             ) -> Callable[[Request], Awaitable[Response]]:
    """A route that authorizes first and answers every expected problem as JSON with its status."""

    async def call(request: Request) -> Response:
        try:
            owner = "" if open_ else await authorize(request)
            return await handler(request, owner)
        except ApiError as exc:
            return refused(request, exc.status, exc.message)
        except TooManyJobsError as exc:
            return refused(request, 429, str(exc))
        except (InvalidImageError, InvalidRequestError) as exc:
            return refused(request, 422, str(exc))
        except EXPECTED_ERRORS as exc:
            return refused(request, 503, str(exc))
        except Exception:  # a bug: the client gets a message, the log the traceback
            log.exception("API %s %s failed", request.method, request.url.path)
            return JSONResponse({"error": "The server failed unexpectedly; it was logged."}, 500)

    return call


def refused(request: Request, status: int, message: str) -> JSONResponse:
    """A refusal as JSON, and a line in the log (its path and reason: never a credential or a prompt)."""
    log.info("API %s %s: %d %s", request.method, request.url.path, status, message[:200])
    return JSONResponse({"error": message}, status)


async def image_and_request(request: Request) -> tuple[Image.Image, Any]:
    """The multipart body's `image` (a file) and `request` (JSON of GenerationRequest's fields), both checked."""
    settings = state.settings()
    limit = settings.max_upload_mb * 2**20
    length = request.headers.get("content-length") or "0"
    if not length.isdigit():
        raise ApiError(400, "The Content-Length header must be a whole number of bytes.")
    if int(length) > limit + MAX_REQUEST_JSON:
        raise ApiError(413, f"The upload is larger than {settings.max_upload_mb} MB (MAX_UPLOAD_MB).")
    try:
        form = await capped(request, limit + MAX_REQUEST_JSON).form(max_files=1, max_fields=1,
                                                                    max_part_size=MAX_REQUEST_JSON)
    except ApiError:
        raise
    except Exception as exc:  # Starlette's own message says what is wrong with the body
        raise ApiError(400, f"The body must be multipart/form-data with 'image' and 'request' parts ({exc}).") from None
    upload, raw = form.get("image"), form.get("request", "{}")
    if upload is None or isinstance(upload, str):
        raise ApiError(422, "The 'image' part is missing: send the photo as a file named 'image'.")
    data = await upload.read()
    if len(data) > limit:
        raise ApiError(413, f"The upload is larger than {settings.max_upload_mb} MB (MAX_UPLOAD_MB).")
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"The 'request' part is not valid JSON: {exc}.") from None
    generation = request_from(values)
    image = await run_in_threadpool(load_image, data, settings.max_pixels, settings.max_aspect)
    return image, generation


def capped(request: Request, limit: int) -> Request:
    """The request with its body refused (413) as soon as more than `limit` bytes arrive: a chunked upload has no
    Content-Length to check first, and Starlette's form parser would spool all of it to disk before we saw it."""
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise ApiError(413, f"The upload is larger than {limit // 2**20} MB (MAX_UPLOAD_MB).")
        return message

    return Request(request.scope, receive)


def status(job: Job, queue: JobQueue) -> dict[str, Any]:
    """What a client sees of a job."""
    result = job.result if job.state == DONE else None
    eta = queue.eta_s(job)
    return {"id": job.id, "state": job.state, "position": queue.position(job),
            "eta_s": round(eta, 1) if eta is not None else None, "step": job.step, "total": job.total,
            "message": job.message,
            "images": [f"{API}/jobs/{job.id}/images/{i}" for i, hidden in enumerate(result.flagged) if not hidden]
            if result else [],
            "seed": job.result.seed if job.result else None, "run_card": job.result.run_card if job.result else None}


async def submit(request: Request, owner: str) -> Response:
    image, generation = await image_and_request(request)
    queue = await run_in_threadpool(state.jobs)
    job = queue.submit(image, generation, owner=owner)
    REGISTRY.add(job, owner)
    return JSONResponse({k: v for k, v in status(job, queue).items() if k in ("id", "state", "position", "eta_s")},
                        202)


async def job_status(request: Request, owner: str) -> Response:
    kept = REGISTRY.get(request.path_params["job_id"], owner)
    return JSONResponse(status(kept.job, state.jobs()))


async def cancel(request: Request, owner: str) -> Response:
    kept = REGISTRY.get(request.path_params["job_id"], owner)
    queue = state.jobs()
    queue.cancel(kept.job)
    return JSONResponse(status(kept.job, queue), 202)


async def job_image(request: Request, owner: str) -> Response:
    kept = REGISTRY.get(request.path_params["job_id"], owner)
    index, result = request.path_params["n"], kept.job.result
    if kept.job.state != DONE or result is None:
        raise ApiError(409, f"The job is {kept.job.state}: its images come when it is done.")
    if not 0 <= index < len(result.images) or result.flagged[index]:
        raise ApiError(404, f"The job has no image {index} (it made {len(result.images)}; flagged ones are hidden).")
    if index not in kept.pngs:
        kept.pngs[index] = await run_in_threadpool(png_with_run_card, result.images[index], result.run_card, index)
    return Response(kept.pngs[index], media_type="image/png")


async def job_preview(request: Request, owner: str) -> Response:
    kept = REGISTRY.get(request.path_params["job_id"], owner)
    if kept.job.preview is None:
        raise ApiError(404, f"The job is {kept.job.state}: its images, not previews, are what it keeps."
                       if kept.job.finished else "No live preview yet: one comes every 3 denoising steps.")
    return Response(jpeg(kept.job.preview), media_type="image/jpeg")


def jpeg(image: Image.Image, quality: int = 80) -> bytes:
    return encoded_image(image.convert("RGB"), "JPEG", quality=quality)


def png(image: Image.Image) -> bytes:
    return encoded_image(image, "PNG")


class PreviewPool:
    """`/detect` and `/control` decode a photo and run the detector outside the job queue, so they get limits of
    their own: at most `SLOTS` at once for the whole server (the rest wait with their body still unread, so a
    waiting call holds no photo), and per visitor the queue's own share (one running, MAX_QUEUED_PER_VISITOR
    waiting); beyond it, 429."""

    SLOTS = 2

    def __init__(self) -> None:
        self._slots: asyncio.Semaphore | None = None
        self._calls: dict[str, int] = {}

    async def run(self, request: Request, owner: str) -> Any:
        share = 1 + state.settings().max_queued_per_visitor
        if self._calls.get(owner, 0) >= share:
            raise ApiError(429, f"You already have {share} detection{'s' if share > 1 else ''} on the way; wait "
                                "for an answer first.")
        self._slots = self._slots or asyncio.Semaphore(self.SLOTS)
        self._calls[owner] = self._calls.get(owner, 0) + 1
        try:
            async with self._slots:
                image, generation = await image_and_request(request)
                queue = await run_in_threadpool(state.jobs)
                return await run_in_threadpool(queue.pipelines[0].preview, image, generation)
        finally:
            self._calls[owner] -= 1
            if not self._calls[owner]:
                del self._calls[owner]


PREVIEWS = PreviewPool()


async def detect(request: Request, owner: str) -> Response:
    preview = await PREVIEWS.run(request, owner)
    detections = [{"id": d.id, "class": d.label, "class_id": d.class_id, "confidence": round(d.confidence, 4),
                   "box": [round(v, 1) for v in d.box], "polygon": [list(p) for p in d.polygon] if d.polygon else None}
                  for d in preview.detections]
    control = "data:image/png;base64," + base64.b64encode(png(preview.control_image)).decode()
    return JSONResponse({"detections": detections, "size": list(preview.size), "control_image": control,
                         "warnings": preview.warnings})


async def control(request: Request, owner: str) -> Response:
    preview = await PREVIEWS.run(request, owner)
    return Response(png(preview.control_image), media_type="image/png")


async def info(request: Request, owner: str) -> Response:
    queue = await run_in_threadpool(state.jobs)
    pipe = queue.pipelines[0]
    return JSONResponse({
        "models": {key: public_source(source) for key, source in pipe.model_ids.items()},
        "presets": {name: {"label": p.label, "scheduler": p.scheduler, "steps": p.steps,
                           "guidance_scale": p.guidance_scale, "seconds_per_image": {
                               size: round(per_step * p.steps, 3) for (preset, size), per_step
                               in queue.step_seconds.items() if preset == name}}
                    for name, p in PRESETS.items()},
        "attention": {"chosen": pipe.attention.chosen, "why": pipe.attention.why, "in_use": pipe.attention_in_use,
                      "candidates": [{"name": c.name, "usable": c.usable, "reason": c.reason}
                                     for c in pipe.attention.candidates]},
        "gpus": queue.devices(), "queue": {"running": queue.running, "waiting": queue.waiting,
                                           "workers": len(queue.workers)}})


async def health(request: Request, owner: str) -> Response:
    """Open to all: the launcher waits here until the models are "ready" (loaded and warmed up)."""
    return JSONResponse({"status": "ok", "models": state.readiness()})


async def token(request: Request, owner: str) -> Response:
    """A token of its own for a client shown the password (per-visitor limits count per token), valid for
    TOKEN_HOURS; shown a token, that same token (a token cannot extend its life or multiply its share)."""
    minted = access.mint(shown=credential_of(request))
    return JSONResponse({"token": minted, "expires": int(minted.partition(".")[0])})


async def schema(request: Request, owner: str) -> Response:
    return JSONResponse(openapi.document(API))


def routes() -> list[BaseRoute]:
    return [Mount(API, routes=[
        Route("/jobs", endpoint(submit), methods=["POST"]),
        Route("/jobs/{job_id}", endpoint(job_status), methods=["GET"]),
        Route("/jobs/{job_id}", endpoint(cancel), methods=["DELETE"]),
        Route("/jobs/{job_id}/images/{n:int}", endpoint(job_image), methods=["GET"]),
        Route("/jobs/{job_id}/preview", endpoint(job_preview), methods=["GET"]),
        Route("/detect", endpoint(detect), methods=["POST"]),
        Route("/control", endpoint(control), methods=["POST"]),
        Route("/info", endpoint(info), methods=["GET"]),
        Route("/token", endpoint(token), methods=["POST"]),
        Route("/health", endpoint(health, open_=True), methods=["GET"]),
        Route("/openapi.json", endpoint(schema, open_=True), methods=["GET"]),
    ])]
