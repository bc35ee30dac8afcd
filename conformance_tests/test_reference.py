"""The float64 NumPy reference against computations written independently of it.

float64 comparisons use 1e-12 relative: both sides are float64 with different
operation orders, whose difference is a few hundred ulps (2.2e-16 each) at most.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared import posemb, reference
from shared.init import init_weights, random_images
from shared.presets import get_preset

from shared.testing import SEED_FAST, TINY_PRESETS, shuffle_patches

F64 = 1e-12


def rel(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(b), 1e-300)


# ----------------------------------------------------------------------------- attention
def test_attention_matches_explicit_per_head_loop():
    cfg = get_preset("tiny_t2t")  # value skip, no qkv bias, qk_scale override, attn width != input width
    p = init_weights(cfg, 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, cfg.embed_dim))
    nm = reference._Numerics("float64")
    got, probs = reference.attention(nm, {k: v.astype(np.float64) for k, v in p.items()}, "blocks.0.attn", x,
                                     **cfg.attention_args(0), want_attn=True)

    Wqkv = p["blocks.0.attn.qkv.weight"].astype(np.float64)
    A, H = cfg.width, cfg.num_heads
    hd = A // H
    want = np.zeros((2, 5, A))
    for b in range(2):
        heads = []
        for h in range(H):
            rows = lambda part: Wqkv[part * A + h * hd: part * A + (h + 1) * hd]
            q, k, v = (x[b] @ rows(i).T for i in range(3))
            out = np.zeros((5, hd))
            for i in range(5):
                s = [float(q[i] @ k[j]) * cfg.qk_scale for j in range(5)]
                m = max(s)
                e = [math.exp(t - m) for t in s]
                w = [t / sum(e) for t in e]
                assert np.allclose(w, probs[b, h, i], rtol=F64, atol=0)
                out[i] = sum(w[j] * v[j] for j in range(5))
            heads.append((out, v))
        o = np.concatenate([hh[0] for hh in heads], axis=1)
        v_all = np.concatenate([hh[1] for hh in heads], axis=1)
        proj = o @ p["blocks.0.attn.proj.weight"].astype(np.float64).T + p["blocks.0.attn.proj.bias"]
        want[b] = v_all + proj  # the T2T value skip
    assert rel(got, want) < F64


def test_softmax_is_stable_for_huge_logits():
    nm = reference._Numerics("float64")
    got = nm.softmax(np.array([[1e4, 1e4 - 1.0, 0.0, -1e4]]))
    e = math.exp(-1.0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[0], [1 / (1 + e), e / (1 + e), 0.0, 0.0], rtol=F64, atol=1e-300)
    for dtype in ("float32", "float16", "bfloat16"):
        assert np.all(np.isfinite(reference._Numerics(dtype).softmax(np.array([[1e4, 0.0]], np.float32))))


# ----------------------------------------------------------------------------- positions
def seed_sinusoid_table(num_tokens, token_len):
    """The T2T walkthrough's own formula, transcribed loop for loop."""
    def angle_vec(i):
        return [i / np.power(10000, 2 * (j // 2) / token_len) for j in range(token_len)]

    table = np.array([angle_vec(i) for i in range(num_tokens)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table


@pytest.mark.parametrize("tokens,dim", [(16, 768), (9, 32), (197, 64)])
def test_sincos_1d_is_the_seed_formula(tokens, dim):
    np.testing.assert_array_equal(posemb.sincos_1d(tokens, dim), seed_sinusoid_table(tokens, dim))


def test_sincos_2d_big_vision_layout():
    t = posemb.sincos_2d((3, 4), 16)
    omega = 1.0 / 10000 ** (np.arange(4) / 3)
    for r in range(3):
        for c in range(4):
            row = t[r * 4 + c]
            np.testing.assert_allclose(row, np.concatenate([np.sin(c * omega), np.cos(c * omega),
                                                            np.sin(r * omega), np.cos(r * omega)]), rtol=F64, atol=1e-15)


@pytest.mark.parametrize("kernel,torch_kw", [
    ("bicubic", dict(mode="bicubic")),
    ("bicubic_antialias", dict(mode="bicubic", antialias=True)),
    ("bilinear", dict(mode="bilinear")),
    ("bilinear_antialias", dict(mode="bilinear", antialias=True)),
])
@pytest.mark.parametrize("old,new", [((14, 14), (24, 24)), ((14, 14), (7, 9)), ((4, 4), (6, 5)), ((24, 24), (14, 14)),
                                     ((5, 3), (2, 11)), ((3, 5), (3, 5))], ids=lambda g: f"{g[0]}x{g[1]}")
def test_resampling_matches_torch_interpolate(kernel, torch_kw, old, new):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((old[0] * old[1], 6))
    t = torch.from_numpy(table.reshape(*old, 6).transpose(2, 0, 1)[None].copy())
    want = F.interpolate(t, size=new, align_corners=False, **torch_kw)[0].numpy().transpose(1, 2, 0).reshape(-1, 6)
    got = posemb.resample_grid(table, old, new, kernel)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)


def test_resample_pos_embed_keeps_the_class_token_row():
    rng = np.random.default_rng(2)
    pe = rng.standard_normal((1, 1 + 16, 8)).astype(np.float32)
    out = posemb.resample_pos_embed(pe, (4, 4), (6, 5), 1, "bicubic")
    assert out.shape == (1, 31, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], pe[0, 0])


# ----------------------------------------------------------------------------- patch embedding
def test_patch_embedding_matches_explicit_patch_loop():
    cfg = get_preset("tiny_meanpool")  # 1 channel, 24x40, patch 8
    p = init_weights(cfg, 0)
    x = random_images(cfg, 2, 0)
    got = reference.forward(cfg, p, x)["patch_embed"]
    w, b = p["patch_embed.proj.weight"].astype(np.float64), p["patch_embed.proj.bias"].astype(np.float64)
    P = cfg.patch_size
    gh, gw = cfg.grid
    for n in range(2):
        for r in range(gh):
            for c in range(gw):
                patch = x[n, :, r * P:(r + 1) * P, c * P:(c + 1) * P].astype(np.float64)
                want = np.array([np.sum(patch * w[d]) for d in range(cfg.embed_dim)]) + b
                np.testing.assert_allclose(got[n, r * gw + c], want, rtol=F64, atol=1e-13)


# ----------------------------------------------------------------------------- whole forward
def torch_forward(cfg, params, images):
    """A second implementation: torch float64 functional ops, written from the architecture (timm's and SigLIP's
    layouts for the family options: add-then-concatenate positions, nn.MultiheadAttention for the attention pool),
    not from reference.py."""
    p = {k: torch.from_numpy(v.astype(np.float64)) for k, v in params.items()}
    x = torch.from_numpy(images.astype(np.float64))
    B = x.shape[0]
    tok = F.conv2d(x, p["patch_embed.proj.weight"], p.get("patch_embed.proj.bias"), stride=cfg.patch_size)
    gh, gw = tok.shape[-2:]
    tok = tok.flatten(2).transpose(1, 2)
    out = {"patch_embed": tok}
    D = cfg.embed_dim
    prefix = []  # timm's order: class, distillation, registers
    if cfg.class_token != "none":
        prefix.append(p["cls_token"].expand(B, -1, -1) if cfg.class_token == "learned" else torch.zeros(B, 1, D, dtype=x.dtype))
    if cfg.dist_token:
        prefix.append(p["dist_token"].expand(B, -1, -1))
    if cfg.reg_tokens:
        prefix.append(p["reg_token"].expand(B, -1, -1))
    prefix = torch.cat(prefix, 1) if prefix else tok[:, :0]
    if cfg.pos_embed == "learned":
        # the first n_pos prefix tokens and the patches get rows; the other prefix tokens are concatenated as they
        # are (timm's no_embed_class adds to the patches, then concatenates: no zero rows here)
        pe, n_pos = p["pos_embed"], cfg.num_pos_prefix
        th, tw = cfg.table_grid
        if (th, tw) != (gh, gw):
            grid = pe[:, n_pos:].reshape(1, th, tw, -1).permute(0, 3, 1, 2)
            mode = dict(bicubic=dict(mode="bicubic"), bilinear=dict(mode="bilinear"),
                        bicubic_antialias=dict(mode="bicubic", antialias=True))[cfg.resize_kernel]
            grid = F.interpolate(grid, size=(gh, gw), align_corners=False, **mode)
            pe = torch.cat([pe[:, :n_pos], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], 1)
        tok = torch.cat([prefix[:, :n_pos] + pe[:, :n_pos], prefix[:, n_pos:], tok + pe[:, n_pos:]], 1)
    else:
        tok = torch.cat([prefix, tok], 1)
        if cfg.pos_embed == "sincos1d":
            tok = tok + torch.from_numpy(seed_sinusoid_table(tok.shape[1], D))
        elif cfg.pos_embed == "sincos2d":
            tab = torch.from_numpy(posemb.sincos_2d((gh, gw), D))
            tok = tok + torch.cat([torch.zeros(cfg.num_prefix_tokens, D, dtype=x.dtype), tab])
    out["embed"] = tok
    eps = cfg.layer_norm_eps
    A, H = cfg.width, cfg.num_heads

    def act(h):
        if cfg.gelu == "quick":
            return h * torch.sigmoid(1.702 * h)
        return F.gelu(h, approximate="none" if cfg.gelu == "erf" else "tanh")

    def nrm(h, key):  # LayerNorm, or RMSNorm (timm's Eva / Sapiens2: norm_kind 'rms')
        if cfg.norm_kind == "rms":
            return F.rms_norm(h, (h.shape[-1],), p[key + ".weight"], eps)
        return F.layer_norm(h, (h.shape[-1],), p[key + ".weight"], p[key + ".bias"], eps)

    if cfg.norm_pre:
        tok = nrm(tok, "norm_pre")
        out["norm_pre"] = tok

    def mlp(h, pre):
        if cfg.swiglu_unpacked and pre.startswith("blocks."):  # timm SwiGLU: separate gate and value projections
            h = F.silu(F.linear(h, p[pre + "fc1_g.weight"], p[pre + "fc1_g.bias"])) * F.linear(
                h, p[pre + "fc1_x.weight"], p[pre + "fc1_x.bias"])
        else:
            h = F.linear(h, p[pre + "fc1.weight"], p[pre + "fc1.bias"])
            if cfg.swiglu and pre.startswith("blocks."):  # timm SwiGLUPacked: the gate is fc1's first half
                gate, value = h.chunk(2, dim=-1)
                h = F.silu(gate) * value
            else:
                h = act(h)
        if cfg.mlp_inner_norm and pre.startswith("blocks."):
            h = nrm(h, pre + "norm")
        return F.linear(h, p[pre + "fc2.weight"], p[pre + "fc2.bias"])

    def rel_bias(pre):
        """A relative position bias written as BEiT / timm's RelPosMlp write it: pairwise coordinate differences,
        shifted and flattened into table rows (torch ops, not shared.posemb); the class token's three rows last."""
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        c = torch.stack([ys.flatten(), xs.flatten()])
        d = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0)
        rows = (d[..., 0] + gh - 1) * (2 * gw - 1) + (d[..., 1] + gw - 1)
        n0, nrd = cfg.num_prefix_tokens, (2 * gh - 1) * (2 * gw - 1)
        if cfg.rel_pos == "table":
            if n0:
                rows = F.pad(rows, (1, 0, 1, 0))
                rows[0, :], rows[:, 0], rows[0, 0] = nrd, nrd + 1, nrd + 2
            return p[pre + "relative_position_bias_table"][rows].permute(2, 0, 1)
        dy, dx = torch.meshgrid(torch.arange(-(gh - 1), gh), torch.arange(-(gw - 1), gw), indexing="ij")
        coords = torch.stack([dy, dx], -1).reshape(-1, 2).to(torch.float64)
        coords = torch.sign(coords) * torch.log(1 + coords.abs())
        t = F.linear(F.relu(F.linear(coords, p[pre + "mlp.fc1.weight"], p[pre + "mlp.fc1.bias"])),
                     p[pre + "mlp.fc2.weight"], p[pre + "mlp.fc2.bias"])
        return F.pad(t[rows].permute(2, 0, 1), (n0, 0, n0, 0))

    def angles(i):
        """The rotation angles of the patch tokens (N, hd/2), or per head for rope 'mixed' (H, N, hd/2), written out
        from timm's definitions: integer coordinates (cat; rescaled to rope_ref_grid), centred ones in [-1, 1] times
        2 pi (dinov3), or the learned frequencies of block i (mixed)."""
        nb = A // H // 4
        rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                    indexing="ij")
        if cfg.rope == "dinov3":
            rows, cols = ((rows + 0.5 + cfg.rope_offset) / gh) * 2 - 1, ((cols + 0.5 + cfg.rope_offset) / gw) * 2 - 1
        elif cfg.rope == "cat":
            rows, cols = rows + cfg.rope_offset, cols + cfg.rope_offset
            if cfg.rope_ref_grid is not None:
                rows, cols = rows / gh * cfg.rope_ref_grid[0], cols / gw * cfg.rope_ref_grid[1]
        c0, c1 = (rows, cols) if cfg.rope_indexing == "ij" else (cols, rows)
        c0, c1 = c0.reshape(-1, 1), c1.reshape(-1, 1)
        if cfg.rope == "mixed":
            fr = p["rope.freqs"][:, i]  # (2, H, hd/2)
            return c0[None] * fr[0][:, None] + c1[None] * fr[1][:, None]
        f = cfg.rope_temperature ** (-torch.arange(nb, dtype=torch.float64) / nb)
        scale = 2 * math.pi if cfg.rope == "dinov3" else 1.0
        return scale * torch.cat([c0 * f, c1 * f], dim=-1)

    def rotate(t, theta):  # the patch tokens' channel pairs as complex numbers, times e^{i theta}
        n0_, hd = t.shape[2] - gh * gw, t.shape[-1]
        x_ = t[:, :, n0_:]
        if cfg.rope_rotate_half:
            z = torch.complex(x_[..., :hd // 2], x_[..., hd // 2:]) * torch.polar(torch.ones_like(theta), theta)
            r = torch.cat([z.real, z.imag], dim=-1)
        else:
            z = torch.complex(x_[..., 0::2], x_[..., 1::2]) * torch.polar(torch.ones_like(theta), theta)
            r = torch.stack([z.real, z.imag], dim=-1).reshape(x_.shape)
        return torch.cat([t[:, :, :n0_], r], dim=2)

    shared_bias = rel_bias("rel_pos.") if cfg.rel_pos != "none" and cfg.rel_pos_shared else None
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        bias = shared_bias if shared_bias is not None else \
            rel_bias(pre + "attn.rel_pos.") if cfg.rel_pos != "none" else None
        post = cfg.block_norm == "post"  # res-post-norm: the norms close each branch instead of opening it
        h = tok if post else nrm(tok, pre + "norm1")
        if cfg.qkv_fused:
            b = p.get(pre + "attn.qkv.bias")
            if b is not None and not cfg.k_bias:  # q and v biases only (EVA, BEiT)
                b = torch.cat([b[:A], torch.zeros(A, dtype=b.dtype), b[2 * A:]])
            q, k, v = F.linear(h, p[pre + "attn.qkv.weight"], b).split(A, dim=-1)
        else:
            q, k, v = (F.linear(h, p[pre + f"attn.{n}_proj.weight"], p.get(pre + f"attn.{n}_proj.bias")) for n in "qkv")
        q, k, v = (t.reshape(B, -1, H, A // H).transpose(1, 2) for t in (q, k, v))
        if cfg.qk_norm:
            q, k = nrm(q, pre + "attn.q_norm"), nrm(k, pre + "attn.k_norm")
        if cfg.rope != "none":
            theta = angles(i)
            q, k = rotate(q, theta), rotate(k, theta)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=cfg.scale).transpose(1, 2).reshape(B, -1, A)
        if cfg.attn_inner_norm:
            a = nrm(a, pre + "attn.norm")
        a = F.linear(a, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])
        if cfg.attn_value_skip:
            a = a + v.transpose(1, 2).reshape(B, -1, A)
        if cfg.init_values is not None:
            a = a * p[pre + "ls1.gamma"]
        if post:
            a = nrm(a, pre + "norm1")
        tok = tok + a if tok.shape[-1] == A else a
        h = mlp(tok if post else nrm(tok, pre + "norm2"), pre + "mlp.")
        if post:
            h = nrm(h, pre + "norm2")
        tok = tok + (h * p[pre + "ls2.gamma"] if cfg.init_values is not None and not cfg.ls_attn_only else h)
        out[f"block_{i}"] = tok
    if cfg.final_norm:
        tok = nrm(tok, "norm")
    out["norm"] = tok
    n0 = cfg.num_prefix_tokens
    if cfg.dist_token:
        f = (tok[:, 0] + tok[:, 1]) / 2
    elif cfg.pool == "token":
        f = tok[:, 0]
    elif cfg.pool == "mean":
        f = tok[:, n0:].mean(1)
    elif cfg.pool == "token_mean":  # as HF's Dinov2WithRegistersForImageClassification writes it
        f = torch.cat([tok[:, 0], tok[:, 1 + cfg.reg_tokens:].mean(dim=1)], dim=1)
    else:  # map: nn.MultiheadAttention with the pool's q and kv as its in-projection (SigLIP's head)
        mha = torch.nn.MultiheadAttention(A, H, batch_first=True, dtype=torch.float64)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([p["attn_pool.q.weight"], p["attn_pool.kv.weight"]]))
            mha.in_proj_bias.copy_(torch.cat([p["attn_pool.q.bias"], p["attn_pool.kv.bias"]]))
            mha.out_proj.weight.copy_(p["attn_pool.proj.weight"])
            mha.out_proj.bias.copy_(p["attn_pool.proj.bias"])
        patches = tok[:, n0:]
        o = mha(p["attn_pool.latent"].expand(B, -1, -1), patches, patches, need_weights=False)[0]
        o = o + mlp(F.layer_norm(o, (A,), p["attn_pool.norm.weight"], p["attn_pool.norm.bias"], eps), "attn_pool.mlp.")
        f = o[:, 0].detach()
    if cfg.fc_norm:
        f = nrm(f, "fc_norm")
    if cfg.representation_size:
        f = torch.tanh(F.linear(f, p["pre_logits.fc.weight"], p["pre_logits.fc.bias"]))
    out["pre_logits"] = f
    if cfg.num_classes:
        if cfg.dist_token:
            f = (F.linear(tok[:, 0], p["head.weight"], p["head.bias"])
                 + F.linear(tok[:, 1], p["head_dist.weight"], p["head_dist.bias"])) / 2
        else:
            f = F.linear(f, p["head.weight"], p["head.bias"])
        if cfg.output_softmax:
            f = f.softmax(-1)
    out["logits"] = f
    return {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize("preset", TINY_PRESETS + ["tiny_rpn"] + SEED_FAST)
@pytest.mark.parametrize("kind", ["normal", "large"])
def test_forward_matches_an_independent_float64_implementation(preset, kind):
    cfg = get_preset(preset)
    p = init_weights(cfg, 1)
    x = random_images(cfg, 2, 1, kind)
    got, want = reference.forward(cfg, p, x), torch_forward(cfg, p, x)
    assert list(got) == cfg.stage_names()
    for stage in cfg.stage_names():
        assert got[stage].shape == want[stage].shape, stage
        assert rel(got[stage], want[stage]) < F64, stage


@pytest.mark.parametrize("preset,size", [("tiny", (40, 56)), ("tiny_pretrain", (32, 64)), ("tiny_meanpool", (16, 16)),
                                         ("tiny_t2t", (30, 30)), ("tiny_dinov2_reg", (35, 21)), ("tiny_deit3", (48, 40)),
                                         ("tiny_deit", (24, 40))])
def test_forward_at_another_image_size(preset, size):
    cfg = get_preset(preset)
    p = init_weights(cfg, 1)
    x = random_images(cfg, 2, 1, image_size=size)
    got, want = reference.forward(cfg, p, x), torch_forward(cfg, p, x)
    for stage in cfg.stage_names():
        assert rel(got[stage], want[stage]) < F64, stage


def test_permutation_invariance_without_positions():
    """The seed's demonstration: with no position embedding and mean pooling, shuffling patches changes nothing."""
    cfg = get_preset("tiny_meanpool").replace(pos_embed="none")
    p = init_weights(cfg, 0)
    x = random_images(cfg, 1, 0)
    shuffled = shuffle_patches(x, cfg.patch_size)
    # the helper really moves whole patches: the multiset of patches is unchanged, their order is not
    P = cfg.patch_size
    key = lambda im: sorted(im[0, :, r:r + P, c:c + P].tobytes() for r in range(0, im.shape[2], P) for c in range(0, im.shape[3], P))
    assert key(shuffled) == key(x) and not np.array_equal(shuffled, x)
    a, b = reference.forward(cfg, p, x)["logits"], reference.forward(cfg, p, shuffled)["logits"]
    assert rel(b, a) < F64
    with_pos = get_preset("tiny_meanpool")
    a, b = reference.forward(with_pos, p, x)["logits"], reference.forward(with_pos, p, shuffled)["logits"]
    assert rel(b, a) > 1e-3


def test_batch_rows_are_independent():
    cfg = get_preset("tiny")
    p = init_weights(cfg, 0)
    x = random_images(cfg, 3, 0)
    full = reference.forward(cfg, p, x)
    one = reference.forward(cfg, p, x[1:2])
    for stage in cfg.stage_names():
        np.testing.assert_allclose(full[stage][1:2], one[stage], rtol=F64, atol=1e-14)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_low_precision_emulation_orders_errors_by_precision(preset):
    cfg = get_preset(preset)
    p = init_weights(cfg, 0)
    x = random_images(cfg, 2, 0)
    ref = reference.forward(cfg, p, x)
    err = {d: rel(reference.forward(cfg, p, x, dtype=d)["norm"], ref["norm"]) for d in ("float32", "float16", "bfloat16")}
    # each precision loses roughly its unit roundoff: fp32 ~1e-7, fp16 ~1e-3.5, bf16 ~1e-2.5
    assert 1e-9 < err["float32"] < 1e-5 < err["float16"] < err["bfloat16"] < 5e-2, err
