"""`TorchBackend`: the suite's Backend interface over vit_torch, and its variant `TorchExplicitBackend`.

Float32 matmul settings are pinned explicitly (never inherited): TF32 is off for CUDA matmul
and cuDNN, and the oneDNN (mkldnn) CPU backend stays enabled (torch's default CPU path; its
float32 GEMMs accumulate in float32). bfloat16/float16 models hold their weights in that dtype;
their errors are judged by the low-precision rule of shared/tolerances.py.

The training hooks (shared.backend.Backend) run vit_torch.train on a model from `trainable` (so a variant trains
with its own attention); `loss_and_grads(dtype="float64")` is the suite's gradient oracle (SDPA attention in
float64). The benchmark hooks run vit_torch.bench.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np
import torch

from shared.backend import Backend
from shared.config import ViTConfig
from shared.reference import check_images

from . import convert
from .model import TORCH_DTYPES, VisionTransformer, build_model, load_canonical, to_canonical


def pin_float32_numerics() -> None:
    """Keep float32 matmuls in true float32 everywhere (no TF32 / reduced-precision reductions)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.mkldnn.enabled = True
    torch.set_float32_matmul_precision("highest")


class TorchBackend(Backend):
    name = "torch"
    requires = ("torch",)
    dtypes = ("float32", "bfloat16", "float16")
    native_suffixes = (".pt", ".pth", ".safetensors")
    train_module = "vit_torch.train"
    grad_dtypes = ("float32", "float64")  # float64: the suite's gradient oracle
    bench_module = "vit_torch.bench"
    #: F.scaled_dot_product_attention (True) or the explicit attention that can return its maps
    fused_attn: ClassVar[bool] = True

    def __init__(self) -> None:
        pin_float32_numerics()

    def build(self, cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *,
              dtype: str = "float32", seed: int = 0) -> VisionTransformer:
        self.check_dtype(dtype)
        return build_model(cfg, state, dtype=dtype, seed=seed, fused_attn=self.fused_attn)

    def export(self, model: VisionTransformer) -> dict[str, np.ndarray]:
        return to_canonical(model)

    def load_weights(self, model: VisionTransformer, state: Mapping[str, np.ndarray]) -> None:
        load_canonical(model, state)

    def forward(self, model: VisionTransformer, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        cfg = model.config
        check_images(cfg, images)  # the same checks and messages in every backend
        p = model.patch_embed.proj.weight
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(p.device, p.dtype)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                stages = model.forward_stages(x)
        finally:
            model.train(was_training)
        return {k: stages[k].to("cpu", torch.float32).numpy() for k in cfg.stage_names()}

    def save_native(self, model: VisionTransformer, path: str | os.PathLike) -> Path:
        return convert.save_state_dict(model.config, model.state_dict(), path)

    def load_native(self, path: str | os.PathLike, cfg: ViTConfig | None = None, *,
                    dtype: str = "float32") -> VisionTransformer:
        self.check_dtype(dtype)
        cfg, tensors = convert.load_state_dict_file(path, cfg)
        model = VisionTransformer(cfg, fused_attn=self.fused_attn)
        with torch.no_grad():
            model.load_state_dict(tensors, strict=True)
        return model.to(TORCH_DTYPES[dtype]).eval()

    # --------------------------------------------------------------- training
    def trainable(self, cfg, state, dtype="float32") -> VisionTransformer:
        return build_model(cfg, state, dtype=dtype, fused_attn=self.fused_attn)  # float64 too: the oracle


class TorchExplicitBackend(TorchBackend):
    """The explicit attention path (float32 scores and softmax, maps available) in every hook."""

    name = "torch-explicit"
    fused_attn = False


__all__ = ["TorchBackend", "TorchExplicitBackend", "pin_float32_numerics"]
