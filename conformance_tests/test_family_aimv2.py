"""AIMv2 (timm's aimv2_* and Hugging Face's aimv2_vision_model) and timm's test_vit4 against their own libraries.

The options: a norm after the patch projection (patch_norm, key patch_embed.norm), no bias on attn.proj and the block
MLPs (proj_bias=False), with the RMSNorm (norm_kind) and timm's unpacked SwiGLU of the Eva work; timm builds them in
its VisionTransformer (embed_norm_layer, proj_bias, norm_layer=RmsNorm, mlp_layer=SwiGLU), whose keys cannot tell
them, so the resolver reads the whole config from timm's built modules (facts['vit_config']).

Oracles: timm's / transformers' own tiny random models (depth 2, every parameter perturbed), whose float32 output the
float64 reference of the imported file meets at least 10x under the float32 bound (shared/tolerances.py); the
exports load strictly into timm's VisionTransformer and transformers' Aimv2VisionModel and give the same output. The
tiny preset tiny_aimv2 runs on each primary backend (float32 and low-precision stages, gradients against the float64
oracle, one AdamW step against NumPy's; torch in the CI-sized set, Keras and MindSpore with -m slow; the oracle
against the reference's finite differences), in ONNX Runtime, and trains on digits (test_training.py 'aimv2', slow). The AIMv2 presets are timm's architectures of the same name, key by key. The CI-sized part: ~15 s on 2
cores.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402

from shared import reference  # noqa: E402
from shared.config import ViTConfig  # noqa: E402
from shared.convert.hf import load_hf_dir, save_hf_dir  # noqa: E402
from shared.convert.io import save_timm_hub_dir  # noqa: E402
from shared.convert.timm import (export_timm, load_timm_file, timm_architecture, timm_form,  # noqa: E402
                                 timm_model_kwargs)
from shared.convert.timm_resolve import resolve_timm_architecture  # noqa: E402
from shared.errors import ConversionError  # noqa: E402
from shared.init import random_images  # noqa: E402
from shared.presets import AIMV2_PRESETS, get_preset  # noqa: E402
from shared.tolerances import fp32_bound, rel_l2  # noqa: E402
from shared.weights import expected_shapes  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::shared.errors.ConversionWarning")
transformers.logging.set_verbosity_error()

TINY = dict(depth=2, embed_dim=64, num_heads=4, num_classes=7)
#: arch -> its tiny model's extra kwargs
CASES = {"aimv2_large_patch14_224": dict(img_size=56),  # patch norm, RMSNorm, unpacked SwiGLU, no biases, avg pool
         "test_vit4": dict(img_size=48)}  # RMSNorm, a register, LayerScale, avg pool + fc_norm


def _shaken(m):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return m.eval()


def _run(m, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return m(torch.from_numpy(x)).double().numpy()


# ------------------------------------------------------------------------------------------ timm, both ways
@pytest.mark.parametrize("arch", list(CASES))
def test_timm_imports_and_exports(arch, tmp_path):
    """timm's model saved as a hub directory (save_for_hf: config.json names the architecture) -> canonical: the
    float64 reference meets timm's float32 output at least 10x under the float32 bound; the export loads strictly into
    timm's VisionTransformer (timm_model_kwargs) with every tensor unchanged and the same output, and the exported hub
    directory (config.json on an AIMv2 / test_vit4 base) is timm's own model again."""
    torch.manual_seed(0)
    m = _shaken(timm.create_model(arch, pretrained=False, **TINY, **CASES[arch]))
    save_for_hf(m, str(tmp_path / "src"), safe_serialization=True)
    cfg, state = load_timm_file(tmp_path / "src")
    assert cfg.norm_kind == "rms" and (cfg.patch_norm, cfg.proj_bias) == ((True, False) if "aimv2" in arch
                                                                         else (False, True))
    x = random_images(cfg, 2, seed=3)
    want = _run(m, x)
    err, bound = rel_l2(reference.forward(cfg, state, x)["logits"], want), fp32_bound(cfg, "logits")
    print(f"{arch}: reference vs timm rel L2 {err:.2e} (bound {bound:.2e})")
    assert err < bound / 10
    sd = m.state_dict()
    back = export_timm(cfg, state)
    assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
    m2 = timm.create_model(timm_architecture(cfg), pretrained=False, **timm_model_kwargs(cfg)).eval()
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    np.testing.assert_array_equal(_run(m2, x), want)
    save_timm_hub_dir(tmp_path / "hub", *timm_form(cfg, state))
    m3 = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    np.testing.assert_array_equal(_run(m3, x), want)


def test_mixed_norm_kinds_and_biases_are_refused_by_name():
    """One norm kind for the whole model: test_vit4 (RmsNorm) with a LayerNorm in its patch embedding is refused
    naming both; the canonical proj_bias is one switch (no partial bias layouts exist in timm's builders to test)."""
    with pytest.raises(ConversionError, match=r"test_vit4 mixes norm kinds \(LayerNorm as patch_embed.norm, "
                                              r"RmsNorm as blocks.0.norm1\)"):
        resolve_timm_architecture("test_vit4", {"depth": 1, "embed_norm_layer": "layernorm"})
    with pytest.raises(ConversionError, match="mixes norm kinds"):
        resolve_timm_architecture("aimv2_large_patch14_224", {"depth": 1, "norm_layer": "layernorm"})


@pytest.mark.parametrize("name", [n if n == "aimv2_large_patch14_224" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in AIMV2_PRESETS])
def test_aimv2_preset_is_timms_architecture(name):
    """Each AIMv2 preset: timm's meta-device model of that name holds exactly the preset's keys and shapes, and every
    fact timm's built modules state equals the preset's field."""
    cfg = get_preset(name)
    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected_shapes(cfg)
    facts = ViTConfig(**resolve_timm_architecture(name, {}).facts["vit_config"])
    assert facts.replace(notes="") == cfg.replace(notes="")


# ------------------------------------------------------------------------------------------ Hugging Face
def _hf_aimv2(tmp_path, **kw):
    torch.manual_seed(1)
    conf = transformers.Aimv2VisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, image_size=28, patch_size=7, **kw)
    m = _shaken(transformers.Aimv2VisionModel(conf))
    m.save_pretrained(tmp_path)
    return m


def test_hf_aimv2_with_biases_imports_and_exports(tmp_path):
    """Aimv2VisionModel with qkv and MLP biases (test_family_hf covers the default, bias-free one): the reference of
    the imported file meets transformers' mean of the final-normed tokens 10x under the float32 bound; save_hf_dir's
    directory loads in transformers with nothing missing and gives the same output."""
    m = _hf_aimv2(tmp_path / "src", use_head=False, qkv_bias=True, mlp_bias=True)
    cfg, state = load_hf_dir(tmp_path / "src")
    assert cfg.qkv_bias and cfg.proj_bias and cfg.patch_norm and cfg.norm_kind == "rms"
    x = np.random.default_rng(9).standard_normal((2, 3, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = m(pixel_values=torch.from_numpy(x)).last_hidden_state.mean(1).double().numpy()
    err, bound = rel_l2(reference.forward(cfg, state, x)["logits"], want), fp32_bound(cfg, "logits")
    print(f"Aimv2VisionModel (biases): reference vs transformers rel L2 {err:.2e} (bound {bound:.2e})")
    assert err < bound / 10
    save_hf_dir(tmp_path / "out", cfg, state)
    m2, info = transformers.Aimv2VisionModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        got = m2.eval()(pixel_values=torch.from_numpy(x)).last_hidden_state.mean(1).double().numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kw,why", [(dict(use_head=True), "use_head=True ends in an attention-pooling head"),
                                    (dict(use_head=False, is_native=True), "is_native=True"),
                                    (dict(use_head=False, qkv_bias=True), "qkv_bias=True with mlp_bias=False")])
def test_hf_aimv2_the_canonical_model_cannot_run_is_refused_by_name(kw, why, tmp_path):
    _hf_aimv2(tmp_path, **kw)
    with pytest.raises(ConversionError, match=why):
        load_hf_dir(tmp_path)


def test_hf_aimv2_clip_like_model_is_refused_by_name(tmp_path):
    """Aimv2Model (LiT): its vision tower always ends in the attention-pooling head, then visual_projection."""
    from shared.convert.hf import import_hf

    conf = {"model_type": "aimv2", "architectures": ["Aimv2Model"], "vision_config": {}}
    with pytest.raises(ConversionError, match="the CLIP-like Aimv2Model: its vision tower ends in an attention-pooling"):
        import_hf({}, conf, "<aimv2>")
    with pytest.raises(ConversionError, match="proj_bias=False"):  # and no other HF type takes its options
        save_hf_dir(tmp_path / "vit", get_preset("tiny_aimv2"), {}, model_type="vit")


def test_formats_without_the_options_refuse_them_by_name():
    """torchvision, keras-hub and mindcv ViTs have none of AIMv2's options: each export is refused naming every one
    (the patch norm, the bias-free projections, RMSNorm, the SwiGLU) rather than written without them."""
    from shared.convert.kerashub import export_kerashub
    from shared.convert.mindcv import export_mindcv
    from shared.convert.torchvision import export_torchvision
    from shared.init import init_weights

    cfg = get_preset("tiny_aimv2")
    assert any("patch_norm" in o for o in cfg.family_options()) and any("proj_bias" in o for o in cfg.family_options())
    for export in (export_torchvision, export_kerashub, export_mindcv):
        with pytest.raises(ConversionError) as e:
            export(cfg, init_weights(cfg))
        assert all(option in str(e.value) for option in cfg.family_options()), str(e.value)


# ------------------------------------------------------------------------------------------ the backends
@pytest.mark.ci_backends("torch")  # Keras and MindSpore (~30 s of compiles) in the slow set
def test_tiny_aimv2_on_every_primary_backend(primary_backend):
    """tiny_aimv2 (not in the family matrix: FAMILY_TINY's compiles cost minutes) on each primary backend: every stage
    (patch_norm its own) within the float32 bound, at a low precision within the bound of the reference run at that
    precision, and its loss gradients within the gradient bound of the float64 oracle."""
    from shared.backend import get_backend
    from shared.testing import assert_backend_conforms, case
    from shared.training import grad as G

    be = primary_backend
    cfg, state, x = case("tiny_aimv2")
    v, _ = assert_backend_conforms(be, "tiny_aimv2")
    assert "patch_norm" in {s.stage for s in v.stages}
    y = np.random.default_rng(3).integers(0, cfg.num_classes, x.shape[0])
    _, grads = be.loss_and_grads(cfg, state, x, y, 0.1)
    _, g64 = get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, 0.1, dtype="float64")
    bound = G.GRAD_FACTOR * fp32_bound(cfg, "logits")
    worst = max((rel_l2(grads[k], g64[k]) / bound, k) for k in g64)
    print(f"{be.name} gradients: worst {worst[1]} at {worst[0]:.3f} of the bound")
    assert set(grads) == set(g64) and worst[0] <= 1.0, worst
    assert np.any(g64["patch_embed.norm.weight"] != 0)
    # one AdamW step (the training recipe's optimiser) against NumPy's float64 step from the oracle's gradients
    hp = G.STEP_HPARAMS["adamw"]
    new = be.optimizer_step(cfg, state, x, y, "adamw", lr=hp["lr"], weight_decay=hp["weight_decay"],
                            label_smoothing=0.1, betas=G.ADAM_BETAS, eps=G.ADAM_EPS)
    rows = G.step_errors("adamw", cfg, state, new, grads, g64)
    bad = {k: m for k, m in rows.items() if not (m["opt_err"] <= m["opt_bound"] and m["e2e_err"] <= m["e2e_bound"])}
    assert not bad and all(not np.array_equal(new[k], state[k]) for k in state), bad


def test_tiny_aimv2_oracle_is_the_reference():
    """The float64 gradient oracle (torch float64) on tiny_aimv2: its loss is the float64 reference's, its gradients
    agree with the reference's finite differences, and every parameter (the patch norm too) gets one."""
    from shared.backend import get_backend
    from shared.testing import case
    from shared.training import grad as G

    cfg, state, x = case("tiny_aimv2")
    y = np.random.default_rng(3).integers(0, cfg.num_classes, x.shape[0])
    loss64, g64 = get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, 0.1, dtype="float64")
    ref = G.reference_loss(cfg, state, x, y, 0.1)
    assert abs(loss64 - ref) <= G.ORACLE_LOSS_REL * max(1.0, abs(ref)), (loss64, ref)
    bad = [r for r in G.finite_difference_check(cfg, state, x, y, 0.1, g64, n_coords=6) if not r["passed"]]
    assert not bad and all(np.any(g != 0) for g in g64.values()), bad


def test_tiny_aimv2_in_onnx_runtime():
    """The ONNX graph (patch norm, bias-free linears) in ONNX Runtime: every stage within the float32 bound."""
    import onnxruntime as ort

    from shared.deploy.onnx_graph import build_graph
    from shared.testing import assert_conforms, case

    cfg, state, x = case("tiny_aimv2")
    sess = ort.InferenceSession(build_graph(cfg, state, stages=True).SerializeToString())
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    v = assert_conforms("tiny_aimv2", "float32", outs)
    assert "patch_norm" in outs
    print(f"onnxruntime float32: {v.summary()}")
