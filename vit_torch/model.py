"""`VisionTransformer`: the suite's ViT in PyTorch; `state_dict()` is the canonical state dict.

    model = build_model(cfg, state, dtype="float32")   # canonical weights in (validated strictly)
    state = to_canonical(model)                         # and out, bit-exact; load_canonical(model, state)

Parameter names equal the canonical keys of `shared.weights.expected_shapes(cfg)`: there are no
persistent buffers, the zero prediction token is built on the fly, fixed sin-cos tables and
the position-table resampling matrices live in a plain per-(grid, dtype, device) cache.

Dynamic input size: any H, W divisible by the patch. A learned table stored at cfg.table_grid is
resampled to the input grid with `shared.posemb.model_resample_matrices` (float64 NumPy) applied by einsum in at
least float32 (float64 in a float64 model), so gradients flow to `pos_embed`; prefix rows are kept.

Precision: float32, bfloat16, float16 (the backend's dtypes) and float64 (the gradient oracle). Reductions
and normalisations (softmax, mean pooling, table resampling) run in at least float32 and round once.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import numpy as np
import torch
from torch import nn

from shared.config import ViTConfig
from shared.init import init_tensors
from shared.posemb import fixed_table, model_resample_matrices, model_resamples, model_rope_table, rope_grid
from shared.weights import CANONICAL_DTYPE, expected_shapes, validate_state

from .layers import AttentionPool, Block, PatchEmbed, RelPosBias, norm_layer, softmax_f32

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}


def _at_least_f32(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


class RopeMixed(nn.Module):
    """RoPE-Mixed (timm RotaryEmbeddingMixed): learned frequencies `freqs` (2, depth, heads, hd/2); at a grid the
    tables (depth, heads, N, 2*hd) of shared.posemb.rope_table_mixed, computed in at least float32."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.indexing = cfg.rope_indexing
        self.freqs = nn.Parameter(torch.zeros(cfg.rope_mixed_shape))

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        f = self.freqs.to(_at_least_f32(self.freqs))
        t0, t1 = (torch.from_numpy(t).to(f.device, f.dtype) for t in rope_grid(grid, self.indexing))
        angles = t0[:, None] * f[0][..., None, :] + t1[:, None] * f[1][..., None, :]
        angles = angles.repeat_interleave(2, dim=-1)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig, fused_attn: bool = True):
        super().__init__()
        self.config = cfg
        D, W = cfg.embed_dim, cfg.width
        self.patch_embed = PatchEmbed(cfg)
        if cfg.class_token == "learned":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D))
        if cfg.pos_embed == "learned":
            gh, gw = cfg.table_grid
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_pos_prefix + gh * gw, D))
        elif cfg.pos_embed == "factorized":  # row and column tables (timm NaFlexVit's pos_embed_y / pos_embed_x)
            gh, gw = cfg.table_grid
            self.pos_embed_y = nn.Parameter(torch.zeros(1, gh, D))
            self.pos_embed_x = nn.Parameter(torch.zeros(1, gw, D))
        self.pos_drop = nn.Dropout(cfg.dropout)
        eps = cfg.layer_norm_eps
        nk = cfg.norm_kind
        self.norm_pre = norm_layer(D, eps, nk) if cfg.norm_pre else nn.Identity()
        if cfg.rope == "mixed":  # RoPE-Mixed's learned frequencies (timm's rope.freqs)
            self.rope = RopeMixed(cfg)
        self.blocks = nn.ModuleList([Block(**cfg.block_args(i), fused_attn=fused_attn) for i in range(cfg.depth)])
        # relative position bias (cfg.rel_pos_prefixes): one module `rel_pos`, or one per block held by its attention
        # (`blocks.i.attn.rel_pos`, which the block never calls: the model builds each bias once per forward)
        rel = [RelPosBias(cfg.rel_pos, cfg.rel_pos_shapes(), cfg.num_prefix_tokens) for _ in cfg.rel_pos_prefixes]
        if cfg.rel_pos_shared:
            self.rel_pos = rel[0]
        else:
            for blk, module in zip(self.blocks, rel):
                blk.attn.rel_pos = module
        self.norm = norm_layer(W, eps, nk) if cfg.final_norm else nn.Identity()
        self.attn_pool = AttentionPool(**cfg.pool_args()) if cfg.pool == "map" else None
        self.fc_norm = norm_layer(W, eps, nk) if cfg.fc_norm else nn.Identity()
        if cfg.representation_size:
            self.pre_logits = nn.Sequential(OrderedDict(fc=nn.Linear(cfg.pooled_dim, cfg.representation_size),
                                                        act=nn.Tanh()))
        else:
            self.pre_logits = nn.Identity()
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        if cfg.dist_token:
            self.head_dist = nn.Linear(cfg.feature_dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self._table_cache: dict = {}  # not module state: never in state_dict

    # ------------------------------------------------------------------ options
    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype

    # ---------------------------------------------------------- position table
    def _resample_matrices(self, grid: tuple[int, int], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("resize", grid, device, dtype)
        if key not in self._table_cache:
            cfg = self.config
            wh, ww = (torch.from_numpy(np.array(m, np.float64)) for m in model_resample_matrices(cfg, grid))
            self._table_cache[key] = (wh.to(device, dtype), ww.to(device, dtype))
        return self._table_cache[key]

    def pos_table(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The (1, prefix + gh*gw, D) table added at `grid`, or None.

        Learned tables come in at least float32 (resampled when the grid differs), fixed ones in float64;
        the caller rounds to the model dtype once. Prefix tokens without a position row get zero rows
        (`shared.posemb.with_unpositioned_prefix`: adding 0 is exact).
        """
        cfg = self.config
        grid = (int(grid[0]), int(grid[1]))
        if cfg.pos_embed == "none":
            return None
        if cfg.learned_table:
            if cfg.pos_embed == "factorized":  # y[i] + x[j] per patch, then resampled as a 2-D table: timm's rule
                acc = _at_least_f32(self.pos_embed_y)
                table = (self.pos_embed_y.to(acc)[:, :, None] + self.pos_embed_x.to(acc)[:, None, :]).flatten(1, 2)
            else:
                table = self.pos_embed
            n0 = cfg.num_pos_prefix
            if model_resamples(cfg, grid):
                th, tw = cfg.table_grid
                acc = _at_least_f32(table)
                wh, ww = self._resample_matrices(grid, table.device, acc)
                patches = table[0, n0:].to(acc).reshape(th, tw, -1)
                out = torch.einsum("ah,hwd,bw->abd", wh, patches, ww).reshape(grid[0] * grid[1], -1)
                table = torch.cat([table[0, :n0].to(acc), out], dim=0)[None]
            missing = cfg.num_prefix_tokens - n0
            if missing:
                table = torch.cat([table[:, :n0], table.new_zeros(1, missing, table.shape[-1]), table[:, n0:]], dim=1)
            return table
        device = self.patch_embed.proj.weight.device
        key = ("fixed", grid, device)
        if key not in self._table_cache:
            self._table_cache[key] = torch.from_numpy(fixed_table(cfg, grid)).to(device)[None]  # float64
        return self._table_cache[key]

    def rope_table(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The rotary table ([sin | cos] per patch token, shared.posemb.model_rope_table) the blocks' attention
        applies at `grid`, or None (cfg.rope 'none'): (N, 2*hd) float64 for 'cat' / 'dinov3' (cached), (depth, H, N,
        2*hd) for 'mixed', computed from the learned `rope.freqs` in at least float32 (gradients reach them)."""
        cfg = self.config
        grid = (int(grid[0]), int(grid[1]))
        if cfg.rope == "none":
            return None
        if cfg.rope == "mixed":
            return self.rope(grid)
        device = self.patch_embed.proj.weight.device
        key = ("rope", grid, device)
        if key not in self._table_cache:
            self._table_cache[key] = torch.from_numpy(model_rope_table(cfg, grid)).to(device)
        return self._table_cache[key]

    def rel_pos_biases(self, grid: tuple[int, int]) -> list:
        """The (heads, T, T) score bias each block adds at `grid`, built once per forward (one shared module or one
        per block; shared.reference.rel_pos_bias), or Nones without a relative position bias."""
        cfg = self.config
        grid = (int(grid[0]), int(grid[1]))
        if cfg.rel_pos == "none":
            return [None] * cfg.depth
        if cfg.rel_pos == "table" and grid != tuple(cfg.grid):
            from shared.errors import ConfigError

            raise ConfigError(f"config {cfg.name!r}: its relative position table is stored for the "
                              f"{cfg.grid[0]}x{cfg.grid[1]} patch grid, the input has {grid[0]}x{grid[1]}; resample "
                              f"the table first (shared.posemb.resize_rel_pos_table, timm's rule)")
        if cfg.rel_pos_shared:
            return [self.rel_pos(grid)] * cfg.depth
        return [blk.attn.rel_pos(grid) for blk in self.blocks]

    # ------------------------------------------------------------------ forward
    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        return (x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size)

    def _embed(self, x: torch.Tensor, out: dict | None = None) -> torch.Tensor:
        cfg = self.config
        grid = self._grid(x)
        x = self.patch_embed(x)
        if out is not None:
            out["patch_embed"] = x
        if cfg.patch_norm:
            x = self.patch_embed.norm(x)
            if out is not None:
                out["patch_norm"] = x
        B = x.shape[0]
        prefix = []  # class (or prediction) token, distillation token, registers: timm's order
        if cfg.class_token == "learned":
            prefix.append(self.cls_token.expand(B, -1, -1))
        elif cfg.class_token == "zeros":
            prefix.append(x.new_zeros(B, 1, cfg.embed_dim))
        if cfg.dist_token:
            prefix.append(self.dist_token.expand(B, -1, -1))
        if cfg.reg_tokens:
            prefix.append(self.reg_token.expand(B, -1, -1))
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
        table = self.pos_table(grid)
        if table is not None:
            x = x + table.to(x.dtype)
        x = self.pos_drop(x)
        if out is not None:
            out["embed"] = x
        if cfg.norm_pre:
            x = self.norm_pre(x)
            if out is not None:
                out["norm_pre"] = x
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        rope, biases = self.rope_table(self._grid(x)), self.rel_pos_biases(self._grid(x))
        x = self._embed(x)
        for i, (blk, bias) in enumerate(zip(self.blocks, biases)):
            x = blk(x, self._block_rope(rope, i), bias)
        return self.norm(x)

    def _block_rope(self, rope: torch.Tensor | None, i: int) -> torch.Tensor | None:
        return rope[i] if rope is not None and self.config.rope == "mixed" else rope

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features (pre_logits=True) or the model's output. A distilled model gives the mean of its class
        and distillation tokens / heads (DeiT inference); `head_outputs` gives both heads for training."""
        cfg = self.config
        if cfg.dist_token:
            if pre_logits:
                return (x[:, 0] + x[:, 1]) / 2
            return self._finish(sum(self.head_outputs(x)) / 2)
        if cfg.pool == "token":
            x = x[:, 0]
        elif cfg.pool == "mean":  # mean over the patch tokens (every token: pool_include_prefix), in >= float32
            x = self._patch_mean(x, cfg.pool_start)
        elif cfg.pool == "token_mean":  # DINOv2's linear head: the registers are in neither half
            x = torch.cat([x[:, 0], self._patch_mean(x)], dim=-1)
        else:  # map: the attention pool sees the patch tokens (every token with pool_include_prefix)
            x = self.attn_pool(x[:, cfg.pool_start:])
        x = self.pre_logits(self.fc_norm(x))
        return x if pre_logits else self._finish(self.head(x))

    def _patch_mean(self, x: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """The mean of the tokens from `start` (default: the patch tokens, the prefix excluded), accumulated in at
        least float32, rounded once."""
        start = self.config.num_prefix_tokens if start is None else start
        return x[:, start:].to(_at_least_f32(x)).mean(dim=1).to(x.dtype)

    def head_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Head outputs before any output softmax, from the final-norm tokens: (logits,), or for a distilled model
        (head on the class token, head_dist on the distillation token), what the training loss sees."""
        if self.config.dist_token:
            return self.head(x[:, 0]), self.head_dist(x[:, 1])
        return (self.head(self.forward_head(x, pre_logits=True)),)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.num_classes and self.config.output_softmax:
            x = softmax_f32(x)
        return x

    def forward(self, x: torch.Tensor):
        """Logits; a distilled model in training mode returns both heads' logits (head, head_dist), as timm's
        distilled training does, and the mean of the two in eval mode."""
        x = self.forward_features(x)
        if self.config.dist_token and self.training:
            return self.head_outputs(x)
        return self.forward_head(x)

    def forward_stages(self, x: torch.Tensor, return_attn: bool = False) -> dict[str, torch.Tensor]:
        """Every stage of cfg.stage_names() as `shared.reference.forward` defines them (+ attn_i maps)."""
        out: dict[str, torch.Tensor] = {}
        rope, biases = self.rope_table(self._grid(x)), self.rel_pos_biases(self._grid(x))
        x = self._embed(x, out)
        maps = []
        for i, (blk, bias) in enumerate(zip(self.blocks, biases)):
            r = self._block_rope(rope, i)
            x, probs = blk(x, r, bias, return_attn=True) if return_attn else (blk(x, r, bias), None)
            out[f"block_{i}"] = x
            maps.append(probs)
        x = self.norm(x)
        out["norm"] = x
        out["pre_logits"] = self.forward_head(x, pre_logits=True)
        out["logits"] = self.forward_head(x)
        if return_attn:
            out.update({f"attn_{i}": a for i, a in enumerate(maps)})
        return out


def load_canonical(model: VisionTransformer, state: Mapping[str, np.ndarray], source: str = "<state dict>", *,
                   assign: bool = False) -> None:
    """Validate a canonical float32 NumPy state dict strictly, then load it into `model` (strict=True). With
    assign, the model's parameters become copies of the state (a model built on the meta device: no memory or
    time spent on an init that would be overwritten); the model never shares memory with `state`."""
    cfg = model.config
    validate_state(cfg, state, source=source)
    dtype = model.patch_embed.proj.weight.dtype
    tensors = {k: torch.from_numpy(np.array(state[k], dtype=CANONICAL_DTYPE, copy=True)).to(dtype)
               for k in expected_shapes(cfg)}
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True, assign=assign)


def to_canonical(model: VisionTransformer) -> dict[str, np.ndarray]:
    """The model's canonical float32 state dict (bit-exact for a float32 model; exact upcast otherwise)."""
    out = {}
    for k, v in model.state_dict().items():
        out[k] = v.detach().to("cpu", torch.float32).contiguous().numpy().copy()
    return out


def build_model(cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *, dtype: str = "float32",
                seed: int = 0, fused_attn: bool = True) -> VisionTransformer:
    """A VisionTransformer in eval mode holding canonical weights (`state`, or init_weights(cfg, seed)) in `dtype`.

    fused_attn: F.scaled_dot_product_attention (default) or the explicit attention that can return its maps.
    """
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(TORCH_DTYPES)}, got {dtype!r}")
    with torch.device("meta"):  # no storage: the parameters are assigned below
        model = VisionTransformer(cfg, fused_attn=fused_attn)
    if state is None:  # seeded weights, each array taken over as it is drawn (never a second copy of the model)
        with torch.no_grad():
            model.load_state_dict({k: torch.from_numpy(v) for k, v in init_tensors(cfg, seed)}, strict=True,
                                  assign=True)
    else:
        load_canonical(model, state, assign=True)
    return model.to(TORCH_DTYPES[dtype]).eval()
