"""Suite-wide setup.

Import order is deliberate, not luck: TensorFlow imported before MindSpore aborts the
process (both register the same LLVM option), the other order works. The whole suite
runs in one process, so MindSpore (when installed) is imported here, before any test
module can import TensorFlow. `vit-suite check` instead runs each backend in its own process.
"""
import importlib.util
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if importlib.util.find_spec("mindspore") is not None:
    import mindspore  # noqa: F401  (must precede tensorflow, see above)

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--backends", default=None,
                     help="comma-separated backends to test (default: every registered one: the built-ins and any "
                          "registered through the 'vit_suite.backends' entry point or VIT_SUITE_BACKENDS)")


def pytest_generate_tests(metafunc):
    if "backend_name" in metafunc.fixturenames:
        from shared.backend import backend_names

        opt = metafunc.config.getoption("--backends")
        names = opt.split(",") if opt else backend_names()
        metafunc.parametrize("backend_name", names, scope="session")


@pytest.fixture(scope="session")
def backend(backend_name):
    """The backend under test. A registered backend that is not installed FAILS: CI must run all of them."""
    from shared.backend import get_backend, is_available

    if not is_available(backend_name):
        pytest.fail(f"backend {backend_name!r} is not installed; install it (pip install -e '.[all]') "
                    f"or deselect it with --backends")
    return get_backend(backend_name)
