"""vit_keras's native files (`.keras`, `.weights.h5`) read and written as data, without Keras: h5py and zipfile.

What Keras 3 writes for a `vit_keras.model.VisionTransformer` (`model.save`, `model.save_weights`):
  .weights.h5   one HDF5 file: for every saveable layer, reached as `keras.src.saving.saving_lib._save_state` walks
                the model (attributes in sorted order, private ones last, a layer reached twice saved once; a list
                attribute's layers named by their snake-cased class, `block`, `block_1`, ...; a Model's `layers`
                list too), a group `PATH/vars` with attribute `name` (the layer's name) holding its variables as
                datasets `0`, `1`, ... in the layer's variable order (Dense / Conv2D: kernel, bias; LayerNorm: gamma,
                beta). `keras_layout(cfg)` is that walk for the model a config builds, as data.
  .keras        a zip (stored, not compressed) of metadata.json ({"keras_version", "date_saved"}), config.json
                (`serialize_keras_object(model)`: `keras_config(cfg)`) and model.weights.h5, in that order, each
                member written as zipfile writes it for Keras (`ZipFile.open(name, "w")`, then `writestr`).
The files written here hold the same groups, datasets, attributes, dtypes and bytes of tensor data, in the same
creation order, as Keras' (only HDF5's object timestamps and metadata.json's date differ, as between two Keras
saves); `keras.saving.load_model(path, safe_mode=True)` and `model.load_weights` load them.

Without a copy of the model in memory: a `.keras` weights member is laid out by HDF5 on placeholders and streamed
into the zip, each tensor put in Keras' layout as it is written (`_Recorder`); the files are read through a memory
map, HDF5 reading the structure and each contiguous dataset taken in place (a Dense kernel as its transposed view).

A config field this layout does not know (outside KNOWN_FIELDS), off its default, is refused by name
(UnsupportedError, `file_problems`), writing and reading, rather than laid out silently wrong.

Reading is strict: the config (classes refused unless Keras' own or vit_keras', as for the framework's loader, then
a valid ViTConfig), then every dataset of the layout present with its exact shape and dtype float32, and no other
dataset (an optimizer's are ignored): MismatchError / InvalidFileError naming the file and the key. A `.keras`
weights member's CRC-32 is checked, as zipfile's reader checks it.
"""
from __future__ import annotations

import bisect
import datetime
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from . import limits as L
from . import weights as W
from .config import ViTConfig, fields_off_default
from .errors import BackendError, ConfigError, InvalidFileError, MismatchError, UnsupportedError
from .fileio import BackgroundWriter, atomic_write, checked_beside
from .safeio import check_zip, load_json, read_zip_member, refuse_unsafe_keras_classes

#: vit_keras' registered classes (keras.saving.register_keras_serializable(package="vit_keras")): the only
#: non-Keras classes a vit_keras `.keras` file may name
PACKAGE = "vit_keras"
ALLOWED_CLASSES = frozenset(f"{PACKAGE}>{c}" for c in ("VisionTransformer", "DropPath", "PatchEmbed", "Attention",
                                                        "Mlp", "LayerScale", "Block", "AttentionPool", "RelPosBias",
                                                        "RmsNorm", "Branch"))
MODEL_NAME = "vision_transformer"
#: the Keras release whose files keras_layout and keras_config reproduce (conformance_tests/test_keras.py holds them
#: against the installed Keras); metadata.json names the installed Keras, or this one where Keras is not installed
KERAS_VERSION = "3.15.1"
WEIGHTS_MEMBER = "model.weights.h5"
#: every ViTConfig field keras_layout and keras_config express (all of today's, held against Keras' own files by
#: conformance_tests/test_keras.py); a field added to ViTConfig later is refused by name (`file_problems`) while it is
#: off its default, until the layout learns it
KNOWN_FIELDS = frozenset({
    "name", "image_size", "in_chans", "patch_size", "patch_bias", "embed_dim", "depth", "num_heads", "mlp_dim",
    "swiglu", "attn_dim", "qkv_bias", "qk_scale", "attn_value_skip", "qk_norm", "init_values", "class_token",
    "dist_token", "reg_tokens", "pool", "pos_embed", "pos_prefix_tokens", "pos_grid", "resize_kernel", "gelu",
    "layer_norm_eps", "norm_pre", "final_norm", "fc_norm", "representation_size", "num_classes", "output_softmax",
    "dropout", "attn_dropout", "drop_path", "notes",
    # Eva options
    "rope", "rope_temperature", "rope_offset", "rope_indexing", "rope_rotate_half", "rope_ref_grid", "qkv_fused",
    "k_bias", "attn_inner_norm", "mlp_inner_norm", "swiglu_unpacked", "norm_kind", "ls_attn_only",
    # relative position biases
    "rel_pos", "rel_pos_shared", "rel_pos_dim",
    # post-norm blocks: the same layers and variables as pre-norm; the model reads block_norm from its config
    "block_norm",
    # NaFlexVit's tables: aspect-preserving resampling; factorized tables (pos_embed 'factorized': pos_embed_y / _x)
    "pos_ar_preserving",
    # AIMv2's patch norm and bias-free projections (the Dense layers without a bias variable)
    "patch_norm", "proj_bias",
    # the pool over the prefix tokens too, the attention pool's heads (no variable of their own: the config says them)
    "pool_include_prefix", "pool_heads", "pool_mlp_dim"})


# ------------------------------------------------------------------ the layout
def file_problems(cfg: ViTConfig) -> list[str]:
    """Why the files of `cfg` cannot be written or read as data here (empty: they can): a config field outside
    KNOWN_FIELDS, off its default."""
    return [f"config field {k}={getattr(cfg, k)!r} is not expressed by shared/keras_file.py (its layout of Keras' files)"
            for k in fields_off_default(cfg, KNOWN_FIELDS)]


def _check_known(cfg: ViTConfig) -> None:
    problems = file_problems(cfg)
    if problems:
        raise UnsupportedError(f"{cfg.name}: cannot write or read vit_keras' .keras / .weights.h5 as data: "
                               + "; ".join(problems))


@dataclass
class _Layer:
    cls: str                      # Keras class name (names the layer inside a list attribute)
    name: str                     # the layer's name: its vars group's `name` attribute
    variables: list = field(default_factory=list)  # [(canonical key, kind)], kind: conv, dense or direct
    attrs: dict = field(default_factory=dict)      # attribute -> _Layer or [_Layer] (a list attribute)


def _dense(name: str, prefix: str, keys) -> _Layer:
    v = [(f"{prefix}.weight", "dense")] + ([(f"{prefix}.bias", "direct")] if f"{prefix}.bias" in keys else [])
    return _Layer("Dense", name, v)


def _ln(name: str, prefix: str, keys) -> _Layer:
    """A norm: LayerNormalization (gamma, beta) or, without a bias (cfg.norm_kind 'rms'), vit_keras' RmsNorm (gamma)."""
    if f"{prefix}.bias" not in keys:
        return _Layer("RmsNorm", name, [(f"{prefix}.weight", "direct")])
    return _Layer("LayerNormalization", name, [(f"{prefix}.weight", "direct"), (f"{prefix}.bias", "direct")])


def _mlp(prefix: str, keys) -> _Layer:
    """vit_keras.layers.Mlp: fc1 (or the unpacked SwiGLU's fc1_g, fc1_x), the inner norm, fc2."""
    a = {n: _dense(n, f"{prefix}.{n}", keys) for n in ("fc1", "fc1_g", "fc1_x", "fc2") if f"{prefix}.{n}.weight" in keys}
    a.update(drop1=_Layer("Dropout", "drop1"), drop2=_Layer("Dropout", "drop2"))
    if f"{prefix}.norm.weight" in keys:
        a["norm"] = _ln("norm", f"{prefix}.norm", keys)
    return _Layer("Mlp", "mlp", attrs=a)


def _block(i: int, keys) -> _Layer:
    p = f"blocks.{i}"
    attn = {n: _dense(n, f"{p}.attn.{n}", keys) for n in ("qkv", "q_proj", "k_proj", "v_proj", "proj")
            if f"{p}.attn.{n}.weight" in keys}
    attn.update({n: _ln(n, f"{p}.attn.{n}", keys) for n in ("q_norm", "k_norm", "norm") if f"{p}.attn.{n}.weight" in keys})
    attn.update(attn_drop=_Layer("Dropout", "attn_drop"), proj_drop=_Layer("Dropout", "proj_drop"))
    a = {"norm1": _ln("norm1", f"{p}.norm1", keys), "attn": _Layer("Attention", "attn", attrs=attn),
         "norm2": _ln("norm2", f"{p}.norm2", keys), "mlp": _mlp(f"{p}.mlp", keys),
         "drop_path1": _Layer("DropPath", "drop_path1"), "drop_path2": _Layer("DropPath", "drop_path2")}
    for ls in ("ls1", "ls2"):
        if f"{p}.{ls}.gamma" in keys:
            a[ls] = _Layer("LayerScale", ls, [(f"{p}.{ls}.gamma", "direct")])
    return _Layer("Block", f"blocks_{i}", attrs=a)


def _rel_pos(prefix: str, keys) -> _Layer:
    """vit_keras.layers.RelPosBias: its table is its own variable, or two Dense layers mlp_fc1, mlp_fc2."""
    name = prefix.replace(".", "_")
    table = f"{prefix}.relative_position_bias_table"
    if table in keys:
        return _Layer("RelPosBias", name, [(table, "direct")])
    return _Layer("RelPosBias", name, attrs={f"fc{j}": _dense(f"mlp_fc{j}", f"{prefix}.mlp.fc{j}", keys) for j in (1, 2)})


def _model(cfg: ViTConfig, name: str = MODEL_NAME) -> _Layer:
    """vit_keras.model.VisionTransformer's layers, as its __init__ assigns them (the order of its `layers`)."""
    keys = W.expected_shapes(cfg)
    pe = [("patch_embed.proj.weight", "conv")] + [("patch_embed.proj.bias", "direct")] * cfg.patch_bias
    pe_attrs = {"proj": _Layer("Conv2D", "proj", pe)}
    if "patch_embed.norm.weight" in keys:  # patch_norm: PatchEmbed's `norm`
        pe_attrs["norm"] = _ln("norm", "patch_embed.norm", keys)
    tracked: list[tuple[str, _Layer | list]] = [
        ("patch_embed", _Layer("PatchEmbed", "patch_embed", attrs=pe_attrs)),
        ("pos_drop", _Layer("Dropout", "pos_drop"))]
    if "norm_pre.weight" in keys:
        tracked.append(("norm_pre", _ln("norm_pre", "norm_pre", keys)))
    tracked.append(("blocks", [_block(i, keys) for i in range(cfg.depth)]))
    # relative position biases: a list attribute `rel_pos` of model-level layers named by their key (vit_keras.model)
    tracked.append(("rel_pos", [_rel_pos(prefix, keys) for prefix in cfg.rel_pos_prefixes]))
    if "norm.weight" in keys:
        tracked.append(("norm", _ln("norm", "norm", keys)))
    if "attn_pool.latent" in keys:
        pool = {n: _dense(n, f"attn_pool.{n}", keys) for n in ("q", "kv", "proj")}
        pool.update(norm=_ln("norm", "attn_pool.norm", keys), mlp=_mlp("attn_pool.mlp", keys))
        tracked.append(("attn_pool", _Layer("AttentionPool", "attn_pool", [("attn_pool.latent", "direct")], pool)))
    if "fc_norm.weight" in keys:
        tracked.append(("fc_norm", _ln("fc_norm", "fc_norm", keys)))
    if "pre_logits.fc.weight" in keys:
        tracked.append(("pre_logits", _dense("pre_logits_fc", "pre_logits.fc", keys)))
    for head in ("head", "head_dist"):
        if f"{head}.weight" in keys:
            tracked.append((head, _dense(head, head, keys)))
    # the model's own variables, in the order its build() adds them (rope.freqs: RoPE-Mixed's `rope_freqs`)
    own = [(k, "direct") for k in ("cls_token", "dist_token", "reg_token", "pos_embed", "pos_embed_y", "pos_embed_x",
                                   "rope.freqs") if k in keys]
    layers = [x for _, v in tracked for x in (v if isinstance(v, list) else [v])]
    return _Layer("VisionTransformer", name, own, {**dict(tracked), "layers": layers})


def _snake(name: str) -> str:  # keras.src.utils.naming.to_snake_case, for CamelCase class names
    import re

    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)).lower()


def keras_layout(cfg: ViTConfig, name: str = MODEL_NAME) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """[(vars group path, layer name, [(canonical key, kind)] as datasets 0, 1, ...)] in the order Keras writes
    them (module docstring)."""
    _check_known(cfg)
    out: list = []
    visited: set[int] = set()

    def walk(layer: _Layer, path: str) -> None:
        if id(layer) in visited:
            return
        visited.add(id(layer))
        out.append((f"{path}/vars" if path else "vars", layer.name, layer.variables))
        for attr in sorted(layer.attrs, key=lambda a: f"~{a}" if a.startswith("_") else a):
            child = layer.attrs[attr]
            sub = f"{path}/{attr}" if path else attr
            if isinstance(child, list):
                used: dict[str, int] = {}
                for item in child:
                    base = _snake(item.cls)
                    used[base] = used.get(base, -1) + 1
                    walk(item, f"{sub}/{base}" + (f"_{used[base]}" if used[base] else ""))
            else:
                walk(child, sub)

    walk(_model(cfg, name), "")
    return out


def _transposed(a: np.ndarray) -> np.ndarray:
    """A 2-D array's transpose, contiguous: copied in bands of 32 rows, which stay in cache (numpy's one strided copy
    of a big matrix is several times slower)."""
    a = np.asarray(a)
    out = np.empty(a.shape[::-1], a.dtype)
    for i in range(0, a.shape[0], 32):
        out[:, i:i + 32] = a[i:i + 32].T
    return out


def to_keras_layout(kind: str, value: np.ndarray) -> np.ndarray:
    """One canonical tensor in the Keras variable's layout: conv (D, C, P, P) -> HWIO (P, P, C, D); dense
    (out, in) -> (in, out); direct as it is."""
    if kind == "conv":
        return np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)))
    if kind == "dense":
        return _transposed(value)
    return np.asarray(value)


def from_keras_layout(kind: str, value: np.ndarray) -> np.ndarray:
    """The inverse of `to_keras_layout` (a pure transpose: bit-exact)."""
    if kind == "conv":
        return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))
    if kind == "dense":
        return _transposed(value)
    return np.ascontiguousarray(value)


def keras_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "conv":
        return tuple(shape[i] for i in (2, 3, 1, 0))
    if kind == "dense":
        return tuple(reversed(shape))
    return tuple(shape)


def keras_config(cfg: ViTConfig) -> dict:
    """config.json of a `.keras` file: `serialize_keras_object` of the model `vit_keras.model.build_model(cfg)`
    builds (float32 policy, channels_last)."""
    _check_known(cfg)
    H, Wd = cfg.image_size
    return {"module": "vit_keras.model", "class_name": "VisionTransformer",
            "config": {"name": MODEL_NAME, "config": cfg.to_dict(), "data_format": "channels_last",
                       "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                                 "registered_name": None},
                       "trainable": True},
            "registered_name": f"{PACKAGE}>VisionTransformer", "build_config": {"input_shape": [None, H, Wd, cfg.in_chans]},
            "compile_config": {}}


# ------------------------------------------------------------------ writing
def _h5_image(cfg: ViTConfig, state: Mapping[str, np.ndarray], *, standalone: bool):
    """The weights file's bytes, made in memory: HDF5 never writes to disk (a full disk under it can crash the
    process); Python writes the bytes. standalone: what HDF5 makes of a file of its own (Keras' `save_weights`: the
    core driver's image equals it), else what it makes inside a `.keras` zip (Keras writes there through a BytesIO,
    whose file HDF5 lays out a little smaller)."""
    import h5py

    W.validate_state(cfg, state, source=f"model {cfg.name!r}")
    bio = None if standalone else io.BytesIO()
    f = h5py.File("weights.h5", "w", driver="core", backing_store=False) if standalone else h5py.File(bio, "w")
    with f:
        for path, name, variables in keras_layout(cfg):
            g = f.create_group(path)
            g.attrs["name"] = name
            for i, (key, kind) in enumerate(variables):
                g[str(i)] = to_keras_layout(kind, np.asarray(state[key], np.float32))
        if standalone:
            f.flush()
            return f.id.get_file_image()
    return bio.getbuffer()


def _address(data) -> int:
    return np.frombuffer(data, np.uint8).ctypes.data if memoryview(data).nbytes else 0


class _Fallback(Exception):
    """HDF5 did something `_Recorder` does not model: the image is made the plain way (`_h5_image`)."""


class _Recorder:
    """The file object HDF5 writes a `.keras` member's weights file into (h5py's file-object driver: the same
    layout as a BytesIO), keeping what it writes as pieces, last write winning: metadata as bytes, and each tensor's
    data, written by HDF5 straight from the buffer h5py was given, as a reference to the canonical tensor. Nothing
    of the tensor data is copied, transposed or even read while HDF5 lays the file out: `emit` writes the image,
    producing each tensor in Keras' layout as it goes."""

    def __init__(self):
        self.pos = self.size = 0
        self.segs: list[list] = []  # [start, end, bytes | (key, kind, nbytes), offset into it], sorted, disjoint
        self.starts: list[int] = []  # the pieces' starts (bisect)
        self.expect: tuple[int, int, tuple] | None = None  # (address, nbytes, (key, kind, nbytes)) being written
        self.seen: list[tuple[str, str, int]] = []
        self.broken = False

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def _cut(self, start: int, end: int) -> int:
        """Drop what [start, end) overwrites (pieces cut at its edges); returns where a piece at `start` goes."""
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        j = bisect.bisect_left(self.starts, end)
        kept = []
        for seg in self.segs[i:j]:
            s, e, what, off = seg
            if e <= start or s >= end:
                kept.append(seg)
                continue
            if s < start:
                kept.append([s, start, what, off])
            if e > end:
                kept.append([end, e, what, off + end - s])
        self.segs[i:j] = kept
        self.starts[i:j] = [x[0] for x in kept]
        return bisect.bisect_left(self.starts, start)

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n == 0:
            return 0
        start, end = self.pos, self.pos + n
        at = self._cut(start, end)
        if self.expect is not None and n == self.expect[1] and _address(data) == self.expect[0]:
            what = self.expect[2]
            self.seen.append(what)
            self.expect = None
        else:
            what = bytes(data)
        self.segs.insert(at, [start, end, what, 0])
        self.starts.insert(at, start)
        self.pos, self.size = end, max(self.size, end)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if size < self.size:  # as a BytesIO: cut short, never extended
            self._cut(size, self.size)
            self.size = size
        return size

    def readinto(self, b) -> int:
        out = memoryview(b).cast("B")
        start, end = self.pos, min(self.pos + len(out), self.size)
        if end <= start:
            return 0
        out[:end - start] = bytes(end - start)
        for s, e, what, off in self.segs:
            if e <= start or s >= end:
                continue
            if not isinstance(what, bytes):  # HDF5 reading tensor data back: not modelled (an exception here
                self.broken = True             # would reach h5py as an HDF5 error): `_h5_member` falls back
                continue
            lo, hi = max(s, start), min(e, end)
            out[lo - start:hi - start] = what[off + lo - s:off + hi - s]
        self.pos = end
        return end - start

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(max(0, (self.size - self.pos) if n < 0 else n))
        return bytes(buf[:self.readinto(buf)])

    def emit(self, w, state: Mapping[str, np.ndarray]) -> None:
        """Write the image to `w` (a zip member open for writing), gaps as zeros (as a BytesIO holds them)."""
        at = 0
        for s, e, what, off in self.segs:
            if s > at:
                w.write(bytes(s - at))
            if isinstance(what, bytes):
                w.write(what[off:off + e - s])
            else:
                key, kind, _ = what
                _write_keras_layout(w, kind, np.asarray(state[key], np.float32))
            at = e
        if self.size > at:
            w.write(bytes(self.size - at))


def _write_keras_layout(w, kind: str, value: np.ndarray) -> None:
    """`to_keras_layout(kind, value)`'s bytes, written to `w`: a Dense kernel as its transposed view
    (`weights.write_c_order`: a band of rows at a time, never whole)."""
    if kind == "dense" and value.ndim == 2:
        W.write_c_order(w, value.T)
    else:
        W.write_c_order(w, np.ascontiguousarray(to_keras_layout(kind, value)))


def _h5_member(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> _Recorder | None:
    """The `.keras` member's weights file as a `_Recorder` (HDF5 lays it out on placeholders that are never touched;
    each tensor's bytes are referenced, and checked to be each written exactly once), or None where HDF5 did
    something the recorder does not model (then `_h5_image` makes it)."""
    import h5py

    W.validate_state(cfg, state, source=f"model {cfg.name!r}")
    layout = keras_layout(cfg)
    shapes = W.expected_shapes(cfg)
    biggest = max([int(np.prod(shapes[k])) * 4 for _, _, v in layout for k, _ in v] + [4])
    placeholder = np.empty(biggest, np.uint8)  # never written or read: its pages are never even mapped
    rec = _Recorder()
    wanted = []
    try:
        with h5py.File(rec, "w") as f:
            for path, name, variables in layout:
                g = f.create_group(path)
                g.attrs["name"] = name
                for i, (key, kind) in enumerate(variables):
                    shape = keras_shape(kind, shapes[key])
                    if kind == "direct":
                        data = np.ascontiguousarray(np.asarray(state[key], np.float32))
                    else:
                        data = placeholder[:int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
                    if data.nbytes:
                        rec.expect = (_address(data), data.nbytes, (key, kind, data.nbytes))
                        wanted.append((key, kind, data.nbytes))
                    g[str(i)] = data
                    if rec.expect is not None:  # not written straight from the buffer
                        raise _Fallback(f"{key}: not written from its buffer")
    except Exception:  # noqa: BLE001 - _Fallback, or HDF5 failing on what the recorder does not model
        return None
    refs = [(what, off, e - s) for s, e, what, off in rec.segs if not isinstance(what, bytes)]
    whole = all(off == 0 and length == what[2] for what, off, length in refs)
    if rec.broken or rec.seen != wanted or not whole or sorted(w for w, _, _ in refs) != sorted(wanted):
        return None
    return rec


def _write_member(path: str, data) -> None:
    with open(path, "wb") as f:
        f.write(data)


def save_weights_h5(path: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray], *,
                    overwrite: bool = True) -> Path:
    """`model.save_weights(path)` of the model build_model(cfg, state) makes, atomically."""
    image = _h5_image(cfg, state, standalone=True)
    return atomic_write(path, lambda t: _write_member(t, image), overwrite=overwrite)


def save_keras(path: str | os.PathLike, cfg: ViTConfig, state: Mapping[str, np.ndarray], *,
               overwrite: bool = True) -> Path:
    """`model.save(path)` of the model build_model(cfg, state) makes, atomically. The weights member is laid out by
    HDF5 without its data (`_h5_member`) and streamed into the zip, each tensor put in Keras' layout as it is
    written: the bytes `zipfile.writestr` of the whole image writes, with no copy of the model in memory."""
    import time
    from importlib.metadata import PackageNotFoundError, version

    try:
        keras_version = version("keras")
    except PackageNotFoundError:
        keras_version = KERAS_VERSION
    member = _h5_member(cfg, state)
    image = _h5_image(cfg, state, standalone=False) if member is None else None
    metadata = json.dumps({"keras_version": keras_version,
                           "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")})
    config = json.dumps(keras_config(cfg))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w") as zf:
            with zf.open("metadata.json", "w") as m:
                m.write(metadata.encode())
            with zf.open("config.json", "w") as m:
                m.write(config.encode())
            if member is None:
                zf.writestr(WEIGHTS_MEMBER, image)
                return
            # the ZipInfo zipfile.writestr makes for a name, its size known before the header is written
            info = zipfile.ZipInfo(WEIGHTS_MEMBER, date_time=time.localtime(time.time())[:6])
            info.compress_type, info.external_attr, info.file_size = zf.compression, 0o600 << 16, member.size
            with zf.open(info, "w") as m, BackgroundWriter(m) as w:  # CRC-32 and writing beside the transposes
                member.emit(w, state)

    return atomic_write(path, write, overwrite=overwrite)


# ------------------------------------------------------------------ reading
def read_keras_config(path: str | os.PathLike) -> ViTConfig:
    """The ViTConfig of a vit_keras `.keras` file, from its config.json read as data: classes checked (a Lambda or a
    class neither Keras' nor vit_keras' is refused), the config type-checked and held to the limits."""
    config = load_json(read_zip_member(path, "config.json", ".keras file"), f"{path}: config.json")
    refuse_unsafe_keras_classes(config, ALLOWED_CLASSES, str(path))
    inner = config.get("config") if isinstance(config, dict) else None
    vit = inner.get("config") if isinstance(inner, dict) else None
    if not isinstance(vit, dict) or config.get("registered_name") != f"{PACKAGE}>VisionTransformer":
        raise InvalidFileError(f"{path}: config.json does not describe a vit_keras VisionTransformer")
    try:
        return ViTConfig.from_dict(vit)
    except ConfigError as e:
        raise InvalidFileError(f"{path}: invalid model config in config.json: {e}") from None


class _View:
    """A read-only file object over a buffer (a memory map of the file, or of a `.keras` member's span) for h5py:
    HDF5 reads the file's structure through it; the tensors are then read as views of the same buffer."""

    def __init__(self, buf):
        self.buf, self.pos = memoryview(buf).cast("B"), 0

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else len(self.buf) + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        out = memoryview(b).cast("B")
        chunk = self.buf[self.pos:self.pos + len(out)]
        out[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def read(self, n: int = -1) -> bytes:
        chunk = self.buf[self.pos:] if n < 0 else self.buf[self.pos:self.pos + n]
        self.pos += len(chunk)
        return bytes(chunk)


def _map(path) -> memoryview:
    """A private (copy-on-write) memory map of a file: arrays on it are writable and never change the file."""
    import mmap

    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY))


def _dataset_view(obj, buf: memoryview, shape: tuple[int, ...]) -> np.ndarray | None:
    """A float32 dataset's data as a view of `buf` (the file), where HDF5 stores it in one contiguous span of the
    file; None otherwise (chunked, compact, external, unallocated: read through HDF5)."""
    from h5py import h5d

    try:
        if obj.id.get_create_plist().get_layout() != h5d.CONTIGUOUS or obj.dtype != np.dtype("<f4"):
            return None
        offset, nbytes = obj.id.get_offset(), int(np.prod(shape)) * 4
    except Exception:  # noqa: BLE001 - h5py raises for what it cannot tell: read through HDF5 instead
        return None
    if offset is None or obj.id.get_storage_size() != nbytes or not nbytes or offset + nbytes > len(buf):
        return None
    return np.frombuffer(buf, np.float32, nbytes // 4, offset).reshape(shape)


def _read_h5(data, cfg: ViTConfig, source: str) -> dict[str, np.ndarray]:
    """The canonical state of a weights file (its bytes: a memory map of the file or of a `.keras` member), every
    dataset checked against keras_layout(cfg). Contiguous datasets are read as views of those bytes, a Dense kernel
    as its transposed view (the canonical (out, in) in Fortran order, nothing copied: `weights.write_c_order` writes
    it in C order)."""
    import h5py

    shapes = W.expected_shapes(cfg)
    want = {f"{path}/{i}": (key, kind) for path, _, variables in keras_layout(cfg)
            for i, (key, kind) in enumerate(variables)}
    state: dict[str, np.ndarray] = {}
    problems: list[str] = []
    try:
        with h5py.File(_View(data), "r") as f:
            direct = f.userblock_size == 0  # dataset offsets are then offsets into `data`
            found: list[str] = []

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer/"):
                    found.append(name)
                    if len(found) > L.MAX_TENSORS:
                        raise InvalidFileError(f"{source}: more than {L.MAX_TENSORS:,} datasets")
            f.visititems(visit)
            problems += [f"unexpected dataset {n!r}: model {cfg.name!r} has no variable for it"
                         for n in found if n not in want]
            for name, (key, kind) in want.items():
                expect = keras_shape(kind, shapes[key])
                obj = f.get(name)
                if not isinstance(obj, h5py.Dataset):
                    problems.append(f"key {name!r} (canonical {key!r}): missing, expected shape {expect} float32")
                    continue
                if obj.attrs.get("dtype") is not None or obj.dtype != np.float32:
                    stored = obj.attrs.get("dtype", obj.dtype)
                    problems.append(f"key {name!r} (canonical {key!r}): dtype {stored}, expected float32")
                    continue
                if tuple(obj.shape) != expect:
                    problems.append(f"key {name!r} (canonical {key!r}): shape {tuple(obj.shape)}, expected {expect}")
                    continue
                if not problems:
                    arr = _dataset_view(obj, data, expect) if direct else None
                    if arr is None:
                        arr = np.empty(expect, np.float32)
                        if arr.size:
                            obj.read_direct(arr)
                    state[key] = arr.T if kind == "dense" else from_keras_layout(kind, arr)
    except (InvalidFileError, MismatchError):
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises OSError, RuntimeError, KeyError... for a damaged file
        raise InvalidFileError(f"{source}: not a readable HDF5 weights file ({type(e).__name__}: {e})") from None
    if problems:
        raise MismatchError(source, problems)
    W.validate_state(cfg, state, source=source)
    return state


def load_weights_h5(path: str | os.PathLike, cfg: ViTConfig | None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """A `.weights.h5` file (which holds no config) read strictly as the weights of `cfg`: (cfg, canonical state)."""
    if cfg is None:
        raise BackendError(f"{path}: a .weights.h5 file holds no config: name the model with --preset NAME "
                           f"(from Python: the cfg argument)")
    if not Path(path).is_file():
        raise InvalidFileError(f"{path}: no such file")
    return cfg, _read_h5(_map(path), cfg, str(path))


def _member_bytes(path) -> tuple[memoryview, int | None]:
    """The weights member of a `.keras` zip and the CRC-32 it must have (`_check_crc`): a stored member (as Keras
    writes it) as the span of a memory map of the file; any other member read (and checked) by zipfile, with None."""
    import struct

    with zipfile.ZipFile(path) as z:
        info = z.getinfo(WEIGHTS_MEMBER)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
            return memoryview(z.read(WEIGHTS_MEMBER)), None  # its size bounded by check_zip
    buf = _map(path)
    head = bytes(buf[info.header_offset:info.header_offset + 30])
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local file header of {WEIGHTS_MEMBER!r}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    data = buf[start:start + info.file_size]
    if len(data) != info.file_size:
        raise zipfile.BadZipFile(f"{WEIGHTS_MEMBER!r} runs past the end of the file")
    return data, info.CRC


def _check_crc(path, data: memoryview, crc: int | None) -> None:
    """The member's CRC-32 checked as zipfile's reader checks it; a mismatch is load_keras' InvalidFileError."""
    import zlib

    if crc is not None and zlib.crc32(data) != crc:
        raise InvalidFileError(f"{path}: member {WEIGHTS_MEMBER!r} is unreadable (BadZipFile: Bad CRC-32 for file "
                               f"{WEIGHTS_MEMBER!r})")


def load_keras(path: str | os.PathLike, expect: ViTConfig | None = None, *, deferred: list | None = None
               ) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """A vit_keras `.keras` file read strictly as data: (its config, canonical state); `expect` given, the file's
    config must equal it. The weights member's CRC-32 is computed on a thread beside reading it (any failure of the
    reading waits for it, so a damaged member is refused by its CRC first); `deferred` (a list) given, the callable
    that waits for it is appended there instead (ms_ckpt.load_suite_ckpt's rule)."""
    if not Path(path).is_file():
        raise InvalidFileError(f"{path}: no such file")
    check_zip(path, ".keras file")
    cfg = read_keras_config(path)
    if expect is not None and cfg != expect:
        raise MismatchError(str(path), [f"file config {cfg.name!r} differs from the expected config "
                                        f"{expect.name!r}: {cfg.to_dict()} != {expect.to_dict()}"])
    try:
        data, crc = _member_bytes(path)
    except KeyError:
        raise InvalidFileError(f"{path}: not a .keras file: no member {WEIGHTS_MEMBER!r}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise InvalidFileError(f"{path}: member {WEIGHTS_MEMBER!r} is unreadable ({type(e).__name__}: {e})") from None
    state = checked_beside((_check_crc, path, data, crc), deferred,
                           lambda: _read_h5(data, cfg, f"{path}: {WEIGHTS_MEMBER}"))
    return cfg, state


__all__ = ["ALLOWED_CLASSES", "KNOWN_FIELDS", "file_problems", "keras_layout", "keras_config", "save_keras", "save_weights_h5", "load_keras",
           "load_weights_h5", "read_keras_config", "to_keras_layout", "from_keras_layout"]
