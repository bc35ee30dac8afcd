"""MindSpore backend of the vit-suite: the ViT (`VisionTransformer`, `build_model`), canonical weights in and out
(`load_canonical`, `to_canonical`) and `MindSporeBackend`, the suite's interface to it.

Names are imported on first use, the same way in all three backend packages.

Import guard: TensorFlow and MindSpore both register the same LLVM command-line option, so
importing MindSpore after TensorFlow in one process aborts the whole process (no Python
exception, just a crash). We refuse early with a clear ImportError instead. Import MindSpore
first (the test suite does so in conformance_tests/conftest.py), or run each backend in its own
process as `vit-suite check` does.
"""
from __future__ import annotations

import sys

if "tensorflow" in sys.modules and "mindspore" not in sys.modules:
    raise ImportError(
        "vit_mindspore: TensorFlow is already imported in this process; importing MindSpore after it "
        "aborts the process (both register the same LLVM command-line option). Import mindspore before "
        "tensorflow, or run each backend in its own process (`vit-suite check` does this).")

_EXPORTS = {
    "DropPath": "layers", "PatchEmbed": "layers", "Attention": "layers", "Mlp": "layers", "Block": "layers",
    "VisionTransformer": "model", "build_model": "model",
    "load_canonical": "model", "to_canonical": "model",
    "MindSporeBackend": "backend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
