"""Run an exported graph in its runtime, framework-free: `.onnx` in ONNX Runtime, `.tflite` in LiteRT, an OpenVINO
IR `.xml` in OpenVINO, each in float32 on the CPU.

    info = artifact_io(path)                        # graph inputs and outputs: name -> shape (None: dynamic)
    layout = input_layout(name, shape, in_chans, (H, W))   # "NCHW" or "NHWC", from the shape, or UsageError
    outs = run_artifact(path, {name: array})        # output name -> float32 array

Used by the Keras deployment backends (vit_keras.backend: litert, keras-onnx, keras-openvino-ir) on the exports
they write, and by `vit-suite check W --against ARTIFACT` on files this suite did not write. An `.onnx` is opened
by `shared.deploy.onnx_file.open_onnx` first: no custom-op domain, external data only inside the model's directory
and under a size limit;
nothing in the file is executed by loading it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InvalidFileError, UnsupportedError, UsageError
from .onnx_file import open_onnx

#: file suffix -> the runtime that runs it
RUNTIMES = {".onnx": "onnxruntime", ".tflite": "ai_edge_litert", ".xml": "openvino"}


def runtime_for(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIMES:
        raise UnsupportedError(f"{path}: no runtime for {suffix!r} files (known: {', '.join(RUNTIMES)})")
    return RUNTIMES[suffix]


def _session(path: Path):
    import onnxruntime as ort

    open_onnx(path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _tflite(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    signatures = interp.get_signature_list()
    if len(signatures) != 1:
        raise InvalidFileError(f"{path}: expected one signature, found {sorted(signatures)}")
    key = next(iter(signatures))
    return interp, key


def _dims(shape) -> tuple:
    return tuple(d if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape)


def artifact_io(path: str | os.PathLike) -> tuple[dict[str, tuple], list[str]]:
    """(input name -> shape, output names in graph order); a dimension that is not fixed is None."""
    path = Path(path)
    runtime = runtime_for(path)
    if runtime == "onnxruntime":
        s = _session(path)
        return {i.name: _dims(i.shape) for i in s.get_inputs()}, [o.name for o in s.get_outputs()]
    if runtime == "ai_edge_litert":
        interp, key = _tflite(path)
        runner = interp.get_signature_runner(key)
        ins = runner.get_input_details()
        return ({k: _dims(d["shape_signature"]) for k, d in ins.items()},
                list(interp.get_signature_list()[key]["outputs"]))
    import openvino as ov

    m = ov.Core().read_model(str(path))
    return ({p.get_any_name(): tuple(d.get_length() if d.is_static else None for d in p.get_partial_shape())
             for p in m.inputs}, [n for o in m.outputs for n in sorted(o.get_names())])


def input_layout(name: str, shape: tuple, in_chans: int, image_size: tuple[int, int]) -> str:
    """"NCHW" or "NHWC": which layout of (in_chans, H, W) images the graph input `name` of `shape` (None: a dynamic
    dimension) takes, read from its shape, never guessed. UsageError when it takes neither (naming the shape and what
    the images are), or when both fit (e.g. 3x3 images of 3 channels, or dynamic height and width)."""
    H, W = image_size

    def fits(dims, want):
        return all(d is None or d == w for d, w in zip(dims, want))

    if len(shape) != 4:
        raise UsageError(f"graph input {name!r} has shape {list(shape)}: not a 4-D image batch")
    layouts = [lay for lay, want in (("NCHW", (in_chans, H, W)), ("NHWC", (H, W, in_chans))) if fits(shape[1:], want)]
    dims = ["?" if d is None else d for d in shape]
    if not layouts:
        raise UsageError(f"graph input {name!r} has shape {dims}, which takes neither NCHW nor NHWC images of "
                         f"{in_chans} channels at {H}x{W} (pass --image-size to match a fixed-size graph)")
    if len(layouts) == 2:
        raise UsageError(f"graph input {name!r} has shape {dims}: both NCHW and NHWC fit {in_chans}-channel {H}x{W} "
                         f"images, so the layout is ambiguous; it is never guessed (export with a fixed channel "
                         f"dimension, or check at another --image-size)")
    return layouts[0]


def load_artifact(path: str | os.PathLike):
    """A function running the graph: float32 `inputs` (name -> array) in, every output (name -> float32 array) out,
    on the CPU in float32 (OpenVINO: INFERENCE_PRECISION_HINT f32, so it does not compute in bf16 where the CPU has
    it). The runtime's session is made once, here."""
    path = Path(path)
    runtime = runtime_for(path)
    if runtime == "onnxruntime":
        s = _session(path)
        names = [o.name for o in s.get_outputs()]
        run = lambda inputs: dict(zip(names, s.run(names, inputs)))  # noqa: E731
    elif runtime == "ai_edge_litert":
        interp, key = _tflite(path)
        runner = interp.get_signature_runner(key)
        run = lambda inputs: runner(**inputs)  # noqa: E731
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        # an output tensor may carry several names (two stages that are one tensor, e.g. pre_logits = logits
        # without a head): every name maps to it
        run = lambda inputs: {n: r for o, r in compiled(inputs).items() for n in sorted(o.get_names())}  # noqa: E731

    def call(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = run({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()})
        return {k: np.asarray(v, dtype=np.float32) for k, v in outs.items()}

    return call


def run_artifact(path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the graph for `inputs`, once (load_artifact(path)(inputs))."""
    return load_artifact(path)(inputs)


__all__ = ["RUNTIMES", "artifact_io", "input_layout", "load_artifact", "run_artifact", "runtime_for"]
