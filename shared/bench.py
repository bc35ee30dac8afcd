"""`vit-suite bench`: images/s, achieved GFLOP/s and peak memory per backend and mode, next to the peers.

Each (backend, mode, dtype) is measured in a process of its own (`python -m shared.bench worker ...`), so the
frameworks do not share thread pools and the peak resident memory (ru_maxrss) belongs to that run alone.
Every backend package has a `bench.py` with the same contract:

    MODES: dict[str, str]        mode -> one-line description (its own modes, then its peers: timm, hf, keras_hub)
    bench(cfg, batch, dtype, mode, n_warmup, n_iter) -> dict with at least "images_per_s" and "median_s"

FLOPs: `vit_flops` counts 2 per multiply-add of every matmul (patch projection, qkv, q k^T, attention x v, proj,
MLP, pre-logits, head); LayerNorm, softmax and GELU are not counted (a few % of the total). The machine is noisy:
each figure is the median of `--iters` timed calls after warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import ViTConfig


def vit_flops(cfg: ViTConfig, image_size: tuple[int, int] | None = None) -> int:
    """Matmul FLOPs of one image's forward at `image_size` (default cfg.image_size)."""
    h, w = image_size or cfg.image_size
    P, D, W, M = cfg.patch_size, cfg.embed_dim, cfg.width, cfg.mlp_dim
    n = (h // P) * (w // P)
    t = n + cfg.num_prefix_tokens
    f = 2 * n * D * cfg.in_chans * P * P
    for i in range(cfg.depth):
        f += 2 * t * cfg.block_in_dim(i) * 3 * W  # qkv
        f += 2 * 2 * t * t * W  # q k^T and probs v, all heads
        f += 2 * t * W * W  # proj
        f += 2 * 2 * t * W * M  # fc1, fc2
    if cfg.representation_size:
        f += 2 * W * cfg.representation_size
    if cfg.num_classes:
        f += 2 * cfg.feature_dim * cfg.num_classes
    return f


def time_calls(call, n_warmup: int, n_iter: int) -> list[float]:
    """Seconds of each of `n_iter` calls of `call()` (which must block until its result exists), after `n_warmup`."""
    for _ in range(n_warmup):
        call()
    times = []
    for _ in range(n_iter):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def _modes(backend: str) -> dict[str, str]:
    import importlib

    return importlib.import_module(f"vit_{backend}.bench").MODES


def _worker(args) -> int:
    import importlib

    from .presets import get_preset

    cfg = get_preset(args.preset)
    mod = importlib.import_module(f"vit_{args.backend}.bench")
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        r = mod.bench(cfg, batch=batch, dtype=args.dtype, mode=args.mode, n_warmup=2, n_iter=args.iters)
        r.update(backend=args.backend, mode=args.mode, dtype=args.dtype, batch=batch, preset=cfg.name,
                 gflops_per_s=vit_flops(cfg) * batch / r["median_s"] / 1e9)
        rows.append(r)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for r in rows:
        r["peak_rss_mb"] = peak_mb
    Path(args.out).write_text(json.dumps(rows, default=str))
    return 0


def run_bench(args) -> int:
    """The `vit-suite bench` command (parsed by shared.cli)."""
    from rich.console import Console
    from rich.table import Table

    from .backend import available_backends
    from .presets import get_preset
    from .weights import atomic_write

    console = Console(highlight=False)
    cfg = get_preset(args.preset)
    backends = args.backends.split(",") if args.backends else available_backends()
    console.print(f"[bold]vit-suite bench[/]: {cfg.name}, {vit_flops(cfg) / 1e9:.1f} GFLOP/image, batch {args.batch}, "
                  f"{args.dtype}, {os.cpu_count()} cores; each run in its own process, medians of {args.iters} calls")
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="vit-suite-bench-") as tmp, console.status("starting") as status:
        for b in backends:
            for mode in _modes(b):
                if args.no_peers and mode in ("timm", "hf", "keras_hub"):
                    continue
                status.update(f"[bold]{b}[/] {mode} {args.dtype}")
                out = Path(tmp) / f"{b}-{mode}.json"
                cmd = [sys.executable, "-m", "shared.bench", "worker", "--backend", b, "--mode", mode, "--dtype",
                       args.dtype, "--batch", args.batch, "--preset", args.preset, "--iters", str(args.iters),
                       "--out", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
                if proc.returncode != 0:
                    msg = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                    failures.append((b, mode, msg))
                    console.print(f"  {b} {mode}: [yellow]{msg[:120]}[/]")
                    continue
                got = json.loads(out.read_text())
                rows += got
                console.print(f"  {b} {mode}: " + ", ".join(f"batch {r['batch']} {r['images_per_s']:.2f} img/s" for r in got))
    t = Table(title=f"{cfg.name} {args.dtype}: images/s (median), achieved GFLOP/s, peak RSS")
    for col in ("backend", "mode", "batch", "img/s", "GFLOP/s", "peak RSS MB"):
        t.add_column(col, justify="left" if col in ("backend", "mode") else "right")
    for r in rows:
        t.add_row(r["backend"], r["mode"], str(r["batch"]), f"{r['images_per_s']:.2f}", f"{r['gflops_per_s']:.0f}",
                  f"{r['peak_rss_mb']:.0f}")
    console.print(t)
    if args.json:
        atomic_write(args.json, lambda p: Path(p).write_text(json.dumps(
            {"preset": cfg.name, "gflop_per_image": vit_flops(cfg) / 1e9, "dtype": args.dtype, "rows": rows,
             "failures": [dict(backend=b, mode=m, error=e) for b, m, e in failures]}, indent=2, default=str)))
        console.print(f"wrote {args.json}")
    return 0 if rows else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="one backend and mode in this process (used by vit-suite bench)")
    w.add_argument("--backend", required=True)
    w.add_argument("--mode", required=True)
    w.add_argument("--dtype", default="float32")
    w.add_argument("--batch", default="1,8")
    w.add_argument("--preset", default="B/16")
    w.add_argument("--iters", type=int, default=5)
    w.add_argument("--out", required=True)
    args = p.parse_args(argv)
    return _worker(args)


if __name__ == "__main__":
    sys.exit(main())
