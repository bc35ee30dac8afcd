"""Benchmark modes of the deployment runtimes (the `bench_module` of `onnxruntime` and `openvino`).

Modes
  graph      the suite's own ONNX export (shared.deploy.onnx_graph, `logits` only, as `convert W model.onnx`
             writes it) run by the runtime in `dtype` (the backend's dtypes: ORT float32; OpenVINO float32, and
             bfloat16 where its CPU plugin offers BF16).
  timm-onnx  peer: timm's ViT of the same name (random init) exported by torch.onnx.export (the dynamo exporter,
             what timm's onnx_export.py calls), run by the same runtime: the export a timm user ships.

Threads: OMP_NUM_THREADS when set, else the runtime's default (all cores), as in shared.deploy.runtimes.
"""
from __future__ import annotations

import numpy as np

from ..bench import time_calls
from ..config import ViTConfig
from ..errors import UnsupportedError
from ..init import init_weights, random_images
from .onnx_graph import build_graph, checked_bytes

MODES: dict[str, str] = {
    "graph": "the suite's ONNX export (logits only) in this runtime",
    "timm-onnx": "peer: timm.create_model(cfg.name) exported by torch.onnx.export (dynamo), in this runtime",
}


def timm_onnx_bytes(cfg: ViTConfig) -> bytes:
    """timm's model of cfg.name (random init, pretrained=False) through torch.onnx.export, dynamic batch."""
    try:
        import timm
        import torch
    except ImportError as e:
        raise UnsupportedError(f"timm-onnx needs timm and torch: {e}") from None
    try:
        model = timm.create_model(cfg.name, pretrained=False, img_size=tuple(cfg.image_size)).eval()
    except Exception as e:  # noqa: BLE001 - a name timm does not know
        raise UnsupportedError(f"timm-onnx: timm cannot build {cfg.name!r}: {e}") from None
    x = torch.from_numpy(random_images(cfg, 2))
    prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["images"],
                             dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    return prog.model_proto.SerializeToString()


def bench(cfg: ViTConfig, *, batch: int, dtype: str, mode: str, n_warmup: int = 2, n_iter: int = 5,
          backend=None) -> dict:
    if mode not in MODES:
        raise UnsupportedError(f"backend {backend.name!r} has no bench mode {mode!r}; modes: {', '.join(MODES)}")
    backend.check_dtype(dtype)
    data = (checked_bytes(build_graph(cfg, init_weights(cfg, 0), stages=False)) if mode == "graph"
            else timm_onnx_bytes(cfg))
    runner = backend.compile(data, dtype)
    x = random_images(cfg, batch, 0).astype(np.float32)
    times = time_calls(lambda: backend.run(runner, x), n_warmup, n_iter)
    median = float(np.median(times))
    return {"images_per_s": batch / median, "median_s": median, "threads": backend_threads()}


def backend_threads() -> int | str:
    from .runtimes import thread_count

    return thread_count() or "runtime default"
