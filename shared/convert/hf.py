"""Hugging Face transformers' ViT family <-> the canonical format.

Model types (config.json `model_type`) and the transformers classes read and written:

  vit                    ViTModel (features; its pooler, dense + tanh on the class token, is pre_logits),
                         ViTForImageClassification
  deit                   DeiTModel, DeiTForImageClassification, DeiTForImageClassificationWithTeacher
  dinov2                 Dinov2Model (and Dinov2Backbone's weights, the same keys), Dinov2ForImageClassification
  dinov2_with_registers  Dinov2WithRegistersModel (and its Backbone), Dinov2WithRegistersForImageClassification
  vit_mae                ViTMAEModel, and the encoder of ViTMAEForPreTraining
  vit_msn                ViTMSNModel (features: the final-norm class token; no pooler), ViTMSNForImageClassification
  ijepa                  IJepaModel (features: the mean of the final-normed tokens; no class token),
                         IJepaForImageClassification (its classifier reads that mean)
  clip, clip_vision_model, siglip, siglip_vision_model, metaclip_2, metaclip_2_vision_model
                         dispatched to shared.convert.hf_clip (import_hf_clip / export_hf_clip)
  beit, data2vec-vision  dispatched to shared.convert.hf_beit (relative position tables, q/v biases)
  dinov3_vit             dispatched to shared.convert.hf_dinov3 (DINOv3's rotary positions, registers, LayerScale)
  aimv2_vision_model     dispatched to shared.convert.hf_aimv2 (RMSNorm, a patch-embedding norm, an unpacked SwiGLU);
                         the CLIP-like aimv2 (Aimv2Model) is refused by name there

Key layouts: the on-disk one every hub checkpoint and `save_pretrained` write ("file":
encoder.layer.{i}.attention.attention.query, attention.output.dense, ...) and the module names of transformers >= 5
("module": ViT/DeiT/ViTMAE layers.{i}.attention.q_proj, o_proj, mlp.fc1, mlp.fc2; DINOv2
encoder.layer.{i}.attention.q_proj, o_proj). Task models keep the base model under a prefix ('vit.', 'deit.',
'dinov2.', 'dinov2_with_registers.', 'ijepa.'; ViTMSN's 'vit.'), base models have none.

Mapping, every type: query/key/value fused into qkv in q, k, v row order; numerics from config.json, where a missing
key means transformers' own default for that model type (_DEFAULTS, tested against the config classes):
layer_norm_eps, hidden_act ('gelu' -> erf; 'gelu_pytorch_tanh' / 'gelu_new' / 'gelu_fast' (one tanh formula) ->
tanh; 'quick_gelu' -> quick; anything else refused), qkv_bias, image_size (the grid of the stored table),
num_attention_heads (required: the weights do not tell it). Sizes the weights tell are checked against
config.json.
  deit      embeddings.distillation_token; the position table has rows for both tokens.
            WithTeacher: cls_classifier -> head, distillation_classifier -> head_dist, dist_token (logits = the mean
            of the two heads, HF's inference output). DeiTForImageClassification classifies the class token only,
            and DeiTModel's features are its class token (its pooler: pre_logits): in these two nothing but
            attention reads the distillation token, so it is imported as what it computes as, a register with a
            position row (reg_token, reg_tokens=1, pos_prefix_tokens None); no head_dist is invented. Exported,
            a model with one positioned register and no distillation token is such a DeiT.
  dinov2    layer_scale{1,2}.lambda1 -> ls{1,2}.gamma (init_values = layerscale_value, the initial value only),
            norm1/norm2, mlp.fc1/fc2; the MLP width is int(hidden_size * mlp_ratio) (HF's Dinov2 never reads
            intermediate_size); drop_path_rate -> drop_path. use_swiglu_ffn=True (the giant models): swiglu, fc1 =
            mlp.weights_in (rows [gate; value]; transformers >= 5 modules: gate_proj, up_proj), fc2 = weights_out /
            down_proj, mlp_dim = (int(int(hidden_size * mlp_ratio) * 2 / 3) + 7) // 8 * 8.
            Dinov2Model's features are the final-norm class token (its pooler_output). Dinov2ForImageClassification
            classifies concat(class token, mean of the patch tokens) (DINOv2's linear-probe head): pool='token_mean',
            classifier (num_labels, 2 * hidden_size) -> head (num_labels 0: an Identity classifier, the
            concatenated features); a token_mean config is written back as that class.
  dinov2_with_registers   as dinov2, plus embeddings.register_tokens -> reg_token; HF adds positions to the
            class token and the patches, not to the registers: pos_prefix_tokens=1, reg_tokens=N, exactly HF's
            layout (no folding, so the round trip is bit-exact). Dinov2WithRegistersForImageClassification: as
            dinov2's, the registers in neither half (HF's mean runs over [:, 1 + num_register_tokens:]).
  vit_mae   a plain ViT encoder (keys as vit). Its fixed 2-D sin-cos position table is stored as a tensor and
            imported as a learned table (exact). ViTMAEModel's forward drops mask_ratio of the patches at random;
            the canonical model is the encoder on every patch (mask_ratio 0, what fine-tuning and feature
            extraction run): a mask_ratio > 0 in config.json is said with a ConversionWarning, and the export
            writes mask_ratio 0. Even then ViTMAEModel shuffles the patch tokens of last_hidden_state (pass
            `noise=arange` to keep their order); the class token does not depend on the order.
  vit_msn   a plain ViT (keys as vit; layer_norm_eps defaults to 1e-6). Neither class has a pooler:
            ViTMSNForImageClassification classifies the final-norm class token, ViTMSNModel's features are it.
  ijepa     a plain ViT without a class token (keys as vit, no embeddings.cls_token; the position table has a row
            per patch only): class_token 'none', pool 'mean'. IJepaForImageClassification classifies the mean of
            the final-normed last_hidden_state (every token is a patch); IJepaModel's features are that mean (its
            optional pooler, dense + tanh on the first patch token, is built only with add_pooling_layer=True,
            which neither class passes: pooler keys are refused as unexpected).

Resize kernel: what each type's interpolate_pos_encoding does. vit, deit, dinov2, vit_mae, vit_msn, ijepa:
F.interpolate bicubic, align_corners=False, no antialias -> 'bicubic'; dinov2_with_registers: the same with
antialias=True -> 'bicubic_antialias'. (HF reshapes the stored table as a square grid; DINOv2 does so whenever
height != width, even at the stored size, so a non-square DINOv2 is not a model transformers runs: refused both
ways.)

Decisions:
  * embeddings.mask_token (ViTModel / DeiTModel(use_mask_token=True); always in DINOv2) is used only when
    `bool_masked_pos` is passed, never by plain inference: dropped with a ConversionWarning. DINOv2 exports write
    it as zeros (HF's own initial value), so from_pretrained finds every key.
  * a masked-image-modeling pixel decoder (ViT/DeiT `decoder.*`, encoder_stride) is refused: it is a different
    head. ViTMAEForPreTraining's decoder (`decoder.*`: the pre-training reconstruction head) is dropped with a
    ConversionWarning: the encoder is the model.
  * a pooler next to a classifier (HF's classifiers never run their pooler) is dropped with a ConversionWarning.
  * export: the model type is the one HF type that holds the config (`hf_model_type`), or the one asked for
    (`model_type=`; a plain ViT can also be written as vit_mae). Prefix tokens the canonical model leaves without
    a position row but the HF type positions (timm's no_embed_class class token, for one) get a zero row: x + 0
    is exact, so the function is the same (re-imported, the config states the zero row as a position row).
    A model without a class token that classifies (or whose features are) the mean of its final-normed tokens is
    an ijepa model by default; vit_msn and vit_mae are written only when asked for.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import limits as L
from ..config import ViTConfig, shown
from ..errors import (ConfigError, ConversionError, ConversionWarning, InvalidFileError, MismatchError, MissingFactsError)
from ..safeio import read_json_file
from ..fileio import write_dir_atomically
from ..weights import CANONICAL_DTYPE, read_tensors, validate_state
from .hf_clip import ARCHITECTURES as CLIP_ARCHITECTURES
from .hf_clip import MODEL_TYPES as HF_CLIP_TYPES
from .hf_beit import ARCHITECTURES as BEIT_ARCHITECTURES
from .hf_beit import MODEL_TYPES as HF_BEIT_TYPES
from .hf_dinov3 import ARCHITECTURES as DINOV3_ARCHITECTURES
from .hf_dinov3 import MODEL_TYPES as HF_DINOV3_TYPES
from .hf_aimv2 import ARCHITECTURES as AIMV2_ARCHITECTURES
from .hf_aimv2 import MODEL_TYPES as HF_AIMV2_TYPES
from .hf_aimv2 import REFUSED as HF_AIMV2_REFUSED
from .hf_clip import NAFLEX_TYPES as HF_NAFLEX_TYPES
from .hfconfig import ConfigFacts
from .common import (HF_GELU, HF_GELU_OUT, block_ids, check_hf_export, check_numbering, family_refusals,
                     flatten_checkpoint, image_size_arg, read_torch_checkpoint, resize_state, strip_prefixes)
from .keymap import FUSE, Entry, expand, put, take

HF_DEFAULT_EPS = 1e-12  # ViTConfig's (vit, deit, vit_mae, ijepa); DINOv2's and ViTMSN's are 1e-6 (_DEFAULTS)

_COMMON_DEFAULTS = {"image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_act": "gelu", "qkv_bias": True,
                    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
#: transformers' defaults (the config classes' __init__) for the keys read here: a key missing from config.json
#: means this, as it does to transformers
_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": {**_COMMON_DEFAULTS, "layer_norm_eps": 1e-12, "pooler_act": "tanh"},
    "deit": {**_COMMON_DEFAULTS, "layer_norm_eps": 1e-12, "pooler_act": "tanh"},
    "vit_mae": {**_COMMON_DEFAULTS, "layer_norm_eps": 1e-12, "mask_ratio": 0.75},
    "vit_msn": {**_COMMON_DEFAULTS, "layer_norm_eps": 1e-6},
    "ijepa": {**_COMMON_DEFAULTS, "layer_norm_eps": 1e-12},
    "dinov2": {**_COMMON_DEFAULTS, "patch_size": 14, "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "mlp_ratio": 4,
               "use_swiglu_ffn": False, "drop_path_rate": 0.0, "use_mask_token": True},
    "dinov2_with_registers": {**_COMMON_DEFAULTS, "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "mlp_ratio": 4,
                              "use_swiglu_ffn": False, "drop_path_rate": 0.0, "num_register_tokens": 4},
}


def _wb(canon: str, file: str, module: str) -> list[tuple[str, str, str]]:
    return [(f"{canon}.{p}", f"{file}.{p}", f"{module}.{p}") for p in ("weight", "bias")]


# Per-block tensors: (canonical suffix, file name, module name), relative to the block prefix.
_VIT_BLOCK = [*_wb("norm1", "layernorm_before", "layernorm_before"), *_wb("norm2", "layernorm_after", "layernorm_after"),
              *_wb("attn.proj", "attention.output.dense", "attention.o_proj"),
              *_wb("mlp.fc1", "intermediate.dense", "mlp.fc1"), *_wb("mlp.fc2", "output.dense", "mlp.fc2")]
_DINO_BLOCK = [*_wb("norm1", "norm1", "norm1"), *_wb("norm2", "norm2", "norm2"),
               *_wb("attn.proj", "attention.output.dense", "attention.o_proj"),
               *_wb("mlp.fc1", "mlp.fc1", "mlp.fc1"), *_wb("mlp.fc2", "mlp.fc2", "mlp.fc2"),
               ("ls1.gamma", "layer_scale1.lambda1", "layer_scale1.lambda1"),
               ("ls2.gamma", "layer_scale2.lambda1", "layer_scale2.lambda1")]
# DINOv2's SwiGLU MLP (use_swiglu_ffn, the giant models): the file packs fc1 as weights_in, rows [gate; value] like
# timm's SwiGLUPacked; transformers >= 5 modules split it in two (its conversion mapping chunks weights_in on dim 0).
_SWIGLU_FC1 = {"file": ("mlp.weights_in",), "module": ("mlp.gate_proj", "mlp.up_proj")}
_SWIGLU_BLOCK = (*[e for e in _DINO_BLOCK if not e[0].startswith("mlp.")],
                 *_wb("mlp.fc2", "mlp.weights_out", "mlp.down_proj"))
_QKV = {"file": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        "module": ("attention.q_proj", "attention.k_proj", "attention.v_proj")}
LAYOUTS = ("file", "module")


@dataclass(frozen=True)
class _Family:
    model_type: str
    base_prefix: str  # the base model's attribute in a task model
    block_prefix: tuple[str, str]  # (file, module)
    block: tuple  # _VIT_BLOCK or _DINO_BLOCK
    pos_prefix: int  # prefix tokens with a row in HF's position table
    classes: tuple[str, ...]  # the transformers classes read (the first: the base model)
    refused: Mapping[str, str]  # architecture -> why it is refused
    resize_kernel: str
    pooler: bool  # the base model may have a pooler (dense + tanh on the class token)
    classifier: str | None = None  # the class whose head classifies what `pool` reads (None: no such class)
    class_token: bool = True  # embeddings.cls_token (the first position row is its)
    pool: str = "token"  # what the features and the classifier read: the class token, or the mean of the tokens

    @property
    def dino(self) -> bool:
        """DINOv2's block (LayerScale, norm1/norm2, an MLP sized by mlp_ratio) and its config keys."""
        return self.block == tuple(_DINO_BLOCK)


_MIM = "is a masked-image-modeling pixel decoder: a different head, the canonical model ends in a classifier or features"
_FAMILIES = {f.model_type: f for f in (
    _Family("vit", "vit.", ("encoder.layer.{i}.", "layers.{i}."), tuple(_VIT_BLOCK), 1,
            ("ViTModel", "ViTForImageClassification"), {"ViTForMaskedImageModeling": _MIM}, "bicubic", True,
            classifier="ViTForImageClassification"),
    _Family("deit", "deit.", ("encoder.layer.{i}.", "layers.{i}."), tuple(_VIT_BLOCK), 2,
            ("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
            {"DeiTForMaskedImageModeling": _MIM}, "bicubic", True, classifier="DeiTForImageClassification"),
    _Family("dinov2", "dinov2.", ("encoder.layer.{i}.", "encoder.layer.{i}."), tuple(_DINO_BLOCK), 1,
            ("Dinov2Model", "Dinov2Backbone", "Dinov2ForImageClassification"), {}, "bicubic", False,
            classifier="Dinov2ForImageClassification"),  # its head reads concat(class token, patch mean): token_mean
    _Family("dinov2_with_registers", "dinov2_with_registers.", ("encoder.layer.{i}.", "encoder.layer.{i}."),
            tuple(_DINO_BLOCK), 1, ("Dinov2WithRegistersModel", "Dinov2WithRegistersBackbone",
                                    "Dinov2WithRegistersForImageClassification"), {}, "bicubic_antialias", False,
            classifier="Dinov2WithRegistersForImageClassification"),
    _Family("vit_mae", "vit.", ("encoder.layer.{i}.", "layers.{i}."), tuple(_VIT_BLOCK), 1,
            ("ViTMAEModel", "ViTMAEForPreTraining"), {}, "bicubic", False),
    _Family("vit_msn", "vit.", ("encoder.layer.{i}.", "layers.{i}."), tuple(_VIT_BLOCK), 1,
            ("ViTMSNModel", "ViTMSNForImageClassification"), {}, "bicubic", False,
            classifier="ViTMSNForImageClassification"),
    _Family("ijepa", "ijepa.", ("encoder.layer.{i}.", "layers.{i}."), tuple(_VIT_BLOCK), 0,
            ("IJepaModel", "IJepaForImageClassification"), {}, "bicubic", False,
            classifier="IJepaForImageClassification", class_token=False, pool="mean"),
)}
HF_MODEL_TYPES = (*_FAMILIES, *HF_CLIP_TYPES, *HF_BEIT_TYPES, *HF_DINOV3_TYPES, *HF_AIMV2_TYPES)


def accepted_architectures() -> list[tuple[str, str]]:
    """Every (model_type, transformers class) the importer reads, from its own tables (the families' classes, the
    CLIP / SigLIP / MetaCLIP 2 architectures of shared.convert.hf_clip, hf_beit's and hf_dinov3's): the list a test
    must cover."""
    return [(mt, a) for mt, f in _FAMILIES.items() for a in f.classes] + \
        [(mt, a) for table in (CLIP_ARCHITECTURES, BEIT_ARCHITECTURES, DINOV3_ARCHITECTURES, AIMV2_ARCHITECTURES)
         for mt, archs in table.items() for a in archs]


def _top_keys(fam: _Family, *, dist: str | None, pooler: bool, registers: bool) -> dict[str, str]:
    """canonical -> HF key (relative to the base model) of everything outside the blocks and the heads; `dist`:
    the canonical name of DeiT's distillation token (dist_token or reg_token)."""
    top = {"cls_token": "embeddings.cls_token"} if fam.class_token else {}
    top.update({"pos_embed": "embeddings.position_embeddings",
                "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
                "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
                "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"})
    if dist:
        top[dist] = "embeddings.distillation_token"
    if registers and fam.model_type == "dinov2_with_registers":
        top["reg_token"] = "embeddings.register_tokens"
    if pooler:
        top.update({"pre_logits.fc.weight": "pooler.dense.weight", "pre_logits.fc.bias": "pooler.dense.bias"})
    return top


def _head_keys(variant: str) -> dict[str, str]:
    """canonical -> HF key of the classifier(s), outside the base model."""
    if variant == "teacher":
        return {"head.weight": "cls_classifier.weight", "head.bias": "cls_classifier.bias",
                "head_dist.weight": "distillation_classifier.weight", "head_dist.bias": "distillation_classifier.bias"}
    if variant == "classifier":
        return {"head.weight": "classifier.weight", "head.bias": "classifier.bias"}
    return {}


def _architectures(hf_config: Mapping[str, Any], source: str) -> list[str]:
    archs = hf_config.get("architectures")
    if archs is None:
        return []
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ConfigError(f"{source}: config.json: 'architectures' must be a list of class names, got {shown(archs)}")
    return archs


# ---------------------------------------------------------------------------- import
def import_hf(state: Mapping[str, Any], hf_config: Mapping[str, Any], source: str = "<hf checkpoint>",
              image_size=None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """HF state dict (NumPy arrays) + its config.json dict -> (ViTConfig, canonical float32 state).

    Dispatches on config.json's model_type (HF_MODEL_TYPES; CLIP and SigLIP to shared.convert.hf_clip) and refuses
    the architectures whose head is not canonical by name. `image_size` resamples the position table for another
    input size with the type's own kernel."""
    if not isinstance(hf_config, Mapping):
        raise MissingFactsError(f"{source}: a Hugging Face checkpoint needs its config.json (model_type, "
                                f"num_attention_heads, layer_norm_eps, hidden_act, image_size ...)")
    mt = hf_config.get("model_type", "vit")
    if mt in HF_CLIP_TYPES:
        from .hf_clip import import_hf_clip

        if mt in HF_NAFLEX_TYPES:  # SigLIP 2 keeps its table at its grid and resamples it per image, as HF does
            cfg, out = import_hf_clip(state, hf_config, source, image_size=image_size)
            image_size = None
        else:
            cfg, out = import_hf_clip(state, hf_config, source)
    elif mt in HF_BEIT_TYPES:
        from .hf_beit import import_hf_beit

        cfg, out = import_hf_beit(strip_prefixes(state), hf_config, source)
    elif mt in HF_DINOV3_TYPES:  # rotary positions, computed at each grid: no table to resample
        from .hf_dinov3 import import_hf_dinov3

        cfg, out = import_hf_dinov3(strip_prefixes(state), hf_config, source)
    elif mt in HF_AIMV2_TYPES or mt in HF_AIMV2_REFUSED:  # AIMv2 (hf_aimv2); the CLIP-like aimv2 refused by name
        from .hf_aimv2 import import_hf_aimv2

        cfg, out = import_hf_aimv2(strip_prefixes(state), hf_config, source)
    else:
        fam = _FAMILIES.get(mt) if isinstance(mt, str) else None
        if fam is None:
            raise ConversionError(f"{source}: model_type {shown(mt)[:80]} is not supported (Hugging Face model types "
                                  f"read: {', '.join(HF_MODEL_TYPES)})")
        cfg, out = _import_family(fam, state, hf_config, source)
    if image_size is not None:
        cfg, out = resize_state(cfg, out, image_size)
    validate_state(cfg, out, source=source)
    return cfg, out


def key_map(fam: _Family, layout: str, *, depth: int, qkv_bias: bool, swiglu: bool, dist: str | None, pooler: bool,
            registers: bool, heads: Mapping[str, str], pre: str = "") -> list[Entry]:
    """(HF keys, canonical keys, transform) of a `fam` model in `layout` ('file' | 'module'): the base model's keys
    under `pre` (a task model's base prefix), the heads' (`heads`: canonical -> HF key, see _head_keys) outside it.
    q/k/v (and a SwiGLU's gate/value halves in the module layout) are fused in row order."""
    li = LAYOUTS.index(layout)
    m = [Entry(pre + hk, canon) for canon, hk in _top_keys(fam, dist=dist, pooler=pooler, registers=registers).items()]
    b = pre + fam.block_prefix[li]  # holds {i}
    block = [Entry(b + names[li], f"blocks.{{i}}.{canon}") for canon, *names in (_SWIGLU_BLOCK if swiglu else fam.block)]
    fused = [("attn.qkv", _QKV[layout], ("weight", "bias") if qkv_bias else ("weight",))]  # rows: q, k, v
    if swiglu:
        fused.append(("mlp.fc1", _SWIGLU_FC1[layout], ("weight", "bias")))  # rows: gate, value
    block += [Entry(tuple(f"{b}{n}.{part}" for n in parts), f"blocks.{{i}}.{canon}.{part}", FUSE)
              for canon, parts, kinds in fused for part in kinds]
    return m + expand(block, depth) + [Entry(hk, canon) for canon, hk in heads.items()]


def _import_family(fam: _Family, state: Mapping[str, Any], hf_config: Mapping[str, Any],
                   source: str) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    mt = fam.model_type
    facts = ConfigFacts(hf_config, _DEFAULTS[mt], source)
    archs = _architectures(hf_config, source)
    for a in archs:
        if a in fam.refused:
            raise ConversionError(f"{source}: {a} {fam.refused[a]}")
    st, swiglu, layout = _family_state(fam, facts, state, hf_config, source)
    f = _family_sizes(fam, facts, st, layout, swiglu, hf_config, source)
    h = _family_heads(fam, facts, st, archs, source)
    qkv_bias = f["qkv_bias"]
    out = take(key_map(fam, layout, depth=f["depth"], qkv_bias=qkv_bias, swiglu=swiglu, dist=h["dist"],
                       pooler=h["rep"] is not None, registers=h["reg"] > 0, heads=h["heads"]), st, source,
               unexpected=lambda k: f"unexpected key {k!r} (qkv_bias={qkv_bias} in config.json)" if "attention" in k
               else f"unexpected key {k!r}")
    # ---- position table grid: HF's rows are its positioned prefix tokens, then the patches at image_size
    img, P = f["img"], f["P"]
    gh, gw = img[0] // P, img[1] // P
    T = int(np.shape(out["pos_embed"])[1]) if np.ndim(out["pos_embed"]) == 3 else -1
    if img[0] % P or img[1] % P or T != fam.pos_prefix + gh * gw:
        raise MismatchError(source, [f"position_embeddings has {T} rows; image_size {list(img)} with patch_size {P} "
                                     f"needs {fam.pos_prefix + gh * gw} ({fam.pos_prefix} for the prefix tokens)"])
    arch = next((a for a in archs if a in fam.classes), None) or mt
    note = "; its distillation token, read by no head, is reg_token" if mt == "deit" and not h["dist_token"] else ""
    try:
        cfg = ViTConfig(
            name=str(f["name"] or f"hf_{mt}").replace("/", "_") or f"hf_{mt}",
            image_size=img, in_chans=f["C"], patch_size=P, embed_dim=f["D"], depth=f["depth"], num_heads=f["H"],
            mlp_dim=f["M"], swiglu=swiglu, qkv_bias=qkv_bias, init_values=h["init_values"],
            class_token="learned" if fam.class_token else "none", dist_token=h["dist_token"], reg_tokens=h["reg"],
            pool="token_mean" if fam.dino and h["variant"] == "classifier" else fam.pool, pos_embed="learned",
            pos_prefix_tokens=fam.pos_prefix if h["reg"] and mt == "dinov2_with_registers" else None,
            resize_kernel=fam.resize_kernel, gelu=HF_GELU[f["act"]], layer_norm_eps=f["eps"], final_norm=True,
            representation_size=h["rep"], num_classes=h["K"], dropout=f["hidden_dropout"],
            attn_dropout=f["attn_dropout"], drop_path=h["drop_path"] or 0.0,
            notes=f"imported from Hugging Face {arch} {source}{note}")
    except ConfigError as e:
        raise ConversionError(f"{source}: the imported model is not a valid ViTConfig: {e}") from None
    return cfg, out


def _family_state(fam: _Family, facts: ConfigFacts, state: Mapping[str, Any], hf_config: Mapping[str, Any],
                  source: str) -> tuple[dict[str, Any], bool, str]:
    """(the base model's keys, without wrapper or base prefix, decoder or mask token; whether the MLP is SwiGLU;
    the key layout, 'file' or 'module')."""
    mt = fam.model_type
    st = strip_prefixes(state)
    decoder = sorted(k for k in st if k.startswith("decoder."))
    if decoder and mt == "vit_mae":
        st = {k: v for k, v in st.items() if not k.startswith("decoder.")}
        warnings.warn(f"{source}: dropped the ViTMAEForPreTraining decoder ({len(decoder)} tensors, e.g. "
                      f"{decoder[0]!r}): it reconstructs masked pixels in pre-training; the encoder is the model",
                      ConversionWarning, stacklevel=4)
    elif decoder:
        raise ConversionError(f"{source}: {decoder[0]!r} {_MIM} (encoder_stride "
                              f"{shown(hf_config.get('encoder_stride'))})")
    if any(k.startswith(fam.base_prefix) for k in st):
        st = {(k[len(fam.base_prefix):] if k.startswith(fam.base_prefix) else k): v for k, v in st.items()}
    if "embeddings.patch_embeddings.projection.weight" not in st:
        hint = " (this looks like a timm checkpoint: use --from timm)" if "patch_embed.proj.weight" in st else ""
        raise ConversionError(f"{source}: not a Hugging Face {mt} state dict: no "
                              f"'[{fam.base_prefix}]embeddings.patch_embeddings.projection.weight'{hint}")
    gated_keys = sorted(k for k in st if re.search(r"\.mlp\.(weights_in|weights_out|gate_proj|up_proj|down_proj)\.", k))
    swiglu = fam.dino and facts.as_bool("use_swiglu_ffn")
    if gated_keys and not swiglu:
        raise ConversionError(f"{source}: {gated_keys[0]!r} is a SwiGLU MLP, but config.json "
                              + ("says use_swiglu_ffn=false" if fam.dino else f"is a {mt} model, which has none"))
    if "embeddings.mask_token" in st:
        st.pop("embeddings.mask_token")
        warnings.warn(f"{source}: dropped embeddings.mask_token: it is used only for masked-image-modeling inputs "
                      f"(bool_masked_pos), never in plain inference", ConversionWarning, stacklevel=4)
    return st, swiglu, "module" if any(".attention.q_proj." in k for k in st) else "file"


def _family_sizes(fam: _Family, facts: ConfigFacts, st: Mapping[str, Any], layout: str, swiglu: bool,
                  hf_config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """config.json's numerics, type-checked, and the sizes of the weights, checked against config.json."""
    f: dict[str, Any] = {"H": facts.as_int("num_attention_heads", required=True, hi=L.MAX_HEADS),
                         "act": facts.as_str("hidden_act")}
    if f["act"] not in HF_GELU:
        raise ConversionError(f"{source}: hidden_act {f['act']!r} is not a GELU the canonical model supports "
                              f"(gelu -> erf; gelu_pytorch_tanh / gelu_new / gelu_fast -> tanh; quick_gelu -> quick)")
    f.update(eps=facts.as_real("layer_norm_eps", 0.0, 1.0, lo_open=True), qkv_bias=facts.as_bool("qkv_bias"),
             hidden_dropout=facts.as_real("hidden_dropout_prob", 0.0, 1.0),
             attn_dropout=facts.as_real("attention_probs_dropout_prob", 0.0, 1.0))
    for key, hi in (("hidden_size", L.MAX_WIDTH), ("num_channels", L.MAX_CHANNELS), ("patch_size", L.MAX_PATCH),
                    ("num_hidden_layers", L.MAX_DEPTH)):
        facts.as_int(key, hi=hi)
    if not fam.dino:
        facts.as_int("intermediate_size")
    f["img"] = img = image_size_arg(facts.get("image_size"), facts.where, key="image_size", lists_only=True)
    f["name"] = hf_config.get("_name_or_path")
    if f["name"] is not None and not isinstance(f["name"], str):
        raise ConfigError(f"{facts.where}: '_name_or_path' must be a string, got {shown(f['name'])}")
    pw = np.shape(st["embeddings.patch_embeddings.projection.weight"])
    if len(pw) != 4 or pw[2] != pw[3]:
        raise ConversionError(f"{source}: patch projection has shape {pw}; expected (D, C, P, P)")
    D, C, P = int(pw[0]), int(pw[1]), int(pw[2])
    li = LAYOUTS.index(layout)
    bp = fam.block_prefix[li]
    depth = check_numbering(block_ids(st, bp), source)
    fc2 = bp.format(i=0) + next(names[li] for c, *names in (_SWIGLU_BLOCK if swiglu else fam.block)
                                if c == "mlp.fc2.weight")
    if fc2 not in st:
        raise MismatchError(source, [f"missing key {fc2!r}"])
    M = int(np.shape(st[fc2])[-1])  # the hidden width: fc2's input
    file_vals = {"hidden_size": D, "num_channels": C, "patch_size": P, "num_hidden_layers": depth}
    if not fam.dino:
        file_vals["intermediate_size"] = M
    clash = [f"{k}: config.json {hf_config[k]!r}, weights {v!r}" for k, v in file_vals.items()
             if hf_config.get(k) is not None and int(hf_config[k]) != v]
    if fam.dino:  # HF's Dinov2 sizes its MLP as int(hidden_size * mlp_ratio), then its SwiGLU takes 2/3 of that
        ratio = facts.as_real("mlp_ratio", 0.0, float(L.MAX_WIDTH), lo_open=True)
        if _dino_hidden(D, ratio, swiglu) != M:
            r = facts.get("mlp_ratio")
            formula = f"(int(int({D} * {r!r}) * 2 / 3) + 7) // 8 * 8" if swiglu else f"int({D} * {r!r})"
            clash.append(f"mlp_ratio: config.json {r!r} gives {formula} = {_dino_hidden(D, ratio, swiglu)} "
                         f"{'SwiGLU ' if swiglu else ''}MLP channels, weights {M}")
    if clash:
        raise MismatchError(source, ["config.json disagrees with the weights: " + c for c in clash])
    if D % f["H"]:
        raise ConversionError(f"{source}: hidden_size {D} is not divisible by num_attention_heads {f['H']}")
    if fam.dino and img[0] != img[1]:
        raise ConversionError(f"{source}: image_size {list(img)} is not square: transformers' {fam.model_type} "
                              f"reshapes its position table as a square grid whenever height != width, so this is "
                              f"not a model it runs")
    return {**f, "D": D, "C": C, "P": P, "depth": depth, "M": M}


def _family_heads(fam: _Family, facts: ConfigFacts, st: dict[str, Any], archs: list[str],
                  source: str) -> dict[str, Any]:
    """What the file holds besides the blocks: its head variant and keys, pooler, distillation and register
    tokens, LayerScale's init value (an unused pooler is dropped from `st` with a ConversionWarning)."""
    mt, dino = fam.model_type, fam.dino
    h: dict[str, Any] = {"init_values": None, "drop_path": None, "reg": 0, "dist_token": False, "dist": None}
    if dino:
        h["init_values"] = facts.as_real("layerscale_value", 0.0, 1e6, lo_open=True, hi_closed=True)
        h["drop_path"] = facts.as_real("drop_path_rate", 0.0, 1.0)
    if ("cls_classifier.weight" in st or "distillation_classifier.weight" in st
            or "DeiTForImageClassificationWithTeacher" in archs):  # num_labels 0: Identity heads, no keys
        variant = "teacher"
    elif "classifier.weight" in st or dino and fam.classifier in archs:  # num_labels 0: Identity, no keys
        variant = "classifier"
    else:
        variant = "model"
    if variant == "teacher" and mt != "deit":
        raise ConversionError(f"{source}: cls_classifier / distillation_classifier belong to "
                              f"DeiTForImageClassificationWithTeacher, not to a {mt} model")
    if mt == "deit":
        h["dist_token"] = variant == "teacher"
        h["dist"] = "dist_token" if h["dist_token"] else "reg_token"
        h["reg"] = 0 if h["dist_token"] else 1
    if mt == "dinov2_with_registers":
        rt = np.shape(st.get("embeddings.register_tokens", np.zeros((0, 0, 0))))
        h["reg"] = reg = int(rt[1]) if len(rt) == 3 else -1
        n_conf = facts.as_int("num_register_tokens", lo=0, hi=L.MAX_PREFIX_TOKENS)
        if reg != n_conf:
            raise MismatchError(source, [f"config.json disagrees with the weights: num_register_tokens: config.json "
                                         f"{n_conf}, weights {reg if reg >= 0 else 'no embeddings.register_tokens'}"])
        if reg == 0:  # an empty (1, 0, D) tensor: no register, a plain DINOv2
            st.pop("embeddings.register_tokens")
    has_pooler = fam.pooler and "pooler.dense.weight" in st
    if has_pooler and variant != "model":
        for k in ("pooler.dense.weight", "pooler.dense.bias"):
            st.pop(k, None)
        has_pooler = False
        warnings.warn(f"{source}: dropped pooler.dense: HF's image classifiers classify the normed tokens and never "
                      f"run the pooler", ConversionWarning, stacklevel=4)
    if has_pooler and facts.as_str("pooler_act") != "tanh":
        raise ConversionError(f"{source}: pooler_act {facts.get('pooler_act')!r}: canonical pre-logits are "
                              f"Linear + tanh")
    h["rep"] = int(np.shape(st["pooler.dense.weight"])[0]) if has_pooler else None
    heads = _head_keys(variant)
    if not any(hk in st for hk in heads.values()):  # a classifier with num_labels 0 is an Identity: no keys
        heads = {}
    h.update(variant=variant, heads=heads, K=int(np.shape(st[heads["head.weight"]])[0]) if heads else 0)
    if mt == "vit_mae":
        ratio = facts.as_real("mask_ratio", 0.0, 1.0)
        if ratio:
            warnings.warn(f"{source}: mask_ratio {ratio}: transformers' ViTMAEModel drops that share of the patches "
                          f"at random; the imported model is the encoder on every patch (mask_ratio 0)",
                          ConversionWarning, stacklevel=4)
    return h


# ---------------------------------------------------------------------------- export
def hf_model_type(cfg: ViTConfig) -> str:
    """The Hugging Face model type that holds `cfg` (export's default): dinov3_vit for DINOv3's rotary positions,
    beit for a relative table or q/v biases, siglip_vision_model for an attention-pool
    head, clip_vision_model for CLIP's pre-norm or bias-free patch projection, deit for a distillation token (or one
    register: DeiT's distillation token when no head reads it), dinov2 / dinov2_with_registers for LayerScale,
    ijepa for the mean of the tokens without a class token, else vit; CLIP's classifier (the mean of the patch
    tokens, no final norm) is a clip model. Whether that type can hold every other option is export_hf's check."""
    if cfg.rope == "dinov3":  # DINOv3's rotary positions (hf_dinov3)
        return "dinov3_vit"
    if cfg.rel_pos != "none" or not cfg.k_bias:  # a relative table, q/v biases: BEiT (hf_beit)
        return "beit"
    if cfg.patch_norm or cfg.norm_kind == "rms" or cfg.swiglu_unpacked or not cfg.proj_bias:  # AIMv2 (hf_aimv2)
        return "aimv2_vision_model"
    if cfg.pool == "map":
        return "siglip_vision_model"
    if cfg.norm_pre or not cfg.patch_bias:
        return "clip" if cfg.pool == "mean" and cfg.num_classes else "clip_vision_model"
    if cfg.class_token == "none" and cfg.pool == "mean":
        return "ijepa"
    if cfg.dist_token or (cfg.reg_tokens == 1 and cfg.init_values is None):
        return "deit"
    if cfg.init_values is not None:
        return "dinov2_with_registers" if cfg.reg_tokens else "dinov2"
    return "vit"


def export_problems(cfg: ViTConfig, model_type: str | None = None) -> list[str]:
    """Why `cfg` cannot be written as HF `model_type` (default: hf_model_type(cfg)); empty when it can."""
    mt = model_type or hf_model_type(cfg)
    if mt in HF_CLIP_TYPES:
        from .hf_clip import _architecture

        return _architecture(cfg, mt)[1]
    if mt in HF_BEIT_TYPES:
        from .hf_beit import export_problems as beit_problems

        return beit_problems(cfg, mt)
    if mt in HF_DINOV3_TYPES:
        from .hf_dinov3 import export_problems as dinov3_problems

        return dinov3_problems(cfg, mt)

    if mt in HF_AIMV2_TYPES:
        from .hf_aimv2 import export_problems as aimv2_problems

        return aimv2_problems(cfg, mt)
    if mt not in _FAMILIES:
        return [f"model_type {mt!r} is not a Hugging Face type vit-suite writes ({', '.join(HF_MODEL_TYPES)})"]
    return _export_problems(cfg, _FAMILIES[mt])


def _family_support(fam: _Family) -> tuple[str, ...]:
    """The ViT-family options (words of ViTConfig.family_options' names) HF `fam` holds, or refuses in its own
    checks (a pool it does not read)."""
    own = ("QuickGELU", "without a position row", "attention-pool", "token_mean")  # zero rows; pools: _export_problems
    return own + {"deit": ("distillation", "register"), "dinov2": ("LayerScale", "SwiGLU"),
                  "dinov2_with_registers": ("LayerScale", "SwiGLU", "register")}.get(fam.model_type, ())


def _export_problems(cfg: ViTConfig, fam: _Family) -> list[str]:
    mt, what = fam.model_type, f"HF {fam.model_type}"
    p = family_refusals(cfg, what, supports=_family_support(fam), say={
        "qk-norm": f"qk_norm: {what} has no LayerNorm on q and k",
        "patch_bias=False": f"patch_bias=False: {what}'s patch projection has a bias",
        "norm_pre": f"norm_pre: {what} has no LayerNorm before the blocks",
        "distillation": f"dist_token: {what} has no distillation token (deit has)",
        "register": lambda c: f"reg_tokens={c.reg_tokens}: {what} has no register tokens"
                              + (" (dinov2_with_registers has)" if mt == "dinov2" else ""),
        "LayerScale": f"init_values (LayerScale): {what} has none (dinov2 has)",
        "SwiGLU": f"a SwiGLU MLP: {what}'s MLP is Linear-GELU-Linear (dinov2 has use_swiglu_ffn)"})
    if cfg.class_token != ("learned" if fam.class_token else "none"):
        p.append(f"class_token={cfg.class_token!r}: {what} "
                 + ("always has a learned cls_token" if fam.class_token else "has no class token"))
    if cfg.pos_embed != "learned":
        p.append(f"pos_embed={cfg.pos_embed!r}: {what} has a learned position table only")
    if cfg.attn_value_skip:
        p.append(f"attn_value_skip: {what} attention has no value skip")
    if cfg.attn_dim is not None and cfg.attn_dim != cfg.embed_dim:
        p.append(f"attn_dim {cfg.attn_dim} != embed_dim {cfg.embed_dim}: {what} keeps one width")
    if cfg.qk_scale is not None and cfg.qk_scale != cfg.head_dim ** -0.5:
        p.append(f"qk_scale={cfg.qk_scale}: {what} scales by head_dim**-0.5")
    if cfg.pool != fam.pool and not (fam.dino and cfg.pool == "token_mean"):
        p.append(f"pool={cfg.pool!r}: {what} reads "
                 + ("the class token" if fam.pool == "token" else "the mean of its final-normed tokens")
                 + (f" ({fam.classifier} reads concat(class token, patch mean))" if fam.dino else ""))
    if not cfg.final_norm:
        p.append(f"final_norm=False: {what} always applies its final layernorm")
    if cfg.fc_norm:
        p.append(f"fc_norm: {what} has no norm after pooling")
    if cfg.output_softmax:
        p.append("output_softmax: HF models return logits")
    if cfg.pos_embed == "learned" and cfg.table_grid != cfg.grid:
        p.append(f"the table is stored at grid {cfg.table_grid}, the image grid is {cfg.grid}: HF stores the "
                 f"table at image_size (resample it first, e.g. re-import with image_size)")
    if cfg.drop_path and not fam.dino:
        p.append(f"drop_path: {what} has no stochastic depth")
    return p + _prefix_problems(cfg, fam) + _block_problems(cfg, fam)


def _prefix_problems(cfg: ViTConfig, fam: _Family) -> list[str]:
    """HF's own rules for the prefix tokens (beyond which options a type has: family_refusals)."""
    mt, what, p = fam.model_type, f"HF {fam.model_type}", []
    if mt == "deit" and cfg.reg_tokens + int(cfg.dist_token) != 1:
        p.append(f"dist_token={cfg.dist_token}, reg_tokens={cfg.reg_tokens}: HF deit has exactly one token after "
                 f"the class token (distillation_token)")
    if mt == "dinov2_with_registers" and not cfg.reg_tokens:
        p.append(f"reg_tokens=0: {what} without registers is a dinov2")
    if cfg.pos_embed == "learned" and cfg.num_pos_prefix > fam.pos_prefix:
        p.append(f"{cfg.num_pos_prefix} prefix tokens have a position row; {what} positions only the first "
                 f"{fam.pos_prefix} (registers get none in dinov2_with_registers)")
    return p


def _block_problems(cfg: ViTConfig, fam: _Family) -> list[str]:
    """HF's own rules for the blocks and heads of `fam`."""
    mt, what, p = fam.model_type, f"HF {fam.model_type}", []
    if fam.dino:
        if cfg.init_values is None:
            p.append(f"init_values=None: {what} always has LayerScale (layer_scale1, layer_scale2)")
        if cfg.num_classes and cfg.pool != "token_mean":
            p.append(f"num_classes={cfg.num_classes} with pool={cfg.pool!r}: {what} has no class-token classifier "
                     f"(its {fam.classifier} reads concat(class token, mean of the patch tokens): "
                     f"pool='token_mean')")
        if cfg.image_size[0] != cfg.image_size[1]:
            p.append(f"image_size {cfg.image_size}: {what} reshapes its position table as a square grid whenever "
                     f"height != width")
        if cfg.swiglu and cfg.mlp_dim % 8:
            p.append(f"a SwiGLU MLP of {cfg.mlp_dim} channels: {what} rounds its SwiGLU width to a multiple of 8")
    if not fam.pooler and cfg.representation_size:
        p.append(f"representation_size: {what} has no pooler (pre-logits layer)")
    if not fam.classifier and cfg.num_classes and not fam.dino:
        p.append(f"num_classes={cfg.num_classes}: HF {mt} has no classifier (export as vit)")
    if fam.pooler and cfg.representation_size and cfg.num_classes:
        p.append("pre_logits together with a head: HF's image classifiers never run the pooler "
                 "(only a features-only base model keeps the pooler as pre-logits)")
    return p


def _mlp_ratio(D: int, M: int) -> float | int:
    """A ratio r with int(D * r) == M (HF's Dinov2 sizes its MLP so)."""
    r = M / D
    for cand in (r, float(np.nextafter(r, np.inf))):
        if int(D * cand) == M:
            return int(cand) if float(cand).is_integer() else cand
    raise ConversionError(f"mlp_dim {M} with embed_dim {D}: no mlp_ratio gives int({D} * ratio) == {M}")


def _dino_hidden(D: int, ratio: float, swiglu: bool) -> int:
    """The MLP width HF's Dinov2 builds: int(D * mlp_ratio); its SwiGLU keeps 2/3 of it, rounded up to a multiple
    of 8 (Dinov2SwiGLUFFN)."""
    h = int(D * ratio)
    return (int(h * 2 / 3) + 7) // 8 * 8 if swiglu else h


def _dino_mlp_ratio(D: int, M: int, swiglu: bool) -> float | int:
    """An mlp_ratio for which HF's Dinov2 builds M MLP channels (an integer ratio when one exists)."""
    if not swiglu:
        return _mlp_ratio(D, M)
    widths = [h for h in range(max(1, (3 * (M - 8)) // 2), (3 * M) // 2 + 3) if _dino_hidden(h, 1, True) == M]
    if not widths:
        raise ConversionError(f"mlp_dim {M}: no mlp_ratio makes HF's Dinov2 build a SwiGLU of {M} channels")
    h = next((h for h in widths if h % D == 0), widths[0])
    return _mlp_ratio(D, h)


def _variant(cfg: ViTConfig, mt: str) -> tuple[str, str]:
    """(head variant, architecture) of the HF model that holds cfg."""
    if mt == "deit" and cfg.dist_token:
        return "teacher", "DeiTForImageClassificationWithTeacher"
    fam = _FAMILIES[mt]
    if fam.dino:  # its classifier reads concat(class token, patch mean): token_mean (num_labels 0: Identity head)
        return ("classifier", fam.classifier) if cfg.pool == "token_mean" else ("model", fam.classes[0])
    if cfg.num_classes and fam.classifier:
        return "classifier", fam.classifier
    return "model", fam.classes[0]


#: model types with an exporter module of their own (file layout only): (module, function, what they are)
_OWN_EXPORTERS = {HF_CLIP_TYPES: (".hf_clip", "export_hf_clip", "CLIP and SigLIP"),
                  HF_BEIT_TYPES: (".hf_beit", "export_hf_beit", "BEiT and data2vec-vision"),
                  HF_DINOV3_TYPES: (".hf_dinov3", "export_hf_dinov3", "DINOv3"),
                  HF_AIMV2_TYPES: (".hf_aimv2", "export_hf_aimv2", "AIMv2")}


def export_hf(cfg: ViTConfig, state: Mapping[str, np.ndarray], layout: str = "file",
              model_type: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Canonical -> (HF state dict, config.json dict) of model type `model_type` (default: hf_model_type(cfg)).

    vit: ViTForImageClassification ('vit.' prefix) with a head, else ViTModel (the pooler when representation_size
    is set). deit: DeiTForImageClassificationWithTeacher for a distillation token (num_labels 0 without a head:
    its Identity heads average the two tokens, the canonical features), DeiTForImageClassification / DeiTModel for
    one register. vit_msn, ijepa: their ForImageClassification with a head, else the base model. dinov2,
    dinov2_with_registers: Dinov2[WithRegisters]ForImageClassification for pool='token_mean' (num_labels 0 without a
    head), else the base model (features). vit_mae: the base model. CLIP, SigLIP and MetaCLIP 2 types:
    shared.convert.hf_clip.export_hf_clip (file layout only). layout='file' is the on-disk / save_pretrained
    naming that every transformers version reads; layout='module' the module names of the installed
    transformers >= 5 (for model.load_state_dict).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'file' or 'module', got {layout!r}")
    mt = model_type or hf_model_type(cfg)
    for types, (module, function, what) in _OWN_EXPORTERS.items():  # the types with an exporter of their own
        if mt in types:
            if layout != "file":
                raise ValueError(f"layout={layout!r}: {what} are exported in the file layout only")
            return getattr(importlib.import_module(module, __package__), function)(cfg, state, mt)
    fam = _FAMILIES.get(mt)
    if fam is None:
        raise ConversionError(f"model_type {mt!r} is not a Hugging Face type vit-suite writes "
                              f"({', '.join(HF_MODEL_TYPES)})")
    check_hf_export(cfg, mt, _export_problems(cfg, fam), state)
    if cfg.resize_kernel != fam.resize_kernel:
        warnings.warn(f"config {cfg.name!r} resamples its table with {cfg.resize_kernel!r}; HF {mt}'s "
                      f"interpolate_pos_encoding uses {fam.resize_kernel!r}: outputs at other image sizes will differ",
                      ConversionWarning, stacklevel=2)
    D = cfg.embed_dim
    variant, arch = _variant(cfg, mt)
    state = dict(state)
    if cfg.num_pos_prefix < fam.pos_prefix:
        # prefix tokens HF positions but the canonical model does not: a zero row each (x + 0 is exact)
        v, n = np.asarray(state["pos_embed"]), cfg.num_pos_prefix
        state["pos_embed"] = np.concatenate([v[:, :n], np.zeros((1, fam.pos_prefix - n, D), v.dtype), v[:, n:]], axis=1)
    pre = fam.base_prefix if variant != "model" else ""
    out = put(key_map(fam, layout, depth=cfg.depth, qkv_bias=cfg.qkv_bias, swiglu=cfg.swiglu,
                      dist=("dist_token" if cfg.dist_token else "reg_token") if mt == "deit" else None,
                      pooler=bool(cfg.representation_size), registers=cfg.reg_tokens > 0,
                      heads=_head_keys(variant) if cfg.num_classes else {}, pre=pre), state)
    if fam.dino:  # HF's Dinov2 always holds a mask token; zeros are its own initial value
        out[pre + "embeddings.mask_token"] = np.zeros((1, D), CANONICAL_DTYPE)
    return out, _hf_config(cfg, fam, arch, variant)


def _hf_config(cfg: ViTConfig, fam: _Family, arch: str, variant: str) -> dict[str, Any]:
    """config.json of `cfg` as HF model type fam.model_type, class `arch`."""
    mt, D, M = fam.model_type, cfg.embed_dim, cfg.mlp_dim
    h, w = cfg.image_size
    conf: dict[str, Any] = {
        "architectures": [arch], "model_type": mt,
        "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "hidden_act": HF_GELU_OUT[cfg.gelu], "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout, "initializer_range": 0.02,
        "layer_norm_eps": cfg.layer_norm_eps, "image_size": h if h == w else [h, w], "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans, "qkv_bias": cfg.qkv_bias,
    }
    if fam.dino:
        conf.update(mlp_ratio=_dino_mlp_ratio(D, M, cfg.swiglu), layerscale_value=cfg.init_values,
                    drop_path_rate=cfg.drop_path, use_swiglu_ffn=cfg.swiglu)
        if mt == "dinov2":
            conf["use_mask_token"] = True
        else:
            conf["num_register_tokens"] = cfg.reg_tokens
    else:
        conf["intermediate_size"] = M
    if fam.pooler:
        conf.update(encoder_stride=cfg.patch_size, pooler_output_size=cfg.representation_size or cfg.embed_dim,
                    pooler_act="tanh")
    if mt == "vit_mae":
        conf["mask_ratio"] = 0.0  # the canonical model: the encoder on every patch
    if variant != "model":  # num_labels from id2label; 0 for a headless DeiT teacher or DINOv2 classifier (Identity)
        conf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)}
        conf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_classes)}
    return conf


# ---------------------------------------------------------------------------- directories

def save_hf_dir(directory: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray],
                overwrite: bool = False, model_type: str | None = None) -> Path:
    """Write config.json + model.safetensors (from_pretrained layout) atomically: a temp dir renamed into place.
    `model_type`: the HF type to write (default: hf_model_type(cfg), see export_hf)."""
    from safetensors.numpy import save_file

    hf_state, conf = export_hf(cfg, state, layout="file", model_type=model_type)

    def write(tmp: Path) -> None:
        save_file({k: np.ascontiguousarray(v) for k, v in hf_state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")

    return write_dir_atomically(directory, write, overwrite=overwrite)


def _index_shards(index_path: Path) -> list[Path]:
    """The shard files a `model.safetensors.index.json` names, each checked to be a plain file name inside the
    model directory: an index naming `../elsewhere` or an absolute path is refused, never followed."""
    index = read_json_file(index_path)
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
        raise InvalidFileError(f"{index_path}: 'weight_map' must map tensor names to shard file names")
    root = index_path.parent.resolve()
    shards = []
    for name in sorted(set(wmap.values())):
        shard = (root / name).resolve()
        if Path(name).is_absolute() or Path(name).name != name or shard.parent != root:
            raise InvalidFileError(f"{index_path}: shard {name!r} is not a file in the model directory {root}; "
                                   f"refusing to read outside it")
        shards.append(shard)
    return shards


def load_hf_dir(directory: str | os.PathLike, image_size=None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a save_pretrained directory (config.json + model.safetensors, sharded or not; pytorch_model.bin with torch)
    of any model type import_hf reads."""
    d = Path(directory)
    cj = d / "config.json"
    if not cj.is_file():
        raise InvalidFileError(f"{d}: no config.json (a Hugging Face model directory needs one)")
    conf = read_json_file(cj)
    if not isinstance(conf, dict):
        raise InvalidFileError(f"{cj}: must be a JSON object, got {type(conf).__name__}")
    state: dict[str, np.ndarray] = {}
    if (d / "model.safetensors").is_file():
        state, _ = read_tensors(d / "model.safetensors", writable=False)
    elif (d / "model.safetensors.index.json").is_file():
        for shard in _index_shards(d / "model.safetensors.index.json"):
            part, _ = read_tensors(shard, writable=False)
            state.update(part)
    elif (d / "pytorch_model.bin").is_file():
        state = flatten_checkpoint(read_torch_checkpoint(d / "pytorch_model.bin"))
    else:
        raise InvalidFileError(f"{d}: no model.safetensors (or index, or pytorch_model.bin)")
    return import_hf(state, conf, source=str(d), image_size=image_size)
