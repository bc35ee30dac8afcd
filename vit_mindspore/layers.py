"""MindSpore building blocks whose numerics follow shared/reference.py exactly.

Every numerics choice is a cell argument (the model reads them from the ViTConfig: cfg.block_args(i),
cfg.pool_args()): nothing here relies on a MindSpore default
(nn.GELU is tanh-approximate by default, nn.LayerNorm uses eps 1e-7 and names its parameters
gamma/beta, nn.Conv2d is slow on CPU). Parameters are named like the canonical keys
(`weight`, `bias`, ...), so a cell's parameter names *are* the canonical names. Cells create their
parameters (zeros, canonical shapes, the compute dtype); `convert.load_canonical` fills them.

The cells the other backends have too come in the same order: DropPath, PatchEmbed, Attention, Mlp,
Block; before them, the cells MindSpore needs written out (Linear, LayerNorm, GELU, Softmax, Dropout);
between Mlp and Block, LayerScale, and after Block, AttentionPoolLatent (the MAP head, pool="map").

Precision: parameters are stored in the compute dtype (float32 or float16). Matmuls run in that
dtype; LayerNorm, softmax, GELU and tanh compute in float32 and round their output to the compute
dtype, like the reference's low-precision emulation. For float32 every cast is skipped
(a Python constant, so Graph mode folds it away).

All cells work in PyNative and Graph mode: primitives are created in __init__, `construct`
branches only on Python constants fixed at construction.
"""
from __future__ import annotations

import math

import numpy as np

from mindspore import Parameter, Tensor, lazy_inline, nn, ops
from mindspore import dtype as mstype

from shared.config import ViTConfig

MS_DTYPES = {"float32": mstype.float32, "float16": mstype.float16, "bfloat16": mstype.bfloat16}
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_TANH_C = math.sqrt(2.0 / math.pi)


def _param(shape: tuple[int, ...], name: str, dtype) -> Parameter:
    """A zero parameter of a canonical shape in the compute dtype (the weights come from load_canonical)."""
    return Parameter(Tensor(np.zeros(shape, np.float32)).astype(dtype), name=name)


class _Cell(nn.Cell):
    """Base: knows the compute dtype and whether float32 islands need casts."""

    def __init__(self, dtype=mstype.float32):
        super().__init__()
        self.cdtype = dtype
        self.lowp = dtype != mstype.float32
        self.cast = ops.Cast()

    def f32(self, x):
        if self.lowp:
            return self.cast(x, mstype.float32)
        return x

    def back(self, x):
        if self.lowp:
            return self.cast(x, self.cdtype)
        return x


class Linear(_Cell):
    """y = x W^T + b with W (out, in) as in the canonical file; rounds once to the compute dtype."""

    def __init__(self, in_features: int, out_features: int, has_bias: bool = True, dtype=mstype.float32,
                 bias_mask=None):
        super().__init__(dtype)
        self.out_features, self.in_features = out_features, in_features
        self.weight = _param((out_features, in_features), "weight", dtype)
        self.has_bias = bool(has_bias)
        self.bias = _param((out_features,), "bias", dtype) if has_bias else None
        # bias_mask: a constant 0/1 vector the bias is multiplied by (the k third of a fused qkv held at zero)
        self.bias_mask = Tensor(np.asarray(bias_mask, np.float32)).astype(dtype) if bias_mask is not None else None
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()
        self.reshape = ops.Reshape()

    def construct(self, x):
        shape = x.shape
        y = self.matmul(self.reshape(x, (-1, shape[-1])), self.weight)
        if self.has_bias:
            if self.bias_mask is not None:
                y = self.bias_add(y, self.bias * self.bias_mask)
            else:
                y = self.bias_add(y, self.bias)
        return self.reshape(y, shape[:-1] + (self.out_features,))


class LayerNorm(_Cell):
    """LayerNorm over the last axis with eps from the config, params `weight`/`bias`, computed in float32."""

    def __init__(self, dim: int, eps: float, dtype=mstype.float32):
        super().__init__(dtype)
        self.eps = float(eps)
        self.weight = _param((dim,), "weight", dtype)
        self.bias = _param((dim,), "bias", dtype)
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=self.eps)

    def construct(self, x):
        y, _, _ = self.norm(self.f32(x), self.f32(self.weight), self.f32(self.bias))
        return self.back(y)


class RmsNorm(_Cell):
    """timm's RmsNorm: x / sqrt(mean(x^2) + eps) * weight (param `weight`, no bias), computed in float32, rounded
    once to the compute dtype."""

    def __init__(self, dim: int, eps: float, dtype=mstype.float32):
        super().__init__(dtype)
        self.eps = float(eps)
        self.weight = _param((dim,), "weight", dtype)

    def construct(self, x):
        t = ops.cast(x, mstype.float32)
        y = t * ops.rsqrt(ops.mean(t * t, -1, True) + self.eps) * ops.cast(self.weight, mstype.float32)
        return ops.cast(y, x.dtype)


def norm_layer(dim: int, eps: float, dtype=mstype.float32, kind: str = "layer"):
    """A norm of the given kind (shared.config.NORM_KINDS): LayerNorm or RmsNorm."""
    return RmsNorm(dim, eps, dtype) if kind == "rms" else LayerNorm(dim, eps, dtype)


def gelu_erf(x):
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), on float32 (ops.erf is accurate to ~5e-8 absolute)."""
    return 0.5 * x * (1.0 + ops.erf(x * _INV_SQRT2))


def gelu_tanh(x):
    """tanh-approximate GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + ops.tanh(_TANH_C * (x + 0.044715 * x * x * x)))


def gelu_quick(x):
    """QuickGELU (OpenAI CLIP), x * sigmoid(1.702 x), written out (MindSpore has no cell for it), on float32.

    MindSpore CPU's Sigmoid carries its Exp kernel's error: up to 13 float32 ulps absolute (measured over
    [-20, 20]), so QuickGELU is within ~9 roundings at the input's scale (erf GELU: ~2). An expm1-based sigmoid
    would be within 3 absolute but ~450 ulps relative on the negative side (x in (-4, -1)), against ~40 for
    the kernel; the kernel stays (conformance_tests/test_mindspore.py pins both figures)."""
    return x * ops.sigmoid(1.702 * x)


def silu(x):
    """x * sigmoid(x), written out like QuickGELU (the same Sigmoid kernel and its error)."""
    return x * ops.sigmoid(x)


class GELU(_Cell):
    """An MLP activation (shared.config.ACT_KINDS): GELU "erf", "tanh" or "quick", or "silu", computed in float32,
    rounded once. gated: act(gate) * value over the packed [gate; value] last axis instead (timm's packed gated
    MLP; silu: SwiGLUPacked), in float32, rounded once."""

    def __init__(self, kind: str, dtype=mstype.float32, gated: bool = False):
        super().__init__(dtype)
        if kind not in ("erf", "tanh", "quick", "silu"):
            raise ValueError(f"activation must be 'erf', 'tanh', 'quick' or 'silu', got {kind!r}")
        self.kind = kind
        self.gated = bool(gated)

    def act(self, x):
        if self.kind == "erf":
            return gelu_erf(x)
        if self.kind == "quick":
            return gelu_quick(x)
        if self.kind == "silu":
            return silu(x)
        return gelu_tanh(x)

    def construct(self, x):
        x = self.f32(x)
        if self.gated:
            gate, value = ops.chunk(x, 2, axis=-1)
            return self.back(self.act(gate) * value)
        return self.back(self.act(x))


class Softmax(_Cell):
    """Softmax over the last axis, in float32, max-subtracted (logits of 1e4 stay finite).

    fused=True: MindSpore's Softmax kernel, ~15x faster. Its Exp is off by up to ~170 float32 ulps, but
    neither path is uniformly better on the probabilities (float64 check, 3.7M scores N(0, sd^2), sd 0.5-10):
    max abs error 6e-8..8e-7 for both, RMS 2-6x higher fused, max relative error on p > 1e-3 up to 6x
    *lower* fused (expm1 + 1 carries an absolute, not relative, error). Stage errors against the reference
    are the same with either (conformance_tests/test_mindspore.py runs both). The attention uses it.
    fused=False: exp as expm1(s) + 1 (s <= 0 after the max subtraction), within one ulp of 1 absolute,
    which is what a softmax (denominator >= 1) needs. The model's output softmax uses it (one small call),
    and `build_model(..., fused_softmax=False)` puts it in the attention too.
    Reductions run on a 2-D view: MindSpore CPU's ReduceSum is ~25x slower over the last axis of a 4-D
    tensor than of the same data viewed as 2-D (measured).
    """

    def __init__(self, dtype=mstype.float32, fused: bool = False):
        super().__init__(dtype)
        self.fused = bool(fused)
        self.fused_softmax = ops.Softmax(axis=-1)  # max-subtracted internally
        self.expm1 = ops.Expm1()
        self.reduce_max = ops.ReduceMax(keep_dims=True)
        self.reduce_sum = ops.ReduceSum(keep_dims=True)
        self.reshape = ops.Reshape()

    def construct(self, s):
        s = self.f32(s)
        if self.fused:
            return self.back(self.fused_softmax(s))
        shape = s.shape
        s = self.reshape(s, (-1, shape[-1]))
        s = s - self.reduce_max(s, -1)
        e = self.expm1(s) + 1.0
        return self.back(self.reshape(e / self.reduce_sum(e, -1), shape))


class Dropout(nn.Cell):
    """Inverted dropout, active only in training mode (rate from the config, 0 = identity)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)
        self.active = self.rate > 0.0
        self.drop = nn.Dropout(p=self.rate) if self.active else None

    def construct(self, x):
        if self.active and self.training:
            return self.drop(x)
        return x


class DropPath(nn.Cell):
    """Stochastic depth: zero a sample's residual branch with probability `rate` (training only)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)
        self.keep = 1.0 - self.rate
        self.active = self.rate > 0.0
        self.floor = ops.Floor()

    def construct(self, x):
        if self.active and self.training:
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            mask = self.floor(self.keep + ops.rand(shape, dtype=mstype.float32))
            return x * self.cast_like(mask / self.keep, x)
        return x

    def cast_like(self, m, x):
        return ops.cast(m, x.dtype)


class PatchEmbed(_Cell):
    """Non-overlapping patches projected by a conv with stride = kernel = P, written as reshape + matmul.

    Same math as the conv (patches flattened (c, i, j) like the conv weight) and ~2x faster than
    nn.Conv2d on MindSpore CPU. The parameter keeps the conv layout (D, C, P, P) of the canonical key. With
    cfg.patch_norm a norm `norm` (cfg.norm_kind) over each projected patch, which the model applies (its own stage).
    """

    def __init__(self, cfg: ViTConfig, dtype=mstype.float32):
        super().__init__(dtype)
        self.patch = cfg.patch_size
        self.in_chans = cfg.in_chans
        self.embed_dim = cfg.embed_dim
        self.proj = _ConvAsMatmul((cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.patch_size), cfg.patch_bias, dtype)
        self.norm = norm_layer(cfg.embed_dim, cfg.layer_norm_eps, dtype, cfg.norm_kind) if cfg.patch_norm else None
        self.reshape = ops.Reshape()
        self.transpose = ops.Transpose()

    def construct(self, x):
        B, C, H, W = x.shape
        P = self.patch
        gh = H // P
        gw = W // P
        x = self.reshape(x, (B, C, gh, P, gw, P))
        x = self.transpose(x, (0, 2, 4, 1, 3, 5))
        x = self.reshape(x, (B, gh * gw, C * P * P))
        return self.proj(x)


class _ConvAsMatmul(_Cell):
    """Holds `weight` (D, C, P, P) and, unless has_bias is False (CLIP), `bias` (D,); applies them to flattened
    patches."""

    def __init__(self, shape: tuple[int, int, int, int], has_bias: bool = True, dtype=mstype.float32):
        super().__init__(dtype)
        self.out_features = int(shape[0])
        self.fan_in = int(np.prod(shape[1:]))
        self.weight = _param(tuple(shape), "weight", dtype)
        self.has_bias = bool(has_bias)
        self.bias = _param((self.out_features,), "bias", dtype) if has_bias else None
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()
        self.reshape = ops.Reshape()

    def construct(self, x):
        shape = x.shape
        w = self.reshape(self.weight, (self.out_features, self.fan_in))
        y = self.matmul(self.reshape(x, (-1, self.fan_in)), w)
        if self.has_bias:
            y = self.bias_add(y, self.bias)
        return self.reshape(y, shape[:-1] + (self.out_features,))


def split_heads(t, num_heads: int, head_dim: int):
    """(B, T, heads * head_dim) -> (B, heads, T, head_dim)."""
    B, T, _ = t.shape
    return ops.transpose(ops.reshape(t, (B, T, num_heads, head_dim)), (0, 2, 1, 3))


def merge_heads(t, width: int):
    """(B, heads, T, head_dim) -> (B, T, width)."""
    B, _, T, _ = t.shape
    return ops.reshape(ops.transpose(t, (0, 2, 1, 3)), (B, T, width))


def apply_rope(x, rope, rotate_half: bool):
    """Rotate the last N tokens of x (B, H, T, hd) by the rotary table rope = [sin | cos] (N, 2*hd), or per head
    (H, N, 2*hd), float32 (shared.posemb.model_rope_table), in float32, rounded once to x's dtype; the prefix
    tokens stay as they are."""
    n = rope.shape[-2]
    B, H, T, hd = x.shape
    sin, cos = ops.chunk(ops.cast(rope, mstype.float32), 2, axis=-1)
    t = ops.cast(x[:, :, T - n:], mstype.float32)
    if rotate_half:
        lo, hi = ops.chunk(t, 2, axis=-1)
        r = ops.concat((-hi, lo), axis=-1)
    else:
        r = ops.reshape(ops.stack((-t[..., 1::2], t[..., 0::2]), axis=-1), (B, H, n, hd))
    y = ops.cast(t * cos + r * sin, x.dtype)
    if T == n:
        return y
    return ops.concat((x[:, :, :T - n], y), axis=2)


class Attention(_Cell):
    """Multi-head self-attention, as `shared.reference.attention` (same arguments: `cfg.attention_args(i)`).

    dim: input width; width: the attention's (default dim); heads of width/num_heads. Projections: one fused `qkv`
    (rows q, k, v), or with qkv_fused=False `q_proj`, `k_proj`, `v_proj`; biases with qkv_bias, the k part held at
    zero with k_bias=False (BEiT, EVA); num_kv_heads (grouped-query attention): k_proj / v_proj give that many heads,
    each repeated for num_heads / num_kv_heads q heads. qk_norm: LayerNorm over each head's channels of q and k
    (`q_norm`, `k_norm`) after the heads are split, before the scale, as timm; inner_norm: LayerNorm `norm` over the merged
    heads before `proj` (timm's scale_attn_inner); `norm` picks those norms' kind (layer or rms);
    `proj` has a bias with proj_bias; scale: default head_dim ** -0.5; value_skip (T2T): v (heads
    merged) + proj(attn @ v). construct(x, rope, attn_bias, return_attn): a rotary table rotates the last N tokens'
    q and k (`apply_rope`), attn_bias is added to the scaled scores. Returns the output, or (output,
    probabilities) with return_attn.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, width: int | None = None,
                 qkv_bias: bool = True, qkv_fused: bool = True, k_bias: bool = True, qk_norm: bool = False,
                 inner_norm: bool = False, scale: float | None = None, rotate_half: bool = False,
                 value_skip: bool = False, proj_bias: bool = True, norm_eps: float = 1e-6, norm: str = "layer",
                 attn_drop: float = 0.0, proj_drop: float = 0.0, *, dtype=mstype.float32, fused_softmax: bool = True):
        super().__init__(dtype)
        W = int(width) if width is not None else int(dim)
        self.num_heads = int(num_heads)
        self.num_kv_heads = int(num_kv_heads or num_heads)
        self.kv_groups = self.num_heads // self.num_kv_heads
        self.head_dim = W // self.num_heads
        self.width = W
        self.scale = float(scale) if scale is not None else self.head_dim ** -0.5
        self.value_skip = bool(value_skip)
        self.qkv_fused = bool(qkv_fused)
        self.rotate_half = bool(rotate_half)
        if self.qkv_fused:
            mask = None if k_bias or not qkv_bias else np.concatenate([np.ones(W), np.zeros(W), np.ones(W)])
            self.qkv = Linear(dim, 3 * W, qkv_bias, dtype, bias_mask=mask)
            self.q_proj = self.k_proj = self.v_proj = None
        else:
            self.qkv = None
            self.q_proj = Linear(dim, W, qkv_bias, dtype)
            Wkv = self.num_kv_heads * self.head_dim  # grouped-query attention: fewer k/v heads
            self.k_proj = Linear(dim, Wkv, qkv_bias and k_bias, dtype)
            self.v_proj = Linear(dim, Wkv, qkv_bias, dtype)
        self.has_qk_norm = bool(qk_norm)
        self.q_norm = norm_layer(self.head_dim, norm_eps, dtype, norm) if qk_norm else None
        self.k_norm = norm_layer(self.head_dim, norm_eps, dtype, norm) if qk_norm else None
        self.inner_norm = bool(inner_norm)
        self.norm = norm_layer(W, norm_eps, dtype, norm) if inner_norm else None
        self.proj = Linear(W, W, proj_bias, dtype)
        self.softmax = Softmax(dtype, fused_softmax)
        self.attn_drop = Dropout(attn_drop)
        self.proj_drop = Dropout(proj_drop)
        self.split = ops.Split(axis=-1, output_num=3)
        self.qk_matmul = ops.BatchMatMul(transpose_b=True)
        self.av_matmul = ops.BatchMatMul()

    def scores(self, x, rope=None, attn_bias=None):
        """v in heads (B, H, T, hd) and the scores q k^T * scale (+ attn_bias) (B, H, T, T)."""
        if self.qkv_fused:
            # Split, then per-tensor head transposes: indexing a transposed (3, B, H, T, hd) tensor runs
            # MindSpore CPU's StridedSlice, ~10x slower here (22% of a B/16 forward, measured).
            q, k, v = self.split(self.qkv(x))
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self.heads(q)
        k, v = (split_heads(t, self.num_kv_heads, self.head_dim) for t in (k, v))
        if self.has_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope, self.rotate_half), apply_rope(k, rope, self.rotate_half)
        if self.kv_groups > 1:  # grouped-query attention: kv head j serves q heads j * groups ... (timm's order)
            k, v = ops.repeat_interleave(k, self.kv_groups, 1), ops.repeat_interleave(v, self.kv_groups, 1)
        s = self.qk_matmul(q, k) * self.scale
        if attn_bias is not None:
            s = s + attn_bias
        return v, s

    def heads(self, t):
        """(B, T, W) -> (B, heads, T, head_dim)."""
        return split_heads(t, self.num_heads, self.head_dim)

    def construct(self, x, rope=None, attn_bias=None, return_attn=False):
        v, s = self.scores(x, rope, attn_bias)
        probs = self.softmax(s)
        out = merge_heads(self.av_matmul(self.attn_drop(probs), v), self.width)
        if self.inner_norm:
            out = self.norm(out)
        out = self.proj_drop(self.proj(out))
        if self.value_skip:
            out = merge_heads(v, self.width) + out
        if return_attn:
            return out, probs
        return out


class Mlp(_Cell):
    """fc1 -> act (computed in float32) -> dropout -> [norm] -> fc2 -> dropout, as `shared.reference.mlp_forward`
    (same arguments: `cfg.mlp_args()`). act: "erf", "tanh", "quick" or "silu"; with `gated` fc1 has 2 * hidden
    outputs and act(gate) * value replaces act (silu: SwiGLU), with `unpacked` too from separate `fc1_g` and `fc1_x`
    (timm's SwiGLU); inner_norm: a norm `norm` (kind `norm`) over the hidden width before fc2 (timm's
    scale_mlp_norm); the linears have biases with `bias` (timm proj_bias)."""

    def __init__(self, dim: int, hidden: int, act: str = "erf", gated: bool = False, unpacked: bool = False,
                 inner_norm: bool = False, bias: bool = True, norm_eps: float = 1e-6, norm: str = "layer",
                 dropout: float = 0.0, *, dtype=mstype.float32):
        super().__init__(dtype)
        self.unpacked = bool(unpacked)
        if self.unpacked:
            self.fc1 = None
            self.fc1_g = Linear(dim, hidden, bias, dtype)
            self.fc1_x = Linear(dim, hidden, bias, dtype)
        else:
            self.fc1 = Linear(dim, 2 * hidden if gated else hidden, bias, dtype)
            self.fc1_g = self.fc1_x = None
        self.act = GELU(act, dtype, gated)
        self.drop1 = Dropout(dropout)
        self.inner_norm = bool(inner_norm)
        self.norm = norm_layer(hidden, norm_eps, dtype, norm) if inner_norm else None
        self.fc2 = Linear(hidden, dim, bias, dtype)
        self.drop2 = Dropout(dropout)

    def construct(self, x):
        if self.unpacked:
            h = ops.concat((self.fc1_g(x), self.fc1_x(x)), axis=-1)
        else:
            h = self.fc1(x)
        h = self.drop1(self.act(h))
        if self.inner_norm:
            h = self.norm(h)
        return self.drop2(self.fc2(h))


class LayerScale(_Cell):
    """LayerScale (CaiT, DeiT III, DINOv2): the branch output times a per-channel `gamma` (W,), one rounding in
    the compute dtype. The parameter is named `gamma` like timm's, so the block's `ls1.gamma` / `ls2.gamma` are
    the canonical keys."""

    def __init__(self, dim: int, dtype=mstype.float32):
        super().__init__(dtype)
        self.gamma = _param((dim,), "gamma", dtype)

    def construct(self, x):
        return x * self.gamma


class Block(_Cell):
    """Pre-norm transformer block, as `shared.reference.block` (same arguments: `cfg.block_args(i)`).

    attn / mlp: the Attention's and the Mlp's arguments (dim aside: the block's input width, and the attention's
    width for the MLP). With ls_init each branch's output is scaled by LayerScale (`ls1`, `ls2`) before stochastic
    depth and the residual add (timm's order). When dim differs from the attention's width (T2T first block) there
    is no outer residual around attention (and so no stochastic depth on that branch; ls1 still scales it).
    construct(x, rope, attn_bias, return_attn) passes rope and attn_bias to the attention; returns the output, or
    (output, probabilities) with return_attn. norm: the kind of norm1 / norm2 (layer or rms); ls_attn_only: no ls2;
    post_norm: the norms at the end of each branch, x + norm1(attn(x)), x + norm2(mlp(x)) (timm's res-post-norm
    blocks). num_parallel > 1 (timm's ParallelThingsBlock): `attns.j` and `ffns.j` (`Branch`es) instead, x + the sum
    of the attention branches, then + the sum of the MLP branches; return_attn gives branch 0's probabilities.
    """

    def __init__(self, dim: int, attn: dict, mlp: dict, ls_init: float | None = None, drop_path: float = 0.0,
                 norm_eps: float = 1e-6, norm: str = "layer", ls_attn_only: bool = False, post_norm: bool = False,
                 num_parallel: int = 1, *,
                 dtype=mstype.float32, fused_softmax: bool = True):
        super().__init__(dtype)
        self.num_parallel, self.post_norm = int(num_parallel), bool(post_norm)
        if self.num_parallel > 1:
            branch = dict(ls_init=ls_init, drop_path=drop_path, norm_eps=norm_eps, norm=norm, dtype=dtype)
            self.attns = nn.CellList([Branch(dim, attn=Attention(dim, **attn, dtype=dtype, fused_softmax=fused_softmax),
                                             **branch) for _ in range(self.num_parallel)])
            self.ffns = nn.CellList([Branch(dim, mlp=Mlp(dim, **mlp, dtype=dtype), **branch)
                                     for _ in range(self.num_parallel)])
            return
        W = attn.get("width") or dim
        self.residual = dim == W
        self.drop_path_rate = float(drop_path)
        self.layer_scale = ls_init is not None
        self.mlp_scale = self.layer_scale and not ls_attn_only
        self.norm1 = norm_layer(dim, norm_eps, dtype, norm)
        self.attn = Attention(dim, **attn, dtype=dtype, fused_softmax=fused_softmax)
        self.ls1 = LayerScale(W, dtype) if self.layer_scale else None
        self.drop_path1 = DropPath(self.drop_path_rate if self.residual else 0.0)
        self.norm2 = norm_layer(W, norm_eps, dtype, norm)
        self.mlp = Mlp(W, **mlp, dtype=dtype)
        self.ls2 = LayerScale(W, dtype) if self.mlp_scale else None
        self.drop_path2 = DropPath(self.drop_path_rate)

    def construct(self, x, rope=None, attn_bias=None, return_attn=False):
        probs = None
        if self.num_parallel > 1:  # the branches summed, then the residual add (one rounding each, as timm's stack sum)
            if return_attn:
                s, probs = self.attns[0](x, rope, attn_bias, True)
            else:
                s = self.attns[0](x, rope, attn_bias)
            for j in range(1, self.num_parallel):
                s = s + self.attns[j](x, rope, attn_bias)
            x = x + s
            s = self.ffns[0](x)
            for j in range(1, self.num_parallel):
                s = s + self.ffns[j](x)
            x = x + s
            if return_attn:
                return x, probs
            return x
        if self.post_norm:  # no LayerScale, same widths (ViTConfig refuses the rest)
            if return_attn:
                y, probs = self.attn(x, rope, attn_bias, True)
            else:
                y = self.attn(x, rope, attn_bias)
            x = x + self.drop_path1(self.norm1(y))
            x = x + self.drop_path2(self.norm2(self.mlp(x)))
            if return_attn:
                return x, probs
            return x
        if return_attn:
            y, probs = self.attn(self.norm1(x), rope, attn_bias, True)
        else:
            y = self.attn(self.norm1(x), rope, attn_bias)
        if self.layer_scale:
            y = self.ls1(y)
        if self.residual:
            x = x + self.drop_path1(y)
        else:
            x = y
        h = self.mlp(self.norm2(x))
        if self.mlp_scale:
            h = self.ls2(h)
        x = x + self.drop_path2(h)
        if return_attn:
            return x, probs
        return x


class SharedBlock(Block):
    """A `Block` with no random op (every dropout and stochastic-depth rate 0), whose graph MindSpore parses and
    type-infers once per distinct argument set, then inlines a copy per block before the backend (lazy_inline's
    front-end policy): the same kernels as `Block`'s, every stage bit-identical (test_conformance.py), and a 12-block
    graph compiles in about half the time. Blocks with a random op stay `Block`s: whether a shared copy draws
    each block's own masks in a compiled training graph could not be checked (MindSpore's graph-mode dropout is not
    reproducible from run to run here). MindSpore documents lazy_inline for Ascend; what runs here is its front
    end, on every device."""

    @lazy_inline(policy="front")  # keyed on every argument: blocks share a graph only when all of them are equal
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    @staticmethod
    def applies(args: dict) -> bool:
        """Whether a block with these arguments (`ViTConfig.block_args`) has no random op."""
        return not (args["drop_path"] or args["attn"].get("attn_drop") or args["attn"].get("proj_drop")
                    or args["mlp"].get("dropout"))


class Branch(_Cell):
    """One branch of a parallel block (timm ParallelThingsBlock's attns.j / ffns.j): `norm` -> `attn` or `mlp` ->
    LayerScale `ls` (with ls_init) -> stochastic depth. construct(x, rope, attn_bias, return_attn) as `Attention`'s
    (an MLP branch ignores them)."""

    def __init__(self, dim: int, attn=None, mlp=None, ls_init: float | None = None, drop_path: float = 0.0,
                 norm_eps: float = 1e-6, norm: str = "layer", *, dtype=mstype.float32):
        super().__init__(dtype)
        self.norm = norm_layer(dim, norm_eps, dtype, norm)
        self.is_attn = attn is not None
        self.attn, self.mlp = attn, mlp
        self.layer_scale = ls_init is not None
        self.ls = LayerScale(dim, dtype) if self.layer_scale else None
        self.drop_path = DropPath(float(drop_path))

    def construct(self, x, rope=None, attn_bias=None, return_attn=False):
        probs = None
        if self.is_attn:
            if return_attn:
                y, probs = self.attn(self.norm(x), rope, attn_bias, True)
            else:
                y = self.attn(self.norm(x), rope, attn_bias)
        else:
            y = self.mlp(self.norm(x))
        if self.layer_scale:
            y = self.ls(y)
        y = self.drop_path(y)
        if return_attn:
            return y, probs
        return y


class AttentionPoolLatent(_Cell):
    """timm's AttentionPoolLatent (SigLIP's MAP head), exactly like `shared.reference.attention_pool` (same
    arguments: `cfg.pool_args()`).

    One learned query `latent` (1, 1, W) attends to the tokens it is given (the model passes the patch tokens
    only): q = q(latent), k and v from `kv` (rows k then v), scores * head_dim ** -0.5 (never cfg.qk_scale),
    num_heads heads, no qk-norm; out = proj(attn @ v); out = out + mlp(norm(out)). Returns (B, W), the
    latent's output. No dropout (timm's defaults). Parameters: latent, q, kv, proj, norm, mlp.fc1, mlp.fc2.
    """

    def __init__(self, dim: int, num_heads: int, hidden: int, act: str = "erf", norm_eps: float = 1e-6, *,
                 dtype=mstype.float32, fused_softmax: bool = True):
        super().__init__(dtype)
        W = int(dim)
        self.num_heads = int(num_heads)
        self.head_dim = W // self.num_heads
        self.width = W
        self.scale = float(self.head_dim) ** -0.5
        self.latent = _param((1, 1, W), "latent", dtype)
        self.q = Linear(W, W, True, dtype)
        self.kv = Linear(W, 2 * W, True, dtype)
        self.proj = Linear(W, W, True, dtype)
        self.norm = LayerNorm(W, norm_eps, dtype)
        self.mlp = Mlp(W, hidden, act, dtype=dtype)
        self.softmax = Softmax(dtype, fused_softmax)
        self.split = ops.Split(axis=-1, output_num=2)
        self.qk_matmul = ops.BatchMatMul(transpose_b=True)
        self.av_matmul = ops.BatchMatMul()

    def construct(self, x):
        B = x.shape[0]
        q = split_heads(self.q(self.latent), self.num_heads, self.head_dim)  # (1, H, 1, hd)
        q = ops.broadcast_to(q, (B, self.num_heads, 1, self.head_dim))
        k, v = self.split(self.kv(x))
        k, v = split_heads(k, self.num_heads, self.head_dim), split_heads(v, self.num_heads, self.head_dim)
        probs = self.softmax(self.qk_matmul(q, k) * self.scale)  # (B, H, 1, N)
        out = self.proj(merge_heads(self.av_matmul(probs, v), self.width))  # (B, 1, W)
        out = out + self.mlp(self.norm(out))
        return out[:, 0]


class RelPosBias(_Cell):
    """A relative position bias, as `shared.reference.rel_pos_bias`: construct(index, coords) -> (heads, T, T) score
    bias in the compute dtype, built once per forward by the model from the grid's constants (the model's PosTable:
    `rel_index`, shared.posemb.rel_pos_index as (T, T) int32, and for the MLP `rel_coords`,
    shared.posemb.rel_log_coords). kind "table": `relative_position_bias_table` (rows, heads) gathered (BEiT, timm
    RelPosBias); "mlp": timm's RelPosMlp, `mlp.fc1` -> ReLU -> `mlp.fc2` over the coordinates (rounded to the compute
    dtype), the class token's row and column zero."""

    def __init__(self, kind: str, shapes: dict, prefix_tokens: int, dtype=mstype.float32):
        super().__init__(dtype)
        self.kind, self.prefix_tokens = kind, int(prefix_tokens)
        if kind == "table":
            self.relative_position_bias_table = _param(shapes["relative_position_bias_table"],
                                                       "relative_position_bias_table", dtype)
        else:
            (hidden, _), (heads, _) = shapes["mlp.fc1.weight"], shapes["mlp.fc2.weight"]
            self.mlp = _RelPosMlp(hidden, heads, dtype)
        self.gather = ops.Gather()
        self.transpose = ops.Transpose()
        n0 = self.prefix_tokens
        self.pad = nn.Pad(((0, 0), (n0, 0), (n0, 0))) if kind == "mlp" and n0 else None

    def construct(self, index, coords=None):
        if self.kind == "table":
            return self.transpose(self.gather(self.relative_position_bias_table, index, 0), (2, 0, 1))
        bias = self.transpose(self.gather(self.mlp(self.cast(coords, self.cdtype)), index, 0), (2, 0, 1))
        if self.pad is not None:
            bias = self.pad(bias)
        return bias


class _RelPosMlp(_Cell):
    """fc1 -> ReLU -> fc2 (timm's RelPosMlp; parameters fc1.*, fc2.*), each Linear rounded once."""

    def __init__(self, hidden: int, heads: int, dtype=mstype.float32):
        super().__init__(dtype)
        self.fc1 = Linear(2, hidden, True, dtype)
        self.fc2 = Linear(hidden, heads, True, dtype)
        self.relu = ops.ReLU()

    def construct(self, x):
        return self.fc2(self.relu(self.fc1(x)))
