"""Hugging Face AIMv2 vision towers <-> the canonical format (RMSNorm, a patch-embedding norm, an unpacked SwiGLU).

Model types and classes:

  aimv2_vision_model  Aimv2VisionModel (use_head=False: the AIMv2 pre-trained encoders)   features: the mean of the
                      final-normed tokens (last_hidden_state.mean(1); no class token: pool 'mean', num_classes 0)

Refused by name: Aimv2VisionModel with use_head=True and the CLIP-like Aimv2Model (its vision tower ends in that head,
then visual_projection): Aimv2AttentionPoolingHead is a learned query (head.cls_token, no q projection) attending
through k_proj / v_proj, then output_proj, with no norm and no MLP -- not the canonical MAP head (timm's
AttentionPoolLatent); is_native=True (sin-cos positions computed per image with omega = 1 / 10000^(k / (D/4)) and a
[w | h] layout: not the canonical sincos2d table).

Key mapping (save_pretrained's names, the same in every transformers version that has AIMv2; canonical on the left):

  patch_embed.proj.{weight,bias}   embeddings.patch_embed.{weight,bias}
  patch_embed.norm.weight          embeddings.rms_norm.weight (patch_norm: RMSNorm after the projection)
  pos_embed (1, N, D)              embeddings.position_embedding.weight (N, D) (the image grid; no class token)
  blocks.i.norm1 / norm2           encoder.layers.i.rms_norm1 / rms_norm2
  blocks.i.attn.qkv.weight         encoder.layers.i.attention.{q,k,v}_proj.weight, fused in rows q, k, v (and .bias
                                   with qkv_bias)
  blocks.i.attn.proj               encoder.layers.i.attention.out_proj (a bias with qkv_bias: HF ties it to qkv_bias)
  blocks.i.mlp.fc1_g / fc1_x / fc2 encoder.layers.i.ffn.gate_proj / up_proj / down_proj (biases with mlp_bias)
  norm.weight                      rms_norm.weight
The canonical proj_bias is one switch for attn.proj and the MLP: HF's qkv_bias (q/k/v and out_proj) and mlp_bias
must then agree (qkv_bias=True, mlp_bias=False is refused by name). config.json facts, with transformers' own
Aimv2VisionConfig defaults where a key is absent: num_attention_heads (8), rms_norm_eps (1e-5), hidden_act ('silu':
the only one the canonical SwiGLU runs), image_size (224), attention_dropout (0). HF's AIMv2 cannot resample its
table (no interpolate_pos_encoding): it runs at its image_size only.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import ViTConfig, shown
from ..errors import ConfigError, ConversionError, MismatchError
from ..weights import expected_shapes, validate_state
from .common import block_ids, check_hf_export, check_numbering, family_refusals
from .hfconfig import ConfigFacts
from .keymap import FUSE, Entry, Reshape, expand, put, take

MODEL_TYPES = ("aimv2_vision_model",)
#: model_type -> the classes read
ARCHITECTURES = {"aimv2_vision_model": ("Aimv2VisionModel",)}
_HEAD = ("an attention-pooling head (Aimv2AttentionPoolingHead: a learned query head.cls_token without a q "
         "projection, k_proj / v_proj, output_proj, no norm and no MLP), not the canonical MAP head")
#: model types and classes refused by name, and why
REFUSED = {"aimv2": f"the CLIP-like Aimv2Model: its vision tower ends in {_HEAD}, then visual_projection"}
#: transformers' Aimv2VisionConfig defaults for the keys read here
_DEFAULTS = {"image_size": 224, "patch_size": 14, "num_channels": 3, "hidden_act": "silu", "rms_norm_eps": 1e-5,
             "num_attention_heads": 8, "qkv_bias": False, "mlp_bias": False, "use_head": True, "is_native": False,
             "attention_dropout": 0.0}
_BLOCK = [("norm1.weight", "rms_norm1.weight"), ("norm2.weight", "rms_norm2.weight"),
          ("mlp.fc1_g", "ffn.gate_proj"), ("mlp.fc1_x", "ffn.up_proj"), ("mlp.fc2", "ffn.down_proj"),
          ("attn.proj", "attention.out_proj")]


def key_map(cfg: ViTConfig) -> list[Entry]:
    """canonical <- HF file keys of an AIMv2 vision tower `cfg`."""
    b = "encoder.layers.{i}."
    a = b + "attention."
    e = [Entry(tuple(a + f"{n}_proj.weight" for n in "qkv"), "blocks.{i}.attn.qkv.weight", FUSE)]
    if cfg.qkv_bias:
        e.append(Entry(tuple(a + f"{n}_proj.bias" for n in "qkv"), "blocks.{i}.attn.qkv.bias", FUSE))
    for canon, hf in _BLOCK:
        params = [""] if canon.endswith(".weight") else [".weight", ".bias"] if cfg.proj_bias else [".weight"]
        e += [Entry(b + hf + p, f"blocks.{{i}}.{canon}{p}") for p in params]
    N, D = cfg.num_patches, cfg.embed_dim
    e += [Entry("embeddings.patch_embed.weight", "patch_embed.proj.weight"),
          Entry("embeddings.patch_embed.bias", "patch_embed.proj.bias"),
          Entry("embeddings.rms_norm.weight", "patch_embed.norm.weight"),
          Entry("embeddings.position_embedding.weight", "pos_embed", Reshape((1, N, D), (N, D))),
          Entry("rms_norm.weight", "norm.weight")]
    return expand(e, cfg.depth)


def import_hf_aimv2(state: Mapping[str, Any], hf_config: Mapping[str, Any], source: str) -> tuple[ViTConfig, dict]:
    """An Aimv2VisionModel state dict + config.json -> (ViTConfig, canonical float32 state)."""
    mt = hf_config["model_type"]
    if mt in REFUSED:
        raise ConversionError(f"{source}: model_type {mt!r} is {REFUSED[mt]} (refused by name)")
    facts = ConfigFacts(hf_config, _DEFAULTS, source)
    archs = hf_config.get("architectures") or []
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ConfigError(f"{source}: config.json: 'architectures' must be a list of class names, got {shown(archs)}")
    if facts.as_bool("use_head") or any(k.startswith("head.") for k in state):
        raise ConversionError(f"{source}: Aimv2VisionModel with use_head=True ends in {_HEAD} (refused by name)")
    if facts.as_bool("is_native"):
        raise ConversionError(f"{source}: Aimv2VisionModel with is_native=True computes sin-cos positions per image "
                              f"(omega = 1/10000^(k/(D/4)), [w | h] layout): not the canonical sincos2d table "
                              f"(refused by name)")
    act = facts.as_str("hidden_act")
    if act != "silu":
        raise ConversionError(f"{source}: hidden_act {act!r}: the canonical SwiGLU gates with silu")
    qkv_bias, mlp_bias = facts.as_bool("qkv_bias"), facts.as_bool("mlp_bias")
    if qkv_bias != mlp_bias:
        raise ConversionError(f"{source}: qkv_bias={qkv_bias} with mlp_bias={mlp_bias}: HF ties out_proj's bias to "
                              f"qkv_bias, and the canonical proj_bias is one switch for attn.proj and the MLP")
    st = dict(state)
    ids = block_ids(st, "encoder.layers.{i}.")
    check_numbering(ids, source)
    pw = np.shape(st.get("embeddings.patch_embed.weight", ()))
    if len(pw) != 4 or pw[2] != pw[3]:
        raise MismatchError(source, [f"key 'embeddings.patch_embed.weight': expected a square conv kernel (D, C, P, "
                                     f"P), got {pw}"])
    size = facts.as_int("image_size", lo=1, hi=1 << 16)
    try:
        cfg = ViTConfig(
            name=f"hf_{mt}", image_size=(size, size), in_chans=int(pw[1]), patch_size=int(pw[2]),
            patch_norm=True, embed_dim=int(pw[0]), depth=len(ids), num_heads=facts.as_int("num_attention_heads"),
            mlp_dim=int(np.shape(st.get("encoder.layers.0.ffn.gate_proj.weight", (0,)))[0]), swiglu=True,
            swiglu_unpacked=True, qkv_bias=qkv_bias, proj_bias=qkv_bias, norm_kind="rms", class_token="none",
            pool="mean", layer_norm_eps=facts.as_real("rms_norm_eps", 0.0, 1.0, lo_open=True),
            resize_kernel="bicubic", num_classes=0, attn_dropout=facts.as_real("attention_dropout", 0.0, 1.0),
            notes=f"imported from Hugging Face {mt} {source} ({', '.join(archs) or 'no architectures'})")
    except (ConfigError, KeyError) as e:
        raise ConversionError(f"{source}: the {mt} checkpoint is not a valid ViTConfig: {e}") from None
    out = take(key_map(cfg), st, source, expected=expected_shapes(cfg))
    validate_state(cfg, out, source=source)
    return cfg, out


def export_problems(cfg: ViTConfig, mt: str = "aimv2_vision_model") -> list[str]:
    """Why `cfg` has no Aimv2VisionModel form (empty when it has one)."""
    what = f"HF {mt}"
    p = family_refusals(cfg, what, supports=("SwiGLU", "RMSNorm", "patch_norm", "proj_bias=False"))
    needs = [(cfg.norm_kind == "rms" and cfg.patch_norm, "RMSNorm everywhere with a patch-embedding norm "
                                                         "(norm_kind='rms', patch_norm)"),
             (cfg.swiglu and cfg.swiglu_unpacked, "an unpacked SwiGLU MLP (swiglu, swiglu_unpacked)"),
             (cfg.qkv_bias == cfg.proj_bias, "q/k/v biases exactly when attn.proj and the MLP have them (HF ties "
                                             "out_proj's bias to qkv_bias)"),
             (cfg.class_token == "none" and cfg.pool == "mean" and cfg.final_norm and not cfg.fc_norm
              and cfg.num_classes == 0, "no class token, the final norm, features = the mean of the tokens, no head "
                                        "(pool='mean', final_norm, num_classes=0)"),
             (cfg.pos_embed == "learned" and cfg.pos_grid is None, "a learned table at the image grid"),
             (cfg.image_size[0] == cfg.image_size[1], "a square image (config.json's image_size is one int)"),
             (cfg.patch_bias, "a patch projection with a bias")]
    p += [f"{what} has {need}" for ok, need in needs if not ok]
    if cfg.attn_value_skip or (cfg.attn_dim not in (None, cfg.embed_dim)) or cfg.representation_size \
            or cfg.output_softmax or cfg.qk_scale is not None:
        p.append(f"value skip / attn_dim / pre-logits / output softmax / qk_scale: not in {what}")
    return p


def export_hf_aimv2(cfg: ViTConfig, state: Mapping[str, np.ndarray], mt: str = "aimv2_vision_model"
                    ) -> tuple[dict, dict]:
    """Canonical -> (HF state dict, config.json) of an Aimv2VisionModel (use_head=False)."""
    check_hf_export(cfg, mt, export_problems(cfg, mt), state)
    out = put(key_map(cfg), state)
    conf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[mt][0]], "model_type": mt, "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "num_channels": cfg.in_chans, "image_size": cfg.image_size[0], "patch_size": cfg.patch_size,
        "hidden_act": "silu", "attention_dropout": cfg.attn_dropout, "rms_norm_eps": cfg.layer_norm_eps,
        "qkv_bias": cfg.qkv_bias, "mlp_bias": cfg.proj_bias, "initializer_range": 0.02, "use_head": False,
        "is_native": False}
    return out, conf
