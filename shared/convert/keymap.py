"""Converters as key maps: one engine applies a format's map in either direction.

A format's importer asks its own questions (what the file states, what must be stated), builds the map of its keys
for that config, and hands the map to `take` (file -> canonical); its exporter hands the same map to `put`
(canonical -> file). An entry is (source keys, canonical keys, transform):

    Entry(("enc.0.q.weight", "enc.0.k.weight", "enc.0.v.weight"), ("blocks.0.attn.qkv.weight",), FUSE)
    Entry(("embeddings.class_embedding",), ("cls_token",), Reshape((1, 1, D), (D,)))

`take` reads every source key exactly once: a key the map names and the file lacks is "missing key", a key of the
file no entry reads is "unexpected key", each by name, in one MismatchError naming the file; a canonical tensor whose
shape differs from the expected one (the config's, `weights.expected_shapes`) is "key ...: expected shape ..., got
...". The transforms are pure NumPy and exact (row slicing, concatenation, transposition, reshapes, adding a zero
row), so a round trip through a map is bit-exact. This is keras-hub's `port_weight(variable, key, hook)` turned into
data: the map can be listed, inverted and checked without running a conversion.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import MismatchError
from ..weights import CANONICAL_DTYPE
from .common import float32_view, fuse_rows, split_rows, to_float32


# ----------------------------------------------------------------------------- transforms
class Transform:
    """source tensors -> canonical tensors (`forward`) and back (`backward`: `n` source tensors); each a list, in the
    entry's order."""
    name = "copy"

    def forward(self, src: list[np.ndarray]) -> list[np.ndarray]:
        return src

    def backward(self, canon: list[np.ndarray], n: int) -> list[np.ndarray]:
        return canon

    def __repr__(self) -> str:
        return self.name


COPY = Transform()


class _Fuse(Transform):
    """n source tensors -> one canonical tensor, their rows in order (q, k, v -> qkv; gate, value -> fc1)."""
    name = "fuse"

    def forward(self, src):
        return [fuse_rows(src)]

    def backward(self, canon, n):
        return split_rows(canon[0], n)


FUSE = _Fuse()


@dataclass(frozen=True)
class Rows(Transform):
    """One source tensor -> canonical tensors of these row counts (SigLIP in_proj -> q, kv); back: concatenated."""
    sizes: tuple[int, ...]
    name = "split"

    def forward(self, src):
        (x,) = src
        if x.shape[0] != sum(self.sizes):
            raise _ShapeError(f"shape {x.shape}; expected {sum(self.sizes)} rows {self.sizes}")
        return [p.copy() for p in split_rows(x, self.sizes)]

    def backward(self, canon, n):
        return [fuse_rows(canon)]


@dataclass(frozen=True)
class Reshape(Transform):
    """One tensor, reshaped: `canon` is its canonical shape, `file` its shape in the file (a class embedding (D,) ->
    (1, 1, D); a position table (T, D) -> (1, T, D)). Read: any tensor of that size."""
    canon: tuple[int, ...]
    file: tuple[int, ...]
    name = "reshape"

    def forward(self, src):
        (x,) = src
        if x.size != int(np.prod(self.canon)) or min(self.canon) < 0:
            raise _ShapeError(f"shape {tuple(x.shape)} cannot hold {{dst}} of shape {tuple(self.canon)} "
                              f"(expected {tuple(self.file)})")
        return [x.reshape(self.canon)]

    def backward(self, canon, n):
        return [np.asarray(canon[0]).reshape(self.file)]


@dataclass(frozen=True)
class Zeros(Transform):
    """No source tensor: the canonical one is zeros of `shape` (CLIP's visual_projection has no bias; the canonical
    head's is zero). Written back as nothing (an exporter refuses a non-zero one first)."""
    shape: tuple[int, ...]
    name = "zeros"

    def forward(self, src):
        return [np.zeros(self.shape, CANONICAL_DTYPE)]

    def backward(self, canon, n):
        return []


@dataclass(frozen=True)
class Transpose(Transform):
    """One tensor with its axes permuted: canonical = file.transpose(axes) (a Keras Dense kernel (in, out) -> torch
    Linear (out, in): axes (1, 0))."""
    axes: tuple[int, ...]
    name = "transpose"

    def forward(self, src):
        return [np.ascontiguousarray(np.transpose(src[0], self.axes))]

    def backward(self, canon, n):
        return [np.ascontiguousarray(np.transpose(canon[0], np.argsort(self.axes)))]


@dataclass(frozen=True)
class Fold(Transform):
    """Fuse with zero parts between: the file holds some of the parts, the canonical tensor all of them, the absent
    ones zero (BEiT's q and v biases -> one qkv bias with a zero k bias). `slots`: for each canonical part, the index
    of the source tensor that fills it, or None for zeros. Back: the zero parts are dropped (exact only when they are
    zero, which `put` checks)."""
    slots: tuple[int | None, ...]
    name = "fold"

    def forward(self, src):
        like = src[0]
        return [fuse_rows([src[s] if s is not None else np.zeros_like(like) for s in self.slots])]

    def backward(self, canon, n):
        parts = split_rows(canon[0], len(self.slots))
        for s, p in zip(self.slots, parts):
            if s is None and np.any(p != 0):
                raise ValueError("fold: a part the file does not hold is not zero")
        return [parts[self.slots.index(i)] for i in range(sum(s is not None for s in self.slots))]


@dataclass(frozen=True)
class Chain(Transform):
    """Transforms applied in order (back: in reverse): a Flax kernel (D, H, d) -> Reshape to (D, D) -> Transpose."""
    steps: tuple[Transform, ...]
    name = "chain"

    def forward(self, src):
        for t in self.steps:
            src = t.forward(src)
        return src

    def backward(self, canon, n):
        for t in reversed(self.steps):
            canon = t.backward(canon, n)
        return canon


@dataclass(frozen=True)
class Each(Transform):
    """`inner` on each source tensor, the results fused in row order (Flax's query, key and value kernels, each
    reshaped and transposed, -> one qkv weight)."""
    inner: Transform
    name = "each"

    def forward(self, src):
        return [fuse_rows([self.inner.forward([x])[0] for x in src])]

    def backward(self, canon, n):
        return [self.inner.backward([p], 1)[0] for p in split_rows(canon[0], n)]


def linear_patches(width: int, patch: int, channels: int) -> Transform:
    """A Linear over (ph, pw, C)-flattened patches (width, P*P*C) <-> the canonical conv kernel (width, C, P, P):
    W_conv[d, c, i, j] = W_lin[d, (i * P + j) * C + c] (timm NaFlexVit, HF SigLIP 2; exact both ways)."""
    D, P, C = width, patch, channels
    return Chain((Reshape((D, P, P, C), (D, P * P * C)), Transpose((0, 3, 1, 2))))


class _ShapeError(ValueError):
    pass


# ----------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class Entry:
    """(source keys, canonical keys, transform): the source tensors, transformed, are the canonical ones."""
    src: tuple[str, ...]
    dst: tuple[str, ...]
    transform: Transform = COPY

    def __post_init__(self):
        object.__setattr__(self, "src", (self.src,) if isinstance(self.src, str) else tuple(self.src))
        object.__setattr__(self, "dst", (self.dst,) if isinstance(self.dst, str) else tuple(self.dst))


def renames(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[Entry]:
    """Entries that only rename: {source key: canonical key}."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return [Entry(s, c) for s, c in items]


def prefixed(entries: Iterable[Entry], prefix: str) -> list[Entry]:
    """The same entries with `prefix` before every source key."""
    return [Entry(tuple(prefix + k for k in e.src), e.dst, e.transform) for e in entries]


def expand(entries: Iterable[Entry], depth: int) -> list[Entry]:
    """Entries whose keys hold "{i}" (a block's), once per block 0..depth-1; the others as they are."""
    out: list[Entry] = []
    for e in entries:
        if any("{i}" in k for k in (*e.src, *e.dst)):
            out += [Entry(tuple(k.format(i=i) for k in e.src), tuple(k.format(i=i) for k in e.dst), e.transform)
                    for i in range(depth)]
        else:
            out.append(e)
    return out


def check_map(entries: Sequence[Entry]) -> None:
    """A map reads each source key once and writes each canonical key once (a ValueError names the first twice)."""
    for side in ("src", "dst"):
        seen: set[str] = set()
        for e in entries:
            for k in getattr(e, side):
                if k in seen:
                    raise ValueError(f"key map names {side} key {k!r} twice")
                seen.add(k)


# ----------------------------------------------------------------------------- the engine
def take(entries: Sequence[Entry], src: Mapping[str, Any], source: str, *,
         expected: Mapping[str, tuple[int, ...]] | None = None, shown: Callable[[str], str] = lambda k: k,
         unexpected: Callable[[str], str] | None = None, problems: list[str] | None = None) -> dict[str, np.ndarray]:
    """Apply a map file -> canonical: every source key read once (as float32), missing and leftover keys and wrong
    shapes reported together, by name, in one MismatchError naming `source`.

    expected: canonical key -> shape to check (weights.expected_shapes(cfg)); shown: a source key as the file names
    it (a prefix the caller stripped); unexpected: the message for a leftover key (default "unexpected key 'K'");
    problems: earlier problems to report with these."""
    check_map(entries)
    problems = list(problems or [])
    out: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for e in entries:
        absent = [k for k in e.src if k not in src]
        if absent:
            missing += absent
            continue
        try:
            got = e.transform.forward([to_float32(shown(k), src[k], source) for k in e.src])
        except _ShapeError as err:
            problems.append(f"key {shown(e.src[0])!r}: " + str(err).replace("{dst}", repr(e.dst[0])))
            continue
        for k, v in zip(e.dst, got):
            out[k] = v
    used = {k for e in entries for k in e.src}
    leftover = sorted(set(src) - used)
    if expected is None:
        problems += [f"missing key {shown(k)!r}" for k in missing]
        problems += [(unexpected or (lambda k: f"unexpected key {shown(k)!r}"))(k) for k in leftover]
    else:  # with the shapes, as weights.validate_state names them
        want = {e.src[0]: expected.get(e.dst[0]) for e in entries if len(e.src) == len(e.dst) == 1}
        problems += [f"missing key {shown(k)!r}" + (f" (expected shape {want[k]})" if want.get(k) else "")
                     for k in missing]
        problems += [(unexpected or (lambda k: f"unexpected key {shown(k)!r} (shape {tuple(np.shape(src[k]))})"))(k)
                     for k in leftover]
        problems += [f"key {_name(entries, c, shown)!r}: expected shape {tuple(expected[c])}, got {tuple(v.shape)}"
                     for c, v in out.items() if c in expected and tuple(v.shape) != tuple(expected[c])]
    if problems:
        raise MismatchError(source, problems)
    return out


def put(entries: Sequence[Entry], state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Apply a map canonical -> file: every entry's source keys, as float32 (read-only views where a transform
    returns the canonical tensor itself or part of it: `float32_view`)."""
    check_map(entries)
    out: dict[str, np.ndarray] = {}
    for e in entries:
        canon = [np.asarray(state[k]) for k in e.dst]
        got = e.transform.backward(canon, len(e.src))
        for k, v in zip(e.src, got):
            out[k] = float32_view(v)
    return out


def _name(entries: Sequence[Entry], canon: str, shown: Callable[[str], str]) -> str:
    """The file's name for a canonical key (its entry's first source key)."""
    return next((shown(e.src[0]) for e in entries if canon in e.dst), canon)
