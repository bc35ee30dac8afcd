"""Keras 3 layers of the ViT, written with keras.ops only (run on the TensorFlow, JAX and torch backends).

Numerics follow shared/reference.py exactly; every choice is a layer argument (the model reads them from the
ViTConfig: cfg.block_args(i), cfg.pool_args()), never a Keras default: LayerNormalization gets an explicit
epsilon (the qk-norm ones too), the activation is `act_f32(x, kind)` (GELU erf, tanh or QuickGELU
x * sigmoid(1.702 x), or silu), the softmax is max-subtracted and computed in float32.

Precision: the model is built with a dtype policy (`mixed_bfloat16` / `mixed_float16` for the
low-precision runs): variables stay float32 (so export is lossless) and are cast to the compute
dtype when read; matmuls run in the compute dtype; LayerNorm (Keras upcasts), softmax and GELU
compute in float32 and round their output to the compute dtype, as the reference emulates; a LayerScale
multiply runs in the compute dtype (one rounding, as in the reference).

Every layer is registered under the package 'vit_keras' and its `get_config` returns every
constructor argument (PatchEmbed's ViTConfig travels as a plain dict, `ViTConfig.to_dict()`). Attention, Mlp,
Block, AttentionPool and RelPosBias map their variables to canonical keys (`canonical_variables(prefix)`).
"""
from __future__ import annotations

import numpy as np

import keras
from keras import ops

from shared.config import ViTConfig
from shared.posemb import model_resample_matrices, model_resamples, rel_log_coords, rel_pos_index

PACKAGE = "vit_keras"


def as_config(config) -> ViTConfig:
    if isinstance(config, ViTConfig):
        return config
    if isinstance(config, dict):
        return ViTConfig.from_dict(config)
    raise TypeError(f"config must be a ViTConfig or its dict, got {type(config).__name__}")


def _f32(x):
    return ops.cast(x, "float32")


def softmax_f32(x, dtype):
    """Max-subtracted softmax over the last axis, computed in float32, rounded to `dtype`."""
    x = _f32(x)
    x = x - ops.max(x, axis=-1, keepdims=True)
    e = ops.exp(x)
    return ops.cast(e / ops.sum(e, axis=-1, keepdims=True), dtype)


def gelu_f32(x, kind: str, dtype):
    """GELU of the config's kind ("erf", "tanh" or "quick": x * sigmoid(1.702 x)), computed in float32, rounded
    to `dtype`."""
    x = _f32(x)
    if kind == "quick":
        y = x * ops.sigmoid(1.702 * x)
    else:
        y = ops.gelu(x, approximate=(kind == "tanh"))
    return ops.cast(y, dtype)


def act_f32(x, kind: str, dtype):
    """An MLP activation (shared.config.ACT_KINDS: a GELU form or "silu"), computed in float32, rounded to `dtype`."""
    if kind == "silu":
        return ops.cast(ops.silu(_f32(x)), dtype)
    return gelu_f32(x, kind, dtype)


def glu_f32(x, kind: str, dtype):
    """act(gate) * value over the packed [gate; value] last axis (timm's packed gated MLP; silu: SwiGLUPacked),
    computed in float32, rounded to `dtype`."""
    gate, value = ops.split(_f32(x), 2, axis=-1)
    g = ops.silu(gate) if kind == "silu" else gelu_f32(gate, kind, "float32")
    return ops.cast(g * value, dtype)


def apply_rope(x, rope, rotate_half: bool, dtype):
    """Rotate the last N tokens of x (B, H, T, hd) by the rotary table rope = [sin | cos] (N, 2*hd), or per head
    (H, N, 2*hd) (shared.posemb.model_rope_table), in float32, rounded to `dtype`; the prefix tokens stay as
    they are."""
    n, H, T, hd = rope.shape[-2], x.shape[1], x.shape[2], x.shape[3]
    sin, cos = ops.split(_f32(rope), 2, axis=-1)
    t = _f32(x[:, :, T - n:])
    if rotate_half:
        lo, hi = ops.split(t, 2, axis=-1)
        r = ops.concatenate([-hi, lo], axis=-1)
    else:
        r = ops.reshape(ops.stack([-t[..., 1::2], t[..., 0::2]], axis=-1), (-1, H, n, hd))
    return ops.concatenate([x[:, :, :T - n], ops.cast(t * cos + r * sin, dtype)], axis=2)


def _layer_norm(eps: float, name: str, dtype):
    # epsilon passed explicitly: Keras' default 1e-3 must never apply.
    return keras.layers.LayerNormalization(epsilon=eps, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RmsNorm(keras.layers.Layer):
    """timm's RmsNorm: x / sqrt(mean(x^2) + eps) * gamma (no bias), computed in float32, rounded to the compute
    dtype once (as LayerNormalization does)."""

    def __init__(self, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(int(input_shape[-1]),), initializer="ones", name="gamma", autocast=False)
        self.built = True

    def call(self, x):
        t = _f32(x)
        y = t * ops.rsqrt(ops.mean(t * t, axis=-1, keepdims=True) + self.epsilon) * _f32(self.gamma)
        return ops.cast(y, self.compute_dtype)

    def get_config(self):
        base = super().get_config()
        base.update({"epsilon": self.epsilon})
        return base


def _norm(eps: float, name: str, dtype, kind: str = "layer"):
    """A norm of the given kind (shared.config.NORM_KINDS): LayerNormalization or RmsNorm."""
    return RmsNorm(eps, name=name, dtype=dtype) if kind == "rms" else _layer_norm(eps, name, dtype)


def _dense(units: int, name: str, dtype, use_bias: bool = True):
    return keras.layers.Dense(units, use_bias=use_bias, name=name, dtype=dtype)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def ln_variables(prefix: str, layer) -> dict:
    """A norm's canonical keys: weight = gamma, bias = beta (an RmsNorm has no bias)."""
    if isinstance(layer, RmsNorm):
        return {f"{prefix}.weight": (layer.gamma, "direct")}
    return {f"{prefix}.weight": (layer.gamma, "direct"), f"{prefix}.bias": (layer.beta, "direct")}


def dense_variables(prefix: str, layer) -> dict:
    """A Dense layer's canonical keys: weight = kernel transposed ("dense"), bias."""
    v = {f"{prefix}.weight": (layer.kernel, "dense")}
    if layer.use_bias:
        v[f"{prefix}.bias"] = (layer.bias, "direct")
    return v


class _CfgLayer(keras.layers.Layer):
    """Base: holds the ViTConfig (as dict in get_config)."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.cfg = as_config(config)

    def get_config(self):
        base = super().get_config()
        base.update({"config": self.cfg.to_dict()})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth: drop the whole residual branch per sample (training only)."""

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.cast(keras.random.uniform(shape, seed=self.seed_generator) < keep, x.dtype)
        return x * mask / ops.cast(keep, x.dtype)

    def get_config(self):
        base = super().get_config()
        base.update({"rate": self.rate, "seed": self.seed})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbed(_CfgLayer):
    """Conv with stride = kernel = patch, computed as patchify + matmul (identical math).

    The weights live in a Conv2D `proj` (kernel HWIO (P, P, C, D), bias (D,) unless cfg.patch_bias is False)
    so the variable layout is Keras' own; the call reshapes the kernel to (P*P*C, D) and multiplies patches
    flattened in (i, j, c) order. With cfg.patch_norm a norm `norm` (cfg.norm_kind) over each projected patch,
    which the model applies (its own stage).
    """

    def __init__(self, config, data_format: str = "channels_last", **kwargs):
        super().__init__(config, **kwargs)
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        self.data_format = data_format
        c = self.cfg
        self.proj = keras.layers.Conv2D(c.embed_dim, c.patch_size, strides=c.patch_size, padding="valid",
                                        data_format="channels_last", use_bias=c.patch_bias, name="proj",
                                        dtype=self.dtype_policy)
        self.norm = _norm(c.layer_norm_eps, "norm", self.dtype_policy, c.norm_kind) if c.patch_norm else None

    def build(self, input_shape=None):
        c = self.cfg
        self.proj.build((None, None, None, c.in_chans))
        if self.norm is not None:
            self.norm.build((None, None, c.embed_dim))
        self.built = True

    def call(self, x):
        c = self.cfg
        P = c.patch_size
        if self.data_format == "channels_first":
            _, C, H, W = x.shape
        else:
            _, H, W, C = x.shape
        if C != c.in_chans:
            raise ValueError(f"images have {C} channels, config {c.name!r} expects {c.in_chans} (shape {x.shape})")
        if H is None or W is None or H % P or W % P:
            raise ValueError(f"image {H}x{W} is not divisible by patch size {P} (static sizes needed)")
        gh, gw = H // P, W // P
        x = ops.cast(x, self.compute_dtype)
        if self.data_format == "channels_first":
            x = ops.reshape(x, (-1, C, gh, P, gw, P))
            x = ops.transpose(x, (0, 2, 4, 3, 5, 1))
        else:
            x = ops.reshape(x, (-1, gh, P, gw, P, C))
            x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        x = ops.reshape(x, (-1, gh * gw, P * P * C))
        kernel = ops.reshape(ops.cast(self.proj.kernel, self.compute_dtype), (P * P * C, c.embed_dim))
        x = ops.matmul(x, kernel)
        return x + ops.cast(self.proj.bias, self.compute_dtype) if self.proj.use_bias else x

    def get_config(self):
        base = super().get_config()
        base.update({"data_format": self.data_format})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class Attention(keras.layers.Layer):
    """Multi-head self-attention, as `shared.reference.attention` (same arguments: `cfg.attention_args(i)`).

    dim: input width; width: the attention's (default dim); heads of width/num_heads. Projections: one fused `qkv`
    (rows q, k, v), or with qkv_fused=False `q_proj`, `k_proj`, `v_proj`; biases with qkv_bias, the k part held at
    zero with k_bias=False (BEiT, EVA); num_kv_heads (grouped-query attention): k_proj / v_proj give that many heads,
    each repeated for num_heads / num_kv_heads q heads. qk_norm: LayerNorm over each head's channels of q and k
    (`q_norm`, `k_norm`) before the scale; inner_norm: LayerNorm `norm` over the merged heads before `proj` (timm's scale_attn_inner);
    `norm` picks those norms' kind (layer or rms); `proj` has a bias with proj_bias;
    scale: default head_dim ** -0.5; value_skip (T2T): v (heads merged) + proj(...). call(x, rope, attn_bias,
    return_attn): a rotary table rotates the last N tokens' q and k (`apply_rope`), attn_bias is added to the
    scaled scores. Returns the output, or (output, probabilities) with return_attn."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, width: int | None = None,
                 qkv_bias: bool = True, qkv_fused: bool = True, k_bias: bool = True, qk_norm: bool = False,
                 inner_norm: bool = False, scale: float | None = None, rotate_half: bool = False,
                 value_skip: bool = False, proj_bias: bool = True, norm_eps: float = 1e-6, norm: str = "layer",
                 attn_drop: float = 0.0, proj_drop: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.norm_kind, self.proj_bias = str(norm), bool(proj_bias)
        self.dim, self.num_heads = int(dim), int(num_heads)
        self.num_kv_heads = int(num_kv_heads or num_heads)
        self.width = int(width) if width is not None else self.dim
        self.head_dim = self.width // self.num_heads
        self.qkv_bias, self.qkv_fused, self.k_bias = bool(qkv_bias), bool(qkv_fused), bool(k_bias)
        self.qk_norm, self.inner_norm, self.rotate_half = bool(qk_norm), bool(inner_norm), bool(rotate_half)
        self.scale = float(scale) if scale is not None else self.head_dim ** -0.5
        self.value_skip, self.norm_eps = bool(value_skip), float(norm_eps)
        self.attn_drop_rate, self.proj_drop_rate = float(attn_drop), float(proj_drop)
        pol, W = self.dtype_policy, self.width
        if self.qkv_fused:
            self.qkv = _dense(3 * W, "qkv", pol, use_bias=self.qkv_bias)
        else:
            self.q_proj = _dense(W, "q_proj", pol, use_bias=self.qkv_bias)
            Wkv = self.num_kv_heads * self.head_dim  # grouped-query attention: fewer k/v heads
            self.k_proj = _dense(Wkv, "k_proj", pol, use_bias=self.qkv_bias and self.k_bias)
            self.v_proj = _dense(Wkv, "v_proj", pol, use_bias=self.qkv_bias)
        nk = self.norm_kind
        self.q_norm = _norm(self.norm_eps, "q_norm", pol, nk) if self.qk_norm else None
        self.k_norm = _norm(self.norm_eps, "k_norm", pol, nk) if self.qk_norm else None
        self.norm = _norm(self.norm_eps, "norm", pol, nk) if self.inner_norm else None
        self.proj = _dense(W, "proj", pol, use_bias=self.proj_bias)
        self.attn_drop = keras.layers.Dropout(self.attn_drop_rate, name="attn_drop", dtype=pol)
        self.proj_drop = keras.layers.Dropout(self.proj_drop_rate, name="proj_drop", dtype=pol)

    def build(self, input_shape=None):
        for name in self._projections():
            getattr(self, name).build((None, None, self.dim))
        if self.q_norm is not None:
            self.q_norm.build((None, None, None, self.head_dim))
            self.k_norm.build((None, None, None, self.head_dim))
        if self.norm is not None:
            self.norm.build((None, None, self.width))
        self.proj.build((None, None, self.width))
        self.built = True

    def _projections(self) -> list[str]:
        return ["qkv"] if self.qkv_fused else ["q_proj", "k_proj", "v_proj"]

    def _qkv(self, x):
        if not self.qkv_fused:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qkv_bias and not self.k_bias:  # the k third of the bias held at zero
            W, dt = self.width, self.compute_dtype
            b = ops.cast(self.qkv.bias, dt)
            b = ops.concatenate([b[:W], ops.zeros((W,), dtype=dt), b[2 * W:]])
            qkv = ops.matmul(x, ops.cast(self.qkv.kernel, dt)) + b
        else:
            qkv = self.qkv(x)
        return ops.split(qkv, 3, axis=-1)

    def call(self, x, rope=None, attn_bias=None, return_attn=False, training=False):
        H, Hkv, hd, A = self.num_heads, self.num_kv_heads, self.head_dim, self.width
        T = x.shape[1]
        q, k, v = self._qkv(x)
        q = ops.transpose(ops.reshape(q, (-1, T, H, hd)), (0, 2, 1, 3))
        k, v = (ops.transpose(ops.reshape(t, (-1, T, Hkv, hd)), (0, 2, 1, 3)) for t in (k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = apply_rope(q, rope, self.rotate_half, self.compute_dtype)
            k = apply_rope(k, rope, self.rotate_half, self.compute_dtype)
        if Hkv != H:  # grouped-query attention: kv head j serves q heads j * groups ... (timm's repeat_interleave)
            k, v = ops.repeat(k, H // Hkv, axis=1), ops.repeat(v, H // Hkv, axis=1)
        scores = _f32(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))) * self.scale
        if attn_bias is not None:
            scores = scores + _f32(attn_bias)
        probs = softmax_f32(ops.cast(scores, self.compute_dtype), self.compute_dtype)
        p = probs
        if training and self.attn_drop_rate > 0:
            p = self.attn_drop(probs, training=training)
        out = ops.matmul(p, v)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, T, A))
        if self.norm is not None:
            out = self.norm(out)
        out = self.proj(out)
        if training and self.proj_drop_rate > 0:
            out = self.proj_drop(out, training=training)
        if self.value_skip:
            out = ops.reshape(ops.transpose(v, (0, 2, 1, 3)), (-1, T, A)) + out
        return (out, probs) if return_attn else out

    def canonical_variables(self, prefix: str = "") -> dict:
        """canonical key (under `prefix`) -> (variable, kind), as `VisionTransformer.canonical_variables`."""
        v = {}
        for name in self._projections():
            v.update(dense_variables(_key(prefix, name), getattr(self, name)))
        if self.q_norm is not None:
            v.update(ln_variables(_key(prefix, "q_norm"), self.q_norm))
            v.update(ln_variables(_key(prefix, "k_norm"), self.k_norm))
        if self.norm is not None:
            v.update(ln_variables(_key(prefix, "norm"), self.norm))
        v.update(dense_variables(_key(prefix, "proj"), self.proj))
        return v

    def get_config(self):
        base = super().get_config()
        base.update({"dim": self.dim, "num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads,
                     "width": self.width, "qkv_bias": self.qkv_bias,
                     "qkv_fused": self.qkv_fused, "k_bias": self.k_bias, "qk_norm": self.qk_norm,
                     "inner_norm": self.inner_norm, "scale": self.scale, "rotate_half": self.rotate_half,
                     "value_skip": self.value_skip, "proj_bias": self.proj_bias, "norm_eps": self.norm_eps,
                     "norm": self.norm_kind, "attn_drop": self.attn_drop_rate,
                     "proj_drop": self.proj_drop_rate})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class Mlp(keras.layers.Layer):
    """fc1 -> act (computed in float32) -> dropout -> [norm] -> fc2 -> dropout, as `shared.reference.mlp_forward`
    (same arguments: `cfg.mlp_args()`). act: "erf", "tanh", "quick" or "silu"; with `gated` fc1 has 2 * hidden units
    and act(gate) * value replaces act (silu: SwiGLU), with `unpacked` too from separate `fc1_g` and `fc1_x` (timm's
    SwiGLU); inner_norm: a norm `norm` (kind `norm`) over the hidden width before fc2 (timm's scale_mlp_norm); the
    Dense layers have biases with `bias` (timm proj_bias)."""

    def __init__(self, dim: int, hidden: int, act: str = "erf", gated: bool = False, unpacked: bool = False,
                 inner_norm: bool = False, bias: bool = True, norm_eps: float = 1e-6, norm: str = "layer",
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.has_bias = bool(bias)
        self.dim, self.hidden, self.act, self.gated = int(dim), int(hidden), str(act), bool(gated)
        self.unpacked, self.norm_kind = bool(unpacked), str(norm)
        self.inner_norm, self.norm_eps = bool(inner_norm), float(norm_eps)
        self.rate = float(dropout)
        if self.unpacked:
            self.fc1_g = _dense(self.hidden, "fc1_g", self.dtype_policy, self.has_bias)
            self.fc1_x = _dense(self.hidden, "fc1_x", self.dtype_policy, self.has_bias)
        else:
            self.fc1 = _dense(2 * self.hidden if self.gated else self.hidden, "fc1", self.dtype_policy, self.has_bias)
        self.norm = _norm(self.norm_eps, "norm", self.dtype_policy, self.norm_kind) if self.inner_norm else None
        self.fc2 = _dense(self.dim, "fc2", self.dtype_policy, self.has_bias)
        self.drop1 = keras.layers.Dropout(self.rate, name="drop1", dtype=self.dtype_policy)
        self.drop2 = keras.layers.Dropout(self.rate, name="drop2", dtype=self.dtype_policy)

    def _fc1s(self) -> list[str]:
        return ["fc1_g", "fc1_x"] if self.unpacked else ["fc1"]

    def build(self, input_shape=None):
        for name in self._fc1s():
            getattr(self, name).build((None, None, self.dim))
        if self.norm is not None:
            self.norm.build((None, None, self.hidden))
        self.fc2.build((None, None, self.hidden))
        self.built = True

    def call(self, x, training=False):
        h = ops.concatenate([self.fc1_g(x), self.fc1_x(x)], axis=-1) if self.unpacked else self.fc1(x)
        h = glu_f32(h, self.act, self.compute_dtype) if self.gated else act_f32(h, self.act, self.compute_dtype)
        if training and self.rate > 0:
            h = self.drop1(h, training=training)
        if self.norm is not None:
            h = self.norm(h)
        h = self.fc2(h)
        if training and self.rate > 0:
            h = self.drop2(h, training=training)
        return h

    def canonical_variables(self, prefix: str = "") -> dict:
        v = {}
        for name in self._fc1s():
            v.update(dense_variables(_key(prefix, name), getattr(self, name)))
        if self.norm is not None:
            v.update(ln_variables(_key(prefix, "norm"), self.norm))
        v.update(dense_variables(_key(prefix, "fc2"), self.fc2))
        return v

    def get_config(self):
        base = super().get_config()
        base.update({"dim": self.dim, "hidden": self.hidden, "act": self.act, "gated": self.gated,
                     "unpacked": self.unpacked, "inner_norm": self.inner_norm, "bias": self.has_bias,
                     "norm_eps": self.norm_eps,
                     "norm": self.norm_kind, "dropout": self.rate})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(keras.layers.Layer):
    """LayerScale: the branch output times a per-channel `gamma` (dim,), in the compute dtype (one rounding)."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)

    def build(self, input_shape=None):
        # the value comes from the canonical weights (init_weights or a file), as every other variable's does
        self.gamma = self.add_weight(shape=(self.dim,), initializer="ones", name="gamma", autocast=False)
        self.built = True

    def call(self, x):
        return x * ops.cast(self.gamma, self.compute_dtype)

    def get_config(self):
        base = super().get_config()
        base.update({"dim": self.dim})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class Block(keras.layers.Layer):
    """Pre-norm transformer block, as `shared.reference.block` (same arguments: `cfg.block_args(i)`).

    attn / mlp: the Attention's and the Mlp's arguments (dim aside: the block's input width, and the attention's
    width for the MLP). ls_init: LayerScale `ls1`, `ls2` on each branch before its residual add. When dim differs
    from the attention's width (T2T first block) there is no outer attention residual. call(x, rope, attn_bias,
    return_attn) passes rope and attn_bias to the attention; returns the output, or (output, probabilities) with
    return_attn. norm: the kind of norm1 / norm2 (layer or rms); ls_attn_only: no ls2; post_norm: the norms at the
    end of each branch, x + norm1(attn(x)), x + norm2(mlp(x)) (timm's res-post-norm blocks). num_parallel > 1 (timm's
    ParallelThingsBlock): `attns_j` and `ffns_j` (`Branch`es; canonical attns.j / ffns.j) instead, x + the sum of the
    attention branches, then + the sum of the MLP branches; return_attn gives branch 0's probabilities."""

    def __init__(self, dim: int, attn: dict, mlp: dict, ls_init: float | None = None, drop_path: float = 0.0,
                 norm_eps: float = 1e-6, norm: str = "layer", ls_attn_only: bool = False, post_norm: bool = False,
                 num_parallel: int = 1, **kwargs):
        super().__init__(**kwargs)
        pol = self.dtype_policy
        self.post_norm = bool(post_norm)
        self.dim, self.attn_args, self.mlp_args = int(dim), dict(attn), dict(mlp)
        self.ls_init = None if ls_init is None else float(ls_init)
        self.norm_eps, self.norm_kind, self.ls_attn_only = float(norm_eps), str(norm), bool(ls_attn_only)
        self.width = int(self.attn_args.get("width") or self.dim)
        self.num_parallel, self.drop_path_rate = int(num_parallel), float(drop_path)
        if self.num_parallel > 1:
            branch = dict(ls_init=self.ls_init, drop_path=self.drop_path_rate, norm_eps=self.norm_eps,
                          norm=self.norm_kind, dtype=pol)
            self.attns = [Branch(self.dim, attn=self.attn_args, name=f"attns_{j}", **branch)
                          for j in range(self.num_parallel)]
            self.ffns = [Branch(self.dim, mlp=self.mlp_args, name=f"ffns_{j}", **branch)
                         for j in range(self.num_parallel)]
            return
        self.norm1 = _norm(self.norm_eps, "norm1", pol, self.norm_kind)
        self.attn = Attention(self.dim, **self.attn_args, name="attn", dtype=pol)
        self.norm2 = _norm(self.norm_eps, "norm2", pol, self.norm_kind)
        self.mlp = Mlp(self.width, **self.mlp_args, name="mlp", dtype=pol)
        scaled = self.ls_init is not None
        self.ls1 = LayerScale(self.width, name="ls1", dtype=pol) if scaled else None
        self.ls2 = LayerScale(self.width, name="ls2", dtype=pol) if scaled and not self.ls_attn_only else None
        self.drop_path_rate = float(drop_path)
        self.drop_path1 = DropPath(self.drop_path_rate, name="drop_path1", dtype=pol)
        self.drop_path2 = DropPath(self.drop_path_rate, name="drop_path2", dtype=pol)

    def build(self, input_shape=None):
        W = self.width
        if self.num_parallel > 1:
            for b in self.attns + self.ffns:
                b.build((None, None, self.dim))
            self.built = True
            return
        self.norm1.build((None, None, self.dim))
        self.attn.build((None, None, self.dim))
        self.norm2.build((None, None, W))
        self.mlp.build((None, None, W))
        if self.ls1 is not None:
            self.ls1.build((None, None, W))
        if self.ls2 is not None:
            self.ls2.build((None, None, W))
        self.built = True

    def call(self, x, rope=None, attn_bias=None, return_attn=False, training=False):
        if self.num_parallel > 1:  # the branches summed (timm: a stack summed), then the residual add
            outs = [b(x, rope=rope, attn_bias=attn_bias, return_attn=return_attn and j == 0, training=training)
                    for j, b in enumerate(self.attns)]
            probs = outs[0][1] if return_attn else None
            ys = [o[0] if return_attn and j == 0 else o for j, o in enumerate(outs)]
            x = x + ops.sum(ops.stack(ys), axis=0)
            x = x + ops.sum(ops.stack([f(x, training=training) for f in self.ffns]), axis=0)
            return (x, probs) if return_attn else x
        if self.post_norm:  # no LayerScale, same widths (ViTConfig refuses the rest)
            y = self.attn(x, rope=rope, attn_bias=attn_bias, return_attn=return_attn, training=training)
            y, probs = y if return_attn else (y, None)
            x = x + self.drop_path1(self.norm1(y), training=training)
            x = x + self.drop_path2(self.norm2(self.mlp(x, training=training)), training=training)
            return (x, probs) if return_attn else x
        y = self.attn(self.norm1(x), rope=rope, attn_bias=attn_bias, return_attn=return_attn, training=training)
        y, probs = y if return_attn else (y, None)
        if self.ls1 is not None:
            y = self.ls1(y)
        if self.dim == self.width:
            x = x + self.drop_path1(y, training=training)
        else:
            x = y  # widths differ: no outer residual (the value skip inside attention carries x)
        h = self.mlp(self.norm2(x), training=training)
        if self.ls2 is not None:
            h = self.ls2(h)
        x = x + self.drop_path2(h, training=training)
        return (x, probs) if return_attn else x

    def canonical_variables(self, prefix: str = "") -> dict:
        if self.num_parallel > 1:
            v = {}
            for kind, branches in (("attns", self.attns), ("ffns", self.ffns)):
                for j, b in enumerate(branches):
                    v.update(b.canonical_variables(_key(prefix, f"{kind}.{j}")))
            return v
        v = ln_variables(_key(prefix, "norm1"), self.norm1)
        v.update(self.attn.canonical_variables(_key(prefix, "attn")))
        if self.ls1 is not None:
            v[_key(prefix, "ls1.gamma")] = (self.ls1.gamma, "direct")
        v.update(ln_variables(_key(prefix, "norm2"), self.norm2))
        v.update(self.mlp.canonical_variables(_key(prefix, "mlp")))
        if self.ls2 is not None:
            v[_key(prefix, "ls2.gamma")] = (self.ls2.gamma, "direct")
        return v

    def get_config(self):
        base = super().get_config()
        base.update({"dim": self.dim, "attn": dict(self.attn_args), "mlp": dict(self.mlp_args),
                     "ls_init": self.ls_init, "drop_path": self.drop_path_rate, "norm_eps": self.norm_eps,
                     "norm": self.norm_kind, "ls_attn_only": self.ls_attn_only, "post_norm": self.post_norm,
                     "num_parallel": self.num_parallel})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class Branch(keras.layers.Layer):
    """One branch of a parallel block (timm ParallelThingsBlock's attns.j / ffns.j): `norm` -> `attn` (attn: the
    Attention's arguments) or `mlp` (mlp: the Mlp's) -> LayerScale `ls` (with ls_init) -> stochastic depth.
    call(x, rope, attn_bias, return_attn) as `Attention`'s (an MLP branch ignores them)."""

    def __init__(self, dim: int, attn: dict | None = None, mlp: dict | None = None, ls_init: float | None = None,
                 drop_path: float = 0.0, norm_eps: float = 1e-6, norm: str = "layer", **kwargs):
        super().__init__(**kwargs)
        pol = self.dtype_policy
        self.dim, self.attn_args, self.mlp_args = int(dim), attn, mlp
        self.ls_init, self.norm_eps, self.norm_kind = ls_init, float(norm_eps), str(norm)
        self.drop_path_rate = float(drop_path)
        self.norm = _norm(self.norm_eps, "norm", pol, self.norm_kind)
        self.inner = (Attention(self.dim, **attn, name="attn", dtype=pol) if attn is not None
                      else Mlp(self.dim, **mlp, name="mlp", dtype=pol))
        self.ls = LayerScale(self.dim, name="ls", dtype=pol) if ls_init is not None else None
        self.drop_path = DropPath(self.drop_path_rate, name="drop_path", dtype=pol)

    def build(self, input_shape=None):
        for layer in (self.norm, self.inner, self.ls):
            if layer is not None:
                layer.build((None, None, self.dim))
        self.built = True

    def call(self, x, rope=None, attn_bias=None, return_attn=False, training=False):
        probs = None
        if self.attn_args is not None:
            y = self.inner(self.norm(x), rope=rope, attn_bias=attn_bias, return_attn=return_attn, training=training)
            y, probs = y if return_attn else (y, None)
        else:
            y = self.inner(self.norm(x), training=training)
        if self.ls is not None:
            y = self.ls(y)
        y = self.drop_path(y, training=training)
        return (y, probs) if return_attn else y

    def canonical_variables(self, prefix: str = "") -> dict:
        v = ln_variables(_key(prefix, "norm"), self.norm)
        v.update(self.inner.canonical_variables(_key(prefix, "attn" if self.attn_args is not None else "mlp")))
        if self.ls is not None:
            v[_key(prefix, "ls.gamma")] = (self.ls.gamma, "direct")
        return v

    def get_config(self):
        base = super().get_config()
        base.update({"dim": self.dim, "attn": self.attn_args, "mlp": self.mlp_args, "ls_init": self.ls_init,
                     "drop_path": self.drop_path_rate, "norm_eps": self.norm_eps, "norm": self.norm_kind})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionPool(keras.layers.Layer):
    """timm's AttentionPoolLatent (SigLIP's MAP head, pool="map"), as `shared.reference.attention_pool` (same
    arguments: `cfg.pool_args()`), over the patch tokens (B, N, dim): a learned `latent` query (q from it, k and v
    from `kv`, rows k then v) attends with num_heads heads and scale head_dim ** -0.5, then `proj`;
    out = out + mlp(norm(out)) (act, no dropout: timm's). Returns (B, dim)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, act: str = "erf", norm_eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.hidden, self.act = int(dim), int(num_heads), int(hidden), str(act)
        self.norm_eps = float(norm_eps)
        pol, W = self.dtype_policy, self.dim
        self.q = _dense(W, "q", pol)
        self.kv = _dense(2 * W, "kv", pol)
        self.proj = _dense(W, "proj", pol)
        self.norm = _layer_norm(self.norm_eps, "norm", pol)
        self.mlp = Mlp(W, self.hidden, self.act, name="mlp", dtype=pol)

    def build(self, input_shape=None):
        W = self.dim
        self.latent = self.add_weight(shape=(1, 1, W), initializer="zeros", name="latent", autocast=False)
        for layer in (self.q, self.kv, self.proj, self.norm, self.mlp):
            layer.build((None, None, W))
        self.built = True

    def call(self, x):
        H, W = self.num_heads, self.dim
        hd = W // H
        dt = self.compute_dtype
        N = x.shape[1]
        q = self.q(ops.cast(self.latent, dt))  # (1, 1, W)
        q = ops.transpose(ops.reshape(q, (1, 1, H, hd)), (0, 2, 1, 3))  # (1, H, 1, hd)
        q = ops.broadcast_to(q, (ops.shape(x)[0], H, 1, hd))
        kv = ops.transpose(ops.reshape(self.kv(x), (-1, N, 2, H, hd)), (2, 0, 3, 1, 4))  # (2, B, H, N, hd)
        k, v = kv[0], kv[1]
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        probs = softmax_f32(ops.cast(_f32(scores) * hd ** -0.5, dt), dt)
        out = ops.reshape(ops.transpose(ops.matmul(probs, v), (0, 2, 1, 3)), (-1, 1, W))
        out = self.proj(out)
        out = out + self.mlp(self.norm(out))
        return out[:, 0]

    def canonical_variables(self, prefix: str = "") -> dict:
        v = {_key(prefix, "latent"): (self.latent, "direct")}
        for name in ("q", "kv", "proj"):
            v.update(dense_variables(_key(prefix, name), getattr(self, name)))
        v.update(ln_variables(_key(prefix, "norm"), self.norm))
        v.update(self.mlp.canonical_variables(_key(prefix, "mlp")))
        return v

    def get_config(self):
        base = super().get_config()
        base.update({"dim": self.dim, "num_heads": self.num_heads, "hidden": self.hidden, "act": self.act,
                     "norm_eps": self.norm_eps})
        return base


#: every layer class vit_keras registers (the `.keras` loader's allow-list adds the model's class)
LAYER_CLASSES = (DropPath, PatchEmbed, RmsNorm, Attention, Mlp, LayerScale, Block, AttentionPool)


def with_unpositioned_prefix(table, num_pos_prefix: int, num_prefix: int):
    """(1, Np + N, D) -> (1, prefix + N, D): zero rows for the prefix tokens without a position (keras.ops form
    of shared.posemb.with_unpositioned_prefix; adding 0 is exact)."""
    if num_pos_prefix == num_prefix:
        return table
    zeros = ops.zeros((1, num_prefix - num_pos_prefix, table.shape[-1]), dtype=table.dtype)
    return ops.concatenate([table[:, :num_pos_prefix], zeros, table[:, num_pos_prefix:]], axis=1)


def resample_table(table, cfg, new_grid):
    """A config's learned (1, prefix + gh*gw, D) table (prefix: cfg.num_pos_prefix rows) -> new grid with the
    pinned constant matrices (shared.posemb.model_resample_matrices, float32 einsum); as stored where
    shared.posemb.model_resamples says it is not resampled."""
    old_grid, new_grid, num_prefix = tuple(cfg.table_grid), tuple(new_grid), cfg.num_pos_prefix
    if not model_resamples(cfg, new_grid):
        return table
    D = table.shape[-1]
    wh, ww = (ops.convert_to_tensor(np.asarray(m, np.float32)) for m in model_resample_matrices(cfg, new_grid))
    prefix = table[:, :num_prefix]
    grid = ops.reshape(table[0, num_prefix:], (old_grid[0], old_grid[1], D))
    out = ops.einsum("ah,hwd,bw->abd", wh, grid, ww)
    out = ops.reshape(out, (1, new_grid[0] * new_grid[1], D))
    return ops.concatenate([prefix, out], axis=1) if num_prefix else out


@keras.saving.register_keras_serializable(package=PACKAGE)
class RelPosBias(keras.layers.Layer):
    """A relative position bias, as `shared.reference.rel_pos_bias`: call(grid) -> (heads, T, T) score bias in the
    compute dtype, built once per forward by the model. kind "table": `relative_position_bias_table` (rows, heads)
    gathered by shared.posemb.rel_pos_index (BEiT, timm RelPosBias); "mlp": timm's RelPosMlp, `mlp.fc1` -> ReLU ->
    `mlp.fc2` over shared.posemb.rel_log_coords (rounded to the compute dtype), the class token's row and column
    zero. The index and coordinates are NumPy constants per grid, never variables."""

    def __init__(self, kind: str, rows: int, heads: int, hidden: int, prefix_tokens: int, **kwargs):
        super().__init__(**kwargs)
        self.kind, self.rows, self.heads = str(kind), int(rows), int(heads)
        self.hidden, self.prefix_tokens = int(hidden), int(prefix_tokens)
        if self.kind == "mlp":
            self.fc1 = _dense(self.hidden, "mlp_fc1", self.dtype_policy)
            self.fc2 = _dense(self.heads, "mlp_fc2", self.dtype_policy)

    def build(self, input_shape=None):
        if self.kind == "table":
            self.table = self.add_weight(shape=(self.rows, self.heads), initializer="zeros",
                                         name="relative_position_bias_table", autocast=False)
        else:
            self.fc1.build((None, 2))
            self.fc2.build((None, self.hidden))
        self.built = True

    def call(self, grid):
        dt = self.compute_dtype
        if self.kind == "table":
            rows, n0 = ops.cast(self.table, dt), self.prefix_tokens
            idx = rel_pos_index(grid, n0)
        else:
            coords = ops.cast(ops.convert_to_tensor(np.asarray(rel_log_coords(grid), np.float32)), dt)
            rows, n0 = self.fc2(ops.relu(self.fc1(coords))), 0
            idx = rel_pos_index(grid, 0)
        bias = ops.transpose(ops.take(rows, ops.convert_to_tensor(np.asarray(idx, np.int32)), axis=0), (2, 0, 1))
        p = self.prefix_tokens - n0
        return ops.pad(bias, ((0, 0), (p, 0), (p, 0))) if p else bias

    def canonical_variables(self, prefix: str = "") -> dict:
        if self.kind == "table":
            return {_key(prefix, "relative_position_bias_table"): (self.table, "direct")}
        return {**dense_variables(_key(prefix, "mlp.fc1"), self.fc1), **dense_variables(_key(prefix, "mlp.fc2"), self.fc2)}

    def get_config(self):
        base = super().get_config()
        base.update({"kind": self.kind, "rows": self.rows, "heads": self.heads, "hidden": self.hidden,
                     "prefix_tokens": self.prefix_tokens})
        return base
