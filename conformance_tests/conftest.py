"""Suite-wide setup.

Import order is deliberate, not luck: TensorFlow imported before MindSpore aborts the
process (both register the same LLVM option), the other order works. The whole suite
runs in one process, so MindSpore (when installed) is imported here, before any test
module can import TensorFlow. `vit-suite check` instead runs each backend in its own process.
"""
import importlib.util
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if importlib.util.find_spec("mindspore") is not None:
    import mindspore  # noqa: F401  (must precede tensorflow, see above)
