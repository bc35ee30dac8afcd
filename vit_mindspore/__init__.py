"""MindSpore backend of the ViT reference suite (see vit_mindspore.backend.MindSporeBackend).

Import guard: TensorFlow and MindSpore both register the same LLVM command-line option, so
importing MindSpore after TensorFlow in one process aborts the whole process (no Python
exception, just a crash). We refuse early with a clear ImportError instead. Import MindSpore
first (the test suite does so in conformance_tests/conftest.py), or run each backend in its own
process as `vit-suite check` does.
"""
import sys

if "tensorflow" in sys.modules and "mindspore" not in sys.modules:
    raise ImportError(
        "vit_mindspore: TensorFlow is already imported in this process; importing MindSpore after it "
        "aborts the process (both register the same LLVM command-line option). Import mindspore before "
        "tensorflow, or run each backend in its own process (`vit-suite check` does this).")

__all__ = ["MindSporeBackend"]


def __getattr__(name):
    if name == "MindSporeBackend":
        from .backend import MindSporeBackend

        return MindSporeBackend
    raise AttributeError(name)
