"""Gradient and optimiser-step conformance: every backend's loss, parameter gradients and one SGD / AdamW
step against a float64 oracle.

Oracle. The PyTorch model run in float64 (`vit_torch.train.loss_and_grads(dtype="float64")`, SDPA attention
in float64): autograd of the same code path. Caveat: vit_torch keeps float32 islands in a float64 model
(softmax_f32 on the explicit attention path, mean pooling, position-table resampling), so the oracle is exact to
~1e-16 for token-pooled models at their own grid and to ~u32 otherwise (ORACLE_LOSS_REL), still 100x below
the float32 bounds. It is itself checked against
central finite differences of the float64 NumPy reference (`shared.reference.forward` + the NumPy
label-smoothing cross-entropy `shared.training.smoothed_ce`) at random parameter coordinates
(`finite_difference_check`): step h = FD_STEP, truncation O(h^2) ~ 1e-10 and cancellation
O(u64 * loss / h) ~ 1e-11, so |fd - oracle| <= FD_ABS + FD_REL * |oracle| is a bug detector, not noise.

Loss. The loss is mean label-smoothing cross-entropy on the head output before any output softmax, with
no dropout. |loss - loss64| / |loss64| <= fp32_bound(cfg, 'logits') (the forward policy's bound).

Gradients, per parameter tensor:
    err = ||g - g64|| / max(||g64||, GRAD_FLOOR * ||all of g64|| / sqrt(#tensors))
    bound = GRAD_FACTOR * tolerances.fp32_bound(cfg, 'logits')
  GRAD_FACTOR = 4. The forward bound counts the rounding of a chain of L + 1 stages with reductions of
  length K. The backward pass runs that chain again in reverse (each matmul's input gradient dY W^T is a
  length-K reduction per block), so the chain doubles (x2); and every weight gradient X^T dY is one more
  reduction, over batch x tokens, on top of the full backward chain that produced dY, while the
  LayerNorm / softmax backward formulas subtract nearly equal terms (a mean of g * y removed from g),
  which can double the relative error of that stage (x2). Hence 2 x 2 = 4. The floor keeps a tensor whose
  gradient is legitimately ~0 (e.g. the key part of a qkv bias: softmax is invariant to it) from dividing
  by ~0. Measured worst errors: torch and Keras 5e-7 .. 6e-6 (20-150x below the bound), MindSpore 1e-6 on
  random tiny models but 5e-5 (0.5 of the bound) on the trained digits model (its float32 forward is
  ~20x less accurate: loss error 2.7e-6 vs 1e-7); a wrong GELU derivative, eps, a missing label-smoothing
  term or a transposed kernel give 1e-3 .. 1.

Optimiser steps (SGD and AdamW, same hyper-parameters, weight decay on matrices only, one step from
zero state, no dropout), per tensor, as errors relative to the size of the update Delta = p_new64 - p:
  * optimiser: the backend's new weights vs the NumPy float64 update (shared.training.sgd_update /
    adamw_update) of the backend's OWN gradients: only float32 rounding of the update may differ,
    bound STEP_ROUNDING * u32 * (||p_new|| + lr sqrt(n)) / ||Delta|| (AdamW: + u32 (1/(1-b1) + 0.5/(1-b2)),
    the float32 storage of beta1, beta2 scaling the update: Keras computes 1 - beta2 in float32);
  * end to end: vs the NumPy float64 update from the ORACLE gradients. SGD: the update is linear in g,
    so ||error|| <= lr ||g - g64|| <= lr * grad_bound * ||g64|| plus the rounding term. AdamW's first
    step is lr * g / (|g| + eps) elementwise, ill-conditioned where |g| ~ eps; the bound propagates a
    gradient error of tau = grad_bound * ||g64|| (the largest an element's error can be under the
    gradient bound) through that exact function elementwise (f is monotone, so the worst case is at
    g +- tau), plus the rounding term.
  Two backends that each pass agree with each other within the sum of their bounds.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import tolerances, training as T
from .config import ViTConfig

from .tolerances import GRAD_FACTOR, GRAD_FLOOR, STEP_ROUNDING, grad_bound  # noqa: E402  (the one policy)
FD_STEP = 1e-5
#: oracle loss vs the float64 reference: vit_torch keeps float32 islands even in a float64 model (mean pooling
#: and position-table resampling compute in float32), ~u32 = 6e-8 relative, still 100x below every float32 bound
ORACLE_LOSS_REL = 2e-7
FD_ABS = 1e-8
FD_REL = 1e-5
U32 = tolerances.UNIT_ROUNDOFF["float32"]

#: hyper-parameters of the one-step checks
STEP_HPARAMS = {"sgd": {"lr": 0.1, "weight_decay": 0.05}, "adamw": {"lr": 1e-3, "weight_decay": 0.05}}
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8



def loss_bound(cfg: ViTConfig) -> float:
    return tolerances.fp32_bound(cfg, "logits")


def grad_errors(oracle: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, float]:
    total = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in oracle.values()))
    floor = GRAD_FLOOR * total / math.sqrt(max(len(oracle), 1))
    out = {}
    for k, g64 in oracle.items():
        g64 = np.asarray(g64, np.float64)
        if k not in grads:
            out[k] = float("inf")
            continue
        d = np.asarray(grads[k], np.float64) - g64
        out[k] = float(np.linalg.norm(d)) / max(float(np.linalg.norm(g64)), floor, 1e-300)
    return out


def numpy_step(kind: str, state, grads) -> dict[str, np.ndarray]:
    hp = STEP_HPARAMS[kind]
    if kind == "sgd":
        return T.sgd_update(state, grads, hp["lr"], hp["weight_decay"])
    return T.adamw_update(state, grads, hp["lr"], hp["weight_decay"], *ADAM_BETAS, ADAM_EPS, step=1)


def _adam_dir(g, eps=ADAM_EPS):
    return g / (np.abs(g) + eps)


def step_errors(kind: str, cfg: ViTConfig, state, new_state, own_grads, oracle_grads) -> dict[str, dict]:
    """Per tensor: errors of the backend's step (relative to the update size) and their bounds."""
    hp = STEP_HPARAMS[kind]
    lr = hp["lr"]
    gb = grad_bound(cfg)
    ref_oracle = numpy_step(kind, state, oracle_grads)
    ref_own = numpy_step(kind, state, own_grads)
    out = {}
    for k, p in state.items():
        p = np.asarray(p, np.float64)
        new = np.asarray(new_state[k], np.float64)
        delta = max(float(np.linalg.norm(ref_oracle[k] - p)), 1e-30)
        rounding = STEP_ROUNDING * U32 * (float(np.linalg.norm(ref_oracle[k])) + lr * math.sqrt(p.size))
        g64 = np.asarray(oracle_grads[k], np.float64)
        if kind == "sgd":
            prop = lr * gb * float(np.linalg.norm(g64))
        else:
            tau = gb * float(np.linalg.norm(g64))
            f0 = _adam_dir(g64)
            prop = lr * float(np.linalg.norm(np.maximum(np.abs(_adam_dir(g64 + tau) - f0),
                                                        np.abs(_adam_dir(g64 - tau) - f0))))
            # frameworks hold beta1, beta2 in float32: 1 - beta carries a relative error up to u32 / (1 - beta),
            # which scales the whole update (bias corrections m / (1 - b1), sqrt(v / (1 - b2)))
            rounding += U32 * (1 / (1 - ADAM_BETAS[0]) + 0.5 / (1 - ADAM_BETAS[1])) * delta
        out[k] = {"opt_err": float(np.linalg.norm(new - ref_own[k])) / delta, "opt_bound": rounding / delta,
                  "e2e_err": float(np.linalg.norm(new - ref_oracle[k])) / delta, "e2e_bound": (prop + rounding) / delta}
    return out


# ------------------------------------------------------------------ finite differences
def reference_loss(cfg: ViTConfig, state, images, labels, smoothing: float) -> float:
    st = {k: np.asarray(v, np.float64) for k, v in state.items()}
    return T.smoothed_ce(T.raw_logits_reference(cfg, st, images), labels, smoothing)[0]


def finite_difference_check(cfg: ViTConfig, state, images, labels, smoothing: float, oracle_grads,
                            n_coords: int = 8, seed: int = 0) -> list[dict]:
    """Central differences of the float64 reference loss at random coordinates vs the oracle gradient."""
    rng = np.random.default_rng([seed, 99])
    keys = sorted(state)
    chosen = ["patch_embed.proj.weight", "head.weight"] + list(rng.choice(keys, size=max(n_coords - 2, 0)))
    base = {k: np.asarray(v, np.float64).copy() for k, v in state.items()}
    rows = []
    for k in chosen:
        idx = tuple(int(rng.integers(s)) for s in base[k].shape)
        orig = base[k][idx]
        base[k][idx] = orig + FD_STEP
        lp = reference_loss(cfg, base, images, labels, smoothing)
        base[k][idx] = orig - FD_STEP
        lm = reference_loss(cfg, base, images, labels, smoothing)
        base[k][idx] = orig
        fd = (lp - lm) / (2 * FD_STEP)
        g = float(np.asarray(oracle_grads[k], np.float64)[idx])
        rows.append({"key": k, "index": list(idx), "fd": fd, "oracle": g, "abs_err": abs(fd - g),
                     "bound": FD_ABS + FD_REL * abs(g), "passed": abs(fd - g) <= FD_ABS + FD_REL * abs(g)})
    return rows


# ------------------------------------------------------------------ worker (one backend per process)
def grad_worker(args) -> int:
    """`python -m shared.grad W --backend B --inputs in.npz --output out.npz [--dtype float64]` (one backend)."""
    from . import weights as W
    from .train_cli import train_module

    cfg, state = W.load(args.weights)
    with np.load(args.inputs, allow_pickle=False) as z:
        images, labels, smoothing = z["images"], z["labels"], float(z["label_smoothing"])
    mod = train_module(args.backend)
    t0 = time.perf_counter()
    arrays = {}
    if args.dtype == "float64":
        loss, grads = mod.loss_and_grads(cfg, state, images, labels, smoothing, dtype="float64")
    else:
        loss, grads = mod.loss_and_grads(cfg, state, images, labels, smoothing)
        for kind, hp in STEP_HPARAMS.items():
            new = mod.one_step(cfg, state, images, labels, kind, lr=hp["lr"], weight_decay=hp["weight_decay"],
                               label_smoothing=smoothing, betas=ADAM_BETAS, eps=ADAM_EPS)
            arrays.update({f"{kind}/{k}": v for k, v in new.items()})
    arrays.update({f"grad/{k}": np.asarray(v) for k, v in grads.items()})
    arrays["loss"] = np.float64(loss)
    arrays["__meta__"] = np.array(json.dumps({"backend": args.backend, "dtype": args.dtype,
                                              "seconds": time.perf_counter() - t0}))
    W.atomic_write(args.output, lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    return 0


def run_worker(backend: str, weights: Path, inputs: Path, out: Path, dtype: str = "float32",
               timeout: float = 1800) -> tuple[dict | None, str | None, float]:
    cmd = [sys.executable, "-m", "shared.grad", str(weights), "--backend", backend,
           "--inputs", str(inputs), "--output", str(out), "--dtype", dtype]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               GLOG_v="3")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        return None, "\n".join(proc.stderr.strip().splitlines()[-6:]) or f"exit code {proc.returncode}", secs
    with np.load(out, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files if not k.startswith("__")}
    return d, None, secs


def _section(d: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in d.items() if k.startswith(prefix + "/")}


@dataclass
class BackendGrad:
    backend: str
    error: str | None = None
    seconds: float = 0.0
    loss: float | None = None
    loss_err: float | None = None
    grad_err: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)  # kind -> key -> metrics

    def worst_grad(self):
        return max(self.grad_err.items(), key=lambda kv: kv[1]) if self.grad_err else (None, float("nan"))

    def worst_step(self, kind: str, which: str):
        rows = self.steps.get(kind, {})
        if not rows:
            return None, float("nan"), float("nan")
        k, m = max(rows.items(), key=lambda kv: kv[1][f"{which}_err"] / kv[1][f"{which}_bound"])
        return k, m[f"{which}_err"], m[f"{which}_bound"]

    def passed(self, cfg: ViTConfig) -> bool:
        if self.error:
            return False
        ok = self.loss_err <= loss_bound(cfg) and all(e <= grad_bound(cfg) for e in self.grad_err.values())
        for rows in self.steps.values():
            ok &= all(m["opt_err"] <= m["opt_bound"] and m["e2e_err"] <= m["e2e_bound"] for m in rows.values())
        return bool(ok)


@dataclass
class GradResult:
    config: ViTConfig
    oracle_loss: float
    reference_loss: float
    fd_rows: list
    runs: list
    oracle_error: str | None = None

    @property
    def oracle_ok(self) -> bool:
        return self.oracle_error is None and all(r["passed"] for r in self.fd_rows) and \
            abs(self.oracle_loss - self.reference_loss) <= ORACLE_LOSS_REL * max(1.0, abs(self.reference_loss))

    @property
    def passed(self) -> bool:
        return self.oracle_ok and all(r.passed(self.config) for r in self.runs)

    def to_json(self) -> dict:
        cfg = self.config
        return {"config": cfg.to_dict(), "grad_factor": GRAD_FACTOR, "grad_bound": grad_bound(cfg),
                "loss_bound": loss_bound(cfg), "oracle_loss": self.oracle_loss, "reference_loss": self.reference_loss,
                "finite_differences": self.fd_rows, "oracle_ok": self.oracle_ok, "passed": self.passed,
                "step_hparams": STEP_HPARAMS,
                "backends": {r.backend: {"error": r.error, "seconds": r.seconds, "loss": r.loss, "loss_err": r.loss_err,
                                         "grad_err": r.grad_err, "steps": r.steps, "passed": r.passed(cfg)}
                             for r in self.runs}}


def run_grad(cfg: ViTConfig, weights: Path, state, images, labels, backends: list[str], smoothing: float = 0.1,
             on_event=None) -> GradResult:
    notify = on_event or (lambda who, what: None)
    with tempfile.TemporaryDirectory(prefix="vit-suite-grad-") as tmp:
        tmp = Path(tmp)
        inputs = tmp / "inputs.npz"
        np.savez(inputs, images=np.asarray(images, np.float32), labels=np.asarray(labels, np.int64),
                 label_smoothing=np.float64(smoothing))
        notify("oracle", "torch float64")
        od, oerr, _ = run_worker("torch", weights, inputs, tmp / "oracle.npz", "float64")
        ref_loss = reference_loss(cfg, state, images, labels, smoothing)
        if od is None:
            return GradResult(cfg, float("nan"), ref_loss, [], [], oracle_error=oerr)
        oracle = _section(od, "grad")
        notify("oracle", "finite differences of the reference")
        fd = finite_difference_check(cfg, state, images, labels, smoothing, oracle)
        runs = []
        for b in backends:
            notify(b, "gradients and steps")
            d, err, secs = run_worker(b, weights, inputs, tmp / f"{b}.npz")
            r = BackendGrad(b, error=err, seconds=secs)
            if d is not None:
                r.loss = float(d["loss"])
                r.loss_err = abs(r.loss - float(od["loss"])) / max(abs(float(od["loss"])), 1e-30)
                own = _section(d, "grad")
                r.grad_err = grad_errors(oracle, own)
                for kind in STEP_HPARAMS:
                    r.steps[kind] = step_errors(kind, cfg, state, _section(d, kind), own, oracle)
            notify(b, "pass" if r.passed(cfg) else ("error" if r.error else "FAIL"))
            runs.append(r)
    return GradResult(cfg, float(od["loss"]), ref_loss, fd, runs)


def run_grad_command(args) -> int:
    from . import weights as W
    from .backend import available_backends
    from .cli import UsageError, _console, resolve_model
    from .init import random_images

    cfg, state, source, images, labels = resolve_model(args.weights, args.preset, args.seed)
    if images is not None:  # the shipped model's held-out digits: the first batch of them
        images, labels = images[:args.batch], labels[:args.batch]
    if cfg.num_classes < 2:
        raise UsageError(f"{cfg.name}: gradient conformance needs a classifier with >= 2 classes")
    if images is None:
        images = random_images(cfg, args.batch, args.seed)
        labels = np.random.default_rng([args.seed, 5]).integers(0, cfg.num_classes, args.batch)
    wanted = args.backends.split(",") if args.backends else [b for b in available_backends()
                                                             if b in ("torch", "keras", "mindspore")]
    c = _console()
    c.print(f"[bold]vit-suite grad[/]: {source}; {cfg.name}, batch {len(labels)}, label smoothing "
            f"{args.label_smoothing}; oracle: torch float64 (checked by finite differences of the reference); "
            f"backends: {', '.join(wanted)}")
    with tempfile.TemporaryDirectory(prefix="vit-suite-") as tmp:
        wpath = Path(args.weights) if args.weights else W.save(Path(tmp) / "w.safetensors", cfg, state)
        with c.status("starting") as status:
            res = run_grad(cfg, wpath, state, images, labels, wanted, args.label_smoothing,
                           lambda who, what: status.update(f"[bold]{who}[/]: {what}"))
    print_grad(c, res)
    if args.json:
        W.atomic_write(args.json, lambda t: Path(t).write_text(json.dumps(res.to_json(), indent=2, default=float)))
        c.print(f"wrote {args.json}")
    if res.oracle_error or any(r.error for r in res.runs):
        return 1
    return 0 if res.passed else W.EXIT_OUT_OF_BOUNDS


def print_grad(c, res: GradResult) -> None:
    from rich.table import Table

    cfg = res.config
    fd_worst = max((r["abs_err"] / r["bound"] for r in res.fd_rows), default=float("nan"))
    c.print(f"oracle: loss {res.oracle_loss:.10f} vs reference {res.reference_loss:.10f}; finite differences at "
            f"{len(res.fd_rows)} coordinates, worst error/bound {fd_worst:.2e} -> "
            + ("[green]ok[/]" if res.oracle_ok else f"[red]FAIL[/] {res.oracle_error or ''}"))
    t = Table(title=f"{cfg.name}: float32 gradients and one optimiser step vs the float64 oracle "
                    f"(gradient bound {grad_bound(cfg):.2e} = {GRAD_FACTOR:g} x fp32 logits bound)")
    for col in ("backend", "status", "loss rel err", "worst grad rel err / bound", "SGD step err/bound",
                "AdamW step err/bound", "optimiser vs NumPy", "time"):
        t.add_column(col)
    for r in res.runs:
        if r.error:
            t.add_row(r.backend, "[red]error[/]", "", r.error.splitlines()[-1][:60], "", "", "", f"{r.seconds:.1f}s")
            continue
        k, e = r.worst_grad()
        ok = r.passed(cfg)
        cells = []
        for kind in ("sgd", "adamw"):
            kk, err, b = r.worst_step(kind, "e2e")
            cells.append(f"{err:.1e} / {b:.1e} ({kk})")
        opt = max(r.worst_step(kind, "opt")[1] / r.worst_step(kind, "opt")[2] for kind in ("sgd", "adamw"))
        t.add_row(r.backend, "[green]pass[/]" if ok else "[bold red]FAIL[/]",
                  f"{r.loss_err:.1e} / {loss_bound(cfg):.1e}", f"{e:.2e} / {grad_bound(cfg):.1e} ({k})", *cells,
                  f"worst {opt:.2f} of bound", f"{r.seconds:.1f}s")
    c.print(t)
    c.print("[bold green]PASS[/]" if res.passed else "[bold red]FAIL[/]")


def main(argv=None) -> int:
    """The child-process entry point of the gradient check (one backend per process)."""
    import argparse

    w = argparse.ArgumentParser(prog="python -m shared.grad", description=grad_worker.__doc__)
    w.add_argument("weights")
    w.add_argument("--backend", required=True)
    w.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    w.add_argument("--inputs", required=True, help=".npz with images, labels and hyper-parameters")
    w.add_argument("--output", required=True)
    return grad_worker(w.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
