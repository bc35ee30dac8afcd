"""The gradient-conformance policy: how every backend's loss, parameter gradients and one SGD / AdamW step are
judged against a float64 oracle (the runner is `vit-suite check --grad`, shared/cli/grad.py).

Oracle. The PyTorch model run in float64 (the ORACLE_BACKEND's `Backend.loss_and_grads(dtype="float64")`, SDPA
attention in float64): autograd of the same code path. Caveat: vit_torch keeps float32 islands in a float64 model
(softmax_f32 on the explicit attention path, mean pooling, position-table resampling), so the oracle is exact to
~1e-16 for token-pooled models at their own grid and to ~u32 otherwise (ORACLE_LOSS_REL), still 100x below
the float32 bounds. It is itself checked against
central finite differences of the float64 NumPy reference (`shared.reference.forward` + the NumPy
label-smoothing cross-entropy `shared.training.recipe.smoothed_ce`) at random parameter coordinates
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
  * optimiser: the backend's new weights vs the NumPy float64 update (shared.training.recipe.sgd_update /
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

import math
from dataclasses import dataclass, field

import numpy as np

from .. import tolerances
from ..config import ViTConfig
from ..tolerances import GRAD_FACTOR, GRAD_FLOOR, STEP_ROUNDING, grad_bound, l2_norm  # the one policy
from . import recipe as T

#: the backend whose float64 autograd is the oracle (its `loss_and_grads` accepts dtype="float64")
ORACLE_BACKEND = "torch"
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
        out[k] = l2_norm(d) / max(l2_norm(g64), floor, 1e-300)
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
        delta = max(l2_norm(ref_oracle[k] - p), 1e-30)
        rounding = STEP_ROUNDING * U32 * (l2_norm(ref_oracle[k]) + lr * math.sqrt(p.size))
        g64 = np.asarray(oracle_grads[k], np.float64)
        if kind == "sgd":
            prop = lr * gb * l2_norm(g64)
        else:
            tau = gb * l2_norm(g64)
            f0 = _adam_dir(g64)
            prop = lr * l2_norm(np.maximum(np.abs(_adam_dir(g64 + tau) - f0), np.abs(_adam_dir(g64 - tau) - f0)))
            # frameworks hold beta1, beta2 in float32: 1 - beta carries a relative error up to u32 / (1 - beta),
            # which scales the whole update (bias corrections m / (1 - b1), sqrt(v / (1 - b2)))
            rounding += U32 * (1 / (1 - ADAM_BETAS[0]) + 0.5 / (1 - ADAM_BETAS[1])) * delta
        out[k] = {"opt_err": l2_norm(new - ref_own[k]) / delta, "opt_bound": rounding / delta,
                  "e2e_err": l2_norm(new - ref_oracle[k]) / delta, "e2e_bound": (prop + rounding) / delta}
    return out


# ------------------------------------------------------------------ finite differences
def reference_loss(cfg: ViTConfig, state, images, labels, smoothing: float) -> float:
    st = {k: np.asarray(v, np.float64) for k, v in state.items()}
    return T.training_loss(T.raw_logits_reference(cfg, st, images), labels, smoothing)[0]


def finite_difference_check(cfg: ViTConfig, state, images, labels, smoothing: float, oracle_grads,
                            n_coords: int = 8, seed: int = 0, keys: list[str] | None = None) -> list[dict]:
    """Central differences of the float64 reference loss at random coordinates vs the oracle gradient: of the patch
    projection, the head and random tensors (n_coords in all), and of each of `keys` too when given."""
    rng = np.random.default_rng([seed, 99])
    chosen = ["patch_embed.proj.weight", "head.weight"] + list(rng.choice(sorted(state), size=max(n_coords - 2, 0)))
    chosen += list(keys or [])
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


@dataclass
class BackendGrad:
    """One backend's loss, gradient and step errors against the oracle (or why it has none)."""

    backend: str
    error: str | None = None
    unsupported: bool = False  # the backend does not implement the training hooks
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

    def status(self, cfg: ViTConfig) -> str:
        if self.unsupported:
            return "unsupported"
        if self.error:
            return "error"
        return "pass" if self.passed(cfg) else "FAIL"


def judge(cfg: ViTConfig, state, backend: str, loss: float, grads: dict, new_states: dict[str, dict],
          oracle_loss: float, oracle_grads: dict, seconds: float = 0.0) -> BackendGrad:
    """A backend's loss, gradients and the states after each STEP_HPARAMS step, judged against the oracle."""
    r = BackendGrad(backend, seconds=seconds, loss=float(loss))
    r.loss_err = abs(r.loss - oracle_loss) / max(abs(oracle_loss), 1e-30)
    r.grad_err = grad_errors(oracle_grads, grads)
    for kind in STEP_HPARAMS:
        r.steps[kind] = step_errors(kind, cfg, state, new_states[kind], grads, oracle_grads)
    return r


@dataclass
class GradResult:
    """The oracle's own checks and every backend's judgement."""

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
        return self.oracle_ok and all(r.unsupported or r.passed(self.config) for r in self.runs)

    def to_json(self) -> dict:
        cfg = self.config
        return {"config": cfg.to_dict(), "grad_factor": GRAD_FACTOR, "grad_bound": grad_bound(cfg),
                "loss_bound": loss_bound(cfg), "oracle_loss": self.oracle_loss, "reference_loss": self.reference_loss,
                "finite_differences": self.fd_rows, "oracle_ok": self.oracle_ok, "passed": self.passed,
                "step_hparams": STEP_HPARAMS,
                "backends": {r.backend: {"status": r.status(cfg), "error": r.error, "seconds": r.seconds,
                                         "loss": r.loss, "loss_err": r.loss_err, "grad_err": r.grad_err,
                                         "steps": r.steps, "passed": r.passed(cfg)}
                             for r in self.runs}}
