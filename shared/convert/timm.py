"""timm VisionTransformer checkpoints <-> the canonical format (canonical keys ARE timm's keys).

What a timm state dict determines, and so is read from it (the file wins over a preset):
  embed_dim, in_chans, patch size (conv kernel), depth, mlp_dim, qkv_bias (bias present),
  class token (cls_token present), position table (pos_embed present) and its grid (token count,
  with an image size to tell non-square grids apart), final norm (`norm`) vs `fc_norm`,
  pre-logits (old timm `pre_logits.fc`) and its size, num_classes (`head`, 0 without).
What it cannot tell, and so must come from a preset (`preset=`, CLI `--preset NAME`) or a timm
`config.json` (`timm_config=`: architecture name and/or model_args / global_pool):
  num_heads, layer_norm_eps, GELU form, resize kernel, and the pooling when there is a class token.
Nothing is guessed: without either, MissingFactsError names the missing facts.

Refused (the canonical model cannot run them): layer scale, register tokens, no_embed_class
tables, distillation tokens, attention-pool heads, qk-norm, norms inside the patch embedding /
attention / MLP, pre-norm (CLIP), gated MLPs, hybrid CNN stems, relative position biases.
"""
from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import limits as L
from ..config import ViTConfig, is_int, is_real, shown
from ..errors import (ConfigError, ConversionError, ConversionWarning, InvalidFileError, MismatchError,
                      MissingFactsError)
from ..posemb import resample_pos_embed
from ..presets import PRESETS, get_preset
from ..safeio import check_zip, read_json_file
from ..weights import CANONICAL_DTYPE, read_tensors, validate_state

#: timm's VisionTransformer LayerNorm default eps (timm.layers.LayerNorm).
TIMM_DEFAULT_EPS = 1e-6
#: Wrapper prefixes stripped when every key carries them (DDP, training wrappers, torch.compile, Lightning).
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.", "state_dict.", "net.")

# (pattern on the key, what it is, why the canonical format cannot represent it)
_UNSUPPORTED = [
    (r"(^|\.)ls[12]\.gamma$|(^|\.)gamma_[12]$", "layer scale (timm init_values / LayerScale, keys ls1.gamma, ls2.gamma)",
     "the canonical block has no per-channel residual scaling"),
    (r"^reg_token$", "register tokens (timm reg_tokens, key reg_token)", "the canonical model has at most one prefix token"),
    (r"^dist_token$|^head_dist\.", "a distillation token / head (DeiT distilled, keys dist_token, head_dist)",
     "the canonical model has one prefix token and one head"),
    (r"^attn_pool\.", "an attention-pooling head (global_pool='map', keys attn_pool.*)",
     "canonical pooling is the class token or the patch mean"),
    (r"\.attn\.[qk]_norm\.", "qk normalisation (qk_norm=True, keys attn.q_norm / attn.k_norm)",
     "canonical attention has no norm on q and k"),
    (r"^patch_embed\.norm\.", "a norm inside the patch embedding (embed_norm_layer, key patch_embed.norm)",
     "the canonical patch embedding is a plain strided conv"),
    (r"^norm_pre\.", "a norm before the transformer blocks (pre_norm=True, CLIP style, key norm_pre)",
     "the canonical model has no pre-block norm"),
    (r"\.attn\.norm\.", "a norm inside attention (scale_attn_norm=True)", "canonical attention has no inner norm"),
    (r"\.mlp\.norm\.", "a norm inside the MLP (scale_mlp_norm=True)", "the canonical MLP has no inner norm"),
    (r"\.mlp\.fc1_[gx]\.|\.mlp\.w12\.", "a gated MLP (SwiGLU)", "the canonical MLP is Linear-GELU-Linear"),
    (r"^patch_embed\.backbone\.", "a hybrid CNN stem (patch_embed.backbone)", "canonical patches come from one conv"),
    (r"relative_position|rel_pos", "relative position biases", "the canonical model has absolute positions only"),
    (r"\.attn\.[qv]_bias$", "separate q/v biases (BEiT style)", "canonical attention has one fused qkv bias"),
    (r"\.attn\.(q|k|v)_proj\.|\.attn\.(q|k|v)\.weight$", "separate q/k/v projections", "this is not a timm VisionTransformer layout"),
]


# ----------------------------------------------------------------------------- helpers
def strip_prefixes(state: Mapping[str, Any], prefixes=STRIP_PREFIXES) -> dict[str, Any]:
    """Remove wrapper prefixes shared by every key (repeatedly: 'module.model.' etc.)."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for p in prefixes:
            if all(k.startswith(p) for k in out):
                out = {k[len(p):]: v for k, v in out.items()}
                changed = True
    return out


def flatten_checkpoint(obj: Any) -> dict[str, Any]:
    """A loaded checkpoint -> its flat tensor dict: picks 'state_dict' / 'model' / 'module' nesting if present."""
    if not isinstance(obj, Mapping):
        raise InvalidFileError(f"checkpoint is a {type(obj).__name__}, not a dict of tensors")
    for key in ("state_dict", "model", "module"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            return flatten_checkpoint(inner)
    return {k: v for k, v in obj.items() if hasattr(v, "shape")}


def to_float32(name: str, value: Any, source: str) -> np.ndarray:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise MismatchError(source, [f"key {name!r}: expected a floating tensor, got dtype {arr.dtype}"])
    out = arr.astype(CANONICAL_DTYPE)
    if arr.dtype.itemsize > 4 and not np.array_equal(out.astype(arr.dtype), arr):
        warnings.warn(f"{source}: {name!r} is {arr.dtype}; rounded to float32 (the canonical dtype)",
                      ConversionWarning, stacklevel=3)
    return out


def refuse_unsupported(keys, source: str, table=_UNSUPPORTED) -> None:
    problems = []
    for pattern, what, why in table:
        hits = sorted(k for k in keys if re.search(pattern, k))
        if hits:
            more = f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""
            problems.append(f"{what}: e.g. {hits[0]!r}{more}; {why}")
    if problems:
        raise ConversionError(f"{source}: cannot convert: the checkpoint uses features the canonical format cannot "
                              f"represent:\n  " + "\n  ".join(problems))


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    h, w = v
    return (int(h), int(w))


def _isqrt_exact(n: int) -> int | None:
    r = math.isqrt(n) if n >= 0 else -1
    return r if r >= 0 and r * r == n else None


def _resolve_preset(preset) -> ViTConfig | None:
    if preset is None or isinstance(preset, ViTConfig):
        return preset
    try:
        return get_preset(preset)
    except ConfigError as e:
        raise MissingFactsError(str(e)) from None


# ------------------------------------------------------------------ facts from configs
def _facts_from_timm_config(tc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Facts a timm config.json gives: num_heads, eps, gelu, pool, image size, resize kernel, name."""
    if not isinstance(tc.get("model_args") or {}, Mapping):
        raise ConfigError(f"{source}: config.json: 'model_args' must be an object, got {shown(tc.get('model_args'))}")
    args = dict(tc.get("model_args") or {})
    merged = {**{k: v for k, v in tc.items() if k not in ("model_args", "pretrained_cfg")}, **args}
    facts: dict[str, Any] = {}
    arch = tc.get("architecture") or tc.get("model_name")
    base = arch.split(".")[0] if isinstance(arch, str) else None
    if base:
        facts["name"] = base
    if base in PRESETS and PRESETS[base].name.startswith("vit_"):
        p = PRESETS[base]
        facts.update(num_heads=p.num_heads, layer_norm_eps=p.layer_norm_eps, gelu=p.gelu, pool=p.pool,
                     image_size=p.image_size)
    for bad in ("norm_layer", "act_layer", "block_fn", "mlp_layer", "attn_layer", "embed_layer"):
        v = args.get(bad)
        if v is not None and not (bad == "act_layer" and v in ("gelu", "gelu_tanh")):
            raise ConversionError(f"{source}: config.json sets model_args.{bad}={v!r}, which this converter cannot "
                                  f"interpret; pass --preset NAME with the model's numerics instead")
    where = f"{source}: config.json"
    if "num_heads" in merged:
        v = merged["num_heads"]
        if not (is_int(v) and 1 <= v <= L.MAX_HEADS):
            raise ConfigError(f"{where}: 'num_heads' must be an int in [1, {L.MAX_HEADS}], got {shown(v)}")
        facts["num_heads"] = int(v)
    for k in ("layer_norm_eps", "norm_eps", "eps"):
        if k in merged:
            v = merged[k]
            if not (is_real(v) and math.isfinite(v) and 0 < v < 1):
                raise ConfigError(f"{where}: {k!r} must be a finite number in (0, 1), got {shown(v)}")
            facts["layer_norm_eps"] = float(v)
    act = merged.get("act_layer") or merged.get("gelu")
    if act is not None and not isinstance(act, str):
        raise ConfigError(f"{where}: 'act_layer' must be a string, got {shown(act)}")
    if act is not None:
        facts["gelu"] = {"gelu": "erf", "erf": "erf", "gelu_tanh": "tanh", "tanh": "tanh"}.get(act)
        if facts["gelu"] is None:
            raise ConversionError(f"{source}: activation {act!r} is not a GELU the canonical model supports (erf, tanh)")
    # Stated explicitly (model_args) without overriding norm/act: timm's VisionTransformer class defaults apply.
    if "num_heads" in args:
        facts.setdefault("layer_norm_eps", TIMM_DEFAULT_EPS)
        facts.setdefault("gelu", "erf")
    gp = merged.get("global_pool")
    if gp is not None and not isinstance(gp, str):
        raise ConfigError(f"{where}: 'global_pool' must be a string, got {shown(gp)}")
    if gp is not None:
        if gp not in ("token", "avg"):
            raise ConversionError(f"{source}: global_pool={gp!r} cannot be represented (canonical pooling: 'token' "
                                  f"or 'avg' = mean over patch tokens)")
        facts["pool"] = "token" if gp == "token" else "mean"
    img = merged.get("img_size")
    if img is None and isinstance(tc.get("pretrained_cfg"), Mapping):
        inp = tc["pretrained_cfg"].get("input_size")
        if isinstance(inp, list) and len(inp) == 3:
            img = inp[1:]
    if img is not None:
        if not (is_int(img) or isinstance(img, (list, tuple)) and len(img) == 2 and all(is_int(x) for x in img)) \
                or not all(1 <= x <= L.MAX_IMAGE_SIDE for x in ([img] if is_int(img) else img)):
            raise ConfigError(f"{where}: image size must be an int or [height, width] ints in [1, "
                              f"{L.MAX_IMAGE_SIDE}], got {shown(img)}")
        facts["image_size"] = _pair(img)
    facts["resize_kernel"] = "bicubic_antialias"  # timm's resample_abs_pos_embed, fixed in timm
    return facts


def _infer_grid(n_patch_rows: int, patch: int, hints: list[tuple[int, int]], source: str) -> tuple[int, int]:
    for h, w in hints:
        if h % patch == 0 and w % patch == 0 and (h // patch) * (w // patch) == n_patch_rows:
            return (h // patch, w // patch)
    s = _isqrt_exact(n_patch_rows)
    if s:
        # a guess, and said so: 256 rows are 16x16, but also 8x32 (a 128x512 model), and a wrong grid runs
        stated = ", ".join(f"{h}x{w}" for h, w in hints) or "none"
        warnings.warn(f"{source}: pos_embed has {n_patch_rows} patch rows, matching no stated image size "
                      f"({stated}); read as a square {s}x{s} grid ({s * patch}x{s * patch} images). If the table "
                      f"is not square, pass --image-size HxW at which it was trained", ConversionWarning, stacklevel=3)
        return (s, s)
    raise MissingFactsError(
        f"{source}: pos_embed has {n_patch_rows} patch rows, which is not a square grid and matches no known image "
        f"size; pass image_size=(H, W) (CLI --image-size HxW) at which the table was trained")


# ---------------------------------------------------------------------------- import
def import_timm(state: Mapping[str, Any], *, preset: ViTConfig | str | None = None,
                timm_config: Mapping[str, Any] | None = None, image_size=None,
                source: str = "<file>") -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """A timm VisionTransformer state dict (NumPy arrays) -> (ViTConfig, canonical float32 state).

    image_size=(H, W) other than the table's grid resamples pos_embed to the new grid with the config's
    kernel (timm's: bicubic_antialias) via shared.posemb.resample_pos_embed.
    """
    st = strip_prefixes(state)
    if "patch_embed.proj.weight" not in st or not any(k.startswith("blocks.") for k in st):
        hint = ""
        if any("embeddings.patch_embeddings" in k for k in st):
            hint = " (this looks like a Hugging Face ViT checkpoint: use the hf importer, --from hf)"
        raise ConversionError(f"{source}: not a timm VisionTransformer state dict: no 'patch_embed.proj.weight' / "
                              f"'blocks.*' keys{hint}; first keys: {sorted(st)[:5]}")
    refuse_unsupported(st.keys(), source)

    # ---- sizes the file determines
    pw = np.shape(st["patch_embed.proj.weight"])
    if len(pw) != 4:
        raise ConversionError(f"{source}: patch_embed.proj.weight has shape {pw}; expected a conv kernel (D, C, P, P)")
    D, C, P, P2 = (int(x) for x in pw)
    if P != P2:
        raise ConversionError(f"{source}: non-square patches {P}x{P2} cannot be represented (canonical patch_size is one int)")
    block_ids = sorted({int(m.group(1)) for k in st if (m := re.match(r"blocks\.(\d+)\.", k))})
    depth = len(block_ids)
    if block_ids != list(range(depth)):
        raise MismatchError(source, [f"blocks are not numbered 0..{depth - 1}: {block_ids}"])
    try:
        qkv_shape = np.shape(st["blocks.0.attn.qkv.weight"])
        mlp_dim = int(np.shape(st["blocks.0.mlp.fc1.weight"])[0])
    except KeyError as e:
        raise MismatchError(source, [f"missing key {e.args[0]!r}"]) from None
    if qkv_shape != (3 * D, D):
        raise ConversionError(f"{source}: blocks.0.attn.qkv.weight has shape {qkv_shape}, expected {(3 * D, D)}: "
                              f"an attention width different from embed_dim is not a timm VisionTransformer")
    qkv_bias = "blocks.0.attn.qkv.bias" in st
    has_cls = "cls_token" in st
    has_pos = "pos_embed" in st
    final_norm, fc_norm = "norm.weight" in st, "fc_norm.weight" in st
    if final_norm and fc_norm:
        raise ConversionError(f"{source}: both 'norm' and 'fc_norm' present; timm uses one or the other")
    rep = int(np.shape(st["pre_logits.fc.weight"])[0]) if "pre_logits.fc.weight" in st else None
    num_classes = int(np.shape(st["head.weight"])[0]) if "head.weight" in st else 0
    if "head.weight" in st and np.ndim(st["head.weight"]) != 2:
        raise ConversionError(f"{source}: head.weight has shape {np.shape(st['head.weight'])}; expected a Linear head")

    # ---- facts the file cannot tell
    p_cfg = _resolve_preset(preset)
    tc_facts = _facts_from_timm_config(timm_config, source) if timm_config else {}
    facts: dict[str, Any] = dict(tc_facts)
    if p_cfg is not None:
        for k in ("num_heads", "layer_norm_eps", "gelu", "pool", "image_size"):
            pv = getattr(p_cfg, k)
            if k in tc_facts and tc_facts[k] != pv and k != "image_size":
                warnings.warn(f"{source}: preset {p_cfg.name!r} says {k}={pv!r}, config.json says {tc_facts[k]!r}; "
                              f"using the preset (named explicitly)", ConversionWarning, stacklevel=2)
            facts[k] = pv
        facts["resize_kernel"] = p_cfg.resize_kernel
        facts["name"] = p_cfg.name
    needed = ["num_heads", "layer_norm_eps", "gelu", "resize_kernel"] + (["pool"] if has_cls else [])
    missing = [k for k in needed if k not in facts]
    if missing:
        raise MissingFactsError(
            f"{source}: a timm state dict does not determine {', '.join(missing)}; name a preset with these numerics "
            f"(preset=NAME, CLI --preset NAME, e.g. --preset vit_base_patch16_224) or put timm's config.json "
            f"(architecture / model_args.num_heads / global_pool) beside the weights")
    H = int(facts["num_heads"])
    if D % H:
        raise ConversionError(f"{source}: embed_dim {D} from the file is not divisible by num_heads {H}"
                              f"{' from preset ' + repr(p_cfg.name) if p_cfg else ''}: wrong preset?")
    pool = facts.get("pool", "mean")
    if has_cls and fc_norm and pool == "token" and tc_facts.get("pool") != "token" and not (p_cfg and p_cfg.fc_norm):
        # timm makes fc_norm only for global_pool='avg' unless told otherwise: the preset's pooling is doubtful
        warnings.warn(f"{source}: the file has fc_norm, which timm creates for average pooling (global_pool='avg'), "
                      f"but preset {p_cfg.name if p_cfg else '?'!r} pools the class token; if the model averages the "
                      f"patch tokens, its logits will differ: use a preset with pool='mean' or timm's config.json",
                      ConversionWarning, stacklevel=2)
    if not has_cls and pool == "token":
        pool = "mean"
        warnings.warn(f"{source}: no cls_token in the file, so pooling is the patch mean (preset said 'token')",
                      ConversionWarning, stacklevel=2)

    # ---- the position table's grid
    prefix = 1 if has_cls else 0
    hints = []
    if image_size is not None:
        hints.append(_pair(image_size))
    if "image_size" in tc_facts:
        hints.append(tc_facts["image_size"])
    if p_cfg is not None:
        hints.append(tuple(p_cfg.image_size))
    target = _pair(image_size) if image_size is not None else None
    pos_grid = None
    if has_pos:
        pe_shape = np.shape(st["pos_embed"])
        if len(pe_shape) != 3 or pe_shape[0] != 1 or pe_shape[2] != D:
            raise MismatchError(source, [f"key 'pos_embed': expected shape (1, tokens, {D}), got {pe_shape}"])
        T = int(pe_shape[1])
        if has_cls:
            def fits(n: int) -> bool:
                return any(h % P == 0 and w % P == 0 and (h // P) * (w // P) == n for h, w in hints)
            # One row per patch and none for the class token: a known grid first, else a square count.
            no_embed = not fits(T - 1) and (fits(T) or (_isqrt_exact(T) and not _isqrt_exact(T - 1)))
            if no_embed:
                raise ConversionError(
                    f"{source}: pos_embed has {T} rows = one per patch while the model has a cls_token: a timm "
                    f"no_embed_class model (DeiT-3 / big_vision style), whose class token gets no position; the "
                    f"canonical table has a row for the class token. (If the table is instead a class row plus a "
                    f"non-square grid of {T - 1} patches, pass image_size=(H, W) / --image-size HxW.)")
        pos_grid = _infer_grid(T - prefix, P, hints, source)
    if target is None:
        if pos_grid is not None:
            target = (pos_grid[0] * P, pos_grid[1] * P)
        elif hints:
            target = hints[0]
        else:
            raise MissingFactsError(f"{source}: no pos_embed, so the file does not tell the image size; pass image_size")

    # ---- the config
    conflicts = []
    if p_cfg is not None:
        file_vals = dict(embed_dim=D, in_chans=C, patch_size=P, depth=depth, mlp_dim=mlp_dim, qkv_bias=qkv_bias,
                         class_token="learned" if has_cls else "none", pos_embed="learned" if has_pos else "none",
                         final_norm=final_norm, fc_norm=fc_norm, representation_size=rep, num_classes=num_classes)
        conflicts = [f"{k}: preset {getattr(p_cfg, k)!r}, file {v!r}" for k, v in file_vals.items()
                     if getattr(p_cfg, k) != v]
        if p_cfg.attn_dim not in (None, D) or p_cfg.attn_value_skip or p_cfg.qk_scale is not None:
            conflicts.append("preset's attention width / value skip / qk_scale do not apply to a timm file")
        if p_cfg.output_softmax:
            conflicts.append("preset's output_softmax: timm models return logits")
        if conflicts:
            warnings.warn(f"{source}: the file's sizes win over preset {p_cfg.name!r}: " + "; ".join(conflicts),
                          ConversionWarning, stacklevel=2)
    extra = {}
    if p_cfg is not None:
        extra = dict(dropout=p_cfg.dropout, attn_dropout=p_cfg.attn_dropout, drop_path=p_cfg.drop_path)
    try:
        cfg = ViTConfig(
            name=facts.get("name", "timm_import"), image_size=target, in_chans=C, patch_size=P, embed_dim=D,
            depth=depth, num_heads=H, mlp_dim=mlp_dim, qkv_bias=qkv_bias,
            class_token="learned" if has_cls else "none", pool=pool,
            pos_embed="learned" if has_pos else "none", resize_kernel=facts["resize_kernel"],
            gelu=facts["gelu"], layer_norm_eps=float(facts["layer_norm_eps"]), final_norm=final_norm,
            fc_norm=fc_norm, representation_size=rep, num_classes=num_classes,
            notes=f"imported from timm checkpoint {source}", **extra)
    except ConfigError as e:
        raise ConversionError(f"{source}: the imported model is not a valid ViTConfig: {e}") from None

    # ---- the weights
    out = {k: to_float32(k, v, source) for k, v in st.items()}
    if has_pos and pos_grid != cfg.grid:
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], pos_grid, cfg.grid, prefix, cfg.resize_kernel)
    validate_state(cfg, out, source=source)
    return cfg, out


# ---------------------------------------------------------------------------- export
def _timm_problems(cfg: ViTConfig) -> list[str]:
    p = []
    if cfg.class_token == "zeros":
        p.append("class_token='zeros' (a fixed zero prediction token): timm's cls_token is a learned parameter")
    if cfg.attn_value_skip:
        p.append("attn_value_skip (T2T-style v + proj(attn v)): timm's Attention has no value skip")
    if cfg.attn_dim is not None and cfg.attn_dim != cfg.embed_dim:
        p.append(f"attn_dim {cfg.attn_dim} != embed_dim {cfg.embed_dim}: timm blocks keep one width")
    if cfg.pos_embed in ("sincos1d", "sincos2d"):
        p.append(f"pos_embed={cfg.pos_embed!r}: timm's VisionTransformer has a learned table or none, no fixed sin-cos table")
    if cfg.qk_scale is not None and not math.isclose(cfg.qk_scale, cfg.head_dim ** -0.5, rel_tol=0, abs_tol=0):
        p.append(f"qk_scale={cfg.qk_scale}: timm's Attention always scales by head_dim**-0.5")
    if cfg.representation_size:
        p.append("representation_size (pre_logits.fc Linear+Tanh): timm >= 0.9 VisionTransformer has no pre-logits layer")
    if cfg.output_softmax:
        p.append("output_softmax: timm models return logits (use cfg.replace(output_softmax=False))")
    if cfg.pos_embed == "learned" and cfg.table_grid != cfg.grid and cfg.resize_kernel != "bicubic_antialias":
        p.append(f"the table ({cfg.table_grid}) is resampled to the image grid {cfg.grid} with "
                 f"{cfg.resize_kernel!r}; timm resamples only with bicubic_antialias")
    return p


def _refuse_for_timm(cfg: ViTConfig) -> None:
    problems = _timm_problems(cfg)
    if problems:
        raise ConversionError(f"config {cfg.name!r} cannot be expressed as a timm VisionTransformer:\n  "
                              + "\n  ".join(problems))


def export_timm(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical state -> timm VisionTransformer state dict (the same keys and arrays, copied)."""
    _refuse_for_timm(cfg)
    validate_state(cfg, state, source="<canonical state>")
    return {k: np.array(v, dtype=CANONICAL_DTYPE, copy=True) for k, v in state.items()}


def timm_model_kwargs(cfg: ViTConfig) -> dict[str, Any]:
    """kwargs for timm.create_model('vit_*', pretrained=False, **kwargs) / VisionTransformer(**kwargs).

    A table stored at another grid than the image's gives img_size = table grid and dynamic_img_size=True
    (timm then resamples with bicubic_antialias, like the canonical model). A non-default eps needs a
    `norm_layer` callable, the one case where this imports timm (lazily).
    """
    _refuse_for_timm(cfg)
    D, M = cfg.embed_dim, cfg.mlp_dim
    ratio = M / D if int(D * (M / D)) == M else (M + 0.5) / D  # timm builds int(dim * mlp_ratio)
    gh, gw = cfg.table_grid if cfg.pos_embed == "learned" else cfg.grid
    kw: dict[str, Any] = dict(
        img_size=(gh * cfg.patch_size, gw * cfg.patch_size), patch_size=cfg.patch_size, in_chans=cfg.in_chans,
        num_classes=cfg.num_classes, embed_dim=D, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=ratio,
        qkv_bias=cfg.qkv_bias, class_token=cfg.class_token == "learned",
        global_pool="token" if cfg.pool == "token" else "avg",
        pos_embed="learn" if cfg.pos_embed == "learned" else "none",
        final_norm=cfg.final_norm or cfg.fc_norm, fc_norm=cfg.fc_norm, no_embed_class=False, reg_tokens=0,
        act_layer="gelu" if cfg.gelu == "erf" else "gelu_tanh",
        pos_drop_rate=cfg.dropout, proj_drop_rate=cfg.dropout, attn_drop_rate=cfg.attn_dropout,
        drop_path_rate=cfg.drop_path,
    )
    if cfg.pos_embed == "learned" and cfg.table_grid != cfg.grid:
        kw["dynamic_img_size"] = True
    if cfg.layer_norm_eps != TIMM_DEFAULT_EPS:
        from functools import partial

        from timm.layers import LayerNorm  # lazy: only callers building a timm model get here

        kw["norm_layer"] = partial(LayerNorm, eps=cfg.layer_norm_eps)
    return kw


# ---------------------------------------------------------------------------- files
def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """.pt/.pth/.bin through torch.load(weights_only=True) -> NumPy; never a full pickle load."""
    try:
        import torch
    except ImportError:
        raise InvalidFileError(f"{path}: reading a PyTorch checkpoint needs torch (not installed); convert it to "
                               f".safetensors, which needs no framework") from None
    if zipfile.is_zipfile(path):
        check_zip(path, "PyTorch checkpoint")  # a zip bomb is refused before torch expands anything
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        raise InvalidFileError(f"{path}: not a safe PyTorch checkpoint (torch.load weights_only=True failed: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    flat = flatten_checkpoint(obj)
    out = {}
    for k, t in flat.items():
        if not isinstance(t, torch.Tensor):
            continue
        if t.layout != torch.strided or t.is_quantized:
            raise InvalidFileError(f"{path}: key {k!r}: expected a dense float tensor, got layout {t.layout}, dtype "
                                   f"{t.dtype}{' (quantized)' if t.is_quantized else ''}")
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()  # exact; NumPy has no bfloat16
        out[k] = t.numpy()
    return out


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, _ = read_tensors(path)
        return tensors
    if path.suffix in (".pt", ".pth", ".bin"):
        return read_torch_checkpoint(path)
    raise InvalidFileError(f"{path}: unknown checkpoint type {path.suffix!r} (expected .safetensors, .pt, .pth, .bin)")


def load_timm_file(path: str | os.PathLike, preset: ViTConfig | str | None = None,
                   image_size=None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a timm checkpoint (+ timm's config.json beside it when present) and import it."""
    path = Path(path)
    tensors = read_checkpoint(path)
    timm_config = None
    cj = path.parent / "config.json"
    if cj.is_file():
        d = read_json_file(cj)
        if isinstance(d, dict) and ("architecture" in d or "model_args" in d):
            timm_config = d
    return import_timm(tensors, preset=preset, timm_config=timm_config, image_size=image_size, source=str(path))
