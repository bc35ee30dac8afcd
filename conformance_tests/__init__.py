"""The conformance suite (conftest.py sets up the backend matrix)."""
import sys

#: how the suite starts a pytest run in a process of its own (the Keras matrix under JAX and under torch, a
#: third-party backend's matrix): without the plugins none of its tests use. Hypothesis' plugin alone imports
#: Hypothesis, 1.3 s of every start-up (test_hostile.py, which uses it, runs in the suite's own process).
PYTEST_CHILD = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                "-p", "no:benchmark", "-p", "no:anyio", "-p", "no:xdist"]
