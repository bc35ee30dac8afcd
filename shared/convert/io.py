"""Read and write a model in any supported format: (config, canonical state) <-> a file or directory.

    cfg, state = read_any("model.keras")                      # format detected from the bytes
    write_any("model.ckpt", "mindspore", cfg, state)           # atomically: nothing left behind on failure

Peer formats (timm, Hugging Face) go through the pure converters of this package; the Keras and MindSpore backends'
native files (.keras, .weights.h5, .ckpt) are read and written as data (keras_file: h5py and zipfile; ms_ckpt: the
checkpoint protobuf), the bytes the framework writes, without importing it; the torch backend's `.pt` through its
`save_native` / `load_native`, reached by the registry like everything else (`frameworks_needed` names the backends
a conversion imports).
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import weights as W
from ..backend import get_backend, import_frameworks_in_safe_order
from ..config import ViTConfig
from ..errors import MismatchError, OutputError, UsageError
from ..fileio import atomic_write, write_dir_atomically
from ..presets import get_preset
from .common import resize_state
from .formats import FORMATS, SUFFIX, detect_format, native_backend

#: the formats whose importer takes stated facts (`read_any(..., pool=, gelu=, mlp=, grid=, num_heads=,
#: layer_norm_eps=)`)
STATED_FACT_FORMATS = ("timm", "torch")


def read_any(src: str, fmt: str | None = None, preset: str | ViTConfig | None = None,
             image_size: tuple[int, int] | None = None, *, deferred: list | None = None,
             **stated) -> tuple[ViTConfig, dict]:
    """Any supported file -> (config, canonical state); `preset` (a name or a config) supplies what a file cannot
    tell. `stated` (pool=, gelu=, mlp=, grid=, num_heads=, layer_norm_eps=: see shared.convert.timm.import_timm) answers
    the questions a timm state dict leaves open; other formats refuse them (UsageError). The reader is the format's
    row of TABLE. `deferred` (a list) given, a format whose file carries its own check (the `.ckpt` digest, the
    `.keras` member's CRC-32) may return before that check is done, appending the callable that waits for it (and
    raises its error): call each before using the state for anything but a staged write
    (`fileio.checks_before_commit`)."""
    fmt = fmt or detect_format(src)
    stated = {k: v for k, v in stated.items() if v is not None}
    if stated and fmt not in STATED_FACT_FORMATS:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in stated)
        raise UsageError(f"{flags} answer(s) what a timm state dict cannot tell; {src} is a {fmt!r} file, which "
                         f"states it (or takes --preset)")
    reader = TABLE[fmt].read if fmt in TABLE else None
    if reader is None:
        raise UsageError(f"unknown source format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt not in ("kerashub", "mindcv"):  # foreign files: their modules take --preset (mindcv's model names too)
        preset = _preset_hint(preset, fmt) if preset else None
    pending: list = []
    cfg, state = reader(src, fmt, preset, image_size, stated, **({"deferred": pending} if TABLE[fmt].defers and
                                                                    deferred is not None else {}))
    if not TABLE[fmt].sized_by_importer and image_size and tuple(image_size) != tuple(cfg.image_size):
        settle(pending)  # arithmetic on the tensors: only on checked ones
        cfg, state = resize_state(cfg, state, image_size)
    if deferred is not None:
        deferred.extend(pending)
    return cfg, state


def settle(deferred: list) -> None:
    """Wait for each check `read_any(..., deferred=)` left pending; the first that fails raises its error."""
    for check in deferred:
        check()


def _read_foreign(src, fmt, preset, image_size, stated):
    from .kerashub import load_kerashub
    from .mindcv import load_mindcv_file

    return (load_kerashub if fmt == "kerashub" else load_mindcv_file)(src, preset)


def _read_canonical(src, fmt, cfg_hint, image_size, stated):
    return W.load(src)


def _read_timm(src, fmt, cfg_hint, image_size, stated):
    from .timm import load_timm_file

    return load_timm_file(src, preset=cfg_hint, image_size=image_size, **stated)


def _read_torchvision(src, fmt, cfg_hint, image_size, stated):
    from .torchvision import load_torchvision_file

    return load_torchvision_file(src, preset=cfg_hint, image_size=image_size)


def _read_bigvision(src, fmt, cfg_hint, image_size, stated):
    from .bigvision import load_bigvision_file

    return load_bigvision_file(src, preset=cfg_hint, image_size=image_size)


def _read_hf(src, fmt, cfg_hint, image_size, stated):
    from .hf import load_hf_dir

    return load_hf_dir(src if Path(src).is_dir() else Path(src).parent)


def _read_torch(src, fmt, cfg_hint, image_size, stated):
    """A plain state dict carries no config: the named preset if it fits exactly, else sizes from the file."""
    from .timm import load_timm_file, read_checkpoint

    state = read_checkpoint(src)
    try:
        if not isinstance(cfg_hint, ViTConfig) or stated:
            raise MismatchError(src, ["no preset, or facts stated for a timm state dict"])
        W.validate_state(cfg_hint, state, source=src)
        return cfg_hint, state
    except MismatchError:  # a timm state dict (with timm's config.json beside it, when there is one)
        return load_timm_file(src, preset=cfg_hint, image_size=image_size, **stated)


def _read_keras(src, fmt, cfg_hint, image_size, stated, deferred=None):
    """A vit_keras .keras (its config; --preset serves nothing) or .weights.h5 (the config from --preset), as data."""
    from ..keras_file import load_keras, load_weights_h5

    if fmt == "keras-h5":
        return load_weights_h5(src, cfg_hint if isinstance(cfg_hint, ViTConfig) else None)
    return load_keras(src, deferred=deferred)


def _read_mindspore(src, fmt, cfg_hint, image_size, stated, deferred=None):
    """The MindSpore backend's .ckpt, as data: its own config, or --preset's for a file that records none."""
    from ..ms_ckpt import load_suite_ckpt

    return load_suite_ckpt(src, None, default=cfg_hint if isinstance(cfg_hint, ViTConfig) else None,
                           deferred=deferred)


def read_stored_tensors(src: str, fmt: str) -> dict[str, np.ndarray]:
    """The tensors a file of format `fmt` holds, read as data, without a preset (what `inspect` lists for a file that
    is not canonical): a file's own names where it carries no config, the canonical names where it carries one (a
    Hugging Face directory, .keras, .ckpt, a keras-hub preset). A file that cannot be read is an InvalidFileError
    naming it and what failed."""
    from .bigvision import read_npz
    from .formats import _safetensors_kind
    from .kerashub import read_h5
    from .mindcv import read_ckpt_tensors
    from .timm import read_torch_checkpoint, timm_files

    p = Path(src)
    if fmt == "timm" and p.is_dir():
        p = timm_files(p)[0]
    if fmt in ("timm", "torchvision", "hf") and p.is_file() and _safetensors_kind(p):
        return W.read_tensors(p)[0]
    if fmt in ("timm", "torch", "torchvision"):
        return read_torch_checkpoint(p)
    if fmt == "bigvision":
        return read_npz(p)
    if fmt == "mindcv":
        return read_ckpt_tensors(p)
    if fmt == "keras-h5" or (fmt == "kerashub" and p.is_file() and not zipfile.is_zipfile(p)):
        return read_h5(p, str(p))
    return read_any(src, fmt)[1]


def _preset_hint(name: str | ViTConfig, fmt: str | None = None) -> ViTConfig | str | None:
    """A config, a suite preset, or a mindcv model name (its files' --preset, which `convert --verify` passes on).
    Any other name timm knows is kept as a name for a timm state dict (the importer resolves it by timm's own
    model), and unused by a file that carries its config (canonical, hf: `convert --verify` reads the result back
    with the --preset it was given)."""
    from .mindcv import MINDCV_MODELS, mindcv_preset
    from .common import is_suite_preset
    from .timm_resolve import timm_knows

    if isinstance(name, ViTConfig):
        return name
    if name in MINDCV_MODELS:
        return mindcv_preset(name)
    if not is_suite_preset(name):
        if fmt in STATED_FACT_FORMATS:
            return name
        if fmt in ("canonical", "hf") and timm_knows(name):
            return None
    return get_preset(name)


def write_any(dst: str, fmt: str, cfg: ViTConfig, state: dict, *, overwrite: bool = False,
              stages: bool = False) -> None:
    """Write (config, canonical state) in format `fmt` (one of FORMATS), atomically; an existing `dst` is replaced
    only with overwrite=True (single files are then created exclusively, so a concurrent writer cannot be lost).
    timm: a `dst` without a suffix is a timm hub directory; `.pt`/`.pth`/`.bin` a torch state dict (torch.save, what
    `torch.load(weights_only=True)` reads), any other suffix a safetensors state dict. The writer is the format's
    row of TABLE. onnx: the suite's own graph (shared.deploy), `stages` adding every named stage as an output."""
    writer = TABLE[fmt].write if fmt in TABLE else None
    if writer is None:
        raise UsageError(f"unknown target format {fmt!r}; known: {', '.join(FORMATS)}")
    if stages and fmt != "onnx":
        raise UsageError(f"--stages adds graph outputs to an ONNX export; {dst} is written as {fmt!r}")
    if stages:
        _write_onnx(dst, fmt, cfg, state, overwrite, stages=True)
        return
    writer(dst, fmt, cfg, state, overwrite)


def _write_canonical(dst, fmt, cfg, state, overwrite):
    W.save(dst, cfg, state, overwrite=overwrite)


def _write_timm(dst, fmt, cfg, state, overwrite):
    from .timm import export_timm

    if not Path(dst).suffix:
        save_timm_hub_dir(dst, cfg, state, overwrite=overwrite)
        return
    timm_state = {k: np.ascontiguousarray(v) for k, v in export_timm(cfg, state).items()}
    if Path(dst).suffix.lower() in (".pt", ".pth", ".bin"):
        import torch

        tensors = {k: torch.from_numpy(v) for k, v in timm_state.items()}
        atomic_write(dst, lambda t: torch.save(tensors, t), overwrite=overwrite)
    else:
        from safetensors.numpy import save_file

        atomic_write(dst, lambda t: save_file(timm_state, t), overwrite=overwrite)


def _write_hf(dst, fmt, cfg, state, overwrite):
    from .hf import save_hf_dir

    save_hf_dir(dst, cfg, state, overwrite=overwrite)


def _write_torchvision(dst, fmt, cfg, state, overwrite):
    from .torchvision import save_torchvision_file

    save_torchvision_file(dst, cfg, state, overwrite=overwrite)


def _write_bigvision(dst, fmt, cfg, state, overwrite):
    raise UsageError("bigvision (.npz) is read only: vit-suite does not write the big_vision layout; "
                     "pick another --to")


def _write_kerashub(dst, fmt, cfg, state, overwrite):
    from .kerashub import save_kerashub_preset

    save_kerashub_preset(dst, cfg, state, overwrite=overwrite)


def _write_mindcv(dst, fmt, cfg, state, overwrite):
    from .mindcv import save_mindcv_ckpt

    save_mindcv_ckpt(dst, cfg, state, overwrite=overwrite)


def _write_keras(dst, fmt, cfg, state, overwrite):
    """What vit_keras' save_native writes for build_model(cfg, state), as data."""
    from ..keras_file import save_keras, save_weights_h5

    (save_weights_h5 if fmt == "keras-h5" else save_keras)(dst, cfg, state, overwrite=overwrite)


def _write_mindspore(dst, fmt, cfg, state, overwrite):
    from ..ms_ckpt import save_suite_ckpt

    save_suite_ckpt(cfg, state, dst, overwrite=overwrite)


def _read_onnx(src, fmt, cfg_hint, image_size, stated):
    from ..deploy.onnx_file import read_onnx

    return read_onnx(src)


def _write_onnx(dst, fmt, cfg, state, overwrite, stages: bool = False):
    from ..deploy.onnx_file import write_onnx

    write_onnx(dst, cfg, state, stages=stages, overwrite=overwrite)


def _write_native(dst, fmt, cfg, state, overwrite):
    """A backend's own file, through the backend's save_native inside one atomic writer."""
    if not overwrite and Path(dst).exists():
        raise OutputError(f"{dst} exists; pass --force to replace it")
    be_name = native_backend(fmt)
    import_frameworks_in_safe_order([be_name])
    be = get_backend(be_name)
    model = be.build(cfg, state)
    suffix = SUFFIX[fmt]

    def write(tmp: str) -> None:
        # the backend's own atomic writer writes directly inside this writer's staging folder (no second
        # layer); a framework that insists on its suffix gets a name with it there, moved onto `tmp`
        inner = tmp if tmp.endswith(suffix) else os.path.join(os.path.dirname(tmp), f"model{suffix}")
        be.save_native(model, inner)
        if inner != tmp:
            os.replace(inner, tmp)

    atomic_write(dst, write, overwrite=overwrite)


def frameworks_needed(*fmts: str) -> list[str]:
    """The backends whose framework reading or writing these formats imports (the others are read and written as
    data): what a conversion must import, in the safe order, before it starts."""
    return [native_backend(f) for f in fmts
            if f in TABLE and TABLE[f].write is _write_native]


def target_format(dst: str, to: str | None = None) -> str:
    """The format to write `dst` in: `to` if given, else from the destination's suffix (no suffix: HF directory)."""
    if to:
        return to
    name = dst.lower()
    if name.endswith(".weights.h5"):
        return "keras-h5"
    for suffix, fmt in ((".keras", "keras"), (".ckpt", "mindspore"), (".pt", "torch"), (".pth", "torch"),
                        (".safetensors", "canonical"), (".onnx", "onnx")):
        if name.endswith(suffix):
            return fmt
    if not Path(dst).suffix:
        return "hf"
    raise UsageError(f"cannot tell the target format of {dst!r}: pass --to ({', '.join(FORMATS)})")


def save_timm_hub_dir(directory: str | os.PathLike, cfg: ViTConfig, state: dict, *, overwrite: bool = False) -> Path:
    """A timm hub directory, as timm's save_for_hf writes one: config.json (shared.convert.timm.timm_hub_config) +
    model.safetensors (the timm state dict), atomically; `timm.create_model('local-dir:DIR', pretrained=True)` loads
    it strictly."""
    from safetensors.numpy import save_file

    from .timm import timm_form, timm_hub_config

    cfg_t, timm_state = timm_form(cfg, state)
    conf = timm_hub_config(cfg_t)

    def write(tmp: Path) -> None:
        save_file({k: np.ascontiguousarray(v) for k, v in timm_state.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(conf, indent=2) + "\n")

    return write_dir_atomically(directory, write, overwrite=overwrite)


def _problems(module: str, name: str):
    """A converter's export_problems(cfg, state), imported when asked (kerashub and mindcv load lazily)."""
    def problems(cfg: ViTConfig, state: dict | None = None) -> list[str]:
        import importlib

        fn = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        return fn(cfg, state) if module == "kerashub" else fn(cfg)
    return problems


def _onnx_problems(cfg: ViTConfig, state: dict | None = None) -> list[str]:
    from ..deploy.onnx_graph import export_problems

    return export_problems(cfg, state)


@dataclass(frozen=True)
class Format:
    """One format's row: its reader (src, fmt, preset or its hint, image_size, stated facts) -> (config, canonical
    state), its writer (dst, fmt, config, canonical state, overwrite), and, for a peer format, why an export refuses
    a config (export_problems(cfg, state) -> the problems, empty when it can be written). sized_by_importer: the
    importer takes image_size itself (it may state the table's grid, not only resize it). defers: the reader takes
    deferred= (read_any's: the file's own check may be left pending)."""
    read: Callable | None
    write: Callable | None
    export_problems: Callable[..., list[str]] | None = None
    sized_by_importer: bool = False
    defers: bool = False


#: every format (FORMATS) -> its row: read_any and write_any dispatch through this table
TABLE: dict[str, Format] = {
    "canonical": Format(_read_canonical, _write_canonical),
    "timm": Format(_read_timm, _write_timm, _problems("timm", "export_problems"), sized_by_importer=True),
    "hf": Format(_read_hf, _write_hf, _problems("hf", "export_problems")),
    "torch": Format(_read_torch, _write_native),
    "keras": Format(_read_keras, _write_keras, defers=True),
    "keras-h5": Format(_read_keras, _write_keras),
    "mindspore": Format(_read_mindspore, _write_mindspore, defers=True),
    "torchvision": Format(_read_torchvision, _write_torchvision, _problems("torchvision", "torchvision_problems"),
                          sized_by_importer=True),
    "bigvision": Format(_read_bigvision, _write_bigvision, sized_by_importer=True),
    "kerashub": Format(_read_foreign, _write_kerashub, _problems("kerashub", "_kerashub_problems")),
    "mindcv": Format(_read_foreign, _write_mindcv, _problems("mindcv", "_mindcv_problems")),
    "onnx": Format(_read_onnx, _write_onnx, _onnx_problems),
}
