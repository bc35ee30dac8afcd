"""timm's ViT family, imported and exported both ways and proven against timm itself (random init, no download).

For each family architecture a SMALL timm model is made by timm: `timm.create_model(ARCH, depth=2, embed_dim=96,
num_classes=5, img_size=...)` (96 is divisible by every family's head count, 6, 8 and 12, so the architecture's
own heads apply), perturbed so every parameter matters, and saved the ways timm users save it: a state dict
(.safetensors and .pth) and a hub directory (timm's save_for_hf: config.json + model.safetensors). Then:

  * `vit-suite convert` reads it (the state dict under `--preset ARCH --image-size HxW`, the hub directory alone)
    and the float64 reference of the converted file gives timm's own output within the float32 bound of the logits;
  * the proof against the source (`check --against`, shared.convert.sources.timm_output) builds timm's model from the
    source file and agrees with it;
  * export back (a timm state dict, and a hub directory) gives timm identical tensors, loaded strictly;
  * every primary backend runs the converted file within twice its bound of timm's output, and `vit-suite check
    CONVERTED --against SRC` passes on torch, Keras and MindSpore (test_every_primary_backend_matches_timm,
    test_check_on_every_backend_and_against_timm: these two pass once the backends build the family options).

The last section: each way a timm state dict could be imported wrong without a word is refused, naming the
question and the flag that answers it, and the flag makes the import exact against timm.
"""
from __future__ import annotations

import json
import os
import re
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402

from shared import reference  # noqa: E402
from shared import weights as W  # noqa: E402
from shared.cli import main  # noqa: E402
from shared.convert.formats import detect_format  # noqa: E402
from shared.convert.io import read_any  # noqa: E402
from shared.convert.sources import source_output  # noqa: E402
from shared.convert.timm import TIMM_ARCHITECTURES, timm_architecture, timm_model_kwargs  # noqa: E402
from shared.errors import EXIT_MISMATCH, EXIT_OK, EXIT_OUT_OF_BOUNDS, EXIT_USAGE, ConversionWarning  # noqa: E402
from shared.testing import FAMILY_TINY  # noqa: E402
from shared.tolerances import fp32_bound, rel_l2  # noqa: E402

torch.set_num_threads(2)

#: the family's architectures (timm names = vit-suite preset names)
FAMILY = ["deit_small_distilled_patch16_224", "deit3_small_patch16_224", "vit_small_patch14_dinov2",
          "vit_small_patch14_reg4_dinov2", "vit_base_patch16_clip_224", "vit_base_patch16_clip_quickgelu_224",
          "vit_base_patch16_siglip_224", "vit_medium_patch16_gap_256", "vit_giant_patch14_dinov2"]
SMALL = dict(depth=2, embed_dim=96, num_classes=5)
FORMS = ["safetensors", "pth", "hub"]


def _size(arch: str) -> tuple[int, int]:
    """A non-square input of 2x3 patches: no preset's image size fits it, so a state dict must be told it."""
    p = 14 if "patch14" in arch else 16
    return (2 * p, 3 * p)


@torch.no_grad()
def _timm_model(arch: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, **{**SMALL, "img_size": _size(arch), **kw}).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for p in m.parameters():  # timm's init leaves biases at 0, norms at 1, gammas at 1e-5: shake every one
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


def _images(size, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, *size)).astype(np.float32)


@torch.no_grad()
def _run(model, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).numpy()


def _save(m, root, form: str):
    """The model saved as its users save it: a state dict file, or timm's own hub directory."""
    if form == "hub":
        save_for_hf(m, str(root / "hub"), safe_serialization=True)
        return root / "hub"
    if form == "pth":
        torch.save(m.state_dict(), root / "model.pth")
        return root / "model.pth"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(root / "model.safetensors"))
    return root / "model.safetensors"


def _convert_args(arch: str, form: str) -> list[str]:
    """What the user states: nothing for a hub directory (config.json says it all), the architecture and the image
    size for a state dict."""
    if form == "hub":
        return []
    h, w = _size(arch)
    return ["--preset", arch, "--image-size", f"{h}x{w}"]


@pytest.fixture(scope="module", params=FAMILY)
def family(request, tmp_path_factory):
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    m = _timm_model(arch)
    x = _images(_size(arch))
    return dict(arch=arch, model=m, x=x, want=_run(m, x), files={f: _save(m, root, f) for f in FORMS}, root=root)


def _converted(family, form: str, tmp_path):
    dst = tmp_path / f"{form}.safetensors"
    assert main(["convert", str(family["files"][form]), str(dst), *_convert_args(family["arch"], form)]) == EXIT_OK
    return dst, *W.load(dst)


def _check(cfg, got, want, what: str, factor: float = 1.0) -> float:
    err, bound = rel_l2(np.asarray(got, np.float64), np.asarray(want, np.float64)), factor * fp32_bound(cfg, "logits")
    print(f"{what}: logits rel L2 {err:.2e} (bound {bound:.1e})")
    assert err <= bound, f"{what}: logits rel L2 {err:.3e} > float32 bound {bound:.3e}"
    return err


def test_family_names_are_timm_architectures():
    """Every preset the converter treats as a timm architecture is one (and the family's are among them)."""
    assert set(FAMILY) <= TIMM_ARCHITECTURES
    assert all(timm.is_model(a) for a in TIMM_ARCHITECTURES)


# ------------------------------------------------------------------------------- import, proof, export
@pytest.mark.parametrize("form", FORMS)
def test_convert_matches_timm(family, form, tmp_path):
    """timm's file -> `vit-suite convert` -> the float64 reference of the result = timm's own output."""
    assert detect_format(family["files"][form]) == ("timm" if form != "pth" else "torch")
    _, cfg, state = _converted(family, form, tmp_path)
    assert cfg.name == family["arch"] and tuple(cfg.image_size) == _size(family["arch"])
    _check(cfg, reference.forward(cfg, state, family["x"])["logits"], family["want"], f"{family['arch']} {form}")


@pytest.mark.parametrize("form", ["safetensors", "hub"])
def test_proof_runner_is_timm_itself(family, form, tmp_path):
    """The runner `check --against` uses builds timm's model from the source file: it gives timm's output
    exactly, and so agrees with the converted file's reference."""
    _, cfg, state = _converted(family, form, tmp_path)
    got = source_output("timm", str(family["files"][form]), family["x"], cfg)
    np.testing.assert_array_equal(got, family["want"])
    _check(cfg, reference.forward(cfg, state, family["x"])["logits"], got, f"against timm {form}")


#: one case per source form, each on an architecture with the most options (the runner itself is tested on all)
CHILD_CASES = [("deit_small_distilled_patch16_224", "hub"), ("vit_small_patch14_reg4_dinov2", "pth"),
               ("vit_base_patch16_siglip_224", "safetensors")]


@pytest.mark.parametrize("arch,form", CHILD_CASES)
def test_check_against_the_source_in_a_child(arch, form, tmp_path):
    """`check --against` as the tool runs it: timm in a child process, on the converted file's inputs."""
    from shared.cli.check import prove_against

    m = _timm_model(arch)
    family = dict(arch=arch, files={form: _save(m, tmp_path, form)})
    _, cfg, state = _converted(family, form, tmp_path)
    x = _images(_size(arch))
    a = prove_against(str(family["files"][form]), None, cfg, reference.forward(cfg, state, x), x)
    assert (a["status"], a["library"]) == ("pass", "timm"), a
    print(f"{arch} {form}: {a['message']}")


def test_export_back_gives_timm_identical_tensors(family, tmp_path):
    """converted -> a timm state dict and a timm hub directory: timm loads each strictly, every tensor bitwise
    the original's; timm_architecture + timm_model_kwargs build the model class that takes it."""
    arch, m = family["arch"], family["model"]
    src, cfg, _ = _converted(family, "safetensors", tmp_path)
    original = m.state_dict()
    assert main(["convert", str(src), str(tmp_path / "back.safetensors"), "--to", "timm"]) == EXIT_OK
    sd = load_file(str(tmp_path / "back.safetensors"))
    fresh = timm.create_model(arch, pretrained=False, **SMALL, img_size=_size(arch))
    fresh.load_state_dict(sd, strict=True)
    assert sorted(sd) == sorted(original) and all(torch.equal(sd[k], original[k]) for k in original)
    built = timm.create_model(timm_architecture(cfg), pretrained=False, **timm_model_kwargs(cfg)).eval()
    built.load_state_dict(sd, strict=True)
    assert type(built).__name__ == type(m).__name__  # VisionTransformerDistilled for DeiT distilled
    np.testing.assert_array_equal(_run(built, family["x"]), family["want"])
    assert main(["convert", str(src), str(tmp_path / "hub_back"), "--to", "timm"]) == EXIT_OK
    conf = json.loads((tmp_path / "hub_back" / "config.json").read_text())
    assert conf["architecture"] == arch
    hub = timm.create_model(f"local-dir:{tmp_path / 'hub_back'}", pretrained=True).eval()
    assert all(torch.equal(hub.state_dict()[k], original[k]) for k in original)
    np.testing.assert_array_equal(_run(hub, family["x"]), family["want"])
    # and what was written reads back into the same canonical weights
    cfg2, state2 = read_any(str(tmp_path / "hub_back"))
    _, state = W.load(src)
    assert cfg2.replace(notes="") == cfg.replace(notes="")
    assert all(np.array_equal(state[k], state2[k]) for k in state) and sorted(state) == sorted(state2)


@pytest.mark.parametrize("preset", FAMILY_TINY)
def test_suite_family_configs_export_to_models_timm_runs(preset, tmp_path):
    """The tiny family presets (suite names, not timm's): exported as a timm state dict and as a hub directory,
    timm builds the model (timm_architecture + timm_model_kwargs; `local-dir:` for the directory), loads it
    strictly and computes the float64 reference's logits within the float32 bound. tiny_dinov2_reg has HF's
    layout (a position row for the class token only): the export folds it, as timm's _convert_dinov2 does."""
    from shared.init import init_weights, random_images
    from shared.presets import get_preset

    cfg = get_preset(preset)
    state = init_weights(cfg, seed=5)
    src = W.save(tmp_path / "c.safetensors", cfg, state)
    x = random_images(cfg, 2, seed=6)
    want = reference.forward(cfg, state, x)["logits"]
    for dst in (tmp_path / "t.safetensors", tmp_path / "hub"):
        if cfg.num_pos_prefix < cfg.num_prefix_tokens and cfg.num_pos_prefix:
            with pytest.warns(ConversionWarning, match="_convert_dinov2"):
                assert main(["convert", str(src), str(dst), "--to", "timm"]) == EXIT_OK
        else:
            assert main(["convert", str(src), str(dst), "--to", "timm"]) == EXIT_OK
    model = timm.create_model(timm_architecture(cfg), pretrained=False, **timm_model_kwargs(cfg)).eval()
    model.load_state_dict(load_file(str(tmp_path / "t.safetensors")), strict=True)
    _check(cfg, _run(model, x), want, f"{preset} -> timm state dict")
    hub = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    np.testing.assert_array_equal(_run(hub, x), _run(model, x))


# ------------------------------------------------------------------- every backend (needs the family backends)
def test_every_primary_backend_matches_timm(family, primary_backend, tmp_path):
    """Each primary backend runs the converted file within twice the float32 bound of timm's own output."""
    _, cfg, state = _converted(family, "safetensors", tmp_path)
    got = primary_backend.forward(primary_backend.build(cfg, state), family["x"])["logits"]
    _check(cfg, got, family["want"], f"{family['arch']} {primary_backend.name}", factor=2.0)


@pytest.mark.parametrize("arch,form", [CHILD_CASES[0], *(pytest.param(*c, marks=pytest.mark.slow) for c in CHILD_CASES[1:])])
def test_check_on_every_backend_and_against_timm(arch, form, tmp_path):
    """`vit-suite check CONVERTED --against SRC`: torch, Keras and MindSpore each within bound of the reference,
    and the reference within bound of timm's own output on the same inputs: exit 0. Each backend in its own process
    (~16 s): one case in the CI-sized set (test_every_primary_backend_matches_timm runs every family in-process)."""
    m = _timm_model(arch)
    family = dict(arch=arch, files={form: _save(m, tmp_path, form)})
    src, _, _ = _converted(family, form, tmp_path)
    report = tmp_path / "check.json"
    code = main(["check", str(src), "--backends", "torch,keras,mindspore", "--against", str(family["files"][form]),
                 "--json", str(report)])
    result = json.loads(report.read_text())
    assert result["against"]["status"] == "pass", result["against"]
    assert {b: r["status"] for b, r in result["backends"].items()} == dict.fromkeys(("torch", "keras", "mindspore"),
                                                                                    "pass"), result["backends"]
    assert code == EXIT_OK


# ---------------------------------------------------------------------- no silent guesses, against timm
def _refused(args: list[str], capsys, *questions: str, code: int = EXIT_USAGE) -> str:
    """A question left open is exit 2 (usage); a statement the file contradicts is a conversion error (exit 4, EXIT_MISMATCH)."""
    dst = args[2]
    got = main(args)
    err = " ".join(capsys.readouterr().err.split())
    assert got == code, err
    for q in questions:
        assert q in err, f"{q!r} not in: {err}"
    assert not os.path.exists(dst)
    return err


def _import_error(src, x, want, tmp_path, *flags: str, name: str = "c") -> float:
    """rel L2 of the reference of `convert SRC --flags` against timm's output (the conversion must succeed)."""
    dst = tmp_path / f"{name}.safetensors"
    assert main(["convert", str(src), str(dst), *flags]) == EXIT_OK
    cfg, state = W.load(dst)
    err = rel_l2(reference.forward(cfg, state, x)["logits"], want)
    print(f"convert {' '.join(flags)}: logits rel L2 vs timm {err:.2e} (bound {fp32_bound(cfg, 'logits'):.1e})")
    return err, fp32_bound(cfg, "logits")


def test_average_pooling_with_fc_norm_is_asked_for(tmp_path, capsys):
    """timm global_pool='avg' (fc_norm, no final norm) under --preset vit_base_patch16_224 (token pooling with a
    final norm): the file contradicts the preset, so the pooling is a question, never the preset's guess (which was
    0.42 off against timm); --pool avg makes it exact."""
    m = _timm_model("vit_base_patch16_224", global_pool="avg", img_size=32)
    src = _save(m, tmp_path, "safetensors")
    x = _images((32, 32))
    want = _run(m, x)
    base = ["--preset", "vit_base_patch16_224", "--image-size", "32x32"]
    _refused(["convert", str(src), str(tmp_path / "no.safetensors"), *base], capsys,
             "class-token or average pooling", "fc_norm", "--pool token|avg")
    err, bound = _import_error(src, x, want, tmp_path, *base, "--pool", "avg", name="avg")
    assert err <= bound
    wrong, _ = _import_error(src, x, want, tmp_path, *base, "--pool", "token", name="token")  # the old silent reading
    assert wrong > 100 * bound


def test_average_pooling_without_fc_norm_is_stated_by_the_preset_and_said(tmp_path, capsys):
    """global_pool='avg', fc_norm=False: the keys are exactly a token-pooling model's, so only a statement can tell.
    The preset's is taken and printed as such; --pool avg, or timm's config.json (a hub directory), make it exact."""
    m = _timm_model("vit_base_patch16_224", global_pool="avg", fc_norm=False, img_size=32)
    x = _images((32, 32))
    want = _run(m, x)
    src = _save(m, tmp_path, "safetensors")
    base = ["--preset", "vit_base_patch16_224", "--image-size", "32x32"]
    wrong, bound = _import_error(src, x, want, tmp_path, *base, name="preset")
    assert "pool from preset 'vit_base_patch16_224'" in " ".join(capsys.readouterr().out.split())
    assert wrong > 100 * bound  # the preset states token pooling, and says so: the user sees whose word it is
    assert _import_error(src, x, want, tmp_path, *base, "--pool", "avg", name="avg")[0] <= bound
    hub = _save(m, tmp_path, "hub")
    assert _import_error(hub, x, want, tmp_path, name="hub")[0] <= bound


def test_non_square_grid_is_asked_for(tmp_path, capsys):
    """A table stored for 32x128 images (2x8 patches: 16 rows, also 4x4) under a 224 px preset: the grid is a
    question (read as square it was 1.3e-3 off against timm); --grid 2x8 or --image-size 32x128 make it exact."""
    m = _timm_model("vit_base_patch16_224", img_size=(32, 128))
    src = _save(m, tmp_path, "pth")
    x = _images((32, 128))
    want = _run(m, x)
    _refused(["convert", str(src), str(tmp_path / "no.safetensors"), "--preset", "vit_base_patch16_224"], capsys,
             "which grid is the position table", "17 rows", "4x4, 2x8", "--grid HxW")
    for i, flags in enumerate((["--grid", "2x8"], ["--image-size", "32x128"])):
        err, bound = _import_error(src, x, want, tmp_path, "--preset", "vit_base_patch16_224", *flags, name=f"g{i}")
        assert err <= bound
    # read as the square it also is, run at the true size: what the old silent guess computed. Stated so, convert's
    # default proof catches it (timm runs the file's table at its own 2x8 grid): exit 5, nothing written
    square = ["--preset", "vit_base_patch16_224", "--grid", "4x4", "--image-size", "32x128"]
    assert main(["convert", str(src), str(tmp_path / "square.safetensors"), *square]) == EXIT_OUT_OF_BOUNDS
    assert not (tmp_path / "square.safetensors").exists()
    assert "FAIL: the source library (timm) disagrees" in " ".join(capsys.readouterr().out.split())
    wrong, bound = _import_error(src, x, want, tmp_path, *square, "--no-verify", name="square")
    assert wrong > 10 * bound


def test_prefix_rows_are_asked_for(tmp_path, capsys):
    """DeiT III (no_embed_class): 6 rows at 32x48 are 1 class row + 5 patches or 6 patches; the row count alone
    does not say, so it is asked (--grid); stated, the import is exact."""
    m = _timm_model("deit3_small_patch16_224")
    src = _save(m, tmp_path, "safetensors")
    x = _images(_size("deit3_small_patch16_224"))
    want = _run(m, x)
    _refused(["convert", str(src), str(tmp_path / "no.safetensors"), "--preset", "deit3_small_patch16_224"],
             capsys, "which grid", "no_embed_class", "--grid HxW")
    err, bound = _import_error(src, x, want, tmp_path, "--preset", "deit3_small_patch16_224", "--grid", "2x3")
    assert err <= bound


def test_gelu_form_is_asked_for(tmp_path, capsys):
    """A CLIP QuickGELU state dict with everything stated but the activation: the GELU form is asked for
    (--gelu); --gelu quick is exact against timm, erf (timm's default) is not."""
    m = _timm_model("vit_base_patch16_clip_quickgelu_224", img_size=32)
    src = _save(m, tmp_path, "safetensors")
    x = _images((32, 32))
    want = _run(m, x)
    stated = ["--num-heads", "12", "--layer-norm-eps", "1e-5", "--pool", "token", "--image-size", "32x32"]
    err = _refused(["convert", str(src), str(tmp_path / "no.safetensors"), *stated], capsys,
                   "the GELU form", "--gelu erf|tanh|quick")
    assert "num_heads" not in err and "layer_norm_eps" not in err and "grid" not in err
    err, bound = _import_error(src, x, want, tmp_path, *stated, "--gelu", "quick", name="quick")
    assert err <= bound
    wrong, _ = _import_error(src, x, want, tmp_path, *stated, "--gelu", "erf", name="erf")
    assert wrong > 10 * bound
    # the quickgelu architecture's preset states it; the plain CLIP preset states erf, overridden by --gelu
    assert _import_error(src, x, want, tmp_path, "--preset", "vit_base_patch16_clip_quickgelu_224",
                         "--image-size", "32x32", name="preset")[0] <= bound
    with pytest.warns(ConversionWarning, match="gelu='quick' from --gelu \\(preset 'vit_base_patch16_clip_224' says "
                                               "'erf'\\)"):
        assert _import_error(src, x, want, tmp_path, "--preset", "vit_base_patch16_clip_224", "--image-size",
                             "32x32", "--gelu", "quick", name="override")[0] <= bound


def test_gated_mlp_activation_is_asked_for(tmp_path, capsys):
    """DINOv2-giant's packed SwiGLU MLP (fc1 has twice fc2's input rows): the keys show the gate, not its
    activation, so it is asked for (--mlp swiglu) when no preset or config.json states it; --mlp swiglu is exact
    against timm. A statement the keys contradict (--mlp gelu here, --mlp swiglu on a plain ViT) is refused."""
    m = _timm_model("vit_giant_patch14_dinov2", img_size=28)
    src = _save(m, tmp_path, "safetensors")
    x = _images((28, 28))
    want = _run(m, x)
    stated = ["--num-heads", "24", "--layer-norm-eps", "1e-6", "--pool", "token", "--image-size", "28x28"]
    err = _refused(["convert", str(src), str(tmp_path / "no.safetensors"), *stated], capsys,
                   "the gated MLP's activation", "512 rows, twice fc2's 256 inputs", "--mlp swiglu")
    assert "GELU form" not in err  # a SwiGLU block has no GELU: that question is not asked
    err, bound = _import_error(src, x, want, tmp_path, *stated, "--mlp", "swiglu", name="swiglu")
    assert err <= bound
    _refused(["convert", str(src), str(tmp_path / "no.safetensors"), *stated, "--mlp", "gelu"], capsys,
             "--mlp says a GELU MLP, which contradicts the file", "a packed gated MLP", code=EXIT_MISMATCH)
    (tmp_path / "plain").mkdir()
    plain = _save(_timm_model("vit_base_patch16_224", img_size=32), tmp_path / "plain", "safetensors")
    _refused(["convert", str(plain), str(tmp_path / "no.safetensors"), "--preset", "vit_base_patch16_224",
              "--image-size", "32x32", "--mlp", "swiglu"], capsys,
             "--mlp says a SwiGLU MLP, which contradicts the file", "a plain MLP", code=EXIT_MISMATCH)


def test_preset_contradicting_the_file_is_told(tmp_path):
    """A DeiT III file under a plain ViT preset: the keys win (LayerScale, no class row) and the warning names each
    fact the preset got wrong; what the preset rightly states (eps, GELU, heads) makes it exact."""
    m = _timm_model("deit3_small_patch16_224")
    src = _save(m, tmp_path, "safetensors")
    x = _images(_size("deit3_small_patch16_224"))
    with pytest.warns(ConversionWarning) as record:
        err, bound = _import_error(src, x, _run(m, x), tmp_path, "--preset", "vit_small_patch16_224",
                                   "--image-size", "32x48")
    told = " ".join(str(w.message) for w in record)
    assert "file's sizes win over preset 'vit_small_patch16_224'" in told
    assert "LayerScale: preset has none, file has ls1/ls2 gammas" in told
    assert "prefix tokens with a position row: preset 1, file 0" in told and "depth: preset 12, file 2" in told
    assert err <= bound


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors"])
def test_timm_export_writes_what_its_suffix_says(suffix, tmp_path):
    """`convert X out.pth --to timm` wrote safetensors bytes under a .pth name, which torch.load refuses: a torch
    suffix now gets torch.save (read back with weights_only=True), any other a safetensors state dict."""
    from shared.convert import export_timm
    from shared.convert.io import write_any
    from shared.init import init_weights
    from shared.presets import get_preset
    from shared.weights import read_tensors

    cfg = get_preset("tiny_deit3")
    state = init_weights(cfg)
    dst = tmp_path / f"w{suffix}"
    write_any(str(dst), "timm", cfg, state)
    want = export_timm(cfg, state)
    got = (read_tensors(dst)[0] if suffix == ".safetensors"
           else {k: v.numpy() for k, v in torch.load(dst, weights_only=True).items()})
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)


# ------------------------------------------------- architectures that are no suite preset, resolved by timm itself
#: plain timm VisionTransformers that are no suite preset, each with options of its own that its keys do not show
#: (arch, small width: a multiple of its head count): DeiT-tiny (3 heads), the SO150M MAP head with registers (14),
#: a GAP register ViT with LayerScale and no_embed_class (4), CLIP's eps 1e-5 with norm_pre (4), InternViT's
#: LayerScale init 0.1 and dynamic image size (16)
RESOLVED = [("deit_tiny_patch16_224", 96), ("vit_so150m_patch16_reg4_map_256", 112),
            ("vit_wee_patch16_reg1_gap_256", 96), ("vit_xsmall_patch16_clip_224", 96),
            ("vit_intern300m_patch14_448", 96)]
#: timm architectures whose keys are a supported model's but whose modules are not: refused by name, with flags too
REFUSED = [("vit_dwee_patch16_reg1_gap_256", "has DiffAttention attention")]


@pytest.fixture(scope="module")
def resolved_dirs(tmp_path_factory):
    """Each RESOLVED architecture made by timm (depth 2, its small width, 2x3 patches), saved as a hub directory
    and (the first two) as a bare state dict: {arch: dict(model, x, want, hub, sd)}."""
    root = tmp_path_factory.mktemp("resolved")
    out = {}
    for i, (arch, width) in enumerate(RESOLVED):
        (root / arch).mkdir()
        m = _timm_model(arch, embed_dim=width)
        x = _images(_size(arch))
        out[arch] = dict(model=m, x=x, want=_run(m, x), hub=_save(m, root / arch, "hub"),
                         sd=_save(m, root / arch, "safetensors") if i < 2 else None)
    return out


@pytest.mark.parametrize("arch", [a for a, _ in RESOLVED])
def test_resolved_architecture_verifies_with_no_flag(resolved_dirs, arch, tmp_path, capsys):
    """A hub directory of an architecture that is no suite preset converts with no flag: what its keys do not
    show is read from timm's own model of that name (built on the meta device with config.json's model_args),
    said as such, and the float64 reference of the result gives timm's output within the float32 bound; the proof
    runner (timm itself) agrees."""
    d = resolved_dirs[arch]
    dst = tmp_path / "c.safetensors"
    assert main(["convert", str(d["hub"]), str(dst)]) == EXIT_OK
    said = " ".join(capsys.readouterr().out.split())
    for fact in ("num_heads", "layer_norm_eps", "gelu"):
        assert f"{fact} from timm's {arch}" in said, said
    cfg, state = W.load(dst)
    assert cfg.name == arch and "timm's " + arch in cfg.notes
    _check(cfg, reference.forward(cfg, state, d["x"])["logits"], d["want"], f"{arch} hub, no flag")
    np.testing.assert_array_equal(source_output("timm", str(d["hub"]), d["x"], cfg), d["want"])


@pytest.mark.parametrize("arch", [a for a, _ in RESOLVED[:2]])
def test_resolved_architecture_named_by_preset(resolved_dirs, arch, tmp_path):
    """A bare state dict under `--preset ARCH` (a timm name that is no suite preset): timm's model of that name
    states what the keys do not show (the file's sizes win over its default sizes, said in a warning), and the
    proof builds timm's model of that name with every fact the conversion stated: both equal timm's output."""
    d = resolved_dirs[arch]
    h, w = _size(arch)
    dst = tmp_path / "c.safetensors"
    with pytest.warns(ConversionWarning, match=f"the file's sizes win over timm's {arch}"):
        assert main(["convert", str(d["sd"]), str(dst), "--preset", arch, "--image-size", f"{h}x{w}"]) == EXIT_OK
    cfg, state = W.load(dst)
    _check(cfg, reference.forward(cfg, state, d["x"])["logits"], d["want"], f"{arch} --preset")
    np.testing.assert_array_equal(source_output("timm", str(d["sd"]), d["x"], cfg), d["want"])


@pytest.fixture(scope="module")
def refused_dirs(tmp_path_factory):
    """Each REFUSED architecture made by timm (depth 2, 2x3 patches) as a hub directory and a bare state dict."""
    root = tmp_path_factory.mktemp("refused")
    out = {}
    for arch, _ in REFUSED:
        (root / arch).mkdir()
        m = timm.create_model(arch, pretrained=False, depth=2, num_classes=5, img_size=_size(arch))
        out[arch] = dict(hub=_save(m, root / arch, "hub"), sd=_save(m, root / arch, "safetensors"))
    return out


#: everything a flag can state about a timm state dict: the architecture stays refused
_ALL_FLAGS = ["--gelu", "erf", "--num-heads", "6", "--layer-norm-eps", "1e-6", "--pool", "token", "--mlp", "gelu",
              "--image-size", "32x48"]


@pytest.mark.parametrize("arch,why", REFUSED)
def test_unsupported_architecture_refused_by_name_with_or_without_flags(refused_dirs, arch, why, tmp_path, capsys):
    """An architecture the canonical model cannot run (differential attention) is refused by name, its hub
    directory and its state dict under `--preset ARCH`, with every flag too: exit 4, nothing written. (The
    rotary-position Eva models, the post-norm rpn blocks and PE core's pool over the class token, once here, port
    now: test_family_eva.py, test_family_postnorm.py, test_family_beit3_pool.py; imported through flags alone, rpn was
    read as pre-norm and was wrong against timm (0.86): its block type now comes from the architecture, never from
    the keys.)"""
    d = refused_dirs[arch]
    dst = str(tmp_path / "no.safetensors")
    for args in ([str(d["hub"]), dst], [str(d["hub"]), dst, *_ALL_FLAGS],
                 [str(d["sd"]), dst, "--preset", arch, *_ALL_FLAGS]):
        _refused(["convert", *args], capsys, f"timm's {arch} {why}", "refused by name", code=EXIT_MISMATCH)


def test_resolution_never_hands_timm_a_loading_option(resolved_dirs, tmp_path, capsys):
    """config.json's model_args go to timm.create_model: its own loading options there (checkpoint_path would
    torch.load a file, pretrained_cfg fetch one) are refused before timm sees them, nothing written."""
    import shutil

    d = tmp_path / "hub"
    shutil.copytree(resolved_dirs["deit_tiny_patch16_224"]["hub"], d)
    conf = json.loads((d / "config.json").read_text())
    conf["model_args"]["checkpoint_path"] = str(tmp_path / "evil.pth")
    (d / "config.json").write_text(json.dumps(conf))
    _refused(["convert", str(d), str(tmp_path / "no.safetensors")], capsys, "['checkpoint_path']",
             "loading options", code=EXIT_MISMATCH)


def test_pool_avg_without_fc_norm_is_proven_against_timm(tmp_path):
    """`convert SD --preset vit_small_patch16_224 --pool avg` of timm's create_model(global_pool='avg',
    fc_norm=False): the proof built timm's model with global_pool='avg' but not fc_norm=False, so timm added an
    fc_norm and the strict load failed ('Unexpected key(s) in state_dict: "norm.bias", "norm.weight"', exit 1).
    The proof states every fact the conversion stated: it is timm's output exactly, and the reference agrees."""
    m = _timm_model("vit_small_patch16_224", global_pool="avg", fc_norm=False, img_size=32)
    src = _save(m, tmp_path, "safetensors")
    x = _images((32, 32))
    dst = tmp_path / "c.safetensors"
    assert main(["convert", str(src), str(dst), "--preset", "vit_small_patch16_224", "--pool", "avg",
                 "--image-size", "32x32"]) == EXIT_OK
    cfg, state = W.load(dst)
    got = source_output("timm", str(src), x, cfg)
    np.testing.assert_array_equal(got, _run(m, x))
    _check(cfg, reference.forward(cfg, state, x)["logits"], got, "pool avg, no fc_norm, against timm")


def test_resolver_reads_every_timm_preset_as_its_preset_states():
    """timm's own model of each suite preset with a timm name, read from its built modules (depth 1 on the meta
    device), states what the hand-written preset states: heads, eps, GELU form or SwiGLU, pooling, image size,
    prefix position rows, LayerScale init."""
    from shared.convert.timm import _preset_facts
    from shared.convert.timm_resolve import resolve_timm_architecture
    from shared.presets import PRESETS

    for arch in sorted(TIMM_ARCHITECTURES):
        got = resolve_timm_architecture(arch, {"depth": 1}).facts
        want = _preset_facts(PRESETS[arch])
        assert {k: got.get(k) for k in want} == want, arch
        assert got.get("num_parallel", 1) == PRESETS[arch].num_parallel, arch  # ParallelThingsBlock branches


# ------------------------------------------------------------------------------------------ the zoo (slow)
#: timm modules whose models are ViT-like, and name patterns of ViT-like models registered elsewhere (vitamin)
_ZOO_MODULES = ("vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos",
                "vision_transformer_sam", "deit", "eva", "beit", "naflexvit")
_ZOO_PATTERNS = ("vit*", "deit*", "eva*", "beit*", "flexivit*", "samvit*", "naflexvit*")
#: size and resolution words: what is left of a name is its family (a d-prefix, differential attention, stays)
_SIZES = ("test", "tiny", "wee", "pwee", "xsmall", "small", "little", "medium", "mediumd", "betwixt", "base", "large",
          "large2", "xlarge", "huge", "giant", "giantopt", "gigantic", "enormous")
_SIZE_WORD = re.compile(r"^(\d+|" + "|".join(_SIZES) + r"|so\d+m\d?|\d+b)$")


def zoo_architectures() -> set[str]:
    """Every architecture of timm's ViT-like registry (the modules and name patterns above)."""
    return set().union(*(timm.list_models(module=m) for m in _ZOO_MODULES),
                       *(timm.list_models(p) for p in _ZOO_PATTERNS))


def zoo_families() -> dict[str, str]:
    """One architecture per family of timm's ViT-like registry: {family: architecture} (the smallest size word,
    then the shortest name, first)."""
    names = zoo_architectures()

    def cost(n: str):
        return (min((_SIZES.index(w) for w in n.split("_") if w in _SIZES), default=len(_SIZES)), len(n), n)

    fams: dict[str, str] = {}
    for n in sorted(names, key=cost):
        fams.setdefault("_".join(w for w in n.split("_") if not _SIZE_WORD.match(w)), n)
    return fams


def _zoo_model(arch: str):
    """timm's model of `arch` at depth 2 and a small width (16 channels a head) where its arguments allow."""
    with torch.device("meta"):
        meta = timm.create_model(arch, pretrained=False)
    heads = next((int(m.num_heads) for m in meta.modules() if hasattr(m, "num_heads")), None)
    tries = ([dict(depth=2, embed_dim=16 * heads)] if heads else []) + [dict(depth=2), {}]
    for kw in tries:
        try:
            torch.manual_seed(0)
            m = timm.create_model(arch, pretrained=False, num_classes=5, **kw).eval()
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.05 * torch.randn(p.shape))
            return m
        except Exception:  # noqa: BLE001 - an argument this architecture does not take: the next try
            continue
    return None


@pytest.mark.slow
def test_zoo_every_vit_family_verifies_or_is_refused_by_name(tmp_path):
    """One architecture per family of timm's ViT-like registry (depth 2, small width), saved as a timm hub
    directory and converted from it alone: each either gives timm's own output within the float32 bound, or is
    refused naming its reason (ConversionError / MissingFactsError). None imports wrong, none crashes. Prints the
    outcome table (~5 min on 2 cores)."""
    from shared.convert.timm import load_timm_file
    from shared.errors import ConversionError, InvalidFileError, MismatchError

    outcomes: dict[str, list[str]] = {}
    wrong, crashed = [], []
    for fam, arch in sorted(zoo_families().items()):
        m = _zoo_model(arch)
        if m is None:
            outcomes.setdefault("timm cannot build it at depth 2", []).append(arch)
            continue
        d = tmp_path / arch
        save_for_hf(m, str(d), safe_serialization=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConversionWarning)
                cfg, state = load_timm_file(d)
        except (ConversionError, MismatchError, InvalidFileError) as e:  # MissingFactsError is a ConversionError
            reason = str(e).split(": ", 1)[-1]
            key = reason.splitlines()[0].replace(f"timm's {arch} ", "timm's ARCH ")[:110]
            outcomes.setdefault(f"refused ({type(e).__name__}): {key}", []).append(arch)
            continue
        except Exception as e:  # noqa: BLE001 - the zoo's point: nothing may crash
            crashed.append(f"{arch}: {type(e).__name__}: {e}")
            continue
        pe = getattr(m, "patch_embed", None)  # a NaFlexVit has none: its config's input size
        h, w = (int(s) for s in (pe.img_size if pe is not None else m.pretrained_cfg["input_size"][1:]))
        x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
        err, bound = rel_l2(reference.forward(cfg, state, x)["logits"], _run(m, x)), fp32_bound(cfg, "logits")
        if err <= bound:
            outcomes.setdefault("verified against timm, no flag", []).append(arch)
        else:
            wrong.append(f"{arch}: rel L2 {err:.2e} > bound {bound:.1e}")
    print(f"\n{sum(map(len, outcomes.values())) + len(wrong) + len(crashed)} families")
    for k, v in sorted(outcomes.items(), key=lambda kv: -len(kv[1])):
        print(f"{len(v):4d}  {k}\n      {', '.join(v)}")
    assert not wrong and not crashed, "\n".join(["imported WRONG:", *wrong, "crashed:", *crashed])


@pytest.mark.slow
def test_zoo_every_registered_architecture_resolves_or_is_refused_by_name():
    """Every architecture of timm's ViT-like registry (not one per family: sizes differ, e.g. a post-norm
    `eva02_enormous` in a pre-norm family), built by timm on the meta device at depth 1 and read by the resolver:
    each resolves to a canonical config or is refused by name; none crashes. Prints the count that port, out of
    the registry's total (README's figure; the families' representatives are verified numerically by the zoo test
    above, ~2 min on 2 cores)."""
    from shared.convert.timm_resolve import resolve_timm_architecture
    from shared.errors import ConversionError

    names = sorted(zoo_architectures())
    resolved, refused, crashed = [], {}, []
    for arch in names:
        try:
            try:
                resolve_timm_architecture(arch, {"depth": 1})
            except ConversionError as e:
                if "cannot build" not in str(e):
                    raise
                resolve_timm_architecture(arch)  # an architecture whose constructor takes no depth: as registered
            resolved.append(arch)
        except ConversionError as e:
            refused.setdefault(str(e).split(": ", 1)[-1].replace(arch, "ARCH").splitlines()[0][:110], []).append(arch)
        except Exception as e:  # noqa: BLE001 - the point: nothing may crash
            crashed.append(f"{arch}: {type(e).__name__}: {e}")
    print(f"\n{len(resolved)} of {len(names)} registered architectures resolve; "
          f"{sum(map(len, refused.values()))} are refused by name")
    for k, v in sorted(refused.items(), key=lambda kv: -len(kv[1])):
        print(f"{len(v):4d}  {k}\n      {', '.join(v)}")
    assert not crashed, "\n".join(crashed)
