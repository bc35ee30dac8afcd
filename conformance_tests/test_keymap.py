"""The key-map engine (shared.convert.keymap): every source key read once, missing / leftover keys and wrong shapes
named together, each transform exact both ways; and a new layout is one map entry (BEiT's q/v biases in timm's map).
NumPy only, tiny configs: well under a second."""
from __future__ import annotations

import numpy as np
import pytest

from shared.config import ViTConfig
from shared.convert import timm as T
from shared.convert.common import family_refusals
from shared.convert.keymap import FUSE, Chain, Each, Entry, Fold, Reshape, Rows, Transpose, put, take
from shared.errors import ConversionError, MismatchError
from shared.init import init_weights
from shared.presets import get_preset

RNG = np.random.default_rng(0)


def _r(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


#: BEiT / EVA attention: q and v biases, no k bias; canonical: one qkv bias with a zero k part. One entry.
BEIT_QV_BIAS = Entry(("blocks.{i}.attn.q_bias", "blocks.{i}.attn.v_bias"), "blocks.{i}.attn.qkv.bias", Fold((0, None, 1)))


def test_beit_qv_bias_is_one_entry_in_the_timm_map():
    cfg = get_preset("tiny")
    assert cfg.qkv_bias
    D = cfg.embed_dim
    st = init_weights(cfg)
    q = {i: _r(D) for i in range(cfg.depth)}
    v = {i: _r(D) for i in range(cfg.depth)}
    for i in range(cfg.depth):  # a timm BEiT-style file: q_bias / v_bias instead of attn.qkv.bias
        del st[f"blocks.{i}.attn.qkv.bias"]
        st[f"blocks.{i}.attn.q_bias"], st[f"blocks.{i}.attn.v_bias"] = q[i], v[i]
    m = T.key_map(cfg, extra=[BEIT_QV_BIAS])
    # the one template stands for one entry per block, in place of that block's identity entry for qkv.bias
    assert len(m) == len(T.key_map(cfg)) and sum(e.src[0].endswith("q_bias") for e in m) == cfg.depth
    got = take(m, st, "beit.safetensors")
    for i in range(cfg.depth):
        want = np.concatenate([q[i], np.zeros(D, np.float32), v[i]])  # concat(q, 0, v), computed here
        np.testing.assert_array_equal(got[f"blocks.{i}.attn.qkv.bias"], want)
    for k in got:
        if not k.endswith("attn.qkv.bias"):
            np.testing.assert_array_equal(got[k], st[k])
    back = put(m, got)  # and back, bit-exact
    assert set(back) == set(st) and all(np.array_equal(back[k], st[k]) for k in st)
    # the timm importer reads them through the same entry: k_bias=False, the k part of qkv.bias zero
    cfg2, got2 = T.import_timm(st, preset="tiny")
    assert cfg2.k_bias is False and cfg2.qkv_bias
    for i in range(cfg.depth):
        np.testing.assert_array_equal(got2[f"blocks.{i}.attn.qkv.bias"], got[f"blocks.{i}.attn.qkv.bias"])


def test_take_names_every_missing_leftover_and_misshapen_key_at_once():
    m = [Entry("a.w", "x.weight"), Entry(("q", "k", "v"), "qkv", FUSE), Entry("t", "pos", Reshape((1, 2, 3), (2, 3)))]
    src = {"a.w": _r(4, 2), "q": _r(2, 3), "k": _r(2, 3), "t": _r(3, 3), "extra": _r(1)}
    with pytest.raises(MismatchError) as e:
        take(m, src, "model.bin", expected={"x.weight": (4, 3)})
    msg = str(e.value)
    assert "model.bin" in msg and "missing key 'v'" in msg and "unexpected key 'extra' (shape (1,))" in msg
    assert "key 't': shape (3, 3) cannot hold 'pos' of shape (1, 2, 3) (expected (2, 3))" in msg
    assert "key 'a.w': expected shape (4, 3), got (4, 2)" in msg
    with pytest.raises(ValueError, match="twice"):  # a map reads each source key once
        take([Entry("a", "x"), Entry("a", "y")], {"a": _r(1)}, "f")


@pytest.mark.parametrize("entry, src", [
    (Entry(("q", "k", "v"), "qkv", FUSE), {"q": _r(2, 3), "k": _r(2, 3), "v": _r(2, 3)}),
    (Entry("in", ("q", "kv"), Rows((2, 4))), {"in": _r(6, 3)}),
    (Entry("cls", "cls_token", Reshape((1, 1, 3), (3,))), {"cls": _r(3)}),
    (Entry("kernel", "w", Transpose((1, 0))), {"kernel": _r(3, 5)}),
    (Entry(("q", "v"), "b", Fold((0, None, 1))), {"q": _r(4), "v": _r(4)}),
    (Entry(("a", "b"), "ab", Each(Chain((Reshape((4,), (2, 2)), Transpose((0,)))))), {"a": _r(2, 2), "b": _r(2, 2)}),
])
def test_every_transform_round_trips_bit_exactly(entry, src):
    canon = take([entry], src, "f")
    back = put([entry], canon)
    assert set(back) == set(src) and all(np.array_equal(back[k], src[k]) for k in src)


def test_family_refusals_derive_from_the_config():
    cfg = get_preset("tiny").replace(init_values=1e-5, qk_norm=True)
    assert family_refusals(cfg, "X", supports=["qk-norm"]) == [
        "LayerScale (init_values: ls1/ls2.gamma): X has no such option"]
    assert family_refusals(cfg, "X", say={"LayerScale": lambda c: f"init_values={c.init_values}"},
                           supports=["qk-norm"]) == ["init_values=1e-05"]
    assert isinstance(cfg, ViTConfig)


def test_every_format_has_a_row_in_the_io_table():
    from shared.convert.formats import FORMATS
    from shared.convert.io import TABLE

    assert set(TABLE) == set(FORMATS) and all(row.read for row in TABLE.values())
    cfg = get_preset("tiny").replace(init_values=1e-5)  # LayerScale: timm and HF dinov2 hold it, torchvision does not
    assert TABLE["timm"].export_problems(cfg) == [] and TABLE["hf"].export_problems(cfg) != []
    assert TABLE["torchvision"].export_problems(cfg)[0].startswith("LayerScale (init_values")
