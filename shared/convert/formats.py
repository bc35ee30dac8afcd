"""Weight-file formats, recognised from content (magic bytes and structure), never from the extension."""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from ..backend import is_available, runs_in_this_process
from .. import limits as L
from ..errors import InvalidFileError
from ..safeio import check_zip, load_json, read_json_file
from ..ms_ckpt import ckpt_names, looks_like_ckpt, read_varint

#: every format `vit-suite convert` reads or writes
FORMATS = ("canonical", "timm", "hf", "torch", "keras", "keras-h5", "mindspore", "torchvision", "bigvision",
           "kerashub", "mindcv", "onnx")
#: the backends that read and write each native format, preferred first
NATIVE_BACKENDS = {"torch": ("torch",), "keras": ("keras", "keras-jax", "keras-torch"),
                   "keras-h5": ("keras", "keras-jax", "keras-torch"), "mindspore": ("mindspore",)}
#: default suffix when writing each format
SUFFIX = {"canonical": ".safetensors", "timm": ".safetensors", "hf": "", "torch": ".pt", "keras": ".keras",
          "keras-h5": ".weights.h5", "mindspore": ".ckpt", "torchvision": ".pth", "bigvision": ".npz", "kerashub": "",
          "mindcv": ".ckpt", "onnx": ".onnx"}

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def native_backend(fmt: str) -> str | None:
    """The backend that reads and writes native format `fmt` in this process (None for a peer format).

    Keras files: the Keras backend KERAS_BACKEND names (TensorFlow when it is unset), if installed; a Keras file
    written under one Keras backend loads under the others.
    """
    names = NATIVE_BACKENDS.get(fmt, ())
    usable = [n for n in names if runs_in_this_process(n) and is_available(n)]
    return (usable or list(names) or [None])[0]


def _safetensors_kind(path: Path) -> str | None:
    """The safetensors flavour of `path`, read structurally (an 8-byte little-endian header length that fits the
    file, then a JSON object), or None when the file is not safetensors."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or n > min(path.stat().st_size - 8, L.MAX_HEADER_BYTES):
            return None
        raw = f.read(n)
    if not raw.startswith(b"{"):
        return None
    try:
        header = load_json(raw, str(path), max_bytes=L.MAX_HEADER_BYTES)
    except InvalidFileError as e:
        if "nested" in str(e):  # a safetensors header, but a hostile one: the reader refuses it by name
            return "timm"
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__") or {}
    if isinstance(meta, dict) and "vit_config" in meta:
        return "canonical"
    keys = [k for k in header if k != "__metadata__"]
    # HF: ViT / DeiT / DINOv2 / ViTMAE name the patch projection `patch_embeddings`, CLIP / SigLIP `patch_embedding`
    if any("embeddings.patch_embeddings" in k or "embeddings.patch_embedding." in k
           or ".attention.attention.query" in k for k in keys):
        return "hf"
    if "conv_proj.weight" in keys and "encoder.pos_embedding" in keys:
        return "torchvision"
    # a torch-backend native safetensors state dict has canonical names but no config: timm layout
    return "timm"


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto: field 1 (ir_version, a small varint) first, then another ModelProto field's tag
    (producer_name 2, producer_version 3, domain 4, model_version 5, doc_string 6, graph 7, opset_import 8)."""
    if head[:1] != b"\x08":
        return False
    ir, i = read_varint(head, 1)
    return 1 <= ir <= 64 and head[i:i + 1] in (b"\x12", b"\x1a", b"\x22", b"\x28", b"\x32", b"\x3a", b"\x42")


# torchvision's signature keys, as the pickle of a torch.save'd state dict spells them (never unpickled here)
_TORCHVISION_MARKS = (b"conv_proj.weight", b"encoder.pos_embedding")


def _torch_pickle_is_torchvision(path: Path, names: list[str] | None) -> bool:
    """Whether a torch.save file holds a torchvision VisionTransformer state dict: its key strings are read as
    bytes from the pickle (data.pkl in the zip; the first 4 MiB of a legacy file), nothing is unpickled."""
    try:
        if names is None:
            with open(path, "rb") as f:
                blob = f.read(4 << 20)
        else:
            with zipfile.ZipFile(path) as z, z.open(next(n for n in names if n.endswith("data.pkl"))) as member:
                blob = member.read(4 << 20)
    except Exception:  # noqa: BLE001 (detection only: a damaged archive is refused, typed, by the reader)
        return False
    return all(m in blob for m in _TORCHVISION_MARKS)


def _is_bigvision_npz(names: list[str]) -> bool:
    """np.savez of the original ViT / big_vision parameter tree: every member an .npy named by its Flax path."""
    return bool(names) and all(n.endswith(".npy") for n in names) and any(
        n.endswith("embedding/kernel.npy") for n in names)


def detect_format(path: str | Path) -> str:
    """One of FORMATS, from the bytes of `path`. A directory with config.json and its weights is a timm hub model
    when config.json is timm's (`architecture`, written by timm's save_for_hf), else a Hugging Face model."""
    path = Path(path)
    from .kerashub import is_kerashub  # keras-hub's preset directory, .keras and .weights.h5 (read as data)

    if is_kerashub(path):
        return "kerashub"
    if path.is_dir():
        if (path / "config.json").is_file() and any((path / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
            from .timm import is_timm_config  # timm's save_for_hf: `architecture`; transformers: `model_type`

            return "timm" if is_timm_config(read_json_file(path / "config.json")) else "hf"
        raise InvalidFileError(f"{path}: a directory but neither a Hugging Face nor a timm hub model (needs "
                               f"config.json + model.safetensors)")
    if not path.is_file():
        raise InvalidFileError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise InvalidFileError(f"{path}: empty file")
    if head.startswith(_HDF5_MAGIC):
        return "keras-h5"
    if head.startswith(b"PK\x03\x04"):
        check_zip(path)  # corrupt, too many members, or a zip bomb: refused from the central directory
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if "config.json" in names and any(n.endswith(".weights.h5") for n in names):
            return "keras"
        if any(n.endswith("data.pkl") for n in names):
            return "torchvision" if _torch_pickle_is_torchvision(path, names) else "torch"
        if _is_bigvision_npz(names):
            return "bigvision"
        raise InvalidFileError(f"{path}: zip archive that is neither a .keras model nor a torch.save file: "
                               f"{[n[:80] for n in names[:5]]}")
    # safetensors before any pickle sniffing: its first byte is the low byte of the header length, 0x80 for about
    # one file in 256, so "starts with 0x80" alone would call those files legacy torch pickles
    kind = _safetensors_kind(path)
    if kind:
        return kind
    if head[:1] == b"\x80":
        # legacy (non-zip) torch.save; read only with weights_only=True
        return "torchvision" if _torch_pickle_is_torchvision(path, None) else "torch"
    if _looks_like_onnx(head):
        return "onnx"
    if looks_like_ckpt(path):
        # without vit-suite's digest record, a ViT's parameter names make it a foreign (mindcv) checkpoint
        names = ckpt_names(path)
        foreign_vit = "vit_suite_digest" not in names and any(n.startswith("blocks.0.attn.qkv.") for n in names)
        return "mindcv" if foreign_vit else "mindspore"
    raise InvalidFileError(f"{path}: unrecognised weight format (first bytes {head[:8]!r}); known: {', '.join(FORMATS)}")
