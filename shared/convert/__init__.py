"""Every peer format as pure dict-to-dict functions, format detection from bytes, and read/write of any format.

Everything here works on plain dicts of NumPy arrays; no deep-learning framework is imported (torch only to
read a .pt/.pth/.bin file when it happens to be installed; the torch backend's `.pt` is written through its
`Backend`, the Keras and MindSpore backends' `.keras`, `.weights.h5` and `.ckpt` as data by shared.keras_file and
shared.ms_ckpt):

  import_timm(state, preset=..., timm_config=..., image_size=...) -> (ViTConfig, canonical state)
  export_timm(cfg, state) -> timm state dict;  timm_model_kwargs(cfg) -> timm.create_model kwargs
  load_timm_file(path, preset=None, image_size=None) -> (ViTConfig, canonical state)
  import_hf(state, hf_config) -> (ViTConfig, canonical state)
  export_hf(cfg, state, layout="file"|"module") -> (hf state, config.json dict)
  save_hf_dir(dir, cfg, state);  load_hf_dir(dir) -> (ViTConfig, canonical state)
  import_torchvision(state, preset=None, image_size=None) -> (ViTConfig, canonical state)  (heads: builder table or preset)
  export_torchvision(cfg, state) -> torchvision state dict;  torchvision_source_output(path, images) -> torchvision's logits
  import_bigvision(arrays, preset=None, image_size=None) -> (ViTConfig, canonical state)  (original-ViT .npz, as timm reads it)
  bigvision_source_output(path, images, image_size=None) -> logits of timm's _load_weights on the file
  formats.detect_format(path) -> one of formats.FORMATS, from the file's content
  io.read_any(path, ...) / io.write_any(path, fmt, cfg, state): any format <-> (config, canonical state)

A conversion never guesses: facts a file cannot tell (heads, eps, GELU form, resize kernel,
pooling) come from a named preset or a config file, or the conversion stops and says which.
Anything the canonical format (or the target) cannot represent is refused by name.
"""
from __future__ import annotations

import importlib

#: each public name -> the module of this package that defines it: imported on first use (PEP 562), so a command
#: that needs one format (`convert` to `.ckpt`) does not import every format's module
_HOME = {
    **dict.fromkeys(("import_timm", "export_timm", "timm_model_kwargs", "load_timm_file"), "timm"),
    **dict.fromkeys(("import_hf", "export_hf", "save_hf_dir", "load_hf_dir"), "hf"),
    **dict.fromkeys(("import_torchvision", "export_torchvision", "load_torchvision_file", "save_torchvision_file",
                     "torchvision_source_output"), "torchvision"),
    **dict.fromkeys(("import_bigvision", "load_bigvision_file", "bigvision_source_output"), "bigvision"),
}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
