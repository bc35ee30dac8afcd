"""The canonical weight file: safetensors, timm key names, the full ViTConfig in the metadata.

Keys and shapes (D = embed_dim, W = width, M = mlp_dim, F = feature dim, K = classes):
  patch_embed.proj.weight (D, C, P, P), patch_embed.proj.bias (D,)
  cls_token (1, 1, D)                       if class_token == "learned"
  pos_embed (1, prefix + gh*gw, D)          if pos_embed == "learned" (gh, gw = cfg.table_grid)
  blocks.{i}.norm1.{weight,bias} (Din,)     Din = D for block 0, W after
  blocks.{i}.attn.qkv.weight (3W, Din)      rows: q, k, v; .bias (3W,) if qkv_bias
  blocks.{i}.attn.proj.{weight (W, W), bias (W,)}
  blocks.{i}.norm2.{weight,bias} (W,)
  blocks.{i}.mlp.fc1.{weight (M, W), bias (M,)}, blocks.{i}.mlp.fc2.{weight (W, M), bias (W,)}
  norm.{weight,bias} (W,)                   if final_norm
  fc_norm.{weight,bias} (W,)                if fc_norm
  pre_logits.fc.{weight (F, W), bias (F,)}  if representation_size
  head.{weight (K, F), bias (K,)}           if num_classes
All tensors are float32. Loading is strict and reports every problem by name;
saving writes a temporary file and renames it, so a failure leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from .config import ViTConfig
from .errors import ConfigError, InvalidFileError, MismatchError, OutputError

FORMAT_NAME = "vit-suite"
FORMAT_VERSION = "1"
CANONICAL_DTYPE = np.dtype(np.float32)


def expected_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    D, W, M, P, C = cfg.embed_dim, cfg.width, cfg.mlp_dim, cfg.patch_size, cfg.in_chans
    s: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (D, C, P, P), "patch_embed.proj.bias": (D,)}
    if cfg.class_token == "learned":
        s["cls_token"] = (1, 1, D)
    if cfg.pos_embed == "learned":
        gh, gw = cfg.table_grid
        s["pos_embed"] = (1, cfg.num_prefix_tokens + gh * gw, D)
    for i in range(cfg.depth):
        b, din = f"blocks.{i}", cfg.block_in_dim(i)
        s[f"{b}.norm1.weight"] = s[f"{b}.norm1.bias"] = (din,)
        s[f"{b}.attn.qkv.weight"] = (3 * W, din)
        if cfg.qkv_bias:
            s[f"{b}.attn.qkv.bias"] = (3 * W,)
        s[f"{b}.attn.proj.weight"], s[f"{b}.attn.proj.bias"] = (W, W), (W,)
        s[f"{b}.norm2.weight"] = s[f"{b}.norm2.bias"] = (W,)
        s[f"{b}.mlp.fc1.weight"], s[f"{b}.mlp.fc1.bias"] = (M, W), (M,)
        s[f"{b}.mlp.fc2.weight"], s[f"{b}.mlp.fc2.bias"] = (W, M), (W,)
    if cfg.final_norm:
        s["norm.weight"] = s["norm.bias"] = (W,)
    if cfg.fc_norm:
        s["fc_norm.weight"] = s["fc_norm.bias"] = (W,)
    if cfg.representation_size:
        s["pre_logits.fc.weight"], s["pre_logits.fc.bias"] = (cfg.representation_size, W), (cfg.representation_size,)
    if cfg.num_classes:
        s["head.weight"], s["head.bias"] = (cfg.num_classes, cfg.feature_dim), (cfg.num_classes,)
    return s


def parameter_count(cfg: ViTConfig) -> int:
    return int(sum(int(np.prod(shape)) for shape in expected_shapes(cfg).values()))


def dtype_name(value) -> str:
    """'float32', 'bfloat16', ... for a NumPy array or a framework tensor (torch.float32 -> 'float32')."""
    dt = getattr(value, "dtype", None)
    return type(value).__name__ if dt is None else str(dt).rsplit(".", 1)[-1].lower()


def validate_state(cfg: ViTConfig, state: Mapping[str, object], source: str = "<state dict>",
                   check_dtype: bool = True) -> None:
    """Raise MismatchError naming every missing/unexpected key, wrong shape/dtype and non-finite tensor.

    The one validator of the suite: canonical dicts, timm/HF imports and every backend's native files go
    through it. Values may be NumPy arrays or framework tensors (anything with `.shape` and `.dtype` that
    NumPy can read once it is float32).
    """
    expected = expected_shapes(cfg)
    problems: list[str] = []
    missing = [k for k in expected if k not in state]
    unexpected = sorted((k for k in state if k not in expected), key=str)
    problems += [f"missing key {k!r} (expected shape {expected[k]})" for k in missing]
    problems += [f"unexpected key {k!r} (shape {tuple(np.shape(state[k]))})" for k in unexpected]
    for k, shape in expected.items():
        if k not in state:
            continue
        v = state[k]
        if not hasattr(v, "shape"):
            problems.append(f"key {k!r}: expected a tensor of shape {shape}, got {type(v).__name__}")
            continue
        if tuple(v.shape) != shape:
            problems.append(f"key {k!r}: expected shape {shape}, got {tuple(v.shape)}")
            continue
        dt = dtype_name(v)
        if check_dtype and dt != "float32":
            problems.append(f"key {k!r}: expected dtype float32, got {dt}")
        elif dt in ("float16", "float32", "float64"):
            finite = np.isfinite(np.asarray(v))
            if not finite.all():
                problems.append(f"key {k!r}: {int(finite.size - np.count_nonzero(finite))} non-finite value(s) "
                                f"(NaN or Inf)")
    if problems:
        raise MismatchError(source, problems)


# ------------------------------------------------------------------- writing
def umask_mode(directory: bool = False) -> int:
    """The mode the process umask gives a new file (0o666 & ~umask) or directory (0o777 & ~umask). Temporary files
    are created 0600 (and MindSpore writes 0400): a written file gets this mode back, so teammates and later CI
    stages can read what the suite writes exactly as far as the umask allows."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: str | os.PathLike, write_fn, *, overwrite: bool = True) -> Path:
    """Call write_fn(tmp_path) on a temporary file beside `path`, then move it into place with the umask's mode.

    On any failure the temporary file is removed and `path` is left untouched. overwrite=False creates `path`
    only if it does not exist, atomically (a hard link): of two concurrent writers the second gets OutputError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, umask_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _create_exclusively(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _create_exclusively(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails if `path` exists, whoever created it in the meantime
    except FileExistsError:
        raise OutputError(f"{path} exists (written by another process meanwhile?); pass --force to replace it") from None
    except OSError:  # a filesystem without hard links: check, then rename (not atomic against a concurrent writer)
        if path.exists():
            raise OutputError(f"{path} exists; pass --force to replace it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def save(path: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray],
         metadata: Mapping[str, str] | None = None, *, overwrite: bool = True) -> Path:
    """Validate and write a canonical file atomically (overwrite=False: only if `path` does not exist)."""
    from safetensors.numpy import save_file

    validate_state(cfg, state, source=str(path))
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "vit_config": cfg.to_json()}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    tensors = {k: np.ascontiguousarray(state[k]) for k in expected_shapes(cfg)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite=overwrite)


# ------------------------------------------------------------------- reading
def read_safetensors_header(path: str | os.PathLike) -> dict:
    """Parse and sanity-check a safetensors header without trusting it; raises InvalidFileError."""
    path = Path(path)
    if not path.is_file():
        raise InvalidFileError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidFileError(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise InvalidFileError(f"{path}: not a safetensors file (header length {n} exceeds file size {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidFileError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise InvalidFileError(f"{path}: not a safetensors file (header is not a JSON object)")
    data_len = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise InvalidFileError(f"{path}: tensor {key!r} has no valid data_offsets") from None
        if not (0 <= start <= end <= data_len):
            raise InvalidFileError(
                f"{path}: tensor {key!r} claims bytes {start}..{end} but the file holds {data_len} data bytes "
                f"(truncated file or a header lying about sizes)")
    return header


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Any safetensors file -> (tensors as NumPy, metadata). bfloat16 is upcast to float32 (exact)."""
    header = read_safetensors_header(path)
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, np.ndarray] = {}
    try:
        bf16 = [k for k, v in header.items() if k != "__metadata__" and v.get("dtype") == "BF16"]
        if bf16:
            import ml_dtypes  # safetensors' numpy API has no bfloat16: read raw bytes
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                if k in bf16:
                    continue
                tensors[k] = f.get_tensor(k)
        if bf16:
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                base = 8 + n
                for k in bf16:
                    s, e = header[k]["data_offsets"]
                    fh.seek(base + s)
                    arr = np.frombuffer(fh.read(e - s), dtype=ml_dtypes.bfloat16).reshape(header[k]["shape"])
                    tensors[k] = arr.astype(np.float32)
    except SafetensorError as e:
        raise InvalidFileError(f"{path}: unreadable safetensors file: {e}") from None
    return tensors, dict(meta)


def config_from_metadata(meta: Mapping[str, str], source: str) -> ViTConfig:
    if "vit_config" not in meta:
        raise InvalidFileError(
            f"{source}: no 'vit_config' in the safetensors metadata: not a canonical vit-suite file "
            f"(convert it with `vit-suite convert --from timm|hf ... --preset NAME`)")
    try:
        return ViTConfig.from_json(meta["vit_config"])
    except ConfigError as e:
        raise InvalidFileError(f"{source}: invalid config in metadata: {e}") from None


def load(path: str | os.PathLike) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a canonical file strictly: (config, float32 state dict)."""
    tensors, meta = read_tensors(path)
    cfg = config_from_metadata(meta, str(path))
    validate_state(cfg, tensors, source=str(path))
    return cfg, tensors
