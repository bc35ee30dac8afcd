"""Other ecosystems' ViT files, each proved against that library's own output (never against numbers this suite
computed): torchvision state dicts (torchvision's VisionTransformer is the oracle) and original-ViT .npz files
(timm's own `_load_weights` loading the same file is the oracle).

Bounds are the tolerance policy's (shared/tolerances.py): the float64 reference of the converted file is within
fp32_bound of the source library's float32 output; a float32 backend and the float32 source are each within
fp32_bound of the float64 truth, so within 2 * fp32_bound of each other (the policy's pairwise bound).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from shared import reference
from shared import weights as W
from shared.cli import main
from shared.convert.bigvision import bigvision_source_output, expected_npz_shapes
from shared.convert.formats import detect_format
from shared.convert.torchvision import BUILDERS, torchvision_source_output
from shared.config import ViTConfig
from shared.errors import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, ConversionWarning
from shared.presets import get_preset
from shared.tolerances import fp32_bound, rel_l2

import torchvision  # noqa: E402  (a test dependency: missing, these tests fail, they do not skip)
from torchvision.models.vision_transformer import VisionTransformer  # noqa: E402

# the "tiny" preset's sizes and numerics (heads 4, eps 1e-6, erf GELU, class token): --preset tiny supplies the heads
TV_KW = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (torchvision zero-initialises the head, which would make logits trivially equal),
    matrices scaled by 1/sqrt(fan-in) so that activations stay O(1) at any width, as in a trained model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and name not in ("class_token", "encoder.pos_embedding"):
                p.copy_(torch.randn(p.shape, generator=g) / float(np.prod(p.shape[1:])) ** 0.5)
            else:
                base = 1.0 if ("ln" in name and name.endswith("weight")) else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _tv_run(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module", params=[None, 24], ids=["plain", "pre_logits"])
def tv_file(request, tmp_path_factory):
    """A random torchvision ViT saved as torch.save(model.state_dict()), its canonical conversion, and its output."""
    rep = request.param
    d = tmp_path_factory.mktemp(f"tv{rep}")
    model = _randomize(VisionTransformer(**TV_KW, representation_size=rep))
    src, dst = d / "tv.pth", d / "tv.safetensors"
    torch.save(model.state_dict(), src)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert main(["convert", str(src), str(dst), "--preset", "tiny"]) == EXIT_OK
    if rep:  # the file's pre-logits layer wins over the preset, and says so
        assert any(issubclass(w.category, ConversionWarning) and "representation_size=24" in str(w.message)
                   for w in said)
    x = _images((3, 3, 32, 32))
    return dict(model=model, src=src, dst=dst, x=x, y=_tv_run(model, x), rep=rep)


# ------------------------------------------------------------------------------------------ torchvision
def test_torchvision_detected_from_content(tmp_path, tv_file):
    assert detect_format(tv_file["src"]) == "torchvision"
    disguised = tmp_path / "weights.bin"  # the extension says nothing
    disguised.write_bytes(tv_file["src"].read_bytes())
    assert detect_format(disguised) == "torchvision"
    legacy = tmp_path / "legacy.pth"  # the pre-1.6 (non-zip) torch.save format
    torch.save(tv_file["model"].state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert detect_format(legacy) == "torchvision"
    from safetensors.torch import save_file

    st = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in tv_file["model"].state_dict().items()}, st)
    assert detect_format(st) == "torchvision"
    # a non-torchvision torch.save stays "torch"
    other = tmp_path / "other.pt"
    torch.save({"patch_embed.proj.weight": torch.zeros(2, 3, 8, 8)}, other)
    assert detect_format(other) == "torch"
    for p in (disguised, legacy, st):
        assert main(["convert", str(p), str(tmp_path / f"{p.stem}.c.safetensors"), "--preset", "tiny"]) == EXIT_OK


def test_torchvision_reference_matches_torchvision(tv_file):
    cfg, state = W.load(tv_file["dst"])
    assert (cfg.num_heads, cfg.gelu, cfg.pool, cfg.layer_norm_eps) == (4, "erf", "token", 1e-6)
    assert cfg.representation_size == tv_file["rep"]
    ref = reference.forward(cfg, state, tv_file["x"])["logits"]
    assert rel_l2(tv_file["y"], ref) <= fp32_bound(cfg, "logits")


def test_torchvision_every_backend_matches_torchvision(tv_file, primary_backend):
    cfg, state = W.load(tv_file["dst"])
    got = primary_backend.forward(primary_backend.build(cfg, state), tv_file["x"])["logits"]
    assert rel_l2(got, tv_file["y"]) <= 2 * fp32_bound(cfg, "logits")


def test_torchvision_source_output_is_torchvision_itself(tv_file):
    """The proof-against-the-source function gives exactly what the torchvision model object gives."""
    got = torchvision_source_output(tv_file["src"], tv_file["x"], preset="tiny")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, tv_file["y"])


def test_torchvision_export_loads_strict_and_is_bit_exact(tmp_path, tv_file):
    back = tmp_path / "back.pth"
    assert main(["convert", str(tv_file["dst"]), str(back), "--to", "torchvision"]) == EXIT_OK
    loaded = torch.load(back, weights_only=True)
    fresh = VisionTransformer(**TV_KW, representation_size=tv_file["rep"])
    fresh.load_state_dict(loaded, strict=True)
    orig = tv_file["model"].state_dict()
    assert set(loaded) == set(orig)
    for k in orig:
        assert loaded[k].dtype == orig[k].dtype and torch.equal(loaded[k], orig[k]), k
    np.testing.assert_array_equal(_tv_run(fresh.eval(), tv_file["x"]), tv_file["y"])


def test_torchvision_legacy_mlp_names_read(tmp_path, tv_file):
    """torchvision < 0.14 named the MLP linear_1 / linear_2: the same weights, the same canonical state."""
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
           for k, v in tv_file["model"].state_dict().items()}
    assert any("linear_1" in k for k in old)
    src = tmp_path / "old.pth"
    torch.save(old, src)
    assert main(["convert", str(src), str(tmp_path / "old.safetensors"), "--preset", "tiny"]) == EXIT_OK
    _, a = W.load(tmp_path / "old.safetensors")
    _, b = W.load(tv_file["dst"])
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def b32_file(tmp_path_factory):
    """A real torchvision builder, random init (no download)."""
    torch.manual_seed(0)
    model = _randomize(torchvision.models.vit_b_32(weights=None), seed=1)
    src = tmp_path_factory.mktemp("b32") / "vit_b_32.pth"
    torch.save(model.state_dict(), src)
    return model, src


def test_torchvision_builder_imports_without_preset(tmp_path, b32_file):
    model, src = b32_file
    dst = tmp_path / "b32.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is guessed, nothing to say
        assert main(["convert", str(src), str(dst)]) == EXIT_OK
    cfg, state = W.load(dst)
    assert BUILDERS[(32, 768, 12, 3072)] == ("vit_b_32", 12)
    assert (cfg.name, cfg.num_heads, cfg.image_size, cfg.num_classes) == ("vit_b_32", 12, (224, 224), 1000)
    x = _images((1, 3, 224, 224), seed=2)
    ref = reference.forward(cfg, state, x)["logits"]
    assert rel_l2(_tv_run(model, x), ref) <= fp32_bound(cfg, "logits")


def test_torchvision_builder_resampling_needs_a_preset(tmp_path, b32_file, capsys):
    dst = tmp_path / "b32_256.safetensors"
    assert main(["convert", str(b32_file[1]), str(dst), "--image-size", "256x256"]) == EXIT_USAGE
    assert "--preset NAME" in capsys.readouterr().err and not dst.exists()


def test_torchvision_non_builder_without_preset_refused(tmp_path, tv_file, capsys):
    dst = tmp_path / "x.safetensors"
    assert main(["convert", str(tv_file["src"]), str(dst)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--preset NAME" in err and "heads" in err and "preset=" not in err
    assert not dst.exists()


def test_torchvision_non_square_table_needs_image_size(tmp_path, tv_file, capsys):
    sd = tv_file["model"].state_dict()
    sd["encoder.pos_embedding"] = torch.randn(1, 1 + 2 * 4, 32)  # a 2x4 grid: 16x32 images
    src, dst = tmp_path / "ns.pth", tmp_path / "ns.safetensors"
    torch.save(sd, src)
    assert main(["convert", str(src), str(dst), "--preset", "tiny"]) == EXIT_USAGE
    assert "--image-size HxW" in capsys.readouterr().err and not dst.exists()
    assert main(["convert", str(src), str(dst), "--preset", "tiny", "--image-size", "16x32"]) == EXIT_OK
    assert W.load(dst)[0].image_size == (16, 32)


def test_torchvision_mis_shaped_and_unknown_keys_named(tmp_path, tv_file, capsys):
    sd = dict(tv_file["model"].state_dict())
    key = "encoder.layers.encoder_layer_1.mlp.3.weight"
    sd[key] = torch.zeros(32, 65)
    src, dst = tmp_path / "bad.pth", tmp_path / "bad.safetensors"
    torch.save(sd, src)
    assert main(["convert", str(src), str(dst), "--preset", "tiny"]) == EXIT_MISMATCH
    err = capsys.readouterr().err
    assert key in err and "(32, 64)" in err and "(32, 65)" in err and not dst.exists()
    sd = dict(tv_file["model"].state_dict())
    del sd["encoder.ln.bias"]
    sd["encoder.extra"] = torch.zeros(3)
    torch.save(sd, src)
    assert main(["convert", str(src), str(dst), "--preset", "tiny"]) == EXIT_MISMATCH
    err = capsys.readouterr().err
    assert "encoder.extra" in err and not dst.exists()


@pytest.mark.parametrize("preset, what", [
    ("tiny_meanpool", ["in_chans=1", "pool='mean'", "gelu='tanh'", "layer_norm_eps=1e-05", "image_size (24, 40)"]),
    ("tiny_t2t", ["class_token='zeros'", "qkv_bias=False", "attn_value_skip", "pos_embed='sincos1d'"]),
    ("tiny_pretrain", ["resampled to the image grid", "output_softmax", "no final norm"]),
])
def test_torchvision_export_refuses_what_torchvision_cannot_express(tmp_path, preset, what, capsys):
    from shared.init import init_weights

    cfg = get_preset(preset)
    src, dst = tmp_path / "c.safetensors", tmp_path / "out.pth"
    W.save(src, cfg, init_weights(cfg))
    assert main(["convert", str(src), str(dst), "--to", "torchvision"]) == EXIT_MISMATCH
    err = capsys.readouterr().err
    for w in what:
        assert w in err, w
    assert not dst.exists() and not list(tmp_path.glob(".out.pth*"))


# ------------------------------------------------------------------------------------------ big_vision .npz
def _npz(path, cfg: ViTConfig, prefix: str = "", seed: int = 0, extra: dict | None = None):
    """Random arrays of the right shapes in the original-ViT layout, written with np.savez like the AugReg files."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for k, shape in expected_npz_shapes(cfg, prefix).items():
        v = 0.3 * rng.standard_normal(shape) if len(shape) > 1 else 0.1 * rng.standard_normal(shape)
        arrays[k] = (v + (1.0 if k.endswith("/scale") else 0.0)).astype(np.float32)
    arrays.update(extra or {})
    np.savez(path, **arrays)
    return arrays


NPZ_CFG = ViTConfig(name="npz", image_size=(32, 32), patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=64,
                    num_classes=10)


@pytest.fixture(scope="module", params=[("", None), ("opt/target/", 24)], ids=["plain", "opt_target_pre_logits"])
def npz_file(request, tmp_path_factory):
    prefix, rep = request.param
    d = tmp_path_factory.mktemp("npz")
    src = d / "vit.npz"
    _npz(src, NPZ_CFG.replace(representation_size=rep), prefix)
    return dict(src=src, rep=rep, dir=d)


@pytest.mark.parametrize("size", [None, (48, 40)], ids=["table_size", "resampled_48x40"])
def test_npz_matches_timm_load_weights(npz_file, size, tmp_path):
    assert detect_format(npz_file["src"]) == "bigvision"
    dst = tmp_path / "c.safetensors"
    args = ["convert", str(npz_file["src"]), str(dst)] + (["--image-size", f"{size[0]}x{size[1]}"] if size else [])
    assert main(args) == EXIT_OK
    cfg, state = W.load(dst)
    assert (cfg.num_heads, cfg.representation_size, cfg.resize_kernel) == (2, npz_file["rep"], "bilinear")
    assert cfg.image_size == (size or (32, 32))
    x = _images((2, 3, *cfg.image_size), seed=3)
    timm_y = bigvision_source_output(npz_file["src"], x, image_size=size)  # timm's _load_weights on the same file
    assert rel_l2(timm_y, reference.forward(cfg, state, x)["logits"]) <= fp32_bound(cfg, "logits")


def test_npz_every_backend_matches_timm(npz_file, primary_backend, tmp_path):
    dst = tmp_path / "c.safetensors"
    assert main(["convert", str(npz_file["src"]), str(dst)]) == EXIT_OK
    cfg, state = W.load(dst)
    x = _images((2, 3, 32, 32), seed=4)
    got = primary_backend.forward(primary_backend.build(cfg, state), x)["logits"]
    assert rel_l2(got, bigvision_source_output(npz_file["src"], x)) <= 2 * fp32_bound(cfg, "logits")


def test_npz_oracle_is_timm_itself(tmp_path):
    """Without pre-logits the oracle is nothing but timm: a timm model built and loaded here gives the same.
    (timm >= 0.9 does not read pre_logits/*; for such files the oracle applies Dense-tanh and the head itself.)"""
    from timm.models.vision_transformer import VisionTransformer as TimmViT, _load_weights

    src = tmp_path / "plain.npz"
    _npz(src, NPZ_CFG)
    m = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10).eval()
    _load_weights(m, str(src))
    x = _images((2, 3, 32, 32), seed=5)
    with torch.no_grad():
        np.testing.assert_array_equal(bigvision_source_output(src, x), m(torch.from_numpy(x)).numpy())


def test_npz_missing_and_mis_shaped_keys_named(tmp_path, capsys):
    src, dst = tmp_path / "bad.npz", tmp_path / "bad.safetensors"
    arrays = _npz(src, NPZ_CFG)
    bad_key = "Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"
    arrays[bad_key] = np.zeros((64, 33), np.float32)
    del arrays["Transformer/encoder_norm/bias"]
    np.savez(src, **arrays)
    assert main(["convert", str(src), str(dst)]) == EXIT_MISMATCH
    err = capsys.readouterr().err
    assert bad_key in err and "(64, 32)" in err and "(64, 33)" in err
    assert "missing key 'Transformer/encoder_norm/bias'" in err and not dst.exists()


def test_npz_unexpected_key_refused_and_optimizer_state_ignored(tmp_path, capsys):
    src, dst = tmp_path / "x.npz", tmp_path / "x.safetensors"
    _npz(src, NPZ_CFG, extra={"Transformer/encoderblock_0/LayerScale/gamma": np.ones(32, np.float32)})
    assert main(["convert", str(src), str(dst)]) == EXIT_MISMATCH
    assert "Transformer/encoderblock_0/LayerScale/gamma" in capsys.readouterr().err and not dst.exists()
    _npz(src, NPZ_CFG, prefix="opt/target/", extra={"opt/state/step": np.zeros((), np.float32)})
    with pytest.warns(ConversionWarning, match="opt/state/step"):
        assert main(["convert", str(src), str(dst)]) == EXIT_OK


def test_npz_big_vision_layout_refused_by_name(tmp_path, capsys):
    src, dst = tmp_path / "bv.npz", tmp_path / "bv.safetensors"
    np.savez(src, **{"params/embedding/kernel": np.zeros((8, 8, 3, 32), np.float32),
                     "params/pos_embedding": np.zeros((1, 16, 32), np.float32)})
    assert main(["convert", str(src), str(dst)]) == EXIT_MISMATCH
    assert "big_vision layout" in capsys.readouterr().err and not dst.exists()


def test_npz_pickled_object_array_refused(tmp_path):
    src = tmp_path / "evil.npz"
    np.savez(src, **{"embedding/kernel": np.array([object()], dtype=object)})
    assert main(["convert", str(src), str(tmp_path / "e.safetensors")]) == 3  # EXIT_INVALID_FILE, never unpickled


def test_npz_is_import_only(tmp_path, npz_file, capsys):
    c = tmp_path / "c.safetensors"
    assert main(["convert", str(npz_file["src"]), str(c)]) == EXIT_OK
    assert main(["convert", str(c), str(tmp_path / "o.npz"), "--to", "bigvision"]) == EXIT_USAGE
    assert "read only" in capsys.readouterr().err and not (tmp_path / "o.npz").exists()


# ---------------------------------------------------------------------- convert --verify against the source
@pytest.mark.parametrize("tv_file,npz_file", [(None, ("", None)), (24, ("opt/target/", 24))],
                         ids=["plain", "pre_logits"], indirect=True)  # each file kind once: not their cross product
def test_convert_verify_proves_torchvision_and_npz_imports_against_their_libraries(tmp_path, tv_file, npz_file,
                                                                                 capsys):
    import json

    from shared.cli import main

    assert main(["convert", str(tv_file["src"]), str(tmp_path / "tv.safetensors"), "--preset", "tiny",
                 "--verify", "--backends", "torch"]) == 0
    assert "against the source (torchvision" in " ".join(capsys.readouterr().out.split())
    assert main(["convert", str(npz_file["src"]), str(tmp_path / "npz.safetensors"), "--verify", "--backends",
                 "torch"]) == 0
    assert "against the source (timm" in " ".join(capsys.readouterr().out.split())
    # and check --against says how close: the reference of the converted file against timm reading the .npz
    assert main(["check", str(tmp_path / "npz.safetensors"), "--backends", "torch", "--against",
                 str(npz_file["src"]), "--json", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())["against"]
    assert a["status"] == "pass" and a["format"] == "bigvision" and 0 < a["rel_l2"] <= a["bound"]


def test_a_zero_output_proves_nothing_and_says_so(tmp_path, capsys):
    """torchvision initialises its head to zero: both outputs are 0, and equal 0s are no proof."""
    from shared.cli import main

    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                             hidden_dim=32, mlp_dim=64, num_classes=10)
    torch.save(m.state_dict(), tmp_path / "zero.pth")
    assert main(["convert", str(tmp_path / "zero.pth"), str(tmp_path / "z.safetensors"), "--preset", "tiny",
                 "--verify", "--backends", "torch"]) == 0
    assert "the comparison proves nothing" in " ".join(capsys.readouterr().out.split())
