"""Relative position biases: timm's Beit (BEiT, BEiTv2) and VisionTransformerRelPos (vit_relpos_*, vit_srelpos_*),
proven against timm itself (random init, no download).

  * the derived parts against timm's own functions: the relative index (BEiT's and RelPosBias'), RelPosMlp's log
    coordinates, and the resampling of a learned table to another grid (timm's resize_rel_pos_bias_table);
  * tiny timm models of each form (a table per block, a shared table with an absolute one, RelPosMlp per block and
    shared, a class token, RelPosBias) imported from their state dict: the float64 reference gives timm's own output
    within the float32 bound, and export gives timm's tensors back bit for bit;
  * a table stored for another grid, imported at a new size, is timm's own checkpoint filter's model;
  * `vit-suite convert` of a hub directory and of a state dict proves itself against timm by default;
  * the presets with timm's names hold exactly timm's keys (meta device);
  * the layout the canonical model cannot run (a per-block bias plus a shared one) is refused by name (the
    res-post-norm rpn blocks port: test_family_postnorm.py).
The tiny presets tiny_beit and tiny_relpos run through the conformance matrix (every backend, dtype, gradients,
training) with the other FAMILY_TINY presets. The CI-sized part: about 20 s on 2 cores (its Keras and MindSpore runs
of tiny_relpos are slow-marked).
"""
from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402

from shared import reference  # noqa: E402
from shared import weights as W  # noqa: E402
from shared.cli import main  # noqa: E402
from shared.config import ViTConfig  # noqa: E402
from shared.convert.keymap import Fold  # noqa: E402
from shared.convert.timm import _export_entries, export_timm, import_timm, key_map  # noqa: E402
from shared.errors import EXIT_OK, ConfigError, ConversionError, ConversionWarning  # noqa: E402
from shared.init import init_weights, random_images  # noqa: E402
from shared.posemb import rel_log_coords, rel_pos_index, resize_rel_pos_table  # noqa: E402
from shared.presets import REL_POS_PRESETS, get_preset  # noqa: E402
from shared.tolerances import F32_SAFETY, UNIT_ROUNDOFF, fp32_bound, rel_l2  # noqa: E402

torch.set_num_threads(2)
SIZE = (32, 48)  # 2x3 patches of 16: a non-square grid, so rows and columns cannot be swapped unseen
SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5)
#: case -> (timm architecture, extra create_model arguments: forms the class builds that no registered name does)
CASES = {
    "beit": ("beit_base_patch16_224", {}),
    "beitv2": ("beitv2_base_patch16_224", {}),
    "beit_shared_abs": ("beit_base_patch16_224", dict(use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
                                                      use_abs_pos_emb=True)),
    "relpos_mlp": ("vit_relpos_small_patch16_224", {}),
    "srelpos_shared_mlp": ("vit_srelpos_small_patch16_224", {}),
    "relpos_cls_token": ("vit_relpos_medium_patch16_cls_224", {}),
    "relpos_clsgap": ("vit_relpos_base_patch16_clsgap_224", {}),
    "relpos_bias_table": ("vit_relpos_medium_patch16_cls_224", dict(rel_pos_type="bias")),
}


@torch.no_grad()
def _timm_model(arch: str, size=SIZE, seed: int = 0, **kw):
    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, img_size=size, **{**SMALL, **kw}).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for p in m.parameters():  # timm zeroes the tables and biases: shake every parameter so each one matters
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


@torch.no_grad()
def _run(model, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).numpy()


def _images(size=SIZE) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, 3, *size)).astype(np.float32)


def _check(cfg, got, want, what: str, factor: float = 1.0) -> float:
    err, bound = rel_l2(np.asarray(got, np.float64), np.asarray(want, np.float64)), factor * fp32_bound(cfg, "logits")
    print(f"{what}: logits rel L2 {err:.2e} (bound {bound:.1e}, {bound / max(err, 1e-30):.0f}x under)")
    assert err <= bound, f"{what}: logits rel L2 {err:.3e} > float32 bound {bound:.3e}"
    return err


# ------------------------------------------------------------------------------ the derived parts, against timm
@pytest.mark.parametrize("grid", [(3, 4), (4, 3), (1, 5)])
def test_index_and_log_coords_are_timms(grid):
    from timm.layers.pos_embed_rel import gen_relative_log_coords, gen_relative_position_index
    from timm.models.beit import gen_relative_position_index as beit_index

    np.testing.assert_array_equal(rel_pos_index(grid, 1), beit_index(grid).numpy())
    for cls in (False, True):
        np.testing.assert_array_equal(rel_pos_index(grid, int(cls)),
                                      gen_relative_position_index(grid, class_token=cls).numpy())
    want = gen_relative_log_coords(grid, mode="cr").reshape(-1, 2).numpy()
    assert rel_l2(rel_log_coords(grid), want) <= UNIT_ROUNDOFF["float32"]  # timm's are float32: one rounding


@pytest.mark.parametrize("old,new,prefix", [((4, 4), (6, 6), 1), ((6, 6), (4, 4), 1), ((3, 5), (5, 4), 0),
                                            ((14, 14), (24, 24), 1)])
def test_table_resampling_is_timms_rule(old, new, prefix):
    """shared.posemb.resize_rel_pos_table (NumPy float64) = timm's resize_rel_pos_bias_table (torch float32): a
    bilinear mix of 4 table entries per output, within the float32 bound of a length-4 sum."""
    from timm.layers import resize_rel_pos_bias_table

    rows = (2 * old[0] - 1) * (2 * old[1] - 1) + 3 * prefix
    t = np.random.default_rng(0).standard_normal((rows, 3)).astype(np.float32)
    new_rows = (2 * new[0] - 1) * (2 * new[1] - 1) + 3 * prefix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        want = resize_rel_pos_bias_table(torch.from_numpy(t), new_window_size=new, new_bias_shape=(new_rows, 3),
                                         old_window_size=old).numpy()
    got = resize_rel_pos_table(t, old, new, prefix)
    assert got.shape == want.shape == (new_rows, 3)
    assert rel_l2(got, want) <= F32_SAFETY * UNIT_ROUNDOFF["float32"] * np.sqrt(4)
    np.testing.assert_array_equal(got[new_rows - 3 * prefix:], t[rows - 3 * prefix:])  # the class rows, kept


# ------------------------------------------------------------------- tiny timm models: import, export, proof
@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_timm_model_imports_exactly_and_exports_back(case):
    arch, kw = CASES[case]
    m = _timm_model(arch, **kw)
    x = _images()
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)  # the file's sizes win over the architecture's
        cfg, state = import_timm(sd, preset=arch, image_size=SIZE, num_heads=SMALL["num_heads"])
    assert cfg.rel_pos != "none" and cfg.image_size == SIZE
    _check(cfg, reference.forward(cfg, state, x)["logits"], _run(m, x), f"{case} ({arch}) against timm")
    back = export_timm(cfg, state)
    assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k]) for k in sd), case


def test_table_stored_for_another_grid_is_resampled_as_timm_does():
    """A BEiT file whose tables are stored for 3x3 patches, converted for 4x4: timm's own checkpoint filter
    (resize_rel_pos_bias_table) builds the model it compares to; the conversion says so in a warning."""
    from timm.models.beit import checkpoint_filter_fn

    small = _timm_model("beit_base_patch16_224", size=(48, 48))
    big = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=(64, 64), **SMALL).eval()
    big.load_state_dict(checkpoint_filter_fn(dict(small.state_dict()), big), strict=True)
    with pytest.warns(ConversionWarning, match="resampled to 4x4 by timm's rule"):
        cfg, state = import_timm({k: v.numpy() for k, v in small.state_dict().items()},
                                 preset="beit_base_patch16_224", image_size=(64, 64), num_heads=4)
    x = _images((64, 64))
    _check(cfg, reference.forward(cfg, state, x)["logits"], _run(big, x), "BEiT 3x3 table at 4x4 against timm")


@pytest.mark.parametrize("form", ["hub", "safetensors"])
def test_convert_proves_itself_against_timm(form, tmp_path, capsys):
    """`vit-suite convert` of timm's hub directory (config.json says everything) and of a bare state dict (the
    architecture, size and heads stated) proves the import against timm's own output by default, then writes."""
    arch = "beit_base_patch16_224" if form == "hub" else "vit_srelpos_small_patch16_224"
    m = _timm_model(arch)
    if form == "hub":
        save_for_hf(m, str(tmp_path / "hub"), safe_serialization=True)
        src, args = tmp_path / "hub", []
    else:
        src = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(src))
        args = ["--preset", arch, "--image-size", "32x48", "--num-heads", "4"]
    dst = tmp_path / "c.safetensors"
    assert main(["convert", str(src), str(dst), *args]) == EXIT_OK
    out = capsys.readouterr().out
    assert "timm" in out and "not verified" not in out, out
    cfg, state = W.load(dst)
    x = _images()
    _check(cfg, reference.forward(cfg, state, x)["logits"], _run(m, x), f"convert {form} {arch}")


# ----------------------------------------------------------------------------------------- presets, refusals
@pytest.mark.parametrize("name", REL_POS_PRESETS)
def test_relpos_preset_is_timms_architecture_key_by_key(name):
    """Each preset's canonical keys, through the timm key map (BEiT's q/v biases, gamma_1/2, table names), are
    exactly the keys and shapes of timm's model of that name (meta device; 2 blocks: the others repeat them, and
    the resolver test of test_family_timm reads the numerics of the full models)."""
    cfg = get_preset(name).replace(depth=2)
    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False, depth=2)
    exp = W.expected_shapes(cfg)
    ours = {}
    for e in key_map(cfg, extra=_export_entries(cfg)):
        for k in e.src:
            ours[k] = (exp[e.dst[0]][0] // 3,) if isinstance(e.transform, Fold) else exp[e.dst[0]]
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == ours
    assert tuple(m.patch_embed.img_size) == cfg.image_size


def test_summed_biases_are_refused_by_name():
    m = _timm_model("beit_base_patch16_224", use_shared_rel_pos_bias=True)  # a per-block table AND a shared one
    with pytest.raises(ConversionError, match="a per-block bias with a shared one"):
        import_timm({k: v.numpy() for k, v in m.state_dict().items()}, preset="beit_base_patch16_224",
                    image_size=SIZE, num_heads=4)


def test_k_bias_false_never_reads_the_k_third_and_tables_keep_their_grid():
    """tiny_beit: a non-zero k third of the qkv bias changes nothing (BEiT has none), in the reference and in
    PyTorch; a learned table is stored for one grid: another input grid is refused, naming the resampling rule."""
    from vit_torch.model import build_model

    cfg = get_preset("tiny_beit")
    state = init_weights(cfg)
    noisy = dict(state)
    for i in range(cfg.depth):
        b = state[f"blocks.{i}.attn.qkv.bias"].copy()
        b[cfg.width:2 * cfg.width] = 5.0
        noisy[f"blocks.{i}.attn.qkv.bias"] = b
    x = random_images(cfg)
    want = reference.forward(cfg, state, x)["logits"]
    np.testing.assert_array_equal(reference.forward(cfg, noisy, x)["logits"], want)
    got = build_model(cfg, noisy)(torch.from_numpy(x)).detach().numpy()
    _check(cfg, got, want, "tiny_beit torch with a noisy k third")
    other = random_images(cfg, image_size=(40, 24))
    with pytest.raises(ConfigError, match="resize_rel_pos_table"):
        reference.forward(cfg, state, other)
    with pytest.raises(ConfigError, match="resize_rel_pos_table"):
        build_model(cfg, state)(torch.from_numpy(other))
    # the MLP form has no stored grid: any input grid, as timm's RelPosMlp regenerates its coordinates
    mlp = get_preset("tiny_relpos")
    assert reference.forward(mlp, init_weights(mlp), random_images(mlp, image_size=(40, 16)))["logits"].shape == (2, 4)


def test_config_refuses_what_no_relative_layout_is():
    with pytest.raises(ConfigError, match="rel_pos must be one of"):
        ViTConfig(rel_pos="swin")
    with pytest.raises(ConfigError, match="one class token at most"):
        ViTConfig(rel_pos="table", reg_tokens=2)
    with pytest.raises(ConfigError, match="rel_pos_shared needs rel_pos"):
        ViTConfig(rel_pos_shared=True)
    with pytest.raises(ConfigError, match="k_bias=False .* needs qkv_bias"):
        ViTConfig(k_bias=False, qkv_bias=False)


# ------------------------------------------------------- the MLP-generated shared bias on the primary backends
@pytest.mark.ci_backends("torch")  # Keras and MindSpore (~30 s of compiles) in the slow set
def test_tiny_relpos_on_every_primary_backend(primary_backend):
    """tiny_relpos (a RelPosMlp bias shared by the blocks, zero for the class token) is not in the family matrix
    (FAMILY_TINY: each preset there costs minutes of compiles): each primary backend runs it here, every stage
    within the float32 bound, at a low precision within the bound of the reference run at that precision, and its
    loss gradients within the gradient bound of the float64 oracle (torch in the CI-sized set, all three with
    -m slow; the layers are the ones tiny_beit runs through the whole matrix)."""
    from shared.testing import assert_backend_conforms, case
    from shared.training import grad as G

    be = primary_backend
    cfg, state, x = case("tiny_relpos")
    assert_backend_conforms(be, "tiny_relpos")
    y = np.random.default_rng(3).integers(0, cfg.num_classes, x.shape[0])
    _, grads = be.loss_and_grads(cfg, state, x, y, 0.1)
    _, g64 = _oracle(cfg, state, x, y)
    bound = G.GRAD_FACTOR * fp32_bound(cfg, "logits")
    worst = max((rel_l2(grads[k], g64[k]) / bound, k) for k in g64 if np.any(g64[k] != 0))
    print(f"{be.name} gradients: worst {worst[1]} at {worst[0]:.3f} of the bound")
    assert set(grads) == set(g64) and worst[0] <= 1.0, worst
    assert all(np.any(g64[k] != 0) for k in g64 if k.startswith("rel_pos.")), "the MLP gets no gradient"


_ORACLE: dict = {}


def _oracle(cfg, state, x, y):
    """The float64 oracle's loss and gradients (torch in float64), computed once for all the backends."""
    from shared.backend import get_backend
    from shared.training import grad as G

    if cfg.name not in _ORACLE:
        _ORACLE[cfg.name] = get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, 0.1, dtype="float64")
    return _ORACLE[cfg.name]


# ------------------------------------------------------------------------ Hugging Face beit / data2vec-vision
@pytest.mark.parametrize("mt,changes", [
    ("beit", {}),  # tiny_beit: a table per layer, LayerScale, mean of the patch tokens + the pooler's norm
    ("data2vec-vision", dict(rel_pos_shared=True, pos_embed="learned", pool="token", final_norm=True, fc_norm=False,
                             init_values=None, num_classes=0)),
])
def test_export_to_hf_beit_loads_in_transformers_and_reads_back(mt, changes, tmp_path):
    """Canonical -> save_hf_dir as BEiT / data2vec-vision -> transformers' from_pretrained (every key found) gives the
    reference's output within the float32 bound, and the directory reads back into the same config and weights."""
    import transformers

    from shared.convert.hf import load_hf_dir, save_hf_dir

    cfg = get_preset("tiny_beit").replace(image_size=(32, 32), **changes)  # HF's BEiT: square grids only
    state = init_weights(cfg, seed=4)
    save_hf_dir(tmp_path / "hf", cfg, state, model_type=mt)
    name = {"beit": "Beit", "data2vec-vision": "Data2VecVision"}[mt]
    cls = getattr(transformers, f"{name}ForImageClassification" if cfg.num_classes else f"{name}Model")
    kw = {} if cfg.num_classes else {"add_pooling_layer": True}
    model, info = cls.from_pretrained(tmp_path / "hf", local_files_only=True, output_loading_info=True, **kw)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = random_images(cfg)
    with torch.no_grad():
        out = model.eval()(pixel_values=torch.from_numpy(x))
    theirs = out.logits if cfg.num_classes else out.pooler_output
    _check(cfg, theirs.numpy(), reference.forward(cfg, state, x)["logits"], f"{cfg.name} -> HF {mt}")
    cfg2, state2 = load_hf_dir(tmp_path / "hf")
    fields = ("k_bias", "rel_pos", "rel_pos_shared", "pool", "fc_norm", "final_norm", "init_values", "pos_embed")
    assert {f: getattr(cfg2, f) for f in fields} == {f: getattr(cfg, f) for f in fields}
    assert all(np.array_equal(state2[k], state[k]) for k in state) and sorted(state2) == sorted(state)
    with pytest.raises(ConversionError, match="square grid only"):  # tiny_beit itself is 4x3
        save_hf_dir(tmp_path / "no", get_preset("tiny_beit"), init_weights(get_preset("tiny_beit")), model_type=mt)
