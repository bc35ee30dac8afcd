"""Canonical state dict / safetensors <-> MindSpore `.ckpt`, lossless and strict.

The model's parameter names are the canonical keys (see layers.py: LayerNorm parameters are
`weight`/`bias`, not MindSpore's gamma/beta; the patch projection keeps the conv layout
(D, C, P, P) though it runs as a matmul), so the mapping is the identity; `CANONICAL_TO_NATIVE`
spells it out for readers and tools.

File layout: every canonical tensor as float32 under its canonical name, then two string
records written by `append_dict` (after the tensors, so a file cut short loses them):
  vit_config        the full ViTConfig as JSON
  vit_suite_digest  sha256 over (name, dtype, shape, bytes) of every tensor in file order
Loading checks, before anything reaches a network: that the file parses, that the digest
record exists and matches (a truncated or bit-flipped file is an InvalidFileError), and then the
key set, every shape and every dtype against the config (MismatchError naming file and key).
Only then `load_param_into_net(strict_load=True)`, whose not-loaded lists must both be empty.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

import mindspore as ms
from mindspore import Tensor

from shared import weights as W
from shared.config import ConfigError, ViTConfig

CONFIG_KEY = "vit_config"
DIGEST_KEY = "vit_suite_digest"
FORMAT_KEY = "vit_suite_format"
RECORD_KEYS = (FORMAT_KEY, CONFIG_KEY, DIGEST_KEY)


def canonical_to_native(key: str) -> str:
    """MindSpore parameter name of a canonical key (identity: the cells are named canonically)."""
    return key


def native_to_canonical(name: str) -> str:
    return name


def to_canonical(model) -> dict[str, np.ndarray]:
    """Canonical float32 state dict of a model (bit-exact for a float32 model)."""
    cfg = model.config
    params = {native_to_canonical(p.name): p for p in model.get_parameters()}
    out = {}
    for key, shape in W.expected_shapes(cfg).items():
        arr = params[canonical_to_native(key)].asnumpy()
        if tuple(arr.shape) != shape:
            raise W.MismatchError("<model>", [f"parameter {key!r}: expected shape {shape}, got {tuple(arr.shape)}"])
        out[key] = np.ascontiguousarray(arr.astype(np.float32))
    return out


def _digest(items: list[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for name, arr in items:
        a = np.ascontiguousarray(arr)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_ckpt(cfg: ViTConfig, state: Mapping[str, np.ndarray], path: str | os.PathLike,
              validate: bool = True) -> Path:
    """Write a canonical state dict as a MindSpore checkpoint, atomically. Returns the path written.

    `validate=False` writes whatever it is given (tests use it to build deliberately wrong files).
    """
    path = Path(path)
    if validate:
        W.validate_state(cfg, state, source=str(path))
        keys = list(W.expected_shapes(cfg))
    else:
        keys = list(state)
    arrays = [(k, np.ascontiguousarray(np.asarray(state[k]))) for k in keys]
    records = {FORMAT_KEY: f"{W.FORMAT_NAME}/{W.FORMAT_VERSION}", CONFIG_KEY: cfg.to_json(),
               DIGEST_KEY: _digest(arrays)}

    def write(tmp: str) -> None:
        # save_checkpoint appends ".ckpt" to a name lacking it: give it a name that has it, then move.
        target = tmp + ".ckpt"
        try:
            ms.save_checkpoint([{"name": canonical_to_native(k), "data": Tensor(a)} for k, a in arrays],
                               target, append_dict=records)
            os.replace(target, tmp)
        finally:
            if os.path.exists(target):
                os.unlink(target)

    return W.atomic_write(path, write)


def read_ckpt(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a checkpoint and verify its digest: (tensors in file order, string records).

    InvalidFileError for a missing, unparsable, truncated or altered file.
    """
    path = Path(path)
    if not path.is_file():
        raise W.InvalidFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise W.InvalidFileError(f"{path}: empty file, not a MindSpore checkpoint")
    try:
        if path.suffix == ".ckpt":
            raw = ms.load_checkpoint(str(path))
        else:  # load_checkpoint insists on the suffix: read through a link that has it
            with tempfile.TemporaryDirectory() as tmp:
                link = os.path.join(tmp, "model.ckpt")
                try:
                    os.symlink(path.resolve(), link)
                except OSError:
                    shutil.copyfile(path, link)
                raw = ms.load_checkpoint(link)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError for unparsable protobuf
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise W.InvalidFileError(f"{path}: not a readable MindSpore checkpoint (truncated or corrupted): {msg}") from None
    tensors: dict[str, np.ndarray] = {}
    records: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, str):
            records[name] = value
        elif hasattr(value, "asnumpy"):
            tensors[name] = value.asnumpy()
        else:
            records[name] = str(value)
    if DIGEST_KEY not in records:
        raise W.InvalidFileError(
            f"{path}: no {DIGEST_KEY!r} record: the file is truncated, or was not written by vit-suite "
            f"(convert it from canonical safetensors with vit_mindspore.convert.save_ckpt)")
    actual = _digest(list(tensors.items()))
    if actual != records[DIGEST_KEY]:
        raise W.InvalidFileError(f"{path}: tensor data does not match the file's digest (corrupted or altered file)")
    return tensors, records


def check_ckpt_tensors(cfg: ViTConfig, tensors: Mapping[str, np.ndarray], source: str) -> None:
    """Key set, shapes and dtypes against the config, before any loading: MismatchError names each problem."""
    expected = W.expected_shapes(cfg)
    native = {canonical_to_native(k): (k, s) for k, s in expected.items()}
    problems = []
    for name in native:
        if name not in tensors:
            k, s = native[name]
            problems.append(f"missing parameter {name!r} (expected shape {s}, float32)")
    for name in tensors:
        if name not in native:
            problems.append(f"unexpected parameter {name!r} (shape {tuple(tensors[name].shape)}, {tensors[name].dtype})")
    for name, (k, shape) in native.items():
        if name not in tensors:
            continue
        a = tensors[name]
        if tuple(a.shape) != shape:
            problems.append(f"parameter {name!r}: expected shape {shape}, got {tuple(a.shape)}")
        if a.dtype != W.CANONICAL_DTYPE:
            problems.append(f"parameter {name!r}: expected dtype float32, got {a.dtype}")
        elif not np.all(np.isfinite(a)):
            problems.append(f"parameter {name!r}: {int(a.size - np.count_nonzero(np.isfinite(a)))} non-finite value(s)")
    if problems:
        raise W.MismatchError(source, problems)


def load_ckpt(path: str | os.PathLike, cfg: ViTConfig | None = None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a checkpoint strictly: (config, canonical float32 state dict).

    `cfg` given: the file must hold exactly that model's parameters (and, if it records a config, the
    same architecture). `cfg` None: the config recorded in the file is used.
    """
    path = Path(path)
    tensors, records = read_ckpt(path)
    file_cfg = None
    if CONFIG_KEY in records:
        try:
            file_cfg = ViTConfig.from_json(records[CONFIG_KEY])
        except ConfigError as e:
            raise W.InvalidFileError(f"{path}: invalid {CONFIG_KEY!r} record: {e}") from None
    if cfg is None:
        if file_cfg is None:
            raise W.InvalidFileError(f"{path}: no {CONFIG_KEY!r} record in the checkpoint; pass the config explicitly")
        cfg = file_cfg
    elif file_cfg is not None and W.expected_shapes(file_cfg) != W.expected_shapes(cfg):
        raise W.MismatchError(str(path), [f"checkpoint was written for config {file_cfg.name!r}, whose parameters "
                                          f"differ from those of {cfg.name!r}"])
    check_ckpt_tensors(cfg, tensors, str(path))
    state = {native_to_canonical(k): tensors[canonical_to_native(k)] for k in W.expected_shapes(cfg)}
    return cfg, state


def load_into(model, state: Mapping[str, np.ndarray], source: str) -> None:
    """Put a state dict checked by `load_ckpt` into a float32 model via load_param_into_net(strict_load=True).

    Both of its not-loaded lists must be empty; the key/shape/dtype checks already ran in `load_ckpt`.
    """
    path = source
    check_ckpt_tensors(model.config, state, source)
    param_dict = {canonical_to_native(k): ms.Parameter(Tensor(v), name=canonical_to_native(k)) for k, v in state.items()}
    for p in model.get_parameters():
        if p.dtype != ms.float32:
            raise W.MismatchError(str(path), [f"parameter {p.name!r} of the model is {p.dtype}; load into a float32 "
                                              f"model, then convert"])
    not_loaded, ckpt_not_loaded = ms.load_param_into_net(model, param_dict, strict_load=True)
    if not_loaded or ckpt_not_loaded:
        raise W.MismatchError(str(path), [f"model parameter {n!r} not loaded" for n in not_loaded]
                              + [f"checkpoint parameter {n!r} not used" for n in ckpt_not_loaded])


def safetensors_to_ckpt(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Canonical safetensors file -> .ckpt (bit-exact)."""
    cfg, state = W.load(src)
    return save_ckpt(cfg, state, dst)


def ckpt_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike, cfg: ViTConfig | None = None) -> Path:
    """.ckpt -> canonical safetensors file (bit-exact)."""
    cfg, state = load_ckpt(src, cfg)
    return W.save(dst, cfg, state)


__all__ = ["to_canonical", "save_ckpt", "read_ckpt", "load_ckpt", "load_into", "check_ckpt_tensors",
           "safetensors_to_ckpt", "ckpt_to_safetensors", "canonical_to_native", "native_to_canonical"]
