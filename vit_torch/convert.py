"""The native weight files of the torch backend (.pt/.pth, .safetensors); canonical dicts are model.py's.

Native files are plain float32 state dicts with the canonical key names (a bfloat16/float16 model
is written upcast, which is exact). `.safetensors` files also carry the config in their metadata
(`vit_config`), so they load without one. `.pt`/`.pth` are read ONLY with
`torch.load(weights_only=True)`: a pickle that references anything but tensors (e.g. code run by
`__reduce__`) is refused with InvalidFileError; there is no fallback to full unpickling.
Every write is atomic (`shared.fileio.atomic_write`).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from shared.config import ViTConfig
from shared.errors import InvalidFileError, MismatchError
from shared.safeio import check_zip
from shared.fileio import atomic_write
from shared.weights import (FORMAT_NAME, FORMAT_VERSION, config_from_metadata, expected_shapes,
                            read_safetensors_header, validate_state)

PT_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"


# --------------------------------------------------------------- native files
def save_state_dict(cfg: ViTConfig, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a float32 torch state dict to `.safetensors` (config in metadata) or `.pt`/`.pth`, atomically."""
    path = Path(path)
    tensors = {k: state[k].detach().to("cpu", torch.float32).contiguous().clone() for k in expected_shapes(cfg)}
    validate_state(cfg, tensors, str(path))
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "vit_config": cfg.to_json()}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    if suffix in PT_SUFFIXES:
        return atomic_write(path, lambda tmp: torch.save(tensors, tmp))
    raise InvalidFileError(f"{path}: unknown native suffix {path.suffix!r}; use .pt, .pth or .safetensors")


def load_state_dict_file(path: str | os.PathLike, cfg: ViTConfig | None = None) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Read a native file strictly -> (config, float32 tensors). `.pt`/`.pth` need `cfg` (they carry none)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        header = read_safetensors_header(path)  # refuses truncated files / lying headers before reading
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        meta = header.get("__metadata__") or {}
        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InvalidFileError(f"{path}: unreadable safetensors file: {e}") from None
        if "vit_config" in meta:
            file_cfg = config_from_metadata(meta, str(path))
            if cfg is not None and file_cfg != cfg:
                diff = [f"{k}: file {a!r} != requested {b!r}" for k, a, b in
                        ((k, file_cfg.to_dict()[k], cfg.to_dict()[k]) for k in cfg.to_dict()) if a != b and k != "notes"]
                raise MismatchError(str(path), [f"config in the file differs from the requested one ({'; '.join(diff)})"])
            cfg = cfg or file_cfg
        elif cfg is None:
            raise InvalidFileError(f"{path}: no 'vit_config' in the metadata; pass the config (e.g. --preset)")
    elif suffix in PT_SUFFIXES:
        if cfg is None:
            raise InvalidFileError(f"{path}: a {suffix} state dict carries no config; pass the config (e.g. --preset)")
        if zipfile.is_zipfile(path):
            check_zip(path, "PyTorch checkpoint")  # a zip bomb is refused before torch expands anything
        try:
            # weights_only=True: only tensors and plain containers are unpickled; never a full-pickle fallback.
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for code/foreign globals, RuntimeError for non-zip garbage
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InvalidFileError(
                f"{path}: refused to load: not a plain tensor state dict readable with torch.load(weights_only=True) "
                f"({type(e).__name__}: {first}). Pickled objects or code are never executed; "
                f"re-save the weights as a plain state dict or as .safetensors") from None
        if not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors):
            raise InvalidFileError(f"{path}: expected a state dict (str -> tensor), got {type(tensors).__name__}")
        sparse = [k for k, v in tensors.items() if isinstance(v, torch.Tensor)
                  and (v.layout != torch.strided or v.is_quantized)]
        if sparse:
            raise MismatchError(str(path), [f"key {k!r}: expected a dense float32 tensor, got layout "
                                            f"{tensors[k].layout}, dtype {tensors[k].dtype}" for k in sparse])
    else:
        raise InvalidFileError(f"{path}: unknown native suffix {path.suffix!r}; use .pt, .pth or .safetensors")
    validate_state(cfg, tensors, str(path))
    return cfg, dict(tensors)
