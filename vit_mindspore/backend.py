"""`MindSporeBackend`: the suite's Backend interface over vit_mindspore.

    be = MindSporeBackend()                   # mode="graph" (default, fastest) or "pynative"
    model = be.build(cfg, state, dtype="float16")
    stages = be.forward(model, images)        # any image size divisible by the patch

Process-wide settings, made once: CPU kernel threads = the core count (MindSpore defaults to 25
threads, which oversubscribes small machines), and `launch_blocking()` (synchronous PyNative:
3-4x faster than the asynchronous default on CPU for these models).

Graph mode compiles one graph per (model, input size, dtype) with `mindspore.jit`; compiled
stage networks are cached on the model. bfloat16 is not offered: MindSpore's CPU backend has no
bfloat16 MatMul / BatchMatMul / Softmax / Erf kernels (see `bf16_probe`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

import mindspore as ms
from mindspore import Tensor

from shared import weights as W
from shared.backend import Backend, BackendError
from shared.config import ViTConfig
from shared.init import init_weights
from shared.reference import check_images

from . import convert
from .model import StageNet, VisionTransformer, build_model

MODES = ("graph", "pynative")
_configured = False


def configure_runtime(threads: int | None = None) -> None:
    """Thread count = cores and synchronous launches, once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = threads
    try:
        ms.set_device("CPU")
    except Exception:  # already set by the caller
        pass
    try:
        ms.device_context.cpu.op_tuning.threads_num(int(n))
    except Exception:  # set already (it may only be set once): keep the caller's choice
        pass
    try:
        ms.runtime.launch_blocking()
    except Exception:
        pass


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

    def __init__(self, mode: str = "graph", fused_softmax: bool = True) -> None:
        """mode: "graph" (mindspore.jit, fastest) or "pynative". fused_softmax: the attention uses
        MindSpore's Softmax kernel (default, faster) or, if False, the expm1-based softmax; see
        vit_mindspore.layers.Softmax for what each costs in accuracy."""
        if mode not in MODES:
            raise BackendError(f"MindSpore mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.fused_softmax = bool(fused_softmax)
        configure_runtime()

    def check_dtype(self, dtype: str) -> None:
        if dtype == "bfloat16":
            why = bf16_probe() or "bfloat16 is not validated for this backend"
            raise BackendError(f"backend 'mindspore' does not support bfloat16: MindSpore's CPU backend lacks "
                               f"bfloat16 kernels ({why}); use float32 or float16")
        super().check_dtype(dtype)

    # ------------------------------------------------------------------ build
    def build(self, cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *,
              dtype: str = "float32", seed: int = 0) -> VisionTransformer:
        self.check_dtype(dtype)
        if state is None:
            state = init_weights(cfg, seed)
        W.validate_state(cfg, state)
        return build_model(cfg, state, dtype, self.fused_softmax)

    def export(self, model: VisionTransformer) -> dict[str, np.ndarray]:
        return convert.to_canonical(model)

    # ---------------------------------------------------------------- forward
    def stage_net(self, model: VisionTransformer, image_size: tuple[int, int]):
        """The (cached) callable returning all stages at one input size in this backend's mode."""
        cache = model.__dict__.setdefault("_vit_stage_nets", {})
        key = (self.mode, tuple(image_size))
        if key not in cache:
            net = StageNet(model, image_size)
            cache[key] = ms.jit(net) if self.mode == "graph" else net
        return cache[key]

    def forward(self, model: VisionTransformer, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        cfg = model.config
        check_images(cfg, images)
        size = (int(images.shape[2]), int(images.shape[3]))
        net = self.stage_net(model, size)
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
        cfg, state = convert.load_ckpt(path, cfg)
        model = build_model(cfg, {k: np.zeros_like(v) for k, v in state.items()}, "float32", self.fused_softmax)
        convert.load_into(model, state, str(path))  # strict: load_param_into_net, not-loaded lists must be empty
        if dtype != "float32":
            model = build_model(cfg, convert.to_canonical(model), dtype, self.fused_softmax)
        return model


__all__ = ["MindSporeBackend", "BackendError", "configure_runtime", "bf16_probe"]
