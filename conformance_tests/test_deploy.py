"""The suite's ONNX export and the deployment runtimes (shared/deploy): ONNX Runtime and OpenVINO as conformance
backends, stage by stage against the float64 reference, and the .onnx file read back bit-exact.

The runtimes are inference only, so the framework backends' matrix (conftest.py) leaves them out; here every tiny
preset (family presets included), tiny_relpos (the shared RelPosMlp bias) and the fast seed preset run on both, one module-scoped backend each, in this
process. Hostile .onnx files are in test_hostile.py.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from shared import reference, tolerances
from shared import weights as W
from shared.backend import get_backend
from shared.convert.formats import detect_format
from shared.convert.io import read_any, write_any
from shared.deploy.onnx_file import read_onnx, write_onnx
from shared.deploy.onnx_graph import DIGEST_KEY, OPSET, build_graph, weights_sha256
from shared.deploy.runtimes import openvino_has_bf16
from shared.errors import ConfigError, MismatchError, UnsupportedError
from shared.posemb import rel_pos_index
from shared.presets import get_preset
from shared.testing import SEED_FAST, TINY_PRESETS, assert_conforms, case, reference_stages

RUNTIMES = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def runtimes():
    return {name: get_backend(name) for name in RUNTIMES}


@pytest.mark.parametrize("preset", TINY_PRESETS + ["tiny_relpos", "tiny_rpn", "tiny_naflex_par", "tiny_naflex_parfac",
                                    "tiny_sapiens2_gqa", "tiny_parallel", "tiny_prefix_pool"] + SEED_FAST)
def test_every_preset_exports_and_conforms_on_both_runtimes(runtimes, preset):
    """Built from the canonical state into an in-memory graph with every stage an output, run by each runtime:
    every stage within the float32 bound of the float64 reference; the initializers read back bit-exact."""
    cfg, state, x = case(preset)
    for name, be in runtimes.items():
        model = be.build(cfg, state)
        assert_conforms(preset, "float32", be.forward(model, x))
        back = be.export(model)
        assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state), name


def test_another_image_size_builds_the_graph_for_it(runtimes):
    """A graph is built for one image size; forward at another builds (once) the graph for that size, the learned
    table resampled by shared.posemb at export time, like every backend."""
    cfg, state, x = case("tiny", image_size=(48, 40))
    ref = reference.forward(cfg, state, x)
    for be in runtimes.values():
        v = tolerances.judge(cfg.with_image_size((48, 40)), "float32", be.forward(be.build(cfg, state), x), ref)
        assert v.passed, v.summary()


def test_a_naflex_style_table_is_resampled_at_export_by_its_kernel(runtimes):
    """A NaFlex / SigLIP 2 style config (no class token, a learned 6x5 table for a 4x4 grid, bilinear_antialias):
    the graph's constant `vit_suite.pos_table` is shared.posemb's resampling, as in the reference; the learned
    table still reads back bit-exact."""
    from shared.init import init_weights, random_images

    cfg = get_preset("tiny").replace(name="tiny_naflex_like", class_token="none", pos_grid=(6, 5), pool="map",
                                     gelu="tanh", resize_kernel="bilinear_antialias")
    state, x = init_weights(cfg, 0), random_images(cfg, 2, 0, "normal", None)
    ref = reference.forward(cfg, state, x)
    for name, be in runtimes.items():
        model = be.build(cfg, state)
        v = tolerances.judge(cfg, "float32", be.forward(model, x), ref)
        assert v.passed, (name, v.summary())
        assert all(np.array_equal(be.export(model)[k], state[k]) for k in state), name


def test_relative_position_biases_at_another_image_size(runtimes):
    """The RelPosMlp's log coordinates and index are constants of the export's grid: another size builds them for
    that grid; a learned relative table is stored for one grid, and both the reference and the runtimes refuse
    another one by name."""
    cfg, state, x = case("tiny_relpos", image_size=(40, 24))
    ref = reference.forward(cfg, state, x)
    beit, beit_state, beit_x = case("tiny_beit", image_size=(40, 24))
    with pytest.raises(ConfigError, match="resize_rel_pos_table"):
        reference.forward(beit, beit_state, beit_x)
    for be in runtimes.values():
        v = tolerances.judge(cfg.with_image_size((40, 24)), "float32", be.forward(be.build(cfg, state), x), ref)
        assert v.passed, v.summary()
        with pytest.raises(ConfigError, match="resize_rel_pos_table"):
            be.forward(be.build(beit, beit_state), beit_x)


def test_the_exported_file_is_checked_opset_dynamic_batch_and_carries_config_and_digest(tmp_path):
    cfg, state, _ = case("tiny_siglip")
    path = write_onnx(tmp_path / "m.onnx", cfg, state, stages=True)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == OPSET >= 18
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 40]
    assert [o.name for o in model.graph.output] == cfg.stage_names()
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[DIGEST_KEY] == weights_sha256(cfg, state) and meta["vit_config"] == cfg.to_json()
    names = {t.name for t in model.graph.initializer}
    assert set(state) <= names  # by canonical key
    plain = onnx.load(str(write_onnx(tmp_path / "p.onnx", cfg, state)))
    assert [o.name for o in plain.graph.output] == ["logits"]


@pytest.mark.parametrize("preset", ["tiny", "tiny_pretrain", "tiny_dinov2_reg", "tiny_siglip", "tiny_t2t",
                                    "tiny_beit", "tiny_relpos", "tiny_eva02", "tiny_rope_mixed", "tiny_aimv2"])
def test_canonical_to_onnx_to_canonical_is_bit_exact(tmp_path, preset):
    cfg, state, _ = case(preset)
    dst = tmp_path / "m.onnx"
    write_any(str(dst), "onnx", cfg, state)
    assert detect_format(dst) == "onnx"
    cfg2, back = read_any(str(dst))
    assert cfg2 == cfg and set(back) == set(state)
    assert all(back[k].dtype == np.float32 and np.array_equal(back[k], state[k]) for k in state)


def _run_tampered(be, proto, x):
    runner = be.compile(proto.SerializeToString(), "float32")
    return dict(zip([o.name for o in proto.graph.output], be.run(runner, x)))


@pytest.mark.parametrize("preset,key,stage", [
    ("tiny", "blocks.1.mlp.fc1.weight", "block_1"), ("tiny", "head.bias", "logits"),
    ("tiny_beit", "blocks.1.attn.rel_pos.relative_position_bias_table", "block_1"),
    ("tiny_relpos", "rel_pos.mlp.fc2.weight", "block_0"), ("tiny_rope_mixed", "rope.freqs", "block_0")])
def test_one_tampered_initializer_fails_at_the_stage_that_uses_it(runtimes, tmp_path, preset, key, stage):
    """One weight perturbed by 1e-3 of its scale inside the graph: each runtime's first stage out of bound is the
    one that uses it (the stages before it still pass; a relative position table or MLP is computed in the graph,
    not folded into a constant at export, and so is RoPE-Mixed's rotary table from `rope.freqs`, whose first entry
    is block 0's); the tampered file is refused by its weights digest. A relative table's first entry is read by
    one (query, key) pair only: its zero-offset row (every patch's score for itself), head 0, is perturbed by 1e-2
    instead (a shift of a head's whole column would be softmax-invariant)."""
    from onnx import numpy_helper

    cfg, state, x = case(preset)
    proto = build_graph(cfg, state, stages=True)
    t = next(t for t in proto.graph.initializer if t.name == key)
    a = numpy_helper.to_array(t).copy()
    at, size = 0, 1e-3
    if key.endswith("relative_position_bias_table"):
        at, size = int(rel_pos_index(cfg.grid, cfg.num_prefix_tokens)[-1, -1]) * cfg.num_heads, 1e-2
    a.flat[at] += size * max(float(np.abs(a).max()), 1.0)
    t.CopyFrom(numpy_helper.from_array(a, key))
    for be in runtimes.values():
        v = tolerances.judge(cfg, "float32", _run_tampered(be, proto, x), reference_stages(preset))
        assert v.first_failure is not None and v.first_failure.stage == stage, (be.name, v.summary())
    path = tmp_path / "tampered.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(MismatchError, match=DIGEST_KEY):
        read_onnx(path)


def test_unsupported_dtypes_are_said_not_computed(runtimes):
    """ORT's CPU provider has no float16 kernels for MatMul/Add/LayerNormalization (it inserts casts to float32):
    float16 is unsupported. OpenVINO's bf16 hint is a bfloat16 run only where the CPU plugin offers BF16."""
    cfg, state, x = case("tiny")
    with pytest.raises(UnsupportedError, match="float16"):
        runtimes["onnxruntime"].build(cfg, state, dtype="float16")
    ov = runtimes["openvino"]
    if openvino_has_bf16():
        assert_conforms("tiny", "bfloat16", ov.forward(ov.build(cfg, state, dtype="bfloat16"), x))
    else:
        with pytest.raises(UnsupportedError, match="bfloat16"):
            ov.build(cfg, state, dtype="bfloat16")


def test_native_file_round_trip_runs_the_same(runtimes, tmp_path):
    cfg, state, x = case("tiny_deit")
    for name, be in runtimes.items():
        model = be.build(cfg, state)
        again = be.load_native(be.save_native(model, tmp_path / f"{name}.onnx"))
        assert all(np.array_equal(be.export(again)[k], state[k]) for k in state)
        a, b = be.forward(model, x), be.forward(again, x)
        assert all(np.array_equal(a[s], b[s]) for s in cfg.stage_names())


def test_convert_to_onnx_then_check_on_both_runtimes(tmp_path, capsys):
    """The new user's route on the shipped digits model: convert W model.onnx, then check W on both runtimes."""
    from importlib.resources import files

    from shared.cli import main

    weights = str(files("shared") / "data" / "digits.safetensors")
    assert main(["convert", weights, str(tmp_path / "model.onnx"), "--stages"]) == 0
    assert main(["check", weights, "--backends", "onnxruntime,openvino"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime: pass" in out and "openvino: pass" in out
    assert main(["convert", str(tmp_path / "model.onnx"), str(tmp_path / "back.safetensors")]) == 0
    (cfg, state), (cfg2, back) = W.load(weights), W.load(tmp_path / "back.safetensors")
    assert cfg2 == cfg and all(np.array_equal(back[k], state[k]) for k in state)
