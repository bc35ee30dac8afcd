"""The backend interface the three implementations share, and the registry that finds them.

A backend turns canonical weights into a native model and runs it on NumPy inputs:

    be = get_backend("torch")
    model = be.build(cfg, state, dtype="float32")     # canonical float32 state dict in
    stages = be.forward(model, images)                # NCHW float32 in, every named stage out
    state2 = be.export(model)                         # canonical state dict back, bit-exact
    be.save_native(model, path); be.load_native(path, cfg)

Backends are registered by name with an import path, so asking whether one is
available never imports its framework (TensorFlow and MindSpore abort when
imported in the wrong order; the CLI runs each backend in a process of its own).
Third parties register through the entry-point group `vit_suite.backends`:

    [project.entry-points."vit_suite.backends"]
    mine = "my_package.backend:MyBackend"

or, without packaging, with the environment variable (inherited by the check's child processes)
`VIT_SUITE_BACKENDS="mine=my_module:MyBackend,other=pkg.mod:Other"`.
"""
from __future__ import annotations

import abc
import importlib
import importlib.util
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from . import weights as _weights
from .config import ViTConfig

ENTRY_POINT_GROUP = "vit_suite.backends"
ENV_VAR = "VIT_SUITE_BACKENDS"
ALL_DTYPES = ("float32", "bfloat16", "float16")


class BackendError(RuntimeError):
    """A backend that is unknown, unavailable, or asked for something it does not support."""


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
            raise BackendError(f"backend {self.name!r} supports dtypes {self.dtypes}, not {dtype!r}")

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

    @abc.abstractmethod
    def save_native(self, model: Any, path: str | os.PathLike) -> Path:
        """Write the framework's own weight file (atomically: nothing left behind on failure)."""

    @abc.abstractmethod
    def load_native(self, path: str | os.PathLike, cfg: ViTConfig | None = None, *, dtype: str = "float32") -> Any:
        """Read the framework's own weight file strictly (every key, shape and dtype checked)."""

    # ------------------------------------------------------------- provided
    def load_file(self, path: str | os.PathLike, *, dtype: str = "float32") -> Any:
        """Build a model from a canonical safetensors file."""
        cfg, state = _weights.load(path)
        return self.build(cfg, state, dtype=dtype)

    def save_file(self, model: Any, path: str | os.PathLike) -> Path:
        """Write the model's weights as a canonical safetensors file."""
        return _weights.save(path, model.config, self.export(model))


_BUILTIN: dict[str, str] = {
    "torch": "vit_torch.backend:TorchBackend",
    "keras": "vit_keras.backend:KerasBackend",
    "mindspore": "vit_mindspore.backend:MindSporeBackend",
}
_BUILTIN_REQUIRES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "keras": ("keras",),
    "mindspore": ("mindspore",),
}
_REGISTRY: dict[str, str | type[Backend]] = dict(_BUILTIN)
_entry_points_loaded = False


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Register a Backend subclass (or a "module:Class" path, imported when first used)."""
    _REGISTRY[name] = target


def _load_entry_points() -> None:
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            _REGISTRY.setdefault(ep.name, ep.value)
    # read on every call: the check's child processes inherit it, and tests set it late
    for item in filter(None, os.environ.get(ENV_VAR, "").split(",")):
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise BackendError(f"{ENV_VAR}: expected name=module:Class entries, got {item!r}")
        _REGISTRY.setdefault(name.strip(), target.strip())


def backend_names() -> list[str]:
    _load_entry_points()
    return list(_REGISTRY)


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


def is_available(name: str) -> bool:
    """Whether a backend's framework is installed, without importing it (for the built-ins)."""
    if name in _BUILTIN_REQUIRES and isinstance(_REGISTRY.get(name), str):
        return all(importlib.util.find_spec(m) is not None for m in _BUILTIN_REQUIRES[name])
    try:
        return _resolve(name).available()
    except BackendError:
        return False


def available_backends() -> list[str]:
    return [n for n in backend_names() if is_available(n)]


def get_backend(name: str) -> Backend:
    cls = _resolve(name)
    if not cls.available():
        raise BackendError(f"backend {name!r} is not available: install its extra (pip install 'vit-suite[{name}]')")
    return cls()
