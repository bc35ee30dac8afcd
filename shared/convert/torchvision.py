"""torchvision `VisionTransformer` state dicts <-> the canonical format.

torchvision's class (torchvision/models/vision_transformer.py) is a timm-shaped ViT under other names:

  class_token (1,1,D)                           cls_token
  conv_proj.weight / .bias                      patch_embed.proj.*
  encoder.pos_embedding (1, 1+N, D)             pos_embed (a row for the class token, then the patch grid)
  encoder.layers.encoder_layer_{i}.ln_1.*       blocks.{i}.norm1.*
    .self_attention.in_proj_weight / _bias      blocks.{i}.attn.qkv.*   (nn.MultiheadAttention: q, k, v stacked)
    .self_attention.out_proj.*                  blocks.{i}.attn.proj.*
    .ln_2.*                                     blocks.{i}.norm2.*
    .mlp.0.* / .mlp.3.*                         blocks.{i}.mlp.fc1.* / fc2.*   (before torchvision 0.14:
                                                mlp.linear_1 / mlp.linear_2, also read)
  encoder.ln.*                                  norm.*
  heads.pre_logits.* (representation_size)      pre_logits.fc.*  (Linear, then tanh)
  heads.head.*                                  head.*

Numerics the class fixes: exact (erf) GELU (nn.GELU()), class-token pooling (x[:, 0]), a final LayerNorm,
attention scaled by head_dim**-0.5, biases on every projection, 3 input channels; LayerNorm eps is the
constructor's `norm_layer`, 1e-6 in every builder. What the weights do not tell is the number of heads: it is
read from torchvision's own builder table (BUILDERS) when the sizes are one of its builders', else it must come
from `--preset NAME`. Nothing else is guessed.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..config import ViTConfig
from ..errors import ConfigError, ConversionError, ConversionWarning, MismatchError, MissingFactsError, UsageError
from ..posemb import resample_pos_embed
from ..fileio import atomic_write
from ..weights import CANONICAL_DTYPE, expected_shapes, read_tensors, validate_state
from .formats import _safetensors_kind
from .common import shape_of as common_shape_of
from .common import (block_ids, family_refusals, isqrt_exact, pair, read_torch_checkpoint, resolve_preset,
                     strip_prefixes)
from .keymap import Entry, take

#: torchvision's LayerNorm eps (partial(nn.LayerNorm, eps=1e-6), the default of every builder)
TORCHVISION_EPS = 1e-6
#: torchvision's builders (torchvision/models/vision_transformer.py, vit_b_16 ... vit_h_14):
#: (patch_size, hidden_dim, num_layers, mlp_dim) -> (builder, num_heads)
BUILDERS: dict[tuple[int, int, int, int], tuple[str, int]] = {
    (16, 768, 12, 3072): ("vit_b_16", 12),
    (32, 768, 12, 3072): ("vit_b_32", 12),
    (16, 1024, 24, 4096): ("vit_l_16", 16),
    (32, 1024, 24, 4096): ("vit_l_32", 16),
    (14, 1280, 32, 5120): ("vit_h_14", 16),
}

#: canonical key -> torchvision key, outside the blocks
_TOP = {
    "cls_token": "class_token", "patch_embed.proj.weight": "conv_proj.weight", "patch_embed.proj.bias": "conv_proj.bias",
    "pos_embed": "encoder.pos_embedding", "norm.weight": "encoder.ln.weight", "norm.bias": "encoder.ln.bias",
    "pre_logits.fc.weight": "heads.pre_logits.weight", "pre_logits.fc.bias": "heads.pre_logits.bias",
    "head.weight": "heads.head.weight", "head.bias": "heads.head.bias",
}
#: canonical key inside blocks.{i} -> torchvision key inside encoder.layers.encoder_layer_{i}
_BLOCK = {
    "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
    "attn.qkv.weight": "self_attention.in_proj_weight", "attn.qkv.bias": "self_attention.in_proj_bias",
    "attn.proj.weight": "self_attention.out_proj.weight", "attn.proj.bias": "self_attention.out_proj.bias",
    "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.0.weight", "mlp.fc1.bias": "mlp.0.bias",
    "mlp.fc2.weight": "mlp.3.weight", "mlp.fc2.bias": "mlp.3.bias",
}
#: torchvision < 0.14 MLPBlock names (torchvision's own MLPBlock._load_from_state_dict renames them the same way)
_LEGACY_MLP = {"mlp.linear_1.": "mlp.0.", "mlp.linear_2.": "mlp.3."}
_TOP_INV = {v: k for k, v in _TOP.items()}
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}
_TV_BLOCK = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")


def torchvision_key(canonical: str) -> str:
    """The torchvision name of a canonical key."""
    if canonical in _TOP:
        return _TOP[canonical]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", canonical)
    if m and m.group(2) in _BLOCK:
        return f"encoder.layers.encoder_layer_{m.group(1)}.{_BLOCK[m.group(2)]}"
    raise KeyError(f"canonical key {canonical!r} has no torchvision name")


def canonical_key(tv_key: str) -> str | None:
    """The canonical name of a torchvision key (legacy mlp.linear_N names included); None when it has none."""
    if tv_key in _TOP_INV:
        return _TOP_INV[tv_key]
    m = _TV_BLOCK.fullmatch(tv_key)
    if not m:
        return None
    rest = m.group(2)
    for old, new in _LEGACY_MLP.items():
        if rest.startswith(old):
            rest = new + rest[len(old):]
    return f"blocks.{m.group(1)}.{_BLOCK_INV[rest]}" if rest in _BLOCK_INV else None


def is_torchvision_state(keys) -> bool:
    keys = set(keys)
    return "conv_proj.weight" in keys and "encoder.pos_embedding" in keys


# ---------------------------------------------------------------------------- import
def import_torchvision(state: Mapping[str, Any], preset: ViTConfig | str | None = None, image_size=None,
                       source: str = "<torchvision state dict>") -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """A torchvision VisionTransformer state dict (NumPy arrays) -> (ViTConfig, canonical float32 state).

    The heads come from `preset` (CLI --preset NAME) or torchvision's builder table (BUILDERS). The file's sizes
    win over the preset's (a ConversionWarning lists the differences); torchvision's fixed numerics (erf GELU,
    class-token pooling) win over a preset's. image_size other than the table's resamples the position table
    with the preset's kernel (torchvision's own interpolate_embeddings kernel, bicubic with align_corners=True,
    is not a canonical kernel, so without a preset that is refused).
    """
    st = strip_prefixes(state)
    origin = _names(st, source)
    f = facts(st, origin, source)
    p_cfg = resolve_preset(preset)
    builder, heads, eps = _heads(f, p_cfg, source)
    table_grid, target = _grid(f, p_cfg, image_size, source)
    P = f["P"]
    try:
        cfg = ViTConfig(
            name=builder[0] if builder and p_cfg is None else (p_cfg.name if p_cfg else "torchvision_import"),
            image_size=target, in_chans=f["C"], patch_size=P, embed_dim=f["D"], depth=f["depth"], num_heads=heads,
            mlp_dim=f["M"], qkv_bias=f["qkv_bias"], class_token="learned", pool="token", pos_embed="learned",
            resize_kernel=p_cfg.resize_kernel if p_cfg else "bicubic", gelu="erf", layer_norm_eps=float(eps),
            final_norm=True, representation_size=f["rep"], num_classes=f["K"],
            notes=f"imported from torchvision state dict {source}")
    except ConfigError as e:
        raise ConversionError(f"{source}: the imported model is not a valid ViTConfig: {e}") from None
    # ---- every key through the key map, its shape checked, named as the file names it
    expected = expected_shapes(cfg.replace(image_size=(table_grid[0] * P, table_grid[1] * P)))
    out = take([Entry(origin.get(c, torchvision_key(c)), c) for c in expected], st, source, expected=expected)
    if cfg.grid != table_grid:
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], table_grid, cfg.grid, 1,
                                              cfg.resize_kernel).astype(CANONICAL_DTYPE)
    validate_state(cfg, out, source=source)
    return cfg, out


def _names(st: Mapping[str, Any], source: str) -> dict[str, str]:
    """canonical key -> the file's key: every key must have a canonical name, and only one file key per name."""
    if not is_torchvision_state(st):
        raise ConversionError(f"{source}: not a torchvision VisionTransformer state dict: no 'conv_proj.weight' / "
                              f"'encoder.pos_embedding' keys; first keys: {sorted(st)[:5]}")
    stem = sorted(k for k in st if k.startswith("conv_proj.") and k not in ("conv_proj.weight", "conv_proj.bias"))
    if stem:
        raise ConversionError(f"{source}: cannot convert: a convolutional stem (torchvision conv_stem_configs, keys "
                              f"{stem[:3]}); the canonical patch embedding is one strided conv")
    origin: dict[str, str] = {}
    problems = []
    for k in st:
        c = canonical_key(k)
        if c is None:
            problems.append(f"unexpected key {k!r} (shape {tuple(np.shape(st[k]))}): not part of a torchvision "
                            f"VisionTransformer")
        elif c in origin:
            problems.append(f"keys {origin[c]!r} and {k!r} are the same parameter (old and new MLP names)")
        else:
            origin[c] = k
    if problems:
        raise MismatchError(source, problems)
    return origin


def facts(st: Mapping[str, Any], origin: Mapping[str, str], source: str) -> dict[str, Any]:
    """The sizes a torchvision state dict states (origin: canonical key -> the file's key)."""
    def shape_of(c: str, ndim: int) -> tuple[int, ...]:
        name = origin.get(c, torchvision_key(c))
        return common_shape_of(st if c in origin else {}, name, ndim, source)

    D, C, P, P2 = shape_of("patch_embed.proj.weight", 4)
    if P != P2:
        raise ConversionError(f"{source}: 'conv_proj.weight' has non-square {P}x{P2} patches; the canonical "
                              f"patch_size is one int")
    ids = block_ids(origin, "blocks.{i}.")
    if not ids or ids != list(range(len(ids))):
        raise MismatchError(source, [f"encoder layers are not numbered encoder_layer_0..N: {ids}"])
    return {"D": D, "C": C, "P": P, "depth": len(ids), "M": shape_of("blocks.0.mlp.fc1.weight", 2)[0],
            "rep": shape_of("pre_logits.fc.weight", 2)[0] if "pre_logits.fc.weight" in origin else None,
            "K": shape_of("head.weight", 2)[0], "T": shape_of("pos_embed", 3)[1],
            "qkv_bias": "blocks.0.attn.qkv.bias" in origin}


def _heads(f: Mapping[str, Any], p_cfg: ViTConfig | None, source: str):
    """(torchvision's builder of these sizes or None, num_heads, layer_norm_eps): the facts the file cannot tell,
    from the preset or torchvision's builders; the preset's other differences from the file are said."""
    P, D, depth, M = f["P"], f["D"], f["depth"], f["M"]
    builder = BUILDERS.get((P, D, depth, M))
    if p_cfg is None and builder is None:
        table = ", ".join(f"{n} (patch {p}, width {d}, {L} layers, mlp {m})" for (p, d, L, m), (n, _) in BUILDERS.items())
        raise MissingFactsError(
            f"{source}: a torchvision state dict does not store the number of heads, and its sizes (patch {P}, width "
            f"{D}, {depth} layers, mlp {M}) are none of torchvision's builders ({table}); pass --preset NAME with "
            f"the heads this model was built with")
    heads = p_cfg.num_heads if p_cfg is not None else builder[1]
    eps = p_cfg.layer_norm_eps if p_cfg is not None else TORCHVISION_EPS
    if p_cfg is not None:
        said = []
        if builder is not None and builder[1] != p_cfg.num_heads:
            said.append(f"num_heads {p_cfg.num_heads} from the preset, not {builder[1]} as torchvision's {builder[0]}")
        if eps != TORCHVISION_EPS:
            said.append(f"layer_norm_eps {eps} from the preset, not torchvision's {TORCHVISION_EPS}")
        if p_cfg.gelu != "erf" or p_cfg.pool != "token" or p_cfg.class_token != "learned":
            said.append(f"torchvision's erf GELU and class-token pooling, not the preset's gelu={p_cfg.gelu!r} "
                        f"pool={p_cfg.pool!r}")
        file_vals = dict(embed_dim=D, in_chans=f["C"], patch_size=P, depth=depth, mlp_dim=M, qkv_bias=f["qkv_bias"],
                         representation_size=f["rep"], num_classes=f["K"], final_norm=True, fc_norm=False)
        said += [f"{k}={v!r} from the file, not the preset's {getattr(p_cfg, k)!r}" for k, v in file_vals.items()
                 if getattr(p_cfg, k) != v]
        if said:
            warnings.warn(f"{source}: using " + "; ".join(said), ConversionWarning, stacklevel=3)
    if D % heads:
        raise ConversionError(f"{source}: width {D} from the file is not divisible by num_heads {heads} from preset "
                              f"{p_cfg.name!r}: wrong preset?")
    return builder, heads, eps


def _grid(f: Mapping[str, Any], p_cfg: ViTConfig | None, image_size, source: str):
    """(the position table's grid, the image size to convert for): torchvision's tables are square; anything else
    needs --image-size, and resampling needs a preset's kernel."""
    T, P = f["T"], f["P"]
    stated = pair(image_size) if image_size is not None else None
    s = isqrt_exact(T - 1)
    if s:
        table_grid = (s, s)
    elif stated and stated[0] % P == 0 and stated[1] % P == 0 and (stated[0] // P) * (stated[1] // P) == T - 1:
        table_grid = (stated[0] // P, stated[1] // P)
    else:
        raise MissingFactsError(
            f"{source}: 'encoder.pos_embedding' has {T - 1} patch rows (after the class row), not a square grid; "
            f"pass --image-size HxW at which the table was trained")
    target = stated or (table_grid[0] * P, table_grid[1] * P)
    if target[0] % P or target[1] % P:
        raise UsageError(f"{source}: image size {target[0]}x{target[1]} is not divisible by the patch size {P}")
    if (target[0] // P, target[1] // P) != table_grid and p_cfg is None:
        raise MissingFactsError(
            f"{source}: resampling the {table_grid[0]}x{table_grid[1]} position table to {target[0]}x{target[1]} "
            f"images needs a kernel; torchvision's interpolate_embeddings (bicubic, align_corners=True) is not one "
            f"the canonical model has: pass --preset NAME whose resize_kernel to use")
    return table_grid, target


# ---------------------------------------------------------------------------- export
def torchvision_problems(cfg: ViTConfig) -> list[str]:
    """Why `cfg` cannot be a torchvision VisionTransformer (empty when it can)."""
    p = family_refusals(cfg, "torchvision's VisionTransformer")
    if cfg.in_chans != 3:
        p.append(f"in_chans={cfg.in_chans}: torchvision's conv_proj always takes 3 channels")
    if cfg.image_size[0] != cfg.image_size[1]:
        p.append(f"image_size {cfg.image_size}: torchvision's VisionTransformer takes square images (one int)")
    if cfg.class_token != "learned":
        p.append(f"class_token={cfg.class_token!r}: torchvision has a learned class token")
    if cfg.pool != "token":
        p.append(f"pool={cfg.pool!r}: torchvision pools the class token")
    if cfg.pos_embed != "learned":
        p.append(f"pos_embed={cfg.pos_embed!r}: torchvision has a learned position table")
    elif cfg.table_grid != cfg.grid:
        p.append(f"the position table ({cfg.table_grid}) is resampled to the image grid {cfg.grid} at run time: "
                 f"torchvision runs only at its table's size (convert with --image-size to store it resampled)")
    if cfg.gelu != "erf":
        p.append(f"gelu={cfg.gelu!r}: torchvision's MLP uses the exact (erf) GELU")
    if cfg.layer_norm_eps != TORCHVISION_EPS:
        p.append(f"layer_norm_eps={cfg.layer_norm_eps}: torchvision's builders use {TORCHVISION_EPS}")
    if not cfg.qkv_bias:
        p.append("qkv_bias=False: torchvision's nn.MultiheadAttention has an in_proj_bias")
    if cfg.attn_dim is not None and cfg.attn_dim != cfg.embed_dim:
        p.append(f"attn_dim {cfg.attn_dim} != embed_dim {cfg.embed_dim}: torchvision blocks keep one width")
    if cfg.attn_value_skip:
        p.append("attn_value_skip: torchvision's attention has no value skip")
    if cfg.qk_scale is not None and cfg.qk_scale != cfg.head_dim ** -0.5:
        p.append(f"qk_scale={cfg.qk_scale}: torchvision scales by head_dim**-0.5")
    if not cfg.final_norm or cfg.fc_norm:
        p.append("no final norm / fc_norm: torchvision has one LayerNorm (encoder.ln) before pooling")
    if cfg.num_classes == 0:
        p.append("num_classes=0: torchvision always has heads.head")
    if cfg.output_softmax:
        p.append("output_softmax: torchvision returns logits")
    return p


def export_torchvision(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical state -> torchvision VisionTransformer state dict (float32 copies under torchvision's names)."""
    problems = torchvision_problems(cfg)
    if problems:
        raise ConversionError(f"config {cfg.name!r} cannot be expressed as a torchvision VisionTransformer:\n  "
                              + "\n  ".join(problems))
    validate_state(cfg, state, source="<canonical state>")
    return {torchvision_key(k): np.array(v, dtype=CANONICAL_DTYPE, copy=True) for k, v in state.items()}


# ---------------------------------------------------------------------------- files
def read_torchvision_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torchvision state dict file -> NumPy dict: safetensors, or .pt/.pth through torch.load(weights_only=True)."""
    path = Path(path)
    if _safetensors_kind(path):  # the file's content decides, not its suffix
        return read_tensors(path, writable=False)[0]
    return read_torch_checkpoint(path)


def load_torchvision_file(path: str | os.PathLike, preset: ViTConfig | str | None = None,
                          image_size=None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    return import_torchvision(read_torchvision_file(path), preset=preset, image_size=image_size, source=str(path))


def save_torchvision_file(path: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray], *,
                          overwrite: bool = False) -> Path:
    """torch.save of the torchvision state dict (tensors only), atomically: what
    `torchvision.models.vit_b_16().load_state_dict(torch.load(path, weights_only=True))` reads."""
    tv = export_torchvision(cfg, state)  # refuse before touching the disk
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tv.items()}
    return atomic_write(path, lambda tmp: torch.save(tensors, tmp), overwrite=overwrite)


# ------------------------------------------------------------------ the source library itself
def torchvision_source_output(path: str | os.PathLike, images: np.ndarray, preset: ViTConfig | str | None = None
                              ) -> np.ndarray:
    """Logits (float32) of torchvision's own VisionTransformer built for the file's sizes and loaded from the file
    with load_state_dict(strict=True), for NCHW `images` at the table's (square) size: the proof against the source.

    Only the constructor's arguments come from the importer (sizes, heads from BUILDERS or `preset`, eps); the
    weights go from the file into torchvision unchanged (torchvision maps legacy mlp.linear_N names itself).
    """
    from functools import partial

    import torch
    from torchvision.models.vision_transformer import VisionTransformer

    raw = strip_prefixes(read_torchvision_file(path))
    cfg, _ = import_torchvision(raw, preset=preset, source=str(path))
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[2:] != tuple(cfg.image_size):
        raise UsageError(f"{path}: torchvision's VisionTransformer runs only at {cfg.image_size[0]}x"
                         f"{cfg.image_size[1]}; got images of shape {images.shape}")
    model = VisionTransformer(image_size=cfg.image_size[0], patch_size=cfg.patch_size, num_layers=cfg.depth,
                              num_heads=cfg.num_heads, hidden_dim=cfg.embed_dim, mlp_dim=cfg.mlp_dim,
                              num_classes=cfg.num_classes, representation_size=cfg.representation_size,
                              norm_layer=partial(torch.nn.LayerNorm, eps=cfg.layer_norm_eps))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in raw.items()}, strict=True)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy().astype(np.float32)
