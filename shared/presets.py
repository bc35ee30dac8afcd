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

# --- the ViT family, with timm's names and exactly timm's architecture arguments ------------------
def _family(name: str, patch: int, image: int, dim: int, depth: int, heads: int, mlp: int, num_classes: int,
            **options) -> ViTConfig:
    """A timm vision_transformer / deit model; `options` are the ViTConfig fields its timm arguments set."""
    base = dict(name=name, image_size=(image, image), in_chans=3, patch_size=patch, embed_dim=dim, depth=depth,
                num_heads=heads, mlp_dim=mlp, qkv_bias=True, class_token="learned", pool="token", pos_embed="learned",
                resize_kernel="bicubic_antialias", gelu="erf", layer_norm_eps=1e-6, final_norm=True,
                num_classes=num_classes)
    base.update(options)
    return ViTConfig(**base)


_DEIT3 = dict(pos_prefix_tokens=0, init_values=1e-6)  # timm no_embed_class=True, LayerScale
_DINOV2 = dict(init_values=1e-5)
_CLIP = dict(norm_pre=True, patch_bias=False, layer_norm_eps=1e-5)  # timm pre_norm=True: no patch bias
_SIGLIP = dict(class_token="none", pool="map")  # timm's SigLIP uses erf GELU (HF's uses tanh)
_GAP = dict(class_token="none", pool="mean")  # global_pool='avg', fc_norm=False: the final norm stays
#: BEiT3 (timm's VisionTransformer with scale_attn_norm / scale_mlp_norm): a LayerNorm before attn.proj and before
#: mlp.fc2 (the sub-LNs), eps 1e-5, class token, mean of the patch tokens then fc_norm (global_pool='avg')
_BEIT3 = dict(attn_inner_norm=True, mlp_inner_norm=True, pool="mean", final_norm=False, fc_norm=True,
              layer_norm_eps=1e-5)
_FAMILY = [
    # name, patch, image, dim, depth, heads, mlp, classes, options
    ("deit_tiny_distilled_patch16_224", 16, 224, 192, 12, 3, 768, 1000, dict(dist_token=True)),
    ("deit_small_distilled_patch16_224", 16, 224, 384, 12, 6, 1536, 1000, dict(dist_token=True)),
    ("deit_base_distilled_patch16_224", 16, 224, 768, 12, 12, 3072, 1000, dict(dist_token=True)),
    ("deit_base_distilled_patch16_384", 16, 384, 768, 12, 12, 3072, 1000, dict(dist_token=True)),
    ("deit3_small_patch16_224", 16, 224, 384, 12, 6, 1536, 1000, _DEIT3),
    ("deit3_medium_patch16_224", 16, 224, 512, 12, 8, 2048, 1000, _DEIT3),
    ("deit3_base_patch16_224", 16, 224, 768, 12, 12, 3072, 1000, _DEIT3),
    ("deit3_large_patch16_224", 16, 224, 1024, 24, 16, 4096, 1000, _DEIT3),
    ("deit3_huge_patch14_224", 14, 224, 1280, 32, 16, 5120, 1000, _DEIT3),
    ("deit3_small_patch16_384", 16, 384, 384, 12, 6, 1536, 1000, _DEIT3),
    ("deit3_base_patch16_384", 16, 384, 768, 12, 12, 3072, 1000, _DEIT3),
    ("deit3_large_patch16_384", 16, 384, 1024, 24, 16, 4096, 1000, _DEIT3),
    ("vit_small_patch14_dinov2", 14, 518, 384, 12, 6, 1536, 0, _DINOV2),
    ("vit_base_patch14_dinov2", 14, 518, 768, 12, 12, 3072, 0, _DINOV2),
    ("vit_large_patch14_dinov2", 14, 518, 1024, 24, 16, 4096, 0, _DINOV2),
    ("vit_giant_patch14_dinov2", 14, 518, 1536, 40, 24, 4096, 0, dict(_DINOV2, swiglu=True)),
    ("vit_small_patch14_reg4_dinov2", 14, 518, 384, 12, 6, 1536, 0, dict(_DINOV2, reg_tokens=4, pos_prefix_tokens=0)),
    ("vit_base_patch14_reg4_dinov2", 14, 518, 768, 12, 12, 3072, 0, dict(_DINOV2, reg_tokens=4, pos_prefix_tokens=0)),
    ("vit_large_patch14_reg4_dinov2", 14, 518, 1024, 24, 16, 4096, 0, dict(_DINOV2, reg_tokens=4, pos_prefix_tokens=0)),
    ("vit_giant_patch14_reg4_dinov2", 14, 518, 1536, 40, 24, 4096, 0,
     dict(_DINOV2, reg_tokens=4, pos_prefix_tokens=0, swiglu=True)),
    ("vit_base_patch16_clip_224", 16, 224, 768, 12, 12, 3072, 1000, _CLIP),
    ("vit_base_patch32_clip_224", 32, 224, 768, 12, 12, 3072, 1000, _CLIP),
    ("vit_large_patch14_clip_224", 14, 224, 1024, 24, 16, 4096, 1000, _CLIP),
    ("vit_huge_patch14_clip_224", 14, 224, 1280, 32, 16, 5120, 1000, _CLIP),
    ("vit_base_patch16_clip_quickgelu_224", 16, 224, 768, 12, 12, 3072, 512, dict(_CLIP, gelu="quick")),
    ("vit_base_patch32_clip_quickgelu_224", 32, 224, 768, 12, 12, 3072, 512, dict(_CLIP, gelu="quick")),
    ("vit_large_patch14_clip_quickgelu_224", 14, 224, 1024, 24, 16, 4096, 768, dict(_CLIP, gelu="quick")),
    ("vit_base_patch16_siglip_224", 16, 224, 768, 12, 12, 3072, 0, _SIGLIP),
    ("vit_base_patch16_siglip_256", 16, 256, 768, 12, 12, 3072, 0, _SIGLIP),
    ("vit_base_patch16_siglip_384", 16, 384, 768, 12, 12, 3072, 0, _SIGLIP),
    ("vit_large_patch16_siglip_256", 16, 256, 1024, 24, 16, 4096, 0, _SIGLIP),
    ("vit_large_patch16_siglip_384", 16, 384, 1024, 24, 16, 4096, 0, _SIGLIP),
    ("vit_so400m_patch14_siglip_224", 14, 224, 1152, 27, 16, 4304, 0, _SIGLIP),
    ("vit_medium_patch16_gap_240", 16, 240, 512, 12, 8, 2048, 11821, dict(_GAP, qkv_bias=False, init_values=1e-6)),
    ("vit_medium_patch16_gap_256", 16, 256, 512, 12, 8, 2048, 1000, dict(_GAP, qkv_bias=False, init_values=1e-6)),
    ("vit_medium_patch16_gap_384", 16, 384, 512, 12, 8, 2048, 1000, dict(_GAP, qkv_bias=False, init_values=1e-6)),
    ("vit_base_patch16_gap_224", 16, 224, 768, 12, 16, 3072, 1000, _GAP),
    # timm's ResPostBlock (res-post-norm blocks; its init_values=1e-5 only set the norms' initial weights)
    ("vit_base_patch16_rpn_224", 16, 224, 768, 12, 12, 3072, 1000,
     dict(_GAP, qkv_bias=False, final_norm=False, fc_norm=True, block_norm="post")),
    # timm's ParallelThingsBlock ("Three things everyone should know about ViTs"): 18 blocks of 2 parallel branches
    ("vit_small_patch16_18x2_224", 16, 224, 384, 18, 6, 1536, 1000, dict(init_values=1e-5, num_parallel=2)),
    ("vit_base_patch16_18x2_224", 16, 224, 768, 18, 12, 3072, 1000, dict(init_values=1e-5, num_parallel=2)),
    ("beit3_base_patch16_224", 16, 224, 768, 12, 12, 3072, 1000, _BEIT3),
    ("beit3_large_patch16_224", 16, 224, 1024, 24, 16, 4096, 1000, _BEIT3),
    ("beit3_giant_patch14_224", 14, 224, 1408, 40, 16, 6144, 1000, _BEIT3),
    ("beit3_giant_patch14_336", 14, 336, 1408, 40, 16, 6144, 1000, _BEIT3),
]
for _name, _p, _i, _d, _depth, _h, _m, _k, _opts in _FAMILY:
    PRESETS[_name] = _family(_name, _p, _i, _d, _depth, _h, _m, _k, **_opts)
#: the family presets (timm names), for tests and the README table
FAMILY_PRESETS = [f[0] for f in _FAMILY]

# --- relative position biases: timm's Beit and VisionTransformerRelPos, with timm's names ----------------------
#: BEiT / BEiTv2: a learned relative table per block, q/v biases without a k bias, LayerScale, no absolute table,
#: mean of the patch tokens then fc_norm (timm use_rel_pos_bias=True, use_abs_pos_emb=False, global_pool='avg')
_BEIT = dict(k_bias=False, rel_pos="table", pos_embed="none", pool="mean", final_norm=False, fc_norm=True)
#: timm's VisionTransformerRelPos: RelPosMlp ('cr' log coordinates, hidden 128 unless rel_pos_dim), LayerScale 1e-6,
#: no absolute table, no class token and global_pool='avg' unless stated
_RELPOS = dict(rel_pos="mlp", pos_embed="none", init_values=1e-6, class_token="none", pool="mean")
_RELPOS_RPN = dict(_RELPOS, init_values=None, qkv_bias=False, block_norm="post")
_REL_FAMILY = [
    ("beit_base_patch16_224", 16, 224, 768, 12, 12, 3072, 1000, dict(_BEIT, init_values=0.1)),
    ("beit_base_patch16_384", 16, 384, 768, 12, 12, 3072, 1000, dict(_BEIT, init_values=0.1)),
    ("beit_large_patch16_224", 16, 224, 1024, 24, 16, 4096, 1000, dict(_BEIT, init_values=1e-5)),
    ("beit_large_patch16_384", 16, 384, 1024, 24, 16, 4096, 1000, dict(_BEIT, init_values=1e-5)),
    ("beit_large_patch16_512", 16, 512, 1024, 24, 16, 4096, 1000, dict(_BEIT, init_values=1e-5)),
    ("beitv2_base_patch16_224", 16, 224, 768, 12, 12, 3072, 1000, dict(_BEIT, init_values=1e-5)),
    ("beitv2_large_patch16_224", 16, 224, 1024, 24, 16, 4096, 1000, dict(_BEIT, init_values=1e-5)),
    ("vit_relpos_small_patch16_224", 16, 224, 384, 12, 6, 1536, 1000,
     dict(_RELPOS, qkv_bias=False, final_norm=False, fc_norm=True)),
    ("vit_relpos_medium_patch16_224", 16, 224, 512, 12, 8, 2048, 1000,
     dict(_RELPOS, qkv_bias=False, final_norm=False, fc_norm=True)),
    ("vit_relpos_base_patch16_224", 16, 224, 768, 12, 12, 3072, 1000,
     dict(_RELPOS, qkv_bias=False, final_norm=False, fc_norm=True)),
    ("vit_srelpos_small_patch16_224", 16, 224, 384, 12, 6, 1536, 1000,
     dict(_RELPOS, qkv_bias=False, rel_pos_dim=384, rel_pos_shared=True)),
    ("vit_srelpos_medium_patch16_224", 16, 224, 512, 12, 8, 2048, 1000,
     dict(_RELPOS, qkv_bias=False, rel_pos_dim=512, rel_pos_shared=True)),
    ("vit_relpos_medium_patch16_cls_224", 16, 224, 512, 12, 8, 2048, 1000,
     dict(_RELPOS, qkv_bias=False, rel_pos_dim=256, class_token="learned", pool="token")),
    ("vit_relpos_base_patch16_cls_224", 16, 224, 768, 12, 12, 3072, 1000,
     dict(_RELPOS, qkv_bias=False, class_token="learned", pool="token")),
    ("vit_relpos_base_patch16_clsgap_224", 16, 224, 768, 12, 12, 3072, 1000,
     dict(_RELPOS, qkv_bias=False, final_norm=False, fc_norm=True, class_token="learned")),
    ("vit_relpos_base_patch16_plus_240", 16, 240, 896, 12, 14, 3584, 1000, dict(_RELPOS)),
    # ResPostRelPosBlock: res-post-norm blocks, no LayerScale (timm's init_values only set the norms' initial weights)
    ("vit_relpos_small_patch16_rpn_224", 16, 224, 384, 12, 6, 1536, 1000, _RELPOS_RPN),
    ("vit_relpos_medium_patch16_rpn_224", 16, 224, 512, 12, 8, 2048, 1000, _RELPOS_RPN),
    ("vit_relpos_base_patch16_rpn_224", 16, 224, 768, 12, 12, 3072, 1000, _RELPOS_RPN),
    ("vit_relpos_base_patch32_plus_rpn_256", 32, 256, 896, 12, 14, 3584, 1000, dict(_RELPOS_RPN, qkv_bias=True)),
]
for _name, _p, _i, _d, _depth, _h, _m, _k, _opts in _REL_FAMILY:
    PRESETS[_name] = _family(_name, _p, _i, _d, _depth, _h, _m, _k, **_opts)
#: the relative-position family presets (timm names: Beit, VisionTransformerRelPos), for tests and the README table
REL_POS_PRESETS = [f[0] for f in _REL_FAMILY]

# --- timm's NaFlexVit at a fixed image size (timm's names): a Linear over (ph, pw, C) patches (the conv kernel,
# reshaped), a 16x16 table for the patch tokens only (pos_prefix_tokens=0) resampled per grid with NaFlexVit's
# own F.interpolate rule (bicubic or bilinear, antialias=True), no class token
_NAFLEX = dict(class_token="none", pos_prefix_tokens=0, pos_grid=(16, 16))
_NAFLEX_GAP = dict(_NAFLEX, pool="mean", final_norm=False, fc_norm=True, init_values=1e-5)
_NAFLEX_MAP = dict(_NAFLEX, pool="map", init_values=1e-5)
_NAFLEX_SIGLIP = dict(_NAFLEX, pool="map", gelu="tanh", resize_kernel="bilinear_antialias")
_NAFLEX_PAR = dict(_NAFLEX_GAP, pos_ar_preserving=True)
_RADIO = dict(_NAFLEX, class_token="learned", pos_grid=(128, 128), pool="token", final_norm=False,
              resize_kernel="bilinear", pos_ar_preserving=True)
_NAFLEX_FAMILY = [
    ("naflexvit_base_patch16_gap", 16, 384, 768, 12, 12, 3072, 1000, dict(_NAFLEX_GAP, reg_tokens=4)),
    ("naflexvit_base_patch16_map", 16, 384, 768, 12, 12, 3072, 1000, dict(_NAFLEX_MAP, reg_tokens=1)),
    ("naflexvit_so150m2_patch16_reg1_gap", 16, 384, 832, 21, 13, 2176, 1000,
     dict(_NAFLEX_GAP, reg_tokens=1, qkv_bias=False)),
    ("naflexvit_so150m2_patch16_reg1_map", 16, 384, 832, 21, 13, 2176, 1000,
     dict(_NAFLEX_MAP, reg_tokens=1, qkv_bias=False)),
    ("naflexvit_base_patch16_siglip", 16, 384, 768, 12, 12, 3072, 0, _NAFLEX_SIGLIP),
    ("naflexvit_so400m_patch16_siglip", 16, 384, 1152, 27, 16, 4304, 0, _NAFLEX_SIGLIP),
    # aspect-preserving resampling (the table resized to a square of the larger grid side, cropped top-left), and
    # factorized row / column tables (each resampled with 1-D linear interpolation, summed per patch)
    ("naflexvit_base_patch16_par_gap", 16, 384, 768, 12, 12, 3072, 1000, dict(_NAFLEX_PAR, reg_tokens=4)),
    ("naflexvit_base_patch16_parfac_gap", 16, 384, 768, 12, 12, 3072, 1000,
     dict(_NAFLEX_PAR, reg_tokens=4, pos_embed="factorized", resize_kernel="bilinear")),
    # C-RADIO backbones: a class token, registers, a 128x128 table (bilinear, aspect-preserving), no final norm;
    # the v3 base and huge resample with align_corners=True and stay refused (shared.convert.timm_resolve)
    ("naflexvit_large_patch16_radio_v3", 16, 512, 1024, 24, 16, 4096, 0, dict(_RADIO, reg_tokens=7, init_values=1e-5)),
    ("naflexvit_giant_patch16_radio_v3", 16, 512, 1536, 40, 24, 6144, 0, dict(_RADIO, reg_tokens=7)),
    ("naflexvit_so400m_patch16_radio_v4", 16, 512, 1152, 27, 16, 4304, 0, dict(_RADIO, reg_tokens=9)),
    ("naflexvit_huge_patch16_radio_v4", 16, 512, 1280, 32, 16, 5120, 0, dict(_RADIO, reg_tokens=9)),
]
for _name, _p, _i, _d, _depth, _h, _m, _k, _opts in _NAFLEX_FAMILY:
    PRESETS[_name] = _family(_name, _p, _i, _d, _depth, _h, _m, _k, **_opts)
#: the NaFlexVit presets (timm names; shared.convert.timm exports a config of such a name as that NaFlexVit)
NAFLEX_PRESETS = [f[0] for f in _NAFLEX_FAMILY]

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

# --- tiny models that turn on the family's options, for the CI-sized matrix --------------------
PRESETS["tiny_deit"] = ViTConfig(
    name="tiny_deit", image_size=(32, 24), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64,
    dist_token=True, gelu="erf", layer_norm_eps=1e-6, resize_kernel="bicubic_antialias", num_classes=6,
    notes="DeiT distilled: class and distillation tokens, both with position rows; logits = mean of head, head_dist")
PRESETS["tiny_deit3"] = ViTConfig(
    name="tiny_deit3", image_size=(32, 32), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64,
    pos_prefix_tokens=0, init_values=1e-6, pool="mean", final_norm=False, fc_norm=True, gelu="erf",
    layer_norm_eps=1e-6, num_classes=5,
    notes="DeiT III / timm global_pool='avg': LayerScale, class token without a position row, mean of the "
          "patch tokens then fc_norm")
PRESETS["tiny_dinov2_reg"] = ViTConfig(
    name="tiny_dinov2_reg", image_size=(28, 42), in_chans=3, patch_size=7, embed_dim=32, depth=2, num_heads=2,
    mlp_dim=64, reg_tokens=3, pos_prefix_tokens=1, init_values=1e-5, qk_norm=True, swiglu=True, gelu="erf",
    layer_norm_eps=1e-6, resize_kernel="bicubic", num_classes=0,
    notes="DINOv2 with registers as HF stores it (the class token has a position row, the 3 registers none), "
          "LayerScale, qk-norm, SwiGLU MLP (DINOv2-giant), patch 7, features only")
PRESETS["tiny_dinov2_cls"] = ViTConfig(
    name="tiny_dinov2_cls", image_size=(28, 28), in_chans=3, patch_size=7, embed_dim=32, depth=2, num_heads=2,
    mlp_dim=64, reg_tokens=2, pos_prefix_tokens=1, init_values=1.0, pool="token_mean", gelu="erf",
    layer_norm_eps=1e-6, resize_kernel="bicubic_antialias", num_classes=5,
    notes="HF Dinov2WithRegistersForImageClassification: the head reads concat(class token, mean of the patch "
          "tokens; the 2 registers in neither), head (5, 64)")
PRESETS["tiny_clip"] = ViTConfig(
    name="tiny_clip", image_size=(32, 32), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64,
    norm_pre=True, patch_bias=False, gelu="quick", layer_norm_eps=1e-5, num_classes=16,
    notes="CLIP: no patch bias, LayerNorm before the blocks, QuickGELU, eps 1e-5, projection as a head")
PRESETS["tiny_siglip"] = ViTConfig(
    name="tiny_siglip", image_size=(32, 40), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=48,
    class_token="none", pool="map", gelu="tanh", layer_norm_eps=1e-6, num_classes=3,
    notes="SigLIP: no class token, attention-pool (MAP) head over the patch tokens, tanh GELU")

PRESETS["tiny_beit"] = ViTConfig(
    name="tiny_beit", image_size=(32, 24), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64,
    k_bias=False, rel_pos="table", init_values=0.1, pos_embed="none", pool="mean", final_norm=False, fc_norm=True,
    gelu="erf", layer_norm_eps=1e-6, num_classes=5,
    notes="BEiT: a learned relative position table per block (4x3 grid + class token: 38 rows), q/v biases without "
          "a k bias, LayerScale, no absolute table, mean of the patch tokens then fc_norm")
PRESETS["tiny_relpos"] = ViTConfig(
    name="tiny_relpos", image_size=(24, 32), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=64,
    qkv_bias=False, rel_pos="mlp", rel_pos_dim=16, rel_pos_shared=True, init_values=1e-6, pos_embed="none",
    pool="token", gelu="erf", layer_norm_eps=1e-6, num_classes=4,
    notes="timm vit_srelpos / vit_relpos_*_cls: one RelPosMlp bias (log relative coordinates -> 16 -> heads) shared "
          "by all blocks, zero for the class token's row and column; LayerScale, no qkv bias, class-token pooling")

PRESETS["tiny_rpn"] = ViTConfig(
    name="tiny_rpn", image_size=(24, 32), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=64,
    qkv_bias=False, class_token="none", pool="mean", final_norm=False, fc_norm=True, block_norm="post",
    gelu="erf", layer_norm_eps=1e-6, num_classes=4,
    notes="timm vit_base_patch16_rpn_224 (ResPostBlock): res-post-norm blocks x + norm1(attn(x)), x + norm2(mlp(x)), "
          "no class token, mean of the patch tokens then fc_norm, no qkv bias")
PRESETS["tiny_naflex_par"] = ViTConfig(
    name="tiny_naflex_par", image_size=(24, 40), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4,
    mlp_dim=64, class_token="none", reg_tokens=1, pos_prefix_tokens=0, pos_grid=(4, 4),
    resize_kernel="bicubic_antialias", pos_ar_preserving=True, init_values=0.1, pool="mean", final_norm=False,
    fc_norm=True, gelu="erf", layer_norm_eps=1e-6, num_classes=5,
    notes="timm naflexvit_*_par_gap: a 4x4 table for the patches only, resampled aspect-preserving to the 3x5 grid "
          "(to 5x5, then the top 3 rows kept), a register, LayerScale, mean of the patch tokens then fc_norm")
PRESETS["tiny_naflex_parfac"] = ViTConfig(
    name="tiny_naflex_parfac", image_size=(40, 24), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4,
    mlp_dim=64, reg_tokens=2, pos_embed="factorized", pos_prefix_tokens=0, pos_grid=(4, 6), resize_kernel="bilinear",
    pos_ar_preserving=True, pool="token", gelu="erf", layer_norm_eps=1e-6, num_classes=4,
    notes="timm naflexvit_*_parfac_gap's tables (rows pos_embed_y 4, columns pos_embed_x 6, each resampled "
          "aspect-preserving with 1-D linear to the 5x3 grid, summed per patch) with C-RADIO's class token and "
          "registers (no position rows), class-token pooling")

# --- timm's Eva class (EVA, EVA02, DINOv3, Perception Encoder, RoPE-ViT, Sapiens2), with timm's names: each is
# exactly timm's architecture of that name (tested key by key against timm's meta-device model); the sizes and
# options as timm's built model states them (shared.convert.timm_resolve reads the same from any Eva name)
_EVA_FAMILY = {
    "eva02_tiny_patch14_224": dict(patch_size=14, embed_dim=192, num_heads=3, mlp_dim=512, swiglu=True, pool='mean',
        final_norm=False, fc_norm=True, num_classes=0, rope='cat', rope_ref_grid=(16, 16), k_bias=False),
    "eva02_small_patch14_224": dict(patch_size=14, embed_dim=384, num_heads=6, mlp_dim=1024, swiglu=True,
        pool='mean', final_norm=False, fc_norm=True, num_classes=0, rope='cat', rope_ref_grid=(16, 16), k_bias=False),
    "eva02_base_patch14_224": dict(patch_size=14, mlp_dim=2048, swiglu=True, pool='mean', final_norm=False,
        fc_norm=True, num_classes=0, rope='cat', rope_ref_grid=(16, 16), qkv_fused=False, k_bias=False,
        mlp_inner_norm=True, swiglu_unpacked=True),
    "eva02_large_patch14_224": dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_dim=2730, swiglu=True,
        pool='mean', final_norm=False, fc_norm=True, num_classes=0, rope='cat', rope_ref_grid=(16, 16),
        qkv_fused=False, k_bias=False, mlp_inner_norm=True, swiglu_unpacked=True),
    "eva02_base_patch16_clip_224": dict(mlp_dim=2048, swiglu=True, num_classes=512, rope='cat',
        rope_ref_grid=(16, 16), qkv_fused=False, k_bias=False, attn_inner_norm=True, mlp_inner_norm=True,
        swiglu_unpacked=True),
    "eva02_large_patch14_clip_224": dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_dim=2730,
        swiglu=True, num_classes=768, rope='cat', rope_ref_grid=(16, 16), qkv_fused=False, k_bias=False,
        attn_inner_norm=True, mlp_inner_norm=True, swiglu_unpacked=True),
    "eva_giant_patch14_224": dict(patch_size=14, embed_dim=1408, depth=40, num_heads=16, mlp_dim=6144, pool='mean',
        final_norm=False, fc_norm=True, k_bias=False),
    "vit_small_patch16_dinov3": dict(image_size=(256, 256), embed_dim=384, num_heads=6, mlp_dim=1536, qkv_bias=False,
        init_values=1e-05, reg_tokens=4, pool='mean', pos_embed='none', layer_norm_eps=1e-05, num_classes=0,
        rope='dinov3', rope_temperature=100.0, rope_rotate_half=True),
    "vit_base_patch16_dinov3": dict(image_size=(256, 256), qkv_bias=False, init_values=1e-05, reg_tokens=4,
        pool='mean', pos_embed='none', layer_norm_eps=1e-05, num_classes=0, rope='dinov3', rope_temperature=100.0,
        rope_rotate_half=True),
    "vit_large_patch16_dinov3": dict(image_size=(256, 256), embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096,
        qkv_bias=False, init_values=1e-05, reg_tokens=4, pool='mean', pos_embed='none', layer_norm_eps=1e-05,
        num_classes=0, rope='dinov3', rope_temperature=100.0, rope_rotate_half=True),
    "vit_small_plus_patch16_dinov3": dict(image_size=(256, 256), embed_dim=384, num_heads=6, mlp_dim=1536,
        swiglu=True, qkv_bias=False, init_values=1e-05, reg_tokens=4, pool='mean', pos_embed='none',
        layer_norm_eps=1e-05, num_classes=0, rope='dinov3', rope_temperature=100.0, rope_rotate_half=True,
        swiglu_unpacked=True),
    "vit_base_patch16_dinov3_qkvb": dict(image_size=(256, 256), init_values=1e-05, reg_tokens=4, pool='mean',
        pos_embed='none', layer_norm_eps=1e-05, num_classes=0, rope='dinov3', rope_temperature=100.0,
        rope_rotate_half=True, k_bias=False),
    "vit_pe_spatial_base_patch16_512": dict(image_size=(512, 512), patch_bias=False, pool='mean',
        layer_norm_eps=1e-05, norm_pre=True, final_norm=False, num_classes=0, rope='cat', rope_offset=1.0,
        rope_indexing='xy', rope_ref_grid=(32, 32)),
    "vit_pe_lang_large_patch14_448": dict(image_size=(448, 448), patch_size=14, patch_bias=False, embed_dim=1024,
        depth=23, num_heads=16, mlp_dim=4096, init_values=0.1, pool='mean', layer_norm_eps=1e-05, norm_pre=True,
        final_norm=False, num_classes=0, rope='cat', rope_offset=1.0, rope_indexing='xy', rope_ref_grid=(32, 32)),
    "vit_small_patch16_rope_224": dict(embed_dim=384, num_heads=6, mlp_dim=1536, init_values=1e-05, pos_embed='none',
        rope='cat', rope_temperature=100.0, rope_indexing='xy'),
    "vit_base_patch16_rope_224": dict(init_values=1e-05, pos_embed='none', rope='cat', rope_temperature=100.0,
        rope_indexing='xy'),
    "vit_base_patch16_rope_ape_224": dict(init_values=1e-05, pos_prefix_tokens=0, rope='cat', rope_temperature=100.0,
        rope_indexing='xy'),
    "vit_base_patch16_rope_mixed_224": dict(init_values=1e-05, pos_embed='none', rope='mixed', rope_temperature=10.0,
        rope_indexing='xy'),
    "vit_base_patch16_rope_mixed_ape_224": dict(init_values=1e-05, pos_prefix_tokens=0, rope='mixed',
        rope_temperature=10.0, rope_indexing='xy'),
    "vit_base_patch16_rope_reg1_gap_256": dict(image_size=(256, 256), init_values=1e-05, class_token='none',
        reg_tokens=1, pool='mean', pos_embed='none', final_norm=False, fc_norm=True, rope='cat',
        rope_ref_grid=(16, 16), k_bias=False),
    "vit_base_patch16_sapiens2": dict(image_size=(1024, 768), swiglu=True, qk_norm=True, init_values=1.0,
        reg_tokens=8, pos_embed='none', num_classes=0, rope='dinov3', rope_temperature=100.0, rope_rotate_half=True,
        qkv_fused=False, norm_kind='rms', ls_attn_only=True),
}


def _sapiens2(embed_dim: int, depth: int, num_heads: int, num_kv_heads: int, full: int = 8) -> dict:
    """timm's _sapiens2_args: grouped-query attention (num_kv_heads) in the middle blocks only, the first and last
    `full` blocks keep every head."""
    kv = tuple(num_heads if i < full or i >= depth - full else num_kv_heads for i in range(depth))
    return dict(_EVA_FAMILY["vit_base_patch16_sapiens2"], embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                mlp_dim=4 * embed_dim, num_kv_heads=kv)


_EVA_FAMILY.update({"vit_large_patch16_sapiens2": _sapiens2(1024, 24, 16, 8),
                    "vit_huge_patch16_sapiens2": _sapiens2(1280, 32, 16, 8),
                    "vit_giant_patch16_sapiens2": _sapiens2(1536, 40, 24, 12)})
# (vit_5b_patch16_sapiens2: 5.07e9 parameters, over shared.limits.MAX_PARAMETERS: refused by the config's limit)
for _name, _kw in _EVA_FAMILY.items():
    PRESETS[_name] = ViTConfig(name=_name, **_kw, notes="timm's Eva " + _name)
EVA_PRESETS = list(_EVA_FAMILY)

# --- tiny Eva models for the CI-sized matrix: every Eva option between the two ---------------------------------
PRESETS["tiny_eva02"] = ViTConfig(
    name="tiny_eva02", image_size=(32, 24), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=40,
    swiglu=True, swiglu_unpacked=True, mlp_inner_norm=True, attn_inner_norm=True, qkv_fused=False, k_bias=False,
    rope="cat", rope_ref_grid=(6, 4), pool="mean", final_norm=False, fc_norm=True, num_classes=5,
    notes="EVA02 (CLIP): cat RoPE rescaled to a reference grid, separate q/k/v with q and v biases, sub-LN in the "
          "attention and the unpacked SwiGLU, average pool with fc_norm")
PRESETS["tiny_rope_mixed"] = ViTConfig(
    name="tiny_rope_mixed", image_size=(24, 32), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=2,
    mlp_dim=64, rope="mixed", rope_temperature=10.0, rope_indexing="xy", k_bias=False, qk_norm=True,
    norm_kind="rms", init_values=0.1, ls_attn_only=True, reg_tokens=1, pos_prefix_tokens=0, num_classes=4,
    notes="RoPE-ViT mixed (learned per-block, per-head frequencies, rope.freqs) with an absolute table (_ape), "
          "fused qkv with q and v biases, RMSNorm everywhere with qk-norm, LayerScale on attention only (Sapiens2)")
PRESETS["tiny_sapiens2_gqa"] = ViTConfig(
    name="tiny_sapiens2_gqa", image_size=(32, 24), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4,
    num_kv_heads=(4, 2), mlp_dim=64, swiglu=True, qk_norm=True, init_values=0.1, ls_attn_only=True, reg_tokens=2,
    pos_embed="none", rope="dinov3", rope_temperature=100.0, rope_rotate_half=True, qkv_fused=False,
    norm_kind="rms", num_classes=5,
    notes="Sapiens2: grouped-query attention (block 0 every head, block 1 two k/v heads for four q heads), "
          "separate q/k/v with full biases, dinov3 RoPE rotate-half, RMSNorm with qk-norm, attention-only "
          "LayerScale, registers")
PRESETS["tiny_parallel"] = ViTConfig(
    name="tiny_parallel", image_size=(24, 32), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4,
    mlp_dim=48, num_parallel=2, init_values=0.1, qk_norm=True, num_classes=5,
    notes="timm ParallelThingsBlock (vit_*_18x2_*): two attention branches summed into the residual, then two MLP "
          "branches, each with its own norm and LayerScale; qk-norm")
# --- AIMv2 (timm's aimv2_*: a VisionTransformer with RMSNorm everywhere and after the patch projection, no qkv, proj or
# MLP biases, timm's unpacked SwiGLU, no class token, the mean of the final-normed tokens), with timm's names: each is
# exactly timm's architecture of that name (tested key by key against timm's meta-device model)
_AIMV2 = dict(patch_size=14, patch_norm=True, depth=24, swiglu=True, swiglu_unpacked=True, qkv_bias=False,
              proj_bias=False, class_token="none", pool="mean", resize_kernel="bicubic_antialias", layer_norm_eps=1e-5,
              norm_kind="rms", num_classes=0)
_AIMV2_SIZES = {"large": dict(embed_dim=1024, num_heads=8, mlp_dim=2816), "huge": dict(embed_dim=1536, mlp_dim=4096),
                "1b": dict(embed_dim=2048, num_heads=16, mlp_dim=5632), "3b": dict(embed_dim=3072, num_heads=24, mlp_dim=8192)}
AIMV2_PRESETS = [f"aimv2_{size}_patch14_{side}" for size in _AIMV2_SIZES for side in (224, 336, 448)]
for _name in AIMV2_PRESETS:
    _side = int(_name.rsplit("_", 1)[1])
    PRESETS[_name] = ViTConfig(name=_name, image_size=(_side, _side), **_AIMV2, **_AIMV2_SIZES[_name.split("_")[1]],
                               notes="timm's AIMv2 " + _name)

PRESETS["tiny_aimv2"] = ViTConfig(
    name="tiny_aimv2", image_size=(24, 32), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=2,
    mlp_dim=48, swiglu=True, swiglu_unpacked=True, norm_kind="rms", patch_norm=True, qkv_bias=False,
    proj_bias=False, class_token="none", pool="mean", layer_norm_eps=1e-5, num_classes=3,
    notes="AIMv2: RMSNorm after the patch projection (patch_norm) and everywhere else, no qkv, proj or MLP biases "
          "(proj_bias=False), unpacked SwiGLU, no class token, final norm then the mean of the patch tokens")

# --- tiny option presets tested on the primary backends (not in FAMILY_TINY's matrix) ----------------------------
PRESETS["tiny_beit3"] = ViTConfig(
    name="tiny_beit3", image_size=(32, 24), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64,
    attn_inner_norm=True, mlp_inner_norm=True, pool="mean", final_norm=False, fc_norm=True, layer_norm_eps=1e-5,
    num_classes=5,
    notes="BEiT3 (timm's VisionTransformer with scale_attn_norm / scale_mlp_norm): a LayerNorm over the merged heads "
          "before attn.proj and over the MLP's hidden width before fc2, mean of the patch tokens then fc_norm")

PRESETS["tiny_prefix_pool"] = ViTConfig(
    name="tiny_prefix_pool", image_size=(24, 32), in_chans=3, patch_size=8, embed_dim=32, depth=2, num_heads=2,
    mlp_dim=64, reg_tokens=1, pool="map", pool_include_prefix=True, pool_heads=4, pool_mlp_dim=48, init_values=0.1,
    num_classes=5,
    notes="timm's test_vit3 / Perception Encoder core head: the attention pool (4 heads, the blocks have 2; an MLP 48 "
          "wide, the blocks' 64) sees the class and register tokens too (pool_include_prefix)")

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
