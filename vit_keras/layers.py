"""Keras 3 layers of the ViT, written with keras.ops only (run on the TensorFlow, JAX and torch backends).

Numerics follow shared/reference.py exactly; every choice comes from the ViTConfig, never from a
Keras default: LayerNormalization gets `epsilon=cfg.layer_norm_eps` (the qk-norm ones too), GELU is
`gelu_f32(x, cfg.gelu)` (erf, tanh or QuickGELU x * sigmoid(1.702 x)), the softmax is max-subtracted and
computed in float32.

Precision: the model is built with a dtype policy (`mixed_bfloat16` / `mixed_float16` for the
low-precision runs): variables stay float32 (so export is lossless) and are cast to the compute
dtype when read; matmuls run in the compute dtype; LayerNorm (Keras upcasts), softmax and GELU
compute in float32 and round their output to the compute dtype, as the reference emulates; a LayerScale
multiply runs in the compute dtype (one rounding, as in the reference).

Every layer is registered under the package 'vit_keras' and its `get_config` returns every
constructor argument; the ViTConfig travels as a plain dict (`ViTConfig.to_dict()`).
"""
from __future__ import annotations

import numpy as np

import keras
from keras import ops

from shared.config import ViTConfig
from shared.posemb import resize_matrix

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


def swiglu_f32(x, dtype):
    """silu(gate) * value over the packed [gate; value] last axis (timm SwiGLUPacked), computed in float32,
    rounded to `dtype`."""
    gate, value = ops.split(_f32(x), 2, axis=-1)
    return ops.cast(ops.silu(gate) * value, dtype)


def _layer_norm(cfg: ViTConfig, name: str, dtype):
    # epsilon passed explicitly: Keras' default 1e-3 must never apply.
    return keras.layers.LayerNormalization(epsilon=cfg.layer_norm_eps, name=name, dtype=dtype)


def _dense(units: int, name: str, dtype, use_bias: bool = True):
    return keras.layers.Dense(units, use_bias=use_bias, name=name, dtype=dtype)


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
    flattened in (i, j, c) order.
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

    def build(self, input_shape=None):
        c = self.cfg
        self.proj.build((None, None, None, c.in_chans))
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
class Attention(_CfgLayer):
    """Fused-qkv multi-head self-attention at width cfg.width; optional qk-norm (LayerNorm over each head's
    channels of q and k, before the scale: `q_norm`, `k_norm`) and T2T value skip."""

    def __init__(self, config, in_dim: int, **kwargs):
        super().__init__(config, **kwargs)
        c = self.cfg
        self.in_dim = int(in_dim)
        self.qkv = _dense(3 * c.width, "qkv", self.dtype_policy, use_bias=c.qkv_bias)
        self.q_norm = _layer_norm(c, "q_norm", self.dtype_policy) if c.qk_norm else None
        self.k_norm = _layer_norm(c, "k_norm", self.dtype_policy) if c.qk_norm else None
        self.proj = _dense(c.width, "proj", self.dtype_policy)
        self.attn_drop = keras.layers.Dropout(c.attn_dropout, name="attn_drop", dtype=self.dtype_policy)
        self.proj_drop = keras.layers.Dropout(c.dropout, name="proj_drop", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.qkv.build((None, None, self.in_dim))
        if self.q_norm is not None:
            self.q_norm.build((None, None, None, self.cfg.head_dim))
            self.k_norm.build((None, None, None, self.cfg.head_dim))
        self.proj.build((None, None, self.cfg.width))
        self.built = True

    def call(self, x, training=False, return_attn=False):
        c = self.cfg
        H, hd, A = c.num_heads, c.head_dim, c.width
        T = x.shape[1]
        qkv = self.qkv(x)
        qkv = ops.reshape(qkv, (-1, T, 3, H, hd))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, H, T, hd): q, k, v
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        scores = ops.cast(_f32(scores) * c.scale, self.compute_dtype)
        probs = softmax_f32(scores, self.compute_dtype)
        if training and c.attn_dropout > 0:
            probs = self.attn_drop(probs, training=training)
        out = ops.matmul(probs, v)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, T, A))
        out = self.proj(out)
        if training and c.dropout > 0:
            out = self.proj_drop(out, training=training)
        if c.attn_value_skip:
            out = ops.reshape(ops.transpose(v, (0, 2, 1, 3)), (-1, T, A)) + out
        return (out, probs) if return_attn else out

    def get_config(self):
        base = super().get_config()
        base.update({"in_dim": self.in_dim})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class Mlp(_CfgLayer):
    """fc1 -> GELU (form from cfg.gelu, computed in float32) -> dropout -> fc2 -> dropout.

    `dropout`: None for cfg.dropout (a block's MLP); the attention pool's MLP passes 0.0 (timm's
    AttentionPoolLatent has no dropout). `gated` (cfg.swiglu, a block's MLP): fc1 has 2 * mlp_dim units and
    SwiGLU replaces the GELU."""

    def __init__(self, config, dropout: float | None = None, gated: bool = False, **kwargs):
        super().__init__(config, **kwargs)
        c = self.cfg
        self.dropout = None if dropout is None else float(dropout)
        self.rate = c.dropout if dropout is None else float(dropout)
        self.gated = bool(gated)
        self.fc1 = _dense(2 * c.mlp_dim if self.gated else c.mlp_dim, "fc1", self.dtype_policy)
        self.fc2 = _dense(c.width, "fc2", self.dtype_policy)
        self.drop1 = keras.layers.Dropout(self.rate, name="drop1", dtype=self.dtype_policy)
        self.drop2 = keras.layers.Dropout(self.rate, name="drop2", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.fc1.build((None, None, self.cfg.width))
        self.fc2.build((None, None, self.cfg.mlp_dim))
        self.built = True

    def call(self, x, training=False):
        c = self.cfg
        h = self.fc1(x)
        h = swiglu_f32(h, self.compute_dtype) if self.gated else gelu_f32(h, c.gelu, self.compute_dtype)
        if training and self.rate > 0:
            h = self.drop1(h, training=training)
        h = self.fc2(h)
        if training and self.rate > 0:
            h = self.drop2(h, training=training)
        return h

    def get_config(self):
        base = super().get_config()
        base.update({"dropout": self.dropout, "gated": self.gated})
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
class Block(_CfgLayer):
    """Pre-norm transformer block; block 0 of a T2T-style model (in_dim != width) has no outer attention residual.
    With cfg.init_values each branch is scaled by a LayerScale (`ls1`, `ls2`) before its residual add."""

    def __init__(self, config, index: int, **kwargs):
        super().__init__(config, **kwargs)
        c = self.cfg
        self.index = int(index)
        self.in_dim = c.block_in_dim(self.index)
        self.norm1 = _layer_norm(c, "norm1", self.dtype_policy)
        self.attn = Attention(c.to_dict(), self.in_dim, name="attn", dtype=self.dtype_policy)
        self.norm2 = _layer_norm(c, "norm2", self.dtype_policy)
        self.mlp = Mlp(c.to_dict(), gated=c.swiglu, name="mlp", dtype=self.dtype_policy)
        scaled = c.init_values is not None
        self.ls1 = LayerScale(c.width, name="ls1", dtype=self.dtype_policy) if scaled else None
        self.ls2 = LayerScale(c.width, name="ls2", dtype=self.dtype_policy) if scaled else None
        self.drop_path_rate = c.drop_path_rates[self.index]  # the same rates in every backend
        self.drop_path1 = DropPath(self.drop_path_rate, name="drop_path1", dtype=self.dtype_policy)
        self.drop_path2 = DropPath(self.drop_path_rate, name="drop_path2", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        W = self.cfg.width
        self.norm1.build((None, None, self.in_dim))
        self.attn.build((None, None, self.in_dim))
        self.norm2.build((None, None, W))
        self.mlp.build((None, None, W))
        if self.ls1 is not None:
            self.ls1.build((None, None, W))
            self.ls2.build((None, None, W))
        self.built = True

    def call(self, x, training=False):
        c = self.cfg
        y = self.attn(self.norm1(x), training=training)
        if self.ls1 is not None:
            y = self.ls1(y)
        if self.in_dim == c.width:
            x = x + self.drop_path1(y, training=training)
        else:
            x = y  # widths differ: no outer residual (the value skip inside attention carries x)
        h = self.mlp(self.norm2(x), training=training)
        if self.ls2 is not None:
            h = self.ls2(h)
        return x + self.drop_path2(h, training=training)

    def get_config(self):
        base = super().get_config()
        base.update({"index": self.index})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionPool(_CfgLayer):
    """timm's AttentionPoolLatent (SigLIP's MAP head, cfg.pool == "map") over the patch tokens (B, N, W): a learned
    `latent` query (q from it, k and v from `kv`, rows k then v) attends with cfg.num_heads heads and scale
    head_dim ** -0.5 (not cfg.qk_scale), then `proj`; out = out + mlp(norm(out)). Returns (B, W)."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        c = self.cfg
        pol = self.dtype_policy
        self.q = _dense(c.width, "q", pol)
        self.kv = _dense(2 * c.width, "kv", pol)
        self.proj = _dense(c.width, "proj", pol)
        self.norm = _layer_norm(c, "norm", pol)
        self.mlp = Mlp(c.to_dict(), dropout=0.0, name="mlp", dtype=pol)

    def build(self, input_shape=None):
        W = self.cfg.width
        self.latent = self.add_weight(shape=(1, 1, W), initializer="zeros", name="latent", autocast=False)
        for layer in (self.q, self.kv, self.proj, self.norm, self.mlp):
            layer.build((None, None, W))
        self.built = True

    def call(self, x):
        c = self.cfg
        H, hd, W = c.num_heads, c.head_dim, c.width
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


#: every layer class vit_keras registers (the `.keras` loader's allow-list adds the model's class)
LAYER_CLASSES = (DropPath, PatchEmbed, Attention, Mlp, LayerScale, Block, AttentionPool)


def with_unpositioned_prefix(table, num_pos_prefix: int, num_prefix: int):
    """(1, Np + N, D) -> (1, prefix + N, D): zero rows for the prefix tokens without a position (keras.ops form
    of shared.posemb.with_unpositioned_prefix; adding 0 is exact)."""
    if num_pos_prefix == num_prefix:
        return table
    zeros = ops.zeros((1, num_prefix - num_pos_prefix, table.shape[-1]), dtype=table.dtype)
    return ops.concatenate([table[:, :num_pos_prefix], zeros, table[:, num_pos_prefix:]], axis=1)


def resample_table(table, old_grid, new_grid, num_prefix: int, kernel: str):
    """(1, prefix + gh*gw, D) table -> new grid with the pinned constant matrices (float32 einsum)."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return table
    D = table.shape[-1]
    wh = ops.convert_to_tensor(np.asarray(resize_matrix(old_grid[0], new_grid[0], kernel), np.float32))
    ww = ops.convert_to_tensor(np.asarray(resize_matrix(old_grid[1], new_grid[1], kernel), np.float32))
    prefix = table[:, :num_prefix]
    grid = ops.reshape(table[0, num_prefix:], (old_grid[0], old_grid[1], D))
    out = ops.einsum("ah,hwd,bw->abd", wh, grid, ww)
    out = ops.reshape(out, (1, new_grid[0] * new_grid[1], D))
    return ops.concatenate([prefix, out], axis=1) if num_prefix else out
