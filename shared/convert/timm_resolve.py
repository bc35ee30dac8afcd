"""A timm architecture resolved by timm itself: its own model of that name, built on the meta device (no weights,
no memory), and read for what a timm state dict cannot tell.

    resolved = resolve_timm_architecture("vit_large_patch14_224", {"depth": 2, "embed_dim": 96}, source)
    resolved.facts   # num_heads, layer_norm_eps, gelu / mlp, pool, pos_rows, image_size, init_values, name
    resolved.shapes  # the built model's state-dict keys and shapes: what a file of this architecture holds

Every fact is read from the BUILT MODULES (model, block, norm, attention, MLP and activation classes; the pool,
the tokens, the position table), never from the name. Only what the canonical model runs is accepted: timm's
`VisionTransformer` / `VisionTransformerDistilled` of `Block`s (LayerNorm or RmsNorm, one kind for the whole model,
`Attention`, `Mlp` with a GELU form or the packed `GluMlp` with SiLU, DINOv2-giant's SwiGLUPacked, timm's unpacked
`SwiGLU`; projection biases on or off together; BEiT3's sub-LNs `attn.norm` / `mlp.norm`), timm's `ParallelThingsBlock`
(facts['num_parallel']), a plain-conv `PatchEmbed` (with a norm: AIMv2; a model with options its keys cannot tell gets
its whole config in facts['vit_config']: `_vit_config`), the one-latent `AttentionPoolLatent` MAP head (its own heads;
over the prefix tokens too with timm's `pool_include_prefix`, as timm's Eva's always is); timm's `Beit` and
`VisionTransformerRelPos` with pre-norm blocks and a relative position bias (a learned table or the 'cr' RelPosMlp, per
block or shared: `_read_rel_pos`). The res-post-norm blocks (`ResPostBlock`, `ResPostRelPosBlock`, Eva's
`EvaBlockPostNorm`) are read from their class as facts['block_norm'] = 'post': their keys are exactly a pre-norm
block's, so the block type comes from the built model only, never from a file. Anything else is refused by name with
the reason (ConversionError), whatever else is stated: several of them (rotary positions in a VisionTransformer) have
keys a supported model also has, so any reading of their files would be silently wrong.

timm and torch are imported lazily; `timm_knows(name)` says whether a resolution is possible at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConversionError

#: model classes that are not a timm VisionTransformer, and what in them the canonical model cannot run
_CLASS_REASONS = {
    "VisionTransformerSAM": "windowed attention with decomposed relative positions and a convolutional neck (SAM): "
                            "needs windowed attention, relative position biases and a conv neck",
    "VisionTransformerHybrid": "a hybrid CNN stem",
}
#: block classes of timm's VisionTransformer other than the pre-norm `Block`, and why each cannot be read
_BLOCK_REASONS = {
    "ParallelScalingBlock": "attention and MLP in parallel from one fused projection",
    "DiffParallelScalingBlock": "differential attention in parallel blocks",
}


#: attention classes other than timm's `Attention`, and what they compute differently
_ATTN_REASONS = {
    "DiffAttention": "differential attention (the difference of two softmax maps, with learned lambdas)",
    "AttentionRope": "rotary position embeddings, which its keys do not show",
}
#: timm.create_model's own options (files, downloads, devices), refused in a file's model_args
_LOADING_ARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                           "pretrained_strict", "features_only", "device", "dtype", "scriptable", "exportable",
                           "no_jit"})


@dataclass(frozen=True)
class Resolved:
    """timm's own model of `arch`, as the import reads it."""

    arch: str
    facts: dict[str, Any]
    shapes: dict[str, tuple[int, ...]] = field(repr=False)
    #: what its keys would show: (class token, final norm, fc_norm) -- a pooling it states applies to that layout
    layout: tuple[bool, bool, bool] = (True, True, False)


def timm_knows(name: str) -> bool | None:
    """True: timm builds `name`; False: timm does not know it; None: timm is not installed."""
    try:
        import timm
    except ImportError:
        return None
    return bool(timm.is_model(name))


def _tname(obj) -> str:
    return type(obj).__name__


def _layer_scales(blk, arch: str, inits: set, scales=None) -> None:
    """A block's LayerScale init values into `inits` (timm's ls1 / ls2, or the given `scales`: a parallel block's
    branches' ls); any other branch scale is refused."""
    import torch.nn as nn
    from timm.layers import LayerScale

    for ls in scales if scales is not None else (blk.ls1, blk.ls2):
        if type(ls) is LayerScale:
            inits.add(float(ls.init_values))
        elif type(ls) is not nn.Identity:
            _refuse(arch, f"scales its branches with {_tname(ls)}")


def _refuse(arch: str, what: str) -> None:
    raise ConversionError(f"timm's {arch} {what}: refused by name (never read as its nearest look-alike; no flag "
                          f"makes it importable)")


def _gelu_form(act, arch: str, where: str) -> str:
    import torch.nn as nn
    from timm.layers.activations import GELU, GELUTanh, QuickGELU

    if type(act) is nn.GELU:
        return {"none": "erf", "tanh": "tanh"}[act.approximate]
    if type(act) in (GELU, GELUTanh, QuickGELU):
        return {GELU: "erf", GELUTanh: "tanh", QuickGELU: "quick"}[type(act)]
    _refuse(arch, f"has a {_tname(act)} activation in {where} (the canonical MLP runs GELU: erf, tanh or quick, "
                  f"or SwiGLU)")
    raise AssertionError  # unreachable


def _read_rel_pos(model, arch: str) -> tuple[dict[str, Any], tuple[bool, bool, bool]]:
    """The facts of timm's Beit (BEiT, BEiTv2) or VisionTransformerRelPos (vit_relpos_*, vit_srelpos_*): pre-norm
    blocks with a relative position bias (a learned table, or RelPosMlp in timm's 'cr' mode), shared or per block;
    or ConversionError naming what the canonical model cannot run (post-norm blocks, the Swin-v2 MLP mode, a SwiGLU or
    inner-norm MLP, a per-block table together with a shared one)."""
    import torch.nn as nn
    from timm.layers import Mlp, PatchEmbed, RelPosBias, RelPosMlp
    from timm.models import beit, vision_transformer_relpos as vrp

    cls = _tname(model)
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or type(pe.norm) is not nn.Identity or pe.proj.kernel_size != pe.proj.stride \
            or pe.proj.kernel_size[0] != pe.proj.kernel_size[1]:
        _refuse(arch, "embeds patches with something other than one square strided conv")
    norms, heads, inits, gelus = [], set(), set(), set()

    def norm(m, where: str, optional: bool = True) -> bool:
        if type(m) is nn.Identity and optional:
            return False
        if not isinstance(m, nn.LayerNorm) or _tname(m) != "LayerNorm" or not m.elementwise_affine or m.bias is None:
            _refuse(arch, f"has a {_tname(m)} as {where} (the canonical norms are LayerNorm with weight and bias)")
        norms.append((where, float(m.eps)))
        return True

    rel = set()  # (kind, where) of every relative position module
    shared = model.rel_pos_bias if cls == "Beit" else model.shared_rel_pos
    kinds_of_block = {type(blk) for blk in model.blocks}
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (beit.Block, vrp.RelPosBlock, vrp.ResPostRelPosBlock):
            _refuse(arch, f"builds {_tname(blk)} blocks: not a block the canonical model runs (pre-norm, or timm's "
                          f"res-post-norm ResPostRelPosBlock)")
        norm(blk.norm1, f"blocks.{i}.norm1", optional=False)
        norm(blk.norm2, f"blocks.{i}.norm2", optional=False)
        a = blk.attn
        heads.add(int(a.num_heads))
        if not math.isclose(a.scale, (a.qkv.in_features // a.num_heads) ** -0.5) \
                or a.qkv.out_features != 3 * a.qkv.in_features:
            _refuse(arch, "has an attention width or scale other than embed_dim and head_dim**-0.5 (attn_head_dim)")
        if cls == "Beit":
            if getattr(a, "qkv_bias_separate", False):
                _refuse(arch, "adds its qkv bias after the projection (qkv_bias_separate)")
            if a.relative_position_bias_table is not None:
                rel.add(("table", "block"))
            gammas = (blk.gamma_1, blk.gamma_2)
            if gammas[0] is not None:
                inits.add(float(blk.init_values))
        else:
            norm(a.q_norm, f"blocks.{i}.attn.q_norm")
            norm(a.k_norm, f"blocks.{i}.attn.k_norm")
            if a.rel_pos is not None:
                rel.add(("mlp" if type(a.rel_pos) is RelPosMlp else "table", "block"))
                module = a.rel_pos
            if type(blk) is not vrp.ResPostRelPosBlock:  # a post-norm block has no LayerScale (its init_values
                _layer_scales(blk, arch, inits)          # only set the norms' initial weights)
        m = blk.mlp
        if type(m) is not Mlp or type(m.fc1) is not nn.Linear or type(m.norm) is not nn.Identity:
            _refuse(arch, f"has a {_tname(m)} MLP{' with an inner norm (scale_mlp)' if type(m) is Mlp else ''} (the "
                          f"canonical MLP here is timm's Mlp with a GELU form)")
        gelus.add(_gelu_form(m.act, arch, f"blocks.{i}.mlp"))
    if shared is not None:
        rel.add(("mlp" if type(shared) is RelPosMlp else "table", "shared"))
        module = shared
    kinds = {k for k, _ in rel}
    if len(rel) != 1:
        _refuse(arch, "has " + ("no relative position bias" if not rel else "a per-block relative position bias "
                                "together with a shared one (their sum)") + ": not a layout the canonical model runs")
    if cls != "Beit" and type(module) is RelPosMlp and (module.mode != "cr" or module.bias_gain is not None):
        _refuse(arch, f"generates its relative position bias with RelPosMlp in mode {module.mode!r} (Swin-v2: "
                      f"sigmoid gain and normalised coordinates); the canonical MLP form is timm's 'cr' mode")
    if cls != "Beit" and type(module) is RelPosBias and module.prefix_tokens > 1:
        _refuse(arch, "has a relative table for more than one prefix token")
    if len(heads) > 1 or len(gelus) > 1 or len(inits) > 1 or len(kinds_of_block) > 1:
        _refuse(arch, "varies heads, activation, LayerScale init or block type across its blocks")
    final = norm(model.norm, "norm")
    fc = norm(model.fc_norm, "fc_norm")
    if len({eps for _, eps in norms}) > 1:
        _refuse(arch, "has LayerNorms with different eps: " + ", ".join(f"{w} {e}" for w, e in norms[:4]))
    gp = model.global_pool
    if gp not in ("token", "avg"):
        _refuse(arch, f"pools with global_pool={gp!r} (canonical pooling here: 'token', 'avg' over the patch tokens)")
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        _refuse(arch, f"has a {_tname(model.head)} head")
    cls_token = getattr(model, "cls_token", None) is not None
    facts: dict[str, Any] = dict(name=arch, num_heads=heads.pop(), layer_norm_eps=norms[0][1], mlp="gelu",
                                 gelu=gelus.pop(), pool={"token": "token", "avg": "mean"}[gp],
                                 image_size=tuple(int(s) for s in pe.img_size), rel_pos=kinds.pop(),
                                 rel_pos_shared=next(iter(rel))[1] == "shared",
                                 block_norm="post" if vrp.ResPostRelPosBlock in kinds_of_block else "pre")
    if getattr(model, "pos_embed", None) is not None:
        gh, gw = pe.grid_size
        facts["pos_rows"] = "all" if int(model.pos_embed.shape[1]) - gh * gw == int(cls_token) else "none"
    if inits:
        facts["init_values"] = inits.pop()
    facts["dynamic_img_size"] = False
    facts["norm_pre"] = False
    return facts, (cls_token, final, fc)


def _read(model, arch: str) -> tuple[dict[str, Any], tuple[bool, bool, bool]]:
    """The facts of a built timm model, or ConversionError naming what the canonical model cannot run."""
    import torch.nn as nn
    from timm.layers import AttentionPoolLatent, PatchEmbed
    from timm.layers.attention import Attention
    from timm.layers.mlp import GluMlp, Mlp, SwiGLU
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import Block, ParallelThingsBlock, ResPostBlock, VisionTransformer

    from timm.models.beit import Beit
    from timm.models.naflexvit import NaFlexVit
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    cls = _tname(model)
    if cls == "Eva":
        return _read_eva(model, arch)
    if type(model) in (Beit, VisionTransformerRelPos):
        return _read_rel_pos(model, arch)
    naflex = None
    norms: list = []  # every norm of the model: (where, kind, eps): one kind, one eps
    patch_norm = False
    if type(model) is NaFlexVit:
        naflex = _read_naflex_embeds(model, arch)
    elif type(model) not in (VisionTransformer, VisionTransformerDistilled):
        rope = getattr(model, "rope", None)
        why = (f"rotary position embeddings ({_tname(rope)}), which its keys do not show; the canonical model has "
               f"none" if rope is not None else _CLASS_REASONS.get(cls, "not a timm VisionTransformer"))
        _refuse(arch, f"is {'an' if cls[0] in 'AEIOU' else 'a'} {cls} model: {why}")
    else:
        pe = model.patch_embed
        if type(pe) is not PatchEmbed:
            bb = getattr(pe, "backbone", None)
            bb_name = ((getattr(bb, "pretrained_cfg", None) or {}).get("architecture") or _tname(bb)) \
                if bb is not None else None  # a features-only wrapper: the network it wraps
            if bb_name == "Sequential":
                bb_name = "a ResNetV2 stem: " + ", ".join(_tname(c) for c in list(bb.children())[:3])
            why = (f"a hybrid CNN stem ({bb_name} backbone before the patch projection): the canonical model "
                   f"would need a conv stem (it embeds patches with one strided conv)" if bb is not None
                   else "another patch embedding: the canonical model embeds patches with one strided conv")
            _refuse(arch, f"embeds patches with {_tname(pe)}: {why}")
        proj = pe.proj
        if not (type(proj) is nn.Conv2d and proj.kernel_size == proj.stride and proj.padding == (0, 0)
                and proj.dilation == (1, 1) and proj.groups == 1 and proj.kernel_size[0] == proj.kernel_size[1]):
            _refuse(arch, f"has a patch projection {proj!r}, not one square strided conv (overlapping or "
                          f"non-square patches need a general conv stem)")
        if type(pe.norm) is not nn.Identity:  # timm embed_norm_layer (AIMv2): the canonical patch_norm
            patch_norm = bool(_norm_kind(pe.norm, arch, "patch_embed.norm", norms))
        if getattr(pe, "dynamic_img_pad", False):
            _refuse(arch, "pads images to a patch multiple (dynamic_img_pad)")
    if getattr(model, "rope", None) is not None:
        _refuse(arch, "has rotary position embeddings, which its keys do not show")

    def norm(m, where: str, optional: bool = True) -> bool:  # LayerNorm or RmsNorm (one kind: checked below)
        if type(m) is nn.Identity and optional:
            return False
        _norm_kind(m, arch, where, norms)
        return True

    def has_bias(*layers) -> bool:  # timm proj_bias: attn.proj and the MLP's linears, all with biases or none
        got = {lin.bias is not None for lin in layers}
        if len(got) > 1:
            _refuse(arch, "has biases on some of attn.proj and its MLP's linears but not all (the canonical "
                          "proj_bias is one switch for them)")
        return got.pop()

    gelus, heads, mlps, inits, biases, pars, inner = set(), set(), set(), set(), set(), set(), set()
    kinds_of_block = {type(blk) for blk in model.blocks}
    branches = []  # (where, norm before attention, attention, where, norm before the MLP, MLP): blocks / branches
    for i, blk in enumerate(model.blocks):
        if type(blk) is ParallelThingsBlock:  # num_parallel attention branches, then as many MLP branches
            if blk.num_parallel < 2:
                _refuse(arch, f"builds a ParallelThingsBlock of {blk.num_parallel} branch (canonical: 2 or more)")
            pars.add(int(blk.num_parallel))
            for j, (at, ff) in enumerate(zip(blk.attns, blk.ffns)):
                _layer_scales(blk, arch, inits, scales=(at.ls, ff.ls))
                branches.append((f"blocks.{i}.attns.{j}", at.norm, at.attn, f"blocks.{i}.ffns.{j}", ff.norm, ff.mlp))
            continue
        if type(blk) not in (Block, ResPostBlock):
            _refuse(arch, f"builds {_tname(blk)} blocks: "
                          f"{_BLOCK_REASONS.get(_tname(blk), 'not a block the canonical model runs (the pre-norm Block, the res-post-norm ResPostBlock or ParallelThingsBlock)')}")
        pars.add(1)
        if type(blk) is Block:  # ResPostBlock has no LayerScale: its init_values only set the norms' initial weights
            _layer_scales(blk, arch, inits)
        branches.append((f"blocks.{i}", blk.norm1, blk.attn, f"blocks.{i}", blk.norm2, blk.mlp))
    for wa, n1, a, wm, n2, m in branches:
        norm(n1, f"{wa}.norm1" if wa == wm else f"{wa}.norm", optional=False)
        norm(n2, f"{wm}.norm2" if wa == wm else f"{wm}.norm", optional=False)
        if type(a) is not Attention:
            _refuse(arch, f"has {_tname(a)} attention: "
                          f"{_ATTN_REASONS.get(_tname(a), 'not the timm Attention the canonical model runs')}")
        if getattr(a, "gate", None) is not None:
            _refuse(arch, "has gated attention (a sigmoid gate before attn.proj): the canonical attention has none")
        inner.add((norm(a.norm, f"{wa}.attn.norm"), norm(getattr(m, "norm", nn.Identity()),
                                                         f"{wm}.mlp.norm")))  # BEiT3's sub-LNs
        if a.attn_dim != n1.normalized_shape[0] or not math.isclose(a.scale, a.head_dim ** -0.5):
            _refuse(arch, "has an attention width or scale other than embed_dim and head_dim**-0.5")
        norm(a.q_norm, f"{wa}.attn.q_norm")
        norm(a.k_norm, f"{wa}.attn.k_norm")
        heads.add(int(a.num_heads))
        if type(m) is Mlp and type(m.fc1) is nn.Linear:
            gelus.add(_gelu_form(m.act, arch, f"{wm}.mlp"))
            mlps.add("gelu")
            biases.add(has_bias(a.proj, m.fc1, m.fc2))
        elif type(m) is GluMlp and type(m.fc1) is nn.Linear \
                and type(m.act) is nn.SiLU and not m.gate_last and m.chunk_dim == -1:
            mlps.add("swiglu")
            biases.add(has_bias(a.proj, m.fc1, m.fc2))
        elif type(m) is SwiGLU and type(m.act) is nn.SiLU:  # AIMv2: fc1_g, fc1_x
            mlps.add("swiglu_unpacked")
            biases.add(has_bias(a.proj, m.fc1_g, m.fc1_x, m.fc2))
        else:
            _refuse(arch, f"has a {_tname(m)} MLP{' with ' + _tname(getattr(m, 'act', None)) if hasattr(m, 'act') else ''}"
                          f" (the canonical MLP is timm's Mlp with a GELU form, SwiGLUPacked or SwiGLU)")
    if len(heads) > 1 or len(mlps) > 1 or len(gelus) > 1 or len(inits) > 1 or len(biases) > 1 or len(pars) > 1 \
            or len(kinds_of_block) > 1 or len(inner) > 1:
        _refuse(arch, "varies heads, MLP kind, activation, projection biases, inner norms, LayerScale init or block "
                      "type across its blocks")
    pre = norm(model.norm_pre, "norm_pre")
    final = norm(model.norm, "norm")
    fc = norm(model.fc_norm, "fc_norm")
    gp = model.global_pool
    if gp not in ("token", "avg", "map"):
        _refuse(arch, f"pools with global_pool={gp!r} (canonical pooling: 'token', 'avg' over the patch tokens, "
                      f"'map')")
    if gp == "map":
        ap = model.attn_pool
        if type(ap) is not AttentionPoolLatent or ap.latent_len != 1 or ap.pos_embed is not None \
                or type(ap.q) is not nn.Linear or type(ap.q_norm) is not nn.Identity \
                or ap.latent_dim != ap.kv.in_features or type(ap.mlp) is not Mlp:
            _refuse(arch, "has an attention pool other than the canonical MAP head (one latent, no positions, no "
                          "qk-norm)")
        if type(ap.norm) is not nn.LayerNorm and _tname(ap.norm) != "LayerNorm":
            _refuse(arch, f"has a {_tname(ap.norm)} as attn_pool.norm (the canonical MAP head's norm is a LayerNorm)")
        norm(ap.norm, "attn_pool.norm", optional=False)
        form = _gelu_form(ap.mlp.act, arch, "attn_pool.mlp")
        if gelus and form not in gelus:
            _refuse(arch, f"runs {form} GELU in its attention pool and {gelus.pop()} in its blocks")
        gelus.add(form)
    if len({k for _, k, _ in norms}) > 1:  # one kind for every norm (cfg.norm_kind): mixed kinds by name
        kinds = {}
        for w, k, _ in norms:
            kinds.setdefault(k, w)
        _refuse(arch, "mixes norm kinds (" + ", ".join(f"{'RmsNorm' if k == 'rms' else 'LayerNorm'} as {w}"
                                                       for k, w in kinds.items())
                + "): the canonical model runs one norm kind everywhere (norm_kind)")
    if len({e for _, _, e in norms}) > 1:
        _refuse(arch, "has norms with different eps: " + ", ".join(f"{w} {e}" for w, _, e in norms[:4]))
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        _refuse(arch, f"has a {_tname(model.head)} head")

    n0 = int(model.num_prefix_tokens)
    image_size = naflex["image_size"] if naflex else tuple(int(s) for s in pe.img_size)
    facts: dict[str, Any] = dict(name=arch, num_heads=heads.pop(), layer_norm_eps=norms[0][2],
                                 pool={"token": "token", "avg": "mean", "map": "map"}[gp],
                                 image_size=image_size, mlp=mlps.pop())
    facts["attn_inner_norm"], facts["mlp_inner_norm"] = inner.pop()  # scale_attn_norm / scale_mlp_norm (BEiT3)
    # the pool over the prefix tokens too (timm's pool_include_prefix: 'avg' and 'map'), the attention pool's heads
    facts["pool_include_prefix"] = bool(getattr(model, "pool_include_prefix", False)) and gp != "token" and n0 > 0
    if gp == "map" and int(model.attn_pool.num_heads) != facts["num_heads"]:
        facts["pool_heads"] = int(model.attn_pool.num_heads)
    if facts["mlp"] == "gelu" or gelus:
        facts["gelu"] = gelus.pop()
    if naflex:  # the table has rows for the patches only (added before the prefix tokens are joined)
        facts["pos_rows"] = "none" if naflex["pos_grid"] is not None else None
        facts["naflex"] = naflex
    elif model.pos_embed is not None:
        gh, gw = pe.grid_size
        rows = int(model.pos_embed.shape[1]) - gh * gw
        facts["pos_rows"] = "all" if rows == n0 else "none" if rows == 0 else None
    if inits:
        facts["init_values"] = inits.pop()
    facts["num_parallel"] = pars.pop()  # 1: pre-norm Blocks; more: ParallelThingsBlocks of that many branches
    facts["dynamic_img_size"] = bool(naflex) or bool(getattr(model, "dynamic_img_size", False))
    facts["norm_pre"] = pre
    facts["block_norm"] = "post" if ResPostBlock in kinds_of_block else "pre"
    cls_token = model.embeds.cls_token if naflex else model.cls_token
    kind, proj_bias = norms[0][1], biases.pop()
    if kind == "rms" or patch_norm or not proj_bias or facts["mlp"] == "swiglu_unpacked":
        facts["vit_config"] = _vit_config(model, arch, facts, kind=kind, patch_norm=patch_norm, proj_bias=proj_bias,
                                          naflex=naflex, layout=(cls_token is not None, final, fc))
    return facts, (cls_token is not None, final, fc)


def _vit_config(model, arch: str, facts: dict[str, Any], *, kind: str, patch_norm: bool, proj_bias: bool, naflex,
                layout: tuple[bool, bool, bool]) -> dict[str, Any]:
    """Every ViTConfig field of a timm VisionTransformer whose keys cannot tell its options (RMSNorm: a norm with no
    bias could be either kind; a patch-embedding norm; no projection biases; timm's unpacked SwiGLU): read from the
    built modules, as `_read_eva` does for timm's Eva (AIMv2, test_vit4). A distillation token or a NaFlexVit with
    them is refused by name."""
    import torch.nn as nn
    from timm.models.deit import VisionTransformerDistilled

    opts = [o for o, on in (("RMSNorm", kind == "rms"), ("a patch-embedding norm", patch_norm),
                            ("no projection biases (proj_bias=False)", not proj_bias),
                            ("an unpacked SwiGLU MLP", facts["mlp"] == "swiglu_unpacked")) if on]
    if naflex or type(model) is VisionTransformerDistilled:
        _refuse(arch, f"is a {_tname(model)} with {', '.join(opts)}: read only in timm's VisionTransformer")
    blk = model.blocks[0]
    a, m, pe = blk.attn, blk.mlp, model.patch_embed
    has_cls, final, fc = layout
    n0 = int(model.num_prefix_tokens)
    reg = int(model.reg_token.shape[1]) if model.reg_token is not None else 0
    n_cls = model.head.out_features if isinstance(model.head, nn.Linear) else 0
    swiglu = facts["mlp"] != "gelu"
    return dict(
        name=arch, image_size=tuple(int(s) for s in pe.img_size), in_chans=int(pe.proj.in_channels),
        patch_size=int(pe.proj.kernel_size[0]), patch_bias=pe.proj.bias is not None, patch_norm=patch_norm,
        embed_dim=int(model.embed_dim), depth=len(model.blocks), num_heads=facts["num_heads"],
        mlp_dim=int(m.fc2.in_features), swiglu=swiglu, swiglu_unpacked=facts["mlp"] == "swiglu_unpacked",
        qkv_bias=a.qkv.bias is not None, proj_bias=proj_bias, qk_norm=type(a.q_norm) is not nn.Identity,
        init_values=facts.get("init_values"), class_token="learned" if has_cls else "none", reg_tokens=reg,
        pool=facts["pool"], pos_embed="learned" if model.pos_embed is not None else "none",
        pos_prefix_tokens=0 if model.pos_embed is not None and facts.get("pos_rows") == "none" and n0 else None,
        resize_kernel="bicubic_antialias",  # timm's resample_abs_pos_embed (shared.convert.timm.TIMM_RESIZE_KERNEL)
        gelu=facts.get("gelu", "erf"), layer_norm_eps=facts["layer_norm_eps"], norm_kind=kind,
        norm_pre=bool(facts["norm_pre"]), final_norm=bool(final), fc_norm=bool(fc), num_classes=int(n_cls))


#: NaFlexVit's (interpolation mode, antialias) for its position table -> the canonical resize kernel
#: (shared.posemb: the same F.interpolate rule, align_corners=False)
NAFLEX_KERNELS = {("bicubic", True): "bicubic_antialias", ("bicubic", False): "bicubic",
                  ("bilinear", True): "bilinear_antialias", ("bilinear", False): "bilinear"}


def _read_naflex_embeds(model, arch: str) -> dict[str, Any]:
    """The facts of a NaFlexVit's `embeds` at a fixed image size (4-D images in, timm's standard path): a Linear
    over flattened (ph, pw, C) patches (or a conv), a learned (h, w, D) table for the patch tokens only, resampled
    to each grid with F.interpolate(mode, antialias, align_corners=False), or factorized (1, h, D) / (1, w, D) row
    and column tables (1-D linear each: the canonical 'bilinear' per axis); either aspect-preserving or not
    (pos_embed_ar_preserving: `factorized`, `ar_preserving`). What the canonical model cannot run is refused by
    name."""
    import torch.nn as nn

    e = model.embeds
    if e.pos_embed_type == "learned" and e.pos_embed_align_corners:
        _refuse(arch, "is a NaFlexVit resampling its table with align_corners=True: the canonical kernels use "
                      "half-pixel centres (align_corners=False)")
    if e.pos_embed_type == "learned" and (e.pos_embed_interp_mode, bool(e.pos_embed_antialias)) not in NAFLEX_KERNELS:
        _refuse(arch, f"is a NaFlexVit resampling its table with mode {e.pos_embed_interp_mode!r}: no canonical kernel")
    if e.dynamic_img_pad:
        _refuse(arch, "pads images to a patch multiple (dynamic_img_pad)")
    if e.norm_input is not None or type(e.norm) is not nn.Identity:
        _refuse(arch, "has a norm inside the patch embedding (NaFlexVit input_norm_layer / embed_norm_layer)")
    if e.is_linear and not e.channels_last:
        _refuse(arch, "flattens its patches channels-first (patchify_channels_last=False); NaFlexVit's (ph, pw, C) "
                      "order is the one read")
    P = e.patch_size
    if P[0] != P[1]:
        _refuse(arch, f"has non-square {P[0]}x{P[1]} patches (canonical patch_size is one int)")
    factorized = e.pos_embed_type == "factorized"
    if factorized:  # (1, h, D) rows and (1, w, D) columns, each resampled with 1-D linear (align_corners=False)
        grid = (int(e.pos_embed_y.shape[1]), int(e.pos_embed_x.shape[1]))
    else:
        grid = tuple(int(g) for g in e.pos_embed.shape[1:3]) if e.pos_embed_type == "learned" else None
    size = (model.pretrained_cfg or {}).get("input_size") if hasattr(model, "pretrained_cfg") else None
    image_size = tuple(int(s) for s in size[1:]) if size else \
        tuple(g * P[0] for g in (grid or e.pos_embed_grid_size or (14, 14)))
    # factorized tables: F.interpolate(mode='linear', antialias off) per axis = the canonical 'bilinear' per axis
    kernel = "bilinear" if factorized else NAFLEX_KERNELS.get((e.pos_embed_interp_mode, bool(e.pos_embed_antialias)))
    return dict(patch_size=int(P[0]), in_chans=int(e.in_chans), linear=bool(e.is_linear), pos_grid=grid,
                resize_kernel=kernel, image_size=image_size, factorized=factorized,
                ar_preserving=bool(e.pos_embed_ar_preserving))


def _norm_kind(m, arch: str, where: str, norms: list) -> str:
    """'layer' or 'rms' for a timm norm module with weight (LayerNorm also bias); its eps recorded."""
    import torch.nn as nn
    from timm.layers import RmsNorm

    if type(m) is RmsNorm and m.elementwise_affine:
        kind = "rms"
    elif isinstance(m, nn.LayerNorm) and _tname(m) == "LayerNorm" and m.elementwise_affine and m.bias is not None:
        kind = "layer"
    else:
        _refuse(arch, f"has a {_tname(m)} as {where} (the canonical norms are LayerNorm with weight and bias, or "
                      f"RmsNorm with weight)")
    norms.append((where, kind, float(m.eps)))
    return kind


def _read_eva_rope(model, arch: str, attn) -> dict[str, Any]:
    """The rotary-position fields of a timm Eva (cfg.rope ...) from its built rope module."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, RotaryEmbeddingMixed

    rope = model.rope
    if rope is None:
        return {}
    half = bool(getattr(attn, "rotate_half", False))
    if type(rope) is RotaryEmbeddingCat:
        if rope.in_pixels:
            _refuse(arch, "has pixel-frequency rotary positions (RotaryEmbeddingCat in_pixels=True)")
        if getattr(rope, "grid_type", "index") not in ("index", None):
            _refuse(arch, f"has rotary positions on a {rope.grid_type!r} grid")
        ref = getattr(rope, "ref_feat_shape", None)
        return dict(rope="cat", rope_temperature=float(rope.temperature), rope_indexing=rope.grid_indexing,
                    rope_offset=float(rope.grid_offset), rope_rotate_half=half,
                    rope_ref_grid=tuple(int(r) for r in ref) if ref is not None else None)
    if type(rope) is RotaryEmbeddingDinoV3:
        if rope.min_period is not None or rope.max_period is not None or rope.normalize_coords != "separate":
            _refuse(arch, "has DINOv3 rotary positions with min/max periods or coordinates not normalised per axis")
        if rope.rotate_half != half:
            _refuse(arch, "rotates its DINOv3 rotary table in another layout than its attention")
        return dict(rope="dinov3", rope_temperature=float(rope.temperature), rope_indexing=rope.grid_indexing,
                    rope_offset=float(rope.grid_offset), rope_rotate_half=half)
    if type(rope) is RotaryEmbeddingMixed:
        return dict(rope="mixed", rope_temperature=float(rope.temperature), rope_indexing=rope.grid_indexing)
    _refuse(arch, f"has {_tname(rope)} rotary positions (the canonical forms: RotaryEmbeddingCat with integer "
                  f"coordinates, RotaryEmbeddingMixed, RotaryEmbeddingDinoV3)")
    raise AssertionError  # unreachable


def _read_eva(model, arch: str) -> tuple[dict[str, Any], tuple[bool, bool, bool]]:
    """The facts of a built timm `Eva` (EVA, EVA02, DINOv3, PE, RoPE-ViT, ...): every field of its ViTConfig,
    read from the modules, under facts['eva_config'] (the import builds the config from it, nothing asked), or
    ConversionError naming what the canonical model cannot run."""
    import torch.nn as nn
    from timm.layers import AttentionPoolLatent, PatchEmbed
    from timm.layers.attention import AttentionRope
    from timm.layers.mlp import GluMlp, Mlp, SwiGLU
    from timm.models.eva import EvaAttention, EvaBlock, EvaBlockPostNorm

    pe = model.patch_embed
    proj = pe.proj
    if type(pe) is not PatchEmbed or type(pe.norm) is not nn.Identity or getattr(pe, "dynamic_img_pad", False) \
            or not (type(proj) is nn.Conv2d and proj.kernel_size == proj.stride and proj.padding == (0, 0)
                    and proj.kernel_size[0] == proj.kernel_size[1]):
        _refuse(arch, "embeds patches other than with one square strided conv")
    if getattr(model, "patch_drop", None) is not None:
        _refuse(arch, "drops patches (patch_drop_rate)")
    norms: list = []
    D, H = int(model.embed_dim), None
    blocks = list(model.blocks)
    per_block, kv_heads = set(), []
    for i, blk in enumerate(blocks):
        if type(blk) not in (EvaBlock, EvaBlockPostNorm):
            _refuse(arch, f"builds {_tname(blk)} blocks: not EvaBlock or EvaBlockPostNorm")
        post = type(blk) is EvaBlockPostNorm  # res-post-norm: no LayerScale (its init_values are ignored)
        a, m = blk.attn, blk.mlp
        if type(a) not in (EvaAttention, AttentionRope):
            _refuse(arch, f"has {_tname(a)} attention")
        if getattr(a, "gate", None) is not None:
            _refuse(arch, "has gated attention (a sigmoid gate before attn.proj)")
        kv_heads.append(int(getattr(a, "num_kv_heads", a.num_heads)))  # grouped-query attention: per block
        if a.head_dim * a.num_heads != D or a.proj.bias is None or not math.isclose(a.scale, a.head_dim ** -0.5):
            _refuse(arch, "has an attention width, scale or output projection other than the canonical one")
        fused = a.qkv is not None
        if type(a) is EvaAttention:  # q and v biases, never a k bias
            qkv_bias = (a.q_bias is not None) if fused else (a.q_proj.bias is not None)
            k_bias = False
        else:
            qkv_bias = (a.qkv.bias is not None) if fused else (a.q_proj.bias is not None)
            k_bias = True
        qk = type(a.q_norm) is not nn.Identity
        if qk:
            _norm_kind(a.q_norm, arch, f"blocks.{i}.attn.q_norm", norms)
            _norm_kind(a.k_norm, arch, f"blocks.{i}.attn.k_norm", norms)
        inner = type(a.norm) is not nn.Identity
        if inner:
            _norm_kind(a.norm, arch, f"blocks.{i}.attn.norm", norms)
        _norm_kind(blk.norm1, arch, f"blocks.{i}.norm1", norms)
        _norm_kind(blk.norm2, arch, f"blocks.{i}.norm2", norms)
        gelu, swiglu, unpacked = None, False, False
        if type(m) is Mlp and type(m.fc1) is nn.Linear:
            gelu = _gelu_form(m.act, arch, f"blocks.{i}.mlp")
        elif type(m) is GluMlp and type(m.act) is nn.SiLU and not m.gate_last and m.chunk_dim == -1 \
                and type(m.norm) is nn.Identity:
            swiglu = True
        elif type(m) is SwiGLU and type(m.act) is nn.SiLU:
            swiglu = unpacked = True
        else:
            _refuse(arch, f"has a {_tname(m)} MLP (canonical: Mlp with a GELU form, GluMlp or SwiGLU with SiLU)")
        mnorm = type(getattr(m, "norm", nn.Identity())) is not nn.Identity
        if mnorm:
            _norm_kind(m.norm, arch, f"blocks.{i}.mlp.norm", norms)
        g1, g2 = (False, False) if post else (blk.gamma_1 is not None, blk.gamma_2 is not None)
        if g2 and not g1:
            _refuse(arch, "scales the MLP branch only")
        per_block.add((int(a.num_heads), fused, qkv_bias, k_bias, qk, inner, gelu, swiglu, unpacked, mnorm,
                       int(m.fc2.in_features), g1, g2, blk.init_values if g1 else None,
                       bool(getattr(a, "rotate_half", False)), post))
    if len(per_block) != 1:
        _refuse(arch, "varies its blocks (heads, projections, norms, MLP, LayerScale or block type)")
    (H, fused, qkv_bias, k_bias, qk, inner, gelu, swiglu, unpacked, mnorm, M, g1, g2, init, _half,
     post) = per_block.pop()
    pre = type(model.norm_pre) is not nn.Identity and _norm_kind(model.norm_pre, arch, "norm_pre", norms)
    final = type(model.norm) is not nn.Identity and _norm_kind(model.norm, arch, "norm", norms)
    fc = type(model.fc_norm) is not nn.Identity and _norm_kind(model.fc_norm, arch, "fc_norm", norms)
    gp = model.global_pool
    if gp not in ("token", "avg", "map"):
        _refuse(arch, f"pools with global_pool={gp!r} (canonical pooling: 'token', 'avg' over the patch tokens, "
                      f"'map')")
    n0 = int(model.num_prefix_tokens)
    if gp == "map":  # timm's Eva hands its attention pool every token: the prefix tokens too (pool_include_prefix)
        ap = model.attn_pool
        if type(ap) is not AttentionPoolLatent or ap.latent_len != 1 or ap.pos_embed is not None \
                or type(ap.q_norm) is not nn.Identity or type(ap.mlp) is not Mlp:
            _refuse(arch, "has an attention pool other than the canonical MAP head (one latent, no positions, no "
                          "qk-norm)")
        _norm_kind(ap.norm, arch, "attn_pool.norm", norms)
        form = _gelu_form(ap.mlp.act, arch, "attn_pool.mlp")
        if gelu is not None and form != gelu:
            _refuse(arch, f"runs {form} GELU in its attention pool and {gelu} in its blocks")
        gelu = form
    if len({k for _, k, _ in norms}) > 1 or len({e for _, _, e in norms}) > 1:
        _refuse(arch, "mixes norm kinds or eps: " + ", ".join(f"{w} {k} {e}" for w, k, e in norms[:4]))
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        _refuse(arch, f"has a {_tname(model.head)} head")
    n_cls = model.head.out_features if isinstance(model.head, nn.Linear) else 0
    reg = int(model.reg_token.shape[1]) if model.reg_token is not None else 0
    cfg: dict[str, Any] = dict(
        name=arch, image_size=tuple(int(v) for v in pe.img_size), in_chans=int(proj.in_channels),
        patch_size=int(proj.kernel_size[0]), patch_bias=proj.bias is not None, embed_dim=D, depth=len(blocks),
        num_heads=H, mlp_dim=M, swiglu=swiglu, swiglu_unpacked=unpacked, qkv_bias=qkv_bias, qkv_fused=fused,
        k_bias=k_bias or not qkv_bias, qk_norm=qk, attn_inner_norm=inner, mlp_inner_norm=mnorm,
        init_values=float(init) if g1 else None, ls_attn_only=g1 and not g2, block_norm="post" if post else "pre",
        class_token="learned" if model.cls_token is not None else "none", reg_tokens=reg,
        pool={"token": "token", "avg": "mean", "map": "map"}[gp], pool_include_prefix=gp == "map" and n0 > 0,
        pool_heads=int(model.attn_pool.num_heads) if gp == "map" and model.attn_pool.num_heads != H else None,
        pool_mlp_dim=int(model.attn_pool.mlp.fc1.out_features)
        if gp == "map" and model.attn_pool.mlp.fc1.out_features != M else None,
        pos_embed="learned" if model.pos_embed is not None else "none",
        pos_prefix_tokens=0 if model.pos_embed is not None and model.no_embed_class and n0 else None,
        gelu=gelu or "erf", layer_norm_eps=norms[0][2], norm_kind=norms[0][1], norm_pre=bool(pre),
        final_norm=bool(final), fc_norm=bool(fc), num_classes=int(n_cls), **_read_eva_rope(model, arch, blocks[0].attn))
    if any(h != H for h in kv_heads):  # grouped-query attention (AttentionRope, separate projections)
        cfg["num_kv_heads"] = tuple(kv_heads)
    facts: dict[str, Any] = dict(name=arch, eva_config=cfg, num_heads=H, layer_norm_eps=norms[0][2],
                                 pool=cfg["pool"], image_size=cfg["image_size"],
                                 dynamic_img_size=bool(getattr(model, "dynamic_img_size", False)), norm_pre=bool(pre))
    return facts, (model.cls_token is not None, bool(final), bool(fc))


def resolve_timm_architecture(arch: str, model_args: Mapping[str, Any] | None = None,
                              source: str = "<file>") -> Resolved | None:
    """timm's own model of `arch` built on the meta device with `model_args` (a config.json's), read for the facts
    a file cannot tell. None when timm is not installed or does not know the name (nothing is guessed then);
    ConversionError when timm cannot build it with these arguments, or builds something the canonical model
    cannot run (by name, with the reason)."""
    if not timm_knows(arch):
        return None
    import timm
    import torch

    loading = sorted(set(model_args or {}) & _LOADING_ARGS)
    if loading:  # never handed to timm: it would read (and unpickle) files, or fetch weights
        raise ConversionError(f"{source}: config.json model_args {loading} are create_model's loading options, not "
                              f"model arguments: refused")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_args or {}).items()}
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - timm raises many types for arguments its architecture cannot take
        raise ConversionError(f"{source}: timm cannot build its {arch} with model_args {dict(model_args or {})}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    try:
        facts, layout = _read(model, arch)
    except ConversionError as e:
        raise ConversionError(f"{source}: {e}") from None
    shapes = {k: tuple(int(s) for s in v.shape) for k, v in model.state_dict().items()}
    return Resolved(arch=arch, facts=facts, shapes=shapes, layout=layout)
