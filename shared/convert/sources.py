"""Proof against the source: the library a checkpoint came from, run on the check's images.

The float64 reference of a converted file shares every mistake the conversion made (a wrong pooling, a table read
on the wrong grid), so `check` passing proves only that the backends agree with that file. What proves the import
is the source library's own output: each runner here builds the source model with that library's own code from
the source file (not from the converted config) and returns its final output, which `check --against SRC` and
`convert --verify` compare with the reference of the converted file.

    timm (state dicts)   timm.create_model(ARCH) + load_state_dict(strict=True); ARCH is the timm architecture the
                         conversion named (--preset vit_base_patch16_224, or timm's config.json); no other guess
    hf (directories)     transformers' own ViTForImageClassification / ViTModel, from_pretrained(local_files_only)

Runners need torch and their library; the tool runs them in a child process (`shared.cli.worker source`).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import ViTConfig
from ..errors import MissingFactsError, UsageError
from .formats import detect_format

#: source format -> the library whose own code defines it (and whose absence means "not verified")
SOURCE_LIBRARIES: dict[str, str] = {"timm": "timm", "torch": "timm", "hf": "transformers"}


def source_library(fmt: str) -> str | None:
    return SOURCE_LIBRARIES.get(fmt)


def library_available(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def resolve_source(src: str | os.PathLike, fmt: str | None = None) -> tuple[str, str]:
    """(format, library) of a source to prove a conversion against; a format no library defines is bad usage."""
    fmt = fmt or detect_format(str(src))
    library = source_library(fmt)
    if library is None:
        known = ", ".join(sorted(SOURCE_LIBRARIES))
        raise UsageError(f"--against {src}: a {fmt!r} file has no source library to prove it against "
                         f"(sources: {known})")
    return fmt, library


def _torch_forward(model, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model.eval().float()(torch.from_numpy(np.ascontiguousarray(images, np.float32)))
    return out


def timm_output(src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """timm's VisionTransformer of the architecture the conversion named, loaded strictly from the source file
    (timm's own checkpoint filter resamples its position table to the converted image size)."""
    import timm
    import torch
    from timm.models.vision_transformer import checkpoint_filter_fn

    from .timm import read_checkpoint, strip_prefixes

    if not timm.is_model(cfg.name):
        raise MissingFactsError(f"{src}: the file does not name a timm architecture and the converted config's "
                                f"name {cfg.name!r} is not one: convert with --preset NAME, a timm model name "
                                f"(e.g. vit_base_patch16_224), to prove it against timm")
    state = {k: torch.from_numpy(np.array(v)) for k, v in strip_prefixes(read_checkpoint(src)).items()}
    model = timm.create_model(cfg.name, pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                              img_size=tuple(cfg.image_size))
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    return _torch_forward(model, images).numpy()


def hf_output(src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """transformers' own model from the directory (config.json + weights), offline: logits, or for a model
    without a classifier the final-norm class token (the canonical pre-logits features)."""
    import torch
    import transformers

    path = Path(src)
    directory = path if path.is_dir() else path.parent
    hf_cfg = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    heads = [a for a in (hf_cfg.architectures or []) if a.endswith("ForImageClassification")]
    cls = transformers.ViTForImageClassification if heads else transformers.ViTModel
    kwargs = {} if heads else {"add_pooling_layer": False}
    model = cls.from_pretrained(directory, local_files_only=True, **kwargs)
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    interpolate = tuple(images.shape[2:]) != (hf_cfg.image_size,) * 2
    with torch.no_grad():
        out = model.eval().float()(pixel_values=x, interpolate_pos_encoding=interpolate)
    if heads:
        return out.logits.numpy()
    return out.last_hidden_state[:, 0].numpy()


RUNNERS: dict[str, Callable[[str, np.ndarray, ViTConfig], np.ndarray]] = {
    "timm": timm_output, "torch": timm_output, "hf": hf_output}


def source_output(fmt: str, src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """The source library's own final output on `images` (NCHW float32), as a float32 array."""
    return np.asarray(RUNNERS[fmt](src, images, cfg), np.float32)
