"""Deliberately broken backends: the check must catch each bug and locate it at the right stage.

Registered for a test through VIT_SUITE_BACKENDS (inherited by the check's child processes), exactly as a
third-party backend would be.
"""
from __future__ import annotations

import torch

from vit_torch.backend import TorchBackend


class SwappedQK(TorchBackend):
    """q and k swapped in block 1 (a classic bug when splitting a fused qkv projection)."""

    name = "broken_qk"

    def build(self, cfg, state=None, *, dtype="float32", seed=0):
        model = super().build(cfg, state, dtype=dtype, seed=seed)
        W = cfg.width
        attn = model.blocks[1].attn
        with torch.no_grad():
            for p in (attn.qkv.weight, attn.qkv.bias) if attn.qkv.bias is not None else (attn.qkv.weight,):
                q = p[:W].clone()
                p[:W] = p[W:2 * W]
                p[W:2 * W] = q
        return model


class TanhGelu(TorchBackend):
    """tanh-approximate GELU where the config says erf (MindSpore's nn.GELU default)."""

    name = "broken_gelu"

    def build(self, cfg, state=None, *, dtype="float32", seed=0):
        model = super().build(cfg.replace(gelu="tanh"), state, dtype=dtype, seed=seed)
        model.config = cfg
        return model


class Crashing(TorchBackend):
    """A backend whose forward raises (a crash, not a numerical error): `check` and `sweep` report it as such."""

    name = "crashing"

    def forward(self, model, images):
        raise RuntimeError("deliberately crashing backend")


class Aborting(TorchBackend):
    """A backend that kills its own process (os.abort, as a segfault in native code would) on a batch of 3, and
    works on any other: a warm worker (`sweep`'s) dies with that cell alone and is started afresh for the next."""

    name = "aborting"

    def forward(self, model, images):
        if images.shape[0] == 3:
            import os

            os.abort()
        return super().forward(model, images)


class Slow(TorchBackend):
    """torch's numbers, a second late per forward: a sweep of it can be killed part-way at a known point (torch's own
    cells in a warm worker take milliseconds, so a whole small sweep can finish between two looks)."""

    name = "slow"

    def forward(self, model, images):
        import time

        time.sleep(1.0)
        return super().forward(model, images)
