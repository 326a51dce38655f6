"""What one API call may hold (studio/serving/api.py): an upload refused while it streams in, detect/control calls
bounded for the server and per visitor, and every kept job's bytes counted, in whatever state it ended."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image
from starlette.requests import Request

from studio.core.request import GenerationRequest
from studio.core.settings import Settings
from studio.serving import api, state
from studio.serving.jobs import CANCELLED, DONE, FAILED, Job


@pytest.fixture
def settings(monkeypatch):
    chosen = Settings(max_upload_mb=2, max_queued_per_visitor=1, api_result_mb=1)
    monkeypatch.setattr(state, "settings", lambda: chosen)
    return chosen


def chunked_upload(sent: list[int], megabytes: int = 40) -> Request:
    """A chunked multipart upload (no Content-Length) of `megabytes`, counting the chunks the server took."""
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'

    async def receive() -> dict:
        sent.append(1)
        return {"type": "http.request", "body": head if len(sent) == 1 else b"\0" * 2**16,
                "more_body": len(sent) < megabytes * 16}

    scope = {"type": "http", "method": "POST", "path": "/api/v1/jobs", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"transfer-encoding", b"chunked")]}
    return Request(scope, receive)


def test_a_chunked_upload_is_refused_once_it_passes_the_limit_not_after_it_was_read(settings):
    sent: list[int] = []
    with pytest.raises(api.ApiError) as refused:
        asyncio.run(api.image_and_request(chunked_upload(sent)))
    assert refused.value.status == 413 and "2 MB" in refused.value.message
    assert len(sent) * 2**16 <= 2 * 2**20 + api.MAX_REQUEST_JSON + 2 * 2**16, "read up to the limit, no further"


def test_detect_calls_are_bounded_for_the_server_and_per_visitor(settings, monkeypatch):
    running, most = [0], [0]

    async def slow_preview(request: Request) -> tuple:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.05)
        running[0] -= 1
        raise api.ApiError(422, "stop here")  # the photo's decode and the detector are not what is tested

    monkeypatch.setattr(api, "image_and_request", slow_preview)
    pool = api.PreviewPool()

    async def one(owner: str) -> int:
        try:
            await pool.run(None, owner)
        except api.ApiError as exc:
            return exc.status
        return 200

    async def everyone() -> list[int]:
        return list(await asyncio.gather(*(one(owner) for owner in ["a"] * 3 + ["b", "c", "d", "e"])))

    answers = asyncio.run(everyone())
    assert answers[:3] == [422, 422, 429], "a visitor's share: one running and MAX_QUEUED_PER_VISITOR waiting"
    assert answers[3:] == [422] * 4 and most[0] == api.PreviewPool.SLOTS


def job(state_: str, side: int) -> Job:
    ended = Job(GenerationRequest(), Image.new("RGB", (side, side)), owner="a")
    ended.end(state_)
    return ended


def test_every_kept_job_counts_toward_the_byte_bound_and_the_oldest_ended_go_first(settings):
    registry = api.Registry()
    done = job(DONE, 400)  # 480 KB of photo kept beside its result
    registry.add(done, "a")
    assert registry.held_bytes() == 400 * 400 * 3
    for ended in (job(CANCELLED, 2000), job(FAILED, 2000)):
        assert ended.image is None
        registry.add(ended, "a")
    assert registry.held_bytes() == 400 * 400 * 3
    second = job(DONE, 400)
    registry.add(second, "a")  # 960 KB: under 1 MB
    third = job(DONE, 400)
    registry.add(third, "a")  # over: the oldest ended job goes
    with pytest.raises(api.ApiError):
        registry.get(done.id, "a")
    assert registry.get(third.id, "a").job is third and registry.held_bytes() <= 2**20


def form_request(parts: list[tuple[str, str | None, bytes]], headers: list | None = None) -> Request:
    """A multipart request of (name, file name or None, content) parts, sent in one piece."""
    body = b"".join(b'--b\r\nContent-Disposition: form-data; name="' + name.encode() + b'"'
                    + (b'; filename="' + filename.encode() + b'"' if filename else b"") + b"\r\n\r\n" + content
                    + b"\r\n" for name, filename, content in parts) + b"--b--\r\n"
    sent = [False]

    async def receive() -> dict:
        first, sent[0] = not sent[0], True
        return {"type": "http.request", "body": body if first else b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/api/v1/jobs", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b"), *(headers or [])]}
    return Request(scope, receive)


@pytest.mark.parametrize("parts, headers, status, message", [
    ([("image", "x.png", b"png"), ("request", "r.json", b"{}")], None, 400, "Too many files"),
    ([("image", "x.png", b"png")], [(b"content-length", b"lots")], 400, "Content-Length header must be a whole"),
    ([("image", None, b"png")], None, 422, "'image' part is missing"),
    ([("image", "x.png", b"png"), ("request", None, b"\xff\xfe")], None, 400, "not valid JSON"),
])
def test_malformed_api_bodies_are_a_4xx_that_names_the_problem(settings, parts, headers, status, message):
    with pytest.raises(api.ApiError) as refused:
        asyncio.run(api.image_and_request(form_request(parts, headers)))
    assert refused.value.status == status and message in refused.value.message, refused.value.message


def test_api_refusals_and_failures_are_logged_without_the_request(settings, caplog):
    async def broken(request: Request, owner: str):
        raise KeyError("a bug")

    async def refusing(request: Request, owner: str):
        raise api.ApiError(404, "No job 'x' here.")

    scope = {"type": "http", "method": "GET", "path": "/api/v1/jobs/x", "query_string": b"",
             "headers": [(b"authorization", b"Bearer secret-guess")]}
    with caplog.at_level("INFO", logger="studio.serving.api"):
        crashed = asyncio.run(api.endpoint(broken, open_=True)(Request(scope)))
        missing = asyncio.run(api.endpoint(refusing, open_=True)(Request(scope)))
    assert crashed.status_code == 500 and b"it was logged" in crashed.body
    assert missing.status_code == 404
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "API GET /api/v1/jobs/x failed" and caplog.records[0].exc_info[0] is KeyError
    assert lines[1] == "API GET /api/v1/jobs/x: 404 No job 'x' here."
    assert "secret-guess" not in caplog.text
