"""The canonical weight file: safetensors, timm key names, the full ViTConfig in the metadata.

Keys and shapes (D = embed_dim, W = width, M = mlp_dim, F = feature dim, K = classes):
  patch_embed.proj.weight (D, C, P, P), patch_embed.proj.bias (D,) if patch_bias
  cls_token (1, 1, D)                       if class_token == "learned"
  dist_token (1, 1, D)                      if dist_token
  reg_token (1, R, D)                       if reg_tokens = R > 0
  pos_embed (1, Np + gh*gw, D)              if pos_embed == "learned" (gh, gw = cfg.table_grid; Np = num_pos_prefix)
  norm_pre.{weight,bias} (D,)               if norm_pre
  blocks.{i}.norm1.{weight,bias} (Din,)     Din = D for block 0, W after
  blocks.{i}.attn.qkv.weight (3W, Din)      rows: q, k, v; .bias (3W,) if qkv_bias
  blocks.{i}.attn.{q_norm,k_norm}.{weight,bias} (W/heads,)  if qk_norm
  blocks.{i}.attn.proj.{weight (W, W), bias (W,)}
  blocks.{i}.ls1.gamma (W,)                 if init_values (LayerScale)
  blocks.{i}.norm2.{weight,bias} (W,)
  blocks.{i}.mlp.fc1.{weight (M, W), bias (M,)}, blocks.{i}.mlp.fc2.{weight (W, M), bias (W,)}
                                            fc1 is (2M, W), (2M,) if swiglu: rows [gate; value], timm SwiGLUPacked
  blocks.{i}.ls2.gamma (W,)                 if init_values
  norm.{weight,bias} (W,)                   if final_norm
  attn_pool.latent (1, 1, W), attn_pool.q (W, W), attn_pool.kv (2W, W), attn_pool.proj (W, W) (weights and
  biases), attn_pool.norm (W,), attn_pool.mlp.fc1 (M, W), attn_pool.mlp.fc2 (W, M)   if pool == "map"
  fc_norm.{weight,bias} (W,)                if fc_norm
  pre_logits.fc.{weight (F, Wp), bias (F,)} if representation_size (Wp = pooled_dim: 2W for pool='token_mean')
  head.{weight (K, F), bias (K,)}           if num_classes (F = representation_size, else Wp)
  head_dist.{weight (K, F), bias (K,)}      if num_classes and dist_token
All tensors are float32. Loading is strict and reports every problem by name;
saving writes a temporary file and renames it, so a failure leaves nothing behind.
"""
from __future__ import annotations

import os
import struct
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from . import limits as L
from .config import ViTConfig
from .errors import ConfigError, InvalidFileError, MismatchError, OutputError, SuiteError, UnwritableError

FORMAT_NAME = "vit-suite"
FORMAT_VERSION = "1"
CANONICAL_DTYPE = np.dtype(np.float32)


def expected_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    D, W, M, P, C = cfg.embed_dim, cfg.width, cfg.mlp_dim, cfg.patch_size, cfg.in_chans
    s: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (D, C, P, P)}
    if cfg.patch_bias:
        s["patch_embed.proj.bias"] = (D,)
    if cfg.class_token == "learned":
        s["cls_token"] = (1, 1, D)
    if cfg.dist_token:
        s["dist_token"] = (1, 1, D)
    if cfg.reg_tokens:
        s["reg_token"] = (1, cfg.reg_tokens, D)
    if cfg.pos_embed == "learned":
        gh, gw = cfg.table_grid
        s["pos_embed"] = (1, cfg.num_pos_prefix + gh * gw, D)
    if cfg.norm_pre:
        s["norm_pre.weight"] = s["norm_pre.bias"] = (D,)
    for i in range(cfg.depth):
        b, din = f"blocks.{i}", cfg.block_in_dim(i)
        s[f"{b}.norm1.weight"] = s[f"{b}.norm1.bias"] = (din,)
        s[f"{b}.attn.qkv.weight"] = (3 * W, din)
        if cfg.qkv_bias:
            s[f"{b}.attn.qkv.bias"] = (3 * W,)
        if cfg.qk_norm:
            for n in ("q_norm", "k_norm"):
                s[f"{b}.attn.{n}.weight"] = s[f"{b}.attn.{n}.bias"] = (cfg.head_dim,)
        s[f"{b}.attn.proj.weight"], s[f"{b}.attn.proj.bias"] = (W, W), (W,)
        if cfg.init_values is not None:
            s[f"{b}.ls1.gamma"] = (W,)
        s[f"{b}.norm2.weight"] = s[f"{b}.norm2.bias"] = (W,)
        s[f"{b}.mlp.fc1.weight"], s[f"{b}.mlp.fc1.bias"] = (cfg.fc1_dim, W), (cfg.fc1_dim,)
        s[f"{b}.mlp.fc2.weight"], s[f"{b}.mlp.fc2.bias"] = (W, M), (W,)
        if cfg.init_values is not None:
            s[f"{b}.ls2.gamma"] = (W,)
    if cfg.final_norm:
        s["norm.weight"] = s["norm.bias"] = (W,)
    if cfg.pool == "map":
        s["attn_pool.latent"] = (1, 1, W)
        s["attn_pool.q.weight"], s["attn_pool.q.bias"] = (W, W), (W,)
        s["attn_pool.kv.weight"], s["attn_pool.kv.bias"] = (2 * W, W), (2 * W,)
        s["attn_pool.proj.weight"], s["attn_pool.proj.bias"] = (W, W), (W,)
        s["attn_pool.norm.weight"] = s["attn_pool.norm.bias"] = (W,)
        s["attn_pool.mlp.fc1.weight"], s["attn_pool.mlp.fc1.bias"] = (M, W), (M,)
        s["attn_pool.mlp.fc2.weight"], s["attn_pool.mlp.fc2.bias"] = (W, M), (W,)
    if cfg.fc_norm:
        s["fc_norm.weight"] = s["fc_norm.bias"] = (W,)
    if cfg.representation_size:
        s["pre_logits.fc.weight"], s["pre_logits.fc.bias"] = ((cfg.representation_size, cfg.pooled_dim),
                                                              (cfg.representation_size,))
    if cfg.num_classes:
        s["head.weight"], s["head.bias"] = (cfg.num_classes, cfg.feature_dim), (cfg.num_classes,)
        if cfg.dist_token:
            s["head_dist.weight"], s["head_dist.bias"] = (cfg.num_classes, cfg.feature_dim), (cfg.num_classes,)
    return s


def parameter_count(cfg: ViTConfig) -> int:
    return int(sum(int(np.prod(shape)) for shape in expected_shapes(cfg).values()))


def dtype_name(value) -> str:
    """'float32', 'bfloat16', ... for a NumPy array or a framework tensor (torch.float32 -> 'float32')."""
    dt = getattr(value, "dtype", None)
    return type(value).__name__ if dt is None else str(dt).rsplit(".", 1)[-1].lower()


def _shape_of(v) -> tuple:
    shape = getattr(v, "shape", None)
    try:
        return tuple(shape) if shape is not None else tuple(np.shape(v))
    except (TypeError, ValueError):
        return ()


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
    problems += [f"unexpected key {k!r} (shape {_shape_of(state[k])})" for k in unexpected]
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
        elif dt in ("float16", "float32", "float64") and not isinstance(v, TensorSpec):
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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_stale_tempdirs(prefix: str) -> None:
    """Remove `PREFIX<pid>-*` directories in the system temp folder whose process is dead (a run killed before its
    cleanup ran: SIGKILL, a crash)."""
    import shutil

    for d in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = d.name[len(prefix):].split("-", 1)[0]
        try:
            if pid.isdigit() and not pid_alive(int(pid)) and d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


def work_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary directory `vit-suite-KIND-PID-*` in the system temp folder, removed when the `with` ends; those of
    dead processes (killed before their cleanup ran) are removed first, so none outlives a later run."""
    prefix = f"vit-suite-{kind}-"
    remove_stale_tempdirs(prefix)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-")


def temp_prefix(name: str) -> str:
    """`.NAME.PID.`: the prefix of every temporary file or directory written beside a destination NAME (the PID tells
    a later run whether its writer is still alive)."""
    return f".{name}.{os.getpid()}."


def remove_stale_partials(directory: str | os.PathLike, name: str) -> list[Path]:
    """Remove `.NAME.<pid>.*.partial` files and directories beside destination NAME whose writer is dead (killed
    before it could clean up), or, without a PID in the name, older than STALE_PARTIAL_SECONDS. Returns them."""
    import shutil
    import time

    removed = []
    try:
        entries = list(Path(directory).glob(f".{glob_escape(name)}.*.partial"))
    except OSError:
        return removed
    for p in entries:
        middle = p.name[len(name) + 2:-len(".partial")]  # "PID.XXXX", or "XXXX" from an older version
        pid_text, _, rest = middle.partition(".")
        try:
            if pid_text.isdigit() and rest and "." not in rest:
                stale = not pid_alive(int(pid_text))
            else:
                stale = "." not in middle and time.time() - p.lstat().st_mtime > L.STALE_PARTIAL_SECONDS
            if stale:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def atomic_write(path: str | os.PathLike, write_fn, *, overwrite: bool = True) -> Path:
    """Call write_fn(tmp_path) on a temporary file `.NAME.PID.XXXX.partial` beside `path`, then move it into place
    with the umask's mode.

    On any failure (SIGTERM and Ctrl-C included: the tool turns both into exceptions) the temporary file is removed
    and `path` is left untouched; stale temporary files of dead writers to the same destination are removed first.
    overwrite=False creates `path` only if it does not exist, atomically (a hard link): of two concurrent writers the
    second gets OutputError. A destination that cannot be written (permissions, read-only, disk full) is an
    UnwritableError (exit 2), never a bare OSError.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".partial", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise UnwritableError(f"{path}: cannot write there ({type(e).__name__}: {e.strerror or e})") from None
    try:
        write_fn(tmp)
        os.chmod(tmp, umask_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _create_exclusively(tmp, path)
    except BaseException as e:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, (FileExistsError, SuiteError)):
            raise UnwritableError(f"{path}: writing failed ({type(e).__name__}: {e.strerror or e}); nothing was "
                                  f"left behind") from None
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
#: safetensors dtype names -> (NumPy-style name, bytes per element)
SAFETENSORS_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
                      "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
                      "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
                      "BOOL": ("bool", 1)}


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """Parse and check a safetensors header without trusting it; raises InvalidFileError naming the file and key.

    Checked before any tensor is read: the header length against the file and MAX_HEADER_BYTES, JSON nesting
    (MAX_JSON_DEPTH), `__metadata__` a str -> str object, each tensor's dtype, shape (non-negative ints) and
    `data_offsets` (two ints whose span is exactly shape x itemsize, inside the data), and the total of the
    tensor sizes against the data the file holds.
    """
    from .safeio import load_json

    path = Path(path)
    if not path.is_file():
        raise InvalidFileError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidFileError(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > L.MAX_HEADER_BYTES:
            raise InvalidFileError(f"{path}: not a safetensors file (header length {n} exceeds the file size {size} "
                                   f"or the {L.MAX_HEADER_BYTES:,}-byte header limit)")
        raw = f.read(n)
    header = load_json(raw, f"{path}: safetensors header", max_bytes=L.MAX_HEADER_BYTES)
    if not isinstance(header, dict):
        raise InvalidFileError(f"{path}: not a safetensors file (header is a JSON {type(header).__name__}, "
                               f"not an object)")
    meta = header.get("__metadata__", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise InvalidFileError(f"{path}: '__metadata__' must be an object of string -> string, got "
                               f"{type(meta).__name__}")
    data_len = size - 8 - n
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise InvalidFileError(f"{path}: tensor {key!r}: expected an object with dtype, shape and data_offsets, "
                                   f"got {type(info).__name__}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise InvalidFileError(f"{path}: tensor {key!r}: dtype {str(dtype)[:40]!r} is not one of "
                                   f"{sorted(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_count(d) for d in shape):
            raise InvalidFileError(f"{path}: tensor {key!r}: shape must be a list of at most 8 non-negative ints, "
                                   f"got {str(shape)[:80]}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise InvalidFileError(f"{path}: tensor {key!r}: data_offsets must be two non-negative ints, got "
                                   f"{str(offsets)[:80]}")
        start, end = offsets
        if not (start <= end <= data_len):
            raise InvalidFileError(
                f"{path}: tensor {key!r} claims bytes {start}..{end} but the file holds {data_len} data bytes "
                f"(truncated file or a header lying about sizes)")
        nbytes = SAFETENSORS_DTYPES[dtype][1]
        for d in shape:
            nbytes *= d
        if nbytes != end - start:
            raise InvalidFileError(f"{path}: tensor {key!r}: shape {tuple(shape)} of {dtype} is {nbytes:,} bytes but "
                                   f"data_offsets span {end - start:,}")
        total += nbytes
    if total > data_len:
        raise InvalidFileError(f"{path}: the tensors claim {total:,} bytes in all, the file holds {data_len:,} "
                               f"(overlapping or lying data_offsets)")
    return header


class TensorSpec:
    """A tensor described by a header (shape, dtype), not read: `validate_state` checks keys, shapes and dtypes
    of these before any data is read."""

    def __init__(self, shape, dtype: str):
        self.shape, self.dtype = tuple(shape), dtype


def header_specs(header: Mapping) -> dict[str, TensorSpec]:
    """{key: TensorSpec} of a checked safetensors header."""
    return {k: TensorSpec(v["shape"], SAFETENSORS_DTYPES[v["dtype"]][0]) for k, v in header.items()
            if k != "__metadata__"}


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


def read_config(path: str | os.PathLike) -> ViTConfig:
    """The config of a canonical file, from its header alone (no tensor is read)."""
    return config_from_metadata(read_safetensors_header(path).get("__metadata__") or {}, str(path))


def load(path: str | os.PathLike) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a canonical file strictly: (config, float32 state dict). The config is checked (types, limits) and then
    against the header's keys, shapes and dtypes before any tensor is read."""
    header = read_safetensors_header(path)
    cfg = config_from_metadata(header.get("__metadata__") or {}, str(path))
    validate_state(cfg, header_specs(header), source=str(path))
    tensors, _ = read_tensors(path)
    validate_state(cfg, tensors, source=str(path))
    return cfg, tensors


def write_dir_atomically(directory: str | os.PathLike, write_files, *, overwrite: bool = False) -> Path:
    """Call write_files(tmp_dir) on a temporary directory beside `directory`, then move it into place with the
    umask's modes: on any failure nothing is left behind and an existing `directory` is untouched. An existing,
    non-empty `directory` is replaced only with overwrite=True; otherwise the name is claimed exclusively (an empty
    directory the user made is taken over; of two concurrent writers the second fails with OutputError)."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())) and not overwrite:
        raise OutputError(f"{directory}: exists and is not empty; pass --force to replace it")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(directory.parent, directory.name)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(directory.name), suffix=".partial", dir=directory.parent))
    except OSError as e:
        raise UnwritableError(f"{directory}: cannot write there ({type(e).__name__}: {e.strerror or e})") from None
    old = None
    claimed = False
    try:
        write_files(tmp)
        for f in tmp.iterdir():
            os.chmod(f, umask_mode())
        os.chmod(tmp, umask_mode(directory=True))
        if overwrite and directory.exists():
            old = directory.with_name(f".{directory.name}.old.{os.getpid()}")
            os.replace(directory, old)
        elif not overwrite:
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
            try:
                os.mkdir(directory)
            except FileExistsError:
                raise OutputError(f"{directory}: exists (written by another process meanwhile?); pass --force to "
                                  f"replace it") from None
            claimed = True
        os.replace(tmp, directory)  # onto nothing, or onto the empty directory this writer just created
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if claimed and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        if old is not None and old.exists() and not directory.exists():
            os.replace(old, directory)
        if isinstance(e, OSError) and not isinstance(e, (FileExistsError, UnwritableError)):
            raise UnwritableError(f"{directory}: writing failed ({type(e).__name__}: {e.strerror or e}); nothing "
                                  f"was left behind") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory
