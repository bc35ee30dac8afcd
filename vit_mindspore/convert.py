"""The native weight file of the MindSpore backend, `.ckpt`, lossless and strict (canonical dicts are model.py's).

The file is what `mindspore.save_checkpoint` writes, read and written as data by shared.ms_ckpt (the one
place of the format: its layout, records and checks are described there), so `vit-suite convert` needs no MindSpore:
  save_ckpt(cfg, state, path)   every canonical tensor as float32, then the vit_config and vit_suite_digest records
  read_ckpt(path)               (tensors, string records), the digest verified
  load_ckpt(path, cfg=None)     (config, canonical state), keys, shapes and dtypes checked
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from shared.config import ViTConfig
from shared.ms_ckpt import CONFIG_KEY, DIGEST_KEY, FORMAT_KEY, load_suite_ckpt, read_suite_ckpt, save_suite_ckpt


def save_ckpt(cfg: ViTConfig, state: Mapping[str, np.ndarray], path: str | os.PathLike,
              validate: bool = True) -> Path:
    """Write a canonical state dict as a MindSpore checkpoint, atomically. Returns the path written.

    `validate=False` writes whatever it is given (tests use it to build deliberately wrong files).
    """
    return save_suite_ckpt(cfg, state, path, validate=validate)


def read_ckpt(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a checkpoint and verify its digest: (tensors in file order, string records).

    InvalidFileError for a missing, unparsable, truncated or altered file.
    """
    return read_suite_ckpt(path)


def load_ckpt(path: str | os.PathLike, cfg: ViTConfig | None = None) -> tuple[ViTConfig, dict[str, np.ndarray]]:
    """Read a checkpoint strictly: (config, canonical float32 state dict).

    `cfg` given: the file must hold exactly that model's parameters (and, if it records a config, the
    same architecture). `cfg` None: the config recorded in the file is used.
    """
    return load_suite_ckpt(path, cfg)


__all__ = ["save_ckpt", "read_ckpt", "load_ckpt", "CONFIG_KEY", "DIGEST_KEY", "FORMAT_KEY"]
