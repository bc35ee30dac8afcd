"""Hugging Face DINOv3 ViT (model type `dinov3_vit`) <-> the canonical format (DINOv3's rotary positions, registers,
LayerScale, q/v biases, a GELU or gated SiLU MLP).

Classes: DINOv3ViTModel (features: pooler_output, the final-normed class token) and DINOv3ViTBackbone (the same
weights; read as the base model). transformers has no DINOv3 ViT classifier; an export is always DINOv3ViTModel.

Key mapping (the on-disk names save_pretrained writes; the module names of transformers >= 5 put `model.` before
`layer.`, read too; canonical on the left):

  cls_token / reg_token        embeddings.cls_token / embeddings.register_tokens (num_register_tokens)
  patch_embed.proj             embeddings.patch_embeddings (a Conv2d: weight, bias)
  blocks.i.norm1 / norm2       layer.i.norm1 / norm2
  blocks.i.attn.qkv.weight     layer.i.attention.{q,k,v}_proj.weight, fused in rows q, k, v (qkv_fused)
  blocks.i.attn.qkv.bias       q_proj.bias, [k_proj.bias,] v_proj.bias: query_bias = value_bias = qkv_bias,
                               key_bias = k_bias (k_bias=False: a zero k third, never read)
  blocks.i.attn.proj           layer.i.attention.o_proj
  blocks.i.ls1 / ls2.gamma     layer.i.layer_scale1 / layer_scale2.lambda1 (init_values = layerscale_value)
  blocks.i.mlp.fc1 / fc2       layer.i.mlp.up_proj / down_proj (hidden_act: a GELU form)
  blocks.i.mlp.fc1_g / fc1_x   layer.i.mlp.gate_proj / up_proj (use_gated_mlp, hidden_act silu: swiglu with
                               swiglu_unpacked; a packed canonical fc1, rows [gate; value], is split on export)
  norm                         norm (the final norm; the features are its class token: pool='token')

Rotary positions (DINOv3ViTRopePositionEmbedding): patch centres (i + 0.5) / n * 2 - 1 per axis (rows first),
angles 2 pi * coordinate / rope_theta^(k / (head_dim / 4)), laid out [rows | cols | rows | cols] and applied with
rotate_half to the patch tokens' q and k only (the class token and registers are not rotated): the canonical
rope='dinov3', rope_temperature=rope_theta, rope_indexing='ij', rope_offset=0, rope_rotate_half=True, computed at
each input's grid (as HF does: config.json's image_size is only the canonical image_size, any size runs). No absolute
position table (pos_embed='none'). HF's inv_freq is arange(0, 1, 4 / head_dim): head_dim / 4 values, except for the
head dims whose step rounds to one more (196, 392, ...: _rope_runs), which transformers cannot run (refused).

Training-only settings (the function transformers computes in eval mode does not read them): pos_embed_shift,
pos_embed_jitter and pos_embed_rescale augment the rotary coordinates in training mode only, and the canonical model
trains without them: dropped with a ConversionWarning on import (HF's default pos_embed_rescale 2.0 included),
written as null on export. No setting applies them in eval mode, so none is refused. drop_path_rate is one rate for every layer in HF and
a linearly increasing one in the canonical model: imported as drop_path 0 with a ConversionWarning, and an export
of drop_path > 0 or dropout > 0 (HF has no hidden dropout) writes 0 with a ConversionWarning. attention_dropout is
attn_dropout both ways. embeddings.mask_token (bool_masked_pos only) is dropped with a ConversionWarning; export
writes zeros (HF's own initial value).

Refused by name, never guessed: a hidden_act that is not a GELU form (or, with use_gated_mlp, not silu / swish: a
GEGLU is not the canonical SwiGLU); q and v biases that differ, or a k bias without q and v biases; mlp_bias=False,
proj_bias=False (the canonical MLP and output projection have biases); a non-square patch_size; any architecture but
the two above. DINOv3ViTBackbone's weights are the base model's: read as it (its feature maps are the patch tokens;
the canonical features are the final-normed class token, the backbone's cls_tokens[-1]). Exported, a canonical model
must be DINOv3's (export_problems): the dinov3 rope (rows first, no offset, rotate-half), LayerScale, a learned class
token, no absolute table, pool='token' with the final norm, no classifier, no other option.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np

from .. import limits as L
from ..config import ViTConfig, is_int, shown
from ..errors import ConfigError, ConversionError, ConversionWarning, MismatchError
from ..weights import CANONICAL_DTYPE, expected_shapes, validate_state
from .common import (HF_GELU, HF_GELU_OUT, block_ids, check_hf_export, check_numbering, family_refusals, image_size_arg,
                     without_k_bias)
from .hfconfig import ConfigFacts
from .keymap import FUSE, Entry, Fold, expand, put, take

MODEL_TYPES = ("dinov3_vit",)
#: model_type -> the classes read (the base model first)
ARCHITECTURES = {"dinov3_vit": ("DINOv3ViTModel", "DINOv3ViTBackbone")}
#: transformers' DINOv3ViTConfig defaults for the keys read here
_DEFAULTS = {"image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
             "num_attention_heads": 6, "rope_theta": 100.0, "query_bias": True, "key_bias": False, "value_bias": True,
             "proj_bias": True, "mlp_bias": True, "layerscale_value": 1.0, "drop_path_rate": 0.0,
             "use_gated_mlp": False, "num_register_tokens": 0, "pos_embed_shift": None, "pos_embed_jitter": None,
             "pos_embed_rescale": 2.0, "attention_dropout": 0.0}
_SILU = ("silu", "swish")  # transformers' ACT2FN names of SiLU
_AUGMENT = ("pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale")
_BLOCK = [("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "attention.o_proj")]


def _rope_runs(head_dim: int) -> bool:
    """Whether HF's DINOv3 rope builds head_dim / 4 frequencies: arange(0, 1, 4 / head_dim) has ceil(1 / step)
    values (in double, as torch counts them), one too many for head_dim 196, 392, 412, ..."""
    return head_dim % 4 == 0 and math.ceil(1 / (4 / head_dim)) == head_dim // 4


def key_map(cfg: ViTConfig) -> list[Entry]:
    """canonical <- HF file keys of `cfg` (file layout: layer.{i}., no prefix)."""
    b = "layer.{i}."
    a = b + "attention."
    qkv = tuple(a + f"{n}_proj" for n in "qkv")
    e: list[Entry] = []
    if cfg.qkv_fused:
        e.append(Entry(tuple(p + ".weight" for p in qkv), "blocks.{i}.attn.qkv.weight", FUSE))
        if cfg.qkv_bias:
            e.append(Entry(tuple(p + ".bias" for p in qkv), "blocks.{i}.attn.qkv.bias", FUSE) if cfg.k_bias else
                     Entry((qkv[0] + ".bias", qkv[2] + ".bias"), "blocks.{i}.attn.qkv.bias", Fold((0, None, 1))))
    else:
        e += [Entry(f"{p}.weight", f"blocks.{{i}}.attn.{n}_proj.weight") for p, n in zip(qkv, "qkv")]
        if cfg.qkv_bias:
            e += [Entry(f"{p}.bias", f"blocks.{{i}}.attn.{n}_proj.bias") for p, n in zip(qkv, "qkv")
                  if n != "k" or cfg.k_bias]
    e += [Entry(b + f"{hf}.{p}", f"blocks.{{i}}.{c}.{p}") for c, hf in _BLOCK for p in ("weight", "bias")]
    e += [Entry(b + f"layer_scale{j}.lambda1", f"blocks.{{i}}.ls{j}.gamma") for j in (1, 2)]
    m = b + "mlp."
    for p in ("weight", "bias"):
        if not cfg.swiglu:
            e.append(Entry(m + f"up_proj.{p}", f"blocks.{{i}}.mlp.fc1.{p}"))
        elif cfg.swiglu_unpacked:
            e += [Entry(m + f"gate_proj.{p}", f"blocks.{{i}}.mlp.fc1_g.{p}"),
                  Entry(m + f"up_proj.{p}", f"blocks.{{i}}.mlp.fc1_x.{p}")]
        else:  # timm's SwiGLUPacked: rows [gate; value]
            e.append(Entry((m + f"gate_proj.{p}", m + f"up_proj.{p}"), f"blocks.{{i}}.mlp.fc1.{p}", FUSE))
        e.append(Entry(m + f"down_proj.{p}", f"blocks.{{i}}.mlp.fc2.{p}"))
    e += [Entry("embeddings.cls_token", "cls_token"),
          Entry("embeddings.patch_embeddings.weight", "patch_embed.proj.weight"),
          Entry("embeddings.patch_embeddings.bias", "patch_embed.proj.bias"),
          Entry("norm.weight", "norm.weight"), Entry("norm.bias", "norm.bias")]
    if cfg.reg_tokens:
        e.append(Entry("embeddings.register_tokens", "reg_token"))
    return expand(e, cfg.depth)


def _biases(facts: ConfigFacts, source: str) -> tuple[bool, bool]:
    """(qkv_bias, k_bias) of config.json's query_bias / key_bias / value_bias, or a ConversionError naming them."""
    q, k, v = (facts.as_bool(f"{n}_bias") for n in ("query", "key", "value"))
    if q != v or (k and not q):
        raise ConversionError(f"{source}: query_bias={q}, key_bias={k}, value_bias={v}: the canonical attention has "
                              f"q and v biases together (with or without a k bias) or none at all")
    return q, k if q else True


def import_hf_dinov3(state: Mapping[str, Any], hf_config: Mapping[str, Any],
                     source: str) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """A dinov3_vit state dict (file or module names) + config.json -> (ViTConfig, canonical float32 state)."""
    facts = ConfigFacts(hf_config, _DEFAULTS, source)
    archs = hf_config.get("architectures") or []
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ConfigError(f"{source}: config.json: 'architectures' must be a list of class names, got {shown(archs)}")
    for a in archs:
        if a not in ARCHITECTURES["dinov3_vit"]:
            raise ConversionError(f"{source}: {a} is not a dinov3_vit class vit-suite reads "
                                  f"({', '.join(ARCHITECTURES['dinov3_vit'])})")
    st = {(k[len("model."):] if k.startswith("model.layer.") else k): v for k, v in state.items()}
    if "embeddings.mask_token" in st:
        warnings.warn(f"{source}: embeddings.mask_token is used only with bool_masked_pos (masked pre-training), "
                      f"never by inference: dropped", ConversionWarning, stacklevel=3)
        st.pop("embeddings.mask_token")
    act = facts.as_str("hidden_act")
    gated = facts.as_bool("use_gated_mlp")
    if gated and act not in _SILU:
        raise ConversionError(f"{source}: use_gated_mlp with hidden_act {act!r}: the canonical gated MLP is SwiGLU "
                              f"(hidden_act silu)")
    if not gated and act not in HF_GELU:
        raise ConversionError(f"{source}: hidden_act {act!r} is not a GELU form the canonical model runs "
                              f"({', '.join(HF_GELU)}; silu only with use_gated_mlp)")
    for key in ("mlp_bias", "proj_bias"):
        if not facts.as_bool(key):
            raise ConversionError(f"{source}: {key}=false: the canonical "
                                  f"{'MLP' if key == 'mlp_bias' else 'output projection'} has biases")
    qkv_bias, k_bias = _biases(facts, source)
    ps = facts.get("patch_size")
    if isinstance(ps, (list, tuple)) and not (len(ps) == 2 and ps[0] == ps[1]):
        raise ConversionError(f"{source}: patch_size {shown(ps)}: the canonical patches are square")
    pw = np.shape(st.get("embeddings.patch_embeddings.weight", ()))
    if len(pw) != 4 or pw[2] != pw[3]:
        raise MismatchError(source, [f"key 'embeddings.patch_embeddings.weight': expected a square conv kernel "
                                     f"(D, C, P, P), got {pw}"])
    depth = check_numbering(block_ids(st, "layer.{i}."), source)
    up = np.shape(st.get("layer.0.mlp.up_proj.weight", ()))
    if len(up) != 2:
        raise MismatchError(source, [f"key 'layer.0.mlp.up_proj.weight': expected (M, D), got {up}"])
    reg = facts.as_int("num_register_tokens", lo=0, hi=L.MAX_PREFIX_TOKENS)
    if not reg and np.shape(st.get("embeddings.register_tokens", ()))[1:2] == (0,):  # (1, 0, D): no register
        st.pop("embeddings.register_tokens")
    clash = [f"{k}: config.json {hf_config[k]!r}, weights {v!r}" for k, v in
             (("hidden_size", int(pw[0])), ("num_channels", int(pw[1])), ("num_hidden_layers", depth),
              ("intermediate_size", int(up[0])), ("patch_size", int(pw[2])))
             if is_int(hf_config.get(k)) and int(hf_config[k]) != v]
    if clash:
        raise MismatchError(source, ["config.json disagrees with the weights: " + c for c in clash])
    h, w = image_size_arg(facts.get("image_size"), f"{source}: config.json", key="image_size")
    for key in _AUGMENT:
        v = facts.get(key)
        if v is not None:
            facts.as_real(key, 0.0, 1e6)
            warnings.warn(f"{source}: {key}={v}: transformers augments the rotary coordinates with it in training "
                          f"mode only (never in inference); the canonical model trains without it: dropped",
                          ConversionWarning, stacklevel=3)
    dp = facts.as_real("drop_path_rate", 0.0, 1.0)
    if dp:
        warnings.warn(f"{source}: drop_path_rate={dp} is one rate for every layer in transformers, a linearly "
                      f"increasing one in the canonical model (training only): imported as drop_path 0",
                      ConversionWarning, stacklevel=3)
    try:
        cfg = ViTConfig(
            name="hf_dinov3_vit", image_size=(h, w), in_chans=int(pw[1]), patch_size=int(pw[2]), embed_dim=int(pw[0]),
            depth=depth, num_heads=facts.as_int("num_attention_heads", hi=L.MAX_HEADS), mlp_dim=int(up[0]),
            swiglu=gated, swiglu_unpacked=gated, qkv_bias=qkv_bias, k_bias=k_bias,
            init_values=facts.as_real("layerscale_value", 0.0, 1e6, lo_open=True, hi_closed=True), reg_tokens=reg,
            class_token="learned", pool="token", pos_embed="none", final_norm=True, num_classes=0,
            gelu="erf" if gated else HF_GELU[act], layer_norm_eps=facts.as_real("layer_norm_eps", 0.0, 1.0, lo_open=True),
            rope="dinov3", rope_temperature=facts.as_real("rope_theta", 0.0, 1e9, lo_open=True), rope_indexing="ij",
            rope_offset=0.0, rope_rotate_half=True, attn_dropout=facts.as_real("attention_dropout", 0.0, 1.0),
            notes=f"imported from Hugging Face dinov3_vit {source} ({', '.join(archs) or 'no architectures'})")
    except ConfigError as e:
        raise ConversionError(f"{source}: the dinov3_vit checkpoint is not a valid ViTConfig: {e}") from None
    if not _rope_runs(cfg.head_dim):
        hd = cfg.head_dim
        raise ConversionError(f"{source}: head_dim {hd}: transformers' DINOv3 rope builds {math.ceil(1 / (4 / hd))} "
                              f"frequencies (arange(0, 1, 4 / {hd})), not head_dim / 4 = {hd // 4}: it cannot run "
                              f"this model")
    out = take(key_map(cfg), st, source, expected=expected_shapes(cfg),
               unexpected=lambda k: f"unexpected key {k!r} (query_bias/key_bias/value_bias in config.json: "
                                    f"{qkv_bias}/{k_bias and qkv_bias}/{qkv_bias})" if ".attention." in k
               else f"unexpected key {k!r} (shape {tuple(np.shape(st[k]))})")
    validate_state(cfg, out, source=source)
    return cfg, out


def export_problems(cfg: ViTConfig, mt: str = "dinov3_vit") -> list[str]:
    """Why `cfg` has no DINOv3ViTModel form (empty when it has one)."""
    what = f"HF {mt}"
    p = family_refusals(cfg, what, supports=("LayerScale (init", "register", "rotary", "without a k bias", "SwiGLU",
                                             "separate q/k/v", "QuickGELU"))
    if cfg.rope != "dinov3" or cfg.rope_indexing != "ij" or cfg.rope_offset or not cfg.rope_rotate_half:
        p.append(f"rope={cfg.rope!r} (indexing {cfg.rope_indexing!r}, offset {cfg.rope_offset}, rotate_half "
                 f"{cfg.rope_rotate_half}): {what} has DINOv3's rotary positions only, rows first, no offset, "
                 f"rotate-half (rope='dinov3', rope_indexing='ij', rope_offset=0, rope_rotate_half=True)")
    if cfg.rope != "none" and not _rope_runs(cfg.head_dim):
        p.append(f"head_dim {cfg.head_dim}: {what}'s rope builds arange(0, 1, 4 / head_dim) frequencies, one more "
                 f"than head_dim / 4 for this head_dim, and cannot run it")
    if cfg.init_values is None:
        p.append(f"init_values=None: {what} always has LayerScale (layer_scale1, layer_scale2)")
    if cfg.class_token != "learned":
        p.append(f"class_token={cfg.class_token!r}: {what} has a learned class token")
    if cfg.pos_embed != "none":
        p.append(f"pos_embed={cfg.pos_embed!r}: {what} has no absolute position table (rotary positions only)")
    if cfg.pool != "token" or not cfg.final_norm or cfg.fc_norm:
        p.append(f"pool={cfg.pool!r}, final_norm={cfg.final_norm}, fc_norm={cfg.fc_norm}: {what}'s features are the "
                 f"final-normed class token (pool='token', final_norm; timm's vit_*_dinov3 default global_pool='avg' "
                 f"is not it: upstream DINOv3 and global_pool='token' are)")
    if cfg.num_classes:
        p.append(f"num_classes={cfg.num_classes}: {what} has no classifier class (DINOv3ViTModel: features only)")
    if cfg.representation_size or cfg.output_softmax or cfg.attn_value_skip \
            or cfg.attn_dim not in (None, cfg.embed_dim) or cfg.qk_scale is not None:
        p.append(f"pre-logits / output softmax / value skip / attn_dim / qk_scale: not in {what}")
    return p


def export_hf_dinov3(cfg: ViTConfig, state: Mapping[str, np.ndarray],
                     mt: str = "dinov3_vit") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Canonical -> (HF file-layout state dict, config.json) of a DINOv3ViTModel."""
    check_hf_export(cfg, mt, export_problems(cfg, mt), state)
    if cfg.qkv_fused and cfg.qkv_bias and not cfg.k_bias:  # the k third is never read: HF's k_proj has no bias
        state = without_k_bias(cfg, state)
    for name, rate in (("drop_path", cfg.drop_path), ("dropout", cfg.dropout)):
        if rate:
            warnings.warn(f"config {cfg.name!r}: {name}={rate} (training only) has no form in HF {mt} "
                          f"(drop_path_rate is one rate for every layer; there is no hidden dropout): written as 0",
                          ConversionWarning, stacklevel=3)
    out = put(key_map(cfg), state)
    out["embeddings.mask_token"] = np.zeros((1, 1, cfg.embed_dim), CANONICAL_DTYPE)
    if not cfg.reg_tokens:
        out["embeddings.register_tokens"] = np.zeros((1, 0, cfg.embed_dim), CANONICAL_DTYPE)
    h, w = cfg.image_size
    conf: dict[str, Any] = {
        "architectures": ["DINOv3ViTModel"], "model_type": mt, "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.mlp_dim,
        "hidden_act": "silu" if cfg.swiglu else HF_GELU_OUT[cfg.gelu], "use_gated_mlp": cfg.swiglu,
        "attention_dropout": cfg.attn_dropout, "drop_path_rate": 0.0, "layer_norm_eps": cfg.layer_norm_eps,
        "rope_theta": cfg.rope_temperature, "image_size": h if h == w else [h, w], "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans, "query_bias": cfg.qkv_bias, "key_bias": cfg.qkv_bias and cfg.k_bias,
        "value_bias": cfg.qkv_bias, "proj_bias": True, "mlp_bias": True, "layerscale_value": cfg.init_values,
        "num_register_tokens": cfg.reg_tokens, "pos_embed_shift": None, "pos_embed_jitter": None,
        "pos_embed_rescale": None, "initializer_range": 0.02}
    return out, conf
