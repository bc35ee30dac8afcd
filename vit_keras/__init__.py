"""Keras 3 backend of the vit-suite (keras.ops only: runs on KERAS_BACKEND=tensorflow, =jax and =torch): the ViT
(`VisionTransformer`, `build_model`), canonical weights in and out (`load_canonical`, `to_canonical`) and
`KerasBackend`, the suite's interface to it.

Names are imported on first use, the same way in all three backend packages; here that also keeps
`import vit_keras` from importing Keras (and so TensorFlow, which must not precede MindSpore in a process).
"""
from __future__ import annotations

_EXPORTS = {
    "DropPath": "layers", "PatchEmbed": "layers", "Attention": "layers", "Mlp": "layers", "Block": "layers",
    "VisionTransformer": "model", "build_model": "model",
    "load_canonical": "model", "to_canonical": "model",
    "KerasBackend": "backend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
