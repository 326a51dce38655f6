"""The CUDA-only code on a real GPU: the CUDA-graph fast path against eager execution, the out-of-memory chain
with graphs on, the sync-free UniPC, and pipelines on several threads and GPUs.

Marked `gpu`: skipped without CUDA; `make test-gpu` runs only these. The tiny models run in float16 on the
GPU, with a ControlNet whose weights make every control setting visible in the pixels.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from inference_pipeline import GenerationRequest, InferencePipeline
from studio.core.settings import Settings

from helpers import pixels, sample_scene

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BASE = GenerationRequest(prompt="a red box", steps=6, resolution=128, seed=11)
# The largest pixel difference (8-bit levels) allowed between the fast path and eager execution: the same
# kernels run in both, so we expect 0; one level leaves room for a cuDNN algorithm picked differently.
SAME = 1


def two_gpus() -> bool:
    return torch.cuda.device_count() >= 2


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    return sample_scene((128, 128))


def pipeline(model_cache, graphs: bool = True, device: str = "cuda:0") -> InferencePipeline:
    return InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device=device,
                                               cuda_graphs=graphs, allow_any_lora=True))


@pytest.fixture(scope="module")
def fast(model_cache) -> InferencePipeline:
    return pipeline(model_cache, graphs=True)


@pytest.fixture(scope="module")
def eager(model_cache) -> InferencePipeline:
    return pipeline(model_cache, graphs=False)


def assert_same(fast: InferencePipeline, eager: InferencePipeline, image, request) -> None:
    stats = fast.denoiser.graph_stats
    replays = stats.replays
    got, expected = pixels(fast.generate(image, request)), pixels(eager.generate(image, request))
    now = fast.denoiser.graph_stats  # a new object once the graphs were recaptured
    assert now.replays - (replays if now is stats else 0) >= request.steps, "the fast path did not replay graphs"
    assert now.failures == {}
    difference = int(np.abs(got - expected).max())
    assert difference <= SAME, f"fast path and eager differ by {difference} levels"


@pytest.mark.parametrize("preset", ["quality", "fast", "turbo"])
@pytest.mark.parametrize("fast_decode", [False, True])
def test_fast_path_matches_eager_for_every_preset(fast, eager, scene, preset, fast_decode):
    """The distillation LoRA, the LCM / TCD schedulers, CFG off (a batch-1 UNet) and the TAESD decode."""
    assert_same(fast, eager, scene, replace(BASE, preset=preset, steps=None, guidance_scale=None, scheduler=None,
                                            fast_decode=fast_decode))


@pytest.mark.parametrize("mode", ["objects", "background", "detail"])
def test_fast_path_matches_eager_when_repainting_part_of_the_picture(fast, eager, scene, mode):
    """The inpainting pipeline over the same graphed modules (4-channel base UNet): same pixels, and outside the
    mask the input itself; the detail pass too, one graph per working size, at strength 0.4."""
    request = replace(BASE, regenerate=mode, detail_resolution=192)
    assert_same(fast, eager, scene, request)
    assert {fast.pipe.unet.dtype, fast.pipe.vae.dtype, fast.pipe.controlnet.dtype} == {torch.float16}
    result = fast.generate(scene, request)
    kept = np.asarray(result.mask) == 0
    assert kept.any() and np.abs(pixels(result)[0] - np.asarray(scene, np.int16)).max(axis=-1)[kept].max() <= 1


@pytest.mark.parametrize("soft_mask", [False, True])
def test_regional_prompts_in_one_pass_on_the_fast_path_equal_eager(fast, eager, scene, soft_mask):
    """Regional attention's masks are a tensor argument of the UNet, so its graphs capture them like any input;
    soft edits change the pipeline's latent mask between steps, outside the graphs."""
    request = replace(BASE, regenerate="objects", objects=(0, 1, 3), object_prompt_mode="one_pass",
                      object_prompts={0: "a blue ball", 3: "a green cube"}, soft_mask=soft_mask, control_feather=8)
    assert_same(fast, eager, scene, request)
    card = fast.generate(scene, request).run_card
    assert [(e["id"], e["one_pass"]) for e in card["objects"]] == [(0, True), (1, True), (3, True)]


def test_find_by_name_loads_yoloe_on_the_gpu_once_and_repaints_a_named_object(model_cache, scene):
    """The segmenter's first prediction (Ultralytics' warm-up) runs under the GPU lock, in fp16, beside the
    CUDA graphs of the same pipeline."""
    from studio.engine.tiny_models import build_yoloe

    path = model_cache / "tiny-yoloe-seg-gpu.pt"
    if not path.exists():
        build_yoloe(path, ("wooden door", "logo"))
    pipe = InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device="cuda:0",
                                               open_vocab_model=str(path)))
    found = pipe.detect(scene, names=("logo",))
    assert found and all(d.label == "logo" and d.polygon for d in found)
    result = pipe.generate(scene, replace(BASE, find="logo", regenerate="objects", objects=(0,)))
    assert result.detections[0].label == "logo" and result.images and pipe.finder() is pipe.finder()
    assert pipe.denoiser.graph_stats.failures == {} and pipe.denoiser.graph_stats.replays >= BASE.steps


def test_an_inpainting_checkpoints_9_channel_unet_replays_graphs_too(model_cache, scene):
    checkpoint = [InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device="cuda:0",
                                                      cuda_graphs=graphs, sd15_inpaint_model="tiny"))
                  for graphs in (True, False)]
    assert checkpoint[0].inpaint_unet.config.in_channels == 9
    assert_same(checkpoint[0], checkpoint[1], scene, replace(BASE, regenerate="objects"))
    assert checkpoint[0].inpaint_unet.forward.graphs  # the 9-channel UNet itself was captured


def test_a_float32_re_decode_recaptures_the_graphs(model_cache, eager, scene, monkeypatch):
    """The fp16 -> fp32 -> fp16 round trip of the NaN fallback reallocates the VAE's weights: the decode graph
    captured before would replay freed memory, so the graphs are captured anew."""
    pipe = pipeline(model_cache)  # its own: the shared fast pipeline keeps its graphs
    pipe.generate(scene, BASE)
    before, real, calls = pipe.denoiser.graph_stats, torch.isfinite, []

    def nan_once(tensor):
        calls.append(1)
        return torch.zeros_like(real(tensor)) if len(calls) == 1 else real(tensor)

    monkeypatch.setattr(torch, "isfinite", nan_once)
    result = pipe.generate(scene, BASE)
    monkeypatch.undo()
    assert result.warnings == ["The VAE decode gave NaN or an all-black picture; it was decoded again in float32."]
    assert pipe.pipe.vae.dtype == torch.float16 and pipe.denoiser.graph_stats is not before
    assert_same(pipe, eager, scene, BASE)


def test_the_vae_decode_replays_a_graph_and_previews_arrive(fast, scene):
    from studio.engine import cuda_graphs

    seen = []
    result = fast.generate(scene, replace(BASE, steps=7), on_preview=lambda step, image: seen.append((step, image)))
    decode = fast.pipe.vae.decode
    assert isinstance(decode, cuda_graphs.GraphedForward) and decode.graphs
    assert [step for step, _ in seen] == [3, 6] and all(image.size == result.images[0].size for _, image in seen)


@pytest.mark.parametrize("scheduler", ["unipc", "dpmpp_2m_karras", "euler_a", "ddim"])
def test_fast_path_matches_eager_for_every_scheduler(fast, eager, scene, scheduler):
    assert_same(fast, eager, scene, replace(BASE, scheduler=scheduler))


@pytest.mark.parametrize("change", [dict(guess_mode=True, guidance_scale=4.0), dict(control_start=0.2, control_end=0.6),
                                    dict(controlnet_scale=0.4), dict(num_images=2), dict(guidance_scale=1.0)],
                         ids=["guess-mode", "start-end", "scale", "batch-2", "cfg-off"])
def test_fast_path_matches_eager_for_control_settings_and_batches(fast, eager, scene, change):
    assert_same(fast, eager, scene, replace(BASE, **change))


@pytest.mark.parametrize("change, runs", [(dict(control_end=0.5), 4), (dict(control_start=0.5, guess_mode=True), 4),
                                          (dict(controlnet_scale=0.0), 0)],
                         ids=["end-0.5", "start-0.5-guess", "scale-0"])
def test_the_controlnet_skipped_outside_its_window_on_the_fast_path_equals_diffusers_eager_run(
        fast, eager, scene, change, runs):
    """The gated fast path (a UNet graph without residuals for the skipped steps) against the ungated eager run,
    which evaluates the ControlNet at every step and scales its residuals by 0: bit for bit."""
    request = replace(BASE, steps=8, **change)
    evaluations: list[int] = []
    hook = fast.pipe.controlnet.register_forward_pre_hook(lambda module, args: evaluations.append(1))
    try:
        got = pixels(fast.generate(scene, request))
    finally:
        hook.remove()
    eager.pipe.controlnet.skip_at_zero_scale = False
    try:
        expected = pixels(eager.generate(scene, request))
    finally:
        del eager.pipe.controlnet.skip_at_zero_scale
    assert len(evaluations) == runs, "8 steps: the ControlNet ran on those of its window only"
    assert fast.denoiser.graph_stats.failures == {}
    assert np.array_equal(got, expected), f"differ by {int(np.abs(got - expected).max())} levels"


def test_a_size_change_and_back_reuses_the_first_graphs(fast, eager, scene):
    assert_same(fast, eager, scene, BASE)
    captures = fast.denoiser.graph_stats.captures
    assert_same(fast, eager, scene, replace(BASE, resolution=192))
    assert fast.denoiser.graph_stats.captures > captures, "a new size needs new graphs"
    captures = fast.denoiser.graph_stats.captures
    assert_same(fast, eager, scene, BASE)
    assert fast.denoiser.graph_stats.captures == captures, "the first size's graphs are kept"


def test_a_second_photo_on_the_captured_graphs_gets_its_own_control_embedding(fast, eager, scene):
    """The graphs hold the embedding's computation, never an embedding kept for the first photo
    (studio/engine/control_embedding.py computes it as diffusers does inside a capture)."""
    assert_same(fast, eager, scene, BASE)
    captures = fast.denoiser.graph_stats.captures
    assert_same(fast, eager, scene.transpose(Image.Transpose.ROTATE_90), BASE)
    assert fast.denoiser.graph_stats.captures == captures, "the same size replays the same graphs"


def test_lora_load_reweight_and_unload_recapture_the_graphs(fast, eager, scene, tmp_path):
    from helpers import make_lora

    lora = str(make_lora(fast.model_ids["sd15"] + "/unet", tmp_path))
    base = pixels(fast.generate(scene, BASE))
    for weight in (1.0, 0.3):
        styled = replace(BASE, lora=lora, lora_weight=weight)
        assert_same(fast, eager, scene, styled)
        assert np.abs(pixels(fast.generate(scene, styled)) - base).max() > 5, "the LoRA must show"
    assert np.array_equal(pixels(fast.generate(scene, BASE)), base), "unloading restores the base exactly"
    assert_same(fast, eager, scene, BASE)


def test_out_of_memory_chain_with_graphs_on_recovers_and_undoes_everything(model_cache, scene):
    pipe = pipeline(model_cache, graphs=True)
    baseline = pixels(pipe.generate(scene, BASE))
    raised = []

    def out_of_memory_at_full_size(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        if sample.shape[-1] >= 16:  # 128 px = 16 latents: only the chain's smaller size fits
            raised.append(tuple(sample.shape))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    hook = pipe.pipe.unet.register_forward_pre_hook(out_of_memory_at_full_size, with_kwargs=True)
    try:
        result = pipe.generate(scene, BASE)
    finally:
        hook.remove()
    assert len(raised) == 4  # as asked, then with slicing, tiling and CPU offload
    assert result.images[0].size == (96, 96)
    assert ("The GPU ran out of memory; the run succeeded with attention slicing, VAE tiling, model CPU offload, "
            "a smaller size (96x96).") in result.warnings
    assert all(p.device.type == "cuda" for p in pipe.pipe.unet.parameters()), "offload is undone"
    captures = pipe.denoiser.graph_stats.captures
    assert np.array_equal(pixels(pipe.generate(scene, BASE)), baseline)
    assert pipe.denoiser.graph_stats.captures > captures and pipe.denoiser.graph_stats.failures == {}


def test_a_controlnet_capture_failure_leaves_the_unet_replaying(model_cache, eager, scene):
    """One module that cannot be captured (here: a host synchronisation inside the ControlNet's forward) runs
    eagerly; the UNet and the VAE keep their graphs, and the pixels stay eager's."""
    from studio.engine import cuda_graphs

    pipe = pipeline(model_cache)
    controlnet = pipe.pipe.controlnet.__dict__["forward"]
    forward = controlnet.eager

    def reads_back(*args, **kwargs):
        out = forward(*args, **kwargs)
        out[1].float().sum().item()  # a host synchronisation, as some models' forwards do: not capturable
        return out

    controlnet.eager = reads_back
    failures = pipe.generate(scene, BASE).run_card["fast_path"]["failures"]
    assert list(failures) == ["ControlNetModel"] and "reads values back to the host" in failures["ControlNetModel"]
    unet = pipe.pipe.unet.__dict__["forward"]
    assert isinstance(unet, cuda_graphs.GraphedForward) and unet.graphs and unet.failure is None
    replays = pipe.denoiser.graph_stats.replays
    got = pixels(pipe.generate(scene, BASE))
    assert pipe.denoiser.graph_stats.replays - replays >= BASE.steps, "the UNet went on replaying"
    assert int(np.abs(got - pixels(eager.generate(scene, BASE))).max()) <= SAME


def test_a_lora_fused_in_place_keeps_the_captured_graphs(model_cache, scene, tmp_path):
    """Fusing a LoRA and restoring the base weights write into the same memory: the graphs stay (no recapture),
    and still replay the new weights."""
    from helpers import make_lora

    pipe = pipeline(model_cache)
    base = pixels(pipe.generate(scene, BASE))
    captures = pipe.denoiser.graph_stats.captures
    styled = replace(BASE, lora=str(make_lora(pipe.model_ids["sd15"] + "/unet", tmp_path)))
    assert np.abs(pixels(pipe.generate(scene, styled)) - base).max() > 5, "the LoRA shows through the old graphs"
    assert np.array_equal(pixels(pipe.generate(scene, BASE)), base)
    assert pipe.denoiser.graph_stats.captures == captures, "no new capture for weights changed in place"


def test_the_unipc_loop_never_waits_for_the_gpu(fast):
    from studio.engine.schedulers import make_scheduler

    scheduler = make_scheduler("unipc", fast._scheduler_config)
    sample = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
    scheduler.set_timesteps(20, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
    try:
        for t in scheduler.timesteps:
            sample = scheduler.step(torch.tanh(sample) * 0.3, t, sample).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sample).all()


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_the_consistency_schedulers_never_wait_for_the_gpu(fast, name):
    """Their noise comes from the run's CPU generators (as diffusers draws it) and is copied over; nothing is
    read back."""
    from studio.engine.schedulers import make_scheduler

    scheduler = make_scheduler(name, fast._scheduler_config)
    sample = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16)
    scheduler.set_timesteps(6, device="cuda")
    generator = [torch.Generator().manual_seed(1)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
    try:
        for t in scheduler.timesteps:
            sample = scheduler.step(torch.tanh(sample) * 0.3, t, sample, generator=generator).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sample).all()


@pytest.mark.parametrize("shape", [(1, 320, 64, 64), (2, 1280, 8, 8), (1, 128, 512, 512)])
def test_the_channels_last_group_norm_on_sd_shapes(shape):
    """UNet, CFG batch and VAE shapes in float16: as close to float32 as torch's own kernel, channels-last out."""
    from studio.engine import group_norm

    torch.manual_seed(0)
    x = (torch.randn(shape, device="cuda") * 3 + 2).half().to(memory_format=torch.channels_last)
    weight, bias = torch.randn(shape[1], device="cuda").half(), torch.randn(shape[1], device="cuda").half()
    exact = torch.nn.functional.group_norm(x.float(), 32, weight.float(), bias.float(), 1e-6)
    ours = group_norm.group_norm_nhwc(x, 32, weight, bias, 1e-6)
    torchs = torch.nn.functional.group_norm(x, 32, weight, bias, 1e-6)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert (ours.float() - exact).abs().max() <= 2 * (torchs.float() - exact).abs().max()


def test_the_run_card_reports_the_graphs_it_replayed(fast, scene):
    card = fast.generate(scene, BASE).run_card
    assert card["fast_path"]["state"].startswith("on:")
    assert card["fast_path"]["replays"] >= BASE.steps and card["fast_path"]["failures"] == {}
    assert card["device"].startswith("cuda:0 (") and card["dtype"] == "float16"


def test_two_pipelines_in_two_threads_give_each_their_own_pixels(model_cache, scene):
    """Two fast pipelines (on two GPUs when there are two) generating at the same time, with different
    requests, give exactly what each gives alone; graphs captured concurrently included."""
    devices = ["cuda:0", "cuda:1"] if two_gpus() else ["cuda:0", "cuda:0"]
    pipes = [pipeline(model_cache, device=device) for device in devices]
    requests = [BASE, replace(BASE, seed=12, controlnet_scale=0.5, scheduler="dpmpp_2m_karras")]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = pixels(pipes[i].generate(scene, requests[i]))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for i in range(2):
        alone = pixels(pipes[i].generate(scene, requests[i]))
        assert np.array_equal(results[i], alone)
        assert pipes[i].denoiser.graph_stats.failures == {}
    assert not np.array_equal(results[0], results[1])


@pytest.mark.skipif(not two_gpus(), reason="needs two GPUs")
def test_a_pipeline_on_the_second_gpu_keeps_everything_there(model_cache, scene, fast):
    import gc

    gc.collect()
    before = torch.cuda.memory_allocated(0)
    second = pipeline(model_cache, device="cuda:1")
    result = second.generate(scene, BASE)
    assert result.run_card["device"].startswith("cuda:1 (")
    assert {p.device for p in second.pipe.unet.parameters()} == {torch.device("cuda:1")}
    assert torch.cuda.memory_allocated(0) <= before, "nothing of the second pipeline lands on GPU 0"
    assert np.array_equal(pixels(result), pixels(fast.generate(scene, BASE)))


@pytest.mark.skipif(not two_gpus(), reason="needs two GPUs")
def test_the_job_queue_serves_two_jobs_at_once_on_two_gpus(model_cache, scene):
    from studio.serving.jobs import DONE, JobQueue

    queue = JobQueue.for_settings(Settings(models="tiny", cache_dir=model_cache, gpus=(0, 1)))
    try:
        assert [worker.name for worker in queue.workers] == ["cuda:0", "cuda:1"]
        jobs = [queue.submit(scene, replace(BASE, steps=40, seed=seed), owner=str(seed)) for seed in (1, 2)]
        deadline = time.monotonic() + 300
        while any(job.active for job in jobs):
            assert time.monotonic() < deadline, "the jobs did not end"
            threading.Event().wait(0.005)
    finally:
        queue.shutdown()
    assert [job.state for job in jobs] == [DONE, DONE]
    assert {job.worker for job in jobs} == {"cuda:0", "cuda:1"}
    assert max(job.started for job in jobs) < min(job.finished for job in jobs), "the two ran side by side"
    assert [job.result.run_card["device"][:6] for job in jobs] == [job.worker for job in jobs]
