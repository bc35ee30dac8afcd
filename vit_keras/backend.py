"""`KerasBackend`: the shared Backend interface over vit_keras (any Keras 3 backend: tensorflow, torch).

The Keras backend is chosen by the environment (KERAS_BACKEND), never here. Keras is imported lazily,
so importing this module does not import TensorFlow.

Also a small entry point that runs one model in a process of its own (used to check the torch
Keras backend against the TensorFlow one):

    KERAS_BACKEND=torch python -m vit_keras.backend --weights W.safetensors --input X.npy --output Y.npz
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from shared.backend import Backend, BackendError
from shared.config import ViTConfig
from shared.weights import InvalidFileError


def _keras():
    import keras

    return keras


class KerasBackend(Backend):
    name = "keras"
    requires = ("keras",)
    dtypes = ("float32", "bfloat16", "float16")
    native_suffixes = (".keras", ".weights.h5")

    def __init__(self, mode: str = "graph"):
        """mode: "eager", "graph" (tf.function on TensorFlow) or "jit" (XLA); torch always runs eagerly."""
        if mode not in ("eager", "graph", "jit"):
            raise BackendError(f"mode must be eager, graph or jit, got {mode!r}")
        self.mode = mode

    # ------------------------------------------------------------------ build
    def build(self, cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *,
              dtype: str = "float32", seed: int = 0, data_format: str = "channels_last") -> Any:
        self.check_dtype(dtype)
        from .convert import from_canonical

        return from_canonical(cfg, state, dtype=dtype, seed=seed, data_format=data_format)

    def export(self, model) -> dict[str, np.ndarray]:
        from .convert import export_canonical

        return export_canonical(model)

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
        from shared.reference import check_images

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
        from .convert import export_canonical, from_canonical, load_keras, load_weights_h5
        from .model import POLICIES

        p = str(path)
        if p.endswith(".weights.h5"):
            if cfg is None:
                raise BackendError(f"{path}: a .weights.h5 file holds no config: pass the ViTConfig")
            return load_weights_h5(path, cfg, dtype=dtype)
        if p.endswith(".keras"):
            model = load_keras(path, expect=cfg)
            if model.dtype_policy.name != POLICIES[dtype]:  # same weights, other compute precision
                model = from_canonical(model.cfg, export_canonical(model), dtype=dtype, data_format=model.data_format,
                                       source=p)
            return model
        raise InvalidFileError(f"{path}: not a Keras native file (expected a suffix in {self.native_suffixes})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vit_keras.backend", description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="canonical .safetensors, .keras, or .weights.h5 (with --config)")
    ap.add_argument("--config", help="ViTConfig JSON file (needed for .weights.h5)")
    ap.add_argument("--input", required=True, help="NCHW float32 .npy")
    ap.add_argument("--output", required=True, help=".npz with every stage")
    ap.add_argument("--dtype", default="float32", choices=KerasBackend.dtypes)
    ap.add_argument("--mode", default="graph", choices=("eager", "graph", "jit"))
    a = ap.parse_args(argv)
    be = KerasBackend(mode=a.mode)
    cfg = ViTConfig.from_json(Path(a.config).read_text()) if a.config else None
    if a.weights.endswith(KerasBackend.native_suffixes):
        model = be.load_native(a.weights, cfg, dtype=a.dtype)
    else:
        model = be.load_file(a.weights, dtype=a.dtype)
    stages = be.forward(model, np.load(a.input))
    np.savez(a.output, **stages)
    print(json.dumps({"keras_backend": _keras().backend.backend(), "config": model.cfg.name, "dtype": a.dtype,
                      "stages": len(stages)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
