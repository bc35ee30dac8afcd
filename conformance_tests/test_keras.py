"""What only the Keras 3 backend (vit_keras) has: dtype policies, variable layout, .keras / .weights.h5 files and
their safety, channels_first, Keras' training mode, and its three Keras backends. Its conformance in every preset,
dtype and mode is the backend matrix (test_conformance.py, test_grad.py, test_training.py).

This process runs Keras on the backend conftest selects (TensorFlow: `keras`, `keras-xla`); test_keras_backends.py
runs this file and the Keras matrix again in a process per other Keras backend (`keras-jax`, `keras-torch`), and
checks that a file written under each Keras backend loads bit-exactly under the other two.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import types
import zipfile

import numpy as np
import pytest

from shared import testing as helpers, weights

import keras  # noqa: E402

from shared.backend import get_backend  # noqa: E402
from vit_keras.convert import keras_save, load_keras, load_weights_h5, save_keras  # noqa: E402
from vit_keras.layers import RmsNorm  # noqa: E402

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
    assert m.blocks[0].mlp.act == "tanh"


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
    keras_save(keras.Model(inp, out), path)  # Keras' own save (TensorFlow left unimported under JAX and torch)
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


# ------------------------------------------------------------ family options
def _keras_path(key: str, kinds: dict) -> str:
    """The documented Keras variable path of a canonical key (vit_keras/model.py): "." -> "/" except inside a layer
    name (blocks_i, pre_logits_fc, blocks_i_attn_rel_pos, mlp_fc1 of a relative position MLP, rope_freqs); weight ->
    kernel (Dense, conv) or gamma (a norm: LayerNorm, RmsNorm), a LayerNorm's bias -> beta."""
    key = re.sub(r"^blocks\.(\d+)\.attn\.rel_pos\.", r"blocks_\1_attn_rel_pos.", key)
    key = re.sub(r"rel_pos\.mlp\.fc([12])", r"rel_pos.mlp_fc\1", key)
    parts = re.sub(r"^blocks\.(\d+)", r"blocks_\1", key).replace("pre_logits.fc", "pre_logits_fc")
    parts = parts.replace("rope.freqs", "rope_freqs").split(".")
    owner = ".".join(key.split(".")[:-1])
    layer_norm = kinds.get(f"{owner}.weight") == "direct"
    if parts[-1] == "weight":
        parts[-1] = "gamma" if layer_norm else "kernel"
    elif parts[-1] == "bias" and layer_norm:
        parts[-1] = "beta"
    return "vision_transformer/" + "/".join(parts)


@pytest.mark.parametrize("preset", helpers.FAMILY_TINY)
def test_family_variables_sit_at_timm_named_paths_in_keras_layout(preset):
    """Every canonical key of the family options (ls1/ls2 gamma, q_norm/k_norm, dist_token, reg_token, head_dist,
    norm_pre, attn_pool.*) is one model variable at its documented path holding the canonical value in Keras'
    layout, and the model has no other variable."""
    cfg, state, _ = helpers.case(preset)
    m = BE.build(cfg, state)
    mapping = m.canonical_variables()
    assert set(mapping) == set(state)
    assert {id(v) for v, _ in mapping.values()} == {id(v) for v in m.weights}
    kinds = {k: kind for k, (_, kind) in mapping.items()}
    for key, (var, kind) in mapping.items():
        assert var.path == _keras_path(key, kinds), (key, var.path)
        want = state[key].T if kind == "dense" else state[key].transpose(2, 3, 1, 0) if kind == "conv" else state[key]
        assert np.array_equal(keras.ops.convert_to_numpy(var), want), key
    assert m.patch_embed.proj.use_bias == cfg.patch_bias
    norms = [la for la in m._flatten_layers() if isinstance(la, (keras.layers.LayerNormalization, RmsNorm))]
    assert norms and all(la.epsilon == cfg.layer_norm_eps for la in norms)  # qk-norm, norm_pre, attn_pool too


def test_distilled_model_trains_on_both_heads_and_infers_their_mean():
    """tiny_deit: `head_logits` (what the loss sees) is (B, 2, K) = [head(class token), head_dist(distillation
    token)], the float64 reference's `head_logits` (2, B, K) within the float32 bound; the inference logits are
    their mean."""
    from shared import reference, tolerances

    cfg, state, x = helpers.case("tiny_deit")
    m = BE.build(cfg, state)
    xt = keras.ops.convert_to_tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    both = np.asarray(keras.ops.convert_to_numpy(m.head_logits(xt)), np.float64)
    ref = reference.head_logits(cfg, state, x)
    assert both.shape == (x.shape[0], 2, cfg.num_classes) and ref.shape == (2, x.shape[0], cfg.num_classes)
    bound = tolerances.fp32_bound(cfg, "logits")
    for i, head in enumerate(("head", "head_dist")):
        assert tolerances.rel_l2(both[:, i], ref[i]) <= bound, head
    logits = np.asarray(keras.ops.convert_to_numpy(m(xt)), np.float64)
    assert tolerances.rel_l2(logits, both.mean(axis=1)) <= bound
    assert tolerances.rel_l2(both[:, 0], both[:, 1]) > 0.1  # two different heads, not one twice


@pytest.mark.parametrize("preset", helpers.FAMILY_TINY)
def test_family_gradients_match_finite_differences_of_the_reference(preset):
    """The loss and every parameter's gradient of the family options (loss_and_grads, the Keras backend's autodiff)
    against central differences of the float64 NumPy reference loss (shared.training.grad.reference_loss, which
    for a distilled model is the mean of the two heads' losses): one random unit direction d per tensor, with
    err = |fd - <g, d>| / (max(||g||, floor) / sqrt(size)), an estimate of ||g - g64|| / ||g64||, held to the
    gradient bound. Independent of the torch oracle of test_grad.py."""
    from shared.init import init_weights, random_images
    from shared.training import grad as G

    cfg = helpers.case(preset)[0]
    cfg = cfg if cfg.num_classes else cfg.replace(num_classes=5)  # a head, so the cross-entropy applies
    state = init_weights(cfg, 0)
    x = random_images(cfg, 6, 0)
    y = np.random.default_rng(3).integers(0, cfg.num_classes, 6)
    smoothing, h = 0.1, 1e-5
    loss, grads = BE.loss_and_grads(cfg, state, x, y, smoothing)
    assert set(grads) == set(state) and all(grads[k].shape == state[k].shape for k in state)
    ref = G.reference_loss(cfg, state, x, y, smoothing)
    assert abs(loss - ref) / abs(ref) <= G.loss_bound(cfg), (loss, ref)
    base = {k: np.asarray(v, np.float64) for k, v in state.items()}
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    floor = G.GRAD_FLOOR * np.sqrt(sum(np.sum(v ** 2) for v in g.values())) / np.sqrt(len(g))
    rng = np.random.default_rng(7)
    errs = {}
    for k in sorted(state):
        d = rng.standard_normal(state[k].shape)
        d /= np.linalg.norm(d)
        fd = (G.reference_loss(cfg, {**base, k: base[k] + h * d}, x, y, smoothing)
              - G.reference_loss(cfg, {**base, k: base[k] - h * d}, x, y, smoothing)) / (2 * h)
        errs[k] = abs(fd - np.sum(g[k] * d)) / (max(np.linalg.norm(g[k]), floor) / np.sqrt(d.size))
    bound = G.grad_bound(cfg)
    bad = {k: e for k, e in errs.items() if not e <= bound}
    assert not bad, f"{BE.name} {preset}: gradients out of bound {bound:.2e}: {bad}"


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_family_optimiser_step_decays_what_decay_mask_says(kind):
    """One SGD / AdamW step on tiny_deit (distillation token, head_dist) and tiny_siglip (attention-pool latent):
    the new weights equal the NumPy float64 update (shared.training.recipe, weight decay where decay_mask puts it)
    of the backend's own gradients, within float32 rounding."""
    from shared.init import init_weights, random_images
    from shared.training import grad as G

    for preset in ("tiny_deit", "tiny_siglip"):
        cfg = helpers.case(preset)[0]
        state = init_weights(cfg, 0)
        x = random_images(cfg, 6, 0)
        y = np.random.default_rng(3).integers(0, cfg.num_classes, 6)
        hp = G.STEP_HPARAMS[kind]
        new = BE.optimizer_step(cfg, state, x, y, kind, lr=hp["lr"], weight_decay=hp["weight_decay"],
                                label_smoothing=0.1, betas=G.ADAM_BETAS, eps=G.ADAM_EPS)
        _, own = BE.loss_and_grads(cfg, state, x, y, 0.1)
        rows = G.step_errors(kind, cfg, state, new, own, own)
        bad = {k: m for k, m in rows.items() if not m["opt_err"] <= m["opt_bound"]}
        assert not bad, f"{BE.name} {preset} {kind}: step out of bound: {bad}"


def test_family_models_train(tmp_path):
    """keras.Model.fit on a distilled model with registers, LayerScale, qk-norm and a SwiGLU MLP (two heads: the loss is the mean
    of their losses, the accuracy metric reads their mean) and on a MAP-pooled CLIP-style one: a few steps lower
    the float64 reference training loss, and the canonical checkpoint is what `train` returned."""
    from shared import weights as W
    from shared.init import init_weights
    from shared.presets import get_preset
    from shared.training import data as D, recipe as T

    tr, te = D.load_digits_split((16, 16), 0)
    base = get_preset("digits").replace(depth=2)
    cfgs = [base.replace(name="digits_deit", dist_token=True, reg_tokens=2, pos_prefix_tokens=1, init_values=0.1,
                         qk_norm=True, swiglu=True),
            base.replace(name="digits_map", class_token="none", pool="map", norm_pre=True, gelu="quick",
                         patch_bias=False)]
    tc = T.TrainConfig(steps=12, batch=32, lr=2e-3, warmup_steps=2, eval_every=0, seed=0)
    for cfg in cfgs:
        st0 = init_weights(cfg, 0)
        ckpt = tmp_path / f"{cfg.name}.safetensors"
        st, hist = BE.train(cfg, st0, tr, te, tc, progress=False, checkpoint=ckpt)

        def loss(s):
            return T.training_loss(T.raw_logits_reference(cfg, s, tr.images[:256]), tr.labels[:256])[0]

        before, after = loss(st0), loss(st)
        assert after < 0.9 * before, (cfg.name, before, after)
        assert hist[-1]["step"] == tc.steps and np.isfinite(hist[-1]["loss"])
        assert hist[-1]["val_top1"] == pytest.approx(T.evaluate(BE, cfg, st, te.images, te.labels)["top1"])
        ccfg, cstate = W.load(ckpt)
        assert ccfg == cfg and all(np.array_equal(cstate[k], st[k]) for k in st)


@pytest.mark.parametrize("preset", helpers.FAMILY_TINY)
def test_family_files_round_trip_bit_exact(preset, tmp_path):
    """`.keras` (safe mode: the new layer classes are on the allow-list) and `.weights.h5` of every family preset:
    the same canonical weights and the same stages."""
    cfg, state, x = helpers.case(preset)
    m = BE.build(cfg, state)
    ref = BE.forward(m, x)
    for suffix in (".keras", ".weights.h5"):
        again = BE.load_native(BE.save_native(m, tmp_path / f"m{suffix}"), cfg)
        back = BE.export(again)
        assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state), suffix
        _same(ref, BE.forward(again, x))


#: every kind of layer and variable once: separate q/k/v (T2T), pre-logits, fc_norm, the distillation token and head,
#: LayerScale with registers, norm_pre without a patch bias, the attention pool, relative tables per block (the MLP
#: form shared by the blocks: slow-marked below, its layers are the same kind)
FILE_PRESETS = ["tiny_t2t", "tiny_pretrain", "tiny_meanpool", "tiny_deit", "tiny_dinov2_reg", "tiny_clip", "tiny_siglip", "tiny_beit",
                "tiny_eva02", "tiny_rope_mixed", pytest.param("tiny_relpos", marks=pytest.mark.slow), "tiny_aimv2",
                "tiny_naflex_parfac",  # NaFlexVit's factorized tables (pos_embed_y / pos_embed_x), aspect-preserving
                pytest.param("tiny_rpn", marks=pytest.mark.slow),  # post-norm: the same layers, block_norm in config
                pytest.param("tiny_prefix_pool", marks=pytest.mark.slow)]  # the pool's own heads and MLP width


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the files are the same under every Keras "
                    "backend (test_files_written_under_one_keras_backend_load_bit_exactly_under_the_others): one run")
@pytest.mark.parametrize("preset", FILE_PRESETS)
def test_frameworkless_keras_files_are_keras_own(preset, tmp_path):
    """shared.keras_file (what `convert` writes and reads, without Keras) against Keras itself, in every
    kind of layer and variable: `.weights.h5` byte for byte; `.keras` the same members in the same order with the
    same zip fields, config.json and model.weights.h5 byte for byte (metadata.json differs in its date only); Keras
    loads the files (load_model safe_mode=True, load_weights) bit-exactly, and the frameworkless reader reads
    Keras' files to the same tensors and config."""
    from shared import keras_file as KF
    from vit_keras.convert import save_weights_h5

    cfg, state, _ = helpers.case(preset)
    m = BE.build(cfg, state)
    fw_k, fw_h = save_keras(m, tmp_path / "fw.keras"), save_weights_h5(m, tmp_path / "fw.weights.h5")
    assert KF._h5_member(cfg, state) is not None  # the member streamed by the recorder, not the whole-image fallback
    nf_k, nf_h = KF.save_keras(tmp_path / "nf.keras", cfg, state), KF.save_weights_h5(tmp_path / "nf.weights.h5", cfg, state)
    assert nf_h.read_bytes() == fw_h.read_bytes()
    with zipfile.ZipFile(fw_k) as a, zipfile.ZipFile(nf_k) as b:
        fields = [[(i.filename, i.compress_type, i.file_size, i.external_attr, i.create_system, i.create_version,
                    i.extract_version, i.flag_bits, i.extra) for i in z.infolist()] for z in (a, b)]
        assert fields[0] == fields[1]
        assert [i.filename for i in b.infolist()] == ["metadata.json", "config.json", "model.weights.h5"]
        assert a.read("config.json") == b.read("config.json")
        assert a.read("model.weights.h5") == b.read("model.weights.h5")
        meta = [json.loads(z.read("metadata.json")) for z in (a, b)]
        assert meta[1]["keras_version"] == keras.__version__ and meta[0].keys() == meta[1].keys()
    # Keras loads the frameworkless files; the frameworkless reader loads Keras' files
    for back in (BE.export(load_keras(nf_k)), BE.export(load_weights_h5(nf_h, cfg)),
                 KF.load_keras(fw_k)[1], KF.load_weights_h5(fw_h, cfg)[1]):
        assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)
    assert KF.load_keras(fw_k)[0] == cfg


def test_frameworkless_keras_writer_falls_back_to_the_whole_image(tmp_path, monkeypatch):
    """Where HDF5 does not write a tensor straight from the buffer it was given (here: no address ever matches), the
    recorder is given up and the whole image is made the plain way: the same member bytes either way."""
    from shared import keras_file as KF

    class Saved(datetime.datetime):  # one clock for both files: metadata.json's date_saved has 1 s resolution
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(KF, "datetime", types.SimpleNamespace(datetime=Saved))
    cfg, state, _ = helpers.case("tiny_eva02")
    streamed = KF.save_keras(tmp_path / "streamed.keras", cfg, state)
    calls = iter(range(-1, -10**9, -1))
    monkeypatch.setattr(KF, "_address", lambda data: next(calls))  # a new address at every call: none matches
    assert KF._h5_member(cfg, state) is None
    plain = KF.save_keras(tmp_path / "plain.keras", cfg, state)
    with zipfile.ZipFile(streamed) as a, zipfile.ZipFile(plain) as b:
        assert a.read("model.weights.h5") == b.read("model.weights.h5")
        assert [(i.filename, i.file_size, i.CRC, i.header_offset) for i in a.infolist()] == \
               [(i.filename, i.file_size, i.CRC, i.header_offset) for i in b.infolist()]


def test_frameworkless_keras_files_refuse_a_field_they_do_not_know(tmp_path, monkeypatch):
    """A config field keras_file's layout does not know (here: `rope`, taken off KNOWN_FIELDS as a field added later
    would be), off its default, is refused by name on writing and reading, leaving no file behind; at its default it
    does not matter."""
    from shared import keras_file as KF
    from shared.errors import UnsupportedError

    cfg, state, _ = helpers.case("tiny_eva02")
    written = KF.save_weights_h5(tmp_path / "ok.weights.h5", cfg, state)
    monkeypatch.setattr(KF, "KNOWN_FIELDS", KF.KNOWN_FIELDS - {"rope"})
    for save in (KF.save_keras, KF.save_weights_h5):
        with pytest.raises(UnsupportedError, match=r"tiny_eva02.*config field rope='cat' is not expressed"):
            save(tmp_path / "out", cfg, state)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnsupportedError, match="rope='cat'"):
        KF.load_weights_h5(written, cfg)
    plain, plain_state, _ = helpers.case("tiny")
    assert KF.file_problems(plain) == [] and KF.load_weights_h5(
        KF.save_weights_h5(tmp_path / "plain.weights.h5", plain, plain_state), plain)[0] == plain


def test_registered_layer_classes_are_allowed_in_keras_files():
    """The `.keras` allow-list is exactly the classes vit_keras registers, so a layer added later cannot be left
    off it."""
    from vit_keras import convert

    registered = {n for n, c in keras.saving.get_custom_objects().items() if c.__module__.startswith("vit_keras")}
    assert convert.ALLOWED_CLASSES == registered
    assert {"vit_keras>LayerScale", "vit_keras>AttentionPool"} <= convert.ALLOWED_CLASSES


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
