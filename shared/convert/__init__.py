"""Framework-free importers/exporters between the canonical format and timm / Hugging Face ViT checkpoints.

Everything here works on plain dicts of NumPy arrays; no deep-learning framework is imported
(torch only to read a .pt/.pth/.bin file when it happens to be installed).

  import_timm(state, preset=..., timm_config=..., image_size=...) -> (ViTConfig, canonical state)
  export_timm(cfg, state) -> timm state dict;  timm_model_kwargs(cfg) -> timm.create_model kwargs
  load_timm_file(path, preset=None, image_size=None) -> (ViTConfig, canonical state)
  import_hf(state, hf_config) -> (ViTConfig, canonical state)
  export_hf(cfg, state, layout="file"|"module") -> (hf state, config.json dict)
  save_hf_dir(dir, cfg, state);  load_hf_dir(dir) -> (ViTConfig, canonical state)

A conversion never guesses: facts a file cannot tell (heads, eps, GELU form, resize kernel,
pooling) come from a named preset or a config file, or the conversion stops and says which.
Anything the canonical format (or the target) cannot represent is refused by name.
"""
from __future__ import annotations

from ..weights import EXIT_MISMATCH, EXIT_USAGE, WeightsError


class ConversionError(WeightsError, ValueError):
    """The checkpoint (or config) uses something the target format cannot represent."""

    exit_code = EXIT_MISMATCH


class MissingFactsError(ConversionError):
    """The file does not determine the model and nothing was given to fill the gap (use --preset NAME)."""

    exit_code = EXIT_USAGE


class ConversionWarning(UserWarning):
    """A conversion dropped or overrode something; the message says what and why."""


from .timm import export_timm, import_timm, load_timm_file, timm_model_kwargs  # noqa: E402
from .hf import export_hf, import_hf, load_hf_dir, save_hf_dir  # noqa: E402

__all__ = [
    "ConversionError", "MissingFactsError", "ConversionWarning",
    "import_timm", "export_timm", "timm_model_kwargs", "load_timm_file",
    "import_hf", "export_hf", "save_hf_dir", "load_hf_dir",
]
