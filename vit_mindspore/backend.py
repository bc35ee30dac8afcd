"""`MindSporeBackend`: the suite's Backend interface over vit_mindspore, and its variants.

    be = MindSporeBackend()                   # mode="graph" (default, fastest) or "pynative"
    model = be.build(cfg, state, dtype="float16")
    stages = be.forward(model, images)        # any image size divisible by the patch

Variants (registered names): `mindspore-pynative` (PyNative forwards) and `mindspore-expm1` (the expm1-based
attention softmax instead of MindSpore's fused Softmax kernel, in every hook). The training hooks
(shared.backend.Backend) run vit_mindspore.train (PyNative, `mindspore.value_and_grad`) on a model built here;
the benchmark hooks run vit_mindspore.bench.

Process-wide settings are made once, by the first model built (vit_mindspore.model.configure_runtime).

Graph mode compiles one graph per (model, input size, dtype) with `mindspore.jit`; compiled
stage networks are cached on the model. bfloat16 is not offered: MindSpore's CPU backend has no
bfloat16 MatMul / BatchMatMul / Softmax / Erf kernels (see `bf16_probe`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np

import mindspore as ms
from mindspore import Tensor

from shared.backend import Backend
from shared.config import ViTConfig
from shared.errors import BackendError, UnsupportedError
from shared.reference import check_images

from . import convert
from .model import StageNet, VisionTransformer, build_model, configure_runtime, load_canonical, to_canonical

MODES = ("graph", "pynative")


def bf16_probe() -> str | None:
    """None if a bfloat16 matmul runs on this MindSpore CPU build, else the error naming the failing op."""
    try:
        a = Tensor(np.ones((2, 2), np.float32)).astype(ms.bfloat16)
        ms.ops.MatMul()(a, a).asnumpy()
        return None
    except Exception as e:  # "Select CPU operator[MatMul] fail! Unsupported data type!"
        return str(e).strip().splitlines()[0]


class MindSporeBackend(Backend):
    name = "mindspore"
    requires = ("mindspore",)
    dtypes = ("float32", "float16")
    native_suffixes = (".ckpt",)
    train_module = "vit_mindspore.train"
    bench_module = "vit_mindspore.bench"
    #: forward mode: "graph" (mindspore.jit, fastest) or "pynative"
    mode: ClassVar[str] = "graph"
    #: the attention softmax: MindSpore's fused Softmax kernel (True) or the expm1-based one
    fused_softmax: ClassVar[bool] = True

    def __init__(self, mode: str | None = None, fused_softmax: bool | None = None) -> None:
        """mode and fused_softmax default to the class's; see vit_mindspore.layers.Softmax for what each softmax
        costs in accuracy."""
        mode = mode or type(self).mode
        if mode not in MODES:
            raise BackendError(f"MindSpore mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.fused_softmax = type(self).fused_softmax if fused_softmax is None else bool(fused_softmax)
        configure_runtime()

    def check_dtype(self, dtype: str) -> None:
        if dtype == "bfloat16":
            why = bf16_probe() or "bfloat16 is not validated for this backend"
            raise UnsupportedError(f"backend 'mindspore' does not support bfloat16: MindSpore's CPU backend lacks "
                                   f"bfloat16 kernels ({why}); use float32 or float16")
        super().check_dtype(dtype)

    # ------------------------------------------------------------------ build
    def build(self, cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *,
              dtype: str = "float32", seed: int = 0) -> VisionTransformer:
        self.check_dtype(dtype)
        return build_model(cfg, state, dtype=dtype, seed=seed, fused_softmax=self.fused_softmax)

    def export(self, model: VisionTransformer) -> dict[str, np.ndarray]:
        return to_canonical(model)

    def load_weights(self, model: VisionTransformer, state: Mapping[str, np.ndarray]) -> None:
        load_canonical(model, state, in_place=True)

    # ---------------------------------------------------------------- forward
    def stage_net(self, model: VisionTransformer, image_size: tuple[int, int], mode: str | None = None):
        """The (cached) callable returning all stages at one input size in `mode` (default: this backend's)."""
        mode = mode or self.mode
        cache = model.__dict__.setdefault("_vit_stage_nets", {})
        key = (mode, tuple(image_size))
        if key not in cache:
            net = StageNet(model, image_size)
            cache[key] = ms.jit(net) if mode == "graph" else net
        return cache[key]

    def forward(self, model: VisionTransformer, images: np.ndarray) -> dict[str, np.ndarray]:
        return self._forward(model, images, self.mode)

    def _once_uncompiled(self, dtype: str) -> bool:
        # float32 only: in float16 the compiled graph and the op-by-op run differ (the patch embedding first)
        return self.mode == "graph" and dtype == "float32"

    def forward_once(self, model: VisionTransformer, images: np.ndarray) -> dict[str, np.ndarray]:
        """Op by op where that is bit-identical to the compiled graph (float32: every matrix case,
        test_conformance.py). The compile costs about 1.1 s for a tiny model, 2.1 s for B/16; one op-by-op forward
        costs the tiny model 0.02 s (the graph as much), B/16 1.3 s (the graph 1.1 s): the compile pays back only
        after about ten forwards of one architecture, which these jobs do not run."""
        return self._forward(model, images, "pynative" if self._once_uncompiled(model.dtype_name) else self.mode)

    def once_note(self, dtype: str) -> str | None:
        return ("ran op by op (PyNative): bit-identical to the compiled graph in float32, without its compile"
                if self._once_uncompiled(dtype) else None)

    def _forward(self, model: VisionTransformer, images: np.ndarray, mode: str) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        cfg = model.config
        check_images(cfg, images)
        size = (int(images.shape[2]), int(images.shape[3]))
        net = self.stage_net(model, size, mode)
        was_training = model.training
        if was_training:
            model.set_train(False)
        try:
            outs = net(Tensor(np.ascontiguousarray(images, dtype=np.float32)))
        finally:
            if was_training:
                model.set_train(True)
        return {name: o.asnumpy().astype(np.float32, copy=False) for name, o in zip(cfg.stage_names(), outs)}

    # ----------------------------------------------------------------- files
    def save_native(self, model: VisionTransformer, path: str | os.PathLike) -> Path:
        return convert.save_ckpt(model.config, self.export(model), path)

    def load_native(self, path: str | os.PathLike, cfg: ViTConfig | None = None, *,
                    dtype: str = "float32") -> VisionTransformer:
        self.check_dtype(dtype)
        cfg, state = convert.load_ckpt(path, cfg)  # strict: digest, keys, shapes, dtypes
        return build_model(cfg, state, dtype=dtype, fused_softmax=self.fused_softmax)

class MindSporePyNativeBackend(MindSporeBackend):
    """PyNative forwards (launch_blocking), no graph compilation."""

    name = "mindspore-pynative"
    mode = "pynative"


class MindSporeExpm1Backend(MindSporeBackend):
    """The expm1-based attention softmax instead of the fused Softmax kernel, in every hook."""

    name = "mindspore-expm1"
    fused_softmax = False


__all__ = ["MindSporeBackend", "MindSporePyNativeBackend", "MindSporeExpm1Backend", "bf16_probe"]
