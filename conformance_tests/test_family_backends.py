"""The ViT family in every backend against the source library's own output (issue 12's promise, CI-sized).

For every family: a tiny random-init model made by the source library itself (transformers here; timm's in
test_family_timm.py), imported with the suite's converter, built in each primary backend (torch, Keras,
MindSpore) in this process, and run on the same images. Each backend's float32 logits must be within the pairwise
float32 bound of the library's float32 output: both are float32 runs of the function whose float64 reference is
the converted file's, so each is within fp32_bound of it and the two within twice that (the policy's pairwise
rule, shared/tolerances.py). The user's whole CLI path (`vit-suite convert` + `check --against` on every backend in
its own process) runs in test_family_hf.py / test_family_timm.py for representative families; this file covers
every family in-process, at a few seconds each.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from shared.convert.hf import load_hf_dir
from shared.errors import ConversionWarning
from shared.tolerances import fp32_bound, rel_l2

from . import test_family_hf as HF
from . import test_family_hf_clip as CLIP

_built: dict = {}


def _hf_family(name: str, tmp_path_factory):
    """(cfg, state, images, transformers' output) for an HF family, made once."""
    key = ("hf", name)
    if key not in _built:
        model = HF._make(name)
        d = tmp_path_factory.mktemp(f"hf_{name}")
        model.save_pretrained(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConversionWarning)
            cfg, state = load_hf_dir(d)
        x = HF._images(model, batch=2, seed=11)
        _built[key] = (cfg, state, x, HF._their_output(name, model, x))
    return _built[key]


def _clip_family(arch: str):
    key = ("clip", arch)
    if key not in _built:
        model = CLIP._source(arch)
        cfg, state = CLIP._import(arch, model)
        x = np.random.default_rng(11).standard_normal((2, 3, *cfg.image_size)).astype(np.float32)
        _built[key] = (cfg, state, x, CLIP._hf_out(arch, model, x))
    return _built[key]


def _within_pairwise(backend, cfg, state, x, theirs, what):
    logits = backend.forward(backend.build(cfg, state), x)["logits"]
    err, bound = rel_l2(logits, np.asarray(theirs, np.float64)), 2 * fp32_bound(cfg, "logits")
    print(f"{what} in {backend.name}: rel L2 {err:.2e} vs the library's output (pairwise bound {bound:.2e})")
    assert err <= bound, f"{what} in {backend.name}: logits rel L2 {err:.3e} from the library's own > {bound:.3e}"


#: slow-marked here: the same computation as another family's in the CI-sized set (DINOv2's classifier head runs with
#: registers in dinov2_registers_classifier and in the tiny_dinov2_cls conformance matrix)
_BACKENDS_SLOW = ("dinov2_classifier",)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _BACKENDS_SLOW else n
                                  for n in HF.FAMILIES if n != "vit_mae_pretraining"])
def test_hf_family_in_every_backend(primary_backend, name, tmp_path_factory):
    cfg, state, x, theirs = _hf_family(name, tmp_path_factory)
    _within_pairwise(primary_backend, cfg, state, x, theirs, f"HF {name}")


@pytest.mark.parametrize("arch", CLIP.FIVE)
def test_clip_siglip_in_every_backend(primary_backend, arch):
    cfg, state, x, theirs = _clip_family(arch)
    _within_pairwise(primary_backend, cfg, state, x, theirs, f"HF {arch}")
