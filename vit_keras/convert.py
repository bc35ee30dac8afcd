"""Canonical (timm-layout float32 NumPy) <-> Keras weights, and the native `.keras` / `.weights.h5` files.

Layout: Dense kernel = torch weight transposed (in, out); conv kernel HWIO = weight.transpose(2, 3, 1, 0);
LayerNorm gamma/beta = weight/bias; cls_token and pos_embed as they are. Both directions are pure
transposes, so a float32 round trip is bit-exact. Loading is strict: the canonical dict is validated
first (shared.weights.validate_state), every model variable must be assigned, shapes are checked.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import json
from pathlib import Path
from typing import Mapping

import numpy as np

import keras

from shared.config import ViTConfig
from shared.init import init_weights
from shared.weights import InvalidFileError, MismatchError, atomic_write, validate_state

from .model import VisionTransformer, build_model


def to_native(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "conv":  # (D, C, P, P) -> (P, P, C, D)
        return np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)))
    if kind == "dense":  # (out, in) -> (in, out)
        return np.ascontiguousarray(np.transpose(value))
    return np.asarray(value)


def to_canonical(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "conv":  # (P, P, C, D) -> (D, C, P, P)
        return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))
    if kind == "dense":
        return np.ascontiguousarray(np.transpose(value))
    return np.ascontiguousarray(value)


def load_canonical(model: VisionTransformer, state: Mapping[str, np.ndarray], source: str = "<state dict>") -> None:
    """Assign a canonical state dict to every variable of `model` (strict)."""
    cfg = model.cfg
    validate_state(cfg, state, source=source)
    mapping = model.canonical_variables()
    problems = []
    unassigned = [k for k in mapping if k not in state]
    problems += [f"model variable for key {k!r} has no value in the state dict" for k in unassigned]
    problems += [f"unexpected key {k!r}: the model has no variable for it" for k in state if k not in mapping]
    values = {}
    for key, (var, kind) in mapping.items():
        if key not in state:
            continue
        native = to_native(kind, np.asarray(state[key], np.float32))
        if tuple(native.shape) != tuple(var.shape):
            problems.append(f"key {key!r}: canonical shape {tuple(np.shape(state[key]))} gives Keras shape "
                            f"{tuple(native.shape)}, variable {var.path!r} has {tuple(var.shape)}")
            continue
        values[key] = native
    if problems:
        raise MismatchError(source, problems)
    # every variable of the model must be covered by the mapping (nothing left at its initial value)
    mapped = {id(var) for var, _ in mapping.values()}
    stray = [v.path for v in model.weights if id(v) not in mapped and v.trainable]
    if stray:
        raise MismatchError(source, [f"model variable {p!r} has no canonical key" for p in stray])
    for key, (var, _) in mapping.items():
        var.assign(values[key])  # Keras casts to the variable dtype (bfloat16 for a pure "bfloat16" policy)


def export_canonical(model: VisionTransformer) -> dict[str, np.ndarray]:
    """The model's canonical float32 state dict (bit-exact for float32 variables)."""
    out = {}
    for key, (var, kind) in model.canonical_variables().items():
        out[key] = to_canonical(kind, np.asarray(keras.ops.convert_to_numpy(var.value)).astype(np.float32))
    validate_state(model.cfg, out, source="exported Keras model")
    return out


def from_canonical(cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *, dtype: str = "float32",
                   data_format: str = "channels_last", seed: int = 0, source: str = "<state dict>") -> VisionTransformer:
    model = build_model(cfg, dtype=dtype, data_format=data_format)
    load_canonical(model, init_weights(cfg, seed) if state is None else state, source=source)
    return model


# ------------------------------------------------------------------ native files
def _check_suffix(path: Path, suffix: str) -> None:
    if not path.name.endswith(suffix):
        raise ValueError(f"{path}: Keras needs the file name to end with {suffix!r}")


def _atomic_keras_write(path: Path, suffix: str, write) -> Path:
    """Keras insists on the suffix: write inside a temporary directory beside `path`, then rename."""

    def write_fn(tmp: str) -> None:
        d = tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            inner = os.path.join(d, "model" + suffix)
            write(inner)
            os.replace(inner, tmp)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    return atomic_write(path, write_fn)


def save_keras(model: VisionTransformer, path) -> Path:
    """Whole model (architecture + config + weights) as a `.keras` zip, atomically."""
    path = Path(path)
    _check_suffix(path, ".keras")
    return _atomic_keras_write(path, ".keras", lambda p: model.save(p))


def save_weights_h5(model: VisionTransformer, path) -> Path:
    path = Path(path)
    _check_suffix(path, ".weights.h5")
    return _atomic_keras_write(path, ".weights.h5", lambda p: model.save_weights(p))


#: the only non-Keras classes a vit_keras `.keras` file may name
ALLOWED_CLASSES = frozenset(f"vit_keras>{n}" for n in
                            ("VisionTransformer", "PatchEmbed", "Attention", "Mlp", "Block", "DropPath"))


def _scan_keras_config(path: Path) -> None:
    """Refuse a `.keras` file whose config holds a Lambda layer or a class not registered by vit_keras."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as e:
        raise InvalidFileError(f"{path}: not a readable .keras file ({e})") from None
    bad = []

    def walk(node):
        if isinstance(node, dict):
            if "class_name" in node and "config" in node:
                cls, module = node.get("class_name"), str(node.get("module") or "")
                reg = node.get("registered_name")
                if cls == "Lambda" or (isinstance(reg, str) and reg.endswith("Lambda")):
                    bad.append(f"a Lambda layer ({node.get('config', {}).get('name', '?')!r}): arbitrary code")
                elif reg is not None and reg not in ALLOWED_CLASSES:
                    bad.append(f"unknown class {reg!r} (module {module!r})")
                elif reg is None and not (module == "keras" or module.startswith("keras.")):
                    bad.append(f"class {cls!r} from module {module!r} is not a Keras class")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    if bad:
        raise InvalidFileError(f"{path}: refusing to load: " + "; ".join(bad))


def load_keras(path, *, expect: ViTConfig | None = None) -> VisionTransformer:
    """Load a `.keras` file in safe mode; refuse Lambda layers and unknown classes with the file named."""
    path = Path(path)
    if not path.is_file():
        raise InvalidFileError(f"{path}: no such file")
    _scan_keras_config(path)
    try:
        model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as e:  # Keras raises ValueError/TypeError for unsafe or unknown content
        raise InvalidFileError(f"{path}: cannot be loaded safely as a vit_keras model: {type(e).__name__}: {e}") from None
    if not isinstance(model, VisionTransformer):
        raise InvalidFileError(f"{path}: holds a {type(model).__name__}, not a vit_keras VisionTransformer")
    if expect is not None and model.cfg != expect:
        raise MismatchError(str(path), [f"file config {model.cfg.name!r} differs from the expected config "
                                        f"{expect.name!r}: {model.cfg.to_dict()} != {expect.to_dict()}"])
    return model


def load_weights_h5(path, cfg: ViTConfig, *, dtype: str = "float32",
                    data_format: str = "channels_last") -> VisionTransformer:
    """`.weights.h5` holds no config: build from `cfg`, then load strictly (every variable, every shape)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidFileError(f"{path}: no such file")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            stored = {}
            f.visititems(lambda name, obj: stored.__setitem__(name, tuple(obj.shape))
                         if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise InvalidFileError(f"{path}: not an HDF5 weights file ({e})") from None
    model = build_model(cfg, dtype=dtype, data_format=data_format)
    n_vars = len(model.weights)
    if len(stored) != n_vars:
        raise MismatchError(str(path), [f"file holds {len(stored)} arrays, model {cfg.name!r} has {n_vars} variables"])
    try:
        model.load_weights(str(path))
    except Exception as e:
        raise MismatchError(str(path), [f"weights do not fit config {cfg.name!r}: {type(e).__name__}: {e}"]) from None
    return model
