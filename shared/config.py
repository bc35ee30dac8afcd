"""`ViTConfig`: one frozen record of every architectural and numerics choice.

Nothing a backend computes may depend on a framework default: every choice that
frameworks disagree on (GELU form, LayerNorm eps, token layout, position-table
resampling kernel, ...) is a field here, and the backends read it from here.

Widths: the model width is `embed_dim`; attention runs at `attn_dim` (default:
`embed_dim`). When they differ, the first block maps `embed_dim -> attn_dim`
like the token transformer of T2T-ViT: it has no outer residual around
attention (widths differ) and relies on the value skip inside attention; every
later block, the final norm and the head then run at `attn_dim`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import limits as L
from .errors import ConfigError

GELU_KINDS = ("erf", "tanh", "quick")  # quick: x * sigmoid(1.702 x) (OpenAI CLIP)
ACT_KINDS = GELU_KINDS + ("silu",)  # an Mlp's activation (silu: the gate of a SwiGLU MLP)
CLASS_TOKEN_KINDS = ("learned", "zeros", "none")
# map: attention pool with a latent query (SigLIP, timm 'map'); token_mean: concat(class token, mean of the patch
# tokens), DINOv2's linear-probe head (HF Dinov2ForImageClassification): the head reads 2 * width features
POOL_KINDS = ("token", "mean", "map", "token_mean")
# factorized: timm NaFlexVit's row and column tables (pos_embed_y (1, gh, D), pos_embed_x (1, gw, D)), each
# resampled along its axis, summed per patch; the patch tokens only
POS_EMBED_KINDS = ("learned", "sincos1d", "sincos2d", "none", "factorized")
RESIZE_KERNELS = ("bicubic", "bicubic_antialias", "bilinear", "bilinear_antialias")
# none | table: a learned (rows, heads) table read through shared.posemb.rel_pos_index (BEiT, timm RelPosBias) |
# mlp: timm's RelPosMlp ('cr'): fc1 -> ReLU -> fc2 over the log relative coordinates (vit_relpos_*)
REL_POS_KINDS = ("none", "table", "mlp")
# --- Eva options: timm's Eva class (EVA02, DINOv3, Perception Encoder, RoPE-ViT)
# rotary positions: cat (timm RotaryEmbeddingCat: axial, integer coordinates; EVA02, PE), mixed (RoPE-ViT: learned
# per-block, per-head 2-D frequencies, key rope.freqs), dinov3 (centred coordinates normalised to [-1, 1])
ROPE_KINDS = ("none", "cat", "mixed", "dinov3")
ROPE_INDEXING = ("ij", "xy")
NORM_KINDS = ("layer", "rms")  # every norm of the model: LayerNorm (weight, bias) or RMSNorm (weight only)
# where a block's norms sit: pre (x + attn(norm1(x)), the ViT default) | post (timm's res-post-norm blocks
# ResPostBlock, ResPostRelPosBlock, EvaBlockPostNorm: x + norm1(attn(x)), x + norm2(mlp(x))). Same keys either way:
# the block type comes from the architecture (timm's built model, a config's field), never from a file's keys
BLOCK_NORMS = ("pre", "post")


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def shown(v: Any) -> str:
    """`str '1e-6'`: a value with its type, for messages (long values cut)."""
    r = repr(v)
    return f"{type(v).__name__} {r if len(r) <= 60 else r[:57] + '...'}"


def _pair(value: Any, what: str) -> tuple[int, int]:
    if is_int(value):
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"{what} must be an int or a (height, width) pair of ints, got {shown(value)}")


#: the type every field must have: (kind, bounds); kinds: int, opt_int, bool, float, opt_float, str
_INT_BOUNDS = {"in_chans": (1, L.MAX_CHANNELS), "patch_size": (1, L.MAX_PATCH), "embed_dim": (1, L.MAX_WIDTH),
               "depth": (1, L.MAX_DEPTH), "num_heads": (1, L.MAX_HEADS), "mlp_dim": (1, L.MAX_WIDTH),
               "num_classes": (0, L.MAX_CLASSES)}
_INT_BOUNDS["reg_tokens"] = (0, L.MAX_PREFIX_TOKENS)
_INT_BOUNDS["rel_pos_dim"] = (1, L.MAX_WIDTH)
_INT_BOUNDS["num_parallel"] = (1, 64)
_OPT_INT_BOUNDS = {"attn_dim": (1, L.MAX_WIDTH), "representation_size": (1, L.MAX_WIDTH),
                   "pool_heads": (1, L.MAX_HEADS), "pool_mlp_dim": (1, L.MAX_WIDTH),
                   "pos_prefix_tokens": (0, L.MAX_PREFIX_TOKENS + 2)}
_BOOLS = ("qkv_bias", "attn_value_skip", "final_norm", "fc_norm", "output_softmax", "dist_token", "norm_pre",
          "patch_bias", "qk_norm", "swiglu",
          "qkv_fused", "k_bias", "attn_inner_norm", "mlp_inner_norm", "swiglu_unpacked", "ls_attn_only",
          "rope_rotate_half",  # the last line: Eva options
          "pos_ar_preserving")
_STRS = ("name", "class_token", "pool", "pos_embed", "resize_kernel", "gelu", "notes", "rope", "rope_indexing",
         "norm_kind", "rel_pos", "block_norm")
_BOOLS += ("rel_pos_shared", "patch_norm", "proj_bias", "pool_include_prefix")
_RATES = ("dropout", "attn_dropout", "drop_path")


def check_field_types(d: dict[str, Any], where: str) -> None:
    """Raise ConfigError naming the field, the expected type and the value for any field of the wrong type or
    outside its range: strict ints (a bool or 12.0 is not an int), strict bools (the string "false" is refused,
    never read as true), finite floats. Runs before anything is computed from the values."""
    def bad(name: str, expected: str) -> ConfigError:
        return ConfigError(f"{where}: field {name!r} must be {expected}, got {shown(d[name])}")

    for name, (lo, hi) in _INT_BOUNDS.items():
        if name in d and not (is_int(d[name]) and lo <= d[name] <= hi):
            raise bad(name, f"an int in [{lo}, {hi}]")
    for name, (lo, hi) in _OPT_INT_BOUNDS.items():
        if name in d and d[name] is not None and not (is_int(d[name]) and lo <= d[name] <= hi):
            raise bad(name, f"null or an int in [{lo}, {hi}]")
    for name in _BOOLS:
        if name in d and not isinstance(d[name], (bool, np.bool_)):
            raise bad(name, "a bool (true or false)")
    for name in _STRS:
        if name in d and not isinstance(d[name], str):
            raise bad(name, "a string")
    if "layer_norm_eps" in d and not (is_real(d["layer_norm_eps"]) and math.isfinite(d["layer_norm_eps"])
                                      and 0 < d["layer_norm_eps"] < 1):
        raise bad("layer_norm_eps", "a finite float in (0, 1)")
    if "init_values" in d and d["init_values"] is not None and not (
            is_real(d["init_values"]) and math.isfinite(d["init_values"]) and 0 < d["init_values"] <= 1e6):
        raise bad("init_values", "null or a finite float in (0, 1e6]")
    if "num_kv_heads" in d and d["num_kv_heads"] is not None:
        v = d["num_kv_heads"]
        if not ((is_int(v) and 1 <= v <= L.MAX_HEADS) or (isinstance(v, (list, tuple)) and 1 <= len(v) <= L.MAX_DEPTH
                                                          and all(is_int(h) and 1 <= h <= L.MAX_HEADS for h in v))):
            raise bad("num_kv_heads", f"null, an int in [1, {L.MAX_HEADS}] or a list of them (one per block)")
    if "qk_scale" in d and d["qk_scale"] is not None and not (
            is_real(d["qk_scale"]) and math.isfinite(d["qk_scale"]) and 0 < d["qk_scale"] <= 1e6):
        raise bad("qk_scale", "null or a finite float in (0, 1e6]")
    for name in _RATES:
        if name in d and not (is_real(d[name]) and 0.0 <= d[name] < 1.0):
            raise bad(name, "a float in [0, 1)")
    for name, (lo, hi) in (("rope_temperature", (1e-6, 1e9)), ("rope_offset", (-1e3, 1e3))):
        if name in d and not (is_real(d[name]) and math.isfinite(d[name]) and lo <= d[name] <= hi):
            raise bad(name, f"a finite float in [{lo:g}, {hi:g}]")
    for name in ("image_size", "pos_grid", "rope_ref_grid"):
        if name in d and not (name in ("pos_grid", "rope_ref_grid") and d[name] is None):
            h, w = _pair(d[name], f"{where}: field {name!r}")
            if not (1 <= h <= L.MAX_IMAGE_SIDE and 1 <= w <= L.MAX_IMAGE_SIDE):
                raise bad(name, f"sizes in [1, {L.MAX_IMAGE_SIDE}]")


@dataclass(frozen=True)
class ViTConfig:
    name: str = "custom"
    # --- input and tokens -------------------------------------------------
    image_size: tuple[int, int] = (224, 224)  # (height, width)
    in_chans: int = 3
    patch_size: int = 16
    patch_bias: bool = True  # False: the patch projection has no bias (CLIP)
    # a norm (cfg.norm_kind, eps layer_norm_eps) over each projected patch, before the prefix tokens and positions
    # (timm embed_norm_layer: AIMv2; key patch_embed.norm)
    patch_norm: bool = False
    # --- widths ------------------------------------------------------------
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072  # the MLP's hidden width (fc2's input)
    # SwiGLU MLP (timm SwiGLUPacked, DINOv2-giant): fc1 gives 2 * mlp_dim, silu(first half) * second half -> fc2.
    # The block MLPs only; the GELU form then applies nowhere in the blocks.
    swiglu: bool = False
    attn_dim: int | None = None  # None: same as embed_dim
    qkv_bias: bool = True
    # False: no bias on attn.proj and on the block MLPs' linears (fc1 / fc1_g / fc1_x, fc2): timm proj_bias=False
    # (AIMv2). The attention pool keeps its biases (timm's AttentionPoolLatent).
    proj_bias: bool = True
    qk_scale: float | None = None  # None: head_dim ** -0.5
    attn_value_skip: bool = False  # T2T-style: attn(x) = v + proj(softmax(qk) v)
    qk_norm: bool = False  # LayerNorm over the head dim on q and k (keys attn.q_norm, attn.k_norm)
    # grouped-query attention (timm Eva/AttentionRope num_kv_heads): k_proj / v_proj give this many heads, each
    # shared by num_heads / num_kv_heads consecutive q heads (q head h reads kv head h // groups). None: num_heads
    # (plain multi-head); an int: every block; a list: one entry per block (Sapiens2: full heads at both ends).
    # Normalised: a list of equal entries becomes its int, num_heads everywhere becomes None. Needs qkv_fused=False.
    num_kv_heads: int | tuple[int, ...] | None = None
    init_values: float | None = None  # LayerScale: set -> per-channel gammas ls1/ls2 (initialised to this value)
    # parallel blocks (timm ParallelThingsBlock, `vit_*_18x2_*`): every block sums num_parallel attention branches
    # (keys blocks.i.attns.j.{norm,attn,ls}) into the residual, then num_parallel MLP branches (blocks.i.ffns.j.
    # {norm,mlp,ls}), each branch with its own norm and LayerScale. 1: the pre-norm block (norm1, attn, ls1, ...)
    num_parallel: int = 1
    # --- tokens and positions -----------------------------------------------
    class_token: str = "learned"  # learned | zeros (fixed "prediction token") | none
    dist_token: bool = False  # DeiT distillation token (after the class token) with its own head `head_dist`
    reg_tokens: int = 0  # register tokens (key `reg_token`), after the class and distillation tokens
    # token | mean (over patch tokens only, timm 'avg') | map (attention pool `attn_pool`) | token_mean
    # (concat(class token, mean over the patch tokens): DINOv2's linear-probe head, 2 * width wide)
    pool: str = "token"
    # the pool ('mean' or 'map') sees the prefix tokens (class, distillation, registers) too, not only the patch
    # tokens: timm's pool_include_prefix (test_vit3), and timm's Eva attention pool, which every token reaches (PE core)
    pool_include_prefix: bool = False
    pool_heads: int | None = None  # the attention pool's heads (timm attn_pool_num_heads); None: the blocks' heads
    pool_mlp_dim: int | None = None  # the attention pool's MLP width (timm attn_pool_mlp_ratio); None: mlp_dim
    pos_embed: str = "learned"  # learned | sincos1d | sincos2d | none | factorized (POS_EMBED_KINDS)
    # how many leading prefix tokens have a row in a learned table: None = all (timm), 0 = none (timm
    # no_embed_class: DeiT III, DINOv2 with registers), 1 = the class token only (HF DINOv2 with registers)
    pos_prefix_tokens: int | None = None
    pos_grid: tuple[int, int] | None = None  # grid of the learned table; None: the image grid
    resize_kernel: str = "bicubic"  # used when the image grid differs from pos_grid
    # learned / factorized tables: resampled to a square of the larger grid side, then cropped to the grid from the
    # top left (timm NaFlexVit pos_embed_ar_preserving); False: each axis resized to its own size
    pos_ar_preserving: bool = False
    # --- numerics -----------------------------------------------------------
    gelu: str = "erf"
    layer_norm_eps: float = 1e-6
    norm_pre: bool = False  # LayerNorm after the position embedding, before block 0 (CLIP; key `norm_pre`)
    # --- head ---------------------------------------------------------------
    final_norm: bool = True  # LayerNorm over all tokens before pooling (key `norm`)
    fc_norm: bool = False  # LayerNorm after pooling (timm avg-pool models, key `fc_norm`)
    representation_size: int | None = None  # pre-logits Linear + Tanh (key `pre_logits.fc`)
    num_classes: int = 1000  # 0: features only
    output_softmax: bool = False
    # --- training only --------------------------------------------------------
    dropout: float = 0.0  # after position embedding, attention proj and MLP layers
    attn_dropout: float = 0.0  # on the attention probabilities
    drop_path: float = 0.0  # stochastic depth, linearly increasing to this rate
    # --- Eva options (timm's Eva class) ------------------------------------------
    rope: str = "none"  # none | cat | mixed | dinov3 (ROPE_KINDS): rotary positions on the patch tokens' q and k
    rope_temperature: float = 10000.0  # cat/dinov3: the frequency base (dinov3: its period base); mixed: the init's
    rope_offset: float = 0.0  # grid offset added to the coordinates (cat, dinov3)
    rope_indexing: str = "ij"  # ij: the row coordinate's frequencies first; xy: the column's
    rope_rotate_half: bool = False  # rotate halves (x_lo, x_hi) instead of interleaved pairs
    rope_ref_grid: tuple[int, int] | None = None  # cat: coordinates rescaled to this grid (EVA's ref_feat_shape)
    qkv_fused: bool = True  # False: separate q_proj, k_proj, v_proj
    k_bias: bool = True  # False: no k bias (EVA, BEiT: the k third of qkv.bias is held at zero, k_proj has none)
    attn_inner_norm: bool = False  # a norm over the merged heads before attn.proj (timm scale_attn_inner)
    mlp_inner_norm: bool = False  # a norm over the MLP's hidden width before fc2 (timm scale_mlp: EVA02's sub-LN)
    swiglu_unpacked: bool = False  # with swiglu: separate mlp.fc1_g (gate) and mlp.fc1_x (value), timm's SwiGLU
    norm_kind: str = "layer"  # layer | rms: every norm of the model (RMSNorm: weight only)
    ls_attn_only: bool = False  # LayerScale on the attention branch only (no ls2)
    # pre | post (BLOCK_NORMS): post = res-post-norm blocks, x + norm1(attn(x)) then x + norm2(mlp(x)) (timm's
    # ResPostBlock / ResPostRelPosBlock / EvaBlockPostNorm); the keys are a pre-norm block's
    block_norm: str = "pre"
    # --- relative position bias (BEiT, timm VisionTransformerRelPos) --------------
    # none | table | mlp (REL_POS_KINDS): a (heads, T, T) bias added to every block's attention scores, built once
    # per forward from a learned table (keys *.relative_position_bias_table) or from timm's RelPosMlp (*.mlp.*)
    rel_pos: str = "none"
    rel_pos_shared: bool = False  # one bias for all blocks (keys rel_pos.*) instead of one per block (blocks.i.attn.rel_pos.*)
    rel_pos_dim: int = 128  # the hidden width of the mlp form
    # --- free text ------------------------------------------------------------
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_field_types({f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                          f"config {self.name!r}")
        for f in dataclasses.fields(self):  # NumPy scalars and ints where floats belong -> plain Python values
            v = getattr(self, f.name)
            if f.name in ("layer_norm_eps", "qk_scale", "init_values", "rope_temperature", "rope_offset",
                          *_RATES) and v is not None:
                object.__setattr__(self, f.name, float(v))
            elif is_int(v):
                object.__setattr__(self, f.name, int(v))
            elif isinstance(v, np.bool_):
                object.__setattr__(self, f.name, bool(v))
        object.__setattr__(self, "image_size", _pair(self.image_size, "image_size"))
        if self.pos_grid is not None:
            object.__setattr__(self, "pos_grid", _pair(self.pos_grid, "pos_grid"))
        if self.rope_ref_grid is not None:
            object.__setattr__(self, "rope_ref_grid", _pair(self.rope_ref_grid, "rope_ref_grid"))
        kv = self.num_kv_heads
        if isinstance(kv, (list, tuple)):  # canonical form: None (all full), an int (all alike) or a tuple
            kv = tuple(int(h) for h in kv)
            if len(kv) != self.depth:
                raise ConfigError(f"config {self.name!r}: num_kv_heads lists {len(kv)} blocks, depth is {self.depth}")
            kv = kv[0] if len(set(kv)) == 1 else kv
        object.__setattr__(self, "num_kv_heads", None if kv == self.num_heads else kv)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config {self.name!r}: {msg}")

        check_field_types({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, f"config {self.name!r}")
        h, w = self.image_size
        p = self.patch_size
        need(h % p == 0 and w % p == 0, f"image_size {h}x{w} is not divisible by patch_size {p}")
        a = self.width
        need(a % self.num_heads == 0, f"attention width {a} is not divisible by num_heads {self.num_heads}")
        if self.attn_dim is not None and self.attn_dim != self.embed_dim:
            need(self.attn_value_skip, "attn_dim != embed_dim needs attn_value_skip (the first block has no outer residual)")
        need(self.gelu in GELU_KINDS, f"gelu must be one of {GELU_KINDS}, got {self.gelu!r}")
        need(self.class_token in CLASS_TOKEN_KINDS, f"class_token must be one of {CLASS_TOKEN_KINDS}, got {self.class_token!r}")
        need(self.pool in POOL_KINDS, f"pool must be one of {POOL_KINDS}, got {self.pool!r}")
        need(self.pos_embed in POS_EMBED_KINDS, f"pos_embed must be one of {POS_EMBED_KINDS}, got {self.pos_embed!r}")
        need(self.resize_kernel in RESIZE_KERNELS, f"resize_kernel must be one of {RESIZE_KERNELS}, got {self.resize_kernel!r}")
        need(not (self.pool == "token" and self.class_token == "none"), "pool='token' needs a class token (use pool='mean')")
        if self.pool == "token_mean":
            need(self.class_token != "none", "pool='token_mean' needs a class token (concat(class token, mean of the "
                                             "patch tokens); use pool='mean')")
            need(not self.fc_norm, "pool='token_mean' with fc_norm is not a known layout (DINOv2's linear head reads "
                                   "the final-norm tokens)")
        if self.dist_token:
            need(self.class_token == "learned" and self.pool == "token",
                 "dist_token needs a learned class token and pool='token' (DeiT: the class and distillation tokens "
                 "feed head and head_dist)")
            need(not self.representation_size and not self.fc_norm,
                 "dist_token with a pre-logits layer or fc_norm is not a DeiT layout")
        if self.pos_prefix_tokens is not None:
            need(self.learned_table, "pos_prefix_tokens only applies to a learned position table")
            need(self.pos_prefix_tokens <= self.num_prefix_tokens,
                 f"pos_prefix_tokens {self.pos_prefix_tokens} exceeds the {self.num_prefix_tokens} prefix tokens")
        if self.pool == "map":
            need(not self.representation_size, "pool='map' with a pre-logits layer is not a known layout")
            need(not self.swiglu, "pool='map' with a SwiGLU MLP is not a known layout (timm's attention pool would "
                                  "build a GELU MLP of the packed width)")
        if self.pool_include_prefix:
            need(self.pool in ("mean", "map") and self.num_prefix_tokens > 0,
                 f"pool_include_prefix needs pool 'mean' or 'map' and a prefix token to include (pool "
                 f"{self.pool!r}, {self.num_prefix_tokens} prefix tokens)")
        need(self.pool_mlp_dim is None or self.pool == "map", "pool_mlp_dim applies to the attention pool (pool='map') "
                                                                "only")
        if self.pool_heads is not None:
            need(self.pool == "map", "pool_heads applies to the attention pool (pool='map') only")
            need(self.width % self.pool_heads == 0, f"pool_heads {self.pool_heads} does not divide the width "
                                                    f"{self.width}")
        need(self.pos_grid is None or self.learned_table, "pos_grid only applies to a learned position table")
        need(not self.pos_ar_preserving or self.learned_table, "pos_ar_preserving only applies to a learned position "
                                                               "table (learned or factorized)")
        if self.pos_embed == "factorized":
            need(self.num_pos_prefix == 0, "pos_embed='factorized' positions the patch tokens only: set "
                                           "pos_prefix_tokens=0 (timm NaFlexVit)")
        if self.pos_embed == "sincos1d":
            need(self.embed_dim % 2 == 0, f"sincos1d needs an even embed_dim, got {self.embed_dim}")
        if self.pos_embed == "sincos2d":
            need(self.embed_dim % 4 == 0, f"sincos2d needs embed_dim divisible by 4, got {self.embed_dim}")
        need(self.rel_pos in REL_POS_KINDS, f"rel_pos must be one of {REL_POS_KINDS}, got {self.rel_pos!r}")
        if self.rel_pos != "none":
            need(self.num_prefix_tokens <= 1, f"a relative position bias knows one class token at most (timm), got "
                                              f"{self.num_prefix_tokens} prefix tokens")
            need(self.attn_dim is None or self.attn_dim == self.embed_dim,
                 "a relative position bias with attn_dim != embed_dim (T2T) is not a known layout")
        else:
            need(not self.rel_pos_shared, "rel_pos_shared needs rel_pos 'table' or 'mlp'")
        if not self.k_bias:
            need(self.qkv_bias, "k_bias=False (no k part of the qkv bias) needs qkv_bias")
        need(not (self.final_norm and self.fc_norm), "final_norm and fc_norm are exclusive (timm: norm xor fc_norm)")
        need(not (self.output_softmax and self.num_classes == 0), "output_softmax needs a classifier (num_classes > 0)")
        self._validate_eva(need)
        n = self.num_parameters
        need(n <= L.MAX_PARAMETERS, f"describes {n:,} parameters, over the limit of {L.MAX_PARAMETERS:,} "
                                    f"(shared.limits.MAX_PARAMETERS); refused before anything is allocated")

    def _validate_eva(self, need) -> None:
        """The Eva options (rotary positions, attention / MLP / norm variants)."""
        need(self.rope in ROPE_KINDS, f"rope must be one of {ROPE_KINDS}, got {self.rope!r}")
        need(self.rope_indexing in ROPE_INDEXING, f"rope_indexing must be one of {ROPE_INDEXING}, got "
                                                  f"{self.rope_indexing!r}")
        need(self.norm_kind in NORM_KINDS, f"norm_kind must be one of {NORM_KINDS}, got {self.norm_kind!r}")
        if self.rope != "none":
            need(self.head_dim % 4 == 0, f"rope needs head_dim divisible by 4, got {self.head_dim}")
            need(not self.attn_value_skip and self.attn_dim is None, "rope with attn_dim / attn_value_skip is not a "
                                                                      "known layout")
        need(self.rope_ref_grid is None or self.rope == "cat", "rope_ref_grid only applies to rope='cat'")
        need(not (self.rope == "mixed" and self.rope_rotate_half), "rope='mixed' rotates interleaved pairs (timm "
                                                                   "refuses rotate_half with mixed)")
        need(not self.swiglu_unpacked or self.swiglu, "swiglu_unpacked needs swiglu")
        need(not self.ls_attn_only or self.init_values is not None, "ls_attn_only needs init_values (LayerScale)")
        need(self.qkv_bias or self.k_bias, "k_bias=False needs qkv_bias (it drops the k third of the biases)")
        need(self.block_norm in BLOCK_NORMS, f"block_norm must be one of {BLOCK_NORMS}, got {self.block_norm!r}")
        if self.block_norm == "post":
            need(self.init_values is None, "block_norm='post' with LayerScale (init_values) is not a known layout "
                                           "(timm's post-norm blocks have no ls1/ls2; their init_values only set "
                                           "the norms' initial weights)")
            need(self.attn_dim is None and not self.attn_value_skip,
                 "block_norm='post' with attn_dim / attn_value_skip (T2T) is not a known layout")
            need(self.num_parallel == 1 and self.num_kv_heads is None,
                 "block_norm='post' with parallel branches or grouped-query attention is not a known layout")
        if self.num_parallel > 1:
            need(not self.attn_value_skip and self.attn_dim is None and self.rel_pos == "none"
                 and not self.ls_attn_only,
                 "num_parallel > 1 (parallel branches summed into the residual) with attn_dim / attn_value_skip, a "
                 "relative position bias or ls_attn_only is not a known layout")
        if self.num_kv_heads is not None:
            bad = [h for h in set(self.kv_heads) if self.num_heads % h]
            need(not bad, f"num_kv_heads {bad} must divide num_heads {self.num_heads} (grouped-query attention)")
            need(not self.qkv_fused, "num_kv_heads (grouped-query attention) needs qkv_fused=False (timm: a fused qkv "
                                     "projection has no grouped form)")
            need(not self.attn_value_skip, "num_kv_heads with attn_value_skip is not a known layout")
            need(self.rope != "mixed", "num_kv_heads with rope='mixed' is not a known layout (its per-head tables "
                                       "rotate num_heads heads)")
        if self.pool == "map":
            need(self.norm_kind == "layer" and not self.swiglu_unpacked,
                 "pool='map' with RMSNorm or an unpacked SwiGLU is not a known layout")

    @property
    def rope_grid_args(self) -> dict[str, Any]:
        """shared.posemb.rope_table's arguments for the fixed forms (cat, dinov3)."""
        return dict(kind=self.rope, temperature=self.rope_temperature, indexing=self.rope_indexing,
                    offset=self.rope_offset, ref_grid=self.rope_ref_grid, rotate_half=self.rope_rotate_half)

    # ----------------------------------------------------------- derived sizes
    @property
    def width(self) -> int:
        """Width of the attention and of every stage after block 0."""
        return self.attn_dim if self.attn_dim is not None else self.embed_dim

    @property
    def kv_heads(self) -> tuple[int, ...]:
        """The key/value heads of each block (num_heads where num_kv_heads is None: plain multi-head attention)."""
        kv = self.num_kv_heads
        return tuple(kv) if isinstance(kv, tuple) else (kv if kv is not None else self.num_heads,) * self.depth

    def kv_width(self, i: int) -> int:
        """Block i's k_proj / v_proj output width: its kv heads times head_dim."""
        return self.kv_heads[i] * self.head_dim

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def scale(self) -> float:
        return self.qk_scale if self.qk_scale is not None else self.head_dim ** -0.5

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches, in this order: class (learned or zeros), distillation, registers."""
        return (0 if self.class_token == "none" else 1) + int(self.dist_token) + self.reg_tokens

    @property
    def num_pos_prefix(self) -> int:
        """Prefix tokens that have a row in the position table (the first ones); the others get no position."""
        return self.num_prefix_tokens if self.pos_prefix_tokens is None else self.pos_prefix_tokens

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def learned_table(self) -> bool:
        """A learned table stored at `table_grid` and resampled per grid: pos_embed 'learned' or 'factorized'."""
        return self.pos_embed in ("learned", "factorized")

    @property
    def table_grid(self) -> tuple[int, int]:
        """Grid the learned position table is stored for."""
        return self.pos_grid if self.pos_grid is not None else self.grid

    @property
    def rope_mixed_shape(self) -> tuple[int, int, int, int]:
        """Shape of `rope.freqs` (rope='mixed'): (2 axes, depth, heads, head_dim / 2), timm's RotaryEmbeddingMixed."""
        return (2, self.depth, self.num_heads, self.head_dim // 2)

    @property
    def fc1_dim(self) -> int:
        """Rows of a block's mlp.fc1: the hidden width, twice it for SwiGLU (gate and value halves, packed)."""
        return 2 * self.mlp_dim if self.swiglu else self.mlp_dim

    @property
    def rel_pos_prefixes(self) -> list[str]:
        """Where the relative position bias parameters live: ["rel_pos"] (shared), ["blocks.{i}.attn.rel_pos", ...]
        (one per block), or [] (rel_pos 'none')."""
        if self.rel_pos == "none":
            return []
        return ["rel_pos"] if self.rel_pos_shared else [f"blocks.{i}.attn.rel_pos" for i in range(self.depth)]

    def rel_pos_shapes(self) -> dict[str, tuple[int, ...]]:
        """The parameters of one relative position bias, by name under its prefix: the learned table
        (rows, heads), rows = (2 gh - 1)(2 gw - 1) (+ 3 with a class token; shared.posemb.rel_pos_table_rows), or
        the MLP: fc1 (rel_pos_dim, 2), fc2 (heads, rel_pos_dim) with biases."""
        if self.rel_pos == "table":
            gh, gw = self.grid
            return {"relative_position_bias_table": ((2 * gh - 1) * (2 * gw - 1) + 3 * int(self.num_prefix_tokens > 0),
                                                     self.num_heads)}
        if self.rel_pos == "mlp":
            R, H = self.rel_pos_dim, self.num_heads
            return {"mlp.fc1.weight": (R, 2), "mlp.fc1.bias": (R,), "mlp.fc2.weight": (H, R), "mlp.fc2.bias": (H,)}
        return {}

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled features (input of the pre-logits layer, else of the head): twice the width for
        pool='token_mean' (class token and patch mean, concatenated), else the width."""
        return 2 * self.width if self.pool == "token_mean" else self.width

    @property
    def feature_dim(self) -> int:
        """Width of the `pre_logits` stage (input of the head)."""
        return self.representation_size if self.representation_size else self.pooled_dim

    def block_in_dim(self, i: int) -> int:
        return self.embed_dim if i == 0 else self.width

    # ------------------------------------------- layer arguments (the one reading of the config for the layers)
    def attention_args(self, i: int) -> dict[str, Any]:
        """Block i's attention: the keyword arguments of `Attention` in every backend and of
        `shared.reference.attention` (which ignores the dropout rates). `norm`: the kind of every norm in it
        (q_norm, k_norm, the inner norm): cfg.norm_kind."""
        return dict(dim=self.block_in_dim(i), num_heads=self.num_heads, num_kv_heads=self.kv_heads[i],
                    width=self.width, qkv_bias=self.qkv_bias,
                    qkv_fused=self.qkv_fused, k_bias=self.k_bias, qk_norm=self.qk_norm,
                    inner_norm=self.attn_inner_norm, scale=self.scale, rotate_half=self.rope_rotate_half,
                    value_skip=self.attn_value_skip, proj_bias=self.proj_bias, norm_eps=self.layer_norm_eps,
                    norm=self.norm_kind, attn_drop=self.attn_dropout, proj_drop=self.dropout)

    def mlp_args(self) -> dict[str, Any]:
        """A block's MLP: the keyword arguments of `Mlp` in every backend and of `shared.reference.mlp_forward`."""
        return dict(dim=self.width, hidden=self.mlp_dim, act="silu" if self.swiglu else self.gelu, gated=self.swiglu,
                    unpacked=self.swiglu_unpacked, inner_norm=self.mlp_inner_norm, bias=self.proj_bias,
                    norm_eps=self.layer_norm_eps, norm=self.norm_kind, dropout=self.dropout)

    def block_args(self, i: int) -> dict[str, Any]:
        """Block i: the keyword arguments of `Block` in every backend and of `shared.reference.block`."""
        attn, mlp = self.attention_args(i), self.mlp_args()
        dim = attn.pop("dim")
        mlp.pop("dim")  # a block's MLP runs at the attention's width
        return dict(dim=dim, attn=attn, mlp=mlp, ls_init=self.init_values, drop_path=self.drop_path_rates[i],
                    norm_eps=self.layer_norm_eps, norm=self.norm_kind, ls_attn_only=self.ls_attn_only,
                    post_norm=self.block_norm == "post", num_parallel=self.num_parallel)

    def pool_args(self) -> dict[str, Any]:
        """The attention pool (pool='map'): the keyword arguments of the backends' pool layer and of
        `shared.reference.attention_pool` (timm's AttentionPoolLatent: GELU MLP, no dropout)."""
        return dict(dim=self.width, num_heads=self.pool_heads or self.num_heads, hidden=self.pool_mlp_dim or self.mlp_dim,
                    act=self.gelu, norm_eps=self.layer_norm_eps)

    @property
    def pool_start(self) -> int:
        """The first token the pool ('mean', 'map') sees: 0 with pool_include_prefix, else the first patch token."""
        return 0 if self.pool_include_prefix else self.num_prefix_tokens

    @property
    def num_parameters(self) -> int:
        """The parameter count, computed from the sizes (no tensor and no key list is built: a config claiming
        a billion blocks costs nothing to count). Equals shared.weights.parameter_count."""
        D, W, M, P, C = self.embed_dim, self.width, self.mlp_dim, self.patch_size, self.in_chans
        nb = 2 if self.norm_kind == "layer" else 1  # a norm's vectors: weight (and bias)
        n = D * C * P * P + (D if self.patch_bias else 0) + (nb * D if self.patch_norm else 0)
        n += D if self.class_token == "learned" else 0
        n += D * (int(self.dist_token) + self.reg_tokens)
        if self.pos_embed == "learned":
            gh, gw = self.table_grid
            n += (self.num_pos_prefix + gh * gw) * D
        elif self.pos_embed == "factorized":
            n += sum(self.table_grid) * D
        n += nb * D if self.norm_pre else 0

        pb = int(self.proj_bias)

        def block(i: int) -> int:
            din, kw = self.block_in_dim(i), self.kv_width(i)
            qkv_b = (W + kw + kw if self.qkv_fused or self.k_bias else W + kw) if self.qkv_bias else 0
            return (nb * din + (W + 2 * kw) * din + qkv_b + W * W + pb * W + nb * W
                    + self.fc1_dim * (W + pb) + W * M + pb * W + (2 * nb * self.head_dim if self.qk_norm else 0)
                    + (nb * W if self.attn_inner_norm else 0) + (nb * M if self.mlp_inner_norm else 0)
                    + ((1 if self.ls_attn_only else 2) * W if self.init_values is not None else 0))

        if self.num_kv_heads is None:  # every block alike after the first: two terms, whatever the depth
            nblk = block(0) + (self.depth - 1) * block(min(1, self.depth - 1))
        else:
            nblk = sum(block(i) for i in range(self.depth))
        n += self.num_parallel * nblk  # parallel blocks: every part of a block once per branch
        n += len(self.rel_pos_prefixes) * sum(math.prod(v) for v in self.rel_pos_shapes().values())
        n += self.rope_mixed_shape[0] * self.depth * self.num_heads * self.head_dim // 2 if self.rope == "mixed" else 0
        if self.pool == "map":  # latent, q, kv, proj, norm, mlp
            P = self.pool_mlp_dim or M
            n += W + (W * W + W) + (2 * W * W + 2 * W) + (W * W + W) + 2 * W + (P * W + P + W * P + W)
        n += nb * W if self.final_norm else 0
        n += nb * W if self.fc_norm else 0
        if self.representation_size:
            n += self.representation_size * self.pooled_dim + self.representation_size
        if self.num_classes:
            n += (1 + int(self.dist_token)) * (self.num_classes * self.feature_dim + self.num_classes)
        return n

    @property
    def drop_path_rates(self) -> tuple[float, ...]:
        """Stochastic-depth rate of each block: linear from 0 to `drop_path` (timm's linspace; 0 at depth 1).

        Every backend reads its rates from here, so they agree block by block.
        """
        return tuple(float(r) for r in np.linspace(0.0, self.drop_path, self.depth))

    def stage_names(self) -> list[str]:
        return ["patch_embed", *(["patch_norm"] if self.patch_norm else []), "embed",
                *(["norm_pre"] if self.norm_pre else []),
                *[f"block_{i}" for i in range(self.depth)], "norm", "pre_logits", "logits"]

    def with_image_size(self, image_size: Any) -> "ViTConfig":
        """Same weights at another input size: a learned table keeps its stored grid."""
        pos_grid = self.table_grid if self.learned_table else None
        new = dataclasses.replace(self, image_size=_pair(image_size, "image_size"), pos_grid=pos_grid)
        if new.pos_grid == new.grid:
            new = dataclasses.replace(new, pos_grid=None)
        return new

    def replace(self, **changes: Any) -> "ViTConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        if self.pos_grid is not None:
            d["pos_grid"] = list(self.pos_grid)
        if self.rope_ref_grid is not None:
            d["rope_ref_grid"] = list(self.rope_ref_grid)
        if isinstance(self.num_kv_heads, tuple):
            d["num_kv_heads"] = list(self.num_kv_heads)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object / dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; known fields: {sorted(known)}")
        # types first, with the field named: a string eps or a "false" bool is refused here, never coerced
        name = d.get("name", "custom")
        check_field_types(d, f"config {name[:60] if isinstance(name, str) else name!r}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ViTConfig":
        from .safeio import load_json

        d = load_json(text, "config", error=ConfigError)
        if not isinstance(d, dict):
            raise ConfigError(f"config JSON must be an object, got {type(d).__name__}")
        return cls.from_dict(d)

    def family_options(self) -> list[str]:
        """The ViT-family options this config turns on, named for messages: an exporter to a format that has none
        of them refuses the config with these names rather than drop a parameter in silence."""
        named = [(self.init_values is not None, "LayerScale (init_values: ls1/ls2.gamma)"),
                 (self.dist_token, "a distillation token and head (dist_token, head_dist)"),
                 (self.reg_tokens > 0, f"{self.reg_tokens} register token(s) (reg_token)"),
                 (self.pos_embed == "learned" and self.num_pos_prefix != self.num_prefix_tokens,
                  f"prefix tokens without a position row (pos_prefix_tokens={self.pos_prefix_tokens})"),
                 (self.pos_embed == "factorized", "factorized position tables (pos_embed='factorized': "
                                                  "pos_embed_y, pos_embed_x)"),
                 (self.pos_ar_preserving, "aspect-preserving table resampling (pos_ar_preserving)"),
                 (self.norm_pre, "a LayerNorm before the blocks (norm_pre)"),
                 (self.qk_norm, "qk-norm (attn.q_norm, attn.k_norm)"),
                 (self.pool == "map", "the attention-pool head (pool='map', attn_pool)"),
                 (self.pool == "token_mean", "the concat(class token, patch mean) head (pool='token_mean')"),
                 (self.pool_include_prefix, f"a {self.pool} pool over the prefix tokens too (pool_include_prefix)"),
                 (self.pool_heads is not None, f"an attention pool with {self.pool_heads} heads, not the blocks' "
                                               f"{self.num_heads} (pool_heads)"),
                 (self.pool_mlp_dim is not None, f"an attention pool whose MLP is {self.pool_mlp_dim} wide, not the "
                                                 f"blocks' {self.mlp_dim} (pool_mlp_dim)"),
                 (not self.patch_bias, "a patch projection without bias (patch_bias=False)"),
                 (self.patch_norm, "a norm inside the patch embedding (patch_norm: patch_embed.norm)"),
                 (not self.proj_bias, "attn.proj and MLP linears without biases (proj_bias=False)"),
                 (self.swiglu, "a SwiGLU MLP (swiglu: mlp.fc1 packs the gate and value halves)"),
                 (self.gelu == "quick", "QuickGELU (gelu='quick')"),
                 (self.rope != "none", f"rotary position embeddings (rope={self.rope!r})"),
                 (not self.qkv_fused, "separate q/k/v projections (qkv_fused=False)"),
                 (self.qkv_bias and not self.k_bias, "q and v biases without a k bias (k_bias=False)"),
                 (self.num_kv_heads is not None, f"grouped-query attention (num_kv_heads={self.num_kv_heads})"),
                 (self.num_parallel > 1, f"parallel blocks ({self.num_parallel} attention and MLP branches each: "
                                         f"num_parallel, blocks.i.attns.j / ffns.j)"),
                 (self.attn_inner_norm, "a norm inside attention (attn_inner_norm: attn.norm)"),
                 (self.mlp_inner_norm, "a norm inside the MLP (mlp_inner_norm: mlp.norm)"),
                 (self.swiglu_unpacked, "an unpacked SwiGLU MLP (swiglu_unpacked: mlp.fc1_g, mlp.fc1_x)"),
                 (self.norm_kind == "rms", "RMSNorm (norm_kind='rms')"),
                 (self.ls_attn_only, "LayerScale on the attention branch only (ls_attn_only)"),
                 (self.block_norm == "post", "post-norm blocks (block_norm='post': x + norm1(attn(x)), "
                                             "x + norm2(mlp(x)))"),
                 (self.rel_pos != "none", f"a relative position bias (rel_pos={self.rel_pos!r}"
                                          f"{', shared' if self.rel_pos_shared else ', per block'})")]
        return [name for on, name in named if on]

    def describe_numerics(self) -> dict[str, Any]:
        """The choices frameworks disagree on, for `inspect` and reports."""
        return {
            "gelu": self.gelu,
            "swiglu": self.swiglu,
            "qk_norm": self.qk_norm,
            "layer_scale": self.init_values is not None,
            "num_parallel": self.num_parallel,
            "patch_bias": self.patch_bias,
            "patch_norm": self.patch_norm,
            "proj_bias": self.proj_bias,
            "dist_token": self.dist_token,
            "reg_tokens": self.reg_tokens,
            "pos_prefix_tokens": self.num_pos_prefix if self.learned_table else None,
            "norm_pre": self.norm_pre,
            "layer_norm_eps": self.layer_norm_eps,
            "qk_scale": self.scale,
            "qkv_bias": self.qkv_bias,
            "k_bias": self.k_bias,
            "num_kv_heads": list(self.kv_heads) if self.num_kv_heads is not None else None,
            "rel_pos": self.rel_pos,
            "rel_pos_shared": self.rel_pos_shared,
            "attn_value_skip": self.attn_value_skip,
            "class_token": self.class_token,
            "pool": self.pool,
            "pool_include_prefix": self.pool_include_prefix,
            "pool_heads": self.pool_heads,
            "pool_mlp_dim": self.pool_mlp_dim,
            "pos_embed": self.pos_embed,
            "pos_table_grid": list(self.table_grid) if self.learned_table else None,
            "resize_kernel": self.resize_kernel,
            "pos_ar_preserving": self.pos_ar_preserving,
            "final_norm": self.final_norm,
            "fc_norm": self.fc_norm,
            "pre_logits": self.representation_size,
            "output_softmax": self.output_softmax,
            "rope": None if self.rope == "none" else {k: v for k, v in self.rope_grid_args.items() if k != "kind"},
            "rope_kind": self.rope,
            "qkv_fused": self.qkv_fused,
            "attn_inner_norm": self.attn_inner_norm,
            "mlp_inner_norm": self.mlp_inner_norm,
            "swiglu_unpacked": self.swiglu_unpacked,
            "norm_kind": self.norm_kind,
            "ls_attn_only": self.ls_attn_only,
            "block_norm": self.block_norm,
        }


def fields_off_default(cfg: ViTConfig, known) -> list[str]:
    """The fields of `cfg` outside `known` that are not at ViTConfig's default, sorted: what a writer that expresses
    only the `known` fields must refuse by name (a field added to ViTConfig later cannot be written silently wrong)."""
    defaults = {f.name: f.default for f in dataclasses.fields(ViTConfig)}
    return sorted(k for k in defaults if k not in known and getattr(cfg, k) != defaults[k])


@dataclass
class TrainConfig:
    """The training recipe's settings (steps or epochs, batch, AdamW lr / weight decay, warm-up, label smoothing,
    seed, evaluation period, head kind); recorded in checkpoint metadata as JSON. The recipe itself (schedule, loss,
    decay mask) is shared.training.recipe; this is the contract the Backend interface names."""

    steps: int | None = 300  # total optimiser steps (wins over epochs when set)
    epochs: int | None = None
    batch: int = 64
    lr: float = 2e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    warmup_steps: int = 30
    label_smoothing: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0
    eval_every: int = 100  # steps between held-out evaluations (0: only at the end)
    head: str | None = None  # None: keep the model's head; 'linear' | 'pretrain': switch first
    start_step: int = 0  # resumed runs continue the schedule and the batch stream from here

    def total_steps(self, n_train: int) -> int:
        if self.steps:
            return int(self.steps)
        per_epoch = max(n_train // self.batch, 1)
        return int(self.epochs or 1) * per_epoch

    def steps_per_epoch(self, n_train: int) -> int:
        return max(n_train // self.batch, 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls(**json.loads(text))
