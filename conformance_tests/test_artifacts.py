"""Deployed artifacts: the Keras model on Keras' OpenVINO backend, exported by Keras' own `model.export` and run by
a runtime (litert, keras-openvino-ir, keras-onnx), and `vit-suite check W --against ARTIFACT` for graphs this suite
did not write (a timm model's `torch.onnx.export`, a `.tflite`), each held to the float64 reference under the float32
bound of shared/tolerances.py.

These targets are not in the in-process backend matrix (conftest.py): every new model is an export taking seconds.
The CI-sized set runs litert and keras-openvino on two family presets (DINOv2 with registers: qk-norm, SwiGLU,
LayerScale, registers; SigLIP: the MAP head, tanh GELU), one model per preset shared by the tests; the seed presets
and the two other Keras export routes are slow-marked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared import reference, weights as W
from shared.backend import get_backend
from shared.cli import main
from shared.cli.check import prove_artifact
from shared.cli.results import against_verdict
from shared.deploy.artifact import input_layout
from shared.errors import EXIT_OUT_OF_BOUNDS, EXIT_USAGE, UsageError
from shared.init import random_images
from shared.testing import SEED_FAST, SEED_SLOW, assert_conforms, case

ROOT = Path(__file__).resolve().parents[1]
FAMILY_CI = ["tiny_dinov2_reg", "tiny_siglip"]
SEEDS = [pytest.param(p, marks=pytest.mark.slow) for p in SEED_FAST + SEED_SLOW]  # B/16-sized: exports of minutes

_models: dict = {}


def deployed(backend: str, preset: str):
    """One exported model per (backend, preset) for the module: each export takes seconds."""
    if (backend, preset) not in _models:
        cfg, state, _ = case(preset)
        _models[backend, preset] = get_backend(backend).build(cfg, state)
    return _models[backend, preset]


# ---------------------------------------------------------------- the input layout, read from the graph
def test_the_input_layout_is_read_from_the_shape_and_never_guessed():
    assert input_layout("x", (None, 3, 32, 40), 3, (32, 40)) == "NCHW"
    assert input_layout("x", (1, 32, 40, 3), 3, (32, 40)) == "NHWC"
    assert input_layout("x", (None, 3, None, None), 3, (32, 40)) == "NCHW"  # dynamic size, fixed channels
    assert input_layout("x", (None, None, None, 1), 1, (20, 20)) == "NHWC"
    with pytest.raises(UsageError, match="ambiguous"):  # 3x3 images of 3 channels: both fit
        input_layout("x", (1, 3, 3, 3), 3, (3, 3))
    with pytest.raises(UsageError, match="ambiguous"):
        input_layout("x", (None, None, None, None), 3, (32, 40))
    with pytest.raises(UsageError, match="neither"):
        input_layout("x", (1, 1, 32, 40), 3, (32, 40))


# ---------------------------------------------------------------- Keras' exports in their runtimes
@pytest.mark.parametrize("preset", FAMILY_CI + SEEDS)
def test_litert_every_stage(preset):
    """`model.export(format="litert")` with every stage an output, run by LiteRT's interpreter in float32."""
    cfg, _, x = case(preset)
    out = get_backend("litert").forward(deployed("litert", preset), x)
    assert list(out) == cfg.stage_names() and all(v.dtype == np.float32 for v in out.values())
    assert_conforms(preset, "float32", out)


@pytest.mark.slow
@pytest.mark.parametrize("preset", FAMILY_CI)
def test_keras_openvino_ir_every_stage(preset):
    """`model.export(format="openvino")` (TensorFlow), run by OpenVINO with the f32 inference hint."""
    _, _, x = case(preset)
    assert_conforms(preset, "float32", get_backend("keras-openvino-ir").forward(deployed("keras-openvino-ir", preset), x))


def _in_keras_process(keras_backend: str, code: str, **env) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=1800,
                       env=dict(os.environ, KERAS_BACKEND=keras_backend, **env))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


_JUDGE = """
import json, sys
from shared.backend import get_backend
from shared.testing import assert_conforms, case
be, out = get_backend({backend!r}), {{}}
for preset in {presets!r}:
    cfg, state, x = case(preset)
    v = assert_conforms(preset, "float32", be.forward(be.build(cfg, state), x))
    out[preset] = max(s.rel_l2 / s.bound for s in v.stages)
{extra}
print(json.dumps(out))
"""

#: Keras on OpenVINO is inference only, float32: the training hooks and the half dtypes are refused by name
_OPENVINO_REFUSALS = """
from shared.errors import UnsupportedError
for call in (lambda: be.loss_and_grads(cfg, state, x, [0, 1]), lambda: be.train(cfg, state, None, None, None),
             lambda: be.build(cfg, state, dtype="bfloat16")):
    try:
        call()
    except UnsupportedError as e:
        out.setdefault("refused", []).append(str(e))
"""

#: a forward's stages come from one OpenVINO model (vit_keras.model.openvino_numpy): Keras' own conversion, one
#: compile per stage, gives the same bits
_ONE_COMPILE = """
import numpy as np, keras
cfg, state, x = case({preset!r})
model = be.build(cfg, state)
xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
own = {{k: np.asarray(keras.ops.convert_to_numpy(v), np.float32)
        for k, v in model.forward_stages(keras.ops.convert_to_tensor(xl), training=False).items()}}
out["one_compile_differs"] = [k for k, v in be.forward(model, x).items() if not np.array_equal(v, own[k])]
"""

#: in a process the tool started (VIT_SUITE_CHILD), Keras-on-OpenVINO's SciPy signal package is imported on first
#: use only (vit_keras.backend.KERAS_DEFERRED_IMPORTS), and whole then
_DEFERRED_SCIPY = """
out["signal_ran_before_use"] = "scipy.signal._signaltools" in sys.modules
import numpy as np
import scipy.signal
n = np.arange(8)
out["hann_matches"] = bool(np.allclose(scipy.signal.get_window("hann", 8), 0.5 - 0.5 * np.cos(2 * np.pi * n / 8)))
out["whole_after_use"] = type(sys.modules["scipy.signal"]).__name__ == "module" and sys.modules["scipy"].signal is sys.modules["scipy.signal"]
"""


def test_keras_on_openvino_family_presets():
    """Keras 3.15's OpenVINO backend runs vit_keras unchanged (keras.ops only) within the float32 bound, in a
    process as `check` starts it (its deferred imports included)."""
    out = _in_keras_process("openvino", _JUDGE.format(backend="keras-openvino", presets=FAMILY_CI,
                                                      extra=_OPENVINO_REFUSALS + _ONE_COMPILE.format(preset=FAMILY_CI[0])
                                                      + _DEFERRED_SCIPY), VIT_SUITE_CHILD="1")
    assert set(out) == {*FAMILY_CI, "refused", "one_compile_differs", "signal_ran_before_use", "hann_matches",
                        "whole_after_use"}
    assert out["one_compile_differs"] == [], out["one_compile_differs"]
    assert all(out[p] <= 1 for p in FAMILY_CI)
    assert len(out["refused"]) == 3 and "keras-openvino" in out["refused"][0]
    assert out["signal_ran_before_use"] is False and out["hann_matches"] and out["whole_after_use"], out


@pytest.mark.slow
def test_keras_on_openvino_seed_presets():
    presets = SEED_FAST + SEED_SLOW
    out = _in_keras_process("openvino", _JUDGE.format(backend="keras-openvino", presets=presets, extra=""))
    assert set(out) == set(presets)


@pytest.mark.slow
def test_keras_onnx_export_in_onnxruntime():
    """`model.export(format="onnx")`: Keras exports ONNX through torch.onnx (on TensorFlow it needs tf2onnx)."""
    out = _in_keras_process("torch", _JUDGE.format(backend="keras-onnx", presets=FAMILY_CI, extra=""))
    assert set(out) == set(FAMILY_CI)


# ---------------------------------------------------------------- check --against an artifact
@pytest.fixture(scope="module")
def timm_export(tmp_path_factory):
    """A random-init tiny timm ViT as a user exports it (`torch.onnx.export`, dynamic batch), its weights converted
    to a canonical file, and the same export with one weight of the last block perturbed."""
    import timm
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("timm_onnx")
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8,
                          embed_dim=32, depth=2, num_heads=2).eval()
    save_file(m.state_dict(), str(d / "timm.safetensors"))
    assert main(["convert", str(d / "timm.safetensors"), str(d / "w.safetensors"), "--num-heads", "2",
                 "--layer-norm-eps", "1e-6", "--gelu", "erf", "--pool", "token", "--image-size", "32x32"]) == 0

    def export(path):
        torch.onnx.export(m, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["pixel_values"],
                          output_names=["out"], dynamic_axes={"pixel_values": {0: "batch"}}, dynamo=False,
                          opset_version=18)

    export(d / "timm.onnx")
    with torch.no_grad():
        m.blocks[1].mlp.fc2.weight[0, 0] += 0.5
    export(d / "perturbed.onnx")
    return d


def _against(weights, artifact, tmp_path, *extra) -> tuple[int, dict]:
    code = main(["check", str(weights), "--backends", "torch", "--against", str(artifact), "--json",
                 str(tmp_path / "c.json"), "--force", *extra])
    return code, json.loads((tmp_path / "c.json").read_text())["against"]


def test_a_timm_onnx_export_passes_check_against(timm_export, tmp_path):
    code, a = _against(timm_export / "w.safetensors", timm_export / "timm.onnx", tmp_path,
                       "--against-output", "out=logits")
    assert code == 0, a
    assert a["status"] == "pass" and a["library"] == "onnxruntime" and a["layout"] == "NCHW"
    assert [s["stage"] for s in a["stages"]] == ["logits"] and 0 < a["rel_l2"] <= a["bound"]
    assert "no normalisation added" in a["message"]


def _prove(weights, artifact, x, named=None) -> dict:
    """What `check WEIGHTS --against ARTIFACT` computes, without running a backend beside it."""
    cfg, state = W.load(weights)
    return prove_artifact(str(artifact), cfg, reference.forward(cfg, state, x), x, named)


def test_a_perturbed_timm_onnx_export_fails_check_against(timm_export):
    cfg, _ = W.load(timm_export / "w.safetensors")
    a = _prove(timm_export / "w.safetensors", timm_export / "perturbed.onnx", random_images(cfg, 2, 0))
    assert a["status"] == "FAIL" and a["stage"] == "logits" and a["rel_l2"] > a["bound"]
    assert against_verdict(a)[0] == EXIT_OUT_OF_BOUNDS  # the check's exit code (check_outcome)
    # a graph output that names no stage is refused before anything runs
    assert main(["check", str(timm_export / "w.safetensors"), "--against", str(timm_export / "timm.onnx"),
                 "--against-output", "out=no_such_stage"]) == EXIT_USAGE


def test_a_tflite_against_checks_every_stage_and_names_the_first_out_of_bound(tmp_path):
    """A .tflite with every stage an output (Keras' LiteRT export, NHWC input): every stage passes against the file
    it came from; against a file with one weight of block 1 perturbed, block_0 still passes and block_1 is named."""
    preset = "tiny_siglip"
    cfg, state, x = case(preset)
    model = deployed("litert", preset)
    get_backend("litert").forward(model, x)  # exported on first use
    tflite, = Path(model.folder).glob("*.tflite")
    W.save(tmp_path / "w.safetensors", cfg, state)
    a = _prove(tmp_path / "w.safetensors", tflite, x)
    assert a["status"] == "pass" and a["library"] == "ai_edge_litert" and a["layout"] == "NHWC"
    assert [s["stage"] for s in a["stages"]] == cfg.stage_names() and all(s["passed"] for s in a["stages"])
    bad = dict(state)
    bad["blocks.1.mlp.fc2.weight"] = bad["blocks.1.mlp.fc2.weight"].copy()
    bad["blocks.1.mlp.fc2.weight"][0, 0] += 0.5
    W.save(tmp_path / "bad.safetensors", cfg, bad)
    a = _prove(tmp_path / "bad.safetensors", tflite, x)
    assert a["status"] == "FAIL" and a["stage"] == "block_1" and against_verdict(a)[0] == EXIT_OUT_OF_BOUNDS
    assert [s["passed"] for s in a["stages"][:3]] == [True, True, True]  # patch_embed, embed, block_0


def test_an_unsafe_onnx_is_refused_before_any_runtime_sees_it(tmp_path):
    """A custom-op domain, external data outside the model's folder, and a truncated protobuf: InvalidFileError
    (exit 3) naming the file and what is wrong; nothing is run."""
    import onnx
    from onnx import TensorProto, helper

    from shared.deploy.onnx_file import open_onnx
    from shared.errors import InvalidFileError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    custom = helper.make_model(helper.make_graph([helper.make_node("Evil", ["x"], ["y"], domain="com.evil")], "g",
                                                 [x], [y]), opset_imports=[helper.make_opsetid("", 18),
                                                                           helper.make_opsetid("com.evil", 1)])
    onnx.save(custom, tmp_path / "custom.onnx")
    with pytest.raises(InvalidFileError, match="custom-op domain.*com.evil"):
        open_onnx(tmp_path / "custom.onnx")
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("float_data")
    w.external_data.add(key="location", value="../outside.bin")
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4)
    (tmp_path / "m").mkdir()
    outside = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                                opset_imports=[helper.make_opsetid("", 18)])
    (tmp_path / "m" / "outside.onnx").write_bytes(outside.SerializeToString())
    with pytest.raises(InvalidFileError, match="external data location '../outside.bin' refused"):
        open_onnx(tmp_path / "m" / "outside.onnx")
    (tmp_path / "cut.onnx").write_bytes((tmp_path / "custom.onnx").read_bytes()[:40])
    with pytest.raises(InvalidFileError, match="not a valid ONNX protobuf"):
        open_onnx(tmp_path / "cut.onnx")
