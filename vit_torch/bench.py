"""CPU throughput of vit_torch, with an analytic FLOP count, and timm's ViT for comparison.

    python -m vit_torch.bench --preset B/16 --batch 8 --passes 5

Modes
  eager    the model as `build_model` makes it (SDPA attention), weights in `dtype`.
  fast     the documented fast path: every Linear's weight is reordered once into oneDNN's blocked
           layout (`torch.ops.mkldnn._reorder_linear_weight`, in the model built for it: no second
           copy of the weights) and run by `mkldnn._linear_pointwise`, with the MLP's GELU (cfg.gelu's
           form) fused into fc1; weights in `dtype` (bfloat16 uses the CPU's AVX512-BF16/AMX kernels).
           Numerically this is a different kernel, so it is a benchmark path, not the conformance path
           (`fast_conformance` reports its verdict).
  compile  `torch.compile(model)` (inductor; compile time is reported separately).

Threads: `torch.set_num_threads(threads)` is set explicitly (default: all cores).
`vit_flops` counts 2 FLOPs per multiply-add of every matmul (patch projection, qkv, scores,
attention x values, proj, MLP, pre-logits, head); elementwise work (LayerNorm, softmax, GELU) is
not counted. `vit_flops` lives in shared/bench.py (one count for every backend).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
from torch import nn

from shared.bench import time_calls, vit_flops
from shared.config import ViTConfig
from shared.init import random_images

from .model import TORCH_DTYPES, VisionTransformer, build_model


#: mode -> description (TorchBackend.bench_modes; peers' descriptions start with "peer:").
MODES: dict[str, str] = {
    "eager": "build_model as is: SDPA attention, weights in dtype",
    "fast": "oneDNN-prepacked Linear weights, GELU fused into fc1 (bfloat16: AVX512-BF16/AMX kernels)",
    "compile": "torch.compile(model), inductor (compile time excluded from the timing)",
    "timm": "peer: timm.create_model(cfg.name, pretrained=False), weights in dtype",
    "hf": "peer: transformers ViTForImageClassification with the same sizes (random init), weights in dtype",
}


# ------------------------------------------------------------------ fast path
class PackedLinear(nn.Module):
    """A Linear whose weight is prepacked for oneDNN; optional fused GELU ('none' or 'tanh' form)."""

    def __init__(self, linear: nn.Linear, gelu: str | None = None):
        super().__init__()
        w = linear.weight.detach()
        self.out_features = w.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()
        self.attr, self.algorithm = ("gelu", gelu) if gelu else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.attr, [], self.algorithm)


def make_fast(model: VisionTransformer, *, inplace: bool = False) -> VisionTransformer:
    """Inference-only copy of `model` with prepacked oneDNN Linears and GELU fused into fc1.

    inplace: convert `model` itself (its Linears are replaced, so it is the fast model afterwards) in place of a
    deep copy: a caller that built the model for this (`prepare`) holds one copy of the weights, never two, and each
    Linear's weight is released as its packed form is made.
    """
    fast = (model if inplace else copy.deepcopy(model)).eval()
    # oneDNN has no QuickGELU or SwiGLU: those stay unfused
    gelu = None if model.config.swiglu else {"erf": "none", "tanh": "tanh"}.get(model.config.gelu)
    with torch.no_grad():
        for blk in fast.blocks:  # a parallel block: every branch's attention and MLP
            par = blk.num_parallel > 1
            for attn in [b.attn for b in blk.attns] if par else [blk.attn]:
                attn.qkv = PackedLinear(attn.qkv)
                attn.proj = PackedLinear(attn.proj)
            for mlp in [b.mlp for b in blk.ffns] if par else [blk.mlp]:
                mlp.fc1 = PackedLinear(mlp.fc1, gelu=gelu)
                if gelu:
                    mlp.act = nn.Identity()
                mlp.fc2 = PackedLinear(mlp.fc2)
    return fast


def fast_conformance(preset: str = "tiny", dtype: str = "float32") -> str:
    """The policy's verdict on the fast path for a preset (reported by the benchmark, not a test)."""
    from shared import reference, tolerances
    from shared.init import init_weights
    from shared.presets import get_preset

    cfg = get_preset(preset)
    state, x = init_weights(cfg, 0), random_images(cfg, 2, 0)
    model = make_fast(build_model(cfg, state, dtype=dtype), inplace=True)
    with torch.inference_mode():
        st = model.forward_stages(torch.from_numpy(x).to(TORCH_DTYPES[dtype]))
    out = {k: v.float().numpy() for k, v in st.items()}
    ref_lp = reference.forward(cfg, state, x, dtype=dtype) if dtype != "float32" else None
    return tolerances.judge(cfg, dtype, out, reference.forward(cfg, state, x), ref_lp).summary()


# -------------------------------------------------------------------- timing
def _time(fn, x, n_warmup: int, n_iter: int) -> list[float]:
    with torch.inference_mode():
        return time_calls(lambda: fn(x), n_warmup, n_iter)


def prepare(cfg: ViTConfig, dtype: str = "float32", mode: str = "eager", seed: int = 0, backend=None):
    """(callable, setup seconds) for a mode; the model comes from `backend.build` (a TorchBackend or variant)."""
    t0 = time.perf_counter()
    build = backend.build if backend is not None else build_model
    model = build(cfg, dtype=dtype, seed=seed)
    if mode == "eager":
        fn = model
    elif mode == "fast":
        fn = make_fast(model, inplace=True)  # the only copy of the weights: eager's is not kept alive
    elif mode == "compile":
        fn = torch.compile(model)
    else:
        raise ValueError(f"unknown mode {mode!r}; modes: eager, fast, compile")
    return fn, time.perf_counter() - t0


def _result(cfg, batch, times, **extra) -> dict:
    med, best = statistics.median(times), min(times)
    return dict(batch=batch, median_s=med, images_per_s=batch / med, gflops_per_s=vit_flops(cfg) * batch / med / 1e9,
                best_images_per_s=batch / best, n=len(times), **extra)


def bench(cfg: ViTConfig, *, batch: int = 8, dtype: str = "float32", mode: str, n_warmup: int = 2,
          n_iter: int = 5, backend=None, threads: int | None = None, seed: int = 0) -> dict:
    """Median-timed forward of `batch` images: images/s and matmul GFLOP/s (vit_flops). TorchBackend.bench."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    if mode == "timm":
        return bench_timm(cfg.name, batch, dtype, n_warmup, n_iter)
    if mode == "hf":
        return bench_hf(cfg, batch, dtype, n_warmup, n_iter)
    fn, setup_s = prepare(cfg, dtype, mode, seed, backend)
    x = torch.from_numpy(random_images(cfg, batch, seed)).to(TORCH_DTYPES[dtype])
    t0 = time.perf_counter()
    times = _time(fn, x, n_warmup, n_iter)
    return _result(cfg, batch, times, mode=mode, dtype=dtype, setup_s=setup_s,
                   warmup_and_run_s=time.perf_counter() - t0, threads=torch.get_num_threads())


def bench_hf(cfg: ViTConfig, batch: int = 8, dtype: str = "float32", n_warmup: int = 2, n_iter: int = 5) -> dict:
    """Hugging Face's ViTForImageClassification with cfg's sizes (random init, no download), timed like `bench`."""
    import transformers

    hf_cfg = transformers.ViTConfig(hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                                    intermediate_size=cfg.mlp_dim, image_size=list(cfg.image_size), patch_size=cfg.patch_size,
                                    num_channels=cfg.in_chans, num_labels=max(cfg.num_classes, 1),
                                    layer_norm_eps=cfg.layer_norm_eps, qkv_bias=cfg.qkv_bias)
    model = transformers.ViTForImageClassification(hf_cfg).eval().to(TORCH_DTYPES[dtype])
    x = torch.randn(batch, cfg.in_chans, *cfg.image_size, dtype=TORCH_DTYPES[dtype])
    return _result(cfg, batch, _time(lambda t: model(pixel_values=t), x, n_warmup, n_iter), mode="hf", dtype=dtype)


def bench_timm(name: str = "vit_base_patch16_224", batch: int = 8, dtype: str = "float32", n_warmup: int = 2,
               n_iter: int = 5) -> dict:
    """timm's model (pretrained=False, eval, weights in dtype) timed like `bench`."""
    import timm

    from shared.presets import get_preset

    model = timm.create_model(name, pretrained=False).eval().to(TORCH_DTYPES[dtype])
    cfg = get_preset(name)
    x = torch.randn(batch, 3, *cfg.image_size, dtype=TORCH_DTYPES[dtype])
    return _result(cfg, batch, _time(model, x, n_warmup, n_iter), mode="timm", dtype=dtype)


def main(argv=None) -> None:
    from shared.presets import get_preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="B/16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--passes", type=int, default=5, help="interleaved passes; medians over passes are reported")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", default="timm:float32,eager:float32,fast:float32,timm:bfloat16,eager:bfloat16,fast:bfloat16")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    cfg = get_preset(args.preset)
    runs = [tuple(r.split(":")) for r in args.runs.split(",")]
    fns = {}
    for mode, dtype in runs:
        t0 = time.perf_counter()
        if mode == "timm":
            import timm
            fns[(mode, dtype)] = timm.create_model(cfg.name, pretrained=False).eval().to(TORCH_DTYPES[dtype])
        else:
            fns[(mode, dtype)] = prepare(cfg, dtype, mode)[0]
        x = torch.from_numpy(random_images(cfg, args.batch)).to(TORCH_DTYPES[dtype])
        _time(fns[(mode, dtype)], x, 1, 0)  # warm-up (and compile)
        print(f"prepared {mode}:{dtype} in {time.perf_counter() - t0:.1f}s", flush=True)
    per_pass = {r: [] for r in runs}
    for p in range(args.passes):
        for mode, dtype in runs:
            x = torch.from_numpy(random_images(cfg, args.batch)).to(TORCH_DTYPES[dtype])
            per_pass[(mode, dtype)].append(statistics.median(_time(fns[(mode, dtype)], x, 1, args.iters)))
    base = args.batch / statistics.median(per_pass.get(("timm", "float32"), [float("nan")]))
    rows = []
    for (mode, dtype), ts in per_pass.items():
        r = _result(cfg, args.batch, ts, mode=mode, dtype=dtype)
        r["vs_timm_fp32"] = r["images_per_s"] / base
        rows.append(r)
        r["vs_timm_fp32_same_pass"] = statistics.median(
            [t0 / t for t0, t in zip(per_pass.get(("timm", "float32"), ts), ts)])
        print(f"{mode:8s} {dtype:9s} {r['images_per_s']:7.2f} img/s {r['gflops_per_s']:7.1f} GFLOP/s "
              f"x{r['vs_timm_fp32']:.2f} vs timm fp32 (median of per-pass ratios x{r['vs_timm_fp32_same_pass']:.2f}; "
              f"best {r['best_images_per_s']:.2f} img/s; passes: {', '.join(f'{args.batch / t:.2f}' for t in ts)})")
    for dtype in sorted({d for m, d in runs if m == "fast"}):  # the fast path is another kernel: its accuracy
        print(f"fast path {dtype}, tolerance policy on presets tiny / tiny_t2t: "
              f"{fast_conformance('tiny', dtype)} / {fast_conformance('tiny_t2t', dtype)}")
    print(json.dumps({"preset": cfg.name, "gflop_per_image": vit_flops(cfg) / 1e9, "threads": torch.get_num_threads(),
                      "rows": rows}, default=str))


if __name__ == "__main__":
    main()
