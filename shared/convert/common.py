"""What every converter of this package shares, in one place: reading checkpoints (prefixes, nesting, dtypes, torch
files), the GELU name tables, pairs and image sizes, block numbering, q/k/v fuse and split, the family-option
refusals of an export, and storing the weights for another image size. The converters import these from here;
none imports a helper from another converter."""
from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .. import limits as L
from ..config import ViTConfig, is_int, shown
from ..errors import ConfigError, ConversionError, ConversionWarning, InvalidFileError, MismatchError, MissingFactsError
from ..posemb import resample_pos_embed
from ..presets import get_preset
from ..safeio import check_zip
from ..weights import CANONICAL_DTYPE, read_tensors
from .timm_resolve import timm_knows

# ----------------------------------------------------------------------------- GELU names
#: canonical GELU form <-> timm's act_layer name (timm.layers.get_act_layer)
TIMM_ACT = {"erf": "gelu", "tanh": "gelu_tanh", "quick": "quick_gelu"}
GELU_OF_ACT = {v: k for k, v in TIMM_ACT.items()}
#: transformers' hidden_act -> canonical GELU form ('gelu_new' and 'gelu_fast' are the one tanh formula)
HF_GELU = {"gelu": "erf", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "quick_gelu": "quick"}
#: canonical GELU form -> the hidden_act an export writes
HF_GELU_OUT = {"erf": "gelu", "tanh": "gelu_pytorch_tanh", "quick": "quick_gelu"}

#: Wrapper prefixes stripped when every key carries them (DDP, training wrappers, torch.compile, Lightning).
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.", "state_dict.", "net.")


# ----------------------------------------------------------------------------- checkpoints
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
    """A stored tensor as the canonical float32, a copy (a MismatchError naming the key for a non-float one; a
    ConversionWarning when a wider float rounds). A read-only float32 array (a file's, `read_tensors(...,
    writable=False)`) is taken as it is: nothing can change it under the canonical state."""
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise MismatchError(source, [f"key {name!r}: expected a floating tensor, got dtype {arr.dtype}"])
    if arr.dtype == CANONICAL_DTYPE and not arr.flags.writeable:
        return arr
    out = arr.astype(CANONICAL_DTYPE)
    if arr.dtype.itemsize > 4 and not np.array_equal(out.astype(arr.dtype), arr):
        warnings.warn(f"{source}: {name!r} is {arr.dtype}; rounded to float32 (the canonical dtype)",
                      ConversionWarning, stacklevel=3)
    return out


def float32_view(value: Any) -> np.ndarray:
    """A tensor as float32 for an exporter's output: converted (a new array) where it is another dtype, else the same
    memory without a copy, as a read-only view, so nothing written through the export can change its source."""
    arr = np.asarray(value)
    out = arr.astype(CANONICAL_DTYPE, copy=False)
    if out is arr:
        out = arr.view()
        out.flags.writeable = False
    return out


def check_hf_export(cfg: ViTConfig, mt: str, problems: list[str], state: Mapping[str, np.ndarray]) -> None:
    """Before a Hugging Face export of model type `mt`: refuse a config it cannot express (every problem named),
    then check the state against the config."""
    from ..weights import validate_state

    if problems:
        raise ConversionError(f"config {cfg.name!r} cannot be expressed as a Hugging Face {mt} model:\n  "
                              + "\n  ".join(problems))
    validate_state(cfg, state, source="<canonical state>")


def without_k_bias(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`state` (a new dict, the caller's arrays untouched) with the k third of every fused qkv bias zeroed, for the
    formats that store no k bias (BEiT's, HF's k_proj): a k_bias=False model never reads it, so what it holds must
    not reach the file."""
    out, W = dict(state), cfg.width
    for i in range(cfg.depth):
        b = np.array(state[f"blocks.{i}.attn.qkv.bias"], CANONICAL_DTYPE, copy=True)
        b[W:2 * W] = 0.0
        out[f"blocks.{i}.attn.qkv.bias"] = b
    return out


def refuse_unsupported(keys, source: str, table) -> None:
    """A ConversionError naming every (pattern, what, why) row of `table` that one of `keys` matches."""
    problems = []
    for pattern, what, why in table:
        hits = sorted(k for k in keys if re.search(pattern, k))
        if hits:
            more = f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""
            problems.append(f"{what}: e.g. {hits[0]!r}{more}; {why}")
    if problems:
        raise ConversionError(f"{source}: cannot convert: the checkpoint uses features the canonical format cannot "
                              f"represent:\n  " + "\n  ".join(problems))


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
        with warnings.catch_warnings():  # torch warns about odd pickle protocols of garbage before refusing it
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        first = str(e).splitlines()[0].split(" In PyTorch 2.6,")[0] if str(e) else ""  # not torch's advice to unpickle
        raise InvalidFileError(f"{path}: not a safe PyTorch checkpoint (torch.load weights_only=True failed: "
                               f"{type(e).__name__}: {first}); nothing in it was executed") from None
    out = {}
    for k, t in flatten_checkpoint(obj).items():
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
    """A state dict file: .safetensors, or .pt/.pth/.bin through read_torch_checkpoint."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, _ = read_tensors(path, writable=False)
        return tensors
    if path.suffix in (".pt", ".pth", ".bin"):
        return read_torch_checkpoint(path)
    raise InvalidFileError(f"{path}: unknown checkpoint type {path.suffix!r} (expected .safetensors, .pt, .pth, .bin)")


# ----------------------------------------------------------------------------- presets
def is_suite_preset(name: str) -> bool:
    """Whether `name` is a suite preset."""
    try:
        get_preset(name)
    except ConfigError:
        return False
    return True


def unresolved(name: str) -> str:
    """Why a named architecture that is no suite preset could not be resolved by timm."""
    why = {None: "timm is not installed", False: "timm does not know it"}[timm_knows(name)]
    return (f"the named architecture {name!r} is no suite preset and could not be resolved ({why}): it may hold "
            f"parts its keys do not show")


def resolve_preset(preset) -> ViTConfig | None:
    """A config, or the suite preset of that name (a MissingFactsError naming why an unknown name is unresolved)."""
    if preset is None or isinstance(preset, ViTConfig):
        return preset
    try:
        return get_preset(preset)
    except ConfigError as e:
        raise MissingFactsError(f"{e}; {unresolved(preset)}") from None



# ----------------------------------------------------------------------------- sizes
def shape_of(tensors: Mapping[str, Any], key: str, ndim: int, source: str, shown_key: str | None = None,
             what: str = "tensor") -> tuple[int, ...]:
    """The shape of `tensors[key]`, which must be there with `ndim` dimensions; else a MismatchError naming the file
    and the key as the file spells it (`shown_key`, default `key`)."""
    name = key if shown_key is None else shown_key
    if key not in tensors:
        raise MismatchError(source, [f"missing key {name!r}"])
    s = tuple(int(x) for x in np.shape(tensors[key]))
    if len(s) != ndim:
        raise MismatchError(source, [f"key {name!r}: expected a {ndim}-d {what}, got shape {s}"])
    return s


def pair(v) -> tuple[int, int]:
    """An int or an (h, w) pair as (h, w)."""
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    h, w = v
    return (int(h), int(w))


def isqrt_exact(n: int) -> int | None:
    """The integer square root of n when n is a perfect square, else None."""
    r = math.isqrt(n) if n >= 0 else -1
    return r if r >= 0 and r * r == n else None


def image_size_arg(v: Any, where: str, *, key: str | None = None, lists_only: bool = False) -> tuple[int, int]:
    """A stated image size (an int or [height, width] ints in [1, MAX_IMAGE_SIDE]) as (h, w); a ConfigError naming
    `where` otherwise. key: the config key named in the message ('image_size': "'image_size' must be ...");
    lists_only: a JSON value, where a pair must be a list."""
    seq = (list,) if lists_only else (list, tuple)
    if not (is_int(v) or isinstance(v, seq) and len(v) == 2 and all(is_int(x) for x in v)) \
            or not all(1 <= x <= L.MAX_IMAGE_SIDE for x in ([v] if is_int(v) else v)):
        what = f"{key!r}" if key else "image size"
        raise ConfigError(f"{where}: {what} must be an int or [height, width] ints in [1, {L.MAX_IMAGE_SIDE}], "
                          f"got {shown(v)}")
    return pair(v)


def block_ids(keys: Iterable[str], prefix: str) -> list[int]:
    """The sorted block numbers i of the keys that start with `prefix` ('blocks.{i}.', 'encoder.layer.{i}.')."""
    pat = re.compile(re.escape(prefix).replace(r"\{i\}", r"(\d+)"))
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def check_numbering(ids: list[int], source: str, what: str = "encoder layers") -> int:
    """The depth, when the blocks are numbered 0..n-1 (n >= 1); a MismatchError naming the numbers otherwise."""
    depth = len(ids)
    if depth == 0 or ids != list(range(depth)):
        first = ids[:10] + (["..."] if len(ids) > 10 else [])
        raise MismatchError(source, [f"{what} are not numbered 0..n-1: {len(ids)} layers, {first}"])
    return depth


# ----------------------------------------------------------------------------- q/k/v
def fuse_rows(parts: Iterable[np.ndarray]) -> np.ndarray:
    """Separate q, k, v (or gate, value) tensors -> one fused tensor, their rows in order."""
    return np.concatenate([np.asarray(p) for p in parts], axis=0)


def split_rows(fused: np.ndarray, sizes: int | Iterable[int]) -> list[np.ndarray]:
    """A fused tensor -> its parts: `sizes` equal parts (an int), or parts of those row counts."""
    fused = np.asarray(fused)
    if isinstance(sizes, int):
        return list(np.split(fused, sizes))
    return list(np.split(fused, np.cumsum(list(sizes))[:-1]))


# ----------------------------------------------------------------------------- image size
def resize_state(cfg: ViTConfig, state: Mapping[str, np.ndarray], image_size) -> tuple[ViTConfig, dict]:
    """The same weights stored for another input size: a learned table resampled from its grid to the new image
    grid with the config's kernel (the prefix rows, cfg.num_pos_prefix of them, kept); factorized tables stay at
    their grid (only the image size changes). Unchanged when nothing changes."""
    target = pair(image_size)
    if target == tuple(cfg.image_size) and cfg.table_grid == cfg.grid:
        return cfg, dict(state)
    if cfg.pos_embed == "factorized":  # kept at their grid: an aspect-preserving pair is resized per axis even at
        return cfg.with_image_size(target), dict(state)  # its own grid, so resampled tables would compute otherwise
    new = cfg.replace(image_size=target, pos_grid=None)
    state = dict(state)
    if cfg.pos_embed == "learned":
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], cfg.table_grid, new.grid, cfg.num_pos_prefix,
                                                cfg.resize_kernel, cfg.pos_ar_preserving).astype(CANONICAL_DTYPE)
    return new, state


# ----------------------------------------------------------------------------- export refusals
def family_refusals(cfg: ViTConfig, what: str, supports: Iterable[str] = (),
                    say: Mapping[str, str | Callable[[ViTConfig], str]] | None = None) -> list[str]:
    """Why a format without some of the ViT-family options cannot hold `cfg`: one line for each option
    `cfg.family_options()` names that the format does not support (derived from the config, so an option added there
    is refused by every format that does not claim it). `supports`: words that pick out the supported options' names
    (e.g. "LayerScale", "qk-norm"); `say`: the format's own wording for an option (keyed the same way; a string or
    a function of cfg), else "{option}: {what} has no such option"."""
    say = dict(say or {})
    supports = tuple(supports)
    out = []
    for name in cfg.family_options():
        if any(w in name for w in supports):
            continue
        own = next((s for w, s in say.items() if w in name), None)
        out.append(own(cfg) if callable(own) else own if own is not None else f"{name}: {what} has no such option")
    return out


def refuse(problems: list[str], head: str) -> None:
    """A ConversionError listing every problem under `head`, when there is any."""
    if problems:
        raise ConversionError(f"{head}:\n  " + "\n  ".join(problems))
