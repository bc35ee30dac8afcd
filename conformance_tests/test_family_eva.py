"""timm's `Eva` class (EVA, EVA02, DINOv3, Perception Encoder, RoPE-ViT, Sapiens2) against timm itself.

Oracles: timm's own rotary modules (RotaryEmbeddingDinoV3, RotaryEmbeddingMixed: float32 tables, compared in float32
ulps with ours rounded to float32), and timm's own Eva models, tiny and random (every parameter perturbed: timm
zero-initialises biases), whose float32 output the float64 reference of the imported file meets within the float32
bound (shared/tolerances.py); the export loads strictly into timm's Eva built from `eva_model_kwargs` and gives the
same output. The Eva presets are timm's architectures of the same name, key by key (meta device). Architectures the
canonical model cannot run are refused by name.
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from shared import reference
from shared.config import ViTConfig
from shared.errors import ConfigError
from shared.convert.timm import eva_key_map, eva_model_kwargs, export_timm, import_timm
from shared.convert.timm_resolve import resolve_timm_architecture
from shared.errors import ConversionError
from shared.init import random_images
from shared.posemb import rope_table_dinov3, rope_table_mixed
from shared.presets import EVA_PRESETS, get_preset
from shared.tolerances import fp32_bound, rel_l2
from shared.weights import expected_shapes

TINY = dict(depth=2, embed_dim=64, num_heads=4, num_classes=7)


# ------------------------------------------------------------------------------ rotary tables vs timm's modules
@pytest.mark.parametrize("grid,hd,temperature,indexing,offset,half", [
    ((4, 6), 16, 100.0, "ij", 0.0, True), ((5, 3), 8, 100.0, "xy", 0.5, False), ((2, 7), 32, 1000.0, "ij", 1.0, True)])
def test_dinov3_rope_table_is_timms(grid, hd, temperature, indexing, offset, half):
    """shared.posemb.rope_table_dinov3 (float64) = timm's RotaryEmbeddingDinoV3.get_embed, which computes its
    coordinates, periods and angles (up to 2 pi) in float32: they agree to that rounding, 2 pi * 2^-23 (measured
    up to 3.5e-7); a layout, sign, offset or normalisation error would be O(0.1)."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3

    rope = RotaryEmbeddingDinoV3(hd, temperature=temperature, grid_offset=offset, grid_indexing=indexing,
                                 rotate_half=half)
    want = rope.get_embed(list(grid)).numpy()
    got = rope_table_dinov3(grid, hd, temperature=temperature, indexing=indexing, offset=offset, rotate_half=half)
    assert got.shape == want.shape == (grid[0] * grid[1], 2 * hd)
    assert np.abs(got - want).max() <= 2 * np.pi * 2.0 ** -23, np.abs(got - want).max()


@pytest.mark.parametrize("indexing", ["xy", "ij"])
def test_mixed_rope_tables_are_timms(indexing):
    """shared.posemb.rope_table_mixed (float64, from the learned frequencies) = timm's RotaryEmbeddingMixed.get_embed,
    which forms the angles t_x f_x + t_y f_y (up to ~8 here) in float32: they agree to that rounding, 8 * 2^-23."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingMixed

    torch.manual_seed(0)
    rope = RotaryEmbeddingMixed(dim=32, depth=3, num_heads=2, temperature=10.0, grid_indexing=indexing)
    grid = (3, 5)
    want = rope.get_embed(list(grid)).detach().numpy()  # (depth, heads, N, 2 hd)
    got = rope_table_mixed(rope.freqs.detach().double().numpy(), grid, indexing)
    assert got.shape == want.shape == (3, 2, 15, 32)
    assert np.abs(got - want).max() <= 8 * 2.0 ** -23, np.abs(got - want).max()


# ------------------------------------------------------------------------------ timm's Eva models, imported and back
CASES = {  # arch: the extra kwargs of the tiny model (what each case adds)
    "eva02_small_patch14_224": dict(img_size=56),  # cat rope rescaled to a reference grid, packed SwiGLU, q/v biases
    "eva02_base_patch16_clip_224": dict(img_size=64),  # separate q/k/v, sub-LN in attention and unpacked SwiGLU
    "vit_small_plus_patch16_dinov3_qkvb": dict(img_size=64),  # dinov3 rope, rotate-half, registers, LayerScale
    "vit_base_patch16_rope_mixed_ape_224": dict(img_size=64),  # learned mixed rope + an absolute table (no_embed_class)
    "vit_pe_spatial_base_patch16_512": dict(img_size=64),  # cat rope 'xy' with grid offset 1, norm_pre, no patch bias
    "vit_base_patch16_sapiens2": dict(img_size=(64, 48), num_kv_heads=4),  # RMSNorm, qk-norm, attention-only LS
    # grouped-query attention (timm's Sapiens2 keeps every head at both ends): block 0 four kv heads, block 1 two
    "vit_large_patch16_sapiens2": dict(img_size=(64, 48), num_kv_heads=(4, 2)),
    "vit_huge_patch16_sapiens2": dict(img_size=(64, 48), num_kv_heads=(1, 2)),  # one kv head for all four q heads
}


def _tiny_eva(arch: str):
    torch.manual_seed(len(arch))
    m = timm.create_model(arch, pretrained=False, **TINY, **CASES[arch]).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


#: the CI-sized set runs three (every rope form, the unpacked SwiGLU and sub-LNs); the others are slow-marked
CI_CASES = ("eva02_base_patch16_clip_224", "vit_small_plus_patch16_dinov3_qkvb", "vit_base_patch16_rope_mixed_ape_224",
            "vit_large_patch16_sapiens2")


@pytest.mark.parametrize("arch", [a if a in CI_CASES else pytest.param(a, marks=pytest.mark.slow) for a in CASES])
def test_timm_eva_imports_and_exports(arch):
    """timm's Eva (config.json's architecture and model_args name it; timm's meta-device model states the rest) ->
    canonical -> the float64 reference meets timm's float32 output at least 10x under the float32 bound; the export
    loads strictly into timm's Eva (eva_model_kwargs) and reproduces the output."""
    from timm.models.eva import Eva

    m = _tiny_eva(arch)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in CASES[arch].items()}  # as config.json holds them
    cfg, state = import_timm(sd, timm_config={"architecture": arch, "model_args": {**TINY, **args}})
    assert cfg.rope == resolve_timm_architecture(arch, {**TINY, **args}).facts["eva_config"]["rope"]
    x = random_images(cfg, 2, seed=3)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).double().numpy()
    ref = reference.forward(cfg, state, x)["logits"]
    bound = fp32_bound(cfg, "logits")
    print(f"{arch}: logits rel L2 {rel_l2(want, ref):.2e} (float32 bound {bound:.1e})")
    assert rel_l2(want, ref) < bound / 10, (rel_l2(want, ref), bound)
    kv = CASES[arch].get("num_kv_heads")
    assert cfg.kv_heads == (tuple(kv) if isinstance(kv, tuple) else (cfg.num_heads,) * cfg.depth)
    back = export_timm(cfg, state)
    assert sorted(back) == sorted(sd)
    assert all(np.array_equal(back[k], sd[k]) for k in sd if not k.endswith("k_bias"))
    m2 = Eva(**eva_model_kwargs(cfg)).eval()
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(m2(torch.from_numpy(x)).numpy(), want.astype(np.float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch,args,why", [
    ("vit_base_patch16_rope_reg1_gap_256", {"rope_type": "mrope"}, "has RotaryEmbeddingMRope rotary positions"),
])
def test_eva_architectures_the_canonical_model_cannot_run_are_refused_by_name(arch, args, why):
    """Every registered Eva ports now (the post-norm, GQA and prefix-pool ones once here included); an Eva built with
    an option the canonical model lacks (multimodal RoPE) is still refused, naming the part."""
    with pytest.raises(ConversionError, match=why) as e:
        resolve_timm_architecture(arch, {"depth": 1, **args})
    assert arch in str(e.value)


# ------------------------------------------------------------------------------ the Eva presets are timm's
#: one preset per rope form in the CI-sized set (the small ones); the others are slow-marked
CI_PRESETS = ("eva02_tiny_patch14_224", "vit_small_patch16_dinov3", "vit_base_patch16_rope_mixed_224")


@pytest.mark.parametrize("name", [n if n in CI_PRESETS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in EVA_PRESETS])
def test_eva_preset_is_timms_architecture(name):
    """Each Eva preset: timm's meta-device model of that name holds exactly the preset's keys and shapes through the
    Eva key map, and every fact timm's built modules state equals the preset's field."""
    cfg = get_preset(name)
    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False)
    theirs = {k: tuple(v.shape) for k, v in m.state_dict().items() if k != "rope.freqs" or cfg.rope == "mixed"}
    shapes = expected_shapes(cfg)
    mine = {}
    for e in eva_key_map(cfg):
        if len(e.src) == 1 and len(e.dst) == 1:
            mine[e.src[0]] = shapes[e.dst[0]]
        else:  # q_bias, v_bias -> qkv.bias (3W,)
            mine.update({k: (shapes[e.dst[0]][0] // 3,) for k in e.src})
    assert mine == theirs
    facts = ViTConfig(**resolve_timm_architecture(name, {}).facts["eva_config"])
    assert facts.replace(notes="") == cfg.replace(notes="")


# ------------------------------------------------------------------------------ grouped-query attention (Sapiens2)
@pytest.mark.ci_backends("torch")  # Keras and MindSpore (~15 s of compiles) in the slow set
def test_grouped_query_attention_on_every_primary_backend(primary_backend):
    """tiny_sapiens2_gqa (block 0 every head, block 1 two k/v heads for four q heads; timm's layout is proven by
    test_timm_eva_imports_and_exports): each primary backend's stages within the float32 bound of the float64
    reference and within the low-precision bound at bfloat16 / float16; its loss gradients within the gradient
    bound of the float64 oracle (itself checked against finite differences of the reference), and one AdamW step
    within the step bounds (shared.training.grad)."""
    from shared.testing import assert_backend_conforms, case
    from shared.training import grad as G

    be = primary_backend
    cfg, state, x = case("tiny_sapiens2_gqa")
    assert_backend_conforms(be, cfg.name)
    y = np.random.default_rng(3).integers(0, cfg.num_classes, x.shape[0])
    _, grads = be.loss_and_grads(cfg, state, x, y, 0.1)
    g64 = _gqa_oracle(cfg, state, x, y)
    bound = G.grad_bound(cfg)
    errs = G.grad_errors(g64, grads)
    worst = max(errs, key=errs.get)
    print(f"{be.name} gradients: worst {worst} {errs[worst]:.2e} (bound {bound:.1e})")
    assert set(grads) == set(g64) and errs[worst] <= bound
    hp = G.STEP_HPARAMS["adamw"]
    new = be.optimizer_step(cfg, state, x, y, "adamw", lr=hp["lr"], weight_decay=hp["weight_decay"],
                            label_smoothing=0.1, betas=G.ADAM_BETAS, eps=G.ADAM_EPS)
    rows = G.step_errors("adamw", cfg, state, new, grads, g64)
    assert not {k: r for k, r in rows.items() if not (r["opt_err"] <= r["opt_bound"] and r["e2e_err"] <= r["e2e_bound"])}


_GQA_ORACLE: dict = {}


def _gqa_oracle(cfg, state, x, y):
    """The float64 oracle's gradients (torch float64), checked once against central finite differences of the float64
    reference at random coordinates, the k_proj / v_proj of the grouped block among them."""
    from shared.backend import get_backend
    from shared.training import grad as G

    if not _GQA_ORACLE:
        loss64, g64 = get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, 0.1, dtype="float64")
        ref = G.reference_loss(cfg, state, x, y, 0.1)
        assert abs(loss64 - ref) <= G.ORACLE_LOSS_REL * max(1.0, abs(ref)), (loss64, ref)
        keys = ["blocks.1.attn.k_proj.weight", "blocks.1.attn.v_proj.weight", "blocks.1.attn.k_norm.weight"]
        rows = G.finite_difference_check(cfg, state, x, y, 0.1, g64, n_coords=6, keys=keys)
        assert rows and all(r["passed"] for r in rows), rows
        _GQA_ORACLE["g"] = g64
    return _GQA_ORACLE["g"]


def test_grouped_query_attention_config_and_writers():
    """num_kv_heads is normalised (a list of equal entries is an int, every head is None), refused where no layout
    has it, and each writer either expresses it (ONNX: against the reference) or refuses it by name (.keras)."""
    from shared.deploy.onnx_graph import export_problems
    from shared.keras_file import file_problems

    base = get_preset("tiny_sapiens2_gqa")
    assert base.replace(num_kv_heads=[2, 2]).num_kv_heads == 2 and base.replace(num_kv_heads=4).num_kv_heads is None
    assert ViTConfig.from_json(base.to_json()) == base and base.kv_heads == (4, 2)
    assert base.num_parameters == sum(int(np.prod(s)) for s in expected_shapes(base).values())
    assert expected_shapes(base)["blocks.1.attn.k_proj.weight"] == (16, 32)
    for bad, why in ((dict(num_kv_heads=3), "must divide num_heads"), (dict(num_kv_heads=[4]), "lists 1 blocks"),
                     (dict(qkv_fused=True), "needs qkv_fused=False"), (dict(num_kv_heads="2"), "num_kv_heads")):
        with pytest.raises(ConfigError, match=why):
            base.replace(**bad)
    assert not export_problems(base)
    assert any("num_kv_heads" in p for p in file_problems(base))
