"""Keras 3 Vision Transformer (keras.ops only: runs on KERAS_BACKEND=tensorflow and =torch).

Names are imported lazily so `import vit_keras` does not import Keras (and so TensorFlow):
TensorFlow imported before MindSpore aborts a process, and the backend is the caller's choice.
"""
from __future__ import annotations

_EXPORTS = {
    "PatchEmbed": "layers", "Attention": "layers", "Mlp": "layers", "Block": "layers", "DropPath": "layers",
    "VisionTransformer": "model", "build_model": "model",
    "from_canonical": "convert", "export_canonical": "convert", "load_canonical": "convert",
    "save_keras": "convert", "load_keras": "convert", "save_weights_h5": "convert", "load_weights_h5": "convert",
    "KerasBackend": "backend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vit_keras' has no attribute {name!r}")
