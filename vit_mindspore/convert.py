"""The native weight file of the MindSpore backend, `.ckpt`, lossless and strict (canonical dicts are model.py's).

File layout: every canonical tensor as float32 under its canonical name, then two string
records written by `append_dict` (after the tensors, so a file cut short loses them):
  vit_config        the full ViTConfig as JSON
  vit_suite_digest  sha256 over (name, dtype, shape, bytes) of every tensor in file order
Loading checks, before anything reaches a network: that the file parses, that the digest
record exists and matches (a truncated or bit-flipped file is an InvalidFileError), and then the
key set, every shape and every dtype against the config (shared.weights.validate_state:
MismatchError naming file and key). Only then model.load_canonical puts the values into a model.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

import mindspore as ms
from mindspore import Tensor

from shared import weights as W
from shared.config import ViTConfig
from shared.errors import ConfigError, InvalidFileError, MismatchError
from shared.fileio import atomic_write, work_dir

CONFIG_KEY = "vit_config"
DIGEST_KEY = "vit_suite_digest"
FORMAT_KEY = "vit_suite_format"


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
        # save_checkpoint appends ".ckpt" to a name lacking it (and writes NAME.tmp beside it first): both stay in the
        # writer's staging folder
        target = tmp if tmp.endswith(".ckpt") else tmp + ".ckpt"
        ms.save_checkpoint([{"name": k, "data": Tensor(a)} for k, a in arrays], target, append_dict=records)
        if target != tmp:
            os.replace(target, tmp)

    return atomic_write(path, write)


def read_ckpt(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a checkpoint and verify its digest: (tensors in file order, string records).

    InvalidFileError for a missing, unparsable, truncated or altered file.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InvalidFileError(f"{path}: empty file, not a MindSpore checkpoint")
    try:
        if path.suffix == ".ckpt":
            raw = ms.load_checkpoint(str(path))
        else:  # load_checkpoint insists on the suffix: read through a link that has it
            with work_dir("ckpt") as tmp:
                link = os.path.join(tmp, "model.ckpt")
                try:
                    os.symlink(path.resolve(), link)
                except OSError:
                    shutil.copyfile(path, link)
                raw = ms.load_checkpoint(link)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError for unparsable protobuf
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidFileError(f"{path}: not a readable MindSpore checkpoint (truncated or corrupted): {msg}") from None
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
        raise InvalidFileError(
            f"{path}: no {DIGEST_KEY!r} record: the file is truncated, or was not written by vit-suite; a "
            f"foreign ViT checkpoint (mindcv's, or any saved with mindspore.save_checkpoint) is read as format "
            f"'mindcv': --from mindcv --preset NAME")
    actual = _digest(list(tensors.items()))
    if actual != records[DIGEST_KEY]:
        raise InvalidFileError(f"{path}: tensor data does not match the file's digest (corrupted or altered file)")
    return tensors, records


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
            raise InvalidFileError(f"{path}: invalid {CONFIG_KEY!r} record: {e}") from None
    if cfg is None:
        if file_cfg is None:
            raise InvalidFileError(f"{path}: no {CONFIG_KEY!r} record in the checkpoint; pass the config explicitly")
        cfg = file_cfg
    elif file_cfg is not None and W.expected_shapes(file_cfg) != W.expected_shapes(cfg):
        raise MismatchError(str(path), [f"checkpoint was written for config {file_cfg.name!r}, whose parameters "
                                          f"differ from those of {cfg.name!r}"])
    W.validate_state(cfg, tensors, str(path))
    return cfg, {k: tensors[k] for k in W.expected_shapes(cfg)}


__all__ = ["save_ckpt", "read_ckpt", "load_ckpt"]
