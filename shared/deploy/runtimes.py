"""The deployment runtimes as conformance backends: `onnxruntime` and `openvino` run the suite's ONNX graph.

    be = get_backend("onnxruntime")
    model = be.build(cfg, state)          # build_graph(cfg, state, stages=True) in memory -> an inference session
    stages = be.forward(model, images)    # every named stage: each is an output of the graph
    be.export(model)                      # the initializers read back from the graph, by canonical name
    be.save_native(model, "m.onnx")       # shared.deploy.onnx_file.write_onnx; load_native reads it back safely

The graph is built for one image size (the export's); `forward` on another size builds (once) the graph for that
size, as every backend accepts any size divisible by the patch.

  onnxruntime  CPUExecutionProvider, float32. float16 is not offered: ORT's CPU provider has no float16 kernel
               for MatMul, Add, Mul or LayerNormalization, and runs a float16 graph by inserting casts to float32
               around them (InsertedPrecisionFreeCast nodes): that is not a float16 run, so `check --dtype float16`
               reports the backend unsupported.
  openvino     the same graph through OpenVINO's ONNX front end on the CPU plugin, float32
               (INFERENCE_PRECISION_HINT f32); bfloat16 with the hint bf16, only where the plugin reports BF16 among
               its OPTIMIZATION_CAPABILITIES (AVX512-BF16 / AMX); elsewhere the plugin would silently run float32,
               so the backend refuses bfloat16 there as unsupported.

Threads: OMP_NUM_THREADS, when set (what the tool's children and `--threads` set for every framework), is the
runtime's intra-op thread count (ORT intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS); unset, the runtime's
default. Inference only: no training or gradient hooks (reported unsupported).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from .. import weights as W
from ..backend import Backend
from ..config import ViTConfig
from ..errors import ConfigError, UnsupportedError
from ..init import init_weights
from ..reference import check_images
from .onnx_file import read_onnx, write_onnx
from .onnx_graph import INPUT_NAME, build_graph, checked_bytes


def thread_count() -> int:
    """OMP_NUM_THREADS when set to a positive integer, else 0 (the runtime's default)."""
    v = os.environ.get("OMP_NUM_THREADS", "")
    return int(v) if v.isdigit() and int(v) > 0 else 0


class DeployedModel:
    """A graph in a runtime: its config, the float32 canonical state it was built from, and one compiled graph
    per image size (the config's first)."""

    def __init__(self, backend: "_GraphBackend", cfg: ViTConfig, state: Mapping[str, np.ndarray], dtype: str):
        self.backend, self.config, self.dtype = backend, cfg, dtype
        self.state = state
        self.proto = build_graph(cfg, state, stages=True, dtype=backend.graph_dtype(dtype))
        self.output_names = [o.name for o in self.proto.graph.output]
        self._runners = {tuple(cfg.image_size): backend.compile(checked_bytes(self.proto), dtype)}

    def runner(self, size: tuple[int, int]):
        if size not in self._runners:
            cfg = self.config.with_image_size(size)
            if cfg.rel_pos == "table" and tuple(cfg.grid) != tuple(self.config.grid):  # as the reference refuses it
                raise ConfigError(f"config {cfg.name!r}: its relative position table is stored for the "
                                  f"{self.config.grid[0]}x{self.config.grid[1]} patch grid, the input has "
                                  f"{cfg.grid[0]}x{cfg.grid[1]}; resample the table first "
                                  f"(shared.posemb.resize_rel_pos_table, timm's rule)")
            proto = build_graph(cfg, self.state, stages=True, dtype=self.backend.graph_dtype(self.dtype))
            self._runners[size] = self.backend.compile(checked_bytes(proto), self.dtype)
        return self._runners[size]


class _GraphBackend(Backend):
    """What both runtimes share: the graph, the canonical state read back from it, the .onnx file."""

    native_suffixes: ClassVar[tuple[str, ...]] = (".onnx",)
    bench_module: ClassVar[str | None] = "shared.deploy.bench"

    def graph_dtype(self, dtype: str) -> str:
        return "float32"

    def compile(self, data: bytes, dtype: str) -> Any:  # pragma: no cover - each runtime's own
        """A runner of the serialized graph `data` computing in `dtype`."""
        raise NotImplementedError

    def run(self, runner: Any, x: np.ndarray) -> list[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def build(self, cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *, dtype: str = "float32",
              seed: int = 0) -> DeployedModel:
        self.check_dtype(dtype)
        if state is None:
            state = init_weights(cfg, seed)
        W.validate_state(cfg, state, source=f"{self.name} build")
        state = {k: np.asarray(state[k], dtype=np.float32) for k in W.expected_shapes(cfg)}
        return DeployedModel(self, cfg, state, dtype)

    def forward(self, model: DeployedModel, images: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(images, dtype=np.float32)
        check_images(model.config, x)
        outs = self.run(model.runner(tuple(x.shape[2:])), x)
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(model.output_names, outs)}

    def export(self, model: DeployedModel) -> dict[str, np.ndarray]:
        from onnx import numpy_helper

        keys = W.expected_shapes(model.config)
        return {t.name: np.array(numpy_helper.to_array(t), dtype=np.float32)
                for t in model.proto.graph.initializer if t.name in keys}

    def save_native(self, model: DeployedModel, path: str | os.PathLike) -> Path:
        return write_onnx(path, model.config, self.export(model))

    def load_native(self, path: str | os.PathLike, cfg: ViTConfig | None = None, *,
                    dtype: str = "float32") -> DeployedModel:
        """An .onnx this suite wrote, read safely (shared.deploy.onnx_file.read_onnx: its config from the file's
        metadata, `cfg` unused), built again with every stage as an output."""
        file_cfg, state = read_onnx(path)
        return self.build(file_cfg, state, dtype=dtype)


class OnnxRuntimeBackend(_GraphBackend):
    name = "onnxruntime"
    requires = ("onnxruntime", "onnx")
    dtypes = ("float32",)

    def options(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3  # unused initializers (a resampled table's source) are expected
        so.intra_op_num_threads = thread_count()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return so

    def compile(self, data: bytes, dtype: str):
        import onnxruntime as ort

        return ort.InferenceSession(data, self.options(), providers=["CPUExecutionProvider"])

    def run(self, runner, x: np.ndarray) -> list[np.ndarray]:
        return runner.run(None, {INPUT_NAME: x})


_CORE = None


def openvino_core():
    """One OpenVINO Core per process."""
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def openvino_has_bf16() -> bool:
    """Whether the CPU plugin computes in bfloat16 (BF16 among its OPTIMIZATION_CAPABILITIES)."""
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend(_GraphBackend):
    name = "openvino"
    requires = ("openvino", "onnx")
    dtypes = ("float32", "bfloat16")

    def check_dtype(self, dtype: str) -> None:
        super().check_dtype(dtype)
        if dtype == "bfloat16" and not openvino_has_bf16():
            caps = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            raise UnsupportedError(f"backend 'openvino': bfloat16 needs a CPU the plugin computes bf16 on "
                                   f"(AVX512-BF16 or AMX); this one offers {list(caps)}, where the bf16 hint would "
                                   f"silently run float32")

    def compile(self, data: bytes, dtype: str):
        core = openvino_core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if dtype == "bfloat16" else "f32"}
        if thread_count():
            config["INFERENCE_NUM_THREADS"] = thread_count()
        return core.compile_model(core.read_model(io.BytesIO(data)), "CPU", config)

    def run(self, runner, x: np.ndarray) -> list[np.ndarray]:
        result = runner({INPUT_NAME: x})
        return [result[out] for out in runner.outputs]  # the graph's outputs, in order
