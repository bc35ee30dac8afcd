"""What only the Keras 3 backend (vit_keras) has: dtype policies, variable layout, .keras / .weights.h5 files and
their safety, channels_first, Keras' training mode, and its two Keras backends. Its conformance in every preset,
dtype and mode is the backend matrix (test_conformance.py: `keras`, `keras-xla`; gradients: test_grad.py).

The in-process tests run on the Keras backend conftest selects (tensorflow by default); one test runs this file
and the Keras matrix again under KERAS_BACKEND=torch in a process of its own, another compares both runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from shared import testing as helpers, tolerances, weights

import keras  # noqa: E402

from vit_keras.backend import KerasBackend  # noqa: E402
from vit_keras.convert import load_keras, load_weights_h5, save_keras  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BE = KerasBackend()


def _model(preset, dtype="float32", **kw):
    cfg, state, _ = helpers.case(preset)
    return BE.build(cfg, state, dtype=dtype, **kw)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"stage {k} differs (max {np.abs(a[k] - b[k]).max():.3e})"


# ------------------------------------------------------------------ precision
def test_dtype_policy_computes_in_half():
    for dtype, policy in [("bfloat16", "mixed_bfloat16"), ("float16", "mixed_float16")]:
        m = _model("tiny", dtype)
        assert m.dtype_policy.name == policy and m.compute_dtype == dtype
        assert all(str(v.dtype) == "float32" for v in m.weights)  # float32 variables: lossless export
        x = np.transpose(helpers.case("tiny")[2], (0, 2, 3, 1))
        stages = m.forward_stages(keras.ops.convert_to_tensor(x))
        assert all(keras.backend.standardize_dtype(v.dtype) == dtype for v in stages.values())


def test_layer_norm_eps_and_gelu_come_from_config():
    m = _model("tiny_meanpool")  # eps 1e-5, tanh GELU
    assert m.blocks[0].norm1.epsilon == 1e-5 and m.fc_norm.epsilon == 1e-5
    assert m.blocks[0].mlp.cfg.gelu == "tanh"


# ---------------------------------------------------------------- weights
def test_layout_conv_hwio_dense_transposed():
    cfg, state, _ = helpers.case("tiny")
    m = BE.build(cfg, state)
    kernel = keras.ops.convert_to_numpy(m.patch_embed.proj.kernel)
    assert np.array_equal(kernel, state["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
    qkv = keras.ops.convert_to_numpy(m.blocks[1].attn.qkv.kernel)
    assert np.array_equal(qkv, state["blocks.1.attn.qkv.weight"].T)
    gamma = keras.ops.convert_to_numpy(m.blocks[0].norm2.gamma)
    assert np.array_equal(gamma, state["blocks.0.norm2.weight"])


def test_keras_file_round_trip_bit_exact(tmp_path):
    cfg, state, x = helpers.case("tiny_pretrain")
    m = BE.build(cfg, state)
    path = BE.save_native(m, tmp_path / "m.keras")
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]  # atomic: no temporary left behind
    m2 = BE.load_native(path, cfg)
    assert m2.cfg == cfg
    _same(BE.forward(m, x), BE.forward(m2, x))
    # the same file at another compute dtype
    assert BE.load_native(path, dtype="bfloat16").compute_dtype == "bfloat16"


def test_weights_h5_round_trip(tmp_path):
    cfg, state, x = helpers.case("tiny_t2t")
    m = BE.build(cfg, state)
    path = BE.save_native(m, tmp_path / "m.weights.h5")
    m2 = BE.load_native(path, cfg)
    _same(BE.forward(m, x), BE.forward(m2, x))
    for k, v in BE.export(m2).items():
        assert np.array_equal(v, state[k]), k
    with pytest.raises(weights.MismatchError):
        load_weights_h5(path, helpers.case("tiny")[0])  # another config does not fit


def test_keras_file_with_lambda_refused(tmp_path):
    inp = keras.Input((4,))
    out = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    path = tmp_path / "evil.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(weights.InvalidFileError, match=r"evil\.keras.*Lambda"):
        load_keras(path)


def test_keras_file_with_unknown_class_refused(tmp_path):
    good = save_keras(_model("tiny"), tmp_path / "good.keras")
    bad = tmp_path / "unknown.keras"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                cfg["registered_name"] = "elsewhere>Payload"
                cfg["module"] = "elsewhere.payload"
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(weights.InvalidFileError, match=r"unknown\.keras.*elsewhere>Payload"):
        load_keras(bad)


def test_not_a_keras_file(tmp_path):
    p = tmp_path / "junk.keras"
    p.write_bytes(b"not a zip")
    with pytest.raises(weights.InvalidFileError, match="junk.keras"):
        load_keras(p)


# ------------------------------------------------------------------ layout
def test_channels_first_equals_channels_last():
    cfg, state, x = helpers.case("tiny_t2t")
    last = BE.forward(BE.build(cfg, state), x)
    first = BE.forward(KerasBackend(data_format="channels_first").build(cfg, state), x)
    for k in last:
        np.testing.assert_allclose(first[k], last[k], rtol=0, atol=1e-6, err_msg=k)


# ------------------------------------------------------------------ training
def test_training_dropout_differs_from_inference():
    cfg0, state, x = helpers.case("tiny")
    cfg = cfg0.replace(dropout=0.2, attn_dropout=0.2, drop_path=0.2)
    m = BE.build(cfg, state)
    xt = keras.ops.convert_to_tensor(np.transpose(x, (0, 2, 3, 1)))
    infer = keras.ops.convert_to_numpy(m(xt, training=False))
    train1 = keras.ops.convert_to_numpy(m(xt, training=True))
    train2 = keras.ops.convert_to_numpy(m(xt, training=True))
    assert not np.allclose(train1, infer) and not np.allclose(train1, train2)
    # dropout never acts at inference: still the reference's answer
    helpers.assert_conforms("tiny", "float32", BE.forward(m, x))


# --------------------------------------------------------- two Keras backends
def test_torch_keras_backend_matches_reference_and_tensorflow(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("this test compares a torch subprocess with the in-process TensorFlow run")
    preset = "tiny_pretrain"
    cfg, state, x = helpers.case(preset)
    weights.save(tmp_path / "w.safetensors", cfg, state)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "shared.cli", "forward", str(tmp_path / "w.safetensors"), "--backend",
                        "keras", "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npz"), "--stages"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(tmp_path / "y.npz") as z:
        torch_out = {k: z[k] for k in z.files if not k.startswith("__")}
        assert json.loads(str(z["__meta__"]))["versions"]["keras_backend"] == "torch"
    helpers.assert_conforms(preset, "float32", torch_out)
    tf_out = BE.forward(BE.build(cfg, state), x)
    for s in cfg.stage_names():
        pair = 2 * tolerances.fp32_bound(cfg, s)  # each run within its float32 bound: triangle inequality
        err = tolerances.rel_l2(torch_out[s], tf_out[s])
        assert err <= pair, f"{s}: torch vs tensorflow rel_l2 {err:.3e} > {pair:.3e}"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="this test starts the torch-backend run; inside that run it would recurse")
def test_this_whole_file_passes_under_the_torch_keras_backend():
    """Both Keras backends in CI: this file and the Keras backend matrix (forward and gradients), run again with
    KERAS_BACKEND=torch in a process of its own."""
    env = dict(os.environ, KERAS_BACKEND="torch")
    here = Path(__file__).parent
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", __file__,
                        str(here / "test_conformance.py"), str(here / "test_grad.py"), "--backends", "keras",
                        "-k", "not variant_agrees and not steps_agree and not oracle_matches and not grad_command"],
                       capture_output=True, text=True, env=env, timeout=1200, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
