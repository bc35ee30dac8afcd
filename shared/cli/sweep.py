"""`vit-suite sweep MANIFEST`: a model zoo x backends x dtypes x image sizes x batches, one `check` per cell.

    vit-suite sweep zoo.toml                          # local: concurrent cells, each in its own process
    vit-suite sweep zoo.toml --executor ray           # a Ray instance started on this machine
    vit-suite sweep zoo.toml --executor ray --address HOST:6379
    vit-suite sweep zoo.toml --rerun-failed           # repeat only the cells that failed last time

The manifest (TOML or YAML) names checkpoints and what to run them on:

    [sweep]                          # defaults for every checkpoint
    backends = ["torch", "keras", "mindspore"]
    dtypes = ["float32", "bfloat16"]
    image_sizes = ["native", "64x64"]
    batches = [2]
    grad = false                     # true adds a gradient-conformance cell per checkpoint x backend
    against = false                  # true adds a cell proving the import against the source library's output

    [[checkpoints]]
    path = "models/vit_s16.safetensors"   # any format `convert` reads; relative to the manifest
    [[checkpoints]]
    name = "timm-s16"
    path = "models/s16.pth"
    preset = "vit_small_patch16_224"      # what the file cannot tell (as `convert --preset`)
    dtypes = ["float32"]                  # any [sweep] key may be overridden per checkpoint
    [[checkpoints]]
    preset = "tiny"                       # seeded random weights of a preset, no file
    seed = 3

A cell is one `check` of one checkpoint on one backend (forward conformance of every stage against the float64
reference: `run_check`, whose backend runs in its own child process through `shared.cli.worker`), or with
`grad = true` one gradient check (`run_grad`). Each cell's result is stored in OUT/cells/KEY.json as it
completes, keyed by the source file's sha256, the config, the backend and its framework versions, the dtype and
the inputs (plus the suite's version and tolerance policy): a re-run does only the cells it has no result for,
and a killed sweep loses only the cells in flight. OUT gets sweep.json, sweep.html and junit.xml
(shared/cli/sweep_report.py). Exit 5 when any cell fails or crashes.

Executors. `local` runs --jobs cells at once through warm workers (shared/cli/worker.py `WarmWorkers`): one
long-lived child per framework in use, reused across cells, so a framework's start-up is paid once per sweep, not
once per cell, and a backend's cells of one architecture and dtype run one after another, so its worker puts each
checkpoint's weights into the model it built (and compiled) for the previous one (bit for bit a fresh build's
output); a cell that crashes its worker takes down only that worker, is reported as crashed (status "error",
the worker's last stderr lines), and the next cell on that backend starts a fresh one. `ray` makes each cell a Ray
task (a fresh child per cell, as before) declaring its CPUs and an estimate of its memory; a checkpoint's
canonical file is put into Ray's object store once and written to a node-local cache once per node (not per cell),
and the node caches are removed at the end; with --shared-fs the nodes read the files in place instead. Each cell's
record names the Ray node that ran it. A cell whose node (or Ray worker) dies is lost, as in a killed sweep: this
run reports it as an error, nothing is stored for it, and the next run of the same command runs it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .. import tolerances
from .. import fileio as F
from .. import weights as W
from ..backend import backend_names, backend_versions, is_available
from ..config import ViTConfig
from ..errors import EXIT_OK, EXIT_OUT_OF_BOUNDS, SuiteError, UsageError
from ..presets import get_preset
from .common import console, esc, int_arg, parse_size
from .worker import WarmWorkers

#: bumped when a cell's stored result changes meaning: older results are then not reused
RESULT_FORMAT = 1
DTYPES = ("float32", "bfloat16", "float16")
INPUT_KINDS = ("normal", "uniform", "zeros", "large")
#: the cells a backend must have left before an idle slot starts a second worker for it, when none has finished yet
HELP_MIN_CELLS = 4
#: [sweep] keys and their defaults, parsed (image size None: the checkpoint's own, "native" in a manifest); each may
#: be overridden in a [[checkpoints]] entry
SWEEP_DEFAULTS: dict[str, Any] = {"backends": None, "dtypes": ["float32"], "image_sizes": [None],
                                  "batches": [2], "seed": 0, "input_kind": "normal", "grad": False, "against": False}
CHECKPOINT_KEYS = {"name", "path", "format", "preset", "image_size"}
#: marks a directory as a sweep's output (a non-empty directory without it is not ours to write into)
MARKER = ".vit-suite-sweep"


# ----------------------------------------------------------------------------------------------- the manifest
@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: Path | None          # None: seeded random weights of `preset`
    fmt: str | None            # as `convert --from` (None: detected)
    preset: str | None
    image_size: tuple[int, int] | None  # the file's own size, for formats that do not state it
    options: dict              # the SWEEP_DEFAULTS keys, resolved


@dataclass(frozen=True)
class Cell:
    checkpoint: str
    backend: str
    kind: str                  # "forward", "grad" or "against" (backend: the source library)
    dtype: str
    image_size: tuple[int, int] | None  # None: the checkpoint's own
    batch: int
    seed: int
    input_kind: str
    key: str = ""
    source: str | None = None  # an "against" cell's source file and format
    source_format: str | None = None

    @property
    def column(self) -> str:
        return f"{self.backend} {self.dtype if self.kind == 'forward' else self.kind}"

    @property
    def label(self) -> str:
        size = "native" if self.image_size is None else f"{self.image_size[0]}x{self.image_size[1]}"
        return f"{self.checkpoint} @{size} b{self.batch} / {self.column}"


def _list(value, key: str, where: str, item_type, allowed=None) -> list:
    items = value if isinstance(value, list) else [value]
    for v in items:
        if not isinstance(v, item_type) or isinstance(v, bool) and item_type is not bool:
            raise UsageError(f"{where}: {key} must be {item_type.__name__} or a list of them, got {v!r}")
        if allowed is not None and v not in allowed:
            raise UsageError(f"{where}: {key} {v!r} is not one of {', '.join(map(str, allowed))}")
    if not items:
        raise UsageError(f"{where}: {key} is empty")
    return items


def _options(raw: dict, base: dict, where: str) -> dict:
    out = dict(base)
    for key, value in raw.items():
        if key not in SWEEP_DEFAULTS:
            continue
        if key == "backends":
            out[key] = _list(value, key, where, str, backend_names())
        elif key == "dtypes":
            out[key] = _list(value, key, where, str, DTYPES)
        elif key == "image_sizes":
            sizes = []
            for v in _list(value, key, where, str):
                try:
                    sizes.append(None if v == "native" else parse_size(v))
                except UsageError as e:
                    raise UsageError(f"{where}: image_sizes: {e}") from None
            out[key] = sizes
        elif key == "batches":
            out[key] = _list(value, key, where, int)
            if not all(1 <= b <= 1024 for b in out[key]):
                raise UsageError(f"{where}: batches must lie in [1, 1024], got {out[key]}")
        elif key == "seed":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
                raise UsageError(f"{where}: seed must be an integer in [0, 2**32), got {value!r}")
            out[key] = value
        elif key == "input_kind":
            if value not in INPUT_KINDS:
                raise UsageError(f"{where}: input_kind {value!r} is not one of {', '.join(INPUT_KINDS)}")
            out[key] = value
        elif key in ("grad", "against"):
            if not isinstance(value, bool):
                raise UsageError(f"{where}: {key} must be true or false, got {value!r}")
            out[key] = value
    return out


def read_manifest_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"manifest {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"manifest {path}: not a text file") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsageError(f"manifest {path}: not valid YAML: {e}") from None
    elif path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"manifest {path}: not valid TOML: {e}") from None
    else:
        raise UsageError(f"manifest {path}: expected a .toml, .yaml or .yml file")
    if not isinstance(data, dict):
        raise UsageError(f"manifest {path}: expected a table with [sweep] and [[checkpoints]]")
    return data


def load_manifest(path: str | Path) -> list[Checkpoint]:
    """The manifest's checkpoints, every key checked (unknown keys, types, values), paths made absolute."""
    path = Path(path)
    data = read_manifest_file(path)
    unknown = set(data) - {"sweep", "checkpoints"}
    if unknown:
        raise UsageError(f"manifest {path}: unknown top-level key(s) {sorted(unknown)}; expected sweep, checkpoints")
    sweep = data.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise UsageError(f"manifest {path}: [sweep] must be a table")
    bad = set(sweep) - set(SWEEP_DEFAULTS)
    if bad:
        raise UsageError(f"manifest {path}: unknown [sweep] key(s) {sorted(bad)}; known: {', '.join(SWEEP_DEFAULTS)}")
    base = _options(sweep, SWEEP_DEFAULTS, f"manifest {path} [sweep]")
    if base["backends"] is None:  # as `check`: every installed primary backend
        from ..backend import available_backends

        base["backends"] = available_backends()
    entries = data.get("checkpoints")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"manifest {path}: no [[checkpoints]] entries")
    out, names = [], set()
    for i, e in enumerate(entries):
        where = f"manifest {path} checkpoint {i + 1}"
        if not isinstance(e, dict):
            raise UsageError(f"{where}: expected a table, got {e!r}")
        bad = set(e) - CHECKPOINT_KEYS - set(SWEEP_DEFAULTS)
        if bad:
            raise UsageError(f"{where}: unknown key(s) {sorted(bad)}; known: "
                             f"{', '.join(sorted(CHECKPOINT_KEYS | set(SWEEP_DEFAULTS)))}")
        for key in ("name", "path", "format", "preset", "image_size"):
            if key in e and not isinstance(e[key], str):
                raise UsageError(f"{where}: {key} must be a string, got {e[key]!r}")
        if "path" not in e and "preset" not in e:
            raise UsageError(f"{where}: give a path (a weight file) or a preset (seeded random weights)")
        file = (path.parent / e["path"]).resolve() if "path" in e else None
        if file is not None and not file.exists():
            raise UsageError(f"{where}: {file} does not exist")
        if "preset" in e:
            try:
                get_preset(e["preset"])
            except SuiteError as err:
                raise UsageError(f"{where}: {err}") from None
        if "format" in e:
            from ..convert.formats import FORMATS

            if e["format"] not in FORMATS:
                raise UsageError(f"{where}: format {e['format']!r} is not one of {', '.join(FORMATS)}")
        name = e.get("name") or (file.stem if file else f"{e['preset']}-seed{e.get('seed', base['seed'])}")
        if name in names:
            raise UsageError(f"{where}: the name {name!r} is used twice (set name = ...)")
        names.add(name)
        try:
            size = parse_size(e.get("image_size"))
        except UsageError as err:
            raise UsageError(f"{where}: image_size: {err}") from None
        out.append(Checkpoint(name, file, e.get("format"), e.get("preset"), size, _options(e, base, where)))
    return out


# ------------------------------------------------------------------------------- checkpoints and cell keys
@dataclass
class Prepared:
    """A checkpoint made ready: its canonical file, config and what identifies its source."""

    checkpoint: Checkpoint
    weights: Path
    cfg: ViTConfig
    source_id: str
    sha256: str     # of the canonical file the cells read (what the Ray node caches are named by)
    fmt: str | None = None      # the source file's format
    library: str | None = None  # the library that defines it (for `against = true`)


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in sorted order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


class HashCache:
    """sha256 of a source, remembered by (path, size, mtime): a re-run does not read a large zoo again."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, src: Path) -> str:
        st = src.stat()
        stamp = [st.st_size, st.st_mtime_ns] if src.is_file() else None
        hit = self.data.get(str(src))
        if stamp is not None and hit and hit[0] == stamp:
            return hit[1]
        digest = sha256_of(src)
        if stamp is not None:
            self.data[str(src)] = [stamp, digest]
        return digest

    def save(self) -> None:
        F.atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(self.data, indent=1)))


def prepare(ck: Checkpoint, out: Path, hashes: HashCache) -> Prepared:
    """The checkpoint's canonical file: the file itself when it is one and nothing changes it, else a conversion
    (`vit-suite convert`, in a child process: a framework's file may need that framework) cached in OUT/weights."""
    from ..convert.formats import detect_format
    from ..init import init_weights

    wdir = out / "weights"
    wdir.mkdir(exist_ok=True)
    if ck.path is None:
        cfg = get_preset(ck.preset)
        source_id = f"preset:{cfg.name}:seed{ck.options['seed']}"
        dst = wdir / f"{hashlib.sha256((source_id + cfg.to_json()).encode()).hexdigest()[:24]}.safetensors"
        if not dst.exists():
            W.save(dst, cfg, init_weights(cfg, ck.options["seed"]))
    else:
        source_id = "sha256:" + hashes.get(ck.path)
        fmt = ck.fmt or detect_format(str(ck.path))
        if fmt == "canonical" and not ck.preset and not ck.image_size:
            dst = ck.path
        else:
            how = json.dumps([source_id, fmt, ck.preset, ck.image_size])
            dst = wdir / f"{hashlib.sha256(how.encode()).hexdigest()[:24]}.safetensors"
            if not dst.exists():
                cmd = [sys.executable, "-m", "shared.cli", "convert", str(ck.path), str(dst), "--to", "canonical",
                       "--from", fmt, "--no-verify"]  # the proof is the checkpoint's own `against` cell
                if ck.preset:
                    cmd += ["--preset", ck.preset]
                if ck.image_size:
                    cmd += ["--image-size", f"{ck.image_size[0]}x{ck.image_size[1]}"]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    msg = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
                    raise UsageError(f"checkpoint {ck.name!r} ({ck.path}): cannot be converted: {msg[0]}")
    header = W.read_safetensors_header(dst)
    cfg = W.config_from_metadata(header.get("__metadata__") or {}, str(dst))
    fmt = library = None
    if ck.path is not None:
        from ..convert.sources import source_library

        fmt = ck.fmt or detect_format(str(ck.path))
        library = source_library(fmt)
        if ck.options["against"] and library is None:
            raise UsageError(f"checkpoint {ck.name!r}: against = true, but a {fmt!r} file has no source library "
                             f"to prove it against")
    elif ck.options["against"]:
        raise UsageError(f"checkpoint {ck.name!r}: against = true needs a source file (path), not a preset")
    return Prepared(ck, dst, cfg, source_id, hashes.get(dst) if dst != ck.path else source_id[7:], fmt, library)


def cells_of(p: Prepared) -> list[Cell]:
    o = p.checkpoint.options
    cells = []
    for backend in o["backends"]:
        for size in o["image_sizes"]:
            for batch in o["batches"]:
                common = dict(checkpoint=p.checkpoint.name, backend=backend, image_size=size, batch=batch,
                              seed=o["seed"], input_kind=o["input_kind"])
                cells += [Cell(kind="forward", dtype=d, **common) for d in o["dtypes"]]
                if o["grad"]:
                    cells.append(Cell(kind="grad", dtype="float32", **common))
        if o["against"]:  # the source library's own output, once per image size and batch
            for size in o["image_sizes"]:
                for batch in o["batches"]:
                    cells.append(Cell(p.checkpoint.name, p.library, "against", "float32", size, batch, o["seed"],
                                      o["input_kind"], source=str(p.checkpoint.path), source_format=p.fmt))
    return cells


def cell_key(cell: Cell, p: Prepared, versions: dict) -> str:
    """What a result depends on; equal keys mean the stored result still holds."""
    from importlib.metadata import version

    ident = {
        "format": RESULT_FORMAT, "suite": version("vit-suite"),
        "policy": [tolerances.F32_SAFETY, tolerances.LOWP_MULTIPLIER, tolerances.LOWP_FLOOR_UNITS],
        "source": p.source_id, "config": p.cfg.to_dict(), "backend": cell.backend, "versions": versions,
        "kind": cell.kind, "dtype": cell.dtype, "image_size": cell.image_size, "batch": cell.batch,
        "seed": cell.seed, "input_kind": cell.input_kind,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=list).encode()).hexdigest()[:32]


def estimate_memory(cfg: ViTConfig, cell: Cell) -> int:
    """Bytes one cell may hold at its peak (shared/jobs.py's estimate), declared to Ray."""
    from ..jobs import child_memory

    return child_memory(cfg, cell.batch, cell.image_size, grad=cell.kind == "grad")


# ---------------------------------------------------------------------------------------------- one cell
def _finite(x):
    return x if x is None or math.isfinite(x) else None


def run_cell(cell: dict, weights: str, env: dict[str, str], runner=None) -> dict:
    """One cell, in the executor's process; its backend runs in a child process (a fresh one each, or through
    `runner`: the local executor's warm workers). Never raises: what goes wrong is the cell's result (status
    "error")."""
    from .worker import run_child

    runner = runner or run_child
    from ..init import random_images

    c = Cell(**{**cell, "image_size": tuple(cell["image_size"]) if cell["image_size"] else None})
    t0 = time.perf_counter()
    try:
        if c.kind != "against" and not is_available(c.backend):
            raise UsageError(f"backend {c.backend!r} is not installed here")
        cfg, state = W.load(weights)
        size = c.image_size or tuple(cfg.image_size)
        run_cfg = cfg if size == tuple(cfg.image_size) else cfg.with_image_size(size)
        images = random_images(cfg, c.batch, c.seed, c.input_kind, size)
        if c.kind == "grad":
            result = _grad_cell(run_cfg, weights, state, images, c, env, runner)
        elif c.kind == "against":
            from .. import reference
            from .check import prove_against

            a = prove_against(c.source, c.source_format, run_cfg, reference.forward(run_cfg, state, images), images,
                              runner=runner)
            rows = [] if "rel_l2" not in a else [{"stage": "logits", "rel_l2": _finite(a["rel_l2"]),
                                                  "bound": a["bound"], "passed": a["status"] == "pass"}]
            status = {"not verified": "unsupported"}.get(a["status"], a["status"])
            result = {"status": status, "error": None if status == "pass" else a["message"],
                      "versions": a.get("versions"), "stages": rows}
        else:
            from .check import run_check

            res = run_check(run_cfg, Path(weights), images, [c.backend], c.dtype, state=state, env=env, jobs=1,
                            runner=runner)
            r = res.runs[0]
            rows = [] if r.verdict is None else [
                {"stage": s.stage, "rel_l2": _finite(s.rel_l2), "bound": s.bound, "passed": bool(s.passed)}
                for s in r.verdict.stages]
            result = {"status": r.status, "error": r.error, "versions": r.meta.get("versions"), "stages": rows}
    except Exception as e:  # noqa: BLE001 (a cell's failure is its result; the sweep goes on)
        result = {"status": "error", "error": f"{type(e).__name__}: {e}", "stages": []}
    rows = result["stages"]
    ratios = [(s["rel_l2"] / s["bound"] if s["rel_l2"] is not None else math.inf, s["stage"]) for s in rows]
    worst = max(ratios) if ratios else None
    first = next((s["stage"] for s in rows if not s["passed"]), None)
    return {**result, "worst_stage": worst[1] if worst else None,
            "worst_ratio": _finite(worst[0]) if worst else None, "first_failure": first,
            "seconds": time.perf_counter() - t0}


def _grad_cell(cfg: ViTConfig, weights: str, state, images, c: Cell, env, runner) -> dict:
    """Gradient conformance as stage-like rows: the loss, each gradient, each optimiser step (error / bound)."""
    from ..training import grad as G
    from .grad import run_grad

    if cfg.num_classes < 2:
        raise UsageError(f"{cfg.name}: gradient conformance needs a classifier with >= 2 classes")
    labels = np.random.default_rng([c.seed, 5]).integers(0, cfg.num_classes, c.batch)
    res = run_grad(cfg, Path(weights), state, images, labels, [c.backend], env=env, runner=runner)
    if res.oracle_error:
        return {"status": "error", "error": f"oracle: {res.oracle_error}", "stages": []}
    r = res.runs[0]
    rows = []
    if r.loss_err is not None:
        rows.append({"stage": "loss", "rel_l2": _finite(r.loss_err), "bound": G.loss_bound(cfg)})
        rows += [{"stage": f"grad {k}", "rel_l2": _finite(e), "bound": G.grad_bound(cfg)} for k, e in r.grad_err.items()]
        for kind, keys in r.steps.items():
            for k, m in keys.items():
                rows.append({"stage": f"{kind} {k}", "rel_l2": _finite(m["opt_err"]), "bound": m["opt_bound"]})
    for row in rows:
        row["passed"] = row["rel_l2"] is not None and row["rel_l2"] <= row["bound"]
    return {"status": r.status(cfg), "error": r.error, "versions": backend_versions(c.backend), "stages": rows}


# ---------------------------------------------------------------------------------------------- executors
@dataclass
class Progress:
    total: int
    cached: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    seconds: list = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def line(self, slots: int) -> str:
        todo = self.total - self.cached - self.done
        eta = ""
        if self.seconds and todo:
            eta = f", ETA {_clock(sum(self.seconds) / len(self.seconds) * math.ceil(todo / max(slots, 1)))}"
        return (f"cells: {self.cached + self.done}/{self.total} done ({self.cached} cached), "
                f"{min(self.running, slots)} running, "
                f"{self.failed} failed, elapsed {_clock(time.perf_counter() - self.started)}{eta}")


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def cell_env(threads: int) -> dict[str, str]:
    """The thread count of a cell's child, the same under every executor (results must not depend on it)."""
    from ..jobs import thread_env

    return thread_env(threads)


def run_local(todo: list[tuple[Cell, Prepared]], jobs: int, threads: int, on_start: Callable[[Cell], None],
              workers: WarmWorkers) -> Iterator[tuple[Cell, dict]]:
    """`jobs` cells at once, each driving a child process of `workers` (warm: kept alive across cells). Each of
    the `jobs` slots takes the cells of one backend (kind) after another, so that backend's worker is reused; in a
    backend's cells, those of one architecture and dtype come one after another, so the worker reuses its model
    (shared/cli/worker.py `_KeptModel`). A slot that finds every backend taken helps with the one with the most
    cells left, starting a second worker for it, only where those cells would take longer than that backend's
    first cell did (its worker's start-up included), and takes them from the other end of that backend's list (each
    worker keeps meeting one architecture after another); else it stops. Results as they complete."""
    env = cell_env(threads)
    groups: dict[tuple, list] = {}
    for cp in todo:
        groups.setdefault((cp[0].backend, cp[0].kind), []).append(cp)
    for cells in groups.values():  # stable: the manifest's order within one architecture
        cells.sort(key=lambda cp: (cp[1].cfg.to_json(), cp[0].dtype, cp[0].image_size or ()))
    for backend, kind in list(groups)[:workers.max_workers]:  # every framework starts at once (see prestart)
        if kind == "forward":  # a gradient or --against cell's workers run other backends (the oracle, the source)
            workers.prestart(backend, env)
    owners: dict[tuple, int] = {}
    first_s: dict[tuple, float] = {}  # group -> seconds of its first cell (a worker's start-up included)
    later_s: dict[tuple, list] = {}   # group -> seconds of its other cells
    lock = threading.Lock()
    results: queue.Queue = queue.Queue()
    stop = threading.Event()

    def worth_helping(g) -> bool:
        left, later = len(groups[g]), later_s.get(g)
        if g not in first_s or not later:  # nothing measured yet: a second worker pays off on many cells only
            return left >= HELP_MIN_CELLS
        return left * sum(later) / len(later) > first_s[g]

    def next_cell(slot: int, last: tuple | None, from_end: bool):
        """(group, cell, from_end): a helper takes its cells from the group's other end, so that each worker
        still meets one architecture after another (and keeps its model)."""
        with lock:
            left = [g for g, cells in groups.items() if cells]
            if not left:
                return None
            free = [g for g in left if owners.get(g, 0) == 0]
            if last in left:
                g = last
            elif free:
                g, from_end = free[0], False
            else:
                g, from_end = max(left, key=lambda g: len(groups[g])), True
                if not worth_helping(g):
                    return None
            if g != last:
                owners[g] = owners.get(g, 0) + 1
                if last is not None:
                    owners[last] -= 1
            return g, groups[g].pop(-1 if from_end else 0), from_end

    def record(g, seconds: float) -> None:
        with lock:
            if g in first_s:
                later_s.setdefault(g, []).append(seconds)
            else:
                first_s[g] = seconds

    def slot_loop(slot: int) -> None:
        last, from_end = None, False
        while not stop.is_set():
            picked = next_cell(slot, last, from_end)
            if picked is None:
                break
            last, (cell, p), from_end = picked
            on_start(cell)
            result = run_cell(_cell_dict(cell), str(p.weights), env, workers.run)
            record(last, result["seconds"])
            results.put((cell, result))
        results.put(None)

    slots = [threading.Thread(target=slot_loop, args=(i,), name=f"sweep-slot-{i}", daemon=True)
             for i in range(max(1, min(jobs, len(todo))))]
    for t in slots:
        t.start()
    try:
        finished = 0
        while finished < len(slots):
            item = results.get()
            if item is None:
                finished += 1
            else:
                yield item
    finally:
        stop.set()
        for t in slots:
            t.join()


def _cell_dict(cell: Cell) -> dict:
    d = asdict(cell)
    d.pop("key")
    return d


def _node_cache_dir(run_id: str, node: str) -> Path:
    """One node's cache of a run's checkpoints, named by the run and the node's Ray id: nodes that share a temp
    folder (several on one machine) each keep their own."""
    return Path(tempfile.gettempdir()) / f"vit-suite-sweep-{run_id}-{node[:16]}"


def _ray_cell(cell: dict, weights_box: list, sha: str, run_id: str, env: dict) -> tuple[dict, str, float | None]:
    """A Ray task: the checkpoint's file is written to this node's cache once (under a lock), from the object
    store, then the cell runs as under the local executor. Returns (result, node id, the seconds it took to fetch
    and write the file, None where the node had it). A box holding a path (--shared-fs) is read in place."""
    import fcntl

    import ray

    node = ray.get_runtime_context().get_node_id()
    if isinstance(weights_box[0], str):
        return run_cell(cell, weights_box[0], env), node, None
    cache = _node_cache_dir(run_id, node)
    cache.mkdir(exist_ok=True)
    path = cache / f"{sha}.safetensors"
    wrote = None
    with open(cache / f"{sha}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            t0 = time.perf_counter()
            data = ray.get(weights_box[0])
            tmp = path.with_suffix(".partial")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            wrote = time.perf_counter() - t0
    return run_cell(cell, str(path), env), node, wrote


def _ray_cleanup(run_id: str) -> None:
    import shutil

    import ray

    shutil.rmtree(_node_cache_dir(run_id, ray.get_runtime_context().get_node_id()), ignore_errors=True)


def lost_result(error: str) -> dict:
    """The result of a cell whose task never returned (its node or Ray worker died): reported as an error for this
    run but never stored, so that the next run of the same command runs it again."""
    return {"status": "error", "error": f"lost: {error} (not stored: the same command runs this cell again)",
            "stages": [], "seconds": 0.0, "worst_stage": None, "worst_ratio": None, "first_failure": None,
            "lost": True}


class RayRun:
    """Each cell a Ray task with its CPUs and memory declared; weights through the object store, once per node.

    A task that does not return (its node died, its Ray worker was killed) is not retried (max_retries=0: a cell that
    kills its worker, by memory for one, would take the next node down too): its cell is lost, as in a killed sweep,
    reported as an error and not stored; the other cells' results stand, and the same command runs the lost ones
    again."""

    def __init__(self, address: str | None, jobs: int, threads: int, shared_fs: bool = False):
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'vit-suite[ray]'") from None
        self.ray, self.threads, self.shared_fs = ray, threads, shared_fs
        F.remove_stale_tempdirs("vit-suite-sweep-")  # node caches of killed sweeps (this machine's)
        self.run_id = f"{os.getpid()}-{time.time_ns()}"
        self.started_here = not ray.is_initialized()
        if self.started_here:
            # without --address a Ray of our own ("local"), never a cluster that ray.init() would find on this
            # machine (RAY_ADDRESS, or the last `ray start`, even another user's)
            kwargs = ({"address": address} if address else
                      {"address": "local", "num_cpus": jobs * threads, "include_dashboard": False})
            try:
                ray.init(log_to_driver=False, configure_logging=False, **kwargs)
            except Exception as e:  # noqa: BLE001 (Ray raises ConnectionError, RuntimeError, ValueError...)
                raise UsageError(f"--executor ray: cannot start or reach Ray{f' at {address}' if address else ''}: "
                                 f"{e}") from None
        #: node id -> {"cells": run there, "files": written there, "seconds": fetching them}
        self.transfers: dict[str, dict] = {}
        self.lost = 0  # cells whose task never returned
        self.put_s = 0.0  # putting the checkpoints into the object store
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
        self.memory = ray.cluster_resources().get("memory")

    def run(self, todo: list[tuple[Cell, Prepared]], on_start: Callable[[Cell], None]) -> Iterator[tuple[Cell, dict]]:
        ray = self.ray
        task = ray.remote(_ray_cell)
        refs = {}
        t0 = time.perf_counter()
        for _, p in todo:
            if p.sha256 not in refs:
                refs[p.sha256] = str(p.weights.resolve()) if self.shared_fs else ray.put(p.weights.read_bytes())
        self.put_s = time.perf_counter() - t0
        env = cell_env(self.threads)
        pending = {}
        for cell, p in todo:
            mem = estimate_memory(p.cfg, cell)
            if self.memory:
                mem = min(mem, int(self.memory * 0.9))
            ref = task.options(num_cpus=self.threads, memory=mem, max_retries=0).remote(
                _cell_dict(cell), [refs[p.sha256]], p.sha256, self.run_id, env)
            pending[ref] = cell
            on_start(cell)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    try:
                        result, node, fetch_s = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 (run_cell never raises: Ray lost the task)
                        self.lost += 1
                        yield cell, lost_result(f"{type(e).__name__}: {str(e).strip().splitlines()[0]}")
                        continue
                    t = self.transfers.setdefault(node, {"cells": 0, "files": 0, "seconds": 0.0})
                    t["cells"] += 1
                    if fetch_s is not None:
                        t["files"] += 1
                        t["seconds"] += fetch_s
                    yield cell, {**result, "node": node}
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if not self.shared_fs:
                self.cleanup()

    def cleanup(self) -> None:
        """Remove the run's node caches: a task on every live node, then those on this machine of nodes that died."""
        import shutil

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cleanup = self.ray.remote(_ray_cleanup)
        with contextlib.suppress(Exception):
            alive = [n["NodeID"] for n in self.ray.nodes() if n.get("Alive")]
            waits = [cleanup.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                     .remote(self.run_id) for node in alive]
            self.ray.get(waits, timeout=60)
        for d in Path(F.system_tempdir()).glob(f"vit-suite-sweep-{self.run_id}-*"):
            shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


# ---------------------------------------------------------------------------------------------- the command
def claim_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UsageError(f"--out {out} is a non-empty directory that no sweep wrote (no {MARKER}); "
                         f"name an empty or new directory")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def load_cached(out: Path, key: str) -> dict | None:
    try:
        d = json.loads((out / "cells" / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("key") == key and "status" in d else None


def store(out: Path, cell: Cell, result: dict) -> dict:
    """The cell's record, written to OUT/cells/KEY.json; a lost cell's (`lost_result`) is not written."""
    rec = {"key": cell.key, "cell": _cell_dict(cell), **result}
    if result.get("lost"):
        return rec
    F.atomic_write(out / "cells" / f"{cell.key}.json", lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=1)))
    return rec


def failed(rec: dict) -> bool:
    return rec["status"] in ("FAIL", "non-finite", "error")


def cmd_sweep(args) -> int:
    from .sweep_report import write_reports

    if args.address and args.executor != "ray":
        raise UsageError("--address names a Ray cluster: it needs --executor ray")
    if args.shared_fs and args.executor != "ray":
        raise UsageError("--shared-fs tells Ray's nodes to read files in place: it needs --executor ray")
    manifest = Path(args.manifest)
    checkpoints = load_manifest(manifest)
    out = Path(args.out) if args.out else manifest.with_suffix(".sweep")
    claim_out_dir(out)
    c = console()
    jobs = args.jobs or max(1, (os.cpu_count() or 1) // args.threads)
    hashes = HashCache(out / "sources.json")
    prepared, versions = [], {}
    with c.status("preparing checkpoints") as status:
        for ck in checkpoints:
            status.update(f"preparing {esc(ck.name)}")
            prepared.append(prepare(ck, out, hashes))
    hashes.save()
    plan: list[tuple[Cell, Prepared]] = []
    for p in prepared:
        for cell in cells_of(p):
            if cell.backend not in versions:
                if cell.kind == "against":
                    from ..backend import module_versions

                    versions[cell.backend] = module_versions([cell.backend, "torch"])
                else:
                    versions[cell.backend] = backend_versions(cell.backend) if is_available(cell.backend) else {}
            plan.append((Cell(**{**asdict(cell), "key": cell_key(cell, p, versions[cell.backend])}), p))
    records: dict[str, dict] = {}
    todo = []
    for cell, p in plan:
        rec = load_cached(out, cell.key)
        if rec is not None and not (args.rerun_failed and failed(rec)):
            records[cell.key] = {**rec, "cached": True}
        else:
            todo.append((cell, p))
    prog = Progress(total=len(plan), cached=len(plan) - len(todo))
    executor = {"name": args.executor, "jobs": jobs, "threads_per_cell": args.threads}
    c.print(f"[bold]vit-suite sweep[/]: {esc(manifest)}: {len(prepared)} checkpoint(s), {len(plan)} cell(s), "
            f"{prog.cached} already done; executor {args.executor}" + (f" ({jobs} at once)" if args.executor ==
                                                                       "local" else "") + f"; results in {out}",
            soft_wrap=True)

    def on_start(cell):
        with prog.lock:
            prog.running += 1

    ray_run = RayRun(args.address, jobs, args.threads, args.shared_fs) if args.executor == "ray" and todo else None
    slots = ray_run.slots if ray_run else jobs
    stack = contextlib.ExitStack()
    if ray_run:
        stream = ray_run.run(todo, on_start)
    else:
        workers = stack.enter_context(WarmWorkers(Path(stack.enter_context(F.work_dir("workers"))), 2 * jobs))
        stream = run_local(todo, jobs, args.threads, on_start, workers)
    t0 = time.perf_counter()
    try:
        with c.status(prog.line(slots)) as status:
            for cell, result in stream:
                rec = store(out, cell, result)
                records[cell.key] = {**rec, "cached": False}
                with prog.lock:
                    prog.running -= 1
                    prog.done += 1
                    prog.failed += failed(rec)
                    prog.seconds.append(result["seconds"])
                ratio = "" if rec["worst_ratio"] is None else f" worst {rec['worst_stage']} {rec['worst_ratio']:.2f}"
                style = {"pass": "green", "unsupported": "yellow"}.get(rec["status"], "bold red")
                c.print(f"  [{prog.cached + prog.done}/{prog.total}] {esc(cell.label)}: [{style}]{rec['status']}[/]"
                        f"{ratio} ({result['seconds']:.1f}s)" + (f" {rec['error'].splitlines()[-1][:100]}"
                                                                  if rec.get("error") else ""))
                status.update(prog.line(slots))
    except KeyboardInterrupt:
        c.print(f"[yellow]interrupted[/]: {prog.cached + prog.done} of {prog.total} cells have their results in "
                f"{out / 'cells'}; the same command resumes")
        raise
    finally:
        if ray_run:
            executor.update(nodes=len(ray_run.transfers), object_store_put_s=ray_run.put_s,
                            weight_transfers=ray_run.transfers, cells_lost=ray_run.lost)
            ray_run.close()
        else:
            executor.update(workers_started=workers.started, workers_crashed=workers.crashed)
        stack.close()
    executor["wall_s"] = time.perf_counter() - t0
    ordered = [records[cell.key] for cell, _ in plan if cell.key in records]
    paths = write_reports(out, manifest, prepared, ordered, executor)
    n_fail = sum(failed(r) for r in ordered)
    c.print(f"{len(ordered)} cells: {sum(r['status'] == 'pass' for r in ordered)} pass, {n_fail} failed, "
            f"{sum(r['status'] == 'unsupported' for r in ordered)} unsupported; wrote "
            + ", ".join(str(p) for p in paths))
    c.print("[bold green]PASS[/]" if not n_fail else "[bold red]FAIL[/]: see the failed cells above")
    return EXIT_OUT_OF_BOUNDS if n_fail else EXIT_OK


def add_parser(sub) -> None:
    s = sub.add_parser("sweep", help="check a zoo of checkpoints x backends x dtypes x image sizes from a manifest")
    s.add_argument("manifest", help="TOML or YAML manifest (see `shared/cli/sweep.py` or the README)")
    s.add_argument("--out", help="results directory (default: MANIFEST with the suffix .sweep); reused to resume")
    s.add_argument("--executor", choices=["local", "ray"], default="local")
    s.add_argument("--address", help="Ray cluster address (default: start Ray on this machine)")
    s.add_argument("--shared-fs", action="store_true",
                   help="Ray: the checkpoints and --out lie on a file system every node mounts at the same path; "
                        "cells read the files in place instead of through the object store")
    s.add_argument("--jobs", type=int_arg(1, 1024), help="cells at once (default: cores / --threads)")
    s.add_argument("--threads", type=int_arg(1, 256), default=1, help="CPU threads per cell (default 1)")
    s.add_argument("--rerun-failed", action="store_true", help="run the cells that failed last time again")
    s.set_defaults(func=cmd_sweep)
