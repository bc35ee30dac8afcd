"""The Keras 3 VisionTransformer (subclassed keras.Model) and `build_model`.

Layer / variable paths follow timm's names, with "/" for "." and "_" inside a layer name (the torch
Keras backend registers variable paths as torch parameter names, which may not contain dots):
  patch_embed/proj/{kernel,bias}, patch_embed/norm/{gamma,beta} (patch_norm), cls_token, dist_token, reg_token,
  pos_embed, norm_pre/{gamma,beta},
  blocks_{i}/norm1/{gamma,beta}, blocks_{i}/attn/qkv/{kernel,bias}, blocks_{i}/attn/{q_norm,k_norm}/...,
  blocks_{i}/attn/proj/..., blocks_{i}/ls1/gamma, blocks_{i}/norm2/..., blocks_{i}/mlp/fc1/...,
  blocks_{i}/mlp/fc2/..., blocks_{i}/ls2/gamma, norm/..., attn_pool/{latent,q,kv,proj,norm,mlp/fc1,mlp/fc2},
  fc_norm/..., pre_logits_fc/..., head/..., head_dist/...,
  relative position biases: rel_pos/... (shared) or blocks_{i}_attn_rel_pos/... (one model-level layer per block),
  each relative_position_bias_table, or mlp_fc1/{kernel,bias} and mlp_fc2/..., rope_freqs (rope="mixed"),
  blocks_{i}/attn/{q_proj,k_proj,v_proj}/... (qkv_fused=False), blocks_{i}/mlp/{fc1_g,fc1_x}/... (swiglu_unpacked)
(all under the model's name, "vision_transformer/" by default; each only where the config has it). `canonical_variables()` is the exact map;
`load_canonical` / `to_canonical` move canonical dicts in and out: Dense kernel = torch weight transposed
(in, out); conv kernel HWIO = weight.transpose(2, 3, 1, 0); LayerNorm gamma/beta = weight/bias; cls_token and
pos_embed as they are. Both directions are pure transposes, so a float32 round trip is bit-exact. Loading is
strict: the canonical dict is validated first (shared.weights.validate_state), every model variable must be
assigned, shapes are checked.

Prefix tokens, in timm's order: class (learned or zeros), distillation, registers. A learned table holds rows for
the first cfg.num_pos_prefix of them; the others get a zero row (layers.with_unpositioned_prefix).

Input: NHWC by default (Keras' convention), `data_format="channels_first"` takes NCHW. Any image size
divisible by the patch works: a learned table stored at cfg.table_grid is resampled in-graph with
constant matrices (shared.posemb.model_resample_matrices), a sinusoidal table is a constant built for the grid.

`model(x)` returns the logits (softmaxed when cfg.output_softmax; the pooled features when
num_classes == 0; with a distillation token the mean of `head` and `head_dist`); `model.forward_stages(x)`
returns every stage of cfg.stage_names(); `model.head_logits(x)` what training sees (before any output softmax;
a distilled model's two heads stacked, (B, 2, K)).

Precision: pass a dtype policy: "float32", "mixed_bfloat16" or "mixed_float16" (`build_model(cfg, state,
dtype="bfloat16")` picks the mixed policy): float32 variables, compute in the half dtype. A pure
"bfloat16" policy also computes in bfloat16 but stores bfloat16 variables (export then is lossy).
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import numpy as np

import keras
from keras import ops

from shared.config import ViTConfig
from shared.errors import MismatchError
from shared.init import init_tensors
from shared.keras_file import keras_shape
from shared.posemb import fixed_table, model_rope_table, rope_grid
from shared.weights import expected_shapes, validate_state

from .layers import _f32
from .layers import (PACKAGE, AttentionPool, Block, PatchEmbed, RelPosBias, _dense, _norm, as_config,
                     dense_variables, ln_variables, resample_table, softmax_f32, with_unpositioned_prefix)

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@keras.saving.register_keras_serializable(package=PACKAGE)
class VisionTransformer(keras.Model):
    def __init__(self, config, data_format: str = "channels_last", **kwargs):
        kwargs.setdefault("name", "vision_transformer")
        super().__init__(**kwargs)
        c = self.cfg = as_config(config)
        self.config = c  # the Backend interface's `model.config`
        self.data_format = data_format
        pol = self.dtype_policy
        self.patch_embed = PatchEmbed(c.to_dict(), data_format=data_format, name="patch_embed", dtype=pol)
        self.pos_drop = keras.layers.Dropout(c.dropout, name="pos_drop", dtype=pol)
        eps = c.layer_norm_eps
        nk = c.norm_kind
        self.norm_pre = _norm(eps, "norm_pre", pol, nk) if c.norm_pre else None
        self.blocks = [Block(**c.block_args(i), name=f"blocks_{i}", dtype=pol) for i in range(c.depth)]
        # relative position biases (c.rel_pos_prefixes): one shared layer or one per block, built once per forward
        shapes = c.rel_pos_shapes()
        rows = shapes["relative_position_bias_table"][0] if c.rel_pos == "table" else 0
        self.rel_pos = [RelPosBias(c.rel_pos, rows, c.num_heads, c.rel_pos_dim, c.num_prefix_tokens,
                                   name=key.replace(".", "_"), dtype=pol) for key in c.rel_pos_prefixes]
        self.norm = _norm(eps, "norm", pol, nk) if c.final_norm else None
        self.attn_pool = AttentionPool(**c.pool_args(), name="attn_pool", dtype=pol) if c.pool == "map" else None
        self.fc_norm = _norm(eps, "fc_norm", pol, nk) if c.fc_norm else None
        self.pre_logits = (_dense(c.representation_size, "pre_logits_fc", pol)
                           if c.representation_size else None)
        self.head = _dense(c.num_classes, "head", pol) if c.num_classes else None
        self.head_dist = _dense(c.num_classes, "head_dist", pol) if c.num_classes and c.dist_token else None
        self._fixed_tables: dict = {}

    # ------------------------------------------------------------------ build
    def build(self, input_shape=None):
        c = self.cfg
        D, W = c.embed_dim, c.width
        if c.class_token == "learned":
            self.cls_token = self.add_weight(shape=(1, 1, D), initializer="zeros", name="cls_token", autocast=False)
        if c.dist_token:
            self.dist_token = self.add_weight(shape=(1, 1, D), initializer="zeros", name="dist_token", autocast=False)
        if c.reg_tokens:
            self.reg_token = self.add_weight(shape=(1, c.reg_tokens, D), initializer="zeros", name="reg_token",
                                             autocast=False)
        if c.pos_embed == "learned":
            gh, gw = c.table_grid
            self.pos_embed = self.add_weight(shape=(1, c.num_pos_prefix + gh * gw, D), initializer="zeros",
                                             name="pos_embed", autocast=False)
        elif c.pos_embed == "factorized":  # row and column tables (timm NaFlexVit's pos_embed_y / pos_embed_x)
            gh, gw = c.table_grid
            self.pos_embed_y = self.add_weight(shape=(1, gh, D), initializer="zeros", name="pos_embed_y",
                                               autocast=False)
            self.pos_embed_x = self.add_weight(shape=(1, gw, D), initializer="zeros", name="pos_embed_x",
                                               autocast=False)
        if c.rope == "mixed":  # RoPE-Mixed's learned frequencies (timm's rope.freqs)
            self.rope_freqs = self.add_weight(shape=c.rope_mixed_shape, initializer="zeros", name="rope_freqs",
                                              autocast=False)
        self.patch_embed.build(None)
        if self.norm_pre is not None:
            self.norm_pre.build((None, None, D))
        for b in self.blocks:
            b.build(None)
        for r in self.rel_pos:
            r.build(None)
        if self.norm is not None:
            self.norm.build((None, None, W))
        if self.attn_pool is not None:
            self.attn_pool.build((None, None, W))
        if self.fc_norm is not None:
            self.fc_norm.build((None, W))
        if self.pre_logits is not None:
            self.pre_logits.build((None, c.pooled_dim))
        if self.head is not None:
            self.head.build((None, c.feature_dim))
        if self.head_dist is not None:
            self.head_dist.build((None, c.feature_dim))
        self.built = True

    # --------------------------------------------------------------- helpers
    def _grid(self, x_shape):
        P = self.cfg.patch_size
        if self.data_format == "channels_first":
            H, W = x_shape[2], x_shape[3]
        else:
            H, W = x_shape[1], x_shape[2]
        return (H // P, W // P)

    def pos_table(self, grid):
        """(1, T, D) float32 table for a patch grid, or None: learned (resampled; zero rows for the prefix tokens
        without a position) or fixed sinusoidal."""
        c = self.cfg
        grid = tuple(int(g) for g in grid)
        if c.pos_embed == "none":
            return None
        if c.learned_table:
            if c.pos_embed == "factorized":  # y[i] + x[j] per patch, then resampled as a 2-D table: timm's rule
                y, x = (_f32(ops.convert_to_tensor(w.value if hasattr(w, "value") else w))
                        for w in (self.pos_embed_y, self.pos_embed_x))
                table = ops.reshape(y[:, :, None, :] + x[:, None, :, :], (1, -1, c.embed_dim))
            else:
                table = ops.convert_to_tensor(self.pos_embed.value if hasattr(self.pos_embed, "value")
                                              else self.pos_embed)
            table = resample_table(ops.cast(table, "float32"), c, grid)
            return with_unpositioned_prefix(table, c.num_pos_prefix, c.num_prefix_tokens)
        if grid not in self._fixed_tables:
            self._fixed_tables[grid] = np.asarray(fixed_table(c, grid), np.float32)[None]
        return ops.convert_to_tensor(self._fixed_tables[grid])

    def rope_table(self, grid):
        """The rotary table ([sin | cos] per patch token, shared.posemb.model_rope_table) the blocks' attention
        applies at `grid`, or None (cfg.rope 'none'): (N, 2*hd) float32 for 'cat' / 'dinov3' (a constant), (depth,
        H, N, 2*hd) for 'mixed', computed from the learned `rope_freqs` in float32 (gradients reach them)."""
        c = self.cfg
        grid = tuple(int(g) for g in grid)
        if c.rope == "none":
            return None
        if c.rope == "mixed":
            f = _f32(ops.convert_to_tensor(self.rope_freqs.value if hasattr(self.rope_freqs, "value")
                                           else self.rope_freqs))
            t0, t1 = (ops.convert_to_tensor(np.asarray(t, np.float32)) for t in rope_grid(grid, c.rope_indexing))
            angles = t0[:, None] * f[0][..., None, :] + t1[:, None] * f[1][..., None, :]
            angles = ops.repeat(angles, 2, axis=-1)
            return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
        key = ("rope", grid)
        if key not in self._fixed_tables:
            self._fixed_tables[key] = np.asarray(model_rope_table(c, grid), np.float32)
        return ops.convert_to_tensor(self._fixed_tables[key])

    def _block_rope(self, rope, i: int):
        return rope[i] if rope is not None and self.cfg.rope == "mixed" else rope

    def rel_pos_biases(self, grid):
        """The (heads, T, T) score bias each block adds at `grid` (shared.reference.rel_pos_bias), built once per
        forward, or Nones without a relative position bias."""
        c = self.cfg
        grid = tuple(int(g) for g in grid)
        if not self.rel_pos:
            return [None] * c.depth
        if c.rel_pos == "table" and grid != tuple(c.grid):
            from shared.errors import ConfigError

            raise ConfigError(f"config {c.name!r}: its relative position table is stored for the {c.grid[0]}x"
                              f"{c.grid[1]} patch grid, the input has {grid[0]}x{grid[1]}; resample the table first "
                              f"(shared.posemb.resize_rel_pos_table, timm's rule)")
        biases = [r(grid=grid) for r in self.rel_pos]
        return biases * c.depth if c.rel_pos_shared else biases

    # --------------------------------------------------------------- forward
    def forward_stages(self, x, training=False, return_attn=False):
        """Every named stage (dict), computed in the policy's compute dtype (+ attn_i maps with return_attn)."""
        c = self.cfg
        dt = self.compute_dtype
        out = {}
        grid = self._grid(x.shape)
        rope, biases = self.rope_table(grid), self.rel_pos_biases(grid)
        x = self.patch_embed(x)
        out["patch_embed"] = x
        if self.patch_embed.norm is not None:
            x = self.patch_embed.norm(x)
            out["patch_norm"] = x
        B, D = ops.shape(x)[0], c.embed_dim
        prefix = []  # class (or prediction) token, distillation token, registers: timm's order
        if c.class_token == "learned":
            prefix.append(ops.broadcast_to(ops.cast(self.cls_token, dt), (B, 1, D)))
        elif c.class_token == "zeros":
            prefix.append(ops.zeros((B, 1, D), dtype=x.dtype))
        if c.dist_token:
            prefix.append(ops.broadcast_to(ops.cast(self.dist_token, dt), (B, 1, D)))
        if c.reg_tokens:
            prefix.append(ops.broadcast_to(ops.cast(self.reg_token, dt), (B, c.reg_tokens, D)))
        if prefix:
            x = ops.concatenate([*prefix, x], axis=1)
        table = self.pos_table(grid)
        if table is not None:
            x = x + ops.cast(table, dt)
        if training and c.dropout > 0:
            x = self.pos_drop(x, training=training)
        out["embed"] = x
        if self.norm_pre is not None:
            x = self.norm_pre(x)
            out["norm_pre"] = x
        maps = {}
        for i, blk in enumerate(self.blocks):
            if return_attn:
                x, maps[f"attn_{i}"] = blk(x, rope=self._block_rope(rope, i), attn_bias=biases[i], return_attn=True,
                                           training=training)
            else:
                x = blk(x, rope=self._block_rope(rope, i), attn_bias=biases[i], training=training)
            out[f"block_{i}"] = x
        if self.norm is not None:
            x = self.norm(x)
        out["norm"] = x
        n0 = c.num_prefix_tokens
        if c.dist_token:  # timm's distilled pre_logits: the mean of the class and distillation tokens
            x = (x[:, 0] + x[:, 1]) / 2
        elif c.pool == "token":
            x = x[:, 0]
        elif c.pool == "mean":  # the patch tokens (every token with pool_include_prefix: c.pool_start)
            x = self._patch_mean(x[:, c.pool_start:], dt)
        elif c.pool == "token_mean":  # DINOv2's linear head: the registers are in neither half
            x = ops.concatenate([x[:, 0], self._patch_mean(x[:, n0:], dt)], axis=-1)
        else:  # map: the attention pool sees the patch tokens (every token with pool_include_prefix)
            x = self.attn_pool(x[:, c.pool_start:])
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        if self.pre_logits is not None:
            x = ops.tanh(self.pre_logits(x))
        out["pre_logits"] = x
        if self.head is not None:
            if self.head_dist is not None:  # DeiT's inference output: the mean of the two heads
                heads = self._heads(out["norm"])
                x = (heads[:, 0] + heads[:, 1]) / 2
            else:
                x = self.head(x)
            if c.output_softmax:
                x = softmax_f32(x, dt)
        out["logits"] = x
        out.update(maps)
        return out

    @staticmethod
    def _patch_mean(patches, dt):
        """The mean of the patch tokens, accumulated in float32, rounded once to the compute dtype."""
        return ops.cast(ops.mean(ops.cast(patches, "float32"), axis=1), dt)

    def _heads(self, tokens):
        """A distilled model's (B, 2, K): `head` on the class token, `head_dist` on the distillation token."""
        return ops.stack([self.head(tokens[:, 0]), self.head_dist(tokens[:, 1])], axis=1)

    def call(self, x, training=False):
        return self.forward_stages(x, training=training)["logits"]

    def head_logits(self, x, training=False):
        """What the training loss sees (shared.reference.head_logits): the head output before any output softmax,
        (B, K); a distilled model's two heads, (B, 2, K) (the loss is the mean of their losses); the pooled
        features (B, F) without a head."""
        stages = self.forward_stages(x, training=training)
        if self.head is None:
            return stages["pre_logits"]
        if self.head_dist is not None:
            return self._heads(stages["norm"])
        return self.head(stages["pre_logits"])

    # ------------------------------------------------------------ bookkeeping
    def canonical_variables(self) -> dict:
        """canonical key -> (keras Variable, kind) with kind in {"conv", "dense", "direct"}."""
        c = self.cfg
        v = {"patch_embed.proj.weight": (self.patch_embed.proj.kernel, "conv")}
        if self.patch_embed.proj.use_bias:
            v["patch_embed.proj.bias"] = (self.patch_embed.proj.bias, "direct")
        if self.patch_embed.norm is not None:
            v.update(ln_variables("patch_embed.norm", self.patch_embed.norm))
        if c.class_token == "learned":
            v["cls_token"] = (self.cls_token, "direct")
        if c.dist_token:
            v["dist_token"] = (self.dist_token, "direct")
        if c.reg_tokens:
            v["reg_token"] = (self.reg_token, "direct")
        if c.pos_embed == "learned":
            v["pos_embed"] = (self.pos_embed, "direct")
        elif c.pos_embed == "factorized":
            v["pos_embed_y"] = (self.pos_embed_y, "direct")
            v["pos_embed_x"] = (self.pos_embed_x, "direct")
        if c.rope == "mixed":
            v["rope.freqs"] = (self.rope_freqs, "direct")

        def ln(key, layer):
            v.update(ln_variables(key, layer))

        def dense(key, layer):
            v.update(dense_variables(key, layer))

        if self.norm_pre is not None:
            ln("norm_pre", self.norm_pre)
        for i, b in enumerate(self.blocks):
            v.update(b.canonical_variables(f"blocks.{i}"))
        for key, r in zip(c.rel_pos_prefixes, self.rel_pos):
            v.update(r.canonical_variables(key))
        if self.norm is not None:
            ln("norm", self.norm)
        if self.attn_pool is not None:
            v.update(self.attn_pool.canonical_variables("attn_pool"))
        if self.fc_norm is not None:
            ln("fc_norm", self.fc_norm)
        if self.pre_logits is not None:
            dense("pre_logits.fc", self.pre_logits)
        if self.head is not None:
            dense("head", self.head)
        if self.head_dist is not None:
            dense("head_dist", self.head_dist)
        return v

    def get_config(self):
        return {"name": self.name, "config": self.cfg.to_dict(), "data_format": self.data_format,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy),
                "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    def build_from_config(self, config):
        """Keras' loader (`load_model`) builds the model from the file's build config, then assigns every variable
        its value from the file. On JAX the variables are first made as `new_model` makes them (zeros put on the
        device): Keras on JAX compiles each initializer (a random program per distinct shape) for values the file
        then replaces."""
        if keras.backend.backend() != "jax":
            return super().build_from_config(config)
        unfilled = _deferred(lambda: super(VisionTransformer, self).build_from_config(config))
        for v in unfilled:
            if v.trainable:
                _fill(v, np.zeros(v.shape, np.float32))
        _finish(self, unfilled)


def to_keras_layout(kind: str, value: np.ndarray) -> np.ndarray:
    """One canonical tensor in the Keras variable's layout (kind from `VisionTransformer.canonical_variables`)."""
    if kind == "conv":  # (D, C, P, P) -> (P, P, C, D)
        return np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)))
    if kind == "dense":  # (out, in) -> (in, out)
        return np.ascontiguousarray(np.transpose(value))
    return np.asarray(value)


def from_keras_layout(kind: str, value: np.ndarray) -> np.ndarray:
    """The inverse of `to_keras_layout` (a pure transpose: bit-exact)."""
    if kind == "conv":  # (P, P, C, D) -> (D, C, P, P)
        return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))
    if kind == "dense":
        return np.ascontiguousarray(np.transpose(value))
    return np.ascontiguousarray(value)


def load_canonical(model: VisionTransformer, state: Mapping[str, np.ndarray], source: str = "<state dict>") -> None:
    """Assign a canonical state dict to every variable of `model` (strict). Every key and shape is checked before
    anything is assigned; then each tensor is laid out and assigned in turn, so no second copy of the whole state
    is ever held (the state's arrays may be views of a memory-mapped file: each is read once, as it is used)."""
    validate_state(model.cfg, state, source=source)
    mapping = model.canonical_variables()
    _check(model, mapping, {k: np.shape(v) for k, v in state.items()}, source)
    _assign(mapping, ((key, state[key]) for key in mapping), owned=False)


def _check(model: VisionTransformer, mapping: dict, shapes: Mapping[str, tuple], source: str) -> None:
    """Raise MismatchError unless `shapes` (canonical key -> shape) has every key of `mapping` and no other, each
    shape laid out as its variable's, and every trainable variable of the model has a key (none left unset)."""
    problems = [f"model variable for key {k!r} has no value in the state dict" for k in mapping if k not in shapes]
    problems += [f"unexpected key {k!r}: the model has no variable for it" for k in shapes if k not in mapping]
    for key, (var, kind) in mapping.items():
        if key in shapes and keras_shape(kind, tuple(shapes[key])) != tuple(var.shape):
            problems.append(f"key {key!r}: canonical shape {tuple(shapes[key])} gives Keras shape "
                            f"{keras_shape(kind, tuple(shapes[key]))}, variable {var.path!r} has {tuple(var.shape)}")
    if problems:
        raise MismatchError(source, problems)
    mapped = {id(var) for var, _ in mapping.values()}
    stray = [v.path for v in model.weights if id(v) not in mapped and v.trainable]
    if stray:
        raise MismatchError(source, [f"model variable {p!r} has no canonical key" for p in stray])


def _assign(mapping: dict, items, *, owned: bool) -> None:
    """Assign (canonical key, float32 array) pairs to their variables one at a time, each laid out as it is
    assigned. owned: the arrays are the caller's to give away (init_tensors'), so an unfilled variable may keep one
    without a copy; otherwise it keeps a copy of its own, never a view of the caller's array."""
    for key, value in items:
        var, kind = mapping[key]
        value = np.asarray(value, np.float32)
        native = to_keras_layout(kind, value)
        if var._value is None:  # unfilled (build_model): its first value
            _fill(var, native if owned or not np.may_share_memory(native, value) else native.copy())
        else:
            var.assign(native)  # Keras casts to the variable dtype (bfloat16 for a pure "bfloat16" policy)
        del value, native


def to_canonical(model: VisionTransformer) -> dict[str, np.ndarray]:
    """The model's canonical float32 state dict (bit-exact for float32 variables)."""
    out = {}
    for key, (var, kind) in model.canonical_variables().items():
        out[key] = from_keras_layout(kind, np.asarray(keras.ops.convert_to_numpy(var.value)).astype(np.float32))
    validate_state(model.cfg, out, source="exported Keras model")
    return out


def jax_jit(model: VisionTransformer, fn):
    """`fn(x)`, which calls `model`, compiled by jax.jit with the model's variables as arguments (Keras on JAX keeps
    state in variables; a jitted function must take their values, not capture them as constants)."""
    import jax

    variables = model.variables

    def stateless(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(x)

    jitted = jax.jit(stateless)
    return lambda x: jitted([v.value for v in variables], x)


def tf_function(fn, jit_compile: bool = False):
    """`fn` as a TensorFlow graph (`tf.function`; jit_compile=True: XLA), traced without AutoGraph.

    AutoGraph rewrites a function's Python control flow into graph ops; most of a first call's trace time went into
    that rewrite. Code that also runs under jax.jit (this model, keras-hub's) has no control flow on tensor values
    for it to rewrite: its Python branches and loops depend on the config and shapes only, so the graph is the same
    op for op, and the outputs bit-identical."""
    import tensorflow as tf

    return tf.function(fn, jit_compile=jit_compile, reduce_retracing=False, autograph=False)


def openvino_numpy(tensors: dict) -> dict[str, np.ndarray]:
    """Keras-on-OpenVINO tensors as NumPy arrays from one compiled OpenVINO model with every tensor an output.

    Keras' OpenVINO backend builds a graph lazily and `convert_to_numpy` compiles a model per tensor: every stage of
    a forward compiled the graph up to it again (0.1 s each for a tiny model, most of a `check` child's forward). One
    model with all of them as results runs with the same compile option as Keras' (f32 inference precision); its
    outputs are bit-identical to the per-tensor ones (23 tiny and seed presets, 3 inputs each: 519 stages)."""
    import openvino as ov
    from keras.src.backend.openvino.core import OpenVINOKerasTensor, get_device

    lazy = [k for k, v in tensors.items() if isinstance(v, OpenVINOKerasTensor)]
    out = {k: keras.ops.convert_to_numpy(v) for k, v in tensors.items() if k not in lazy}
    if lazy:
        model = ov.Model(results=[tensors[k].output for k in lazy], parameters=[])
        results = ov.compile_model(model, get_device(), config={"INFERENCE_PRECISION_HINT": "f32"})({})
        out.update((k, np.asarray(results[i])) for i, k in enumerate(lazy))
    return {k: out[k] for k in tensors}


def new_model(cfg: ViTConfig, *, dtype: str = "float32", data_format: str = "channels_last",
              name: str = "vision_transformer") -> VisionTransformer:
    """A built model for `cfg` whose variables `build_model` fills and `.weights.h5` loading overwrites: on JAX
    all zeros (put on the device, not computed: Keras on JAX compiles each initializer, once per distinct shape),
    elsewhere as Keras' initializers make them.

    `dtype` is "float32", "bfloat16", "float16" (the mixed policies) or any Keras dtype policy (name or object).
    """
    model, unfilled = _unfilled_model(cfg, dtype, data_format, name)
    if keras.backend.backend() == "jax":
        for v in unfilled:
            if v.trainable:
                _fill(v, np.zeros(v.shape, np.float32))
    return _finish(model, unfilled)


def _unfilled_model(cfg: ViTConfig, dtype, data_format: str, name: str) -> tuple[VisionTransformer, list]:
    """A built model whose variables hold no value yet, and those variables: each must get one (`_fill`, or its
    own initializer: `_deferred_initialize()`) before the model is used.

    Keras defers the initializers of variables created inside a StatelessScope (its mechanism for building inside
    a traced function); here they are taken off Keras' list of pending variables, so that a model's variables are
    written once, with their final values, not computed by an initializer first and overwritten. Inside a
    caller's StatelessScope Keras' own deferral is left alone (no variable is returned)."""
    policy = POLICIES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    model = VisionTransformer(cfg.to_dict(), data_format=data_format, name=name, dtype=policy)
    H, W = cfg.image_size
    shape = (None, cfg.in_chans, H, W) if data_format == "channels_first" else (None, H, W, cfg.in_chans)
    return model, _deferred(lambda: model.build(shape))


def _deferred(build) -> list:
    """`build()` (which makes variables) with their initializers deferred (`_unfilled_model`); returns the variables
    it made, each still to be given a value."""
    from keras.src.backend.common import global_state
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    if in_stateless_scope():
        build()
        return []
    key = "uninitialized_variables"
    before = list(global_state.get_global_attribute(key, []) or [])
    with keras.StatelessScope(initialize_variables=False):
        build()
    unfilled = (global_state.get_global_attribute(key, []) or [])[len(before):]
    global_state.set_global_attribute(key, before)
    return unfilled


@contextlib.contextmanager
def without_tensorflow():
    """Under Keras on JAX or torch, in a process that has not imported TensorFlow: Keras' "is TensorFlow installed?"
    answers no for the block, instead of importing it (about 5 CPU s); asked again afterwards, it imports TensorFlow
    as before. For Keras' serializer (`keras_save`), which asks only to test whether a value is a TensorFlow object:
    none can be. Not for `set_random_seed`: importing TensorFlow draws from Python's and NumPy's global random
    states, so a training's dropout on JAX depends on it (seeded, then disturbed by the import, as before)."""
    import sys

    from keras.src.utils.module_utils import tensorflow as tf

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules or tf._available is not None:
        yield
        return
    tf._available = False
    try:
        yield
    finally:
        tf._available = None


def _fill(var, value: np.ndarray) -> None:
    """Give an unfilled variable (`_unfilled_model`) its first value, converted as `assign` converts it; `value`
    must be an array no one else holds (a backend may keep it without copying). On TensorFlow the variable is made
    in the name scope of its Keras path, as Keras' own initialization makes it (graphs and exports name it so)."""
    scope = contextlib.nullcontext()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        scope = tf.name_scope(var.path.rpartition("/")[0] + "/")
    with scope:
        var._initialize(var._convert_to_tensor(value, dtype=var.dtype))
    var._initializer = None


def _finish(model: VisionTransformer, unfilled: list) -> VisionTransformer:
    """After `_fill`: any variable still unfilled gets its own initializer's value (none in this model today:
    every trainable variable has a canonical key), then every layer runs the backend's post-build hook that Keras
    skips inside a StatelessScope (on torch: registering the variables as the layer's torch parameters)."""
    for v in unfilled:
        if v._value is None:
            v._deferred_initialize()
    if unfilled:
        from keras.src.utils.python_utils import is_default

        for layer in model._flatten_layers(include_self=True, recursive=True):
            if layer.built and not is_default(layer.build):  # a default build's hook ran in __init__, unskipped
                layer._post_build()
    return model


def build_model(cfg: ViTConfig, state: Mapping[str, np.ndarray] | None = None, *, dtype: str = "float32",
                seed: int = 0, data_format: str = "channels_last") -> VisionTransformer:
    """A model holding canonical weights (`state`, or init_weights(cfg, seed), drawn by init_tensors); compute dtype float32 / bfloat16 /
    float16 (the mixed policies: float32 variables) or a Keras dtype policy. Each variable is written once, with
    its weight (no initializer runs first).

    data_format: "channels_last" (NHWC, Keras' convention) or "channels_first" (NCHW).
    """
    model, unfilled = _unfilled_model(cfg, dtype, data_format, "vision_transformer")
    if state is not None:
        load_canonical(model, state)
    else:  # seeded weights, each array assigned as it is drawn (never the whole state beside the variables)
        mapping = model.canonical_variables()
        _check(model, mapping, expected_shapes(cfg), f"init_tensors({cfg.name!r})")
        _assign(mapping, init_tensors(cfg, seed), owned=True)
    return _finish(model, unfilled)
