"""Hugging Face CLIP, SigLIP, MetaCLIP 2 and SigLIP 2 vision towers <-> the canonical format.

Model types and architectures (the vision tower only; a text tower is never part of the canonical model):

  clip_vision_model   CLIPVisionModel                 features: post_layernorm(class token); num_classes 0
                      CLIPVisionModelWithProjection   image_embeds: visual_projection(features); num_classes =
                                                      projection_dim
  clip                CLIPModel                       get_image_features: as WithProjection; the text tower,
                                                      text_projection and logit_scale are dropped (ConversionWarning)
                      CLIPForImageClassification      logits: classifier(mean of the patch tokens of the encoder
                                                      output, no post_layernorm)
  siglip_vision_model SiglipVisionModel               pooler_output: the attention-pool head (pool 'map')
                      SiglipVisionModel(vision_use_head=False)  no pooled output in HF: see "features" below
  siglip              SiglipModel                     get_image_features: as SiglipVisionModel; the text tower,
                                                      logit_scale and logit_bias are dropped (ConversionWarning)
                      SiglipForImageClassification    logits: classifier(mean of the post-layernormed tokens)
  metaclip_2_vision_model, metaclip_2
                      MetaClip2VisionModel, MetaClip2VisionModelWithProjection, MetaClip2Model,
                      MetaClip2ForImageClassification: CLIP's structure, keys, defaults and outputs under MetaCLIP 2's
                      class names (read and written as the clip rows above)
  siglip2_vision_model, siglip2
                      Siglip2VisionModel, Siglip2Model, Siglip2ForImageClassification: SigLIP's rows (same keys, head
                      and outputs) with NaFlex embeddings: patch_embedding is a Linear over (ph, pw, C)-flattened
                      patches (keymap.linear_patches <-> the conv kernel), position_embedding has num_patches rows (a
                      square grid, config.json has no image_size) resampled to each image's grid with bilinear
                      antialias: imported with pos_grid = that grid and resize_kernel 'bilinear_antialias' (any
                      image size, also non-square); transformers runs it on flattened patches with
                      pixel_attention_mask and spatial_shapes (shared.convert.sources.siglip2_inputs)

ARCHITECTURES lists these classes per model type (built from _FULL, as the importer names them).

Key mapping (relative to the vision tower; canonical keys on the left):

  CLIP     cls_token (1,1,D)            embeddings.class_embedding (D,)
           patch_embed.proj.weight      embeddings.patch_embedding.weight (no bias: patch_bias=False)
           pos_embed (1,1+N,D)          embeddings.position_embedding.weight (1+N, D)
           norm_pre                     pre_layrnorm (sic)
           norm                         post_layernorm (HF applies it to the pooled class token only; LayerNorm is
                                        per token, so it is the same function for token pooling)
           head.weight / head.bias      visual_projection.weight (no bias: head.bias is zeros, as timm does; export
                                        refuses a non-zero head.bias) -- or classifier.weight / .bias
  SigLIP   patch_embed.proj.{weight,bias}  embeddings.patch_embedding.*;  pos_embed (1,N,D)  position_embedding.weight
           norm                         post_layernorm
           attn_pool.latent             head.probe
           attn_pool.q / attn_pool.kv   head.attention.in_proj_{weight,bias}: rows q (the first D), then k, v (the
                                        last 2D: kv rows k then v, as canonical)
           attn_pool.proj               head.attention.out_proj;  attn_pool.norm  head.layernorm
           attn_pool.mlp.fc1 / fc2      head.mlp.fc1 / fc2
  both     blocks.i.norm1 / norm2       encoder.layers.i.layer_norm1 / layer_norm2
           blocks.i.attn.qkv            encoder.layers.i.self_attn.{q,k,v}_proj, fused in rows q, k, v
           blocks.i.attn.proj           encoder.layers.i.self_attn.out_proj
           blocks.i.mlp.fc1 / fc2       encoder.layers.i.mlp.fc1 / fc2

Layouts: the vision tower's keys carry a 'vision_model.' prefix in every CLIPModel, SiglipModel,
CLIPVisionModelWithProjection and *ForImageClassification file, and in CLIPVisionModel / SiglipVisionModel files of
transformers < 5 and the hub ("file" layout). transformers >= 5 builds CLIPVisionModel / SiglipVisionModel without
that level and its `save_pretrained` writes the keys unprefixed ("module" layout); its `from_pretrained` reads both
(a PrefixChange conversion rule). Import reads both; export writes "file" by default (what every transformers
version loads) or "module" (for the installed transformers' `load_state_dict`). Old checkpoints' persistent
`embeddings.position_ids` buffer (arange) is dropped; a non-arange one is refused.

Facts from config.json (for 'clip' / 'siglip': its `vision_config`), with transformers' own class defaults where a
key is absent (that default is what transformers itself builds, so it is not a guess): num_attention_heads (12),
hidden_act (CLIP 'quick_gelu', SigLIP 'gelu_pytorch_tanh'), layer_norm_eps (CLIP 1e-5, SigLIP 1e-6), image_size
(224), attention_dropout (0), vision_use_head (SigLIP, True). Sizes come from the weights and are checked against
config.json where it states them. hidden_act: quick_gelu -> 'quick', gelu -> 'erf', gelu_pytorch_tanh / gelu_new /
gelu_fast -> 'tanh'; anything else is refused. Position tables are resampled with 'bicubic' (HF
interpolate_pos_encoding: bicubic, align_corners=False, no antialias).

Decisions:
  * A SigLIP tower without its head (vision_use_head=False) has no pooled output in HF (pooler_output is None).
    The canonical model of it is pool='mean' with features only: `norm` equals HF's last_hidden_state and the
    features (pre_logits = logits) are the mean of those tokens, exactly what SiglipForImageClassification (and
    timm's SigLIP with global_pool='avg') feeds its classifier. Export writes such a model back as
    vision_use_head=False.
  * A *ForImageClassification checkpoint's unused parts are dropped with a ConversionWarning: CLIP's post_layernorm
    (the classifier reads the encoder output), SigLIP's head.* (the classifier mean-pools). Export writes CLIP's
    unused post_layernorm as the identity (ones, zeros) so from_pretrained finds every key, and SigLIP's with
    vision_use_head=False.
  * Exporting to 'clip' / 'siglip' (CLIPModel, SiglipModel) writes the vision tower (and visual_projection) only:
    transformers initialises the text tower, text_projection and logit scale/bias randomly and says so. The
    text_config written is `text_config` when given, else {} (transformers' defaults); a ConversionWarning says so.
"""
from __future__ import annotations

import re
import warnings
from functools import partial
from typing import Any, Mapping

import numpy as np

from .. import limits as L
from ..config import ViTConfig, is_int, shown
from ..errors import ConfigError, ConversionError, ConversionWarning, MismatchError, MissingFactsError
from ..posemb import resample_pos_embed
from ..weights import CANONICAL_DTYPE, validate_state
from .hfconfig import ConfigFacts
from .common import HF_GELU, HF_GELU_OUT, block_ids, check_numbering, family_refusals, strip_prefixes
from .keymap import FUSE, Entry, Reshape, Rows, Zeros, expand, linear_patches, put, take

#: the full model's type (a vision tower and a text tower) -> (its vision tower's structure, the prefix of its
#: transformers class names); its vision tower alone is model type f"{type}_vision_model"
_FULL = {"clip": ("clip", "CLIP"), "siglip": ("siglip", "Siglip"), "metaclip_2": ("clip", "MetaClip2"),
         "siglip2": ("siglip", "Siglip2")}
MODEL_TYPES = tuple(t for full in _FULL for t in (full, f"{full}_vision_model"))
RESIZE_KERNEL = "bicubic"  # HF interpolate_pos_encoding
_FAMILY = {t: _FULL[t.removesuffix("_vision_model")][0] for t in MODEL_TYPES}
#: SigLIP 2 (NaFlex): SigLIP's tower with a Linear over (ph, pw, C)-flattened patches and a learned table of
#: num_patches rows (a square grid) resampled to each image's grid with F.interpolate(bilinear, antialias=True)
NAFLEX_TYPES = ("siglip2", "siglip2_vision_model")
NAFLEX_RESIZE_KERNEL = "bilinear_antialias"  # Siglip2VisionEmbeddings.resize_positional_embeddings
NAFLEX_DEFAULT_PATCHES = 256  # Siglip2VisionConfig.num_patches


def _full_type(model_type: str) -> str:
    """The full model's type of a model type (clip_vision_model -> clip)."""
    return model_type.removesuffix("_vision_model")


def _class(model_type: str, kind: str) -> str:
    """The transformers class of `kind` ('VisionModel', 'VisionModelWithProjection', 'Model',
    'ForImageClassification') in model_type's family: ('metaclip_2', 'Model') -> 'MetaClip2Model'."""
    return _FULL[_full_type(model_type)][1] + kind


#: model type -> the transformers classes read and written (the architectures config.json names)
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    t: tuple(_class(t, k) for k in (
        ("Model", "ForImageClassification") if t in _FULL
        else ("VisionModel", "VisionModelWithProjection") if _FAMILY[t] == "clip" else ("VisionModel",)))
    for t in MODEL_TYPES}
#: transformers' CLIPVisionConfig / SiglipVisionConfig defaults (what transformers builds when a key is absent;
#: MetaClip2VisionConfig's are CLIP's)
_DEFAULTS = {
    "clip": {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "image_size": 224,
             "attention_dropout": 0.0},
    "siglip": {"num_attention_heads": 12, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
               "image_size": 224, "attention_dropout": 0.0, "vision_use_head": True},
    # Siglip2VisionConfig: no image_size (any size; the table has num_patches rows), patch size and channels stated
    # (its Linear's P*P*C inputs do not tell them apart)
    "siglip2": {"num_attention_heads": 12, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
                "attention_dropout": 0.0, "vision_use_head": True, "num_patches": NAFLEX_DEFAULT_PATCHES,
                "patch_size": 16, "num_channels": 3},
}
CLIP_DEFAULT_PROJECTION_DIM = 512
TOWER = "vision_model."
#: top-level keys of a full CLIPModel / SiglipModel that belong to the text side
_TEXT = re.compile(r"^(text_model\.|text_projection\.|logit_scale$|logit_bias$)")

# Per-block names, canonical -> HF (relative to encoder.layers.{i}.); identical in CLIP and SigLIP.
_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
          "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_BLOCK_PREFIX = "encoder.layers.{i}."
_PATCH = "embeddings.patch_embedding."
_POS = "embeddings.position_embedding.weight"
_CLS = "embeddings.class_embedding"
_POS_IDS = "embeddings.position_ids"
_IN_PROJ = "head.attention.in_proj_"
_HEAD_PREFIX = "head."


def _renames(family: str, cfg_like: Mapping[str, Any]) -> dict[str, str]:
    """canonical key -> HF key (relative to the vision tower) for every tensor that only changes its name. The
    reshaped (cls_token, pos_embed), fused (qkv) and split (in_proj -> q, kv) ones are handled by the callers.
    cfg_like: depth, norm_pre, final_norm, pool (a ViTConfig's fields or the facts read from a checkpoint)."""
    r: dict[str, str] = {"patch_embed.proj.weight": _PATCH + "weight"}
    if family == "siglip":
        r["patch_embed.proj.bias"] = _PATCH + "bias"
    if cfg_like["norm_pre"]:
        r.update({"norm_pre.weight": "pre_layrnorm.weight", "norm_pre.bias": "pre_layrnorm.bias"})
    for i in range(cfg_like["depth"]):
        b = _BLOCK_PREFIX.format(i=i)
        for canon, hk in _BLOCK.items():
            for part in ("weight", "bias"):
                r[f"blocks.{i}.{canon}.{part}"] = f"{b}{hk}.{part}"
    if cfg_like["final_norm"]:
        r.update({"norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"})
    if cfg_like["pool"] == "map":
        r["attn_pool.latent"] = "head.probe"
        for canon, hk in (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"),
                          ("mlp.fc2", "mlp.fc2")):
            for part in ("weight", "bias"):
                r[f"attn_pool.{canon}.{part}"] = f"head.{hk}.{part}"
    return r


# ----------------------------------------------------------------------------- config.json facts
def _vision_config(hf_config: Mapping[str, Any], model_type: str, source: str) -> tuple[Mapping[str, Any], str]:
    """The dict that describes the vision tower (config.json itself, or its vision_config) and its name in messages."""
    if model_type not in _FULL:
        return hf_config, "config.json"
    vc = hf_config.get("vision_config")
    if vc is None:
        return {}, "config.json vision_config"
    if not isinstance(vc, Mapping):
        raise ConfigError(f"{source}: config.json 'vision_config' must be an object, got {shown(vc)}")
    inner = vc.get("model_type")
    if inner is not None and inner != f"{model_type}_vision_model":
        raise ConversionError(f"{source}: config.json vision_config has model_type {shown(inner)}; a "
                              f"{model_type!r} model's vision tower is {model_type + '_vision_model'!r}")
    return vc, "config.json vision_config"


# ----------------------------------------------------------------------------- the key map
def key_map(family: str, *, depth: int, width: int, positions: int, final_norm: bool, pool: str,
            head: str | None = None, classes: int = 0, pre: str = TOWER,
            linear: tuple[int, int] | None = None) -> list[Entry]:
    """(HF keys, canonical keys, transform) of a vision tower whose keys sit under `pre`, and of its head ('projection':
    visual_projection, its canonical bias zeros; 'classifier'; None). positions: the rows of the position table.
    linear=(patch, channels): the patch embedding is a Linear over (ph, pw, C)-flattened patches (SigLIP 2)."""
    D = width
    like = {"depth": depth, "norm_pre": family == "clip", "final_norm": final_norm, "pool": pool}
    m = [Entry(pre + hk, canon) for canon, hk in _renames(family, like).items()]
    if linear is not None:
        m = [Entry(e.src, e.dst, linear_patches(D, *linear)) if e.dst == ("patch_embed.proj.weight",) else e
             for e in m]
    if family == "clip":
        m.append(Entry(pre + _CLS, "cls_token", Reshape((1, 1, D), (D,))))
    m.append(Entry(pre + _POS, "pos_embed", Reshape((1, positions, D), (positions, D))))
    m += expand([Entry(tuple(f"{pre}{_BLOCK_PREFIX}{n}.{part}" for n in _QKV), f"blocks.{{i}}.attn.qkv.{part}", FUSE)
                 for part in ("weight", "bias")], depth)  # rows: q, k, v
    if pool == "map":  # in_proj rows: q (the first D), then k, v (canonical kv)
        m += [Entry(pre + _IN_PROJ + part, (f"attn_pool.q.{part}", f"attn_pool.kv.{part}"), Rows((D, 2 * D)))
              for part in ("weight", "bias")]
    if head == "projection":
        m += [Entry("visual_projection.weight", "head.weight"), Entry((), "head.bias", Zeros((classes,)))]
    elif head == "classifier":
        m += [Entry("classifier.weight", "head.weight"), Entry("classifier.bias", "head.bias")]
    return m


# ----------------------------------------------------------------------------- import
def import_hf_clip(state: Mapping[str, Any], hf_config: Mapping[str, Any], source: str = "<hf checkpoint>",
                   image_size=None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """HF CLIP / SigLIP state dict (NumPy arrays) + its config.json dict -> (ViTConfig, canonical float32 state).

    The vision tower of any of the architectures in the module docstring, in either key layout; image_size
    (optional) resamples the position table to another input size, as HF's interpolate_pos_encoding does.
    """
    if not isinstance(hf_config, Mapping):
        raise MissingFactsError(f"{source}: a Hugging Face CLIP / SigLIP checkpoint needs its config.json "
                                f"(model_type, num_attention_heads, hidden_act, layer_norm_eps ...)")
    mt = hf_config.get("model_type")
    if mt not in MODEL_TYPES:
        raise ConversionError(f"{source}: model_type {shown(mt)} is not a CLIP or SigLIP model (expected one of "
                              f"{', '.join(MODEL_TYPES)})")
    family, naflex = _FAMILY[mt], mt in NAFLEX_TYPES
    vconf, conf_name = _vision_config(hf_config, mt, source)
    facts = ConfigFacts(vconf, _DEFAULTS["siglip2" if naflex else family], source, f"{source}: {conf_name}")
    st, pre = _tower(state, mt, source)
    f = _sizes(facts, st, pre, vconf, conf_name, source, naflex=naflex)
    arch, pool, final_norm, head = _head(mt, facts, st, pre, conf_name, source)
    K = int(np.shape(st["visual_projection.weight"])[0]) if head == "projection" else 0
    T = int(np.shape(st[pre + _POS])[0]) if np.ndim(st.get(pre + _POS)) == 2 else -1
    out = take(key_map(family, depth=f["depth"], width=f["D"], positions=T, final_norm=final_norm, pool=pool,
                       head=head, classes=K, pre=pre, linear=(f["P"], f["C"]) if naflex else None), st, source)
    K = int(out["head.weight"].shape[0]) if "head.weight" in out else 0
    if head == "projection":
        pd = (hf_config if mt in _FULL else vconf).get("projection_dim")
        if pd is not None and pd != K:
            raise MismatchError(source, [f"config.json disagrees with the weights: projection_dim {pd!r}, "
                                         f"visual_projection.weight has {K} rows"])
    img, P, n_pre = f["img"], f["P"], 1 if family == "clip" else 0
    g = img // P
    if T != n_pre + g * g:  # the position table's grid
        raise MismatchError(source, [f"{pre + _POS!r} has {T} rows; image_size {img} with patch_size {P} needs "
                                     f"{n_pre + g * g}{' (the class token, then the patches)' if n_pre else ''}"])
    name = hf_config.get("_name_or_path")
    name = name.replace("/", "_") if isinstance(name, str) and name else f"hf_{_full_type(mt)}"
    # SigLIP 2 keeps its table at its grid and resamples it per image (bilinear, antialias), as transformers does
    table = dict(pos_grid=(g, g), resize_kernel=NAFLEX_RESIZE_KERNEL) if naflex else dict(resize_kernel=RESIZE_KERNEL)
    try:
        cfg = ViTConfig(
            name=name, image_size=(img, img) if image_size is None else image_size, in_chans=f["C"], patch_size=P,
            patch_bias=family == "siglip", embed_dim=f["D"], depth=f["depth"], num_heads=f["H"], mlp_dim=f["M"],
            qkv_bias=True, class_token="learned" if family == "clip" else "none", pool=pool, pos_embed="learned",
            **table, gelu=HF_GELU[f["act"]], layer_norm_eps=f["eps"], norm_pre=family == "clip",
            final_norm=final_norm, num_classes=K, attn_dropout=f["attn_dropout"],
            notes=f"imported from Hugging Face {arch} ({mt}) {source}")
    except ConfigError as e:
        raise ConversionError(f"{source}: the imported model is not a valid ViTConfig: {e}") from None
    if cfg.table_grid != (g, g):
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], (g, g), cfg.grid, n_pre, cfg.resize_kernel)
    validate_state(cfg, out, source=source)
    return cfg, out


def _tower(state: Mapping[str, Any], mt: str, source: str) -> tuple[dict[str, Any], str]:
    """(the checkpoint's keys without a wrapper prefix, the text tower, or a position_ids buffer; the vision tower's
    prefix in them: 'vision_model.' or '')."""
    st = strip_prefixes(state)
    dropped_text = sorted(k for k in st if _TEXT.match(k))
    if dropped_text:
        if mt not in _FULL:
            raise MismatchError(source, [f"unexpected key {dropped_text[0]!r}: a text tower in a {mt!r} checkpoint "
                                         f"(text keys belong to model_type {_full_type(mt)!r})"])
        for k in dropped_text:
            st.pop(k)
        warnings.warn(f"{source}: dropped the text tower ({len(dropped_text)} tensors: {dropped_text[0]!r} ...): the "
                      f"canonical model is the vision tower only", ConversionWarning, stacklevel=3)
    prefixed = any(k.startswith(TOWER) for k in st)
    if mt in _FULL and not prefixed:
        raise ConversionError(f"{source}: a {mt!r} checkpoint keeps its vision tower under 'vision_model.'; no such "
                              f"key here")
    pre = TOWER if prefixed else ""
    if pre + _PATCH + "weight" not in st:
        family = _FAMILY[mt]
        hint = " (this looks like a timm checkpoint: use --from timm)" if "patch_embed.proj.weight" in st else ""
        raise ConversionError(f"{source}: not a Hugging Face {family.upper() if family == 'clip' else 'SigLIP'} vision "
                              f"tower: no '{pre}{_PATCH}weight'{hint}")
    if pre + _POS_IDS in st:
        ids = np.asarray(st.pop(pre + _POS_IDS))
        if ids.size and not np.array_equal(ids.reshape(-1), np.arange(ids.size)):
            raise MismatchError(source, [f"key {pre + _POS_IDS!r}: a persistent position_ids buffer that is not "
                                         f"0..{ids.size - 1}: positions are permuted, which HF models no longer "
                                         f"support"])
    return st, pre


def _sizes(facts: ConfigFacts, st: Mapping[str, Any], pre: str, vconf: Mapping[str, Any], conf_name: str,
           source: str, naflex: bool = False) -> dict[str, Any]:
    """The tower's numerics (config.json) and sizes (the weights, checked against config.json)."""
    where = facts.where
    f: dict[str, Any] = {"H": facts.as_int("num_attention_heads", hi=L.MAX_HEADS), "act": facts.as_str("hidden_act")}
    if f["act"] not in HF_GELU:
        raise ConversionError(f"{where}: hidden_act {f['act']!r} is not a GELU the canonical model supports "
                              f"(quick_gelu -> quick; gelu -> erf; gelu_pytorch_tanh / gelu_new / gelu_fast -> tanh)")
    f["eps"] = facts.as_real("layer_norm_eps", 0.0, 1.0, lo_open=True)
    f["attn_dropout"] = facts.as_real("attention_dropout", 0.0, 1.0)
    if naflex:
        return {**f, **_naflex_sizes(facts, st, pre, source)}
    img_v = facts.get("image_size")
    if not (is_int(img_v) and 1 <= img_v <= L.MAX_IMAGE_SIDE):
        raise ConfigError(f"{where}: 'image_size' must be an int in [1, {L.MAX_IMAGE_SIDE}] (HF CLIP and SigLIP "
                          f"towers are square), got {shown(img_v)}")
    f["img"] = int(img_v)
    pw = np.shape(st[pre + _PATCH + "weight"])
    if len(pw) != 4 or pw[2] != pw[3]:
        raise MismatchError(source, [f"key {pre}{_PATCH}weight: shape {tuple(pw)}; expected (D, C, P, P)"])
    D, C, P = int(pw[0]), int(pw[1]), int(pw[2])
    depth = check_numbering(block_ids(st, pre + _BLOCK_PREFIX), source)
    fc1 = pre + _BLOCK_PREFIX.format(i=0) + "mlp.fc1.weight"
    if fc1 not in st:
        raise MismatchError(source, [f"missing key {fc1!r}"])
    M = int(np.shape(st[fc1])[0])
    file_vals = {"hidden_size": D, "num_channels": C, "patch_size": P, "num_hidden_layers": depth,
                 "intermediate_size": M}
    clash = [f"{k}: {conf_name} {vconf[k]!r}, weights {v!r}" for k, v in file_vals.items()
             if vconf.get(k) is not None and vconf[k] != v]
    if clash:
        raise MismatchError(source, ["config.json disagrees with the weights: " + c for c in clash])
    if D % f["H"]:
        raise ConversionError(f"{where}: hidden_size {D} is not divisible by num_attention_heads {f['H']}")
    if f["img"] % P:
        raise ConversionError(f"{where}: image_size {f['img']} is not divisible by patch_size {P}: HF drops the "
                              f"remainder pixels, the canonical model needs whole patches")
    return {**f, "D": D, "C": C, "P": P, "depth": depth, "M": M}


def _naflex_sizes(facts: ConfigFacts, st: Mapping[str, Any], pre: str, source: str) -> dict[str, Any]:
    """A SigLIP 2 tower's sizes: patch size and channels from config.json (its Linear's P*P*C inputs do not tell them
    apart), the table's square grid from num_patches, the rest from the weights."""
    where = facts.where
    P, C = facts.as_int("patch_size", hi=L.MAX_PATCH), facts.as_int("num_channels", hi=L.MAX_CHANNELS)
    n = facts.as_int("num_patches", hi=L.MAX_IMAGE_SIDE ** 2)
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ConversionError(f"{where}: num_patches {n} is not a square: transformers reshapes the table to "
                              f"int(sqrt({n}))^2 rows")
    pw = np.shape(st[pre + _PATCH + "weight"])
    if len(pw) != 2 or pw[1] != P * P * C:
        raise MismatchError(source, [f"key {pre}{_PATCH}weight: shape {tuple(pw)}; expected (D, {P * P * C}) (a "
                                     f"Linear over {P}x{P} patches of {C} channels)"])
    D = int(pw[0])
    depth = check_numbering(block_ids(st, pre + _BLOCK_PREFIX), source)
    fc1 = pre + _BLOCK_PREFIX.format(i=0) + "mlp.fc1.weight"
    if fc1 not in st:
        raise MismatchError(source, [f"missing key {fc1!r}"])
    M = int(np.shape(st[fc1])[0])
    clash = [f"{k}: {where} {facts.get(k)!r}, weights {v!r}" for k, v in
             {"hidden_size": D, "num_hidden_layers": depth, "intermediate_size": M}.items()
             if facts.get(k) is not None and facts.get(k) != v]
    if clash:
        raise MismatchError(source, ["config.json disagrees with the weights: " + c for c in clash])
    if D % facts.as_int("num_attention_heads", hi=L.MAX_HEADS):
        raise ConversionError(f"{where}: hidden_size {D} is not divisible by num_attention_heads")
    return {"D": D, "C": C, "P": P, "depth": depth, "M": M, "img": g * P}


def _head(mt: str, facts: ConfigFacts, st: dict[str, Any], pre: str, conf_name: str,
          source: str) -> tuple[str, str, bool, str | None]:
    """(architecture, pool, final_norm, head: 'projection' | 'classifier' | None) the keys and config.json show;
    the tensors that architecture never runs are dropped from `st` with a ConversionWarning."""
    family, full = _FAMILY[mt], mt in _FULL  # a full model (vision_config), not a vision tower alone
    has_proj, has_cls = "visual_projection.weight" in st, "classifier.weight" in st
    has_map = any(k.startswith(pre + _HEAD_PREFIX) for k in st)
    problems: list[str] = []
    dropped: list[str] = []

    def cls(kind: str) -> str:
        return _class(mt, kind)

    if has_cls and not full:
        problems.append(f"unexpected key 'classifier.weight' in a {mt!r} checkpoint: a classifier is "
                        f"{cls('ForImageClassification')}, model_type {_full_type(mt)!r}")
        has_cls = False
        st.pop("classifier.weight")
        st.pop("classifier.bias", None)
    if has_proj and has_cls:
        problems.append("unexpected key 'classifier.weight' next to 'visual_projection.weight': no HF CLIP "
                        "architecture has both")
    if family == "clip":
        if has_cls:  # CLIPForImageClassification: mean of the encoder's patch tokens, post_layernorm unused
            arch, pool, final_norm = cls("ForImageClassification"), "mean", False
            dropped += [pre + k for k in ("post_layernorm.weight", "post_layernorm.bias") if pre + k in st]
        else:
            arch = cls(("Model" if full else "VisionModelWithProjection") if has_proj else "VisionModel")
            pool, final_norm = "token", True
            if full and not has_proj:
                problems.append(f"missing key 'visual_projection.weight' (a {cls('Model')} projects its image "
                                f"features)")
    else:
        if has_proj:
            problems.append("unexpected key 'visual_projection.weight': SigLIP has no visual projection")
        use_head = facts.as_bool("vision_use_head")
        final_norm = True
        if has_cls:  # SiglipForImageClassification: mean of the post-layernormed tokens, head.* unused
            arch, pool = cls("ForImageClassification"), "mean"
            dropped += [k for k in st if k.startswith(pre + _HEAD_PREFIX)]
        elif use_head:
            arch, pool = cls("Model" if full else "VisionModel"), "map"
            if not has_map:
                problems.append(f"missing key '{pre}head.probe' and the rest of the attention-pool head "
                                f"(vision_use_head is true in {conf_name})")
        else:
            arch, pool = cls("Model" if full else "VisionModel"), "mean"
            if has_map:
                problems.append(f"unexpected key '{pre}head.probe' (and the attention-pool head): "
                                f"vision_use_head is false in {conf_name}")
    for k in dropped:
        st.pop(k)
    if dropped:
        why = (f"{arch} classifies the mean of the encoder's patch tokens and never runs post_layernorm"
               if family == "clip" else
               f"{arch} classifies the mean of the tokens and never runs the attention-pool head")
        warnings.warn(f"{source}: dropped {len(dropped)} unused tensors ({dropped[0]!r} ...): {why}",
                      ConversionWarning, stacklevel=3)
    if problems:
        raise MismatchError(source, problems)
    head = "classifier" if has_cls else "projection" if has_proj and family == "clip" else None
    return arch, pool, final_norm, head


# ----------------------------------------------------------------------------- export
def _architecture(cfg: ViTConfig, model_type: str) -> tuple[str | None, list[str]]:
    """The HF architecture `cfg` becomes under `model_type`, or None and every reason it cannot be one."""
    family = _FAMILY[model_type]
    # the family options: the pools (map, token_mean), CLIP's norm_pre and bias-free patches are the class's questions
    p = family_refusals(cfg, f"HF {family}", supports=("QuickGELU", "attention-pool", "token_mean") + (
        ("norm_pre", "patch_bias=False") if family == "clip" else ()), say={
        "without a position row": f"pos_prefix_tokens={cfg.pos_prefix_tokens}: every HF {family} token has a "
                                  f"position row",
        "distillation": f"dist_token: HF {family} has no distillation token",
        "register": f"reg_tokens={cfg.reg_tokens}: HF {family} has no register tokens",
        "qk-norm": f"qk_norm: HF {family} attention has no q/k norm",
        "LayerScale": f"init_values={cfg.init_values} (LayerScale): HF {family} blocks have no ls1/ls2",
        "SwiGLU": f"a SwiGLU MLP: HF {family}'s MLP is Linear-GELU-Linear",
        "norm_pre": "norm_pre: HF SigLIP has no norm before the blocks",
        "patch_bias=False": "patch_bias=False: HF SigLIP's patch embedding has a bias"})
    naflex = model_type in NAFLEX_TYPES
    if cfg.pos_embed != "learned":
        p.append(f"pos_embed={cfg.pos_embed!r}: HF {family} has a learned position table only")
    elif naflex:
        th, tw = cfg.table_grid
        if th != tw:
            p.append(f"the table's grid {th}x{tw}: HF SigLIP 2 stores a square grid (num_patches rows)")
        if cfg.table_grid != cfg.grid and cfg.resize_kernel != NAFLEX_RESIZE_KERNEL:
            p.append(f"resize_kernel {cfg.resize_kernel!r} with the table at {cfg.table_grid} and the image grid "
                     f"{cfg.grid}: HF SigLIP 2 resamples with {NAFLEX_RESIZE_KERNEL}")
    elif cfg.num_pos_prefix == cfg.num_prefix_tokens and cfg.table_grid != cfg.grid:
        p.append(f"the table is stored at grid {cfg.table_grid}, the image grid is {cfg.grid}: HF stores the table "
                 f"at image_size (resample it first, e.g. re-import with image_size)")
    if cfg.image_size[0] != cfg.image_size[1] and not naflex:
        p.append(f"image_size {cfg.image_size}: HF {family} towers take square images (one int image_size)")
    if cfg.attn_value_skip:
        p.append("attn_value_skip: HF attention has no value skip")
    if cfg.attn_dim is not None and cfg.attn_dim != cfg.embed_dim:
        p.append(f"attn_dim {cfg.attn_dim} != embed_dim {cfg.embed_dim}: HF keeps one width")
    if cfg.qk_scale is not None and cfg.qk_scale != cfg.head_dim ** -0.5:
        p.append(f"qk_scale={cfg.qk_scale}: HF scales by head_dim**-0.5")
    if not cfg.qkv_bias:
        p.append("qkv_bias=False: HF q/k/v projections have biases")
    if cfg.fc_norm:
        p.append("fc_norm: HF has no norm after pooling")
    if cfg.representation_size:
        p.append(f"representation_size={cfg.representation_size}: HF {family} has no pre-logits layer")
    if cfg.output_softmax:
        p.append("output_softmax: HF models return logits / embeddings")
    if cfg.drop_path:
        p.append(f"drop_path={cfg.drop_path}: HF {family} has no stochastic depth")
    if cfg.dropout:
        p.append(f"dropout={cfg.dropout}: HF {family} has no hidden dropout (only attention_dropout)")
    arch = (_clip_class if family == "clip" else _siglip_class)(cfg, model_type, p)
    return (None if p else arch), p


def _clip_class(cfg: ViTConfig, model_type: str, p: list[str]) -> str | None:
    """The CLIP (or MetaCLIP 2) class that holds cfg under model_type, or None with the reasons added to `p`."""
    full_type, vision_type = _full_type(model_type), _full_type(model_type) + "_vision_model"
    full, arch, cls = model_type == full_type, None, partial(_class, model_type)
    if cfg.class_token != "learned":
        p.append(f"class_token={cfg.class_token!r}: HF CLIP has a learned class embedding")
    if not cfg.norm_pre:
        p.append("norm_pre=False: HF CLIP always applies pre_layrnorm")
    if cfg.patch_bias:
        p.append("patch_bias=True: HF CLIP's patch embedding has no bias")
    if cfg.pool == "token" and cfg.final_norm:
        if not full:
            arch = cls("VisionModelWithProjection" if cfg.num_classes else "VisionModel")
        elif cfg.num_classes:
            arch = cls("Model")
        else:
            p.append(f"num_classes=0: a {cls('Model')} always has a visual_projection (export features-only as "
                     f"model_type '{vision_type}', a {cls('VisionModel')})")
    elif cfg.pool == "mean" and not cfg.final_norm and cfg.num_classes and full:
        arch = cls("ForImageClassification")
    else:
        p.append(f"pool={cfg.pool!r}, final_norm={cfg.final_norm}, num_classes={cfg.num_classes}: HF "
                 f"{cls('')} pools the post-layernormed class token ({cls('VisionModel')}[WithProjection], "
                 f"{cls('Model')}) or, in {cls('ForImageClassification')} (model_type '{full_type}'), the mean "
                 f"of the patch tokens without a final norm into a classifier")
    return arch


def _siglip_class(cfg: ViTConfig, model_type: str, p: list[str]) -> str | None:
    """The SigLIP class that holds cfg under model_type, or None with the reasons added to `p`."""
    full_type = _full_type(model_type)
    full, arch, cls = model_type == full_type, None, partial(_class, model_type)
    if cfg.class_token != "none":
        p.append(f"class_token={cfg.class_token!r}: HF SigLIP has no class token")
    if not cfg.final_norm:
        p.append("final_norm=False: HF SigLIP always applies post_layernorm")
    if cfg.pool in ("map", "mean") and not cfg.num_classes:
        arch = cls("Model" if full else "VisionModel")
    elif cfg.pool == "mean" and full:
        arch = cls("ForImageClassification")
    elif cfg.pool == "mean":
        p.append(f"num_classes={cfg.num_classes}: a SigLIP classifier is a {cls('ForImageClassification')} "
                 f"(export with model_type '{full_type}')")
    else:
        p.append(f"pool={cfg.pool!r}, num_classes={cfg.num_classes}: HF SigLIP pools with its attention head "
                 f"(no classifier after it) or, in SiglipForImageClassification, the mean of the tokens")
    return arch


def export_hf_clip(cfg: ViTConfig, state: Mapping[str, np.ndarray], model_type: str, layout: str = "file",
                   text_config: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Canonical -> (HF state dict, config.json dict) for `model_type` (one of MODEL_TYPES).

    The architecture follows from the config (see the module docstring): clip_vision_model -> CLIPVisionModel
    (features) or CLIPVisionModelWithProjection (num_classes = projection_dim, head.bias zeros); clip -> CLIPModel or
    CLIPForImageClassification (pool 'mean', no final norm); siglip_vision_model -> SiglipVisionModel (pool 'map', or
    'mean' as vision_use_head=False); siglip -> SiglipModel, or SiglipForImageClassification (pool 'mean' with a
    head). layout 'file' keeps the 'vision_model.' level every transformers version loads; 'module' drops it for
    CLIPVisionModel / SiglipVisionModel (the installed transformers >= 5 module names, for load_state_dict).
    text_config (CLIPModel / SiglipModel only) is written as the text tower's config (default {}: transformers'
    defaults); the text weights are never written.
    """
    if model_type not in MODEL_TYPES:
        raise ConversionError(f"model_type {shown(model_type)} is not a CLIP or SigLIP model type (one of "
                              f"{', '.join(MODEL_TYPES)})")
    if layout not in ("file", "module"):
        raise ValueError(f"layout must be 'file' or 'module', got {layout!r}")
    family = _FAMILY[model_type]
    arch, problems = _architecture(cfg, model_type)
    if cfg.num_classes and cfg.pool == "token" and family == "clip" and "head.bias" in state:
        bias = np.asarray(state["head.bias"])
        if np.any(bias != 0):
            problems.append(f"head.bias is not zero (max |bias| {float(np.max(np.abs(bias))):.3g}): CLIP's "
                            f"visual_projection has no bias")
    if problems:
        raise ConversionError(f"config {cfg.name!r} cannot be expressed as a Hugging Face {model_type!r} model:\n  "
                              + "\n  ".join(problems))
    if text_config is not None and model_type not in _FULL:
        raise ValueError(f"text_config applies to model_type {' / '.join(map(repr, _FULL))} only, not "
                         f"{model_type!r}")
    validate_state(cfg, state, source="<canonical state>")
    naflex = model_type in NAFLEX_TYPES
    kernel = NAFLEX_RESIZE_KERNEL if naflex else RESIZE_KERNEL
    if cfg.resize_kernel != kernel:
        warnings.warn(f"config {cfg.name!r} resamples its table with {cfg.resize_kernel!r}; HF {model_type} "
                      f"resamples with {kernel}: outputs at other image sizes will differ",
                      ConversionWarning, stacklevel=2)
    D = cfg.embed_dim
    pre = "" if layout == "module" and arch == _class(model_type, "VisionModel") else TOWER
    head = None if not cfg.num_classes else "classifier" if arch.endswith("ForImageClassification") else "projection"
    rows = cfg.num_pos_prefix + cfg.table_grid[0] * cfg.table_grid[1]
    out = put(key_map(family, depth=cfg.depth, width=D, positions=rows, final_norm=cfg.final_norm, pool=cfg.pool,
                      head=head, classes=cfg.num_classes, pre=pre,
                      linear=(cfg.patch_size, cfg.in_chans) if naflex else None), state)
    if family == "clip" and not cfg.final_norm:  # CLIPForImageClassification never runs it: the identity, so
        out[pre + "post_layernorm.weight"] = np.ones(D, CANONICAL_DTYPE)  # every key is there
        out[pre + "post_layernorm.bias"] = np.zeros(D, CANONICAL_DTYPE)

    vision: dict[str, Any] = {
        "model_type": f"{_full_type(model_type)}_vision_model",
        "hidden_size": D, "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads, "num_channels": cfg.in_chans, "image_size": cfg.image_size[0],
        "patch_size": cfg.patch_size, "hidden_act": HF_GELU_OUT[cfg.gelu], "layer_norm_eps": cfg.layer_norm_eps,
        "attention_dropout": cfg.attn_dropout,
    }
    if naflex:  # any image size: the table's rows instead of image_size
        del vision["image_size"]
        vision["num_patches"] = cfg.table_grid[0] * cfg.table_grid[1]
    if family == "clip":
        vision["projection_dim"] = cfg.num_classes if arch == _class(model_type, "VisionModelWithProjection") else \
            CLIP_DEFAULT_PROJECTION_DIM
    else:
        vision["vision_use_head"] = cfg.pool == "map"
    if model_type not in _FULL:
        conf = {"architectures": [arch], **vision}
    else:
        conf = {"architectures": [arch], "model_type": model_type, "vision_config": vision,
                "text_config": dict(text_config or {})}
        if family == "clip" and arch == _class(model_type, "Model"):
            conf["projection_dim"] = cfg.num_classes
        if not arch.endswith("ForImageClassification"):
            warnings.warn(f"config {cfg.name!r} as a {arch}: only the vision tower is written; transformers "
                          f"initialises the text tower{' and text_projection' if family == 'clip' else ''} randomly "
                          f"on loading", ConversionWarning, stacklevel=2)
    if arch.endswith("ForImageClassification"):
        conf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)}
        conf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_classes)}
    return out, conf
