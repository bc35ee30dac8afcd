"""Throughput of the MindSpore ViT (PyNative with launch_blocking, and Graph mode) against timm in torch.

    python -m vit_mindspore.bench [--preset vit_base_patch16_224] [--batches 1 8] [--passes 5] [--no-timm]

Reports the median over passes (after warm-up) of images/s and GFLOP/s (FLOPs = 2 x multiply-adds of
every matmul, counted analytically), the Graph-mode compile time, timm's vit_base_patch16_224
(pretrained=False, float32, torch threads = cores) in the same process, and a short PyNative profile
of where one block's time goes. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


import mindspore as ms
from mindspore import Tensor

from shared.bench import vit_flops
from shared.config import ViTConfig
from shared.init import init_weights, random_images
from shared.presets import get_preset

from .backend import configure_runtime
from .model import build_model


def _time(fn, passes: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _mindspore_runners(cfg: ViTConfig, batches, jit_level: str, pynative: bool = True,
                       fused_softmax: bool = False) -> list[tuple[dict, object]]:
    model = build_model(cfg, init_weights(cfg, 0), "float32", fused_softmax)
    graph = ms.jit(model, jit_level=jit_level)
    runners = []
    modes = (("pynative", model), ("graph", graph)) if pynative else (("graph", graph),)
    tag = "+fusedsm" if fused_softmax else ""
    for mode, fn in modes:
        for b in batches:
            x = Tensor(random_images(cfg, b))
            t0 = time.perf_counter()
            fn(x).asnumpy()  # graph: compiles here
            info = {"framework": "mindspore", "mode": (mode if mode == "pynative" else f"graph-{jit_level}") + tag,
                    "batch": b, "first_call_s": time.perf_counter() - t0}
            runners.append((info, lambda fn=fn, x=x: fn(x).asnumpy()))
    return runners


def _timm_runners(batches, threads: int) -> list[tuple[dict, object]]:
    import torch
    import timm

    torch.set_num_threads(threads)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    cfg = get_preset("vit_base_patch16_224")
    runners = []
    for b in batches:
        x = torch.from_numpy(random_images(cfg, b))

        def run(x=x):
            with torch.inference_mode():
                model(x)
        run()
        runners.append(({"framework": "timm/torch", "mode": "eager", "batch": b}, run))
    return runners


MODES = {
    "pynative": "PyNative with synchronous launch (mindspore.runtime.launch_blocking)",
    "graph": "Graph mode (mindspore.jit, jit_level O0), the backend's default",
    "graph_fused": "Graph mode with the opt-in fused softmax (faster, ~7e-6 less accurate; still in bounds)",
}


def bench(cfg: ViTConfig, batch: int = 8, dtype: str = "float32", mode: str = "graph", n_warmup: int = 2,
          n_iter: int = 5) -> dict:
    """The shared.bench contract: median-timed forward of `batch` images in one mode."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    configure_runtime(threads)
    model = build_model(cfg, init_weights(cfg, 0), dtype, mode == "graph_fused")
    fn = model if mode == "pynative" else ms.jit(model, jit_level="O0")
    x = Tensor(random_images(cfg, batch))
    if dtype != "float32":
        x = x.astype(ms.float16)
    times = _time(lambda: fn(x).asnumpy(), n_iter, n_warmup)
    med = statistics.median(times)
    return {"images_per_s": batch / med, "median_s": med, "passes": times, "threads": threads}


def run_interleaved(cfg: ViTConfig, runners, passes: int) -> list[dict]:
    """Passes interleaved across runners (fair under a shared, noisy machine); medians reported."""
    fl = vit_flops(cfg)
    times = [[] for _ in runners]
    for _ in range(passes):
        for i, (_, fn) in enumerate(runners):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    rows = []
    for (info, _), ts in zip(runners, times):
        med = statistics.median(ts)
        rows.append({**info, "median_s": med, "images_per_s": info["batch"] / med,
                     "gflops": fl * info["batch"] / med / 1e9, "passes": [round(t, 4) for t in ts]})
        print(_fmt(rows[-1]), flush=True)
    return rows


def profile_block(cfg: ViTConfig, batch: int, passes: int = 3) -> list[tuple[str, float]]:
    """PyNative time of each piece of one block (and the patch embedding / head), scaled to the model."""
    model = build_model(cfg, init_weights(cfg, 0), "float32")
    blk = model.blocks[min(1, cfg.depth - 1)]
    attn = blk.attn
    x = Tensor(random_images(cfg, batch))
    h = model.embed(x, model.pos)[1]
    if cfg.block_in_dim(0) != cfg.width:
        h = model.blocks[0](h)
    T = h.shape[1]
    B = batch
    v, s = attn.scores(blk.norm1(h))
    probs = attn.softmax(s)
    av = attn.av_matmul(probs, v)
    merged = ms.ops.reshape(ms.ops.transpose(av, (0, 2, 1, 3)), (B, T, cfg.width))
    f1 = blk.mlp.fc1(blk.norm2(h))
    f1_act = blk.mlp.act(f1)
    pieces = [
        ("layernorm x2", lambda: (blk.norm1(h), blk.norm2(h))),
        ("qkv matmul", lambda: attn.qkv(h)),
        ("q@k^T + scale", lambda: attn.qk_matmul(v, v) * attn.scale),
        ("softmax", lambda: attn.softmax(s)),
        ("attn@v", lambda: attn.av_matmul(probs, v)),
        ("head merge (transpose)", lambda: ms.ops.reshape(ms.ops.transpose(av, (0, 2, 1, 3)), (B, T, cfg.width))),
        ("proj matmul", lambda: attn.proj(merged)),
        ("fc1 matmul", lambda: blk.mlp.fc1(h)),
        ("gelu", lambda: blk.mlp.act(f1)),
        ("fc2 matmul", lambda: blk.mlp.fc2(f1_act)),
        ("residual adds x2", lambda: (h + h, h + h)),
    ]
    out = []
    for name, fn in pieces:
        def run():
            r = fn()
            (r[-1] if isinstance(r, tuple) else r).asnumpy()
        out.append((name, statistics.median(_time(run, passes)) * cfg.depth))
    out.append(("patch embed (once)", statistics.median(_time(lambda: model.embed(x, model.pos)[1].asnumpy(), passes))))
    return out


def _fmt(r: dict) -> str:
    extra = f", first call {r['first_call_s']:.1f}s" if "first_call_s" in r else ""
    return (f"{r['framework']:11s} {r['mode']:18s} batch {r['batch']:2d}: {r['images_per_s']:7.2f} img/s  "
            f"{r['gflops']:7.1f} GFLOP/s  (median {r['median_s'] * 1e3:.0f} ms{extra})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vit_base_patch16_224")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--fused-softmax", action="store_true", help="also time the opt-in fused attention softmax")
    ap.add_argument("--jit-levels", nargs="+", default=["O0"], help="Graph-mode jit_level(s) to compare")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    configure_runtime(threads)
    cfg = get_preset(args.preset)
    print(f"{cfg.name}: {vit_flops(cfg) / 1e9:.2f} GFLOP/image, {threads} threads, "
          f"mindspore {ms.__version__}", flush=True)
    runners = []
    for i, level in enumerate(args.jit_levels):
        runners += _mindspore_runners(cfg, args.batches, level, pynative=(i == 0))
    if args.fused_softmax:
        runners += _mindspore_runners(cfg, args.batches, args.jit_levels[-1], pynative=True, fused_softmax=True)
    if not args.no_timm and cfg.name == "vit_base_patch16_224":
        runners += _timm_runners(args.batches, threads)
    rows = run_interleaved(cfg, runners, args.passes)
    prof = []
    if not args.no_profile:
        b = max(args.batches)
        prof = profile_block(cfg, b)
        total = sum(t for _, t in prof)
        print(f"PyNative profile, batch {b} (each piece timed alone, x depth): total {total:.2f}s")
        for name, t in sorted(prof, key=lambda p: -p[1]):
            print(f"  {name:24s} {t:7.3f}s  {100 * t / total:5.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": cfg.name, "threads": threads, "rows": rows, "profile": prof}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
