"""The original Google ViT / big_vision `.npz` checkpoints (the AugReg files) -> the canonical format. Import only.

The file is np.savez of the Flax parameter tree, read the way timm's `_load_weights`
(timm/models/vision_transformer.py) reads it, optionally under timm's `opt/target/` prefix:

  cls (1,1,D)                                                   cls_token
  embedding/kernel (P,P,C,D) HWIO, embedding/bias               patch_embed.proj.* (kernel -> OIHW)
  Transformer/posembed_input/pos_embedding (1, 1+N, D)          pos_embed
  Transformer/encoderblock_{i}/LayerNorm_0/scale|bias            blocks.{i}.norm1.*
    MultiHeadDotProductAttention_1/query|key|value/kernel (D,H,d), bias (H,d)
                                                                blocks.{i}.attn.qkv.* (q, k, v stacked, heads-major)
    MultiHeadDotProductAttention_1/out/kernel (H,d,D), bias     blocks.{i}.attn.proj.*
    LayerNorm_2/scale|bias                                      blocks.{i}.norm2.*
    MlpBlock_3/Dense_0|Dense_1/kernel|bias                      blocks.{i}.mlp.fc1|fc2.* (kernels transposed)
  Transformer/encoder_norm/scale|bias                           norm.*
  pre_logits/kernel|bias (a representation layer, then tanh)    pre_logits.fc.*
  head/kernel|bias                                              head.*

The file determines every size, the heads included (the attention kernels are (D, heads, head_dim)). The
numerics it cannot tell are timm's reading of these files, unless `--preset NAME` says otherwise (a
ConversionWarning then says what the preset changed): LayerNorm eps 1e-6, exact (erf) GELU, class-token pooling
(patch mean when the file has no `cls`), and the position table resampled with `bilinear` (timm's
`_load_weights`) when the requested image size differs from the table's. (The JAX code that trained these
models uses Flax's default nn.gelu, the tanh approximation; timm and this reader use erf.)

Not read: the big_vision layout (`params/` prefix, a root `pos_embedding` without a class row, scanned
`encoderblock` stacks, MAP heads) and hybrid ResNet stems: refused by name.
"""
from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..config import ViTConfig
from ..errors import ConfigError, ConversionError, ConversionWarning, InvalidFileError, MismatchError, MissingFactsError
from ..posemb import resample_pos_embed
from ..weights import CANONICAL_DTYPE, validate_state
from .common import isqrt_exact, pair, resolve_preset
from .common import shape_of as common_shape_of
from .keymap import Chain, Each, Entry, Reshape, Transpose, expand, prefixed, renames, take

#: numerics timm's _load_weights gives these files (timm's VisionTransformer defaults, bilinear resampling)
TIMM_READING = dict(layer_norm_eps=1e-6, gelu="erf", resize_kernel="bilinear")
#: key prefixes of the original layout that timm accepts
PREFIXES = ("", "opt/target/")
_POS = "Transformer/posembed_input/pos_embedding"
_BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/")


def _layout_prefix(keys, source: str) -> str:
    for p in PREFIXES:
        if f"{p}embedding/kernel" in keys:
            if f"{p}pos_embedding" in keys or any(k.startswith(f"{p}Transformer/encoderblock/") for k in keys):
                break
            return p
    if any(f"{p}conv_root/kernel" in keys for p in PREFIXES):
        raise ConversionError(f"{source}: a hybrid ResNet-ViT (conv_root/...): the canonical patch embedding is "
                              f"one strided conv")
    if any(k.endswith("embedding/kernel") for k in keys):
        raise ConversionError(
            f"{source}: the big_vision layout (a 'params/' prefix, a root 'pos_embedding' or a scanned "
            f"'Transformer/encoderblock/' stack) is not read: only the original ViT layout "
            f"('Transformer/encoderblock_N/...', prefix '' or 'opt/target/'); first keys: {sorted(keys)[:5]}")
    raise ConversionError(f"{source}: not an original-ViT .npz: no 'embedding/kernel'; first keys: {sorted(keys)[:5]}")


def expected_npz_shapes(cfg: ViTConfig, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Every key of the original-ViT layout for `cfg`, with its shape."""
    D, M, P, C, H = cfg.embed_dim, cfg.mlp_dim, cfg.patch_size, cfg.in_chans, cfg.num_heads
    d = D // H
    gh, gw = cfg.table_grid
    s = {"embedding/kernel": (P, P, C, D), "embedding/bias": (D,), _POS: (1, cfg.num_prefix_tokens + gh * gw, D),
         "Transformer/encoder_norm/scale": (D,), "Transformer/encoder_norm/bias": (D,)}
    if cfg.class_token == "learned":
        s["cls"] = (1, 1, D)
    for i in range(cfg.depth):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            s[f"{b}{ln}/scale"] = s[f"{b}{ln}/bias"] = (D,)
        for n in ("query", "key", "value"):
            s[f"{a}{n}/kernel"], s[f"{a}{n}/bias"] = (D, H, d), (H, d)
        s[f"{a}out/kernel"], s[f"{a}out/bias"] = (H, d, D), (D,)
        s[f"{b}MlpBlock_3/Dense_0/kernel"], s[f"{b}MlpBlock_3/Dense_0/bias"] = (D, M), (M,)
        s[f"{b}MlpBlock_3/Dense_1/kernel"], s[f"{b}MlpBlock_3/Dense_1/bias"] = (M, D), (D,)
    if cfg.representation_size:
        s["pre_logits/kernel"], s["pre_logits/bias"] = (D, cfg.representation_size), (cfg.representation_size,)
    if cfg.num_classes:
        s["head/kernel"], s["head/bias"] = (cfg.feature_dim, cfg.num_classes), (cfg.num_classes,)
    return {prefix + k: v for k, v in s.items()}


def key_map(cfg: ViTConfig, pre: str = "") -> list[Entry]:
    """(.npz keys under `pre`, canonical keys, transform), as timm's _load_weights lays the arrays out: Flax kernels
    transposed to torch's (out, in), the attention's per-head kernels reshaped first, q/k/v fused in row order."""
    D, H = cfg.embed_dim, cfg.num_heads
    d = D // H
    linear = Transpose((1, 0))
    m = [Entry("embedding/kernel", "patch_embed.proj.weight", Transpose((3, 2, 0, 1))),
         *renames({"embedding/bias": "patch_embed.proj.bias", _POS: "pos_embed",
                   "Transformer/encoder_norm/scale": "norm.weight", "Transformer/encoder_norm/bias": "norm.bias"})]
    if cfg.class_token == "learned":
        m.append(Entry("cls", "cls_token"))
    b, a = "Transformer/encoderblock_{i}/", "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
    qkv = [f"{a}{n}" for n in ("query", "key", "value")]
    block = [*renames({b + "LayerNorm_0/scale": "blocks.{i}.norm1.weight", b + "LayerNorm_0/bias": "blocks.{i}.norm1.bias",
                       b + "LayerNorm_2/scale": "blocks.{i}.norm2.weight", b + "LayerNorm_2/bias": "blocks.{i}.norm2.bias",
                       a + "out/bias": "blocks.{i}.attn.proj.bias"}),
             Entry(tuple(k + "/kernel" for k in qkv), "blocks.{i}.attn.qkv.weight",
                   Each(Chain((Reshape((D, D), (D, H, d)), linear)))),
             Entry(tuple(k + "/bias" for k in qkv), "blocks.{i}.attn.qkv.bias", Each(Reshape((D,), (H, d)))),
             Entry(a + "out/kernel", "blocks.{i}.attn.proj.weight", Chain((Reshape((D, D), (H, d, D)), linear)))]
    for r in range(2):
        block += [Entry(b + f"MlpBlock_3/Dense_{r}/kernel", f"blocks.{{i}}.mlp.fc{r + 1}.weight", linear),
                  Entry(b + f"MlpBlock_3/Dense_{r}/bias", f"blocks.{{i}}.mlp.fc{r + 1}.bias")]
    m += expand(block, cfg.depth)
    for key, canon, on in (("pre_logits", "pre_logits.fc", cfg.representation_size), ("head", "head", cfg.num_classes)):
        if on:
            m += [Entry(f"{key}/kernel", f"{canon}.weight", linear), Entry(f"{key}/bias", f"{canon}.bias")]
    return prefixed(m, pre)


def import_bigvision(arrays: Mapping[str, Any], preset: ViTConfig | str | None = None, image_size=None,
                     source: str = "<npz>") -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """The arrays of an original-ViT .npz -> (ViTConfig, canonical float32 state), as timm's _load_weights reads
    them; image_size=(H, W) other than the table's resamples the position table with the config's kernel."""
    keys = set(arrays)
    pre = _layout_prefix(keys, source)
    outside = sorted(k for k in keys if not k.startswith(pre))
    if outside:
        warnings.warn(f"{source}: {len(outside)} array(s) outside the model parameters '{pre}*' ignored (e.g. "
                      f"{outside[0]!r}: optimizer state?)", ConversionWarning, stacklevel=2)
    w = {k[len(pre):]: arrays[k] for k in keys if k.startswith(pre)}
    f = facts(w, pre, source)
    P, prefix_rows = f["P"], int(f["has_cls"])
    numerics = _numerics(f, resolve_preset(preset), source)
    # ---- the position table's grid
    stated = pair(image_size) if image_size is not None else None
    T = f["T"]
    s = isqrt_exact(T - prefix_rows)
    if s:
        table_grid = (s, s)
    elif stated and stated[0] % P == 0 and stated[1] % P == 0 and (stated[0] // P) * (stated[1] // P) == T - prefix_rows:
        table_grid = (stated[0] // P, stated[1] // P)
    else:
        raise MissingFactsError(f"{source}: {pre}{_POS} has {T - prefix_rows} patch rows, not a square grid; pass "
                                f"--image-size HxW at which the table was trained")
    target = stated or (table_grid[0] * P, table_grid[1] * P)
    try:
        cfg = ViTConfig(
            name=numerics["name"], image_size=(table_grid[0] * P, table_grid[1] * P),
            in_chans=f["C"], patch_size=P, embed_dim=f["D"], depth=f["depth"], num_heads=f["H"], mlp_dim=f["M"],
            qkv_bias=True, class_token="learned" if f["has_cls"] else "none", pool=numerics["pool"],
            pos_embed="learned", resize_kernel=numerics["resize_kernel"], gelu=numerics["gelu"],
            layer_norm_eps=float(numerics["layer_norm_eps"]), final_norm=True, representation_size=f["rep"],
            num_classes=f["K"], notes=f"imported from original-ViT .npz {source}")
    except ConfigError as e:
        raise ConversionError(f"{source}: the imported model is not a valid ViTConfig: {e}") from None
    # ---- every key and shape, named as the file names it; then the weights through the key map
    expected = expected_npz_shapes(cfg)
    problems = [f"missing key {pre + k!r} (expected shape {shp})" for k, shp in expected.items() if k not in w]
    problems += [f"unexpected key {pre + k!r} (shape {tuple(np.shape(w[k]))})" for k in sorted(w) if k not in expected]
    problems += [f"key {pre + k!r}: expected shape {shp}, got {tuple(np.shape(w[k]))}"
                 for k, shp in expected.items() if k in w and tuple(np.shape(w[k])) != shp]
    if problems:
        raise MismatchError(source, problems)
    out = take(key_map(cfg), w, source, shown=lambda k: pre + k)
    validate_state(cfg, out, source=source)
    if tuple(target) != tuple(cfg.image_size):
        try:
            new = cfg.replace(image_size=target)
        except ConfigError as e:
            raise ConversionError(f"{source}: image size {target}: {e}") from None
        out["pos_embed"] = resample_pos_embed(out["pos_embed"], table_grid, new.grid, prefix_rows,
                                              cfg.resize_kernel).astype(CANONICAL_DTYPE)
        cfg = new
    return cfg, out


def facts(w: Mapping[str, Any], pre: str, source: str) -> dict[str, Any]:
    """The sizes an original-ViT .npz states, the heads included (keys relative to `pre`)."""
    def shape_of(k: str, ndim: int) -> tuple[int, ...]:
        return common_shape_of(w, k, ndim, source, pre + k, what="array")

    P, P2, C, D = shape_of("embedding/kernel", 4)
    if P != P2:
        raise ConversionError(f"{source}: {pre}embedding/kernel has non-square {P}x{P2} patches")
    ids = sorted({int(m.group(1)) for k in w if (m := _BLOCK.match(k))})
    depth = len(ids)
    if depth == 0 or ids != list(range(depth)):
        raise MismatchError(source, [f"encoder blocks are not numbered {pre}Transformer/encoderblock_0..N: {ids}"])
    b0 = "Transformer/encoderblock_0/"
    _, H, d = shape_of(b0 + "MultiHeadDotProductAttention_1/query/kernel", 3)
    if H * d != D:
        raise ConversionError(f"{source}: attention width {H}x{d} != embedding width {D}: the canonical attention "
                              f"keeps one width")
    return {"P": P, "C": C, "D": D, "depth": depth, "H": H, "M": shape_of(b0 + "MlpBlock_3/Dense_0/kernel", 2)[1],
            "rep": shape_of("pre_logits/kernel", 2)[1] if "pre_logits/kernel" in w else None,
            "K": shape_of("head/kernel", 2)[1] if "head/kernel" in w else 0, "T": shape_of(_POS, 3)[1],
            "has_cls": "cls" in w}


def _numerics(f: Mapping[str, Any], p_cfg: ViTConfig | None, source: str) -> dict[str, Any]:
    """timm's reading (eps, GELU, kernel, pooling), or the preset's, said in a ConversionWarning."""
    numerics = dict(TIMM_READING, pool="token" if f["has_cls"] else "mean",
                    name=p_cfg.name if p_cfg else "bigvision_import")
    if p_cfg is not None:
        said = [f"{k}={getattr(p_cfg, k)!r} (timm reads {v!r})" for k, v in TIMM_READING.items()
                if getattr(p_cfg, k) != v]
        numerics.update({k: getattr(p_cfg, k) for k in TIMM_READING})
        if f["has_cls"] and p_cfg.pool == "mean":
            numerics["pool"] = "mean"
            said.append("pool='mean' (timm pools the class token)")
        file_vals = dict(embed_dim=f["D"], in_chans=f["C"], patch_size=f["P"], depth=f["depth"], num_heads=f["H"],
                         mlp_dim=f["M"], representation_size=f["rep"], num_classes=f["K"])
        said += [f"{k}={v!r} from the file, not the preset's {getattr(p_cfg, k)!r}" for k, v in file_vals.items()
                 if getattr(p_cfg, k) != v]
        if said:
            warnings.warn(f"{source}: preset {p_cfg.name!r}: using " + "; ".join(said), ConversionWarning, stacklevel=3)
    return numerics


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz, as data: the archive's sizes checked first (no zip bomb), each member's .npy header
    read and held to the member's size before anything is allocated, object arrays refused (nothing unpickled)."""
    from numpy.lib import format as npf

    from ..safeio import check_zip

    check_zip(path, ".npz archive")
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename
                if not name.endswith(".npy"):
                    raise InvalidFileError(f"{path}: member {name[:80]!r} is not an .npy array")
                with z.open(info) as f:
                    version = npf.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = npf.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, fortran, dtype = npf.read_array_header_2_0(f)
                    else:
                        raise InvalidFileError(f"{path}: member {name[:80]!r}: .npy version {version} is not read")
                    if dtype.hasobject:
                        raise InvalidFileError(f"{path}: member {name[:80]!r} holds Python objects (a pickle): refused")
                    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if nbytes != info.file_size - f.tell():
                        raise InvalidFileError(f"{path}: member {name[:80]!r}: its header claims shape {shape} "
                                               f"{dtype} ({nbytes} bytes), the member holds "
                                               f"{info.file_size - f.tell()}")
                    data = f.read(nbytes)
                out[name[:-4]] = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()
    except InvalidFileError:
        raise
    except Exception as e:  # noqa: BLE001 (zipfile, numpy's header parser: every way a damaged file fails)
        raise InvalidFileError(f"{path}: not a readable .npz of plain arrays ({type(e).__name__}: {e})") from None
    return out


def load_bigvision_file(path: str | os.PathLike, preset: ViTConfig | str | None = None,
                        image_size=None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    return import_bigvision(read_npz(path), preset=preset, image_size=image_size, source=str(Path(path)))


# ------------------------------------------------------------------ the source library itself
def bigvision_source_output(path: str | os.PathLike, images: np.ndarray, image_size=None) -> np.ndarray:
    """Logits (float32) of a timm VisionTransformer loaded by timm's own `_load_weights(model, path)`, for NCHW
    `images`: the proof against the source. The model's shape is read here from the file's array shapes
    (independently of import_bigvision); image_size other than the table's makes timm resample the table.

    timm >= 0.9 dropped the pre-logits layer (its `_load_weights` leaves `pre_logits/*` unread), so for a file
    with one the timm model is built without a head and the representation layer (Dense, tanh) and the head are
    applied here in torch from the file's arrays.
    """
    import torch
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    w = read_npz(path)
    pre = next((p for p in PREFIXES if f"{p}embedding/kernel" in w), "")
    P, _, C, D = w[f"{pre}embedding/kernel"].shape
    depth = len({m.group(1) for k in w if (m := _BLOCK.match(k[len(pre):]))})
    H = w[f"{pre}Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape[1]
    M = w[f"{pre}Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[1]
    has_cls, has_rep = f"{pre}cls" in w, f"{pre}pre_logits/kernel" in w
    K = w[f"{pre}head/kernel"].shape[1] if f"{pre}head/kernel" in w else 0
    side = int(round((w[f"{pre}{_POS}"].shape[1] - has_cls) ** 0.5)) * P
    model = VisionTransformer(img_size=pair(image_size) if image_size is not None else (side, side), patch_size=P,
                              in_chans=C, embed_dim=D, depth=depth, num_heads=H, mlp_ratio=M / D, qkv_bias=True,
                              class_token=has_cls, global_pool="token" if has_cls else "avg", fc_norm=False,
                              num_classes=0 if has_rep else K)
    assert model.blocks[0].mlp.fc1.out_features == M
    _load_weights(model, str(path))
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if not has_rep:
            return model(x).numpy().astype(np.float32)
        t = {k: torch.from_numpy(np.asarray(w[pre + k], dtype=np.float32)) for k in
             ("pre_logits/kernel", "pre_logits/bias", "head/kernel", "head/bias") if pre + k in w}
        y = torch.tanh(model(x) @ t["pre_logits/kernel"] + t["pre_logits/bias"])
        if K:
            y = y @ t["head/kernel"] + t["head/bias"]
        return y.numpy().astype(np.float32)
