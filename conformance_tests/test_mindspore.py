"""What only the MindSpore backend (vit_mindspore) has: its hand-written numerics (erf and quick GELU, the two
softmaxes), canonical parameter names (LayerScale gammas, prefix tokens, the attention pool and the distillation
head included), the position-table cell (zero rows for unpositioned prefix tokens), the .ckpt file and its
integrity checks, the distilled model's two-head training loss, its gradients on the family presets against finite
differences of the float64 reference, bfloat16 refusal and the import-order guard. Its conformance in every preset, dtype and mode is the backend matrix
(test_conformance.py: `mindspore`, `mindspore-pynative`, `mindspore-expm1`; gradients: test_grad.py).

Every numerical comparison of model outputs uses the policy (shared.testing.assert_conforms /
tolerances.fp32_bound); none are invented here.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms  # noqa: E402

from shared import reference, testing as helpers, tolerances  # noqa: E402
from shared import weights as W  # noqa: E402
from shared.cli import main  # noqa: E402
from shared.errors import BackendError, InvalidFileError, MismatchError  # noqa: E402
from shared.init import init_weights, random_images  # noqa: E402
from shared.posemb import position_table  # noqa: E402
from shared.presets import get_preset  # noqa: E402
from shared.training import data as D, grad as G, recipe as T  # noqa: E402
from vit_mindspore import convert  # noqa: E402
from vit_mindspore.backend import MindSporeBackend  # noqa: E402
from vit_mindspore.layers import GELU, Softmax, gelu_erf  # noqa: E402
from vit_mindspore.model import StageNet  # noqa: E402

MODES = ["pynative", "graph"]
BACKENDS = {m: MindSporeBackend(mode=m) for m in MODES}
DTYPES = list(MindSporeBackend.dtypes)  # float32, float16 (bfloat16 has no CPU kernels: see test below)
U32 = tolerances.UNIT_ROUNDOFF["float32"]

_models: dict = {}


def _model(preset, dtype="float32"):
    key = (preset, dtype)
    if key not in _models:
        cfg, state, _ = helpers.case(preset)
        _models[key] = BACKENDS["graph"].build(cfg, state, dtype=dtype)
    return _models[key]


# ---------------------------------------------------------------- dtypes and modes
def test_bfloat16_refused_clearly():
    assert "bfloat16" not in MindSporeBackend.dtypes
    cfg, state, _ = helpers.case("tiny")
    with pytest.raises(BackendError, match=r"bfloat16.*MatMul"):
        BACKENDS["graph"].build(cfg, state, dtype="bfloat16")


def test_unknown_mode_refused():
    with pytest.raises(BackendError, match="mode"):
        MindSporeBackend(mode="eager")


# ------------------------------------------------------------------ numerics
@pytest.mark.parametrize("mode", MODES)
def test_erf_gelu_is_exact(mode):
    """erf GELU vs scipy's erf in float64: within a few float32 roundings (tanh's approximation is ~1e3x off)."""
    from scipy.special import erf

    x = np.linspace(-10, 10, 40001).astype(np.float32)
    x64 = x.astype(np.float64)
    exact = 0.5 * x64 * (1.0 + erf(x64 / np.sqrt(2.0)))
    tanh = 0.5 * x64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    cell = GELU("erf")
    fn = ms.jit(cell) if mode == "graph" else cell
    y = fn(ms.Tensor(x)).asnumpy().astype(np.float64)
    scale = U32 * np.maximum(1.0, np.abs(x64))  # one float32 rounding at the input's scale
    assert np.all(np.abs(y - exact) <= 4 * scale), f"worst {np.max(np.abs(y - exact) / scale):.2f} roundings"
    assert np.max(np.abs(tanh - exact) / scale) > 1000  # the check above would catch a tanh fallback
    y2 = gelu_erf(ms.Tensor(x)).asnumpy()
    np.testing.assert_array_equal(y2, y.astype(np.float32))


#: Allowance for MindSpore's CPU Sigmoid kernel (its Exp): up to 13 float32 ulps absolute, measured.
SIGMOID_ULPS = 16


def test_sigmoid_kernel_error_is_what_quick_gelu_allows():
    z = np.linspace(-20, 20, 80001).astype(np.float32)
    s = ms.ops.sigmoid(ms.Tensor(z)).asnumpy().astype(np.float64)
    exact = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    assert np.max(np.abs(s - exact)) <= SIGMOID_ULPS * U32
    big = exact > 1e-3  # relative accuracy where the value is not tiny: the kernel's ~40 ulps
    assert np.max(np.abs(s - exact)[big] / exact[big]) <= 4 * SIGMOID_ULPS * U32


@pytest.mark.parametrize("mode", MODES)
def test_quick_gelu_is_x_sigmoid_1702x(mode):
    """QuickGELU (CLIP) vs x * sigmoid(1.702 x) in float64: |x| times the sigmoid's error plus a few float32
    roundings, at the input's scale; erf GELU is far off."""
    x = np.linspace(-12, 12, 48001).astype(np.float32)
    x64 = x.astype(np.float64)
    exact = x64 / (1.0 + np.exp(-1.702 * x64))
    erf_gelu = GELU("erf")(ms.Tensor(x)).asnumpy().astype(np.float64)
    cell = GELU("quick")
    fn = ms.jit(cell) if mode == "graph" else cell
    y = fn(ms.Tensor(x)).asnumpy().astype(np.float64)
    scale = U32 * np.maximum(1.0, np.abs(x64))
    worst = np.max(np.abs(y - exact) / scale)
    assert worst <= 4 + SIGMOID_ULPS, f"worst {worst:.2f} roundings"
    assert np.max(np.abs(erf_gelu - exact) / scale) > 1000  # the check above tells the two apart


def test_quick_gelu_float16_computes_in_float32():
    x = np.linspace(-8, 8, 2001).astype(np.float16)
    y = GELU("quick", ms.float16)(ms.Tensor(x)).asnumpy()
    x64 = x.astype(np.float64)
    exact = (x64 / (1.0 + np.exp(-1.702 * x64))).astype(np.float16)
    assert y.dtype == np.float16
    # computed in float32 (error as the float32 test allows), then rounded once to float16
    tol = np.spacing(np.abs(exact)).astype(np.float64) + (4 + SIGMOID_ULPS) * U32 * np.maximum(1.0, np.abs(x64))
    assert np.all(np.abs(y.astype(np.float64) - exact) <= tol)


def test_unknown_gelu_kind_refused():
    with pytest.raises(ValueError, match="quick"):
        GELU("sigmoid")


def test_erf_gelu_float16_computes_in_float32():
    from scipy.special import erf

    x = np.linspace(-6, 6, 2001).astype(np.float16)
    y = GELU("erf", ms.float16)(ms.Tensor(x)).asnumpy()
    x64 = x.astype(np.float64)
    exact = (0.5 * x64 * (1.0 + erf(x64 / np.sqrt(2.0)))).astype(np.float16)
    assert y.dtype == np.float16
    # computed in float32 (error <= 4 float32 roundings at the input's scale), then rounded once to float16
    tol = np.spacing(np.abs(exact)).astype(np.float64) + 4 * U32 * np.maximum(1.0, np.abs(x64))
    assert np.all(np.abs(y.astype(np.float64) - exact) <= tol)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_softmax_is_max_subtracted(mode, fused):
    s = np.array([[1e4, 1e4 - 1.0, -1e4], [0.0, 1.0, 2.0]], np.float32)
    cell = Softmax(fused=fused)
    fn = ms.jit(cell) if mode == "graph" else cell
    y = fn(ms.Tensor(s)).asnumpy()
    e = np.exp(s.astype(np.float64) - s.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True)
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y - ref)) <= (4 if not fused else 4 + 2 * EXP_ULPS) * U32


#: Allowance for MindSpore's CPU Exp kernel (inside the fused Softmax): up to 166 float32 ulps off, measured.
EXP_ULPS = 256


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("sd", [0.5, 3.0, 10.0])
def test_softmax_paths_are_float32_accurate(sd, fused):
    """Attention-shaped scores (rows of 197) vs float64: |p - p64| <= (T + 2 EXP_ULPS + 4) u.

    A row sum of T terms rounds by at most T u relative (naive summation bound), the exps by EXP_ULPS u
    (fused, relative) or 2u absolute (expm1 + 1), the division by u. Both paths' worst case is ~1e-6,
    their RMS ~1e-8 (measured); the RMS check allows a few roundings per element.
    """
    rng = np.random.default_rng(int(sd * 10))
    s = (rng.standard_normal((4, 12, 197, 197)) * sd).astype(np.float32)
    s64 = s.astype(np.float64)
    e = np.exp(s64 - s64.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True)
    y = ms.jit(Softmax(fused=fused))(ms.Tensor(s)).asnumpy().astype(np.float64)
    bound = (197 + 2 * EXP_ULPS + 4) * U32
    err = np.max(np.abs(y - ref))
    assert err <= bound, f"max abs error {err:.3e} > {bound:.3e}"
    assert np.sqrt(np.mean((y - ref) ** 2)) <= 16 * U32 / np.sqrt(197)  # typical error: a few roundings per row


@pytest.mark.parametrize("preset", ["tiny", "tiny_pretrain", *helpers.FAMILY_TINY])
def test_parameter_names_are_canonical(preset):
    model = _model(preset)
    names = [p.name for p in model.get_parameters()]
    assert sorted(names) == sorted(W.expected_shapes(model.config))
    for p in model.get_parameters():
        assert tuple(p.shape) == W.expected_shapes(model.config)[p.name]


def test_family_options_own_their_canonical_parameters():
    """The options' parameters sit where the canonical keys say (a misnamed cell would fail the build)."""
    want = {"tiny_deit": ["dist_token", "head_dist.weight", "head_dist.bias"],
            "tiny_deit3": ["blocks.0.ls1.gamma", "blocks.1.ls2.gamma"],
            "tiny_dinov2_reg": ["reg_token", "blocks.1.attn.q_norm.weight", "blocks.0.attn.k_norm.bias"],
            "tiny_clip": ["norm_pre.weight", "norm_pre.bias"],
            "tiny_siglip": ["attn_pool.latent", "attn_pool.kv.weight", "attn_pool.mlp.fc2.bias", "attn_pool.norm.weight"]}
    for preset, keys in want.items():
        names = {p.name for p in _model(preset).get_parameters()}
        missing = [k for k in keys if k not in names]
        assert not missing, f"{preset}: no parameters {missing}"
    assert "patch_embed.proj.bias" not in {p.name for p in _model("tiny_clip").get_parameters()}  # CLIP: no bias
    assert "cls_token" not in {p.name for p in _model("tiny_siglip").get_parameters()}


def test_fixed_tables_and_zero_token_are_not_parameters():
    for preset in ["tiny_meanpool", "tiny_t2t", "seed_t2t_walkthrough"]:
        names = {p.name for p in _model(preset).get_parameters()}
        assert "pos_embed" not in names and "cls_token" not in names


def test_weights_loaded_into_a_compiled_model_reach_its_graph():
    """load_weights writes each parameter's own storage: the graph compiled before reads the new weights (with
    set_data it kept reading the old ones), and computes what a fresh build of them computes, bit for bit."""
    cfg, state, x = helpers.case("tiny")
    other = init_weights(cfg, 4)
    be = BACKENDS["graph"]
    model = be.build(cfg, state)
    before = be.forward(model, x)
    be.load_weights(model, other)
    after, fresh = be.forward(model, x), be.forward(be.build(cfg, other), x)
    assert not np.array_equal(after["logits"], before["logits"])
    for s in fresh:
        np.testing.assert_array_equal(after[s], fresh[s], err_msg=s)


def test_blocks_share_one_compiled_graph_only_when_every_argument_is_equal(monkeypatch):
    """SharedBlock: blocks without a random op and with equal arguments are compiled from one graph, and the model
    computes what the same model of plain Blocks computes, bit for bit; a block whose arguments differ (tiny_t2t's
    first block reads the narrower token width) gets a graph of its own; a block with a random op is a plain Block."""
    from vit_mindspore.layers import Block, SharedBlock

    assert len({blk.cell_init_args for blk in _model("seed_t2t_walkthrough").blocks}) == 1  # 12 equal blocks
    t2t = _model("tiny_t2t").blocks
    assert all(type(blk) is SharedBlock for blk in t2t) and t2t[0].cell_init_args != t2t[1].cell_init_args

    cfg, state, x = helpers.case("tiny")
    be = BACKENDS["graph"]
    shared = be.forward(be.build(cfg, state), x)
    monkeypatch.setattr(SharedBlock, "applies", staticmethod(lambda args: False))
    plain_model = be.build(cfg, state)
    assert all(type(blk) is Block for blk in plain_model.blocks)
    plain = be.forward(plain_model, x)
    for s in plain:
        np.testing.assert_array_equal(shared[s], plain[s], err_msg=s)

    monkeypatch.undo()
    for rates in (dict(drop_path=0.1), dict(dropout=0.1), dict(attn_dropout=0.1)):
        kinds = [type(blk) for blk in be.build(dataclasses.replace(cfg, **rates), state).blocks]
        # stochastic depth rises linearly from 0: the first block has no random op
        assert kinds == ([SharedBlock, Block] if "drop_path" in rates else [Block, Block]), rates


# ---------------------------------------------------------- position resampling
def test_with_image_size_model_matches_dynamic_forward():
    preset, size = "tiny_pretrain", (40, 56)
    cfg, state, x = helpers.case(preset, image_size=size)
    be = BACKENDS["pynative"]
    resized = be.build(cfg.with_image_size(size), state)
    a, b = be.forward(resized, x), be.forward(_model(preset), x)
    for s in cfg.stage_names():
        assert tolerances.rel_l2(a[s], b[s]) <= 2 * tolerances.fp32_bound(cfg, s), s


@pytest.mark.parametrize("preset", ["tiny_deit3", "tiny_dinov2_reg", "tiny_deit"])
def test_pos_table_has_zero_rows_for_unpositioned_prefix_tokens(preset):
    """model.pos_table is shared.posemb.position_table (resampled, zero rows inserted), at the own grid and others."""
    cfg, state, _ = helpers.case(preset)
    model = _model(preset)
    n_pos, n0 = cfg.num_pos_prefix, cfg.num_prefix_tokens
    for grid in [cfg.grid, (5, 7), (3, 2)]:
        got = model.pos_table(grid).asnumpy()[0]
        want = position_table(cfg, state, grid)
        assert got.shape == want.shape == (n0 + grid[0] * grid[1], cfg.embed_dim), (grid, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, float(np.abs(want).max())))
        np.testing.assert_array_equal(got[:n_pos], state["pos_embed"][0, :n_pos])  # positioned prefix rows kept
        assert not np.any(got[n_pos:n0]), f"{preset}: prefix rows {n_pos}..{n0 - 1} must be zero"


@pytest.mark.parametrize("preset,size", [("tiny_deit3", (40, 56)), ("tiny_dinov2_reg", (35, 21)),
                                         ("tiny_siglip", (16, 56))])
def test_family_models_at_another_image_size(preset, size):
    """Prefix tokens without positions (and the MAP pool over other patches) at a resampled grid, both modes."""
    cfg, state, x = helpers.case(preset, image_size=size)
    for mode in MODES:
        out = BACKENDS[mode].forward(_model(preset), x)
        assert out["embed"].shape[1] == cfg.with_image_size(size).num_tokens
        helpers.assert_conforms(preset, "float32", out, image_size=size)


def test_training_mode_with_dropout_differs_from_inference():
    cfg, state, x = helpers.case("tiny")
    cfg = cfg.replace(dropout=0.1, attn_dropout=0.1, drop_path=0.1)
    be = BACKENDS["pynative"]
    model = be.build(cfg, state)
    infer1, infer2 = be.forward(model, x)["logits"], be.forward(model, x)["logits"]
    np.testing.assert_array_equal(infer1, infer2)  # inference: no randomness
    ref = reference.forward(cfg, state, x)["logits"]
    assert tolerances.rel_l2(infer1, ref) <= tolerances.fp32_bound(cfg, "logits")  # dropout off at inference
    model.set_train(True)
    train = StageNet(model)(ms.Tensor(x))[-1].asnumpy()
    assert tolerances.rel_l2(train, ref) > 1e-3
    np.testing.assert_array_equal(be.forward(model, x)["logits"], infer1)  # forward: inference mode, always
    assert model.training  # and the caller's mode is restored
    model.set_train(False)


# ------------------------------------------------------------------ files
def test_canonical_ckpt_canonical_is_bit_exact(tmp_path):
    cfg, state, _ = helpers.case("tiny_pretrain")
    st = W.save(tmp_path / "a.safetensors", cfg, state)
    ck = convert.save_ckpt(*W.load(st), tmp_path / "a.ckpt")
    assert ck == tmp_path / "a.ckpt" and ck.is_file()
    back = W.save(tmp_path / "b.safetensors", *convert.load_ckpt(ck))
    cfg2, state2 = W.load(back)
    assert cfg2 == cfg and sorted(state2) == sorted(state)
    for k in state:
        assert state2[k].dtype == np.float32 and state2[k].tobytes() == state[k].tobytes(), k
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt", "a.safetensors", "b.safetensors"]  # no temp files left


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_and_load_native(tmp_path, dtype):
    be = BACKENDS["pynative"]
    cfg, state, x = helpers.case("tiny")
    model = be.build(cfg, state)
    path = be.save_native(model, tmp_path / "m")  # no suffix: written exactly where asked
    assert path == tmp_path / "m" and os.listdir(tmp_path) == ["m"]
    loaded = be.load_native(path, dtype=dtype)  # config from the file
    assert loaded.config == cfg
    if dtype == "float32":
        exported = be.export(loaded)
        assert all(exported[k].tobytes() == state[k].tobytes() for k in state)
    helpers.assert_conforms("tiny", dtype, be.forward(loaded, x))


@pytest.mark.parametrize("preset", helpers.FAMILY_TINY)
def test_family_ckpt_round_trip_is_bit_exact(tmp_path, preset):
    """LayerScale gammas, prefix tokens, the MAP head and head_dist through the native .ckpt and back."""
    be = BACKENDS["graph"]
    cfg, state, x = helpers.case(preset)
    path = be.save_native(be.build(cfg, state), tmp_path / f"{preset}.ckpt")
    loaded = be.load_native(path)
    assert loaded.config == cfg
    back = be.export(loaded)
    assert sorted(back) == sorted(state)
    for k in state:
        assert back[k].dtype == np.float32 and back[k].tobytes() == state[k].tobytes(), k
    helpers.assert_conforms(preset, "float32", be.forward(loaded, x))


def _bad_state(kind):
    cfg, state, _ = helpers.case("tiny")
    st = dict(state)
    if kind == "missing":
        del st["blocks.1.mlp.fc2.bias"]
        return cfg, st, "blocks.1.mlp.fc2.bias"
    if kind == "extra":
        st["blocks.2.norm1.weight"] = np.ones(cfg.embed_dim, np.float32)
        return cfg, st, "blocks.2.norm1.weight"
    if kind == "shape":
        st["blocks.0.attn.qkv.weight"] = np.ascontiguousarray(state["blocks.0.attn.qkv.weight"].T)
        return cfg, st, "blocks.0.attn.qkv.weight"
    if kind == "dtype":
        st["head.weight"] = state["head.weight"].astype(np.float16)
        return cfg, st, "head.weight"
    raise ValueError(kind)


def test_frameworkless_ckpt_is_mindspores_own(tmp_path, monkeypatch):
    """shared.ms_ckpt (the backend's .ckpt, and what `convert` writes and reads, without MindSpore) against
    MindSpore itself: `mindspore.save_checkpoint` writes the same bytes (the suite's file with its string records;
    scalars, integer and float16 tensors; a tensor saved in slices), `mindspore.load_checkpoint` reads the
    frameworkless files to the same tensors and records, and the frameworkless reader reads MindSpore's files. The
    suite's file for a classic model, an Eva one (separate q/k/v, fc1_g/fc1_x, RoPE-Mixed's 4-D rope.freqs, RMSNorm
    gammas, the Eva options in vit_config) and BEiT's (relative position tables)."""
    from mindspore.train import serialization

    from shared import ms_ckpt

    for preset in ("tiny_deit3", "tiny_eva02", "tiny_rope_mixed", "tiny_beit"):
        cfg, state, _ = helpers.case(preset)
        nf = ms_ckpt.save_suite_ckpt(cfg, state, tmp_path / f"nf_{preset}.ckpt")
        arrays = [(k, np.ascontiguousarray(state[k])) for k in W.expected_shapes(cfg)]
        records = {ms_ckpt.FORMAT_KEY: f"{W.FORMAT_NAME}/{W.FORMAT_VERSION}", ms_ckpt.CONFIG_KEY: cfg.to_json(),
                   ms_ckpt.DIGEST_KEY: ms_ckpt.digest(arrays)}
        fw = tmp_path / f"fw_{preset}.ckpt"
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(a)} for k, a in arrays], str(fw), append_dict=dict(records))
        assert nf.read_bytes() == fw.read_bytes(), preset
        loaded = ms.load_checkpoint(str(nf))
        assert list(loaded) == [k for k, _ in arrays] + list(records)
        assert all(loaded[k] == v for k, v in records.items())
        assert all(np.array_equal(loaded[k].asnumpy(), a) and loaded[k].asnumpy().dtype == a.dtype for k, a in arrays)
        back_cfg, back = ms_ckpt.load_suite_ckpt(fw)
        assert back_cfg == cfg and list(back) == [k for k, _ in arrays]
        assert all(np.array_equal(back[k], a) for k, a in arrays)
    # other dtypes, a scalar, a string with non-ASCII text, and slicing (SLICE_SIZE made small on both sides)
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)  # KiB
    monkeypatch.setattr(ms_ckpt, "SLICE_BYTES", 1024)
    odd = {"scalar": np.array(3.5, np.float32), "ints": np.arange(6, dtype=np.int32).reshape(2, 3),
           "half": np.linspace(-2, 2, 5).astype(np.float16), "long": np.arange(700, dtype=np.float64).reshape(7, 100)}
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in odd.items()], str(tmp_path / "fw2.ckpt"),
                       append_dict={"text": "größe ∞"})
    nf2 = ms_ckpt.write_ckpt(tmp_path / "nf2.ckpt", [*odd.items(), ("text", "größe ∞")])
    assert nf2.read_bytes() == (tmp_path / "fw2.ckpt").read_bytes()
    tensors, strings = ms_ckpt.read_ckpt_file(tmp_path / "fw2.ckpt")
    assert strings == {"text": "größe ∞"} and list(tensors) == list(odd)
    assert all(np.array_equal(tensors[k], v) and tensors[k].dtype == v.dtype and tensors[k].shape == v.shape
               for k, v in odd.items())


@pytest.mark.parametrize("kind", ["missing", "extra", "shape", "dtype"])
def test_mismatched_ckpt_fails_naming_the_parameter(tmp_path, kind):
    cfg, st, key = _bad_state(kind)
    path = convert.save_ckpt(cfg, st, tmp_path / f"{kind}.ckpt", validate=False)
    for load in (lambda: BACKENDS["graph"].load_native(path, cfg), lambda: BACKENDS["graph"].load_native(path)):
        with pytest.raises(MismatchError) as ei:
            load()
        assert key in str(ei.value) and str(path) in str(ei.value)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == MismatchError.exit_code
    assert not (tmp_path / "out.safetensors").exists()


def test_ckpt_for_another_config_is_refused(tmp_path):
    cfg, state, _ = helpers.case("tiny")
    path = convert.save_ckpt(cfg, state, tmp_path / "tiny.ckpt")
    with pytest.raises(MismatchError, match="tiny"):
        BACKENDS["graph"].load_native(path, get_preset("tiny_pretrain"))


def _corruptions(raw: bytes):
    yield "half", raw[: len(raw) // 2]
    yield "minus5", raw[:-5]
    yield "garbage", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    yield "empty", b""
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01  # inside tensor data: the protobuf still parses
    yield "bitflip", bytes(flipped)
    for n in range(64, len(raw), max(1, len(raw) // 40)):  # every cut, including ones at record boundaries
        yield f"cut{n}", raw[:n]


def test_corrupted_ckpt_fails_cleanly(tmp_path):
    cfg, state, _ = helpers.case("tiny")
    good = convert.save_ckpt(cfg, state, tmp_path / "good.ckpt")
    raw = good.read_bytes()
    for name, data in _corruptions(raw):
        bad = tmp_path / f"{name}.ckpt"
        bad.write_bytes(data)
        with pytest.raises(InvalidFileError) as ei:
            BACKENDS["graph"].load_native(bad, cfg)
        assert str(bad) in str(ei.value), name
    with pytest.raises(InvalidFileError, match="no such file"):
        BACKENDS["graph"].load_native(tmp_path / "absent.ckpt", cfg)


def test_failed_save_leaves_nothing(tmp_path):
    cfg, state, _ = helpers.case("tiny")
    st = dict(state)
    del st["head.bias"]
    with pytest.raises(MismatchError):
        convert.save_ckpt(cfg, st, tmp_path / "x.ckpt")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------- gradients and training
#: finite-difference step for the float64 reference loss: truncation O(h^2) ~ 1e-10, cancellation ~ 1e-11
FD_STEP = G.FD_STEP


def _family_grad_case(preset):
    cfg = get_preset(preset)
    if not cfg.num_classes:  # features-only presets get a head, so the loss applies
        cfg = cfg.replace(num_classes=5)
    state = init_weights(cfg, 0)
    x = random_images(cfg, 6, 0)
    y = np.random.default_rng(3).integers(0, cfg.num_classes, 6)
    return cfg, state, x, y


@pytest.mark.parametrize("preset", helpers.FAMILY_TINY)
def test_family_gradients_match_finite_differences_of_the_reference(preset):
    """Loss and every parameter gradient of the family options vs the float64 reference, independently of any
    other backend: per tensor, the directional derivative along a random unit direction v by central differences
    of shared.training.grad.reference_loss against <g, v>. |<g - g64, v>| <= ||g - g64||, so the error relative
    to the gradient's size (with the policy's floor, GRAD_FLOOR) must meet the policy's gradient bound."""
    cfg, state, x, y = _family_grad_case(preset)
    loss, grads = BACKENDS["pynative"].loss_and_grads(cfg, state, x, y, 0.1)
    ref = G.reference_loss(cfg, state, x, y, 0.1)
    assert abs(loss - ref) / abs(ref) <= G.loss_bound(cfg), (loss, ref)
    assert sorted(grads) == sorted(state) and all(grads[k].shape == state[k].shape for k in state)
    zero = [k for k, g in grads.items() if not np.any(g)]
    assert not zero, f"{preset}: all-zero gradients {zero}"
    base = {k: np.asarray(v, np.float64) for k, v in state.items()}
    rng = np.random.default_rng(7)
    diffs, norms = {}, {}
    for k in sorted(state):
        v = rng.standard_normal(base[k].shape)
        v /= np.linalg.norm(v)
        lp = G.reference_loss(cfg, {**base, k: base[k] + FD_STEP * v}, x, y, 0.1)
        lm = G.reference_loss(cfg, {**base, k: base[k] - FD_STEP * v}, x, y, 0.1)
        g = np.asarray(grads[k], np.float64)
        diffs[k] = abs((lp - lm) / (2 * FD_STEP) - float((g * v).sum()))
        norms[k] = float(np.linalg.norm(g))
    floor = tolerances.GRAD_FLOOR * float(np.sqrt(sum(n * n for n in norms.values()))) / np.sqrt(len(norms))
    errs = {k: diffs[k] / max(norms[k], floor) for k in diffs}
    bound = tolerances.grad_bound(cfg)
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e <= bound}
    assert not bad, f"{preset}: directional derivative errors over {bound:.2e}: {bad}"


def test_distilled_training_loss_is_the_mean_of_both_heads():
    """RawLogits gives both heads (2, B, K); the loss is shared.training.recipe.training_loss of them (the mean
    of the two heads' smoothed CE), not the CE of the averaged inference logits."""
    from vit_mindspore.train import RawLogits

    cfg, state, x, y = _family_grad_case("tiny_deit")
    model = BACKENDS["pynative"].build(cfg, state)
    z = RawLogits(model)(ms.Tensor(x)).asnumpy()
    z64 = T.raw_logits_reference(cfg, state, x)
    assert z.shape == z64.shape == (2, len(x), cfg.num_classes)
    assert tolerances.rel_l2(z, z64) <= tolerances.fp32_bound(cfg, "logits")
    loss, _ = BACKENDS["pynative"].loss_and_grads(cfg, state, x, y, 0.1)
    want = T.training_loss(z64, y, 0.1)[0]
    of_mean = T.smoothed_ce(z64.mean(0), y, 0.1)[0]
    assert abs(loss - want) / want <= G.loss_bound(cfg) < abs(of_mean - want) / want, (loss, want, of_mean)


def test_distilled_training_trains_both_heads():
    """A DeiT-layout digits model trained by vit_mindspore.train: each head alone beats chance by far."""
    cfg = get_preset("digits").replace(dist_token=True, name="digits_distilled")
    tr, te = D.load_digits_split((16, 16), 0)
    tc = T.TrainConfig(steps=30, batch=64, lr=2e-3, warmup_steps=4, eval_every=0, seed=0)  # each head ~80 %
    state, hist = MindSporeBackend().train(cfg, init_weights(cfg, 0), tr, te, tc, progress=False)
    heads = T.raw_logits_reference(cfg, state, te.images)  # (2, B, K) in float64
    top1 = [float(np.mean(np.argmax(h, 1) == te.labels)) for h in heads]
    assert min(top1) >= 0.5, f"held-out top-1 of head, head_dist: {top1}"
    assert hist[-1]["step"] == 30 and hist[-1]["val_top1"] >= 0.5


# --------------------------------------------------------------- import order
def test_import_after_tensorflow_raises_instead_of_aborting():
    code = ("import tensorflow\n"
            "try:\n    import vit_mindspore\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "IMPORTERROR" in r.stdout and "LLVM" in r.stdout and "own process" in r.stdout
