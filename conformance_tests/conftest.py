"""Suite-wide setup: the backend matrix.

The `backend` fixture is every registered backend this process can run: the built-ins, their configuration
variants (explicit attention, XLA, PyNative, the expm1 softmax) and any third-party one registered through the
`vit_suite.backends` entry point or VIT_SUITE_BACKENDS. `--backends a,b` narrows it. Keras reads
KERAS_BACKEND once per process, so this process runs Keras on TensorFlow (`keras`, `keras-xla`);
test_keras_backends.py runs the Keras matrix again in a process per other Keras backend (`keras-jax`,
`keras-torch`); Keras on OpenVINO
(`keras-openvino`, inference only) and the deployment variants (shared.backend.DEPLOYMENT: `litert`,
`keras-openvino-ir`, `keras-onnx`, whose every new model is an export taking seconds) are tested by test_artifacts.py,
and join this matrix only when named with --backends. A registered backend that is not installed FAILS its tests: CI must run all of them. `primary_backend` leaves the variants out, for what a
variant shares with its primary by construction (files, validation, the training loop), `variant` is every
registered variant (each is compared with its primary backend), `backend_pair` every unordered pair. The deployment
runtimes (onnxruntime, openvino: inference only, no training hooks) are not in this matrix unless `--backends` names
them: test_deploy.py runs every tiny and seed preset on them.

Import order is deliberate, not luck: TensorFlow imported before MindSpore aborts the process (both register
the same LLVM option), the other order works. The whole suite runs in one process, so MindSpore (when
installed) is imported here, before any test module can import TensorFlow. `vit-suite check` instead runs
each backend in its own process.
"""
import importlib.util
import itertools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "upb")
# The in-process frameworks' thread pools are made once, at their first op, from these variables; a command run
# in-process (train / evaluate / predict: `setdefault` to 1 thread) must not decide them for every later test, or a
# test's numbers would depend on which tests ran before it in this process (under pytest-xdist, on the worker's
# share of the files): pinned to the frameworks' own default, every core.
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
    os.environ.setdefault(_v, str(os.cpu_count() or 1))
# OpenMP threads (torch's) that run out of work sleep instead of spinning: the suite's processes (two pytest-xdist
# workers, the children of the CLI tests) share the cores, and a thread spinning between two tiny ops takes the core
# from the other process. It changes who waits how, not how work is split: the same numbers (torch and MindSpore
# forwards bit-identical), a third of the CPU time for test_torch.py on a loaded machine (21.4 -> 6.8 s); MindSpore's
# and TensorFlow's own thread pools ignore it (test_mindspore.py 58.5 -> 58.4 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if importlib.util.find_spec("mindspore") is not None:
    import mindspore  # noqa: F401  (must precede tensorflow, see above)

import pytest  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):  # `-n N`: each worker gets its own temp folder, so the tests that check
    import atexit                          # that nothing was left in the temp folder see only their own worker's
    import shutil
    import tempfile

    _tmp = tempfile.mkdtemp(prefix=f"vit-suite-tests-{os.environ['PYTEST_XDIST_WORKER']}-")
    os.environ["TMPDIR"] = tempfile.tempdir = _tmp  # child processes inherit TMPDIR
    atexit.register(shutil.rmtree, _tmp, True)

# Where the environment sets PYTHONDONTWRITEBYTECODE (CI's does), every child process the tests start (hundreds:
# the CLI's backends, the Keras matrix runs) compiled the suite's own modules again (about 0.5 CPU s for all of them).
# The first pytest process compiles them once into their __pycache__ folders (git-ignored): the variable only stops
# Python from writing bytecode, every process still reads it. Site-packages hold pip's compiled files already.
if not os.environ.get("PYTEST_XDIST_WORKER"):
    import compileall

    for _pkg in ("shared", "vit_torch", "vit_keras", "vit_mindspore", "conformance_tests"):
        compileall.compile_dir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), _pkg), quiet=2)

# JAX's persistent compilation cache, for this test run only: a folder of its own made by the first pytest process (under
# pytest-xdist the controller, whose environment the workers inherit), removed when it exits, inherited by every child
# (the Keras-on-JAX matrix of test_keras_backends.py and its .keras / .weights.h5 children, the CLI's keras-jax
# children). JAX keeps compiled programs per jitted function object, so every new model (`jax.jit` over a new
# closure) and every `loss_and_grads` call compiled again an XLA program it had already compiled: the same HLO (same
# config, dtype and input shape; the weights are arguments) is now read back. A cached executable is the one XLA
# compiled from that HLO: the same numbers (Keras-on-JAX forwards in three dtypes and gradients bit-identical with
# and without it, in the process that wrote it and in a fresh one). Two processes writing one entry at once is
# harmless: a reader that meets a half-written entry cannot decompress it and compiles instead.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import atexit
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache = tempfile.mkdtemp(prefix="vit-suite-jax-cache-")
    atexit.register(shutil.rmtree, _jax_cache, True)
    # the default (1 s) would skip most of the models' programs; JAX's eager ops (milliseconds each) stay out
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(autouse=True)
def _environment_restored():
    """A command run in-process (`main([...])`) may set process-wide variables (train / evaluate / predict set the
    frameworks' thread counts, OMP_NUM_THREADS=1 by default): later tests' child processes must not inherit them (a
    one-thread reduction order changes low-precision results, e.g. the Keras-on-torch matrix's float16 logits)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


def pytest_addoption(parser):
    parser.addoption("--backends", default=None,
                     help="comma-separated backends to test (default: every registered one: the built-ins, their "
                          "variants and any registered through the 'vit_suite.backends' entry point or "
                          "VIT_SUITE_BACKENDS)")


def _selected(config) -> list[str]:
    from shared.backend import DEPLOYMENT, backend_names, is_runtime, runs_in_this_process

    opt = config.getoption("--backends")
    return opt.split(",") if opt else [n for n in backend_names()
                                       if runs_in_this_process(n) and not is_runtime(n) and n not in DEPLOYMENT]


def pytest_generate_tests(metafunc):
    from shared.backend import variant_of

    names = _selected(metafunc.config)
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", names, scope="session")
    if "primary_name" in metafunc.fixturenames:
        metafunc.parametrize("primary_name", [n for n in names if not variant_of(n)], scope="session")
    if "variant_name" in metafunc.fixturenames:
        metafunc.parametrize("variant_name", [n for n in names if variant_of(n)], scope="session")
    if "backend_pair" in metafunc.fixturenames:
        pairs = list(itertools.combinations(names, 2))
        metafunc.parametrize("backend_pair", pairs, ids=[f"{a}-{b}" for a, b in pairs], scope="session")


#: the test files that take longest in a worker, longest first (their tests' seconds plus their children's, from the
#: CI line's --durations and per-file CPU times; an estimate: a file missing here only starts later).
#: Under `-n 2 --dist loadfile --no-loadscope-reorder` pytest-xdist hands out whole files in collection order, so
#: these start first and the short files fill in at the end (longest-first keeps both workers busy to the end;
#: xdist's own order, by number of tests, left the minutes-long subprocess files for last). The other files follow
#: by number of tests. Only the order changes: every file still runs whole in one worker.
HEAVIEST_FIRST = ("test_keras_backends.py", "test_cli.py", "test_training.py", "test_conformance.py", "test_sweep.py",
                  "test_family_hf.py", "test_family_timm.py", "test_keras.py", "test_ecosystems_keras_mindspore.py",
                  "test_oracles.py", "test_ecosystems.py", "test_grad.py", "test_mindspore.py", "test_importers.py")


class _HeaviestFilesFirst:
    """The files in the order pytest-xdist hands them out (HEAVIEST_FIRST, then by number of tests), after pytest's
    own reordering (which interleaves the files by the session-scoped backend parameter) and after deselection."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        counts: dict[str, int] = {}
        for item in items:
            counts[item.path.name] = counts.get(item.path.name, 0) + 1
        first = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
        items.sort(key=lambda item: (first.get(item.path.name, len(first)), -counts[item.path.name]))  # stable


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # an xdist worker collects; one process keeps pytest's own order
        config.pluginmanager.register(_HeaviestFilesFirst(), "vit-suite-heaviest-files-first")

@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    """A variant's runs on the 12-block seed T2T model are slow-marked: in the CI-sized set the variants run on the
    tiny presets, which cover every config option (their graph and XLA compiles of the seed model take seconds per
    dtype and input shape); the primary backends run the seed model there too, and `-m slow` runs everything.
    The family tiny presets (one option each, on top of what the first four cover) run the float32 matrix at
    batch 2 only (normal, zeros and large inputs; the variants normal inputs only): batch sizes 1 and 3 test shape
    handling, which the first four tiny presets cover, and each new shape is another graph / XLA / jit compile.
    A variant's gradients on the family presets are slow too (its primary's run in the CI-sized set). The head-only
    tiny presets (HEAD_TINY: the same blocks, another pooling) run on the primary backends only, at batch 2; so do
    the timm Eva ones (EVA_TINY: their options are in the layers the variants share)."""
    from shared.backend import variant_of
    from shared.testing import EVA_TINY, FAMILY_TINY, HEAD_TINY, SEED_FAST

    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        variant = variant_of(params.get("backend_name", ""))
        ci = item.get_closest_marker("ci_backends")  # the backends a test runs on in the CI-sized set; others slow
        name = params.get("backend_name", params.get("primary_name"))
        if ci is not None and name is not None and name not in ci.args:
            item.add_marker(pytest.mark.slow)
        if variant and params.get("preset") in SEED_FAST:
            item.add_marker(pytest.mark.slow)
        if variant and params.get("name") in FAMILY_TINY:  # test_grad: a variant's gradients on the family presets
            item.add_marker(pytest.mark.slow)
        if variant and (params.get("preset") in HEAD_TINY + EVA_TINY or params.get("name") in HEAD_TINY + EVA_TINY):
            item.add_marker(pytest.mark.slow)
        if params.get("preset") in FAMILY_TINY + HEAD_TINY and "batch" in params and (
                params["batch"] != 2 or params.get("kind") == "uniform" or (variant and params.get("kind") != "normal")):
            item.add_marker(pytest.mark.slow)



def _get(name: str):
    from shared.backend import get_backend, import_frameworks_in_safe_order, is_available

    if not is_available(name):
        pytest.fail(f"backend {name!r} is not installed; install it (pip install -e '.[all]') "
                    f"or deselect it with --backends")
    import_frameworks_in_safe_order([name])
    return get_backend(name)


@pytest.fixture(scope="session")
def backend(backend_name):
    """The backend under test."""
    return _get(backend_name)


@pytest.fixture(scope="session")
def primary_backend(primary_name):
    """A backend that is not a configuration variant of another."""
    return _get(primary_name)


@pytest.fixture(scope="session")
def variant(variant_name):
    """A configuration variant of a backend (its primary is `shared.backend.variant_of(name)`)."""
    return _get(variant_name)


@pytest.fixture(scope="session")
def backends_of_pair(backend_pair):
    return tuple(_get(n) for n in backend_pair)
