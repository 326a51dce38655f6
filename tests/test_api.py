"""The HTTP API and the gate, against the real server (`launch.py --tunnel none`, the tiny models) over HTTP."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
import requests
from PIL import Image

from studio.core.request import GenerationRequest
from studio.core.run_card import read_run_card

from helpers import ROOT

API = "/api/v1"
QUICK = {"prompt": "a watercolor", "steps": 2, "resolution": 128, "seed": 3}
LONG = {"prompt": "a long one", "steps": 150, "resolution": 256, "seed": 4}
PASSWORD = "the right one"


@pytest.fixture(scope="module")
def server(servers) -> str:
    return servers.get(MAX_QUEUED_PER_VISITOR="1").url


@pytest.fixture(scope="module")
def locked(servers) -> str:
    """A server with a password, behind one proxy (as with ngrok): each test's guesses come from an address of
    their own (X-Forwarded-For), so no test inherits another's back-off."""
    return servers.get(MAX_QUEUED_PER_VISITOR="1", APP_PASSWORD=PASSWORD, TRUSTED_PROXY_HOPS="1").url


def photo() -> bytes:
    return (ROOT / "assets" / "sample_scene.png").read_bytes()


def submit(base: str, request: dict, image: bytes | None = None, **kwargs) -> requests.Response:
    return requests.post(f"{base}{API}/jobs", files={"image": ("scene.png", image or photo(), "image/png")},
                         data={"request": json.dumps(request)}, timeout=60, **kwargs)


def wait_for(base: str, job_id: str, done: callable, timeout_s: float = 180, **kwargs) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = requests.get(f"{base}{API}/jobs/{job_id}", timeout=30, **kwargs).json()
        if done(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def ended(status: dict) -> bool:
    return status["state"] in ("done", "failed", "cancelled")


def test_submit_poll_and_fetch_the_png_with_its_parameters(server):
    answer = submit(server, QUICK)
    assert answer.status_code == 202 and set(answer.json()) == {"id", "state", "position", "eta_s"}
    status = wait_for(server, answer.json()["id"], ended)
    assert status["state"] == "done" and status["seed"] == 3 and status["images"], status
    png = requests.get(server + status["images"][0], timeout=30)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as image:
        parameters = image.text["parameters"]
        assert image.size == tuple(status["run_card"]["size"])
    assert "Steps: 2," in parameters and "Seed: 3," in parameters and parameters.startswith("a watercolor")
    assert read_run_card(png.content)["request"]["prompt"] == "a watercolor"


def test_a_running_job_is_cancelled_within_a_step(server):
    job = submit(server, LONG).json()["id"]
    running = wait_for(server, job, lambda s: s["state"] == "running" and s["step"] >= 4)
    preview = requests.get(f"{server}{API}/jobs/{job}/preview", timeout=30)  # one every 3 steps
    assert preview.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(preview.content)).format == "JPEG"
    running = requests.get(f"{server}{API}/jobs/{job}", timeout=30).json()
    assert requests.delete(f"{server}{API}/jobs/{job}", timeout=30).status_code == 202
    status = wait_for(server, job, ended)
    assert status["state"] == "cancelled"
    assert status["step"] <= running["step"] + 3, (running["step"], status["step"])


def test_a_client_gets_one_running_and_its_queued_jobs_then_429_while_another_client_is_served(server):
    first = submit(server, LONG).json()["id"]
    second = submit(server, LONG).json()["id"]
    third = submit(server, LONG)
    assert third.status_code == 429 and "already have" in third.json()["error"], third.text
    stranger = {"Authorization": f"Bearer {requests.post(f'{server}{API}/token', timeout=30).json()['token']}"}
    other = submit(server, QUICK, headers=stranger)  # another client: a token of its own
    assert other.status_code == 202 and other.json()["position"] == 2
    for job in (first, second):
        requests.delete(f"{server}{API}/jobs/{job}", timeout=30)
    assert wait_for(server, other.json()["id"], ended, headers=stranger)["state"] == "done"


@pytest.mark.parametrize("request_part, image, status, message", [
    ("{not json", None, 400, "not valid JSON"),
    (json.dumps({"steps": 2, "stpes": 3, "colour": 1}), None, 422, "unknown fields: colour, stpes"),
    (json.dumps({"steps": "20"}), None, 422, "steps must be a whole number, got str"),
    (json.dumps({"scheduler": "fastest"}), None, 422, "scheduler must be one of"),
    (json.dumps(QUICK), b"these are my notes, not a picture", 422, "not an image that can be read"),
])
def test_bad_requests_get_a_4xx_that_names_the_problem(server, request_part, image, status, message):
    answer = requests.post(f"{server}{API}/jobs", files={"image": ("x.png", image or photo(), "image/png")},
                           data={"request": request_part}, timeout=60)
    assert answer.status_code == status and message in answer.json()["error"], answer.text


def test_a_job_of_another_client_is_not_found(server):
    job = submit(server, QUICK).json()["id"]
    stranger = requests.post(f"{server}{API}/token", timeout=30).json()["token"]
    assert requests.get(f"{server}{API}/jobs/{job}", headers={"Authorization": f"Bearer {stranger}"},
                        timeout=30).status_code == 404
    wait_for(server, job, ended)


def test_detect_control_info_health_and_a_valid_openapi_document(server):
    from openapi_spec_validator import validate

    form = dict(files={"image": ("scene.png", photo(), "image/png")}, data={"request": json.dumps(QUICK)},
                timeout=60)
    found = requests.post(f"{server}{API}/detect", **form).json()
    assert [(d["id"], d["class"]) for d in found["detections"]] == [(0, "circle"), (1, "square"), (2, "triangle"),
                                                                    (3, "square")]
    control = Image.open(io.BytesIO(base64.b64decode(found["control_image"].split(",", 1)[1])))
    assert list(control.size) == found["size"] == [168, 128]
    direct = requests.post(f"{server}{API}/control", **form)
    assert direct.headers["content-type"] == "image/png" and Image.open(io.BytesIO(direct.content)).size == (168, 128)
    info = requests.get(f"{server}{API}/info", timeout=30).json()
    assert set(info["presets"]) == {"quality", "fast", "turbo", "custom"} and info["queue"]["workers"] == 1
    assert info["models"]["set"] == "tiny" and info["attention"]["chosen"] == "sdpa"
    assert requests.get(f"{server}{API}/health", timeout=30).json()["status"] == "ok"
    document = requests.get(f"{server}{API}/openapi.json", timeout=30).json()
    validate(document)
    from dataclasses import fields
    assert set(document["components"]["schemas"]["Request"]["properties"]) == \
        {item.name for item in fields(GenerationRequest)}


def test_with_a_password_every_call_needs_it_and_wrong_ones_slow_down(locked):
    assert requests.get(f"{locked}{API}/health", timeout=30).status_code == 200
    assert requests.get(f"{locked}{API}/info", timeout=30).status_code == 401
    right = {"Authorization": f"Bearer {PASSWORD}"}
    assert requests.get(f"{locked}{API}/info", headers=right, timeout=30).status_code == 200
    token = requests.post(f"{locked}{API}/token", headers=right, timeout=30).json()["token"]
    assert requests.get(f"{locked}{API}/info", headers={"Authorization": f"Bearer {token}"},
                        timeout=30).status_code == 200
    assert requests.get(f"{locked}{API}/info", auth=("studio", PASSWORD), timeout=30).status_code == 200  # ngrok's
    took = []
    for guess in range(7):
        started = time.monotonic()
        answer = requests.get(f"{locked}{API}/info", headers={"Authorization": f"Bearer guess {guess}",
                                                              "X-Forwarded-For": "10.1.1.1"}, timeout=90)
        took.append(time.monotonic() - started)
        assert answer.status_code == 401 and "password" in answer.json()["error"]
    # 1 s then 2 s; asyncio's timers may fire up to a clock tick early (1.9998 s seen)
    assert all(t < 0.9 for t in took[:5]) and took[5] >= 0.98 and took[6] >= 1.98, took


def test_with_a_password_streamlits_endpoints_refuse_a_client_without_a_token(locked):
    for send in (requests.put, requests.post):
        upload = send(f"{locked}/_stcore/upload_file/some-session/some-file",
                      files={"file": ("x.png", photo(), "image/png")}, timeout=30)
        assert upload.status_code == 403 and "password" in upload.json()["error"]
    for path in ("/media/0123456789abcdef.png", "/_stcore/metrics", "/component/x/index.html"):
        assert requests.get(locked + path, timeout=30).status_code == 403, path
    token = requests.post(f"{locked}{API}/token", headers={"Authorization": f"Bearer {PASSWORD}"},
                          timeout=30).json()["token"]
    shown = requests.get(f"{locked}/media/0123456789abcdef.png", headers={"Referer": f"{locked}/?access={token}"},
                         timeout=30)
    assert shown.status_code == 404  # past the gate: Streamlit's own answer for a file it does not have
    page = requests.get(f"{locked}/?access={token}", timeout=30)
    assert "studio_access=" in page.headers["set-cookie"] and page.headers["x-frame-options"] == "SAMEORIGIN"
    assert requests.get(f"{locked}/_stcore/health", timeout=30).status_code == 200


def test_ended_jobs_are_kept_for_their_time_and_the_oldest_go_first_past_the_byte_budget(monkeypatch):
    from types import SimpleNamespace

    from studio.core.settings import Settings
    from studio.serving import api, state
    from studio.serving.jobs import Job

    monkeypatch.setattr(state, "settings", lambda: Settings(models="tiny", api_result_ttl_s=60, api_result_mb=1))
    registry = api.Registry()

    def ended(age_s: float, side: int) -> Job:
        job = Job(GenerationRequest(), None, "me")
        job.finished = time.time() - age_s
        job.result = SimpleNamespace(images=[Image.new("RGB", (side, side))])
        return job

    old, big, newer, running = ended(120, 8), ended(30, 500), ended(10, 500), Job(GenerationRequest(), None, "me")
    for job in (old, big, newer, running):
        registry.add(job, "me")
    kept = []
    for job in (old, big, newer, running):
        try:
            kept.append(registry.get(job.id, "me").job is job)
        except api.ApiError as exc:
            assert exc.status == 404
            kept.append(False)
    assert kept == [False, False, True, True]  # past its time; then the oldest ended one, over 1 MB with the newer
    with pytest.raises(api.ApiError, match="No job"):
        registry.get(newer.id, "someone else")
