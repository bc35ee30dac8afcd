"""What every backend's benchmark hook shares: the FLOP count and the timing loop (the command is shared/cli/bench.py).

A backend's `bench(cfg, batch=, dtype=, mode=, n_warmup=, n_iter=)` (see shared.backend.Backend) returns a dict with
at least "images_per_s" and "median_s"; `vit-suite bench` adds GFLOP/s from `vit_flops` and the peak memory.

FLOPs: `vit_flops` counts 2 per multiply-add of every matmul (patch projection, qkv, q k^T, attention x v, proj,
MLP, pre-logits, head); LayerNorm, softmax and GELU are not counted (a few % of the total). The machine is noisy:
each figure is the median of the timed calls after warm-up.
"""
from __future__ import annotations

import time

from .config import ViTConfig


def vit_flops(cfg: ViTConfig, image_size: tuple[int, int] | None = None) -> int:
    """Matmul FLOPs of one image's forward at `image_size` (default cfg.image_size)."""
    h, w = image_size or cfg.image_size
    P, D, W, M = cfg.patch_size, cfg.embed_dim, cfg.width, cfg.mlp_dim
    n = (h // P) * (w // P)
    t = n + cfg.num_prefix_tokens
    f = 2 * n * D * cfg.in_chans * P * P
    for i in range(cfg.depth):
        f += 2 * t * cfg.block_in_dim(i) * 3 * W  # qkv
        f += 2 * 2 * t * t * W  # q k^T and probs v, all heads
        f += 2 * t * W * W  # proj
        f += 2 * t * W * (cfg.fc1_dim + M)  # fc1 (packed gate and value for SwiGLU), fc2
    if cfg.representation_size:
        f += 2 * W * cfg.representation_size
    if cfg.num_classes:
        f += 2 * cfg.feature_dim * cfg.num_classes
    return f


def time_calls(call, n_warmup: int, n_iter: int) -> list[float]:
    """Seconds of each of `n_iter` calls of `call()` (which must block until its result exists), after `n_warmup`."""
    for _ in range(n_warmup):
        call()
    times = []
    for _ in range(n_iter):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times
