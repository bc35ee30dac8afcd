"""Keras 3 layers of the ViT, written with keras.ops only (run on the TensorFlow and torch backends).

Numerics follow shared/reference.py exactly; every choice comes from the ViTConfig, never from a
Keras default: LayerNormalization gets `epsilon=cfg.layer_norm_eps`, GELU gets
`approximate=(cfg.gelu == "tanh")`, the softmax is max-subtracted and computed in float32.

Precision: the model is built with a dtype policy (`mixed_bfloat16` / `mixed_float16` for the
low-precision runs): variables stay float32 (so export is lossless) and are cast to the compute
dtype when read; matmuls run in the compute dtype; LayerNorm (Keras upcasts), softmax and GELU
compute in float32 and round their output to the compute dtype, as the reference emulates.

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

    The weights live in a Conv2D `proj` (kernel HWIO (P, P, C, D), bias (D,)) so the variable
    layout is Keras' own; the call reshapes the kernel to (P*P*C, D) and multiplies patches
    flattened in (i, j, c) order.
    """

    def __init__(self, config, data_format: str = "channels_last", **kwargs):
        super().__init__(config, **kwargs)
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        self.data_format = data_format
        c = self.cfg
        self.proj = keras.layers.Conv2D(c.embed_dim, c.patch_size, strides=c.patch_size, padding="valid",
                                        data_format="channels_last", name="proj", dtype=self.dtype_policy)

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
        return ops.matmul(x, kernel) + ops.cast(self.proj.bias, self.compute_dtype)

    def get_config(self):
        base = super().get_config()
        base.update({"data_format": self.data_format})
        return base


@keras.saving.register_keras_serializable(package=PACKAGE)
class Attention(_CfgLayer):
    """Fused-qkv multi-head self-attention at width cfg.width; optional T2T value skip."""

    def __init__(self, config, in_dim: int, **kwargs):
        super().__init__(config, **kwargs)
        c = self.cfg
        self.in_dim = int(in_dim)
        self.qkv = _dense(3 * c.width, "qkv", self.dtype_policy, use_bias=c.qkv_bias)
        self.proj = _dense(c.width, "proj", self.dtype_policy)
        self.attn_drop = keras.layers.Dropout(c.attn_dropout, name="attn_drop", dtype=self.dtype_policy)
        self.proj_drop = keras.layers.Dropout(c.dropout, name="proj_drop", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.qkv.build((None, None, self.in_dim))
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
    """fc1 -> GELU (form from cfg.gelu, computed in float32) -> dropout -> fc2 -> dropout."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        c = self.cfg
        self.fc1 = _dense(c.mlp_dim, "fc1", self.dtype_policy)
        self.fc2 = _dense(c.width, "fc2", self.dtype_policy)
        self.drop1 = keras.layers.Dropout(c.dropout, name="drop1", dtype=self.dtype_policy)
        self.drop2 = keras.layers.Dropout(c.dropout, name="drop2", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.fc1.build((None, None, self.cfg.width))
        self.fc2.build((None, None, self.cfg.mlp_dim))
        self.built = True

    def call(self, x, training=False):
        c = self.cfg
        h = self.fc1(x)
        h = ops.cast(ops.gelu(_f32(h), approximate=(c.gelu == "tanh")), self.compute_dtype)
        if training and c.dropout > 0:
            h = self.drop1(h, training=training)
        h = self.fc2(h)
        if training and c.dropout > 0:
            h = self.drop2(h, training=training)
        return h


@keras.saving.register_keras_serializable(package=PACKAGE)
class Block(_CfgLayer):
    """Pre-norm transformer block; block 0 of a T2T-style model (in_dim != width) has no outer attention residual."""

    def __init__(self, config, index: int, **kwargs):
        super().__init__(config, **kwargs)
        c = self.cfg
        self.index = int(index)
        self.in_dim = c.block_in_dim(self.index)
        self.norm1 = _layer_norm(c, "norm1", self.dtype_policy)
        self.attn = Attention(c.to_dict(), self.in_dim, name="attn", dtype=self.dtype_policy)
        self.norm2 = _layer_norm(c, "norm2", self.dtype_policy)
        self.mlp = Mlp(c.to_dict(), name="mlp", dtype=self.dtype_policy)
        self.drop_path_rate = c.drop_path_rates[self.index]  # the same rates in every backend
        self.drop_path1 = DropPath(self.drop_path_rate, name="drop_path1", dtype=self.dtype_policy)
        self.drop_path2 = DropPath(self.drop_path_rate, name="drop_path2", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        W = self.cfg.width
        self.norm1.build((None, None, self.in_dim))
        self.attn.build((None, None, self.in_dim))
        self.norm2.build((None, None, W))
        self.mlp.build((None, None, W))
        self.built = True

    def call(self, x, training=False):
        c = self.cfg
        y = self.attn(self.norm1(x), training=training)
        if self.in_dim == c.width:
            x = x + self.drop_path1(y, training=training)
        else:
            x = y  # widths differ: no outer residual (the value skip inside attention carries x)
        h = self.mlp(self.norm2(x), training=training)
        return x + self.drop_path2(h, training=training)

    def get_config(self):
        base = super().get_config()
        base.update({"index": self.index})
        return base


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
