"""Peer oracles nobody here wrote: timm and Hugging Face transformers, against the float64 reference.

Each peer runs in float32, so its logits are judged with the suite's float32 bound
(shared.tolerances.fp32_bound): the peer's own rounding is all that may separate it from the
float64 reference once the weights are identical. A wrong q/k/v order, eps, GELU form, pooling
or resampling kernel is 1e-3 .. 1, far above it. Weights are random (no download anywhere):
the peers' own init, then perturbed so that every bias and norm parameter is non-trivial.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from shared import reference  # noqa: E402
from shared.convert import (export_hf, export_timm, import_hf, import_timm, save_hf_dir,  # noqa: E402
                            timm_model_kwargs)
from shared.init import init_weights, random_images  # noqa: E402
from shared.presets import get_preset  # noqa: E402
from shared.tolerances import fp32_bound, rel_l2  # noqa: E402

torch.set_num_threads(2)
VIT_TINY = "vit_tiny_patch16_224"


def _np_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


@torch.no_grad()
def _perturb(model, seed: int = 0, scale: float = 0.05):
    """Peer init leaves biases at 0 and norms at 1; shake every parameter so each one matters."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def _check(cfg, stage: str, actual, expected, what: str) -> float:
    err = rel_l2(np.asarray(actual, np.float64), expected)
    bound = fp32_bound(cfg, stage)
    assert err <= bound, f"{what}: {stage} rel L2 {err:.3e} > float32 bound {bound:.3e}"
    print(f"{what}: {stage} rel L2 {err:.2e} (bound {bound:.2e})")
    return err


def _timm_run(model, x: np.ndarray):
    with torch.no_grad():
        t = torch.from_numpy(x)
        feats = model.forward_features(t)
        return model.forward_head(feats).numpy(), feats.numpy()


# --------------------------------------------------------------------------------- timm
@pytest.fixture(scope="module")
def timm224():
    torch.manual_seed(0)
    return _perturb(timm.create_model(VIT_TINY, pretrained=False), seed=1)


def test_timm_vit_tiny_224(timm224):
    cfg, state = import_timm(_np_state(timm224), preset=VIT_TINY, source="timm vit_tiny")
    assert cfg == get_preset(VIT_TINY).replace(notes="")
    x = random_images(cfg, 2, seed=1)
    logits, feats = _timm_run(timm224, x)
    ref = reference.forward(cfg, state, x)
    _check(cfg, "norm", feats, ref["norm"], "timm 224 forward_features")
    _check(cfg, "logits", logits, ref["logits"], "timm 224")


def test_timm_vit_tiny_non_square_native():
    torch.manual_seed(1)
    model = _perturb(timm.create_model(VIT_TINY, pretrained=False, img_size=(160, 192)), seed=2)
    cfg, state = import_timm(_np_state(model), preset=VIT_TINY, image_size=(160, 192))
    assert cfg.grid == (10, 12) and cfg.pos_grid is None
    x = random_images(cfg, 2, seed=2)
    logits, feats = _timm_run(model, x)
    ref = reference.forward(cfg, state, x)
    _check(cfg, "norm", feats, ref["norm"], "timm 160x192")
    _check(cfg, "logits", logits, ref["logits"], "timm 160x192")


def test_timm_dynamic_img_size_matches_reference_resampling(timm224):
    """timm resamples its 14x14 table at run time (bicubic, antialias); the reference does the same from the config."""
    model = timm.create_model(VIT_TINY, pretrained=False, dynamic_img_size=True).eval()
    model.load_state_dict(timm224.state_dict())
    cfg, state = import_timm(_np_state(model), preset=VIT_TINY)
    x = random_images(cfg, 2, seed=3, image_size=(160, 192))
    logits, _ = _timm_run(model, x)
    _check(cfg, "logits", logits, reference.forward(cfg, state, x)["logits"], "timm dynamic 224->160x192")


def test_timm_resample_224_to_384_on_import(timm224):
    from timm.layers import resample_abs_pos_embed

    src = _np_state(timm224)
    cfg, state = import_timm(src, preset=VIT_TINY, image_size=(384, 384))
    assert cfg.grid == (24, 24)
    with torch.no_grad():
        theirs = resample_abs_pos_embed(torch.from_numpy(src["pos_embed"]), new_size=(24, 24), old_size=(14, 14),
                                        num_prefix_tokens=1).numpy()
    err = rel_l2(state["pos_embed"], theirs)
    print(f"pos_embed 14x14 -> 24x24 vs timm resample_abs_pos_embed: rel L2 {err:.2e}, "
          f"max abs {np.abs(state['pos_embed'] - theirs).max():.2e}")
    np.testing.assert_allclose(state["pos_embed"], theirs, rtol=1e-5, atol=1e-6)  # timm interpolates in float32
    model = timm.create_model(VIT_TINY, pretrained=False, img_size=384).eval()
    model.load_state_dict({**{k: torch.from_numpy(v) for k, v in src.items()}, "pos_embed": torch.from_numpy(theirs)})
    x = random_images(cfg, 1, seed=4)
    logits, _ = _timm_run(model, x)
    _check(cfg, "logits", logits, reference.forward(cfg, state, x)["logits"], "timm 384 (resampled at import)")


def _timm_export_cfgs():
    tiny = get_preset("tiny")
    return {
        "tiny": tiny,
        "meanpool_fcnorm_tanh_eps": tiny.replace(class_token="none", pool="mean", final_norm=False, fc_norm=True,
                                                 gelu="tanh", layer_norm_eps=1e-5, image_size=(24, 40), in_chans=1,
                                                 qkv_bias=False, mlp_dim=48),
        "table_grid_differs": tiny.replace(image_size=(48, 40), pos_grid=(4, 4), resize_kernel="bicubic_antialias",
                                           final_norm=False, fc_norm=True),
        "no_final_norm_no_pos": tiny.replace(final_norm=False, pos_embed="none", num_classes=3),
    }


@pytest.mark.parametrize("which", list(_timm_export_cfgs()))
def test_export_timm_loads_strict_and_matches(which):
    cfg = _timm_export_cfgs()[which]
    state = init_weights(cfg, seed=7)
    model = timm.create_model(VIT_TINY, pretrained=False, **timm_model_kwargs(cfg)).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in export_timm(cfg, state).items()}, strict=True)
    x = random_images(cfg, 2, seed=5)
    logits, _ = _timm_run(model, x)
    ref = reference.forward(cfg, state, x)
    _check(cfg, "logits", logits, ref["logits"], f"export_timm {which}")


# ----------------------------------------------------------------------------------- HF
def _hf_config(**kw):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                image_size=[32, 48], patch_size=4, num_channels=3, num_labels=10, layer_norm_eps=1e-12)
    base.update(kw)
    return transformers.ViTConfig(**base)


def _hf_logits(model, x):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x)).logits.numpy()


@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh"])
def test_hf_vit_for_image_classification(act):
    torch.manual_seed(0)
    model = _perturb(transformers.ViTForImageClassification(_hf_config(hidden_act=act)), seed=3)
    cfg, state = import_hf(_np_state(model), model.config.to_dict(), source="hf random")
    assert (cfg.image_size, cfg.patch_size, cfg.num_classes, cfg.layer_norm_eps) == ((32, 48), 4, 10, 1e-12)
    assert cfg.gelu == ("erf" if act == "gelu" else "tanh")
    x = random_images(cfg, 2, seed=6)
    ref = reference.forward(cfg, state, x)
    _check(cfg, "logits", _hf_logits(model, x), ref["logits"], f"HF ViTForImageClassification ({act})")


def test_hf_vit_model_pooler_is_pre_logits():
    torch.manual_seed(2)
    model = _perturb(transformers.ViTModel(_hf_config(pooler_output_size=48)), seed=4)
    cfg, state = import_hf(_np_state(model), model.config.to_dict())
    assert cfg.representation_size == 48 and cfg.num_classes == 0
    x = random_images(cfg, 2, seed=7)
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x))
    ref = reference.forward(cfg, state, x)
    _check(cfg, "norm", out.last_hidden_state.numpy(), ref["norm"], "HF ViTModel last_hidden_state")
    _check(cfg, "pre_logits", out.pooler_output.numpy(), ref["pre_logits"], "HF ViTModel pooler")


def _hf_export_cfgs():
    tiny = get_preset("tiny").replace(resize_kernel="bicubic")
    return {
        "cls_erf": tiny.replace(layer_norm_eps=1e-12),
        "cls_tanh_nonsquare_nobias": tiny.replace(gelu="tanh", image_size=(24, 40), qkv_bias=False, layer_norm_eps=1e-5),
        "features_pooler": tiny.replace(num_classes=0, representation_size=24),
    }


@pytest.mark.parametrize("which", list(_hf_export_cfgs()))
def test_export_hf_loads_strict_and_matches(which, tmp_path):
    cfg = _hf_export_cfgs()[which]
    state = init_weights(cfg, seed=8)
    hf_state, conf = export_hf(cfg, state, layout="module")
    cls = transformers.ViTForImageClassification if cfg.num_classes else transformers.ViTModel
    hf_cfg = transformers.ViTConfig(**conf)
    model = cls(hf_cfg).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in hf_state.items()}, strict=True)
    x = random_images(cfg, 2, seed=9)
    ref = reference.forward(cfg, state, x)
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x))
    if cfg.num_classes:
        _check(cfg, "logits", out.logits.numpy(), ref["logits"], f"export_hf {which}")
    else:
        _check(cfg, "pre_logits", out.pooler_output.numpy(), ref["pre_logits"], f"export_hf {which}")
    # the on-disk layout (save_pretrained names) through from_pretrained
    save_hf_dir(tmp_path / "m", cfg, state)
    loaded = cls.from_pretrained(str(tmp_path / "m")).eval()
    with torch.no_grad():
        out2 = loaded(pixel_values=torch.from_numpy(x))
    got = out2.logits if cfg.num_classes else out2.pooler_output
    _check(cfg, "logits" if cfg.num_classes else "pre_logits", got.numpy(),
           ref["logits" if cfg.num_classes else "pre_logits"], f"save_hf_dir+from_pretrained {which}")


def test_load_timm_file_torch_checkpoint(tmp_path, timm224):
    """A training checkpoint ({'state_dict': ..., 'epoch': n}, 'module.' keys) read with weights_only=True."""
    from shared.convert import load_timm_file
    from shared.weights import InvalidFileError

    sd = {"module." + k: v for k, v in timm224.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    cfg, state = load_timm_file(tmp_path / "ckpt.pth", preset=VIT_TINY)
    src = _np_state(timm224)
    assert sorted(state) == sorted(src) and all(np.array_equal(state[k], src[k]) for k in src)

    class Evil:  # a pickle that would run code: weights_only refuses it, and there is no fallback
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": sd, "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(InvalidFileError, match="weights_only"):
        load_timm_file(tmp_path / "evil.pth", preset=VIT_TINY)


# ---------------------------------------------------------------------- check --against / convert --verify
def _timm_file(tmp_path, suffix=".safetensors"):
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    with torch.no_grad():
        m.head.weight.normal_(0, 0.5)
    path = tmp_path / f"src{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    else:
        torch.save(m.state_dict(), path)
    return path


def test_convert_verify_proves_a_timm_import_against_timm(tmp_path, capsys):
    from shared.cli import main

    src = _timm_file(tmp_path)
    code = main(["convert", str(src), str(tmp_path / "c.safetensors"), "--preset", "vit_tiny_patch16_224",
                 "--verify", "--backends", "torch"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "against the source (timm" in out and "pass" in out


def test_convert_proves_an_import_by_default_and_no_verify_says_so(tmp_path, capsys):
    """No flag: timm's own output is compared with the float64 reference of the converted model before anything is
    written (issue 24); --no-verify skips it and says so. Both write the same tensors."""
    from shared import weights as W
    from shared.cli import main

    src = _timm_file(tmp_path)
    assert main(["convert", str(src), str(tmp_path / "a.safetensors"), "--preset", VIT_TINY]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "against the source (timm," in out and " pass timm's own output" in out and "relative L2" in out, out
    assert main(["convert", str(src), str(tmp_path / "b.safetensors"), "--preset", VIT_TINY, "--no-verify"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "not verified against the source: --no-verify" in out and "relative L2" not in out, out
    (_, a), (_, b) = W.load(tmp_path / "a.safetensors"), W.load(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_convert_writes_nothing_when_the_source_disagrees_or_cannot_run(tmp_path, capsys, monkeypatch):
    """The proof's verdicts decide convert's exit: the source library disagreeing is exit 5 and its last line names
    the library, the error and the bound; a library that cannot run the source is exit 8 (not proven), one line,
    never a numeric failure. Either way nothing is written. (timm's runner is wrapped: 1 % off its own output, then
    raising, so both verdicts are reached on a conversion that is itself right.)"""
    from shared.cli import main
    from shared.convert import sources
    from shared.errors import EXIT_OUT_OF_BOUNDS, EXIT_UNPROVEN

    src, dst = _timm_file(tmp_path), tmp_path / "c.safetensors"
    real = sources.RUNNERS["timm"]
    monkeypatch.setitem(sources.RUNNERS, "timm", lambda s, x, cfg: real(s, x, cfg) * np.float32(1.01))
    assert main(["convert", str(src), str(dst), "--preset", VIT_TINY]) == EXIT_OUT_OF_BOUNDS
    out = " ".join(capsys.readouterr().out.split())
    assert "FAIL: the source library (timm) disagrees with the converted file: relative L2 1.00e-02 against a " \
           "bound of" in out, out
    assert "first stage out of bound" not in out and not dst.exists()

    def cannot_run(s, x, cfg):
        raise RuntimeError("Error(s) in loading state_dict:\n\tUnexpected key(s) in state_dict: \"norm.bias\"")

    monkeypatch.setitem(sources.RUNNERS, "timm", cannot_run)
    assert main(["convert", str(src), str(dst), "--preset", VIT_TINY]) == EXIT_UNPROVEN
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert 'not proven: timm could not run' in flat and 'RuntimeError: Error(s) in loading state_dict: Unexpected ' \
           'key(s) in state_dict: "norm.bias"' in flat, out
    assert "FAIL" not in out and "NOT PROVEN" in out and not dst.exists()


def test_check_against_a_source_that_cannot_run_is_exit_8_not_a_failure(tmp_path, capsys):
    """A converted file that names vit_tiny (depth 12) checked against a depth-2 timm state dict: timm cannot load
    the source into the model the conversion describes. The child says why in one line; the exit is 8 (not
    proven), the last line says so, and no stage or backend is reported as failing."""
    import json

    from shared import weights as W
    from shared.cli import main
    from shared.convert.io import read_any
    from shared.errors import EXIT_UNPROVEN

    cfg, state = read_any(str(_timm_file(tmp_path)), preset=VIT_TINY)
    W.save(tmp_path / "w.safetensors", cfg, state)
    from safetensors.torch import save_file

    other = timm.create_model(VIT_TINY, pretrained=False, depth=2, num_classes=10)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    code = main(["check", str(tmp_path / "w.safetensors"), "--backends", "torch", "--against",
                 str(tmp_path / "other.safetensors"), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == EXIT_UNPROVEN, out
    a = json.loads((tmp_path / "r.json").read_text())["against"]
    assert a["status"] == "error" and "\n" not in a["message"] and a["message"].startswith("timm could not run")
    assert "Missing key(s)" in a["message"] and "blocks.2" in a["message"], a["message"]
    closing = [ln for ln in out.splitlines() if ln.startswith(("PASS", "FAIL", "NOT PROVEN"))]
    assert len(closing) == 1 and closing[0].startswith("NOT PROVEN: timm could not run the source"), out
    assert "FAIL" not in out


def test_check_against_fails_a_wrong_conversion_with_exit_5(tmp_path):
    """A conversion gone wrong (an attention scale of 1 where timm's architecture has 1/sqrt(head dim)) passes the
    plain check, whose reference shares the mistake, and fails against timm's own output."""
    import json

    from shared import weights as W
    from shared.cli import main
    from shared.convert.io import read_any

    src = _timm_file(tmp_path, ".pt")
    cfg, state = read_any(str(src), preset="vit_tiny_patch16_224")
    W.save(tmp_path / "wrong.safetensors", cfg.replace(qk_scale=1.0), state)
    assert main(["check", str(tmp_path / "wrong.safetensors"), "--backends", "torch"]) == 0
    code = main(["check", str(tmp_path / "wrong.safetensors"), "--backends", "torch", "--against", str(src),
                 "--json", str(tmp_path / "r.json"), "--report", str(tmp_path / "r.html")])
    assert code == 5
    a = json.loads((tmp_path / "r.json").read_text())["against"]
    assert a["status"] == "FAIL" and a["library"] == "timm" and a["rel_l2"] > 10 * a["bound"]
    assert "source: timm" in (tmp_path / "r.html").read_text()


def test_check_against_a_hf_directory_and_without_its_library(tmp_path, capsys, monkeypatch):
    from shared.cli import main
    from shared.convert import sources

    c = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64, num_labels=5)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(c).save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "c.safetensors")]) == 0
    capsys.readouterr()
    assert main(["check", str(tmp_path / "c.safetensors"), "--backends", "torch", "--against",
                 str(tmp_path / "hf")]) == 0
    assert "against the source (transformers" in capsys.readouterr().out
    # a missing library is said plainly, never claimed as a proof
    monkeypatch.setattr(sources, "library_available", lambda lib: False)
    assert main(["check", str(tmp_path / "c.safetensors"), "--backends", "torch", "--against",
                 str(tmp_path / "hf")]) == 0
    assert "not verified against the source" in capsys.readouterr().out
    # a canonical file has no source library: bad usage
    assert main(["check", str(tmp_path / "c.safetensors"), "--backends", "torch", "--against",
                 str(tmp_path / "c.safetensors")]) == 2
