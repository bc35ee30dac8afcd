"""`vit-suite check`: identical weights and inputs into every backend, each in its own process.

Each backend runs as `python -m shared.cli forward WEIGHTS --backend B --stages` in a child
process (TensorFlow imported before MindSpore aborts a process, and the frameworks' thread
pools should not share one), writes every named stage to an .npz, and this process compares
each stage with the float64 reference and pairwise across backends under shared/tolerances.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import reference, tolerances
from .config import ViTConfig


@dataclass
class BackendRun:
    backend: str
    stages: dict[str, np.ndarray] | None = None
    verdict: tolerances.Verdict | None = None
    error: str | None = None
    unsupported: bool = False
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.unsupported:
            return "unsupported"
        if self.error:
            return "error"
        return "pass" if self.verdict.passed else "FAIL"


@dataclass
class PairResult:
    a: str
    b: str
    worst_stage: str
    rel_l2: float
    bound: float
    first_failure: str | None

    @property
    def passed(self) -> bool:
        return self.first_failure is None


@dataclass
class CheckResult:
    config: ViTConfig
    dtype: str
    images: np.ndarray
    ref64: dict[str, np.ndarray]
    ref_lowp: dict[str, np.ndarray] | None
    runs: list[BackendRun]
    pairs: list[PairResult]
    labels: np.ndarray | None = None

    @property
    def passed(self) -> bool:
        return all(r.status in ("pass", "unsupported") for r in self.runs) and all(p.passed for p in self.pairs)

    @property
    def any_error(self) -> bool:
        return any(r.status == "error" for r in self.runs)

    def to_json(self) -> dict:
        def stage_rows(v):
            return [dict(stage=s.stage, rel_l2=s.rel_l2, bound=s.bound, max_abs=s.max_abs, max_rel=s.max_rel,
                         cosine=s.cosine, passed=s.passed) for s in v.stages]

        out = {
            "config": self.config.to_dict(), "dtype": self.dtype, "batch": int(self.images.shape[0]),
            "image_size": list(self.images.shape[2:]), "passed": self.passed,
            "policy": {"f32_safety": tolerances.F32_SAFETY, "lowp_multiplier": tolerances.LOWP_MULTIPLIER,
                       "lowp_floor_units": tolerances.LOWP_FLOOR_UNITS},
            "backends": {}, "pairs": [p.__dict__ | {"passed": p.passed} for p in self.pairs],
        }
        for r in self.runs:
            d = {"status": r.status, "seconds": r.seconds, "meta": r.meta, "error": r.error}
            if r.verdict is not None:
                f = r.verdict.first_failure
                d.update(stages=stage_rows(r.verdict), top1_agreement=r.verdict.top1_agreement,
                         first_failure=f.stage if f else None)
                if self.labels is not None and r.stages is not None and self.config.num_classes > 1:
                    d["accuracy"] = float(np.mean(np.argmax(r.stages["logits"], 1) == self.labels))
                    d["predictions"] = np.argmax(r.stages["logits"], 1).tolist()
            out["backends"][r.backend] = d
        return out


def run_backend(backend: str, weights: Path, images_path: Path, dtype: str, workdir: Path,
                image_size: tuple[int, int] | None = None, timeout: float = 1800) -> BackendRun:
    """Run one backend in a child process and read back its stages."""
    out = workdir / f"{backend}.npz"
    cmd = [sys.executable, "-m", "shared.cli", "forward", str(weights), "--backend", backend,
           "--input", str(images_path), "--output", str(out), "--stages", "--dtype", dtype]
    if image_size:
        cmd += ["--image-size", f"{image_size[0]}x{image_size[1]}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return BackendRun(backend, error=f"timed out after {timeout:.0f} s", seconds=time.perf_counter() - t0)
    run = BackendRun(backend, seconds=time.perf_counter() - t0)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:]) or f"exit code {proc.returncode}"
        run.error = tail
        run.unsupported = proc.returncode == 6  # shared.cli.EXIT_UNSUPPORTED: the dtype, said clearly
        return run
    with np.load(out, allow_pickle=False) as z:
        run.stages = {k: z[k] for k in z.files if not k.startswith("__")}
        if "__meta__" in z.files:
            run.meta = json.loads(str(z["__meta__"]))
    return run


def compare_pair(cfg: ViTConfig, a: BackendRun, b: BackendRun) -> PairResult:
    """Two passing backends are within bound_a + bound_b of each other at every stage."""
    worst, worst_ratio, first = None, -1.0, None
    bounds_a = {s.stage: s.bound for s in a.verdict.stages}
    bounds_b = {s.stage: s.bound for s in b.verdict.stages}
    for stage in cfg.stage_names():
        if stage not in bounds_a:
            continue
        err = tolerances.rel_l2(a.stages[stage], b.stages[stage])
        bound = bounds_a[stage] + bounds_b[stage]
        if err / bound > worst_ratio:
            worst, worst_ratio = (stage, err, bound), err / bound
        if first is None and not err <= bound:
            first = stage
    return PairResult(a.backend, b.backend, worst[0], worst[1], worst[2], first)


def run_check(cfg: ViTConfig, weights: Path, images: np.ndarray, backends: list[str], dtype: str = "float32",
              state: dict | None = None, labels: np.ndarray | None = None,
              on_event: Callable[[str, str], None] | None = None) -> CheckResult:
    """Reference + every backend (each in its own process) + pairwise comparison."""
    notify = on_event or (lambda who, what: None)
    if state is None:
        from .weights import load

        state = load(weights)[1]
    image_size = tuple(images.shape[2:])
    notify("reference", "float64 reference")
    ref64 = reference.forward(cfg, state, images)
    ref_lowp = reference.forward(cfg, state, images, dtype=dtype) if dtype != "float32" else None
    runs: list[BackendRun] = []
    with tempfile.TemporaryDirectory(prefix="vit-suite-check-") as tmp:
        tmp = Path(tmp)
        images_path = tmp / "images.npy"
        np.save(images_path, images.astype(np.float32))
        for b in backends:
            notify(b, "loading and running")
            run = run_backend(b, Path(weights), images_path, dtype, tmp,
                              image_size if image_size != tuple(cfg.image_size) else None)
            if run.stages is not None:
                run.verdict = tolerances.judge(cfg, dtype, run.stages, ref64, ref_lowp)
            notify(b, run.status)
            runs.append(run)
    ok = [r for r in runs if r.verdict is not None]
    pairs = [compare_pair(cfg, ok[i], ok[j]) for i in range(len(ok)) for j in range(i + 1, len(ok))]
    return CheckResult(cfg, dtype, images, ref64, ref_lowp, runs, pairs, labels)
