"""The tolerance policy: one place, used by `vit-suite check`, printed by `--explain`, used by the tests.

Every stage is compared with the float64 reference by its relative L2 error

    err = ||y - y64|| / max(||y64||, sqrt(n) * RMS_FLOOR)

(the floor keeps stages that are legitimately ~0 from dividing by ~0).

float32: err <= F32_SAFETY * u32 * sqrt(K) * (L + 1)
    u32 = 2^-24 is float32's unit roundoff. A length-K dot product with
    independent rounding errors has relative error ~ u * sqrt(K) (Higham's
    probabilistic bound; the worst case K*u is never approached by BLAS's blocked
    sums). K is the longest reduction in the model (C*P*P, width, MLP width or the head's pooled width).
    L counts the transformer blocks the stage has been through: the residual stream
    carries each block's rounding forward, so errors add per block. F32_SAFETY
    covers the ~6 roundings per block (qkv, scores, softmax, attn*v, proj, MLP) and
    the per-block gain. timm's Eva options add roundings inside a block, none to K or L: a rotary
    position rotates each q and k element as t*cos + r*sin (two more roundings, on a table itself
    rounded once to float32: ~3u per element, entering the scores through a length-head_dim dot product
    like q's own rounding), an inner norm (attention / MLP sub-LN) one more rounding each, separate
    q/k/v projections and an unpacked SwiGLU none: ~10 roundings per block, still inside F32_SAFETY.
    Measured (float32 vs float64, logits): tiny timm Eva models of every rope form 1.5e-7..9e-7 against
    bounds of 3.5e-5..4e-5; tiny_eva02 / tiny_rope_mixed 1.9e-7..7e-7 (torch, MindSpore, the float32
    reference) against 2.0e-5: 28x-270x under.
    NaFlexVit's tables add nothing per block: an aspect-preserving resample is another resize matrix (the same
    float32 einsum, a few non-zero taps per output), a factorized pair one rounding (y[i] + x[j] in float32) on
    the table before it is resampled, entering the residual stream once. Measured (logits): tiny timm par_gap,
    parfac_gap and C-RADIOv4 against timm 2.5e-7..7e-7 under a bound of 2.3e-5 (30-90x); tiny_naflex_par /
    tiny_naflex_parfac on the three backends at 0.036-0.039 of the bound in their worst stage.
    A relative position bias (BEiT, timm's RelPosMlp) adds one rounding per block (the
    score + bias sum; the bias itself is a gather, exact, or the MLP's two linears over (2gh-1)(2gw-1) offsets,
    whose hidden width joins K): 7 roundings, still inside the safety factor's allowance. Measured float32
    errors sit 25-300x below this bound (relative-bias models against timm and across the backends: 30-170x).
    Post-norm blocks (block_norm='post': timm's rpn, EvaBlockPostNorm) move the two norms to the end of each
    branch and add no rounding: the same ~6 per block. Measured (float32 vs float64, logits): tiny timm
    post-norm models (ResPostBlock, ResPostRelPosBlock, EvaBlockPostNorm) 5e-7..9.5e-7 against 3.5e-5..7.9e-5
    (53x-84x under); tiny_rpn in torch, Keras and MindSpore at 0.04 of the bound on its worst stage.
    While the bugs this suite exists for (q/k swapped, tanh for erf GELU, a wrong
    scale, a transposed kernel) are 1e-3 .. 1. A LayerNorm eps off by 10x moves
    unit-variance activations by only ~5e-6, inside the bound for normal inputs:
    the suite's zeros/uniform inputs (small variance, where eps matters) catch it.

bfloat16 / float16: err <= LOWP_MULTIPLIER * err_ref + LOWP_FLOOR_UNITS * u_dtype
    err_ref is the error of the reference itself run at that precision
    (shared/reference.py rounds where a real kernel rounds) on the same weights and
    inputs. This is the approach of flash-attention's and PyTorch's attention tests:
    a low-precision kernel may be no worse than a small multiple of what an honest
    low-precision computation loses; the floor absorbs one extra rounding.

Across backends: two backends that each pass are within bound_a + bound_b of each
other (triangle inequality), which is the pairwise bound.

Gradients (`vit-suite check --grad`, shared/training/grad.py): each parameter's gradient is within
GRAD_FACTOR * (the float32 logits bound) of a float64 oracle in relative L2. GRAD_FACTOR = 4: the
backward pass runs the forward's rounding chain again in reverse (x2), and every weight gradient adds
one more reduction on top while LayerNorm/softmax backward subtract nearly equal terms (x2). GRAD_FLOOR
keeps a legitimately ~0 gradient from dividing by ~0; STEP_ROUNDING scales the float32 rounding
allowed in one optimiser update. The full derivation is in shared/training/grad.py.

Top-1 agreement with the reference is reported, not judged: near-ties can flip
legitimately at low precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .config import ViTConfig

UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
F32_SAFETY = 8.0
LOWP_MULTIPLIER = 3.0
LOWP_FLOOR_UNITS = 2.0
RMS_FLOOR = 1e-2
GRAD_FACTOR = 4.0
GRAD_FLOOR = 1e-3
STEP_ROUNDING = 8.0


def reduction_length(cfg: ViTConfig) -> int:
    return max(cfg.in_chans * cfg.patch_size ** 2, cfg.embed_dim, cfg.width, cfg.mlp_dim, cfg.pooled_dim,
               cfg.rel_pos_dim if cfg.rel_pos == "mlp" else 0)


def blocks_before(cfg: ViTConfig, stage: str) -> int:
    """How many transformer blocks feed this stage."""
    if stage in ("patch_embed", "patch_norm", "embed", "norm_pre"):
        return 0
    if stage.startswith("block_"):
        return int(stage.split("_")[1]) + 1
    return cfg.depth


def fp32_bound(cfg: ViTConfig, stage: str) -> float:
    return F32_SAFETY * UNIT_ROUNDOFF["float32"] * math.sqrt(reduction_length(cfg)) * (blocks_before(cfg, stage) + 1)


def grad_bound(cfg: ViTConfig) -> float:
    """Relative L2 bound of one parameter's float32 gradient against the float64 oracle."""
    return GRAD_FACTOR * fp32_bound(cfg, "logits")


def lowp_bound(dtype: str, reference_error: float) -> float:
    return LOWP_MULTIPLIER * reference_error + LOWP_FLOOR_UNITS * UNIT_ROUNDOFF[dtype]


def l2_norm(x: np.ndarray) -> float:
    """The L2 norm of every element, the same bits whatever the core count: NumPy's own sum of products, where
    np.linalg.norm's BLAS dot splits the sum between its threads (so its last bits followed the machine's cores),
    and, beside busy child processes, spent most of its time waiting for them. Summed in float64."""
    v = np.ravel(np.asarray(x, dtype=np.float64))
    return math.sqrt(float(np.einsum("i,i->", v, v)))


def _float64_pair(actual: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shape mismatch: got {a.shape}, reference {e.shape}")
    return a, e


def _relative(diff_norm: float, e: np.ndarray, e_norm: float) -> float:
    return diff_norm / max(e_norm, math.sqrt(e.size) * RMS_FLOOR)


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    a, e = _float64_pair(actual, expected)
    return _relative(l2_norm(a - e), e, l2_norm(e))


@dataclass
class StageResult:
    stage: str
    rel_l2: float
    bound: float
    max_abs: float
    max_rel: float
    cosine: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.rel_l2)) and self.rel_l2 <= self.bound


@dataclass
class Verdict:
    dtype: str
    stages: list[StageResult] = field(default_factory=list)
    top1_agreement: float | None = None

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)

    @property
    def first_failure(self) -> StageResult | None:
        return next((s for s in self.stages if not s.passed), None)

    def summary(self) -> str:
        f = self.first_failure
        if f is None:
            worst = max(self.stages, key=lambda s: s.rel_l2 / s.bound)
            return f"pass ({self.dtype}; worst {worst.stage}: {worst.rel_l2:.2e} <= {worst.bound:.2e})"
        return f"FAIL ({self.dtype}): first stage out of bound is {f.stage}: rel L2 {f.rel_l2:.3e} > {f.bound:.3e}"


def stage_metrics(stage: str, actual: np.ndarray, expected: np.ndarray, bound: float) -> StageResult:
    a, e = _float64_pair(actual, expected)
    d = a - e
    na, ne = l2_norm(a), l2_norm(e)
    err = _relative(l2_norm(d), e, ne)  # rel_l2(a, e)
    np.abs(d, out=d)
    scale = max(float(np.sqrt(np.mean(e ** 2))), RMS_FLOOR)
    cos = float(np.sum(a * e) / (na * ne)) if na > 0 and ne > 0 else float(na == ne)
    return StageResult(stage, err, bound, float(d.max(initial=0.0)),
                       float((d / (np.abs(e) + 1e-3 * scale)).max(initial=0.0)), cos)


def nonfinite_counts(stages: Mapping[str, np.ndarray]) -> dict[str, int]:
    """{stage: number of NaN/Inf values} for every stage that has any, in the stages' order."""
    out = {}
    for name, v in stages.items():
        a = np.asarray(v)
        if a.dtype.kind in "fc":
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                out[name] = bad
    return out


def describe_nonfinite(counts: Mapping[str, int], stages: Mapping[str, np.ndarray]) -> str:
    """'block_3: 12 of 4096 values NaN/Inf; norm: ...' (first stage first: where it began)."""
    return "; ".join(f"{s}: {n} of {np.asarray(stages[s]).size} values NaN/Inf" for s, n in counts.items())


def stage_bounds(cfg: ViTConfig, dtype: str, ref64: Mapping[str, np.ndarray],
                 ref_lowp: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """Bound per stage. Low precision needs the reference run at that dtype (`reference.forward(..., dtype=)`)."""
    stages = [s for s in cfg.stage_names() if s in ref64]
    if dtype == "float32":
        return {s: fp32_bound(cfg, s) for s in stages}
    if dtype not in ("bfloat16", "float16"):
        raise ValueError(f"no tolerance policy for dtype {dtype!r}")
    if ref_lowp is None:
        raise ValueError(f"{dtype} bounds need the reference's own {dtype} run (ref_lowp)")
    return {s: lowp_bound(dtype, rel_l2(ref_lowp[s], ref64[s])) for s in stages}


def top1(logits_a: np.ndarray, logits_b: np.ndarray) -> float | None:
    if logits_a.ndim != 2 or logits_a.shape[1] < 2:
        return None
    return float(np.mean(np.argmax(logits_a, 1) == np.argmax(logits_b, 1)))


def judge(cfg: ViTConfig, dtype: str, actual: Mapping[str, np.ndarray], ref64: Mapping[str, np.ndarray],
          ref_lowp: Mapping[str, np.ndarray] | None = None) -> Verdict:
    """Compare every stage of a backend's output with the reference under this policy."""
    bounds = stage_bounds(cfg, dtype, ref64, ref_lowp)
    missing = [s for s in bounds if s not in actual]
    if missing:
        raise ValueError(f"backend output lacks stages {missing}")
    v = Verdict(dtype, [stage_metrics(s, actual[s], ref64[s], b) for s, b in bounds.items()])
    if cfg.num_classes:
        v.top1_agreement = top1(np.asarray(actual["logits"]), np.asarray(ref64["logits"]))
    return v


@dataclass
class PairResult:
    """Two backends against each other: the worst stage relative to the pairwise bound, the first stage over it."""

    a: str
    b: str
    worst_stage: str
    rel_l2: float
    bound: float
    first_failure: str | None

    @property
    def passed(self) -> bool:
        return self.first_failure is None


def compare_pair(cfg: ViTConfig, a: str, stages_a: Mapping[str, np.ndarray], verdict_a: Verdict,
                 b: str, stages_b: Mapping[str, np.ndarray], verdict_b: Verdict) -> PairResult:
    """Two backends that each pass are within bound_a + bound_b of each other at every stage (triangle inequality)."""
    bounds_a = {s.stage: s.bound for s in verdict_a.stages}
    bounds_b = {s.stage: s.bound for s in verdict_b.stages}
    worst, worst_ratio, first = None, -1.0, None
    for stage in cfg.stage_names():
        if stage not in bounds_a:
            continue
        err = rel_l2(stages_a[stage], stages_b[stage])
        bound = bounds_a[stage] + bounds_b[stage]
        if err / bound > worst_ratio:
            worst, worst_ratio = (stage, err, bound), err / bound
        if first is None and not err <= bound:
            first = stage
    return PairResult(a, b, worst[0], worst[1], worst[2], first)


def explain(cfg: ViTConfig | None = None) -> str:
    text = __doc__.strip()
    if cfg is not None:
        k = reduction_length(cfg)
        text += (f"\n\nFor {cfg.name}: K = {k}, depth = {cfg.depth}; float32 bound "
                 f"{fp32_bound(cfg, 'patch_embed'):.2e} at patch_embed .. {fp32_bound(cfg, 'logits'):.2e} at logits.")
    return text
