"""PyTorch building blocks of the suite's ViT: PatchEmbed, Attention, Mlp, LayerScale, Block, AttentionPool,
RelPosBias (timm parameter names).

Each layer takes its own arguments (the model reads them from `ViTConfig`: cfg.block_args(i), cfg.pool_args());
every numerics choice (LayerNorm eps, activation, qk scale, value skip, widths) is an argument, nothing relies on
a torch default. Where a low-precision model (bfloat16/float16)
reduces or normalises (softmax, mean pooling), the computation runs in float32 and rounds its
result once, which is what `shared.reference` emulates at those dtypes.

Dropout, attention dropout and stochastic depth are active only in training mode.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.config import ViTConfig
from shared.posemb import rel_log_coords, rel_pos_index


def layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    """Every LayerNorm of the model: eps given (from the config), affine."""
    return nn.LayerNorm(dim, eps=eps, elementwise_affine=True)


class RmsNorm(nn.Module):
    """timm's RmsNorm: x / sqrt(mean(x^2) + eps) * weight (key `weight`, no bias), in at least float32, rounded once."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.to(torch.promote_types(x.dtype, torch.float32))
        return (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(t.dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm_layer(dim: int, eps: float, kind: str = "layer") -> nn.Module:
    """A norm of the given kind (shared.config.NORM_KINDS): LayerNorm (`layer_norm`) or RMSNorm (`RmsNorm`)."""
    return RmsNorm(dim, eps) if kind == "rms" else layer_norm(dim, eps)


def softmax_f32(x: torch.Tensor) -> torch.Tensor:
    """Softmax computed in at least float32 (max-subtracted by torch) and rounded once to x's dtype."""
    return torch.softmax(x, dim=-1, dtype=torch.promote_types(x.dtype, torch.float32)).to(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth per sample (drops the whole residual branch), active only in training."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected by a Conv2d with stride = kernel = patch: (B,C,H,W) -> (B,N,D); with
    cfg.patch_norm a norm `norm` (cfg.norm_kind) over each projected patch, applied by the model (its own stage)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                              bias=cfg.patch_bias)
        self.norm = norm_layer(cfg.embed_dim, cfg.layer_norm_eps, cfg.norm_kind) if cfg.patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image {h}x{w} is not divisible by patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)  # row-major patch order


def apply_rope(x: torch.Tensor, rope: torch.Tensor, rotate_half: bool) -> torch.Tensor:
    """Rotate the last N tokens of x (B, H, T, hd) by the rotary table rope = [sin | cos] (N, 2*hd), or per head
    (H, N, 2*hd) (shared.posemb.model_rope_table), in at least float32, rounded once to x's dtype; the prefix
    tokens stay as they are."""
    n = rope.shape[-2]
    sin, cos = rope.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
    t = x[..., x.shape[-2] - n:, :].to(sin.dtype)
    if rotate_half:
        lo, hi = t.chunk(2, dim=-1)
        r = torch.cat([-hi, lo], dim=-1)
    else:
        r = torch.stack([-t[..., 1::2], t[..., 0::2]], dim=-1).reshape(t.shape)
    return torch.cat([x[..., :x.shape[-2] - n, :], (t * cos + r * sin).to(x.dtype)], dim=-2)


class Attention(nn.Module):
    """Multi-head self-attention, as `shared.reference.attention` (same arguments: `cfg.attention_args(i)`).

    dim: input width; width: the attention's (default dim; differs in a T2T first block); heads of width/num_heads.
    Projections: one fused `qkv` Linear (rows q, k, v), or with qkv_fused=False `q_proj`, `k_proj`, `v_proj`; biases
    with qkv_bias, the k part held at zero with k_bias=False (BEiT, EVA); num_kv_heads (grouped-query attention, separate
    projections): k_proj / v_proj give that many heads, each repeated for num_heads / num_kv_heads q heads. qk_norm: LayerNorm over each head's
    channels of q and k (`q_norm`, `k_norm`), before the scale. inner_norm: LayerNorm `norm` over the merged heads
    before `proj` (timm's scale_attn_inner); `norm` picks those norms' kind (layer or rms); `proj` has a bias with
    proj_bias. scale: default head_dim ** -0.5. value_skip (T2T): the output is
    v (heads merged) + proj(...). forward(x, rope, attn_bias, return_attn): a rotary table rotates the last N
    tokens' q and k (`apply_rope`; rotate_half picks the rotation), attn_bias is added to the scaled scores.
    Returns the output, or (output, probabilities) with return_attn.
    `fused_attn=True` uses F.scaled_dot_product_attention; the explicit path (q k^T and softmax in at least
    float32, probabilities rounded to the model dtype, matmul) is used otherwise and whenever the probabilities
    are requested.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, width: int | None = None,
                 qkv_bias: bool = True, qkv_fused: bool = True, k_bias: bool = True, qk_norm: bool = False,
                 inner_norm: bool = False, scale: float | None = None, rotate_half: bool = False,
                 value_skip: bool = False, proj_bias: bool = True, norm_eps: float = 1e-6, norm: str = "layer",
                 attn_drop: float = 0.0, proj_drop: float = 0.0, *, fused_attn: bool = True):
        super().__init__()
        W = int(width) if width is not None else int(dim)
        self.num_heads, self.head_dim, self.width = int(num_heads), W // int(num_heads), W
        self.num_kv_heads = int(num_kv_heads or num_heads)
        Wkv = self.num_kv_heads * self.head_dim
        self.scale = float(scale) if scale is not None else self.head_dim ** -0.5
        self.value_skip = bool(value_skip)
        self.qkv_fused, self.k_bias, self.rotate_half = bool(qkv_fused), bool(k_bias), bool(rotate_half)
        self.fused_attn = bool(fused_attn)
        if qkv_fused:
            self.qkv = nn.Linear(dim, 3 * W, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(dim, W, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, Wkv, bias=qkv_bias and k_bias)
            self.v_proj = nn.Linear(dim, Wkv, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim, norm_eps, norm) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, norm_eps, norm) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(W, norm_eps, norm) if inner_norm else nn.Identity()
        self.proj = nn.Linear(W, W, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.qkv_fused:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        b = self.qkv.bias
        if b is None or self.k_bias:
            return self.qkv(x).chunk(3, dim=-1)
        W = self.width  # the k third of the bias held at zero
        return F.linear(x, self.qkv.weight, torch.cat([b[:W], torch.zeros_like(b[W:2 * W]), b[2 * W:]])).chunk(3, dim=-1)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
                return_attn: bool = False):
        B, T, _ = x.shape
        H, Hkv, hd, W = self.num_heads, self.num_kv_heads, self.head_dim, self.width
        q, k, v = self._qkv(x)
        q = q.reshape(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k, v = (t.reshape(B, T, Hkv, hd).transpose(1, 2) for t in (k, v))  # (B, Hkv, T, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope, self.rotate_half), apply_rope(k, rope, self.rotate_half)
        if Hkv != H:  # grouped-query attention: kv head j serves q heads j * groups ... (timm's repeat_interleave)
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        probs = None
        if self.fused_attn and not return_attn:
            p = self.attn_drop.p if self.training else 0.0
            mask = attn_bias.to(q.dtype) if attn_bias is not None else None
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scale)
        else:
            # scores in at least float32 (one rounding less than a low-precision matmul + scale; a float64
            # model stays float64), probabilities rounded once to the model dtype
            acc = torch.promote_types(q.dtype, torch.float32)
            scores = (q.to(acc) @ k.to(acc).transpose(-2, -1)) * self.scale
            if attn_bias is not None:
                scores = scores + attn_bias.to(acc)
            probs = torch.softmax(scores, dim=-1).to(q.dtype)
            o = self.attn_drop(probs) @ v
        o = self.norm(o.transpose(1, 2).reshape(B, T, W))
        o = self.proj_drop(self.proj(o))
        if self.value_skip:
            o = v.transpose(1, 2).reshape(B, T, W) + o
        return (o, probs) if return_attn else o

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, scale={self.scale}, value_skip={self.value_skip}, fused_attn={self.fused_attn}"


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SiLU(nn.Module):
    """x * sigmoid(x), computed in float32 and rounded once (a SwiGLU gate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)


def activation(kind: str) -> nn.Module:
    """An MLP activation (shared.config.ACT_KINDS): GELU erf (approximate='none') or tanh, QuickGELU (CLIP), silu."""
    if kind == "quick":
        return QuickGELU()
    if kind == "silu":
        return SiLU()
    return nn.GELU(approximate={"erf": "none", "tanh": "tanh"}[kind])


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (timm LayerScale; key `gamma`, initialised to cfg.init_values)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class GLU(nn.Module):
    """act(gate) * value over fc1's packed output [gate; value] (timm's packed gated MLP; act silu: SwiGLUPacked),
    computed in float32 and rounded once, like the reference."""

    def __init__(self, kind: str):
        super().__init__()
        self.act = F.silu if kind == "silu" else activation(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
        return (self.act(gate) * value).to(x.dtype)


class Mlp(nn.Module):
    """fc1 -> act -> dropout -> [norm] -> fc2 -> dropout, as `shared.reference.mlp_forward` (same arguments:
    `cfg.mlp_args()`). act: "erf", "tanh", "quick" or "silu"; with `gated` fc1 has 2 * hidden rows and
    act(gate) * value replaces act (silu: SwiGLU), with `unpacked` too from separate `fc1_g` and `fc1_x` (timm's
    SwiGLU); inner_norm: a norm `norm` (kind `norm`) over the hidden width before fc2 (timm's scale_mlp_norm); the
    linears have biases with `bias` (timm proj_bias)."""

    def __init__(self, dim: int, hidden: int, act: str = "erf", gated: bool = False, unpacked: bool = False,
                 inner_norm: bool = False, bias: bool = True, norm_eps: float = 1e-6, norm: str = "layer",
                 dropout: float = 0.0):
        super().__init__()
        self.unpacked = bool(unpacked)
        if self.unpacked:
            self.fc1_g = nn.Linear(dim, hidden, bias=bias)
            self.fc1_x = nn.Linear(dim, hidden, bias=bias)
        else:
            self.fc1 = nn.Linear(dim, 2 * hidden if gated else hidden, bias=bias)
        self.act = GLU(act) if gated else activation(act)
        self.drop1 = nn.Dropout(dropout)
        self.norm = norm_layer(hidden, norm_eps, norm) if inner_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.fc1_g(x), self.fc1_x(x)], dim=-1) if self.unpacked else self.fc1(x)
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(h)))))


class Block(nn.Module):
    """Pre-norm transformer block, as `shared.reference.block` (same arguments: `cfg.block_args(i)`).

    attn / mlp: the Attention's and the Mlp's arguments (dim aside: the block's input width, and the attention's
    width for the MLP). ls_init: LayerScale `ls1`, `ls2` on each branch. When dim differs from the attention's
    width (T2T first block) there is no outer residual around attention (and so no stochastic depth on that
    branch). norm: the kind of norm1 / norm2 (layer or rms); ls_attn_only: no ls2 (timm attn_only_layer_scale);
    post_norm: the norms at the end of each branch, x + norm1(attn(x)), x + norm2(mlp(x)) (timm's res-post-norm
    blocks). num_parallel > 1 (timm's ParallelThingsBlock): `attns.j` and `ffns.j` (`Branch`es) instead, x + sum of
    the attention branches, then + sum of the MLP branches; return_attn gives branch 0's probabilities. forward(x, rope, attn_bias, return_attn) passes rope and attn_bias to the attention; returns the
    output, or (output, probabilities) with return_attn.
    """

    def __init__(self, dim: int, attn: dict, mlp: dict, ls_init: float | None = None, drop_path: float = 0.0,
                 norm_eps: float = 1e-6, norm: str = "layer", ls_attn_only: bool = False, post_norm: bool = False,
                 num_parallel: int = 1, *,
                 fused_attn: bool = True):
        super().__init__()
        self.num_parallel, self.post_norm = int(num_parallel), bool(post_norm)
        if self.num_parallel > 1:  # timm's ParallelThingsBlock: attns.j and ffns.j, each norm -> branch -> ls
            def branch(**inner):
                return Branch(dim, ls_init=ls_init, drop_path=drop_path, norm_eps=norm_eps, norm=norm, **inner)

            self.attns = nn.ModuleList([branch(attn=Attention(dim, **attn, fused_attn=fused_attn))
                                        for _ in range(self.num_parallel)])
            self.ffns = nn.ModuleList([branch(mlp=Mlp(dim, **mlp)) for _ in range(self.num_parallel)])
            return
        W = attn.get("width") or dim
        self.residual = dim == W
        self.drop_path_rate = float(drop_path)
        self.norm1 = norm_layer(dim, norm_eps, norm)
        self.attn = Attention(dim, **attn, fused_attn=fused_attn)
        scaled = ls_init is not None
        self.ls1 = LayerScale(W, ls_init) if scaled else nn.Identity()
        self.drop_path1 = DropPath(self.drop_path_rate if self.residual else 0.0)
        self.norm2 = norm_layer(W, norm_eps, norm)
        self.mlp = Mlp(W, **mlp)
        self.ls2 = LayerScale(W, ls_init) if scaled and not ls_attn_only else nn.Identity()
        self.drop_path2 = DropPath(self.drop_path_rate)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
                return_attn: bool = False):
        if self.num_parallel > 1:  # the branches summed (a stack summed, as timm), then the residual add
            outs = [b(x, rope, attn_bias, return_attn and j == 0) for j, b in enumerate(self.attns)]
            probs = outs[0][1] if return_attn else None
            x = x + torch.stack([o[0] if return_attn and j == 0 else o for j, o in enumerate(outs)]).sum(dim=0)
            x = x + torch.stack([f(x) for f in self.ffns]).sum(dim=0)
            return (x, probs) if return_attn else x
        if self.post_norm:  # no LayerScale, same widths (ViTConfig refuses the rest)
            y = self.attn(x, rope, attn_bias, return_attn)
            y, probs = y if return_attn else (y, None)
            x = x + self.drop_path1(self.norm1(y))
            x = x + self.drop_path2(self.norm2(self.mlp(x)))
            return (x, probs) if return_attn else x
        y = self.attn(self.norm1(x), rope, attn_bias, return_attn)
        y, probs = y if return_attn else (y, None)
        y = self.ls1(y)
        x = x + self.drop_path1(y) if self.residual else y
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return (x, probs) if return_attn else x


class Branch(nn.Module):
    """One branch of a parallel block (timm ParallelThingsBlock's attns.j / ffns.j): `norm` -> `attn` or `mlp` ->
    LayerScale `ls` (with ls_init) -> stochastic depth. forward(x, rope, attn_bias, return_attn) as `Attention`'s
    (an MLP branch ignores them)."""

    def __init__(self, dim: int, attn: nn.Module | None = None, mlp: nn.Module | None = None,
                 ls_init: float | None = None, drop_path: float = 0.0, norm_eps: float = 1e-6, norm: str = "layer"):
        super().__init__()
        self.norm = norm_layer(dim, norm_eps, norm)
        if attn is not None:
            self.attn = attn
        else:
            self.mlp = mlp
        self.ls = LayerScale(dim, ls_init) if ls_init is not None else nn.Identity()
        self.drop_path = DropPath(float(drop_path))

    def forward(self, x: torch.Tensor, rope=None, attn_bias=None, return_attn: bool = False):
        if not hasattr(self, "attn"):
            return self.drop_path(self.ls(self.mlp(self.norm(x))))
        y = self.attn(self.norm(x), rope, attn_bias, return_attn)
        y, probs = y if return_attn else (y, None)
        y = self.drop_path(self.ls(y))
        return (y, probs) if return_attn else y


class AttentionPool(nn.Module):
    """timm's AttentionPoolLatent (SigLIP's MAP head), as `shared.reference.attention_pool` (same arguments:
    `cfg.pool_args()`): one learned latent query attends to the tokens it is given (q from the latent, k and v from
    `kv`), proj, then a residual MLP (act, no dropout: timm's) on its LayerNorm; returns the latent's output (B, dim).
    Scale head_dim ** -0.5."""

    def __init__(self, dim: int, num_heads: int, hidden: int, act: str = "erf", norm_eps: float = 1e-6):
        super().__init__()
        W = dim
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, W))
        self.q = nn.Linear(W, W, bias=True)
        self.kv = nn.Linear(W, 2 * W, bias=True)
        self.proj = nn.Linear(W, W, bias=True)
        self.norm = layer_norm(W, norm_eps)
        self.mlp = Mlp(W, hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, W = x.shape
        H, hd = self.num_heads, self.head_dim
        q = self.q(self.latent).reshape(1, 1, H, hd).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(x).reshape(B, N, 2, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5)
        o = self.proj(o.transpose(1, 2).reshape(B, 1, W))
        return (o + self.mlp(self.norm(o)))[:, 0]


class RelPosBias(nn.Module):
    """A relative position bias (shared.reference.rel_pos_bias): forward(grid) -> (heads, T, T) score bias in the
    parameters' dtype, built once per forward by the model. kind "table": `relative_position_bias_table`
    (rows, heads) gathered by shared.posemb.rel_pos_index (BEiT, timm RelPosBias); "mlp": timm's RelPosMlp, `mlp.fc1`
    -> ReLU -> `mlp.fc2` over shared.posemb.rel_log_coords, the class token's row and column zero. The derived
    index and coordinates live in a plain per-(grid, device) cache, never in the state dict."""

    def __init__(self, kind: str, shapes: dict, prefix_tokens: int):
        super().__init__()
        self.kind, self.prefix_tokens = kind, int(prefix_tokens)
        if kind == "table":
            self.relative_position_bias_table = nn.Parameter(torch.zeros(shapes["relative_position_bias_table"]))
        else:
            (hidden, _), (heads, _) = shapes["mlp.fc1.weight"], shapes["mlp.fc2.weight"]
            self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(2, hidden), act=nn.ReLU(), fc2=nn.Linear(hidden, heads)))
        self._cache: dict = {}

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        if self.kind == "table":
            rows = self.relative_position_bias_table
            key = ("index", grid, rows.device)
            if key not in self._cache:
                self._cache[key] = torch.from_numpy(np.array(rel_pos_index(grid, self.prefix_tokens))).to(rows.device)
            return rows[self._cache[key]].permute(2, 0, 1)
        w = self.mlp.fc1.weight
        key = ("coords", grid, w.device)
        if key not in self._cache:
            self._cache[key] = (torch.from_numpy(np.array(rel_log_coords(grid))).to(w.device),
                                torch.from_numpy(np.array(rel_pos_index(grid, 0))).to(w.device))
        coords, index = self._cache[key]
        bias = self.mlp(coords.to(w.dtype))[index].permute(2, 0, 1)
        n0 = self.prefix_tokens
        return F.pad(bias, (n0, 0, n0, 0)) if n0 else bias
