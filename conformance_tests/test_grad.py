"""Gradient conformance: every backend's loss and parameter gradients, and one SGD / AdamW step, against the float64
oracle (the torch backend in float64, itself checked by finite differences of the NumPy reference).

Every backend is reached through its `Backend` training hooks (the `backend` fixture: built-ins, variants and
third-party backends alike). Bounds: shared/training/grad.py (gradients: GRAD_FACTOR x the float32 logits bound
of shared/tolerances.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest

from shared.backend import get_backend
from shared.init import init_weights, random_images
from shared.presets import get_preset
from shared.testing import FAMILY_TINY, HEAD_TINY
from shared.training import grad as G

SMOOTHING = 0.1
#: every tiny layout: timm-style; mean pooling + fc_norm + 2-D sin-cos; T2T (attention width != model width, value
#: skip, zero token, no qkv bias; a 5-class head so the cross-entropy applies); resampled table + pre-logits +
#: output softmax (the loss is taken before it)
CASES = {"tiny": lambda: get_preset("tiny"), "tiny_meanpool": lambda: get_preset("tiny_meanpool"),
         "tiny_t2t": lambda: get_preset("tiny_t2t").replace(num_classes=5),
         "tiny_pretrain": lambda: get_preset("tiny_pretrain"),
         # the family options: two heads whose losses are averaged (DeiT), LayerScale + a class token without a
         # position row + mean pool, registers + qk-norm (features-only preset: a 4-class head added), norm_pre +
         # QuickGELU + no patch bias, the attention-pool head
         **{n: (lambda n=n: get_preset(n) if get_preset(n).num_classes else get_preset(n).replace(num_classes=4))
            for n in FAMILY_TINY},
         # a head-only option: concat(class token, patch mean) with registers in neither half (DINOv2's linear head)
         **{n: (lambda n=n: get_preset(n)) for n in HEAD_TINY}}


@lru_cache(maxsize=None)
def case(name: str):
    cfg = CASES[name]()
    state = init_weights(cfg, 0)
    images = random_images(cfg, 6, 0)
    labels = np.random.default_rng(3).integers(0, cfg.num_classes, 6)
    return cfg, state, images, labels


@lru_cache(maxsize=None)
def oracle(name: str):
    cfg, state, x, y = case(name)
    return get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, SMOOTHING, dtype="float64")


@lru_cache(maxsize=None)
def sgd_step(backend_name: str) -> dict:
    cfg, state, x, y = case("tiny")
    hp = G.STEP_HPARAMS["sgd"]
    return get_backend(backend_name).optimizer_step(cfg, state, x, y, "sgd", lr=hp["lr"],
                                                    weight_decay=hp["weight_decay"], label_smoothing=SMOOTHING)


@pytest.mark.parametrize("name", sorted(CASES))
def test_oracle_matches_reference_and_finite_differences(name):
    cfg, state, x, y = case(name)
    loss64, g64 = oracle(name)
    ref = G.reference_loss(cfg, state, x, y, SMOOTHING)
    assert abs(loss64 - ref) <= G.ORACLE_LOSS_REL * max(1.0, abs(ref)), (loss64, ref)
    rows = G.finite_difference_check(cfg, state, x, y, SMOOTHING, g64, n_coords=6)
    bad = [r for r in rows if not r["passed"]]
    assert not bad, f"oracle gradient differs from finite differences of the reference: {bad}"
    assert all(np.any(g != 0) for g in g64.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_every_gradient_vs_oracle(backend, name):
    cfg, state, x, y = case(name)
    loss, grads = backend.loss_and_grads(cfg, state, x, y, SMOOTHING)
    loss64, g64 = oracle(name)
    assert set(grads) == set(g64), f"gradient keys differ: {set(grads) ^ set(g64)}"
    assert all(grads[k].shape == g64[k].shape for k in g64)
    assert abs(loss - loss64) / abs(loss64) <= G.loss_bound(cfg), (loss, loss64)
    errs = G.grad_errors(g64, grads)
    bound = G.grad_bound(cfg)
    bad = {k: e for k, e in errs.items() if not e <= bound}
    assert not bad, f"{backend.name} {name}: gradients out of bound {bound:.2e}: {bad}"


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_one_optimiser_step_vs_numpy_float64(backend, kind):
    cfg, state, x, y = case("tiny")
    hp = G.STEP_HPARAMS[kind]
    new = backend.optimizer_step(cfg, state, x, y, kind, lr=hp["lr"], weight_decay=hp["weight_decay"],
                                 label_smoothing=SMOOTHING, betas=G.ADAM_BETAS, eps=G.ADAM_EPS)
    _, own = backend.loss_and_grads(cfg, state, x, y, SMOOTHING)
    rows = G.step_errors(kind, cfg, state, new, own, oracle("tiny")[1])
    bad = {k: m for k, m in rows.items() if not (m["opt_err"] <= m["opt_bound"] and m["e2e_err"] <= m["e2e_bound"])}
    assert not bad, f"{backend.name} {kind}: step out of bound: {bad}"
    # every parameter moved (weight decay and gradients both act)
    assert all(not np.array_equal(new[k], state[k]) for k in state)


def test_steps_agree_across_backends(backends_of_pair):
    """Pairwise: two backends' SGD steps are within the sum of their bounds (the triangle inequality)."""
    a, b = backends_of_pair
    cfg, state, _, _ = case("tiny")
    g64 = oracle("tiny")[1]
    ref = G.numpy_step("sgd", state, g64)
    new_a, new_b = sgd_step(a.name), sgd_step(b.name)
    bound_a = G.step_errors("sgd", cfg, state, new_a, g64, g64)
    bound_b = G.step_errors("sgd", cfg, state, new_b, g64, g64)
    for k in state:
        delta = np.linalg.norm(ref[k] - state[k])
        err = np.linalg.norm(new_a[k].astype(np.float64) - new_b[k]) / delta
        assert err <= bound_a[k]["e2e_bound"] + bound_b[k]["e2e_bound"], (a.name, b.name, k, err)


def test_grad_command_json(tmp_path):
    out = tmp_path / "grad.json"
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "grad", "--preset", "tiny", "--backends", "torch",
                           "--batch", "4", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    d = json.loads(out.read_text())
    assert d["passed"] and d["oracle_ok"] and d["backends"]["torch"]["passed"]
    assert d["backends"]["torch"]["status"] == "pass"
    assert "PASS" in proc.stdout
