"""The canonical weight file: safetensors, timm key names, the full ViTConfig in the metadata.

Keys and shapes (D = embed_dim, W = width, M = mlp_dim, F = feature dim, K = classes):
  patch_embed.proj.weight (D, C, P, P), patch_embed.proj.bias (D,) if patch_bias
  patch_embed.norm.{weight,bias} (D,)       if patch_norm
  cls_token (1, 1, D)                       if class_token == "learned"
  dist_token (1, 1, D)                      if dist_token
  reg_token (1, R, D)                       if reg_tokens = R > 0
  pos_embed (1, Np + gh*gw, D)              if pos_embed == "learned" (gh, gw = cfg.table_grid; Np = num_pos_prefix)
  pos_embed_y (1, gh, D), pos_embed_x (1, gw, D)  if pos_embed == "factorized" (row and column tables, patches only)
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
  rel_pos.* or blocks.{i}.attn.rel_pos.*     if rel_pos != "none" (shared, or per block): relative_position_bias_table
                                            (R, heads) for 'table' (R: shared.posemb.rel_pos_table_rows), or
                                            mlp.fc1 (rel_pos_dim, 2), mlp.fc2 (heads, rel_pos_dim) (+ biases) for 'mlp'
  norm.{weight,bias} (W,)                   if final_norm
  attn_pool.latent (1, 1, W), attn_pool.q (W, W), attn_pool.kv (2W, W), attn_pool.proj (W, W) (weights and
  biases), attn_pool.norm (W,), attn_pool.mlp.fc1 (P, W), attn_pool.mlp.fc2 (W, P)   if pool == "map"
                                            (P: pool_mlp_dim, else M)
  fc_norm.{weight,bias} (W,)                if fc_norm
  pre_logits.fc.{weight (F, Wp), bias (F,)} if representation_size (Wp = pooled_dim: 2W for pool='token_mean')
  head.{weight (K, F), bias (K,)}           if num_classes (F = representation_size, else Wp)
  head_dist.{weight (K, F), bias (K,)}      if num_classes and dist_token
Eva options: rope.freqs (2, depth, heads, head_dim/2) with rope='mixed' (timm RotaryEmbeddingMixed); with
qkv_fused=False attn.{q_proj,k_proj,v_proj}.weight (W, Din) and biases (k_proj's only with k_bias), k_proj and
v_proj (kv_heads * head_dim, Din) with num_kv_heads (grouped-query attention); attn.norm (W,)
with attn_inner_norm; mlp.fc1_g / mlp.fc1_x (M, W) (M,) instead of mlp.fc1 with swiglu_unpacked; mlp.norm (M,) with
mlp_inner_norm; no ls2.gamma with ls_attn_only; every norm has no .bias with norm_kind='rms'. block_norm='post'
(res-post-norm blocks) has exactly these keys: norm1 / norm2 close their branch instead of opening it.
Parallel blocks (num_parallel = P > 1, timm ParallelThingsBlock): instead of norm1 ... ls2, for j < P
blocks.{i}.attns.{j}.{norm, attn.*, ls.gamma} and blocks.{i}.ffns.{j}.{norm, mlp.*, ls.gamma} (the same shapes). With proj_bias=False
attn.proj and the block MLPs' linears have no .bias.
All tensors are float32. Loading is strict and reports every problem by name;
saving goes through shared.fileio.atomic_write (staged beside the destination, then moved into place), so a failure
leaves nothing behind.
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from . import limits as L
from .config import ViTConfig
from .errors import ConfigError, InvalidFileError, MismatchError
from .fileio import BackgroundWriter, atomic_write

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
    elif cfg.pos_embed == "factorized":
        gh, gw = cfg.table_grid
        s["pos_embed_y"], s["pos_embed_x"] = (1, gh, D), (1, gw, D)
    def norm(key: str, dim: int) -> None:  # LayerNorm: weight and bias; RMSNorm (norm_kind 'rms'): weight only
        s[f"{key}.weight"] = (dim,)
        if cfg.norm_kind == "layer":
            s[f"{key}.bias"] = (dim,)

    if cfg.patch_norm:
        norm("patch_embed.norm", D)
    if cfg.norm_pre:
        norm("norm_pre", D)
    if cfg.rope == "mixed":
        s["rope.freqs"] = cfg.rope_mixed_shape

    def linear(key: str, out_dim: int, in_dim: int) -> None:  # a block's proj and MLP linears (proj_bias)
        s[f"{key}.weight"] = (out_dim, in_dim)
        if cfg.proj_bias:
            s[f"{key}.bias"] = (out_dim,)

    def attention(a: str, i: int, din: int) -> None:  # a block's attention under prefix `a`
        if cfg.qkv_fused:
            s[f"{a}.qkv.weight"] = (3 * W, din)
            if cfg.qkv_bias:
                s[f"{a}.qkv.bias"] = (3 * W,)
        else:
            for n in ("q_proj", "k_proj", "v_proj"):
                rows = W if n == "q_proj" else cfg.kv_width(i)  # grouped-query attention: fewer k/v heads
                s[f"{a}.{n}.weight"] = (rows, din)
                if cfg.qkv_bias and (n != "k_proj" or cfg.k_bias):
                    s[f"{a}.{n}.bias"] = (rows,)
        if cfg.qk_norm:
            for n in ("q_norm", "k_norm"):
                norm(f"{a}.{n}", cfg.head_dim)
        if cfg.attn_inner_norm:
            norm(f"{a}.norm", W)
        linear(f"{a}.proj", W, W)

    def mlp(m: str) -> None:  # a block's MLP under prefix `m`
        if cfg.swiglu_unpacked:
            for n in ("fc1_g", "fc1_x"):
                linear(f"{m}.{n}", M, W)
        else:
            linear(f"{m}.fc1", cfg.fc1_dim, W)
        if cfg.mlp_inner_norm:
            norm(f"{m}.norm", M)
        linear(f"{m}.fc2", W, M)

    for i in range(cfg.depth):
        b, din = f"blocks.{i}", cfg.block_in_dim(i)
        if cfg.num_parallel > 1:  # timm ParallelThingsBlock: attns.j then ffns.j, each norm, branch, ls
            for kind in ("attns", "ffns"):
                for j in range(cfg.num_parallel):
                    p = f"{b}.{kind}.{j}"
                    norm(f"{p}.norm", W)
                    attention(f"{p}.attn", i, W) if kind == "attns" else mlp(f"{p}.mlp")
                    if cfg.init_values is not None:
                        s[f"{p}.ls.gamma"] = (W,)
            continue
        norm(f"{b}.norm1", din)
        attention(f"{b}.attn", i, din)
        if cfg.init_values is not None:
            s[f"{b}.ls1.gamma"] = (W,)
        norm(f"{b}.norm2", W)
        mlp(f"{b}.mlp")
        if cfg.init_values is not None and not cfg.ls_attn_only:
            s[f"{b}.ls2.gamma"] = (W,)
    for prefix in cfg.rel_pos_prefixes:  # relative position bias: one shared, or one per block
        s.update({f"{prefix}.{name}": shape for name, shape in cfg.rel_pos_shapes().items()})
    if cfg.final_norm:
        norm("norm", W)
    if cfg.pool == "map":
        s["attn_pool.latent"] = (1, 1, W)
        s["attn_pool.q.weight"], s["attn_pool.q.bias"] = (W, W), (W,)
        s["attn_pool.kv.weight"], s["attn_pool.kv.bias"] = (2 * W, W), (2 * W,)
        s["attn_pool.proj.weight"], s["attn_pool.proj.bias"] = (W, W), (W,)
        s["attn_pool.norm.weight"] = s["attn_pool.norm.bias"] = (W,)
        P = cfg.pool_args()["hidden"]  # pool_mlp_dim, else mlp_dim
        s["attn_pool.mlp.fc1.weight"], s["attn_pool.mlp.fc1.bias"] = (P, W), (P,)
        s["attn_pool.mlp.fc2.weight"], s["attn_pool.mlp.fc2.bias"] = (W, P), (W,)
    if cfg.fc_norm:
        norm("fc_norm", W)
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


def non_finite(a: np.ndarray) -> int:
    """How many NaN / Inf values a floating array holds. A finite sum proves there are none (a NaN or an Inf makes
    any sum non-finite), at the speed of reading the array and without a mask as large as it; only a non-finite sum
    (a NaN or Inf, or finite values whose sum overflows) counts them one by one."""
    with np.errstate(all="ignore"):
        if a.size and np.isfinite(np.add.reduce(a, axis=None)):
            return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


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
            bad = non_finite(np.asarray(v))
            if bad:
                problems.append(f"key {k!r}: {bad} non-finite value(s) (NaN or Inf)")
    if problems:
        raise MismatchError(source, problems)


# ------------------------------------------------------------------- writing
def save(path: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray],
         metadata: Mapping[str, str] | None = None, *, overwrite: bool = True) -> Path:
    """Validate and write a canonical file atomically (overwrite=False: only if `path` does not exist), each tensor
    as it is (`write_safetensors`)."""
    validate_state(cfg, state, source=str(path))
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "vit_config": cfg.to_json()}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    validate_metadata(meta, cfg, str(path))  # never write what the reader refuses
    tensors = {k: np.asarray(state[k]) for k in expected_shapes(cfg)}
    return atomic_write(path, lambda tmp: write_safetensors(tmp, tensors, meta), overwrite=overwrite)


#: the tile of a transposed matrix written at a time (`write_c_order`): TILE_ROWS rows of the output, filled
#: TILE_COLS source rows at a time, so both stay in cache
TILE_ROWS, TILE_COLS = 64, 256
#: the rows of a band handed to a BackgroundWriter at a time (whole tiles)
BAND_ROWS = 2 * TILE_ROWS


def write_c_order(w, a: np.ndarray) -> None:
    """An array's bytes in C order, written to `w` (a file, a zip member, a fileio.BackgroundWriter) without a copy
    of it: a C-contiguous array as it is; a transposed matrix (a Keras kernel read as its canonical transpose) a
    band of TILE_ROWS rows at a time through a small buffer (to a BackgroundWriter: its ring of band buffers, the
    next band filled while the last is written); anything else copied first."""
    if a.flags.c_contiguous:
        if a.size:
            w.write(memoryview(a.reshape(-1)).cast("B"))
        return
    if a.ndim != 2 or not a.T.flags.c_contiguous:
        w.write(memoryview(np.ascontiguousarray(a).reshape(-1)).cast("B"))
        return
    rows, cols = a.shape
    band = getattr(w, "band", None)
    step = BAND_ROWS if band else TILE_ROWS
    buf = None if band else np.empty((min(TILE_ROWS, rows), cols), a.dtype)
    for i in range(0, rows, step):
        b = min(step, rows - i)
        out = band((b, cols), a.dtype) if band else buf[:b]
        for r in range(0, b, TILE_ROWS):
            for j in range(0, cols, TILE_COLS):
                out[r:r + TILE_ROWS, j:j + TILE_COLS] = a[i + r:i + min(r + TILE_ROWS, b), j:j + TILE_COLS]
        w.write(memoryview(out.reshape(-1)).cast("B"))


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """The bytes `safetensors.numpy.save_file(tensors, path, metadata)` writes for tensors of one dtype (the canonical
    float32), each tensor written as it is (`write_c_order`: no contiguous copy of a transposed one): the header
    JSON as safetensors' serde writes it (compact, UTF-8 unescaped, padded with spaces to 8 bytes), the tensors
    sorted by name, their bytes back to back. safetensors writes `__metadata__` in a random order (a Rust HashMap);
    this writes it in the given order, one of those. Other dtypes, or several, go to safetensors itself."""
    import json

    dtypes = {a.dtype for a in tensors.values()}
    if dtypes != {np.dtype("<f4")} or not metadata:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=dict(metadata))
        return
    header: dict = {"__metadata__": dict(metadata)}
    names = sorted(tensors, key=lambda k: k.encode())
    offset = 0
    for k in names:
        n = tensors[k].nbytes
        header[k] = {"dtype": "F32", "shape": list(tensors[k].shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f, BackgroundWriter(f) as w:  # a transposed tensor's next band made while one is written
        w.write(struct.pack("<Q", len(raw)))
        w.write(raw)
        for k in names:
            write_c_order(w, tensors[k])


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


def read_tensors(path: str | os.PathLike, *, writable: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Any safetensors file -> (tensors as NumPy, metadata). bfloat16 is upcast to float32 (exact).

    The tensors are views of one memory map of the file, placed by its checked header (`read_safetensors_header`):
    nothing is copied until it is used. writable: a private (copy-on-write) map, so writing to an array changes the
    process's copy, never the file; writable=False: read-only arrays (what the importers read, which
    `shared.convert.common.to_float32` then takes without a copy)."""
    import mmap

    header = read_safetensors_header(path)
    meta = dict(header.get("__metadata__") or {})
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        size = os.fstat(fh.fileno()).st_size
        if size == 0 or size == 8 + n:  # no data bytes: nothing to map (mmap refuses an empty span)
            buf = memoryview(bytearray(0))
        else:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY if writable else mmap.ACCESS_READ)
    base = 8 + n
    need = base + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if len(buf) < need and need > base:
        raise InvalidFileError(f"{path}: {len(buf):,} bytes, shorter than its header claims (changed while read?)")
    tensors: dict[str, np.ndarray] = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        if v["dtype"] == "BF16":  # NumPy has no bfloat16: ml_dtypes reads it, upcast to float32
            import ml_dtypes

            raw = np.frombuffer(buf, np.uint8, e - s, base + s) if e > s else np.zeros(0, np.uint8)
            tensors[k] = raw.view(ml_dtypes.bfloat16).reshape(v["shape"]).astype(np.float32)
            continue
        dtype = np.dtype(SAFETENSORS_DTYPES[v["dtype"]][0]).newbyteorder("<")
        count = (e - s) // dtype.itemsize
        arr = np.frombuffer(buf, dtype, count, base + s) if count else np.zeros(0, dtype)
        tensors[k] = arr.reshape(v["shape"])
    return tensors, meta


def config_from_metadata(meta: Mapping[str, str], source: str) -> ViTConfig:
    if "vit_config" not in meta:
        raise InvalidFileError(
            f"{source}: no 'vit_config' in the safetensors metadata: not a canonical vit-suite file "
            f"(convert it with `vit-suite convert --from timm|hf ... --preset NAME`)")
    try:
        return ViTConfig.from_json(meta["vit_config"])
    except ConfigError as e:
        raise InvalidFileError(f"{source}: invalid config in metadata: {e}") from None


def _int_field(hi: int):
    def check(v: str, cfg: ViTConfig) -> str | None:
        return None if v.isascii() and v.isdigit() and len(v) <= 20 and int(v) <= hi else f"an integer in [0, {hi}]"
    return check


def _float_field(lo: float, hi: float):
    def check(v: str, cfg: ViTConfig) -> str | None:
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        return None if math.isfinite(x) and lo <= x <= hi else f"a finite number in [{lo}, {hi}]"
    return check


def _is(kind: type, what: str, extra=lambda v, cfg: True):
    """A JSON field: parsed within the JSON limits, of type `kind`, and `extra(value, cfg)`."""
    def check(v: str, cfg: ViTConfig) -> str | None:
        from .safeio import load_json

        try:
            value = load_json(v, "metadata")  # within the JSON size and nesting limits
        except InvalidFileError:
            value = None
        return None if isinstance(value, kind) and extra(value, cfg) else what(cfg) if callable(what) else what
    return check


def _classes_ok(v: list, cfg: ViTConfig) -> bool:
    return (len(v) == cfg.num_classes and all(isinstance(c, str) and 0 < len(c) <= 200 for c in v)
            and len(set(v)) == len(v))


def _predictions_ok(v: list, cfg: ViTConfig) -> bool:
    return all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < max(cfg.num_classes, 1) for p in v)


def _image_size_ok(v: list, cfg: ViTConfig) -> bool:
    return len(v) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= L.MAX_IMAGE_SIDE for s in v)


#: every metadata field a canonical file carries, and what it must hold: `save` writes format, format_version and
#: vit_config; `init` init_seed; `train` the train_* fields, init, the held-out accuracies, and its data's fields
#: (digits: dataset, split_seed, heldout_fraction, image_size, normalisation, the reference's held-out predictions;
#: a folder: dataset, classes, split_seed). Any other key is the writer's own and is not read by the suite.
METADATA_FIELDS = {
    "format": lambda v, cfg: None if v == FORMAT_NAME else repr(FORMAT_NAME),
    "format_version": lambda v, cfg: None if v == FORMAT_VERSION else repr(FORMAT_VERSION),
    "init_seed": _int_field(L.SEED_MAX),
    "split_seed": _int_field(L.SEED_MAX),
    "train_step": _int_field(2**63 - 1),
    "train_seconds": _float_field(0.0, math.inf),
    "heldout_fraction": _float_field(0.0, 1.0),
    "train_recipe": _is(dict, "a JSON object (the training recipe)"),
    "train_history": _is(list, "a JSON list of objects", lambda v, cfg: all(isinstance(h, dict) for h in v)),
    "normalisation": _is(dict, "a JSON object"),
    "image_size": _is(list, "a JSON [height, width] of positive ints", _image_size_ok),
    "classes": _is(list, lambda cfg: f"a JSON list of {cfg.num_classes} distinct, non-empty class names (one per "
                                     f"output of the head)", _classes_ok),
    "heldout_predictions_reference": _is(list, "a JSON list of class indices of the head", _predictions_ok),
}
#: accuracies: heldout_top1_BACKEND, heldout_top5_BACKEND (BACKEND: the one that trained, or `reference`)
ACCURACY_PREFIXES = ("heldout_top1_", "heldout_top5_")


def validate_metadata(meta: Mapping[str, str], cfg: ViTConfig, source: str) -> dict[str, str]:
    """Check every field of METADATA_FIELDS (and the accuracies) a file's metadata holds, as the config is checked:
    InvalidFileError (exit 3) naming the file, the field, what it must hold and what it holds."""
    for key, value in meta.items():
        check = METADATA_FIELDS.get(key)
        if check is None and key.startswith(ACCURACY_PREFIXES):
            check = _float_field(0.0, 1.0)
        if check is None:
            continue
        wrong = check(value, cfg)
        if wrong:
            shown = value if len(value) <= 60 else value[:57] + "..."
            raise InvalidFileError(f"{source}: metadata field {key!r} must be {wrong}, got {shown!r}")
    return dict(meta)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The checked metadata of a canonical file (validate_metadata), from its header alone (no tensor is read)."""
    meta = read_safetensors_header(path).get("__metadata__") or {}
    return validate_metadata(meta, config_from_metadata(meta, str(path)), str(path))


def read_config(path: str | os.PathLike) -> ViTConfig:
    """The config of a canonical file, from its header alone (no tensor is read)."""
    return config_from_metadata(read_safetensors_header(path).get("__metadata__") or {}, str(path))


def load(path: str | os.PathLike) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a canonical file strictly: (config, float32 state dict). The config (types, limits) and the metadata
    (validate_metadata) are checked, then the config against the header's keys, shapes and dtypes, before any
    tensor is read."""
    header = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    cfg = config_from_metadata(meta, str(path))
    validate_metadata(meta, cfg, str(path))
    validate_state(cfg, header_specs(header), source=str(path))
    tensors, _ = read_tensors(path)
    validate_state(cfg, tensors, source=str(path))
    return cfg, tensors
