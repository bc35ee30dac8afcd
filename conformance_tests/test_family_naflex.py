"""timm's NaFlexVit at a fixed image size and Hugging Face SigLIP 2, imported and exported both ways and proven
against their own libraries (random init, no download), and the zoo's other layouts refused by name with what they
would need.

A NaFlexVit embeds patches with a Linear over (ph, pw, C)-flattened patches and adds a (1, h, w, D) table to the
patch tokens only, resampled to each image's grid with F.interpolate (bicubic or bilinear, antialias=True); the
import reads it as the canonical conv + table kept at its grid with the same kernel (shared.posemb), and the export
writes timm's NaFlexVit keys again, which timm loads strictly. SigLIP 2 is the same layout in transformers (a
num_patches table resampled per image with bilinear antialias), run on flattened patches with pixel_attention_mask
and spatial_shapes.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402

from shared import posemb, reference  # noqa: E402
from shared import weights as W  # noqa: E402
from shared.cli import main  # noqa: E402
from shared.convert.hf import load_hf_dir, save_hf_dir  # noqa: E402
from shared.convert.io import save_timm_hub_dir  # noqa: E402
from shared.convert.sources import siglip2_inputs, source_output  # noqa: E402
from shared.convert.timm import _vit_shapes, export_timm, load_timm_file  # noqa: E402
from shared.convert.timm_resolve import resolve_timm_architecture  # noqa: E402
from shared.errors import EXIT_OK, ConversionError, ConversionWarning, MissingFactsError  # noqa: E402
from shared.presets import NAFLEX_PRESETS, PRESETS  # noqa: E402
from shared.tolerances import fp32_bound, rel_l2  # noqa: E402

#: the two resize kernels NaFlexVit's expressible families use (bicubic and bilinear, both antialiased), with
#: register tokens + avg pool + fc_norm + LayerScale, and MAP with tanh GELU; aspect-preserving resampling (par),
#: factorized row / column tables, aspect-preserving (parfac, a non-square 4x6 pair), and C-RADIO (a class token,
#: registers, bilinear without antialias, aspect-preserving, token pool, no final norm)
ARCHS = ["naflexvit_base_patch16_gap", "naflexvit_base_patch16_siglip", "naflexvit_base_patch16_par_gap",
         "naflexvit_base_patch16_parfac_gap", "naflexvit_huge_patch16_radio_v4"]
#: the CLI's proof is the same code for every NaFlexVit: the first two in the CI-sized set, the others slow
CLI_ARCHS = ARCHS[:2] + [pytest.param(a, marks=pytest.mark.slow) for a in ARCHS[2:]]
#: the table's grid (patch 8): 4x4, the factorized pair 4 rows x 6 columns
TABLE = {"naflexvit_base_patch16_parfac_gap": (4, 6)}
#: up, down, non-square, and the 4x4 tables' own grid (patch 8)
SIZES = [(48, 80), (24, 16), (32, 32)]


def _tiny(arch: str):
    torch.manual_seed(0)
    m = timm.create_model(arch, pretrained=False, depth=2, embed_dim=64, num_heads=4, patch_size=8,
                          pos_embed_grid_size=TABLE.get(arch, (4, 4)), num_classes=5).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return m


def _run(m, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module", params=ARCHS)
def naflex(request, tmp_path_factory):
    arch = request.param
    m = _tiny(arch)
    hub = tmp_path_factory.mktemp(arch) / "hub"
    save_for_hf(m, str(hub), safe_serialization=True)
    xs = {s: np.random.default_rng(3).standard_normal((2, 3, *s)).astype(np.float32) for s in SIZES}
    return dict(arch=arch, model=m, hub=hub, xs=xs, want={s: _run(m, x) for s, x in xs.items()})


def test_naflex_table_resampling_is_timms(naflex):
    """The canonical table at each grid (shared.posemb.position_table, float64, from the imported config and
    weights) = NaFlexVit's own _apply_learned_pos_embed / _apply_factorized_pos_embed; for an aspect-preserving
    table, resizing each axis to its own size instead is far off (the check can fail)."""
    e = naflex["model"].embeds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        cfg, state = load_timm_file(naflex["hub"], image_size=(32, 32))
    assert (cfg.pos_embed == "factorized", cfg.pos_ar_preserving) == \
        (e.pos_embed_type == "factorized", e.pos_embed_ar_preserving)
    apply = e._apply_factorized_pos_embed if cfg.pos_embed == "factorized" else e._apply_learned_pos_embed
    for grid in [(6, 10), (3, 2), (4, 4), (1, 7), (5, 3), cfg.table_grid]:
        x = torch.zeros(1, grid[0] * grid[1], cfg.embed_dim)
        with torch.no_grad():
            apply(x, grid_size=list(grid))
        got = posemb.position_table(cfg, state, grid)[cfg.num_prefix_tokens:]
        assert np.abs(got - x[0].numpy()).max() < 1e-6, grid  # timm interpolates in float32
        if cfg.pos_ar_preserving and max(grid) > max(cfg.table_grid) and min(grid) < max(grid):
            other = posemb.position_table(cfg.replace(pos_ar_preserving=False), state, grid)[cfg.num_prefix_tokens:]
            assert np.abs(other - x[0].numpy()).max() > 1e-3, grid


def test_naflex_imports_as_timm_computes_at_every_grid(naflex):
    """timm's hub directory -> the canonical model (table kept at 4x4, NaFlexVit's kernel): its float64 reference
    = timm's output at each image size, under the float32 bound."""
    for size in SIZES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConversionWarning)
            cfg, state = load_timm_file(naflex["hub"], image_size=size)
        assert cfg.name == naflex["arch"] and cfg.pos_grid == TABLE.get(cfg.name, (4, 4)) \
            and cfg.pos_prefix_tokens in (0, None)
        err = rel_l2(reference.forward(cfg, state, naflex["xs"][size])["logits"], naflex["want"][size])
        print(f"{naflex['arch']} {size}: rel L2 {err:.2e} (bound {fp32_bound(cfg, 'logits'):.1e})")
        assert err <= fp32_bound(cfg, "logits")


def test_naflex_export_is_the_exact_inverse_and_timm_loads_it_strictly(naflex, tmp_path):
    """Export writes NaFlexVit's own keys (the Linear over (ph, pw, C) patches, the (1, h, w, D) table): equal to
    the source state dict bit for bit, and timm builds and strictly loads the exported hub directory. Without its
    architecture's name (no config.json beside it) the state dict is refused: its Linear does not tell the patch
    size from the channels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        cfg, state = load_timm_file(naflex["hub"], image_size=(48, 80))
    sd = naflex["model"].state_dict()
    out = export_timm(cfg, state)
    assert set(out) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(out[k], v.numpy(), err_msg=k)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(MissingFactsError, match="name its architecture"):  # (ph, pw, C) vs P*P*C: not guessed
        load_timm_file(tmp_path / "bare.safetensors")
    save_timm_hub_dir(tmp_path / "hub", cfg, state)
    back = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    assert type(back).__name__ == "NaFlexVit"
    np.testing.assert_array_equal(_run(back, naflex["xs"][(24, 16)]), naflex["want"][(24, 16)])


@pytest.mark.parametrize("naflex", CLI_ARCHS, indirect=True)
def test_naflex_convert_proves_against_timm(naflex, tmp_path):
    """`vit-suite convert` of the hub directory proves against timm's own NaFlexVit (in process), and the proof
    runner gives timm's output exactly."""
    dst = tmp_path / "c.safetensors"
    assert main(["convert", str(naflex["hub"]), str(dst), "--image-size", "48x80"]) == EXIT_OK
    cfg, state = W.load(dst)
    got = source_output("timm", str(naflex["hub"]), naflex["xs"][(48, 80)], cfg)
    np.testing.assert_array_equal(got, naflex["want"][(48, 80)])


def test_naflex_presets_are_timms_models():
    """Each NaFlex preset states what timm's own model of that name (depth 1, meta device) states, and holds
    its keys and shapes (as the classic layout the import reads)."""
    for arch in NAFLEX_PRESETS:
        p = PRESETS[arch].replace(depth=1)
        r = resolve_timm_architecture(arch, {"depth": 1})
        nf = r.facts["naflex"]
        assert (r.facts["num_heads"], r.facts["layer_norm_eps"], r.facts["pool"], r.facts.get("gelu"),
                r.facts["image_size"], r.facts.get("init_values")) == \
            (p.num_heads, p.layer_norm_eps, p.pool, p.gelu, p.image_size, p.init_values), arch
        assert (nf["patch_size"], nf["in_chans"], nf["pos_grid"], nf["resize_kernel"], nf["factorized"],
                nf["ar_preserving"]) == \
            (p.patch_size, p.in_chans, p.pos_grid, p.resize_kernel, p.pos_embed == "factorized",
             p.pos_ar_preserving), arch
        assert _vit_shapes(r.shapes, nf) == W.expected_shapes(p), arch


@pytest.mark.parametrize("arch,words", [
    ("naflexvit_base_patch16_radio_v3", "align_corners=True"),
    ("naflexvit_huge_patch16_radio_v3", "align_corners=True"),
    ("vit_base_r50_s16_224", "hybrid CNN stem (ResNetV2 backbone"),
    ("vitamin_small_224", "hybrid CNN stem (MbConvStages backbone"),
    ("samvit_base_patch16", "windowed attention"),
])
def test_layouts_the_canonical_model_cannot_run_are_refused_by_name(arch, words):
    """Refused by name with the missing part, whatever else is stated (never read as a look-alike)."""
    with pytest.raises(ConversionError, match="refused by name") as e:
        resolve_timm_architecture(arch, {"depth": 1})
    assert words in str(e.value) and arch in str(e.value)


# ------------------------------------------------------------------------------------------- HF SigLIP 2
#: a tiny SigLIP 2 tower: 7-pixel patches, a 4x4 table (num_patches=16), resampled per image by transformers
_S2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=7,
           num_patches=16)
#: non-square, up and down from the table's 4x4 grid
S2_SIZES = [(42, 21), (14, 56)]


@pytest.fixture(scope="module")
def siglip2(tmp_path_factory):
    import transformers
    torch.manual_seed(0)
    m = transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**_S2)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    d = tmp_path_factory.mktemp("siglip2") / "hf"
    m.save_pretrained(d)
    xs = {s: np.random.default_rng(5).standard_normal((2, 3, *s)).astype(np.float32) for s in S2_SIZES}
    with torch.no_grad():
        want = {s: m(**siglip2_inputs(x, 7)).pooler_output.numpy() for s, x in xs.items()}
    return dict(model=m, dir=d, xs=xs, want=want)


def test_siglip2_imports_as_transformers_computes_at_other_shapes(siglip2):
    """transformers' Siglip2VisionModel on flattened patches + pixel_attention_mask + spatial_shapes at two
    non-square shapes = the canonical model (table kept at 4x4, bilinear_antialias), under the float32 bound."""
    for size in S2_SIZES:
        cfg, state = load_hf_dir(siglip2["dir"], image_size=size)
        assert (cfg.pos_grid, cfg.resize_kernel, cfg.pool) == ((4, 4), "bilinear_antialias", "map")
        err = rel_l2(reference.forward(cfg, state, siglip2["xs"][size])["logits"], siglip2["want"][size])
        print(f"siglip2 {size}: rel L2 {err:.2e} (bound {fp32_bound(cfg, 'logits'):.1e})")
        assert err <= fp32_bound(cfg, "logits")


def test_siglip2_export_loads_in_transformers_and_convert_proves_it(siglip2, tmp_path):
    """Export writes SigLIP 2's own keys (the Linear over patches, num_patches table rows) bit for bit, which
    transformers loads and runs as the source; `convert` proves the import against transformers (in process)."""
    import transformers
    size = S2_SIZES[0]
    cfg, state = load_hf_dir(siglip2["dir"], image_size=size)
    save_hf_dir(tmp_path / "back", cfg, state, model_type="siglip2_vision_model")
    back = transformers.Siglip2VisionModel.from_pretrained(tmp_path / "back").eval()
    src = siglip2["model"].state_dict()
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, src[k], rtol=0, atol=0, msg=k)
    dst = tmp_path / "c.safetensors"
    assert main(["convert", str(siglip2["dir"]), str(dst), "--image-size", f"{size[0]}x{size[1]}"]) == EXIT_OK
    got = source_output("hf", str(siglip2["dir"]), siglip2["xs"][size], W.load(dst)[0])
    np.testing.assert_array_equal(got, siglip2["want"][size])


# ------------------------------------------------------------------------------ the variable-size patch path
#: one image at two aspect ratios (patch 8 / 7): grids 3x7 and 6x3, one NaFlex batch padded to the longer sequence
ASPECTS = [(24, 56), (48, 24)]


def _one_image_at(sizes, seed: int = 11) -> dict[tuple[int, int], np.ndarray]:
    """The same image resized (bilinear, by torch) to each size: (1, 3, h, w) float32 each."""
    img = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 3, 40, 40)).astype(np.float32))
    return {s: torch.nn.functional.interpolate(img, size=s, mode="bilinear", align_corners=False).numpy()
            for s in sizes}


def test_naflex_variable_size_batch_matches_the_canonical_model_per_image(naflex):
    """timm's NaFlex path (flattened patches + patch_coord + patch_valid, the shorter sequence padded and masked)
    on one image at two aspect ratios = the canonical model run on each image at its own size."""
    from timm.models.naflexvit import batch_patchify

    images = _one_image_at(ASPECTS)
    seqs = [batch_patchify(torch.from_numpy(x), (8, 8))[0][0] for x in images.values()]
    n = max(len(q) for q in seqs)
    patches = torch.zeros(len(seqs), n, seqs[0].shape[1])
    coord = torch.zeros(len(seqs), n, 2, dtype=torch.long)
    valid = torch.zeros(len(seqs), n, dtype=torch.bool)
    for b, ((h, w), q) in enumerate(zip(images, seqs)):
        gh, gw = h // 8, w // 8
        patches[b, :len(q)] = q
        yx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")  # (y, x) per patch, row-major
        coord[b, :len(q)] = torch.stack(yx, -1).reshape(-1, 2)
        valid[b, :len(q)] = True
    with torch.no_grad():
        theirs = naflex["model"](patches, patch_coord=coord, patch_valid=valid).numpy()
    for b, (size, x) in enumerate(images.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConversionWarning)
            cfg, state = load_timm_file(naflex["hub"], image_size=size)
        err = rel_l2(reference.forward(cfg, state, x)["logits"], theirs[b:b + 1])
        print(f"{naflex['arch']} NaFlex batch, {size}: rel L2 {err:.2e} (bound {fp32_bound(cfg, 'logits'):.1e})")
        assert err <= fp32_bound(cfg, "logits")


def test_siglip2_padded_batch_matches_the_canonical_model_per_image(siglip2):
    """transformers' SigLIP 2 on one image at two aspect ratios in one batch (the shorter sequence padded,
    pixel_attention_mask 0 there, spatial_shapes per image) = the canonical model run on each at its own size."""
    sizes = [(21, 49), (42, 21)]  # 3x7 and 6x3 patches of 7
    images = _one_image_at(sizes)
    ins = [siglip2_inputs(x, 7) for x in images.values()]
    n = max(i["pixel_values"].shape[1] for i in ins)
    pix = torch.zeros(len(ins), n, ins[0]["pixel_values"].shape[2])
    mask = torch.zeros(len(ins), n, dtype=torch.int32)
    for b, i in enumerate(ins):
        pix[b, :i["pixel_values"].shape[1]] = i["pixel_values"][0]
        mask[b, :i["pixel_values"].shape[1]] = 1
    shapes = torch.cat([i["spatial_shapes"] for i in ins])
    with torch.no_grad():
        theirs = siglip2["model"](pixel_values=pix, pixel_attention_mask=mask, spatial_shapes=shapes).pooler_output
    for b, (size, x) in enumerate(images.items()):
        cfg, state = load_hf_dir(siglip2["dir"], image_size=size)
        err = rel_l2(reference.forward(cfg, state, x)["logits"], theirs[b:b + 1].numpy())
        print(f"siglip2 padded batch, {size}: rel L2 {err:.2e} (bound {fp32_bound(cfg, 'logits'):.1e})")
        assert err <= fp32_bound(cfg, "logits")


# --------------------------------------- aspect-preserving and factorized tables on the primary backends
#: tiny_naflex_par: a 4x4 table to the 3x5 grid, aspect-preserving; tiny_naflex_parfac: factorized 4 + 6 rows to
#: the 5x3 grid, aspect-preserving, and at the pair's own 4x6 grid (32x48 pixels), where timm still resizes the
#: 4 rows to 6 and crops (per axis: shared.posemb.resample_matrices)
NAFLEX_TINY = [("tiny_naflex_par", None), ("tiny_naflex_parfac", None), ("tiny_naflex_parfac", (32, 48))]


@pytest.mark.ci_backends("torch")  # Keras and MindSpore (~30 s of compiles) in the slow set
@pytest.mark.parametrize("preset,size", NAFLEX_TINY)
def test_tiny_naflex_tables_on_every_primary_backend(primary_backend, preset, size):
    """Each primary backend runs the aspect-preserving and factorized tables: every stage within the float32 bound
    of the float64 reference (which resamples a factorized pair axis by axis, the backends the 2-D table y[i] + x[j]),
    at a low precision within the bound of the reference run at that precision, and its loss gradients (the
    tables' included) within the gradient bound of the float64 oracle (torch in the CI-sized set, all three with
    -m slow)."""
    from shared.testing import assert_backend_conforms, case
    from shared.training import grad as G

    be = primary_backend
    cfg, state, x = case(preset, image_size=size)
    cfg = cfg if size is None else cfg.with_image_size(size)  # the tables stay at their grid
    assert_backend_conforms(be, preset, cfg, **({} if size is None else dict(image_size=size)))
    y = np.random.default_rng(3).integers(0, cfg.num_classes, x.shape[0])
    _, grads = be.loss_and_grads(cfg, state, x, y, 0.1)
    _, g64 = _oracle(cfg, state, x, y)
    bound = G.GRAD_FACTOR * fp32_bound(cfg, "logits")
    worst = max((rel_l2(grads[k], g64[k]) / bound, k) for k in g64 if np.any(g64[k] != 0))
    print(f"{be.name} gradients: worst {worst[1]} at {worst[0]:.3f} of the bound")
    assert set(grads) == set(g64) and worst[0] <= 1.0, worst


@pytest.mark.parametrize("preset", ["tiny_naflex_par", "tiny_naflex_parfac"])
def test_tiny_naflex_oracle_is_the_references_gradient_and_one_step_trains(preset):
    """The float64 oracle's gradients of the tables (pos_embed; pos_embed_y and pos_embed_x) = central differences
    of the float64 reference loss (shared.training.grad's step and bounds) at coordinates of every table row the
    grid reads; and one AdamW step of the torch backend lands where the NumPy float64 step of the oracle's
    gradients does, within shared.training.grad's bounds (the tables without weight decay)."""
    from shared.backend import get_backend
    from shared.testing import case
    from shared.training import grad as G

    cfg, state, x = case(preset)
    y = np.random.default_rng(3).integers(0, cfg.num_classes, x.shape[0])
    _, g64 = _oracle(cfg, state, x, y)
    base = {k: np.asarray(v, np.float64).copy() for k, v in state.items()}
    keys = ["pos_embed_y", "pos_embed_x"] if cfg.pos_embed == "factorized" else ["pos_embed"]
    checked = 0
    for k in keys:
        for row in range(base[k].shape[1]):
            if not np.any(g64[k][0, row]):  # a row the grid's resample does not read (aspect-preserving crop)
                continue
            idx = (0, row, row % cfg.embed_dim)
            orig = base[k][idx]
            losses = []
            for step in (G.FD_STEP, -G.FD_STEP):
                base[k][idx] = orig + step
                losses.append(G.reference_loss(cfg, base, x, y, 0.1))
            base[k][idx] = orig
            fd, g = (losses[0] - losses[1]) / (2 * G.FD_STEP), float(g64[k][idx])
            assert abs(fd - g) <= G.FD_ABS + G.FD_REL * abs(g), (k, idx, fd, g)
            checked += 1
    assert checked >= 4
    be = get_backend("torch")
    hp = G.STEP_HPARAMS["adamw"]
    new = be.optimizer_step(cfg, state, x, y, "adamw", lr=hp["lr"], weight_decay=hp["weight_decay"],
                            label_smoothing=0.1, betas=G.ADAM_BETAS, eps=G.ADAM_EPS)
    _, own = be.loss_and_grads(cfg, state, x, y, 0.1)
    rows = G.step_errors("adamw", cfg, state, new, own, g64)
    bad = {k: m for k, m in rows.items() if not (m["opt_err"] <= m["opt_bound"] and m["e2e_err"] <= m["e2e_bound"])}
    assert not bad, bad
    assert all(not np.array_equal(new[k], state[k]) for k in keys)


_ORACLE: dict = {}


def _oracle(cfg, state, x, y):
    """The float64 oracle's loss and gradients (torch in float64), once per config and image size."""
    from shared.backend import get_backend
    from shared.training import grad as G

    key = (cfg.name, x.shape)
    if key not in _ORACLE:
        _ORACLE[key] = get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, 0.1, dtype="float64")
    return _ORACLE[key]
