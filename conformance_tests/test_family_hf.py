"""Hugging Face's ViT family against transformers itself: ViT, DeiT (with teacher, classifier only, features with the
pooler), DINOv2, DINOv2-giant's SwiGLU MLP, DINOv2 with registers, the two DINOv2 classifiers (concat(class token,
patch mean): pool='token_mean'), ViTMAE and ViTMAE's pre-training checkpoint, ViTMSN's and I-JEPA's classifiers and
I-JEPA's encoder, each made by transformers (random init, then every parameter shaken so each one matters; tiny; no
download) and saved with `save_pretrained`, as its users save it.

Every (model_type, class) the importer accepts (shared.convert.hf.accepted_architectures, its own tables: the CLIP,
SigLIP and MetaCLIP 2 ones too) is imported from a save_pretrained directory and matched against that class's own
output, and the proof runner (hf_output) must pick a class that gives exactly that output: a class accepted
without a case here fails test_every_accepted_class.

Per family:
  * the Python API (load_hf_dir) and the CLI (`vit-suite convert DIR out.safetensors`) give one canonical file, whose
    float64 reference equals transformers' own output (computed here, from the model object) within
    shared.tolerances.fp32_bound(cfg, "logits");
  * the proof-against-source runner (shared.convert.sources.hf_output) gives exactly that output, and
    `vit-suite check --against DIR` passes (its `against` row: one backend runs beside it);
  * export back (save_hf_dir, and `vit-suite convert ... --to hf`) is loaded by transformers' from_pretrained with
    nothing missing and every tensor identical; the module layout loads with load_state_dict(strict=True);
  * `vit-suite check CONVERTED --against DIR` on every installed backend exits 0.

Needs the backends of issue 12's model options: test_every_backend_check for the deit_*, dinov2* families (a
distillation token, a register, LayerScale, position rows for some prefix tokens only). The ViT and ViTMAE rows use
no new option and pass on the backends as they are.
"""
from __future__ import annotations

import json
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from shared import reference  # noqa: E402
from shared import weights as W  # noqa: E402
from shared.cli import main  # noqa: E402
from shared.convert.hf import _DEFAULTS, accepted_architectures, export_hf, load_hf_dir, save_hf_dir  # noqa: E402
from shared.convert.sources import hf_output, siglip2_inputs  # noqa: E402
from shared.errors import ConversionWarning  # noqa: E402
from shared.posemb import resample_pos_embed  # noqa: E402
from shared.tolerances import fp32_bound, rel_l2  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::shared.errors.ConversionWarning")  # each said, tested in test_importers
torch.set_num_threads(2)
transformers.logging.set_verbosity_error()

_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=3, image_size=28, patch_size=7)
#: name -> (transformers class, config class, config kwargs, the canonical facts the import must state)
FAMILIES = {
    "vit": ("ViTForImageClassification", "ViTConfig",
            dict(_VIT, image_size=[28, 42], patch_size=7, num_labels=5),
            dict(num_classes=5, image_size=(28, 42), gelu="erf", layer_norm_eps=1e-12)),
    "deit_teacher": ("DeiTForImageClassificationWithTeacher", "DeiTConfig",
                     dict(_VIT, image_size=[28, 42], patch_size=7, num_labels=5),
                     dict(dist_token=True, reg_tokens=0, num_classes=5, resize_kernel="bicubic")),
    "deit_classifier": ("DeiTForImageClassification", "DeiTConfig",
                        dict(_VIT, image_size=28, patch_size=7, num_labels=4, hidden_act="gelu_pytorch_tanh",
                             qkv_bias=False),
                        dict(dist_token=False, reg_tokens=1, pos_prefix_tokens=None, num_classes=4, gelu="tanh",
                             qkv_bias=False)),
    "deit_model": ("DeiTModel", "DeiTConfig", dict(_VIT, image_size=28, patch_size=7, layer_norm_eps=1e-6),
                   dict(reg_tokens=1, num_classes=0, representation_size=32, layer_norm_eps=1e-6)),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(_DINO, num_channels=1, layerscale_value=0.5),
               dict(init_values=0.5, mlp_dim=96, in_chans=1, layer_norm_eps=1e-6, resize_kernel="bicubic")),
    "dinov2_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                         dict(_DINO, num_register_tokens=3, hidden_act="quick_gelu"),
                         dict(reg_tokens=3, pos_prefix_tokens=1, gelu="quick", resize_kernel="bicubic_antialias")),
    # DINOv2-giant's SwiGLU MLP: int(32 * 4) = 128 -> (int(128 * 2 / 3) + 7) // 8 * 8 = 88 hidden channels
    "dinov2_swiglu": ("Dinov2Model", "Dinov2Config", dict(_DINO, mlp_ratio=4, use_swiglu_ffn=True),
                      dict(swiglu=True, mlp_dim=88, init_values=1.0)),
    # DINOv2's linear-probe head: classifier (num_labels, 2 * hidden) on concat(class token, mean of the patch tokens)
    "dinov2_classifier": ("Dinov2ForImageClassification", "Dinov2Config", dict(_DINO, num_labels=5),
                          dict(pool="token_mean", num_classes=5, reg_tokens=0)),
    # ... with registers: HF's mean runs over [:, 1 + num_register_tokens:], the registers are in neither half
    "dinov2_registers_classifier": ("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
                                    dict(_DINO, num_register_tokens=2, num_labels=5),
                                    dict(pool="token_mean", num_classes=5, reg_tokens=2, pos_prefix_tokens=1)),
    "vit_mae": ("ViTMAEModel", "ViTMAEConfig", dict(_VIT, image_size=28, patch_size=7),
                dict(num_classes=0, representation_size=None)),
    "vit_mae_pretraining": ("ViTMAEForPreTraining", "ViTMAEConfig",
                            dict(_VIT, image_size=28, patch_size=7, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                 decoder_num_attention_heads=2, decoder_intermediate_size=32),
                            dict(num_classes=0)),
    # ViTMSN: a plain ViT whose layer_norm_eps defaults to 1e-6; it classifies the final-norm class token
    "vit_msn": ("ViTMSNForImageClassification", "ViTMSNConfig", dict(_VIT, image_size=28, patch_size=7, num_labels=5),
                dict(num_classes=5, layer_norm_eps=1e-6, class_token="learned", pool="token")),
    # I-JEPA: no class token; it classifies (and its features are) the mean of the final-normed tokens
    "ijepa": ("IJepaForImageClassification", "IJepaConfig",
              dict(_VIT, image_size=28, patch_size=7, num_labels=5, hidden_act="gelu_pytorch_tanh"),
              dict(num_classes=5, class_token="none", pool="mean", gelu="tanh", layer_norm_eps=1e-12)),
    "ijepa_model": ("IJepaModel", "IJepaConfig", dict(_VIT, image_size=[28, 42], patch_size=7),
                    dict(num_classes=0, class_token="none", pool="mean", representation_size=None)),
}
#: the HF type each family is exported back as (default: hf_model_type, the one that holds the config); the CLI
#: writes the default (a plain encoder as a ViT: the same tensors under ViTModel / ViTForImageClassification)
_EXPORT_TYPE = {"vit_mae": "vit_mae", "vit_mae_pretraining": "vit_mae", "vit_msn": "vit_msn"}


def _make(name: str):
    cls_name, conf_name, kwargs, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(getattr(transformers, conf_name)(**kwargs))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # HF's init leaves biases at 0, norms at 1, tokens at 0: shake every parameter
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (model, its save_pretrained directory), made once."""
    root = tmp_path_factory.mktemp("hf_family")
    out = {}
    for name in FAMILIES:
        model = _make(name)
        model.save_pretrained(root / name)
        out[name] = (model, root / name)
    return out


def _images(model, batch=2, size=None, seed=0):
    conf = model.config
    s = size or ((conf.image_size,) * 2 if isinstance(conf.image_size, int) else tuple(conf.image_size))
    return np.random.default_rng(seed).standard_normal((batch, conf.num_channels, *s)).astype(np.float32)


@torch.no_grad()
def _their_output(name: str, model, x: np.ndarray, **kw) -> np.ndarray:
    """transformers' own output that the canonical `logits` stage stands for, from the model object: a
    classifier's logits (DeiT with teacher: the mean of its two heads, HF's inference output), a pooler's output,
    or the final-norm class token (ViTMAE on every patch, in order: mask_ratio 0, noise = arange)."""
    t = torch.from_numpy(x)
    if name.startswith("vit_mae"):
        encoder = model.vit if name == "vit_mae_pretraining" else model
        encoder.config.mask_ratio = 0.0
        n = (x.shape[2] // encoder.config.patch_size) * (x.shape[3] // encoder.config.patch_size)
        kw.setdefault("noise", torch.arange(n, dtype=torch.float32).expand(x.shape[0], n))  # keep the order
        return encoder(pixel_values=t, **kw).last_hidden_state[:, 0].numpy()
    out = model(pixel_values=t, **kw)
    if hasattr(out, "logits"):
        return out.logits.numpy()
    if name == "ijepa_model":  # no class token, no pooler: the mean of the final-normed tokens
        return out.last_hidden_state.mean(1).numpy()
    return out.pooler_output.numpy()


def _load(d, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)  # mask_token, MAE's decoder and mask_ratio: said
        return load_hf_dir(d, **kw)


def _within(cfg, got, want, what):
    err, bound = rel_l2(np.asarray(got, np.float64), want), fp32_bound(cfg, "logits")
    assert err <= bound, f"{what}: logits rel L2 {err:.3e} > float32 bound {bound:.3e}"
    print(f"{what}: rel L2 {err:.2e} (bound {bound:.2e})")
    return err


# ----------------------------------------------------------------------------------------------- import
@pytest.mark.parametrize("name", list(FAMILIES))
def test_import_matches_transformers(name, saved, tmp_path):
    """Python API and CLI give the same canonical file, with the facts of config.json, and its float64 reference
    equals transformers' own output."""
    model, d = saved[name]
    cfg, state = _load(d)
    for key, want in FAMILIES[name][3].items():
        assert getattr(cfg, key) == want, f"{name}: {key} = {getattr(cfg, key)!r}, config.json says {want!r}"
    x = _images(model)
    _within(cfg, _their_output(name, model, x), reference.forward(cfg, state, x)["logits"], f"{name} (Python API)")
    out = tmp_path / "c.safetensors"
    assert main(["convert", str(d), str(out)]) == 0
    cfg2, state2 = W.load(out)
    assert cfg2 == cfg
    assert sorted(state2) == sorted(state) and all(np.array_equal(state[k], state2[k]) for k in state)


@pytest.mark.parametrize("name", ["vit_mae", "vit_mae_pretraining"])
def test_vit_mae_class_token_does_not_depend_on_the_shuffle(name, saved):
    """ViTMAEModel shuffles the patches even with mask_ratio 0; the class token is the same function of them."""
    model, d = saved[name]
    cfg, state = _load(d)
    x = _images(model, seed=3)
    _within(cfg, _their_output(name, model, x, noise=torch.rand(2, cfg.grid[0] * cfg.grid[1])),
            reference.forward(cfg, state, x)["logits"], f"{name}, shuffled")


@pytest.mark.parametrize("name,right,wrong", [("deit_model", "bicubic", "bicubic_antialias"),
                                              ("ijepa", "bicubic", "bicubic_antialias"),
                                              ("dinov2", "bicubic", "bicubic_antialias"),
                                              ("dinov2_registers", "bicubic_antialias", "bicubic")])
@pytest.mark.parametrize("size", [(42, 42), (14, 14)])
def test_resize_kernel_is_the_types_interpolate_pos_encoding(name, right, wrong, size, saved):
    """At another image size HF interpolates its table at run time; importing for that size resamples with the
    type's kernel and matches it, and the other kernel does not (the test can tell them apart). (HF reshapes the
    stored table as a square: the models here are square.)"""
    model, d = saved[name]
    cfg, state = _load(d, image_size=size)
    assert cfg.resize_kernel == right and cfg.image_size == size
    x = _images(model, size=size, seed=4)
    kw = {} if name.startswith("dinov2") else {"interpolate_pos_encoding": True}  # DINOv2 always interpolates
    theirs = _their_output(name, model, x, **kw)
    _within(cfg, theirs, reference.forward(cfg, state, x)["logits"], f"{name} at {size}")
    native, state_w = _load(d)
    cfg_w = native.replace(image_size=size, resize_kernel=wrong)
    state_w = {**state_w, "pos_embed": resample_pos_embed(state_w["pos_embed"], native.grid, cfg_w.grid,
                                                          native.num_pos_prefix, wrong).astype(np.float32)}
    err = rel_l2(theirs.astype(np.float64), reference.forward(cfg_w, state_w, x)["logits"])
    assert err > fp32_bound(cfg, "logits"), f"{name}: the {wrong} kernel is indistinguishable ({err:.2e})"


def test_config_defaults_are_transformers_own():
    """A key missing from config.json means what transformers' config class defaults it to."""
    for mt, defaults in _DEFAULTS.items():
        theirs = transformers.AutoConfig.for_model(mt).to_dict()
        wrong = {k: (v, theirs.get(k)) for k, v in defaults.items() if theirs.get(k) != v}
        assert not wrong, f"{mt}: vit-suite's default vs transformers': {wrong}"


# ------------------------------------------------------------------------------------ proof against the source
@pytest.mark.parametrize("name", list(FAMILIES))
def test_hf_output_runs_the_directorys_own_class(name, saved):
    """The runner of `check --against` picks the class from config.json (model_type, architectures) and returns the
    output that the canonical logits stand for: exactly what the model object computes."""
    model, d = saved[name]
    x = _images(model, seed=5)
    np.testing.assert_allclose(hf_output(str(d), x, None), _their_output(name, model, x), rtol=1e-6, atol=1e-7)


#: `check --against` runs the source in a child process (~8 s): one family in the CI-sized set, the rest slow
#: (test_hf_output_runs_the_directorys_own_class proves the runner on every family in-process)
_AGAINST_CI = ("deit_teacher",)


@pytest.mark.parametrize("name", [n if n in _AGAINST_CI else pytest.param(n, marks=pytest.mark.slow) for n in FAMILIES])
def test_check_against_the_source_passes(name, saved, tmp_path):
    model, d = saved[name]
    out, report = tmp_path / "c.safetensors", tmp_path / "check.json"
    assert main(["convert", str(d), str(out)]) == 0
    main(["check", str(out), "--against", str(d), "--backends", "torch", "--json", str(report)])
    against = json.loads(report.read_text())["against"]
    assert against["status"] == "pass" and against["library"] == "transformers", against
    assert against["rel_l2"] <= against["bound"] == fp32_bound(W.load(out)[0], "logits")


def test_check_against_the_source_catches_a_wrong_conversion(saved, tmp_path):
    """The runner is not blind: the same DeiT with tanh GELU instead of erf is a different function, and the proof
    against transformers fails, naming the error and the bound."""
    _, d = saved["deit_teacher"]
    cfg, state = _load(d)
    wrong = tmp_path / "wrong.safetensors"
    W.save(wrong, cfg.replace(gelu="tanh"), state)
    report = tmp_path / "check.json"
    main(["check", str(wrong), "--against", str(d), "--backends", "torch", "--json", str(report)])
    against = json.loads(report.read_text())["against"]
    assert against["status"] == "FAIL" and against["rel_l2"] > against["bound"], against


# ----------------------------------------------------------------------------------------------- export
def _compare_loaded(name, source, loaded, info):
    """Every tensor of the source model that the canonical model holds is in the loaded model, identical."""
    missing = sorted(info["missing_keys"])
    assert missing == [], f"{name}: from_pretrained did not find {missing}"
    theirs = {k: v for k, v in source.state_dict().items()}
    if name == "vit_mae_pretraining":  # the encoder is the model; the decoder is dropped, said
        theirs = {k[4:]: v for k, v in theirs.items() if k.startswith("vit.")}
    ours = loaded.state_dict()
    for k, v in theirs.items():
        if k.endswith("mask_token"):  # training-only: dropped on import, written as zeros
            assert not ours[k].any(), f"{name}: {k} is not zeros"
            continue
        assert k in ours, f"{name}: {k} not in the exported model"
        assert torch.equal(ours[k], v), f"{name}: {k} differs after the round trip"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_export_back_gives_transformers_identical_tensors(name, saved, tmp_path):
    model, d = saved[name]
    cfg, state = _load(d)
    mae = name.startswith("vit_mae")
    save_hf_dir(tmp_path / "api", cfg, state, model_type=_EXPORT_TYPE.get(name))
    conf = json.loads((tmp_path / "api" / "config.json").read_text())
    cls = getattr(transformers, conf["architectures"][0])
    assert conf["architectures"] == [FAMILIES[name][0] if name != "vit_mae_pretraining" else "ViTMAEModel"]
    loaded, info = cls.from_pretrained(tmp_path / "api", output_loading_info=True)
    _compare_loaded(name, model, loaded.eval(), info)
    x = _images(model, seed=6)
    theirs = _their_output(name, model, x)
    assert np.array_equal(_their_output("vit_mae" if mae else name, loaded, x), theirs)
    # the CLI: canonical -> HF directory (a plain encoder is written as a ViT: the same tensors under ViTModel)
    assert main(["convert", str(d), str(tmp_path / "c.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "c.safetensors"), str(tmp_path / "cli"), "--to", "hf"]) == 0
    conf = json.loads((tmp_path / "cli" / "config.json").read_text())
    cls = getattr(transformers, conf["architectures"][0])
    kw = {"add_pooling_layer": False} if mae else {}
    loaded, info = cls.from_pretrained(tmp_path / "cli", output_loading_info=True, **kw)
    _compare_loaded(name, model, loaded.eval(), info)
    a, b = load_file(tmp_path / "api" / "model.safetensors"), load_file(tmp_path / "cli" / "model.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a if k in b)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_module_layout_loads_strict(name, saved):
    """layout='module': the installed transformers' own module names, loaded with load_state_dict(strict=True)."""
    model, d = saved[name]
    cfg, state = _load(d)
    mae = name.startswith("vit_mae")
    hf_state, conf = export_hf(cfg, state, layout="module", model_type=_EXPORT_TYPE.get(name))
    arch = conf.pop("architectures")[0]
    hf_cfg = transformers.AutoConfig.for_model(conf.pop("model_type"), **conf)
    fresh = getattr(transformers, arch)(hf_cfg).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in hf_state.items()}, strict=True)
    x = _images(model, seed=7)
    assert np.array_equal(_their_output("vit_mae" if mae else name, fresh, x), _their_output(name, model, x))


# ------------------------------------------------------------------------------------------- every backend
#: the whole CLI path runs every backend in its own process (~20 s a family): one family in the CI-sized set (DINOv2
#: with registers and its classifier head: every DINOv2 option and the proof against the classifier's logits), the
#: rest slow; test_family_backends.py runs every family in every backend in-process
_CLI_CI = ("dinov2_registers_classifier",)


@pytest.mark.parametrize("name", [n if n in _CLI_CI else pytest.param(n, marks=pytest.mark.slow)
                                  for n in FAMILIES if n != "vit_mae_pretraining"])
def test_every_backend_check(name, saved, tmp_path):
    """The user's whole path: convert, then `vit-suite check CONVERTED --against DIR` on every installed backend."""
    _, d = saved[name]
    out = tmp_path / "c.safetensors"
    assert main(["convert", str(d), str(out)]) == 0
    report = tmp_path / "check.json"
    # the backends named: a registry entry another test added through VIT_SUITE_BACKENDS outlives its env var
    code = main(["check", str(out), "--backends", "torch,keras,mindspore", "--against", str(d), "--json", str(report)])
    result = json.loads(report.read_text())
    assert result["against"]["status"] == "pass", result["against"]
    bad = {b: (r["status"], r.get("first_failure"), (r.get("error") or "")[-300:])
           for b, r in result["backends"].items() if r["status"] != "pass"}
    assert code == 0 and not bad, f"{name}: exit {code}, backends {bad}"


def test_dinov2_classifier_without_labels_is_its_concatenated_features(tmp_path):
    """Dinov2ForImageClassification with num_labels 0 has an Identity classifier: its logits are concat(class token,
    patch mean), 2 * hidden wide. Imported as pool='token_mean' features (num_classes 0), written back as that class."""
    cls_name, conf_name, kwargs, _ = FAMILIES["dinov2_classifier"]
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(getattr(transformers, conf_name)(**{**kwargs, "num_labels": 0})).eval()
    model.save_pretrained(tmp_path / "src")
    cfg, state = _load(tmp_path / "src")
    assert (cfg.pool, cfg.num_classes, cfg.feature_dim) == ("token_mean", 0, 64)
    x = _images(model, seed=9)
    theirs = _their_output("dinov2_classifier", model, x)
    assert theirs.shape == (2, 64)
    _within(cfg, theirs, reference.forward(cfg, state, x)["logits"], "Dinov2ForImageClassification, num_labels 0")
    save_hf_dir(tmp_path / "back", cfg, state)
    assert json.loads((tmp_path / "back" / "config.json").read_text())["architectures"] == [cls_name]
    loaded, info = getattr(transformers, cls_name).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert np.array_equal(_their_output("dinov2_classifier", loaded.eval(), x), theirs)


# ------------------------------------------------------------------------------------ CLIP / SigLIP runners
def _clip_dirs(tmp_path):
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                  patch_size=7, projection_dim=16)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=99,
                max_position_embeddings=16, projection_dim=16)
    sig_vision = {k: v for k, v in vision.items() if k != "projection_dim"}
    sig_text = {k: v for k, v in text.items() if k != "projection_dim"}
    made = {
        "CLIPVisionModel": lambda m, t: m(pixel_values=t).pooler_output,
        "CLIPVisionModelWithProjection": lambda m, t: m(pixel_values=t).image_embeds,
        "CLIPModel": lambda m, t: m.get_image_features(pixel_values=t),
        "SiglipVisionModel": lambda m, t: m(pixel_values=t).pooler_output,
        "SiglipModel": lambda m, t: m.get_image_features(pixel_values=t),
    }
    confs = {"CLIPVisionModel": transformers.CLIPVisionConfig(**vision),
             "CLIPVisionModelWithProjection": transformers.CLIPVisionConfig(**vision),
             "CLIPModel": transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16),
             "SiglipVisionModel": transformers.SiglipVisionConfig(**sig_vision),
             "SiglipModel": transformers.SiglipConfig(vision_config=sig_vision, text_config=sig_text)}
    for arch, fn in made.items():
        torch.manual_seed(0)
        model = getattr(transformers, arch)(confs[arch]).eval()
        model.save_pretrained(tmp_path / arch)
        yield arch, model, fn


def test_hf_output_clip_and_siglip_outputs(tmp_path):
    """For the CLIP / SigLIP converters (shared.convert.hf_clip) to be provable: the runner gives CLIPVisionModel's
    and SiglipVisionModel's pooler_output, CLIPVisionModelWithProjection's image_embeds, and CLIPModel's and
    SiglipModel's get_image_features, each exactly as the model object computes it."""
    x = np.random.default_rng(8).standard_normal((2, 3, 28, 28)).astype(np.float32)
    for arch, model, fn in _clip_dirs(tmp_path):
        with torch.no_grad():
            want = fn(model, torch.from_numpy(x))
        want = getattr(want, "pooler_output", want).numpy()  # transformers 5: get_image_features -> pooler_output
        got = hf_output(str(tmp_path / arch), x, None)
        assert got.shape == want.shape, arch
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=arch)


# ------------------------------------------------------------------------- every class the importer accepts
_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=28,
              patch_size=7)
_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64,
             max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
_DINO_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=28, patch_size=7)
_MAE = dict(_TOWER, mask_ratio=0.0, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
            decoder_intermediate_size=32)
_LABELS = dict(num_labels=5)


def _pair(vision_conf: str, full_conf: str, **extra):
    """config kwargs of a full (vision + text) model: CLIPConfig(vision_config=..., text_config=...)."""
    return full_conf, dict(vision_config=_TOWER, text_config=_TEXT, **extra)


def _mae_out(m, t):
    base = getattr(m, "vit", m)  # ViTMAEForPreTraining keeps the encoder under vit.
    n = (t.shape[2] // 7) * (t.shape[3] // 7)
    noise = torch.arange(n, dtype=torch.float32).expand(t.shape[0], n)  # every patch, in order
    return base(pixel_values=t, noise=noise).last_hidden_state[:, 0]


_OUT = {  # what the canonical logits stand for, computed from the model object
    "logits": lambda m, t: m(pixel_values=t).logits,
    "pooler": lambda m, t: m(pixel_values=t).pooler_output,
    "class token": lambda m, t: m(pixel_values=t).last_hidden_state[:, 0],
    "mean": lambda m, t: m(pixel_values=t).last_hidden_state.mean(1),
    "image_embeds": lambda m, t: m(pixel_values=t).image_embeds,
    "image_features": lambda m, t: getattr(m.get_image_features(pixel_values=t), "pooler_output", None),
    # a backbone's last stage, not reshaped: the final-norm tokens; the canonical features are its class token
    "backbone": lambda m, t: m(pixel_values=t).feature_maps[-1][:, 0],
    "mae": _mae_out,
    # DINOv3ViTBackbone's feature maps hold the patch tokens only; its last stage's class token (final-normed)
    "backbone class token": lambda m, t: m(pixel_values=t).cls_tokens[-1],
    # SigLIP 2 takes flattened patches + pixel_attention_mask + spatial_shapes (transformers' own patchify)
    "siglip2 pooler": lambda m, t: m(**siglip2_inputs(t.numpy(), m.config.patch_size)).pooler_output,
    "siglip2 image_features": lambda m, t: m.get_image_features(
        **siglip2_inputs(t.numpy(), m.config.vision_config.patch_size)).pooler_output,
    "siglip2 logits": lambda m, t: m(**siglip2_inputs(t.numpy(), m.config.vision_config.patch_size)).logits,
}
#: a SigLIP 2 tower: no image_size, a 4x4 table (num_patches) of 7-pixel patches: 28x28 images are its own grid
_S2 = dict({k: v for k, v in _TOWER.items() if k != "image_size"}, num_patches=16)
_BACKBONE = dict(_DINO_TINY, out_features=["stage2"], reshape_hidden_states=False)
#: DINOv3 (dinov3 RoPE on a 4x4 grid, head_dim 16): registers, q/v biases, GELU; the backbone: full biases, SwiGLU
_DINOV3 = dict({k: v for k, v in _TOWER.items() if k != "intermediate_size"}, intermediate_size=48,
               num_register_tokens=2, layerscale_value=0.5)
#: (model_type, class) -> (config class, its kwargs, the output kind): one tiny model of every accepted class
EVERY_CLASS = {
    ("vit", "ViTModel"): ("ViTConfig", _TOWER, "pooler"),
    ("vit", "ViTForImageClassification"): ("ViTConfig", dict(_TOWER, **_LABELS), "logits"),
    ("deit", "DeiTModel"): ("DeiTConfig", _TOWER, "pooler"),
    ("deit", "DeiTForImageClassification"): ("DeiTConfig", dict(_TOWER, **_LABELS), "logits"),
    ("deit", "DeiTForImageClassificationWithTeacher"): ("DeiTConfig", dict(_TOWER, **_LABELS), "logits"),
    ("dinov2", "Dinov2Model"): ("Dinov2Config", _DINO_TINY, "pooler"),
    ("dinov2", "Dinov2Backbone"): ("Dinov2Config", _BACKBONE, "backbone"),
    ("dinov2", "Dinov2ForImageClassification"): ("Dinov2Config", dict(_DINO_TINY, **_LABELS), "logits"),
    ("dinov2_with_registers", "Dinov2WithRegistersModel"): ("Dinov2WithRegistersConfig", _DINO_TINY, "pooler"),
    ("dinov2_with_registers", "Dinov2WithRegistersBackbone"): ("Dinov2WithRegistersConfig", _BACKBONE, "backbone"),
    ("dinov2_with_registers", "Dinov2WithRegistersForImageClassification"): (
        "Dinov2WithRegistersConfig", dict(_DINO_TINY, **_LABELS), "logits"),
    ("vit_mae", "ViTMAEModel"): ("ViTMAEConfig", dict(_TOWER, mask_ratio=0.0), "mae"),
    ("vit_mae", "ViTMAEForPreTraining"): ("ViTMAEConfig", _MAE, "mae"),
    ("vit_msn", "ViTMSNModel"): ("ViTMSNConfig", _TOWER, "class token"),
    ("vit_msn", "ViTMSNForImageClassification"): ("ViTMSNConfig", dict(_TOWER, **_LABELS), "logits"),
    ("ijepa", "IJepaModel"): ("IJepaConfig", _TOWER, "mean"),
    ("ijepa", "IJepaForImageClassification"): ("IJepaConfig", dict(_TOWER, **_LABELS), "logits"),
    ("clip_vision_model", "CLIPVisionModel"): ("CLIPVisionConfig", _TOWER, "pooler"),
    ("clip_vision_model", "CLIPVisionModelWithProjection"): ("CLIPVisionConfig", dict(_TOWER, projection_dim=16),
                                                             "image_embeds"),
    ("clip", "CLIPModel"): (*_pair("CLIPVisionConfig", "CLIPConfig", projection_dim=16), "image_features"),
    ("clip", "CLIPForImageClassification"): (*_pair("CLIPVisionConfig", "CLIPConfig", **_LABELS), "logits"),
    ("siglip_vision_model", "SiglipVisionModel"): ("SiglipVisionConfig", _TOWER, "pooler"),
    ("siglip", "SiglipModel"): (*_pair("SiglipVisionConfig", "SiglipConfig"), "image_features"),
    ("siglip", "SiglipForImageClassification"): (*_pair("SiglipVisionConfig", "SiglipConfig", **_LABELS), "logits"),
    ("metaclip_2_vision_model", "MetaClip2VisionModel"): ("MetaClip2VisionConfig", _TOWER, "pooler"),
    ("metaclip_2_vision_model", "MetaClip2VisionModelWithProjection"): (
        "MetaClip2VisionConfig", dict(_TOWER, projection_dim=16), "image_embeds"),
    ("metaclip_2", "MetaClip2Model"): (*_pair("MetaClip2VisionConfig", "MetaClip2Config", projection_dim=16),
                                       "image_features"),
    ("metaclip_2", "MetaClip2ForImageClassification"): (
        *_pair("MetaClip2VisionConfig", "MetaClip2Config", **_LABELS), "logits"),
    # BEiT and data2vec-vision (shared.convert.hf_beit): a relative table per layer, or a shared one with an
    # absolute table; the mean of the patch tokens + the pooler's norm, or the final-normed class token
    ("beit", "BeitModel"): ("BeitConfig", dict(_TOWER, use_relative_position_bias=True), "pooler"),
    ("beit", "BeitForImageClassification"): ("BeitConfig", dict(
        _TOWER, **_LABELS, use_shared_relative_position_bias=True, use_absolute_position_embeddings=True,
        use_mean_pooling=False), "logits"),
    ("data2vec-vision", "Data2VecVisionModel"): ("Data2VecVisionConfig", dict(_TOWER, use_relative_position_bias=True),
                                                 "class token"),
    ("data2vec-vision", "Data2VecVisionForImageClassification"): ("Data2VecVisionConfig", dict(
        _TOWER, **_LABELS, use_relative_position_bias=True, layer_scale_init_value=0.0), "logits"),
    ("siglip2_vision_model", "Siglip2VisionModel"): ("Siglip2VisionConfig", _S2, "siglip2 pooler"),
    # AIMv2 (shared.convert.hf_aimv2): RMSNorm after the patch projection and everywhere, an unpacked SwiGLU
    ("aimv2_vision_model", "Aimv2VisionModel"): ("Aimv2VisionConfig", dict(_TOWER, use_head=False), "mean"),
    ("siglip2", "Siglip2Model"): ("Siglip2Config", dict(vision_config=_S2, text_config=_TEXT),
                                  "siglip2 image_features"),
    ("siglip2", "Siglip2ForImageClassification"): (
        "Siglip2Config", dict(vision_config=_S2, text_config=_TEXT, **_LABELS), "siglip2 logits"),
    # DINOv3 (shared.convert.hf_dinov3); its other forms: conformance_tests/test_family_hf_dinov3.py
    ("dinov3_vit", "DINOv3ViTModel"): ("DINOv3ViTConfig", _DINOV3, "pooler"),
    ("dinov3_vit", "DINOv3ViTBackbone"): ("DINOv3ViTConfig", dict(
        _DINOV3, num_register_tokens=0, use_gated_mlp=True, hidden_act="silu", key_bias=True,
        out_features=["stage2"], return_class_token=True), "backbone class token"),
}


def _save_class(mt: str, arch: str, directory):
    """transformers' own tiny random-init `arch` (every parameter shaken), saved with save_pretrained."""
    conf_name, kwargs, _ = EVERY_CLASS[(mt, arch)]
    torch.manual_seed(0)
    model = getattr(transformers, arch)(getattr(transformers, conf_name)(**kwargs))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.eval().save_pretrained(directory)
    assert json.loads((directory / "config.json").read_text())["model_type"] == mt
    return model


@pytest.mark.parametrize("mt,arch", accepted_architectures(), ids=lambda v: v)
def test_every_accepted_class(mt, arch, tmp_path):
    """Each class the importer accepts, saved by transformers: the canonical file's float64 reference within the
    float32 bound of that class's own output, and the proof runner picks a class that computes exactly it."""
    assert (mt, arch) in EVERY_CLASS, f"the importer accepts {arch} ({mt}), no test builds one: add it to EVERY_CLASS"
    model = _save_class(mt, arch, tmp_path)
    cfg, state = _load(tmp_path)
    x = np.random.default_rng(9).standard_normal((2, 3, 28, 28)).astype(np.float32)
    with torch.no_grad():
        theirs = _OUT[EVERY_CLASS[(mt, arch)][2]](model, torch.from_numpy(x)).numpy()
    _within(cfg, theirs, reference.forward(cfg, state, x)["logits"], f"{arch} ({mt})")
    np.testing.assert_allclose(hf_output(str(tmp_path), x, cfg), theirs, rtol=1e-5, atol=1e-6, err_msg=arch)


def test_every_class_case_is_accepted():
    """No stale case: every class built above is one the importer accepts."""
    assert set(EVERY_CLASS) <= set(accepted_architectures()), set(EVERY_CLASS) - set(accepted_architectures())


@pytest.mark.parametrize("mt,arch", [("clip", "CLIPForImageClassification"),  # ~10 s each (child processes)
                                     pytest.param("siglip", "SiglipForImageClassification", marks=pytest.mark.slow)])
def test_check_against_the_classifier_directory_passes(mt, arch, tmp_path):
    """The bug: the proof of a CLIP / SigLIP classifier built CLIPModel / SiglipModel, which cannot load the
    directory (no text tower), so `check --against DIR` reported an error and exited 1 while the conversion was
    right. It runs the directory's own class now: the against row passes and check exits 0. (test_every_accepted_class
    proves the runner's class for both in-process, in the CI-sized set; the SigLIP CLI run is slow-marked.)"""
    d = tmp_path / "src"
    _save_class(mt, arch, d)
    out, report = tmp_path / "c.safetensors", tmp_path / "check.json"
    assert main(["convert", str(d), str(out)]) == 0
    code = main(["check", str(out), "--against", str(d), "--backends", "torch", "--json", str(report)])
    against = json.loads(report.read_text())["against"]
    assert against["status"] == "pass" and against["library"] == "transformers", against
    assert against["rel_l2"] <= against["bound"] == fp32_bound(W.load(out)[0], "logits")
    print(f"{arch}: check --against rel L2 {against['rel_l2']:.2e} (bound {against['bound']:.2e})")
    assert code == 0
