"""BEiT3 (timm's `beit3_*`: a VisionTransformer with scale_attn_norm / scale_mlp_norm, the sub-LNs) against timm.

Oracles: timm's own beit3 model, tiny and random (every parameter perturbed: timm zero-initialises biases), whose
float32 output the float64 reference of the imported file meets at least 10x under the float32 bound
(shared/tolerances.py); the export back loads strictly into timm's beit3 and reproduces its output bitwise; the
primary backends run the tiny BEiT3 preset within the float32 bound of the reference, with gradients within the
gradient bound of the float64 oracle (shared/training/grad.py). The `beit3_*` presets are timm's architectures key by
key (test_family_presets.py, meta device). Gated attention, a different thing, stays refused by name.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models._hub import save_for_hf

from shared import reference
from shared import weights as W
from shared.cli import main
from shared.convert.timm import timm_architecture, timm_model_kwargs
from shared.errors import EXIT_OK, ConversionError
from shared.init import init_weights, random_images
from shared.presets import get_preset
from shared.tolerances import fp32_bound, rel_l2
from shared.training import grad as G

ARCH = "beit3_base_patch16_224"
SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5, img_size=(32, 48))


@pytest.fixture(scope="module")
def beit3(tmp_path_factory):
    """timm's beit3 (tiny, every parameter perturbed) saved as timm's hub directory, its output on 2 images."""
    torch.manual_seed(0)
    m = timm.create_model(ARCH, pretrained=False, **SMALL).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 48)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    hub = tmp_path_factory.mktemp("beit3") / "hub"
    save_for_hf(m, str(hub), safe_serialization=True)
    return dict(model=m, x=x, want=want, hub=hub)


def test_timm_beit3_imports_verifies_and_exports_back(beit3, tmp_path):
    """timm's hub directory converts with no flag (config.json names the architecture; the keys show the sub-LNs);
    the float64 reference of the result meets timm's output 10x under the float32 bound; `--to timm` writes a hub
    directory timm loads strictly (same architecture, every tensor bitwise, the same output), and
    timm_architecture + timm_model_kwargs build timm's VisionTransformer that loads the state dict."""
    dst = tmp_path / "c.safetensors"
    assert main(["convert", str(beit3["hub"]), str(dst)]) == EXIT_OK
    cfg, state = W.load(dst)
    assert (cfg.attn_inner_norm, cfg.mlp_inner_norm, cfg.pool, cfg.fc_norm, cfg.layer_norm_eps) == \
        (True, True, "mean", True, 1e-5)
    err, bound = rel_l2(beit3["want"], reference.forward(cfg, state, beit3["x"])["logits"]), fp32_bound(cfg, "logits")
    print(f"beit3 timm vs float64 reference: rel L2 {err:.2e} (bound {bound:.1e})")
    assert err < bound / 10, (err, bound)
    back = tmp_path / "back"
    assert main(["convert", str(dst), str(back), "--to", "timm"]) == EXIT_OK
    assert json.loads((back / "config.json").read_text())["architecture"] == ARCH
    hub = timm.create_model(f"local-dir:{back}", pretrained=True).eval()
    original = beit3["model"].state_dict()
    assert sorted(hub.state_dict()) == sorted(original)
    assert all(torch.equal(hub.state_dict()[k], original[k]) for k in original)
    with torch.no_grad():
        np.testing.assert_array_equal(hub(torch.from_numpy(beit3["x"])).numpy(), beit3["want"])
    built = timm.create_model(timm_architecture(cfg), pretrained=False, **timm_model_kwargs(cfg)).eval()
    built.load_state_dict(load_file(str(back / "model.safetensors")), strict=True)
    assert type(built).__name__ == "VisionTransformer"
    with torch.no_grad():
        np.testing.assert_array_equal(built(torch.from_numpy(beit3["x"])).numpy(), beit3["want"])


def test_tiny_beit3_on_the_primary_backends(primary_backend):
    """The tiny BEiT3 preset: logits within the float32 bound of the float64 reference, the loss and every gradient
    (the sub-LNs' weights and biases among them) within the gradient bounds of the float64 oracle."""
    cfg = get_preset("tiny_beit3")
    state = init_weights(cfg, 0)
    x = random_images(cfg, 4, 0)
    got = primary_backend.forward(primary_backend.build(cfg, state), x)["logits"]
    err, bound = rel_l2(reference.forward(cfg, state, x)["logits"], got), fp32_bound(cfg, "logits")
    print(f"tiny_beit3 {primary_backend.name}: logits rel L2 {err:.2e} (bound {bound:.1e})")
    assert err <= bound
    y = np.random.default_rng(3).integers(0, cfg.num_classes, 4)
    loss64, g64 = G_oracle(cfg, state, x, y)
    loss, grads = primary_backend.loss_and_grads(cfg, state, x, y, 0.1)
    assert set(grads) == set(g64) and any(k.endswith("attn.norm.weight") for k in g64)
    assert abs(loss - loss64) / abs(loss64) <= G.loss_bound(cfg), (loss, loss64)
    errs = G.grad_errors(g64, grads)
    assert all(e <= G.grad_bound(cfg) for e in errs.values()), errs


_ORACLE: dict = {}


def G_oracle(cfg, state, x, y):  # noqa: N802 - one float64 oracle run per config, shared by the backends
    from shared.backend import get_backend

    if cfg.name not in _ORACLE:
        _ORACLE[cfg.name] = get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, 0.1, dtype="float64")
    return _ORACLE[cfg.name]


def test_gated_attention_stays_refused_by_name():
    """timm's gated attention (a sigmoid gate before attn.proj) is no sub-LN: refused by name."""
    from shared.convert.timm_resolve import _read

    with torch.device("meta"):  # timm's Attention(gated=True): its gate Linear (no registered architecture sets it)
        m = timm.create_model("vit_base_patch16_224", pretrained=False, depth=1)
        m.blocks[0].attn.gate = torch.nn.Linear(768, 768)
    with pytest.raises(ConversionError, match="has gated attention"):
        _read(m, "gated_vit")
