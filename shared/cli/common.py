"""What every `vit-suite` command shares: the console, argument parsing helpers, and where a model comes from."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .. import weights as W
from ..backend import available_backends, backend_names
from ..config import ViTConfig
from ..errors import InvalidFileError, UsageError
from ..presets import DEFAULT_PRESET, get_preset


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, width=None if sys.stdout.isatty() else 130)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'224x224', '60x100' or '224' -> (H, W); None stays None."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise UsageError(f"--image-size must be HxW (e.g. 224x224 or 60x100), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise UsageError(f"--image-size must be HxW with positive sizes, got {text!r}")
    return (parts[0], parts[1])


def load_npy(path: str, what: str) -> np.ndarray:
    """An NCHW float array from a .npy file, never unpickled."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p}: no such file")
    try:
        arr = np.load(p, allow_pickle=False)  # never unpickle
    except ValueError as e:
        raise InvalidFileError(f"{p}: not a plain .npy array ({e})") from None
    if arr.ndim != 4:
        raise UsageError(f"{what} {p}: expected NCHW (4-D) float array, got shape {arr.shape}")
    return arr.astype(np.float32)


def write_npz(path: str | Path, arrays: dict, meta: dict, as_float32: bool = True) -> None:
    """Arrays (cast to float32 unless `as_float32` is False) and a JSON `__meta__` entry, written atomically."""
    arrays = {k: np.asarray(v, dtype=np.float32 if as_float32 else None) for k, v in arrays.items()}
    arrays["__meta__"] = np.array(json.dumps(meta))
    W.atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), **arrays))


def read_npz(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of a file written by `write_npz`."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("__")}
        meta = json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}
    return arrays, meta


def resolve_model(weights: str | None, preset: str | None, seed: int = 0):
    """(cfg, state, source, images, labels) from a canonical file, a preset's seeded weights, or the default.

    images/labels are the default model's held-out set, None otherwise.
    """
    from ..init import init_weights

    if weights:
        cfg, state = W.load(weights)
        return cfg, state, weights, None, None
    if preset:
        cfg = get_preset(preset)
        return cfg, init_weights(cfg, seed), f"preset {cfg.name} (seed {seed})", None, None
    return default_model()


def default_model() -> tuple[ViTConfig, dict, str, np.ndarray | None, np.ndarray | None]:
    """The built-in default: the shipped trained digits model with real digits, else a seeded tiny model."""
    from ..init import init_weights

    try:
        from ..training.data import default_model as shipped

        found = shipped()
    except ImportError:  # scikit-learn or Pillow missing: the data pipeline cannot rebuild the held-out set
        found = None
    if found is not None:
        return found
    cfg = get_preset(DEFAULT_PRESET)
    return cfg, init_weights(cfg, 0), f"preset {cfg.name} (seed 0)", None, None


def selected_backends(arg: str | None) -> list[str]:
    """--backends (any registered name, variants included) or every installed primary backend."""
    wanted = arg.split(",") if arg else available_backends()
    unknown = [b for b in wanted if b not in backend_names()]
    if unknown:
        raise UsageError(f"unknown backend(s) {unknown}; registered: {backend_names()}")
    if not wanted:
        raise UsageError("no backend is installed: pip install 'vit-suite[all]'")
    return wanted
