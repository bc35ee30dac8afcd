"""keras-hub ViT and mindcv ViT files, read and written, each held to its own library's output.

Every model here is made by the ecosystem's own library, random-init at toy size (no download). The oracle is always
that library's output: its own forward on the same images, its own loader reading what we export, and its own
model in `check --against`. Neither library is optional for this file: a missing one FAILS with its install line
(keras-hub and mindcv install with --no-deps so that numpy<2 and the pinned frameworks stay).
"""
from __future__ import annotations

import importlib.util
import json
import zipfile
import zlib

import numpy as np
import pytest

from shared import reference, tolerances
from shared import weights as W
from shared.backend import get_backend
from shared.errors import InvalidFileError, MismatchError, MissingFactsError

KERAS_HUB = "pip install --no-deps keras-hub==0.32.0"
MINDCV = "pip install --no-deps mindcv==0.3.0"
BACKENDS = ("torch", "keras", "mindspore")


def _need(module: str, line: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed; the ecosystem tests need it: {line}")


def _images(shape=(2, 3, 32, 32)) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _conforms(cfg, state, want: np.ndarray, what: str) -> dict[str, float]:
    """The float64 reference and every backend on the converted model vs the library's own output."""
    x = _images((want.shape[0], cfg.in_chans, *cfg.image_size))
    bound = tolerances.fp32_bound(cfg, "logits")
    errs = {"reference": tolerances.rel_l2(want, reference.forward(cfg, state, x)["logits"])}
    for name in BACKENDS:
        be = get_backend(name)
        errs[name] = tolerances.rel_l2(want, be.forward(be.build(cfg, state), x)["logits"])
    assert all(e <= bound for e in errs.values()), f"{what}: {errs} (bound {bound:.2e})"
    print(f"{what}: bound {bound:.2e}", {k: f"{v:.2e}" for k, v in errs.items()})
    return errs


def _check_against(tmp_path, cfg, state, src, name):
    from shared.cli import main

    W.save(tmp_path / f"{name}.safetensors", cfg, state)
    code = main(["check", str(tmp_path / f"{name}.safetensors"), "--backends", "torch", "--against", str(src),
                 "--json", str(tmp_path / f"{name}.json")])
    a = json.loads((tmp_path / f"{name}.json").read_text())["against"]
    assert code == 0 and a["status"] == "pass", a
    print(f"against {a['library']} ({src.name}): rel_l2 {a['rel_l2']:.2e}, bound {a['bound']:.2e}")
    return a


# ------------------------------------------------------------------------------------------------ keras-hub
@pytest.fixture(scope="module")
def kerashub_files(tmp_path_factory):
    _need("keras_hub", KERAS_HUB)
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    d = tmp_path_factory.mktemp("kerashub")
    bb = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=4,
                                      hidden_dim=32, mlp_dim=64, layer_norm_epsilon=1e-6)
    clf = keras_hub.models.ViTImageClassifier(backbone=bb, num_classes=10, intermediate_dim=24)
    for v in clf.weights:  # keras-hub initialises biases near zero: make every tensor matter
        v.assign(np.random.default_rng(zlib.crc32(v.path.encode())).normal(0, 0.2, v.shape).astype(np.float32)
                 + (1.0 if "gamma" in v.path else 0.0))
    clf.save_to_preset(str(d / "preset"))
    clf.save(str(d / "clf.keras"))
    clf.save_weights(str(d / "clf.weights.h5"))
    bb2 = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=4,
                                       hidden_dim=32, mlp_dim=64, use_mha_bias=False)
    bb2.save_to_preset(str(d / "backbone"))
    x = _images().transpose(0, 2, 3, 1)
    return {"dir": d, "model": clf, "logits": np.asarray(clf.predict(x, verbose=0)),
            "features": np.asarray(bb2.predict(x, verbose=0))[:, 0], "backbone": bb2}


def test_kerashub_files_convert_and_match_kerashub_in_every_backend(kerashub_files, tmp_path):
    from shared.convert.formats import detect_format
    from shared.convert.io import read_any

    d = kerashub_files["dir"]
    states = []
    for src, preset in ((d / "preset", None), (d / "clf.keras", None), (d / "clf.weights.h5", None)):
        assert detect_format(src) == "kerashub", src
        if preset is None and src.name.endswith(".weights.h5"):
            cfg0, _ = read_any(str(d / "preset"))
            W.save(tmp_path / "arch.safetensors", cfg0, _)
            from shared.convert.kerashub import load_kerashub

            cfg, state = load_kerashub(src, cfg0)
        else:
            cfg, state = read_any(str(src))
        assert (cfg.gelu, cfg.layer_norm_eps, cfg.representation_size, cfg.num_classes) == ("erf", 1e-6, 24, 10)
        _conforms(cfg, state, kerashub_files["logits"], f"keras-hub {src.name}")
        states.append(state)
    for s in states[1:]:
        assert all(np.array_equal(states[0][k], s[k]) for k in states[0])
    # a backbone without a classifier, without attention biases: the final-norm class token
    cfg, state = read_any(str(d / "backbone"))
    assert cfg.num_classes == 0 and not cfg.qkv_bias
    _conforms(cfg, state, kerashub_files["features"], "keras-hub backbone")


def test_kerashub_export_loads_in_kerashub_bit_exact(kerashub_files, tmp_path):
    import keras_hub

    from shared.cli import main
    from shared.convert.io import read_any

    d = kerashub_files["dir"]
    assert main(["convert", str(d / "preset"), str(tmp_path / "c.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "c.safetensors"), str(tmp_path / "out"), "--to", "kerashub"]) == 0
    back = keras_hub.models.ViTImageClassifier.from_preset(str(tmp_path / "out"))
    orig = kerashub_files["model"]
    assert len(back.weights) == len(orig.weights)
    for a, b in zip(orig.weights, back.weights):
        assert a.path == b.path and np.array_equal(np.asarray(a), np.asarray(b)), a.path
    x = _images().transpose(0, 2, 3, 1)
    assert np.array_equal(np.asarray(back.predict(x, verbose=0)), kerashub_files["logits"])
    # the backbone alone: ViTBackbone.from_preset
    cfg, state = read_any(str(d / "backbone"))
    from shared.convert.io import write_any

    write_any(str(tmp_path / "bb"), "kerashub", cfg, state)
    bb = keras_hub.models.ViTBackbone.from_preset(str(tmp_path / "bb"))
    for a, b in zip(kerashub_files["backbone"].weights, bb.weights):
        assert np.array_equal(np.asarray(a), np.asarray(b)), a.path


def test_check_against_kerashub(kerashub_files, tmp_path):
    from shared.convert.io import read_any

    from shared.convert.kerashub import load_kerashub

    d = kerashub_files["dir"]
    for src in (d / "preset", d / "clf.keras", d / "clf.weights.h5"):
        cfg, state = (load_kerashub(src, read_any(str(d / "preset"))[0]) if src.suffix == ".h5"
                      else read_any(str(src)))
        a = _check_against(tmp_path, cfg, state, src, src.name.replace(".", "_"))
        assert a["library"] == "keras_hub" and a["rel_l2"] <= a["bound"]


def test_kerashub_refusals(kerashub_files, tmp_path):
    from shared.cli import main
    from shared.convert.io import read_any, write_any

    d = kerashub_files["dir"]
    with pytest.raises(MissingFactsError, match="--preset NAME"):
        read_any(str(d / "clf.weights.h5"))
    with pytest.raises(MismatchError, match=r"clf.weights.h5: .*\n  key 'layers/vi_t_patching_and_embedding/patch_embedding/vars/0': expected shape "
                                            r"\(16, 16, 3, 192\), got \(8, 8, 3, 32\)"):
        read_any(str(d / "clf.weights.h5"), preset="vit_tiny_patch16_224")
    # a .keras whose config holds a Lambda layer is refused before anything is read or run
    lam = tmp_path / "lambda.keras"
    with zipfile.ZipFile(d / "clf.keras") as z, zipfile.ZipFile(lam, "w") as out:
        for n in z.namelist():
            data = z.read(n)
            if n == "config.json":
                c = json.loads(data)
                c["config"]["preprocessor"] = {"module": "keras.layers", "class_name": "Lambda",
                                               "config": {"name": "evil", "function": "..."},
                                               "registered_name": None}
                data = json.dumps(c).encode()
            out.writestr(n, data)
    with pytest.raises(InvalidFileError, match="Lambda layer"):
        read_any(str(lam))
    assert main(["convert", str(lam), str(tmp_path / "x.safetensors")]) != 0
    assert not (tmp_path / "x.safetensors").exists()
    # a model keras-hub computes differently is refused, and leaves nothing behind
    cfg, state = read_any(str(d / "preset"))
    with pytest.raises(Exception, match="GELU 'tanh'"):
        write_any(str(tmp_path / "tanh"), "kerashub", cfg.replace(gelu="tanh"), state)
    assert not (tmp_path / "tanh").exists()


# --------------------------------------------------------------------------------------------------- mindcv
@pytest.fixture(scope="module")
def mindcv_files(tmp_path_factory):
    _need("mindcv", MINDCV)
    import mindspore as ms
    from mindcv.models.vit import VisionTransformer

    ms.set_seed(0)
    d = tmp_path_factory.mktemp("mindcv")
    out = {"dir": d}
    for name, kw in (("token", {}), ("avg", {"global_pool": "avg"})):
        model = VisionTransformer(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
                                  num_classes=10, **kw)
        rng = np.random.default_rng(1)
        for p in model.get_parameters():  # mindcv zero-initialises biases: make every tensor matter
            p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)
                                 + (1.0 if p.name.endswith("gamma") else 0.0)))
        model.set_train(False)
        ms.save_checkpoint(model, str(d / f"{name}.ckpt"))
        out[name] = (model, model(ms.Tensor(_images())).asnumpy())
    return out


def test_mindcv_ckpt_converts_and_matches_mindcv_in_every_backend(mindcv_files):
    from shared.convert.formats import detect_format
    from shared.convert.io import read_any

    for name in ("token", "avg"):
        src = mindcv_files["dir"] / f"{name}.ckpt"
        assert detect_format(src) == "mindcv"
        cfg, state = read_any(str(src), preset="tiny")
        assert (cfg.gelu, cfg.layer_norm_eps, cfg.fc_norm) == ("tanh", 1e-7, name == "avg")
        _conforms(cfg, state, mindcv_files[name][1], f"mindcv {name}")


def test_mindcv_export_loads_in_mindcv_bit_exact(mindcv_files, tmp_path):
    import mindspore as ms
    from mindcv.models.vit import VisionTransformer

    from shared.cli import main

    src = mindcv_files["dir"] / "token.ckpt"
    assert main(["convert", str(src), str(tmp_path / "c.safetensors"), "--preset", "tiny"]) == 0
    assert main(["convert", str(tmp_path / "c.safetensors"), str(tmp_path / "out.ckpt"), "--to", "mindcv"]) == 0
    model = VisionTransformer(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0,
                              num_classes=10)
    not_loaded, unused = ms.load_param_into_net(model, ms.load_checkpoint(str(tmp_path / "out.ckpt")),
                                                strict_load=True)
    assert not not_loaded and not unused
    orig = {p.name: p.asnumpy() for p in mindcv_files["token"][0].get_parameters()}
    got = {p.name: p.asnumpy() for p in model.get_parameters()}
    assert orig.keys() == got.keys() and all(np.array_equal(orig[k], got[k]) for k in orig)
    model.set_train(False)
    assert np.array_equal(model(ms.Tensor(_images())).asnumpy(), mindcv_files["token"][1])


def test_check_against_mindcv(mindcv_files, tmp_path):
    from shared.convert.io import read_any

    for name in ("token", "avg"):
        src = mindcv_files["dir"] / f"{name}.ckpt"
        cfg, state = read_any(str(src), preset="tiny")
        a = _check_against(tmp_path, cfg, state, src, name)
        assert a["library"] == "mindcv" and a["rel_l2"] <= a["bound"]
    # a conversion that got mindcv's GELU wrong passes the plain check but fails against mindcv (exit 5)
    from shared.cli import main

    W.save(tmp_path / "wrong.safetensors", cfg.replace(gelu="erf"), state)
    assert main(["check", str(tmp_path / "wrong.safetensors"), "--backends", "torch", "--against", str(src),
                 "--json", str(tmp_path / "wrong.json")]) == 5
    assert json.loads((tmp_path / "wrong.json").read_text())["against"]["status"] == "FAIL"


def test_mindcv_refusals(mindcv_files, tmp_path):
    import mindspore as ms

    from shared.cli import main
    from shared.convert.io import read_any

    src = mindcv_files["dir"] / "token.ckpt"
    with pytest.raises(MissingFactsError, match="--preset NAME"):
        read_any(str(src))
    # mindcv's model names are presets for its files
    with pytest.raises(MismatchError, match=r"(?s)token.ckpt: \d+ problem.*missing key 'blocks.2.norm1.weight' "
                                            r"\(expected shape \(768,\)\)"):
        read_any(str(src), preset="vit_b_16_224")
    # a foreign checkpoint with one wrong shape: the key, expected and actual shapes named
    params = ms.load_checkpoint(str(src))
    params["blocks.1.mlp.fc1.weight"] = ms.Parameter(ms.Tensor(np.zeros((64, 31), np.float32)),
                                                     name="blocks.1.mlp.fc1.weight")
    bad = tmp_path / "bad.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(bad))
    with pytest.raises(MismatchError, match=r"'blocks.1.mlp.fc1.weight': expected shape \(64, 32\), got \(64, 31\)"):
        read_any(str(bad), preset="tiny")
    assert main(["convert", str(bad), str(tmp_path / "x.safetensors"), "--preset", "tiny"]) != 0
    assert not (tmp_path / "x.safetensors").exists()
    # a vit-suite .ckpt keeps its digest check (not read as foreign)
    from shared.convert.formats import detect_format

    cfg, state = read_any(str(src), preset="tiny")
    W.save(tmp_path / "c.safetensors", cfg, state)
    assert main(["convert", str(tmp_path / "c.safetensors"), str(tmp_path / "suite.ckpt")]) == 0
    assert detect_format(tmp_path / "suite.ckpt") == "mindspore"


def test_a_foreign_ckpt_with_canonical_names_is_read_strictly(mindcv_files, tmp_path):
    """Any digest-less ViT .ckpt (here canonical names, saved with plain mindspore.save_checkpoint) is a foreign
    checkpoint: read with the preset's numerics, bit-exact; the MindSpore backend's own reader keeps its digest check
    and points at the foreign route."""
    import mindspore as ms

    from shared.convert.formats import detect_format
    from shared.convert.io import read_any
    from shared.init import init_weights
    from shared.presets import get_preset

    cfg = get_preset("tiny")
    state = init_weights(cfg, 0)
    path = tmp_path / "plain.ckpt"
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in state.items()], str(path))
    assert detect_format(path) == "mindcv"
    got_cfg, got = read_any(str(path), preset="tiny")
    assert got_cfg == cfg and all(np.array_equal(got[k], state[k]) for k in state)
    with pytest.raises(InvalidFileError, match="--from mindcv --preset NAME"):
        read_any(str(path), "mindspore", "tiny")
