"""MindSpore checkpoints (`.ckpt`) read and written as data, without MindSpore: the protobuf framing of
mindspore/train/checkpoint.proto, encoded and decoded here by hand:

    message Checkpoint  { repeated Value value = 1; }
    message Value       { required string tag = 1; oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3; }

What `mindspore.save_checkpoint` writes, byte for byte: one Checkpoint message of one Value per record,
concatenated (a parse of the whole file is the repeated field); `dims` unpacked (proto2); `tensor_type` MindSpore's
name of the dtype ("Float32"); a tensor over SLICE_BYTES split into several Values of the same tag (its bytes in
SLICE_BYTES chunks; a string record's UTF-32 array by numpy.array_split); a string record (`append_dict`) as type
"str", dims [0], content the UTF-32-LE bytes of `numpy.array(text)`. Reading joins consecutive Values of one tag, as
`mindspore.load_checkpoint` does, and checks every framing length against the bytes that remain, every dtype tag,
every shape against its content and the limits (shared.limits), naming the file and the key: an InvalidFileError.

The suite's own checkpoint (`vit_mindspore`'s native file) is `save_suite_ckpt` / `load_suite_ckpt`: every
canonical tensor as float32 under its canonical name, then three string records (after the tensors, so a file cut
short loses them):
  vit_suite_format  the canonical format's name and version
  vit_config        the full ViTConfig as JSON
  vit_suite_digest  sha256 over (name, dtype, shape, bytes) of every tensor in file order
Loading checks that the file parses, that the digest record exists and matches (a truncated or bit-flipped file is an
InvalidFileError), then the key set, every shape and every dtype against the config (shared.weights.validate_state:
MismatchError naming file and key).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from . import limits as L
from . import weights as W
from .config import ViTConfig
from .errors import ConfigError, InvalidFileError, MismatchError
from .fileio import atomic_write, checked_beside

CONFIG_KEY = "vit_config"
DIGEST_KEY = "vit_suite_digest"
FORMAT_KEY = "vit_suite_format"

#: MindSpore's tensor_type names <-> numpy dtypes (mindspore.train.serialization's table; bfloat16 and int4 are not
#: read: NumPy has no such dtype)
DTYPES = {"Float16": np.float16, "Float32": np.float32, "Float64": np.float64, "Int8": np.int8, "Int16": np.int16,
          "Int32": np.int32, "Int64": np.int64, "UInt8": np.uint8, "UInt16": np.uint16, "UInt32": np.uint32,
          "UInt64": np.uint64, "Bool": np.bool_}
_TYPE_OF = {np.dtype(v): k for k, v in DTYPES.items()}
#: mindspore.train.serialization.SLICE_SIZE (KiB): save_checkpoint splits a tensor's bytes into chunks of this size
SLICE_BYTES = 512 * 1024 * 1024


# ------------------------------------------------------------------ protobuf framing
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):  # varint field
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _value_head(tag: str, dims: Iterable[int], tensor_type: str, content_len: int) -> bytes:
    """One `Checkpoint{value: Value{tag, tensor}}` up to (not including) the tensor_content bytes."""
    tensor_head = b"".join(_field(1, int(d)) for d in dims) + _field(2, tensor_type.encode())
    tensor_head += _varint(3 << 3 | 2) + _varint(content_len)
    tensor_len = len(tensor_head) + content_len
    value_head = _field(1, tag.encode()) + _varint(2 << 3 | 2) + _varint(tensor_len) + tensor_head
    return _varint(1 << 3 | 2) + _varint(len(value_head) + content_len) + value_head


def _records(items: Iterable[tuple[str, np.ndarray | str]]):
    """(head bytes, content buffer) per Value, as mindspore.save_checkpoint splits them. A callable is a string
    record computed while the records before it are written (the digest)."""
    for name, data in items:
        if callable(data):
            data = data()
        if isinstance(data, str):
            arr = np.array(data)
            pieces = np.array_split(arr, -(-arr.nbytes // SLICE_BYTES)) if arr.nbytes > SLICE_BYTES else [arr]
            for p in pieces:
                raw = p.tobytes()
                yield _value_head(name, [0], "str", len(raw)), raw
            continue
        arr = np.asarray(data)
        arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)  # (which makes a scalar 1-d)
        if arr.dtype not in _TYPE_OF:
            raise InvalidFileError(f"{name}: dtype {arr.dtype} has no MindSpore checkpoint type")
        raw = memoryview(arr.reshape(-1)).cast("B") if arr.size else memoryview(b"")
        for i in range(0, len(raw), SLICE_BYTES):  # an empty tensor writes no Value, as MindSpore's writer
            chunk = raw[i:i + SLICE_BYTES]
            yield _value_head(name, arr.shape, _TYPE_OF[arr.dtype], len(chunk)), chunk


def write_ckpt(path: str | os.PathLike, items: Iterable[tuple[str, np.ndarray | str]], *,
               overwrite: bool = True) -> Path:
    """Write (name, array or string) records as mindspore.save_checkpoint does, atomically (a callable in place of a
    string: called when its record is reached)."""
    records = list(items)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for head, content in _records(records):
                f.write(head)
                f.write(content)

    return atomic_write(path, write, overwrite=overwrite)


class _Reader:
    def __init__(self, buf: memoryview, source: str):
        self.buf, self.source = buf, source

    def fail(self, what: str, key: str | None = None) -> InvalidFileError:
        where = f"key {key!r}: " if key is not None else ""
        return InvalidFileError(f"{self.source}: not a readable MindSpore checkpoint (truncated or corrupted): "
                                f"{where}{what}")

    def varint(self, i: int, end: int, key: str | None = None) -> tuple[int, int]:
        value = shift = 0
        while i < end and shift < 64:
            b = self.buf[i]
            value |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                return value, i
            shift += 7
        raise self.fail(f"a varint runs past its message at byte {i}", key)

    def fields(self, i: int, end: int, key: str | None = None):
        """(field number, wire type, value or (start, stop)) of one message's bytes [i, end)."""
        while i < end:
            tag, i = self.varint(i, end, key)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                v, i = self.varint(i, end, key)
                yield number, wire, v
            elif wire == 2:
                n, i = self.varint(i, end, key)
                if n > end - i:
                    raise self.fail(f"field {number} claims {n:,} bytes, {end - i:,} remain", key)
                yield number, wire, (i, i + n)
                i += n
            else:
                raise self.fail(f"wire type {wire} of field {number} at byte {i} is not in checkpoint.proto", key)


def _parse(buf: memoryview, source: str) -> list[tuple[str, list[int] | None, str, list[memoryview]]]:
    """Values, consecutive ones of one tag joined: (tag, dims, tensor_type, content pieces)."""
    r = _Reader(buf, source)
    out: list = []
    for number, wire, span in r.fields(0, len(buf)):
        if number != 1 or wire != 2:
            raise r.fail(f"top-level field {number} (wire type {wire}) is not a Checkpoint.Value")
        tag = dims = ttype = content = None
        for n, w, v in r.fields(*span):
            if n == 1 and w == 2:
                raw = bytes(buf[v[0]:v[1]])
                if len(raw) > L.MAX_NAME_BYTES:
                    raise r.fail(f"a tag of {len(raw):,} bytes, over the limit of {L.MAX_NAME_BYTES:,}")
                try:
                    tag = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise r.fail(f"a tag that is not UTF-8: {raw[:40]!r}") from None
            elif n == 2 and w == 2:
                dims, ttype, content = [], None, None
                for tn, tw, tv in r.fields(*v, key=tag):
                    if tn == 1 and tw == 0:
                        dims.append(tv)
                    elif tn == 1 and tw == 2:  # packed dims (what a proto3 writer would emit)
                        i, end = tv
                        while i < end:
                            d, i = r.varint(i, end, tag)
                            dims.append(d)
                    elif tn == 2 and tw == 2:
                        ttype = bytes(buf[tv[0]:tv[1]]).decode("ascii", "replace")
                    elif tn == 3 and tw == 2:
                        content = buf[tv[0]:tv[1]]
                    else:
                        raise r.fail(f"TensorProto field {tn} (wire type {tw}) is not in checkpoint.proto", tag)
                    if len(dims) > L.MAX_NDIM:
                        raise r.fail(f"more than {L.MAX_NDIM} dimensions", tag)
            elif n == 3 and w == 2:
                raise r.fail("a MapTensor value (a sparse embedding table), which no ViT has", tag)
            else:
                raise r.fail(f"Value field {n} (wire type {w}) is not in checkpoint.proto", tag)
        if tag is None or ttype is None or content is None:
            missing = [m for m, x in (("tag", tag), ("tensor", dims), ("tensor_type", ttype),
                                      ("tensor_content", content)) if x is None]
            raise r.fail(f"a Value without its required {', '.join(missing)}", tag)
        if out and out[-1][0] == tag:  # one tensor saved in slices
            if out[-1][1] != dims or out[-1][2] != ttype:
                raise r.fail("slices of one tensor disagree on its shape or type", tag)
            out[-1][3].append(content)
        else:
            if len(out) >= L.MAX_TENSORS:
                raise r.fail(f"more than {L.MAX_TENSORS:,} records")
            out.append((tag, dims, ttype, [content]))
    return out


def read_ckpt_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every record of a MindSpore checkpoint, in file order: (tensors, string records). The tensors are views of
    one private (copy-on-write) memory map of the file: writable, and writing changes the process's copy, never the
    file."""
    import mmap

    path = Path(path)
    if not path.is_file():
        raise InvalidFileError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise InvalidFileError(f"{path}: empty file, not a MindSpore checkpoint")
    limit = L.MAX_PARAMETERS * 8 + (1 << 30)
    if size > limit:
        raise InvalidFileError(f"{path}: {size:,} bytes, over the {limit:,}-byte limit of a checkpoint")
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if len(buf) != size:
        raise InvalidFileError(f"{path}: shorter than its size while read")
    view = memoryview(buf)
    if bytes(view[-17:-10]) == b"crc_num":  # save_checkpoint(crc_check=True)'s trailer
        view = view[:-17]
    r = _Reader(view, str(path))
    tensors: dict[str, np.ndarray] = {}
    records: dict[str, str] = {}
    for tag, dims, ttype, pieces in _parse(view, str(path)):
        if tag in tensors or tag in records:
            raise r.fail("a second record of the same name", tag)
        raw = pieces[0] if len(pieces) == 1 else memoryview(b"".join(pieces))
        if ttype == "str":
            if len(raw) % 4:
                raise r.fail(f"a string record of {len(raw)} bytes, not UTF-32", tag)
            try:
                records[tag] = bytes(raw).decode("utf-32-le").rstrip("\0")
            except UnicodeDecodeError:
                raise r.fail("a string record that is not UTF-32", tag) from None
            continue
        if ttype not in DTYPES:
            raise r.fail(f"tensor_type {ttype[:40]!r} is not one of {', '.join(DTYPES)}", tag)
        shape = () if dims == [0] else tuple(dims)
        if any(d > L.MAX_PARAMETERS for d in shape) or int(np.prod(shape, dtype=object)) > L.MAX_PARAMETERS:
            raise r.fail(f"dims {list(shape)[:8]} claim more than {L.MAX_PARAMETERS:,} elements", tag)
        dtype = np.dtype(DTYPES[ttype]).newbyteorder("<")
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if need != len(raw):
            raise r.fail(f"dims {list(shape)} of {ttype} need {need:,} bytes, the content holds {len(raw):,}", tag)
        tensors[tag] = np.frombuffer(raw, dtype).reshape(shape)
    return tensors, records


# ------------------------------------------------------------------ detection (the first bytes only)
def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while i < len(buf):
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
    return -1, i


def looks_like_ckpt(path: Path) -> bool:
    """MindSpore's Checkpoint protobuf: repeated Value(1) { string tag = 1; TensorProto tensor = 2 }.

    The file opens with 0x0a <len of first Value> 0x0a <len of its tag> <printable parameter name>.
    """
    with open(path, "rb") as f:
        buf = f.read(1100)
    size = path.stat().st_size
    if buf[:1] != b"\x0a":
        return False
    n_value, i = read_varint(buf, 1)
    if not 0 < n_value <= size or buf[i:i + 1] != b"\x0a":
        return False
    n_tag, j = read_varint(buf, i + 1)
    if not 0 < n_tag <= L.MAX_NAME_BYTES or j + n_tag > len(buf):
        return False
    tag = buf[j:j + n_tag]
    return all(32 <= c < 127 for c in tag)


def ckpt_names(path: str | Path, limit: int = 4096) -> list[str]:
    """The parameter (and record) names of a MindSpore checkpoint, read from its protobuf framing without MindSpore,
    seeking past the tensor data; stops at `limit` names or at the first bytes that do not frame a Value."""
    names: list[str] = []
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < size and len(names) < limit:
            f.seek(pos)
            head = f.read(24)
            if head[:1] != b"\x0a":
                break
            n_value, i = read_varint(head, 1)
            if n_value <= 0 or head[i:i + 1] != b"\x0a":
                break
            n_tag, j = read_varint(head, i + 1)
            if not 0 < n_tag <= L.MAX_NAME_BYTES:
                break
            f.seek(pos + j)
            names.append(f.read(n_tag).decode("utf-8", "replace"))
            pos += i + n_value
    return names


# ------------------------------------------------------------------ the suite's own checkpoint
def digest(items: Iterable[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for name, arr in items:
        a = np.ascontiguousarray(arr)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a.reshape(-1)).cast("B") if a.size else b"")
    return h.hexdigest()


def save_suite_ckpt(cfg: ViTConfig, state: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                    validate: bool = True, overwrite: bool = True) -> Path:
    """A canonical state dict as the suite's MindSpore checkpoint (module docstring), atomically: the bytes
    `mindspore.save_checkpoint(..., append_dict=records)` writes. `validate=False` writes whatever it is given
    (tests use it to build deliberately wrong files)."""
    path = Path(path)
    if validate:
        W.validate_state(cfg, state, source=str(path))
        keys = list(W.expected_shapes(cfg))
    else:
        keys = list(state)
    from concurrent.futures import ThreadPoolExecutor

    arrays = [(k, np.ascontiguousarray(np.asarray(state[k]))) for k in keys]
    with ThreadPoolExecutor(1) as pool:  # the digest is hashed beside the writing (hashlib releases the GIL)
        pending = pool.submit(digest, arrays)
        records = [(FORMAT_KEY, f"{W.FORMAT_NAME}/{W.FORMAT_VERSION}"), (CONFIG_KEY, cfg.to_json()),
                   (DIGEST_KEY, pending.result)]
        try:
            return write_ckpt(path, [*arrays, *records], overwrite=overwrite)
        finally:
            pending.cancel()


def read_suite_ckpt(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a suite checkpoint and verify its digest: (tensors in file order, string records)."""
    tensors, records = _read_with_digest(path)
    _check_digest(path, tensors, records[DIGEST_KEY])
    return tensors, records


def _read_with_digest(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """read_ckpt_file, refusing a file with no digest record (not yet checked against it: `_check_digest`)."""
    tensors, records = read_ckpt_file(path)
    if DIGEST_KEY not in records:
        raise InvalidFileError(
            f"{path}: no {DIGEST_KEY!r} record: the file is truncated, or was not written by vit-suite; a "
            f"foreign ViT checkpoint (mindcv's, or any saved with mindspore.save_checkpoint) is read as format "
            f"'mindcv': --from mindcv --preset NAME")
    return tensors, records


def _check_digest(path, tensors: Mapping[str, np.ndarray], recorded: str) -> None:
    if digest(tensors.items()) != recorded:
        raise InvalidFileError(f"{path}: tensor data does not match the file's digest (corrupted or altered file)")


def load_suite_ckpt(path: str | os.PathLike, cfg: ViTConfig | None = None, *, default: ViTConfig | None = None,
                    deferred: list | None = None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a suite checkpoint strictly: (config, canonical float32 state dict). `cfg` given: the file must hold
    exactly that model's parameters (and, if it records a config, the same architecture); None: the file's config,
    or `default` for a file that records none.

    The digest is hashed on a thread beside the other checks; any of them failing waits for it, so a corrupted file
    is refused by its digest first, as if it had been checked first. `deferred` (a list) given, a file that passes
    the other checks is returned before its digest is known, and the callable that waits for it (and raises the
    digest's InvalidFileError) is appended to `deferred`: the caller must call it before using the tensors for
    anything but writing a staged file (`fileio.checks_before_commit`)."""
    tensors, records = _read_with_digest(path)
    def validated():
        c = _suite_config(path, records, cfg, default)
        W.validate_state(c, tensors, str(path))
        return c

    cfg = checked_beside((_check_digest, path, tensors, records[DIGEST_KEY]), deferred, validated)
    return cfg, {k: tensors[k] for k in W.expected_shapes(cfg)}


def _suite_config(path, records: Mapping[str, str], cfg: ViTConfig | None, default: ViTConfig | None) -> ViTConfig:
    """The config to read a suite checkpoint as (load_suite_ckpt's rule), held against the file's own record."""
    file_cfg = None
    if CONFIG_KEY in records:
        try:
            file_cfg = ViTConfig.from_json(records[CONFIG_KEY])
        except ConfigError as e:
            raise InvalidFileError(f"{path}: invalid {CONFIG_KEY!r} record: {e}") from None
    if cfg is None and file_cfg is None:
        cfg = default
    if cfg is None:
        if file_cfg is None:
            raise InvalidFileError(f"{path}: no {CONFIG_KEY!r} record in the checkpoint; pass the config explicitly")
        cfg = file_cfg
    elif file_cfg is not None and W.expected_shapes(file_cfg) != W.expected_shapes(cfg):
        raise MismatchError(str(path), [f"checkpoint was written for config {file_cfg.name!r}, whose parameters "
                                        f"differ from those of {cfg.name!r}"])
    return cfg


__all__ = ["write_ckpt", "read_ckpt_file", "looks_like_ckpt", "ckpt_names", "save_suite_ckpt", "read_suite_ckpt", "load_suite_ckpt", "digest",
           "CONFIG_KEY", "DIGEST_KEY", "FORMAT_KEY", "DTYPES"]
