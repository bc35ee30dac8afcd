"""test_keras.py and the Keras matrix under every Keras backend: this process runs Keras on TensorFlow (conftest), one
test per other Keras backend runs them again in a process of its own (`keras-jax`, `keras-torch`), and one checks that
a file written under each Keras backend loads bit-exactly under the other two. A file of its own, apart from
test_keras.py: these are the suite's longest tests (the JAX matrix takes minutes), and pytest-xdist's
`--dist loadfile` gives each file whole to one worker, so here they run beside test_keras.py's in the other.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import keras  # noqa: E402

from . import PYTEST_CHILD

ROOT = Path(__file__).resolve().parents[1]
#: the suite's backend for each Keras backend
TARGETS = {"tensorflow": "keras", "jax": "keras-jax", "torch": "keras-torch"}
OUTER = keras.backend.backend() == "tensorflow"  # the outer run starts the others; inside them this would recurse


@pytest.mark.skipif(not OUTER, reason="run by the TensorFlow process, which starts one process per Keras backend")
@pytest.mark.parametrize("keras_backend", ["jax", "torch"])
def test_the_keras_matrix_under_every_keras_backend(keras_backend):
    """test_keras.py, the forward and gradient matrix and the training checks, for `keras-jax` and `keras-torch`,
    each in a process whose Keras runs on that backend."""
    here = Path(__file__).parent
    target = TARGETS[keras_backend]
    r = subprocess.run([*PYTEST_CHILD, "-m", "not slow",
                        str(here / "test_keras.py"), str(here / "test_conformance.py"), str(here / "test_grad.py"),
                        str(here / "test_training.py::test_short_training_beats_chance"),
                        str(here / "test_training.py::test_shipped_model_reproduces_recorded_accuracy"),
                        "--backends", target,
                        # the family's finite-difference, fit and decay-mask checks stay in the TensorFlow run
                        # (test_grad's oracle comparison covers the family's gradients, and its optimiser-step test
                        # the optimisers, under every Keras backend)
                        "-k", "not variant_agrees and not steps_agree and not oracle_matches and not grad_command and "
                              "not finite_differences_of_the_reference and not family_models_train and "
                              "not family_optimiser_step"],
                       capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND=keras_backend),
                       timeout=1800, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) >= 60, r.stdout[-2000:]  # the whole matrix ran, not a stray subset


@pytest.mark.skipif(not OUTER, reason="run by the TensorFlow process, which starts the JAX and torch ones")
def test_files_written_under_one_keras_backend_load_bit_exactly_under_the_others(tmp_path):
    """.keras and .weights.h5 of every keras_files.PRESETS model (tiny_pretrain and the family presets) from each of
    TensorFlow, JAX and torch, read by the other two: canonical weights bit-exact, forward within the float32 bound
    (conformance_tests/keras_files.py)."""
    from . import keras_files

    logs = tmp_path / "logs"  # the children's stderr (a pipe nobody reads could fill and block them); read globs
    logs.mkdir()              # tmp_path's own files only

    def start(keras_backend, *actions):
        err = open(logs / f"{keras_backend}.{'-'.join(actions)}.err", "w")
        proc = subprocess.Popen([sys.executable, "-m", "conformance_tests.keras_files", str(tmp_path), *actions],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=dict(os.environ, KERAS_BACKEND=keras_backend), cwd=str(ROOT))
        proc.err = err
        return proc

    def finish(proc, keras_backend, stdin=""):
        try:
            out, _ = proc.communicate(stdin, timeout=600)
        finally:
            proc.kill()
            proc.err.close()
        assert proc.returncode == 0, (logs / Path(proc.err.name).name).read_text()[-3000:]
        out = json.loads(out.strip().splitlines()[-1])
        assert out["keras_backend"] == keras_backend
        return out["read"]

    # one JAX process writes its files, waits while TensorFlow (here) and torch write theirs, then reads the others'
    # (one JAX start-up, not two)
    jax = start("jax", "write", "wait", "read")
    stuck = threading.Timer(1200, jax.kill)  # a JAX child that never says "written" fails the test, not hangs it
    stuck.start()
    try:
        keras_files.write(tmp_path)                  # TensorFlow, in this process
        assert jax.stdout.readline().strip() == "written", (logs / Path(jax.err.name).name).read_text()[-3000:]
        results = {"torch": finish(start("torch", "write", "read"), "torch")}  # reads the TensorFlow and JAX files
        results["jax"] = finish(jax, "jax", "read\n")  # reads the TensorFlow and torch files
    finally:
        stuck.cancel()
        jax.kill()
    results["tensorflow"] = keras_files.read(tmp_path)   # reads the JAX and torch files
    for reader, files in results.items():
        others = {kb for kb in TARGETS if kb != reader}
        expected = {f"{kb}.{p}{suffix}" for kb in others for p in keras_files.PRESETS for suffix in keras_files.SUFFIXES}
        assert set(files) == expected, (reader, sorted(set(files) ^ expected))
        for name, res in files.items():
            assert res["bit_exact"] and res["conforms"], (reader, name, res)


@pytest.mark.skipif(not OUTER, reason="one check, run from the TensorFlow process")
def test_a_process_runs_keras_on_one_backend_and_refuses_another_by_name():
    """Making Keras backend objects starts no framework (the tool's parent lists every Keras target's modes); the
    first model fixes the process's Keras backend, and a model for another is refused with both named."""
    code = (
        "import sys\n"
        "from shared.backend import get_backend\n"
        "from shared.errors import BackendError\n"
        "from shared.presets import get_preset\n"
        "jx, tf = get_backend('keras-jax'), get_backend('keras')\n"
        "assert 'keras' not in sys.modules, 'making a backend object imported keras'\n"
        "jx.build(get_preset('tiny'))\n"
        "try:\n"
        "    tf.build(get_preset('tiny'))\n"
        "except BackendError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('a TensorFlow model was built in a process whose Keras runs on JAX')\n")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       cwd=str(ROOT))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "'keras' needs Keras on tensorflow, but this process already runs Keras on jax" in r.stdout


#: as the tool's children run Keras on torch (VIT_SUITE_CHILD: torch's dynamo deferred,
#: vit_keras.backend.KERAS_DEFERRED_IMPORTS)
_DYNAMO = """
import json, sys, types
import numpy as np
from shared.backend import get_backend
from shared.testing import assert_conforms, case
be = get_backend("keras-torch")
cfg, state, x = case("tiny")
v = assert_conforms("tiny", "float32", be.forward(be.build(cfg, state), x))
import keras, torch
keras.backend.clear_session()  # as a warm worker does after each task: Keras resets dynamo there
out = {"dynamo_ran": "torch._dynamo.convert_frame" in sys.modules}
# a seeded draw goes through the one function Keras wraps in dynamo's `disable` (torch_seed_generator)
draw = lambda: keras.ops.convert_to_numpy(keras.random.normal((6,), seed=3)).tolist()
out["before"] = draw()
compiled = torch.compile(lambda t: t + keras.random.normal((6,), seed=3), backend="eager")
out["compiled"] = compiled(torch.zeros(6)).numpy().tolist()
keras.backend.clear_session()  # now the real dynamo's reset
out["after"] = draw()
out["real_after_use"] = (type(sys.modules["torch._dynamo"]) is types.ModuleType
                         and torch._dynamo is sys.modules["torch._dynamo"])
print(json.dumps(out))
"""


@pytest.mark.skipif(not OUTER, reason="one check, run from the TensorFlow process")
def test_keras_on_torch_defers_dynamo_in_the_tools_processes_and_keeps_its_numbers():
    """In the tool's own processes Keras-on-torch imports torch's compiler (dynamo, 1.2 CPU s) on first use only.
    The forward conforms with dynamo never run, nor imported by Keras' `clear_session` (which resets it); a seeded
    draw (through the function Keras wraps in dynamo's
    `disable`) gives the same bits before dynamo, under torch.compile (which imports the real dynamo) and after."""
    env = dict(os.environ, KERAS_BACKEND="torch", VIT_SUITE_CHILD="1")
    r = subprocess.run([sys.executable, "-c", _DYNAMO], capture_output=True, text=True, timeout=300,
                       cwd=str(ROOT), env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["dynamo_ran"] is False
    assert out["before"] == out["compiled"] == out["after"] and len(set(out["before"])) == 6
    assert out["real_after_use"]
