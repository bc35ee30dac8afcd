"""`vit-suite grad` (= `vit-suite check --grad`): every backend's loss, gradients and one SGD / AdamW step against
the float64 oracle, each backend in its own process (`shared.cli.worker grad`). The policy that judges them, and
its derivation, is shared/training/grad.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import fileio as F
from .. import weights as W
from ..config import ViTConfig
from ..errors import EXIT_CRASH, EXIT_OK, EXIT_OUT_OF_BOUNDS, UsageError
from ..training import grad as G
from .common import SEED_MAX, claim_output, console, esc, float_arg, int_arg, resolve_model, selected_backends, write_text
from .worker import run_child

#: tiny models run fastest single-threaded, and the oracle's float64 sums must not depend on a thread count
GRAD_CHILD_ENV = {"OMP_NUM_THREADS": "1", "GLOG_v": "3"}


def _section(d: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in d.items() if k.startswith(prefix + "/")}


def run_grad(cfg: ViTConfig, weights: Path, state, images, labels, backends: list[str], smoothing: float = 0.1,
             on_event=None, env: dict[str, str] | None = None, runner=run_child) -> G.GradResult:
    """The oracle (checked by finite differences of the reference), then every backend, each in its own process
    (`runner`: `run_child`, or a sweep's warm workers)."""
    notify = on_event or (lambda who, what: None)
    with F.work_dir("grad") as tmp:
        tmp = Path(tmp)
        inputs = tmp / "inputs.npz"
        np.savez(inputs, images=np.asarray(images, np.float32), labels=np.asarray(labels, np.int64),
                 label_smoothing=np.float64(smoothing))
        spec = {"weights": str(weights), "inputs": str(inputs)}
        notify("oracle", f"{G.ORACLE_BACKEND} float64")
        oracle = runner("grad", {**spec, "backend": G.ORACLE_BACKEND, "dtype": "float64"}, tmp, name="oracle",
                           env={**GRAD_CHILD_ENV, **(env or {})})
        ref_loss = G.reference_loss(cfg, state, images, labels, smoothing)
        if oracle.arrays is None:
            return G.GradResult(cfg, float("nan"), ref_loss, [], [], oracle_error=oracle.error)
        oracle_loss, oracle_grads = float(oracle.arrays["loss"]), _section(oracle.arrays, "grad")
        notify("oracle", "finite differences of the reference")
        fd = G.finite_difference_check(cfg, state, images, labels, smoothing, oracle_grads)
        runs = []
        for b in backends:
            notify(b, "gradients and steps")
            child = runner("grad", {**spec, "backend": b, "dtype": "float32"}, tmp, name=b,
                           env={**GRAD_CHILD_ENV, **(env or {})})
            if child.arrays is None:
                r = G.BackendGrad(b, error=child.error, unsupported=child.unsupported, seconds=child.seconds)
            else:
                d = child.arrays
                r = G.judge(cfg, state, b, float(d["loss"]), _section(d, "grad"),
                            {kind: _section(d, kind) for kind in G.STEP_HPARAMS}, oracle_loss, oracle_grads,
                            child.seconds)
            notify(b, r.status(cfg))
            runs.append(r)
    return G.GradResult(cfg, oracle_loss, ref_loss, fd, runs)


def cmd_grad(args) -> int:
    from ..init import random_images

    claim_output(args.json, "--json", force=args.force, inputs=(args.weights,))
    cfg, state, source, images, labels = resolve_model(args.weights, args.preset, args.seed)
    if images is not None:  # the shipped model's held-out digits: the first batch of them
        images, labels = images[:args.batch], labels[:args.batch]
    if cfg.num_classes < 2:
        raise UsageError(f"{cfg.name}: gradient conformance needs a classifier with >= 2 classes")
    if images is None:
        images = random_images(cfg, args.batch, args.seed)
        labels = np.random.default_rng([args.seed, 5]).integers(0, cfg.num_classes, args.batch)
    wanted = selected_backends(args.backends)
    c = console()
    c.print(f"[bold]vit-suite grad[/]: {esc(source)}; {esc(cfg.name)}, batch {len(labels)}, label smoothing "
            f"{args.label_smoothing}; oracle: {G.ORACLE_BACKEND} float64 (checked by finite differences of the "
            f"reference); backends: {', '.join(wanted)}")
    with F.work_dir("weights") as tmp:
        wpath = Path(args.weights) if args.weights else W.save(Path(tmp) / "w.safetensors", cfg, state)
        with c.status("starting") as status:
            res = run_grad(cfg, wpath, state, images, labels, wanted, args.label_smoothing,
                           lambda who, what: status.update(f"[bold]{who}[/]: {what}"))
    print_grad(c, res)
    if args.json:
        write_text(args.json, json.dumps(res.to_json(), indent=2, default=float), overwrite=args.force)
        c.print(f"wrote {args.json}", markup=False)
    if res.oracle_error or any(r.error and not r.unsupported for r in res.runs):
        return EXIT_CRASH
    return EXIT_OK if res.passed else EXIT_OUT_OF_BOUNDS


def print_grad(c, res: G.GradResult) -> None:
    from rich.markup import escape
    from rich.table import Table

    cfg = res.config
    fd_worst = max((r["abs_err"] / r["bound"] for r in res.fd_rows), default=float("nan"))
    c.print(f"oracle: loss {res.oracle_loss:.10f} vs reference {res.reference_loss:.10f}; finite differences at "
            f"{len(res.fd_rows)} coordinates, worst error/bound {fd_worst:.2e} -> "
            + ("[green]ok[/]" if res.oracle_ok else f"[red]FAIL[/] {escape(res.oracle_error or '')}"))
    t = Table(title=f"{esc(cfg.name)}: float32 gradients and one optimiser step vs the float64 oracle "
                    f"(gradient bound {G.grad_bound(cfg):.2e} = {G.GRAD_FACTOR:g} x fp32 logits bound)")
    for col in ("backend", "status", "loss rel err", "worst grad rel err / bound", "SGD step err/bound",
                "AdamW step err/bound", "optimiser vs NumPy", "time"):
        t.add_column(col)
    for r in res.runs:
        if r.error:
            style = "yellow" if r.unsupported else "red"
            t.add_row(r.backend, f"[{style}]{r.status(cfg)}[/]", "", escape(r.error.splitlines()[-1][:60]), "", "",
                      "", f"{r.seconds:.1f}s")
            continue
        k, e = r.worst_grad()
        cells = []
        for kind in ("sgd", "adamw"):
            kk, err, b = r.worst_step(kind, "e2e")
            cells.append(f"{err:.1e} / {b:.1e} ({kk})")
        opt = max(r.worst_step(kind, "opt")[1] / r.worst_step(kind, "opt")[2] for kind in ("sgd", "adamw"))
        t.add_row(r.backend, "[green]pass[/]" if r.passed(cfg) else "[bold red]FAIL[/]",
                  f"{r.loss_err:.1e} / {G.loss_bound(cfg):.1e}", f"{e:.2e} / {G.grad_bound(cfg):.1e} ({k})", *cells,
                  f"worst {opt:.2f} of bound", f"{r.seconds:.1f}s")
    c.print(t)
    c.print("[bold green]PASS[/]" if res.passed else "[bold red]FAIL[/]")


def add_parser(sub) -> None:
    d = sub.add_parser("grad", help="gradient and optimiser-step conformance of every backend vs a float64 oracle")
    d.add_argument("weights", nargs="?", help="canonical weights (default: the shipped digits model)")
    d.add_argument("--preset", help="random weights of a preset instead")
    d.add_argument("--backends", help="comma-separated (default: every installed one)")
    d.add_argument("--batch", type=int_arg(1, 1024), default=8)
    d.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0)
    d.add_argument("--label-smoothing", type=float_arg(0, 1, hi_open=True), default=0.1)
    d.add_argument("--json", help="write every metric to this JSON file")
    d.add_argument("--force", action="store_true", help="replace an existing --json file")
    d.set_defaults(func=cmd_grad)
