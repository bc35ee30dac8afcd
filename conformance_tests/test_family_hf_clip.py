"""Hugging Face CLIP, SigLIP and MetaCLIP 2 vision towers (shared/convert/hf_clip.py) against transformers' own
models.

Every source model is a tiny random-init transformers model (no download), its parameters shaken so each bias and
norm matters. Import: the float64 reference of the imported file equals transformers' own float32 output within
the float32 bound (shared.tolerances.fp32_bound). Export: a directory (safetensors + config.json) that transformers
loads with from_pretrained, holding tensors identical, bit for bit, to the source model's; and the canonical state
survives export + import bit for bit. Unsupported variants are refused by name.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from shared import reference  # noqa: E402
from shared.convert.hf_clip import export_hf_clip, import_hf_clip  # noqa: E402
from shared.errors import (ConfigError, ConversionError, ConversionWarning, MismatchError,  # noqa: E402
                           MissingFactsError)
from shared.init import init_weights, random_images  # noqa: E402
from shared.presets import get_preset  # noqa: E402
from shared.tolerances import fp32_bound, rel_l2  # noqa: E402
from shared.weights import read_tensors  # noqa: E402

torch.set_num_threads(2)

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
              patch_size=8, layer_norm_eps=1e-5)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=64,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
PROJ = 24
LABELS = 5
#: source architecture -> (model_type, builder of the random-init model, its output the canonical logits stand for)
ARCHS = {
    "CLIPVisionModel": ("clip_vision_model",
                        lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)),
                        lambda m, x, **kw: m(pixel_values=x, **kw).pooler_output),
    "CLIPVisionModelWithProjection": (
        "clip_vision_model",
        lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
            **VISION, projection_dim=PROJ, hidden_act="gelu")),
        lambda m, x, **kw: m(pixel_values=x, **kw).image_embeds),
    "CLIPModel": ("clip",
                  lambda: transformers.CLIPModel(transformers.CLIPConfig(
                      vision_config=VISION, text_config=TEXT, projection_dim=PROJ)),
                  lambda m, x, **kw: m.get_image_features(pixel_values=x, **kw).pooler_output),
    "SiglipVisionModel": ("siglip_vision_model",
                          lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION)),
                          lambda m, x, **kw: m(pixel_values=x, **kw).pooler_output),
    "SiglipModel": ("siglip",
                    lambda: transformers.SiglipModel(transformers.SiglipConfig(
                        vision_config={**VISION, "layer_norm_eps": 1e-6}, text_config=TEXT)),
                    lambda m, x, **kw: m.get_image_features(pixel_values=x, **kw).pooler_output),
    # beyond the five: the classifiers, and a SigLIP tower without its head (features: the mean of its tokens)
    "CLIPForImageClassification": (
        "clip",
        lambda: transformers.CLIPForImageClassification(transformers.CLIPConfig(
            vision_config=VISION, text_config=TEXT, num_labels=LABELS)),
        lambda m, x, **kw: m(pixel_values=x, **kw).logits),
    "SiglipForImageClassification": (
        "siglip",
        lambda: transformers.SiglipForImageClassification(transformers.SiglipConfig(
            vision_config=VISION, text_config=TEXT, num_labels=LABELS)),  # an unused attention-pool head inside
        lambda m, x, **kw: m(pixel_values=x, **kw).logits),
    "SiglipVisionModel_no_head": (
        "siglip_vision_model",
        lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION, vision_use_head=False)),
        lambda m, x, **kw: m(pixel_values=x, **kw).last_hidden_state.mean(1)),
    # MetaCLIP 2: CLIP's structure under its own classes (model types metaclip_2, metaclip_2_vision_model)
    "MetaClip2VisionModel": ("metaclip_2_vision_model",
                             lambda: transformers.MetaClip2VisionModel(transformers.MetaClip2VisionConfig(**VISION)),
                             lambda m, x, **kw: m(pixel_values=x, **kw).pooler_output),
    "MetaClip2Model": ("metaclip_2",
                       lambda: transformers.MetaClip2Model(transformers.MetaClip2Config(
                           vision_config=VISION, text_config=TEXT, projection_dim=PROJ)),
                       lambda m, x, **kw: m.get_image_features(pixel_values=x, **kw).pooler_output),
    "MetaClip2ForImageClassification": (
        "metaclip_2",
        lambda: transformers.MetaClip2ForImageClassification(transformers.MetaClip2Config(
            vision_config=VISION, text_config=TEXT, num_labels=LABELS)),
        lambda m, x, **kw: m(pixel_values=x, **kw).logits),
}
FIVE = ["CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel", "SiglipVisionModel", "SiglipModel"]
TEXT_SIDE = ("text_model.", "text_projection.", "logit_scale", "logit_bias")


@torch.no_grad()
def _perturb(model, seed: int):
    """transformers' init leaves biases at 0 and norms at 1: shake every parameter so each one matters."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _source(arch: str, seed: int = 1):
    torch.manual_seed(seed)
    return _perturb(ARCHS[arch][1](), seed)


def _np_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _hf_out(arch: str, model, x: np.ndarray, **kw) -> np.ndarray:
    with torch.no_grad():
        return ARCHS[arch][2](model, torch.from_numpy(x), **kw).numpy()


def _import(arch: str, model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        return import_hf_clip(_np_state(model), model.config.to_dict(), source=arch, **kw)


def _check(cfg, stage: str, actual, expected, what: str) -> float:
    err = rel_l2(np.asarray(actual, np.float64), expected)
    bound = fp32_bound(cfg, stage)
    assert err <= bound, f"{what}: {stage} rel L2 {err:.3e} > float32 bound {bound:.3e}"
    print(f"{what}: {stage} rel L2 {err:.2e} (bound {bound:.2e})")
    return err


def _write_dir(directory, hf_state: dict, conf: dict) -> None:
    """What save_pretrained writes: model.safetensors + config.json."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in hf_state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(conf, indent=2))


# ------------------------------------------------------------------------------------ import
@pytest.mark.parametrize("arch", list(ARCHS))
def test_import_equals_transformers(arch):
    model = _source(arch)
    cfg, state = _import(arch, model)
    family = "siglip" if arch.startswith("Siglip") else "clip"
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.patch_size) == (32, 2, 4, 64, 8)
    assert cfg.image_size == (32, 32) and cfg.resize_kernel == "bicubic"
    if family == "clip":
        assert (cfg.class_token, cfg.norm_pre, cfg.patch_bias, cfg.layer_norm_eps) == ("learned", True, False, 1e-5)
        assert cfg.gelu == ("erf" if arch == "CLIPVisionModelWithProjection" else "quick")
    else:
        assert (cfg.class_token, cfg.norm_pre, cfg.patch_bias, cfg.gelu) == ("none", False, True, "tanh")
    expected_k = {"CLIPVisionModelWithProjection": PROJ, "CLIPModel": PROJ, "MetaClip2Model": PROJ}.get(
        arch, LABELS if arch.endswith("Classification") else 0)
    assert cfg.num_classes == expected_k
    assert cfg.pool == {"SiglipVisionModel": "map", "SiglipModel": "map"}.get(
        arch, "mean" if arch.endswith(("Classification", "no_head")) else "token")

    x = random_images(cfg, 2, seed=3)
    ref = reference.forward(cfg, state, x)
    _check(cfg, "logits", _hf_out(arch, model, x), ref["logits"], f"HF {arch}")
    # every tower's token sequence, too: CLIP's last_hidden_state is the encoder output (no post_layernorm),
    # SigLIP's is after post_layernorm
    with torch.no_grad():
        tower = model.vision_model if hasattr(model, "vision_model") else model
        hidden = tower(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    stage = "norm" if family == "siglip" else f"block_{cfg.depth - 1}"
    _check(cfg, stage, hidden, ref[stage], f"HF {arch} last_hidden_state")


def test_import_is_sensitive():
    """The bound separates right from wrong: the same CLIP read with erf GELU, or with the post-layernorm eps off,
    is far outside it (so the equality above is not loose enough to hide a wrong mapping)."""
    model = _source("CLIPVisionModel")
    x = random_images(get_preset("tiny_clip"), 2, seed=3)
    y = _hf_out("CLIPVisionModel", model, x)
    for change in ({"hidden_act": "gelu"}, {"hidden_act": "gelu_pytorch_tanh"}):
        cfg, state = import_hf_clip(_np_state(model), {**model.config.to_dict(), **change})
        err = rel_l2(y, reference.forward(cfg, state, x)["logits"])
        assert err > 100 * fp32_bound(cfg, "logits"), f"{change}: error {err:.2e} should be far above the bound"
    cfg, state = import_hf_clip(_np_state(model), model.config.to_dict())
    swapped = dict(state)
    W = cfg.embed_dim
    for i in range(cfg.depth):  # q and k rows exchanged in every block
        w = state[f"blocks.{i}.attn.qkv.weight"]
        swapped[f"blocks.{i}.attn.qkv.weight"] = np.concatenate([w[W:2 * W], w[:W], w[2 * W:]])
    assert rel_l2(y, reference.forward(cfg, swapped, x)["logits"]) > 100 * fp32_bound(cfg, "logits")


@pytest.mark.parametrize("arch", FIVE)
def test_save_pretrained_directory_imports_the_same(arch, tmp_path):
    """What transformers' own save_pretrained writes (for CLIPVisionModel / SiglipVisionModel in transformers >= 5:
    keys without 'vision_model.') imports to the same canonical state as the model's state dict."""
    model = _source(arch)
    model.save_pretrained(tmp_path / "m")
    hf_state, _ = read_tensors(tmp_path / "m" / "model.safetensors")
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        cfg, state = import_hf_clip(hf_state, conf, source=str(tmp_path / "m"))
    cfg0, state0 = _import(arch, model)
    assert cfg.replace(name="x") == cfg0.replace(name="x")
    assert sorted(state) == sorted(state0)
    assert all(np.array_equal(state[k], state0[k]) for k in state0)


@pytest.mark.parametrize("arch", ["CLIPVisionModel", "SiglipVisionModel"])
def test_both_layouts_and_legacy_position_ids(arch):
    """The hub / transformers 4 layout ('vision_model.' prefix, a persistent position_ids buffer) and the
    transformers 5 module layout import to the same state; export writes either, and the module layout loads
    strictly into the installed transformers' model."""
    model = _source(arch)
    module_sd = _np_state(model)
    assert not any(k.startswith("vision_model.") for k in module_sd)
    n_pos = module_sd["embeddings.position_embedding.weight"].shape[0]
    legacy = {"vision_model." + k: v for k, v in module_sd.items()}
    legacy["vision_model.embeddings.position_ids"] = np.arange(n_pos, dtype=np.int64)[None]
    conf = model.config.to_dict()
    cfg_a, st_a = import_hf_clip(module_sd, conf)
    cfg_b, st_b = import_hf_clip(legacy, conf)
    assert cfg_a == cfg_b and all(np.array_equal(st_a[k], st_b[k]) for k in st_a) and sorted(st_a) == sorted(st_b)

    mt = ARCHS[arch][0]
    hf_mod, _ = export_hf_clip(cfg_a, st_a, mt, layout="module")
    hf_file, _ = export_hf_clip(cfg_a, st_a, mt, layout="file")
    assert sorted(hf_mod) == sorted(module_sd)
    assert sorted(hf_file) == sorted("vision_model." + k for k in module_sd)
    fresh = ARCHS[arch][1]()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in hf_mod.items()}, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], model.state_dict()[k]) for k in module_sd)

    bad = dict(legacy)
    bad["vision_model.embeddings.position_ids"] = np.arange(n_pos, dtype=np.int64)[None, ::-1].copy()
    with pytest.raises(MismatchError, match=r"vision_model\.embeddings\.position_ids"):
        import_hf_clip(bad, conf)


@pytest.mark.parametrize("arch", ["CLIPVisionModelWithProjection", "SiglipVisionModel"])
def test_import_at_another_image_size_equals_interpolate_pos_encoding(arch):
    """image_size on import resamples the table as HF's interpolate_pos_encoding does (bicubic, no antialias), here
    to a non-square 48x40 input."""
    model = _source(arch)
    cfg, state = _import(arch, model, image_size=(48, 40))
    assert cfg.image_size == (48, 40) and cfg.pos_grid is None
    x = random_images(cfg, 2, seed=4)
    ref = reference.forward(cfg, state, x)
    _check(cfg, "logits", _hf_out(arch, model, x, interpolate_pos_encoding=True), ref["logits"],
           f"HF {arch} interpolate_pos_encoding 48x40")


# ------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("arch", list(ARCHS))
def test_export_back_identical_in_from_pretrained(arch, tmp_path):
    model = _source(arch)
    cfg, state = _import(arch, model)
    mt = ARCHS[arch][0]
    text = TEXT if mt in ("clip", "siglip") else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf_state, conf = export_hf_clip(cfg, state, mt, text_config=text)
    base = arch.replace("_no_head", "")
    assert conf["architectures"] == [base]
    has_text = mt in ("clip", "siglip", "metaclip_2") and not base.endswith("Classification")
    assert any("text tower" in str(w.message) for w in caught) == has_text
    _write_dir(tmp_path / "hf", hf_state, conf)
    cls = getattr(transformers, base)
    loaded, info = cls.from_pretrained(str(tmp_path / "hf"), local_files_only=True, output_loading_info=True)
    loaded.eval()
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    missing = sorted(info["missing_keys"])
    assert all(k.startswith(TEXT_SIDE) for k in missing), f"missing non-text keys: {missing}"
    assert bool(missing) == has_text

    src_sd, got_sd = model.state_dict(), loaded.state_dict()
    compared = 0
    for k, v in src_sd.items():
        if k.startswith(TEXT_SIDE):
            continue
        # CLIP's classifiers never run post_layernorm: it is written as the identity
        if arch.endswith("ForImageClassification") and mt != "siglip" and "post_layernorm" in k:
            assert torch.equal(got_sd[k], torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)), k
            continue
        if arch == "SiglipForImageClassification" and ".head." in k:
            continue
        assert got_sd[k].dtype == v.dtype and torch.equal(got_sd[k], v), f"{k}: not bit-identical after export"
        compared += 1
    assert compared >= 2 * 16  # two blocks' worth of tensors, at least
    x = random_images(cfg, 2, seed=5)
    ref = reference.forward(cfg, state, x)
    _check(cfg, "logits", _hf_out(arch, loaded, x), ref["logits"], f"exported {arch} via from_pretrained")


def _canonical(preset: str, **changes):
    cfg = get_preset(preset).replace(notes="", **changes)
    state = init_weights(cfg, seed=11)
    if "head.bias" in state and cfg.pool == "token" and cfg.class_token == "learned":
        state["head.bias"] = np.zeros_like(state["head.bias"])  # CLIP's visual_projection has no bias
    return cfg, state


ROUND_TRIPS = {
    "clip_projection": (("tiny_clip",), {}, "clip_vision_model", "CLIPVisionModelWithProjection"),
    "clip_features_erf": (("tiny_clip",), {"num_classes": 0, "gelu": "erf"}, "clip_vision_model", "CLIPVisionModel"),
    "clip_model_tanh": (("tiny_clip",), {"gelu": "tanh", "attn_dropout": 0.1}, "clip", "CLIPModel"),
    "clip_classifier": (("tiny_clip",), {"pool": "mean", "final_norm": False}, "clip", "CLIPForImageClassification"),
    "siglip_map": (("tiny_siglip",), {"num_classes": 0, "image_size": (40, 40)}, "siglip_vision_model",
                   "SiglipVisionModel"),
    "siglip_model_quick": (("tiny_siglip",), {"num_classes": 0, "image_size": (32, 32), "gelu": "quick"}, "siglip",
                           "SiglipModel"),
    "siglip_no_head": (("tiny_siglip",), {"num_classes": 0, "pool": "mean", "image_size": (32, 32)},
                       "siglip_vision_model", "SiglipVisionModel"),
    "siglip_classifier": (("tiny_siglip",), {"pool": "mean", "image_size": (32, 32)}, "siglip",
                          "SiglipForImageClassification"),
    "metaclip_2_projection": (("tiny_clip",), {}, "metaclip_2_vision_model", "MetaClip2VisionModelWithProjection"),
    "metaclip_2_model": (("tiny_clip",), {"gelu": "erf"}, "metaclip_2", "MetaClip2Model"),
    "metaclip_2_classifier": (("tiny_clip",), {"pool": "mean", "final_norm": False}, "metaclip_2",
                              "MetaClip2ForImageClassification"),
}


@pytest.mark.parametrize("which", list(ROUND_TRIPS))
@pytest.mark.parametrize("layout", ["file", "module"])
def test_canonical_round_trip_bit_exact(which, layout):
    (preset,), changes, mt, arch = ROUND_TRIPS[which]
    cfg, state = _canonical(preset, **changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        hf_state, conf = export_hf_clip(cfg, state, mt, layout=layout)
        cfg2, state2 = import_hf_clip(hf_state, json.loads(json.dumps(conf)), source=which)
    assert conf["architectures"] == [arch]
    assert cfg2.replace(name=cfg.name, notes="") == cfg
    assert sorted(state2) == sorted(state)
    for k in state:
        assert state2[k].dtype == np.float32 and np.array_equal(state2[k], state[k]), k


def test_exported_canonical_presets_run_in_transformers(tmp_path):
    """The tiny CLIP and SigLIP presets' own weights (not transformers'), exported, give transformers' outputs equal
    to the float64 reference."""
    for which in ("clip_projection", "siglip_map", "clip_classifier", "metaclip_2_classifier"):
        (preset,), changes, mt, arch = ROUND_TRIPS[which]
        cfg, state = _canonical(preset, **changes)
        hf_state, conf = export_hf_clip(cfg, state, mt)
        _write_dir(tmp_path / which, hf_state, conf)
        loaded = getattr(transformers, arch).from_pretrained(str(tmp_path / which), local_files_only=True).eval()
        x = random_images(cfg, 2, seed=6)
        with torch.no_grad():
            out = loaded(pixel_values=torch.from_numpy(x))
        y = {"CLIPVisionModelWithProjection": "image_embeds", "SiglipVisionModel": "pooler_output"}.get(arch, "logits")
        _check(cfg, "logits", getattr(out, y).numpy(), reference.forward(cfg, state, x)["logits"],
               f"{preset} as {arch}")


# ------------------------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def clip_src():
    model = _source("CLIPVisionModelWithProjection")
    return _np_state(model), model.config.to_dict()


@pytest.fixture(scope="module")
def siglip_src():
    model = _source("SiglipVisionModel")
    return _np_state(model), model.config.to_dict()


def test_import_refusals_name_the_problem(clip_src, siglip_src):
    sd, conf = clip_src
    with pytest.raises(MissingFactsError, match="config.json"):
        import_hf_clip(sd, None)
    with pytest.raises(ConversionError, match="model_type str 'vit' is not a CLIP or SigLIP model"):
        import_hf_clip(sd, {**conf, "model_type": "vit"})
    with pytest.raises(ConversionError, match="hidden_act 'relu'"):
        import_hf_clip(sd, {**conf, "hidden_act": "relu"})
    with pytest.raises(ConfigError, match="'layer_norm_eps' must be"):
        import_hf_clip(sd, {**conf, "layer_norm_eps": "1e-5"})
    with pytest.raises(ConfigError, match="'image_size' must be an int"):
        import_hf_clip(sd, {**conf, "image_size": [32, 32]})
    with pytest.raises(MismatchError, match=r"hidden_size: config.json 64, weights 32"):
        import_hf_clip(sd, {**conf, "hidden_size": 64})
    with pytest.raises(MismatchError, match=r"has 17 rows; image_size 48 with patch_size 8 needs 37"):
        import_hf_clip(sd, {**conf, "image_size": 48})
    with pytest.raises(MismatchError, match="projection_dim 7, visual_projection.weight has 24 rows"):
        import_hf_clip(sd, {**conf, "projection_dim": 7})
    with pytest.raises(ConversionError, match="not divisible by num_attention_heads 5"):
        import_hf_clip(sd, {**conf, "num_attention_heads": 5})
    # keys: a patch bias CLIP does not have, a missing q projection, a text tower in a vision-only checkpoint
    with pytest.raises(MismatchError, match=r"unexpected key 'vision_model\.embeddings\.patch_embedding\.bias'"):
        import_hf_clip({**sd, "vision_model.embeddings.patch_embedding.bias": np.zeros(32, np.float32)}, conf)
    with pytest.raises(MismatchError, match=r"missing key 'vision_model\.encoder\.layers\.1\.self_attn\.q_proj\.bias'"):
        import_hf_clip({k: v for k, v in sd.items() if k != "vision_model.encoder.layers.1.self_attn.q_proj.bias"},
                       conf)
    with pytest.raises(MismatchError, match=r"unexpected key 'text_model\.x\.weight'.*text tower"):
        import_hf_clip({**sd, "text_model.x.weight": np.zeros(3, np.float32)}, conf)
    with pytest.raises(MismatchError, match=r"'classifier\.weight'.*CLIPForImageClassification, model_type 'clip'"):
        import_hf_clip({**sd, "classifier.weight": np.zeros((3, 32), np.float32)}, conf)
    with pytest.raises(MismatchError, match=r"cls_token.*shape \(1, 1, 32\)"):
        import_hf_clip({**sd, "vision_model.embeddings.class_embedding": np.zeros(31, np.float32)}, conf)
    with pytest.raises(MismatchError, match=r"expected a floating tensor"):
        import_hf_clip({**sd, "vision_model.pre_layrnorm.bias": np.zeros(32, np.int32)}, conf)
    # a CLIPModel without its projection
    full = {"model_type": "clip", "projection_dim": 24, "vision_config": {k: v for k, v in conf.items()
                                                                         if k != "projection_dim"}}
    with pytest.raises(MismatchError, match="missing key 'visual_projection.weight'"):
        import_hf_clip({k: v for k, v in sd.items() if k != "visual_projection.weight"}, full)
    with pytest.raises(ConversionError, match="a 'clip' checkpoint keeps its vision tower under 'vision_model.'"):
        import_hf_clip({k[len("vision_model."):] if k.startswith("vision_model.") else k: v for k, v in sd.items()},
                       full)
    with pytest.raises(ConversionError, match="vision_config has model_type str 'siglip_vision_model'"):
        import_hf_clip(sd, {**full, "vision_config": {**full["vision_config"], "model_type": "siglip_vision_model"}})

    ssd, sconf = siglip_src
    with pytest.raises(MismatchError, match=r"unexpected key 'head\.probe'.*vision_use_head is false"):
        import_hf_clip(ssd, {**sconf, "vision_use_head": False})
    with pytest.raises(MismatchError, match=r"missing key 'head\.probe'.*vision_use_head is true"):
        import_hf_clip({k: v for k, v in ssd.items() if not k.startswith("head.")}, sconf)
    with pytest.raises(MismatchError, match=r"'head\.attention\.in_proj_weight': shape \(64, 32\); expected 96 rows"):
        import_hf_clip({**ssd, "head.attention.in_proj_weight": ssd["head.attention.in_proj_weight"][:64]}, sconf)
    with pytest.raises(MismatchError, match="SigLIP has no visual projection"):
        import_hf_clip({**ssd, "visual_projection.weight": np.zeros((4, 32), np.float32)}, sconf)
    with pytest.raises(ConversionError, match="not a Hugging Face SigLIP vision tower"):
        import_hf_clip({k: v for k, v in ssd.items() if "patch_embedding" not in k}, sconf)


@pytest.mark.parametrize("arch, what", [
    ("CLIPModel", r"dropped the text tower \(22 tensors"),
    ("SiglipModel", r"dropped the text tower \(24 tensors"),
    ("CLIPForImageClassification", r"dropped 2 unused tensors \('vision_model\.post_layernorm\.weight'"),
    ("SiglipForImageClassification", r"dropped 11 unused tensors \('vision_model\.head\."),
])
def test_unused_parts_are_dropped_with_a_warning(arch, what):
    model = _source(arch)
    with pytest.warns(ConversionWarning, match=what):
        import_hf_clip(_np_state(model), model.config.to_dict(), source=arch)


def test_export_refusals_name_the_problem():
    plain = get_preset("tiny")
    with pytest.raises(ConversionError) as e:
        export_hf_clip(plain, init_weights(plain), "clip_vision_model")
    assert "norm_pre=False" in str(e.value) and "patch_bias=True" in str(e.value)
    cfg, state = _canonical("tiny_clip")
    bad = {**state, "head.bias": np.full_like(state["head.bias"], 0.5)}
    with pytest.raises(ConversionError, match=r"head\.bias is not zero \(max \|bias\| 0\.5\)"):
        export_hf_clip(cfg, bad, "clip_vision_model")
    with pytest.raises(ConversionError, match="a CLIPModel always has a visual_projection"):
        export_hf_clip(cfg.replace(num_classes=0), _canonical("tiny_clip", num_classes=0)[1], "clip")
    with pytest.raises(ConversionError, match="HF siglip has no class token|class_token='learned'"):
        export_hf_clip(cfg, state, "siglip")
    scfg, sstate = _canonical("tiny_siglip")  # 32x40 with a 3-class head after the MAP pool
    with pytest.raises(ConversionError) as e:
        export_hf_clip(scfg, sstate, "siglip_vision_model")
    assert "image_size (32, 40)" in str(e.value) and "num_classes=3" in str(e.value)
    lsc, lss = _canonical("tiny_clip", init_values=1e-5, qk_norm=True)
    with pytest.raises(ConversionError) as e:
        export_hf_clip(lsc, lss, "clip_vision_model")
    assert "init_values=1e-05 (LayerScale)" in str(e.value) and "qk_norm" in str(e.value)
    with pytest.raises(ConversionError, match="not a CLIP or SigLIP model type"):
        export_hf_clip(cfg, state, "vit")
    missing = {k: v for k, v in state.items() if k != "norm_pre.bias"}
    with pytest.raises(MismatchError, match=r"missing key 'norm_pre\.bias' \(expected shape \(32,\)\)"):
        export_hf_clip(cfg, missing, "clip_vision_model")
    with pytest.warns(ConversionWarning, match="initialises the text tower and text_projection randomly"):
        _, conf = export_hf_clip(cfg, state, "clip")
    assert conf["text_config"] == {} and conf["projection_dim"] == cfg.num_classes


@pytest.mark.parametrize("arch", ["CLIPVisionModel", "SiglipVisionModel"])
def test_model_safetensors_given_as_a_file_is_detected_as_hf(arch, tmp_path):
    """CLIP / SigLIP name the projection `patch_embedding` (singular): their model.safetensors, given as a file, was
    taken for a timm state dict."""
    from shared.convert.formats import detect_format

    _source(arch).save_pretrained(tmp_path)
    assert detect_format(tmp_path / "model.safetensors") == "hf"
