"""The MindSpore VisionTransformer, with every stage of shared/reference.py.

    model = build_model(cfg, state, dtype="float32")    # nn.Cell, parameters named like the canonical keys
    logits = model(images)                               # (B, K) at cfg.image_size
    stages = StageNet(model, image_size=(40, 56))(x)     # tuple in cfg.stage_names() order, any size

Position tables are inputs of `forward_stages`, not baked into the blocks: `StageNet` holds the
constants for one input grid (resampling matrices from shared.posemb.resize_matrix for a learned
table, the fixed sinusoidal table otherwise) and shares the model's parameters, so one model serves
every input size in PyNative and Graph mode (Graph mode compiles per input shape anyway).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype

from shared.config import ViTConfig
from shared.posemb import fixed_table, resize_matrix
from shared.weights import expected_shapes

from .layers import MS_DTYPES, Block, Dropout, LayerNorm, Linear, PatchEmbed, Softmax, _Cell, _param


class PosTable(nn.Cell):
    """The position table added at one input grid.

    learned: rows = prefix rows + Wh @ table(gh, gw) @ Ww^T per channel (identity when grids agree);
    sincos*: a constant Tensor (not a Parameter); none: nothing.
    Holds no parameters: the learned table is passed in by the model.
    """

    def __init__(self, cfg: ViTConfig, grid: tuple[int, int]):
        super().__init__()
        self.kind = cfg.pos_embed
        self.prefix = cfg.num_prefix_tokens
        self.dim = cfg.embed_dim
        self.table_grid = tuple(cfg.table_grid)
        self.grid = tuple(grid)
        self.resample = self.kind == "learned" and self.table_grid != self.grid
        self.fixed = None
        self.wh = self.ww = None
        if self.kind in ("sincos1d", "sincos2d"):
            self.fixed = Tensor(fixed_table(cfg, self.grid).astype(np.float32))
        if self.resample:
            self.wh = Tensor(resize_matrix(self.table_grid[0], self.grid[0], cfg.resize_kernel).astype(np.float32))
            self.ww = Tensor(resize_matrix(self.table_grid[1], self.grid[1], cfg.resize_kernel).astype(np.float32))
        self.matmul = ops.MatMul()
        self.reshape = ops.Reshape()
        self.transpose = ops.Transpose()
        self.concat = ops.Concat(axis=0)

    def construct(self, learned):
        """learned: the (1, prefix + gh*gw, D) float32 parameter (or None). Returns (tokens, D) float32 or None."""
        if self.kind == "learned":
            table = learned[0]
            if self.resample:
                gh, gw = self.table_grid
                nh, nw = self.grid
                D = self.dim
                patches = table[self.prefix:]
                t = self.matmul(self.wh, self.reshape(patches, (gh, gw * D)))          # (nh, gw*D)
                t = self.reshape(self.transpose(self.reshape(t, (nh, gw, D)), (1, 0, 2)), (gw, nh * D))
                t = self.matmul(self.ww, t)                                             # (nw, nh*D)
                t = self.reshape(self.transpose(self.reshape(t, (nw, nh, D)), (1, 0, 2)), (nh * nw, D))
                if self.prefix > 0:
                    t = self.concat((table[: self.prefix], t))
                table = t
            return table
        return self.fixed


class VisionTransformer(_Cell):
    """ViT per shared/reference.py. `construct(images)` returns the logits stage at cfg.image_size."""

    def __init__(self, cfg: ViTConfig, state: Mapping[str, np.ndarray], dtype: str = "float32",
                 fused_softmax: bool = True):
        if dtype not in MS_DTYPES:
            raise ValueError(f"dtype must be one of {tuple(MS_DTYPES)}, got {dtype!r}")
        mdt = MS_DTYPES[dtype]
        super().__init__(mdt)
        self.config = cfg
        self.dtype_name = dtype
        self.fused_softmax = bool(fused_softmax)
        p = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
        D, W = cfg.embed_dim, cfg.width
        self.embed_dim, self.width = D, W
        self.num_prefix = cfg.num_prefix_tokens
        self.class_token = cfg.class_token
        self.has_pos = cfg.pos_embed != "none"
        self.learned_pos = cfg.pos_embed == "learned"
        self.pool_token = cfg.pool == "token"
        self.has_final_norm = cfg.final_norm
        self.has_fc_norm = cfg.fc_norm
        self.has_pre_logits = bool(cfg.representation_size)
        self.has_head = cfg.num_classes > 0
        self.output_softmax = cfg.output_softmax
        self.depth = cfg.depth

        self.patch_embed = PatchEmbed(cfg, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], mdt)
        self.cls_token = _param(p["cls_token"], "cls_token", mdt) if cfg.class_token == "learned" else None
        self.pos_embed = _param(p["pos_embed"], "pos_embed", mdt) if self.learned_pos else None
        self.pos_drop = Dropout(cfg.dropout)
        rates = np.linspace(0.0, cfg.drop_path, cfg.depth) if cfg.depth > 1 else np.array([cfg.drop_path])
        self.blocks = nn.CellList([Block(cfg, p, i, float(rates[i]), mdt, fused_softmax) for i in range(cfg.depth)])
        eps = cfg.layer_norm_eps
        self.norm = LayerNorm(p["norm.weight"], p["norm.bias"], eps, mdt) if cfg.final_norm else None
        self.fc_norm = LayerNorm(p["fc_norm.weight"], p["fc_norm.bias"], eps, mdt) if cfg.fc_norm else None
        if cfg.representation_size:
            self.pre_logits = _PreLogits(p["pre_logits.fc.weight"], p["pre_logits.fc.bias"], mdt)
        else:
            self.pre_logits = None
        self.head = Linear(p["head.weight"], p["head.bias"], mdt) if cfg.num_classes else None
        self.softmax = Softmax(mdt)
        self.pos = PosTable(cfg, cfg.grid)  # the table at the model's own size
        self.concat = ops.Concat(axis=1)
        self.zeros = ops.Zeros()
        self.reduce_mean = ops.ReduceMean(keep_dims=False)

        names = {prm.name for prm in self.get_parameters()}
        want = set(expected_shapes(cfg))
        if names != want:  # a programming error, not a user error
            raise AssertionError(f"parameter names differ from canonical keys: extra {sorted(names - want)}, "
                                 f"missing {sorted(want - names)}")

    # ------------------------------------------------------------------ forward
    def embed(self, x, pos):
        """patch_embed and embed stages; `pos` is a PosTable for the input's grid."""
        x = self.back(x)
        pe = self.patch_embed(x)
        B = pe.shape[0]
        x = pe
        if self.class_token == "learned":
            x = self.concat((ops.broadcast_to(self.cls_token, (B, 1, self.embed_dim)), x))
        elif self.class_token == "zeros":
            x = self.concat((self.zeros((B, 1, self.embed_dim), self.cdtype), x))
        if self.has_pos:
            if self.learned_pos:
                table = pos(self.f32(self.pos_embed))
            else:
                table = pos(None)
            x = x + self.back(table)
        return pe, self.pos_drop(x)

    def pool(self, x):
        """norm stage in, pre_logits stage out (pool, fc_norm, Linear-Tanh)."""
        if self.pool_token:
            x = x[:, 0]
        else:
            x = self.back(self.reduce_mean(self.f32(x[:, self.num_prefix:]), 1))
        if self.has_fc_norm:
            x = self.fc_norm(x)
        if self.has_pre_logits:
            x = self.pre_logits(x)
        return x

    def head_raw(self, feats):
        """Head output before any softmax (what a training loss wants)."""
        return self.head(feats)

    def forward_stages(self, x, pos):
        """Every stage, as a tuple in cfg.stage_names() order, in the compute dtype."""
        pe, x = self.embed(x, pos)
        outs = (pe, x)
        for blk in self.blocks:
            x = blk(x)
            outs = outs + (x,)
        if self.has_final_norm:
            x = self.norm(x)
        feats = self.pool(x)
        logits = feats
        if self.has_head:
            logits = self.head(feats)
            if self.output_softmax:
                logits = self.softmax(logits)
        return outs + (x, feats, logits)

    def construct(self, x):
        return self.forward_stages(x, self.pos)[-1]


class _PreLogits(_Cell):
    """pre_logits.fc (Linear) + Tanh, tanh computed in float32. Parameters: fc.weight, fc.bias."""

    def __init__(self, weight, bias, dtype):
        super().__init__(dtype)
        self.fc = Linear(weight, bias, dtype)
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


class LossNet(nn.Cell):
    """Training loss on the head output before softmax.

    num_classes > 1: softmax cross-entropy with int labels; num_classes == 1: binary cross-entropy
    with logits (labels 0/1). Returns the mean loss in float32.
    """

    def __init__(self, model: VisionTransformer, image_size: tuple[int, int] | None = None):
        super().__init__(auto_prefix=False)
        cfg = model.config
        size = tuple(image_size) if image_size is not None else cfg.image_size
        self.pos = PosTable(cfg, (size[0] // cfg.patch_size, size[1] // cfg.patch_size))
        if not cfg.num_classes:
            raise ValueError(f"config {cfg.name!r} has no classifier (num_classes=0): no loss to train")
        self.model = model
        self.binary = cfg.num_classes == 1
        self.cast = ops.Cast()
        self.ce = nn.CrossEntropyLoss()
        self.bce = nn.BCEWithLogitsLoss()

    def construct(self, x, labels):
        m = self.model
        outs = m.forward_stages(x, self.pos)
        z = self.cast(m.head_raw(outs[-2]), mstype.float32)
        if self.binary:
            return self.bce(z[:, 0], self.cast(labels, mstype.float32))
        return self.ce(z, labels)


def build_model(cfg: ViTConfig, state: Mapping[str, np.ndarray], dtype: str = "float32",
                fused_softmax: bool = True) -> VisionTransformer:
    """A VisionTransformer in inference mode holding `state` (canonical keys, validated by the caller).

    fused_softmax: the attention uses MindSpore's Softmax kernel (default; ~15x faster), False: the
    expm1-based one. Equally accurate overall, see vit_mindspore.layers.Softmax. The output softmax
    (cfg.output_softmax) is always the expm1 one.
    """
    model = VisionTransformer(cfg, state, dtype, fused_softmax)
    model.set_train(False)
    return model


def parameters_by_name(model: VisionTransformer) -> dict[str, Parameter]:
    """Canonical key -> Parameter. Names are canonical by construction (checked in __init__)."""
    return {p.name: p for p in model.get_parameters()}


def loss_and_grads(model: VisionTransformer, images: np.ndarray, labels: np.ndarray, *, train: bool = True,
                   jit: bool = False) -> tuple[float, dict[str, np.ndarray]]:
    """(loss, gradients keyed by canonical name as float32 NumPy) for one batch, via mindspore.value_and_grad.

    `train=True` runs with dropout / drop-path active (the model is put back in its previous mode after).
    `jit=True` compiles the step with mindspore.jit (Graph mode).
    """
    images = np.asarray(images)
    loss_net = LossNet(model, (int(images.shape[2]), int(images.shape[3])))
    params = model.trainable_params()
    grad_fn = ms.value_and_grad(loss_net, grad_position=None, weights=params)
    if jit:
        grad_fn = ms.jit(grad_fn)
    was_training = model.training
    model.set_train(train)
    try:
        x = Tensor(np.ascontiguousarray(images, dtype=np.float32))
        if model.config.num_classes == 1:
            y = Tensor(np.asarray(labels, dtype=np.float32).reshape(-1))
        else:
            y = Tensor(np.asarray(labels, dtype=np.int32).reshape(-1))
        loss, grads = grad_fn(x, y)
    finally:
        model.set_train(was_training)
    return float(loss.asnumpy()), {p.name: g.asnumpy().astype(np.float32) for p, g in zip(params, grads)}
