"""How many child processes run at once, and how many threads each gets: one place for `check`, `sweep`, `grad`.

The thread count of a child fixes its frameworks' reduction order, so it must not depend on how many children run
beside it: `child_threads()` depends on the machine's core count only (cores // CHILD_SLOTS, at least 1), and a
command run with `--jobs 1` gives the same numbers, bit for bit, as one run with `--jobs 4`. How many run at once
(`concurrent_children`) is bounded by the cores, by the memory /proc/meminfo says is available, and by the work.
"""
from __future__ import annotations

import os

from .config import ViTConfig

GIB = 1 << 30
#: children one machine's cores are shared between by default: each gets cores // CHILD_SLOTS threads
CHILD_SLOTS = 4
#: what a child holds before any weights: the interpreter and one framework (TensorFlow's is the largest)
FRAMEWORK_BYTES = 1.5 * GIB


def cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_threads() -> int:
    """The default threads of one child: the cores shared among CHILD_SLOTS children (never fewer than 1).
    Fixed per machine, whatever `--jobs` says, so a parallel run's numbers equal a sequential run's."""
    return max(1, cores() // min(cores(), CHILD_SLOTS))


def thread_env(threads: int) -> dict[str, str]:
    """The environment that gives a child's frameworks `threads` threads (OpenMP, MKL, TensorFlow, torch)."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1"}


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no /proc)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def child_memory(cfg: ViTConfig, batch: int, image_size: tuple[int, int] | None = None, grad: bool = False) -> int:
    """Bytes one child may hold at its peak: the framework, the weights (file, float64 reference, backend copy,
    gradients) and the float64 activations of every recorded stage. An estimate (declared to Ray by `sweep`)."""
    from .weights import parameter_count

    h, w = image_size or cfg.image_size
    run_cfg = cfg if (h, w) == tuple(cfg.image_size) else cfg.with_image_size((h, w))
    params = parameter_count(cfg)
    tokens, width = run_cfg.num_tokens, run_cfg.width
    per_block = batch * tokens * (6 * width + 2 * run_cfg.num_heads * tokens) * 8
    return int(FRAMEWORK_BYTES + params * (4 + 8 + 8 + (16 if grad else 4)) + per_block * (run_cfg.depth + 4))


def concurrent_children(work: int, per_child_bytes: int, jobs: int | None = None, threads: int | None = None) -> int:
    """How many of `work` children run at once: `jobs` if given, else as many as the cores hold at `threads` each
    and the available memory holds at `per_child_bytes` each; at least 1, at most `work`."""
    if jobs is None:
        jobs = max(1, cores() // (threads or child_threads()))
        mem = available_memory()
        if mem is not None:
            jobs = min(jobs, max(1, int(mem // max(per_child_bytes, 1))))
    return max(1, min(jobs, work))
