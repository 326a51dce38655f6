"""FLOPs: of one SD1.5 + ControlNet evaluation, the VAE decode and encode and TAESD's decode at 512x512 (this
script), and of any run of the pipeline (`RunFlops`, used by bench_pipeline.py), counted by PyTorch.

Models are built from their configs on the meta device (no memory, no weights) and run once per input size under
`torch.utils.flop_counter.FlopCounterMode`, which counts matrix products, convolutions and attention. A run's
FLOPs are those counts times the evaluations that really ran: forward hooks on the UNet and the ControlNet (a
ControlNet call skipped outside its window runs no hook), and the VAE's and TAESD's decode and encode calls, each
with its batch and size, CFG included. A ControlNet call that reused its conditioning embedding (computed once per
control image where it runs eagerly, studio/engine/control_embedding.py) is that embedding's count cheaper. The
T4 estimate divides by the rate a T4 reaches on large fp16 matrix products and adds the share of the time that is
not such work, as measured on the card that ran the benchmark.

    python benchmarks/flops.py
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine.tiny_models import SD15  # noqa: E402

T4_TFLOPS = 42.7  # fp16 on large matrix products, measured (65 on paper); FACTS.md
# Operators that are matrix products, convolutions or attention: the work FlopCounterMode counts. The rest of a
# step's time (normalisation, activations, copies) is the non-GEMM share.
GEMM_OPS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution", "cudnn_convolution",
            "mkldnn_convolution", "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_cudnn_attention", "_flash_attention_forward", "_efficient_attention_forward",
            "_scaled_dot_product_flash_attention_for_cpu")


def count(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


PER_SAMPLE: dict[tuple[str, tuple[int, ...], str], float] = {}  # (what, shape, module config) -> TFLOP


class RunFlops:
    """The TFLOP of what a pipeline really evaluated while `counting()` was open (`tflops` afterwards)."""

    def __init__(self, pipe: Any, taesd: Any | None = None) -> None:
        self.pipe, self.taesd = pipe, taesd
        self.calls: Counter[tuple[str, tuple[int, ...]]] = Counter()  # (what, per-sample input shape) -> samples
        self.reused: Counter[tuple[int, ...]] = Counter()  # control image shape -> samples whose embedding was kept

    @contextmanager
    def counting(self) -> Iterator[None]:
        self.calls.clear()
        self.reused.clear()
        modules = {"unet": self.pipe.unet, "controlnet": self.pipe.controlnet}
        hooks = [module.register_forward_pre_hook(self._hook(name), with_kwargs=True)
                 for name, module in modules.items()]
        # reused = the embedding's calls - its computations (its first convolution runs only when it computes)
        embedding = self.pipe.controlnet.controlnet_cond_embedding
        hooks += [embedding.register_forward_pre_hook(self._embedding(+1)),
                  embedding.conv_in.register_forward_pre_hook(self._embedding(-1))]
        methods = [(self.pipe.vae, "decode", "vae-decode"), (self.pipe.vae, "encode", "vae-encode")]
        if self.taesd is not None:
            methods.append((self.taesd, "decode", "taesd-decode"))
        own = [owner.__dict__.get(method) for owner, method, _ in methods]  # a graphed decode, or None
        for owner, method, name in methods:  # the VAE's decode may be a CUDA-graph replay: count the call itself
            setattr(owner, method, self._counted(getattr(owner, method), name))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            for (owner, method, _), before in zip(methods, own):
                if before is None:
                    del owner.__dict__[method]
                else:
                    setattr(owner, method, before)

    def _hook(self, name: str) -> Callable[..., None]:
        def record(module: Any, args: tuple, kwargs: dict) -> None:
            sample = args[0] if args else kwargs["sample"]
            self.calls[(name, tuple(sample.shape[1:]))] += sample.shape[0]
        return record

    def _embedding(self, sign: int) -> Callable[..., None]:
        def record(module: Any, args: tuple) -> None:
            self.reused[tuple(args[0].shape[1:])] += sign * args[0].shape[0]
        return record

    def _counted(self, method: Callable[..., Any], name: str) -> Callable[..., Any]:
        def call(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.calls[(name, tuple(x.shape[1:]))] += x.shape[0]
            return method(x, *args, **kwargs)
        return call

    def tflops(self) -> float:
        kept = sum(samples * self.per_sample(("control-embedding", shape)) for shape, samples in self.reused.items())
        return sum(samples * self.per_sample(key) for key, samples in self.calls.items()) - kept

    def per_sample(self, key: tuple[str, tuple[int, ...]]) -> float:
        """One sample's TFLOP through `what` at that input shape, counted on a meta-device copy of the module
        (once per module configuration and shape in this process)."""
        what, shape = key
        config = repr(sorted(dict(self._source(what).config).items()))
        if (what, shape, config) not in PER_SAMPLE:
            PER_SAMPLE[(what, shape, config)] = count(self._meta_call(what, shape))
        return PER_SAMPLE[(what, shape, config)]

    def _source(self, what: str) -> Any:
        return {"unet": self.pipe.unet, "controlnet": self.pipe.controlnet, "control-embedding": self.pipe.controlnet,
                "vae-decode": self.pipe.vae,
                "vae-encode": self.pipe.vae, "taesd-decode": self.taesd}[what]

    def _meta_call(self, what: str, shape: tuple[int, ...]) -> Callable[[], Any]:
        source = self._source(what)
        with torch.device("meta"):
            model = type(source).from_config(source.config)
            x = torch.zeros(1, *shape)
            if what in ("unet", "controlnet"):
                text = torch.zeros(1, 77, model.config.cross_attention_dim)
                t = torch.tensor([500])
        if what == "unet":
            return lambda: model(x, t, text)
        if what == "controlnet":
            hint = torch.zeros(1, 3, shape[-2] * 8, shape[-1] * 8, device="meta")
            return lambda: model(x, t, text, controlnet_cond=hint, return_dict=False)
        if what == "control-embedding":
            return lambda: model.controlnet_cond_embedding(x)
        return lambda: getattr(model, what.split("-")[1])(x)


def non_gemm_share(call: Callable[[], Any], device: str) -> float:
    """The share of one call's operator time (GPU time on CUDA, CPU time otherwise) outside GEMM_OPS."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        call()
        if cuda:
            torch.cuda.synchronize()
    gemm = other = 0.0
    for event in prof.key_averages():
        spent = getattr(event, "self_device_time_total", 0.0) if cuda else event.self_cpu_time_total
        if event.key.removeprefix("aten::") in GEMM_OPS:
            gemm += spent
        elif event.key.startswith("aten::"):
            other += spent
    return other / (gemm + other) if gemm + other else 0.0


def t4_estimate_s(tflops: float, share: float) -> float:
    """Seconds on a T4: the counted work at T4_TFLOPS, which is (1 - share) of the time, plus the rest."""
    return tflops / T4_TFLOPS / (1.0 - share)


def main() -> None:
    from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **SD15["unet"])
        controlnet = ControlNetModel.from_unet(unet, **SD15["controlnet"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            **SD15["vae"])
        taesd = AutoencoderTiny()
        latents, text = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
        hint, t = torch.randn(1, 3, 512, 512), torch.tensor([500])

    def evaluation() -> None:
        down, mid = controlnet(latents, t, text, controlnet_cond=hint, return_dict=False)
        unet(latents, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    rows = {"UNet + ControlNet, one evaluation (batch 1)": count(evaluation),
            "UNet alone (a step outside the ControlNet's window)": count(lambda: unet(latents, t, text)),
            "VAE decode": count(lambda: vae.decode(latents)),
            "VAE encode (a repaint's or detail crop's photo)": count(lambda: vae.encode(hint)),
            "TAESD decode": count(lambda: taesd.decode(latents))}
    print("| 512x512 | TFLOP |\n| --- | --- |")
    for name, tflop in rows.items():
        print(f"| {name} | {tflop:.3f} |")


if __name__ == "__main__":
    main()
