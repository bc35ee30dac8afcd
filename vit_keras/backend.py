"""`KerasBackend`: the suite's Backend interface over vit_keras, and its variant `KerasXLABackend`.

The Keras backend (tensorflow, torch) is chosen by the environment (KERAS_BACKEND), never here. Keras is imported
lazily, so importing this module does not import TensorFlow (which must not precede MindSpore in a process).

Forward modes: "eager", "graph" (tf.function on TensorFlow, the default) or "jit" (XLA); the torch Keras backend
always runs eagerly. The training hooks (shared.backend.Backend) run vit_keras.train (`keras.Model.fit`, the
backend's autodiff) on a model from `trainable`, in NCHW (`data_format="channels_first"`), so the shared
pipeline's arrays go in unchanged; the benchmark hooks run vit_keras.bench.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from shared.backend import Backend
from shared.config import ViTConfig
from shared.errors import BackendError, InvalidFileError, UnsupportedError
from shared.reference import check_images

MODES = ("eager", "graph", "jit")


def _keras():
    import keras

    return keras


class KerasBackend(Backend):
    name = "keras"
    requires = ("keras",)
    dtypes = ("float32", "bfloat16", "float16")
    native_suffixes = (".keras", ".weights.h5")
    train_module = "vit_keras.train"
    bench_module = "vit_keras.bench"
    #: forward mode (see the module docstring)
    mode: ClassVar[str] = "graph"

    def __init__(self, mode: str | None = None, data_format: str = "channels_last"):
        """mode: one of MODES (default: the class's); data_format: the layout of the models `build` makes."""
        mode = mode or type(self).mode
        if mode not in MODES:
            raise BackendError(f"mode must be eager, graph or jit, got {mode!r}")
        self.mode = mode
        self.data_format = data_format

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "keras_backend": _keras().backend.backend()}

    # ------------------------------------------------------------------ build
    def build(self, cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *,
              dtype: str = "float32", seed: int = 0) -> Any:
        self.check_dtype(dtype)
        from .model import build_model

        return build_model(cfg, state, dtype=dtype, seed=seed, data_format=self.data_format)

    def export(self, model) -> dict[str, np.ndarray]:
        from .model import to_canonical

        return to_canonical(model)

    # ---------------------------------------------------------------- forward
    def _stage_fn(self, model, shape: tuple[int, ...]):
        keras = _keras()
        cache = model.__dict__.setdefault("_vk_stage_fns", {})
        key = (shape, self.mode, keras.backend.backend())
        if key in cache:
            return cache[key]

        def run(x):
            return {k: keras.ops.cast(v, "float32") for k, v in model.forward_stages(x, training=False).items()}

        fn = run
        if keras.backend.backend() == "tensorflow" and self.mode != "eager":
            import tensorflow as tf

            fn = tf.function(run, jit_compile=(self.mode == "jit"), reduce_retracing=False)
        elif keras.backend.backend() == "torch":
            import torch

            def fn(x):  # noqa: F811
                with torch.no_grad():
                    return run(x)
        cache[key] = fn
        return fn

    def forward(self, model, images: np.ndarray) -> dict[str, np.ndarray]:
        keras = _keras()
        images = np.asarray(images, dtype=np.float32)
        check_images(model.cfg, images)
        x = images if model.data_format == "channels_first" else np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        out = self._stage_fn(model, x.shape)(keras.ops.convert_to_tensor(x))
        stages = {k: np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float32) for k, v in out.items()}
        return {k: stages[k] for k in model.cfg.stage_names()}

    # ------------------------------------------------------------ native files
    def save_native(self, model, path) -> Path:
        from .convert import save_keras, save_weights_h5

        p = str(path)
        if p.endswith(".weights.h5"):
            return save_weights_h5(model, path)
        if p.endswith(".keras"):
            return save_keras(model, path)
        raise BackendError(f"{path}: Keras native files end with {self.native_suffixes}")

    def load_native(self, path, cfg: ViTConfig | None = None, *, dtype: str = "float32") -> Any:
        self.check_dtype(dtype)
        from .convert import load_keras, load_weights_h5
        from .model import POLICIES, build_model, to_canonical

        p = str(path)
        if p.endswith(".weights.h5"):
            if cfg is None:
                raise BackendError(f"{path}: a .weights.h5 file holds no config: pass the ViTConfig")
            return load_weights_h5(path, cfg, dtype=dtype)
        if p.endswith(".keras"):
            model = load_keras(path, expect=cfg)
            if model.dtype_policy.name != POLICIES[dtype]:  # same weights, other compute precision
                model = build_model(model.cfg, to_canonical(model), dtype=dtype, data_format=model.data_format)
            return model
        raise InvalidFileError(f"{path}: not a Keras native file (expected a suffix in {self.native_suffixes})")

    # --------------------------------------------------------------- training
    def trainable(self, cfg, state, dtype="float32"):
        """NCHW (channels_first): the shared pipeline's arrays go in unchanged."""
        if dtype != "float32":
            raise UnsupportedError(f"backend {self.name!r} trains in float32, not {dtype!r}")
        from .model import build_model

        return build_model(cfg, state, data_format="channels_first")


class KerasXLABackend(KerasBackend):
    """XLA (`tf.function(jit_compile=True)`) forwards."""

    name = "keras-xla"
    mode = "jit"


__all__ = ["KerasBackend", "KerasXLABackend", "MODES"]
