"""Conformance helpers shipped with the product, as `torch.testing` ships with torch.

The suite's own tests use them, and so can a third-party backend's tests or a user's CI:

    from shared.testing import assert_conforms, case
    cfg, state, images = case("tiny")
    assert_conforms("tiny", "float32", my_backend.forward(my_backend.build(cfg, state), images))

`case` gives the same seeded weights and inputs to every caller; `reference_stages` caches the float64 (or
emulated low-precision) reference; `assert_conforms` applies the one tolerance policy (shared/tolerances.py)
and names the first stage out of bound.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import reference, tolerances
from .config import ViTConfig
from .init import init_weights, random_images
from .presets import get_preset

#: Tiny presets that turn on the ViT family's options (DeiT, DeiT III, DINOv2 with registers, CLIP, SigLIP, BEiT: a
#: relative position table per block with q/v biases, and timm's Eva: EVA02, RoPE-ViT mixed). The MLP-generated
#: shared bias (tiny_relpos) runs on the primary backends in test_family_relpos.py instead: each matrix preset costs
#: minutes of compiles.
FAMILY_TINY = ["tiny_deit", "tiny_deit3", "tiny_dinov2_reg", "tiny_clip", "tiny_siglip", "tiny_beit", "tiny_eva02",
               "tiny_rope_mixed"]
#: The timm Eva tiny presets (in FAMILY_TINY): their variants' matrix runs are slow-marked (conftest.py): the Eva
#: options live in the layers every variant shares, and each variant's compile of them costs seconds per dtype.
EVA_TINY = ["tiny_eva02", "tiny_rope_mixed"]
#: Tiny presets whose option is only in the head (no new parameter): the CI-sized matrix runs them on the primary
#: backends at batch 2 (the variants' compiles of the same blocks are slow-marked: conftest.py).
HEAD_TINY = ["tiny_dinov2_cls"]
#: Presets every backend is tested on in the CI-sized run (toy sizes cover every config option).
TINY_PRESETS = ["tiny", "tiny_meanpool", "tiny_t2t", "tiny_pretrain", *FAMILY_TINY, *HEAD_TINY]
#: Seed models; the T2T walkthrough has only 15 tokens and runs in the CI-sized set, the B/16-shaped ones are slow.
SEED_FAST = ["seed_t2t_walkthrough"]
SEED_SLOW = ["seed_classic_torch", "seed_keras", "seed_mindspore"]
SMALL_SLOW = ["vit_tiny_patch16_224", "vit_small_patch16_224"]


@lru_cache(maxsize=None)
def weights(preset: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A preset's seeded weights, made once per process (a 12-block model takes a second or two)."""
    return init_weights(get_preset(preset), seed)


@lru_cache(maxsize=None)
def case(preset: str, seed: int = 0, batch: int = 2, kind: str = "normal", image_size: tuple | None = None):
    """(cfg, state, images) for a preset; cached so every backend sees the same arrays."""
    cfg = get_preset(preset)
    return cfg, weights(preset, seed), random_images(cfg, batch, seed, kind, image_size)


def shuffle_patches(x: np.ndarray, patch: int, seed: int = 0) -> np.ndarray:
    """The same images with their patches in a random order (the seed's permutation demonstration)."""
    B, C, H, W = x.shape
    gh, gw = H // patch, W // patch
    tiles = x.reshape(B, C, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C, patch, patch)
    tiles = tiles[:, np.random.default_rng(seed).permutation(gh * gw)]
    return tiles.reshape(B, gh, gw, C, patch, patch).transpose(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


_ref_cache: dict = {}


def reference_stages(preset: str, dtype: str = "float64", **case_kw) -> dict[str, np.ndarray]:
    key = (preset, dtype, tuple(sorted(case_kw.items())))
    if key not in _ref_cache:
        cfg, state, x = case(preset, **case_kw)
        _ref_cache[key] = reference.forward(cfg, state, x, dtype=dtype)
    return _ref_cache[key]


def assert_conforms(preset: str, dtype: str, actual: dict[str, np.ndarray], **case_kw) -> tolerances.Verdict:
    """Every stage within the policy's bound of the float64 reference; the message names the first failure."""
    cfg = case(preset, **case_kw)[0]
    ref64 = reference_stages(preset, "float64", **case_kw)
    ref_lp = reference_stages(preset, dtype, **case_kw) if dtype != "float32" else None
    v = tolerances.judge(cfg, dtype, actual, ref64, ref_lp)
    table = "\n".join(f"  {s.stage:12s} rel_l2={s.rel_l2:.3e} bound={s.bound:.3e} max_abs={s.max_abs:.3e}"
                      for s in v.stages)
    assert v.passed, f"{preset} {dtype}: {v.summary()}\n{table}"
    return v


def assert_backend_conforms(be, preset: str, cfg: ViTConfig | None = None,
                            **case_kw) -> tuple[tolerances.Verdict, tolerances.Verdict]:
    """A backend's float32 forward of a preset's case, and its low precision's (bfloat16, else float16), each stage
    within the policy's bound (`assert_conforms`); prints each one's margin. `cfg`: the model to build when it is not
    the case's own (a NaFlex model built for another image size). Returns (float32 verdict, low-precision verdict)."""
    cfg0, state, x = case(preset, **case_kw)
    cfg = cfg or cfg0
    v32 = assert_conforms(preset, "float32", be.forward(be.build(cfg, state), x), **case_kw)
    print(f"{be.name} {preset} float32: worst stage at {max(s.rel_l2 / s.bound for s in v32.stages):.3f} of its bound")
    low = next(d for d in ("bfloat16", "float16") if d in be.dtypes)
    vlo = assert_conforms(preset, low, be.forward(be.build(cfg, state, dtype=low), x), **case_kw)
    print(f"{be.name} {preset} {low}: {vlo.summary()}")
    return v32, vlo
