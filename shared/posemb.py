"""Position tables: the fixed sinusoidal ones, resampling a learned table to a new grid, and rotary tables.

Resampling is written as two interpolation matrices, `table' = Wh @ table @ Ww^T`
per channel, built here in float64 from the pinned kernel. Every backend applies
the same matrices (so gradients flow and the kernel is the same everywhere);
`resample_grid` is the NumPy reference of that product.

Kernels (all with half-pixel centres, i.e. `align_corners=False`):
  bicubic            torch/HF convention: Keys cubic with a = -0.75, taps clamped at
                     the border, no antialias (`F.interpolate(mode="bicubic")`).
  bicubic_antialias  timm's default: a separable Keys cubic with a = -0.5 (Pillow's),
                     widened by the scale when downsampling, taps outside the image
                     dropped and the rest renormalised
                     (`F.interpolate(mode="bicubic", antialias=True)`).
  bilinear           `F.interpolate(mode="bilinear")`, no antialias.
  bilinear_antialias the triangle filter on the same antialias path, widened by the scale when
                     downsampling (`F.interpolate(mode="bilinear", antialias=True)`: timm's
                     NaFlexVit SigLIP tables, HF SigLIP 2's position grid, up and down).
Note that TensorFlow/Keras `image.resize(method="bicubic")` uses a = -0.5 with
a different border rule, i.e. none of the above: backends must not call it.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .config import RESIZE_KERNELS, ViTConfig


# ----------------------------------------------------------------- fixed tables
def sincos_1d(num_tokens: int, dim: int) -> np.ndarray:
    """The seed's table: angle(i, j) = i / 10000^(2*(j//2)/dim); sin on even j, cos on odd j.

    Returns (num_tokens, dim) float64; row 0 belongs to the class token when there is one.
    """
    i = np.arange(num_tokens, dtype=np.float64)[:, None]
    j = np.arange(dim)[None, :]
    angle = i / np.power(10000.0, 2 * (j // 2) / dim)
    table = np.empty_like(angle)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return table


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> np.ndarray:
    """big_vision's `posemb_sincos_2d`: [sin x, cos x, sin y, cos y] with dim/4 frequencies each.

    omega_k = 1 / temperature^(k / (dim/4 - 1)); rows in row-major grid order. (gh*gw, dim) float64.
    """
    gh, gw = grid
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    q = dim // 4
    omega = np.arange(q, dtype=np.float64) / max(q - 1, 1)
    omega = 1.0 / temperature ** omega
    y, x = np.mgrid[:gh, :gw]
    y = y.reshape(-1, 1).astype(np.float64) * omega[None, :]
    x = x.reshape(-1, 1).astype(np.float64) * omega[None, :]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)


# ---------------------------------------------------------------- rotary tables
ROPE_INDEXING = ("ij", "xy")


def rope_freqs(head_dim: int, temperature: float = 10000.0) -> np.ndarray:
    """The head_dim/4 frequencies of a 2-D rotary table, 1 / temperature^(k / (head_dim/4)) (timm's `freq_bands`,
    step 1, in float64)."""
    if head_dim % 4:
        raise ValueError(f"a 2-D rotary table needs head_dim divisible by 4, got {head_dim}")
    nb = head_dim // 4
    return 1.0 / temperature ** (np.arange(nb, dtype=np.float64) / nb)


def rope_table(grid: tuple[int, int], head_dim: int, *, temperature: float = 10000.0, indexing: str = "ij",
               offset: float = 0.0, ref_grid: tuple[int, int] | None = None, rotate_half: bool = False) -> np.ndarray:
    """The rotary table of a patch grid: (gh*gw, 2*head_dim) float64, [sin | cos] per patch token in row-major order
    (timm's `RotaryEmbeddingCat.get_embed` with in_pixels=False, the layout `apply_rot_embed_cat` splits).

    Position of patch (i, j): (i + offset, j + offset), scaled by ref_grid / grid per axis when ref_grid is given
    (EVA's fine-tuning rescale); indexing "ij" puts the row coordinate's frequencies first, "xy" the column's.
    Angles: [coordinate 0 * freqs, coordinate 1 * freqs] (head_dim/2 of them, `rope_freqs`), laid out for the
    rotation the attention applies: interleaved pairs [a0, a0, a1, a1, ...] (rotate_half=False: x' = x cos +
    (-x1, x0, -x3, x2, ...) sin) or halves [a0, a1, ..., a0, a1, ...] (rotate_half=True: x' = x cos +
    (-x_hi, x_lo) sin). The attention rotates the last gh*gw tokens' q and k (the prefix tokens stay unrotated).
    """
    if indexing not in ROPE_INDEXING:
        raise ValueError(f"rope indexing must be one of {ROPE_INDEXING}, got {indexing!r}")
    shape = tuple(int(g) for g in grid)
    axes = [np.arange(n, dtype=np.float64) + offset for n in shape]
    if ref_grid is not None:
        axes = [a / n * r for a, n, r in zip(axes, shape, ref_grid)]
    rows, cols = np.meshgrid(axes[0], axes[1], indexing="ij")  # (gh, gw) each: spatial layout always row-major
    coords = (rows, cols) if indexing == "ij" else (cols, rows)
    freqs = rope_freqs(head_dim, temperature)
    angles = np.concatenate([c.reshape(-1, 1) * freqs for c in coords], axis=1)  # (gh*gw, head_dim/2)
    angles = np.concatenate([angles, angles], axis=1) if rotate_half else np.repeat(angles, 2, axis=1)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def _layout(angles: np.ndarray, rotate_half: bool) -> np.ndarray:
    """[sin | cos] of per-frequency angles (..., hd/2) in the rotation's layout (timm's `_rope_layout`)."""
    angles = np.concatenate([angles, angles], axis=-1) if rotate_half else np.repeat(angles, 2, axis=-1)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def rope_grid(grid: tuple[int, int], indexing: str = "ij") -> tuple[np.ndarray, np.ndarray]:
    """The two integer coordinates of each patch (row-major): (row, column) for "ij", (column, row) for "xy"."""
    if indexing not in ROPE_INDEXING:
        raise ValueError(f"rope indexing must be one of {ROPE_INDEXING}, got {indexing!r}")
    rows, cols = np.meshgrid(np.arange(grid[0], dtype=np.float64), np.arange(grid[1], dtype=np.float64),
                             indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    return (rows, cols) if indexing == "ij" else (cols, rows)


def rope_table_dinov3(grid: tuple[int, int], head_dim: int, *, temperature: float = 100.0, indexing: str = "ij",
                      offset: float = 0.0, rotate_half: bool = True) -> np.ndarray:
    """DINOv3's rotary table (timm RotaryEmbeddingDinoV3, normalize_coords='separate', no min/max period):
    coordinate (i + 0.5 + offset) / gh * 2 - 1 per axis (centred, in [-1, 1]), angles 2 pi * coordinate / period
    with periods temperature^(k / (head_dim/4)) (= 1 / rope_freqs); [sin | cos] (gh*gw, 2*head_dim) float64."""
    if indexing not in ROPE_INDEXING:
        raise ValueError(f"rope indexing must be one of {ROPE_INDEXING}, got {indexing!r}")
    axes = [((np.arange(n, dtype=np.float64) + 0.5 + offset) / n) * 2.0 - 1.0 for n in grid]
    rows, cols = np.meshgrid(axes[0], axes[1], indexing="ij")
    coords = (rows, cols) if indexing == "ij" else (cols, rows)
    freqs = rope_freqs(head_dim, temperature)
    angles = np.concatenate([2 * np.pi * c.reshape(-1, 1) * freqs for c in coords], axis=1)
    return _layout(angles, rotate_half)


def rope_table_mixed(freqs: np.ndarray, grid: tuple[int, int], indexing: str = "ij") -> np.ndarray:
    """RoPE-Mixed's tables (timm RotaryEmbeddingMixed.get_embed): learned frequencies `freqs` (2, depth, heads,
    hd/2) -> (depth, heads, gh*gw, 2*hd) float64, angles t0 * freqs[0] + t1 * freqs[1] (t: `rope_grid`),
    interleaved layout. Block i rotates its heads' q and k with table [i]."""
    t0, t1 = rope_grid(grid, indexing)
    f = np.asarray(freqs, np.float64)
    angles = t0[:, None] * f[0][..., None, :] + t1[:, None] * f[1][..., None, :]  # (depth, heads, N, hd/2)
    return _layout(angles, False)


def model_rope_table(cfg: ViTConfig, grid: tuple[int, int], freqs: np.ndarray | None = None) -> np.ndarray | None:
    """A config's rotary table at `grid` (float64): (N, 2*hd) for rope 'cat' / 'dinov3', shared by every block;
    (depth, heads, N, 2*hd) for 'mixed' (from `freqs`, the weights' rope.freqs); None without rotary positions."""
    grid = (int(grid[0]), int(grid[1]))
    if cfg.rope == "cat":
        return rope_table(grid, cfg.head_dim, temperature=cfg.rope_temperature, indexing=cfg.rope_indexing,
                          offset=cfg.rope_offset, ref_grid=cfg.rope_ref_grid, rotate_half=cfg.rope_rotate_half)
    if cfg.rope == "dinov3":
        return rope_table_dinov3(grid, cfg.head_dim, temperature=cfg.rope_temperature, indexing=cfg.rope_indexing,
                                 offset=cfg.rope_offset, rotate_half=cfg.rope_rotate_half)
    if cfg.rope == "mixed":
        return rope_table_mixed(freqs, grid, cfg.rope_indexing)
    return None


# ------------------------------------------------------------------- resampling
def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x <= 1.0, near, np.where(x < 2.0, far, 0.0))


def _matrix_bicubic(n_in: int, n_out: int) -> np.ndarray:
    # torch upsample_bicubic2d: src = scale*(dst+0.5)-0.5 (not clamped), 4 taps clamped to the border.
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = scale * (o + 0.5) - 0.5
        i0 = math.floor(src)
        t = src - i0
        coeffs = _cubic(np.array([t + 1.0, t, 1.0 - t, 2.0 - t]), -0.75)
        for k, c in enumerate(coeffs):
            w[o, min(max(i0 - 1 + k, 0), n_in - 1)] += c
    return w


def _matrix_bilinear(n_in: int, n_out: int) -> np.ndarray:
    # torch upsample_bilinear2d: src clamped at 0, right tap clamped at the border.
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max(scale * (o + 0.5) - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + 1 if i0 < n_in - 1 else i0
        lam = src - i0
        w[o, i0] += 1.0 - lam
        w[o, i1] += lam
    return w


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _matrix_antialias(n_in: int, n_out: int, filt, interp_size: int) -> np.ndarray:
    # torch's separable antialias path (Pillow's algorithm): support widens by the scale when shrinking.
    scale = n_in / n_out
    support = interp_size * 0.5 * (scale if scale >= 1.0 else 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = scale * (o + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = np.arange(lo, hi)
        weights = filt((taps - center + 0.5) * invscale)
        total = weights.sum()
        if total != 0.0:
            weights = weights / total
        w[o, lo:hi] = weights
    return w


@lru_cache(maxsize=256)
def _resize_matrix_cached(n_in: int, n_out: int, kernel: str) -> np.ndarray:
    if kernel == "bicubic":
        m = _matrix_bicubic(n_in, n_out)
    elif kernel == "bilinear":
        m = _matrix_bilinear(n_in, n_out)
    elif kernel == "bicubic_antialias":
        m = _matrix_antialias(n_in, n_out, lambda x: _cubic(x, -0.5), 4)
    elif kernel == "bilinear_antialias":
        m = _matrix_antialias(n_in, n_out, _triangle, 2)
    else:
        raise ValueError(f"unknown resize kernel {kernel!r}; known: {RESIZE_KERNELS}")
    m.setflags(write=False)
    return m


def resize_matrix(n_in: int, n_out: int, kernel: str) -> np.ndarray:
    """(n_out, n_in) float64 matrix that resamples one axis with the pinned kernel."""
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"resize sizes must be positive, got {n_in} -> {n_out}")
    if n_in == n_out:
        return np.eye(n_in)
    return _resize_matrix_cached(n_in, n_out, kernel)


def resample_matrices(old_grid: tuple[int, int], new_grid: tuple[int, int], kernel: str,
                      ar_preserving: bool = False, per_axis: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The (gh', gh) and (gw', gw) float64 matrices that resample a table stored at old_grid to new_grid, one per
    axis (every backend applies these): each axis resized to its own size, or with `ar_preserving` (timm NaFlexVit
    pos_embed_ar_preserving) both resized to a square of the larger new side L = max(new_grid), then cropped to
    new_grid from the top left (the first gh' rows of the L-row matrix). At the table's own grid: the identity
    (timm's 2-D table skips the resize there); `per_axis` (factorized tables) skips it per axis only, as timm's
    `_interp1d` does: an aspect-preserving non-square pair is resized even at its own grid. Every row sums to 1
    (all kernels are normalised): resampling a table T[i, j] = y[i] + x[j] gives (Wh y)[i] + (Ww x)[j], the
    factorized rule."""
    (th, tw), (gh, gw) = (int(old_grid[0]), int(old_grid[1])), (int(new_grid[0]), int(new_grid[1]))
    if (th, tw) == (gh, gw) and not per_axis:
        return np.eye(th), np.eye(tw)
    if not ar_preserving:
        return resize_matrix(th, gh, kernel), resize_matrix(tw, gw, kernel)
    side = max(gh, gw)
    return resize_matrix(th, side, kernel)[:gh], resize_matrix(tw, side, kernel)[:gw]


def model_resample_matrices(cfg: ViTConfig, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`resample_matrices` for a config's learned table (cfg.table_grid, resize_kernel, pos_ar_preserving; per
    axis for pos_embed 'factorized')."""
    return resample_matrices(cfg.table_grid, grid, cfg.resize_kernel, cfg.pos_ar_preserving,
                             per_axis=cfg.pos_embed == "factorized")


def model_resamples(cfg: ViTConfig, grid: tuple[int, int]) -> bool:
    """Whether a config's learned table is resampled at `grid` (its matrices are not both the identity): the
    backends use the stored table as it is otherwise."""
    (th, tw), (wh, ww) = cfg.table_grid, model_resample_matrices(cfg, grid)
    return not (wh.shape == (th, th) and ww.shape == (tw, tw) and np.array_equal(wh, np.eye(th))
                and np.array_equal(ww, np.eye(tw)))


def resample_grid(table: np.ndarray, old_grid: tuple[int, int], new_grid: tuple[int, int], kernel: str,
                  ar_preserving: bool = False) -> np.ndarray:
    """Resample a (gh*gw, D) patch table laid out row-major to new_grid: Wh @ T @ Ww^T per channel
    (`resample_matrices`)."""
    gh, gw = old_grid
    if table.shape[0] != gh * gw:
        raise ValueError(f"table has {table.shape[0]} rows, grid {gh}x{gw} needs {gh * gw}")
    if tuple(old_grid) == tuple(new_grid):
        return table
    wh, ww = resample_matrices(old_grid, new_grid, kernel, ar_preserving)
    grid = table.reshape(gh, gw, -1)
    out = np.einsum("ah,hwd,bw->abd", wh, grid, ww)
    return out.reshape(new_grid[0] * new_grid[1], -1)


def resample_pos_embed(pos_embed: np.ndarray, old_grid: tuple[int, int], new_grid: tuple[int, int],
                       num_prefix_tokens: int, kernel: str, ar_preserving: bool = False) -> np.ndarray:
    """timm-layout (1, prefix + gh*gw, D) table to a new grid; prefix rows are kept as they are."""
    table = pos_embed[0]
    prefix, patches = table[:num_prefix_tokens], table[num_prefix_tokens:]
    out = resample_grid(patches.astype(np.float64), old_grid, new_grid, kernel, ar_preserving)
    return np.concatenate([prefix.astype(np.float64), out], axis=0)[None].astype(pos_embed.dtype)


def fixed_table(cfg: ViTConfig, grid: tuple[int, int] | None = None) -> np.ndarray | None:
    """The (tokens, D) float64 table for a sinusoidal config at `grid` (default: cfg.grid); None otherwise."""
    grid = tuple(grid or cfg.grid)
    n_prefix = cfg.num_prefix_tokens
    if cfg.pos_embed == "sincos1d":
        return sincos_1d(n_prefix + grid[0] * grid[1], cfg.embed_dim)
    if cfg.pos_embed == "sincos2d":
        # The class token gets position zero (MAE's convention for a 2-D table).
        return np.concatenate([np.zeros((n_prefix, cfg.embed_dim)), sincos_2d(grid, cfg.embed_dim)], axis=0)
    return None


def with_unpositioned_prefix(table: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """Insert zero rows for the prefix tokens that have no position (cfg.num_pos_prefix of the
    cfg.num_prefix_tokens have one): (Np + N, D) -> (prefix + N, D). Adding 0 is exact, so this equals timm's
    "add to the patches, then concatenate" (no_embed_class) bit for bit. Every backend inserts the same rows."""
    n_pos, n0 = cfg.num_pos_prefix, cfg.num_prefix_tokens
    if n_pos == n0:
        return table
    zeros = np.zeros((n0 - n_pos, table.shape[1]), dtype=table.dtype)
    return np.concatenate([table[:n_pos], zeros, table[n_pos:]], axis=0)


def factorized_grid(pos_y: np.ndarray, pos_x: np.ndarray) -> np.ndarray:
    """The 2-D table of factorized row and column tables: (1, gh, D) and (1, gw, D) -> (gh*gw, D), row (i, j) =
    y[i] + x[j] (row-major). Resampled by `resample_matrices` it equals timm's factorized rule (each axis
    resampled, then summed): the backends build this table and resample it like a learned one."""
    y, x = np.asarray(pos_y)[0], np.asarray(pos_x)[0]
    return (y[:, None, :] + x[None, :, :]).reshape(y.shape[0] * x.shape[0], -1)


def factorized_table(cfg: ViTConfig, params: dict[str, np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """timm NaFlexVit's factorized rule in float64 (`_apply_factorized_pos_embed`): pos_embed_y resampled along
    the rows, pos_embed_x along the columns (each by its own resize matrix, `resample_matrices`), then summed per
    patch: (gh*gw, D). Computed axis by axis, independent of the backends' 2-D route (`factorized_grid`)."""
    wh, ww = model_resample_matrices(cfg, grid)
    y = wh @ np.asarray(params["pos_embed_y"], np.float64)[0]
    x = ww @ np.asarray(params["pos_embed_x"], np.float64)[0]
    return (y[:, None, :] + x[None, :, :]).reshape(len(y) * len(x), -1)


def position_table(cfg: ViTConfig, params: dict[str, np.ndarray], grid: tuple[int, int] | None = None) -> np.ndarray | None:
    """The (tokens, D) float64 table added to all the tokens at `grid`, or None (no position embedding)."""
    grid = tuple(grid or cfg.grid)
    if cfg.pos_embed == "none":
        return None
    if cfg.pos_embed == "learned":
        table = np.asarray(params["pos_embed"], dtype=np.float64)
        table = resample_pos_embed(table, cfg.table_grid, grid, cfg.num_pos_prefix, cfg.resize_kernel,
                                   cfg.pos_ar_preserving)[0]
        return with_unpositioned_prefix(table, cfg)
    if cfg.pos_embed == "factorized":
        return with_unpositioned_prefix(factorized_table(cfg, params, grid), cfg)
    return fixed_table(cfg, grid)


# ------------------------------------------------------------ relative position biases
REL_POS_KINDS = ("none", "table", "mlp")


def rel_pos_distances(grid: tuple[int, int]) -> int:
    """Rows of a relative table for the patch pairs of `grid`: (2 gh - 1) (2 gw - 1) distinct offsets."""
    return (2 * int(grid[0]) - 1) * (2 * int(grid[1]) - 1)


def rel_pos_table_rows(grid: tuple[int, int], prefix_tokens: int) -> int:
    """Rows of a learned relative table (BEiT, timm RelPosBias): the offsets, plus three rows (class-to-patch,
    patch-to-class, class-to-class) when the sequence starts with a class token."""
    return rel_pos_distances(grid) + 3 * int(prefix_tokens > 0)


@lru_cache(maxsize=64)
def _rel_pos_index_cached(gh: int, gw: int, prefix_tokens: int) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)  # row-major patch order
    dy = ys[:, None] - ys[None, :] + gh - 1
    dx = xs[:, None] - xs[None, :] + gw - 1
    patch = dy * (2 * gw - 1) + dx  # (N, N)
    if not prefix_tokens:
        idx = patch
    else:
        n = rel_pos_distances((gh, gw))
        idx = np.empty((gh * gw + 1,) * 2, dtype=np.int64)
        idx[1:, 1:] = patch
        idx[0, :] = n  # class token -> patch
        idx[:, 0] = n + 1  # patch -> class token
        idx[0, 0] = n + 2
    idx = idx.astype(np.int64)
    idx.setflags(write=False)
    return idx


def rel_pos_index(grid: tuple[int, int], prefix_tokens: int = 0) -> np.ndarray:
    """The (T, T) int64 row of the relative table that each (query, key) pair reads (T = prefix + gh*gw): a derived
    index, never a weight. Patch pairs read row (dy + gh - 1) (2 gw - 1) + (dx + gw - 1) for the offset (dy, dx) =
    query - key in the row-major grid; with a class token (prefix_tokens 1) its row, column and corner read the
    three extra rows (timm's `gen_relative_position_index`, BEiT's and RelPosBias's). Read-only, cached."""
    if prefix_tokens not in (0, 1):
        raise ValueError(f"a relative position table knows one class token at most, got {prefix_tokens} prefix tokens")
    return _rel_pos_index_cached(int(grid[0]), int(grid[1]), int(prefix_tokens))


@lru_cache(maxsize=64)
def _rel_log_coords_cached(gh: int, gw: int) -> np.ndarray:
    dy, dx = np.meshgrid(np.arange(-(gh - 1), gh, dtype=np.float64), np.arange(-(gw - 1), gw, dtype=np.float64),
                         indexing="ij")
    c = np.stack([dy, dx], axis=-1).reshape(-1, 2)
    c = np.sign(c) * np.log1p(np.abs(c))
    c.setflags(write=False)
    return c


def rel_log_coords(grid: tuple[int, int]) -> np.ndarray:
    """The ((2 gh - 1)(2 gw - 1), 2) float64 inputs of timm's RelPosMlp ('cr' mode): sign(d) log(1 + |d|) of each
    offset (dy, dx), in the row order `rel_pos_index` reads (without the class rows). Read-only, cached."""
    return _rel_log_coords_cached(int(grid[0]), int(grid[1]))


def gather_rel_pos_bias(rows: np.ndarray, grid: tuple[int, int], prefix_tokens: int, kind: str) -> np.ndarray:
    """The (heads, T, T) float64 score bias from per-offset rows (R, heads): a learned table ("table", its class
    rows included) or the MLP's output over `rel_log_coords` ("mlp": the class token's row and column are zero,
    timm's RelPosMlp padding). The NumPy reference of what every backend computes once per forward."""
    rows = np.asarray(rows, np.float64)
    if kind == "table":
        idx = rel_pos_index(grid, prefix_tokens)
        return np.transpose(rows[idx], (2, 0, 1))
    bias = np.transpose(rows[rel_pos_index(grid, 0)], (2, 0, 1))
    if prefix_tokens:
        bias = np.pad(bias, ((0, 0), (prefix_tokens, 0), (prefix_tokens, 0)))
    return bias


def _rel_table_axis(src: int, dst: int) -> np.ndarray:
    """(dst, src) linear-interpolation matrix of one axis of a relative table (timm's resize_rel_pos_bias_table:
    the source offsets laid on a geometric progression found by bisection, the destination on integers, then
    torch_interpolations' RegularGridInterpolator: linear, clamped at the ends)."""
    if src == dst:
        return np.eye(src)
    left, right = 1.01, 1.5
    while right - left > 1e-6:  # q with 1 + q + ... + q^(src//2 - 1) just under dst // 2, timm's bisection
        q = (left + right) / 2.0
        gp = (1.0 - q ** (src // 2)) / (1.0 - q)
        if gp > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    p = np.asarray([-d for d in reversed(dis)] + [0.0] + dis, np.float32).astype(np.float64)  # timm: float32 points
    t = dst // 2
    x = np.arange(-t, t + 0.1, 1.0, dtype=np.float32).astype(np.float64)
    w = np.zeros((len(x), src))
    for o, xv in enumerate(x):
        r = min(int(np.searchsorted(p, xv, side="left")), src - 1)
        lft = min(max(r - 1, 0), src - 1)
        dl, dr = max(xv - p[lft], 0.0), max(p[r] - xv, 0.0)
        if dl == 0.0 and dr == 0.0:
            dl = dr = 1.0
        w[o, lft] += dr / (dl + dr)
        w[o, r] += dl / (dl + dr)
    return w


def resize_rel_pos_table(table: np.ndarray, old_grid: tuple[int, int], new_grid: tuple[int, int],
                         prefix_tokens: int) -> np.ndarray:
    """A learned (R, heads) relative table stored for `old_grid`, resampled to `new_grid` by timm's own rule
    (`timm.layers.resize_rel_pos_bias_table`, the BEiT fine-tuning rule: per head a separable linear interpolation
    from geometrically spaced source offsets; the three class rows kept as they are). float64 in and out."""
    table = np.asarray(table, np.float64)
    n_extra = 3 * int(prefix_tokens > 0)
    sh, sw = 2 * old_grid[0] - 1, 2 * old_grid[1] - 1
    dh, dw = 2 * new_grid[0] - 1, 2 * new_grid[1] - 1
    if table.shape[0] != sh * sw + n_extra:
        raise ValueError(f"relative table has {table.shape[0]} rows, grid {old_grid[0]}x{old_grid[1]} with "
                         f"{prefix_tokens} class token(s) needs {sh * sw + n_extra}")
    if (sh, sw) == (dh, dw):
        return table
    body, extra = table[:sh * sw], table[sh * sw:]
    wy, wx = _rel_table_axis(sh, dh), _rel_table_axis(sw, dw)
    out = np.einsum("ah,hwn,bw->abn", wy, body.reshape(sh, sw, -1), wx).reshape(dh * dw, -1)
    return np.concatenate([out, extra], axis=0)
