"""The suite's Backend interface over vit_keras, one backend per Keras backend, each in a process of its own:

    keras        KerasBackend       Keras on TensorFlow (forward: tf.function graph; its variant keras-xla: XLA)
    keras-jax    KerasJaxBackend    Keras on JAX (forward: jax.jit, XLA)
    keras-torch  KerasTorchBackend  Keras on PyTorch (forward: eager)
    keras-openvino  KerasOpenVINOBackend  Keras on OpenVINO (inference only: forward eager, no training hooks)

and three deployment variants, the Keras model exported by Keras' own `model.export` (every named stage a graph
output, vit_keras.convert.export_artifact) and run by a runtime (shared.deploy.artifact), float32 only, no training
or benchmark hooks:

    litert             KerasLiteRTBackend      format="litert" (TensorFlow), run by ai_edge_litert's Interpreter
    keras-openvino-ir  KerasOpenVINOIRBackend  format="openvino" (TensorFlow), run by OpenVINO (f32 hint)
    keras-onnx         KerasONNXBackend        format="onnx" (torch: Keras exports ONNX through torch.onnx; on
                                               TensorFlow it needs tf2onnx, which does not install here), run by
                                               ONNX Runtime; a fixed batch per export, so one export per batch size

Keras reads KERAS_BACKEND once, when it is first imported: a backend sets it if Keras is not imported yet and
refuses, naming both, if this process already runs Keras on another backend (the tool's child processes get the
variable from the registry). Keras is imported lazily, so importing this module imports no framework
(TensorFlow must not precede MindSpore in a process).

Forward modes: "eager", "graph" (tf.function without AutoGraph, TensorFlow only: model.tf_function) and "jit" (XLA:
tf.function(jit_compile=True) on TensorFlow, jax.jit on JAX); the torch Keras backend runs eagerly. The training hooks (shared.backend.Backend) run vit_keras.train (`keras.Model.fit`, the
backend's autodiff) on a model from `trainable`, in NCHW (`data_format="channels_first"`), so the shared
pipeline's arrays go in unchanged; the benchmark hooks run vit_keras.bench.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from shared.backend import Backend
from shared.config import ViTConfig
from shared.errors import BackendError, InvalidFileError, UnsupportedError
from shared.reference import check_images

#: the forward modes each Keras backend offers
MODES = {"tensorflow": ("eager", "graph", "jit"), "jax": ("eager", "jit"), "torch": ("eager",), "openvino": ("eager",)}


#: optional modules that `import keras` imports whenever they are installed, for Keras features this tool never
#: uses: scikit-learn (keras.wrappers' estimators), matplotlib (keras.visualization's plots), IPython (the
#: notebook check of keras.saving's file editor) and, under another Keras backend, JAX (a monitoring shim in the
#: Orbax checkpoint callback): together 1 to 2 CPU s of a Keras child's start-up
KERAS_UNUSED_IMPORTS = ("sklearn", "matplotlib", "IPython", "jax")
#: modules a Keras backend imports at start for functions this tool never calls: in such a child process they are
#: imported on first use instead (SciPy's signal package, about 1 CPU s, for Keras-on-OpenVINO's stft windows; torch's
#: compiler, dynamo, 1.2 CPU s, of which Keras-on-torch uses `disable` at import and `reset` in `clear_session`: see
#: `_dynamo_disable`, `_dynamo_reset`)
KERAS_DEFERRED_IMPORTS = {"openvino": ("scipy.signal",), "torch": ("torch._dynamo",)}


class _Deferred(types.ModuleType):
    """The stand-in `_defer_import` puts in sys.modules: the first attribute it lacks imports the module whole
    (which then replaces it in sys.modules and in its parent) and comes from it."""

    def __getattr__(self, attr):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def _dynamo_disable(fn=None, recursive=True, **kwargs):
    """`torch._dynamo.disable` while dynamo is not imported. Keras-on-torch decorates two functions with it when it is
    imported. Dynamo's wrapper matters only to a frame dynamo compiles, and nothing compiles before dynamo is
    imported, so until then the function runs as it is; once something has imported dynamo (torch.compile, the
    ONNX exporter), each call goes through dynamo's own `disable`."""
    def decorate(f):
        disabled = []  # dynamo's own wrapper, made once dynamo is imported

        @functools.wraps(f)
        def call(*args, **kw):
            if not disabled:
                dynamo = sys.modules.get("torch._dynamo")
                if dynamo is None or isinstance(dynamo, _Deferred):
                    return f(*args, **kw)
                disabled.append(dynamo.disable(f, recursive=recursive, **kwargs))
            return disabled[0](*args, **kw)
        return call
    return decorate if fn is None else decorate(fn)


def _dynamo_reset() -> None:
    """`torch._dynamo.reset` while dynamo may not be imported: Keras' `clear_session` calls it on torch (a warm
    worker clears its session after each task), to drop what dynamo compiled and cached; until dynamo is imported
    there is nothing, and importing it for that would cost 1.2 CPU s."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None and not isinstance(dynamo, _Deferred):
        dynamo.reset()


#: what a stand-in serves itself, without importing its module
_DEFERRED_PROVIDES = {"torch._dynamo": {"disable": _dynamo_disable, "reset": _dynamo_reset}}


def _defer_import(name: str) -> None:
    """Put a stand-in for module `name` in sys.modules: `import name` succeeds without running the module, and the
    first attribute the stand-in lacks (not in _DEFERRED_PROVIDES) imports the module whole.
    (importlib's LazyLoader would not do: Python 3.11's import statement reads `__spec__`, which loads it.)"""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = _Deferred(name)
    stand_in.__spec__ = spec
    for attr, value in _DEFERRED_PROVIDES.get(name, {}).items():
        setattr(stand_in, attr, value)
    sys.modules[name] = stand_in
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, stand_in)


#: the most disk JAX's compile cache of the tool's children takes (a ViT forward's program is 0.1 to a few MB): JAX
#: then drops the least recently used programs, and with a bound it locks the directory (filelock), so children
#: running at once never read a program another is still writing
JAX_CACHE_BYTES = 512 << 20


def _jax_compile_cache() -> None:
    """In a tool's child on JAX: keep the programs XLA compiles in the suite's cache (shared/cache.py), so that a
    second run of the same model and batch loads its forward instead of compiling it (a Keras-on-JAX `check` child:
    3.8 -> 1.3 CPU s on the digits model, the same bits). A user's own JAX_COMPILATION_CACHE_DIR is left as it is."""
    from shared.cache import cache_dir

    if "JAX_COMPILATION_CACHE_DIR" in os.environ or importlib.util.find_spec("filelock") is None:
        return
    path = cache_dir("jax")
    if path is not None:
        os.environ.update(JAX_COMPILATION_CACHE_DIR=str(path), JAX_COMPILATION_CACHE_MAX_SIZE=str(JAX_CACHE_BYTES),
                          JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # (default 1 s: a tiny ViT's is less)


def _keras():
    """Keras, imported on first use. In a process the tool started for one job (VIT_SUITE_CHILD, set by
    shared.cli.worker's parents) with KERAS_UNUSED_IMPORTS hidden (each Keras import of them is guarded by an
    `except ImportError`), unless this process imported them already or Keras runs on that one (JAX). They are
    importable again as soon as Keras is: only Keras' unused features go without them, which is why a user's own
    process (vit_keras as a library) imports Keras whole. KERAS_DEFERRED_IMPORTS are imported on first use there."""
    if "keras" not in sys.modules and os.environ.get("VIT_SUITE_CHILD") == "1":
        running = os.environ.get("KERAS_BACKEND", "tensorflow")
        if running == "jax" and "jax" not in sys.modules:
            _jax_compile_cache()
        hidden = [m for m in KERAS_UNUSED_IMPORTS if m not in sys.modules and m != running]
        for m in KERAS_DEFERRED_IMPORTS.get(running, ()):
            if m not in sys.modules:
                _defer_import(m)
        sys.modules.update(dict.fromkeys(hidden))
        try:
            import keras  # noqa: F401
        finally:
            for m in hidden:
                if sys.modules.get(m, 0) is None:
                    del sys.modules[m]
    import keras

    return keras


def use_keras_backend(keras_backend: str, who: str, *, start: bool = True) -> None:
    """Make this process's Keras run on `keras_backend`: set KERAS_BACKEND before Keras is imported, or check it.
    start=False leaves Keras unimported when it is not yet (making a backend object starts no framework: the tool's
    parent process lists several Keras backends' modes)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = keras_backend
        if not start:
            return
    running = _keras().backend.backend()
    if running != keras_backend:
        raise BackendError(f"backend {who!r} needs Keras on {keras_backend}, but this process already runs Keras on "
                           f"{running} (Keras reads KERAS_BACKEND once per process): run it in a process of its "
                           f"own, as vit-suite does, or set KERAS_BACKEND={keras_backend} before anything imports keras")


class KerasBackend(Backend):
    name = "keras"
    requires = ("keras", "tensorflow")
    dtypes = ("float32", "bfloat16", "float16")
    native_suffixes = (".keras", ".weights.h5")
    train_module = "vit_keras.train"
    bench_module = "vit_keras.bench"
    #: the Keras backend this backend runs on
    keras_backend: ClassVar[str] = "tensorflow"
    #: forward mode (see the module docstring)
    mode: ClassVar[str] = "graph"

    def __init__(self, mode: str | None = None, data_format: str = "channels_last"):
        """mode: one of MODES[keras_backend] (default: the class's); data_format: the layout of the models `build`
        makes."""
        use_keras_backend(self.keras_backend, self.name, start=False)
        mode = mode or type(self).mode
        if mode not in MODES[self.keras_backend]:
            raise BackendError(f"Keras on {self.keras_backend} runs the modes {MODES[self.keras_backend]}, "
                               f"not {mode!r}")
        self.mode = mode
        self.data_format = data_format

    def versions(self) -> dict[str, str]:
        use_keras_backend(self.keras_backend, self.name)
        return {**super().versions(), "keras_backend": _keras().backend.backend()}

    # ------------------------------------------------------------------ build
    def build(self, cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *,
              dtype: str = "float32", seed: int = 0) -> Any:
        self.check_dtype(dtype)
        use_keras_backend(self.keras_backend, self.name)
        from .model import build_model

        return build_model(cfg, state, dtype=dtype, seed=seed, data_format=self.data_format)

    def export(self, model) -> dict[str, np.ndarray]:
        from .model import to_canonical

        return to_canonical(model)

    def load_weights(self, model, state: Mapping[str, np.ndarray]) -> None:
        from .model import load_canonical

        load_canonical(model, state)

    def start(self) -> None:
        use_keras_backend(self.keras_backend, self.name)

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
            from .model import tf_function

            fn = tf_function(run, jit_compile=(self.mode == "jit"))
        elif keras.backend.backend() == "jax" and self.mode == "jit":
            from .model import jax_jit

            fn = jax_jit(model, run)
        elif keras.backend.backend() == "openvino":  # one OpenVINO compile for every stage, not one per stage
            from .model import openvino_numpy

            def fn(x):  # noqa: F811
                return openvino_numpy(run(x))
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
        use_keras_backend(self.keras_backend, self.name)
        from .convert import load_keras, load_weights_h5
        from .model import POLICIES, build_model, to_canonical

        p = str(path)
        if p.endswith(".weights.h5"):
            if cfg is None:
                raise BackendError(f"{path}: a .weights.h5 file holds no config: name the model with --preset NAME "
                                   f"(from Python: the cfg argument)")
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
        use_keras_backend(self.keras_backend, self.name)
        from .model import build_model

        return build_model(cfg, state, data_format="channels_first")

    # ------------------------------------------------------------- benchmarks
    def bench_modes(self) -> dict[str, str]:
        """vit_keras.bench's modes that this Keras backend runs."""
        from .bench import MODES as BENCH_MODES

        return {m: d for m, d in BENCH_MODES.items() if m == "keras_hub" or m in MODES[self.keras_backend]}


class KerasXLABackend(KerasBackend):
    """XLA (`tf.function(jit_compile=True)`) forwards."""

    name = "keras-xla"
    mode = "jit"


class KerasJaxBackend(KerasBackend):
    """Keras on JAX; forwards compiled by jax.jit (XLA), gradients by jax.value_and_grad."""

    name = "keras-jax"
    requires = ("keras", "jax")
    keras_backend = "jax"
    mode = "jit"


class KerasTorchBackend(KerasBackend):
    """Keras on PyTorch; eager forwards, gradients by torch.autograd."""

    name = "keras-torch"
    requires = ("keras", "torch")
    keras_backend = "torch"
    mode = "eager"


class KerasOpenVINOBackend(KerasBackend):
    """Keras on OpenVINO (Keras 3.15's inference-only backend); eager forwards; no training or benchmark hooks."""

    name = "keras-openvino"
    requires = ("keras", "openvino")
    dtypes = ("float32",)
    keras_backend = "openvino"
    mode = "eager"
    train_module = None
    bench_module = None

    def trainable(self, cfg, state, dtype="float32"):
        raise self._unsupported("trainable")

    def bench_modes(self) -> dict[str, str]:
        return {}


class DeployedModel:
    """A Keras model and its exports (made on first use, one per input shape a fixed-batch export needs), each held
    as a loaded runtime session; the files live in a temporary folder removed with the object."""

    def __init__(self, keras_model, export_format: str, dynamic_batch: bool):
        import shutil
        import tempfile
        import weakref

        self.keras_model, self.config, self.cfg = keras_model, keras_model.cfg, keras_model.cfg
        self.data_format = "channels_last"
        self.export_format, self.dynamic_batch = export_format, dynamic_batch
        self.folder = Path(tempfile.mkdtemp(prefix="vit-suite-export-"))
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        self._runners: dict = {}

    def runner(self, shape: tuple[int, ...]):
        """(input name, run function, output names) for NHWC inputs of `shape`, exporting the model on first use."""
        from shared.deploy.artifact import artifact_io, load_artifact

        from .convert import EXPORT_FORMATS, export_artifact

        key = (None if self.dynamic_batch else shape[0], *shape[1:3])
        if key not in self._runners:
            path = self.folder / f"model_{'x'.join(map(str, key))}{EXPORT_FORMATS[self.export_format]}"
            export_artifact(self.keras_model, path, self.export_format, batch=key[0], image_size=tuple(key[1:]))
            inputs, outputs = artifact_io(path)
            if len(inputs) != 1:
                raise BackendError(f"{path}: the export has {len(inputs)} inputs, expected one image input")
            self._runners[key] = (next(iter(inputs)), load_artifact(path), outputs)
        return self._runners[key]


class KerasDeployedBackend(KerasBackend):
    """A Keras model exported by Keras' own `model.export(format=export_format)` and run in a runtime: the base of
    the deployment variants (float32; the training and benchmark hooks are unsupported)."""

    dtypes = ("float32",)
    train_module = None
    bench_module = None
    #: Keras' export format (vit_keras.convert.EXPORT_FORMATS)
    export_format: ClassVar[str]
    #: whether the export takes any batch size (False: one export per batch size)
    dynamic_batch: ClassVar[bool] = True

    def build(self, cfg, state=None, *, dtype="float32", seed=0) -> DeployedModel:
        return DeployedModel(super().build(cfg, state, dtype=dtype, seed=seed), self.export_format, self.dynamic_batch)

    def export(self, model) -> dict[str, np.ndarray]:
        return super().export(model.keras_model)

    def load_weights(self, model, state) -> None:  # the exported artifact holds its weights as constants
        raise self._unsupported("load_weights")

    def forward(self, model, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images, dtype=np.float32)
        check_images(model.cfg, images)
        x = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        name, run, outputs = model.runner(x.shape)
        out = run({name: x})
        names = model.cfg.stage_names()
        if set(names) <= set(out):
            return {k: out[k] for k in names}
        if len(outputs) != len(names):  # positional outputs (the ONNX export): one per stage, in order
            raise BackendError(f"the {self.export_format} export has outputs {outputs}, expected the stages {names}")
        return {k: out[o] for k, o in zip(names, outputs)}

    def save_native(self, model, path) -> Path:
        return super().save_native(model.keras_model, path)

    def load_native(self, path, cfg=None, *, dtype="float32") -> DeployedModel:
        return DeployedModel(super().load_native(path, cfg, dtype=dtype), self.export_format, self.dynamic_batch)

    def trainable(self, cfg, state, dtype="float32"):
        raise self._unsupported("trainable")

    def bench_modes(self) -> dict[str, str]:
        return {}


class KerasLiteRTBackend(KerasDeployedBackend):
    """`model.export(format="litert")` on TensorFlow, run by ai_edge_litert's Interpreter (XNNPACK, float32)."""

    name = "litert"
    requires = ("keras", "tensorflow", "ai_edge_litert")
    export_format = "litert"


class KerasOpenVINOIRBackend(KerasDeployedBackend):
    """`model.export(format="openvino")` on TensorFlow (an OpenVINO IR), run by OpenVINO on the CPU in f32."""

    name = "keras-openvino-ir"
    requires = ("keras", "tensorflow", "openvino")
    export_format = "openvino"


class KerasONNXBackend(KerasDeployedBackend):
    """`model.export(format="onnx")` on torch (torch.onnx's dynamo exporter, a fixed batch), run by ONNX Runtime."""

    name = "keras-onnx"
    requires = ("keras", "torch", "onnxscript", "onnxruntime")
    keras_backend = "torch"
    mode = "eager"
    export_format = "onnx"
    dynamic_batch = False


__all__ = ["KerasBackend", "KerasXLABackend", "KerasJaxBackend", "KerasTorchBackend", "KerasOpenVINOBackend",
           "KerasLiteRTBackend", "KerasOpenVINOIRBackend", "KerasONNXBackend", "DeployedModel", "MODES",
           "use_keras_backend"]
