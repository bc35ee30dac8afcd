"""Where the tool's child processes keep their frameworks' compiled programs between runs (persistent compile
caches), so that a second `check` of the same model does not compile it again.

A cached program is the one the framework compiled before, loaded instead of compiled: the outputs are the same
bits. What a framework's own cache key leaves out is put in the directory's name (`host_key`): the CPU (its model
and instruction-set flags: a program compiled with AVX-512 must not run on a CPU without it), the cores the process
may use and the thread settings the tool gives its children. A home directory shared between different machines
then holds one cache per kind of machine.

VIT_SUITE_CACHE_DIR sets the root (default `$XDG_CACHE_HOME/vit-suite`, else `~/.cache/vit-suite`); `off` (or an
empty value) turns the caches off. Only the tool's own child processes use them (vit_keras.backend), never a
user's process that imports the suite as a library.
"""
from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

ENV_VAR = "VIT_SUITE_CACHE_DIR"
#: what VIT_SUITE_CACHE_DIR may say to turn the caches off
OFF = ("", "0", "off", "none", "false")
#: the environment variables whose values a compiled program may depend on beyond the framework's own key
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "TF_NUM_INTEROP_THREADS", "XLA_FLAGS")


def cache_root() -> Path | None:
    """The caches' root directory, or None when VIT_SUITE_CACHE_DIR turns them off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vit-suite"


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags (the first processor's block of /proc/cpuinfo; elsewhere what the
    platform module says)."""
    try:
        with open("/proc/cpuinfo") as f:
            block = f.read().split("\n\n", 1)[0]
        wanted = ("vendor_id", "model name", "flags", "features", "cpu family", "model", "cpu part", "cpu variant")
        return "\n".join(line for line in block.splitlines() if line.split(":")[0].strip().lower() in wanted)
    except OSError:
        return platform.processor()


def host_key() -> str:
    """16 hex digits naming the kind of machine and the thread settings a compiled program may depend on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    parts = [platform.machine(), platform.system(), _cpu_identity(), f"cores={os.cpu_count()}/{usable}"]
    parts += [f"{k}={os.environ.get(k, '')}" for k in THREAD_VARS]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_dir(kind: str) -> Path | None:
    """The directory of one framework's cache (`kind`, e.g. "jax-0.6.2"), created; None when the caches are off or
    the directory cannot be created (a read-only home: the framework then compiles as it would without one)."""
    root = cache_root()
    if root is None:
        return None
    path = root / f"{kind}-{host_key()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None
