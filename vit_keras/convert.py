"""The native weight files of the Keras backend: `.keras` (safe mode, classes checked) and `.weights.h5`, saved and
loaded by Keras from a model (any dtype policy or data format). `vit-suite convert` reads and writes the same files
as data, without Keras (shared.keras_file, the float32 channels_last model's bytes).

Canonical dicts (timm layout) go in and out of a model through model.py's `load_canonical` / `to_canonical`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


import keras

from shared.config import ViTConfig
from shared.errors import InvalidFileError, MismatchError
from shared.fileio import atomic_write, work_dir
from shared import keras_file

from .model import VisionTransformer, new_model, without_tensorflow


# ------------------------------------------------------------------ native files
def _check_suffix(path: Path, suffix: str) -> None:
    if not path.name.endswith(suffix):
        raise ValueError(f"{path}: Keras needs the file name to end with {suffix!r}")


def _write_weights_h5(model: VisionTransformer, path: str) -> None:
    """HDF5 can crash the process (SIGSEGV) when the disk fills up under it: the file is written in a work folder
    in the system temp folder and copied beside the destination by Python, so a full destination is an OSError
    (UnwritableError, exit 2), never a crash."""
    with work_dir("h5") as d:
        inner = os.path.join(d, "model.weights.h5")
        model.save_weights(inner)
        shutil.copyfile(inner, path)


def keras_save(model: "keras.Model", path) -> None:
    """Keras' own `model.save` of any Keras model; under Keras on JAX or torch without importing TensorFlow
    (`without_tensorflow`: Keras' serializer asked only whether a config value is a TensorFlow object). The file is
    the same, byte for byte (config.json and model.weights.h5; metadata.json holds the date)."""
    with without_tensorflow():
        model.save(path)


def save_keras(model: VisionTransformer, path) -> Path:
    """Whole model (architecture + config + weights) as a `.keras` zip, atomically."""
    path = Path(path)
    _check_suffix(path, ".keras")
    return atomic_write(path, lambda p: keras_save(model, p))  # Keras' temporary folders land in the staging folder


def save_weights_h5(model: VisionTransformer, path) -> Path:
    path = Path(path)
    _check_suffix(path, ".weights.h5")
    return atomic_write(path, lambda p: _write_weights_h5(model, p))


#: the only non-Keras classes a vit_keras `.keras` file may name: the ones vit_keras registers (one list, in
#: shared.keras_file, which reads these files as data)
ALLOWED_CLASSES = keras_file.ALLOWED_CLASSES


def _scan_keras_config(path: Path) -> None:
    """Refuse a `.keras` file whose config holds a Lambda layer or a class not registered by vit_keras, or whose
    ViTConfig is invalid or over the limits, before Keras builds anything (shared.keras_file)."""
    keras_file.read_keras_config(path)


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
    except Exception as e:  # noqa: BLE001 - h5py raises OSError, RuntimeError, KeyError... for a corrupt file
        raise InvalidFileError(f"{path}: not a readable HDF5 weights file ({type(e).__name__}: {e})") from None
    model = new_model(cfg, dtype=dtype, data_format=data_format)
    n_vars = len(model.weights)
    if len(stored) != n_vars:
        raise MismatchError(str(path), [f"file holds {len(stored)} arrays, model {cfg.name!r} has {n_vars} variables"])
    try:
        model.load_weights(str(path))
    except Exception as e:
        raise MismatchError(str(path), [f"weights do not fit config {cfg.name!r}: {type(e).__name__}: {e}"]) from None
    return model


# ------------------------------------------------------------------ deployed artifacts (Keras' own exporters)
#: Keras' `model.export` format -> the suffix of the file it writes
EXPORT_FORMATS = {"litert": ".tflite", "onnx": ".onnx", "openvino": ".xml"}


class _Stages(keras.Model):
    """The model with every named stage as an output, for Keras' exporters: a dict (its keys become the graph's
    output names) where the exporter keeps names, a tuple in `stage_names()` order where it does not (Keras' ONNX
    export on torch names its outputs after the ops that make them)."""

    def __init__(self, vit: VisionTransformer, as_tuple: bool, **kwargs):
        super().__init__(name="vit_stages", **kwargs)
        self.vit, self.as_tuple = vit, as_tuple
        self.built = True  # the wrapped model is built; this layer has no variables of its own

    def call(self, x):
        stages = self.vit.forward_stages(x, training=False)
        names = self.vit.cfg.stage_names()
        return tuple(stages[k] for k in names) if self.as_tuple else {k: stages[k] for k in names}


def export_artifact(model: VisionTransformer, path, fmt: str, batch: int | None = None,
                    image_size: tuple[int, int] | None = None) -> Path:
    """Keras' own `model.export(path, format=fmt)` of `model` with every named stage as a graph output, for NHWC
    float32 input at `image_size` (default: the model's; a learned table is resampled), `batch` images (None: a dynamic batch). Returns the written file (an
    OpenVINO IR writes `path` (.xml) and the .bin beside it). The outputs are named after the stages, except in an
    ONNX export (Keras exports ONNX through torch.onnx on the torch backend): there they come in stage_names() order.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"Keras export formats: {sorted(EXPORT_FORMATS)}, not {fmt!r}")
    path = Path(path)
    _check_suffix(path, EXPORT_FORMATS[fmt])
    cfg = model.cfg
    H, W = image_size or cfg.image_size
    if model.data_format != "channels_last":
        raise ValueError("export_artifact exports NHWC (channels_last) models")
    spec = keras.InputSpec(shape=(batch, H, W, cfg.in_chans), dtype="float32")
    _Stages(model, as_tuple=(fmt == "onnx")).export(str(path), format=fmt, verbose=False, input_signature=[spec])
    return path
