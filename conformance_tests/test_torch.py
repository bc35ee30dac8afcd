"""Conformance of the PyTorch backend (vit_torch) with the float64 reference, under shared/tolerances.py.

Every numerical comparison uses the policy's bounds (tolerances.fp32_bound / judge); none are invented here.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import torch  # noqa: E402

from conformance_tests import helpers  # noqa: E402
from shared import reference, tolerances  # noqa: E402
from shared.backend import get_backend  # noqa: E402
from shared.posemb import resample_pos_embed  # noqa: E402
from shared.presets import get_preset  # noqa: E402
from shared.weights import InvalidFileError, MismatchError, expected_shapes  # noqa: E402
from shared.init import init_weights, random_images  # noqa: E402
from vit_torch.backend import TorchBackend  # noqa: E402
from vit_torch.model import VisionTransformer, build_model  # noqa: E402

BE = TorchBackend()
DTYPES = ["float32", *helpers.LOWP_DTYPES]
ATTN = ["fused", "explicit"]
FAST = helpers.TINY_PRESETS + helpers.SEED_FAST


def _forward(preset, dtype="float32", attn="fused", **case_kw):
    cfg, state, x = helpers.case(preset, **case_kw)
    model = BE.build(cfg, state, dtype=dtype, fused_attn=(attn == "fused"))
    return model, BE.forward(model, x)


def _within_fp32(cfg, a: dict, b: dict, factor: float = 1.0, what: str = ""):
    """Every stage of `a` within factor * the float32 policy bound of `b`."""
    for s in cfg.stage_names():
        err, bound = tolerances.rel_l2(a[s], b[s]), factor * tolerances.fp32_bound(cfg, s)
        assert err <= bound, f"{what} {s}: rel_l2 {err:.3e} > {bound:.3e}"


# ---------------------------------------------------------------- conformance
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", FAST)
def test_conforms(preset, dtype, attn):
    _, out = _forward(preset, dtype, attn)
    assert set(out) == set(get_preset(preset).stage_names())
    helpers.assert_conforms(preset, dtype, out)


@pytest.mark.parametrize("kind", ["zeros", "uniform", "large"])
@pytest.mark.parametrize("preset", helpers.TINY_PRESETS)
def test_conforms_input_kinds(preset, kind):
    # zeros inputs leave only biases after the patch projection: small-variance LayerNorm inputs
    # make a wrong layer_norm_eps (1e-5 vs 1e-6) visible, which O(1) normal inputs do not.
    _, out = _forward(preset, "float32", "fused", kind=kind)
    helpers.assert_conforms(preset, "float32", out, kind=kind)


@pytest.mark.slow
@pytest.mark.parametrize("preset", helpers.SEED_SLOW + helpers.SMALL_SLOW)
def test_conforms_slow(preset):
    _, out = _forward(preset, "float32", "fused")
    helpers.assert_conforms(preset, "float32", out)


# ------------------------------------------------------------------ attention
@pytest.mark.parametrize("preset", FAST)
def test_fused_and_explicit_agree(preset):
    cfg = get_preset(preset)
    _, fused = _forward(preset, "float32", "fused")
    _, explicit = _forward(preset, "float32", "explicit")
    _within_fp32(cfg, fused, explicit, factor=2.0, what=f"{preset} fused vs explicit")  # pairwise: bound_a + bound_b


@pytest.mark.parametrize("preset", FAST)
def test_attention_maps_equal_reference(preset):
    cfg, state, x = helpers.case(preset)
    ref = reference.forward(cfg, state, x, return_attn=True)
    model = BE.build(cfg, state, fused_attn=True)  # return_attn forces the explicit path
    with torch.inference_mode():
        out = model.forward_stages(torch.from_numpy(x), return_attn=True)
    for i in range(cfg.depth):
        a = out[f"attn_{i}"].float().numpy()
        assert a.shape == ref[f"attn_{i}"].shape == (x.shape[0], cfg.num_heads, cfg.num_tokens, cfg.num_tokens)
        err, bound = tolerances.rel_l2(a, ref[f"attn_{i}"]), tolerances.fp32_bound(cfg, f"block_{i}")
        assert err <= bound, f"attn_{i}: rel_l2 {err:.3e} > {bound:.3e}"
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- batch / size
@pytest.mark.parametrize("preset", helpers.TINY_PRESETS)
def test_batch_rows_independent(preset):
    cfg, state, _ = helpers.case(preset)
    x3 = random_images(cfg, batch=3, seed=5)
    model = BE.build(cfg, state)
    full, alone = BE.forward(model, x3), BE.forward(model, x3[:1])
    _within_fp32(cfg, {k: v[:1] for k, v in full.items()}, alone, what=f"{preset} row 0")


DYNAMIC = [("tiny", (40, 56)), ("tiny_pretrain", (40, 56)), ("tiny_pretrain", (24, 16)),
           ("tiny_meanpool", (40, 56)), ("tiny_t2t", (40, 60))]


@pytest.mark.parametrize("preset,size", DYNAMIC, ids=[f"{p}-{h}x{w}" for p, (h, w) in DYNAMIC])
def test_dynamic_image_size(preset, size):
    _, out = _forward(preset, "float32", "fused", image_size=size)
    cfg = get_preset(preset)
    n = size[0] // cfg.patch_size * (size[1] // cfg.patch_size) + cfg.num_prefix_tokens
    assert out["embed"].shape[1] == n
    helpers.assert_conforms(preset, "float32", out, image_size=size)  # reference resamples the table itself




@pytest.mark.parametrize("kernel", ["bicubic", "bicubic_antialias", "bilinear"])
@pytest.mark.parametrize("grid", [(5, 7), (3, 2), (4, 4), (9, 1)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_resampled_pos_table(kernel, grid):
    cfg = get_preset("tiny_pretrain").replace(resize_kernel=kernel)
    state = init_weights(cfg)
    model = build_model(cfg, state)
    with torch.no_grad():
        got = model.pos_table(grid).float().numpy()
    want = resample_pos_embed(state["pos_embed"].astype(np.float64), cfg.table_grid, grid,
                              cfg.num_prefix_tokens, kernel)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, float(np.abs(want).max())))
    np.testing.assert_array_equal(got[0, 0], state["pos_embed"][0, 0])  # prefix row untouched


# --------------------------------------------------------------- training mode
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("option", ["dropout", "attn_dropout", "drop_path"])
def test_training_randomness_only_in_train_mode(option, attn):
    cfg = get_preset("tiny").replace(**{option: 0.3}, depth=3)
    model = build_model(cfg, fused_attn=(attn == "fused"))
    x = torch.from_numpy(random_images(cfg, batch=4))
    with torch.no_grad():
        e1, e2 = model(x), model(x)
        torch.manual_seed(0)
        model.train()
        t1, t2 = model(x), model(x)
    assert torch.equal(e1, e2)
    assert not torch.allclose(t1, e1) and not torch.allclose(t1, t2)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), e1)


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("preset", helpers.TINY_PRESETS)
def test_gradients_reach_every_parameter(preset, attn):
    cfg, state, x = helpers.case(preset)
    model = build_model(cfg, state, fused_attn=(attn == "fused")).train()
    out = model(torch.from_numpy(x))
    w = torch.from_numpy(np.random.default_rng(0).standard_normal(out.shape).astype(np.float32))
    (out * w).sum().backward()  # random weights: a softmax output's plain sum has zero gradient
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient reaches {name}"


# ------------------------------------------------------------ weights and files
@pytest.mark.parametrize("preset", FAST)
def test_state_dict_is_canonical_and_export_bit_exact(preset):
    cfg, state, _ = helpers.case(preset)
    model = BE.build(cfg, state)
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(cfg)  # no buffers, no extras
    exported = BE.export(model)
    assert set(exported) == set(state)
    for k in state:
        assert exported[k].dtype == np.float32 and np.array_equal(exported[k], state[k]), k
    again = BE.export(BE.build(cfg, exported))
    assert all(np.array_equal(again[k], state[k]) for k in state)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
@pytest.mark.parametrize("preset", ["tiny", "tiny_t2t", "tiny_pretrain"])
def test_native_round_trip_bit_exact(preset, suffix, tmp_path):
    cfg, state, x = helpers.case(preset)
    model = BE.build(cfg, state)
    path = BE.save_native(model, tmp_path / f"w{suffix}")
    assert sorted(os.listdir(tmp_path)) == [f"w{suffix}"]  # atomic: no temporary left behind
    loaded = BE.load_native(path, cfg if suffix != ".safetensors" else None)
    assert loaded.config == cfg
    back = BE.export(loaded)
    assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)
    a, b = BE.forward(model, x), BE.forward(loaded, x)
    assert all(np.array_equal(a[s], b[s]) for s in cfg.stage_names())


def test_low_precision_native_round_trip(tmp_path):
    cfg, state, _ = helpers.case("tiny")
    model = BE.build(cfg, state, dtype="bfloat16")
    loaded = BE.load_native(BE.save_native(model, tmp_path / "w.safetensors"), dtype="bfloat16")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and v.dtype == v2.dtype == torch.bfloat16 and torch.equal(v, v2)


def _bad_states(cfg, state):
    missing = dict(state)
    del missing["blocks.1.mlp.fc2.bias"]
    extra = dict(state, **{"blocks.0.attn.bogus": np.zeros(3, np.float32)})
    shape = dict(state, **{"blocks.0.attn.qkv.weight": state["blocks.0.attn.qkv.weight"][:-1]})
    return [("missing", missing, "blocks.1.mlp.fc2.bias"), ("extra", extra, "blocks.0.attn.bogus"),
            ("shape", shape, "blocks.0.attn.qkv.weight")]


@pytest.mark.parametrize("kind", ["missing", "extra", "shape"])
def test_bad_canonical_state_rejected(kind):
    cfg, state, _ = helpers.case("tiny")
    _, bad, key = next(b for b in _bad_states(cfg, state) if b[0] == kind)
    with pytest.raises(MismatchError, match=key.replace(".", r"\.")):
        BE.build(cfg, bad)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("kind", ["missing", "extra", "shape", "dtype"])
def test_bad_native_file_rejected(kind, suffix, tmp_path):
    cfg, state, _ = helpers.case("tiny")
    if kind == "dtype":
        bad, key = dict(state, **{"head.bias": state["head.bias"].astype(np.float64)}), "head.bias"
    else:
        _, bad, key = next(b for b in _bad_states(cfg, state) if b[0] == kind)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bad.items()}
    path = tmp_path / f"bad{suffix}"
    if suffix == ".pt":
        torch.save(tensors, path)
    else:
        from safetensors.torch import save_file
        save_file(tensors, str(path), metadata={"vit_config": cfg.to_json()})
    with pytest.raises(MismatchError) as ei:
        BE.load_native(path, cfg)
    msg = str(ei.value)
    assert key in msg and str(path) in msg
    if kind == "dtype":
        assert "float64" in msg and "float32" in msg


class _Evil:
    """Unpickling this runs a shell command: the loader must refuse it without running it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_with_code_refused(writer, tmp_path):
    cfg, state, _ = helpers.case("tiny")
    marker = tmp_path / "pwned.txt"
    payload = {k: torch.from_numpy(v) for k, v in state.items()}
    payload["head.bias"] = _Evil(marker)
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(InvalidFileError) as ei:
        BE.load_native(path, cfg)
    assert str(path) in str(ei.value) and "refused" in str(ei.value)
    assert not marker.exists(), "the pickle's code ran"


def test_garbage_files_refused(tmp_path):
    cfg = get_preset("tiny")
    for name, data in [("junk.pt", b"not a zip or pickle"), ("junk.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}")]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(InvalidFileError, match=name):
            BE.load_native(p, cfg)
    with pytest.raises(InvalidFileError, match="suffix"):
        BE.save_native(BE.build(cfg), tmp_path / "w.bin")
    assert not (tmp_path / "w.bin").exists()


def test_backend_registry_and_model_api():
    be = get_backend("torch")
    assert isinstance(be, TorchBackend) and be.dtypes == ("float32", "bfloat16", "float16")
    cfg, state, x = helpers.case("tiny_pretrain")
    model = be.build(cfg, state)
    assert isinstance(model, VisionTransformer) and model.config == cfg and not model.training
    xt = torch.from_numpy(x)
    with torch.no_grad():
        stages = model.forward_stages(xt)
        assert torch.equal(model(xt), stages["logits"])
        assert torch.equal(model.forward_features(xt), stages["norm"])
        assert torch.equal(model.forward_head(stages["norm"], pre_logits=True), stages["pre_logits"])
    zeros = build_model(get_preset("tiny_t2t"))
    assert "cls_token" not in zeros.state_dict() and "pos_embed" not in zeros.state_dict()
