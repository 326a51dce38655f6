"""Tripwires: the library code this project copies, overrides or leans on, fingerprinted.

When diffusers, Streamlit or Ultralytics change one of these, this test fails with what to re-check, instead of
the app quietly giving other pixels. After re-checking (and adapting the project's copy), update the fingerprint
with the value the failure prints.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest

TRIPWIRES = {
    "diffusers.schedulers.scheduling_unipc_multistep:UniPCMultistepScheduler.multistep_uni_c_bh_update":
        ("5114847cda037aa5", "studio/engine/schedulers.py copies diffusers' UniC corrector step for step"),
    "diffusers.schedulers.scheduling_unipc_multistep:UniPCMultistepScheduler.set_timesteps":
        ("572971a7a1864352", "AsyncUniPCMultistepScheduler moves the sigmas and sets the begin index after it"),
    "diffusers.schedulers.scheduling_lcm:LCMScheduler.step":
        ("3753f050266d0693", "AsyncLCMScheduler swaps in the host timesteps and adds diffusers' noise itself"),
    "diffusers.schedulers.scheduling_tcd:TCDScheduler.step":
        ("9e8349da12da159a", "AsyncTCDScheduler swaps in the host timesteps and adds diffusers' noise itself"),
    "diffusers.utils.torch_utils:randn_tensor":
        ("df0b4dc6670c0f08", "the LCM/TCD steps draw every step's noise ahead as randn_tensor would"),
    "diffusers.pipelines.controlnet.pipeline_controlnet_inpaint:StableDiffusionControlNetInpaintPipeline."
    "prepare_mask_latents":
        ("71a7905d3b1855f3", "studio/engine/pipelines.py overrides it to skip an unused VAE encode"),
    "diffusers.pipelines.controlnet.pipeline_controlnet_inpaint:StableDiffusionControlNetInpaintPipeline."
    "_encode_vae_image":
        ("02a6fb7ec5178f92", "studio/engine/pipelines.py keeps its latent distribution per photo and samples it with "
                             "each image's generator, as diffusers does"),
    "diffusers.pipelines.controlnet.pipeline_controlnet_inpaint:StableDiffusionControlNetInpaintPipeline."
    "__call__":
        ("f539b03ba67837ab", "studio/engine/soft_edit.py rewrites the loop's `mask` (a callback tensor input) in place "
                             "after each step, for the 4-channel blend of the next"),
    "diffusers.pipelines.pipeline_utils:DiffusionPipeline._execution_device.fget":
        ("d22c75a36f6cce47", "studio/engine/pipelines.py answers it with the device the project set (no offloading "
                             "hooks to look for)"),
    "diffusers.models.attention_processor:AttnProcessor2_0.__call__":
        ("b0b61b163eca9d2f", "attention_backend.FlashAttnProcessor follows its steps with flash-attn's kernel, and "
                             "regional_attention.shared_query with a batch of regions"),
    "diffusers.models.attention_processor:Attention.forward":
        ("256763aa8fcb3fc3", "region_masks reach RegionalAttention as a cross_attention_kwargs entry its __call__ "
                             "names (forward drops the ones it does not)"),
    "diffusers.models.controlnets.controlnet:ControlNetConditioningEmbedding.forward":
        ("6be94a2e0eab94e3", "control_embedding.EmbeddingPerImage reuses its output for the same input: it must stay a "
                             "function of the control image and the weights alone"),
    "diffusers.models.controlnets.controlnet:ControlNetModel.forward":
        ("c094ad4e4b61f73b", "control_embedding.EmbeddingPerImage expects one embedding call per ControlNet call, on "
                             "the `controlnet_cond` the pipeline passes unchanged at every step"),
    "diffusers.utils.import_utils:is_xformers_available":
        ("6dd8fbb71141ff9f", "attention_backend.quarantine sets diffusers' private _xformers_available flag"),
    "ultralytics.utils.events:Events.__init__":
        ("f31302a8e8d8b4e5", "YOLO_OFFLINE=1 must keep Ultralytics' usage events off (studio/engine/loading.py)"),
}
# Values, not functions: a private flag and a hidden Streamlit option the project sets.
ATTRIBUTES = {
    "diffusers.utils.import_utils:_xformers_available": "attention_backend.quarantine writes it",
    "diffusers.utils.import_utils:_flash_attn_available": "attention_backend.quarantine writes it",
}
STREAMLIT_OPTIONS = {  # hidden options .streamlit/config.toml sets
    "runner.postScriptGC": "turned off to keep its garbage collection from starving the job workers",
    "global.minCachedMessageSize": "lowered so that a rerun sends hashes, not the page, over a metered tunnel",
}


def resolve(name: str):
    module, _, path = name.partition(":")
    found = importlib.import_module(module)
    for part in path.split("."):
        found = getattr(found, part)
    return found


def fingerprint(function) -> str:
    """The function's source, each line stripped, hashed: a changed body changes it, a moved file does not."""
    source = "\n".join(line.strip() for line in inspect.getsource(function).splitlines() if line.strip())
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", TRIPWIRES)
def test_copied_and_overridden_library_code_is_what_the_project_was_written_against(name):
    expected, why = TRIPWIRES[name]
    found = fingerprint(resolve(name))
    assert found == expected, f"{name} changed (fingerprint {found}): re-check it, because {why}."


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_private_library_flags_the_project_sets_still_exist(name):
    module, _, attribute = name.partition(":")
    assert hasattr(importlib.import_module(module), attribute), f"{name} is gone: {ATTRIBUTES[name]}"


@pytest.mark.parametrize("option", STREAMLIT_OPTIONS)
def test_the_hidden_streamlit_options_the_config_sets_still_exist(option):
    from streamlit import config

    assert option in config.get_config_options(), (
        f"Streamlit no longer has {option}: .streamlit/config.toml sets it ({STREAMLIT_OPTIONS[option]}); find its "
        "replacement")


def test_the_websocket_messages_the_gate_drops_still_exist():
    from streamlit.proto.BackMsg_pb2 import BackMsg

    from studio.serving.gate import DROPPED

    kinds = {field.name for field in BackMsg.DESCRIPTOR.oneofs_by_name["type"].fields}
    assert set(DROPPED) <= kinds, f"Streamlit renamed {set(DROPPED) - kinds}: gate.py drops them by name"


def test_a_changed_function_trips_the_wire():
    def original(x):
        return x + 1

    def edited(x):
        return x + 2

    assert fingerprint(original) != fingerprint(edited)
    assert fingerprint(original) == fingerprint(original)
