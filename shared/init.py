"""Deterministic random weights for a config.

Each tensor draws from its own generator seeded by (seed, crc32(key)), so adding
a key never changes the others. Linear and conv weights are truncated normal
(|z| <= 2, as timm) with std 1/sqrt(fan_in), which keeps activations O(1) and
attention far from uniform, so a swapped q/k or a wrong scale shows in the output.
LayerNorm scales are 1 + 0.1 z and every bias, class token and position row is
non-zero, so every parameter affects the output and the tests exercise it.
"""
from __future__ import annotations

import zlib

import numpy as np

from .config import ViTConfig
from .weights import expected_shapes


def _trunc_normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    """Normal draws with |z| > 2 redrawn (in index order, until none is left), times std. Only the redrawn
    positions are looked at again: the values are those of redrawing over the whole array, at a fraction of the
    passes."""
    z = rng.standard_normal(shape)
    flat = z.reshape(-1)
    idx = np.flatnonzero(np.abs(flat) > 2.0)
    while idx.size:
        flat[idx] = rng.standard_normal(idx.size)
        idx = idx[np.abs(flat[idx]) > 2.0]
    z *= std
    return z


def _tensor(seed: int, key: str, shape) -> np.ndarray:
    """One tensor of init_weights, from its own generator (float64 draws, then float32)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if key.endswith("norm.weight") or key.endswith(("norm1.weight", "norm2.weight")):
        v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif key.endswith(".gamma"):  # LayerScale: well away from 0 and 1, so a missing or misplaced scale shows
        v = 0.5 + 0.1 * rng.standard_normal(shape)
    elif key.endswith(".bias"):
        v = 0.02 * rng.standard_normal(shape)
    elif key in ("cls_token", "pos_embed", "pos_embed_y", "pos_embed_x", "dist_token", "reg_token", "attn_pool.latent"):
        v = _trunc_normal(rng, shape, 0.5)
    else:  # linear (out, in) or conv (out, in, kh, kw)
        fan_in = int(np.prod(shape[1:]))
        v = _trunc_normal(rng, shape, fan_in ** -0.5)
    return v.astype(np.float32)


def _draw(cfg: ViTConfig, seed: int, key: str, shape) -> np.ndarray:
    if key == "rope.freqs":  # RoPE-Mixed: timm's init_random_2d_freqs (a random rotation per block and head)
        return mixed_rope_freqs(cfg, np.random.default_rng([seed, zlib.crc32(key.encode())])).astype(np.float32)
    v = _tensor(seed, key, shape)
    if cfg.qkv_bias and not cfg.k_bias and key.endswith(".attn.qkv.bias"):
        v[cfg.width:2 * cfg.width] = 0.0  # the k third of the qkv bias is never read: zero, as BEiT holds it
    return v


def init_tensors(cfg: ViTConfig, seed: int = 0):
    """init_weights one tensor at a time, (key, float32 array) in the canonical order: a caller that takes each
    array over (a backend building its model) never holds a second copy of the weights."""
    for key, shape in expected_shapes(cfg).items():
        yield key, _draw(cfg, seed, key, shape)


def mixed_rope_freqs(cfg: ViTConfig, rng: np.random.Generator) -> np.ndarray:
    """(2, depth, heads, head_dim/2) learned RoPE-Mixed frequencies as timm's init_random_2d_freqs draws them:
    magnitudes 1 / temperature^(4k / head_dim), turned by a random angle per block and head; [x; y] components."""
    hd = cfg.head_dim
    mag = 1.0 / cfg.rope_temperature ** (np.arange(0, hd, 4) / hd)
    ang = rng.uniform(0.0, 2 * np.pi, (cfg.depth, cfg.num_heads, 1))
    fx = np.concatenate([mag * np.cos(ang), mag * np.cos(ang + np.pi / 2)], axis=-1)
    fy = np.concatenate([mag * np.sin(ang), mag * np.sin(ang + np.pi / 2)], axis=-1)
    return np.stack([fx, fy])


def init_weights(cfg: ViTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of `cfg`, each from its own generator: drawn by a few threads at once (NumPy's generators
    release the GIL while they fill), the values independent of the threads and their order."""
    from concurrent.futures import ThreadPoolExecutor

    from .jobs import cores

    shapes = expected_shapes(cfg)
    with ThreadPoolExecutor(max_workers=min(cores(), 8)) as pool:
        arrays = pool.map(lambda kv: _draw(cfg, seed, *kv), shapes.items())
        return dict(zip(shapes, arrays))


def random_images(cfg: ViTConfig, batch: int = 2, seed: int = 0, kind: str = "normal",
                  image_size: tuple[int, int] | None = None) -> np.ndarray:
    """NCHW float32 inputs: normal, uniform ([0, 1]), zeros or large (normal * 100)."""
    h, w = image_size or cfg.image_size
    shape = (batch, cfg.in_chans, h, w)
    rng = np.random.default_rng([seed, 7])
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "uniform":
        x = rng.uniform(0.0, 1.0, shape)
    elif kind == "zeros":
        x = np.zeros(shape)
    elif kind == "large":
        x = 100.0 * rng.standard_normal(shape)
    else:
        raise ValueError(f"unknown input kind {kind!r}; known: normal, uniform, zeros, large")
    return x.astype(np.float32)
