"""What only the Keras 3 backend (vit_keras) has: dtype policies, variable layout, .keras / .weights.h5 files and
their safety, channels_first, Keras' training mode, and its three Keras backends. Its conformance in every preset,
dtype and mode is the backend matrix (test_conformance.py, test_grad.py, test_training.py).

This process runs Keras on the backend conftest selects (TensorFlow: `keras`, `keras-xla`); one test per other Keras
backend runs this file and the Keras matrix again in a process of its own (`keras-jax`, `keras-torch`), and one
checks that a file written under each Keras backend loads bit-exactly under the other two.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from shared import testing as helpers, weights

import keras  # noqa: E402

from shared.backend import get_backend  # noqa: E402
from vit_keras.convert import load_keras, load_weights_h5, save_keras  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the suite's backend for each Keras backend
TARGETS = {"tensorflow": "keras", "jax": "keras-jax", "torch": "keras-torch"}
BE = get_backend(TARGETS[keras.backend.backend()])


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
    first = BE.forward(type(BE)(data_format="channels_first").build(cfg, state), x)
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


# ------------------------------------------------------ every Keras backend
OUTER = keras.backend.backend() == "tensorflow"  # the outer run starts the others; inside them this would recurse


@pytest.mark.skipif(not OUTER, reason="run by the TensorFlow process, which starts one process per Keras backend")
@pytest.mark.parametrize("keras_backend", ["jax", "torch"])
def test_the_keras_matrix_under_every_keras_backend(keras_backend):
    """This file, the forward and gradient matrix and the training checks, for `keras-jax` and `keras-torch`, each in a
    process whose Keras runs on that backend."""
    here = Path(__file__).parent
    target = TARGETS[keras_backend]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", __file__,
                        str(here / "test_conformance.py"), str(here / "test_grad.py"),
                        str(here / "test_training.py::test_short_training_beats_chance"),
                        str(here / "test_training.py::test_shipped_model_reproduces_recorded_accuracy"),
                        "--backends", target,
                        "-k", "not variant_agrees and not steps_agree and not oracle_matches and not grad_command"],
                       capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND=keras_backend),
                       timeout=1800, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) >= 60, r.stdout[-2000:]  # the whole matrix ran, not a stray subset


@pytest.mark.skipif(not OUTER, reason="run by the TensorFlow process, which starts the JAX and torch ones")
def test_files_written_under_one_keras_backend_load_bit_exactly_under_the_others(tmp_path):
    """.keras and .weights.h5 from each of TensorFlow, JAX and torch, read by the other two: canonical weights
    bit-exact, forward within the float32 bound (conformance_tests/keras_files.py)."""
    from . import keras_files

    def under(keras_backend, *actions):
        r = subprocess.run([sys.executable, "-m", "conformance_tests.keras_files", str(tmp_path), *actions],
                           capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND=keras_backend),
                           timeout=600, cwd=str(ROOT))
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["keras_backend"] == keras_backend
        return out["read"]

    keras_files.write(tmp_path)                  # TensorFlow, in this process
    results = {"jax": under("jax", "write")}
    results["torch"] = under("torch", "write", "read")   # reads the TensorFlow and JAX files
    results["jax"] = under("jax", "read")                 # reads the TensorFlow and torch files
    results["tensorflow"] = keras_files.read(tmp_path)   # reads the JAX and torch files
    for reader, files in results.items():
        others = {kb for kb in TARGETS if kb != reader}
        assert {f.split(".")[0] for f in files} == others and len(files) == 4, (reader, sorted(files))
        for name, res in files.items():
            assert res["bit_exact"] and res["conforms"], (reader, name, res)


@pytest.mark.skipif(not OUTER, reason="one check, run from the TensorFlow process")
def test_a_process_runs_keras_on_one_backend_and_refuses_another_by_name():
    """Making Keras backend objects starts no framework (the tool's parent lists every Keras target's modes); the
    first model fixes the process's Keras backend, and a model for another is refused with both named."""
    code = (
        "import sys\n"
        "from shared.backend import get_backend\n"
        "from shared.errors import BackendError\n"
        "from shared.presets import get_preset\n"
        "jx, tf = get_backend('keras-jax'), get_backend('keras')\n"
        "assert 'keras' not in sys.modules, 'making a backend object imported keras'\n"
        "jx.build(get_preset('tiny'))\n"
        "try:\n"
        "    tf.build(get_preset('tiny'))\n"
        "except BackendError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('a TensorFlow model was built in a process whose Keras runs on JAX')\n")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       cwd=str(ROOT))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "'keras' needs Keras on tensorflow, but this process already runs Keras on jax" in r.stdout
