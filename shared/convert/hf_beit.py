"""Hugging Face BEiT and data2vec-vision <-> the canonical format (a relative position bias, q/v biases).

Model types and classes (the two types share one architecture; only the names differ):

  beit             BeitModel, BeitForImageClassification                      (task prefix 'beit.')
  data2vec-vision  Data2VecVisionModel, Data2VecVisionForImageClassification  (task prefix 'data2vec_vision.')

Refused by name: the masked-image-modeling, semantic-segmentation and backbone classes (other heads).

Key mapping (the on-disk "file" layout every hub checkpoint and save_pretrained write; canonical on the left):

  cls_token                    embeddings.cls_token;  pos_embed  embeddings.position_embeddings (a class row + the
                               patches; use_absolute_position_embeddings)
  patch_embed.proj             embeddings.patch_embeddings.projection
  blocks.i.norm1 / norm2       encoder.layer.i.layernorm_before / layernorm_after
  blocks.i.attn.qkv.weight     encoder.layer.i.attention.attention.{query,key,value}.weight, fused in rows q, k, v
  blocks.i.attn.qkv.bias       query.bias, value.bias with a zero k part (HF's key has no bias: k_bias=False)
  blocks.i.attn.rel_pos.relative_position_bias_table
                               encoder.layer.i.attention.attention.relative_position_bias.relative_position_bias_table
                               (use_relative_position_bias), or shared: rel_pos.* = encoder.relative_position_bias.*
  blocks.i.attn.proj           encoder.layer.i.attention.output.dense
  blocks.i.ls1 / ls2.gamma     encoder.layer.i.lambda_1 / lambda_2 (layer_scale_init_value > 0: init_values)
  blocks.i.mlp.fc1 / fc2       encoder.layer.i.intermediate.dense / output.dense
  fc_norm                      pooler.layernorm (use_mean_pooling: the mean of the patch tokens, normed)
  norm                         layernorm (use_mean_pooling=False: the final norm; the features are the class token)
  head                         classifier
HF builds the relative index as BEiT does (shared.posemb.rel_pos_index with the class token's three rows) and scales
by head_dim ** -0.5. HF resamples the table (bilinear) on every forward after reading it as (2w-1, 2h-1): the
identity on a square grid, something else on a non-square one, which is refused both ways. A base model without a pooler (Data2VecVisionModel's default) has features = the class token of
last_hidden_state (no norm with use_mean_pooling). embeddings.mask_token (bool_masked_pos only) is dropped with a
ConversionWarning; old files' relative_position_index buffers are dropped (derived, never weights).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np

from ..config import ViTConfig, shown
from ..errors import ConfigError, ConversionError, ConversionWarning, MismatchError
from ..weights import expected_shapes, validate_state
from .common import (HF_GELU, HF_GELU_OUT, block_ids, check_hf_export, check_numbering, family_refusals, image_size_arg,
                     without_k_bias)
from .hfconfig import ConfigFacts
from .keymap import FUSE, Entry, Fold, expand, put, take

MODEL_TYPES = ("beit", "data2vec-vision")
_PREFIX = {"beit": "beit.", "data2vec-vision": "data2vec_vision."}
_NAME = {"beit": "Beit", "data2vec-vision": "Data2VecVision"}
#: model_type -> the classes read (the base model first)
ARCHITECTURES = {mt: (f"{n}Model", f"{n}ForImageClassification") for mt, n in _NAME.items()}
_REFUSED = {f"{n}{c}": why for n in _NAME.values() for c, why in (
    ("ForMaskedImageModeling", "a masked-image-modeling head (visual-token logits per patch)"),
    ("ForSemanticSegmentation", "a semantic-segmentation decoder (UperNet / FCN heads)"),
    ("Backbone", "a multi-stage feature backbone"))}
#: transformers' BeitConfig / Data2VecVisionConfig defaults for the keys read here
_DEFAULTS = {"image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
             "num_attention_heads": 12, "use_absolute_position_embeddings": False, "use_relative_position_bias": False,
             "use_shared_relative_position_bias": False, "layer_scale_init_value": 0.1, "use_mean_pooling": True,
             "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.1}
_BLOCK = [("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.output.dense"),
          ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]
_TABLE = "relative_position_bias_table"


def key_map(cfg: ViTConfig, pre: str, classifier: bool) -> list[Entry]:
    """canonical <- HF file keys of `cfg` (a BEiT layout), base-model keys under `pre`."""
    b = pre + "encoder.layer.{i}."
    a = b + "attention.attention."
    e = [Entry(tuple(a + f"{n}.weight" for n in ("query", "key", "value")), "blocks.{i}.attn.qkv.weight", FUSE),
         Entry((a + "query.bias", a + "value.bias"), "blocks.{i}.attn.qkv.bias", Fold((0, None, 1)))]
    e += [Entry(b + f"{hf}.{p}", f"blocks.{{i}}.{c}.{p}") for c, hf in _BLOCK for p in ("weight", "bias")]
    if cfg.init_values is not None:
        e += [Entry(b + f"lambda_{j}", f"blocks.{{i}}.ls{j}.gamma") for j in (1, 2)]
    if cfg.rel_pos == "table":
        e.append(Entry(pre + f"encoder.relative_position_bias.{_TABLE}", f"rel_pos.{_TABLE}") if cfg.rel_pos_shared
                 else Entry(a + f"relative_position_bias.{_TABLE}", f"blocks.{{i}}.attn.rel_pos.{_TABLE}"))
    e += [Entry(pre + "embeddings.cls_token", "cls_token"),
          Entry(pre + "embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"),
          Entry(pre + "embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias")]
    if cfg.pos_embed == "learned":
        e.append(Entry(pre + "embeddings.position_embeddings", "pos_embed"))
    norm = ("pooler.layernorm", "fc_norm") if cfg.fc_norm else ("layernorm", "norm") if cfg.final_norm else None
    if norm:
        e += [Entry(pre + f"{norm[0]}.{p}", f"{norm[1]}.{p}") for p in ("weight", "bias")]
    if classifier:
        e += [Entry(f"classifier.{p}", f"head.{p}") for p in ("weight", "bias")]
    return expand(e, cfg.depth)


def import_hf_beit(state: Mapping[str, Any], hf_config: Mapping[str, Any], source: str) -> tuple[ViTConfig, dict]:
    """A BEiT / data2vec-vision state dict + config.json -> (ViTConfig, canonical float32 state)."""
    mt = hf_config["model_type"]
    facts = ConfigFacts(hf_config, _DEFAULTS, source)
    archs = hf_config.get("architectures") or []
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ConfigError(f"{source}: config.json: 'architectures' must be a list of class names, got {shown(archs)}")
    for a in archs:
        if a in _REFUSED:
            raise ConversionError(f"{source}: {a} is {_REFUSED[a]}: the canonical model ends in a classifier or "
                                  f"features (refused by name)")
    st = {k: v for k, v in state.items() if not k.endswith("relative_position_index")}
    pre = _PREFIX[mt] if any(k.startswith(_PREFIX[mt]) for k in st) else ""
    if "classifier.weight" in st and not pre:
        raise ConversionError(f"{source}: a classifier without the '{_PREFIX[mt]}' base-model prefix: not a "
                              f"{_NAME[mt]}ForImageClassification file")
    if any(k.startswith(pre + "encoder.layers.") or ".attention.q_proj." in k for k in st):
        raise ConversionError(f"{source}: transformers >= 5 module names (layers.i.attention.q_proj): save with "
                              f"save_pretrained, which writes the on-disk names (encoder.layer.i.attention.attention."
                              f"query) this reader takes")
    if pre + "embeddings.mask_token" in st:
        warnings.warn(f"{source}: embeddings.mask_token is used only with bool_masked_pos (masked pre-training), "
                      f"never by inference: dropped", ConversionWarning, stacklevel=3)
        st.pop(pre + "embeddings.mask_token")
    ids = block_ids(st, pre + "encoder.layer.{i}.")
    check_numbering(ids, source)
    if pre + "embeddings.cls_token" not in st:
        raise MismatchError(source, [f"missing key {pre + 'embeddings.cls_token'!r}"])
    D = int(np.shape(st[pre + "embeddings.cls_token"])[-1])
    pw = np.shape(st.get(pre + "embeddings.patch_embeddings.projection.weight", ()))
    if len(pw) != 4 or pw[2] != pw[3]:
        raise MismatchError(source, [f"key {pre + 'embeddings.patch_embeddings.projection.weight'!r}: expected a "
                                     f"square conv kernel (D, C, P, P), got {pw}"])
    per_block = f"{pre}encoder.layer.0.attention.attention.relative_position_bias.{_TABLE}" in st
    shared = f"{pre}encoder.relative_position_bias.{_TABLE}" in st
    if per_block and shared:
        raise ConversionError(f"{source}: a relative position table per layer AND a shared one (their sum): not a "
                              f"layout the canonical model runs")
    act = facts.as_str("hidden_act")
    if act not in HF_GELU:
        raise ConversionError(f"{source}: hidden_act {act!r} is not a GELU form the canonical model runs "
                              f"({', '.join(HF_GELU)})")
    mean = facts.as_bool("use_mean_pooling")
    has_pool_norm = f"{pre}pooler.layernorm.weight" in st
    ls = facts.as_real("layer_scale_init_value", 0.0, 1e6, hi_closed=True)
    h, w = image_size_arg(facts.get("image_size"), f"{source}: config.json", key="image_size")
    classifier = "classifier.weight" in st
    if (per_block or shared) and (h // int(pw[2])) != (w // int(pw[2])):
        raise ConversionError(f"{source}: image_size {h}x{w}: transformers' {mt} reads its relative table as "
                              f"(2w-1, 2h-1) and resamples it bilinearly to (2h-1, 2w-1) on every forward, so a "
                              f"non-square grid is not the model it stores (refused, as HF computes something else)")
    try:
        cfg = ViTConfig(
            name=f"hf_{mt.replace('-', '_')}", image_size=(h, w), in_chans=int(pw[1]), patch_size=int(pw[2]),
            embed_dim=D, depth=len(ids), num_heads=facts.as_int("num_attention_heads"),
            mlp_dim=int(np.shape(st[f"{pre}encoder.layer.0.intermediate.dense.weight"])[0]),
            qkv_bias=True, k_bias=False, init_values=ls if ls > 0 else None,
            rel_pos="table" if per_block or shared else "none", rel_pos_shared=shared,
            pos_embed="learned" if pre + "embeddings.position_embeddings" in st else "none",
            pool="mean" if mean and has_pool_norm else "token", fc_norm=mean and has_pool_norm,
            final_norm=not mean, gelu=HF_GELU[act],
            layer_norm_eps=facts.as_real("layer_norm_eps", 0.0, 1.0, lo_open=True),
            resize_kernel="bicubic", num_classes=int(np.shape(st["classifier.weight"])[0]) if classifier else 0,
            dropout=facts.as_real("hidden_dropout_prob", 0.0, 1.0),
            attn_dropout=facts.as_real("attention_probs_dropout_prob", 0.0, 1.0),
            notes=f"imported from Hugging Face {mt} {source} ({', '.join(archs) or 'no architectures'})")
    except (ConfigError, KeyError) as e:
        raise ConversionError(f"{source}: the {mt} checkpoint is not a valid ViTConfig: {e}") from None
    out = take(key_map(cfg, pre, classifier), st, source, expected=expected_shapes(cfg))
    validate_state(cfg, out, source=source)
    return cfg, out


def export_problems(cfg: ViTConfig, mt: str) -> list[str]:
    """Why `cfg` has no BEiT / data2vec-vision form (empty when it has one)."""
    what = f"HF {mt}"
    p = family_refusals(cfg, what, supports=("LayerScale", "without a k bias", "relative position"))
    if cfg.rel_pos == "mlp":
        p.append(f"rel_pos='mlp' (timm's RelPosMlp): {what} has a learned relative table only")
    if cfg.qkv_bias is False or cfg.k_bias:
        p.append(f"{what}'s attention has q and v biases and no k bias (k_bias=False, qkv_bias=True)")
    if cfg.class_token != "learned":
        p.append(f"class_token={cfg.class_token!r}: {what} has a learned class token")
    if cfg.pos_embed not in ("learned", "none") or (cfg.pos_embed == "learned" and
                                                     (cfg.num_pos_prefix != 1 or cfg.pos_grid is not None)):
        p.append(f"{what}'s absolute table has a class row and the image grid's patch rows, or is absent")
    if not ((cfg.pool == "mean" and cfg.fc_norm and not cfg.final_norm) or (cfg.pool == "token" and cfg.final_norm)):
        p.append(f"pool={cfg.pool!r} with final_norm={cfg.final_norm}, fc_norm={cfg.fc_norm}: {what} pools the mean "
                 f"of the patch tokens then its pooler's norm, or the final-normed class token")
    if cfg.rel_pos == "table" and cfg.grid[0] != cfg.grid[1]:
        p.append(f"a {cfg.grid[0]}x{cfg.grid[1]} grid: {what} reads its relative table as (2w-1, 2h-1) and resamples "
                 f"it bilinearly to (2h-1, 2w-1) on every forward, the same function on a square grid only")
    if cfg.attn_value_skip or (cfg.attn_dim not in (None, cfg.embed_dim)) or cfg.representation_size \
            or cfg.output_softmax or cfg.qk_scale is not None:
        p.append(f"value skip / attn_dim / pre-logits / output softmax / qk_scale: not in {what}")
    return p


def export_hf_beit(cfg: ViTConfig, state: Mapping[str, np.ndarray], mt: str) -> tuple[dict, dict]:
    """Canonical -> (HF file-layout state dict, config.json) of model type `mt`: the ForImageClassification class
    with a head, else the base model (with its pooler)."""
    check_hf_export(cfg, mt, export_problems(cfg, mt), state)
    state = without_k_bias(cfg, state)  # the k third is never read: HF's key has no bias
    classifier = cfg.num_classes > 0
    out = put(key_map(cfg, _PREFIX[mt] if classifier else "", classifier), state)
    h, w = cfg.image_size
    arch = ARCHITECTURES[mt][1 if classifier else 0]
    conf: dict[str, Any] = {
        "architectures": [arch], "model_type": mt, "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.mlp_dim, "hidden_act": HF_GELU_OUT[cfg.gelu],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
        "drop_path_rate": cfg.drop_path, "layer_norm_eps": cfg.layer_norm_eps, "image_size": h if h == w else [h, w],
        "patch_size": cfg.patch_size, "num_channels": cfg.in_chans,
        "use_absolute_position_embeddings": cfg.pos_embed == "learned",
        "use_relative_position_bias": cfg.rel_pos == "table" and not cfg.rel_pos_shared,
        "use_shared_relative_position_bias": cfg.rel_pos == "table" and cfg.rel_pos_shared,
        "layer_scale_init_value": cfg.init_values or 0.0, "use_mean_pooling": cfg.pool == "mean",
        "use_mask_token": False}
    if classifier:
        conf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)}
        conf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_classes)}
    return out, conf
