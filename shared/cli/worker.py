"""The one child-process entry point: every backend the tool runs, it runs here, one backend per process.

    python -m shared.cli.worker TASK --spec SPEC.json --out OUT.npz

TASK is `forward` (every named stage of one backend's forward), `grad` (loss, gradients and one SGD and one
AdamW step), `bench` (timed forwards in one mode) or `source` (the source library's own output, for
`check --against`). Why a process each: TensorFlow imported before MindSpore aborts a process, the frameworks'
thread pools should not share one, and the peak memory of a benchmark must belong to that run alone (see
peak_rss_mb). `python -m shared.cli.worker serve [--backend NAME]` is a warm worker instead: it runs such tasks one
after another for one backend (`WarmWorkers`, what `sweep` uses), paying the framework's start-up once (with
--backend before its first task: `WarmWorkers.prestart`), and building (and compiling) a model once per
architecture and dtype (`_KeptModel`). A child ends without Python's teardown (`exit_process`).

The parent calls `run_child(task, spec, workdir, name=...)`, or runs several at once through a `ChildPool`. The
child writes its arrays and a JSON `__meta__` to OUT, or exits with the code of the error it met
(shared/errors.py): 6 means the backend does not support what was asked (a dtype, a training or benchmark hook),
which the commands show as "unsupported".
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import select
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import weights as W
from ..backend import Backend, backend_env, get_backend, import_frameworks_in_safe_order
from ..errors import EXIT_CRASH, EXIT_UNSUPPORTED, SuiteError, UnsupportedError, UsageError
from .common import exit_process, load_npy, read_npz, write_npz

#: environment of every child: quiet TensorFlow and Python warnings (stderr carries the error, if any), and
#: VIT_SUITE_CHILD: a process of the tool's own, which may leave out what only a user's session needs
#: (vit_keras.backend.KERAS_UNUSED_IMPORTS)
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore", "VIT_SUITE_CHILD": "1"}


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


def _task_files(workdir: Path, name: str, spec: dict) -> tuple[Path, Path]:
    """A task's spec, written to NAME.spec.json in `workdir`, and the .npz its child writes the results to."""
    spec_path, out = Path(workdir) / f"{name}.spec.json", Path(workdir) / f"{name}.npz"
    spec_path.write_text(json.dumps(spec))
    return spec_path, out


def run_child(task: str, spec: dict, workdir: Path, *, name: str, timeout: float = 1800,
              env: dict[str, str] | None = None, procs: "ChildPool | None" = None) -> ChildResult:
    """Run one task in a fresh Python process; `name` keeps the files of several children in `workdir` apart.

    The child gets the environment its backend needs (`shared.backend.backend_env`: KERAS_BACKEND for a Keras
    backend), then `env`. `procs`: the pool whose `kill()` ends this child early.
    """
    spec_path, out = _task_files(workdir, name, spec)
    cmd = [sys.executable, "-m", "shared.cli.worker", task, "--spec", str(spec_path), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **CHILD_ENV, **backend_env(spec["backend"]), **(env or {})})
    if procs is not None:
        procs._started(proc)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return ChildResult(error=f"timed out after {timeout:.0f} s", exit_code=EXIT_CRASH,
                           seconds=time.perf_counter() - t0)
    finally:
        if procs is not None:
            procs._ended(proc)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-6:]) or f"exit code {proc.returncode}"
        return ChildResult(error=tail, exit_code=proc.returncode, seconds=seconds)
    arrays, meta = read_npz(out)
    return ChildResult(arrays, meta, seconds=seconds)


def run_shared(task: str, specs: list[dict], workdir: Path, *, timeout: float = 1800,
               env: dict[str, str] | None = None, procs: "ChildPool | None" = None) -> Iterator[ChildResult]:
    """Each spec's task, one after another, in one child process (a `serve` worker) with every backend's
    environment (`shared.backend.process_groups` says which agree): their shared framework is imported once. Each
    result as its task finishes, `run_child`'s, with its own seconds; a backend's files are named after it. A task
    that crashes the process is that task's result, and the tasks after it start a fresh one. `procs`: the pool
    whose `kill()` ends the process early."""
    group_env = {k: v for spec in specs for k, v in backend_env(spec["backend"]).items()}
    w = None
    try:
        for spec in specs:
            name = spec["backend"]
            spec_path, out = _task_files(workdir, name, spec)
            if w is None:
                w = _Warm((), name, {**group_env, **(env or {})}, workdir, name)
                if procs is not None:
                    procs._started(w.proc)
            t0 = time.perf_counter()
            answer = w.request({"task": task, "spec": str(spec_path), "out": str(out)}, timeout)
            result = w.result(answer, out, time.perf_counter() - t0, timeout)
            if answer is None:
                _end(w, procs)
                w = None
            yield result
    finally:
        if w is not None:
            _end(w, procs)


def _end(w: "_Warm", procs: "ChildPool | None") -> None:
    w.close()
    if procs is not None:
        procs._ended(w.proc)


class ChildPool:
    """Children run `jobs` at once, each waited on by a thread of this process; `submit` returns a Future of its
    ChildResult. `runner` runs one child (`run_child`, or a `WarmWorkers.run`). Leaving the `with` block on an
    exception kills the children still running and cancels those not started."""

    def __init__(self, jobs: int, runner: Callable[..., ChildResult] | None = None):
        self.jobs = max(1, jobs)
        self.runner = runner
        self._pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="child")
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def submit(self, task: str, spec: dict, workdir: Path, *, name: str, env: dict[str, str] | None = None) -> Future:
        return self._pool.submit(self._run, task, spec, workdir, name, env)

    def submit_group(self, task: str, specs: list[dict], workdir: Path, *, env: dict[str, str] | None = None
                     ) -> list[Future]:
        """Several backends' tasks one after another in one child process (`run_shared`, names from each spec's
        backend): a Future for each, set as its task finishes."""
        futures = [Future() for _ in specs]
        for f in futures:
            f.set_running_or_notify_cancel()

        def run_all() -> None:
            results = run_shared(task, specs, workdir, env=env, procs=self)
            try:
                for f in futures:
                    result = None if self._stopped else next(results, None)
                    f.set_result(result or ChildResult(error="cancelled", exit_code=EXIT_CRASH))
            except BaseException as e:  # a Future left unset would hang its reader
                for f in futures:
                    if not f.done():
                        f.set_exception(e)
                raise
            finally:
                results.close()  # ends the process

        self._pool.submit(run_all)
        return futures

    def _run(self, task, spec, workdir, name, env) -> ChildResult:
        if self._stopped:
            return ChildResult(error="cancelled", exit_code=EXIT_CRASH)
        if self.runner is not None:
            return self.runner(task, spec, workdir, name=name, env=env)
        return run_child(task, spec, workdir, name=name, env=env, procs=self)

    def _started(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
            stopped = self._stopped
        if stopped:
            proc.kill()

    def _ended(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def kill(self) -> None:
        with self._lock:
            self._stopped = True
            procs = list(self._procs)
        for proc in procs:
            proc.kill()

    def __enter__(self) -> "ChildPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Warm:
    """One warm worker process (`python -m shared.cli.worker serve`) and the file its stderr goes to."""

    def __init__(self, key: tuple, backend: str, env: dict[str, str], logdir: Path, n: int | str,
                 start: bool = False):
        self.key = key
        self.log = Path(logdir) / f"worker-{n}.stderr"
        cmd = [sys.executable, "-m", "shared.cli.worker", "serve"] + (["--backend", backend] if start else [])
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env={**os.environ, **CHILD_ENV, **backend_env(backend), **env})

    def result(self, answer: dict | None, out: Path, seconds: float, timeout: float) -> ChildResult:
        """The ChildResult of a request's `answer` (None: the worker died with the task, or timed out)."""
        if answer is None:
            code = self.proc.returncode
            why = self.stderr_tail() if code not in (None, -9) else f"timed out after {timeout:.0f} s"
            return ChildResult(error=f"the worker crashed (exit code {code})" + (f": {why}" if why else ""),
                               exit_code=EXIT_CRASH, seconds=seconds)
        if answer["rc"] != 0:
            return ChildResult(error=answer["error"], exit_code=answer["rc"], seconds=seconds)
        arrays, meta = read_npz(out)
        return ChildResult(arrays, meta, seconds=seconds)

    def request(self, req: dict, timeout: float) -> dict | None:
        """The worker's answer, or None when it died (or timed out: then it is killed)."""
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            return None
        return json.loads(line)

    def stderr_tail(self, lines: int = 6) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            text = ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


class WarmWorkers:
    """Long-lived workers, one per (backend, environment) in use at a time, reused across tasks: a repeated job
    (`sweep`'s cells) pays each framework's start-up once, not once per task. `run` has `run_child`'s signature
    and results. A task that crashes its worker (a segfault, an abort, a timeout) takes down only that worker:
    the task's result is the crash (the worker's last stderr lines and exit code), and the next task on that
    backend starts a fresh worker. At most `max_workers` live at once: the least recently used idle one is ended to
    make room; of two idle workers for a task, the most recently used serves it."""

    def __init__(self, logdir: Path, max_workers: int = 4):
        self.logdir = Path(logdir)
        self.max_workers = max(1, max_workers)
        self._idle: list[_Warm] = []  # least recently used first
        self._busy = 0
        self._lock = threading.Lock()
        self.started: dict[str, int] = {}  # backend -> workers started
        self.crashed: dict[str, int] = {}  # backend -> workers lost to a task

    def _take(self, key: tuple, backend: str, env: dict[str, str]) -> _Warm:
        self._reap()
        with self._lock:
            for w in reversed(self._idle):  # the most recent: likely the one that holds the next cell's model
                if w.key == key and w.proc.poll() is None:
                    self._idle.remove(w)
                    self._busy += 1
                    return w
            evict = self._idle.pop(0) if self._idle and len(self._idle) + self._busy >= self.max_workers else None
            self._busy += 1
            n = self._count_start(backend)
        if evict is not None:
            evict.close()
        return _Warm(key, backend, env, self.logdir, n)

    def _count_start(self, backend: str) -> int:
        """Count a worker started for `backend` (under the lock); its number among all started (its log's name)."""
        n = sum(self.started.values())
        self.started[backend] = self.started.get(backend, 0) + 1
        return n

    def _reap(self) -> None:
        """Drop the idle workers that died (a prestarted one whose framework would not start, one killed from
        outside): they hold no place among `max_workers`."""
        with self._lock:
            dead = [w for w in self._idle if w.proc.poll() is not None]
            self._idle = [w for w in self._idle if w not in dead]
        for w in dead:
            w.close()

    def prestart(self, backend: str, env: dict[str, str] | None = None) -> bool:
        """Start a worker for `backend` now, importing its framework before any task needs it (`serve --backend`),
        where none is alive for it and fewer than `max_workers` are: a job that knows its backends starts them all
        at once, so that one framework's start-up runs while the other workers compute and no core idles at the
        end. Whether one was started."""
        env = dict(env or {})
        key = (backend, tuple(sorted(env.items())))
        self._reap()
        with self._lock:
            if len(self._idle) + self._busy >= self.max_workers or any(w.key == key for w in self._idle):
                return False
            self._idle.append(_Warm(key, backend, env, self.logdir, self._count_start(backend), start=True))
        return True

    def _give(self, w: _Warm, alive: bool) -> None:
        with self._lock:
            self._busy -= 1
            if alive:
                self._idle.append(w)

    def run(self, task: str, spec: dict, workdir: Path, *, name: str, timeout: float = 1800,
            env: dict[str, str] | None = None) -> ChildResult:
        backend, env = spec["backend"], dict(env or {})
        spec_path, out = _task_files(workdir, name, spec)
        w = self._take((backend, tuple(sorted(env.items()))), backend, env)
        t0 = time.perf_counter()
        answer = w.request({"task": task, "spec": str(spec_path), "out": str(out)}, timeout)
        seconds = time.perf_counter() - t0
        self._give(w, alive=answer is not None)
        if answer is None:  # the worker died with the task: report the crash, start afresh next time
            with self._lock:
                self.crashed[backend] = self.crashed.get(backend, 0) + 1
        return w.result(answer, out, seconds, timeout)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.close()

    def __enter__(self) -> "WarmWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    model = _KEPT.model_for(be, backend, cfg, state, dtype) if _KEPT.active else be.build(cfg, state, dtype=dtype)
    del state  # the model holds copies: the file's memory map (every page read) is released before the forward
    t1 = time.perf_counter()
    out = be.forward_once(model, x)  # one forward per weights, even in a warm worker
    t2 = time.perf_counter()
    note = be.once_note(dtype)
    return out, {"backend": backend, "dtype": dtype, "build_s": t1 - t0, "forward_s": t2 - t1,
                 "peak_rss_mb": peak_rss_mb(), "versions": be.versions(), **({"note": note} if note else {})}


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


def _run_task(task: str, spec_path: str, out: str) -> tuple[int, str | None]:
    """One task: (0, None), or (its exit code, what to report: `error: ...`, `unsupported: ...` or a traceback's
    last lines)."""
    try:
        arrays, meta = TASKS[task](json.loads(Path(spec_path).read_text()))
        write_npz(out, arrays, meta, as_float32=False)  # the oracle's gradients stay float64
    except SuiteError as e:
        label = "unsupported" if isinstance(e, UnsupportedError) else "error"
        return e.exit_code, f"{label}: {e}"
    except Exception:  # a backend crashed: the traceback's last lines reach the parent's table
        return EXIT_CRASH, "\n".join(traceback.format_exc().strip().splitlines()[-6:])
    return 0, None


def _clear_session() -> None:
    """Keras keeps its graph state (and its layer-name counters) per session: a fresh build starts a fresh one."""
    if "keras" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["keras"].backend.clear_session()


class _KeptModel:
    """A warm worker's last forward model, kept for its next task of the same backend, config and dtype: that task
    puts its checkpoint's weights into it (`Backend.load_weights`) instead of building, so what the framework
    compiled or traced for the model (MindSpore's graph, XLA's program, a tf.function) serves every checkpoint of
    one architecture. Only for a backend whose `build` is the one that came with its `load_weights` (a subclass
    that changes the built model, as the deliberately broken test backends do, always builds), and only for a model
    of at most KEEP_BYTES of float32 parameters (an idle worker holds it). Any other task drops it first, and a
    fresh build starts from a cleared Keras session, as every build did before."""

    KEEP_BYTES = 256 << 20

    def __init__(self) -> None:
        self.active = False  # serve() only: a one-shot child or `vit-suite forward` builds as ever
        self.key: tuple | None = None
        self.model = None
        self.hits = 0

    @staticmethod
    def reusable(be) -> bool:
        owner = next(c for c in type(be).__mro__ if "load_weights" in c.__dict__)
        return owner is not Backend and type(be).build is owner.build

    def model_for(self, be, backend: str, cfg, state, dtype: str):
        key = (backend, cfg.to_json(), dtype)
        if key == self.key:
            try:
                be.load_weights(self.model, state)
            except BaseException:
                self.drop()
                raise
            self.hits += 1
            return self.model
        self.drop()
        model = be.build(cfg, state, dtype=dtype)
        if self.reusable(be) and W.parameter_count(cfg) * 4 <= self.KEEP_BYTES:
            self.key, self.model = key, model
        return model

    def drop(self) -> None:
        """Release the kept model, clear Keras' session and collect (the model was frozen with the rest of the
        heap after the first task: unfreeze, collect, freeze again)."""
        if self.model is None:
            return
        self.key = self.model = None
        _clear_session()
        gc.unfreeze()
        gc.collect()
        gc.freeze()


_KEPT = _KeptModel()


def _forget_models(first: bool = False) -> None:
    """Between a warm worker's tasks: collect the last task's garbage (a model not kept, its session cleared).
    After the first task, everything still alive (the frameworks' own objects, most of the heap) is frozen out of
    later collections (gc.freeze), which then cost milliseconds, not the 0.1 to 0.5 s of a full collection."""
    if _KEPT.model is None:
        _clear_session()
    gc.collect()
    if first:
        gc.freeze()


def serve(backend: str | None = None) -> int:
    """A warm worker (`WarmWorkers`): one request a line on stdin, {"task", "spec", "out"}, one answer a line,
    {"rc", "error"}, on the original stdout; whatever a framework prints goes to stderr instead. Forward tasks
    reuse the last one's model where they can (`_KeptModel`). With `backend` (`WarmWorkers.prestart`) it imports
    that backend's framework first (`Backend.start`); an error there is left for the first task to meet."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    _KEPT.active = True
    if backend is not None:
        with contextlib.suppress(Exception):
            import_frameworks_in_safe_order([backend])
            get_backend(backend).start()
    for n, line in enumerate(sys.stdin):
        req = json.loads(line)
        if req["task"] != "forward":
            _KEPT.drop()
        rc, error = _run_task(req["task"], req["spec"], req["out"])
        _forget_models(first=n == 0)
        answers.write(json.dumps({"rc": rc, "error": error}) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.cli.worker", description=__doc__.split("\n")[0])
    p.add_argument("task", choices=sorted(TASKS) + ["serve"])
    p.add_argument("--spec", help="JSON file with the task's arguments")
    p.add_argument("--out", help=".npz the results are written to")
    p.add_argument("--backend", help="serve: import this backend's framework before the first task")
    args = p.parse_args(argv)
    if args.task == "serve":
        return serve(args.backend)
    if not (args.spec and args.out):
        p.error(f"{args.task} needs --spec and --out")
    rc, error = _run_task(args.task, args.spec, args.out)
    if error:
        print(error, file=sys.stderr)
    return rc


if __name__ == "__main__":
    exit_process(main())
