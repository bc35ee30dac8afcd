"""timm VisionTransformer checkpoints <-> the canonical format (canonical keys ARE timm's keys).

What a timm state dict determines, and so is read from it (the file wins over a preset, and says so):
  embed_dim, in_chans, patch size (conv kernel) and whether the patch projection has a bias (CLIP has none),
  depth, mlp_dim, qkv_bias, the class token, a distillation token and `head_dist` (DeiT distilled), register tokens
  (their count from `reg_token`'s shape), LayerScale (`ls1.gamma`, `ls2.gamma`; old `gamma_1`/`gamma_2` are renamed
  as timm's own filter does), qk-norm (and with it num_heads: the norms' width is the head dim), `norm_pre`, the final
  `norm` vs `fc_norm`, the attention-pool head (`attn_pool.*`), old pre-logits, num_classes (`head`, 0 without),
  and whether the MLP is gated (fc1 with twice fc2's input rows: timm's packed GluMlp, DINOv2-giant's SwiGLUPacked);
  BEiT3's sub-LNs (`attn.norm` before attn.proj: scale_attn_norm -> attn_inner_norm; `mlp.norm` before fc2:
  scale_mlp_norm -> mlp_inner_norm).
  The pooling where the keys settle it: `attn_pool.*` -> 'map', a distillation token -> 'token', no class token ->
  'mean' (timm 'avg' over the patch tokens).
What it cannot tell, and so must be stated:
  num_heads, layer_norm_eps, the GELU form (erf, tanh, quick), a gated MLP's activation (only SiLU, SwiGLU, is
  supported: `mlp='swiglu'`, CLI --mlp swiglu), class-token vs average pooling when there is a class
  token and no attention pool, the grid of the position table and with it how many prefix tokens have a row (timm
  `no_embed_class`: a row per patch only), LayerScale's init value (it only initialises training: when nothing
  states it, DEFAULT_INIT_VALUES, said in a warning).
Stated by, highest first: an explicit argument (`pool=`, `gelu=`, `grid=`, `num_heads=`, `layer_norm_eps=`; CLI
--pool, --gelu, --grid, --num-heads, --layer-norm-eps), the preset (`preset=`, CLI --preset NAME), timm's
`config.json` (`timm_config=`: the architecture resolves to the preset of the same name, then `model_args` /
`global_pool` / `img_size` override it). A name that is no suite preset (`preset=` a string, or config.json's
`architecture`) is resolved by timm itself (`shared.convert.timm_resolve`): timm's own model of that name, built on
the meta device with config.json's `model_args`, states every fact above from its modules ("from timm's ARCH",
ranked right after the preset / config.json that named it), or the architecture is refused by name
(ConversionError, whatever the flags say) when the canonical model cannot run it (rotary positions in a
VisionTransformer, parallel blocks, ...). The file's keys and shapes must be exactly that model's (config.json; --preset NAME: the file's sizes
win, with a warning). Without timm, or for a name timm does not know, the questions are asked and say so. A stated image size
(`image_size=`, config.json, the preset) fixes the grid only when it fits the table's row count with the prefix rows
its own source states, and only one reading may fit. Nothing is guessed: a fact nobody stated is a MissingFactsError
naming the question and the flag that answers it. A preset that contradicts the file loses to the file, with a ConversionWarning naming each fact;
a flag or config.json that contradicts the file is refused. The facts the file does not determine are recorded,
with who stated each, in the imported config's `notes`.

Post-norm blocks (cfg.block_norm='post': timm's ResPostBlock, ResPostRelPosBlock, EvaBlockPostNorm) have exactly a
pre-norm block's keys, so the block type is never read from a file: it is what the preset, a suite preset named by
config.json, or timm's built model of the named architecture states (pre-norm when nothing does: timm's
VisionTransformer default). Export builds them on an architecture whose block class they are (`_POST_NORM_BASES`;
an Eva with use_post_norm=True).

Relative position biases (timm's Beit and VisionTransformerRelPos) are read from their keys: BEiT's q_bias / v_bias
(k_bias=False, through the key map's Fold entry), gamma_1 / gamma_2 (LayerScale), a relative table per block
(blocks.N.attn[.rel_pos].relative_position_bias_table) or shared (rel_pos_bias., shared_rel_pos.), or RelPosMlp
(rel_pos.mlp.fc1 / fc2: its hidden width from fc1); a table stored for another grid than the converted one is
resampled by timm's own rule (shared.posemb.resize_rel_pos_table), with a warning. Export writes them back under
timm's names for the class `rel_pos_class(cfg)` names.

timm's NaFlexVit (keys `embeds.*`) is read as the VisionTransformer it computes at a fixed image size: its
architecture (config.json or --preset naflexvit_...) states the patch size, channels and the table's resize kernel;
`naflex_to_vit` turns the Linear over (ph, pw, C) patches into the conv kernel and the (1, h, w, D) table (patch rows
only) into (1, h*w, D), kept at its grid (cfg.pos_grid) and resampled per image grid with NaFlexVit's own kernel
(aspect-preserving where NaFlexVit is: cfg.pos_ar_preserving); factorized tables `embeds.pos_embed_y` / `_x` are
checked as their 2-D table and kept as `pos_embed_y` / `pos_embed_x` (pos_embed='factorized'). A config named
after a NaFlexVit architecture (`is_naflex`) exports as that NaFlexVit (`vit_to_naflex`, the exact
inverse; `timm_model_args` gives NaFlexVitCfg's fields).

timm's `Eva` (EVA, EVA02, DINOv3, PE, RoPE-ViT, Sapiens2): when the preset is an Eva config (`is_eva`) or the
named architecture resolves to timm's Eva, the whole config comes from it (timm's built modules state every field,
`timm_resolve._read_eva`; nothing is asked) and the keys go through `eva_key_map` (LayerScale's gamma_1 / gamma_2,
a fused projection's q_bias / v_bias); the export writes the same keys, and `eva_model_kwargs` builds the Eva that
loads them strictly.

timm's VisionTransformer with options its keys cannot tell (`is_vit_stated`: RMSNorm, a patch-embedding norm, no
projection biases, timm's unpacked SwiGLU; AIMv2, test_vit4): as for an Eva, the named architecture (or such a preset)
states the whole config (`timm_resolve._vit_config`), the keys are read as themselves (`key_map`), and the export's
`timm_model_kwargs` names the norm layers, `embed_norm_layer`, `proj_bias` and `mlp_layer` (a config.json: a base
that builds them, `_STATED_BASES`).

Refused by name in a VisionTransformer file no architecture names (the canonical model cannot tell them from the
keys): norms inside the patch embedding, unpacked gated MLPs (timm SwiGLU: fc1_g / fc1_x); always: hybrid CNN stems, separate q/k/v projections, a per-block relative bias
summed with a shared one, Swin-v2's relative MLP, an attention pool with its own positions or qk-norm, pooling timm
calls 'avgmax', 'max', 'prr' or '' (none).

Export (`export_timm`; `shared.convert.io.save_timm_hub_dir` with `timm_hub_config`) writes what timm loads
strictly: `timm_architecture(cfg)` and `timm_model_kwargs(cfg)` build the matching model
(`timm.models.deit.VisionTransformerDistilled` for a distillation token). A config whose position table has rows for only some of its prefix tokens (HF's DINOv2-with-registers
layout: the class token has a row, the registers none) has no timm form: the rows are folded into their tokens and
the table keeps the patch rows only, exactly as timm's `_convert_dinov2` does (`cls_token + pos_embed[:, 0]`), and a
ConversionWarning says so.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np

from .. import limits as L
from ..config import ViTConfig, is_int, is_real, shown
from ..errors import (ConfigError, ConversionError, ConversionWarning, InvalidFileError, MismatchError,
                      MissingFactsError)
from ..posemb import factorized_grid, resample_pos_embed
from ..presets import EVA_PRESETS, PRESETS
from ..safeio import read_json_file
from ..weights import CANONICAL_DTYPE, expected_shapes, validate_state
from .common import (GELU_OF_ACT, TIMM_ACT, block_ids, family_refusals, float32_view, image_size_arg, is_suite_preset,
                     isqrt_exact, pair, read_checkpoint, refuse_unsupported, resolve_preset, strip_prefixes, unresolved,
                     without_k_bias)
from .common import read_torch_checkpoint  # noqa: F401 - callers reach it here too (shared.cli, sources)
from .keymap import Entry, Fold, expand, linear_patches, put, take
from .timm_resolve import Resolved, resolve_timm_architecture, timm_knows

#: timm's VisionTransformer LayerNorm default eps (timm.layers.LayerNorm).
TIMM_DEFAULT_EPS = 1e-6
#: LayerScale's init value when gammas are present and nothing states it. It only initialises training (the trained
#: gammas are in the file); DINOv2's value. The import says so in a ConversionWarning and in the config's notes.
DEFAULT_INIT_VALUES = 1e-5
#: timm resamples position tables with bicubic interpolation and antialiasing (resample_abs_pos_embed), always
TIMM_RESIZE_KERNEL = "bicubic_antialias"
#: timm's global_pool name <-> canonical pooling; CLI --pool takes timm's names ('avg' = the mean of the patch tokens)
POOL_OF_TIMM = {"token": "token", "avg": "mean", "map": "map"}
TIMM_POOL = {v: k for k, v in POOL_OF_TIMM.items()}
#: the presets that carry a timm architecture name (timm.is_model of each is tested): a config.json's
#: `architecture` resolves to one of them, and a conversion under one of them is provable against timm
TIMM_ARCHITECTURES = frozenset(n for n in PRESETS if n.startswith(("vit_", "deit", "beit")) and n not in EVA_PRESETS)
#: the architecture an exported config is built on when its own name is not a timm one: every size and option
#: is then given as kwargs / model_args; the base fixes the model class and the LayerNorm (eps) only
_BASE_ARCHITECTURES = {(False, 1e-6): "vit_base_patch16_224", (False, 1e-5): "vit_base_patch16_clip_224",
                       (True, 1e-6): "deit_base_distilled_patch16_224"}
#: a SwiGLU config's base (timm's SwiGLUPacked MLP with SiLU; eps 1e-6): the kwargs give every size and option
_SWIGLU_ARCHITECTURE = "vit_giant_patch14_dinov2"
#: a relative-position config's base, by timm class (rel_pos_class): the kwargs give every size and option
_REL_POS_BASES = {"Beit": "beit_base_patch16_224", "VisionTransformerRelPos": "vit_relpos_base_patch16_224"}
#: a post-norm config's base (block_norm='post'), by timm class: the architecture fixes the block class
#: (ResPostBlock, ResPostRelPosBlock), which model_args cannot name; the kwargs give every size and option
_POST_NORM_BASES = {"VisionTransformer": "vit_base_patch16_rpn_224",
                    "VisionTransformerRelPos": "vit_relpos_base_patch16_rpn_224"}
#: what a timm MLP is: `mlp=` / --mlp, for a file whose fc1 is packed (gated) or not
MLP_KINDS = ("swiglu", "gelu")
# (pattern on the key, what it is, why the canonical format cannot represent it)
_UNSUPPORTED = [
    (r"^patch_embed\.norm\.", "a norm inside the patch embedding (embed_norm_layer, key patch_embed.norm)",
     "its kind and eps are not in the keys: name the architecture (config.json, --preset) and timm's model states "
     "them (AIMv2)"),
    (r"\.mlp\.w12\.|\.mlp\.w3\.", "a gated MLP with keys mlp.w12 / w3", "the canonical gated MLPs are timm's "
     "SwiGLUPacked (one fc1 holding [gate; value]) and SwiGLU (fc1_g, fc1_x)"),
    (r"\.mlp\.fc1_[gx]\.", "an unpacked gated MLP (timm SwiGLU, keys mlp.fc1_g / fc1_x)", "its activation and "
     "norms are not in the keys: name the architecture (config.json, --preset) and timm's model states them"),
    (r"^patch_embed\.backbone\.", "a hybrid CNN stem (patch_embed.backbone)", "canonical patches come from one conv"),
    (r"\.attn\.k_bias$", "a k bias beside separate q/v biases", "BEiT's q/v layout has none (the k part is zero)"),
    (r"rel_pos\.mlp\.fc[12]\.weight_[gv]|relative_coords_table", "a Swin-v2 relative position MLP",
     "the canonical MLP form is timm's RelPosMlp in 'cr' mode"),
    (r"\.attn\.(q|k|v)_proj\.|\.attn\.(q|k|v)\.weight$", "separate q/k/v projections", "this is not a timm VisionTransformer layout"),
    (r"^attn_pool\.(pos_embed|[qk]_norm\.)", "an attention pool with its own position table or qk-norm (keys "
     "attn_pool.pos_embed / attn_pool.q_norm)", "the canonical MAP head is timm's AttentionPoolLatent with one "
     "latent, no positions and no qk-norm"),
]


# ----------------------------------------------------------------------------- helpers
_pair, _isqrt_exact = pair, isqrt_exact  # the names the timm importer has always used
_resolve_preset, _unresolved = resolve_preset, unresolved


def _resolved_facts(r: Resolved) -> dict[str, Any]:
    """What timm's built model states about a file's unknowns (as _preset_facts does for a preset)."""
    return {k: r.facts[k] for k in ("num_heads", "layer_norm_eps", "gelu", "mlp", "pool", "image_size",
                                    "pos_rows", "init_values", "name", "block_norm", "pool_include_prefix",
                                    "pool_heads") if r.facts.get(k) is not None}


def _shape_conflicts(st: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Where a file's keys and shapes differ from a built model's (the position table's row count aside: its grid
    is read from the stated image size, and timm resamples it on load)."""
    out = [f"{k}: the file has none" for k in sorted(set(shapes) - set(st))]
    out += [f"{k}: timm's model has none" for k in sorted(set(st) - set(shapes))]
    for k in sorted(set(st) & set(shapes)):
        a, b = tuple(np.shape(st[k])), shapes[k]
        if (a[::2], len(a)) != (b[::2], len(b)) if k == "pos_embed" else a != b:
            out.append(f"{k}: file {a}, timm's model {b}")
    return out


def _vit_shapes(shapes: Mapping[str, tuple[int, ...]], nf: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """A NaFlexVit's state-dict shapes as `naflex_to_vit` gives them (for the same checks as a VisionTransformer's)."""
    out = {k: v for k, v in shapes.items() if not k.startswith("embeds.")}
    for nk, vk in _NAFLEX_KEYS.items():
        if nk in shapes:
            v = shapes[nk]
            out[vk] = ((v[0], nf["in_chans"], nf["patch_size"], nf["patch_size"]) if nk == "embeds.proj.weight"
                       and len(v) == 2 else (1, v[1] * v[2], v[3]) if nk == "embeds.pos_embed" else v)
    return out


def _as_2d_table(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes with factorized tables (1, h, D), (1, w, D) read as their 2-D table pos_embed (1, h*w, D), as the
    import checks them (`import_timm`); other shapes unchanged."""
    if "pos_embed_y" not in shapes:
        return dict(shapes)
    out = {k: v for k, v in shapes.items() if k not in _FACTORIZED}
    (_, h, D), (_, w, _) = shapes["pos_embed_y"], shapes["pos_embed_x"]
    return out | {"pos_embed": (1, h * w, D)}


def _rename_legacy(st: dict[str, Any]) -> dict[str, Any]:
    """Old DeiT III names (and BEiT's) `blocks.N.gamma_1/2` -> `blocks.N.ls1/ls2.gamma`, as timm's checkpoint filter
    does; BEiT's `relative_position_index` buffers in old files are dropped as timm's filter drops them (derived from
    the grid: shared.posemb.rel_pos_index, never a weight)."""
    return {re.sub(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma", k): v for k, v in st.items()
            if not k.endswith("relative_position_index")}


# ------------------------------------------------------------------ facts from configs
def _pos_rows_rule(p: ViTConfig) -> str | None:
    """Which prefix tokens a preset gives a position row, as a rule for any token count: "all" (timm's default),
    "none" (no_embed_class), or None (no timm rule: HF's class-token-only layout, or no learned table)."""
    if p.pos_embed != "learned":
        return None
    return {None: "all", 0: "none"}.get(p.pos_prefix_tokens, "all" if p.pos_prefix_tokens == p.num_prefix_tokens
                                        else None)


def _preset_facts(p: ViTConfig) -> dict[str, Any]:
    """What a preset states about a timm file's unknowns (its sizes are checked against the file separately)."""
    facts = dict(num_heads=p.num_heads, layer_norm_eps=p.layer_norm_eps, pool=p.pool,
                 image_size=tuple(p.image_size), name=p.name, pos_rows=_pos_rows_rule(p), block_norm=p.block_norm)
    if p.swiglu:  # a SwiGLU preset states the gated MLP's activation and no GELU form (its blocks have none)
        facts["mlp"] = "swiglu"
    else:
        facts.update(mlp="gelu", gelu=p.gelu)
    if p.init_values is not None:
        facts["init_values"] = p.init_values
    if p.attn_inner_norm or p.mlp_inner_norm:  # BEiT3's sub-LNs (the file's keys show them too)
        facts.update(attn_inner_norm=p.attn_inner_norm, mlp_inner_norm=p.mlp_inner_norm)
    if p.pool_include_prefix:  # what the keys cannot show: the pool sees the prefix tokens too
        facts["pool_include_prefix"] = True
    if p.pool_heads is not None:
        facts["pool_heads"] = p.pool_heads
    return facts


def _facts_from_timm_config(tc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Facts timm's config.json states: the architecture's preset (when the name is one), then its overrides
    (model_args, global_pool, img_size / pretrained_cfg.input_size). Keys it cannot interpret are refused by name."""
    where = f"{source}: config.json"
    if not isinstance(tc.get("model_args") or {}, Mapping):
        raise ConfigError(f"{where}: 'model_args' must be an object, got {shown(tc.get('model_args'))}")
    args = dict(tc.get("model_args") or {})
    merged = {**{k: v for k, v in tc.items() if k not in ("model_args", "pretrained_cfg")}, **args}
    facts: dict[str, Any] = {}
    arch = tc.get("architecture") or tc.get("model_name")
    if arch is not None and not isinstance(arch, str):
        raise ConfigError(f"{where}: 'architecture' must be a string, got {shown(arch)}")
    base = arch.split(".")[0] if arch else None
    if base in TIMM_ARCHITECTURES:
        facts.update(_preset_facts(PRESETS[base]))
    if base:
        facts["name"] = base
    for bad in ("norm_layer", "block_fn", "mlp_layer", "attn_layer", "embed_layer", "embed_norm_layer"):
        if args.get(bad) is not None:
            raise ConversionError(f"{source}: config.json sets model_args.{bad}={args[bad]!r}, which this converter "
                                  f"cannot interpret; pass --preset NAME with the model's numerics instead")
    if "pool_include_prefix" in args:  # the pool ('avg', 'map') sees the prefix tokens too
        if not isinstance(args["pool_include_prefix"], bool):
            raise ConfigError(f"{where}: 'pool_include_prefix' must be true or false, got "
                              f"{shown(args['pool_include_prefix'])}")
        facts["pool_include_prefix"] = args["pool_include_prefix"]
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
    act = merged.get("act_layer")
    if act is not None:
        if not isinstance(act, str):
            raise ConfigError(f"{where}: 'act_layer' must be a string, got {shown(act)}")
        if act == "silu":  # timm's SwiGLUPacked blocks (DINOv2-giant): the gated MLP's activation
            facts.pop("gelu", None)
            facts["mlp"] = "swiglu"
        elif act not in GELU_OF_ACT:
            raise ConversionError(f"{source}: act_layer {act!r} is not an activation the canonical model supports "
                                  f"({', '.join(GELU_OF_ACT)}, or 'silu' for a SwiGLU MLP)")
        else:
            facts.update(gelu=GELU_OF_ACT[act], mlp="gelu")
    gp = merged.get("global_pool")
    if gp is not None:
        if not isinstance(gp, str):
            raise ConfigError(f"{where}: 'global_pool' must be a string, got {shown(gp)}")
        if gp not in POOL_OF_TIMM:
            raise ConversionError(f"{source}: global_pool={gp!r} cannot be represented (canonical pooling: 'token', "
                                  f"'avg' = mean over the patch tokens, 'map' = attention pool)")
        facts["pool"] = POOL_OF_TIMM[gp]
    if "no_embed_class" in args:
        if not isinstance(args["no_embed_class"], bool):
            raise ConfigError(f"{where}: 'no_embed_class' must be true or false, got {shown(args['no_embed_class'])}")
        facts["pos_rows"] = "none" if args["no_embed_class"] else "all"
    if args.get("init_values") is not None:
        v = args["init_values"]
        if not (is_real(v) and math.isfinite(v) and 0 < v <= 1e6):
            raise ConfigError(f"{where}: 'init_values' must be a finite number in (0, 1e6], got {shown(v)}")
        facts["init_values"] = float(v)
    img = merged.get("img_size")
    if img is None and isinstance(tc.get("pretrained_cfg"), Mapping):
        inp = tc["pretrained_cfg"].get("input_size")
        if isinstance(inp, (list, tuple)) and len(inp) == 3:
            img = list(inp[1:])
    if img is not None:
        facts["image_size"] = image_size_arg(img, where)
    return facts


def _factor_pairs(n: int, limit: int = 4) -> list[tuple[int, int]]:
    """Grids with n cells, the squarest first: what a row count could be (for messages)."""
    pairs = [(a, n // a) for a in range(1, math.isqrt(n) + 1) if n % a == 0]
    out = []
    for a, b in reversed(pairs):
        out += [(a, b)] + ([(b, a)] if a != b else [])
    return out[:limit]


def _table_layout(T: int, P: int, n0: int, grid, hints: list[tuple[tuple[int, int], str, str | None]],
                  source: str) -> tuple[int, tuple[int, int], str]:
    """(position rows of the prefix tokens, the table's grid, who stated it) for a table of T rows.

    timm gives every prefix token a row (n0) or none (no_embed_class); which, and the grid, follow from the row
    count only with a stated grid (`grid`) or a stated image size that fits it (hints: (size, who, the prefix-row
    rule the same source states: "all", "none" or None), and a source's size counts only with its own rule; two
    stated readings that differ, or none, are a question for the user."""
    options = sorted({n0, 0}, reverse=True)
    if grid is not None:
        gh, gw = _pair(grid)
        npos = T - gh * gw
        if npos not in options:
            raise ConversionError(
                f"{source}: grid {gh}x{gw} gives {gh * gw} patch rows, but pos_embed has {T} rows and the model "
                f"{n0} prefix token(s): the table would have {' or '.join(str(gh * gw + o) for o in options)} rows")
        return npos, (gh, gw), f"--grid {gh}x{gw}"
    fits: dict[tuple[int, tuple[int, int]], str] = {}
    for (h, w), by, rule in hints:
        if h % P or w % P:
            continue
        g = (h // P, w // P)
        for npos in {"all": [n0], "none": [0]}.get(rule, options):
            if g[0] * g[1] + npos == T:
                fits.setdefault((npos, g), f"image size {h}x{w} from {by}")
    if len(fits) == 1:
        (npos, g), by = next(iter(fits.items()))
        return npos, g, by
    readings = []
    for npos in options:
        if T - npos > 0:
            rows = f"{npos} prefix row(s) + {T - npos} patch rows" if n0 else f"{T} patch rows"
            readings.append(f"{rows} ({', '.join(f'{a}x{b}' for a, b in _factor_pairs(T - npos))}, ...)")
    if fits:
        stated = "; ".join(f"{g[0]}x{g[1]} with {n} prefix row(s) by {by}" for (n, g), by in fits.items())
        raise MissingFactsError(f"{source}: the position table's grid is stated twice, differently ({stated}); "
                                f"pass --grid HxW (the table's grid in patches)")
    stated = ", ".join(f"{h}x{w} ({by}{', ' + rule + ' prefix rows' if rule and n0 else ''})"
                       for (h, w), by, rule in hints) or "none"
    prefix_q = (f" nor whether the {n0} prefix token(s) have rows (timm no_embed_class)" if n0 else "")
    raise MissingFactsError(
        f"{source}: which grid is the position table? pos_embed has {T} rows: {' or '.join(readings)}; the file "
        f"does not tell the grid{prefix_q}, and no stated image size fits (stated: {stated}). Pass --grid HxW (the "
        f"table's grid in patches, e.g. --grid {'x'.join(map(str, _factor_pairs(T - options[0])[0]))}) or "
        f"--image-size HxW at which the table was trained")


class _Stated:
    """Each fact the file cannot tell, from the sources that state it, highest first: who won is recorded (notes),
    and a lower source that said otherwise is told in a ConversionWarning. A source named "{flag}" is the argument
    of the fact's own name (num_heads: --num-heads)."""

    def __init__(self, sources: list[tuple[str, Mapping[str, Any]]], source: str):
        self.sources = [(who, facts) for who, facts in sources if facts]
        self.source = source
        self.used: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        found = [(who, facts[key]) for who, facts in self.sources if facts.get(key) is not None]
        if not found:
            return default
        found = [(who.replace("{flag}", "--" + key.replace("_", "-")), v) for who, v in found]
        (who, value), others = found[0], found[1:]
        overruled = [f"{w} says {v!r}" for w, v in others if v != value]
        if overruled:
            warnings.warn(f"{self.source}: {key}={value!r} from {who} ({'; '.join(overruled)})",
                          ConversionWarning, stacklevel=4)
        self.used[key] = who
        return value


# ---------------------------------------------------------------------------- import
def import_timm(state: Mapping[str, Any], *, preset: ViTConfig | str | None = None,
                timm_config: Mapping[str, Any] | None = None, image_size=None, grid=None, pool: str | None = None,
                gelu: str | None = None, num_heads: int | None = None, layer_norm_eps: float | None = None,
                mlp: str | None = None, source: str = "<file>") -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """A timm VisionTransformer state dict (NumPy arrays) -> (ViTConfig, canonical float32 state).

    preset / timm_config / the explicit facts (pool: timm's name 'token' | 'avg' | 'map'; gelu: 'erf' | 'tanh' |
    'quick'; mlp: 'swiglu' | 'gelu', the activation of a packed gated MLP; grid: the position table's (rows,
    columns) in patches; num_heads; layer_norm_eps) state what the file
    cannot tell (see the module docstring). image_size=(H, W): the input size to convert for; when it fits the
    table's row count it also states the table's grid, otherwise the table is resampled from its grid to this one
    with the preset's kernel, timm's (bicubic_antialias) without one (shared.posemb.resample_pos_embed).
    """
    stated = _stated_config(strip_prefixes(state), preset, timm_config, source)
    if stated is not None:  # timm's Eva, or a VisionTransformer with options its keys cannot tell (is_vit_stated):
        return _import_stated(strip_prefixes(state), *stated, image_size, source)  # the whole config stated
    st = _rename_legacy(strip_prefixes(state))
    # a named architecture that is no suite preset: timm's own model of that name states what it is (or it is
    # refused by name, whatever else is stated); the file's keys must then be exactly that model's
    resolved, unresolved, preset = _resolve_names(st, preset, timm_config, source)
    naflex = naflex_grid = None
    factorized: dict[str, Any] = {}
    if is_naflex_state(st):  # timm's NaFlexVit: read as the VisionTransformer it computes at a fixed image size
        naflex = _naflex_facts(preset, resolved, source)
        st, naflex_grid = naflex_to_vit(st, naflex["patch_size"], naflex["in_chans"], source)
        # factorized tables: read as their 2-D table y[i] + x[j] (the same checks as any NaFlexVit table), kept as
        # pos_embed_y / pos_embed_x in the result (shared.posemb.factorized_grid)
        factorized = {k: st.pop(k) for k in _FACTORIZED if k in st}
        if factorized:
            st["pos_embed"] = factorized_grid(*(factorized[k] for k in _FACTORIZED))[None].astype(np.float32)
        if naflex_grid is not None and grid is not None and _pair(grid) != naflex_grid:
            raise ConversionError(f"{source}: grid {grid} stated, but the NaFlexVit table embeds.pos_embed is "
                                  f"{naflex_grid[0]}x{naflex_grid[1]}")
        grid = naflex_grid if naflex_grid is not None else grid
        resolved = [(who, replace(r, shapes=_as_2d_table(_vit_shapes(r.shapes, naflex))), mine)
                    for who, r, mine in resolved]
    _check_timm_state(st, source, pool=pool, gelu=gelu, mlp=mlp)
    f = facts(st, source)
    # ---- what others state, and the questions nobody answered
    k = _Known(preset, timm_config, resolved, source, num_heads=num_heads, gelu=gelu, layer_norm_eps=layer_norm_eps,
               mlp=mlp, pool=POOL_OF_TIMM.get(pool) if pool else None)
    H, eps, act = _ask_numerics(f, k, num_heads)
    pool_c, pool_by = _ask_pool(f, k)
    npos, pos_grid, grid_by, hints = _ask_grid(f, k, st, image_size, grid)
    if naflex is not None and naflex_grid is not None:
        grid_by = f"the file (embeds.pos_embed is {naflex_grid[0]}x{naflex_grid[1]})"
    if k.questions:
        raise MissingFactsError(f"{source}: a timm state dict does not determine these, and nothing stated them:\n  "
                                + "\n  ".join(k.questions) + "".join(f"\n  ({u})" for u in unresolved))
    target = pair(image_size) if image_size is not None else None
    if target is None and naflex is not None and naflex.get("image_size"):  # timm's model's input size (C-RADIO:
        target = tuple(naflex["image_size"])  # 512x512 for a 128x128 table), the table kept at its grid
    if target is None:
        if pos_grid is not None:
            target = (pos_grid[0] * f.P, pos_grid[1] * f.P)
        elif hints:
            target = hints[0][0]
        else:
            raise MissingFactsError(f"{source}: no pos_embed, so the file does not tell the image size; pass "
                                    f"--image-size HxW (image_size=)")
    if f.D % H:
        raise ConversionError(f"{source}: embed_dim {f.D} from the file is not divisible by num_heads {H} (from "
                              f"{k.known.used.get('num_heads', '?')}): wrong preset?")
    init_values = _init_values(f, k)
    _tell_preset_conflicts(f, k, st, H, npos, grid_by)
    cfg = _timm_config(f, k, H=H, eps=eps, act=act, pool=pool_c, pool_by=pool_by, npos=npos, grid_by=grid_by,
                       target=target, init_values=init_values)
    # ---- the weights, through the key map (at the table's stored grid), then resampled to the image grid
    if naflex is not None and f.has_pos:  # the table stays at its grid: resampled per grid as NaFlexVit does
        if naflex.get("resize_kernel") is None:
            raise ConversionError(f"{source}: {naflex['who']} resamples its table with no canonical kernel")
        if bool(factorized) != bool(naflex.get("factorized", bool(factorized))):
            raise ConversionError(f"{source}: {naflex['who']} has {'factorized' if naflex['factorized'] else 'one 2-D'}"
                                  f" position table(s), the file {'factorized' if factorized else 'one 2-D'}")
        cfg = cfg.replace(pos_grid=pos_grid, resize_kernel=naflex["resize_kernel"],
                          pos_ar_preserving=bool(naflex.get("ar_preserving", False)),
                          pos_embed="factorized" if factorized else cfg.pos_embed,
                          notes=cfg.notes + f"; a NaFlexVit: patch size, channels and the table's resize kernel "
                                            f"from {naflex['who']}")
    table = cfg.replace(image_size=(pos_grid[0] * f.P, pos_grid[1] * f.P)) if f.has_pos else cfg
    if f.rel_pos == "table" and table.grid != cfg.grid:
        raise ConversionError(f"{source}: a position table stored for {pos_grid[0]}x{pos_grid[1]} with a relative "
                              f"table converted to {cfg.grid[0]}x{cfg.grid[1]}: convert at the table's own size")
    st = _resize_rel_tables(f, st, cfg, source)
    if factorized:  # the row and column tables themselves, not the 2-D table they were checked as
        st = {k: v for k, v in st.items() if k != "pos_embed"} | factorized
    out = take(key_map(table, extra=f.rel_entries), st, source, expected=expected_shapes(table))
    if f.has_pos and pos_grid != cfg.table_grid:
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], pos_grid, cfg.grid, npos, cfg.resize_kernel,
                                              cfg.pos_ar_preserving)
    validate_state(cfg, out, source=source)
    return cfg, out


def _resolve_names(st: Mapping[str, Any], preset, timm_config, source: str):
    """(timm's models of the names that are no suite preset: (who, model, built with the file's own config.json),
    why a name could not be resolved, the preset left to read as a suite preset)."""
    resolved: list[tuple[str, Resolved, bool]] = []
    unresolved_: list[str] = []
    n_cls = int(np.shape(st["head.weight"])[0]) if "head.weight" in st and np.ndim(st["head.weight"]) == 2 else 0
    if isinstance(preset, str) and not is_suite_preset(preset):
        r = resolve_timm_architecture(preset, {"num_classes": n_cls}, source)
        if r is None:
            resolve_preset(preset)  # the unknown name, and why timm could not resolve it
        resolved.append((f"timm's {preset}", r, False))
        preset = None
    tc_arch = timm_config.get("architecture") or timm_config.get("model_name") if timm_config else None
    if isinstance(tc_arch, str) and tc_arch.split(".")[0] not in TIMM_ARCHITECTURES:
        tc_arch = tc_arch.split(".")[0]
        args = timm_config.get("model_args") or {}
        if not isinstance(args, Mapping):
            raise ConfigError(f"{source}: config.json: 'model_args' must be an object, got {shown(args)}")
        args = {"num_classes": timm_config.get("num_classes", n_cls), **args}
        r = resolve_timm_architecture(tc_arch, args, source)
        if r is None:
            unresolved_.append(unresolved(tc_arch))
        else:
            conflicts = _shape_conflicts(st, r.shapes)
            if conflicts:
                more = f" (+{len(conflicts) - 6} more)" if len(conflicts) > 6 else ""
                raise ConversionError(f"{source}: config.json names {tc_arch!r}, and timm's {tc_arch} built with its "
                                      f"model_args does not hold this file's tensors: " + "; ".join(conflicts[:6])
                                      + more)
            resolved.append((f"timm's {tc_arch}", r, True))
    return resolved, unresolved_, preset


def _check_timm_state(st: Mapping[str, Any], source: str, *, pool, gelu, mlp) -> None:
    """A timm VisionTransformer's keys, no part the canonical model cannot run, and valid stated facts."""
    if "patch_embed.proj.weight" not in st or not any(k.startswith("blocks.") for k in st):
        hint = ""
        if any("embeddings.patch_embeddings" in k for k in st):
            hint = " (this looks like a Hugging Face ViT checkpoint: use the hf importer, --from hf)"
        raise ConversionError(f"{source}: not a timm VisionTransformer state dict: no 'patch_embed.proj.weight' / "
                              f"'blocks.*' keys{hint}; first keys: {sorted(st)[:5]}")
    refuse_unsupported(st.keys(), source, _UNSUPPORTED)
    if pool is not None and pool not in POOL_OF_TIMM:
        raise ConversionError(f"{source}: pool {pool!r}: expected one of {', '.join(POOL_OF_TIMM)} (timm's names)")
    if gelu is not None and gelu not in TIMM_ACT:
        raise ConversionError(f"{source}: gelu {gelu!r}: expected one of {', '.join(TIMM_ACT)}")
    if mlp is not None and mlp not in MLP_KINDS:
        raise ConversionError(f"{source}: mlp {mlp!r}: expected one of {', '.join(MLP_KINDS)}")


def facts(st: Mapping[str, Any], source: str) -> SimpleNamespace:
    """What a timm state dict states by its keys and shapes (see the module docstring)."""
    pw = np.shape(st["patch_embed.proj.weight"])
    if len(pw) != 4:
        raise ConversionError(f"{source}: patch_embed.proj.weight has shape {pw}; expected a conv kernel (D, C, P, P)")
    D, C, P, P2 = (int(x) for x in pw)
    if P != P2:
        raise ConversionError(f"{source}: non-square patches {P}x{P2} cannot be represented (canonical patch_size is one int)")
    ids = block_ids(st, "blocks.{i}.")
    depth = len(ids)
    if ids != list(range(depth)):
        raise MismatchError(source, [f"blocks are not numbered 0..{depth - 1}: {ids}"])
    # timm's ParallelThingsBlock (blocks.i.attns.j / ffns.j: no other timm block has these keys): its branch 0 of
    # block 0 is read for the sizes below, as a pre-norm block's attn / mlp / ls1 are
    par = block_ids(st, "blocks.0.attns.{i}.")
    num_parallel = len(par) or 1
    if par:
        if par != list(range(num_parallel)) or block_ids(st, "blocks.0.ffns.{i}.") != par or num_parallel < 2:
            raise ConversionError(f"{source}: parallel blocks (blocks.0.attns.*, blocks.0.ffns.*) numbered {par} and "
                                  f"{block_ids(st, 'blocks.0.ffns.{i}.')}: expected 2 or more branches, 0..P-1, each "
                                  f"with attention and MLP")
        alias = {"blocks.0.attns.0.attn.": "blocks.0.attn.", "blocks.0.ffns.0.mlp.": "blocks.0.mlp.",
                 "blocks.0.attns.0.ls.": "blocks.0.ls1."}
        st = {**st, **{new + k[len(old):]: st[k] for k in st for old, new in alias.items() if k.startswith(old)}}
    try:
        qkv_shape = np.shape(st["blocks.0.attn.qkv.weight"])
        fc1_rows = int(np.shape(st["blocks.0.mlp.fc1.weight"])[0])
        fc2_cols = int(np.shape(st["blocks.0.mlp.fc2.weight"])[-1])
    except KeyError as e:
        raise MismatchError(source, [f"missing key {e.args[0]!r}"]) from None
    # a packed gated MLP (timm GluMlp: fc1 gives [gate; value], fc2 reads one half) has twice fc2's input rows
    gated = fc1_rows == 2 * fc2_cols
    if qkv_shape != (3 * D, D):
        raise ConversionError(f"{source}: blocks.0.attn.qkv.weight has shape {qkv_shape}, expected {(3 * D, D)}: "
                              f"an attention width different from embed_dim is not a timm VisionTransformer")
    f = SimpleNamespace(D=D, C=C, P=P, depth=depth, gated=gated, fc1_rows=fc1_rows, fc2_cols=fc2_cols,
                        mlp_dim=fc2_cols if gated else fc1_rows, qkv_bias="blocks.0.attn.qkv.bias" in st,
                        patch_bias="patch_embed.proj.bias" in st, has_cls="cls_token" in st,
                        has_dist="dist_token" in st, has_pos="pos_embed" in st,
                        reg_tokens=int(np.shape(st["reg_token"])[1]) if "reg_token" in st and
                        np.ndim(st["reg_token"]) == 3 else 0, layer_scale="blocks.0.ls1.gamma" in st,
                        norm_pre="norm_pre.weight" in st, has_map=any(k.startswith("attn_pool.") for k in st),
                        final_norm="norm.weight" in st, fc_norm="fc_norm.weight" in st,
                        rep=int(np.shape(st["pre_logits.fc.weight"])[0]) if "pre_logits.fc.weight" in st else None,
                        num_classes=int(np.shape(st["head.weight"])[0]) if "head.weight" in st else 0,
                        qk_norm="blocks.0.attn.q_norm.weight" in st, heads=None, num_parallel=num_parallel,
                        attn_inner_norm="blocks.0.attn.norm.weight" in st,  # BEiT3's sub-LNs (scale_attn_norm,
                        mlp_inner_norm="blocks.0.mlp.norm.weight" in st)  # scale_mlp_norm): every block's, by take
    _rel_pos_facts(f, st, source)
    if f.final_norm and f.fc_norm:
        raise ConversionError(f"{source}: both 'norm' and 'fc_norm' present; timm uses one or the other")
    if "head.weight" in st and np.ndim(st["head.weight"]) != 2:
        raise ConversionError(f"{source}: head.weight has shape {np.shape(st['head.weight'])}; expected a Linear head")
    if f.qk_norm:  # the norms run over each head's channels: their width is the head dim
        hd = int(np.shape(st["blocks.0.attn.q_norm.weight"])[0])
        if hd < 1 or D % hd:
            raise ConversionError(f"{source}: blocks.0.attn.q_norm.weight has {hd} channels, which do not divide "
                                  f"embed_dim {D} into heads")
        f.heads = D // hd
    f.pool = "map" if f.has_map else "token" if f.has_dist else "mean" if not f.has_cls else None
    fc1 = np.shape(st.get("attn_pool.mlp.fc1.weight", ()))  # the attention pool's MLP width (NaFlexVit may differ)
    f.pool_mlp_dim = int(fc1[0]) if len(fc1) == 2 and int(fc1[0]) != f.mlp_dim else None
    f.n0 = int(f.has_cls) + int(f.has_dist) + f.reg_tokens
    return f


#: where timm keeps a relative position bias, by class: (source prefix of the shared module, of a block's, the
#: table's name under it); the canonical prefixes are `rel_pos` and `blocks.{i}.attn.rel_pos` (ViTConfig.rel_pos_prefixes)
_REL_POS_LAYOUTS = {"beit": ("rel_pos_bias", "blocks.{i}.attn", "relative_position_bias_table"),
                    "relpos": ("shared_rel_pos", "blocks.{i}.attn.rel_pos", "relative_position_bias_table")}


def _rel_pos_entries(style: str, kind: str, shared: bool) -> list[Entry]:
    """timm's keys of a relative position bias -> the canonical ones (templates over blocks.{i})."""
    src = _REL_POS_LAYOUTS[style][0 if shared else 1]
    dst = "rel_pos" if shared else "blocks.{i}.attn.rel_pos"
    names = [_REL_POS_LAYOUTS[style][2]] if kind == "table" else \
        [f"mlp.fc{j}.{w}" for j in (1, 2) for w in ("weight", "bias")]
    return [Entry(f"{src}.{n}", f"{dst}.{n}") for n in names if f"{src}.{n}" != f"{dst}.{n}"]


def _export_entries(cfg: ViTConfig) -> list[Entry]:
    """The key map's extra entries of `cfg`'s timm class (rel_pos_class): BEiT's q/v biases (Fold: the k part must
    be zero), gamma_1 / gamma_2, its table names; VisionTransformerRelPos' shared module name."""
    cls = rel_pos_class(cfg)
    if cls is None:
        return []
    out = _rel_pos_entries("beit" if cls == "Beit" else "relpos", cfg.rel_pos, cfg.rel_pos_shared)
    if cls == "Beit":
        if cfg.qkv_bias:
            out.append(Entry(("blocks.{i}.attn.q_bias", "blocks.{i}.attn.v_bias"), "blocks.{i}.attn.qkv.bias",
                             Fold((0, None, 1))))
        if cfg.init_values is not None:
            out += [Entry(f"blocks.{{i}}.gamma_{j}", f"blocks.{{i}}.ls{j}.gamma") for j in (1, 2)]
    return out


def _rel_pos_facts(f: SimpleNamespace, st: Mapping[str, Any], source: str) -> None:
    """What the keys say of BEiT's and VisionTransformerRelPos' parts: q/v biases without a k bias (k_bias), the
    relative position bias's form ('table' / 'mlp'), whether one module is shared, the MLP's hidden width; and the
    key-map entries (f.rel_entries) that read them into the canonical keys."""
    f.k_bias, f.rel_pos, f.rel_pos_shared, f.rel_pos_dim, f.rel_entries = True, "none", False, 128, []
    if "blocks.0.attn.q_bias" in st:  # BEiT: q_bias and v_bias, the k part zero
        if f.qkv_bias:
            raise ConversionError(f"{source}: both 'blocks.0.attn.qkv.bias' and 'blocks.0.attn.q_bias': one qkv bias "
                                  f"layout or the other")
        f.qkv_bias, f.k_bias = True, False
        f.rel_entries.append(Entry(("blocks.{i}.attn.q_bias", "blocks.{i}.attn.v_bias"), "blocks.{i}.attn.qkv.bias",
                                   Fold((0, None, 1))))
    found = []  # (style, shared, kind)
    for style, (shared, block, table) in _REL_POS_LAYOUTS.items():
        for is_shared, prefix in ((True, shared), (False, block.format(i=0))):
            if f"{prefix}.{table}" in st:
                found.append((style, is_shared, "table"))
            elif f"{prefix}.mlp.fc1.weight" in st:
                found.append((style, is_shared, "mlp"))
    if not found:
        return
    if len(found) > 1:
        raise ConversionError(f"{source}: relative position biases in {len(found)} places ("
                              + ", ".join(f"{'shared' if sh else 'per block'} {k} ({st_})" for st_, sh, k in found)
                              + "): a per-block bias with a shared one (their sum) is not a layout the canonical "
                                "model runs")
    style, is_shared, kind = found[0]
    if f.has_dist or f.reg_tokens:
        raise ConversionError(f"{source}: a relative position bias with distillation or register tokens is not a "
                              f"timm layout")
    f.rel_pos, f.rel_pos_shared = kind, is_shared
    f.rel_entries += _rel_pos_entries(style, kind, is_shared)
    src = _REL_POS_LAYOUTS[style][0 if is_shared else 1]
    table = _REL_POS_LAYOUTS[style][2]
    if kind == "mlp":
        w = np.shape(st[f"{src.format(i=0)}.mlp.fc1.weight"])
        if len(w) != 2 or w[1] != 2:
            raise ConversionError(f"{source}: {src.format(i=0)}.mlp.fc1.weight has shape {w}; timm's RelPosMlp reads "
                                  f"2 coordinates: (hidden, 2)")
        f.rel_pos_dim = int(w[0])
    f.rel_table_key = f"{src}.{table}" if kind == "table" else None


def _resize_rel_tables(f: SimpleNamespace, st: Mapping[str, Any], cfg: ViTConfig, source: str) -> dict[str, Any]:
    """The file's learned relative tables at cfg's grid: a table stored for another (square) grid is resampled by
    timm's own rule (shared.posemb.resize_rel_pos_table, as timm's BEiT checkpoint filter does), with a warning."""
    if f.rel_pos != "table":
        return st
    from ..posemb import resize_rel_pos_table

    want = cfg.rel_pos_shapes()["relative_position_bias_table"][0]
    n_extra = 3 * int(cfg.num_prefix_tokens > 0)
    out = dict(st)
    keys = [f.rel_table_key] if f.rel_pos_shared else [f.rel_table_key.format(i=i) for i in range(f.depth)]
    for key in keys:
        if key not in st or np.ndim(st[key]) != 2 or np.shape(st[key])[0] == want:
            continue
        side = isqrt_exact(int(np.shape(st[key])[0]) - n_extra)
        if side is None or side % 2 == 0:
            raise ConversionError(f"{source}: {key} has {np.shape(st[key])[0]} rows: neither the {want} of the "
                                  f"{cfg.grid[0]}x{cfg.grid[1]} grid nor a square grid's (2g-1)^2 + {n_extra}")
        old = ((side + 1) // 2,) * 2
        warnings.warn(f"{source}: {key} is stored for the {old[0]}x{old[1]} grid; resampled to {cfg.grid[0]}x"
                      f"{cfg.grid[1]} by timm's rule (resize_rel_pos_bias_table)", ConversionWarning, stacklevel=3)
        out[key] = resize_rel_pos_table(np.asarray(st[key], np.float32), old, cfg.grid, cfg.num_prefix_tokens
                                        ).astype(np.float32)
    return out


class _Known:
    """What others state about a file's unknowns, ranked: the arguments, the preset, timm's models of the names,
    config.json; and the questions nobody answered (collected, asked together)."""

    def __init__(self, preset, timm_config, resolved, source: str, *, layer_norm_eps, **flags):
        self.source = source
        self.p_cfg = p_cfg = resolve_preset(preset)
        if layer_norm_eps is not None and not (is_real(layer_norm_eps) and 0 < layer_norm_eps < 1):
            raise ConversionError(f"{source}: layer_norm_eps {layer_norm_eps!r}: expected a number in (0, 1)")
        self.flags = {k: v for k, v in dict(flags, layer_norm_eps=layer_norm_eps).items() if v is not None}
        self.p_facts = _preset_facts(p_cfg) if p_cfg is not None else {}
        self.tc_facts = _facts_from_timm_config(timm_config, source) if timm_config else {}
        self.p_name = f"preset {p_cfg.name!r}" if p_cfg is not None else None
        self.p_pool = self.p_facts.pop("pool", None)
        self.tc_pool = self.tc_facts.pop("pool", None)
        self.resolved = resolved
        self.r_facts = [(who, _resolved_facts(r), mine) for who, r, mine in resolved]
        self.r_pools = [(who, f.pop("pool", None), r.layout, mine)
                        for (who, f, mine), (_, r, _) in zip(self.r_facts, resolved)]
        # ranked like a preset (--preset NAME) and like config.json (its architecture): each right after it
        self.by_preset = [(who, f) for who, f, mine in self.r_facts if not mine]
        self.by_config = [(who, f) for who, f, mine in self.r_facts if mine]
        self.known = _Stated([("{flag}", self.flags), (self.p_name, self.p_facts), *self.by_preset,
                              ("config.json", self.tc_facts), *self.by_config], source)
        self.questions: list[str] = []


def _ask_numerics(f: SimpleNamespace, k: _Known, num_heads) -> tuple[int | None, float | None, str | None]:
    """(num_heads, layer_norm_eps, GELU form): the file's heads (qk-norm) first, else what is stated."""
    source, known = k.source, k.known
    if f.heads is not None:  # an argument that contradicts the file is refused, a preset or config.json is told
        if num_heads is not None and num_heads != f.heads:
            raise ConversionError(f"{source}: num_heads {num_heads} contradicts the file: its qk-norm width "
                                  f"{f.D // f.heads} makes {f.heads} heads of embed_dim {f.D}")
        for who, said in ((k.p_name, k.p_facts), *k.by_preset, ("config.json", k.tc_facts), *k.by_config):
            if said.get("num_heads") not in (None, f.heads):
                warnings.warn(f"{source}: {who} says num_heads={said['num_heads']}, the file's qk-norm width makes "
                              f"{f.heads}: using the file's", ConversionWarning, stacklevel=3)
        H = f.heads
    else:
        H = known.get("num_heads")
        if H is None:
            k.questions.append("num_heads (--num-heads N, or --preset NAME, or timm's config.json with "
                               "architecture / model_args.num_heads)")
    eps = known.get("layer_norm_eps")
    if eps is None:
        k.questions.append("layer_norm_eps (--layer-norm-eps EPS, or --preset NAME with the model's numerics, e.g. "
                           "--preset vit_base_patch16_224, or timm's config.json naming a known architecture)")
    # the MLP: the file tells whether it is gated; a gated MLP's activation, or else the GELU form, is stated
    for who, v in (("--mlp", k.flags.get("mlp")), ("config.json", k.tc_facts.get("mlp")),
                   *((who, r.get("mlp")) for who, r, _ in k.r_facts)):
        if v is not None and (v == "swiglu") != f.gated:
            raise ConversionError(
                f"{source}: {who} says a {'SwiGLU' if v == 'swiglu' else 'GELU'} MLP, which contradicts the file: "
                f"blocks.0.mlp.fc1 has {f.fc1_rows} rows for fc2's {f.fc2_cols} inputs (" +
                ("a packed gated MLP)" if f.gated else "a plain MLP)"))
    if f.gated:
        if known.get("mlp") != "swiglu":
            k.questions.append(f"the gated MLP's activation: blocks.0.mlp.fc1 has {f.fc1_rows} rows, twice fc2's "
                               f"{f.fc2_cols} inputs (a packed gated MLP, timm GluMlp), and only SiLU (SwiGLU, "
                               f"DINOv2-giant) is supported (--mlp swiglu, or --preset NAME of a SwiGLU model, or "
                               f"config.json act_layer 'silu')")
        act = known.get("gelu") or "erf"  # the blocks have no GELU; the field keeps a valid value
    else:
        act = known.get("gelu")
        if act is None:
            k.questions.append("the GELU form: erf, tanh or quick (x * sigmoid(1.702 x), CLIP) (--gelu erf|tanh|"
                               "quick, or --preset NAME, or config.json model_args.act_layer)")
    return H, eps, act


def _ask_pool(f: SimpleNamespace, k: _Known) -> tuple[str | None, str | None]:
    """(pooling, who said it): the keys settle it (attn_pool, a distillation token, no class token), else stated."""
    source, p_cfg = k.source, k.p_cfg
    if f.pool is not None:
        why = {"map": "it has attn_pool.* (an attention-pool head)", "token": "it has a distillation token (DeiT "
               "pools the class and distillation tokens)", "mean": "it has no class token"}[f.pool]
        for who, v in (("--pool", k.flags.get("pool")), ("config.json", k.tc_pool),
                       *((who, v) for who, v, _, mine in k.r_pools if mine)):
            if v is not None and v != f.pool:
                raise ConversionError(f"{source}: {who} says pool {TIMM_POOL[v]!r}, which contradicts the file: "
                                      f"{why} (pool {TIMM_POOL[f.pool]!r})")
        return f.pool, "the file"
    stated = [("--pool", k.flags.get("pool"))]
    if p_cfg is not None and k.p_pool in ("token", "mean") and p_cfg.class_token != "none" \
            and (p_cfg.final_norm, p_cfg.fc_norm) == (f.final_norm, f.fc_norm):
        stated.append((k.p_name, k.p_pool))
    keys = (f.has_cls, f.final_norm, f.fc_norm)  # a resolved model's pooling applies to its own layout only
    stated += [(who, v) for who, v, lay, mine in k.r_pools if not mine and lay == keys]
    stated.append(("config.json", k.tc_pool))
    stated += [(who, v) for who, v, lay, mine in k.r_pools if mine and lay == keys]
    stated = [(who, v) for who, v in stated if v is not None]
    if stated:
        (pool_by, pool_c), others = stated[0], stated[1:]
        if pool_c == "map":
            raise ConversionError(f"{source}: {pool_by} says pool 'map', but the file has no attn_pool.* keys")
        told = [f"{w} says {TIMM_POOL[v]!r}" for w, v in others if v != pool_c]
        if told:
            warnings.warn(f"{source}: pool={TIMM_POOL[pool_c]!r} from {pool_by} ({'; '.join(told)})",
                          ConversionWarning, stacklevel=3)
        return pool_c, pool_by
    said = ""
    if p_cfg is not None:
        said = (f"preset {p_cfg.name!r} says {TIMM_POOL.get(k.p_pool, k.p_pool)!r} pooling with "
                f"{'fc_norm' if p_cfg.fc_norm else 'a final norm' if p_cfg.final_norm else 'no norm'}"
                f"{', no class token' if p_cfg.class_token == 'none' else ''}, which is not this file's "
                f"layout, so it does not answer; ")
    layout = "fc_norm" if f.fc_norm else "a final norm" if f.final_norm else "no norm"
    k.questions.append(f"class-token or average pooling: the file has a class token and {layout}, which "
                       f"timm builds for both ({said}--pool token|avg, or config.json global_pool)")
    return None, None


def _ask_grid(f: SimpleNamespace, k: _Known, st: Mapping[str, Any], image_size, grid):
    """(prefix tokens with a position row, the table's grid, who stated it, the stated image sizes)."""
    source, p_cfg = k.source, k.p_cfg
    hints: list[tuple[tuple[int, int], str, str | None]] = []
    if image_size is not None:
        hints.append((pair(image_size), "--image-size", None))
    if "image_size" in k.tc_facts:
        hints.append((k.tc_facts["image_size"], "config.json", k.tc_facts.get("pos_rows")))
    hints += [(r["image_size"], who, r.get("pos_rows")) for who, r in k.by_config]
    if p_cfg is not None:
        hints.append((tuple(p_cfg.image_size), k.p_name, k.p_facts.get("pos_rows")))
    hints += [(r["image_size"], who, r.get("pos_rows")) for who, r in k.by_preset]
    npos, pos_grid, grid_by = f.n0, None, None
    if f.has_pos:
        pe_shape = np.shape(st["pos_embed"])
        if len(pe_shape) != 3 or pe_shape[0] != 1 or pe_shape[2] != f.D:
            raise MismatchError(source, [f"key 'pos_embed': expected shape (1, tokens, {f.D}), got {pe_shape}"])
        try:
            npos, pos_grid, grid_by = _table_layout(int(pe_shape[1]), f.P, f.n0, grid, hints, source)
        except MissingFactsError as e:
            k.questions.append(str(e).removeprefix(f"{source}: "))
    elif grid is not None:
        raise ConversionError(f"{source}: a grid was given, but the file has no pos_embed (no position table)")
    return npos, pos_grid, grid_by, hints


def _init_values(f: SimpleNamespace, k: _Known) -> float | None:
    """LayerScale's init value: stated, else DEFAULT_INIT_VALUES with a warning; None without gammas."""
    if not f.layer_scale:
        return None
    init_values = k.known.get("init_values")
    if init_values is None:
        init_values = DEFAULT_INIT_VALUES
        warnings.warn(f"{k.source}: the file has LayerScale gammas; their init value (init_values, used only to "
                      f"initialise training) is stated nowhere: set to {DEFAULT_INIT_VALUES}",
                      ConversionWarning, stacklevel=3)
        k.known.used["init_values"] = "the default (not stated; training init only)"
    return init_values


def _tell_preset_conflicts(f: SimpleNamespace, k: _Known, st: Mapping[str, Any], H: int, npos: int,
                           grid_by: str | None) -> None:
    """The preset (and timm's models of the names) against the file: the file wins, and a warning says where."""
    p_cfg, source = k.p_cfg, k.source
    if p_cfg is not None:
        file_vals = dict(embed_dim=f.D, in_chans=f.C, patch_size=f.P, patch_bias=f.patch_bias, depth=f.depth,
                         mlp_dim=f.mlp_dim, swiglu=f.gated, qkv_bias=f.qkv_bias, qk_norm=f.qk_norm,
                         class_token="learned" if f.has_cls else "none", dist_token=f.has_dist,
                         reg_tokens=f.reg_tokens, pos_embed="learned" if f.has_pos else "none", norm_pre=f.norm_pre,
                         final_norm=f.final_norm, fc_norm=f.fc_norm, representation_size=f.rep,
                         num_classes=f.num_classes, k_bias=f.k_bias, rel_pos=f.rel_pos,
                         rel_pos_shared=f.rel_pos_shared, attn_inner_norm=f.attn_inner_norm,
                         mlp_inner_norm=f.mlp_inner_norm)
        conflicts = [f"{key}: preset {getattr(p_cfg, key)!r}, file {v!r}" for key, v in file_vals.items()
                     if getattr(p_cfg, key) != v]
        if (p_cfg.init_values is not None) != f.layer_scale:
            conflicts.append(f"LayerScale: preset {'has' if p_cfg.init_values is not None else 'has none'}, file "
                             f"{'has ls1/ls2 gammas' if f.layer_scale else 'has none'}")
        if f.pool is not None and p_cfg.pool != f.pool:
            conflicts.append(f"pool: preset {TIMM_POOL.get(p_cfg.pool, p_cfg.pool)!r}, file {TIMM_POOL[f.pool]!r}")
        if f.has_pos and p_cfg.pos_embed == "learned" and p_cfg.num_pos_prefix != npos \
                and p_cfg.num_prefix_tokens == f.n0:
            conflicts.append(f"prefix tokens with a position row: preset {p_cfg.num_pos_prefix}, file {npos} "
                             f"(read at the grid stated by {grid_by})")
        if p_cfg.attn_dim not in (None, f.D) or p_cfg.attn_value_skip or p_cfg.qk_scale is not None:
            conflicts.append("preset's attention width / value skip / qk_scale do not apply to a timm file")
        if p_cfg.output_softmax:
            conflicts.append("preset's output_softmax: timm models return logits")
        if conflicts:
            heads = "" if f.heads is not None or f.D == p_cfg.embed_dim else \
                f" (num_heads {H} is the preset's: the file cannot tell)"
            warnings.warn(f"{source}: the file's sizes win over preset {p_cfg.name!r}{heads}: " + "; ".join(conflicts),
                          ConversionWarning, stacklevel=3)
    for who, r, mine in k.resolved:  # --preset NAME resolved by timm: like a preset, the file's sizes win, and say so
        conflicts = [] if mine else _shape_conflicts(st, r.shapes)
        if conflicts:
            more = f" (+{len(conflicts) - 6} more)" if len(conflicts) > 6 else ""
            warnings.warn(f"{source}: the file's sizes win over {who} (built with no model_args): "
                          + "; ".join(conflicts[:6]) + more, ConversionWarning, stacklevel=3)


def _timm_config(f: SimpleNamespace, k: _Known, *, H, eps, act, pool, pool_by, npos, grid_by, target,
                 init_values) -> ViTConfig:
    """The imported config, its notes saying who stated each fact the file does not determine."""
    p_cfg, known = k.p_cfg, k.known
    extra = {}
    if p_cfg is not None:
        extra = dict(dropout=p_cfg.dropout, attn_dropout=p_cfg.attn_dropout, drop_path=p_cfg.drop_path)
    said = {"num_heads": "the file (qk-norm width)" if f.heads is not None else known.used.get("num_heads"),
            "layer_norm_eps": known.used.get("layer_norm_eps"), "gelu": known.used.get("gelu"),
            "mlp": known.used.get("mlp") if f.gated else None, "pool": pool_by,
            "grid": grid_by, "init_values": known.used.get("init_values")}
    block_norm = known.get("block_norm") or "pre"  # never from the keys: pre and post-norm blocks share them
    if block_norm != "pre":
        said["block_norm"] = known.used.get("block_norm")
    told = ", ".join(f"{key} from {v}" for key, v in said.items() if v)
    try:
        return ViTConfig(
            name=p_cfg.name if p_cfg is not None else (k.by_preset[0][1]["name"] if k.by_preset else
                                                       k.tc_facts.get("name", "timm_import")), image_size=target,
            in_chans=f.C, patch_size=f.P, patch_bias=f.patch_bias, embed_dim=f.D, depth=f.depth, num_heads=H,
            mlp_dim=f.mlp_dim, swiglu=f.gated, qkv_bias=f.qkv_bias, qk_norm=f.qk_norm, init_values=init_values,
            class_token="learned" if f.has_cls else "none", dist_token=f.has_dist, reg_tokens=f.reg_tokens,
            pool=pool, pos_embed="learned" if f.has_pos else "none",
            pos_prefix_tokens=(None if npos == f.n0 else npos) if f.has_pos else None,
            resize_kernel=p_cfg.resize_kernel if p_cfg is not None else TIMM_RESIZE_KERNEL,  # timm's own, fixed
            gelu=act, layer_norm_eps=float(eps), norm_pre=f.norm_pre, final_norm=f.final_norm, fc_norm=f.fc_norm,
            representation_size=f.rep, num_classes=f.num_classes, k_bias=f.k_bias, rel_pos=f.rel_pos,
            rel_pos_shared=f.rel_pos_shared, rel_pos_dim=f.rel_pos_dim, block_norm=block_norm,
            num_parallel=f.num_parallel,
            attn_inner_norm=f.attn_inner_norm, mlp_inner_norm=f.mlp_inner_norm,
            pool_include_prefix=bool(known.get("pool_include_prefix")) and pool in ("mean", "map") and f.n0 > 0,
            pool_heads=known.get("pool_heads") if pool == "map" else None, pool_mlp_dim=f.pool_mlp_dim,
            notes=f"imported from timm checkpoint {k.source}; what the file does not determine: {told}", **extra)
    except ConfigError as e:
        raise ConversionError(f"{k.source}: the imported model is not a valid ViTConfig: {e}") from None


# ---------------------------------------------------------------------------- NaFlex
#: timm's NaFlexVit architectures are named naflexvit_*: a config of such a name exports as that NaFlexVit
NAFLEX_PREFIX = "naflexvit_"
#: the resize kernels NaFlexVit can state (pos_embed_interp_mode, pos_embed_antialias), align_corners=False
NAFLEX_KERNEL_ARGS = {"bicubic_antialias": ("bicubic", True), "bicubic": ("bicubic", False),
                      "bilinear_antialias": ("bilinear", True), "bilinear": ("bilinear", False)}
#: NaFlexVit's embedding keys <-> the classic VisionTransformer's (the patch projection and the table reshaped)
_NAFLEX_KEYS = {"embeds.proj.weight": "patch_embed.proj.weight", "embeds.proj.bias": "patch_embed.proj.bias",
                "embeds.pos_embed": "pos_embed", "embeds.cls_token": "cls_token", "embeds.reg_token": "reg_token",
                "embeds.pos_embed_y": "pos_embed_y", "embeds.pos_embed_x": "pos_embed_x"}
#: a factorized NaFlexVit's row and column tables (canonical pos_embed='factorized'; the same names, no embeds.)
_FACTORIZED = ("pos_embed_y", "pos_embed_x")


def is_naflex_state(st: Mapping[str, Any]) -> bool:
    """A timm NaFlexVit state dict (its `embeds.*` keys), not a VisionTransformer's."""
    return any(k.startswith("embeds.") for k in st)


def is_naflex(cfg: ViTConfig) -> bool:
    """Whether `cfg` is named after a timm NaFlexVit architecture (a NaFlex preset, or a naflexvit_* name timm
    knows): its timm form is then that NaFlexVit."""
    name = cfg.name.split(".")[0]
    return name.startswith(NAFLEX_PREFIX) and (name in PRESETS or bool(timm_knows(name)))


def _naflex_facts(preset, resolved, source: str) -> dict[str, Any]:
    """What a NaFlexVit file cannot tell by itself (its Linear's P*P*C inputs do not split into patch size and
    channels; the table's resize kernel): from timm's model of its architecture, else a NaFlex preset."""
    for who, r, _ in resolved:
        if "naflex" in r.facts:
            return dict(r.facts["naflex"], who=who)
    p_cfg = resolve_preset(preset)
    if p_cfg is not None and is_naflex(p_cfg):
        return dict(patch_size=p_cfg.patch_size, in_chans=p_cfg.in_chans, resize_kernel=p_cfg.resize_kernel,
                    factorized=p_cfg.pos_embed == "factorized", ar_preserving=p_cfg.pos_ar_preserving,
                    who=f"preset {p_cfg.name!r}")
    raise MissingFactsError(f"{source}: a timm NaFlexVit state dict (embeds.* keys): its flattened patch projection "
                            f"does not tell the patch size from the channels, nor the table's resize kernel; name "
                            f"its architecture (timm's config.json beside it, or --preset naflexvit_...)")


def naflex_to_vit(st: Mapping[str, Any], patch_size: int, in_chans: int, source: str) -> tuple[dict[str, Any],
                                                                                             tuple[int, int] | None]:
    """A NaFlexVit state dict -> the classic VisionTransformer's, exactly (only reshapes and transposes): the Linear
    over (ph, pw, C)-flattened patches becomes the conv kernel (D, C, P, P) (W_conv[d, c, i, j] =
    W_lin[d, (i * P + j) * C + c]), the (1, h, w, D) table (1, h*w, D) in row-major order (rows for the patches
    only; `shared.convert.keymap.linear_patches`); factorized tables `embeds.pos_embed_y` (1, h, D) and
    `embeds.pos_embed_x` (1, w, D) as pos_embed_y / pos_embed_x, unchanged. Returns (state, the table's grid or
    None). Any other embeds.* key is refused by name."""
    out = {k: v for k, v in st.items() if not k.startswith("embeds.")}
    other = sorted(k for k in st if k.startswith("embeds.") and k not in _NAFLEX_KEYS)
    if other:
        raise ConversionError(f"{source}: NaFlexVit embedding keys the canonical model cannot run: {other[:4]} "
                              f"(norms inside the embedding)")
    P, C = patch_size, in_chans
    w = np.asarray(st["embeds.proj.weight"]) if "embeds.proj.weight" in st else None
    if w is None or w.ndim not in (2, 4):
        raise MismatchError(source, [f"key 'embeds.proj.weight': expected a Linear (D, {P * P * C}) or a conv "
                                     f"(D, {C}, {P}, {P}), got {None if w is None else w.shape}"])
    if w.ndim == 2:
        if w.shape[1] != P * P * C:
            raise MismatchError(source, [f"key 'embeds.proj.weight': expected (D, {P * P * C}) = patch {P}x{P} x "
                                         f"{C} channels, got {w.shape}"])
        w = linear_patches(w.shape[0], P, C).forward([w])[0]
    out["patch_embed.proj.weight"] = np.ascontiguousarray(w)
    for k in ("embeds.proj.bias", "embeds.cls_token", "embeds.reg_token"):
        if k in st:
            out[_NAFLEX_KEYS[k]] = st[k]
    grid = None
    if "embeds.pos_embed" in st:
        pe = np.asarray(st["embeds.pos_embed"])
        if pe.ndim != 4 or pe.shape[0] != 1:
            raise MismatchError(source, [f"key 'embeds.pos_embed': expected (1, h, w, D), got {pe.shape}"])
        grid = (int(pe.shape[1]), int(pe.shape[2]))
        out["pos_embed"] = pe.reshape(1, grid[0] * grid[1], pe.shape[3])
    if "embeds.pos_embed_y" in st or "embeds.pos_embed_x" in st:  # factorized: kept as they are (pos_embed_y/x)
        y, x = (np.asarray(st.get(f"embeds.{k}")) for k in _FACTORIZED)
        if y.ndim != 3 or x.ndim != 3 or y.shape[0] != 1 or x.shape[0] != 1 or y.shape[2] != x.shape[2]:
            raise MismatchError(source, [f"keys 'embeds.pos_embed_y', 'embeds.pos_embed_x': expected (1, h, D) and "
                                         f"(1, w, D), got {y.shape} and {x.shape}"])
        grid = (int(y.shape[1]), int(x.shape[1]))
        out["pos_embed_y"], out["pos_embed_x"] = y, x
    return out, grid


def vit_to_naflex(cfg: ViTConfig, st: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The exact inverse of `naflex_to_vit` for `cfg` (its table at cfg.table_grid, patch rows only)."""
    out = {k: v for k, v in st.items() if k not in _NAFLEX_KEYS.values()}
    w = np.asarray(st["patch_embed.proj.weight"])  # (pos_embed_y / pos_embed_x: embeds.* of the same names)
    out["embeds.proj.weight"] = linear_patches(w.shape[0], cfg.patch_size, cfg.in_chans).backward([w], 1)[0]
    for nk, vk in _NAFLEX_KEYS.items():
        if vk in st and nk != "embeds.proj.weight":
            out[nk] = st[vk]
    if "pos_embed" in st:
        gh, gw = cfg.table_grid
        out["embeds.pos_embed"] = np.ascontiguousarray(np.asarray(st["pos_embed"]).reshape(1, gh, gw, -1))
    return out


def _naflex_problems(cfg: ViTConfig) -> list[str]:
    """Why `cfg` has no NaFlexVit form (beyond a VisionTransformer's)."""
    p = []
    if cfg.pos_embed == "learned" and cfg.resize_kernel not in NAFLEX_KERNEL_ARGS:
        p.append(f"resize_kernel {cfg.resize_kernel!r}: NaFlexVit resamples with {', '.join(NAFLEX_KERNEL_ARGS)}")
    if cfg.pos_embed == "factorized" and cfg.resize_kernel != "bilinear":
        p.append(f"factorized tables resampled with {cfg.resize_kernel!r}: NaFlexVit resamples them with 1-D "
                 f"linear interpolation (resize_kernel 'bilinear')")
    if cfg.dist_token:
        p.append("a distillation token: NaFlexVit has none")
    if cfg.swiglu:
        p.append("a packed SwiGLU MLP: NaFlexVit's swiglu_mlp builds EVA blocks with an unpacked SwiGLU")
    if cfg.layer_norm_eps != TIMM_DEFAULT_EPS:
        p.append(f"LayerNorm eps {cfg.layer_norm_eps}: NaFlexVit's norm_layer is named by a string (eps 1e-6)")
    if cfg.attn_inner_norm or cfg.mlp_inner_norm:
        p.append("a norm inside attention or the MLP (attn_inner_norm / mlp_inner_norm): NaFlexVitCfg has no "
                 "scale_attn_norm / scale_mlp_norm")
    return p


# ---------------------------------------------------------------------------- the key map
def key_map(cfg: ViTConfig, extra: Sequence[Entry] = ()) -> list[Entry]:
    """timm's keys for `cfg`: timm's keys are the canonical ones, each read as itself, except the canonical keys an
    `extra` entry writes (templates over blocks.{i}, see shared.convert.keymap.expand): a layout timm's blocks hold
    differently is one entry here, e.g. BEiT's q and v biases, fused with a zero k bias:
    Entry(("blocks.{i}.attn.q_bias", "blocks.{i}.attn.v_bias"), "blocks.{i}.attn.qkv.bias", Fold((0, None, 1)))."""
    own = expand(extra, cfg.depth)
    written = {k for e in own for k in e.dst}
    return [Entry(k, k) for k in expected_shapes(cfg) if k not in written] + own


# ---------------------------------------------------------------------------- timm's Eva class
def is_eva(cfg: ViTConfig) -> bool:
    """Whether `cfg` is a timm `Eva` (an option only timm's Eva has on: rotary positions, q/v biases without k,
    separate q/k/v, attention-only LayerScale) rather than a VisionTransformer. The inner norms alone (attn_inner_norm,
    mlp_inner_norm) are timm's VisionTransformer with scale_attn_norm / scale_mlp_norm (BEiT3); RMSNorm and timm's
    unpacked SwiGLU alone are a stated VisionTransformer (`is_vit_stated`: AIMv2)."""
    return cfg.rel_pos == "none" and (  # q/v biases with a relative position bias: timm's Beit
        cfg.rope != "none" or not cfg.qkv_fused or (cfg.qkv_bias and not cfg.k_bias) or cfg.ls_attn_only)


def is_vit_stated(cfg: ViTConfig) -> bool:
    """Whether `cfg` is a timm VisionTransformer with an option its keys cannot tell, so that its whole config is
    stated by its architecture (timm_resolve's facts['vit_config']) or preset, as an Eva's is: RMSNorm (norm_layer
    RmsNorm: a norm without bias), a patch-embedding norm (embed_norm_layer), no projection biases (proj_bias=False)
    or timm's unpacked SwiGLU (mlp_layer=SwiGLU): AIMv2, test_vit4."""
    return cfg.rel_pos == "none" and not is_eva(cfg) and (
        cfg.norm_kind != "layer" or cfg.patch_norm or not cfg.proj_bias or cfg.swiglu_unpacked)


def eva_key_map(cfg: ViTConfig) -> list[Entry]:
    """timm Eva's keys for `cfg`: the canonical ones, except LayerScale's `gamma_1` / `gamma_2` (ls1 / ls2.gamma) and
    a fused projection's `q_bias` / `v_bias` (qkv.bias with a zero k third: EvaAttention keeps no k bias)."""
    extra = []
    if cfg.qkv_fused and cfg.qkv_bias and not cfg.k_bias:
        extra.append(Entry(("blocks.{i}.attn.q_bias", "blocks.{i}.attn.v_bias"), "blocks.{i}.attn.qkv.bias",
                           Fold((0, None, 1))))
    if cfg.init_values is not None:
        extra.append(Entry("blocks.{i}.gamma_1", "blocks.{i}.ls1.gamma"))
        if not cfg.ls_attn_only:
            extra.append(Entry("blocks.{i}.gamma_2", "blocks.{i}.ls2.gamma"))
    return key_map(cfg, extra)


def _stated(cfg: ViTConfig, eva_class: bool) -> tuple[ViTConfig, list[Entry]]:
    return cfg, eva_key_map(cfg) if eva_class else key_map(cfg)


def _from_resolved(r) -> tuple[ViTConfig, list[Entry]] | None:
    if r is not None and "eva_config" in r.facts:
        return _stated(ViTConfig(**r.facts["eva_config"]), True)
    if r is not None and "vit_config" in r.facts:
        return _stated(ViTConfig(**r.facts["vit_config"]), False)
    return None


def _stated_config(st: Mapping[str, Any], preset, timm_config, source: str) -> tuple[ViTConfig, list[Entry]] | None:
    """(config, key map) of a file whose architecture states its whole config: timm's Eva, or a VisionTransformer
    with options its keys cannot tell (`is_vit_stated`): such a preset (by name or config), or the architecture a
    name / config.json names, resolved by timm (its built model's facts['eva_config'] / ['vit_config'], num_classes
    from the file); None otherwise (the keys are read for what they tell)."""
    if isinstance(preset, ViTConfig):
        return _stated(preset, is_eva(preset)) if is_eva(preset) or is_vit_stated(preset) else None
    n_cls = int(np.shape(st["head.weight"])[0]) if "head.weight" in st and np.ndim(st["head.weight"]) == 2 else 0
    if isinstance(preset, str):
        if is_suite_preset(preset):
            p = resolve_preset(preset)
            return _stated(p.replace(num_classes=n_cls), is_eva(p)) if is_eva(p) or is_vit_stated(p) else None
        return _from_resolved(resolve_timm_architecture(preset, {"num_classes": n_cls}, source))
    arch = (timm_config.get("architecture") or timm_config.get("model_name")) if timm_config else None
    if isinstance(arch, str) and arch.split(".")[0] in PRESETS and (is_eva(PRESETS[arch.split(".")[0]])
                                                                    or is_vit_stated(PRESETS[arch.split(".")[0]])):
        arch = arch.split(".")[0]
    elif isinstance(arch, str) and arch.split(".")[0] in TIMM_ARCHITECTURES:  # a VisionTransformer preset
        arch = None
    if isinstance(arch, str):
        args = timm_config.get("model_args") or {}
        if not isinstance(args, Mapping):
            raise ConfigError(f"{source}: config.json: 'model_args' must be an object, got {shown(args)}")
        return _from_resolved(resolve_timm_architecture(
            arch.split(".")[0], {"num_classes": timm_config.get("num_classes", n_cls), **args}, source))
    return None


def _import_stated(st: Mapping[str, Any], cfg: ViTConfig, keys: list[Entry], image_size, source: str):
    """A timm Eva (or stated VisionTransformer) state dict under its config: every key read once through its key map
    (`eva_key_map` / `key_map`; the file's keys must be exactly that model's), at image_size when given (a learned
    table keeps its grid: resampled in the forward)."""
    out = take(keys, st, source, expected=expected_shapes(cfg))
    if image_size is not None and pair(image_size) != cfg.image_size:
        cfg = cfg.with_image_size(pair(image_size))
    validate_state(cfg, out, source=source)
    return cfg, out


def _eva_problems(cfg: ViTConfig) -> list[str]:
    p = []
    if cfg.gelu != "erf" and not cfg.swiglu:
        p.append(f"gelu={cfg.gelu!r}: timm's Eva blocks run nn.GELU (erf)")
    if cfg.dist_token or cfg.class_token == "zeros" or cfg.pool == "token_mean" or cfg.representation_size \
            or cfg.attn_value_skip or cfg.attn_dim is not None or cfg.pos_embed in ("sincos1d", "sincos2d") \
            or cfg.output_softmax or (cfg.qk_scale is not None and cfg.qk_scale != cfg.head_dim ** -0.5):
        p.append("a distillation token, zero class token, token_mean pool, pre-logits, value skip, attn_dim, a "
                 "sin-cos table, output softmax or a qk_scale: timm's Eva has none of them")
    if cfg.pos_embed == "learned" and (cfg.table_grid != cfg.grid or 0 < cfg.num_pos_prefix < cfg.num_prefix_tokens):
        p.append("a position table at another grid, or rows for only some prefix tokens")
    if cfg.patch_bias == cfg.norm_pre:
        p.append(f"patch_bias={cfg.patch_bias} with norm_pre={cfg.norm_pre}: timm's Eva builds the patch projection "
                 f"with bias = not use_pre_transformer_norm")
    if cfg.pool == "map" and cfg.num_prefix_tokens and not cfg.pool_include_prefix:
        p.append("pool='map' over the patch tokens only with prefix tokens: timm's Eva's attention pool sees every "
                 "token (pool_include_prefix)")
    if cfg.pool == "mean" and cfg.pool_include_prefix:
        p.append("pool='mean' over the prefix tokens too (pool_include_prefix): timm's Eva averages the patch tokens")
    if cfg.block_norm == "post" and (cfg.qk_norm or cfg.ls_attn_only):
        p.append("post-norm blocks with qk-norm or attention-only LayerScale: timm's Eva refuses them with "
                 "use_post_norm")
    if cfg.num_parallel > 1:
        p.append("parallel blocks (num_parallel): timm's Eva has none (its VisionTransformer's ParallelThingsBlock "
                 "runs none of the Eva options)")
    if cfg.num_kv_heads is not None and cfg.qkv_bias and not cfg.k_bias:
        p.append("num_kv_heads with k_bias=False: timm's grouped-query attention is AttentionRope's (a k bias with "
                 "the q and v biases), EvaAttention has none")
    return p


def eva_model_kwargs(cfg: ViTConfig) -> dict[str, Any]:
    """kwargs for `timm.models.eva.Eva(**kwargs)`, the model that loads `export_timm(cfg, state)` strictly (imports
    timm for the norm layer). q/v biases without a k bias build EvaAttention (attn_type 'eva'), full biases
    AttentionRope ('rope'); an unpacked SwiGLU without an MLP norm is forced with swiglu_align_to=1 (a no-op
    alignment)."""
    from functools import partial

    from timm.layers import LayerNorm, RmsNorm

    _refuse_for_eva(cfg)
    kw = eva_model_args(cfg)
    kw["img_size"] = tuple(kw["img_size"])
    if kw.get("ref_feat_shape") is not None:
        kw["ref_feat_shape"] = tuple(kw["ref_feat_shape"])
    kw["norm_layer"] = partial(RmsNorm if cfg.norm_kind == "rms" else LayerNorm, eps=cfg.layer_norm_eps)
    kw.update(proj_drop_rate=cfg.dropout, attn_drop_rate=cfg.attn_dropout, drop_path_rate=cfg.drop_path)
    return kw


#: the architectures an exported Eva config is built on, by its norm (kind, eps), the first that fits: only the norm
#: layer, which JSON model_args cannot name, comes from it; every size and option is given
_EVA_BASES = {("layer", 1e-6): ("eva02_tiny_patch14_224", "eva_giant_patch14_224"),
              ("layer", 1e-5): ("vit_base_patch16_dinov3", "vit_pe_core_base_patch16_224"),
              ("rms", 1e-6): ("vit_base_patch16_sapiens2",)}
#: the Eva arguments each base sets that a config's null would not override (create_model drops a None kwarg, so the
#: base's LayerScale init or rope reference grid would stay): a base fits a config that has its own of each
_EVA_BASE_SETS = {"eva02_tiny_patch14_224": {"ref_feat_shape"}, "eva_giant_patch14_224": set(),
                  "vit_base_patch16_dinov3": {"init_values"}, "vit_pe_core_base_patch16_224": {"ref_feat_shape"},
                  "vit_base_patch16_sapiens2": {"init_values"}}


def _refuse_for_eva(cfg: ViTConfig) -> None:
    problems = _eva_problems(cfg)
    if problems:
        raise ConversionError(f"config {cfg.name!r} cannot be expressed as a timm Eva:\n  " + "\n  ".join(problems))


def eva_model_args(cfg: ViTConfig) -> dict[str, Any]:
    """timm Eva arguments for every size and option of `cfg` (JSON values only: no norm layer, no drop rates)."""
    D, M = cfg.embed_dim, cfg.mlp_dim
    ratio = M / D if int(D * (M / D)) == M else (M + 0.5) / D
    kw: dict[str, Any] = dict(
        img_size=list(cfg.image_size), patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        global_pool=TIMM_POOL[cfg.pool], embed_dim=D, depth=cfg.depth, num_heads=cfg.num_heads,
        qkv_bias=cfg.qkv_bias, qkv_fused=cfg.qkv_fused, qk_norm=cfg.qk_norm, mlp_ratio=ratio, swiglu_mlp=cfg.swiglu,
        swiglu_align_to=1 if cfg.swiglu_unpacked and not cfg.mlp_inner_norm else 0,
        scale_mlp=cfg.mlp_inner_norm, scale_attn_inner=cfg.attn_inner_norm,
        attn_type="eva" if not cfg.qkv_bias or not cfg.k_bias else "rope",
        init_values=cfg.init_values, attn_only_layer_scale=cfg.ls_attn_only, class_token=cfg.class_token != "none",
        num_reg_tokens=cfg.reg_tokens, no_embed_class=cfg.pos_embed == "learned" and cfg.num_pos_prefix == 0,
        use_abs_pos_emb=cfg.pos_embed == "learned", use_rot_pos_emb=cfg.rope != "none",
        use_pre_transformer_norm=cfg.norm_pre, use_post_transformer_norm=cfg.final_norm, use_fc_norm=cfg.fc_norm,
        num_kv_heads=(None if cfg.block_norm == "post" else list(cfg.kv_heads) if cfg.num_kv_heads is not None
                      else cfg.num_heads), dynamic_img_size=False,
        use_post_norm=cfg.block_norm == "post",
        ref_feat_shape=list(cfg.rope_ref_grid) if cfg.rope_ref_grid is not None else None)
    if cfg.rope != "none":  # (rope_grid_offset: timm's mixed form takes none)
        kw.update(rope_type=cfg.rope, rope_temperature=cfg.rope_temperature, rope_grid_indexing=cfg.rope_indexing,
                  rope_rotate_half=cfg.rope_rotate_half, rope_grid_offset=cfg.rope_offset)
    if cfg.pool == "map":
        P = cfg.pool_args()["hidden"]  # timm sizes the pool's MLP int(D * attn_pool_mlp_ratio)
        kw.update(attn_pool_num_heads=cfg.pool_heads or cfg.num_heads,
                  attn_pool_mlp_ratio=P / D if int(D * (P / D)) == P else (P + 0.5) / D)
    return kw


# ---------------------------------------------------------------------------- export
#: the ViT-family options (words of ViTConfig.family_options' names) timm's VisionTransformer holds: all but DINOv2's
#: concat head (prefix tokens without a position row: no_embed_class, or folded into their tokens by timm_form)
TIMM_FAMILY = ("LayerScale", "distillation", "register", "without a position row", "norm_pre", "qk-norm",
               "attention-pool", "patch_bias=False", "SwiGLU", "QuickGELU", "post-norm", "parallel blocks",
               "patch_norm", "proj_bias=False", "RMSNorm", "a norm inside attention", "a norm inside the MLP",
               "over the prefix tokens too")
#: the architecture a stated VisionTransformer config (`is_vit_stated`) is built on from a config.json, by (norm kind,
#: eps, MLP): model_args cannot name a norm layer with its eps or an MLP class, the base builds them
_STATED_BASES = {("rms", 1e-5, "swiglu_unpacked"): "aimv2_large_patch14_224", ("rms", 1e-6, "gelu"): "test_vit4",
                 ("layer", 1e-6, "gelu"): "vit_base_patch16_224", ("layer", 1e-5, "gelu"): "vit_base_patch16_clip_224",
                 ("layer", 1e-6, "swiglu"): _SWIGLU_ARCHITECTURE}
#: the stated bases that build a patch-embedding norm (the config's norm kind and eps)
_PATCH_NORM_BASES = frozenset({"aimv2_large_patch14_224"})


def _mlp_kind(cfg: ViTConfig) -> str:
    return "swiglu_unpacked" if cfg.swiglu_unpacked else "swiglu" if cfg.swiglu else "gelu"


def rel_pos_class(cfg: ViTConfig) -> str | None:
    """timm's model class that holds a relative-position config: "Beit" (a learned table with q/v biases without a
    k bias, or with an absolute table), "VisionTransformerRelPos" (the rest: a table or RelPosMlp, a full qkv bias
    or none; a table without any qkv bias is the same model in both, and goes here), or None."""
    if cfg.rel_pos == "none":
        return None
    beit = cfg.rel_pos == "table" and ((cfg.qkv_bias and not cfg.k_bias) or cfg.pos_embed == "learned")
    return "Beit" if beit else "VisionTransformerRelPos"


def _rel_pos_problems(cfg: ViTConfig) -> list[str]:
    """Why a relative-position config has no form in timm's Beit / VisionTransformerRelPos (empty when it has)."""
    cls, p = rel_pos_class(cfg), []
    eva = [o for o, on in (("rope", cfg.rope != "none"), ("qkv_fused=False", not cfg.qkv_fused),
                           ("attn_inner_norm", cfg.attn_inner_norm), ("mlp_inner_norm", cfg.mlp_inner_norm),
                           ("swiglu_unpacked", cfg.swiglu_unpacked), ("norm_kind='rms'", cfg.norm_kind != "layer"),
                           ("ls_attn_only", cfg.ls_attn_only)) if on]
    if eva:
        p.append(f"timm Eva options ({', '.join(eva)}) with a relative position bias: timm's Beit and "
                 f"VisionTransformerRelPos have neither")
    if cfg.dist_token or cfg.reg_tokens:
        p.append("a relative position bias with distillation or register tokens: neither timm class has them")
    if cfg.gelu != "erf" or cfg.swiglu:
        p.append(f"gelu={cfg.gelu!r}{' / SwiGLU' if cfg.swiglu else ''} with a relative position bias: timm's Beit and "
                 f"VisionTransformerRelPos build erf GELU MLPs")
    if cfg.norm_pre or not cfg.patch_bias:
        p.append("norm_pre / a patch projection without bias: not in timm's Beit / VisionTransformerRelPos")
    if cfg.pool not in ("token", "mean"):
        p.append(f"pool={cfg.pool!r} with a relative position bias: timm's classes pool 'token' or 'avg'")
    if cfg.pool_include_prefix:
        p.append("pool_include_prefix with a relative position bias: timm's Beit and VisionTransformerRelPos average "
                 "the patch tokens only")
    if cfg.final_norm == cfg.fc_norm:
        p.append("timm's Beit and VisionTransformerRelPos have a final norm or fc_norm, exactly one")
    if cls == "Beit" and cfg.block_norm == "post":
        p.append("post-norm blocks with BEiT's layout (a learned table with q/v biases or an absolute table): timm's "
                 "Beit has pre-norm blocks only (ResPostRelPosBlock is VisionTransformerRelPos')")
    if cls == "Beit":
        if cfg.pos_embed not in ("learned", "none") or (cfg.pos_embed == "learned" and cfg.num_pos_prefix != 1):
            p.append("timm's Beit has a learned table with a class-token row, or none")
        if cfg.pos_embed == "learned" and cfg.pos_grid is not None:
            p.append("timm's Beit stores its position table at the image grid")
    else:
        if not cfg.k_bias:
            p.append("q/v biases without a k bias with the MLP-generated bias or qk-norm: timm's "
                     "VisionTransformerRelPos has one fused qkv bias")
        if cfg.pos_embed != "none":
            p.append("an absolute position table with the MLP-generated bias: timm's VisionTransformerRelPos has none")
    return p


def _timm_problems(cfg: ViTConfig) -> list[str]:
    if cfg.rel_pos != "none":  # timm's Beit / VisionTransformerRelPos: their own options, then the common ones
        return _rel_pos_problems(cfg) + _common_problems(cfg)
    naflex_only = ("factorized position tables", "aspect-preserving") if is_naflex(cfg) else ()  # NaFlexVit's own
    p = family_refusals(cfg, "timm's VisionTransformer", supports=TIMM_FAMILY + naflex_only, say={
        "token_mean": "pool='token_mean' (concat(class token, mean of the patch tokens), DINOv2's linear head): "
                      "timm's VisionTransformer has no such global_pool (HF Dinov2ForImageClassification has it: "
                      "--to hf)"})
    p += _common_problems(cfg)
    if is_naflex(cfg):
        p += _naflex_problems(cfg)
    elif cfg.pos_embed == "learned" and cfg.table_grid != cfg.grid and cfg.resize_kernel != TIMM_RESIZE_KERNEL:
        p.append(f"the table ({cfg.table_grid}) is resampled to the image grid {cfg.grid} with "
                 f"{cfg.resize_kernel!r}; timm resamples only with {TIMM_RESIZE_KERNEL}")
    if cfg.swiglu and cfg.dist_token and not is_naflex(cfg):
        p.append("a SwiGLU MLP with a distillation token: timm's VisionTransformerDistilled has no SwiGLU architecture")
    if cfg.dist_token and cfg.reg_tokens and not is_naflex(cfg):
        p.append("a distillation token with register tokens: timm's VisionTransformerDistilled has no registers")
    if cfg.block_norm == "post" and (cfg.swiglu or cfg.dist_token or is_naflex(cfg)):
        p.append("post-norm blocks with a SwiGLU MLP, a distillation token or NaFlexVit: no timm architecture builds "
                 "ResPostBlock with them (config.json's model_args cannot name block_fn)")
    if cfg.num_parallel > 1 and (cfg.num_parallel != 2 or cfg.swiglu or cfg.dist_token or is_naflex(cfg)):
        p.append(f"{cfg.num_parallel} parallel branches with SwiGLU, a distillation token or NaFlex: timm's "
                 f"ParallelThingsBlock architectures (vit_*_18x2_*) build 2 branches of a GELU MLP, and model_args "
                 f"cannot name the block")
    if cfg.patch_bias == cfg.norm_pre:
        p.append(f"patch_bias={cfg.patch_bias} with norm_pre={cfg.norm_pre}: timm builds the patch projection with "
                 f"bias = not pre_norm")
    if is_vit_stated(cfg) and (cfg.dist_token or is_naflex(cfg)):
        p.append("RMSNorm, a patch-embedding norm, no projection biases or an unpacked SwiGLU with a distillation "
                 "token or as a NaFlexVit: read and written only as timm's VisionTransformer")
    return p


def _common_problems(cfg: ViTConfig) -> list[str]:
    """What no timm ViT class holds (its VisionTransformer, Beit, VisionTransformerRelPos)."""
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
    return p


export_problems = _timm_problems  # why `cfg` has no timm form (empty when it has one): the format's interface name


def _refuse_for_timm(cfg: ViTConfig) -> None:
    problems = _timm_problems(cfg)
    if problems:
        raise ConversionError(f"config {cfg.name!r} cannot be expressed as a timm VisionTransformer:\n  "
                              + "\n  ".join(problems))


def timm_form(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """(config, canonical state) -> the same model as timm holds it: (its config, timm's state dict: float32,
    read-only views of the canonical tensors where they are unchanged, `float32_view`).

    Position rows for only some prefix tokens (HF's DINOv2 with registers: the class token has a row, the
    registers none) have no timm form: each row is added to its token, in float32, and dropped from the table
    (pos_prefix_tokens=0, timm's no_embed_class), as timm's `_convert_dinov2` does; a ConversionWarning says so.
    A float32 forward computes the same sums (token + row, rounded once) either way. A config named after a timm
    NaFlexVit (`is_naflex`) gets that NaFlexVit's state dict (`vit_to_naflex`; its table has patch rows only, so
    every prefix row is folded the same way). A timm Eva config goes through `eva_key_map` (LayerScale's
    gamma_1 / gamma_2, a fused projection's q_bias / v_bias)."""
    if is_eva(cfg):
        _refuse_for_eva(cfg)
        validate_state(cfg, state, source="<canonical state>")
        return cfg, put(eva_key_map(cfg), state)
    _refuse_for_timm(cfg)
    validate_state(cfg, state, source="<canonical state>")
    if cfg.rel_pos != "none":  # timm's Beit / VisionTransformerRelPos: their own names, through the key map
        if cfg.qkv_bias and not cfg.k_bias:  # the k third is never read (k_bias=False): BEiT's file has no k bias
            state = without_k_bias(cfg, state)
        return cfg, put(key_map(cfg, extra=_export_entries(cfg)), state)
    out = {k: float32_view(v) for k, v in state.items()}
    n_pos, n0 = cfg.num_pos_prefix, cfg.num_prefix_tokens
    if cfg.pos_embed == "learned" and 0 < n_pos and (n_pos < n0 or is_naflex(cfg)):
        owners = ([("cls_token", 0)] if cfg.class_token == "learned" else []) + \
                 ([("dist_token", 0)] if cfg.dist_token else []) + [("reg_token", j) for j in range(cfg.reg_tokens)]
        pe = out["pos_embed"]
        for key in {k for k, _ in owners[:n_pos]}:
            out[key] = np.array(out[key], CANONICAL_DTYPE, copy=True)  # the folded tokens: new arrays
        for i, (key, j) in enumerate(owners[:n_pos]):
            out[key][:, j] = out[key][:, j] + pe[:, i]
        out["pos_embed"] = np.ascontiguousarray(pe[:, n_pos:])
        warnings.warn(f"config {cfg.name!r} has position rows for {n_pos} of its {n0} prefix tokens, which timm "
                      f"cannot express: each row is folded into its token ({', '.join(k for k, _ in owners[:n_pos])}"
                      f" + pos_embed[:, :{n_pos}]) and the table keeps the patch rows only (timm no_embed_class), as "
                      f"timm's _convert_dinov2 does", ConversionWarning, stacklevel=2)
        cfg = cfg.replace(pos_prefix_tokens=0)
    if is_naflex(cfg):
        out = vit_to_naflex(cfg, out)
    return cfg, out


def export_timm(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical state -> timm state dict (the same keys and arrays, as `timm_form` gives them, with its one fold; a
    timm Eva config through `eva_key_map`: `eva_model_kwargs` builds the model that loads it)."""
    return timm_form(cfg, state)[1]


def timm_architecture(cfg: ViTConfig) -> str:
    """The timm architecture to build `cfg` on with `timm.create_model(ARCH, **timm_model_kwargs(cfg))`: its own
    name when that is a timm one (the family presets carry timm's names), else a base whose model class
    (VisionTransformer, or deit's VisionTransformerDistilled for a distillation token) and LayerNorm (eps 1e-6, or
    CLIP's 1e-5) fit; the kwargs give every size and option. A timm Eva config: its own name when timm's Eva of
    that name (an Eva preset), else an Eva whose norm layer (kind and eps) fits and that sets nothing the config
    leaves unset (_EVA_BASES, _EVA_BASE_SETS: a null kwarg is dropped by create_model)."""
    if is_eva(cfg):
        if cfg.name in EVA_PRESETS:
            return cfg.name
        nulls = {k for k, v in eva_model_args(cfg).items() if v is None}
        base = next((b for b in _EVA_BASES.get((cfg.norm_kind, cfg.layer_norm_eps), ())
                     if not _EVA_BASE_SETS[b] & nulls), None)
        if base is None:
            raise ConversionError(f"config {cfg.name!r}: no timm Eva architecture builds {cfg.norm_kind} norms with "
                                  f"eps {cfg.layer_norm_eps} without setting what the config leaves unset "
                                  f"({', '.join(sorted(nulls)) or 'nothing'}; known: {_EVA_BASES}); build "
                                  f"timm.models.eva.Eva(**eva_model_kwargs(cfg)) instead")
        return base
    if is_naflex(cfg):
        return cfg.name.split(".")[0]
    def kind(c: ViTConfig):
        return c.dist_token, c.swiglu, rel_pos_class(c), c.block_norm, c.num_parallel

    if cfg.name in TIMM_ARCHITECTURES and kind(PRESETS[cfg.name]) == kind(cfg):
        return cfg.name
    if cfg.block_norm == "post":
        return _POST_NORM_BASES[rel_pos_class(cfg) or "VisionTransformer"]
    if cfg.rel_pos != "none":
        return _REL_POS_BASES[rel_pos_class(cfg)]
    if cfg.num_parallel > 1:  # the model_args cannot name a block: an architecture that builds ParallelThingsBlock
        return _PARALLEL_ARCHITECTURE
    if is_vit_stated(cfg):  # the base that builds its norms and MLP (a config.json needs one: _stated_base)
        return _STATED_BASES.get((cfg.norm_kind, cfg.layer_norm_eps, _mlp_kind(cfg)), "vit_base_patch16_224")
    if cfg.swiglu:  # the model_args cannot name an MLP layer: the base architecture builds SwiGLUPacked
        return _SWIGLU_ARCHITECTURE
    return _BASE_ARCHITECTURES.get((cfg.dist_token, cfg.layer_norm_eps),
                                   "deit_base_distilled_patch16_224" if cfg.dist_token else "vit_base_patch16_224")


#: a timm architecture whose VisionTransformer builds ParallelThingsBlocks (2 branches, LayerNorm eps 1e-6)
_PARALLEL_ARCHITECTURE = "vit_small_patch16_18x2_224"


def architecture_eps(arch: str) -> float:
    """The LayerNorm eps timm's architecture `arch` builds (its preset's; timm's default for other names)."""
    return PRESETS[arch].layer_norm_eps if arch in PRESETS else TIMM_DEFAULT_EPS


def timm_model_args(cfg: ViTConfig) -> dict[str, Any]:
    """timm VisionTransformer arguments for every size and option of `cfg` (its timm form; JSON values only: no
    norm layer, no drop rates). Not checked for expressibility: see timm_model_kwargs."""
    # timm's mlp_ratio sizes fc1: the packed width for SwiGLUPacked, each half's for the unpacked SwiGLU
    D, M = cfg.embed_dim, cfg.mlp_dim if cfg.swiglu_unpacked else cfg.fc1_dim
    ratio = M / D if int(D * (M / D)) == M else (M + 0.5) / D  # timm builds int(dim * mlp_ratio)
    if is_naflex(cfg):  # NaFlexVitCfg's fields (create_model overlays them on the architecture's)
        mode, aa = NAFLEX_KERNEL_ARGS.get(cfg.resize_kernel, (None, None))
        return dict(patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes, embed_dim=D,
                    depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=ratio, qkv_bias=cfg.qkv_bias,
                    qk_norm=cfg.qk_norm, init_values=cfg.init_values, class_token=cfg.class_token != "none",
                    reg_tokens=cfg.reg_tokens, global_pool=TIMM_POOL.get(cfg.pool, cfg.pool),
                    pos_embed=cfg.pos_embed if cfg.learned_table else "none",
                    pos_embed_grid_size=list(cfg.table_grid), pos_embed_interp_mode=mode, pos_embed_antialias=aa,
                    pos_embed_align_corners=False, pos_embed_ar_preserving=cfg.pos_ar_preserving,
                    pre_norm=cfg.norm_pre,
                    final_norm=cfg.final_norm or cfg.fc_norm, fc_norm=cfg.fc_norm, act_layer=TIMM_ACT[cfg.gelu],
                    **({"pool_include_prefix": True} if cfg.pool_include_prefix else {}))
    gh, gw = cfg.table_grid if cfg.pos_embed == "learned" else cfg.grid
    if cfg.rel_pos != "none":  # timm's Beit / VisionTransformerRelPos arguments
        kw = dict(img_size=[gh * cfg.patch_size, gw * cfg.patch_size], patch_size=cfg.patch_size,
                  in_chans=cfg.in_chans, num_classes=cfg.num_classes, embed_dim=D, depth=cfg.depth,
                  num_heads=cfg.num_heads, mlp_ratio=ratio, qkv_bias=cfg.qkv_bias,
                  init_values=cfg.init_values or 0.0,  # 0: no LayerScale (create_model drops a None)
                  global_pool=TIMM_POOL[cfg.pool])
        if rel_pos_class(cfg) == "Beit":
            kw.update(use_abs_pos_emb=cfg.pos_embed == "learned", use_rel_pos_bias=not cfg.rel_pos_shared,
                      use_shared_rel_pos_bias=cfg.rel_pos_shared, use_fc_norm=cfg.fc_norm)
        else:
            kw.update(qk_norm=cfg.qk_norm, class_token=cfg.class_token == "learned", fc_norm=cfg.fc_norm,
                      rel_pos_type="mlp" if cfg.rel_pos == "mlp" else "bias", shared_rel_pos=cfg.rel_pos_shared)
            if cfg.rel_pos == "mlp":
                kw["rel_pos_dim"] = cfg.rel_pos_dim
        return kw
    kw: dict[str, Any] = dict(
        img_size=[gh * cfg.patch_size, gw * cfg.patch_size], patch_size=cfg.patch_size, in_chans=cfg.in_chans,
        num_classes=cfg.num_classes, embed_dim=D, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=ratio,
        qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, init_values=cfg.init_values,
        class_token=cfg.class_token != "none", global_pool=TIMM_POOL.get(cfg.pool, cfg.pool),
        pos_embed="learn" if cfg.pos_embed == "learned" else "none",
        no_embed_class=cfg.pos_embed == "learned" and cfg.num_pos_prefix < cfg.num_prefix_tokens,
        reg_tokens=cfg.reg_tokens, pre_norm=cfg.norm_pre, final_norm=cfg.final_norm or cfg.fc_norm,
        fc_norm=cfg.fc_norm, act_layer="silu" if cfg.swiglu else TIMM_ACT[cfg.gelu],
    )
    if cfg.attn_inner_norm or cfg.mlp_inner_norm:  # BEiT3's sub-LNs (only when on: other configs' args unchanged)
        kw.update(scale_attn_norm=cfg.attn_inner_norm, scale_mlp_norm=cfg.mlp_inner_norm)
    if cfg.pool_include_prefix:
        kw["pool_include_prefix"] = True
    if cfg.pos_embed == "learned" and cfg.table_grid != cfg.grid:
        kw["dynamic_img_size"] = True
    if is_vit_stated(cfg):  # what its base does not build: the projection biases, the patch norm (by name)
        kw["proj_bias"] = cfg.proj_bias
        if (timm_architecture(cfg) in _PATCH_NORM_BASES) != cfg.patch_norm:
            kw["embed_norm_layer"] = ("rmsnorm" if cfg.norm_kind == "rms" else "layernorm") if cfg.patch_norm else ""
    return kw


def timm_norm_layer(eps: float):
    """timm's LayerNorm with this eps, as a VisionTransformer `norm_layer` (imports timm)."""
    from functools import partial

    from timm.layers import LayerNorm  # lazy: only callers building a timm model get here

    return partial(LayerNorm, eps=eps)


def timm_model_kwargs(cfg: ViTConfig) -> dict[str, Any]:
    """kwargs for timm.create_model(timm_architecture(cfg), pretrained=False, **kwargs) (any timm VisionTransformer
    architecture of the model class: every size and option is given), or for the class itself:
    `VisionTransformer(**kwargs)`, or `timm.models.deit.VisionTransformerDistilled(**kwargs)` when cfg.dist_token.
    The model loads `export_timm(cfg, state)` strictly.

    A table stored at another grid than the image's gives img_size = table grid and dynamic_img_size=True (timm then
    resamples with bicubic_antialias, like the canonical model). An eps other than 1e-6 (or an architecture whose
    LayerNorm has another) adds a `norm_layer` callable, the one case where this imports timm (lazily). A timm Eva
    config: `eva_model_kwargs` (always with its norm layer).
    """
    if is_eva(cfg):
        return eva_model_kwargs(cfg)
    _refuse_for_timm(cfg)
    kw = timm_model_args(cfg)
    if is_vit_stated(cfg):  # its norm layers (kind and eps) and MLP class, as callables
        from functools import partial

        from timm.layers import LayerNorm, RmsNorm, SwiGLU, SwiGLUPacked
        from timm.layers.mlp import Mlp

        norm = partial(RmsNorm if cfg.norm_kind == "rms" else LayerNorm, eps=cfg.layer_norm_eps)
        kw.update(norm_layer=norm, embed_norm_layer=norm if cfg.patch_norm else "",
                  mlp_layer=SwiGLU if cfg.swiglu_unpacked else SwiGLUPacked if cfg.swiglu else Mlp)
    kw.update(pos_drop_rate=cfg.dropout, proj_drop_rate=cfg.dropout, attn_drop_rate=cfg.attn_dropout,
              drop_path_rate=cfg.drop_path)
    if rel_pos_class(cfg) == "VisionTransformerRelPos":  # no dropout after the (absent) position table
        kw.pop("pos_drop_rate")
    if is_naflex(cfg):
        kw["pos_embed_grid_size"] = tuple(kw["pos_embed_grid_size"])
        return kw
    kw["img_size"] = tuple(kw["img_size"])
    if not is_vit_stated(cfg) and (cfg.layer_norm_eps != TIMM_DEFAULT_EPS
                                   or architecture_eps(timm_architecture(cfg)) != TIMM_DEFAULT_EPS):
        kw["norm_layer"] = timm_norm_layer(cfg.layer_norm_eps)
    return kw


def timm_hub_config(cfg: ViTConfig) -> dict[str, Any]:
    """timm's config.json for `cfg` (already in its timm form): the layout `timm.models._hub.save_for_hf` writes
    (architecture, num_classes, num_features, global_pool, model_args, pretrained_cfg), which
    `timm.create_model('local-dir:DIR', pretrained=True)` builds and loads. model_args is JSON: it cannot name a
    norm layer, so the architecture's LayerNorm eps must be the config's (a timm Eva config: an Eva base whose
    norm layer fits, `eva_model_args` as model_args)."""
    if is_eva(cfg):
        _refuse_for_eva(cfg)
        args = eva_model_args(cfg)
        return {"architecture": timm_architecture(cfg), "num_classes": cfg.num_classes, "num_features": cfg.width,
                "global_pool": args["global_pool"], "model_args": args,
                "pretrained_cfg": {"input_size": [cfg.in_chans, *cfg.image_size], "num_classes": cfg.num_classes,
                                   "fixed_input_size": True, "first_conv": "patch_embed.proj", "classifier": "head",
                                   "custom_load": False}}
    _refuse_for_timm(cfg)
    arch = timm_architecture(cfg)
    if is_naflex(cfg):
        args = timm_model_args(cfg)
        return {"architecture": arch, "num_classes": cfg.num_classes, "num_features": cfg.width,
                "global_pool": args["global_pool"], "model_args": args,
                "pretrained_cfg": {"input_size": [cfg.in_chans, *cfg.image_size], "num_classes": cfg.num_classes,
                                   "fixed_input_size": False, "first_conv": "embeds.proj", "classifier": "head",
                                   "custom_load": False}}
    if is_vit_stated(cfg):
        key = (cfg.norm_kind, cfg.layer_norm_eps, _mlp_kind(cfg))
        if key not in _STATED_BASES:
            raise ConversionError(
                f"config {cfg.name!r}: no timm architecture builds {cfg.norm_kind} norms with eps "
                f"{cfg.layer_norm_eps} and a {key[2]} MLP, and a config.json's model_args cannot name a norm layer or "
                f"an MLP class (bases: {sorted(_STATED_BASES)}); write a timm state dict instead (--to timm "
                f"FILE.safetensors) and build it with timm_model_kwargs")
        if cfg.patch_norm and arch not in _PATCH_NORM_BASES and cfg.layer_norm_eps != TIMM_DEFAULT_EPS:
            raise ConversionError(
                f"config {cfg.name!r}: a patch-embedding norm with eps {cfg.layer_norm_eps} cannot be stated in a "
                f"timm config.json on {arch!r} (embed_norm_layer by name builds eps {TIMM_DEFAULT_EPS}); write a timm "
                f"state dict instead (--to timm FILE.safetensors) and build it with timm_model_kwargs")
    elif architecture_eps(arch) != cfg.layer_norm_eps:
        raise ConversionError(
            f"config {cfg.name!r}: LayerNorm eps {cfg.layer_norm_eps} cannot be stated in a timm config.json on "
            f"architecture {arch!r} (eps {architecture_eps(arch)}; model_args cannot name a norm layer); write a "
            f"timm state dict instead (--to timm FILE.safetensors) and build it with timm_model_kwargs")
    args = timm_model_args(cfg)
    dynamic = bool(args.get("dynamic_img_size"))
    return {
        "architecture": arch, "num_classes": cfg.num_classes, "num_features": cfg.width,
        "global_pool": args["global_pool"], "model_args": args,
        "pretrained_cfg": {"input_size": [cfg.in_chans, *cfg.image_size], "num_classes": cfg.num_classes,
                           "fixed_input_size": not dynamic, "first_conv": "patch_embed.proj",
                           "classifier": ["head", "head_dist"] if cfg.dist_token else "head", "custom_load": False},
    }


# ---------------------------------------------------------------------------- files
#: the weight files of a timm hub directory, preferred first (timm's save_for_hf names)
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def is_timm_config(d: Any) -> bool:
    """A timm config.json (save_for_hf: `architecture`, ...), not a transformers one (which has `model_type`)."""
    return isinstance(d, dict) and "model_type" not in d and ("architecture" in d or "model_args" in d)


def timm_files(path: str | os.PathLike) -> tuple[Path, dict | None]:
    """(weights file, timm's config.json as a dict or None) of a timm checkpoint file or hub directory (the
    directory's config.json + model.safetensors, else pytorch_model.bin)."""
    path = Path(path)
    if path.is_dir():
        weights = next((path / n for n in HUB_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise InvalidFileError(f"{path}: a timm hub directory needs {' or '.join(HUB_WEIGHTS)} beside config.json")
        directory = path
    else:
        weights, directory = path, path.parent
    cj = directory / "config.json"
    config = None
    if cj.is_file():
        d = read_json_file(cj)
        config = d if is_timm_config(d) else None
    if path.is_dir() and config is None:
        raise InvalidFileError(f"{path}: not a timm hub directory: config.json has no 'architecture' (a transformers "
                               f"directory has 'model_type'; use --from hf)")
    return weights, config


def load_timm_file(path: str | os.PathLike, preset: ViTConfig | str | None = None, image_size=None, *,
                   grid=None, pool: str | None = None, gelu: str | None = None, num_heads: int | None = None,
                   layer_norm_eps: float | None = None,
                   mlp: str | None = None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a timm checkpoint file (+ timm's config.json beside it when present) or a timm hub directory
    (config.json + model.safetensors / pytorch_model.bin) and import it (see import_timm for the arguments)."""
    weights, timm_config = timm_files(path)
    return import_timm(read_checkpoint(weights), preset=preset, timm_config=timm_config, image_size=image_size,
                       grid=grid, pool=pool, gelu=gelu, num_heads=num_heads, layer_norm_eps=layer_norm_eps,
                       mlp=mlp, source=str(path))
