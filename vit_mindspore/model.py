"""The MindSpore VisionTransformer, with every stage of shared/reference.py.

    model = build_model(cfg, state, dtype="float32")    # nn.Cell, parameters named like the canonical keys
    logits = model(images)                               # (B, K) at cfg.image_size
    stages = StageNet(model, image_size=(40, 56))(x)     # tuple in cfg.stage_names() order, any size
    table = model.pos_table((5, 7))                      # (1, T, D) table added to all T tokens at a grid (PyNative)
    state = to_canonical(model)                          # canonical weights out, bit-exact; load_canonical in

Parameter names are the canonical keys (layers.py: LayerNorm parameters are `weight`/`bias`, not MindSpore's
gamma/beta; the patch projection keeps the conv layout (D, C, P, P) though it runs as a matmul), so a canonical
dict maps onto the parameters by name.

Prefix tokens come in timm's order: class (learned `cls_token`, or zeros), distillation (`dist_token`), registers
(`reg_token`), then the patches. Position tables are inputs of `forward_stages`, not baked into the blocks:
`StageNet` holds the constants for one input grid (resampling matrices from shared.posemb.model_resample_matrices for
a learned table, the fixed sinusoidal table otherwise, zero rows for the prefix tokens that have no position) and
shares the model's parameters, so one model serves every input size in PyNative and Graph mode (Graph mode
compiles per input shape anyway).
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype

from shared.config import ViTConfig
from shared.init import init_tensors
from shared.posemb import (fixed_table, model_resample_matrices, model_resamples, model_rope_table, rel_log_coords,
                            rel_pos_index, rope_grid)
from shared.weights import expected_shapes, validate_state

from .layers import (MS_DTYPES, AttentionPoolLatent, Block, Dropout, Linear, PatchEmbed, RelPosBias, SharedBlock,
                     Softmax, _Cell, _param, norm_layer)


_configured = False


def configure_runtime(threads: int | None = None) -> None:
    """Process-wide settings, made once (the first call wins; `build_model` makes it): CPU kernel threads = the
    core count (MindSpore defaults to 25 threads, which oversubscribes small machines) and `launch_blocking()`
    (synchronous PyNative: 3-4x faster than the asynchronous default on CPU for these models)."""
    global _configured
    if _configured:
        return
    _configured = True
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = threads
    try:
        ms.set_device("CPU")
    except Exception:  # already set by the caller
        pass
    try:
        ms.device_context.cpu.op_tuning.threads_num(int(n))
    except Exception:  # set already (it may only be set once): keep the caller's choice
        pass
    try:
        ms.runtime.launch_blocking()
    except Exception:
        pass


class PosTable(nn.Cell):
    """The position table added to all the tokens at one input grid.

    learned: rows = the positioned prefix rows (the first cfg.num_pos_prefix), zero rows for the other prefix
    tokens (shared.posemb.with_unpositioned_prefix: x + 0 is exact, so this is timm's no_embed_class bit for
    bit), then Wh @ table(gh, gw) @ Ww^T per channel (shared.posemb.model_resamples: not when the table is
    used as stored); a factorized pair arrives as its 2-D table y[i] + x[j] (VisionTransformer.learned_table);
    sincos*: a constant Tensor (not a Parameter); none: nothing.
    Holds no parameters: the learned table is passed in by the model. `rope`: the grid's rotary table, or None.
    """

    def __init__(self, cfg: ViTConfig, grid: tuple[int, int]):
        super().__init__()
        self.kind = "learned" if cfg.learned_table else cfg.pos_embed  # factorized: its 2-D table (MindSporeViT)
        self.n_pos = cfg.num_pos_prefix
        self.n_unpos = cfg.num_prefix_tokens - cfg.num_pos_prefix if self.kind == "learned" else 0
        self.dim = cfg.embed_dim
        self.table_grid = tuple(cfg.table_grid)
        self.grid = tuple(grid)
        self.resample = self.kind == "learned" and model_resamples(cfg, self.grid)
        self.fixed = None
        self.wh = self.ww = None
        self.gap = Tensor(np.zeros((self.n_unpos, self.dim), np.float32)) if self.n_unpos else None
        if self.kind in ("sincos1d", "sincos2d"):
            self.fixed = Tensor(fixed_table(cfg, self.grid).astype(np.float32))
        if self.resample:
            self.wh, self.ww = (Tensor(m.astype(np.float32)) for m in model_resample_matrices(cfg, self.grid))
        self.matmul = ops.MatMul()
        self.reshape = ops.Reshape()
        self.transpose = ops.Transpose()
        self.concat = ops.Concat(axis=0)
        # the rotary table ([sin | cos] per patch token, shared.posemb.model_rope_table) the blocks' attention
        # applies at this grid: a constant for rope 'cat' / 'dinov3'; for 'mixed' the grid's coordinates, the
        # tables then come from the model's learned frequencies (`mixed`)
        self.rope = None
        # a relative position bias's constants at this grid (RelPosBias): the (T, T) index, the MLP's coordinates
        self.rel_index = self.rel_coords = None
        if cfg.rel_pos != "none":
            if cfg.rel_pos == "table" and self.grid != tuple(cfg.grid):
                from shared.errors import ConfigError

                raise ConfigError(f"config {cfg.name!r}: its relative position table is stored for the "
                                  f"{cfg.grid[0]}x{cfg.grid[1]} patch grid, the input has {self.grid[0]}x"
                                  f"{self.grid[1]}; resample the table first (shared.posemb.resize_rel_pos_table)")
            n0 = cfg.num_prefix_tokens if cfg.rel_pos == "table" else 0
            self.rel_index = Tensor(np.asarray(rel_pos_index(self.grid, n0), np.int32))
            if cfg.rel_pos == "mlp":
                self.rel_coords = Tensor(np.asarray(rel_log_coords(self.grid), np.float32))
        self.t0 = self.t1 = None
        if cfg.rope in ("cat", "dinov3"):
            self.rope = Tensor(model_rope_table(cfg, self.grid).astype(np.float32))
        elif cfg.rope == "mixed":
            t0, t1 = rope_grid(self.grid, cfg.rope_indexing)
            self.t0 = Tensor(t0.astype(np.float32).reshape(-1, 1))
            self.t1 = Tensor(t1.astype(np.float32).reshape(-1, 1))

    def mixed(self, freqs):
        """RoPE-Mixed's tables (depth, H, N, 2*hd) float32 from the learned frequencies (2, depth, H, hd/2)
        (shared.posemb.rope_table_mixed)."""
        f = ops.cast(freqs, mstype.float32)
        angles = self.t0 * ops.expand_dims(f[0], -2) + self.t1 * ops.expand_dims(f[1], -2)
        angles = ops.repeat_interleave(angles, 2, -1)
        return ops.concat((ops.sin(angles), ops.cos(angles)), -1)

    def construct(self, learned):
        """learned: the (1, num_pos_prefix + gh*gw, D) float32 parameter (or None).
        Returns (tokens, D) float32 (all the tokens, prefix and patches) or None."""
        if self.kind == "learned":
            table = learned[0]
            if self.n_unpos == 0 and not self.resample:
                return table
            patches = table[self.n_pos:] if self.n_pos > 0 else table
            if self.resample:
                gh, gw = self.table_grid
                nh, nw = self.grid
                D = self.dim
                t = self.matmul(self.wh, self.reshape(patches, (gh, gw * D)))          # (nh, gw*D)
                t = self.reshape(self.transpose(self.reshape(t, (nh, gw, D)), (1, 0, 2)), (gw, nh * D))
                t = self.matmul(self.ww, t)                                             # (nw, nh*D)
                patches = self.reshape(self.transpose(self.reshape(t, (nw, nh, D)), (1, 0, 2)), (nh * nw, D))
            rows = ()
            if self.n_pos > 0:
                rows = rows + (table[: self.n_pos],)
            if self.n_unpos > 0:
                rows = rows + (self.gap,)
            if self.n_pos > 0 or self.n_unpos > 0:
                return self.concat(rows + (patches,))
            return patches
        return self.fixed


class RopeMixed(_Cell):
    """RoPE-Mixed's learned frequencies `freqs` (2, depth, heads, hd/2): the parameter `rope.freqs` (PosTable.mixed
    turns them into a grid's tables)."""

    def __init__(self, cfg: ViTConfig, dtype):
        super().__init__(dtype)
        self.freqs = _param(cfg.rope_mixed_shape, "freqs", dtype)


class VisionTransformer(_Cell):
    """ViT per shared/reference.py. `construct(images)` returns the logits stage at cfg.image_size."""

    def __init__(self, cfg: ViTConfig, dtype: str = "float32", fused_softmax: bool = True):
        if dtype not in MS_DTYPES:
            raise ValueError(f"dtype must be one of {tuple(MS_DTYPES)}, got {dtype!r}")
        mdt = MS_DTYPES[dtype]
        super().__init__(mdt)
        self.config = cfg
        self.dtype_name = dtype
        self.fused_softmax = bool(fused_softmax)
        D, W = cfg.embed_dim, cfg.width
        self.embed_dim, self.width = D, W
        self.num_prefix = cfg.num_prefix_tokens
        self.class_token = cfg.class_token
        self.has_dist = cfg.dist_token
        self.num_reg = cfg.reg_tokens
        self.has_pos = cfg.pos_embed != "none"
        self.learned_pos = cfg.learned_table
        self.factorized = cfg.pos_embed == "factorized"
        self.has_norm_pre = cfg.norm_pre
        self.has_patch_norm = cfg.patch_norm
        self.pool_kind = cfg.pool
        self.pool_start = cfg.pool_start  # the first token the pool sees (0 with pool_include_prefix)
        self.has_final_norm = cfg.final_norm
        self.has_fc_norm = cfg.fc_norm
        self.has_pre_logits = bool(cfg.representation_size)
        self.has_head = cfg.num_classes > 0
        self.output_softmax = cfg.output_softmax
        self.depth = cfg.depth
        shapes = expected_shapes(cfg)

        self.patch_embed = PatchEmbed(cfg, mdt)
        self.cls_token = _param(shapes["cls_token"], "cls_token", mdt) if cfg.class_token == "learned" else None
        self.dist_token = _param(shapes["dist_token"], "dist_token", mdt) if cfg.dist_token else None
        self.reg_token = _param(shapes["reg_token"], "reg_token", mdt) if cfg.reg_tokens else None
        self.pos_embed = _param(shapes["pos_embed"], "pos_embed", mdt) if cfg.pos_embed == "learned" else None
        # factorized: row and column tables (timm NaFlexVit's pos_embed_y / pos_embed_x), summed into a 2-D table
        self.pos_embed_y = _param(shapes["pos_embed_y"], "pos_embed_y", mdt) if self.factorized else None
        self.pos_embed_x = _param(shapes["pos_embed_x"], "pos_embed_x", mdt) if self.factorized else None
        self.pos_drop = Dropout(cfg.dropout)
        eps = cfg.layer_norm_eps
        nk = cfg.norm_kind
        self.norm_pre = norm_layer(D, eps, mdt, nk) if cfg.norm_pre else None
        self.rope_mixed = cfg.rope == "mixed"
        self.rope = RopeMixed(cfg, mdt) if self.rope_mixed else None
        args = [cfg.block_args(i) for i in range(cfg.depth)]
        blocks = [(SharedBlock if SharedBlock.applies(a) else Block)(**a, dtype=mdt, fused_softmax=fused_softmax)
                  for a in args]
        # relative position bias (cfg.rel_pos_prefixes): one cell `rel_pos`, or one per block held by its attention
        # (`blocks.i.attn.rel_pos`, which the block never calls: the model builds each bias once per forward)
        rel = [RelPosBias(cfg.rel_pos, cfg.rel_pos_shapes(), cfg.num_prefix_tokens, mdt) for _ in cfg.rel_pos_prefixes]
        self.rel_pos_kind, self.rel_pos_shared = cfg.rel_pos, cfg.rel_pos_shared
        self.rel_pos = rel[0] if cfg.rel_pos_shared else None
        if rel and not cfg.rel_pos_shared:
            for blk, cell in zip(blocks, rel):
                blk.attn.rel_pos = cell
        self.blocks = nn.CellList(blocks)
        self.norm = norm_layer(W, eps, mdt, nk) if cfg.final_norm else None
        self.attn_pool = (AttentionPoolLatent(**cfg.pool_args(), dtype=mdt, fused_softmax=fused_softmax)
                          if cfg.pool == "map" else None)
        self.fc_norm = norm_layer(W, eps, mdt, nk) if cfg.fc_norm else None
        self.pre_logits = (_PreLogits(cfg.pooled_dim, cfg.representation_size, mdt) if cfg.representation_size
                           else None)
        self.head = Linear(cfg.feature_dim, cfg.num_classes, True, mdt) if cfg.num_classes else None
        self.head_dist = (Linear(cfg.feature_dim, cfg.num_classes, True, mdt) if cfg.num_classes and cfg.dist_token
                          else None)
        self.softmax = Softmax(mdt)
        self.pos = PosTable(cfg, cfg.grid)  # the table at the model's own size
        self.concat = ops.Concat(axis=1)
        self.concat_last = ops.Concat(axis=-1)
        self.zeros = ops.Zeros()
        self.reduce_mean = ops.ReduceMean(keep_dims=False)

        names = {prm.name for prm in self.get_parameters()}
        if names != set(shapes):  # a programming error, not a user error
            raise AssertionError(f"parameter names differ from canonical keys: extra {sorted(names - set(shapes))}, "
                                 f"missing {sorted(set(shapes) - names)}")

    def pos_table(self, grid: tuple[int, int]):
        """The (1, prefix + gh*gw, D) float32 table added to all the tokens at `grid` (zero rows for prefix tokens
        without a position), or None (PyNative; Graph mode uses PosTable)."""
        if not self.has_pos:
            return None
        table = PosTable(self.config, tuple(int(g) for g in grid))(self.learned_table() if self.learned_pos
                                                                   else None)
        return ops.expand_dims(table, 0)

    def learned_table(self):
        """The learned table at its stored grid, float32 (1, rows, D): pos_embed, or for a factorized table
        y[i] + x[j] per patch (resampled as a 2-D table it gives timm's per-axis rule, shared.posemb)."""
        if self.factorized:
            y, x = self.f32(self.pos_embed_y), self.f32(self.pos_embed_x)
            t = ops.expand_dims(y, 2) + ops.expand_dims(x, 1)  # (1, gh, gw, D)
            return ops.reshape(t, (1, -1, self.embed_dim))
        return self.f32(self.pos_embed)

    def rope_table(self, grid: tuple[int, int]):
        """The rotary table ([sin | cos] per patch token, shared.posemb.model_rope_table) the blocks' attention
        applies at `grid`, or None (cfg.rope 'none'): PosTable.rope (N, 2*hd) for 'cat' / 'dinov3', (depth, H, N,
        2*hd) from the learned rope.freqs for 'mixed'."""
        return self._rope(PosTable(self.config, tuple(int(g) for g in grid)))

    def _rope(self, pos):
        if self.rope_mixed:
            return pos.mixed(self.rope.freqs)
        return pos.rope

    # ------------------------------------------------------------------ forward
    def embed(self, x, pos):
        """patch_embed, patch_norm (= patch_embed without cfg.patch_norm) and embed stages; `pos` is a PosTable for
        the input's grid."""
        x = self.back(x)
        pe = self.patch_embed(x)
        pn = pe
        if self.has_patch_norm:
            pn = self.patch_embed.norm(pe)
        B = pe.shape[0]
        D = self.embed_dim
        prefix = ()  # timm's order: class (or prediction) token, distillation token, registers
        if self.class_token == "learned":
            prefix = prefix + (ops.broadcast_to(self.cls_token, (B, 1, D)),)
        elif self.class_token == "zeros":
            prefix = prefix + (self.zeros((B, 1, D), self.cdtype),)
        if self.has_dist:
            prefix = prefix + (ops.broadcast_to(self.dist_token, (B, 1, D)),)
        if self.num_reg > 0:
            prefix = prefix + (ops.broadcast_to(self.reg_token, (B, self.num_reg, D)),)
        x = pn
        if self.num_prefix > 0:
            x = self.concat(prefix + (pn,))
        if self.has_pos:
            if self.learned_pos:
                table = pos(self.learned_table())
            else:
                table = pos(None)
            x = x + self.back(table)
        return pe, pn, self.pos_drop(x)

    def patch_tokens(self, x):
        """The tokens after the prefix (class, distillation, registers)."""
        if self.num_prefix > 0:
            return x[:, self.num_prefix:]
        return x

    def _patch_mean(self, x, start=None):
        """The mean of the tokens from `start` (default: the patch tokens), accumulated in float32, rounded once to
        the compute dtype."""
        return self.back(self.reduce_mean(self.f32(self.patch_tokens(x) if start is None else x[:, start:]), 1))

    def pool(self, x):
        """norm stage in, pre_logits stage out (pool, fc_norm, Linear-Tanh). With a distillation token: the mean
        of the class and distillation tokens (timm's pre_logits)."""
        if self.has_dist:
            x = self.back((self.f32(x[:, 0]) + self.f32(x[:, 1])) / 2)
        elif self.pool_kind == "token":
            x = x[:, 0]
        elif self.pool_kind == "mean":  # the patch tokens (every token with pool_include_prefix)
            x = self._patch_mean(x, self.pool_start)
        elif self.pool_kind == "token_mean":  # DINOv2's linear head: the registers are in neither half
            x = self.concat_last((x[:, 0], self._patch_mean(x)))
        else:  # map: the attention pool sees the patch tokens (every token with pool_include_prefix)
            x = self.attn_pool(x[:, self.pool_start:] if self.pool_start else x)
        if self.has_fc_norm:
            x = self.fc_norm(x)
        if self.has_pre_logits:
            x = self.pre_logits(x)
        return x

    def head_raw(self, x, feats):
        """Head output before any softmax (what a training loss wants), from the norm stage `x` and the
        pre_logits stage `feats`: (B, K), or for a distilled model (2, B, K) = [head on the class token,
        head_dist on the distillation token] (the training loss is the mean of the two heads' losses)."""
        if self.has_dist:
            return ops.stack((self.head(x[:, 0]), self.head_dist(x[:, 1])), 0)
        return self.head(feats)

    def logits(self, x, feats):
        """The logits stage from the norm stage `x` and the pre_logits stage `feats`. Distilled: the mean of
        head(class token) and head_dist(distillation token), DeiT's inference output."""
        if not self.has_head:
            return feats
        if self.has_dist:
            z = self.back((self.f32(self.head(x[:, 0])) + self.f32(self.head_dist(x[:, 1]))) / 2)
        else:
            z = self.head(feats)
        if self.output_softmax:
            z = self.softmax(z)
        return z

    def forward_stages(self, x, pos):
        """Every stage, as a tuple in cfg.stage_names() order, in the compute dtype."""
        pe, pn, x = self.embed(x, pos)
        outs = (pe,)
        if self.has_patch_norm:
            outs = outs + (pn,)
        outs = outs + (x,)
        if self.has_norm_pre:
            x = self.norm_pre(x)
            outs = outs + (x,)
        shared = None
        if self.rel_pos_shared:
            shared = self.rel_pos(pos.rel_index, pos.rel_coords)
        rope = self._rope(pos)
        i = 0
        for blk in self.blocks:
            bias = shared
            if self.rel_pos_kind != "none" and not self.rel_pos_shared:
                bias = blk.attn.rel_pos(pos.rel_index, pos.rel_coords)
            if self.rope_mixed:
                x = blk(x, rope[i], bias)
            else:
                x = blk(x, rope, bias)
            outs = outs + (x,)
            i = i + 1
        if self.has_final_norm:
            x = self.norm(x)
        feats = self.pool(x)
        return outs + (x, feats, self.logits(x, feats))

    def construct(self, x):
        return self.forward_stages(x, self.pos)[-1]


class _PreLogits(_Cell):
    """pre_logits.fc (Linear) + Tanh, tanh computed in float32. Parameters: fc.weight, fc.bias."""

    def __init__(self, in_features: int, out_features: int, dtype):
        super().__init__(dtype)
        self.fc = Linear(in_features, out_features, True, dtype)
        self.tanh = ops.Tanh()

    def construct(self, x):
        return self.back(self.tanh(self.f32(self.fc(x))))


class StageNet(nn.Cell):
    """All stages at one input size, sharing `model`'s parameters (no prefix added to their names)."""

    def __init__(self, model: VisionTransformer, image_size: tuple[int, int] | None = None):
        super().__init__(auto_prefix=False)
        cfg = model.config
        size = tuple(image_size) if image_size is not None else cfg.image_size
        if size[0] % cfg.patch_size or size[1] % cfg.patch_size:
            raise ValueError(f"image {size[0]}x{size[1]} is not divisible by patch size {cfg.patch_size}")
        self.model = model
        self.image_size = size
        self.pos = PosTable(cfg, (size[0] // cfg.patch_size, size[1] // cfg.patch_size))
        self.cast = ops.Cast()

    def construct(self, x):
        outs = self.model.forward_stages(x, self.pos)
        res = ()
        for o in outs:
            res = res + (self.cast(o, mstype.float32),)
        return res


def load_canonical(model, state: Mapping[str, np.ndarray], source: str = "<state dict>", *,
                   in_place: bool = False) -> None:
    """Validate a canonical float32 state dict strictly, then set every parameter (cast to its dtype).

    in_place: write into each parameter's own storage (ops.assign), for a model that already ran: a graph compiled
    for it reads that storage, and would not see the new tensor `set_data` puts in its place."""
    cfg = model.config
    validate_state(cfg, state, source=source)
    _set(model, ((key, state[key]) for key in expected_shapes(cfg)), in_place=in_place)


def _set(model, items, *, in_place: bool = False) -> None:
    """Set each (canonical key, array) pair's parameter (cast to its dtype), one at a time (in_place: see
    load_canonical)."""
    params = {p.name: p for p in model.get_parameters()}  # the canonical keys (checked when the model is built)
    for key, value in items:
        p = params[key]
        tensor = Tensor(np.ascontiguousarray(value, np.float32)).astype(p.dtype)
        if in_place:
            ops.assign(p, tensor)
        else:
            p.set_data(tensor)


def to_canonical(model) -> dict[str, np.ndarray]:
    """Canonical float32 state dict of a model (bit-exact for a float32 model, an exact upcast otherwise)."""
    params = {p.name: p for p in model.get_parameters()}
    return {key: np.ascontiguousarray(params[key].asnumpy().astype(np.float32)) for key in expected_shapes(model.config)}


def build_model(cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *, dtype: str = "float32",
                seed: int = 0, fused_softmax: bool = True) -> VisionTransformer:
    """A VisionTransformer in inference mode holding canonical weights (`state`, or init_weights(cfg, seed), drawn by
    init_tensors).

    fused_softmax: the attention uses MindSpore's Softmax kernel (default; ~15x faster), False: the
    expm1-based one. Equally accurate overall, see vit_mindspore.layers.Softmax. The output softmax
    (cfg.output_softmax) is always the expm1 one.
    """
    configure_runtime()
    model = VisionTransformer(cfg, dtype, fused_softmax)
    if state is None:  # seeded weights, each array set as it is drawn (never the whole state beside the parameters)
        _set(model, init_tensors(cfg, seed))
    else:
        load_canonical(model, state)
    model.set_train(False)
    return model
