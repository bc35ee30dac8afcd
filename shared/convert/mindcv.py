"""mindcv ViT `.ckpt` (`mindcv.models.vit.VisionTransformer`, MindSpore) <-> the canonical format.

A mindcv checkpoint is a foreign MindSpore checkpoint: `mindspore.save_checkpoint(model, path)` writes the
parameters under their cell paths and no vit-suite record (no config, no digest). Its names are timm's
(`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`, `norm`,
`fc_norm`, `head`) except that MindSpore's LayerNorm names its parameters `gamma` / `beta`; qkv is already fused in
q, k, v row order, so the mapping is a rename.

What the file determines: the class token, qkv bias, the final norm or the `fc_norm` of mindcv's global_pool='avg'
(mean over the patch tokens), the head; every shape is then checked strictly against the config. What it cannot
tell (the number of heads, the image size) comes from `--preset NAME`: a vit-suite preset, or one of mindcv's
model names (`vit_b_16_224`, `vit_b_32_224`, `vit_l_16_224`, ...).
Numerics are mindcv's code facts, not guesses: its VisionTransformer builds `nn.LayerNorm` with MindSpore's
default epsilon 1e-7 and `nn.GELU` with MindSpore's default approximate=True (the tanh form).
A digest-less checkpoint with canonical names (norm `weight` / `bias`, e.g. a vit_mindspore model saved with plain
`mindspore.save_checkpoint`) is read the same way with the preset's numerics.

Writing produces what `mindspore.load_param_into_net(mindcv_model, mindspore.load_checkpoint(path))` loads with no
missing and no unexpected parameter: mindcv's names, float32, no extra records.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from .. import weights as W
from ..config import ViTConfig
from ..errors import ConversionError, MissingFactsError, UsageError
from .common import family_refusals

MINDCV_EPS = 1e-7  # mindspore.nn.LayerNorm's default epsilon
MINDCV_GELU = "tanh"  # mindspore.nn.GELU's default approximate=True
INSTALL = "pip install --no-deps mindcv==0.3.0"

#: mindcv's ViT model names -> (width, depth, heads, mlp, patch, image)
MINDCV_MODELS = {
    "vit_b_16_224": (768, 12, 12, 3072, 16, 224), "vit_b_16_384": (768, 12, 12, 3072, 16, 384),
    "vit_l_16_224": (1024, 24, 16, 4096, 16, 224), "vit_l_16_384": (1024, 24, 16, 4096, 16, 384),
    "vit_b_32_224": (768, 12, 12, 3072, 32, 224), "vit_b_32_384": (768, 12, 12, 3072, 32, 384),
    "vit_l_32_224": (1024, 24, 16, 4096, 32, 224),
}
_NORM = re.compile(r"^(blocks\.\d+\.norm[12]|norm|fc_norm)\.(gamma|beta)$")


def mindcv_preset(name: str) -> ViTConfig:
    """A mindcv model name (vit_b_16_224, ...) or any vit-suite preset, as a config."""
    if name in MINDCV_MODELS:
        d, depth, heads, mlp, p, s = MINDCV_MODELS[name]
        return ViTConfig(name=name, image_size=(s, s), patch_size=p, embed_dim=d, depth=depth, num_heads=heads,
                         mlp_dim=mlp, gelu=MINDCV_GELU, layer_norm_eps=MINDCV_EPS, resize_kernel="bicubic",
                         num_classes=1000, notes="mindcv VisionTransformer")
    from ..presets import get_preset

    return get_preset(name)


def import_mindcv(tensors: Mapping[str, np.ndarray], preset: ViTConfig | str | None,
                  source: str = "<mindcv checkpoint>") -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """mindcv parameter dict -> (config, canonical state), strictly (every key and shape named on a mismatch)."""
    if preset is None:
        raise MissingFactsError(f"{source}: a MindSpore checkpoint without vit-suite's records (e.g. mindcv's) does "
                                f"not say its number of heads or image size: pass --preset NAME (a vit-suite "
                                f"preset, or a mindcv model name: {', '.join(MINDCV_MODELS)})")
    base = mindcv_preset(preset) if isinstance(preset, str) else preset
    mindcv_names = any(_NORM.match(k) for k in tensors)
    state: dict[str, np.ndarray] = {}
    for k, v in tensors.items():
        m = _NORM.match(k)
        name = f"{m.group(1)}.{'weight' if m.group(2) == 'gamma' else 'bias'}" if m else k
        arr = np.asarray(v)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ConversionError(f"{source}: key {k!r}: expected a floating tensor, got dtype {arr.dtype}")
        state[name] = arr.astype(np.float32)
    fc_norm = "fc_norm.weight" in state
    cfg = base.replace(
        class_token="learned" if "cls_token" in state else "none",
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        final_norm="norm.weight" in state, fc_norm=fc_norm, pool="mean" if fc_norm else "token",
        representation_size=None,
        num_classes=int(state["head.weight"].shape[0]) if "head.weight" in state else 0,
        **({"gelu": MINDCV_GELU, "layer_norm_eps": MINDCV_EPS} if mindcv_names else {}))
    W.validate_state(cfg, state, source=source)
    return cfg, state


def _mindcv_problems(cfg: ViTConfig) -> list[str]:
    p = family_refusals(cfg, "mindcv's VisionTransformer")
    if cfg.gelu != MINDCV_GELU:
        p.append(f"GELU {cfg.gelu!r}: mindcv's VisionTransformer computes the tanh form (nn.GELU default)")
    if cfg.layer_norm_eps != MINDCV_EPS:
        p.append(f"LayerNorm eps {cfg.layer_norm_eps:g}: mindcv's is {MINDCV_EPS:g} (nn.LayerNorm default)")
    if cfg.representation_size:
        p.append("a pre-logits layer: mindcv's VisionTransformer has none")
    if cfg.attn_dim not in (None, cfg.embed_dim) or cfg.attn_value_skip or cfg.qk_scale is not None:
        p.append("T2T-style attention (attn_dim, value skip or qk_scale)")
    if cfg.class_token == "zeros" or cfg.pos_embed != "learned":
        p.append(f"class token {cfg.class_token!r} / position embedding {cfg.pos_embed!r}: mindcv learns both")
    if cfg.final_norm == cfg.fc_norm or (cfg.fc_norm and cfg.pool != "mean") or (cfg.final_norm and cfg.pool != "token"):
        p.append("head: mindcv has a final norm with token pooling, or fc_norm with mean pooling")
    if cfg.output_softmax:
        p.append("an output softmax")
    if cfg.image_size[0] % cfg.patch_size or cfg.image_size[1] % cfg.patch_size:
        p.append("an image size that is not a multiple of the patch size")
    return p


def export_mindcv(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical -> mindcv's parameter names; refuses a model mindcv's VisionTransformer computes differently."""
    problems = _mindcv_problems(cfg)
    if problems:
        raise ConversionError(f"cannot write {cfg.name!r} as a mindcv checkpoint: mindcv's model would compute "
                              f"something else:\n  " + "\n  ".join(problems))
    W.validate_state(cfg, state, source=f"model {cfg.name!r}")
    out = {}
    for k in W.expected_shapes(cfg):
        m = re.match(r"^(blocks\.\d+\.norm[12]|norm|fc_norm)\.(weight|bias)$", k)
        name = f"{m.group(1)}.{'gamma' if m.group(2) == 'weight' else 'beta'}" if m else k
        out[name] = np.ascontiguousarray(state[k], np.float32)
    return out


def mindcv_model_kwargs(cfg: ViTConfig) -> dict:
    """mindcv.models.vit.VisionTransformer arguments for `cfg` (sizes only: the numerics are mindcv's own)."""
    if cfg.image_size[0] != cfg.image_size[1]:
        raise UsageError(f"mindcv's VisionTransformer takes a square image size, not {cfg.image_size}")
    return dict(image_size=cfg.image_size[0], patch_size=cfg.patch_size, in_channels=cfg.in_chans,
                embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_dim / cfg.embed_dim, qkv_bias=cfg.qkv_bias, num_classes=cfg.num_classes,
                class_token=cfg.class_token == "learned", global_pool="avg" if cfg.fc_norm else "token")


def read_ckpt_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a (foreign) MindSpore checkpoint, read as data (shared.ms_ckpt: no MindSpore)."""
    from ..ms_ckpt import read_ckpt_file

    return read_ckpt_file(path)[0]


def load_mindcv_file(path: str | os.PathLike, preset: ViTConfig | str | None = None
                     ) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    return import_mindcv(read_ckpt_tensors(path), preset, source=str(path))


def save_mindcv_ckpt(path: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray], *,
                     overwrite: bool = False) -> Path:
    """Write a checkpoint mindcv's VisionTransformer loads (atomically: nothing is left on failure): the bytes
    `mindspore.save_checkpoint` writes for its parameters, written as data (shared.ms_ckpt)."""
    from ..ms_ckpt import write_ckpt

    return write_ckpt(path, export_mindcv(cfg, state).items(), overwrite=overwrite)
