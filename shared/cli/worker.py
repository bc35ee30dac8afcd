"""The one child-process entry point: every backend the tool runs, it runs here, one backend per process.

    python -m shared.cli.worker TASK --spec SPEC.json --out OUT.npz

TASK is `forward` (every named stage of one backend's forward), `grad` (loss, gradients and one SGD and one
AdamW step), `bench` (timed forwards in one mode) or `source` (the source library's own output, for
`check --against`). Why a process each: TensorFlow imported before
MindSpore aborts a process, the frameworks' thread pools should not share one, and the peak memory
of a benchmark must belong to that run alone (see peak_rss_mb).

The parent calls `run_child(task, spec, workdir, name=...)`. The child writes its arrays and a JSON `__meta__`
to OUT, or exits with the code of the error it met (shared/errors.py): 6 means the backend does not support
what was asked (a dtype, a training or benchmark hook), which the commands show as "unsupported".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import weights as W
from ..backend import backend_env, get_backend, import_frameworks_in_safe_order
from ..errors import EXIT_CRASH, EXIT_UNSUPPORTED, SuiteError, UnsupportedError, UsageError
from .common import load_npy, read_npz, write_npz

#: environment of every child: quiet TensorFlow and Python warnings (stderr carries the error, if any)
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}


@dataclass
class ChildResult:
    arrays: dict[str, np.ndarray] | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None  # the last lines of the child's stderr
    exit_code: int = 0
    seconds: float = 0.0

    @property
    def unsupported(self) -> bool:
        return self.exit_code == EXIT_UNSUPPORTED


def run_child(task: str, spec: dict, workdir: Path, *, name: str, timeout: float = 1800,
              env: dict[str, str] | None = None) -> ChildResult:
    """Run one task in a fresh Python process; `name` keeps the files of several children in `workdir` apart.

    The child gets the environment its backend needs (`shared.backend.backend_env`: KERAS_BACKEND for a Keras
    backend), then `env`.
    """
    spec_path, out = Path(workdir) / f"{name}.spec.json", Path(workdir) / f"{name}.npz"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "shared.cli.worker", task, "--spec", str(spec_path), "--out", str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **CHILD_ENV, **backend_env(spec["backend"]), **(env or {})})
    except subprocess.TimeoutExpired:
        return ChildResult(error=f"timed out after {timeout:.0f} s", exit_code=EXIT_CRASH,
                           seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:]) or f"exit code {proc.returncode}"
        return ChildResult(error=tail, exit_code=proc.returncode, seconds=seconds)
    arrays, meta = read_npz(out)
    return ChildResult(arrays, meta, seconds=seconds)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    /proc's VmHWM belongs to the address space, which starts afresh at exec; getrusage's ru_maxrss does not
    (Linux keeps resource usage across execve), so in a child it reports at least the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; no /proc elsewhere


# ------------------------------------------------------------------------------------ the tasks
def run_forward(backend: str, weights: str | Path, input_path: str | Path, dtype: str = "float32",
                image_size: tuple[int, int] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Canonical weights built in one backend, run on an NCHW .npy: (every named stage, timings).

    The `forward` task of `check`, and `vit-suite forward` itself.
    """
    import_frameworks_in_safe_order([backend])
    be = get_backend(backend)
    be.check_dtype(dtype)  # unsupported: said before any work is done
    cfg, state = W.load(weights)
    x = load_npy(str(input_path), "--input")
    if x.shape[1] != cfg.in_chans:
        raise UsageError(f"--input {input_path}: {x.shape[1]} channels, model expects {cfg.in_chans} (NCHW)")
    size = tuple(image_size or x.shape[2:])
    if size != tuple(cfg.image_size):
        cfg = cfg.with_image_size(size)
    t0 = time.perf_counter()
    model = be.build(cfg, state, dtype=dtype)
    t1 = time.perf_counter()
    out = be.forward(model, x)
    t2 = time.perf_counter()
    return out, {"backend": backend, "dtype": dtype, "build_s": t1 - t0, "forward_s": t2 - t1,
                 "versions": be.versions()}


def forward_task(spec: dict) -> tuple[dict, dict]:
    out, meta = run_forward(spec["backend"], spec["weights"], spec["input"], spec["dtype"],
                            tuple(spec["image_size"]) if spec.get("image_size") else None)
    return (out if spec.get("stages", True) else {"logits": out["logits"]}), meta


def grad_task(spec: dict) -> tuple[dict, dict]:
    """Loss and gradients (dtype float64: the oracle's), and for float32 the state after each policy step."""
    from ..training.grad import ADAM_BETAS, ADAM_EPS, STEP_HPARAMS

    import_frameworks_in_safe_order([spec["backend"]])
    be = get_backend(spec["backend"])
    cfg, state = W.load(spec["weights"])
    with np.load(spec["inputs"], allow_pickle=False) as z:
        images, labels, smoothing = z["images"], z["labels"], float(z["label_smoothing"])
    t0 = time.perf_counter()
    loss, grads = be.loss_and_grads(cfg, state, images, labels, smoothing, dtype=spec["dtype"])
    arrays = {f"grad/{k}": np.asarray(v) for k, v in grads.items()}
    if spec["dtype"] != "float64":
        for kind, hp in STEP_HPARAMS.items():
            new = be.optimizer_step(cfg, state, images, labels, kind, lr=hp["lr"], weight_decay=hp["weight_decay"],
                                    label_smoothing=smoothing, betas=ADAM_BETAS, eps=ADAM_EPS)
            arrays.update({f"{kind}/{k}": v for k, v in new.items()})
    arrays["loss"] = np.float64(loss)
    return arrays, {"backend": spec["backend"], "dtype": spec["dtype"], "seconds": time.perf_counter() - t0}


def bench_task(spec: dict) -> tuple[dict, dict]:
    """Timed forwards of one backend in one mode at each batch size: rows of figures."""
    from ..bench import vit_flops
    from ..presets import get_preset

    import_frameworks_in_safe_order([spec["backend"]])
    be = get_backend(spec["backend"])
    cfg = get_preset(spec["preset"])
    rows = []
    for batch in spec["batch"]:
        r = be.bench(cfg, batch=batch, dtype=spec["dtype"], mode=spec["mode"], n_warmup=2, n_iter=spec["iters"])
        r.update(backend=spec["backend"], mode=spec["mode"], dtype=spec["dtype"], batch=batch, preset=cfg.name,
                 gflops_per_s=vit_flops(cfg) * batch / r["median_s"] / 1e9)
        rows.append(r)
    peak_mb = peak_rss_mb()
    for r in rows:
        r["peak_rss_mb"] = peak_mb
    return {}, {"rows": json.loads(json.dumps(rows, default=str))}


def source_task(spec: dict) -> tuple[dict, dict]:
    """The source library's own output for `check --against` (shared/convert/sources.py)."""
    from ..backend import module_versions
    from ..config import ViTConfig
    from ..convert.sources import run_source, source_backend, source_library

    import_frameworks_in_safe_order([source_backend(spec["format"])])
    images = load_npy(spec["input"], "--input")
    out = run_source(spec["format"], spec["src"], images, ViTConfig.from_json(spec["config"]))
    library = source_library(spec["format"])
    framework = {"keras": "keras", "mindspore": "mindspore"}.get(source_backend(spec["format"]), "torch")
    return {"output": out}, {"library": library, "versions": module_versions([library, framework])}


TASKS = {"forward": forward_task, "grad": grad_task, "bench": bench_task, "source": source_task}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.cli.worker", description=__doc__.split("\n")[0])
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--spec", required=True, help="JSON file with the task's arguments")
    p.add_argument("--out", required=True, help=".npz the results are written to")
    args = p.parse_args(argv)
    try:
        arrays, meta = TASKS[args.task](json.loads(Path(args.spec).read_text()))
        write_npz(args.out, arrays, meta, as_float32=False)  # the oracle's gradients stay float64
    except SuiteError as e:
        label = "unsupported" if isinstance(e, UnsupportedError) else "error"
        print(f"{label}: {e}", file=sys.stderr)
        return e.exit_code
    except Exception:  # a backend crashed: the traceback's last lines reach the parent's table
        traceback.print_exc()
        return EXIT_CRASH
    return 0


if __name__ == "__main__":
    sys.exit(main())
