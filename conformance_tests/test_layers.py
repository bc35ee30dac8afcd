"""The layers from their own arguments: rotary tables, attention variants and score biases, in the reference and in
every backend's `Attention` / `Block` / `Mlp`, at the layer level.

Oracles: timm's own `RotaryEmbeddingCat` / `apply_rot_embed_cat` for the rotary tables (float64, 1e-12), and a
float64 attention written out here (the rotation as a complex multiply z * e^{i theta}, per-axis angles computed
here, not from shared.posemb), which the reference meets to float64 rounding and every backend within the float32
bound of one block (shared/tolerances.py). MindSpore runs in PyNative and Graph mode.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import mindspore as ms  # noqa: F401  (before TensorFlow: see conftest)

from shared import reference
from shared.posemb import rope_freqs, rope_table
from shared.presets import get_preset
from shared.tolerances import fp32_bound, rel_l2

F64 = 1e-12
GRID = (2, 3)  # the patch grid of the layer tests: 6 patch tokens


def _erf_gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


# ------------------------------------------------------------------------------ rotary tables vs timm
@pytest.mark.parametrize("head_dim,grid,temperature,indexing,offset,ref_grid,half", [
    (16, (3, 5), 10000.0, "ij", 0.0, None, False),
    (8, (4, 2), 100.0, "xy", 0.5, (8, 4), True),
    (32, (2, 6), 10000.0, "xy", 1.0, None, False),
    (16, (4, 4), 1000.0, "ij", 0.0, (8, 8), True)])
def test_rope_table_is_timms(head_dim, grid, temperature, indexing, offset, ref_grid, half):
    """shared.posemb.rope_table = timm's RotaryEmbeddingCat.get_embed (in_pixels=False) in float64, and the
    reference's rotation = timm's apply_rot_embed_cat, to 1e-12. timm computes its frequencies in float32: they
    agree with ours to float32 rounding, and the float64 comparison runs timm on our float64 frequencies."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, apply_rot_embed_cat

    rope = RotaryEmbeddingCat(head_dim, temperature=temperature, in_pixels=False, grid_indexing=indexing,
                              grid_offset=offset, ref_feat_shape=list(ref_grid) if ref_grid else None,
                              rotate_half=half, dtype=torch.float64)
    freqs = rope_freqs(head_dim, temperature)
    np.testing.assert_allclose(rope.bands.numpy(), freqs, rtol=2.0 ** -23, atol=0)
    rope.bands.copy_(torch.from_numpy(freqs))
    want = rope.get_embed(list(grid), dtype=torch.float64).numpy()
    got = rope_table(grid, head_dim, temperature=temperature, indexing=indexing, offset=offset, ref_grid=ref_grid,
                     rotate_half=half)
    assert got.shape == want.shape == (grid[0] * grid[1], 2 * head_dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=F64)

    x = np.random.default_rng(0).standard_normal((2, 3, grid[0] * grid[1], head_dim))
    timm_rot = apply_rot_embed_cat(torch.from_numpy(x), torch.from_numpy(want), half=half).numpy()
    ours = reference._Numerics("float64").rotate(x, got, half)
    np.testing.assert_allclose(ours, timm_rot, rtol=0, atol=F64)


def test_rope_table_refuses_a_head_dim_it_cannot_split():
    with pytest.raises(ValueError, match="divisible by 4, got 6"):
        rope_table((2, 2), 6)
    with pytest.raises(ValueError, match="indexing must be one of"):
        rope_table((2, 2), 8, indexing="yx")


# ------------------------------------------------------------------------------ the hand-written oracle
def _angles(grid, head_dim, temperature, indexing):
    """(N, head_dim/2) rotation angles of the patch tokens, written out: row i, column j of the grid; "ij" gives
    the row's frequencies first."""
    nb = head_dim // 4
    f = [temperature ** (-k / nb) for k in range(nb)]
    rows = []
    for i in range(grid[0]):
        for j in range(grid[1]):
            a, b = (i, j) if indexing == "ij" else (j, i)
            rows.append([a * fk for fk in f] + [b * fk for fk in f])
    return np.array(rows)


def _rotate_by_hand(t, theta, half):
    """x' = x cos + rotate(x) sin on the last N tokens, as a complex multiply: pairs (x_2j, x_2j+1), or with
    `half` (x_j, x_{j+hd/2}), are the real and imaginary parts of z, rotated by e^{i theta}."""
    n, hd = theta.shape[0], t.shape[-1]
    out = t.copy()
    tail = t[..., -n:, :]
    z = tail[..., : hd // 2] + 1j * tail[..., hd // 2:] if half else tail[..., 0::2] + 1j * tail[..., 1::2]
    z = z * np.exp(1j * theta)
    if half:
        out[..., -n:, : hd // 2], out[..., -n:, hd // 2:] = z.real, z.imag
    else:
        out[..., -n:, 0::2], out[..., -n:, 1::2] = z.real, z.imag
    return out


def _ln(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _attention_by_hand(p, x, a, theta=None, bias=None):
    """float64 multi-head attention with every variant, head by head."""
    B, T, _ = x.shape
    W = a.get("width") or a["dim"]
    H = a["num_heads"]
    hd = W // H
    eps = a.get("norm_eps", 1e-6)
    if a.get("qkv_fused", True):
        w = p["qkv.weight"]
        b = p["qkv.bias"].copy() if a.get("qkv_bias", True) else np.zeros(3 * W)
        if not a.get("k_bias", True):
            b[W:2 * W] = 0.0
        q, k, v = (x @ w[i * W:(i + 1) * W].T + b[i * W:(i + 1) * W] for i in range(3))
    else:
        def lin(name, use_bias):
            return x @ p[f"{name}.weight"].T + (p[f"{name}.bias"] if use_bias else 0.0)
        q = lin("q_proj", a.get("qkv_bias", True))
        k = lin("k_proj", a.get("qkv_bias", True) and a.get("k_bias", True))
        v = lin("v_proj", a.get("qkv_bias", True))
    scale = a.get("scale") or hd ** -0.5
    heads = []
    for h in range(H):
        qh, kh, vh = (t[..., h * hd:(h + 1) * hd] for t in (q, k, v))
        if a.get("qk_norm"):
            qh = _ln(qh, p["q_norm.weight"], p["q_norm.bias"], eps)
            kh = _ln(kh, p["k_norm.weight"], p["k_norm.bias"], eps)
        if theta is not None:
            qh = _rotate_by_hand(qh, theta, a.get("rotate_half", False))
            kh = _rotate_by_hand(kh, theta, a.get("rotate_half", False))
        s = np.einsum("btd,bsd->bts", qh, kh) * scale
        if bias is not None:
            s = s + np.broadcast_to(bias, (B, H, T, T))[:, h]
        e = np.exp(s - s.max(-1, keepdims=True))
        heads.append(np.einsum("bts,bsd->btd", e / e.sum(-1, keepdims=True), vh))
    o = np.concatenate(heads, axis=-1)
    if a.get("inner_norm"):
        o = _ln(o, p["norm.weight"], p["norm.bias"], eps)
    o = o @ p["proj.weight"].T + (p["proj.bias"] if a.get("proj_bias", True) else 0.0)
    return v + o if a.get("value_skip") else o


def _attention_params(a, rng) -> dict[str, np.ndarray]:
    """Random float32 weights for an Attention with arguments `a`, keyed by the canonical names under attn."""
    D = a["dim"]
    W = a.get("width") or D
    hd = W // a["num_heads"]
    p = {}
    names = ["qkv"] if a.get("qkv_fused", True) else ["q_proj", "k_proj", "v_proj"]
    for name in names:
        rows = 3 * W if name == "qkv" else W
        p[f"{name}.weight"] = rng.standard_normal((rows, D)) / np.sqrt(D)
        if a.get("qkv_bias", True) and not (name == "k_proj" and not a.get("k_bias", True)):
            p[f"{name}.bias"] = 0.1 * rng.standard_normal(rows)
    if a.get("qk_norm"):
        for n in ("q_norm", "k_norm"):
            p[f"{n}.weight"], p[f"{n}.bias"] = 1 + 0.1 * rng.standard_normal(hd), 0.1 * rng.standard_normal(hd)
    if a.get("inner_norm"):
        p["norm.weight"], p["norm.bias"] = 1 + 0.1 * rng.standard_normal(W), 0.1 * rng.standard_normal(W)
    p["proj.weight"] = rng.standard_normal((W, W)) / np.sqrt(W)
    if a.get("proj_bias", True):
        p["proj.bias"] = 0.1 * rng.standard_normal(W)
    return {k: v.astype(np.float32) for k, v in p.items()}


# the variants, each with what reaches the layer: (attention arguments, rotary table options or None, score bias)
CASES = {
    "rope": (dict(dim=32, num_heads=4), dict(indexing="ij", rotate_half=False), False),
    "rope_half_qknorm_nokbias": (dict(dim=32, num_heads=2, k_bias=False, qk_norm=True, rotate_half=True),
                                 dict(indexing="xy", rotate_half=True), False),
    "separate_qkv_inner_norm_bias": (dict(dim=32, num_heads=4, qkv_fused=False, k_bias=False, inner_norm=True),
                                     None, True),
    "t2t_width_rope_bias": (dict(dim=24, num_heads=2, width=32, qkv_bias=False, qkv_fused=False, value_skip=True,
                                 scale=0.3, proj_bias=False), dict(indexing="ij", rotate_half=False), True),
}
N_PREFIX = 1


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """One variant: arguments, weights, input, rotary table, score bias, and the hand-written float64 output."""
    a, rope_opts, with_bias = CASES[request.param]
    rng = np.random.default_rng(list(CASES).index(request.param))
    W = a.get("width") or a["dim"]
    hd = W // a["num_heads"]
    p = _attention_params(a, rng)
    T = N_PREFIX + GRID[0] * GRID[1]
    x = rng.standard_normal((2, T, a["dim"])).astype(np.float32)
    rope = theta = None
    if rope_opts is not None:
        rope = rope_table(GRID, hd, indexing=rope_opts["indexing"], rotate_half=rope_opts["rotate_half"])
        theta = _angles(GRID, hd, 10000.0, rope_opts["indexing"])
    bias = (0.5 * rng.standard_normal((a["num_heads"], T, T))).astype(np.float32) if with_bias else None
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    want = _attention_by_hand(p64, x.astype(np.float64), a, theta, bias)
    bound = fp32_bound(get_preset("tiny"), "block_0")  # widths <= 32, the tiny preset's: the same reductions
    return dict(name=request.param, a=a, p=p, x=x, rope=rope, bias=bias, want=want, bound=bound)


def test_the_reference_attention_is_the_hand_written_one(case):
    """float64: the reference's attention with the variant meets the oracle to float64 rounding (the oracle's
    rotation and angles are its own: an independent check of rope_table's layout and the reference's rotation)."""
    p64 = {f"attn.{k}": v.astype(np.float64) for k, v in case["p"].items()}
    got, probs = reference.attention(reference._Numerics("float64"), p64, "attn", case["x"].astype(np.float64),
                                     **case["a"], rope=case["rope"], attn_bias=case["bias"], want_attn=True)
    assert rel_l2(got, case["want"]) < F64, case["name"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=0, atol=F64)
    if case["rope"] is not None:  # the rotation changes the output (the test is not blind to it)
        plain = reference.attention(reference._Numerics("float64"), p64, "attn", case["x"].astype(np.float64),
                                    **case["a"], attn_bias=case["bias"])[0]
        assert rel_l2(plain, case["want"]) > 1e-3


def _torch_attention(case, fused_attn):
    from vit_torch.layers import Attention

    layer = Attention(**case["a"], fused_attn=fused_attn)
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in case["p"].items()}, strict=True)
    t = (lambda v: None if v is None else torch.from_numpy(np.asarray(v, np.float32)))
    with torch.no_grad():
        out = layer(t(case["x"]), t(case["rope"]), t(case["bias"]))
        out2, probs = layer(t(case["x"]), t(case["rope"]), t(case["bias"]), return_attn=True)
    return out.numpy(), out2.numpy(), probs.numpy()


def _keras_attention(case):
    import keras

    from vit_keras.layers import Attention
    from vit_keras.model import to_keras_layout

    layer = Attention(**case["a"])
    layer.build((None, None, case["a"]["dim"]))
    variables = layer.canonical_variables()
    assert sorted(variables) == sorted(case["p"])
    for key, (var, kind) in variables.items():
        var.assign(to_keras_layout(kind, case["p"][key]))
    t = (lambda v: None if v is None else keras.ops.convert_to_tensor(np.asarray(v, np.float32)))
    out = layer(t(case["x"]), rope=t(case["rope"]), attn_bias=t(case["bias"]))
    out2, probs = layer(t(case["x"]), rope=t(case["rope"]), attn_bias=t(case["bias"]), return_attn=True)
    rebuilt = Attention.from_config(layer.get_config())  # every constructor argument travels
    assert rebuilt.get_config() == layer.get_config()
    return tuple(keras.ops.convert_to_numpy(v) for v in (out, out2, probs))


def _mindspore_attention(case, graph):
    from mindspore import Tensor

    from vit_mindspore.layers import Attention

    layer = Attention(**case["a"])
    params = dict(layer.parameters_and_names())
    assert sorted(params) == sorted(case["p"])
    for key, prm in params.items():
        prm.set_data(Tensor(case["p"][key]))
    layer.set_train(False)
    t = (lambda v: None if v is None else Tensor(np.asarray(v, np.float32)))
    fn = ms.jit(layer) if graph else layer
    out = fn(t(case["x"]), t(case["rope"]), t(case["bias"]))
    out2, probs = layer(t(case["x"]), t(case["rope"]), t(case["bias"]), True)
    return out.asnumpy(), out2.asnumpy(), probs.asnumpy()


@pytest.mark.parametrize("impl", ["torch", "torch_explicit", "keras", "mindspore", "mindspore_graph"])
def test_every_backend_attention_is_the_hand_written_one(case, impl):
    """Each backend's Attention with the variant, rotary table and score bias, in float32: within the float32
    bound of one block of the float64 oracle; the output is the same with and without return_attn, and the
    probabilities are rows of a softmax."""
    if impl.startswith("torch"):
        out, out2, probs = _torch_attention(case, fused_attn=impl == "torch")
    elif impl == "keras":
        out, out2, probs = _keras_attention(case)
    else:
        out, out2, probs = _mindspore_attention(case, graph=impl == "mindspore_graph")
    err = rel_l2(out, case["want"])
    assert err <= case["bound"], f"{case['name']} {impl}: rel L2 {err:.2e} > bound {case['bound']:.2e}"
    assert rel_l2(out2, case["want"]) <= case["bound"]
    T = case["x"].shape[1]
    assert probs.shape == (2, case["a"]["num_heads"], T, T)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ Block and Mlp
BLOCK = dict(dim=32, attn=dict(num_heads=4, qkv_fused=False, k_bias=False, inner_norm=True, qk_norm=True,
                               rotate_half=True),
             mlp=dict(hidden=48, act="silu", gated=True), ls_init=0.5, norm_eps=1e-5)


def _block_params(rng):
    a = dict(BLOCK["attn"], dim=32)
    p = {f"attn.{k}": v for k, v in _attention_params(a, rng).items()}
    for n in ("norm1", "norm2"):
        p[f"{n}.weight"], p[f"{n}.bias"] = 1 + 0.1 * rng.standard_normal(32), 0.1 * rng.standard_normal(32)
    p["mlp.fc1.weight"], p["mlp.fc1.bias"] = rng.standard_normal((96, 32)) / 6, 0.1 * rng.standard_normal(96)
    p["mlp.fc2.weight"], p["mlp.fc2.bias"] = rng.standard_normal((32, 48)) / 7, 0.1 * rng.standard_normal(32)
    p["ls1.gamma"], p["ls2.gamma"] = 0.5 + 0.1 * rng.standard_normal(32), 0.5 + 0.1 * rng.standard_normal(32)
    return {k: np.asarray(v, np.float32) for k, v in p.items()}


def test_a_block_passes_the_rotary_table_to_attention_in_every_backend():
    """A Block with separate q/k/v, no k bias, qk- and inner norms, a SwiGLU MLP and LayerScale, given a rotary
    table: every backend's float32 Block within the one-block float32 bound of the reference's float64 block (whose
    attention is checked against the hand-written oracle above)."""
    import keras
    from mindspore import Tensor

    from vit_keras.layers import Block as KBlock
    from vit_keras.model import to_keras_layout
    from vit_mindspore.layers import Block as MBlock
    from vit_torch.layers import Block as TBlock

    rng = np.random.default_rng(7)
    p = _block_params(rng)
    x = rng.standard_normal((2, N_PREFIX + GRID[0] * GRID[1], 32)).astype(np.float32)
    rope = rope_table(GRID, 8, rotate_half=True)
    want, _ = reference.block(reference._Numerics("float64"), {k: v.astype(np.float64) for k, v in p.items()}, "",
                              x.astype(np.float64), **BLOCK, rope=rope)
    plain, _ = reference.block(reference._Numerics("float64"), {k: v.astype(np.float64) for k, v in p.items()}, "",
                               x.astype(np.float64), **BLOCK)
    assert rel_l2(plain, want) > 1e-3  # the table changes the block's output
    bound = fp32_bound(get_preset("tiny"), "block_0")

    tb = TBlock(**BLOCK)
    tb.load_state_dict({k: torch.from_numpy(v) for k, v in p.items()}, strict=True)
    with torch.no_grad():
        outs = {"torch": tb(torch.from_numpy(x), torch.from_numpy(rope.astype(np.float32))).numpy()}

    kb = KBlock(**BLOCK)
    kb.build((None, None, 32))
    for key, (var, kind) in kb.canonical_variables().items():
        var.assign(to_keras_layout(kind, p[key]))
    outs["keras"] = keras.ops.convert_to_numpy(kb(keras.ops.convert_to_tensor(x),
                                                  rope=keras.ops.convert_to_tensor(rope.astype(np.float32))))
    assert KBlock.from_config(kb.get_config()).get_config() == kb.get_config()

    mb = MBlock(**BLOCK)
    for key, prm in mb.parameters_and_names():
        prm.set_data(Tensor(p[key]))
    mb.set_train(False)
    outs["mindspore"] = mb(Tensor(x), Tensor(rope.astype(np.float32))).asnumpy()
    for name, out in outs.items():
        assert rel_l2(out, want) <= bound, (name, rel_l2(out, want), bound)


@pytest.mark.parametrize("act,gated,inner_norm,bias", [("silu", True, False, False), ("erf", True, True, True),
                                                       ("quick", False, True, True)])
def test_every_backend_mlp_is_the_hand_written_one(act, gated, inner_norm, bias):
    """Mlp(dim, hidden, act, gated, inner_norm, bias): fc1 -> act (or act(gate) * value) -> [LayerNorm] -> fc2 (biases
    with `bias`), against a float64 MLP written out."""
    import keras
    from mindspore import Tensor

    from vit_keras.layers import Mlp as KMlp
    from vit_keras.model import to_keras_layout
    from vit_mindspore.layers import Mlp as MMlp
    from vit_torch.layers import Mlp as TMlp

    rng = np.random.default_rng(3)
    D, M = 32, 40
    p = {"fc1.weight": rng.standard_normal(((2 if gated else 1) * M, D)) / 6, "fc1.bias": rng.standard_normal((2 if gated else 1) * M) / 4,
         "fc2.weight": rng.standard_normal((D, M)) / 6, "fc2.bias": rng.standard_normal(D) / 4}
    if inner_norm:
        p["norm.weight"], p["norm.bias"] = 1 + 0.1 * rng.standard_normal(M), 0.1 * rng.standard_normal(M)
    p = {k: v.astype(np.float32) for k, v in p.items() if bias or not k.startswith("fc")
         or not k.endswith(".bias")}
    x = rng.standard_normal((2, 5, D)).astype(np.float32)
    f = {"silu": lambda t: t / (1 + np.exp(-t)), "erf": _erf_gelu, "quick": lambda t: t / (1 + np.exp(-1.702 * t))}[act]
    h = x.astype(np.float64) @ p["fc1.weight"].T.astype(np.float64) + (p["fc1.bias"] if bias else 0.0)
    h = f(h[..., :M]) * h[..., M:] if gated else f(h)
    if inner_norm:
        h = _ln(h, p["norm.weight"].astype(np.float64), p["norm.bias"], 1e-5)
    want = h @ p["fc2.weight"].T.astype(np.float64) + (p["fc2.bias"] if bias else 0.0)
    args = dict(dim=D, hidden=M, act=act, gated=gated, inner_norm=inner_norm, bias=bias, norm_eps=1e-5)
    got64 = reference.mlp_forward(reference._Numerics("float64"), {k: v.astype(np.float64) for k, v in p.items()},
                                  "", x.astype(np.float64), **args)
    assert rel_l2(got64, want) < F64

    tm = TMlp(**args)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in p.items()}, strict=True)
    with torch.no_grad():
        outs = {"torch": tm(torch.from_numpy(x)).numpy()}
    km = KMlp(**args)
    km.build((None, None, D))
    for key, (var, kind) in km.canonical_variables().items():
        var.assign(to_keras_layout(kind, p[key]))
    outs["keras"] = keras.ops.convert_to_numpy(km(keras.ops.convert_to_tensor(x)))
    assert KMlp.from_config(km.get_config()).get_config() == km.get_config()
    mm = MMlp(**args)
    for key, prm in mm.parameters_and_names():
        prm.set_data(Tensor(p[key]))
    outs["mindspore"] = mm(Tensor(x)).asnumpy()
    bound = fp32_bound(get_preset("tiny"), "block_0")
    for name, out in outs.items():
        assert rel_l2(out, want) <= bound, (name, act, gated, rel_l2(out, want), bound)


def test_keras_layers_serialise_every_constructor_argument():
    """get_config() holds every constructor argument of each vit_keras layer taking its own arguments."""
    from vit_keras import layers as kl

    cfg = get_preset("tiny")
    made = [kl.Attention(**cfg.attention_args(0)), kl.Mlp(**cfg.mlp_args()), kl.Block(**cfg.block_args(1)),
            kl.AttentionPool(**cfg.pool_args())]
    for layer in made:
        params = [n for n in inspect.signature(type(layer).__init__).parameters if n not in ("self", "kwargs")]
        config = layer.get_config()
        assert set(params) <= set(config), (type(layer).__name__, set(params) - set(config))
        assert type(layer).from_config(config).get_config() == config
