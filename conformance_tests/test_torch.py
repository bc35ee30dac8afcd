"""What only the PyTorch backend (vit_torch) has: attention maps, torch's own training mode, state_dict layout,
.pt/.pth/.safetensors files and pickle safety. Its conformance in every preset, dtype and attention path is the
backend matrix (test_conformance.py: `torch`, `torch-explicit`).

Every numerical comparison uses the policy's bounds (tolerances.fp32_bound / judge); none are invented here.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import torch  # noqa: E402

from shared import reference, testing as helpers, tolerances  # noqa: E402
from shared.backend import get_backend  # noqa: E402
from shared.errors import InvalidFileError, MismatchError  # noqa: E402
from shared.init import random_images  # noqa: E402
from shared.presets import get_preset  # noqa: E402
from shared.weights import expected_shapes  # noqa: E402
from vit_torch.backend import TorchBackend  # noqa: E402
from vit_torch.model import VisionTransformer, build_model  # noqa: E402

BE = TorchBackend()
ATTN = ["fused", "explicit"]
FAST = helpers.TINY_PRESETS + helpers.SEED_FAST


# ------------------------------------------------------------------ attention
@pytest.mark.parametrize("preset", FAST)
def test_attention_maps_equal_reference(preset):
    cfg, state, x = helpers.case(preset)
    ref = reference.forward(cfg, state, x, return_attn=True)
    model = build_model(cfg, state, fused_attn=True)  # return_attn forces the explicit path
    with torch.inference_mode():
        out = model.forward_stages(torch.from_numpy(x), return_attn=True)
    for i in range(cfg.depth):
        a = out[f"attn_{i}"].float().numpy()
        assert a.shape == ref[f"attn_{i}"].shape == (x.shape[0], cfg.num_heads, cfg.num_tokens, cfg.num_tokens)
        err, bound = tolerances.rel_l2(a, ref[f"attn_{i}"]), tolerances.fp32_bound(cfg, f"block_{i}")
        assert err <= bound, f"attn_{i}: rel_l2 {err:.3e} > {bound:.3e}"
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)


# --------------------------------------------------------------- training mode
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("option", ["dropout", "attn_dropout", "drop_path"])
def test_training_randomness_only_in_train_mode(option, attn):
    cfg = get_preset("tiny").replace(**{option: 0.3}, depth=3)
    model = build_model(cfg, fused_attn=(attn == "fused"))
    x = torch.from_numpy(random_images(cfg, batch=4))
    with torch.no_grad():
        e1, e2 = model(x), model(x)
        torch.manual_seed(0)
        model.train()
        t1, t2 = model(x), model(x)
    assert torch.equal(e1, e2)
    assert not torch.allclose(t1, e1) and not torch.allclose(t1, t2)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), e1)


# ------------------------------------------------------------ weights and files
@pytest.mark.parametrize("preset", FAST)
def test_state_dict_is_canonical_and_export_bit_exact(preset):
    cfg, state, _ = helpers.case(preset)
    model = BE.build(cfg, state)
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(cfg)  # no buffers, no extras
    exported = BE.export(model)
    assert set(exported) == set(state)
    for k in state:
        assert exported[k].dtype == np.float32 and np.array_equal(exported[k], state[k]), k
    again = BE.export(BE.build(cfg, exported))
    assert all(np.array_equal(again[k], state[k]) for k in state)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
@pytest.mark.parametrize("preset", ["tiny", "tiny_t2t", "tiny_pretrain", *helpers.FAMILY_TINY])
def test_native_round_trip_bit_exact(preset, suffix, tmp_path):
    cfg, state, x = helpers.case(preset)
    model = BE.build(cfg, state)
    path = BE.save_native(model, tmp_path / f"w{suffix}")
    assert sorted(os.listdir(tmp_path)) == [f"w{suffix}"]  # atomic: no temporary left behind
    loaded = BE.load_native(path, cfg if suffix != ".safetensors" else None)
    assert loaded.config == cfg
    back = BE.export(loaded)
    assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)
    a, b = BE.forward(model, x), BE.forward(loaded, x)
    assert all(np.array_equal(a[s], b[s]) for s in cfg.stage_names())


def test_low_precision_native_round_trip(tmp_path):
    cfg, state, _ = helpers.case("tiny")
    model = BE.build(cfg, state, dtype="bfloat16")
    loaded = BE.load_native(BE.save_native(model, tmp_path / "w.safetensors"), dtype="bfloat16")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and v.dtype == v2.dtype == torch.bfloat16 and torch.equal(v, v2)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("kind", ["missing", "extra", "shape", "dtype"])
def test_bad_native_file_rejected(kind, suffix, tmp_path):
    cfg, state, _ = helpers.case("tiny")
    bad, key = {
        "missing": ({k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}, "blocks.1.mlp.fc2.bias"),
        "extra": (dict(state, **{"blocks.0.attn.bogus": np.zeros(3, np.float32)}), "blocks.0.attn.bogus"),
        "shape": (dict(state, **{"blocks.0.attn.qkv.weight": state["blocks.0.attn.qkv.weight"][:-1]}),
                  "blocks.0.attn.qkv.weight"),
        "dtype": (dict(state, **{"head.bias": state["head.bias"].astype(np.float64)}), "head.bias"),
    }[kind]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bad.items()}
    path = tmp_path / f"bad{suffix}"
    if suffix == ".pt":
        torch.save(tensors, path)
    else:
        from safetensors.torch import save_file
        save_file(tensors, str(path), metadata={"vit_config": cfg.to_json()})
    with pytest.raises(MismatchError) as ei:
        BE.load_native(path, cfg)
    msg = str(ei.value)
    assert key in msg and str(path) in msg
    if kind == "dtype":
        assert "float64" in msg and "float32" in msg


class _Evil:
    """Unpickling this runs a shell command: the loader must refuse it without running it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_with_code_refused(writer, tmp_path):
    cfg, state, _ = helpers.case("tiny")
    marker = tmp_path / "pwned.txt"
    payload = {k: torch.from_numpy(v) for k, v in state.items()}
    payload["head.bias"] = _Evil(marker)
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(InvalidFileError) as ei:
        BE.load_native(path, cfg)
    assert str(path) in str(ei.value) and "refused" in str(ei.value)
    assert not marker.exists(), "the pickle's code ran"


def test_garbage_files_refused(tmp_path):
    cfg = get_preset("tiny")
    for name, data in [("junk.pt", b"not a zip or pickle"), ("junk.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}")]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(InvalidFileError, match=name):
            BE.load_native(p, cfg)
    with pytest.raises(InvalidFileError, match="suffix"):
        BE.save_native(BE.build(cfg), tmp_path / "w.bin")
    assert not (tmp_path / "w.bin").exists()


def test_backend_registry_and_model_api():
    be = get_backend("torch")
    assert isinstance(be, TorchBackend) and be.dtypes == ("float32", "bfloat16", "float16")
    cfg, state, x = helpers.case("tiny_pretrain")
    model = be.build(cfg, state)
    assert isinstance(model, VisionTransformer) and model.config == cfg and not model.training
    xt = torch.from_numpy(x)
    with torch.no_grad():
        stages = model.forward_stages(xt)
        assert torch.equal(model(xt), stages["logits"])
        assert torch.equal(model.forward_features(xt), stages["norm"])
        assert torch.equal(model.forward_head(stages["norm"], pre_logits=True), stages["pre_logits"])
    zeros = build_model(get_preset("tiny_t2t"))
    assert "cls_token" not in zeros.state_dict() and "pos_embed" not in zeros.state_dict()
    explicit = get_backend("torch-explicit").build(cfg, state)
    assert not explicit.blocks[0].attn.fused_attn and model.blocks[0].attn.fused_attn


def test_bench_fast_mode_packs_the_model_it_built_in_place():
    """bench's fast mode converts the model it built (one copy of the weights at its peak, where a deep copy held
    the eager model and the packed one: 1.3x timm's peak RSS on B/16), and stays within the float32 bound."""
    from vit_torch.bench import PackedLinear, fast_conformance, prepare

    built = []

    class Recording(TorchBackend):
        def build(self, *args, **kwargs):
            built.append(super().build(*args, **kwargs))
            return built[-1]

    fn, _ = prepare(get_preset("tiny"), "float32", "fast", backend=Recording())
    assert fn is built[0], "fast mode ran on a copy of the model it built"
    assert not any(isinstance(m, torch.nn.Linear) for m in fn.blocks.modules())
    assert sum(isinstance(m, PackedLinear) for m in fn.blocks.modules()) == 4 * fn.config.depth
    assert fast_conformance("tiny").startswith("pass"), fast_conformance("tiny")
