"""PyTorch backend of the vit-suite: `VisionTransformer`, `build_model`, and `TorchBackend` (vit_torch.backend)."""
from .layers import Attention, Block, Mlp, PatchEmbed
from .model import VisionTransformer, build_model

__all__ = ["PatchEmbed", "Attention", "Mlp", "Block", "VisionTransformer", "build_model"]
