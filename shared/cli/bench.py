"""`vit-suite bench`: images/s, achieved GFLOP/s and peak memory per backend and mode, next to the peers.

Each (backend, mode, dtype) is measured in a process of its own (`shared.cli.worker bench`), so the frameworks
do not share thread pools and the peak resident memory (VmHWM, see worker.peak_rss_mb) belongs to that run
alone. A backend's modes
and its timing come from its `Backend.bench_modes()` / `Backend.bench()` hooks (a backend without them is
listed as unsupported); the FLOP count is `shared.bench.vit_flops`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import fileio as F
from ..backend import get_backend, import_frameworks_in_safe_order
from ..bench import vit_flops
from ..errors import EXIT_CRASH, EXIT_OK
from ..presets import get_preset
from .common import claim_output, console, esc, int_arg, selected_backends, write_text


def cmd_bench(args) -> int:
    from rich.markup import escape
    from rich.table import Table

    from .worker import run_child

    claim_output(args.json, "--json", force=args.force)
    c = console()
    cfg = get_preset(args.preset)
    backends = selected_backends(args.backends)
    batches = [int(b) for b in args.batch.split(",")]
    c.print(f"[bold]vit-suite bench[/]: {esc(cfg.name)}, {vit_flops(cfg) / 1e9:.1f} GFLOP/image, batch {args.batch}, "
            f"{args.dtype}, {os.cpu_count()} cores; each run in its own process, medians of {args.iters} calls")
    import_frameworks_in_safe_order(backends)  # asking for the modes imports the backends' modules here
    rows, failures = [], []
    with F.work_dir("bench") as tmp, c.status("starting") as status:
        for b in backends:
            modes = get_backend(b).bench_modes()
            if not modes:
                failures.append((b, "-", "unsupported: the backend has no benchmark hooks"))
                c.print(f"  {b}: [yellow]unsupported: no benchmark hooks[/]")
            for mode, desc in modes.items():
                if args.no_peers and desc.startswith("peer:"):
                    continue
                status.update(f"[bold]{b}[/] {mode} {args.dtype}")
                spec = {"backend": b, "mode": mode, "dtype": args.dtype, "batch": batches, "preset": args.preset,
                        "iters": args.iters}
                child = run_child("bench", spec, Path(tmp), name=f"{b}-{mode}")
                if child.error:
                    msg = child.error.splitlines()[-1]
                    failures.append((b, mode, msg))
                    c.print(f"  {b} {mode}: [yellow]{escape(msg[:120])}[/]")
                    continue
                got = child.meta["rows"]
                rows += got
                c.print(f"  {b} {mode}: " + ", ".join(f"batch {r['batch']} {r['images_per_s']:.2f} img/s" for r in got))
    # the ratio to timm (the torch backend's "timm" peer mode) at the same batch, in this run
    timm = {r["batch"]: r["images_per_s"] for r in rows if r["mode"] == "timm"}
    for r in rows:
        r["vs_timm"] = r["images_per_s"] / timm[r["batch"]] if r["batch"] in timm else None
    t = Table(title=f"{esc(cfg.name)} {args.dtype}: images/s (median), achieved GFLOP/s, ratio to timm, peak RSS")
    for col in ("backend", "mode", "batch", "img/s", "GFLOP/s", "x timm", "peak RSS MB"):
        t.add_column(col, justify="left" if col in ("backend", "mode") else "right")
    for r in rows:
        t.add_row(r["backend"], r["mode"], str(r["batch"]), f"{r['images_per_s']:.2f}", f"{r['gflops_per_s']:.0f}",
                  "-" if r["vs_timm"] is None else f"{r['vs_timm']:.2f}", f"{r['peak_rss_mb']:.0f}")
    c.print(t)
    if args.json:
        write_text(args.json, json.dumps(
            {"preset": cfg.name, "gflop_per_image": vit_flops(cfg) / 1e9, "dtype": args.dtype, "rows": rows,
             "failures": [dict(backend=b, mode=m, error=e) for b, m, e in failures]}, indent=2, default=str),
            overwrite=args.force)
        c.print(f"wrote {args.json}", markup=False)
    return EXIT_OK if rows else EXIT_CRASH


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="images/s, GFLOP/s and peak memory per backend and mode, next to timm/HF")
    b.add_argument("--backends", help="comma-separated (default: every installed one)")
    b.add_argument("--preset", default="B/16")
    b.add_argument("--batch", default="1,8")
    b.add_argument("--dtype", default="float32")
    b.add_argument("--iters", type=int_arg(1, 1000), default=5)
    b.add_argument("--no-peers", action="store_true", help="skip timm / Hugging Face")
    b.add_argument("--json", help="write the figures to this JSON file")
    b.add_argument("--force", action="store_true", help="replace an existing --json file")
    b.set_defaults(func=cmd_bench)
