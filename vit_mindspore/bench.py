"""Throughput of the MindSpore ViT (PyNative with launch_blocking, and Graph mode) against timm in torch.

    python -m vit_mindspore.bench [--preset vit_base_patch16_224] [--batches 1 8] [--passes 5] [--no-timm]

Reports the median over interleaved passes of images/s and GFLOP/s (FLOPs = 2 x multiply-adds of every
matmul, counted analytically), the first-call (Graph: compile) time, timm's vit_base_patch16_224
(pretrained=False, float32, torch threads = cores) in the same process, and a Graph-mode profile of
where the time goes (MindSpore's profiler, per op type). A benchmark, not a test.

Every runner is called WARMUP times before timing: MindSpore's runtime runs a compiled graph ~15 %
slower for its first 5 calls (measured on B/16 batch 8: 2.1 s, then 1.8 s from the 6th call on).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
import tempfile
import threading
import time


import mindspore as ms
from mindspore import Tensor

from shared.bench import time_calls, vit_flops
from shared.config import ViTConfig
from shared.init import random_images
from shared.presets import get_preset

from .model import build_model, configure_runtime

WARMUP = 6


def _mindspore_runners(cfg: ViTConfig, batches, jit_level: str, pynative: bool = True,
                       fused_softmax: bool = True) -> list[tuple[dict, object]]:
    model = build_model(cfg, fused_softmax=fused_softmax)
    graph = ms.jit(model, jit_level=jit_level)
    runners = []
    modes = (("pynative", model), ("graph", graph)) if pynative else (("graph", graph),)
    tag = "" if fused_softmax else "+expm1sm"
    for mode, fn in modes:
        for b in batches:
            x = Tensor(random_images(cfg, b))
            t0 = time.perf_counter()
            fn(x).asnumpy()  # graph: compiles here
            info = {"framework": "mindspore", "mode": (mode if mode == "pynative" else f"graph-{jit_level}") + tag,
                    "batch": b, "first_call_s": time.perf_counter() - t0}
            for _ in range(WARMUP - 1):
                fn(x).asnumpy()
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
        for _ in range(WARMUP):
            run()
        runners.append(({"framework": "timm/torch", "mode": "eager", "batch": b}, run))
    return runners


MODES = {
    "pynative": "PyNative with synchronous launch (mindspore.runtime.launch_blocking)",
    "graph": "Graph mode (mindspore.jit, jit_level O0), the backend's default",
    "graph_expm1": "Graph mode with the expm1-based attention softmax (fused_softmax=False)",
    "pynative_nice": "PyNative with the launching Python thread at nice 19 (see below)",
    "mindcv": "peer: mindcv's VisionTransformer with the same sizes (random init, no download), in Graph mode "
              "(if mindcv is installed)",
}
# Why pynative_nice: MindSpore's CPU ThreadPool::ParallelLaunch hands a kernel's tasks to the pool workers and, when
# called from a thread outside the pool (PyNative's Python thread), busy-waits on sched_yield until they finish
# (perf: ~20 % of CPU samples; strace: ~20k sched_yield calls/s). Graph mode launches from a pool thread, which computes a
# share itself. At nice 19 the waiting thread stops taking CPU from the workers. A benchmark-only demonstration:
# the backend does not renice threads it does not own.


def mindcv_model(cfg: ViTConfig):
    """mindcv's ViT with the same sizes (its own numerics and init), in inference mode; the peer of `bench`."""
    try:
        from mindcv.models.vit import VisionTransformer as MindcvViT
    except ImportError:
        raise RuntimeError("mindcv is not installed") from None
    model = MindcvViT(image_size=cfg.image_size[0], patch_size=cfg.patch_size, in_channels=cfg.in_chans,
                      embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                      mlp_ratio=cfg.mlp_dim / cfg.embed_dim, num_classes=max(cfg.num_classes, 1))
    model.set_train(False)
    return model


def bench(cfg: ViTConfig, *, batch: int = 8, dtype: str = "float32", mode: str, n_warmup: int = 2,
          n_iter: int = 5, backend=None) -> dict:
    """Median-timed forward of `batch` images in one mode, >= WARMUP warm-up calls (MindSporeBackend.bench).

    The mode fixes the execution (PyNative or Graph) and the softmax, so `backend` (a variant) changes nothing.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    configure_runtime(threads)
    if mode == "mindcv":
        if dtype != "float32":
            raise ValueError(f"the mindcv peer runs in float32, not {dtype!r}")
        model = mindcv_model(cfg)
    else:
        model = build_model(cfg, dtype=dtype, fused_softmax=mode != "graph_expm1")
    fn = model if mode.startswith("pynative") else ms.jit(model, jit_level="O0")
    x = Tensor(random_images(cfg, batch))
    if dtype != "float32":
        x = x.astype(ms.float16)
    if mode == "pynative_nice":
        fn(x).asnumpy()  # the pool's threads exist now and keep their priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    times = time_calls(lambda: fn(x).asnumpy(), max(n_warmup, WARMUP), n_iter)
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


def profile_graph(cfg: ViTConfig, batch: int, steps: int = 2) -> list[tuple[str, int, float]]:
    """Graph-mode time per op type, from MindSpore's profiler: [(op type, calls per step, ms per step)]."""
    from mindspore import Profiler

    model = ms.jit(build_model(cfg), jit_level="O0")
    x = Tensor(random_images(cfg, batch))
    for _ in range(WARMUP):
        model(x).asnumpy()
    with tempfile.TemporaryDirectory(prefix="vit-ms-profile-") as tmp:
        prof = Profiler(output_path=tmp)
        for _ in range(steps):
            model(x).asnumpy()
        prof.analyse()
        found = glob.glob(os.path.join(tmp, "**", "cpu_op_type_info_0.csv"), recursive=True)
        if not found:
            raise RuntimeError(f"MindSpore {ms.__version__}'s profiler wrote no cpu_op_type_info_0.csv under {tmp}")
        with open(found[0], newline="") as f:
            rows = list(csv.DictReader(f))
    out = [(r["op_type"], int(float(r["execution_frequency(per-step)"])), float(r["total_compute_time"]) / steps)
           for r in rows]
    return sorted(out, key=lambda r: -r[2])


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
    ap.add_argument("--expm1-softmax", action="store_true", help="also time the expm1-based attention softmax")
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
    if args.expm1_softmax:
        runners += _mindspore_runners(cfg, args.batches, args.jit_levels[-1], pynative=False, fused_softmax=False)
    if not args.no_timm and cfg.name == "vit_base_patch16_224":
        runners += _timm_runners(args.batches, threads)
    rows = run_interleaved(cfg, runners, args.passes)
    prof = []
    if not args.no_profile:
        b = max(args.batches)
        prof = profile_graph(cfg, b)
        total = sum(t for _, _, t in prof)
        print(f"Graph-mode profile, batch {b} (MindSpore profiler; kernel time per forward): total {total / 1e3:.2f}s")
        for name, n, t in prof:
            if t >= 0.001 * total:
                print(f"  {name:14s} x{n:3d} {t:8.1f} ms  {100 * t / total:5.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": cfg.name, "threads": threads, "rows": rows, "profile": prof}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
