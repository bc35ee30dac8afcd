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

from shared.errors import ConversionError
from shared.init import init_weights
from shared.presets import FAMILY_PRESETS, get_preset
from shared.testing import FAMILY_TINY, HEAD_TINY
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
    assert getattr(blk, "num_parallel", 1) == cfg.num_parallel  # ParallelThingsBlock: its branch 0 read below
    n1, attn, mlp, ls1, ls2 = ((blk.attns[0].norm, blk.attns[0].attn, blk.ffns[0].mlp, blk.attns[0].ls,
                                blk.ffns[0].ls) if cfg.num_parallel > 1 else (blk.norm1, blk.attn, blk.mlp,
                                                                              getattr(blk, "ls1", None),
                                                                              getattr(blk, "ls2", None)))
    assert tuple(m.patch_embed.img_size) == cfg.image_size
    if cfg.swiglu:  # timm SwiGLUPacked: a GluMlp with SiLU, the gate in fc1's first half
        assert type(mlp).__name__ == "GluMlp" and isinstance(mlp.act, torch.nn.SiLU)
        assert mlp.gate_last is False
    else:
        assert type(mlp).__name__ == "Mlp"
        assert _gelu_form(mlp.act) == cfg.gelu
    final = m.fc_norm if cfg.fc_norm else m.norm
    assert n1.eps == cfg.layer_norm_eps and final.eps == cfg.layer_norm_eps
    assert (type(m.norm).__name__ != "Identity", type(m.fc_norm).__name__ != "Identity") == (cfg.final_norm,
                                                                                            cfg.fc_norm)
    # the block class: its keys are the same either way (res-post-norm ResPostBlock, or the pre-norm Block)
    want = {"ParallelThingsBlock"} if cfg.num_parallel > 1 else {"post": {"ResPostBlock"}, "pre": {"Block"}}[cfg.block_norm]
    assert {type(b).__name__ for b in m.blocks} == want
    assert (type(attn.norm).__name__ != "Identity", type(getattr(mlp, "norm", torch.nn.Identity())).__name__ != "Identity") == \
        (cfg.attn_inner_norm, cfg.mlp_inner_norm)
    assert m.num_prefix_tokens == cfg.num_prefix_tokens
    assert m.no_embed_class == (cfg.num_pos_prefix == 0 and cfg.num_prefix_tokens > 0)
    assert {"token": "token", "avg": "mean", "map": "map"}[m.global_pool] == cfg.pool
    assert (type(m.norm_pre).__name__ != "Identity") == cfg.norm_pre
    if cfg.init_values is not None:
        assert ls1.init_values == ls2.init_values == cfg.init_values
    assert attn.scale == pytest.approx(cfg.scale)


@pytest.mark.parametrize("fmt", ["torchvision", "kerashub", "mindcv"])
@pytest.mark.parametrize("preset", FAMILY_TINY)
def test_formats_without_the_family_options_refuse_them_by_name(fmt, preset):
    """torchvision, keras-hub and mindcv ViTs have none of the family options: exporting a model that uses one is
    refused, naming it, rather than written without its LayerScale, tokens or pool."""
    from shared.convert.kerashub import export_kerashub
    from shared.convert.mindcv import export_mindcv
    from shared.convert.torchvision import export_torchvision

    cfg = get_preset(preset)
    export = {"torchvision": export_torchvision, "kerashub": export_kerashub, "mindcv": export_mindcv}[fmt]
    with pytest.raises(ConversionError) as e:
        export(cfg, init_weights(cfg))
    assert all(option in str(e.value) for option in cfg.family_options()), str(e.value)


@pytest.mark.parametrize("preset", HEAD_TINY)
def test_formats_without_the_concat_head_refuse_it_by_name(preset):
    """pool='token_mean' (DINOv2's linear head, HF's Dinov2[WithRegisters]ForImageClassification) exists in no other
    format: timm, torchvision, keras-hub and mindcv exports refuse it, naming it, rather than write a head that would
    read the class token (or the mean) alone."""
    from shared.convert.kerashub import export_kerashub
    from shared.convert.mindcv import export_mindcv
    from shared.convert.timm import export_timm
    from shared.convert.torchvision import export_torchvision

    cfg = get_preset(preset)
    assert cfg.pool == "token_mean"
    for export in (export_timm, export_torchvision, export_kerashub, export_mindcv):
        with pytest.raises(ConversionError, match="pool='token_mean'") as e:
            export(cfg, init_weights(cfg))
        assert "concat(class token" in str(e.value), (export.__name__, str(e.value))
    # as a timm import's preset, its pooling is named where the file contradicts it (it was a KeyError)
    from shared.convert.timm import import_timm
    from shared.errors import ConversionWarning

    gap = cfg.replace(class_token="none", pool="mean", pos_prefix_tokens=0)
    with pytest.warns(ConversionWarning, match="pool: preset 'token_mean', file 'avg'"):
        got, _ = import_timm(init_weights(gap), preset=cfg)
    assert got.pool == "mean"
