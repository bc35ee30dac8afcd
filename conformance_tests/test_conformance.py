"""Every backend through the Backend interface: presets x dtypes x inputs, stage by stage against the reference.

This file knows no framework: it drives whatever backend is registered (the built-ins, their configuration
variants, or a third-party one registered through the `vit_suite.backends` entry point), so a new implementation
gets the whole matrix for free. Bounds come from shared/tolerances.py via shared.testing.assert_conforms.

A variant (explicit attention, XLA, PyNative, the expm1 softmax) changes how the model computes, so it runs every
test that computes; what it shares with its primary backend by construction (building from and exporting to
canonical weights, native files, input validation) is tested on the primary backends (`primary_backend`).
"""
from __future__ import annotations

import numpy as np
import pytest

from shared import reference, tolerances
from shared.backend import Backend, get_backend, variant_of
from shared.errors import BackendError, MismatchError
from shared.init import init_weights, random_images
from shared.presets import get_preset
from shared.testing import SEED_FAST, SEED_SLOW, SMALL_SLOW, TINY_PRESETS, assert_conforms, case, shuffle_patches

from .golden.regenerate import PRESETS as GOLDEN_PRESETS, load_golden

_models: dict = {}


def model_for(backend, preset: str, dtype: str = "float32", image_size=None):
    """Built once per (backend, preset, dtype, size) for the session: graph compilation is the slow part."""
    key = (backend.name, preset, dtype, image_size)
    if key not in _models:
        cfg, state, _ = case(preset)
        if image_size is not None:
            cfg = cfg.with_image_size(image_size)
        _models[key] = backend.build(cfg, state, dtype=dtype)
    return _models[key]


INPUTS = [("normal", 2), ("uniform", 2), ("zeros", 2), ("large", 2), ("normal", 1), ("normal", 3)]
#: every input kind and batch size on the tiny presets, which cover every config option; on the 12-block seed
#: T2T model (its graph compiles take seconds per input shape) the two that matter for it: normal inputs, and
#: zeros, whose small-variance LayerNorm inputs expose a wrong eps (it pins PyTorch's 1e-5)
CASES = [(p, k, b) for p in TINY_PRESETS for k, b in INPUTS] + [(p, k, 2) for p in SEED_FAST for k in ("normal", "zeros")]


@pytest.mark.parametrize("preset,kind,batch", CASES, ids=[f"{p}-{k}-b{b}" for p, k, b in CASES])
def test_float32_every_stage(backend, preset, kind, batch):
    # zeros inputs leave only biases after the patch projection: small-variance LayerNorm inputs make a wrong
    # layer_norm_eps (1e-5 vs 1e-6) visible, which O(1) normal inputs do not
    _, _, x = case(preset, kind=kind, batch=batch)
    model = model_for(backend, preset)
    out = backend.forward(model, x)
    assert list(out) == get_preset(preset).stage_names()
    assert all(v.dtype == np.float32 for v in out.values())
    assert_conforms(preset, "float32", out, kind=kind, batch=batch)
    if (kind, batch) == ("normal", 2):
        assert_once_is_forward(backend, model, x, out)


def assert_once_is_forward(backend, model, x, out) -> None:
    """A backend's own `forward_once` (what a `check` child runs) is its `forward`, bit for bit, every stage."""
    if type(backend).forward_once is Backend.forward_once:
        return  # not overridden: it is `forward` itself
    once = backend.forward_once(model, x)
    for s, v in out.items():
        np.testing.assert_array_equal(once[s], v, err_msg=f"{backend.name}: forward_once differs at stage {s}")


@pytest.mark.parametrize("preset", TINY_PRESETS + SEED_FAST)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_every_stage(backend, preset, dtype):
    if dtype not in backend.dtypes:
        # a backend may lack a dtype, but then it must say so clearly instead of computing something else
        with pytest.raises(BackendError, match=dtype):
            backend.build(get_preset(preset), init_weights(get_preset(preset)), dtype=dtype)
        return
    _, _, x = case(preset)
    model = model_for(backend, preset, dtype)
    out = backend.forward(model, x)
    assert_conforms(preset, dtype, out)
    assert_once_is_forward(backend, model, x, out)


@pytest.mark.slow
@pytest.mark.parametrize("preset", SEED_SLOW + SMALL_SLOW)
def test_large_presets_float32(backend, preset):
    _, _, x = case(preset)
    out = backend.forward(model_for(backend, preset), x)
    assert_conforms(preset, "float32", out)


#: a learned table with a class-token row enlarged and shrunk, a 2-D sin-cos table and a 1-D one at new grids
SIZES = [("tiny_pretrain", (32, 64)), ("tiny_pretrain", (24, 16)), ("tiny_meanpool", (40, 56)), ("tiny_t2t", (30, 50)),
         ("tiny_dinov2_reg", (35, 21)), ("tiny_deit3", (48, 40))]  # resampling with prefix rows not all positioned


@pytest.mark.parametrize("preset,size", SIZES, ids=[f"{p}-{h}x{w}" for p, (h, w) in SIZES])
def test_other_image_size_resamples_positions(backend, preset, size):
    """Weights stored for one grid, run at another: the learned table is resampled with the config's kernel."""
    _, _, x = case(preset, image_size=size)
    out = backend.forward(model_for(backend, preset, image_size=size), x)
    assert out["embed"].shape[1] == get_preset(preset).with_image_size(size).num_tokens
    assert_conforms(preset, "float32", out, image_size=size)


def test_batch_rows_are_independent(backend):
    cfg, _, x = case("tiny", batch=3)
    full = backend.forward(model_for(backend, "tiny"), x)
    single = backend.forward(model_for(backend, "tiny"), x[1:2])
    for stage in cfg.stage_names():
        err = tolerances.rel_l2(full[stage][1:2], single[stage])
        assert err <= tolerances.fp32_bound(cfg, stage), (stage, err)


def test_patch_permutation_invariance_needs_no_position_embedding(backend):
    """The seed's demonstration as a test: no positions + mean pooling = a bag of patches."""
    base = get_preset("tiny_meanpool")
    x = random_images(base, 1, 3)
    y = shuffle_patches(x, base.patch_size)
    for pos, invariant in (("none", True), ("sincos2d", False)):
        cfg = base.replace(pos_embed=pos, name=f"perm_{pos}")
        model = backend.build(cfg, init_weights(cfg, 3))
        a, b = backend.forward(model, x)["logits"], backend.forward(model, y)["logits"]
        err = tolerances.rel_l2(b, a)
        if invariant:
            assert err <= 2 * tolerances.fp32_bound(cfg, "logits"), err
        else:
            assert err > 1e-3, err


@pytest.mark.parametrize("preset", GOLDEN_PRESETS)
def test_golden_files(backend, preset):
    """The shipped golden outputs (float64 reference, regenerated by conformance_tests/golden/regenerate.py)."""
    cfg, state, x, stages = load_golden(preset)
    out = backend.forward(backend.build(cfg, state), x)
    v = tolerances.judge(cfg, "float32", out, stages)
    assert v.passed, v.summary()


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_export_round_trip_is_bit_exact(primary_backend, preset):
    backend = primary_backend
    cfg, state, _ = case(preset)
    back = backend.export(model_for(backend, preset))
    assert set(back) == set(state)
    for k in state:
        assert back[k].dtype == np.float32 and np.array_equal(back[k], state[k]), k


def test_native_file_round_trip_is_bit_exact(primary_backend, tmp_path):
    backend = primary_backend
    cfg, state, x = case("tiny_pretrain")
    model = backend.build(cfg, state)
    path = backend.save_native(model, tmp_path / f"model{backend.native_suffixes[0]}")
    again = backend.load_native(path, cfg)
    back = backend.export(again)
    assert all(np.array_equal(back[k], state[k]) for k in state)
    a, b = backend.forward(model, x), backend.forward(again, x)
    assert all(np.array_equal(a[s], b[s]) for s in cfg.stage_names())


def test_predict_is_the_logits_stage(backend):
    cfg, _, x = case("tiny_pretrain", batch=3)
    model = model_for(backend, "tiny_pretrain")
    logits = backend.predict(model, x, batch=2)  # two batches
    assert logits.shape == (3, cfg.num_classes) and logits.dtype == np.float32
    err = tolerances.rel_l2(logits, backend.forward(model, x)["logits"])
    assert err <= 2 * tolerances.fp32_bound(cfg, "logits"), err


def _bad_states(state):
    missing = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    extra = dict(state, **{"blocks.9.attn.qkv.weight": np.zeros((96, 32), np.float32)})
    shape = dict(state, **{"blocks.0.attn.proj.weight": np.zeros((32, 31), np.float32)})
    dtype = dict(state, **{"head.bias": state["head.bias"].astype(np.float64)})
    return {"missing": (missing, r"missing key 'blocks\.1\.mlp\.fc2\.bias'"),
            "extra": (extra, r"unexpected key 'blocks\.9\.attn\.qkv\.weight'"),
            "shape": (shape, r"'blocks\.0\.attn\.proj\.weight': expected shape \(32, 32\), got \(32, 31\)"),
            "dtype": (dtype, r"'head\.bias': expected dtype float32, got float64")}


@pytest.mark.parametrize("kind", ["missing", "extra", "shape", "dtype"])
def test_bad_canonical_state_is_refused_by_name(primary_backend, kind):
    backend = primary_backend
    cfg, state, _ = case("tiny")
    bad, message = _bad_states(state)[kind]
    with pytest.raises(MismatchError, match=message):
        backend.build(cfg, bad)


def test_bad_inputs_are_refused_clearly(primary_backend):
    """Wrong channels, a size the patch does not divide, or not NCHW: one message, naming the shapes, everywhere."""
    backend = primary_backend
    cfg, state, x = case("tiny")
    model = model_for(backend, "tiny")
    with pytest.raises(ValueError, match=r"images have 1 channels, config 'tiny' expects 3 \(shape \(1, 1, 32, 32\)\)"):
        backend.forward(model, np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="image 36x32 is not divisible by patch size 8"):
        backend.forward(model, np.zeros((1, 3, 36, 32), np.float32))
    with pytest.raises(ValueError, match=r"images must be NCHW \(4-D\), got shape \(3, 32, 32\)"):
        backend.forward(model, x[0])


def test_unknown_dtype_is_refused(primary_backend):
    backend = primary_backend
    with pytest.raises(BackendError, match="float64"):
        backend.check_dtype("float64")


@pytest.mark.parametrize("preset", ["tiny", "tiny_t2t", "tiny_pretrain"])
def test_variant_agrees_with_its_primary(variant, preset):
    """A configuration variant (explicit attention, XLA, PyNative, expm1 softmax) and its primary backend each
    pass against the reference, so they are within the sum of their bounds of each other at every stage."""
    cfg, _, x = case(preset)
    primary = get_backend(variant_of(variant.name))
    a, b = variant.forward(model_for(variant, preset), x), primary.forward(model_for(primary, preset), x)
    ref = tolerances.judge(cfg, "float32", a, reference.forward(cfg, case(preset)[1], x))
    pair = tolerances.compare_pair(cfg, variant.name, a, ref, primary.name, b, ref)
    assert pair.passed, f"{variant.name} vs {primary.name}: first stage apart is {pair.first_failure}"


def test_golden_reference_still_reproduces():
    for preset in GOLDEN_PRESETS:
        cfg, state, x, stages = load_golden(preset)
        now = reference.forward(cfg, state, x)
        for s in cfg.stage_names():
            assert tolerances.rel_l2(now[s], stages[s]) < 1e-12, (preset, s)
