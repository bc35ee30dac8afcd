"""The structure the project promises its contributors: one-way layers, no import circle, three mirror images.

Layers (README, "Layout"): the contract at the bottom of shared/ imports only itself; shared.deploy (the ONNX export
and the runtimes), shared.training and shared.testing import the contract (and themselves); shared.convert imports the
contract and shared.deploy (its `onnx` format row); shared.cli may import all of those;
a backend package imports only the contract, shared.training and shared.deploy (runtimes for exports). Nothing in the product imports shared.cli or
conformance_tests, and the tool reaches a framework only through the backend registry. Imports are read from
the source with `ast` (function-level imports included: a lazy import is still a dependency, and so is an import
under `if TYPE_CHECKING:`: a type named across layers is a dependency too, and a circle through one is a circle).

Mirror images: vit_torch, vit_keras and vit_mindspore have the same files, the same public names, the same
signatures for what the rest of the suite calls, the shared layer classes in the same order, and compute the same
stochastic-depth rates and position tables.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from shared.backend import get_backend
from shared.posemb import resample_pos_embed
from shared.presets import get_preset
from shared.testing import case

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("shared", "vit_torch", "vit_keras", "vit_mindspore")
BACKEND_PACKAGES = {"torch": "vit_torch", "keras": "vit_keras", "mindspore": "vit_mindspore"}
CONTRACT = {"shared", "shared.errors", "shared.config", "shared.presets", "shared.reference", "shared.posemb",
            "shared.weights", "shared.init", "shared.tolerances", "shared.backend", "shared.bench",
            "shared.limits", "shared.safeio", "shared.fileio", "shared.keras_file", "shared.ms_ckpt", "shared.jobs",
            "shared.cache"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for top in (*PRODUCT, "conformance_tests") for p in (ROOT / top).rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The suite's modules `name` imports anywhere in its source (resolved: `from . import x` -> pkg.x)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for a in child.names:
                    found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != name}


def _layer(module: str) -> str:
    if module.startswith("conformance_tests"):
        return "tests"
    if module in CONTRACT:
        return "contract"
    for layer in ("shared.cli", "shared.convert", "shared.deploy", "shared.training", "shared.testing"):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module.split(".")[0]  # a backend package


ALLOWED = {
    "contract": {"contract"},
    "shared.deploy": {"contract", "shared.deploy"},
    "shared.convert": {"contract", "shared.deploy", "shared.convert"},
    "shared.training": {"contract", "shared.training"},
    "shared.testing": {"contract"},
    "shared.cli": {"contract", "shared.convert", "shared.deploy", "shared.training", "shared.testing", "shared.cli"},
    **{pkg: {"contract", "shared.training", "shared.deploy", pkg} for pkg in BACKEND_PACKAGES.values()},
}


def test_every_import_goes_down_the_layers():
    wrong = []
    for m in sorted(MODULES):
        if _layer(m) == "tests":
            continue
        for dep in sorted(_imports(m)):
            if _layer(dep) not in ALLOWED[_layer(m)]:
                wrong.append(f"{m} ({_layer(m)}) imports {dep} ({_layer(dep)})")
    assert not wrong, "imports against the layering:\n  " + "\n  ".join(wrong)


def test_no_import_circle():
    graph = {m: _imports(m) for m in MODULES}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def strongconnect(v):  # Tarjan: every strongly connected component of more than one module is a circle
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not circles, f"import circles: {circles}"


def test_the_layer_analysis_sees_lazy_imports():
    """The analysis is not blind: the lazy, function-level imports it must see are there."""
    assert "shared.cli.grad" in _imports("shared.cli.check")  # `check --grad`, imported inside cmd_check
    assert "shared.init" in _imports("vit_torch.model")
    assert _layer("vit_torch.bench") == "vit_torch" and _layer("shared.cli.worker") == "shared.cli"


# --------------------------------------------------------------------------------- mirror images
def _tree(pkg: str, module: str) -> ast.Module:
    return ast.parse((ROOT / pkg / f"{module}.py").read_text())


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _signature(fn: ast.FunctionDef, n_kwonly: int) -> str:
    """The positional parameters with their defaults and the first `n_kwonly` keyword-only ones."""
    a = fn.args
    pos = [p.arg for p in a.args]
    defaults = [None] * (len(pos) - len(a.defaults)) + [ast.unparse(d) for d in a.defaults]
    kw = [(p.arg, ast.unparse(d) if d is not None else None) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    return f"{list(zip(pos, defaults))} * {kw[:n_kwonly]}"


def test_the_backend_packages_have_the_same_files():
    files = {pkg: sorted(p.name for p in (ROOT / pkg).glob("*.py")) for pkg in BACKEND_PACKAGES.values()}
    assert len({tuple(f) for f in files.values()}) == 1, files
    assert files["vit_torch"] == ["__init__.py", "backend.py", "bench.py", "convert.py", "layers.py", "model.py",
                                  "train.py"]


def test_the_backend_packages_export_the_same_names():
    exports = {}
    for backend, pkg in BACKEND_PACKAGES.items():
        tree = ast.parse((ROOT / pkg / "__init__.py").read_text())
        table = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "_EXPORTS")
        names = ast.literal_eval(table)
        backend_class = next(k for k in names if k.endswith("Backend"))
        exports[pkg] = {("<Backend>" if k == backend_class else k): v for k, v in names.items()}
    assert len({tuple(sorted(e.items())) for e in exports.values()}) == 1, exports


@pytest.mark.parametrize("module,function,n_kwonly", [
    ("model", "build_model", 2), ("model", "load_canonical", 0), ("model", "to_canonical", 0),
    ("train", "predict_logits", 0), ("train", "loss_and_grads", 0), ("train", "optimizer_step", 5),
    ("train", "train", 2), ("bench", "bench", 6)])
def test_the_functions_the_suite_calls_have_one_signature(module, function, n_kwonly):
    sigs = {pkg: _signature(_functions(_tree(pkg, module))[function], n_kwonly) for pkg in BACKEND_PACKAGES.values()}
    assert len(set(sigs.values())) == 1, sigs
    if function == "build_model":
        assert sigs["vit_torch"] == "[('cfg', None), ('state', 'None')] * [('dtype', \"'float32'\"), ('seed', '0')]"


def test_the_shared_layer_classes_come_in_the_same_order():
    common = ["DropPath", "PatchEmbed", "Attention", "Mlp", "Block"]
    for pkg in BACKEND_PACKAGES.values():
        order = [c for c in _classes(_tree(pkg, "layers")) if c in common]
        assert order == common, (pkg, order)


#: what a backend's layer may take beyond the shared arguments, keyword-only (or Keras' **kwargs)
BACKEND_EXTRAS = {"vit_torch": {"fused_attn"}, "vit_keras": set(), "vit_mindspore": {"dtype", "fused_softmax"}}
#: the call method of a layer in each backend, and the arguments only that framework's call has
CALL = {"vit_torch": ("forward", set()), "vit_keras": ("call", {"training"}), "vit_mindspore": ("construct", set())}


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _args(fn: ast.FunctionDef, skip: set[str]) -> list[tuple[str, str | None]]:
    """Every named parameter after self with its default (positional ones, then keyword-only), less `skip`."""
    a = fn.args
    pos = [(p.arg, None) for p in a.args[1:]]
    defaults = [ast.unparse(d) for d in a.defaults]
    pos[len(pos) - len(defaults):] = [(n, d) for (n, _), d in zip(pos[len(pos) - len(defaults):], defaults)]
    kw = [(p.arg, ast.unparse(d) if d is not None else None) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    return [(n, d) for n, d in pos + kw if n not in skip]


@pytest.mark.parametrize("layer", ["Attention", "Mlp", "Block"])
def test_the_shared_layers_take_the_same_arguments(layer):
    """Attention, Mlp and Block take their own arguments (cfg.attention_args / mlp_args / block_args), the same
    names, order and defaults in every backend; Attention and Block are called (x, rope, attn_bias, return_attn)."""
    inits, calls = {}, {}
    for pkg in BACKEND_PACKAGES.values():
        cls = _classes(_tree(pkg, "layers"))[layer]
        inits[pkg] = _args(_method(cls, "__init__"), BACKEND_EXTRAS[pkg])
        name, skip = CALL[pkg]
        calls[pkg] = _args(_method(cls, name), skip)
    assert len({tuple(v) for v in inits.values()}) == 1, inits
    assert len({tuple(v) for v in calls.values()}) == 1, calls
    cfg = get_preset("tiny")
    shared_args = {"Attention": cfg.attention_args(0), "Mlp": cfg.mlp_args(), "Block": cfg.block_args(0)}[layer]
    assert set(shared_args) <= {n for n, _ in inits["vit_torch"]}
    if layer != "Mlp":
        assert calls["vit_torch"] == [("x", None), ("rope", "None"), ("attn_bias", "None"), ("return_attn", "False")]


def test_every_model_has_pos_table_and_forward_stages():
    for pkg in BACKEND_PACKAGES.values():
        vit = _classes(_tree(pkg, "model"))["VisionTransformer"]
        methods = {n.name for n in vit.body if isinstance(n, ast.FunctionDef)}
        assert {"pos_table", "rope_table", "forward_stages"} <= methods, (pkg, methods)


def test_every_builtin_backend_provides_the_training_and_benchmark_functions():
    """The Backend hooks adapt a backend's train_module and bench_module: all three provide every function."""
    for backend, pkg in BACKEND_PACKAGES.items():
        cls = type(get_backend(backend))
        assert (cls.train_module, cls.bench_module) == (f"{pkg}.train", f"{pkg}.bench"), backend
        train, bench = _functions(_tree(pkg, "train")), _tree(pkg, "bench")
        assert {"predict_logits", "loss_and_grads", "optimizer_step", "train"} <= set(train), pkg
        assigned = {t.id for n in bench.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        assert "bench" in _functions(bench) and "MODES" in assigned, pkg


# --------------------------------------------------------------------- the same numbers
@pytest.mark.parametrize("depth", [1, 4])
@pytest.mark.parametrize("backend", list(BACKEND_PACKAGES))
def test_stochastic_depth_rates_are_the_shared_ones(backend, depth):
    """Every backend reads its rates from ViTConfig.drop_path_rates: linear from 0, and 0 at depth 1 (timm)."""
    cfg = get_preset("tiny").replace(depth=depth, drop_path=0.3)
    model = get_backend(backend).build(cfg)
    rates = [blk.drop_path_rate for blk in model.blocks]
    assert rates == list(cfg.drop_path_rates)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3 if depth > 1 else 0.0)


def _table_as_numpy(backend: str, table) -> np.ndarray:
    if backend == "torch":
        return table.detach().float().numpy()
    if backend == "keras":
        import keras

        return keras.ops.convert_to_numpy(table)
    return table.asnumpy()


@pytest.mark.parametrize("kernel", ["bicubic", "bicubic_antialias", "bilinear"])
@pytest.mark.parametrize("backend", list(BACKEND_PACKAGES))
def test_pos_table_is_the_shared_resampling(backend, kernel):
    cfg0, state, _ = case("tiny_pretrain")  # a learned 4x4 table with a class-token row
    cfg = cfg0.replace(resize_kernel=kernel)
    model = get_backend(backend).build(cfg, state)
    for grid in [(5, 7), (3, 2), (4, 4), (9, 1)]:
        got = _table_as_numpy(backend, model.pos_table(grid))
        want = resample_pos_embed(state["pos_embed"].astype(np.float64), cfg.table_grid, grid,
                                  cfg.num_prefix_tokens, kernel)
        assert got.shape == want.shape, (grid, got.shape, want.shape)
        # float32 resampling of O(1) values with <= 4x4 taps per axis: a few float32 roundings
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, float(np.abs(want).max())))
        np.testing.assert_array_equal(got[0, 0], state["pos_embed"][0, 0])  # the class-token row is kept
