"""Hugging Face DINOv3 ViT (`dinov3_vit`, shared.convert.hf_dinov3) against transformers itself, and against timm's
DINOv3 built with the same weights (random init, every parameter shaken, tiny; no download).

  * transformers' rotary table (DINOv3ViTRopePositionEmbedding: cos, sin) is shared.posemb.rope_table_dinov3's on a
    non-square grid, to float32 rounding;
  * a DINOv3ViTModel saved by transformers, converted by `vit-suite convert` (proven against DINOv3ViTModel by
    default: its `against` row passes), has a float64 reference within the float32 bound of transformers' output,
    and timm's own vit_small_plus_patch16_dinov3_qkvb (global_pool='token', as upstream DINOv3) loads the same
    weights strictly through export_timm and gives that output too (a cross-check of the mapping by a third
    implementation);
  * canonical DINOv3 configs written back (save_hf_dir) load into transformers with every key found and compute
    the reference's function, and read back into the same config and tensors;
  * what the canonical model cannot run is refused by name, both ways.
(test_family_hf.py::test_every_accepted_class builds DINOv3ViTModel and DINOv3ViTBackbone too.)
"""
from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from shared import reference  # noqa: E402
from shared import weights as W  # noqa: E402
from shared.cli import main  # noqa: E402
from shared.convert.hf import export_problems, hf_model_type, import_hf, load_hf_dir, save_hf_dir  # noqa: E402
from shared.convert.hf_dinov3 import _DEFAULTS  # noqa: E402
from shared.convert.timm import export_timm  # noqa: E402
from shared.errors import ConversionError, ConversionWarning, MismatchError  # noqa: E402
from shared.init import init_weights, random_images  # noqa: E402
from shared.posemb import rope_table_dinov3  # noqa: E402
from shared.presets import get_preset  # noqa: E402
from shared.tolerances import fp32_bound, rel_l2  # noqa: E402
from shared.weights import read_tensors  # noqa: E402

torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
SIZE = (32, 24)  # 4x3 patches of 8: a non-square grid, so the rotary rows and columns cannot be swapped unseen
#: timm's DINOv3 S+/16 (qkvb: q and v biases; SwiGLU; 4 registers), tiny
TIMM_ARCH, TIMM_KW = "vit_small_plus_patch16_dinov3_qkvb", dict(patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                                                   img_size=SIZE, global_pool="token", num_classes=0)


def _shake(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    return _shake(timm.create_model(TIMM_ARCH, pretrained=False, **TIMM_KW), 1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, timm_model):
    """transformers' DINOv3ViTModel of timm_model's sizes (its SwiGLU width read from timm), saved as its users
    save it."""
    hidden = timm_model.blocks[0].mlp.fc1_g.out_features
    conf = transformers.DINOv3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=hidden, image_size=list(SIZE), patch_size=8,
                                        num_register_tokens=4, use_gated_mlp=True, hidden_act="silu",
                                        layerscale_value=1e-5, rope_theta=100.0)
    torch.manual_seed(0)
    model = _shake(transformers.DINOv3ViTModel(conf), 2)
    d = tmp_path_factory.mktemp("dinov3") / "hf"
    model.save_pretrained(d)
    return model, d


def _hf(model, x):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x)).pooler_output.double().numpy()


def _within(cfg, got, want, what):
    err, bound = rel_l2(np.asarray(got, np.float64), want), fp32_bound(cfg, "logits")
    assert err <= bound / 10, f"{what}: rel L2 {err:.3e}, float32 bound {bound:.3e} (10x under it expected)"
    print(f"{what}: rel L2 {err:.2e} (bound {bound:.2e})")


def test_rope_table_is_transformers():
    """DINOv3ViTRopePositionEmbedding's (cos, sin), each (N, head_dim) in float32 = shared.posemb.rope_table_dinov3
    (rope_indexing 'ij', offset 0, rotate_half) to float32 rounding of angles up to 2 pi; swapped axes, a missing
    centring or an interleaved layout would be O(0.1)."""
    from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTRopePositionEmbedding

    hd, grid = 16, (5, 3)
    conf = transformers.DINOv3ViTConfig(hidden_size=2 * hd, num_attention_heads=2, patch_size=8, rope_theta=100.0)
    rope = DINOv3ViTRopePositionEmbedding(conf).eval()
    cos, sin = rope(torch.zeros(1, 3, 8 * grid[0], 8 * grid[1]))
    got = rope_table_dinov3(grid, hd, temperature=100.0, indexing="ij", offset=0.0, rotate_half=True)
    want = np.concatenate([sin.numpy(), cos.numpy()], axis=1)
    assert got.shape == want.shape == (grid[0] * grid[1], 2 * hd)
    assert np.abs(got - want).max() <= 2 * np.pi * 2.0 ** -23, np.abs(got - want).max()


def test_convert_is_proven_and_is_timms_dinov3(saved, timm_model, tmp_path, capsys):
    """`vit-suite convert DIR` proves itself against DINOv3ViTModel (its `against` row passes); the file's float64
    reference meets transformers' output 10x under the float32 bound (also imported for another image size), and
    timm's own DINOv3 loads its weights strictly (export_timm) and computes the same features."""
    model, d = saved
    out = tmp_path / "c.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)  # mask_token, pos_embed_rescale: said, tested below
        assert main(["convert", str(d), str(out)]) == 0
    said = capsys.readouterr().out
    assert "against the source (transformers" in said and ": pass" in said, said
    cfg, state = W.load(out)
    assert (cfg.rope, cfg.rope_temperature, cfg.rope_rotate_half, cfg.reg_tokens, cfg.swiglu, cfg.k_bias,
            cfg.pool, cfg.pos_embed) == ("dinov3", 100.0, True, 4, True, False, "token", "none")
    x = random_images(cfg, 2, seed=3)
    theirs = _hf(model, x)
    _within(cfg, theirs, reference.forward(cfg, state, x)["logits"], "DINOv3ViTModel -> canonical")
    timm_model.load_state_dict({k: torch.from_numpy(v) for k, v in export_timm(cfg, state).items()}, strict=True)
    with torch.no_grad():
        timms = timm_model(torch.from_numpy(x)).double().numpy()
    _within(cfg, timms, theirs, f"timm {TIMM_ARCH} with the HF weights vs DINOv3ViTModel")
    with warnings.catch_warnings():  # at another size: the rotary table at that grid, as transformers computes it
        warnings.simplefilter("ignore", ConversionWarning)
        big, state = load_hf_dir(d, image_size=(40, 56))
    x = random_images(big, 2, seed=4)
    _within(big, _hf(model, x), reference.forward(big, state, x)["logits"], "DINOv3ViTModel at 40x56")


def test_train_time_settings_are_said_and_dropped(saved):
    """pos_embed_rescale (HF's default 2.0), shift, jitter: transformers reads them in training mode only; the import
    says so and drops them (the eval-mode function is unchanged); an HF drop_path_rate is not the canonical schedule."""
    _, d = saved
    tensors, _ = read_tensors(d / "model.safetensors")
    conf = dict(transformers.DINOv3ViTConfig.from_pretrained(d).to_dict(), pos_embed_shift=0.1, drop_path_rate=0.2)
    with pytest.warns(ConversionWarning) as said:
        cfg, _ = import_hf(tensors, conf, "d3")
    text = " ".join(str(w.message) for w in said)
    for key in ("mask_token", "pos_embed_rescale=2.0", "pos_embed_shift=0.1", "drop_path_rate=0.2"):
        assert key in text, (key, text)
    assert cfg.drop_path == 0.0


def test_module_names_read_as_the_file_names(saved):
    """transformers >= 5's module names (model.layer.i...: the model object's state_dict) import to the same state
    as the file; registers the config does not state are reported, not dropped."""
    model, d = saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        cfg, state = load_hf_dir(d)
        conf = model.config.to_dict()
        modules = {k: v.numpy() for k, v in model.state_dict().items()}
        assert any(k.startswith("model.layer.") for k in modules)
        cfg2, state2 = import_hf(modules, conf, "modules")
        assert cfg2 == cfg and sorted(state2) == sorted(state)
        assert all(np.array_equal(state2[k], state[k]) for k in state)
        with pytest.raises(MismatchError, match="embeddings.register_tokens"):
            import_hf(modules, {**conf, "num_register_tokens": 0}, "modules")


@pytest.mark.parametrize("changes,why", [
    (dict(hidden_act="gelu"), "use_gated_mlp with hidden_act 'gelu'"),
    (dict(use_gated_mlp=False), "hidden_act 'silu' is not a GELU form"),
    (dict(value_bias=False), "query_bias=True, key_bias=False, value_bias=False"),
    (dict(mlp_bias=False), "mlp_bias=false"),
    (dict(proj_bias=False), "proj_bias=false"),
    (dict(architectures=["DINOv3ViTForImageClassification"]), "not a dinov3_vit class"),
])
def test_import_refuses_by_name(saved, changes, why):
    _, d = saved
    tensors, _ = read_tensors(d / "model.safetensors")
    conf = {**transformers.DINOv3ViTConfig.from_pretrained(d).to_dict(), **changes}
    with warnings.catch_warnings(), pytest.raises(ConversionError, match=why):
        warnings.simplefilter("ignore", ConversionWarning)
        import_hf(tensors, conf, "d3")


def test_import_refuses_a_head_dim_transformers_cannot_run():
    """head_dim 196: HF's arange(0, 1, 4 / 196) has 50 values, not 49 (transformers' model fails on it): refused by
    name before anything is written (the weights: 392 wide, 2 heads)."""
    conf = transformers.DINOv3ViTConfig(hidden_size=392, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=8, image_size=8, patch_size=8)
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in transformers.DINOv3ViTModel(conf).state_dict().items()}
    tensors = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
    with warnings.catch_warnings(), pytest.raises(ConversionError, match="head_dim 196: .* builds 50 frequencies"):
        warnings.simplefilter("ignore", ConversionWarning)
        import_hf(tensors, conf.to_dict(), "d3")


_TINY = dict(image_size=SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=48, pool="token")


@pytest.mark.parametrize("name,changes", [
    # timm's DINOv3 S/16 (no qkv bias, GELU MLP, 4 registers), CLS pooling as upstream
    ("vit_small_patch16_dinov3", {}),
    # S+/16 qkvb with the SwiGLU packed and q/k/v separate: HF's gate_proj / up_proj and q/k/v_proj, split on export
    ("vit_small_plus_patch16_dinov3", dict(qkv_bias=True, k_bias=False, swiglu_unpacked=False, qkv_fused=False,
                                           reg_tokens=0, init_values=0.3)),
])
def test_export_loads_in_transformers_and_reads_back(name, changes, tmp_path):
    """A canonical DINOv3 -> save_hf_dir -> DINOv3ViTModel.from_pretrained (every key found, none left) computes the
    reference's function within the float32 bound; the directory reads back into the same function (the same
    tensors where the layout is HF's own)."""
    cfg = get_preset(name).replace(**_TINY, **changes)
    assert hf_model_type(cfg) == "dinov3_vit"
    state = init_weights(cfg, seed=4)
    save_hf_dir(tmp_path / "hf", cfg, state)
    model, info = transformers.DINOv3ViTModel.from_pretrained(tmp_path / "hf", local_files_only=True,
                                                             output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = random_images(cfg, 2, seed=5)
    ref = reference.forward(cfg, state, x)["logits"]
    _within(cfg, _hf(model, x), ref, f"{name} -> DINOv3ViTModel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        cfg2, state2 = load_hf_dir(tmp_path / "hf")
    if not changes:  # HF's own layout: the same config and bit-identical tensors
        fields = ("qkv_bias", "k_bias", "swiglu", "reg_tokens", "init_values", "rope", "rope_temperature",
                  "layer_norm_eps", "image_size", "gelu")
        assert {f: getattr(cfg2, f) for f in fields} == {f: getattr(cfg, f) for f in fields}
        assert sorted(state2) == sorted(state) and all(np.array_equal(state2[k], state[k]) for k in state)
    else:  # fused and unpacked on import: the same function
        assert rel_l2(reference.forward(cfg2, state2, x)["logits"], ref) < 1e-12


@pytest.mark.parametrize("changes,why", [
    (dict(pool="mean"), "features are the final-normed class token"),  # timm's vit_*_dinov3 default (avg)
    (dict(num_classes=5), "no classifier class"),
    (dict(rope_indexing="xy"), "DINOv3's rotary positions only"),
    (dict(init_values=None), "always has LayerScale"),
    (dict(norm_kind="rms"), "RMSNorm"),
    (dict(ls_attn_only=True), "LayerScale on the attention branch only"),
    (dict(embed_dim=392, num_heads=2, mlp_dim=8), "cannot run it"),  # head_dim 196: HF's arange gives 50 frequencies
])
def test_export_refuses_by_name(changes, why, tmp_path):
    cfg = get_preset("vit_small_patch16_dinov3").replace(**_TINY).replace(**changes)
    assert any(why in p for p in export_problems(cfg, "dinov3_vit")), export_problems(cfg, "dinov3_vit")
    with pytest.raises(ConversionError, match=why):
        save_hf_dir(tmp_path / "no", cfg, init_weights(cfg), model_type="dinov3_vit")
    assert not (tmp_path / "no").exists()


def test_config_defaults_are_transformers_own():
    theirs = transformers.DINOv3ViTConfig().to_dict()
    wrong = {k: (v, theirs.get(k)) for k, v in _DEFAULTS.items() if theirs.get(k) != v}
    assert not wrong, wrong
