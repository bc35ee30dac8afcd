"""Named configurations: the timm variants, tiny test models and the seed models.

Every preset spells out the numerics it depends on (eps, GELU, resize kernel)
rather than inheriting them, so a reader sees each model's choices in one place.
"""
from __future__ import annotations

from .config import ConfigError, ViTConfig

# Sizes of the standard variants (width, depth, heads, mlp), big_vision's table.
_SIZES = {
    "Ti": ("tiny", 192, 12, 3, 768),
    "S": ("small", 384, 12, 6, 1536),
    "B": ("base", 768, 12, 12, 3072),
    "L": ("large", 1024, 24, 16, 4096),
    "H": ("huge", 1280, 32, 16, 5120),
}
_STANDARD = [("Ti", 16, 224), ("Ti", 16, 384), ("S", 16, 224), ("S", 32, 224), ("S", 16, 384),
             ("B", 16, 224), ("B", 32, 224), ("B", 16, 384), ("L", 16, 224), ("L", 32, 224),
             ("L", 16, 384), ("H", 14, 224)]


def _timm(variant: str, patch: int, image: int) -> ViTConfig:
    long, dim, depth, heads, mlp = _SIZES[variant]
    return ViTConfig(
        name=f"vit_{long}_patch{patch}_{image}", image_size=(image, image), in_chans=3, patch_size=patch,
        embed_dim=dim, depth=depth, num_heads=heads, mlp_dim=mlp, qkv_bias=True,
        class_token="learned", pool="token", pos_embed="learned",
        resize_kernel="bicubic_antialias",  # timm's resample_abs_pos_embed default
        gelu="erf", layer_norm_eps=1e-6, final_norm=True, num_classes=1000,
    )


PRESETS: dict[str, ViTConfig] = {}
ALIASES: dict[str, str] = {}

for _v, _p, _i in _STANDARD:
    _cfg = _timm(_v, _p, _i)
    PRESETS[_cfg.name] = _cfg
    if _i == 224:
        ALIASES[f"{_v}/{_p}"] = _cfg.name
    else:
        ALIASES[f"{_v}/{_p}@{_i}"] = _cfg.name

# --- tiny models for tests: small enough for float64 NumPy in milliseconds -------
PRESETS["tiny"] = ViTConfig(
    name="tiny", image_size=(32, 32), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4,
    mlp_dim=64, layer_norm_eps=1e-6, gelu="erf", num_classes=10, resize_kernel="bicubic",
    notes="timm layout at toy size")
PRESETS["tiny_meanpool"] = ViTConfig(
    name="tiny_meanpool", image_size=(24, 40), in_chans=1, patch_size=8, embed_dim=32, depth=2, num_heads=2,
    mlp_dim=48, class_token="none", pool="mean", pos_embed="sincos2d", final_norm=False, fc_norm=True,
    gelu="tanh", layer_norm_eps=1e-5, num_classes=5,
    notes="non-square, 1 channel, no class token, 2-D sin-cos, fc_norm after mean pooling, tanh GELU")
PRESETS["tiny_t2t"] = ViTConfig(
    name="tiny_t2t", image_size=(20, 40), in_chans=2, patch_size=10, embed_dim=32, attn_dim=48, depth=2,
    num_heads=4, mlp_dim=72, qkv_bias=False, qk_scale=0.2, attn_value_skip=True, class_token="zeros",
    pos_embed="sincos1d", gelu="erf", layer_norm_eps=1e-5, final_norm=True, num_classes=1,
    notes="T2T-style at toy size: attention width differs from model width, value skip, zero token")
PRESETS["tiny_pretrain"] = ViTConfig(
    name="tiny_pretrain", image_size=(48, 40), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4,
    mlp_dim=64, pos_grid=(4, 4), resize_kernel="bicubic", representation_size=24, final_norm=False,
    layer_norm_eps=1e-5, gelu="tanh", num_classes=7, output_softmax=True,
    notes="learned 4x4 table resampled to a 6x5 grid, Linear-Tanh pre-logits, softmax output")

# --- the seed tutorials ----------------------------------------------------------
PRESETS["seed_t2t_walkthrough"] = ViTConfig(
    name="seed_t2t_walkthrough", image_size=(60, 100), in_chans=1, patch_size=20, embed_dim=768, depth=12,
    num_heads=4, mlp_dim=1152, qkv_bias=False, attn_value_skip=True, class_token="zeros", pool="token",
    pos_embed="sincos1d", gelu="erf", layer_norm_eps=1e-5, final_norm=True, num_classes=1,
    notes="T2T-style walkthrough: Unfold tokens (same math as a conv), fixed zero prediction token, "
          "1-D sinusoidal table with a row for the token, x = v + proj(attn v), MLP x1.5, one output. "
          "PyTorch defaults: LayerNorm eps 1e-5, erf GELU. Depth is not pinned by the walkthrough: 12.")
PRESETS["seed_classic_torch"] = ViTConfig(
    name="seed_classic_torch", image_size=(224, 224), in_chans=3, patch_size=16, embed_dim=768, depth=12,
    num_heads=12, mlp_dim=3072, qkv_bias=True, class_token="learned", pos_embed="learned",
    gelu="erf", layer_norm_eps=1e-5, final_norm=False, representation_size=768, num_classes=1000,
    resize_kernel="bicubic",
    notes="classic PyTorch ViT: conv patches, nn.MultiheadAttention (fused in_proj = qkv), "
          "pre-training head Linear-Tanh-Linear, no final norm, PyTorch eps 1e-5")
PRESETS["seed_keras"] = ViTConfig(
    name="seed_keras", image_size=(224, 224), in_chans=3, patch_size=16, embed_dim=768, depth=12,
    num_heads=12, mlp_dim=3072, qkv_bias=True, class_token="learned", pos_embed="learned", pos_grid=None,
    resize_kernel="bicubic", gelu="tanh", layer_norm_eps=1e-6, final_norm=True, num_classes=1000,
    output_softmax=True,
    notes="Keras ViT: timm names, eps 1e-6, tanh GELU, learned 14x14 table resampled bicubically "
          "(a=-0.75) to other input grids (use ViTConfig.with_image_size), softmax output")
PRESETS["seed_mindspore"] = ViTConfig(
    name="seed_mindspore", image_size=(224, 224), in_chans=3, patch_size=16, embed_dim=768, depth=12,
    num_heads=12, mlp_dim=3072, qkv_bias=True, class_token="learned", pos_embed="learned",
    resize_kernel="bicubic", gelu="tanh", layer_norm_eps=1e-6, final_norm=True, num_classes=1000,
    notes="MindSpore ImageNet classifier: B/16 with MindSpore's nn.GELU default (tanh), eps 1e-6")

ALIASES.update({"T2T": "seed_t2t_walkthrough", "classic": "seed_classic_torch", "keras": "seed_keras",
                "mindspore": "seed_mindspore"})

#: The model `vit-suite check` runs with no arguments (a shipped trained model replaces it when present).
DEFAULT_PRESET = "tiny"


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> ViTConfig:
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; presets: {', '.join(preset_names())}; short names: {', '.join(sorted(ALIASES))}")
    return PRESETS[key]

# --- the shipped trained model: 8x8 scikit-learn digits upsampled to 16x16 (shared/training/data.py) -
PRESETS["digits"] = ViTConfig(
    name="digits", image_size=(16, 16), in_chans=1, patch_size=4, embed_dim=64, depth=4, num_heads=4,
    mlp_dim=128, qkv_bias=True, class_token="learned", pool="token", pos_embed="learned",
    resize_kernel="bicubic", gelu="erf", layer_norm_eps=1e-6, final_norm=True, num_classes=10,
    notes="scikit-learn digits (8x8, 0..16) resized bicubically to 16x16, 1 channel; timm numerics "
          "(erf GELU, eps 1e-6, learned class token and position table); trains in seconds on 2 cores")
