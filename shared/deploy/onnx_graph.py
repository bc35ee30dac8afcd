"""The suite's ONNX export: a ViT graph built from (ViTConfig, canonical state) with `onnx.helper` and NumPy.

    model = build_graph(cfg, state, stages=True)     # an onnx.ModelProto, checked by onnx.checker

No framework is involved: the graph follows the float64 reference (shared/reference.py) op for op, so a
divergence is the runtime's, never a tracer's. What the graph is:

  - input `images` (batch, C, H, W) float32: the batch is dynamic, the image size fixed (cfg.image_size; an export
    for another size is `cfg.with_image_size(...)`, which `vit-suite convert --image-size` does);
  - every canonical tensor is an initializer named by its canonical key (reading back is by name, bit-exact);
    layouts the graph needs (a Linear's transposed weight, the patch projection as a matrix) are graph ops on
    those initializers, which the runtimes fold once at load;
  - the position table: the learned `pos_embed` initializer itself when its grid is the export's grid (zero rows
    for unpositioned prefix tokens are concatenated in the graph); a sin-cos table, or a learned table at another
    grid, a factorized pair (pos_embed_y, pos_embed_x, summed per patch), is computed at export time in float64 by
    shared.posemb (the same resampling every backend uses, aspect-preserving or not) and stored as the constant
    `vit_suite.pos_table` (float32);
  - k_bias=False: the canonical `qkv.bias` initializer stays whole; the graph splits it and concatenates a zero k
    third (the reference's zeroing, so reading back returns the stored tensor);
  - a relative position bias (rel_pos 'table' or 'mlp', per block or shared) is built once per forward in the graph
    from its canonical initializers, like shared.reference.rel_pos_bias: the table's rows (or fc1 -> Relu -> fc2 of
    timm's RelPosMlp over the constant `vit_suite.rel_log_coords`, float32) gathered by the constant int64
    `vit_suite.rel_pos_index` (shared.posemb, for the export's fixed grid), transposed to (heads, T, T) (the mlp
    form padded with zeros for the class token's row and column), and added to the scaled scores before the Softmax;
  - rotary positions (cfg.rope), like shared.reference: q and k of the last N (patch) tokens rotated after the
    qk-norm (Slice, interleaved pairs by Reshape/Split or halves by Split, Neg, Concat; x cos + r sin), the prefix
    tokens unrotated. 'cat' / 'dinov3': the table at the export's fixed grid is computed at export time in float64
    (shared.posemb.model_rope_table) and stored as the constants `vit_suite.rope_sin` / `vit_suite.rope_cos`;
    'mixed' (RoPE-Mixed): computed once per forward in the graph from the `rope.freqs` initializer and the constant
    coordinates `vit_suite.rope_t0` / `vit_suite.rope_t1` (shared.posemb.rope_grid), block i gathering its [i];
  - the other Eva options: separate q_proj/k_proj/v_proj (no k bias with k_bias=False), the attention's and the
    MLP's inner norms, timm's unpacked SwiGLU (fc1_g, fc1_x), ls_attn_only, post-norm blocks (block_norm 'post':
    the block's norms at the end of each branch), grouped-query attention (num_kv_heads:
    each k / v head tiled for its group of q heads by Unsqueeze, Tile, Reshape), parallel blocks (num_parallel: each
    branch's output summed by Add, then the residual Add), AIMv2's patch norm (patch_norm: stage
    `patch_norm`) and bias-free attn.proj / MLP linears (proj_bias=False), and RMSNorm (norm_kind 'rms', every
    norm of the model but the MAP head's) built as x / Sqrt(ReduceMean(x * x) + eps) * weight: opset 23's
    RMSNormalization runs in both runtimes too, but measured no more accurate on tiny_rope_mixed (logits 6.6e-7 in
    ONNX Runtime against 4.9e-7 from these primitives, the same in OpenVINO) and would raise every export's opset;
  - the patch embedding is the reference's patchify (Reshape, Transpose: the Unfold tokens of the T2T seed and a
    stride-P conv are the same math) and a MatMul; LayerNormalization, Gelu (opset 20: erf, tanh), Sigmoid for
    QuickGELU and SiLU, Softmax and MatMul for attention;
  - output `logits`; with `stages=True` every stage of `cfg.stage_names()` is an output of its own (the in-memory
    graph a runtime backend runs always has them, so a divergence is located by stage);
  - metadata_props: the canonical file's metadata (format, format_version, vit_config) and `weights_sha256`.

`export_problems(cfg)` names what the graph cannot express (nothing the suite's configs turn on today, the Eva
options included).
"""
from __future__ import annotations


import hashlib
from typing import Mapping

import numpy as np

from .. import limits as L
from .. import weights as W
from ..config import ViTConfig, fields_off_default
from ..errors import UnsupportedError
from ..posemb import model_rope_table, position_table, rel_log_coords, rel_pos_index, rope_grid

#: opset of the export: 20 is the first with Gelu (approximate = none | tanh)
OPSET = 20
#: IR version 9 (onnx 1.14/1.15) carries opset 20; older runtimes read it
IR_VERSION = 9
#: the constants the graph adds beside the canonical initializers start with this prefix
CONST_PREFIX = "vit_suite."
#: metadata_props key of the weights' digest (weights_sha256)
DIGEST_KEY = "weights_sha256"
GRAPH_NAME = "vit_suite"
INPUT_NAME = "images"


def weights_sha256(cfg: ViTConfig, state: Mapping[str, np.ndarray]) -> str:
    """sha256 over every canonical tensor in the config's key order: its key, shape and float32 little-endian bytes."""
    h = hashlib.sha256()
    for key in W.expected_shapes(cfg):
        a = np.ascontiguousarray(np.asarray(state[key], dtype="<f4"))
        h.update(f"{key}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def export_problems(cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """What the ONNX graph cannot express for `cfg` (empty: it can be exported). Every field of today's ViTConfig
    is covered; a config field added later is refused here by name, when it is not at its default, until the builder
    learns it."""
    known = {"name", "image_size", "in_chans", "patch_size", "patch_bias", "embed_dim", "depth", "num_heads",
             "mlp_dim", "swiglu", "attn_dim", "qkv_bias", "qk_scale", "attn_value_skip", "qk_norm", "init_values",
             "class_token", "dist_token", "reg_tokens", "pool", "pos_embed", "pos_prefix_tokens", "pos_grid",
             "resize_kernel", "gelu", "layer_norm_eps", "norm_pre", "final_norm", "fc_norm", "representation_size",
             "num_classes", "output_softmax", "dropout", "attn_dropout", "drop_path", "k_bias", "rel_pos",
             "rel_pos_shared", "rel_pos_dim", "notes", "pool_include_prefix", "pool_heads",
             "pool_mlp_dim",
             # the Eva options
             "rope", "rope_temperature", "rope_offset", "rope_indexing", "rope_rotate_half", "rope_ref_grid",
             "qkv_fused", "attn_inner_norm", "mlp_inner_norm", "swiglu_unpacked", "norm_kind", "ls_attn_only",
             "block_norm",
             # NaFlexVit's tables (computed at export by shared.posemb: aspect-preserving, factorized)
             "pos_ar_preserving",
             "num_kv_heads", "num_parallel",
             "patch_norm", "proj_bias"}  # AIMv2's
    unknown = fields_off_default(cfg, known)
    return [f"config field {k}={getattr(cfg, k)!r} is not expressed by the ONNX exporter (shared/deploy/onnx_graph.py)"
            for k in unknown]


class _Graph:
    """Nodes, initializers and constants of one graph under construction (every value name unique)."""

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self._n = 0

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, name: str | None = None, **attrs):
        from onnx import helper

        outs = outputs if isinstance(outputs, list) else [self.fresh(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name or self.fresh(f"n_{op_type}"),
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, hint: str, value, dtype=None) -> str:
        """A constant initializer (float constants in the graph's dtype, int64 shapes as given)."""
        a = np.asarray(value, dtype=dtype if dtype is not None else self.dtype)
        name = f"{CONST_PREFIX}{hint}" if hint else self.fresh(f"{CONST_PREFIX}c")
        if name in self.inits:
            name = self.fresh(name)
        self.inits[name] = a
        return name

    def ints(self, *values: int) -> str:
        return self.const("", np.array(values, np.int64), np.int64)

    def scalar(self, value: float) -> str:
        return self.const("", np.array(value), None)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Builder:
    def __init__(self, cfg: ViTConfig, state: Mapping[str, np.ndarray], dtype: str):
        self.cfg, self.g = cfg, _Graph(np.float16 if dtype == "float16" else np.float32)
        self._rel: dict[str, str] = {}  # the relative position constants, made once
        for key in W.expected_shapes(cfg):
            self.g.inits[key] = np.asarray(state[key], dtype=np.float32).astype(self.g.dtype, copy=False)

    # ------------------------------------------------------------------ the reference's operations
    def linear(self, x: str, prefix: str, bias: bool | str = True) -> str:
        g = self.g
        wt = g.op("Transpose", f"{prefix}.weight", perm=[1, 0])
        y = g.op("MatMul", x, wt)
        b = bias if isinstance(bias, str) else (f"{prefix}.bias" if bias else None)
        return g.op("Add", y, b) if b else y

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.g.op("LayerNormalization", x, f"{prefix}.weight", f"{prefix}.bias", axis=-1, epsilon=float(eps))

    def rms_norm(self, x: str, prefix: str, eps: float) -> str:
        """RMSNorm (the reference's rms_norm): x / Sqrt(ReduceMean(x * x) + eps) * weight, from primitives (opset
        20 has no RMSNormalization)."""
        g = self.g
        ms = g.op("ReduceMean", g.op("Mul", x, x), g.ints(-1), keepdims=1)
        return g.op("Mul", g.op("Div", x, g.op("Sqrt", g.op("Add", ms, g.scalar(eps)))), f"{prefix}.weight")

    def norm(self, x: str, prefix: str, eps: float, kind: str = "layer") -> str:
        """The norm under `prefix` of the given kind (the reference's _Numerics.norm): LayerNorm or RMSNorm."""
        return self.rms_norm(x, prefix, eps) if kind == "rms" else self.layer_norm(x, prefix, eps)

    def act(self, x: str, kind: str) -> str:
        g = self.g
        if kind == "erf":
            return g.op("Gelu", x, approximate="none")
        if kind == "tanh":
            return g.op("Gelu", x, approximate="tanh")
        if kind == "quick":  # x * sigmoid(1.702 x) = x / (1 + exp(-1.702 x))
            return g.op("Mul", x, g.op("Sigmoid", g.op("Mul", x, g.scalar(1.702))))
        if kind == "silu":
            return g.op("Mul", x, g.op("Sigmoid", x))
        raise UnsupportedError(f"ONNX export: activation {kind!r} is not expressed")

    def mlp(self, x: str, prefix: str, *, hidden: int, act: str = "erf", gated: bool = False, unpacked: bool = False,
            inner_norm: bool = False, bias: bool = True, norm_eps: float = 1e-6, norm: str = "layer",
            dropout: float = 0.0, dim=None) -> str:
        g = self.g
        if unpacked:  # timm's SwiGLU: the gate from fc1_g, the value from fc1_x
            h = g.op("Mul", self.act(self.linear(x, _key(prefix, "fc1_g"), bias), act),
                     self.linear(x, _key(prefix, "fc1_x"), bias))
        elif gated:  # the gate first, then the value (timm's packed SwiGLU)
            a, b = g.op("Split", self.linear(x, _key(prefix, "fc1"), bias), axis=-1, num_outputs=2, outputs=2)
            h = g.op("Mul", self.act(a, act), b)
        else:
            h = self.act(self.linear(x, _key(prefix, "fc1"), bias), act)
        if inner_norm:
            h = self.norm(h, _key(prefix, "norm"), norm_eps, norm)
        return self.linear(h, _key(prefix, "fc2"), bias)

    def rotate(self, x: str, rope: tuple[str, str], hd: int) -> str:
        """The reference's rotate: the last N tokens of x (B, H, T, hd) as x cos + r sin, r = (-x1, x0, -x3, x2, ...)
        (interleaved pairs) or (-x_hi, x_lo) (cfg.rope_rotate_half); rope = (sin, cos), (N, hd) or (H, N, hd); the
        prefix tokens before them stay as they are."""
        g, cfg = self.g, self.cfg
        n0, T = cfg.num_prefix_tokens, cfg.num_tokens
        t = g.op("Slice", x, g.ints(n0), g.ints(T), g.ints(2)) if n0 else x
        if cfg.rope_rotate_half:
            lo, hi = g.op("Split", t, axis=-1, num_outputs=2, outputs=2)
            r = g.op("Concat", g.op("Neg", hi), lo, axis=-1)
        else:
            pairs = g.op("Reshape", t, g.ints(0, 0, 0, hd // 2, 2))
            even, odd = g.op("Split", pairs, axis=-1, num_outputs=2, outputs=2)
            r = g.op("Reshape", g.op("Concat", g.op("Neg", odd), even, axis=-1), g.ints(0, 0, 0, hd))
        sin, cos = rope
        t = g.op("Add", g.op("Mul", t, cos), g.op("Mul", r, sin))
        return g.op("Concat", g.op("Slice", x, g.ints(0), g.ints(n0), g.ints(2)), t, axis=2) if n0 else t

    def rope_tables(self) -> list[tuple[str, str]] | None:
        """Each block's rotary (sin, cos), once per forward like the reference (None without rotary positions).
        cat / dinov3: shared.posemb.model_rope_table at the export's grid, computed here in float64 and stored as the
        constants `vit_suite.rope_sin` / `vit_suite.rope_cos` (N, hd). mixed: computed in the graph from the
        `rope.freqs` initializer (2, depth, H, hd/2) like shared.posemb.rope_table_mixed: angles t0 * freqs[0] +
        t1 * freqs[1] over the constant coordinates `vit_suite.rope_t0` / `vit_suite.rope_t1` (N, 1) (rope_grid),
        each angle repeated for its pair, Sin and Cos; block i gathers [i] -> (H, N, hd)."""
        cfg, g = self.cfg, self.g
        if cfg.rope == "none":
            return None
        hd = cfg.head_dim
        if cfg.rope != "mixed":
            sin, cos = np.split(model_rope_table(cfg, cfg.grid), 2, axis=-1)
            return [(g.const("rope_sin", sin), g.const("rope_cos", cos))] * cfg.depth
        t0, t1 = (g.const(f"rope_t{j}", t[:, None]) for j, t in enumerate(rope_grid(cfg.grid, cfg.rope_indexing)))
        f0, f1 = (g.op("Unsqueeze", g.op("Gather", "rope.freqs", g.const("", np.array(j, np.int64), np.int64),
                                         axis=0), g.ints(2)) for j in (0, 1))  # (depth, H, 1, hd/2)
        angles = g.op("Add", g.op("Mul", t0, f0), g.op("Mul", t1, f1))  # (depth, H, N, hd/2)
        a = g.op("Unsqueeze", angles, g.ints(-1))
        angles = g.op("Reshape", g.op("Concat", a, a, axis=-1), g.ints(0, 0, 0, hd))  # interleaved: a0 a0 a1 a1 ...
        sin, cos = g.op("Sin", angles), g.op("Cos", angles)
        return [tuple(self.token(t, i, axis=0) for t in (sin, cos)) for i in range(cfg.depth)]

    def heads(self, t: str, H: int, hd: int) -> str:
        """(B, T, A) -> (B, H, T, hd)."""
        return self.g.op("Transpose", self.g.op("Reshape", t, self.g.ints(0, 0, H, hd)), perm=[0, 2, 1, 3])

    def attention(self, x: str, prefix: str, *, num_heads: int, num_kv_heads: int | None = None,
                  width: int | None = None, qkv_bias: bool = True,
                  qkv_fused: bool = True, k_bias: bool = True, qk_norm: bool = False, inner_norm: bool = False,
                  scale: float | None = None, value_skip: bool = False, proj_bias: bool = True,
                  norm_eps: float = 1e-6, norm: str = "layer", dim=None, attn_drop=0.0, proj_drop=0.0, rotate_half=False,
                  rope: tuple[str, str] | None = None, attn_bias: str | None = None) -> str:
        g, A, H = self.g, width, num_heads
        hd = A // H
        scale = hd ** -0.5 if scale is None else scale
        if qkv_fused:
            b: bool | str = qkv_bias
            if qkv_bias and not k_bias:  # the k third held at zero
                parts = g.op("Split", _key(prefix, "qkv.bias"), axis=0, num_outputs=3, outputs=3)
                b = g.op("Concat", parts[0], g.const("", np.zeros(A)), parts[2], axis=0)
            q, k, v = g.op("Split", self.linear(x, _key(prefix, "qkv"), b), axis=-1, num_outputs=3, outputs=3)
        else:
            q = self.linear(x, _key(prefix, "q_proj"), qkv_bias)
            k = self.linear(x, _key(prefix, "k_proj"), qkv_bias and k_bias)
            v = self.linear(x, _key(prefix, "v_proj"), qkv_bias)
        Hkv = num_kv_heads or H
        qh, kh, vh = self.heads(q, H, hd), self.heads(k, Hkv, hd), self.heads(v, Hkv, hd)
        if qk_norm:
            qh = self.norm(qh, _key(prefix, "q_norm"), norm_eps, norm)
            kh = self.norm(kh, _key(prefix, "k_norm"), norm_eps, norm)
        if rope is not None:  # the patch tokens' q and k, after the qk-norm
            qh, kh = self.rotate(qh, rope, hd), self.rotate(kh, rope, hd)
        if Hkv != H:  # grouped-query attention: kv head j repeated for q heads j * groups ... (Tile, then Reshape)
            reps = g.ints(1, 1, H // Hkv, 1, 1)
            kh, vh = (g.op("Reshape", g.op("Tile", g.op("Unsqueeze", t, g.ints(2)), reps), g.ints(0, H, -1, hd))
                      for t in (kh, vh))
        scores = g.op("Mul", g.op("MatMul", qh, g.op("Transpose", kh, perm=[0, 1, 3, 2])), g.scalar(scale))
        if attn_bias is not None:  # (H, T, T), broadcast over the batch
            scores = g.op("Add", scores, attn_bias)
        probs = g.op("Softmax", scores, axis=-1)
        out = g.op("MatMul", probs, vh)
        out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), g.ints(0, 0, A))
        if inner_norm:
            out = self.norm(out, _key(prefix, "norm"), norm_eps, norm)
        out = self.linear(out, _key(prefix, "proj"), proj_bias)
        if value_skip:  # T2T: v (heads merged: v itself) + proj(attention)
            out = g.op("Add", v, out)
        return out

    def block(self, x: str, prefix: str, *, dim: int, attn: dict, mlp: dict, ls_init=None, drop_path=0.0,
              norm_eps: float = 1e-6, norm: str = "layer", ls_attn_only: bool = False, post_norm: bool = False,
              num_parallel: int = 1,
              rope: tuple[str, str] | None = None, attn_bias: str | None = None) -> str:
        g = self.g
        if num_parallel > 1:  # timm's ParallelThingsBlock: x + sum of attns.j, then + sum of ffns.j
            def branch(pre: str, x: str, attention: bool) -> str:
                h = self.norm(x, _key(pre, "norm"), norm_eps, norm)
                y = (self.attention(h, _key(pre, "attn"), **attn, rope=rope, attn_bias=attn_bias) if attention
                     else self.mlp(h, _key(pre, "mlp"), **mlp))
                return g.op("Mul", y, _key(pre, "ls.gamma")) if ls_init is not None else y

            for kind in ("attns", "ffns"):
                ys = [branch(_key(prefix, f"{kind}.{j}"), x, kind == "attns") for j in range(num_parallel)]
                s = ys[0]
                for y in ys[1:]:
                    s = g.op("Add", s, y)
                x = g.op("Add", x, s)
            return x
        width = attn.get("width") or dim
        if post_norm:  # x + norm1(attn(x)), x + norm2(mlp(x)): no LayerScale, same widths (ViTConfig)
            y = self.attention(x, _key(prefix, "attn"), **attn, rope=rope, attn_bias=attn_bias)
            x = g.op("Add", x, self.norm(y, _key(prefix, "norm1"), norm_eps, norm))
            h = self.mlp(x, _key(prefix, "mlp"), **mlp)
            return g.op("Add", x, self.norm(h, _key(prefix, "norm2"), norm_eps, norm))
        h = self.norm(x, _key(prefix, "norm1"), norm_eps, norm)
        y = self.attention(h, _key(prefix, "attn"), **attn, rope=rope, attn_bias=attn_bias)
        if ls_init is not None:
            y = g.op("Mul", y, _key(prefix, "ls1.gamma"))
        x = g.op("Add", x, y) if dim == width else y
        h = self.mlp(self.norm(x, _key(prefix, "norm2"), norm_eps, norm), _key(prefix, "mlp"), **mlp)
        if ls_init is not None and not ls_attn_only:
            h = g.op("Mul", h, _key(prefix, "ls2.gamma"))
        return g.op("Add", x, h)

    def attention_pool(self, x: str, prefix: str, *, dim: int, num_heads: int, hidden: int, act: str = "erf",
                       norm_eps: float = 1e-6) -> str:
        g, Wd, H = self.g, dim, num_heads
        hd = Wd // H
        q = self.linear(_key(prefix, "latent"), _key(prefix, "q"))  # (1, 1, W)
        q = g.op("Transpose", g.op("Reshape", q, g.ints(1, 1, H, hd)), perm=[0, 2, 1, 3])  # (1, H, 1, hd)
        kv = g.op("Reshape", self.linear(x, _key(prefix, "kv")), g.ints(0, 0, 2, H, hd))
        k, v = g.op("Split", g.op("Transpose", kv, perm=[2, 0, 3, 1, 4]), axis=0, num_outputs=2, outputs=2)
        k, v = (g.op("Squeeze", t, g.ints(0)) for t in (k, v))  # (B, H, N, hd)
        scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.scalar(hd ** -0.5))
        o = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        o = g.op("Reshape", g.op("Transpose", o, perm=[0, 2, 1, 3]), g.ints(0, 1, Wd))
        o = self.linear(o, _key(prefix, "proj"))
        h = self.layer_norm(o, _key(prefix, "norm"), norm_eps)
        o = g.op("Add", o, self.mlp(h, _key(prefix, "mlp"), hidden=hidden, act=act))
        return self.token(o, 0)

    def rel_pos_bias(self, prefix: str) -> str:
        """The (heads, T, T) bias of the relative position module under `prefix` (shared.reference.rel_pos_bias):
        the constants (index, log coordinates) are made once and shared by every module of the graph."""
        cfg, g = self.cfg, self.g
        n0 = cfg.num_prefix_tokens if cfg.rel_pos == "table" else 0
        if "index" not in self._rel:
            self._rel["index"] = g.const("rel_pos_index", rel_pos_index(cfg.grid, n0), np.int64)
        if cfg.rel_pos == "table":
            rows = _key(prefix, "relative_position_bias_table")
        else:  # timm's RelPosMlp over the log relative coordinates (float64 -> the graph's dtype: the reference's r)
            if "coords" not in self._rel:
                self._rel["coords"] = g.const("rel_log_coords", rel_log_coords(cfg.grid))
            h = g.op("Relu", self.linear(self._rel["coords"], _key(prefix, "mlp.fc1")))
            rows = self.linear(h, _key(prefix, "mlp.fc2"))  # (R, heads)
        bias = g.op("Transpose", g.op("Gather", rows, self._rel["index"], axis=0), perm=[2, 0, 1])
        if cfg.rel_pos == "mlp" and cfg.num_prefix_tokens:  # zero row and column for the class token
            p = cfg.num_prefix_tokens
            bias = g.op("Pad", bias, g.ints(0, p, p, 0, 0, 0))
        return bias

    def token(self, x: str, i: int, axis: int = 1) -> str:
        return self.g.op("Gather", x, self.g.const("", np.array(i, np.int64), np.int64), axis=axis)

    # ------------------------------------------------------------------ the forward
    def forward(self) -> dict[str, str]:
        cfg, g = self.cfg, self.g
        C, P, D = cfg.in_chans, cfg.patch_size, cfg.embed_dim
        (gh, gw), N = cfg.grid, cfg.num_patches
        out: dict[str, str] = {}
        # patchify: (B, C, gh, P, gw, P) -> (B, gh, gw, C, P, P) -> (B, N, C*P*P), then the projection as a matrix
        x = g.op("Reshape", INPUT_NAME, g.ints(0, C, gh, P, gw, P))
        x = g.op("Reshape", g.op("Transpose", x, perm=[0, 2, 4, 1, 3, 5]), g.ints(0, N, C * P * P))
        w = g.op("Reshape", "patch_embed.proj.weight", g.ints(D, C * P * P))
        x = g.op("MatMul", x, g.op("Transpose", w, perm=[1, 0]))
        if cfg.patch_bias:
            x = g.op("Add", x, "patch_embed.proj.bias")
        out["patch_embed"] = x
        if cfg.patch_norm:  # AIMv2: a norm over each projected patch
            x = self.norm(x, "patch_embed.norm", cfg.layer_norm_eps, cfg.norm_kind)
            out["patch_norm"] = x

        ones = g.op("Shape", INPUT_NAME, start=0, end=1)  # (B,)
        bshape = g.op("Concat", ones, g.ints(1, 1), axis=0)  # (B, 1, 1): Expand broadcasts the rest
        prefix = []
        if cfg.class_token == "learned":
            prefix.append(g.op("Expand", "cls_token", bshape))
        elif cfg.class_token == "zeros":
            prefix.append(g.op("Expand", g.const("zero_token", np.zeros((1, 1, D))), bshape))
        if cfg.dist_token:
            prefix.append(g.op("Expand", "dist_token", bshape))
        if cfg.reg_tokens:
            prefix.append(g.op("Expand", "reg_token", bshape))
        if prefix:
            x = g.op("Concat", *prefix, x, axis=1)
        table = self.position_table()
        if table is not None:
            x = g.op("Add", x, table)
        out["embed"] = x
        if cfg.norm_pre:
            x = self.norm(x, "norm_pre", cfg.layer_norm_eps, cfg.norm_kind)
            out["norm_pre"] = x
        ropes = self.rope_tables()  # once per forward, like the reference
        biases = [self.rel_pos_bias(pre) for pre in cfg.rel_pos_prefixes]
        for i in range(cfg.depth):
            bias = biases[0 if cfg.rel_pos_shared else i] if biases else None
            x = self.block(x, f"blocks.{i}", **cfg.block_args(i), rope=ropes[i] if ropes else None, attn_bias=bias)
            out[f"block_{i}"] = x
        if cfg.final_norm:
            x = self.norm(x, "norm", cfg.layer_norm_eps, cfg.norm_kind)
        out["norm"] = x

        n0 = cfg.num_prefix_tokens
        x_cls = x_dist = None
        if cfg.dist_token:
            x_cls, x_dist = self.token(x, 0), self.token(x, 1)
            x = g.op("Mul", g.op("Add", x_cls, x_dist), g.scalar(0.5))
        elif cfg.pool == "token":
            x = self.token(x, 0)
        elif cfg.pool in ("mean", "token_mean"):  # the patch tokens (every token: pool_include_prefix)
            start = cfg.pool_start if cfg.pool == "mean" else n0
            patches = g.op("Slice", x, g.ints(start), g.ints(n0 + N), g.ints(1))
            mean = g.op("ReduceMean", patches, g.ints(1), keepdims=0)
            x = mean if cfg.pool == "mean" else g.op("Concat", self.token(x, 0), mean, axis=-1)
        else:  # map, over the patch tokens (every token: pool_include_prefix), with cfg.pool_args()'s heads
            patches = g.op("Slice", x, g.ints(cfg.pool_start), g.ints(n0 + N), g.ints(1))
            x = self.attention_pool(patches, "attn_pool", **cfg.pool_args())
        if cfg.fc_norm:
            x = self.norm(x, "fc_norm", cfg.layer_norm_eps, cfg.norm_kind)
        if cfg.representation_size:
            x = g.op("Tanh", self.linear(x, "pre_logits.fc"))
        out["pre_logits"] = x
        if cfg.num_classes and cfg.dist_token:
            x = g.op("Mul", g.op("Add", self.linear(x_cls, "head"), self.linear(x_dist, "head_dist")),
                     g.scalar(0.5))
        elif cfg.num_classes:
            x = self.linear(x, "head")
        if cfg.num_classes and cfg.output_softmax:
            x = g.op("Softmax", x, axis=-1)
        out["logits"] = x
        return out

    def position_table(self) -> str | None:
        cfg, g = self.cfg, self.g
        if cfg.pos_embed == "none":
            return None
        n_pos, n0 = cfg.num_pos_prefix, cfg.num_prefix_tokens
        if cfg.pos_embed == "learned" and tuple(cfg.table_grid) == tuple(cfg.grid):
            if n_pos == n0:
                return "pos_embed"
            T = cfg.num_pos_prefix + cfg.num_patches
            head = g.op("Slice", "pos_embed", g.ints(0), g.ints(n_pos), g.ints(1))
            tail = g.op("Slice", "pos_embed", g.ints(n_pos), g.ints(T), g.ints(1))
            return g.op("Concat", head, g.const("unpositioned_rows", np.zeros((1, n0 - n_pos, cfg.embed_dim))),
                        tail, axis=1)
        # a sin-cos table, or a learned one resampled to the export's grid: computed here in float64 (shared.posemb)
        params = {k: self.g.inits[k].astype(np.float64) for k in ("pos_embed", "pos_embed_y", "pos_embed_x")
                  if k in self.g.inits}
        return g.const("pos_table", position_table(cfg, params)[None])


def stage_shapes(cfg: ViTConfig) -> dict[str, list]:
    """Each stage's shape with a symbolic batch (what reference.forward returns for a batch)."""
    T, Wd = cfg.num_tokens, cfg.width
    shapes = {"patch_embed": ["batch", cfg.num_patches, cfg.embed_dim],
              "patch_norm": ["batch", cfg.num_patches, cfg.embed_dim], "embed": ["batch", T, cfg.embed_dim],
              "norm_pre": ["batch", T, cfg.embed_dim]}
    shapes.update({f"block_{i}": ["batch", T, Wd] for i in range(cfg.depth)})
    shapes.update(norm=["batch", T, Wd], pre_logits=["batch", cfg.feature_dim],
                  logits=["batch", cfg.num_classes or cfg.feature_dim])
    return shapes


def build_graph(cfg: ViTConfig, state: Mapping[str, np.ndarray], *, stages: bool = True, dtype: str = "float32",
                metadata: Mapping[str, str] | None = None):
    """The ONNX model of `cfg` with the canonical `state` (validated strictly first): output `logits`, plus every
    stage of cfg.stage_names() with stages=True. dtype float16 builds the same graph in float16 (initializers,
    constants, input and outputs); the canonical initializers are then float16 and only a float32 graph reads back
    bit-exact. Every export and every runtime build serializes it through `checked_bytes` (onnx.checker)."""
    from onnx import helper, numpy_helper

    problems = export_problems(cfg)
    if problems:
        raise UnsupportedError(f"{cfg.name}: cannot export to ONNX: " + "; ".join(problems))
    if dtype not in ("float32", "float16"):
        raise UnsupportedError(f"ONNX export: dtype {dtype!r} is not built (float32, float16)")
    W.validate_state(cfg, state, source=f"{cfg.name} (ONNX export)")
    b = _Builder(cfg, state, dtype)
    values = b.forward()
    g = b.g
    elem = helper.np_dtype_to_tensor_dtype(g.dtype)
    names = cfg.stage_names() if stages else ["logits"]
    shapes = stage_shapes(cfg)
    outputs = []
    for s in names:
        g.op("Identity", values[s], outputs=[s], name=f"stage_{s}")
        outputs.append(helper.make_tensor_value_info(s, elem, shapes[s]))
    graph = helper.make_graph(
        g.nodes, GRAPH_NAME,
        [helper.make_tensor_value_info(INPUT_NAME, elem, ["batch", cfg.in_chans, *cfg.image_size])], outputs,
        initializer=[numpy_helper.from_array(np.array(a, order="C"), name) for name, a in g.inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vit-suite",
                              ir_version=IR_VERSION)
    meta = {"format": W.FORMAT_NAME, "format_version": W.FORMAT_VERSION, "vit_config": cfg.to_json(),
            DIGEST_KEY: weights_sha256(cfg, state), **(metadata or {})}
    helper.set_model_props(model, meta)
    return model


def checked_bytes(model) -> bytes:
    """The serialized model, passed by onnx.checker (serialized once: a B/16 graph is 350 MB). A graph over
    protobuf's 2 GiB limit is refused (the exporter writes no external data)."""
    import onnx

    data = model.SerializeToString()
    if len(data) > L.MAX_ONNX_BYTES:
        raise UnsupportedError(f"{model.graph.name}: {len(data) / 2**30:.1f} GiB as ONNX, over protobuf's 2 GiB "
                               f"limit; the exporter writes no external data (keep the canonical .safetensors)")
    onnx.checker.check_model(data, full_check=False)
    return data
