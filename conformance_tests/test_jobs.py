"""The job machinery (shared/jobs.py, shared/cli/worker.py): `check`'s backends side by side give the numbers of a
sequential run, and a warm worker (`sweep`'s) survives nothing but its own crash.

Timings are not asserted here (the machines are noisy): benchmarks/jobs.py measures them.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from shared import jobs as J
from shared import tolerances
from shared import weights as W
from shared.cli.check import run_check
from shared.cli.worker import WarmWorkers, run_child, run_shared
from shared.errors import EXIT_CRASH
from shared.init import init_weights, random_images
from shared.presets import get_preset

ABORTING = "aborting=conformance_tests.broken_backends:Aborting"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = get_preset("tiny")
    state = init_weights(cfg, 3)
    path = W.save(tmp_path_factory.mktemp("jobs") / "tiny.safetensors", cfg, state)
    return cfg, state, path


@pytest.fixture(scope="module")
def alone(tiny):
    """torch and MindSpore one after another, each in a fresh child of 1 thread."""
    cfg, state, path = tiny
    return run_check(cfg, path, random_images(cfg, 2, 0), ["torch", "mindspore"], state=state, jobs=1, threads=1)


def test_backends_side_by_side_give_the_sequential_numbers(tiny, alone):
    """torch and MindSpore at once (each 1 thread) and one after another: every stage bit for bit, the same
    verdicts, and each run records its thread count."""
    cfg, state, path = tiny
    x = random_images(cfg, 2, 0)
    together = run_check(cfg, path, x, ["torch", "mindspore"], state=state, jobs=2, threads=1)
    assert [r.backend for r in together.runs] == ["torch", "mindspore"]  # the order asked for, not of finishing
    for a, b in zip(together.runs, alone.runs):
        assert a.status == b.status == "pass", (a.error, b.error)
        assert a.meta["threads"] == b.meta["threads"] == 1
        assert (a.meta["jobs"], b.meta["jobs"]) == (2, 1)
        assert a.stages.keys() == b.stages.keys()
        for k in a.stages:
            np.testing.assert_array_equal(a.stages[k], b.stages[k], err_msg=f"{a.backend} {k}")
        assert [s.rel_l2 for s in a.verdict.stages] == [s.rel_l2 for s in b.verdict.stages]
    assert [(p.a, p.b, p.rel_l2) for p in together.pairs] == [(p.a, p.b, p.rel_l2) for p in alone.pairs]
    # each pair is compared as its second run comes in (here MindSpore, started first, before torch), and is the
    # pair of the runs in the order asked for
    t, m = alone.runs
    want = tolerances.compare_pair(cfg, "torch", t.stages, t.verdict, "mindspore", m.stages, m.verdict)
    assert [vars(p) for p in alone.pairs] == [vars(want)]
    assert want.rel_l2 != tolerances.compare_pair(cfg, "mindspore", m.stages, m.verdict, "torch", t.stages,
                                                  t.verdict).rel_l2  # the order shows (relative to the second)


def test_a_warm_worker_reusing_its_model_gives_a_fresh_builds_numbers(tiny, alone, tmp_path):
    """A warm MindSpore worker runs two checkpoints of one architecture: the second's weights go into the model
    built for the first (Backend.load_weights), and give a fresh child's stages bit for bit. (A compiled graph
    reading the new weights: test_mindspore.py.)"""
    cfg, _, path = tiny
    other = W.save(tmp_path / "other.safetensors", cfg, init_weights(cfg, 4))
    np.save(tmp_path / "x.npy", random_images(cfg, 2, 0).astype(np.float32))  # the images `alone` ran
    env = J.thread_env(1)

    def spec(weights):
        return {"backend": "mindspore", "weights": str(weights), "input": str(tmp_path / "x.npy"), "dtype": "float32",
                "stages": True, "image_size": None}

    with WarmWorkers(tmp_path, max_workers=1) as workers:
        first = workers.run("forward", spec(other), tmp_path, name="a", env=env)
        reused = workers.run("forward", spec(path), tmp_path, name="b", env=env)
        assert workers.started == {"mindspore": 1}
    fresh = alone.runs[1]
    assert fresh.backend == "mindspore" and fresh.stages is not None, fresh.error
    for got in (first, reused):
        assert got.arrays is not None, got.error
    assert not np.array_equal(first.arrays["logits"], fresh.stages["logits"])  # two checkpoints, two outputs
    assert reused.arrays.keys() == fresh.stages.keys()
    for k in fresh.stages:
        np.testing.assert_array_equal(reused.arrays[k], fresh.stages[k], err_msg=k)


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_a_prestarted_worker_imports_its_framework_before_its_first_task_and_gives_a_fresh_childs_numbers(
        tiny, alone, tmp_path):
    """`sweep` starts a worker for each backend at once (WarmWorkers.prestart): torch's library is mapped into it
    before any task is sent; a second prestart for the same backend, or one beyond max_workers, starts nothing;
    the first task runs in that worker and gives a fresh child's stages bit for bit."""
    import time

    cfg, _, path = tiny
    np.save(tmp_path / "x.npy", random_images(cfg, 2, 0).astype(np.float32))  # the images `alone` ran
    env = J.thread_env(1)
    with WarmWorkers(tmp_path, max_workers=1) as workers:
        assert workers.prestart("torch", env) and not workers.prestart("torch", env)
        assert not workers.prestart("mindspore", env)  # no room: max_workers is 1
        (w,) = workers._idle
        deadline = time.monotonic() + 120
        while "libtorch_cpu" not in _maps(w.proc.pid):
            assert w.proc.poll() is None and time.monotonic() < deadline, w.stderr_tail()
            time.sleep(0.1)
        got = workers.run("forward", {"backend": "torch", "weights": str(path), "input": str(tmp_path / "x.npy"),
                                      "dtype": "float32", "stages": True, "image_size": None},
                          tmp_path, name="a", env=env)
        assert workers.started == {"torch": 1} and workers._idle == [w]  # the prestarted worker ran it
    fresh = alone.runs[0]
    assert fresh.backend == "torch" and fresh.stages is not None and got.arrays is not None, (fresh.error, got.error)
    assert got.arrays.keys() == fresh.stages.keys()
    for k in fresh.stages:
        np.testing.assert_array_equal(got.arrays[k], fresh.stages[k], err_msg=k)


def test_the_thread_count_does_not_depend_on_the_jobs():
    assert J.child_threads() == max(1, J.cores() // min(J.cores(), J.CHILD_SLOTS))
    assert J.concurrent_children(5, 1, jobs=3) == 3 and J.concurrent_children(2, 1, jobs=8) == 2
    assert 1 <= J.concurrent_children(5, 1) <= J.cores()
    assert J.concurrent_children(5, 1 << 60) == 1  # no memory for two: one at a time
    assert J.thread_env(3)["OMP_NUM_THREADS"] == "3"


def test_the_costliest_children_start_first():
    """Longest-first: the default check's Keras children before torch and the runtimes; a backend without a
    measured cost (a plug-in, a deployment variant) first of all; every name once, ties in the order asked for."""
    from shared.backend import _BUILTIN, START_COST, start_order, variant_of

    # every built-in primary backend has a measured cost (plug-ins registered by other tests have none)
    assert [b for b in _BUILTIN if variant_of(b) is None and b not in START_COST] == []
    order = start_order(["onnxruntime", "torch", "keras-jax", "plugin", "keras", "mindspore"])
    assert order == ["plugin", "keras", "keras-jax", "mindspore", "torch", "onnxruntime"]
    assert start_order(["torch-explicit", "torch"]) == ["torch-explicit", "torch"]


def test_backends_that_import_one_framework_are_grouped_where_their_environments_agree():
    """The default check's 8 targets in 5 processes (torch with Keras-on-torch; OpenVINO with Keras-on-OpenVINO and
    ONNX Runtime, which share onnx), costliest group first; a group never mixes Keras backends (KERAS_BACKEND),
    nor TensorFlow with MindSpore; a plug-in runs alone."""
    from shared.backend import _BUILTIN, backend_env, process_groups

    default = ["torch", "keras", "keras-jax", "keras-torch", "mindspore", "onnxruntime", "openvino", "keras-openvino"]
    assert process_groups(default) == [["keras-torch", "torch"], ["keras"], ["keras-jax"],
                                       ["keras-openvino", "openvino", "onnxruntime"], ["mindspore"]]
    every = [b for b in _BUILTIN] + ["plugin"]
    groups = process_groups(every)
    assert sorted(b for g in groups for b in g) == sorted(every) and ["plugin"] in groups
    for g in groups:
        for var in {k for b in g for k in backend_env(b)}:
            assert len({backend_env(b)[var] for b in g if var in backend_env(b)}) == 1, g
        assert not {"tensorflow", "mindspore"} <= {m for b in g for m in _BUILTIN.get(b, ("", ()))[1]}, g
    assert process_groups(["mindspore", "keras"]) == [["keras"], ["mindspore"]]


def test_backends_sharing_a_process_give_a_process_each_numbers(tiny, alone):
    """More backends than run at once (jobs=1): torch and Keras-on-torch share one process, ONNX Runtime and
    OpenVINO another. Every stage is the bits of a process each (isolate=True, and the torch run of `alone`), each
    run names the backends it shared its process with."""
    cfg, state, path = tiny
    x = random_images(cfg, 2, 0)
    names = ["torch", "keras-torch", "onnxruntime", "openvino"]
    together = run_check(cfg, path, x, names, state=state, jobs=1, threads=1)
    apart = run_check(cfg, path, x, names, state=state, jobs=2, threads=1, isolate=True)
    assert [r.backend for r in together.runs] == names
    for a, b in zip(together.runs, apart.runs):
        assert a.status == b.status == "pass", (a.backend, a.error, b.error)
        assert "process" not in b.meta
        assert a.stages.keys() == b.stages.keys()
        for k in a.stages:
            np.testing.assert_array_equal(a.stages[k], b.stages[k], err_msg=f"{a.backend} {k}")
    assert [r.meta["process"] for r in together.runs] == [["keras-torch", "torch"]] * 2 + [["openvino",
                                                                                            "onnxruntime"]] * 2
    for k in alone.runs[0].stages:
        np.testing.assert_array_equal(together.runs[0].stages[k], alone.runs[0].stages[k], err_msg=k)
    assert [(p.a, p.b, p.rel_l2) for p in together.pairs] == [(p.a, p.b, p.rel_l2) for p in apart.pairs]
    # more cores than backends: a process each
    assert all("process" not in r.meta for r in run_check(cfg, path, x, ["torch"], state=state, jobs=2).runs)


def test_a_task_that_crashes_a_shared_process_takes_down_only_its_own_result(tiny, tmp_path, monkeypatch):
    """Of two tasks in one process, the first aborts it: that task alone is reported crashed, and the next runs in
    a fresh process, with a process of its own's numbers."""
    cfg, _, path = tiny
    monkeypatch.setenv("VIT_SUITE_BACKENDS", ABORTING)
    np.save(tmp_path / "x3.npy", random_images(cfg, 3, 0))
    specs = [{"backend": b, "weights": str(path), "input": str(tmp_path / "x3.npy"), "dtype": "float32",
              "stages": True, "image_size": None} for b in ("aborting", "torch")]
    crashed, after = run_shared("forward", specs, tmp_path, env=J.thread_env(1))
    assert crashed.arrays is None and crashed.exit_code == EXIT_CRASH
    assert "worker crashed" in crashed.error and str(-6) in crashed.error  # SIGABRT
    fresh = run_child("forward", specs[1], tmp_path, name="fresh", env=J.thread_env(1))
    assert after.arrays is not None and fresh.arrays is not None, (after.error, fresh.error)
    for k in fresh.arrays:
        np.testing.assert_array_equal(after.arrays[k], fresh.arrays[k], err_msg=k)


def test_keras_on_jax_children_load_their_compiled_forward_from_the_cache_with_the_same_bits(tiny, tmp_path,
                                                                                              monkeypatch):
    """The tool's Keras-on-JAX children keep XLA's programs in the suite's cache (shared/cache.py): the first run
    writes the forward's program, the second reads it back (its access stamp moves), and both give the bits of a
    run without the cache; VIT_SUITE_CACHE_DIR=off writes nothing."""
    cfg, _, path = tiny
    np.save(tmp_path / "x.npy", random_images(cfg, 2, 0))
    spec = {"backend": "keras-jax", "weights": str(path), "input": str(tmp_path / "x.npy"), "dtype": "float32",
            "stages": True, "image_size": None}
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # the test run's own (conftest): not here
    runs = {}
    monkeypatch.setenv("VIT_SUITE_CACHE_DIR", "off")
    runs["off"] = run_child("forward", spec, tmp_path, name="off", env=J.thread_env(1))
    root = tmp_path / "cache"
    monkeypatch.setenv("VIT_SUITE_CACHE_DIR", str(root))
    runs["cold"] = run_child("forward", spec, tmp_path, name="cold", env=J.thread_env(1))
    (jax_dir,) = root.iterdir()
    assert jax_dir.name.startswith("jax-")
    stamps = {p.name: p.read_bytes() for p in jax_dir.glob("jit_stateless-*-atime")}  # the model's forward
    assert len(stamps) == 1 and len(list(jax_dir.glob("jit_stateless-*-cache"))) == 1
    runs["warm"] = run_child("forward", spec, tmp_path, name="warm", env=J.thread_env(1))
    assert {p.name: p.read_bytes() for p in jax_dir.glob("jit_stateless-*-atime")}.keys() == stamps.keys()
    assert all((jax_dir / name).read_bytes() != stamp for name, stamp in stamps.items())  # read back
    for name, run in runs.items():
        assert run.arrays is not None, (name, run.error)
        for k in runs["off"].arrays:
            np.testing.assert_array_equal(run.arrays[k], runs["off"].arrays[k], err_msg=f"{name} {k}")


def test_the_cache_directory_names_the_machine_and_can_be_turned_off(tmp_path, monkeypatch):
    """One cache per kind of machine and thread settings (a compiled program may depend on them); off, or where
    the directory cannot be made, none (the framework compiles as without one)."""
    from shared import cache

    for off in ("off", "", "0"):
        monkeypatch.setenv("VIT_SUITE_CACHE_DIR", off)
        assert cache.cache_root() is None and cache.cache_dir("jax") is None
    monkeypatch.delenv("VIT_SUITE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "vit-suite"
    monkeypatch.setenv("VIT_SUITE_CACHE_DIR", str(tmp_path / "c"))
    key = cache.host_key()
    assert cache.cache_dir("jax") == tmp_path / "c" / f"jax-{key}" and (tmp_path / "c" / f"jax-{key}").is_dir()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    monkeypatch.setenv("OMP_NUM_THREADS", threads + "7")
    assert cache.host_key() != key
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    assert cache.host_key() == key
    monkeypatch.setattr(cache, "_cpu_identity", lambda: "another CPU")
    assert cache.host_key() != key
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("VIT_SUITE_CACHE_DIR", str(tmp_path / "file"))  # not a directory: no cache
    assert cache.cache_dir("jax") is None


def test_a_crashing_task_takes_down_only_its_warm_worker(tiny, tmp_path, monkeypatch):
    """One worker serves batch 2 twice; a batch of 3 aborts it: that task alone is reported crashed (with the
    worker's exit code and last stderr lines), the next task starts a fresh worker, and a warm worker's output is a
    fresh process's, bit for bit."""
    cfg, _, path = tiny
    monkeypatch.setenv("VIT_SUITE_BACKENDS", ABORTING)
    env = J.thread_env(1)
    for b in (2, 3):
        np.save(tmp_path / f"x{b}.npy", random_images(cfg, b, 0))

    def spec(b):
        return {"backend": "aborting", "weights": str(path), "input": str(tmp_path / f"x{b}.npy"),
                "dtype": "float32", "stages": True, "image_size": None}

    fresh = run_child("forward", spec(2), tmp_path, name="fresh", env=env)
    assert fresh.arrays is not None, fresh.error
    with WarmWorkers(tmp_path, max_workers=2) as workers:
        first = workers.run("forward", spec(2), tmp_path, name="a", env=env)
        again = workers.run("forward", spec(2), tmp_path, name="b", env=env)
        assert workers.started == {"aborting": 1}  # the second task reused the first's worker
        crashed = workers.run("forward", spec(3), tmp_path, name="c", env=env)
        assert crashed.arrays is None and crashed.exit_code == EXIT_CRASH
        assert "worker crashed" in crashed.error and str(-6) in crashed.error  # SIGABRT
        after = workers.run("forward", spec(2), tmp_path, name="d", env=env)
        assert workers.started == {"aborting": 2} and workers.crashed == {"aborting": 1}
    for got in (first, again, after):
        assert got.arrays is not None, got.error
        for k in fresh.arrays:
            np.testing.assert_array_equal(got.arrays[k], fresh.arrays[k], err_msg=k)


def test_the_digits_are_scikit_learns_without_importing_it():
    """`check`'s main process reads the default model's digits from scikit-learn's data file (its import cost
    seconds): the very arrays load_digits gives."""
    from sklearn.datasets import load_digits

    from shared.training.data import _raw_digits

    x, y = _raw_digits()
    d = load_digits()
    np.testing.assert_array_equal(x, (d.images.astype(np.float64) / 16.0)[:, None])
    np.testing.assert_array_equal(y, d.target.astype(np.int64))


def test_versions_scan_every_distribution_only_where_no_name_matches(monkeypatch):
    """A module whose distribution bears its name (torch) or its name plus a suffix (tensorflow from tensorflow-cpu
    or tensorflow) is looked up directly; only a module no distribution is named after reads the map of every
    installed distribution (a scan of seconds, which each child and sweep worker used to pay)."""
    import importlib.metadata as md

    import shared.backend as B

    scans = []
    monkeypatch.setattr(B, "_packages_distributions", lambda: scans.append(1) or {"fake_mod": ["numpy"]})
    B._module_version.cache_clear()
    try:
        got = B.module_versions(["torch", "tensorflow", "fake_mod"])
        assert got["torch"] == md.version("torch") and got["tensorflow"] != "unknown"
        assert scans == [1] and got["fake_mod"] == md.version("numpy")  # the scan, for fake_mod alone
    finally:
        B._module_version.cache_clear()


def test_the_metrics_do_not_depend_on_the_parents_blas_threads():
    """The parent's error metrics (tolerances.stage_metrics, rel_l2) give the same bits with 1 BLAS thread or every
    core (a BLAS dot splits its sum between threads), and match an exactly rounded sum (math.fsum)."""
    import math

    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    e = rng.standard_normal((37, 17, 64))
    a = (e + 1e-6 * rng.standard_normal(e.shape)).astype(np.float32)
    with threadpool_limits(1):
        one = vars(tolerances.stage_metrics("block_0", a, e, 1.0))
    with threadpool_limits(J.cores()):
        every = vars(tolerances.stage_metrics("block_0", a, e, 1.0))
    assert one == every
    d = a.astype(np.float64) - e
    exact = math.sqrt(math.fsum((d * d).ravel())) / math.sqrt(math.fsum((e * e).ravel()))
    assert one["rel_l2"] == tolerances.rel_l2(a, e)
    assert abs(one["rel_l2"] - exact) <= 1e-13 * exact
