"""PyTorch building blocks of the suite's ViT: PatchEmbed, Attention, Mlp, LayerScale, Block, AttentionPool
(timm parameter names).

Every numerics choice comes from `ViTConfig` (LayerNorm eps, GELU form, qk scale, value skip,
widths); nothing relies on a torch default. Where a low-precision model (bfloat16/float16)
reduces or normalises (softmax, mean pooling), the computation runs in float32 and rounds its
result once, which is what `shared.reference` emulates at those dtypes.

Dropout, attention dropout and stochastic depth are active only in training mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.config import ViTConfig


def layer_norm(dim: int, cfg: ViTConfig) -> nn.LayerNorm:
    """Every LayerNorm of the model: eps from the config, affine."""
    return nn.LayerNorm(dim, eps=cfg.layer_norm_eps, elementwise_affine=True)


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
    """Non-overlapping patches projected by a Conv2d with stride = kernel = patch: (B,C,H,W) -> (B,N,D)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                              bias=cfg.patch_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image {h}x{w} is not divisible by patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)  # row-major patch order


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv Linear (rows q, k, v).

    Input width `in_dim` may differ from the attention width cfg.width (T2T first block).
    With cfg.attn_value_skip the output is `v_merged + proj(softmax(q k^T * scale) v)`.
    `fused_attn=True` uses F.scaled_dot_product_attention(scale=cfg.scale); the explicit path (q k^T and softmax
    in at least float32, probabilities rounded to the model dtype, matmul) is used otherwise and whenever
    attention maps are requested.
    """

    def __init__(self, cfg: ViTConfig, in_dim: int, fused_attn: bool = True):
        super().__init__()
        self.num_heads, self.head_dim, self.width = cfg.num_heads, cfg.head_dim, cfg.width
        self.scale = float(cfg.scale)
        self.value_skip = bool(cfg.attn_value_skip)
        self.fused_attn = bool(fused_attn)
        self.qkv = nn.Linear(in_dim, 3 * cfg.width, bias=cfg.qkv_bias)
        # qk-norm: LayerNorm over each head's channels on q and k, before the scale
        self.q_norm = layer_norm(cfg.head_dim, cfg) if cfg.qk_norm else nn.Identity()
        self.k_norm = layer_norm(cfg.head_dim, cfg) if cfg.qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(cfg.attn_dropout)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=True)
        self.proj_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        B, T, _ = x.shape
        H, hd, W = self.num_heads, self.head_dim, self.width
        qkv = self.qkv(x).reshape(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, T, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        probs = None
        if self.fused_attn and not return_attn:
            p = self.attn_drop.p if self.training else 0.0
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        else:
            # scores in at least float32 (one rounding less than a low-precision matmul + scale; a float64
            # model stays float64), probabilities rounded once to the model dtype
            acc = torch.promote_types(q.dtype, torch.float32)
            scores = (q.to(acc) @ k.to(acc).transpose(-2, -1)) * self.scale
            probs = torch.softmax(scores, dim=-1).to(q.dtype)
            o = self.attn_drop(probs) @ v
        o = o.transpose(1, 2).reshape(B, T, W)
        o = self.proj_drop(self.proj(o))
        if self.value_skip:
            o = v.transpose(1, 2).reshape(B, T, W) + o
        return o, probs

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, scale={self.scale}, value_skip={self.value_skip}, fused_attn={self.fused_attn}"


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def gelu(cfg: ViTConfig) -> nn.Module:
    """The config's GELU form: erf (approximate='none'), tanh (approximate='tanh') or quick (CLIP)."""
    return QuickGELU() if cfg.gelu == "quick" else nn.GELU(approximate={"erf": "none", "tanh": "tanh"}[cfg.gelu])


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (timm LayerScale; key `gamma`, initialised to cfg.init_values)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class SwiGLU(nn.Module):
    """silu(gate) * value over fc1's packed output [gate; value] (timm SwiGLUPacked), computed in float32 and
    rounded once, like the reference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = x.float().chunk(2, dim=-1)
        return (F.silu(gate) * value).to(x.dtype)


class Mlp(nn.Module):
    """fc1 -> GELU (cfg.gelu) -> dropout -> fc2 -> dropout; with `gated` (cfg.swiglu, the blocks' MLPs) fc1 has
    2 * mlp_dim rows and SwiGLU replaces the GELU."""

    def __init__(self, cfg: ViTConfig, dim: int, gated: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * cfg.mlp_dim if gated else cfg.mlp_dim, bias=True)
        self.act = SwiGLU() if gated else gelu(cfg)
        self.drop1 = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.mlp_dim, dim, bias=True)
        self.drop2 = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block i, exactly like `shared.reference.block`.

    When the block's input width differs from cfg.width (T2T first block) there is no outer
    residual around attention (and so no stochastic depth on that branch). The stochastic-depth
    rate is cfg.drop_path_rates[index], as in every backend.
    """

    def __init__(self, cfg: ViTConfig, index: int, fused_attn: bool = True):
        super().__init__()
        din = cfg.block_in_dim(index)
        self.residual = din == cfg.width
        self.drop_path_rate = cfg.drop_path_rates[index]
        self.norm1 = layer_norm(din, cfg)
        self.attn = Attention(cfg, din, fused_attn)
        scaled = cfg.init_values is not None
        self.ls1 = LayerScale(cfg.width, cfg.init_values) if scaled else nn.Identity()
        self.drop_path1 = DropPath(self.drop_path_rate if self.residual else 0.0)
        self.norm2 = layer_norm(cfg.width, cfg)
        self.mlp = Mlp(cfg, cfg.width, gated=cfg.swiglu)
        self.ls2 = LayerScale(cfg.width, cfg.init_values) if scaled else nn.Identity()
        self.drop_path2 = DropPath(self.drop_path_rate)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        y, probs = self.attn(self.norm1(x), return_attn)
        y = self.ls1(y)
        x = x + self.drop_path1(y) if self.residual else y
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, probs


class AttentionPool(nn.Module):
    """timm's AttentionPoolLatent (SigLIP's MAP head), as `shared.reference.attention_pool`: one learned latent query
    attends to the tokens it is given (q from the latent, k and v from `kv`), proj, then a residual MLP on its
    LayerNorm; returns the latent's output (B, W). Scale head_dim ** -0.5, the model's heads and GELU, no dropout."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        W = cfg.width
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, W))
        self.q = nn.Linear(W, W, bias=True)
        self.kv = nn.Linear(W, 2 * W, bias=True)
        self.proj = nn.Linear(W, W, bias=True)
        self.norm = layer_norm(W, cfg)
        self.mlp = Mlp(cfg.replace(dropout=0.0), W)  # timm builds the pool without dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, W = x.shape
        H, hd = self.num_heads, self.head_dim
        q = self.q(self.latent).reshape(1, 1, H, hd).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(x).reshape(B, N, 2, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5)
        o = self.proj(o.transpose(1, 2).reshape(B, 1, W))
        return (o + self.mlp(self.norm(o)))[:, 0]
