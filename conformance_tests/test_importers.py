"""shared.convert without any framework: synthetic timm / HF dicts built from canonical states."""
from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pytest

from shared import reference
from shared.convert import (export_hf, export_timm, import_hf, import_timm, load_hf_dir, load_timm_file, save_hf_dir,
                            timm_model_kwargs)
from shared.errors import ConversionError, ConversionWarning, MismatchError, MissingFactsError
from shared.init import init_weights, random_images
from shared.posemb import resample_pos_embed
from shared.presets import get_preset

TIMM_OK = ["tiny", "tiny_meanpool_learned", "tiny_fcnorm_token", "tiny_nohead"]


def _cfg(name: str):
    base = get_preset("tiny")
    if name == "tiny_meanpool_learned":  # no class token, mean pool, fc_norm, tanh GELU, eps 1e-5, non-square
        return base.replace(name=name, class_token="none", pool="mean", final_norm=False, fc_norm=True,
                            gelu="tanh", layer_norm_eps=1e-5, image_size=(24, 40), in_chans=1, qkv_bias=False)
    if name == "tiny_fcnorm_token":
        return base.replace(name=name, final_norm=False, fc_norm=True, resize_kernel="bicubic_antialias")
    if name == "tiny_nohead":
        return base.replace(name=name, num_classes=0, pos_embed="none", final_norm=False)
    return get_preset(name)


def _same_state(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32, k
        assert np.array_equal(a[k], b[k]), k


# ------------------------------------------------------------------------- timm
@pytest.mark.parametrize("name", TIMM_OK)
def test_timm_round_trip_bit_exact(name):
    cfg = _cfg(name)
    state = init_weights(cfg, seed=3)
    timm_state = export_timm(cfg, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a preset that matches the file raises no warning
        cfg2, state2 = import_timm(timm_state, preset=cfg)
    assert cfg2 == cfg
    _same_state(state, state2)


def test_timm_prefix_stripping_and_nesting():
    cfg = get_preset("tiny")
    state = init_weights(cfg)
    for prefix in ("module.", "model.", "module.model.", "_orig_mod."):
        _, s2 = import_timm({prefix + k: v for k, v in state.items()}, preset="tiny")
        _same_state(state, s2)


def test_timm_missing_facts_named():
    cfg = get_preset("tiny")
    with pytest.raises(MissingFactsError) as e:
        import_timm(export_timm(cfg, init_weights(cfg)))
    msg = str(e.value)
    for fact in ("num_heads", "layer_norm_eps", "gelu", "--preset"):
        assert fact in msg


def test_timm_config_json_supplies_facts():
    cfg = get_preset("tiny")
    state = export_timm(cfg, init_weights(cfg))
    tc = {"architecture": "vit_custom", "global_pool": "token", "num_classes": 10,
          "model_args": {"num_heads": 4, "embed_dim": 32, "act_layer": "gelu"},
          "pretrained_cfg": {"input_size": [3, 32, 32]}}
    # an architecture that is no preset: its timm function may set norm_layer, so its eps is asked for
    with pytest.raises(MissingFactsError, match="layer_norm_eps.*--layer-norm-eps") as e:
        import_timm(state, timm_config=tc)
    assert "num_heads" not in str(e.value) and "GELU" not in str(e.value) and "grid" not in str(e.value)
    cfg2, _ = import_timm(state, timm_config=tc, layer_norm_eps=1e-6)
    assert (cfg2.num_heads, cfg2.layer_norm_eps, cfg2.gelu, cfg2.resize_kernel, cfg2.pool) == \
        (4, 1e-6, "erf", "bicubic_antialias", "token")
    # a known architecture name is enough
    big = get_preset("vit_tiny_patch16_224")
    cfg3, _ = import_timm(export_timm(big, init_weights(big)), timm_config={"architecture": "vit_tiny_patch16_224.augreg_in21k"})
    assert cfg3 == big.replace(notes="")
    # num_heads alone at the top level is not enough: eps and GELU stay unknown
    with pytest.raises(MissingFactsError, match="layer_norm_eps"):
        import_timm(state, timm_config={"architecture": "vit_custom", "num_heads": 4, "global_pool": "token"})


def test_timm_file_wins_over_preset_sizes():
    cfg = get_preset("tiny")
    state = export_timm(cfg, init_weights(cfg))
    with pytest.warns(ConversionWarning, match="file's sizes win.*num_heads 16 is the preset's"):
        # 1024 wide, 24 deep, 16 heads (divide 32); its 224 px do not fit the 4x4 table: the size is stated
        cfg2, _ = import_timm(state, preset="vit_large_patch16_224", image_size=(32, 32))
    assert (cfg2.embed_dim, cfg2.depth, cfg2.num_heads, cfg2.num_classes) == (32, 2, 16, 10)


def test_timm_heads_not_dividing_raises():
    cfg = get_preset("tiny").replace(embed_dim=40, num_heads=4)
    state = export_timm(cfg, init_weights(cfg))
    with pytest.raises(ConversionError, match="not divisible by num_heads 6"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import_timm(state, preset="vit_small_patch16_224", grid=(4, 4))  # 6 heads


@pytest.mark.parametrize("extra,what", [
    ({"patch_embed.norm.weight": np.ones(32, np.float32)}, "patch embedding"),
    ({"blocks.0.mlp.fc1_g.weight": np.ones((64, 32), np.float32)}, "gated MLP"),
    ({"attn_pool.pos_embed": np.ones((1, 16, 32), np.float32)}, "attention pool with its own position table"),
    ({"blocks.0.attn.q_proj.weight": np.ones((32, 32), np.float32)}, "separate q/k/v"),
])
def test_timm_refuses_unrepresentable(extra, what):
    cfg = get_preset("tiny")
    state = {**export_timm(cfg, init_weights(cfg)), **extra}
    with pytest.raises(ConversionError, match=what):
        import_timm(state, preset="tiny")


@pytest.mark.parametrize("key,width,missing", [("blocks.0.mlp.norm.weight", 64, "blocks.1.mlp.norm.weight"),
                                               ("blocks.0.attn.norm.weight", 32, "blocks.1.attn.norm.weight")])
def test_timm_sub_ln_in_one_block_only_is_a_mismatch_naming_the_missing_keys(key, width, missing):
    """A norm inside the MLP / attention is BEiT3's sub-LN (every block's, with its bias): read as such, so one
    block's bare weight is a key mismatch naming what the other blocks lack, never dropped or guessed."""
    cfg = get_preset("tiny")
    state = {**export_timm(cfg, init_weights(cfg)), key: np.ones(width, np.float32)}
    with pytest.raises(MismatchError, match=missing.replace(".", r"\.")):
        import_timm(state, preset="tiny")


@pytest.mark.parametrize("name", ["tiny_deit", "tiny_deit3", "tiny_clip", "tiny_siglip"])
def test_timm_family_round_trip_bit_exact(name):
    """Every family option travels through timm's layout and back unchanged, under its own preset, silently."""
    cfg = get_preset(name)
    state = init_weights(cfg, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg2, state2 = import_timm(export_timm(cfg, state), preset=cfg)
    assert cfg2 == cfg
    _same_state(state, state2)


def test_timm_family_options_read_from_the_keys():
    """What the keys determine wins over a preset that says otherwise, and the warning names each fact."""
    cases = {"tiny_deit": dict(dist_token=True, pool="token"), "tiny_siglip": dict(pool="map", class_token="none"),
             "tiny_clip": dict(norm_pre=True, patch_bias=False),
             "tiny_deit3": dict(init_values=1e-5, pos_prefix_tokens=0, pool="mean", fc_norm=True)}  # 1e-5: default
    for name, want in cases.items():
        cfg = get_preset(name)
        with pytest.warns(ConversionWarning, match="file's sizes win over preset 'tiny'"):
            got, _ = import_timm(export_timm(cfg, init_weights(cfg)), preset="tiny",
                                 image_size=cfg.image_size, pool="avg" if name == "tiny_deit3" else None,
                                 gelu=cfg.gelu)
        assert {k: getattr(got, k) for k in want} == want, name
    qk = get_preset("tiny").replace(qk_norm=True, num_heads=2)  # the q_norm width (16) makes 2 heads of 32
    with pytest.warns(ConversionWarning, match="num_heads=4, the file's qk-norm width makes 2"):
        got, _ = import_timm(export_timm(qk, init_weights(qk)), preset="tiny")
    assert got.num_heads == 2 and got.qk_norm
    with pytest.raises(ConversionError, match="num_heads 4 contradicts the file"):
        import_timm(export_timm(qk, init_weights(qk)), preset="tiny", num_heads=4)


def test_timm_layer_scale_init_value_stated_or_said():
    """LayerScale's init value only initialises training: from the preset or config.json, else the documented
    default, said in a warning and in the notes."""
    from shared.convert.timm import DEFAULT_INIT_VALUES

    cfg = get_preset("tiny").replace(init_values=1e-3)
    state = export_timm(cfg, init_weights(cfg))
    assert import_timm(state, preset=cfg)[0].init_values == 1e-3
    tc = {"architecture": "vit_x", "global_pool": "token", "model_args": {"num_heads": 4, "act_layer": "gelu",
          "init_values": 0.1, "img_size": 32}}
    assert import_timm(state, timm_config=tc, layer_norm_eps=1e-6)[0].init_values == 0.1
    with pytest.warns(ConversionWarning, match="init_values.*stated nowhere"):
        got, _ = import_timm(state, timm_config={**tc, "model_args": {**tc["model_args"], "init_values": None}},
                             layer_norm_eps=1e-6)
    assert got.init_values == DEFAULT_INIT_VALUES and "init_values from the default" in got.notes


def test_timm_legacy_gamma_names_renamed():
    cfg = get_preset("tiny").replace(init_values=1e-6)
    state = export_timm(cfg, init_weights(cfg))
    old = {re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k): v for k, v in state.items()}
    assert any(k.endswith("gamma_1") for k in old)
    _same_state(state, import_timm(old, preset=cfg)[1])


def test_timm_table_without_prefix_rows_read_at_a_stated_grid():
    """A table with a row per patch only (timm no_embed_class): 16 rows are 1 + 15 patches or 0 + 16; the row
    count decides only with a stated grid or image size, else it is a question naming --grid."""
    cfg = get_preset("tiny")
    state = export_timm(cfg, init_weights(cfg))
    state["pos_embed"] = state["pos_embed"][:, 1:]  # 16 rows: one per patch, none for the class token
    with pytest.raises(MissingFactsError, match="no_embed_class.*--grid"):
        import_timm(state, preset="tiny")  # tiny gives its class token a row: its 32x32 (17 rows) does not fit
    got, _ = import_timm(state, preset="tiny", grid=(4, 4))
    assert (got.grid, got.num_pos_prefix, got.pos_prefix_tokens) == ((4, 4), 0, 0)
    got, _ = import_timm(state, preset=get_preset("tiny_deit3"), pool="token")  # a no_embed_class preset fits
    assert got.pos_prefix_tokens == 0
    with pytest.raises(ConversionError, match="grid 3x3 gives 9 patch rows"):
        import_timm(state, preset="tiny", grid=(3, 3))


def test_timm_unknown_keys_reported():
    cfg = get_preset("tiny")
    state = {**export_timm(cfg, init_weights(cfg)), "blocks.0.foo.weight": np.ones(3, np.float32)}
    with pytest.raises(MismatchError, match="blocks.0.foo.weight"):
        import_timm(state, preset="tiny")


def test_timm_pos_embed_resampled_on_import():
    cfg = get_preset("tiny")  # 4x4 grid, bicubic
    state = export_timm(cfg, init_weights(cfg))
    for size, kernel in (((48, 40), "bicubic"), ((16, 24), "bicubic_antialias")):
        p = cfg.replace(resize_kernel=kernel)
        cfg2, s2 = import_timm(state, preset=p, image_size=size)
        assert cfg2.image_size == size and cfg2.pos_grid is None and cfg2.resize_kernel == kernel
        want = resample_pos_embed(state["pos_embed"], (4, 4), cfg2.grid, 1, kernel)
        assert np.array_equal(s2["pos_embed"], want)
        # same model as running the original at that size (the reference resamples the same way)
        x = random_images(cfg2, 1)
        a = reference.forward(cfg2, s2, x)["logits"]
        b = reference.forward(p, init_weights(cfg), x)["logits"]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_timm_non_square_grid_needs_image_size():
    cfg = get_preset("tiny").replace(image_size=(24, 40))  # 3x5 = 15 patches, not a square
    state = export_timm(cfg, init_weights(cfg))
    with pytest.raises(MissingFactsError, match="--image-size"):  # 16 rows: 4x4 without class row, or 1 + 3x5?
        import_timm(state, preset="tiny")
    odd = export_timm(cfg.replace(image_size=(16, 40)), init_weights(cfg.replace(image_size=(16, 40))))
    with pytest.raises(MissingFactsError, match="--grid HxW"):  # 1 + 2x5 rows, no size stated at all
        import_timm(odd, timm_config={"architecture": "x", "global_pool": "token",
                                      "model_args": {"num_heads": 4, "act_layer": "gelu"}})
    for stated in (dict(image_size=(24, 40)), dict(grid=(3, 5))):
        cfg2, s2 = import_timm(state, preset="tiny", **stated)
        assert cfg2.grid == (3, 5)
        _same_state(init_weights(cfg), s2)


def test_timm_old_pre_logits_imported():
    cfg = get_preset("tiny").replace(representation_size=24, final_norm=True)
    state = init_weights(cfg)
    with pytest.warns(ConversionWarning, match="representation_size"):  # export_timm refuses pre_logits: build by hand
        cfg2, s2 = import_timm(dict(state), preset="tiny")
    assert cfg2.representation_size == 24
    _same_state(state, s2)
    with pytest.raises(ConversionError, match="pre-logits"):
        export_timm(cfg, state)


@pytest.mark.parametrize("preset,what", [("tiny_t2t", "value skip"), ("tiny_meanpool", "sin-cos"),
                                         ("tiny_pretrain", "pre-logits")])
def test_export_timm_refuses(preset, what):
    cfg = get_preset(preset)
    with pytest.raises(ConversionError, match=what):
        export_timm(cfg, init_weights(cfg))
    with pytest.raises(ConversionError):
        timm_model_kwargs(cfg)


def test_timm_model_kwargs_mlp_ratio_exact():
    cfg = get_preset("tiny").replace(mlp_dim=37)
    kw = timm_model_kwargs(cfg)
    assert int(cfg.embed_dim * kw["mlp_ratio"]) == 37


def test_load_timm_file_safetensors_with_config(tmp_path):
    from safetensors.numpy import save_file

    cfg = get_preset("tiny")
    state = init_weights(cfg)
    save_file({"module." + k: v for k, v in export_timm(cfg, state).items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(MissingFactsError):
        load_timm_file(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(  # timm's save_for_hf layout; the architecture's numerics
        {"architecture": "vit_tiny_patch16_224", "global_pool": "token", "num_classes": 10,
         "model_args": {"num_heads": 4, "embed_dim": 32, "depth": 2, "img_size": [32, 32]},
         "pretrained_cfg": {"input_size": [3, 32, 32]}}))
    cfg2, s2 = load_timm_file(tmp_path / "model.safetensors")
    assert cfg2.num_heads == 4
    _same_state(state, s2)


# --------------------------------------------------------------------------- HF
def _hf_cfgs():
    tiny = get_preset("tiny")
    return {
        "cls": tiny,
        "cls_tanh_nonsquare_nobias": tiny.replace(gelu="tanh", image_size=(24, 40), qkv_bias=False, layer_norm_eps=1e-12,
                                                  resize_kernel="bicubic"),
        "features_pooler": tiny.replace(num_classes=0, representation_size=24),
        "features": tiny.replace(num_classes=0),
    }


@pytest.mark.parametrize("layout", ["file", "module"])
@pytest.mark.parametrize("which", list(_hf_cfgs()))
def test_hf_round_trip_bit_exact(which, layout):
    cfg = _hf_cfgs()[which]
    state = init_weights(cfg, seed=5)
    hf_state, hf_conf = export_hf(cfg, state, layout=layout)
    assert any(k.startswith("vit.") for k in hf_state) == bool(cfg.num_classes)
    cfg2, state2 = import_hf(hf_state, json.loads(json.dumps(hf_conf)))
    _same_state(state, state2)
    assert cfg2 == cfg.replace(name=cfg2.name, resize_kernel="bicubic")


def test_hf_qkv_fusion_order():
    cfg = get_preset("tiny")
    state = init_weights(cfg)
    hf_state, conf = export_hf(cfg, state)
    W = cfg.width
    rng = np.random.default_rng(0)
    for i in range(cfg.depth):
        b = f"vit.encoder.layer.{i}.attention.attention."
        q, k, v = (rng.standard_normal((W, W)).astype(np.float32) for _ in range(3))
        qb, kb, vb = (rng.standard_normal(W).astype(np.float32) for _ in range(3))
        hf_state.update({b + "query.weight": q, b + "key.weight": k, b + "value.weight": v,
                         b + "query.bias": qb, b + "key.bias": kb, b + "value.bias": vb})
        _, s2 = import_hf(hf_state, conf)
        w = s2[f"blocks.{i}.attn.qkv.weight"]
        assert np.array_equal(w[:W], q) and np.array_equal(w[W:2 * W], k) and np.array_equal(w[2 * W:], v)
        bias = s2[f"blocks.{i}.attn.qkv.bias"]
        assert np.array_equal(bias, np.concatenate([qb, kb, vb]))


def test_hf_defaults_and_activation():
    cfg = get_preset("tiny")
    hf_state, conf = export_hf(cfg, init_weights(cfg))
    conf = {k: v for k, v in conf.items() if k not in ("layer_norm_eps", "hidden_act")}
    cfg2, _ = import_hf(hf_state, conf)
    assert cfg2.layer_norm_eps == 1e-12 and cfg2.gelu == "erf" and cfg2.resize_kernel == "bicubic"
    for act, kind in (("gelu_new", "tanh"), ("gelu_pytorch_tanh", "tanh"), ("quick_gelu", "quick")):
        assert import_hf(hf_state, {**conf, "hidden_act": act})[0].gelu == kind
    with pytest.raises(ConversionError, match="'relu' is not a GELU"):
        import_hf(hf_state, {**conf, "hidden_act": "relu"})
    with pytest.raises(MissingFactsError, match="num_attention_heads"):
        import_hf(hf_state, {k: v for k, v in conf.items() if k != "num_attention_heads"})
    with pytest.raises(MismatchError, match="hidden_size"):
        import_hf(hf_state, {**conf, "hidden_size": 64})


def test_hf_mask_token_dropped_decoder_refused_pooler_with_head_dropped():
    cfg = get_preset("tiny")
    state = init_weights(cfg)
    hf_state, conf = export_hf(cfg, state)
    with pytest.warns(ConversionWarning, match="mask_token"):
        _, s2 = import_hf({**hf_state, "vit.embeddings.mask_token": np.zeros((1, 1, 32), np.float32)}, conf)
    _same_state(state, s2)
    with pytest.raises(ConversionError, match="pixel decoder"):
        import_hf({**hf_state, "decoder.0.weight": np.zeros((192, 32, 1, 1), np.float32)}, conf)
    with pytest.warns(ConversionWarning, match="pooler"):
        cfg3, s3 = import_hf({**hf_state, "vit.pooler.dense.weight": np.zeros((32, 32), np.float32),
                              "vit.pooler.dense.bias": np.zeros(32, np.float32)}, conf)
    assert cfg3.representation_size is None
    _same_state(state, s3)


def test_hf_resample_on_import():
    cfg = get_preset("tiny")
    state = init_weights(cfg)
    hf_state, conf = export_hf(cfg, state)
    cfg2, s2 = import_hf(hf_state, conf, image_size=(48, 40))
    assert np.array_equal(s2["pos_embed"], resample_pos_embed(state["pos_embed"], (4, 4), (6, 5), 1, "bicubic"))


@pytest.mark.parametrize("change,what", [
    (dict(class_token="zeros", attn_value_skip=True, attn_dim=48, qkv_bias=False), "class_token"),
    (dict(pos_embed="sincos1d"), "pos_embed"),
    (dict(pool="mean"), "pool"),
    (dict(final_norm=False), "final_norm"),
    (dict(representation_size=24), "pre_logits together with a head"),
    (dict(output_softmax=True), "output_softmax"),
])
def test_export_hf_refuses(change, what):
    cfg = get_preset("tiny").replace(**change)
    with pytest.raises(ConversionError, match=what):
        export_hf(cfg, init_weights(cfg))


def test_hf_dir_save_load_atomic(tmp_path, monkeypatch):
    cfg = get_preset("tiny").replace(resize_kernel="bicubic")
    state = init_weights(cfg)
    d = tmp_path / "hf"
    save_hf_dir(d, cfg, state)
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]
    cfg2, s2 = load_hf_dir(d)
    _same_state(state, s2)
    with pytest.raises(FileExistsError):
        save_hf_dir(d, cfg, state)
    # a failure while writing leaves neither a directory nor a temp dir behind
    import safetensors.numpy

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError):
        save_hf_dir(tmp_path / "hf2", cfg, state)
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    # an unexpressible config leaves nothing either
    with pytest.raises(ConversionError):
        save_hf_dir(tmp_path / "hf3", get_preset("tiny_t2t"), init_weights(get_preset("tiny_t2t")))
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_hf_timm_cross_conversion():
    """HF -> canonical -> timm -> canonical keeps every tensor (eps and GELU travel through the config)."""
    cfg = get_preset("tiny").replace(layer_norm_eps=1e-12, resize_kernel="bicubic")
    state = init_weights(cfg)
    c1, s1 = import_hf(*export_hf(cfg, state))
    c2, s2 = import_timm(export_timm(c1, s1), preset=c1)
    assert c2 == c1
    _same_state(state, s2)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_hf_index_naming_a_shard_outside_the_directory_is_refused(tmp_path, shard):
    """A `model.safetensors.index.json` is data from the internet: a shard outside the model directory is a
    path-traversal read. Refused with exit 3, naming the shard; the outside file is never opened."""
    from shared.errors import InvalidFileError

    cfg = get_preset("tiny").replace(resize_kernel="bicubic")
    d = tmp_path / "hf"
    save_hf_dir(d, cfg, init_weights(cfg))
    (d / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"vit.embeddings.cls_token": shard}}))
    with pytest.raises(InvalidFileError, match="refusing to read outside") as e:
        load_hf_dir(d)
    assert e.value.exit_code == 3 and repr(shard) in str(e.value)


def test_hf_sharded_directory_reads_every_shard(tmp_path):
    """The positive side of the index check: shards inside the directory are read, bit-exact."""
    from safetensors.numpy import load_file, save_file

    cfg = get_preset("tiny").replace(resize_kernel="bicubic")
    state = init_weights(cfg)
    d = tmp_path / "hf"
    save_hf_dir(d, cfg, state)
    tensors = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    keys = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in parts.items():
        save_file({k: tensors[k] for k in ks}, d / name)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: name for name, ks in parts.items() for k in ks}}))
    _same_state(state, load_hf_dir(d)[1])


def test_timm_guesses_are_refused_not_made():
    """Two ways a plain timm state dict imported wrong (measured against timm: error 1.3e-3 and 0.42): a table whose
    row count matches no stated image size, read as a square grid; and fc_norm (timm's mark of average pooling)
    under a preset that pools the class token with a final norm. Both are now questions, named with their flag;
    stated, each is read as stated. (Against timm itself: conformance_tests/test_family_timm.py.)"""
    cfg = get_preset("tiny").replace(image_size=(32, 128))  # a 4x16 grid: 64 patch rows, also 8x8
    state = export_timm(cfg, init_weights(cfg))
    with pytest.raises(MissingFactsError, match=r"which grid.*65 rows.*8x8, 4x16.*--grid HxW") as e:
        import_timm(state, preset="tiny")
    assert e.value.exit_code == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, _ = import_timm(state, preset="tiny", image_size=(32, 128))  # stated: no guess, no warning
        assert got.grid == (4, 16)
        got, _ = import_timm(state, preset="tiny", grid=(4, 16))
        assert got.grid == (4, 16) and got.image_size == (32, 128)
    avg = get_preset("tiny").replace(pool="mean", final_norm=False, fc_norm=True)
    with pytest.raises(MissingFactsError, match="class-token or average pooling.*fc_norm.*--pool token\\|avg"):
        import_timm(export_timm(avg, init_weights(avg)), preset="tiny")
    got, _ = import_timm(export_timm(avg, init_weights(avg)), preset="tiny", pool="avg")
    assert (got.pool, got.fc_norm) == ("mean", True) and "pool from --pool" in got.notes


def test_timm_gelu_form_is_a_question():
    """No preset, a config.json that names no known architecture and no act_layer: the GELU form is asked for."""
    cfg = get_preset("tiny").replace(gelu="quick")
    state = export_timm(cfg, init_weights(cfg))
    tc = {"architecture": "vit_custom", "global_pool": "token", "model_args": {"num_heads": 4, "img_size": 32}}
    with pytest.raises(MissingFactsError) as e:
        import_timm(state, timm_config=tc, layer_norm_eps=1e-6)
    assert "GELU form" in str(e.value) and "--gelu erf|tanh|quick" in str(e.value)
    assert "num_heads" not in str(e.value) and "grid" not in str(e.value)  # only the open question is asked
    assert import_timm(state, timm_config=tc, layer_norm_eps=1e-6, gelu="quick")[0].gelu == "quick"
    tc["model_args"]["act_layer"] = "quick_gelu"
    assert import_timm(state, timm_config=tc, layer_norm_eps=1e-6)[0].gelu == "quick"


def test_timm_unresolved_architecture_is_said():
    """A named architecture that is no suite preset and that timm cannot resolve (timm does not know it, or is not
    installed) is never taken for a known one: the questions are asked, and the message says the name could not be
    resolved and may hold parts its keys do not show; an unknown --preset name is refused the same way."""
    cfg = get_preset("tiny")
    state = export_timm(cfg, init_weights(cfg))
    with pytest.raises(MissingFactsError) as e:
        import_timm(state, timm_config={"architecture": "vit_custom", "global_pool": "token"})
    msg = " ".join(str(e.value).split())
    assert "the named architecture 'vit_custom' is no suite preset and could not be resolved" in msg
    assert "it may hold parts its keys do not show" in msg and "layer_norm_eps" in msg
    with pytest.raises(MissingFactsError, match="unknown preset 'vit_nonesuch'.*could not be resolved"):
        import_timm(state, preset="vit_nonesuch")


def test_timm_dinov2_registers_class_row_folded_on_export():
    """HF's DINOv2-with-registers layout (a position row for the class token only) has no timm form: export folds
    the row into the class token, as timm's _convert_dinov2 does, and says so; the model is the same."""
    cfg = get_preset("tiny_dinov2_reg")
    state = init_weights(cfg, seed=2)
    with pytest.warns(ConversionWarning, match="folded into its token.*_convert_dinov2"):
        t = export_timm(cfg, state)
    assert np.array_equal(t["cls_token"], state["cls_token"] + state["pos_embed"][:, :1])
    assert np.array_equal(t["pos_embed"], state["pos_embed"][:, 1:])
    kw = timm_model_kwargs(cfg)  # the kwargs of the model export_timm's state dict loads into
    assert kw["no_embed_class"] and kw["reg_tokens"] == 3
    back, s2 = import_timm(t, preset=cfg.replace(pos_prefix_tokens=0))
    assert back.pos_prefix_tokens == 0 and back.reg_tokens == 3
    x = random_images(cfg, 2, seed=1)
    a, b = reference.forward(cfg, state, x)["logits"], reference.forward(back, s2, x)["logits"]
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)  # one float32 rounding of cls + row apart


def test_timm_hub_directory_written_detected_and_read_back(tmp_path):
    """A timm hub directory (timm's save_for_hf layout): written atomically, detected by its config.json (timm's
    `architecture`, not transformers' `model_type`), read back to the same weights; a config whose eps no
    config.json can state is refused and leaves nothing behind."""
    from shared.convert.formats import detect_format
    from shared.convert.io import read_any, write_any
    from shared.errors import OutputError, UsageError

    cfg = get_preset("tiny_deit")  # a distillation token: built on timm's VisionTransformerDistilled
    state = init_weights(cfg, seed=1)
    write_any(str(tmp_path / "hub"), "timm", cfg, state)
    assert sorted(os.listdir(tmp_path / "hub")) == ["config.json", "model.safetensors"]
    assert detect_format(tmp_path / "hub") == "timm"
    conf = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert conf["architecture"] == "deit_base_distilled_patch16_224" and conf["global_pool"] == "token"
    assert conf["model_args"]["embed_dim"] == 32 and conf["model_args"]["img_size"] == [32, 24]
    cfg2, state2 = read_any(str(tmp_path / "hub"))
    assert cfg2.replace(name=cfg.name, notes="") == cfg.replace(notes="")
    _same_state(state, state2)
    with pytest.raises(OutputError):
        write_any(str(tmp_path / "hub"), "timm", cfg, state)
    odd = get_preset("tiny").replace(layer_norm_eps=1e-12)
    with pytest.raises(ConversionError, match="eps 1e-12 cannot be stated in a timm config.json"):
        write_any(str(tmp_path / "odd"), "timm", odd, init_weights(odd))
    assert sorted(os.listdir(tmp_path)) == ["hub"]
    save_hf_dir(tmp_path / "hf", get_preset("tiny").replace(resize_kernel="bicubic"), init_weights(get_preset("tiny")))
    assert detect_format(tmp_path / "hf") == "hf"
    with pytest.raises(UsageError, match="--pool answer"):
        read_any(str(tmp_path / "hf"), pool="avg")


@pytest.mark.parametrize("key,value,message", [
    ("num_attention_heads", 0, "'num_attention_heads' must be an int in \\[1, 1024\\], got int 0"),
    ("num_attention_heads", "4", "'num_attention_heads' must be an int .* got str '4'"),
    ("layer_norm_eps", "1e-12", "'layer_norm_eps' must be a finite number .* got str"),
    ("layer_norm_eps", float("inf"), "'layer_norm_eps' must be a finite number"),
    ("qkv_bias", "false", "'qkv_bias' must be a bool .* got str 'false'"),
    ("hidden_dropout_prob", "0.1", "'hidden_dropout_prob' must be a finite number"),
    ("hidden_size", "64", "'hidden_size' must be an int"),
    ("num_hidden_layers", 10**9, "'num_hidden_layers' must be an int in \\[1, 1024\\]"),
    ("image_size", "224", "'image_size' must be an int or"),
    ("hidden_act", ["gelu"], "'hidden_act' must be a string"),
])
def test_hf_config_json_fields_of_the_wrong_type_are_config_errors(tmp_path, key, value, message):
    """config.json is read field by field with its type checked: a ConfigError (exit 2) naming the file, the key,
    the expected type and the value, never a ZeroDivisionError / ValueError traceback or a truthy "false"."""
    from shared.cli import main
    from shared.errors import ConfigError

    cfg = get_preset("tiny").replace(resize_kernel="bicubic")
    d = tmp_path / "hf"
    save_hf_dir(d, cfg, init_weights(cfg))
    conf = json.loads((d / "config.json").read_text()) | {key: value}
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ConfigError, match=message) as e:
        load_hf_dir(d)
    assert "config.json" in str(e.value)
    assert main(["convert", str(d), str(tmp_path / "out.safetensors")]) == 2
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("index", [b"{not json", b"[1, 2]", b'{"weight_map": {"a": 5}}', b'{"weight_map": []}',
                                   b'{"weight_map": ' * 10_000 + b"1" + b"}" * 10_000, b"\xff\xfe"],
                         ids=["not_json", "list", "int_shard", "list_map", "nested", "not_utf8"])
def test_a_malformed_hf_index_is_an_invalid_file(tmp_path, index):
    from shared.errors import InvalidFileError

    cfg = get_preset("tiny").replace(resize_kernel="bicubic")
    d = tmp_path / "hf"
    save_hf_dir(d, cfg, init_weights(cfg))
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_bytes(index)
    with pytest.raises(InvalidFileError, match="index.json"):
        load_hf_dir(d)


# ------------------------------------------------------------------ HF ViT family (deit, dinov2, registers, MAE)
def _hf_family_cfgs():
    tiny = get_preset("tiny")  # 32x32, patch 8, erf, eps 1e-6, bicubic
    dino = tiny.replace(num_classes=0, init_values=0.1, mlp_dim=96)  # mlp_ratio 3
    return {  # name -> (config, the model type export picks, config.json architecture)
        "deit_teacher": (tiny.replace(dist_token=True, image_size=(24, 40)), "deit",
                         "DeiTForImageClassificationWithTeacher"),
        "deit_teacher_features": (tiny.replace(dist_token=True, num_classes=0, gelu="quick"), "deit",
                                  "DeiTForImageClassificationWithTeacher"),
        "deit_classifier": (tiny.replace(reg_tokens=1, qkv_bias=False), "deit", "DeiTForImageClassification"),
        "deit_model_pooler": (tiny.replace(reg_tokens=1, num_classes=0, representation_size=24), "deit", "DeiTModel"),
        "dinov2": (dino.replace(drop_path=0.1, gelu="tanh"), "dinov2", "Dinov2Model"),
        "dinov2_registers": (dino.replace(reg_tokens=3, pos_prefix_tokens=1, resize_kernel="bicubic_antialias"),
                             "dinov2_with_registers", "Dinov2WithRegistersModel"),
    }


@pytest.mark.parametrize("layout", ["file", "module"])
@pytest.mark.parametrize("which", list(_hf_family_cfgs()))
def test_hf_family_round_trip_bit_exact(which, layout):
    """canonical -> HF (the type export picks) -> canonical keeps every tensor bit for bit, and the config."""
    cfg, mt, arch = _hf_family_cfgs()[which]
    state = init_weights(cfg, seed=5)
    state = {k: (v + np.float32(0.01) * np.arange(v.size, dtype=np.float32).reshape(v.shape) % 1).astype(np.float32)
             for k, v in state.items()}  # LayerScale gammas and tokens non-constant
    hf_state, conf = export_hf(cfg, state, layout=layout)
    assert (conf["model_type"], conf["architectures"]) == (mt, [arch])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg2, state2 = import_hf(hf_state, json.loads(json.dumps(conf)))
    assert [str(w.message) for w in caught if "mask_token" not in str(w.message)] == []
    _same_state(state, state2)
    assert cfg2 == cfg.replace(name=cfg2.name, notes=cfg2.notes)


def test_hf_deit_tokens_and_heads_keep_their_names():
    """DeiT's distillation token is `dist_token` with the teacher's two heads, `reg_token` where no head reads it."""
    cfgs = _hf_family_cfgs()
    cfg, _, _ = cfgs["deit_teacher"]
    state = init_weights(cfg, seed=1)
    hf, conf = export_hf(cfg, state)
    assert np.array_equal(hf["deit.embeddings.distillation_token"], state["dist_token"])
    assert np.array_equal(hf["cls_classifier.weight"], state["head.weight"])
    assert np.array_equal(hf["distillation_classifier.bias"], state["head_dist.bias"])
    assert hf["deit.embeddings.position_embeddings"].shape == (1, 2 + 3 * 5, 32)  # rows for both tokens
    cfg, _, _ = cfgs["deit_classifier"]
    state = init_weights(cfg, seed=1)
    hf, conf = export_hf(cfg, state)
    assert np.array_equal(hf["deit.embeddings.distillation_token"], state["reg_token"])
    assert "classifier.weight" in hf and not any("cls_classifier" in k for k in hf)
    cfg2, _ = import_hf(hf, conf)
    assert (cfg2.dist_token, cfg2.reg_tokens, cfg2.pos_prefix_tokens) == (False, 1, None)
    assert "distillation token, read by no head, is reg_token" in cfg2.notes


@pytest.mark.filterwarnings("ignore:.*dropped embeddings.mask_token:shared.errors.ConversionWarning")
def test_hf_dinov2_layer_scale_mlp_ratio_mask_token_and_defaults():
    cfg, _, _ = _hf_family_cfgs()["dinov2"]
    state = init_weights(cfg, seed=2)
    hf, conf = export_hf(cfg, state)
    assert conf["mlp_ratio"] == 3 and conf["layerscale_value"] == 0.1 and "intermediate_size" not in conf
    assert np.array_equal(hf["encoder.layer.1.layer_scale2.lambda1"], state["blocks.1.ls2.gamma"])
    assert hf["embeddings.mask_token"].shape == (1, 32) and not hf["embeddings.mask_token"].any()  # zeros, stated
    with pytest.warns(ConversionWarning, match="dropped embeddings.mask_token"):
        cfg2, _ = import_hf(hf, {k: v for k, v in conf.items() if k != "layer_norm_eps"})
    assert cfg2.layer_norm_eps == 1e-6  # DINOv2's default, not ViT's 1e-12
    with pytest.raises(MismatchError, match=r"mlp_ratio: config.json 2 gives int\(32 \* 2\) = 64 MLP channels, "
                                            r"weights 96"):
        import_hf(hf, {**conf, "mlp_ratio": 2})
    # config.json and the MLP's keys must agree on SwiGLU (use_swiglu_ffn: weights_in / weights_out)
    with pytest.raises(MismatchError, match="missing key 'encoder.layer.0.mlp.weights_out.weight'"):
        import_hf(hf, {**conf, "use_swiglu_ffn": True})
    swiglu = {k.replace("mlp.fc1", "mlp.weights_in"): v for k, v in hf.items()}
    with pytest.raises(ConversionError, match="'encoder.layer.0.mlp.weights_in.bias' is a SwiGLU MLP, but config.json "
                                              "says use_swiglu_ffn=false"):
        import_hf(swiglu, conf)


@pytest.mark.filterwarnings("ignore:.*dropped embeddings.mask_token:shared.errors.ConversionWarning")
def test_hf_dinov2_registers_have_no_position_row():
    """HF adds positions to the class token and the patches, not to the registers: pos_prefix_tokens=1, R rows
    fewer, exactly HF's table."""
    cfg, _, _ = _hf_family_cfgs()["dinov2_registers"]
    state = init_weights(cfg, seed=3)
    hf, conf = export_hf(cfg, state)
    assert hf["embeddings.position_embeddings"].shape == (1, 1 + 16, 32)
    assert hf["embeddings.register_tokens"].shape == (1, 3, 32) and conf["num_register_tokens"] == 3
    with pytest.raises(MismatchError, match="num_register_tokens: config.json 4, weights 3"):
        import_hf(hf, {**conf, "num_register_tokens": 4})
    all_rows = cfg.replace(pos_prefix_tokens=None)  # registers with position rows: not HF's layout
    with pytest.raises(ConversionError, match="4 prefix tokens have a position row; HF dinov2_with_registers "
                                              "positions only the first 1"):
        export_hf(all_rows, init_weights(all_rows))


@pytest.mark.parametrize("cfg,model_type,rows", [
    (get_preset("tiny").replace(num_classes=0, init_values=1e-5, reg_tokens=4, pos_prefix_tokens=0),
     "dinov2_with_registers", 1),  # timm's reg4 DINOv2: no_embed_class
    (get_preset("tiny").replace(dist_token=True, pos_prefix_tokens=0), "deit", 2),
    (get_preset("tiny").replace(reg_tokens=1, pos_prefix_tokens=1), "deit", 2),
], ids=["dinov2_reg_no_embed_class", "deit_no_rows", "deit_register_unpositioned"])
def test_hf_export_gives_unpositioned_prefix_tokens_a_zero_row(cfg, model_type, rows):
    """A prefix token the canonical model leaves without a position but the HF type positions (`rows` of them) gets
    a zero row: x + 0 is exact, so the re-imported model computes the same float64 output bit for bit."""
    state = init_weights(cfg, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)  # the resize kernel, said
        hf, conf = export_hf(cfg, state)
    assert conf["model_type"] == model_type
    table = next(v for k, v in hf.items() if k.endswith("position_embeddings"))
    n = cfg.num_pos_prefix
    assert table.shape[1] == state["pos_embed"].shape[1] + rows - n and not table[0, n:rows].any()
    assert np.array_equal(np.delete(table, range(n, rows), axis=1), state["pos_embed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        cfg2, state2 = import_hf(hf, conf)
    x = random_images(cfg, 2, seed=1)
    for stage, want in reference.forward(cfg, state, x).items():
        assert np.array_equal(reference.forward(cfg2, state2, x)[stage], want), stage


def test_hf_vit_mae_is_a_plain_encoder():
    """ViTMAEForPreTraining: the encoder ('vit.') is the model; the decoder is dropped and mask_ratio said, both
    with a ConversionWarning; written back as ViTMAEModel with mask_ratio 0 (asked for: a plain ViT is a vit)."""
    cfg = get_preset("tiny").replace(num_classes=0, layer_norm_eps=1e-12)
    state = init_weights(cfg, seed=6)
    hf, conf = export_hf(cfg, state, model_type="vit_mae")
    assert conf["architectures"] == ["ViTMAEModel"] and conf["mask_ratio"] == 0.0
    assert export_hf(cfg, state)[1]["model_type"] == "vit"
    pre = {"vit." + k: v for k, v in hf.items()}
    pre["decoder.decoder_pred.weight"] = np.zeros((192, 16), np.float32)
    with pytest.warns(ConversionWarning) as caught:
        cfg2, state2 = import_hf(pre, {**conf, "architectures": ["ViTMAEForPreTraining"], "mask_ratio": 0.75})
    said = " ".join(str(w.message) for w in caught)
    assert "dropped the ViTMAEForPreTraining decoder" in said and "mask_ratio 0.75" in said
    _same_state(state, state2)
    assert cfg2 == cfg.replace(name=cfg2.name, notes=cfg2.notes)
    with pytest.raises(ConversionError, match="num_classes=10: HF vit_mae has no classifier"):
        export_hf(get_preset("tiny"), init_weights(get_preset("tiny")), model_type="vit_mae")


@pytest.mark.parametrize("change,model_type,what", [
    (dict(num_classes=10), "dinov2", r"num_classes=10 with pool='token': HF dinov2 has no class-token classifier"),
    (dict(image_size=(32, 48)), "dinov2", r"image_size \(32, 48\): HF dinov2 reshapes its position table as a square"),
    (dict(init_values=None), "dinov2", "init_values=None: HF dinov2 always has LayerScale"),
    (dict(reg_tokens=2), "dinov2", "reg_tokens=2: HF dinov2 has no register tokens \\(dinov2_with_registers has\\)"),
    (dict(qk_norm=True), "dinov2", "qk_norm: HF dinov2 has no LayerNorm on q and k"),
    (dict(init_values=None, reg_tokens=2), "deit", "reg_tokens=2: HF deit has exactly one token after the class"),
    (dict(init_values=None, dist_token=True), "vit", "dist_token: HF vit has no distillation token"),
    (dict(), "dinov2_with_registers", "reg_tokens=0: HF dinov2_with_registers without registers is a dinov2"),
    (dict(), "swin", "model_type 'swin' is not a Hugging Face type vit-suite writes"),
    (dict(), "beit", "HF beit's attention has q and v biases and no k bias"),
    (dict(init_values=None), "ijepa", "class_token='learned': HF ijepa has no class token"),
    (dict(init_values=None, class_token="none", pool="mean", fc_norm=True, final_norm=False), "ijepa",
     "final_norm=False: HF ijepa always applies its final layernorm"),
    (dict(init_values=None, representation_size=16), "vit_msn", "representation_size: HF vit_msn has no pooler"),
])
def test_export_hf_family_refuses_by_name(change, model_type, what):
    cfg = get_preset("tiny").replace(num_classes=0, init_values=0.1).replace(**change)
    with pytest.raises(ConversionError, match=what):
        export_hf(cfg, init_weights(cfg), model_type=model_type)


@pytest.mark.filterwarnings("ignore:.*dropped embeddings.mask_token:shared.errors.ConversionWarning")
def test_import_hf_family_refuses_by_name():
    dino, _, _ = _hf_family_cfgs()["dinov2"]
    hf, conf = export_hf(dino, init_weights(dino))
    # DINOv2's classifier reads concat(class token, patch mean): imported as pool='token_mean' (no longer refused)
    cfg, _ = import_hf(hf, {**conf, "architectures": ["Dinov2ForImageClassification"]})  # num_labels 0: no keys
    assert (cfg.pool, cfg.num_classes) == ("token_mean", 0)
    head = {**{"dinov2." + k: v for k, v in hf.items()}, "classifier.weight": np.zeros((3, 64), np.float32),
            "classifier.bias": np.zeros(3, np.float32)}
    cfg, state = import_hf(head, conf)
    assert (cfg.pool, cfg.num_classes, state["head.weight"].shape) == ("token_mean", 3, (3, 64))
    with pytest.raises(MismatchError, match=r"expected shape \(3, 64\), got \(3, 32\)"):  # not [class; mean] wide
        import_hf({**head, "classifier.weight": np.zeros((3, 32), np.float32)}, conf)
    with pytest.raises(ConversionError, match=r"image_size \[32, 48\] is not square"):
        import_hf(hf, {**conf, "image_size": [32, 48]})
    with pytest.raises(ConversionError, match="model_type str 'swin' is not supported"):
        import_hf(hf, {**conf, "model_type": "swin"})
    deit, _, _ = _hf_family_cfgs()["deit_classifier"]
    hf, conf = export_hf(deit, init_weights(deit))
    with pytest.raises(ConversionError, match="DeiTForMaskedImageModeling is a masked-image-modeling pixel decoder"):
        import_hf(hf, {**conf, "architectures": ["DeiTForMaskedImageModeling"]})
    with pytest.raises(ConversionError, match="'decoder.0.weight' is a masked-image-modeling pixel decoder"):
        import_hf({**hf, "decoder.0.weight": np.zeros((192, 32, 1, 1), np.float32)}, conf)


def test_hf_clip_and_siglip_types_go_to_hf_clip(monkeypatch):
    """import_hf / export_hf / load_hf_dir hand the CLIP and SigLIP model types to shared.convert.hf_clip
    (import_hf_clip(state, hf_config, source), export_hf_clip(cfg, state, model_type)); import_hf then resamples
    for `image_size` with the config's own prefix rows and kernel."""
    import sys
    import types

    calls = []
    cfg = get_preset("tiny_clip")
    state = init_weights(cfg, seed=7)
    fake = types.ModuleType("shared.convert.hf_clip")
    fake.import_hf_clip = lambda st, conf, source: calls.append(("import", conf["model_type"], source)) or (cfg, state)
    fake.export_hf_clip = lambda c, st, mt: calls.append(("export", mt)) or ({"x": np.zeros(1, np.float32)},
                                                                             {"model_type": mt})
    monkeypatch.setitem(sys.modules, "shared.convert.hf_clip", fake)
    for mt in ("clip", "clip_vision_model", "siglip", "siglip_vision_model"):
        assert import_hf({}, {"model_type": mt}, source="src") == (cfg, state)
        assert export_hf(cfg, state, model_type=mt)[1] == {"model_type": mt}
    assert export_hf(cfg, state)[1] == {"model_type": "clip_vision_model"}  # norm_pre, no patch bias
    siglip = get_preset("tiny_siglip")
    export_hf(siglip, init_weights(siglip))
    assert calls[-1] == ("export", "siglip_vision_model")  # attention-pool head
    assert calls[0] == ("import", "clip", "src")
    cfg2, state2 = import_hf({}, {"model_type": "clip"}, image_size=(48, 40))
    assert cfg2.image_size == (48, 40) and cfg2.table_grid == (6, 5)
    assert np.array_equal(state2["pos_embed"], resample_pos_embed(state["pos_embed"], (4, 4), (6, 5), 1, "bicubic")
                          .astype(np.float32))


def _zip(path, members, compression=None):
    import zipfile

    with zipfile.ZipFile(path, "w", compression=compression or zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _rss_kib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.parametrize("kind", ["pt", "keras"])
def test_a_zip_bomb_is_refused_before_anything_is_extracted(tmp_path, kind):
    """A ~60 kB archive whose member expands to 64 MB: refused from the zip directory (declared sizes against the
    archive's size, shared.limits.MAX_ZIP_RATIO), before torch or Keras decompresses a byte."""
    from shared.cli import main

    zeros = bytes(64 * 2**20)
    if kind == "pt":
        bomb = _zip(tmp_path / "bomb.pt", {"archive/data.pkl": zeros, "archive/version": b"3\n"})
    else:
        bomb = _zip(tmp_path / "bomb.keras", {"config.json": b"{}", "model.weights.h5": zeros})
    del zeros
    assert bomb.stat().st_size < 200_000
    before = _rss_kib()
    assert main(["convert", str(bomb), str(tmp_path / "out.safetensors"), "--preset", "tiny"]) == 3
    assert _rss_kib() - before < 50_000
    assert not (tmp_path / "out.safetensors").exists()


def test_sparse_and_quantized_tensors_in_a_pt_are_typed_errors(tmp_path):
    import torch

    from shared.cli import main
    from shared.errors import InvalidFileError
    from shared.convert.timm import read_torch_checkpoint

    cfg = get_preset("tiny")
    state = {k: torch.from_numpy(v) for k, v in init_weights(cfg).items()}
    for name, bad in [("sparse", state["head.weight"].to_sparse()),
                      ("quantized", torch.quantize_per_tensor(state["head.weight"], 0.1, 0, torch.qint8))]:
        path = tmp_path / f"{name}.pt"
        torch.save({**state, "head.weight": bad}, path)
        with pytest.raises(InvalidFileError, match="'head.weight': expected a dense float tensor"):
            read_torch_checkpoint(path)
        assert main(["convert", str(path), str(tmp_path / f"{name}.safetensors"), "--preset", "tiny"]) == 3


@pytest.mark.parametrize("config,message", [
    (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "nested"),
    (json.dumps({"module": None, "class_name": "VisionTransformer", "registered_name": "vit_keras>VisionTransformer",
                 "config": {"config": get_preset("tiny").to_dict() | {"depth": 1_000_000}}}).encode(),
     "'depth' must be an int in \\[1, 1024\\]"),
    (b"[]", "does not describe a vit_keras VisionTransformer"),
], ids=["nested", "depth_1e6", "list"])
def test_a_hostile_keras_config_is_refused_before_keras_builds_anything(tmp_path, config, message):
    import time

    from vit_keras.convert import load_keras

    from shared.errors import InvalidFileError

    path = _zip(tmp_path / "m.keras", {"config.json": config, "model.weights.h5": b"x"})
    t = time.perf_counter()
    with pytest.raises(InvalidFileError, match=message):
        load_keras(path)
    assert time.perf_counter() - t < 5
