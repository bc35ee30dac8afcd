"""Post-norm blocks (cfg.block_norm='post'): timm's ResPostBlock (vit_base_patch16_rpn_224), ResPostRelPosBlock
(vit_relpos_*_rpn_*) and Eva's EvaBlockPostNorm (eva02_enormous_patch14_clip_224), proven against timm itself (random
init, no download).

  * tiny timm models (depth 2) of each block class, imported under their architecture's name: the float64 reference
    meets timm's own float32 output within the float32 bound, the same weights read as pre-norm blocks do not (the
    keys are the same: the block type comes from the architecture), and the export loads strictly into the timm
    model `timm_architecture` / `timm_model_kwargs` (or Eva's `eva_model_kwargs`) build and gives timm's output back;
  * `vit-suite convert` of a timm hub directory proves itself against timm and writes block_norm into the canonical
    file's metadata;
  * the resolver reads block_norm from the built block class of the full-size architectures (meta device), and the
    presets with timm's names hold it as timm builds it (their keys are checked key by key with the other presets);
  * tiny_rpn on every primary backend (float32, a low precision, gradients against the float64 oracle; torch in the
    CI-sized set, Keras and MindSpore slow-marked), the oracle against finite differences of the reference;
  * formats without post-norm blocks refuse them by name.
Elsewhere: tiny_rpn against the independent float64 forward (test_reference.py), in ONNX Runtime and OpenVINO
(test_deploy.py), as a frameworkless .keras file (test_keras.py, slow), and training in every backend
(test_training.py, slow). The CI-sized part here: about 18 s on 2 cores.
"""
from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402

from shared import reference  # noqa: E402
from shared import weights as W  # noqa: E402
from shared.cli import main  # noqa: E402
from shared.config import ViTConfig  # noqa: E402
from shared.convert.timm import (eva_model_kwargs, export_timm, import_timm, is_eva, timm_architecture,  # noqa: E402
                                 timm_model_kwargs)
from shared.convert.timm_resolve import resolve_timm_architecture  # noqa: E402
from shared.errors import EXIT_OK, ConfigError, ConversionError, ConversionWarning  # noqa: E402
from shared.init import init_weights  # noqa: E402
from shared.presets import get_preset  # noqa: E402
from shared.tolerances import fp32_bound, rel_l2  # noqa: E402

torch.set_num_threads(2)
SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5)
#: case -> (timm architecture, image size: a non-square grid of 2x3 patches)
CASES = {
    "vit_rpn": ("vit_base_patch16_rpn_224", (32, 48)),  # ResPostBlock, no class token, avg pool + fc_norm
    "relpos_rpn": ("vit_relpos_small_patch16_rpn_224", (32, 48)),  # ResPostRelPosBlock, RelPosMlp per block
    "relpos_plus_rpn": ("vit_relpos_base_patch32_plus_rpn_256", (64, 96)),  # with a qkv bias, patch 32
    "eva_post": ("eva02_enormous_patch14_clip_224", (28, 42)),  # EvaBlockPostNorm: q/v biases, class token
}
POST_ARCHS = {a for a, _ in CASES.values()}


@torch.no_grad()
def _timm_model(arch: str, size, seed: int = 0):
    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, img_size=size, **SMALL).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for p in m.parameters():  # timm inits the post norms' weights to 1e-5 and zeroes biases: shake them all
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


@torch.no_grad()
def _run(model, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).double().numpy()


def _images(size) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, 3, *size)).astype(np.float32)


def _check(cfg, got, want, what: str) -> float:
    err, bound = rel_l2(np.asarray(got, np.float64), np.asarray(want, np.float64)), fp32_bound(cfg, "logits")
    print(f"{what}: logits rel L2 {err:.2e} (bound {bound:.1e}, {bound / max(err, 1e-30):.0f}x under)")
    assert err <= bound / 10, f"{what}: logits rel L2 {err:.3e} > a tenth of the float32 bound {bound:.3e}"
    return err


def _import(arch: str, size, m):
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    if arch.startswith("eva"):  # config.json names the Eva and its model_args: timm's built model states the rest
        return sd, *import_timm(sd, timm_config={"architecture": arch, "model_args": {**SMALL, "img_size": size}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)  # the file's sizes win over the preset's
        return sd, *import_timm(sd, preset=arch, image_size=size, num_heads=SMALL["num_heads"])


# ------------------------------------------------------------------- tiny timm models: import, export, proof
@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_timm_post_norm_model_imports_exports_and_timm_builds_it_back(case):
    arch, size = CASES[case]
    m = _timm_model(arch, size)
    x = _images(size)
    sd, cfg, state = _import(arch, size, m)
    assert cfg.block_norm == "post" and cfg.image_size == size and cfg.init_values is None
    want = _run(m, x)
    _check(cfg, reference.forward(cfg, state, x)["logits"], want, f"{case} ({arch}) against timm")
    # the same keys read as pre-norm blocks compute something else: the block type is what makes the answer
    pre = reference.forward(cfg.replace(block_norm="pre"), state, x)["logits"]
    assert rel_l2(pre, want) > 0.1, rel_l2(pre, want)
    back = export_timm(cfg, state)
    assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k]) for k in sd), case
    if is_eva(cfg):
        from timm.models.eva import Eva

        m2 = Eva(**eva_model_kwargs(cfg)).eval()
    else:
        m2 = timm.create_model(timm_architecture(cfg), pretrained=False, **timm_model_kwargs(cfg)).eval()
    assert {type(b).__name__ for b in m2.blocks} == {type(b).__name__ for b in m.blocks}
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    np.testing.assert_allclose(_run(m2, x), want, rtol=0, atol=1e-6)


def test_convert_of_a_timm_hub_directory_proves_itself_and_records_block_norm(tmp_path, capsys):
    """timm's hub directory (config.json names the architecture) -> `vit-suite convert` proves the import against
    timm's own output, and the canonical file's metadata carries block_norm='post'; written back as a timm hub
    directory, timm builds and loads it (its config.json's architecture has ResPostRelPosBlock blocks)."""
    arch, size = CASES["relpos_rpn"]
    m = _timm_model(arch, size)
    save_for_hf(m, str(tmp_path / "hub"), safe_serialization=True, model_args={**SMALL, "img_size": list(size)})
    dst = tmp_path / "c.safetensors"
    assert main(["convert", str(tmp_path / "hub"), str(dst)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "timm" in out and "not verified" not in out, out
    cfg, state = W.load(dst)
    assert cfg.block_norm == "post" and '"block_norm": "post"' in W.read_tensors(dst)[1]["vit_config"]
    x = _images(size)
    _check(cfg, reference.forward(cfg, state, x)["logits"], _run(m, x), f"convert hub {arch}")
    assert main(["convert", str(dst), str(tmp_path / "back"), "--to", "timm"]) == EXIT_OK
    m2 = timm.create_model(f"local-dir:{tmp_path / 'back'}", pretrained=True).eval()
    assert {type(b).__name__ for b in m2.blocks} == {"ResPostRelPosBlock"}
    np.testing.assert_allclose(_run(m2, x), _run(m, x), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------- resolver and presets
@pytest.mark.parametrize("arch", sorted(POST_ARCHS | {"vit_relpos_medium_patch16_rpn_224",
                                                      "vit_relpos_base_patch16_rpn_224"}))
def test_resolver_reads_post_norm_from_the_built_blocks_and_presets_agree(arch):
    """timm's full-size architecture on the meta device: the resolver's block_norm is the built block class's; the
    preset of that name (none for eva02_enormous: 4.35e9 parameters, over shared.limits.MAX_PARAMETERS) says the
    same, with no LayerScale (timm's init_values only set the post norms' initial weights)."""
    r = resolve_timm_architecture(arch, {"depth": 2} if arch.startswith("eva") else {})  # 64 blocks of 1792
    got = r.facts["eva_config"]["block_norm"] if "eva_config" in r.facts else r.facts["block_norm"]
    assert got == "post"
    if arch.startswith("eva"):
        assert r.facts["eva_config"]["init_values"] is None
        return
    cfg = get_preset(arch)
    assert cfg.block_norm == "post" and cfg.init_values is None
    assert cfg.num_parameters == sum(int(np.prod(s)) for s in r.shapes.values())
    assert resolve_timm_architecture("vit_relpos_small_patch16_224", {"depth": 1}).facts["block_norm"] == "pre"


def test_config_refuses_what_no_post_norm_layout_is():
    with pytest.raises(ConfigError, match="block_norm must be one of"):
        ViTConfig(block_norm="sandwich")
    with pytest.raises(ConfigError, match="block_norm='post' with LayerScale"):
        ViTConfig(block_norm="post", init_values=0.1)
    with pytest.raises(ConfigError, match="block_norm='post' with attn_dim"):
        ViTConfig(block_norm="post", attn_dim=96, attn_value_skip=True, num_heads=4, embed_dim=64)


def test_formats_without_post_norm_refuse_it_by_name():
    """HF, torchvision, keras-hub and mindcv have no post-norm block: each export names it rather than write a
    pre-norm model with the same keys; timm refuses what none of its post-norm classes builds (BEiT's layout)."""
    from shared.convert.hf import export_hf
    from shared.convert.kerashub import export_kerashub
    from shared.convert.mindcv import export_mindcv
    from shared.convert.torchvision import export_torchvision

    cfg = get_preset("tiny_rpn")
    state = init_weights(cfg)
    for export in (export_hf, export_torchvision, export_kerashub, export_mindcv):
        with pytest.raises(ConversionError, match="post-norm blocks"):
            export(cfg, state)
    beit = get_preset("tiny_beit").replace(init_values=None, block_norm="post")
    with pytest.raises(ConversionError, match="post-norm blocks with BEiT's layout"):
        export_timm(beit, init_weights(beit))


# ------------------------------------------------------------------------- tiny_rpn on the primary backends
@pytest.mark.ci_backends("torch")  # Keras and MindSpore (~30 s of compiles) in the slow set
def test_tiny_rpn_on_every_primary_backend(primary_backend):
    """tiny_rpn is not in the family matrix (FAMILY_TINY: each preset there costs minutes of compiles): each primary
    backend runs it here, every stage within the float32 bound, at a low precision within the bound of the reference
    run at that precision, and its loss gradients within the gradient bound of the float64 oracle."""
    from shared.backend import get_backend
    from shared.testing import assert_backend_conforms, case
    from shared.training import grad as G

    be = primary_backend
    cfg, state, x = case("tiny_rpn")
    assert_backend_conforms(be, "tiny_rpn")
    y = np.random.default_rng(3).integers(0, cfg.num_classes, x.shape[0])
    _, grads = be.loss_and_grads(cfg, state, x, y, 0.1)
    _, g64 = get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, 0.1, dtype="float64")
    bound = G.GRAD_FACTOR * fp32_bound(cfg, "logits")
    worst = max((rel_l2(grads[k], g64[k]) / bound, k) for k in g64 if np.any(g64[k] != 0))
    print(f"{be.name} gradients: worst {worst[1]} at {worst[0]:.3f} of the bound")
    assert set(grads) == set(g64) and worst[0] <= 1.0, worst
    assert all(np.any(g64[k] != 0) for k in g64 if ".norm" in k), "a post norm gets no gradient"


def test_float64_oracle_gradients_are_the_references_finite_differences():
    """The oracle the backends are held to (torch float64) against central differences of the float64 reference's
    loss (shared.training.grad's step and bounds), at random coordinates and on every post norm's weight: where
    post-norm differs from pre-norm."""
    from shared.backend import get_backend
    from shared.testing import case
    from shared.training import grad as G

    cfg, state, x = case("tiny_rpn")
    y = np.array([1, 3])
    _, g64 = get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, 0.1, dtype="float64")
    rows = G.finite_difference_check(cfg, state, x, y, 0.1, g64, n_coords=4)
    base = {k: np.asarray(v, np.float64).copy() for k, v in state.items()}
    for i in range(cfg.depth):
        for key in (f"blocks.{i}.norm1.weight", f"blocks.{i}.norm2.weight"):
            orig = base[key][5]
            base[key][5] = orig + G.FD_STEP
            lp = G.reference_loss(cfg, base, x, y, 0.1)
            base[key][5] = orig - G.FD_STEP
            lm = G.reference_loss(cfg, base, x, y, 0.1)
            base[key][5] = orig
            fd, g = (lp - lm) / (2 * G.FD_STEP), float(g64[key][5])
            rows.append({"key": key, "fd": fd, "oracle": g, "passed": abs(fd - g) <= G.FD_ABS + G.FD_REL * abs(g)})
    assert all(r["passed"] for r in rows), [r for r in rows if not r["passed"]]
