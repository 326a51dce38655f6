"""The page's form table (studio/page/form.py) both ways, and the server's saved settings (saved_settings.py)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from studio.core.request import GenerationRequest
from studio.page import form
from studio.serving.saved_settings import MAX_BYTES, SavedSettings

CONTEXT = form.Context({0: "circle", 1: "square", 2: "triangle"}, "path:/photos/scene.png")


def test_every_request_field_has_a_widget_row_or_a_conversion():
    """A new request field needs one row in FORM (or a conversion, or NOT_ON_PAGE): this names the one without."""
    rows = {widget.key for widget in form.FORM}
    missing = [item.name for item in fields(GenerationRequest)
               if item.name not in rows and item.name not in form.CONVERTED_FIELDS]
    assert missing == []
    converted_keys = {key for item in form.CONVERTED for key in item.defaults}
    assert not (rows - {item.name for item in fields(GenerationRequest)} - converted_keys), "rows name widgets"


def test_each_rows_callback_is_a_rule_and_each_enabled_test_reads_the_widgets():
    from studio.page import rules

    page = form.defaults(GenerationRequest.preset)
    for widget in form.FORM:
        assert widget.on_change is None or callable(getattr(rules, widget.on_change)), widget.key
        assert widget.enabled is None or isinstance(widget.enabled(page), bool), widget.key
    assert not form.guided({**page, "guidance_scale": 1.0}) and form.guided({**page, "guidance_scale": 1.5})


@pytest.mark.parametrize("values", [
    {},
    {"prompt": "a barn", "preset": "turbo", "seed": 7, "width": 640, "height": 448, "control_start": 0.1,
     "control_end": 0.8, "lora": "styles/ink.safetensors", "control_source": "edge_map", "detect_classes": (0, 2),
     "control_classes": (1,), "regenerate": "objects", "objects": (1, 3), "object_prompts": {3: "a cat"},
     "canny_low": 80, "max_objects": 4},
    {"find": "the door, a logo", "control_classes": (1,), "control_mode": "objects"},
])
def test_a_request_shown_in_the_widgets_reads_back_as_the_same_request(values):
    wanted = GenerationRequest(**values)
    page = form.defaults(GenerationRequest.preset)
    page.update(form.widget_values({f.name: getattr(wanted, f.name) for f in fields(wanted)}, page, CONTEXT))
    assert form.request_of(page, CONTEXT) == wanted


def test_the_page_opens_on_the_requests_defaults_with_the_presets_fills():
    opened = form.defaults("fast")
    request = GenerationRequest(preset="fast")
    assert (opened["scheduler"], opened["steps"], opened["guidance_scale"]) == \
        (request.scheduler, request.steps, request.guidance_scale)
    assert form.request_of(opened, CONTEXT) == GenerationRequest(preset="fast", prompt=form.PAGE_ONLY["prompt"])


def test_saved_settings_are_kept_per_visitor_bounded_and_expiring():
    now = [0.0]
    saved = SavedSettings(most=2, keep_s=60, clock=lambda: now[0])
    assert saved.save("a", {"prompt": "one"}) and saved.save("b", {"prompt": "two"})
    assert saved.load("a") == {"prompt": "one"} and saved.load("nobody") is None
    saved.save("c", {"prompt": "three"})
    assert saved.load("a") is None and len(saved) == 2, "the least recently saved went first"
    now[0] = 61
    assert saved.load("b") is None, "expired"
    assert not saved.save("c", {"prompt": "x" * MAX_BYTES}) and saved.load("c") is None, "too large: not kept"
