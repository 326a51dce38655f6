"""The OpenAPI 3.1 document of the HTTP API (api.py). The request's schema is derived from GenerationRequest's
field metadata (kind, limits, choices, defaults, help), so the API's documentation cannot drift from the
validation it describes."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from studio.core.request import KINDS, GenerationRequest

TYPES = {"whole": {"type": "integer"}, "number": {"type": "number"}, "text": {"type": "string"},
         "switch": {"type": "boolean"}, "classes": {"type": "array", "items": {"type": "integer", "minimum": 0}},
         "ids": {"type": "array", "items": {"type": "integer", "minimum": 0}},
         "prompts": {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
                     "additionalProperties": {"type": "string"}}}


def request_schema() -> dict[str, Any]:
    """GenerationRequest as a JSON schema: every field, its type, range, choices and default; nothing else."""
    properties = {}
    for item in fields(GenerationRequest):
        meta = item.metadata
        prop: dict[str, Any] = dict(TYPES[meta["kind"]])
        if item.default is None:  # optional, or filled from the preset or the mode when left out
            prop["type"] = [prop["type"], "null"]
        if meta["limits"] is not None:
            prop["minimum"], prop["maximum"] = meta["limits"]
        if meta["choices"] is not None:
            prop["enum"] = list(meta["choices"]) + ([None] if item.default is None else [])
        if item.default is not MISSING:
            prop["default"] = item.default
        prop["description"] = " ".join(filter(None, [meta["label"], f"({KINDS[meta['kind']]})", meta["help"]]))
        properties[item.name] = prop
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


UPLOAD = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary", "description": "the photo (PNG, JPEG, WebP, GIF)"},
                   "request": {"type": "string", "description": "GenerationRequest as JSON (schema: Request)"}}}}}}
JOB_ID = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
PROBLEMS = {"400": _error("the body is not multipart, or the request part is not JSON"),
            "401": _error("the password or a token is needed"), "404": _error("no such job (for this client)"),
            "413": _error("the upload is too large"), "422": _error("a field or the image cannot be used"),
            "429": _error("this client already has its running job and queued ones, or the queue is full")}


def _operation(summary: str, ok: dict[str, Any], problems: tuple[str, ...] = ("401",), **extra: Any
               ) -> dict[str, Any]:
    return {"summary": summary, "responses": {**ok, **{code: PROBLEMS[code] for code in problems}}, **extra}


def _paths() -> dict[str, Any]:
    png = {"200": {"description": "the PNG, with its run card and A1111 text chunks",
                   "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}
    return {
        "/jobs": {"post": _operation("Submit a job", {"202": _json("queued", "#/components/schemas/Queued")},
                                     ("400", "401", "413", "422", "429"), requestBody=UPLOAD)},
        "/jobs/{job_id}": {
            "parameters": JOB_ID,
            "get": _operation("A job's state, place, progress and results. Poll at least every ABANDON_S (60 s): "
                              "a job nobody asks about for that long is cancelled",
                              {"200": _json("the job", "#/components/schemas/Job")}, ("401", "404")),
            "delete": _operation("Cancel a job (queued: at once; running: after its current step)",
                                 {"202": _json("the job", "#/components/schemas/Job")}, ("401", "404"))},
        "/jobs/{job_id}/images/{n}": {"get": _operation(
            "Image n of a finished job", png, ("401", "404"),
            parameters=[*JOB_ID, {"name": "n", "in": "path", "required": True, "schema": {"type": "integer"}}])},
        "/jobs/{job_id}/preview": {"get": _operation("The latest live preview (JPEG)", {"200": {
            "description": "JPEG", "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}},
            ("401", "404"), parameters=JOB_ID)},
        "/detect": {"post": _operation("Detections and the control image", {"200": _json(
            "detections", "#/components/schemas/Detected")}, ("400", "401", "413", "422"), requestBody=UPLOAD)},
        "/control": {"post": _operation("The control image only", png, ("400", "401", "413", "422"),
                                        requestBody=UPLOAD)},
        "/info": {"get": _operation("Models, presets (measured seconds per image), attention, GPUs, queue",
                                    {"200": {"description": "the server", "content": {"application/json": {
                                        "schema": {"type": "object"}}}}})},
        "/token": {"post": _operation("A token of this client's own (limits count per token)",
                                      {"200": _json("the token", "#/components/schemas/Token")})},
        "/health": {"get": {"summary": "Health (open)", "security": [], "responses": {"200": {
            "description": "up", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }


def _schemas() -> dict[str, Any]:
    nullable_int, nullable_num = {"type": ["integer", "null"]}, {"type": ["number", "null"]}
    return {
        "Request": request_schema(),
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Queued": {"type": "object", "properties": {"id": {"type": "string"}, "state": {"type": "string"},
                                                    "position": nullable_int, "eta_s": nullable_num}},
        "Job": {"type": "object", "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
            "position": nullable_int, "eta_s": nullable_num, "step": {"type": "integer"},
            "total": {"type": "integer"}, "message": {"type": ["string", "null"]},
            "images": {"type": "array", "items": {"type": "string"}}, "seed": nullable_int,
            "run_card": {"type": ["object", "null"]}}},
        "Detected": {"type": "object", "properties": {
            "detections": {"type": "array", "items": {"type": "object"}}, "size": {"type": "array"},
            "control_image": {"type": "string", "description": "a data: URL of the PNG"},
            "warnings": {"type": "array", "items": {"type": "string"}}}},
        "Token": {"type": "object", "properties": {"token": {"type": "string"}, "expires": {"type": "integer"}}},
    }


def document(base: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "YOLO ControlNet Studio", "version": "1",
                 "description": "Jobs on the server's queue, shared with the page. With APP_PASSWORD set, send "
                                "'Authorization: Bearer <password or token>'."},
        "servers": [{"url": base}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
