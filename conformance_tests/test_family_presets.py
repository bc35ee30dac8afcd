"""The family presets carry timm's names: each must be exactly timm's architecture of that name.

timm builds every model on the meta device (no weights, no download); its state-dict keys and shapes, and the
numerics its modules hold (LayerNorm eps, GELU form, pooling, prefix tokens, position rows, pre-norm, patch bias,
LayerScale), are compared with the preset's.
"""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import QuickGELU as TimmQuickGELU  # noqa: N811

from shared.presets import FAMILY_PRESETS, get_preset
from shared.weights import expected_shapes


def _gelu_form(act) -> str:
    if isinstance(act, TimmQuickGELU):
        return "quick"
    approx = getattr(act, "approximate", None)
    assert approx in ("none", "tanh"), f"unexpected activation {act!r}"
    return {"none": "erf", "tanh": "tanh"}[approx]


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_family_preset_is_timms_architecture(name):
    cfg = get_preset(name)
    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected_shapes(cfg)
    blk = m.blocks[0]
    assert tuple(m.patch_embed.img_size) == cfg.image_size
    assert _gelu_form(blk.mlp.act) == cfg.gelu
    assert blk.norm1.eps == cfg.layer_norm_eps and m.norm.eps == cfg.layer_norm_eps
    assert m.num_prefix_tokens == cfg.num_prefix_tokens
    assert m.no_embed_class == (cfg.num_pos_prefix == 0 and cfg.num_prefix_tokens > 0)
    assert {"token": "token", "avg": "mean", "map": "map"}[m.global_pool] == cfg.pool
    assert (type(m.norm_pre).__name__ != "Identity") == cfg.norm_pre
    if cfg.init_values is not None:
        assert blk.ls1.init_values == blk.ls2.init_values == cfg.init_values
    assert blk.attn.scale == pytest.approx(cfg.scale)
