"""The backend interface, and the registry that finds backends: the only way the tool reaches a framework.

A backend turns canonical weights into a native model and runs it on NumPy inputs:

    be = get_backend("torch")
    model = be.build(cfg, state, dtype="float32")     # canonical float32 state dict in
    stages = be.forward(model, images)                # NCHW float32 in, every named stage out
    state2 = be.export(model)                         # canonical state dict back, bit-exact
    be.save_native(model, path); be.load_native(path, cfg)
    be.load_weights(model, state2)                    # optional: new weights into a built model (warm workers)

and, optionally, trains it and times it (every `vit-suite` command reaches these through the interface, so a
third-party backend gets `check --grad`, `train`, `evaluate`, `predict` and `bench` by providing them: a
`train_module` / `bench_module` of native functions, which the hooks below adapt, or the hooks themselves):

    be.predict(model, images)                                   # the logits, in batches
    be.loss_and_grads(cfg, state, images, labels, smoothing)    # (loss, canonical key -> gradient)
    be.optimizer_step(cfg, state, images, labels, "adamw", lr=...)   # the state after one step
    be.train(cfg, state, train_data, val_data, tcfg)            # (state, history)
    be.bench_modes(); be.bench(cfg, batch=8, dtype="float32", mode="eager", n_warmup=2, n_iter=5)

A hook a backend does not implement raises UnsupportedError, which the tool reports as "unsupported".

Registry. Backends are registered by name with an import path, so asking whether one is available never
imports its framework (TensorFlow and MindSpore abort when imported in the wrong order; the tool runs each
backend in a process of its own, with the environment `backend_env(name)` it needs: each Keras backend,
`keras` (TensorFlow), `keras-jax`, `keras-torch` and `keras-openvino`, is a backend of its own because Keras reads KERAS_BACKEND
once per process). A *variant* is a configuration of another backend (explicit attention, PyNative mode, ...),
registered under its own name: it is in the conformance matrix and can be checked by name
(`vit-suite check --backends torch-explicit`), but the default `check` runs the primary backends only. The
deployment runtimes (`onnxruntime`, `openvino`: RUNTIMES, shared/deploy) are primary backends that run the suite's
own ONNX export of the model, inference only.
Third parties register through the entry-point group `vit_suite.backends`, or in-process with
`register_backend(name, cls)`:

    [project.entry-points."vit_suite.backends"]
    mine = "my_package.backend:MyBackend"

or, without packaging, with the environment variable (inherited by the tool's child processes)
`VIT_SUITE_BACKENDS="mine=my_module:MyBackend,other=pkg.mod:Other"`.
"""
from __future__ import annotations

import abc
import functools
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

from . import weights as _weights
from .config import TrainConfig, ViTConfig
from .errors import BackendError, UnsupportedError

ENTRY_POINT_GROUP = "vit_suite.backends"
ENV_VAR = "VIT_SUITE_BACKENDS"


class Backend(abc.ABC):
    #: registry name, e.g. "torch"
    name: ClassVar[str]
    #: top-level modules that must be importable for the backend to be available
    requires: ClassVar[tuple[str, ...]] = ()
    #: compute dtypes `build` accepts
    dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    #: file suffixes of the native weight format, first one preferred
    native_suffixes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def available(cls) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in cls.requires)

    def check_dtype(self, dtype: str) -> None:
        if dtype not in self.dtypes:
            raise UnsupportedError(f"backend {self.name!r} supports dtypes {self.dtypes}, not {dtype!r}")

    def versions(self) -> dict[str, str]:
        """The installed versions of the modules the backend requires (recorded with every result)."""
        return module_versions(self.requires)

    def start(self) -> None:
        """Import the framework, so that the first `build` does not: a warm worker started ahead of its first task
        (shared/cli/worker.py `serve --backend`) pays its start-up while the cores are otherwise idle. Default:
        the modules the backend requires; a backend whose framework needs set-up before its import overrides it."""
        for module in self.requires:
            importlib.import_module(module)

    def _unsupported(self, hook: str) -> UnsupportedError:
        return UnsupportedError(f"backend {self.name!r} does not implement the optional hook {hook!r}")

    # ---------------------------------------------------------------- required
    @abc.abstractmethod
    def build(self, cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *,
              dtype: str = "float32", seed: int = 0) -> Any:
        """A native model in inference mode for `cfg` computing in `dtype`.

        `state` is a canonical state dict (validated strictly); None means `shared.init.init_weights(cfg, seed)`.
        The model carries its config as `model.config` (ViTConfig).
        """

    @abc.abstractmethod
    def export(self, model: Any) -> dict[str, np.ndarray]:
        """The model's canonical float32 state dict (bit-exact for a float32 model)."""

    @abc.abstractmethod
    def forward(self, model: Any, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run NCHW float32 `images` (any size divisible by the patch) through the model in inference mode.

        Returns every stage of `model.config.stage_names()` as float32 NumPy arrays, same shapes as
        `shared.reference.forward`.
        """

    def forward_once(self, model: Any, images: np.ndarray) -> dict[str, np.ndarray]:
        """`forward` in a job that runs each weights once: a `check` child, `vit-suite forward`, a sweep cell (a
        warm worker's kept model gets the next checkpoint's weights, then runs once more).

        A backend whose compiled mode costs more to compile than such runs save may run uncompiled here, where the
        two are bit-identical (test_conformance.py asserts it on every matrix case), and says so in `once_note`.
        Default: `forward`."""
        return self.forward(model, images)

    def once_note(self, dtype: str) -> str | None:
        """How `forward_once` ran a `dtype` model, where that differs from `forward`; None where it does not."""
        return None

    @abc.abstractmethod
    def save_native(self, model: Any, path: str | os.PathLike) -> Path:
        """Write the framework's own weight file through shared.fileio.atomic_write (nothing left behind on failure;
        inside another writer's staging folder it writes `path` directly)."""

    @abc.abstractmethod
    def load_native(self, path: str | os.PathLike, cfg: ViTConfig | None = None, *, dtype: str = "float32") -> Any:
        """Read the framework's own weight file strictly (every key, shape and dtype checked)."""

    # ------------------------------------------------------------- optional
    def load_weights(self, model: Any, state: Mapping[str, np.ndarray]) -> None:
        """Put a canonical state dict into `model`, a model this backend's own `build` made for the same config and
        dtype, replacing every weight (validated strictly, as `build` does). A warm worker (`sweep`) then reuses
        the model, and what the framework compiled for it, for the next checkpoint of that architecture: its
        forward must equal a fresh build's, bit for bit. Not implemented: every task builds its own model."""
        raise self._unsupported("load_weights")

    # ------------------------------------------------------------- provided
    def load_file(self, path: str | os.PathLike, *, dtype: str = "float32") -> Any:
        """Build a model from a canonical safetensors file."""
        cfg, state = _weights.load(path)
        return self.build(cfg, state, dtype=dtype)

    def save_file(self, model: Any, path: str | os.PathLike) -> Path:
        """Write the model's weights as a canonical safetensors file."""
        return _weights.save(path, model.config, self.export(model))

    def predict(self, model: Any, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """The model's output (the `logits` stage) for NCHW float32 images, `batch` at a time.

        Runs the train module's `predict_logits` (the plain forward); without one, `forward`'s last stage.
        """
        from .reference import check_images  # (imported here: `convert` imports this module, never the reference)

        check_images(model.config, np.asarray(images))  # the same checks and messages in every backend
        if self.train_module is not None:
            return self._module("train_module", "predict").predict_logits(model, images, batch)
        outs = [self.forward(model, images[i:i + batch])["logits"] for i in range(0, len(images), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, model.config.num_classes), np.float32)

    # ----------------------------------------------------- optional: training
    #: the module of native training functions, each working on a model from `trainable()`:
    #:   predict_logits(model, images, batch) -> the model's output
    #:   loss_and_grads(model, images, labels, label_smoothing) -> (loss, canonical key -> gradient)
    #:   optimizer_step(model, images, labels, optimizer, *, lr, weight_decay, label_smoothing, betas, eps)
    #:   train(model, train_data, val_data, tcfg, *, progress, checkpoint, name) -> history
    #: None: the training hooks are unsupported. A backend may instead override the hooks themselves.
    train_module: ClassVar[str | None] = None
    #: the dtypes `loss_and_grads` accepts ("float64": the backend can serve as the gradient oracle)
    grad_dtypes: ClassVar[tuple[str, ...]] = ("float32",)

    def trainable(self, cfg: ViTConfig, state: Mapping[str, np.ndarray] | None, dtype: str = "float32") -> Any:
        """The native model the training functions work on (default: `build`)."""
        return self.build(cfg, state, dtype=dtype)

    def loss_and_grads(self, cfg: ViTConfig, state: Mapping[str, np.ndarray], images: np.ndarray,
                       labels: np.ndarray, label_smoothing: float = 0.0, *,
                       dtype: str = "float32") -> tuple[float, dict[str, np.ndarray]]:
        """(mean label-smoothing cross-entropy of the head output before any output softmax, canonical key ->
        gradient), without dropout, in `dtype` (one of `grad_dtypes`)."""
        mod = self._module("train_module", "loss_and_grads")
        if dtype not in self.grad_dtypes:
            raise UnsupportedError(f"backend {self.name!r} computes gradients in {self.grad_dtypes}, not {dtype!r}")
        return mod.loss_and_grads(self.trainable(cfg, state, dtype), images, labels, label_smoothing)

    def optimizer_step(self, cfg: ViTConfig, state: Mapping[str, np.ndarray], images: np.ndarray,
                       labels: np.ndarray, optimizer: str = "sgd", *, lr: float, weight_decay: float = 0.0,
                       label_smoothing: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                       eps: float = 1e-8) -> dict[str, np.ndarray]:
        """The canonical state after one framework optimiser step ("sgd": torch.optim.SGD's formula without
        momentum; "adamw": torch.optim.AdamW's), weight decay on `shared.training.recipe.decay_mask` keys only,
        no dropout."""
        mod = self._module("train_module", "optimizer_step")
        model = self.trainable(cfg, state)
        mod.optimizer_step(model, images, labels, optimizer, lr=lr, weight_decay=weight_decay,
                           label_smoothing=label_smoothing, betas=betas, eps=eps)
        return self.export(model)

    def train(self, cfg: ViTConfig, state: Mapping[str, np.ndarray], train_data, val_data,
              tcfg: TrainConfig, *, progress: bool = True,
              checkpoint: str | os.PathLike | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
        """Train with the shared recipe (`shared.training.recipe`) on the shared batches
        (`shared.training.data`): (canonical float32 state, history of evaluations). `checkpoint`: a canonical
        file written at every epoch end and at the last step."""
        mod = self._module("train_module", "train")
        model = self.trainable(cfg, state)
        history = mod.train(model, train_data, val_data, tcfg, progress=progress, checkpoint=checkpoint,
                            name=self.name)
        return self.export(model), history

    # --------------------------------------------------- optional: benchmarks
    #: the module with MODES (mode -> one-line description; peers' modes start with "peer:") and
    #: bench(cfg, *, batch, dtype, mode, n_warmup, n_iter, backend) -> dict; None: no benchmark hooks
    bench_module: ClassVar[str | None] = None

    def bench_modes(self) -> dict[str, str]:
        """mode -> one-line description; peers' modes (timm, keras-hub, ...) start with "peer:"."""
        return {} if self.bench_module is None else dict(self._module("bench_module", "bench_modes").MODES)

    def bench(self, cfg: ViTConfig, *, batch: int, dtype: str, mode: str, n_warmup: int,
              n_iter: int) -> dict:
        """Median-timed forward of `batch` images in one mode: a dict with at least "images_per_s" and
        "median_s" (the timing loop is `shared.bench.time_calls`)."""
        return self._module("bench_module", "bench").bench(cfg, batch=batch, dtype=dtype, mode=mode,
                                                            n_warmup=n_warmup, n_iter=n_iter, backend=self)

    def _module(self, attr: str, hook: str):
        path = getattr(self, attr)
        if path is None:
            raise self._unsupported(hook)
        return importlib.import_module(path)


# -------------------------------------------------------------------------------------- the registry
#: built-in backends: name -> (import path, modules it needs, the primary backend it is a variant of, the process
#: environment it needs). Keras reads KERAS_BACKEND once per process, so each Keras backend is a target of its own.
_BUILTIN: dict[str, tuple[str, tuple[str, ...], str | None, dict[str, str]]] = {
    "torch": ("vit_torch.backend:TorchBackend", ("torch",), None, {}),
    "keras": ("vit_keras.backend:KerasBackend", ("keras", "tensorflow"), None, {"KERAS_BACKEND": "tensorflow"}),
    "keras-jax": ("vit_keras.backend:KerasJaxBackend", ("keras", "jax"), None, {"KERAS_BACKEND": "jax"}),
    "keras-torch": ("vit_keras.backend:KerasTorchBackend", ("keras", "torch"), None, {"KERAS_BACKEND": "torch"}),
    "mindspore": ("vit_mindspore.backend:MindSporeBackend", ("mindspore",), None, {}),
    "torch-explicit": ("vit_torch.backend:TorchExplicitBackend", ("torch",), "torch", {}),
    "keras-xla": ("vit_keras.backend:KerasXLABackend", ("keras", "tensorflow"), "keras",
                  {"KERAS_BACKEND": "tensorflow"}),
    "mindspore-pynative": ("vit_mindspore.backend:MindSporePyNativeBackend", ("mindspore",), "mindspore", {}),
    "mindspore-expm1": ("vit_mindspore.backend:MindSporeExpm1Backend", ("mindspore",), "mindspore", {}),
    "onnxruntime": ("shared.deploy.runtimes:OnnxRuntimeBackend", ("onnxruntime", "onnx"), None, {}),
    "openvino": ("shared.deploy.runtimes:OpenVinoBackend", ("openvino", "onnx"), None, {}),
    "keras-openvino": ("vit_keras.backend:KerasOpenVINOBackend", ("keras", "openvino"), None,
                       {"KERAS_BACKEND": "openvino"}),
    # deployment variants: the Keras model exported by Keras' own model.export and run by a runtime
    "litert": ("vit_keras.backend:KerasLiteRTBackend", ("keras", "tensorflow", "ai_edge_litert"), "keras",
               {"KERAS_BACKEND": "tensorflow"}),
    "keras-openvino-ir": ("vit_keras.backend:KerasOpenVINOIRBackend", ("keras", "tensorflow", "openvino"), "keras",
                          {"KERAS_BACKEND": "tensorflow"}),
    "keras-onnx": ("vit_keras.backend:KerasONNXBackend", ("keras", "torch", "onnxscript", "onnxruntime"),
                   "keras-torch", {"KERAS_BACKEND": "torch"}),
}
#: the deployment runtimes: primary backends that run the suite's exported graph (shared/deploy), inference only
#: (no training or gradient hooks: those report unsupported). The default `check` runs them when installed; the
#: framework backends' conformance matrix (conformance_tests/conftest.py) leaves them out, test_deploy.py covers them.
RUNTIMES = ("onnxruntime", "openvino")
#: the deployment variants: each forward of a new model is an export (seconds), so the in-process test matrix
#: (conformance_tests/conftest.py) leaves them out unless named with --backends; test_artifacts.py tests them
DEPLOYMENT = ("litert", "keras-openvino-ir", "keras-onnx")
#: CPU seconds a `check` child of each built-in spends on the shipped digits model (framework import, build, first
#: trace; one thread, medians of 3 on 2 Zen 4 cores; the variants as their primary): `check` starts the costliest
#: children first, so that no core idles while one long child runs at the end (longest-first scheduling). An order
#: only: no number depends on it. (keras-jax's is a first run's: with its forward in the compile cache,
#: shared/cache.py, about 1.3.)
START_COST: dict[str, float] = {"keras": 3.9, "keras-xla": 3.9, "keras-jax": 3.6, "keras-torch": 2.6,
                                "mindspore": 2.5, "mindspore-pynative": 2.5, "mindspore-expm1": 2.5, "torch": 2.3,
                                "torch-explicit": 2.3, "keras-openvino": 2.0, "openvino": 0.65, "onnxruntime": 0.5}
_REGISTRY: dict[str, str | type[Backend]] = {name: entry[0] for name, entry in _BUILTIN.items()}
#: variant -> the primary backend it is a configuration of (known without importing anything)
_VARIANTS: dict[str, str] = {name: entry[2] for name, entry in _BUILTIN.items() if entry[2]}
#: backend -> the environment variables its process needs (the tool's child processes get them)
_ENVS: dict[str, dict[str, str]] = {name: entry[3] for name, entry in _BUILTIN.items() if entry[3]}
_entry_points_loaded = False


def register_backend(name: str, target: str | type[Backend], variant_of: str | None = None,
                     env: dict[str, str] | None = None) -> None:
    """Register a Backend subclass (or a "module:Class" path, imported when first used), optionally as a
    configuration variant of another registered backend, or as one that needs environment variables set before
    its framework is imported (the tool's child processes get them)."""
    _REGISTRY[name] = target
    if variant_of:
        _VARIANTS[name] = variant_of
    if env:
        _ENVS[name] = dict(env)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if not _entry_points_loaded:
        from importlib.metadata import entry_points  # (imported here: about 20 ms, which `convert` never needs)

        _entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            _REGISTRY.setdefault(ep.name, ep.value)
    # read on every call: the tool's child processes inherit it, and tests set it late
    for item in filter(None, os.environ.get(ENV_VAR, "").split(",")):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise BackendError(f"{ENV_VAR}: expected name=module:Class entries, got {item!r}")
        _REGISTRY.setdefault(name.strip(), target.strip())


def _resolve(name: str) -> type[Backend]:
    _load_entry_points()
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; registered: {', '.join(_REGISTRY)}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise BackendError(f"backend {name!r} is not available: {e} (install the '{name}' extra)") from None
        _REGISTRY[name] = target
    return target


def start_order(names: Iterable[str]) -> list[str]:
    """`names` with the costliest children first (START_COST; a backend it does not list, such as a deployment
    variant or a plug-in, counts as costlier than any it does: starting it late could leave it running alone)."""
    names = list(names)
    return sorted(names, key=lambda n: (-START_COST.get(n, float("inf")), names.index(n)))


#: frameworks a process imports once for every backend it runs: `check` runs the backends that import the same one
#: (torch and keras-torch; openvino, keras-openvino and onnxruntime, which share onnx) one after another in one child
#: process, where their environments agree (`process_groups`). A framework's import is most of a child's CPU time
#: on a small model (torch's about 1 CPU s).
SHARED_FRAMEWORKS = ("torch", "tensorflow", "jax", "mindspore", "openvino", "onnx")


def process_groups(names: Iterable[str]) -> list[list[str]]:
    """`names` in `start_order`, as the child processes of a `check`: a built-in backend joins the first group with
    a backend that imports one of its SHARED_FRAMEWORKS, where every environment variable either sets agrees and
    TensorFlow would not meet MindSpore (importing it first aborts the process); any other backend (a plug-in)
    runs alone. The groups come costliest first (the sum of their START_COST), each in start order."""
    groups: list[tuple[list[str], set[str], dict[str, str]]] = []
    for name in start_order(names):
        needs = set(_BUILTIN[name][1]) if name in _BUILTIN else set()
        env = backend_env(name)
        for members, frameworks, group_env in groups:
            if (needs & frameworks & set(SHARED_FRAMEWORKS)
                    and all(group_env.get(k, v) == v for k, v in env.items())
                    and not {"tensorflow", "mindspore"} <= needs | frameworks):
                members.append(name)
                frameworks |= needs
                group_env.update(env)
                break
        else:
            groups.append(([name], needs, env))
    cost = {members[0]: sum(START_COST.get(m, float("inf")) for m in members) for members, _, _ in groups}
    return sorted((members for members, _, _ in groups), key=lambda g: -cost[g[0]])


def is_runtime(name: str) -> bool:
    """Whether a registered backend is a deployment runtime (RUNTIMES: inference only). Imports nothing."""
    return name in RUNTIMES


def variant_of(name: str) -> str | None:
    """The primary backend a registered variant configures (None for a primary backend). Imports nothing:
    entry-point and environment registrations are primary backends."""
    return _VARIANTS.get(name)


def backend_env(name: str) -> dict[str, str]:
    """The environment variables a backend's process needs (e.g. KERAS_BACKEND); {} for most."""
    return dict(_ENVS.get(name, {}))


def runs_in_this_process(name: str) -> bool:
    """Whether this process's environment suits the backend: each variable it needs is unset (the backend sets it
    before its framework is imported) or already has its value."""
    return all(os.environ.get(k, v) == v for k, v in backend_env(name).items())


def backend_names(variants: bool = True) -> list[str]:
    """Every registered backend (built-ins first), optionally without the variants."""
    _load_entry_points()
    return [n for n in _REGISTRY if variants or n not in _VARIANTS]


def is_available(name: str) -> bool:
    """Whether a backend's framework is installed, without importing it (for the built-ins)."""
    if name in _BUILTIN and isinstance(_REGISTRY.get(name), str):
        return all(importlib.util.find_spec(m) is not None for m in _BUILTIN[name][1])
    try:
        return _resolve(name).available()
    except BackendError:
        return False


def available_backends(variants: bool = False) -> list[str]:
    """The installed backends: by default the primary ones (what `vit-suite check` runs)."""
    return [n for n in backend_names(variants) if is_available(n)]


def module_versions(modules: Iterable[str]) -> dict[str, str]:
    """module -> its installed distribution's version ("unknown" where none is found), without importing it.

    The distribution may be named otherwise than the module (tensorflow-cpu provides `tensorflow`): then the
    distributions whose name starts with the module's and that provide it are asked first (`tensorflow_cpu`), and
    only where none does the map of every installed distribution's modules is read (once per process: it scans
    them all, seconds). Looked up once per process and module (a warm worker asks for every task)."""
    return {module: _module_version(module) for module in modules}


@functools.lru_cache(maxsize=None)
def _module_version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def candidates():  # lazily: each later source only where the earlier found nothing (the last scans them all)
        yield module
        named = _distributions_named_like(module)
        yield from named or _packages_distributions().get(module, ())

    for dist in candidates():
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


def _distributions_named_like(module: str) -> list[str]:
    """The installed distributions named `module` + "-" or "_" + anything whose top-level modules include `module`
    (what packages_distributions() would say for them), found from the .dist-info folder names alone."""
    import re
    import sys
    from importlib.metadata import Distribution

    pattern = re.compile(rf"^{re.escape(module)}[-_.][^-]*-[^-]*\.dist-info$", re.IGNORECASE)
    found = []
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if not pattern.match(name):
                continue
            dist = Distribution.at(os.path.join(entry or ".", name))
            top = (dist.read_text("top_level.txt") or "").split()
            if module in top or not top and any(f.parts[0] == module for f in dist.files or ()):
                found.append(dist.metadata["Name"])
    return found


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def backend_versions(name: str) -> dict[str, str]:
    """The versions `Backend.versions` records, known without importing a built-in backend's framework."""
    if name in _BUILTIN and isinstance(_REGISTRY.get(name), str):
        return module_versions(_BUILTIN[name][1])
    return get_backend(name).versions()


def get_backend(name: str) -> Backend:
    cls = _resolve(name)
    if not cls.available():
        raise BackendError(f"backend {name!r} is not available: install its extra (pip install 'vit-suite[{name}]')")
    return cls()


def import_frameworks_in_safe_order(names: Iterable[str]) -> None:
    """Import MindSpore first when a process will use it next to other frameworks.

    TensorFlow imported before MindSpore aborts the process (both register the same LLVM option); the other
    order works. The tool calls this before it touches any framework in a process that may hold two
    (`convert` between a Keras and a MindSpore file, for instance).
    """
    needs_mindspore = any("mindspore" in _BUILTIN[n][1] if n in _BUILTIN else n == "mindspore" for n in names)
    if needs_mindspore and importlib.util.find_spec("mindspore") is not None:
        import mindspore  # noqa: F401  (deliberately first)
