"""Proof against the source: the library a checkpoint came from, run on the check's images.

The float64 reference of a converted file shares every mistake the conversion made (a wrong pooling, a table read
on the wrong grid), so `check` passing proves only that the backends agree with that file. What proves the import
is the source library's own output: each runner here builds the source model with that library's own code from
the source file (not from the converted config) and returns its final output, which `check --against SRC` and
`convert --verify` compare with the reference of the converted file.

    timm (state dicts)   timm.create_model(ARCH, **kwargs) + load_state_dict(strict=True); ARCH is the timm
                         architecture the conversion named (--preset NAME, any timm name, or timm's config.json
                         beside the file, with its model_args); no other guess. Without a config.json the kwargs
                         are every fact the converted config states (timm_model_args: sizes, pooling with fc_norm,
                         GELU form, ...) on ARCH's own modules: a wrong statement is shared, a wrong reading of the
                         keys fails the strict load. A timm hub directory: timm.create_model('local-dir:DIR', pretrained=True)
    hf (directories)     transformers' own class for the directory's model_type and architectures (ViT, DeiT, DINOv2,
                         ViTMAE, ViTMSN, I-JEPA, CLIP, SigLIP, MetaCLIP 2, SigLIP 2: hf_runner),
                         from_pretrained(local_files_only); SigLIP 2 on flattened patches + pixel_attention_mask +
                         spatial_shapes (siglip2_inputs)
    torchvision          torchvision's own VisionTransformer + load_state_dict(strict=True)
    bigvision (.npz)     timm's own _load_weights on the file
    kerashub             keras-hub's own from_preset / Keras' safe-mode loader / model + load_weights (a Keras child)
    mindcv (.ckpt)       mindcv's own VisionTransformer + MindSpore's load_param_into_net (a MindSpore child)

Runners need their library (and torch, keras or mindspore: SOURCE_BACKENDS); the tool runs them in a child process
(`shared.cli.worker source`) with that backend's environment.
"""
from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import ViTConfig
from ..errors import EXIT_USAGE, MismatchError, MissingFactsError, SourceError, SuiteError, UsageError
from .formats import detect_format

#: source format -> the library whose own code defines it (and whose absence means "not verified")
SOURCE_LIBRARIES: dict[str, str] = {"timm": "timm", "torch": "timm", "hf": "transformers",
                                     "torchvision": "torchvision", "bigvision": "timm",
                                     "kerashub": "keras_hub", "mindcv": "mindcv"}
#: source format -> the backend whose environment the runner's child process gets (default "torch")
SOURCE_BACKENDS: dict[str, str] = {"kerashub": "keras", "mindcv": "mindspore"}


def source_backend(fmt: str) -> str:
    return SOURCE_BACKENDS.get(fmt, "torch")


def source_library(fmt: str) -> str | None:
    return SOURCE_LIBRARIES.get(fmt)


def library_available(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def resolve_source(src: str | os.PathLike, fmt: str | None = None) -> tuple[str, str]:
    """(format, library) of a source to prove a conversion against; a format no library defines is bad usage."""
    fmt = fmt or detect_format(str(src))
    library = source_library(fmt)
    if library is None:
        known = ", ".join(sorted(SOURCE_LIBRARIES))
        raise UsageError(f"--against {src}: a {fmt!r} file has no source library to prove it against "
                         f"(sources: {known})")
    return fmt, library


def _torch_forward(model, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model.eval().float()(torch.from_numpy(np.ascontiguousarray(images, np.float32)))
    return out


def timm_output(src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """timm's own model of the source, loaded strictly from the source file (DeiT distilled in eval: the mean of
    its two heads, timm's inference output).

    A timm hub directory (config.json + weights) is built and loaded by timm itself:
    `timm.create_model('local-dir:DIR', pretrained=True)`, with img_size = the images' size when they differ from
    its own (timm's checkpoint filter resamples the table from the size config.json states). A state dict is built
    as `timm.create_model(ARCH, **kwargs)`: ARCH is the architecture its config.json beside it names, with that
    file's model_args, else the architecture the conversion named (`--preset NAME`: a suite preset with a timm name,
    or any timm name the import resolved), with every fact the converted config states (`timm_model_args`: passing
    only the facts that differ from the preset's lost the ones timm derives, e.g. global_pool='avg' turning fc_norm
    on) and ARCH's LayerNorm replaced only when the eps differs from its own. A fact timm's architecture cannot
    take (a changed qk scale, a suite resize kernel) is not passed: timm computes its own, and the comparison shows
    the difference.
    """
    import timm
    import torch
    from timm.models.vision_transformer import checkpoint_filter_fn

    from ..presets import PRESETS
    from .timm import (architecture_eps, is_naflex_state, read_checkpoint, strip_prefixes, timm_architecture,
                       timm_files, timm_model_args, timm_norm_layer)
    from .timm_resolve import resolve_timm_architecture

    size = tuple(int(s) for s in images.shape[2:])
    weights, config = timm_files(src)
    if Path(src).is_dir():
        name = f"local-dir:{Path(src).resolve()}"
        model = timm.create_model(name, pretrained=True)
        pe = getattr(model, "patch_embed", None)  # a NaFlexVit has none: it resamples its table per grid itself
        if pe is not None and tuple(pe.img_size) != size:
            model = timm.create_model(name, pretrained=True, img_size=size)
        return _torch_forward(model, images).numpy()
    state = strip_prefixes(read_checkpoint(weights))
    if is_naflex_state(state):  # timm's NaFlexVit, built with every fact the config states; any image size
        arch, kw = (config["architecture"].split(".")[0], dict(config.get("model_args") or {})) if config else \
            (timm_architecture(cfg), timm_model_args(cfg))
        kw.setdefault("num_classes", cfg.num_classes)
        model = timm.create_model(arch, pretrained=False, **{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in kw.items()})
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
        return _torch_forward(model, images).numpy()
    if config is not None:
        arch, kw = config["architecture"].split(".")[0], dict(config.get("model_args") or {})
        kw.setdefault("num_classes", config.get("num_classes", cfg.num_classes))
    else:
        arch = cfg.name
        if not timm.is_model(arch):
            raise MissingFactsError(f"{src}: the file does not name a timm architecture and the converted config's "
                                    f"name {cfg.name!r} is not one: convert with --preset NAME, a timm model name "
                                    f"(e.g. vit_base_patch16_224), to prove it against timm")
        # every fact the converted config states (timm derives some defaults from others: global_pool='avg' alone
        # turns fc_norm on), on the architecture's own modules; its LayerNorm replaced only where the eps differs
        kw = timm_model_args(cfg)
        own_eps = architecture_eps(arch) if arch in PRESETS else \
            resolve_timm_architecture(arch, {"num_classes": cfg.num_classes}, src).facts["layer_norm_eps"]
        if cfg.layer_norm_eps != own_eps:
            kw["norm_layer"] = timm_norm_layer(cfg.layer_norm_eps)
        # the file's table as the conversion read it (when kept), else at the images' size: timm's filter resamples
        rows = np.shape(state["pos_embed"])[1] if "pos_embed" in state else None
        kept = cfg.pos_embed == "learned" and rows == cfg.num_pos_prefix + cfg.table_grid[0] * cfg.table_grid[1]
        kw["img_size"] = tuple(kw["img_size"]) if kept else size
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    model = timm.create_model(arch, pretrained=False, **kw)
    if tuple(model.patch_embed.img_size) != size:  # timm resamples its table at run time, from its own grid
        model = timm.create_model(arch, pretrained=False, **{**kw, "dynamic_img_size": True})
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    if type(model).__name__ == "Beit":  # each class through its own checkpoint filter (BEiT: tables resampled)
        from timm.models.beit import checkpoint_filter_fn as beit_filter

        tensors = beit_filter(tensors, model)
    elif type(model).__name__ != "VisionTransformerRelPos":  # that one has none: its state dict loads as saved
        tensors = checkpoint_filter_fn(tensors, model, adapt_layer_scale=True)
    model.load_state_dict(tensors, strict=True)
    return _torch_forward(model, images).numpy()


#: the architecture (config.json `architectures`) -> the transformers class that runs it and its output that is the
#: canonical `logits` stage: a classifier's logits, CLIP's / SigLIP's / MetaCLIP 2's pooled or projected image
#: features. Every class the importer reads as a classifier is here (a ForImageClassification directory cannot be
#: loaded into the base model: CLIPModel would miss the text tower).
_HF_RUN = {
    **{a: (a, "logits") for a in (
        "ViTForImageClassification", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher",
        "ViTMSNForImageClassification", "IJepaForImageClassification", "CLIPForImageClassification",
        "SiglipForImageClassification", "MetaClip2ForImageClassification", "Dinov2ForImageClassification",
        "Dinov2WithRegistersForImageClassification", "BeitForImageClassification",
        "Data2VecVisionForImageClassification", "Siglip2ForImageClassification")},
    **{f"{p}VisionModel": (f"{p}VisionModel", "pooler_output") for p in ("CLIP", "Siglip", "MetaClip2", "Siglip2")},
    **{f"{p}VisionModelWithProjection": (f"{p}VisionModelWithProjection", "image_embeds")
       for p in ("CLIP", "MetaClip2")},
    **{f"{p}Model": (f"{p}Model", "image_features") for p in ("CLIP", "Siglip", "MetaClip2", "Siglip2")},
}
#: model_type -> what runs a checkpoint whose architecture is none of the above (a base model, a backbone, MAE's
#: pre-training model): the base model, and its "features" (the pooler when the file has one, else the final-norm
#: class token), "mean" (I-JEPA: the mean of the final-normed tokens), or the CLIP / SigLIP / MetaCLIP 2 default
_HF_BASE = {
    "vit": ("ViTModel", "features"), "deit": ("DeiTModel", "features"), "dinov2": ("Dinov2Model", "features"),
    "dinov2_with_registers": ("Dinov2WithRegistersModel", "features"), "vit_mae": ("ViTMAEModel", "features"),
    "vit_msn": ("ViTMSNModel", "features"), "ijepa": ("IJepaModel", "mean"),
    "clip": ("CLIPModel", "image_features"), "clip_vision_model": ("CLIPVisionModel", "pooler_output"),
    "siglip": ("SiglipModel", "image_features"), "siglip_vision_model": ("SiglipVisionModel", "pooler_output"),
    "metaclip_2": ("MetaClip2Model", "image_features"),
    "metaclip_2_vision_model": ("MetaClip2VisionModel", "pooler_output"),
    "beit": ("BeitModel", "features"), "data2vec-vision": ("Data2VecVisionModel", "features"),
    "dinov3_vit": ("DINOv3ViTModel", "features"),  # DINOv3ViTBackbone's directory too: the same weights
    "siglip2": ("Siglip2Model", "image_features"), "siglip2_vision_model": ("Siglip2VisionModel", "pooler_output"),
    "aimv2_vision_model": ("Aimv2VisionModel", "mean"),
}


def siglip2_inputs(images: np.ndarray, patch_size: int) -> dict:
    """What a transformers SigLIP 2 model takes for whole images (B, C, H, W): pixel_values, the flattened patches
    as transformers' own image processor makes them (`convert_image_to_patches`: (ph, pw, C) per patch, row-major),
    pixel_attention_mask (every patch valid: ones (B, N)) and spatial_shapes ((H / P, W / P) per image)."""
    import torch
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    patches = torch.stack([convert_image_to_patches(im, patch_size) for im in x])
    gh, gw = images.shape[2] // patch_size, images.shape[3] // patch_size
    return {"pixel_values": patches, "pixel_attention_mask": torch.ones(x.shape[0], gh * gw, dtype=torch.int32),
            "spatial_shapes": torch.tensor([[gh, gw]] * x.shape[0], dtype=torch.long)}


def hf_runner(model_type: str, architectures) -> tuple[str, str]:
    """(transformers class name, output) that runs a directory of `model_type` saved as `architectures`."""
    for arch in architectures or []:
        if arch in _HF_RUN:
            return _HF_RUN[arch]
    if model_type not in _HF_BASE:
        raise MissingFactsError(f"model_type {model_type!r}: no transformers class to prove it against "
                                f"(known: {', '.join(_HF_BASE)})")
    return _HF_BASE[model_type]


def hf_output(src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """transformers' own model from the directory (config.json + weights), offline, picked by the directory's
    model_type and architectures (hf_runner): a classifier's logits (DeiT with teacher: the mean of its two heads);
    a base model's pooler output when the file has a pooler, else its final-norm class token (DINOv3ViTModel for a
    DINOv3ViTBackbone directory too; ViTMAEModel with
    mask_ratio 0 and noise = arange, so every patch is kept in order); IJepaModel: the mean of its final-normed
    tokens; CLIPVisionModel / SiglipVisionModel / MetaClip2VisionModel / Siglip2VisionModel: pooler_output (SigLIP 2
    takes the images as flattened patches with pixel_attention_mask and spatial_shapes: siglip2_inputs);
    CLIPVisionModelWithProjection / MetaClip2VisionModelWithProjection: image_embeds; CLIPModel / SiglipModel /
    MetaClip2Model: get_image_features. The
    position table is interpolated by the model's own interpolate_pos_encoding when the images are not at the
    directory's image_size."""
    import inspect

    import torch
    import transformers

    path = Path(src)
    directory = path if path.is_dir() else path.parent
    hf_cfg = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    cls_name, output = hf_runner(hf_cfg.model_type, hf_cfg.architectures)
    cls = getattr(transformers, cls_name)
    kwargs = {"mask_ratio": 0.0} if hf_cfg.model_type == "vit_mae" else {}
    model, info = cls.from_pretrained(directory, local_files_only=True, output_loading_info=True, **kwargs)
    absent = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if absent:
        raise MismatchError(src, [f"transformers' {cls_name} did not find {k!r} in the directory" for k in absent])
    has_pooler = getattr(model, "pooler", None) is not None and not any(
        k.startswith("pooler.") for k in info.get("missing_keys", ()))
    model = model.eval().float()
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    vision = getattr(hf_cfg, "vision_config", None) or hf_cfg
    if hf_cfg.model_type in ("siglip2", "siglip2_vision_model"):  # patches + pixel_attention_mask + spatial_shapes
        fn = model.get_image_features if output == "image_features" else model.forward
        with torch.no_grad():
            out = fn(**siglip2_inputs(images, vision.patch_size))
        return getattr(out, "pooler_output" if output == "image_features" else output).numpy()
    size = vision.image_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    fn = model.get_image_features if output == "image_features" else model.forward
    kw = {}
    if tuple(images.shape[2:]) != size and "interpolate_pos_encoding" in inspect.signature(fn).parameters:
        kw["interpolate_pos_encoding"] = True  # (DINOv2 interpolates whenever the size differs: no such argument)
    if hf_cfg.model_type == "vit_mae":  # keep every patch, in order
        n = (images.shape[2] // hf_cfg.patch_size) * (images.shape[3] // hf_cfg.patch_size)
        kw["noise"] = torch.arange(n, dtype=torch.float32).expand(images.shape[0], n)
    with torch.no_grad():
        out = fn(pixel_values=x, **kw)
    if output == "image_features":  # transformers >= 5 returns the projected features as pooler_output
        out = getattr(out, "pooler_output", out)
    elif output == "features":
        out = out.pooler_output if has_pooler else out.last_hidden_state[:, 0]
    elif output == "mean":
        out = out.last_hidden_state.mean(dim=1)
    else:
        out = getattr(out, output)
    return out.numpy()


def kerashub_output(src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """keras-hub's own model: `from_preset` for a preset directory, Keras' loader in safe mode for a `.keras`
    archive (its config scanned first: no Lambda, no unknown class), or keras-hub's model of the converted
    architecture + `load_weights` for a `.weights.h5`. Logits, or the backbone's final-norm class token (the mean
    of its tokens without one) when there is no classifier. Images go in NHWC."""
    import keras
    import keras_hub

    from .kerashub import build_kerashub, scan_config
    from ..safeio import load_json, read_zip_member

    path = Path(src)
    if path.is_dir():
        cls = keras_hub.models.ViTImageClassifier if (path / "task.json").is_file() else keras_hub.models.ViTBackbone
        model = cls.from_preset(str(path))
    elif zipfile.is_zipfile(path):
        scan_config(load_json(read_zip_member(path, "config.json", ".keras file"), f"{path}: config.json"), src)
        model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    else:
        model = build_kerashub(cfg)
        model.load_weights(str(path))
    out = np.asarray(model.predict(np.ascontiguousarray(images.transpose(0, 2, 3, 1), np.float32), verbose=0))
    if isinstance(model, keras_hub.models.ViTBackbone):
        return out[:, 0] if model.use_class_token else out.mean(axis=1)
    return out


def mindcv_output(src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """mindcv's own VisionTransformer (pretrained=False): `mindcv.create_model(NAME)` when the conversion named a
    mindcv model (--preset vit_b_16_224), else its VisionTransformer of the converted sizes (numerics mindcv's
    own); the checkpoint loaded by MindSpore's own loader, strictly (no missing, no unexpected parameter)."""
    import mindcv
    import mindspore as ms
    from mindcv.models.vit import VisionTransformer

    from .mindcv import MINDCV_MODELS, mindcv_model_kwargs

    kw = mindcv_model_kwargs(cfg)
    if cfg.name in MINDCV_MODELS:
        model = mindcv.create_model(cfg.name, pretrained=False, num_classes=cfg.num_classes,
                                    in_channels=cfg.in_chans, global_pool=kw["global_pool"],
                                    class_token=kw["class_token"])
    else:
        model = VisionTransformer(**kw)
    path = Path(src)
    from ..fileio import work_dir

    with work_dir("mindcv") as tmp:
        link = path
        if path.suffix != ".ckpt":
            link = Path(tmp) / "model.ckpt"
            link.symlink_to(path.resolve())
        params = ms.load_checkpoint(str(link))
    not_loaded, unused = ms.load_param_into_net(model, params, strict_load=True)
    if not_loaded or unused:
        raise MissingFactsError(f"{src}: mindcv's model does not take this checkpoint: parameters not loaded "
                                f"{list(not_loaded)[:5]}, unused {list(unused)[:5]}")
    model.set_train(False)
    return model(ms.Tensor(np.ascontiguousarray(images, np.float32))).asnumpy()


def torchvision_output(src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """torchvision's own VisionTransformer, loaded strictly from the file (heads: torchvision's builder table, or
    the preset the conversion named)."""
    from .torchvision import torchvision_source_output

    return torchvision_source_output(src, images, preset=cfg)


def bigvision_output(src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """timm's own `_load_weights` reading the .npz (its shape read from the file's arrays)."""
    from .bigvision import bigvision_source_output

    return bigvision_source_output(src, images, image_size=tuple(images.shape[2:]))


RUNNERS: dict[str, Callable[[str, np.ndarray, ViTConfig], np.ndarray]] = {
    "timm": timm_output, "torch": timm_output, "hf": hf_output, "torchvision": torchvision_output,
    "bigvision": bigvision_output, "kerashub": kerashub_output, "mindcv": mindcv_output}


def source_output(fmt: str, src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """The source library's own final output on `images` (NCHW float32), as a float32 array."""
    return np.asarray(RUNNERS[fmt](src, images, cfg), np.float32)


def one_line(text: str, limit: int = 300) -> str:
    """A message on one line (whitespace runs collapsed), cut at `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def run_source(fmt: str, src: str, images: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """`source_output`, with every failure of the source library turned into a one-line SourceError (exit
    EXIT_UNPROVEN: not proven, never a numeric failure). A usage error (the conversion named no model the library can
    build, e.g. a timm state dict under a suite preset) stays what it is: the caller reports "not verified"."""
    try:
        return source_output(fmt, src, images, cfg)
    except SuiteError as e:
        if e.exit_code == EXIT_USAGE:
            raise
        raise SourceError(f"{source_library(fmt)} could not run {src}: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - whatever the library raises, the proof is not made; say why in one line
        raise SourceError(f"{source_library(fmt)} could not run {src}: {type(e).__name__}: {one_line(e)}") from None

