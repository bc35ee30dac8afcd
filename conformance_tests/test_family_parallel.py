"""Parallel blocks: timm's `ParallelThingsBlock` (`vit_small_patch16_18x2_224`, `vit_base_patch16_18x2_224`: in each
block num_parallel attention branches, each with its own norm and LayerScale, summed into the residual, then as many
MLP branches), proven against timm itself (random init, no download).

  * tiny timm models of both architectures (one with qk-norm and a non-square grid), converted from timm's hub
    directory by `vit-suite convert` (which proves itself against timm) and imported from the state dict: the float64
    reference of the result meets timm's output within the float32 bound, and the export gives timm's tensors back
    bit for bit, which timm's own architecture loads strictly;
  * tiny_parallel (the suite's name) exported to timm runs in timm within the float32 bound;
  * tiny_parallel on every primary backend: every stage within the float32 bound, a low precision within the bound of
    the reference run at that precision, the loss gradients within the gradient bound of the float64 oracle (itself
    checked against finite differences of the reference at the branches' weights), one SGD step within the step bounds (torch in the CI-sized set; Keras and MindSpore slow-marked);
  * the block kinds the canonical model cannot run (ParallelScalingBlock's fused in_proj, differential attention)
    and the writers without parallel blocks refuse them by name.
"""
from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402

from shared import reference  # noqa: E402
from shared import weights as W  # noqa: E402
from shared.cli import main  # noqa: E402
from shared.config import ViTConfig  # noqa: E402
from shared.convert.timm import export_timm, import_timm, timm_architecture, timm_model_kwargs  # noqa: E402
from shared.convert.timm_resolve import resolve_timm_architecture  # noqa: E402
from shared.errors import EXIT_OK, ConfigError, ConversionError, ConversionWarning  # noqa: E402
from shared.init import init_weights, random_images  # noqa: E402
from shared.presets import get_preset  # noqa: E402
from shared.tolerances import fp32_bound, rel_l2  # noqa: E402

torch.set_num_threads(2)
SMALL = dict(depth=2, embed_dim=64, num_heads=4, num_classes=5)
#: architecture -> the extra create_model arguments of its tiny model
CASES = {"vit_small_patch16_18x2_224": dict(img_size=32),
         "vit_base_patch16_18x2_224": dict(img_size=(32, 48), qk_norm=True)}


@torch.no_grad()
def _timm_model(arch: str):
    torch.manual_seed(len(arch))
    m = timm.create_model(arch, pretrained=False, **SMALL, **CASES[arch]).eval()
    for p in m.parameters():  # timm's gammas start at 1e-5 and its biases at 0: shake every parameter
        p.add_(0.05 * torch.randn_like(p))
    return m


@torch.no_grad()
def _run(model, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).numpy()


def _check(cfg, got, want, what: str) -> float:
    err, bound = rel_l2(np.asarray(got, np.float64), np.asarray(want, np.float64)), fp32_bound(cfg, "logits")
    print(f"{what}: logits rel L2 {err:.2e} (bound {bound:.1e})")
    assert err <= bound / 10, f"{what}: logits rel L2 {err:.3e} > float32 bound / 10 {bound / 10:.3e}"
    return err


@pytest.mark.parametrize("arch", sorted(CASES))
def test_timm_parallel_blocks_import_and_export(arch, tmp_path):
    m = _timm_model(arch)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in {**SMALL, **CASES[arch]}.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        cfg, state = import_timm(sd, timm_config={"architecture": arch, "model_args": args, "num_classes": 5})
    assert cfg.num_parallel == 2 and any(".attns.1." in k for k in state)
    x = random_images(cfg, 2, seed=3)
    want = _run(m, x)
    _check(cfg, reference.forward(cfg, state, x)["logits"], want, f"{arch} (state dict)")
    back = export_timm(cfg, state)
    assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
    m2 = timm.create_model(timm_architecture(cfg), pretrained=False, **timm_model_kwargs(cfg)).eval()
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    np.testing.assert_array_equal(_run(m2, x), want)
    if arch == "vit_small_patch16_18x2_224":  # timm's hub directory, converted with no flag (proven against timm)
        save_for_hf(m, str(tmp_path / "hub"), safe_serialization=True)
        assert main(["convert", str(tmp_path / "hub"), str(tmp_path / "c.safetensors")]) == EXIT_OK
        cfg2, state2 = W.load(tmp_path / "c.safetensors")
        assert cfg2.num_parallel == 2
        _check(cfg2, reference.forward(cfg2, state2, x)["logits"], want, f"{arch} (hub directory)")


def test_suite_parallel_config_exports_to_a_model_timm_runs():
    cfg = get_preset("tiny_parallel")
    state = init_weights(cfg, seed=5)
    x = random_images(cfg, 2, seed=6)
    model = timm.create_model(timm_architecture(cfg), pretrained=False, **timm_model_kwargs(cfg)).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in export_timm(cfg, state).items()}, strict=True)
    _check(cfg, _run(model, x), reference.forward(cfg, state, x)["logits"], "tiny_parallel -> timm")


@pytest.mark.ci_backends("torch")  # Keras and MindSpore (~15 s of compiles) in the slow set
def test_tiny_parallel_on_every_primary_backend(primary_backend):
    from shared.testing import assert_backend_conforms, case
    from shared.training import grad as G

    be = primary_backend
    cfg, state, x = case("tiny_parallel")
    assert_backend_conforms(be, cfg.name)
    y = np.random.default_rng(3).integers(0, cfg.num_classes, x.shape[0])
    _, grads = be.loss_and_grads(cfg, state, x, y, 0.1)
    g64 = _oracle(cfg, state, x, y)
    bound, errs = G.grad_bound(cfg), G.grad_errors(g64, grads)
    worst = max(errs, key=errs.get)
    print(f"{be.name} gradients: worst {worst} {errs[worst]:.2e} (bound {bound:.1e})")
    assert set(grads) == set(g64) and errs[worst] <= bound
    # SGD (AdamW's first step divides by |g|: ill-conditioned on the k_norm bias, whose gradient is ~0 as softmax
    # ignores a shift shared by every key)
    hp = G.STEP_HPARAMS["sgd"]
    new = be.optimizer_step(cfg, state, x, y, "sgd", lr=hp["lr"], weight_decay=hp["weight_decay"],
                            label_smoothing=0.1)
    rows = G.step_errors("sgd", cfg, state, new, grads, g64)
    assert not {k: r for k, r in rows.items() if not (r["opt_err"] <= r["opt_bound"] and r["e2e_err"] <= r["e2e_bound"])}


_ORACLE: dict = {}


def _oracle(cfg, state, x, y):
    """The float64 oracle's gradients (torch float64), checked once against central finite differences of the float64
    reference at both branches' weights."""
    from shared.backend import get_backend
    from shared.training import grad as G

    if not _ORACLE:
        loss64, g64 = get_backend(G.ORACLE_BACKEND).loss_and_grads(cfg, state, x, y, 0.1, dtype="float64")
        ref = G.reference_loss(cfg, state, x, y, 0.1)
        assert abs(loss64 - ref) <= G.ORACLE_LOSS_REL * max(1.0, abs(ref)), (loss64, ref)
        keys = ["blocks.0.attns.1.attn.qkv.weight", "blocks.1.attns.0.ls.gamma", "blocks.1.ffns.1.mlp.fc1.weight",
                "blocks.0.ffns.0.norm.weight"]
        rows = G.finite_difference_check(cfg, state, x, y, 0.1, g64, n_coords=4, keys=keys)
        assert all(r["passed"] for r in rows), rows
        _ORACLE["g"] = g64
    return _ORACLE["g"]


@pytest.mark.parametrize("arch,why", [
    ("vit_base_patch16_xp_224", "builds ParallelScalingBlock blocks: attention and MLP in parallel from one fused"),
    ("vit_dlittle_patch16_reg1_gap_256", "differential"),
])
def test_parallel_kinds_the_canonical_model_cannot_run_are_refused_by_name(arch, why):
    with pytest.raises(ConversionError, match=why) as e:
        resolve_timm_architecture(arch, {"depth": 1})
    assert arch in str(e.value)


def test_parallel_config_and_writers():
    from shared.keras_file import file_problems

    cfg = get_preset("tiny_parallel")
    def block_params(c):
        return sum(int(np.prod(v)) for k, v in W.expected_shapes(c).items() if k.startswith("blocks."))

    assert cfg.num_parameters == W.parameter_count(cfg)
    assert block_params(cfg) == 2 * block_params(cfg.replace(num_parallel=1))  # every block part, once per branch
    assert ViTConfig.from_json(cfg.to_json()) == cfg
    for bad, why in ((dict(rel_pos="mlp", qkv_bias=True), "num_parallel > 1"), (dict(num_parallel=0), "num_parallel")):
        with pytest.raises(ConfigError, match=why):
            cfg.replace(**bad)
    assert any("num_parallel" in p for p in file_problems(cfg))
    with pytest.raises(ConversionError, match="ParallelThingsBlock architectures"):
        export_timm(cfg.replace(num_parallel=3), init_weights(cfg.replace(num_parallel=3)))
