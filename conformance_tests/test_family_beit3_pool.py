"""timm families that were refused, against timm: BEiT3 (`beit3_*`: timm's VisionTransformer with scale_attn_norm /
scale_mlp_norm, the sub-LNs) and the pools over the prefix tokens too (`test_vit3`: pool_include_prefix; the
Perception Encoder core models `vit_pe_core_*`: timm's Eva hands its attention pool every token, with its own heads).

Oracles: timm's own models, tiny and random (every parameter perturbed: timm zero-initialises biases), whose float32
output the float64 reference of the imported file meets at least 10x under the float32 bound (shared/tolerances.py),
and misses by far with the option off; the export back loads strictly into timm and reproduces its output bitwise.
The primary backends run the tiny presets (tiny_beit3, tiny_prefix_pool) within the float32 bound of the reference,
with gradients and one SGD step within the bounds of the float64 oracle (shared/training/grad.py). The `beit3_*`
presets are timm's architectures key by key (test_family_presets.py, meta device). Gated attention, a different
thing, stays refused by name.
"""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models._hub import save_for_hf

from shared import reference, testing
from shared import weights as W
from shared.cli import main
from shared.convert.timm import export_timm, import_timm, timm_architecture, timm_model_kwargs
from shared.errors import EXIT_OK, ConversionError
from shared.init import init_weights, random_images
from shared.presets import get_preset
from shared.tolerances import fp32_bound, rel_l2
from shared.training import grad as G

ARCH = "beit3_base_patch16_224"
SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5, img_size=(32, 48))


@pytest.fixture(scope="module")
def beit3(tmp_path_factory):
    """timm's beit3 (tiny, every parameter perturbed) saved as timm's hub directory, its output on 2 images."""
    torch.manual_seed(0)
    m = timm.create_model(ARCH, pretrained=False, **SMALL).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 48)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    hub = tmp_path_factory.mktemp("beit3") / "hub"
    save_for_hf(m, str(hub), safe_serialization=True)
    return dict(model=m, x=x, want=want, hub=hub)


def test_timm_beit3_imports_verifies_and_exports_back(beit3, tmp_path):
    """timm's hub directory converts with no flag (config.json names the architecture; the keys show the sub-LNs);
    the float64 reference of the result meets timm's output 10x under the float32 bound; `--to timm` writes a hub
    directory timm loads strictly (same architecture, every tensor bitwise, the same output), and
    timm_architecture + timm_model_kwargs build timm's VisionTransformer that loads the state dict."""
    dst = tmp_path / "c.safetensors"
    assert main(["convert", str(beit3["hub"]), str(dst)]) == EXIT_OK
    cfg, state = W.load(dst)
    assert (cfg.attn_inner_norm, cfg.mlp_inner_norm, cfg.pool, cfg.fc_norm, cfg.layer_norm_eps) == \
        (True, True, "mean", True, 1e-5)
    err, bound = rel_l2(beit3["want"], reference.forward(cfg, state, beit3["x"])["logits"]), fp32_bound(cfg, "logits")
    print(f"beit3 timm vs float64 reference: rel L2 {err:.2e} (bound {bound:.1e})")
    assert err < bound / 10, (err, bound)
    back = tmp_path / "back"
    assert main(["convert", str(dst), str(back), "--to", "timm"]) == EXIT_OK
    assert json.loads((back / "config.json").read_text())["architecture"] == ARCH
    hub = timm.create_model(f"local-dir:{back}", pretrained=True).eval()
    original = beit3["model"].state_dict()
    assert sorted(hub.state_dict()) == sorted(original)
    assert all(torch.equal(hub.state_dict()[k], original[k]) for k in original)
    with torch.no_grad():
        np.testing.assert_array_equal(hub(torch.from_numpy(beit3["x"])).numpy(), beit3["want"])
    built = timm.create_model(timm_architecture(cfg), pretrained=False, **timm_model_kwargs(cfg)).eval()
    built.load_state_dict(load_file(str(back / "model.safetensors")), strict=True)
    assert type(built).__name__ == "VisionTransformer"
    with torch.no_grad():
        np.testing.assert_array_equal(built(torch.from_numpy(beit3["x"])).numpy(), beit3["want"])


@pytest.mark.ci_backends("torch")
@pytest.mark.parametrize("preset", ["tiny_beit3", "tiny_prefix_pool"])
def test_tiny_option_presets_on_the_primary_backends(primary_backend, preset):
    """The tiny presets of the options: every named stage within the float32 bound of the float64 reference, and in
    bfloat16 (MindSpore: float16) within the bound around the reference's emulation (shared/tolerances.py); every
    gradient (the sub-LNs' and the attention pool's among them) within the gradient bounds of the float64 oracle;
    one SGD step within the step bounds. The CI-sized set runs torch (Keras and MindSpore, minutes of compiles under
    load, are slow-marked; the ONNX graph of tiny_prefix_pool runs in test_deploy.py)."""
    cfg, state, x = testing.case(preset)
    low = "bfloat16" if "bfloat16" in primary_backend.dtypes else "float16"  # MindSpore's CPU: float16
    for dtype in ("float32", low):
        out = primary_backend.forward(primary_backend.build(cfg, state, dtype=dtype), x)
        v = testing.assert_conforms(preset, dtype, out)
        s = next(s for s in v.stages if s.stage == "logits")
        print(f"{preset} {primary_backend.name} {dtype}: logits rel L2 {s.rel_l2:.2e} (bound {s.bound:.1e})")
    cfg, state, x, y = _case(preset)
    loss64, g64 = _oracle(preset)
    loss, grads = primary_backend.loss_and_grads(cfg, state, x, y, SMOOTHING)
    assert set(grads) == set(g64)
    assert abs(loss - loss64) / abs(loss64) <= G.loss_bound(cfg), (loss, loss64)
    errs = G.grad_errors(g64, grads)
    print(f"{preset} {primary_backend.name}: worst gradient error {max(errs.values()):.2e} "
          f"(bound {G.grad_bound(cfg):.1e})")
    assert all(e <= G.grad_bound(cfg) for e in errs.values()), errs
    hp = G.STEP_HPARAMS["sgd"]
    new = primary_backend.optimizer_step(cfg, state, x, y, "sgd", lr=hp["lr"], weight_decay=hp["weight_decay"],
                                         label_smoothing=SMOOTHING)
    rows = G.step_errors("sgd", cfg, state, new, grads, g64)
    assert all(m["opt_err"] <= m["opt_bound"] and m["e2e_err"] <= m["e2e_bound"] for m in rows.values()), rows
    assert all(not np.array_equal(new[k], state[k]) for k in state)


SMOOTHING = 0.1


@lru_cache(maxsize=None)
def _case(preset: str):
    cfg = get_preset(preset)
    return cfg, init_weights(cfg, 0), random_images(cfg, 4, 0), np.random.default_rng(3).integers(0, cfg.num_classes, 4)


@lru_cache(maxsize=None)
def _oracle(preset: str):  # one float64 oracle run per preset, shared by the backends
    from shared.backend import get_backend

    cfg, state, x, y = _case(preset)
    return get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, SMOOTHING, dtype="float64")


def test_gated_attention_stays_refused_by_name():
    """timm's gated attention (a sigmoid gate before attn.proj) is no sub-LN: refused by name."""
    from shared.convert.timm_resolve import _read

    with torch.device("meta"):  # timm's Attention(gated=True): its gate Linear (no registered architecture sets it)
        m = timm.create_model("vit_base_patch16_224", pretrained=False, depth=1)
        m.blocks[0].attn.gate = torch.nn.Linear(768, 768)
    with pytest.raises(ConversionError, match="has gated attention"):
        _read(m, "gated_vit")


# ------------------------------------------------------------------ pools over the prefix tokens too
#: (arch, the tiny model's kwargs): test_vit3 (VisionTransformer: MAP head over the register token too), a GAP ViT with
#: pool_include_prefix (the mean over every token), PE core (timm's Eva: the attention pool with 8 heads over the
#: class token too, cat rope, norm_pre, no patch bias; gigantic: the pool's MLP narrower than the blocks')
POOL_CASES = {
    "test_vit3": dict(depth=2, num_classes=5, img_size=(32, 48)),
    "vit_wee_patch16_reg1_gap_256": dict(depth=2, embed_dim=64, num_classes=5, img_size=(32, 48),
                                         pool_include_prefix=True),
    "vit_pe_core_gigantic_patch14_448": dict(depth=2, embed_dim=96, num_heads=6, num_classes=5, img_size=56),
    "vit_pe_core_tiny_patch16_384": dict(depth=2, embed_dim=64, num_heads=4, num_classes=5, img_size=64),
}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a == "vit_pe_core_tiny_patch16_384"
                                  else a for a in sorted(POOL_CASES)])
def test_pools_over_the_prefix_tokens_import_verify_and_export(arch):
    """timm's model (config.json names it with its model_args; timm's meta-device model states the rest) ->
    canonical with pool_include_prefix (and PE core's pool heads and MLP width) -> the float64 reference meets timm's
    output 10x under the float32 bound, and misses it by far with the prefix and the heads off; the export loads
    strictly into the model timm_architecture + timm_model_kwargs build (timm's Eva for PE core) and gives timm's
    output bitwise."""
    kw = POOL_CASES[arch]
    torch.manual_seed(1)
    m = timm.create_model(arch, pretrained=False, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    cfg, state = import_timm(sd, timm_config={"architecture": arch, "model_args": kw})
    assert cfg.pool_include_prefix == (arch != "vit_pe_core_gigantic_patch14_448")  # gigantic has no class token
    assert cfg.pool_heads == (8 if arch.startswith("vit_pe_core") else None)
    assert cfg.pool_mlp_dim == (384 if "gigantic" in arch else None)  # 4 * 96, the blocks' int(96 * 8960 / 1536)
    x = random_images(cfg, 2, seed=3)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    err, bound = rel_l2(want, reference.forward(cfg, state, x)["logits"]), fp32_bound(cfg, "logits")
    off = rel_l2(want, reference.forward(cfg.replace(pool_include_prefix=False, pool_heads=None), state, x)["logits"])
    print(f"{arch}: timm vs float64 reference rel L2 {err:.2e} (bound {bound:.1e}); without the options {off:.2e}")
    assert err < bound / 10 and off > 100 * bound, (err, off, bound)
    back = export_timm(cfg, state)
    assert sorted(back) == sorted(sd)
    built = timm.create_model(timm_architecture(cfg), pretrained=False, **timm_model_kwargs(cfg)).eval()
    built.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    assert type(built).__name__ == type(m).__name__
    with torch.no_grad():
        np.testing.assert_array_equal(built(torch.from_numpy(x)).numpy(), want)


def test_pool_options_without_a_form_are_refused_by_name():
    """A format without the options refuses them by name rather than write a model that pools otherwise: timm's
    VisionTransformer has no attention-pool head count or MLP width of its own, Beit no prefix pool, HF ViT none."""
    from shared.convert.hf import export_problems as hf_problems
    from shared.convert.timm import export_problems

    cfg = get_preset("tiny_prefix_pool")
    assert any("(pool_heads)" in p for p in export_problems(cfg.replace(class_token="learned")))
    assert any("(pool_mlp_dim)" in p for p in export_problems(cfg))
    assert not any("pool_include_prefix" in p for p in export_problems(cfg.replace(pool_heads=None)))
    beit = get_preset("tiny_beit").replace(pool_include_prefix=True)
    assert any("pool_include_prefix" in p for p in export_problems(beit))
    assert any("pool_include_prefix" in p for p in hf_problems(get_preset("tiny_meanpool").replace(
        class_token="learned", pool_include_prefix=True)))


def test_eva_export_bases_set_only_what_they_say():
    """Each Eva export base (timm_architecture of an Eva config that is no timm name) holds exactly the arguments
    _EVA_BASE_SETS says a config's null cannot override (LayerScale: gamma_1; a cat rope reference grid); timm's
    own meta-device model of each."""
    from shared.convert.timm import _EVA_BASE_SETS, _EVA_BASES

    assert {b for bases in _EVA_BASES.values() for b in bases} == set(_EVA_BASE_SETS)
    for base, sets in _EVA_BASE_SETS.items():
        with torch.device("meta"):  # two blocks (sapiens2 states its kv heads per block: all of them)
            m = timm.create_model(base, pretrained=False, **({} if "sapiens2" in base else {"depth": 2}))
        ref = getattr(m.rope, "ref_feat_shape", None) if m.rope is not None else None
        assert {"init_values"} & sets == ({"init_values"} if m.blocks[0].gamma_1 is not None else set()), base
        assert {"ref_feat_shape"} & sets == ({"ref_feat_shape"} if ref is not None else set()), base
