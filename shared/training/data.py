"""The one data pipeline every backend trains and evaluates on (NumPy + Pillow + scikit-learn only).

Every step produces the same bytes in every backend because no framework touches the data:

  decode    PNG/JPEG via Pillow, converted to the config's channels ("L" for 1, "RGB" for 3)
  scale     uint8 images / 255, scikit-learn digits (integers 0..16) / 16  -> [0, 1]
  resize    per axis with the suite's pinned kernel matrices (`shared.posemb.resize_matrix`, float64
            NumPy): bicubic (a = -0.75) when enlarging, antialiased bicubic when shrinking; the
            result is rounded to float32 once
  normalise (x - mean) / std per channel: ImageNet mean/std for RGB (as the seed models);
            for 1-channel images DIGITS_MEAN / DIGITS_STD, the rounded pixel mean and standard
            deviation of load_digits() / 16 (0.3053 and 0.3760 over all 1797 images)
  layout    NCHW float32, labels int64

`batches(n, batch, seed, epoch)` shuffles with `np.random.default_rng([seed, epoch])`, so the same
seed gives the same batches in every backend and in every process.

`load_digits_split(image_size, seed)` holds out a fixed stratified 20 % of load_digits (1797 images,
10 classes); `default_model()` loads the shipped shared/data/digits.safetensors and regenerates its
held-out images from load_digits and the split recorded in the file's metadata (nothing else ships).
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import limits as L
from ..errors import ConfigError, InvalidFileError, UsageError
from ..posemb import resize_matrix

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_MEAN = (0.305,)
DIGITS_STD = (0.376,)
HELDOUT_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # shared/data: the shipped model
DEFAULT_MODEL_PATH = DATA_DIR / "digits.safetensors"


def normalisation(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel for a model with `in_chans` input channels."""
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if in_chans == 1:
        return DIGITS_MEAN, DIGITS_STD
    return (0.5,) * in_chans, (0.5,) * in_chans


# ------------------------------------------------------------------ transforms
def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) -> (N, C, h, w) with the pinned separable kernels (float64 math, float32 result)."""
    x = np.asarray(images, dtype=np.float64)
    H, W = x.shape[-2:]
    h, w = size
    if (H, W) == (h, w):
        return x.astype(np.float32)
    mh = resize_matrix(H, h, "bicubic" if h >= H else "bicubic_antialias")
    mw = resize_matrix(W, w, "bicubic" if w >= W else "bicubic_antialias")
    return np.einsum("hH,ncHW,wW->nchw", mh, x, mw, optimize=False).astype(np.float32)


def normalise(images01: np.ndarray, in_chans: int) -> np.ndarray:
    mean, std = normalisation(in_chans)
    m = np.asarray(mean, np.float64).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float64).reshape(1, -1, 1, 1)
    return ((np.asarray(images01, np.float64) - m) / s).astype(np.float32)


def prepare(images01: np.ndarray, image_size: tuple[int, int], in_chans: int) -> np.ndarray:
    """[0, 1] NCHW images of any size -> the model's normalised NCHW float32 input."""
    return normalise(resize(images01, tuple(image_size)), in_chans)


# ------------------------------------------------------------------ batching
def shuffled_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def batches(n: int, batch: int, seed: int, epoch: int, drop_last: bool = True) -> Iterator[np.ndarray]:
    """Index arrays of one shuffled epoch (the same in every backend for the same seed and epoch)."""
    order = shuffled_order(n, seed, epoch)
    stop = (n // batch) * batch if drop_last else n
    for i in range(0, stop, batch):
        yield order[i:i + batch]


def batch_stream(n: int, batch: int, seed: int, start_step: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Endless (epoch, indices) stream over epochs of `batches`; skips the first `start_step` batches."""
    per_epoch = max(n // batch, 1)
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        for j, idx in enumerate(batches(n, min(batch, n), seed, epoch)):
            if epoch * per_epoch + j >= start_step:
                yield epoch, idx
        epoch += 1


@dataclass
class Dataset:
    images: np.ndarray  # NCHW float32, normalised
    labels: np.ndarray  # int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


# ------------------------------------------------------------------ digits
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (it ships them: no download), (N, 1, 8, 8) in [0, 1] and the labels. Read from
    scikit-learn's own data file as `load_digits` reads it, without importing scikit-learn (whose import, SciPy's
    statistics included, took 5 of the 6.7 CPU seconds of `check`'s main process); `load_digits` itself where
    the file is not where it used to be."""
    data = _digits_csv()  # read-only, cached: what is returned is computed from it
    if data is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        images, target = d.images, d.target
    else:
        images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    return (images.astype(np.float64) / 16.0)[:, None], target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits_csv() -> np.ndarray | None:
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = np.loadtxt(f, delimiter=",")
            data.flags.writeable = False
            return data
    return None


def digits_split_indices(seed: int = DEFAULT_SPLIT_SEED, fraction: float = HELDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a stratified split, `fraction` of every class held out."""
    _, y = _raw_digits()
    rng = np.random.default_rng([int(seed), 1797])
    train, held = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def load_digits_split(image_size=(16, 16), seed: int = DEFAULT_SPLIT_SEED, in_chans: int = 1) -> tuple[Dataset, Dataset]:
    """(train, held-out) digits as normalised NCHW float32 at `image_size`."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    x01, y = _raw_digits()
    if in_chans != 1:
        x01 = np.repeat(x01, in_chans, axis=1)
    x = prepare(x01, image_size, in_chans)
    tr, te = digits_split_indices(seed)
    classes = [str(i) for i in range(10)]
    return Dataset(x[tr], y[tr], classes), Dataset(x[te], y[te], classes)


# ------------------------------------------------------------------ files
def read_image(path: str | os.PathLike, in_chans: int) -> np.ndarray:
    """One PNG/JPEG -> (C, H, W) float64 in [0, 1] with the config's channels.

    InvalidFileError (exit 3) naming the file for anything that is not a readable image: text, a corrupt or
    truncated file, more than shared.limits.MAX_IMAGE_PIXELS pixels (read from the header before decoding: a
    decompression bomb costs nothing) or a file over MAX_IMAGE_FILE_BYTES."""
    from PIL import Image

    mode = {1: "L", 3: "RGB"}.get(in_chans)
    if mode is None:
        raise ConfigError(f"{path}: can only read images for 1- or 3-channel models, not {in_chans}")
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UsageError(f"{path}: no such image file ({e.strerror})") from None
    if not path.is_file():
        raise UsageError(f"{path}: not an image file")
    if size > L.MAX_IMAGE_FILE_BYTES:
        raise InvalidFileError(f"{path}: {size:,} bytes, over the {L.MAX_IMAGE_FILE_BYTES:,}-byte limit for one image")
    Image.MAX_IMAGE_PIXELS = L.MAX_IMAGE_PIXELS  # Pillow's own guard, at the suite's limit
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > L.MAX_IMAGE_PIXELS or w <= 0 or h <= 0:
                raise InvalidFileError(f"{path}: {w}x{h} pixels, over the limit of {L.MAX_IMAGE_PIXELS:,} "
                                       f"(shared.limits.MAX_IMAGE_PIXELS): refused before decoding (a decompression "
                                       f"bomb?)")
            a = np.asarray(im.convert(mode), dtype=np.float64) / 255.0
    except InvalidFileError:
        raise
    except Image.DecompressionBombError as e:
        raise InvalidFileError(f"{path}: over the limit of {L.MAX_IMAGE_PIXELS:,} pixels "
                               f"(shared.limits.MAX_IMAGE_PIXELS), refused before decoding: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # UnidentifiedImageError is an OSError
        raise InvalidFileError(f"{path}: not a readable PNG/JPEG image ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def load_images(paths: list[str | os.PathLike], image_size, in_chans: int) -> np.ndarray:
    """Image files -> normalised NCHW float32 model inputs (each resized separately)."""
    check_dataset_size(len(paths), image_size, in_chans, f"{len(paths)} image files")
    return np.concatenate([prepare(read_image(p, in_chans)[None], tuple(image_size), in_chans) for p in paths])


def check_dataset_size(n: int, image_size, in_chans: int, what: str) -> None:
    """UsageError naming `what` when n images would exceed MAX_IMAGES or NPY_MAX_BYTES as float32 model inputs."""
    nbytes = n * in_chans * int(image_size[0]) * int(image_size[1]) * 4
    if n > L.MAX_IMAGES or nbytes > L.NPY_MAX_BYTES:
        raise UsageError(f"{what}: {n:,} images ({nbytes / 2**30:,.1f} GiB as model inputs), over the limit of "
                         f"{L.MAX_IMAGES:,} images or {L.NPY_MAX_BYTES / 2**30:.0f} GiB")


def load_image_folder(root: str | os.PathLike, image_size, in_chans: int) -> Dataset:
    """ImageFolder layout: root/<class>/<image>; classes are the sorted sub-folder names. A missing folder, one
    without class sub-folders or without images is a UsageError naming it; a bad image an InvalidFileError."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder (expected one sub-folder per class)")
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise UsageError(f"{root}: no class sub-folders (expected {root}/<class>/<image>.png)")
        paths, labels = [], []
        for i, c in enumerate(classes):
            for f in sorted((root / c).iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    paths.append(f)
                    labels.append(i)
                    if len(paths) > L.MAX_IMAGES:
                        raise UsageError(f"{root}: more than {L.MAX_IMAGES:,} images (shared.limits.MAX_IMAGES)")
    except OSError as e:
        raise UsageError(f"{root}: unreadable folder ({type(e).__name__}: {e.strerror or e})") from None
    if not paths:
        raise UsageError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images in {classes[:20]}")
    return Dataset(load_images(paths, image_size, in_chans), np.asarray(labels, np.int64), classes)


def split_dataset(ds: Dataset, fraction: float = HELDOUT_FRACTION, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Random (train, held-out) split of a folder dataset (at least one held-out image)."""
    order = np.random.default_rng([int(seed), len(ds)]).permutation(len(ds))
    k = max(1, int(round(fraction * len(ds)))) if len(ds) > 1 else 0
    te, tr = np.sort(order[:k]), np.sort(order[k:])
    return Dataset(ds.images[tr], ds.labels[tr], ds.classes), Dataset(ds.images[te], ds.labels[te], ds.classes)


# ------------------------------------------------------------------ shipped model
def digits_metadata(split_seed: int, image_size) -> dict[str, str]:
    mean, std = normalisation(1)
    return {"dataset": "sklearn.datasets.load_digits", "split_seed": str(split_seed),
            "heldout_fraction": str(HELDOUT_FRACTION), "image_size": json.dumps(list(image_size)),
            "normalisation": json.dumps({"scale": "x / 16", "mean": mean, "std": std,
                                         "resize": "shared.posemb.resize_matrix bicubic"})}


def heldout_for(meta: dict[str, str], image_size) -> Dataset:
    seed = int(meta.get("split_seed", DEFAULT_SPLIT_SEED))
    return load_digits_split(tuple(image_size), seed)[1]


def default_model(path: str | os.PathLike | None = None):
    """(cfg, state, source, held-out images, held-out labels) of the shipped digits model, or None if absent."""
    from .. import weights as W

    p = Path(path) if path is not None else DEFAULT_MODEL_PATH
    if not p.is_file():
        return None
    cfg, state = W.load(p)
    meta = W.read_metadata(p)
    held = heldout_for(meta, cfg.image_size)
    acc = meta.get("heldout_top1_reference")
    source = f"shipped model {p.name} (digits, {len(held)} held-out images" + (f", top-1 {float(acc):.2%})" if acc else ")")
    return cfg, state, source, held.images, held.labels
