"""The float64 NumPy reference forward, written to be read.

`forward(cfg, params, images)` returns every named stage (see `ViTConfig.stage_names`):
  patch_embed  (B, N, D)   patches projected (conv with stride = kernel = patch)
  patch_norm   (B, N, D)   after the norm over each projected patch (only when cfg.patch_norm: AIMv2)
  embed        (B, T, D)   prefix tokens (class or prediction, distillation, registers) prepended, position
                           table added (prefix tokens without a row get none)
  norm_pre     (B, T, D)   after the pre-block LayerNorm (only when cfg.norm_pre: CLIP)
  block_i      (B, T, W)   after transformer block i (W = cfg.width)
  norm         (B, T, W)   after the final LayerNorm (= last block when there is none)
  pre_logits   (B, F)      pooled: class token, mean of the patch tokens, the attention pool, or concat(class
                           token, mean of the patch tokens) (cfg.pool; token_mean: 2W wide, DINOv2's linear head);
                           (+ fc_norm) (+ Linear-Tanh pre-logits): the head's input. With a distillation token:
                           the mean of the class and distillation tokens (timm's pre_logits)
  logits       (B, K)      head output (softmax applied when cfg.output_softmax; = pre_logits with no head);
                           with a distillation token the mean of `head` on the class token and `head_dist` on
                           the distillation token (DeiT's inference output; `head_logits` gives both)

`dtype` other than float64 emulates a real kernel at that precision: weights and
inputs are rounded to it, every matmul accumulates in float32 and rounds its
result, LayerNorm/softmax/GELU compute in float32 and round their output, and each
residual add rounds. That run's error against float64 is the yardstick low-precision
backends are judged by (see shared/tolerances.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from .config import ViTConfig
from .errors import ConfigError
from .posemb import gather_rel_pos_bias, model_rope_table, position_table, rel_log_coords



@lru_cache(maxsize=None)
def _erf_impl():
    """Exact erf for the float64 GELU: scipy's (it comes with scikit-learn), imported on the first GELU, not at
    import (scipy.special is a third of a `vit-suite convert`'s start-up, and convert never runs the reference)."""
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - exercised only without scipy
        import math

        erf = np.vectorize(math.erf, otypes=[np.float64])
    return erf


def _erf(x: np.ndarray) -> np.ndarray:
    return _erf_impl()(x)

REFERENCE_DTYPES = ("float64", "float32", "float16", "bfloat16")


def softmax(s: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in the input's float dtype, max-subtracted (logits of 1e4 stay finite).

    The suite's one NumPy softmax: the reference's attention and output softmax, and `vit-suite predict`.
    """
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


class _Numerics:
    """Where a real kernel rounds: `r(x)` rounds to the storage dtype; math runs in `compute`."""

    def __init__(self, dtype: str):
        if dtype not in REFERENCE_DTYPES:
            raise ValueError(f"reference dtype must be one of {REFERENCE_DTYPES}, got {dtype!r}")
        self.dtype = dtype
        self.compute = np.float64 if dtype == "float64" else np.float32
        self.storage = _np_dtype(dtype)

    def r(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if self.dtype in ("float64", "float32"):
            return x.astype(self.compute, copy=False)
        return x.astype(self.storage).astype(self.compute)

    def linear(self, x, w, b=None):
        y = x @ w.T
        if b is not None:
            y = y + b
        return self.r(y)

    def layer_norm(self, x, w, b, eps):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return self.r((x - mean) / np.sqrt(var + eps) * w + b)

    def rms_norm(self, x, w, eps):
        """RMSNorm (timm RmsNorm): x / sqrt(mean(x^2) + eps) * w, computed in `compute`, rounded once."""
        return self.r(x / np.sqrt((x.astype(self.compute) ** 2).mean(-1, keepdims=True) + eps) * w)

    def norm(self, p, key, x, eps, kind="layer"):
        """The norm under `key` of the given kind: LayerNorm (weight, bias) or RMSNorm (weight; norm_kind 'rms')."""
        if kind == "rms":
            return self.rms_norm(x, p[f"{key}.weight"], eps)
        return self.layer_norm(x, p[f"{key}.weight"], p[f"{key}.bias"], eps)

    def gelu(self, x, kind):
        if kind == "erf":
            y = 0.5 * x * (1.0 + _erf(x.astype(np.float64) / np.sqrt(2.0)))
        elif kind == "quick":  # OpenAI CLIP's QuickGELU
            y = x / (1.0 + np.exp(-1.702 * x.astype(np.float64)))
        else:
            c = np.sqrt(2.0 / np.pi)
            y = 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x.astype(np.float64) ** 3)))
        return self.r(y)

    def act(self, x, kind):
        """The activation of an MLP: a GELU form (erf, tanh, quick) or silu, rounded once."""
        if kind == "silu":
            return self.r(x / (1.0 + np.exp(-x.astype(np.float64))))
        return self.gelu(x, kind)

    def glu(self, x, kind):
        """act(first half) * second half of the last axis (timm's packed gated MLP, the gate first), rounded once;
        kind "silu" is SwiGLU (timm SwiGLUPacked)."""
        a, b = np.split(x.astype(np.float64), 2, axis=-1)
        if kind == "silu":
            g = a / (1.0 + np.exp(-a))
        else:
            g = _Numerics("float64").gelu(a, kind)
        return self.r(g * b)

    def softmax(self, s):
        return self.r(softmax(s))

    def rotate(self, x, rope, rotate_half):
        """Rotate the last N tokens of x (..., T, hd) by the rotary table rope = [sin | cos] (N, 2*hd), or per head
        (heads, N, 2*hd) (see shared.posemb.model_rope_table), computed in float64 and rounded once, like a backend
        that rotates in float32 and casts back; the T - N tokens before them (the prefix) stay as they are."""
        sin, cos = np.split(np.asarray(rope, np.float64), 2, axis=-1)
        n = sin.shape[-2]
        t = x[..., x.shape[-2] - n:, :].astype(np.float64)
        if rotate_half:
            lo, hi = np.split(t, 2, axis=-1)
            r = np.concatenate([-hi, lo], axis=-1)
        else:
            r = np.stack([-t[..., 1::2], t[..., 0::2]], axis=-1).reshape(t.shape)
        return np.concatenate([x[..., :x.shape[-2] - n, :], self.r(t * cos + r * sin)], axis=-2)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def attention(nm: _Numerics, p: dict, prefix: str, x: np.ndarray, *, dim: int | None = None, num_heads: int,
              num_kv_heads: int | None = None, width: int | None = None, qkv_bias: bool = True, qkv_fused: bool = True, k_bias: bool = True,
              qk_norm: bool = False, inner_norm: bool = False, scale: float | None = None, rotate_half: bool = False,
              value_skip: bool = False, proj_bias: bool = True, norm_eps: float = 1e-6, norm: str = "layer",
              attn_drop: float = 0.0, proj_drop: float = 0.0, rope: np.ndarray | None = None, attn_bias: np.ndarray | None = None,
              want_attn: bool = False):
    """Multi-head self-attention (the backends' `Attention`, same arguments: `cfg.attention_args(i)`); returns
    (output, attention probabilities or None). The dropout rates are training-only and ignored here.

    Parameters under `prefix`: qkv (rows q, k, v) when qkv_fused, else q_proj, k_proj, v_proj; biases with qkv_bias,
    the k third held at zero with k_bias=False (BEiT, EVA: no k bias; k_proj then has none); q_norm and k_norm
    (LayerNorm over each head's channels) with qk_norm; norm (LayerNorm over the merged heads, before proj: timm's
    scale_attn_inner) with inner_norm; proj. `rope` (shared.posemb.rope_table) rotates the last N tokens' q and k
    after the qk-norm; `attn_bias` (broadcastable to (B, heads, T, T), a relative position bias) is added to the
    scaled scores before the softmax. With value_skip (T2T) the output is v (heads merged) + proj(...). `norm`:
    the kind of q_norm, k_norm and the inner norm ("layer" or "rms"); proj has a bias with proj_bias. num_kv_heads (grouped-query attention, timm's
    AttentionRope; separate projections only): k_proj and v_proj give that many heads, normed and rotated as they
    are, then each repeated for num_heads / num_kv_heads consecutive q heads (q head h reads kv head h // groups).
    """
    B, T, _ = x.shape
    A = width if width is not None else x.shape[-1]
    H = num_heads
    Hkv = num_kv_heads or H
    hd = A // H
    scale = hd ** -0.5 if scale is None else scale

    def bias(name):
        return p[_key(prefix, f"{name}.bias")] if qkv_bias else None

    if qkv_fused:
        b = bias("qkv")
        if b is not None and not k_bias:
            b = np.concatenate([b[:A], np.zeros_like(b[A:2 * A]), b[2 * A:]])
        qkv = nm.linear(x, p[_key(prefix, "qkv.weight")], b)
        q, k, v = np.split(qkv, 3, axis=-1)  # rows of qkv: q, k, v
    else:
        q = nm.linear(x, p[_key(prefix, "q_proj.weight")], bias("q_proj"))
        k = nm.linear(x, p[_key(prefix, "k_proj.weight")], bias("k_proj") if k_bias else None)
        v = nm.linear(x, p[_key(prefix, "v_proj.weight")], bias("v_proj"))
    q = q.reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
    k, v = (t.reshape(B, T, Hkv, hd).transpose(0, 2, 1, 3) for t in (k, v))  # (B, Hkv, T, hd)
    if qk_norm:  # LayerNorm over each head's channels, before the scale (timm's q_norm / k_norm)
        q = nm.norm(p, _key(prefix, "q_norm"), q, norm_eps, norm)
        k = nm.norm(p, _key(prefix, "k_norm"), k, norm_eps, norm)
    if rope is not None:  # the patch tokens' q and k, after the qk-norm (timm's EVA)
        q, k = nm.rotate(q, rope, rotate_half), nm.rotate(k, rope, rotate_half)
    if Hkv != H:  # grouped-query attention: each kv head serves H / Hkv consecutive q heads (exact: a copy)
        k, v = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale
    if attn_bias is not None:
        scores = scores + attn_bias
    probs = nm.softmax(nm.r(scores))
    out = nm.r(probs @ v).transpose(0, 2, 1, 3).reshape(B, T, A)
    if inner_norm:
        out = nm.norm(p, _key(prefix, "norm"), out, norm_eps, norm)
    out = nm.linear(out, p[_key(prefix, "proj.weight")], p[_key(prefix, "proj.bias")] if proj_bias else None)
    if value_skip:
        out = nm.r(v.transpose(0, 2, 1, 3).reshape(B, T, A) + out)
    return out, (probs if want_attn else None)


def block(nm: _Numerics, p: dict, prefix: str, x: np.ndarray, *, dim: int, attn: dict, mlp: dict,
          ls_init: float | None = None, drop_path: float = 0.0, norm_eps: float = 1e-6, norm: str = "layer",
          ls_attn_only: bool = False, post_norm: bool = False, num_parallel: int = 1, rope: np.ndarray | None = None,
          attn_bias: np.ndarray | None = None, want_attn: bool = False):
    """Pre-norm transformer block (the backends' `Block`, same arguments: `cfg.block_args(i)`); returns (output,
    attention probabilities or None). With ls_init, LayerScale gammas ls1/ls2 scale each branch (ls1 only with
    ls_attn_only). When dim differs from the attention's width (a T2T-style first block) there is no outer
    residual around attention. `norm`: the kind of norm1 / norm2 ("layer" or "rms"). With post_norm (timm's
    res-post-norm blocks) the norms sit at the end of each branch instead: x + norm1(attn(x)), then
    x + norm2(mlp(x)) (no LayerScale, same widths). num_parallel > 1 (timm's
    ParallelThingsBlock): x + the sum of the branches attns.j (norm -> attention -> ls), then + the sum of ffns.j
    (norm -> MLP -> ls), each sum rounded once (a stack summed), then the residual add; the probabilities returned
    are branch 0's."""
    if num_parallel > 1:
        def branch_sum(ys):
            acc = ys[0]
            for y in ys[1:]:
                acc = nm.r(acc + y)
            return acc

        def scaled(pre, y):
            return nm.r(y * p[_key(pre, "ls.gamma")]) if ls_init is not None else y

        ys, probs = [], None
        for j in range(num_parallel):
            pre = _key(prefix, f"attns.{j}")
            y, pr = attention(nm, p, _key(pre, "attn"), nm.norm(p, _key(pre, "norm"), x, norm_eps, norm), dim=dim,
                              **attn, rope=rope, attn_bias=attn_bias, want_attn=want_attn and j == 0)
            ys.append(scaled(pre, y))
            probs = pr if j == 0 else probs
        x = nm.r(x + branch_sum(ys))
        ys = [scaled(pre, mlp_forward(nm, p, _key(pre, "mlp"), nm.norm(p, _key(pre, "norm"), x, norm_eps, norm), **mlp))
              for pre in (_key(prefix, f"ffns.{j}") for j in range(num_parallel))]
        return nm.r(x + branch_sum(ys)), probs
    width = attn.get("width") or dim
    if post_norm:
        y, probs = attention(nm, p, _key(prefix, "attn"), x, dim=dim, **attn, rope=rope, attn_bias=attn_bias,
                             want_attn=want_attn)
        x = nm.r(x + nm.norm(p, _key(prefix, "norm1"), y, norm_eps, norm))
        h = mlp_forward(nm, p, _key(prefix, "mlp"), x, **mlp)
        return nm.r(x + nm.norm(p, _key(prefix, "norm2"), h, norm_eps, norm)), probs
    h = nm.norm(p, _key(prefix, "norm1"), x, norm_eps, norm)
    y, probs = attention(nm, p, _key(prefix, "attn"), h, dim=dim, **attn, rope=rope, attn_bias=attn_bias,
                         want_attn=want_attn)
    if ls_init is not None:  # LayerScale: a per-channel gamma on each branch, rounded like a multiply
        y = nm.r(y * p[_key(prefix, "ls1.gamma")])
    x = nm.r(x + y) if dim == width else y
    h = nm.norm(p, _key(prefix, "norm2"), x, norm_eps, norm)
    h = mlp_forward(nm, p, _key(prefix, "mlp"), h, **mlp)
    if ls_init is not None and not ls_attn_only:
        h = nm.r(h * p[_key(prefix, "ls2.gamma")])
    return nm.r(x + h), probs


def mlp_forward(nm: _Numerics, p: dict, prefix: str, x: np.ndarray, *, dim: int | None = None, hidden: int,
                act: str = "erf", gated: bool = False, unpacked: bool = False, inner_norm: bool = False,
                bias: bool = True, norm_eps: float = 1e-6, norm: str = "layer", dropout: float = 0.0) -> np.ndarray:
    """fc1 -> act -> [norm] -> fc2 (the backends' `Mlp`, same arguments: `cfg.mlp_args()`); with `gated` fc1 has
    2 * hidden rows and act(gate) * value replaces act (act "silu": SwiGLU); with `unpacked` too the gate and value
    come from separate fc1_g and fc1_x (timm's SwiGLU); inner_norm: a norm `norm` (kind `norm`) over the hidden
    width before fc2 (timm's scale_mlp_norm); the linears have biases with `bias` (timm proj_bias). The dropout
    rate is training-only."""
    def lin(h, name):
        return nm.linear(h, p[_key(prefix, f"{name}.weight")], p[_key(prefix, f"{name}.bias")] if bias else None)

    if unpacked:
        h = nm.glu(np.concatenate([lin(x, "fc1_g"), lin(x, "fc1_x")], axis=-1), act)
    else:
        h = lin(x, "fc1")
        h = nm.glu(h, act) if gated else nm.act(h, act)
    if inner_norm:
        h = nm.norm(p, _key(prefix, "norm"), h, norm_eps, norm)
    return lin(h, "fc2")


def attention_pool(nm: _Numerics, p: dict, prefix: str, x: np.ndarray, *, dim: int, num_heads: int, hidden: int,
                   act: str = "erf", norm_eps: float = 1e-6) -> np.ndarray:
    """timm's AttentionPoolLatent (SigLIP's MAP head) over the patch tokens x (B, N, W) (arguments:
    `cfg.pool_args()`): one learned latent query attends to them (q from the latent, k and v from `kv`), then
    proj, and a residual MLP on its LayerNorm. Returns (B, W), the latent's output."""
    B, N, W = x.shape
    H = num_heads
    hd = W // H
    q = nm.linear(p[_key(prefix, "latent")], p[_key(prefix, "q.weight")], p[_key(prefix, "q.bias")])  # (1, 1, W)
    q = np.broadcast_to(q.reshape(1, 1, H, hd).transpose(0, 2, 1, 3), (B, H, 1, hd))
    kv = nm.linear(x, p[_key(prefix, "kv.weight")], p[_key(prefix, "kv.bias")])
    kv = kv.reshape(B, N, 2, H, hd).transpose(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]
    probs = nm.softmax(nm.r((q @ k.transpose(0, 1, 3, 2)) * hd ** -0.5))
    o = nm.r(probs @ v).transpose(0, 2, 1, 3).reshape(B, 1, W)
    o = nm.linear(o, p[_key(prefix, "proj.weight")], p[_key(prefix, "proj.bias")])
    h = nm.layer_norm(o, p[_key(prefix, "norm.weight")], p[_key(prefix, "norm.bias")], norm_eps)
    return nm.r(o + mlp_forward(nm, p, _key(prefix, "mlp"), h, hidden=hidden, act=act))[:, 0]


def rel_pos_bias(nm: _Numerics, p: dict, prefix: str, cfg: ViTConfig, grid: tuple[int, int]) -> np.ndarray:
    """The (heads, T, T) score bias of one relative position module (parameters under `prefix`: cfg.rel_pos_prefixes)
    at `grid`, built once per forward: the learned table's rows gathered by shared.posemb.rel_pos_index ('table';
    exact: a gather rounds nothing), or timm's RelPosMlp ('mlp': fc1 -> ReLU -> fc2 over the rounded log relative
    coordinates, each linear rounded once; the class token's row and column zero). The attention adds it to the
    scaled scores and rounds the sum once."""
    n0 = cfg.num_prefix_tokens
    if cfg.rel_pos == "table":
        rows = p[_key(prefix, "relative_position_bias_table")]
        want = cfg.rel_pos_shapes()["relative_position_bias_table"][0]
        if tuple(grid) != tuple(cfg.grid):
            raise ConfigError(f"config {cfg.name!r}: its relative position table ({want} rows) is stored for the "
                              f"{cfg.grid[0]}x{cfg.grid[1]} patch grid, the input has {grid[0]}x{grid[1]}; resample the "
                              f"table first (shared.posemb.resize_rel_pos_table, timm's rule)")
    else:
        h = nm.linear(nm.r(rel_log_coords(grid)), p[_key(prefix, "mlp.fc1.weight")], p[_key(prefix, "mlp.fc1.bias")])
        rows = nm.linear(np.maximum(h, 0.0), p[_key(prefix, "mlp.fc2.weight")], p[_key(prefix, "mlp.fc2.bias")])
    return gather_rel_pos_bias(rows, grid, n0, cfg.rel_pos).astype(nm.compute)


def patchify(images: np.ndarray, patch: int) -> np.ndarray:
    """(B, C, H, W) -> (B, gh*gw, C*P*P), patches row-major, each flattened (c, i, j) like a conv weight."""
    B, C, H, W = images.shape
    gh, gw = H // patch, W // patch
    x = images.reshape(B, C, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(B, gh * gw, C * patch * patch)


def forward_bytes(cfg: ViTConfig, batch: int) -> int:
    """Working memory of one float64 forward over `batch` images (the largest of the suite's forwards): every kept
    stage, q/k/v, two score tensors and the MLP's hidden activations. Commands refuse a batch or image size whose
    estimate exceeds shared.limits.MAX_FORWARD_BYTES before anything is allocated."""
    t, w, m, h = cfg.num_tokens, max(cfg.embed_dim, cfg.width), cfg.fc1_dim, cfg.num_heads
    per_image = 8 * ((cfg.depth + 3) * t * w + 3 * t * w + 2 * h * t * t + 2 * t * m)
    return batch * per_image + 8 * len(cfg.rel_pos_prefixes) * h * t * t  # + the relative biases (heads, T, T)


def check_forward_size(cfg: ViTConfig, batch: int, what: str) -> None:
    """ConfigError (exit 2) naming `what` (the flag or file) when a forward would need more than the limit."""
    from .limits import MAX_FORWARD_BYTES

    need = forward_bytes(cfg, batch)
    if need > MAX_FORWARD_BYTES:
        raise ConfigError(f"{what}: batch {batch} of {cfg.image_size[0]}x{cfg.image_size[1]} images "
                          f"({cfg.num_tokens:,} tokens each) would need about {need / 2**30:,.1f} GiB for one forward, "
                          f"over the {MAX_FORWARD_BYTES / 2**30:.0f} GiB limit (shared.limits.MAX_FORWARD_BYTES); "
                          f"use a smaller batch or image size")


def check_images(cfg: ViTConfig, images: np.ndarray) -> tuple[int, int]:
    """Validate an NCHW batch against cfg; returns its patch grid. ConfigError (a ValueError; exit 2) otherwise."""
    if images.ndim != 4:
        raise ConfigError(f"images must be NCHW (4-D), got shape {images.shape}")
    _, C, H, W = images.shape
    if C != cfg.in_chans:
        raise ConfigError(f"images have {C} channels, config {cfg.name!r} expects {cfg.in_chans} (shape {images.shape})")
    if H % cfg.patch_size or W % cfg.patch_size:
        raise ConfigError(f"image {H}x{W} is not divisible by patch size {cfg.patch_size}")
    return (H // cfg.patch_size, W // cfg.patch_size)


class _Converted(Mapping):
    """The parameters, each converted to the compute dtype when it is read (and let go after use): a forward holds
    one converted weight at a time instead of a float64 copy of the whole model (its size again, twice over for
    float32 weights, and the slowest part of a large model's reference: fresh memory is costly to touch)."""

    def __init__(self, params: Mapping[str, np.ndarray], convert):
        self._params, self._convert = params, convert

    def __getitem__(self, key: str) -> np.ndarray:
        return self._convert(self._params[key])

    def __iter__(self):
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)


def forward(cfg: ViTConfig, params: dict[str, np.ndarray], images: np.ndarray, dtype: str = "float64",
            return_attn: bool = False) -> dict[str, np.ndarray]:
    """Run the reference; images are NCHW of any size divisible by the patch (the position table is resampled)."""
    nm = _Numerics(dtype)
    grid = check_images(cfg, images)
    p = _Converted(params, nm.r)
    x = nm.r(images)
    B = x.shape[0]
    out: dict[str, np.ndarray] = {}

    w = p["patch_embed.proj.weight"].reshape(cfg.embed_dim, -1)
    x = nm.linear(patchify(x, cfg.patch_size), w, p.get("patch_embed.proj.bias"))
    out["patch_embed"] = x
    if cfg.patch_norm:
        x = nm.norm(p, "patch_embed.norm", x, cfg.layer_norm_eps, cfg.norm_kind)
        out["patch_norm"] = x

    D = cfg.embed_dim
    prefix = []  # class (or prediction) token, distillation token, registers: timm's order
    if cfg.class_token == "learned":
        prefix.append(np.broadcast_to(p["cls_token"], (B, 1, D)))
    elif cfg.class_token == "zeros":
        prefix.append(np.zeros((B, 1, D), dtype=x.dtype))
    if cfg.dist_token:
        prefix.append(np.broadcast_to(p["dist_token"], (B, 1, D)))
    if cfg.reg_tokens:
        prefix.append(np.broadcast_to(p["reg_token"], (B, cfg.reg_tokens, D)))
    x = np.concatenate(prefix + [x], axis=1)
    table = position_table(cfg, params, grid)  # zero rows for prefix tokens without a position: x + 0 is exact
    if table is not None:
        x = nm.r(x + nm.r(table))
    out["embed"] = x
    if cfg.norm_pre:
        x = nm.norm(p, "norm_pre", x, cfg.layer_norm_eps, cfg.norm_kind)
        out["norm_pre"] = x

    # the rotary table for this grid, once per forward (cfg.rope): fixed (cat, dinov3), or per block and head from the
    # learned frequencies (mixed; they are weights: rounded to the dtype like any, the table computed in float32)
    rope = model_rope_table(cfg, grid, nm.r(p["rope.freqs"]) if cfg.rope == "mixed" else None)
    # relative position biases, once per forward: one shared by all blocks, or one per block
    biases = [rel_pos_bias(nm, p, pre, cfg, grid) for pre in cfg.rel_pos_prefixes]
    attn_maps = []
    for i in range(cfg.depth):
        r = rope[i] if cfg.rope == "mixed" else rope
        bias = biases[0 if cfg.rel_pos_shared else i] if biases else None
        x, probs = block(nm, p, f"blocks.{i}", x, **cfg.block_args(i), rope=r, attn_bias=bias,
                         want_attn=return_attn)
        out[f"block_{i}"] = x
        attn_maps.append(probs)

    if cfg.final_norm:
        x = nm.norm(p, "norm", x, cfg.layer_norm_eps, cfg.norm_kind)
    out["norm"] = x

    n0 = cfg.num_prefix_tokens
    if cfg.dist_token:  # timm's distilled pre_logits: the mean of the class and distillation tokens
        x_cls, x_dist = x[:, 0], x[:, 1]
        x = nm.r((x_cls + x_dist) / 2)
    elif cfg.pool == "token":
        x = x[:, 0]
    elif cfg.pool == "mean":  # the patch tokens (with pool_include_prefix every token: cfg.pool_start)
        x = nm.r(x[:, cfg.pool_start:].mean(axis=1))
    elif cfg.pool == "token_mean":  # HF Dinov2ForImageClassification: the registers are in neither half
        x = np.concatenate([x[:, 0], nm.r(x[:, n0:].mean(axis=1))], axis=-1)
    else:  # map: the attention pool sees the patch tokens (with pool_include_prefix every token: cfg.pool_start)
        x = attention_pool(nm, p, "attn_pool", x[:, cfg.pool_start:], **cfg.pool_args())
    if cfg.fc_norm:
        x = nm.norm(p, "fc_norm", x, cfg.layer_norm_eps, cfg.norm_kind)
    if cfg.representation_size:
        x = nm.r(np.tanh(nm.linear(x, p["pre_logits.fc.weight"], p["pre_logits.fc.bias"])))
    out["pre_logits"] = x

    if cfg.num_classes and cfg.dist_token:
        x = nm.r((nm.linear(x_cls, p["head.weight"], p["head.bias"])
                  + nm.linear(x_dist, p["head_dist.weight"], p["head_dist.bias"])) / 2)
        if cfg.output_softmax:
            x = nm.softmax(x)
    elif cfg.num_classes:
        x = nm.linear(x, p["head.weight"], p["head.bias"])
        if cfg.output_softmax:
            x = nm.softmax(x)
    out["logits"] = x
    if return_attn:
        out.update({f"attn_{i}": a for i, a in enumerate(attn_maps)})
    return out


def head_logits(cfg: ViTConfig, params: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
    """float64 head outputs before any output softmax, as training sees them: (B, K), or (2, B, K) for a
    distilled model ([head on the class token, head_dist on the distillation token]; the training loss is the
    mean of the two heads' losses)."""
    out = forward(cfg, params, images)
    if not cfg.num_classes:
        return out["logits"]
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    if cfg.dist_token:
        t = out["norm"]
        return np.stack([t[:, 0] @ p["head.weight"].T + p["head.bias"], t[:, 1] @ p["head_dist.weight"].T + p["head_dist.bias"]])
    if not cfg.output_softmax:
        return out["logits"]
    return out["pre_logits"] @ p["head.weight"].T + p["head.bias"]
