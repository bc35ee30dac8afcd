"""Gradient conformance: every backend's loss and parameter gradients, and one SGD / AdamW step, against
the float64 oracle (torch in float64, itself checked by finite differences of the NumPy reference).

Bounds: shared/grad.py (gradients: GRAD_FACTOR x the float32 logits bound of shared/tolerances.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest

from shared import grad as G
from shared.init import init_weights, random_images
from shared.presets import get_preset

BACKENDS = [b for b in ("torch", "keras", "mindspore") if importlib.util.find_spec(b) is not None]
SMOOTHING = 0.1
#: tiny (timm layout) and a T2T-style model (attention width != model width, value skip, zero token,
#: no qkv bias), the latter with a 5-class head so the cross-entropy applies
CASES = {"tiny": lambda: get_preset("tiny"), "tiny_t2t": lambda: get_preset("tiny_t2t").replace(num_classes=5)}


@lru_cache(maxsize=None)
def case(name: str):
    cfg = CASES[name]()
    state = init_weights(cfg, 0)
    images = random_images(cfg, 6, 0)
    labels = np.random.default_rng(3).integers(0, cfg.num_classes, 6)
    return cfg, state, images, labels


def train_mod(backend: str):
    # no skip: a backend that is not installed fails here, as CI must run all three
    return importlib.import_module(f"vit_{backend}.train")


@lru_cache(maxsize=None)
def oracle(name: str):
    cfg, state, x, y = case(name)
    return train_mod("torch").loss_and_grads(cfg, state, x, y, SMOOTHING, dtype="float64")


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
@pytest.mark.parametrize("backend", ["torch", "keras", "mindspore"])
def test_loss_and_every_gradient_vs_oracle(backend, name):
    cfg, state, x, y = case(name)
    loss, grads = train_mod(backend).loss_and_grads(cfg, state, x, y, SMOOTHING)
    loss64, g64 = oracle(name)
    assert set(grads) == set(g64), f"gradient keys differ: {set(grads) ^ set(g64)}"
    assert abs(loss - loss64) / abs(loss64) <= G.loss_bound(cfg), (loss, loss64)
    errs = G.grad_errors(g64, grads)
    bound = G.grad_bound(cfg)
    bad = {k: e for k, e in errs.items() if not e <= bound}
    worst = max(errs.items(), key=lambda kv: kv[1])
    assert not bad, f"{backend} {name}: gradients out of bound {bound:.2e}: {bad}"
    assert worst[1] < bound  # (worst is reported by `vit-suite grad`)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("backend", ["torch", "keras", "mindspore"])
def test_one_optimiser_step_vs_numpy_float64(backend, kind):
    cfg, state, x, y = case("tiny")
    mod = train_mod(backend)
    hp = G.STEP_HPARAMS[kind]
    new = mod.one_step(cfg, state, x, y, kind, lr=hp["lr"], weight_decay=hp["weight_decay"],
                       label_smoothing=SMOOTHING, betas=G.ADAM_BETAS, eps=G.ADAM_EPS)
    _, own = mod.loss_and_grads(cfg, state, x, y, SMOOTHING)
    rows = G.step_errors(kind, cfg, state, new, own, oracle("tiny")[1])
    bad = {k: m for k, m in rows.items() if not (m["opt_err"] <= m["opt_bound"] and m["e2e_err"] <= m["e2e_bound"])}
    assert not bad, f"{backend} {kind}: step out of bound: {bad}"
    # every parameter moved (weight decay and gradients both act)
    assert all(not np.array_equal(new[k], state[k]) for k in state)


def test_steps_agree_across_backends():
    """Pairwise: two backends' SGD steps are within the sum of their bounds (the triangle inequality)."""
    cfg, state, x, y = case("tiny")
    hp = G.STEP_HPARAMS["sgd"]
    news = {b: train_mod(b).one_step(cfg, state, x, y, "sgd", lr=hp["lr"], weight_decay=hp["weight_decay"],
                                     label_smoothing=SMOOTHING) for b in BACKENDS}
    g64 = oracle("tiny")[1]
    ref = G.numpy_step("sgd", state, g64)
    bounds = {b: G.step_errors("sgd", cfg, state, news[b], g64, g64) for b in BACKENDS}
    for i, a in enumerate(BACKENDS):
        for b in BACKENDS[i + 1:]:
            for k in state:
                delta = np.linalg.norm(ref[k] - state[k])
                err = np.linalg.norm(news[a][k].astype(np.float64) - news[b][k]) / delta
                assert err <= bounds[a][k]["e2e_bound"] + bounds[b][k]["e2e_bound"], (a, b, k, err)


def test_grad_command_json(tmp_path):
    out = tmp_path / "grad.json"
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "grad", "--preset", "tiny", "--backends", "torch",
                           "--batch", "4", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    d = json.loads(out.read_text())
    assert d["passed"] and d["oracle_ok"] and d["backends"]["torch"]["passed"]
    assert "PASS" in proc.stdout
