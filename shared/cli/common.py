"""What every `vit-suite` command shares: the console, argument parsing helpers, and where a model comes from."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zipfile
from pathlib import Path
from typing import NoReturn

import numpy as np

from .. import fileio as F
from .. import weights as W
from ..config import ViTConfig
from ..errors import InvalidFileError, OutputError, UsageError
from ..limits import NPY_MAX_BYTES, SEED_MAX  # noqa: F401 (SEED_MAX: the commands import it from here)
from ..presets import DEFAULT_PRESET, get_preset


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so every `finally` and cleanup runs (temp files removed) before exit."""


def _on_sigterm(signum, frame):
    raise Terminated()


def exit_process(code: int) -> NoReturn:
    """End this process with `code`, skipping the interpreter's teardown: Python's exit deallocates every module
    the frameworks imported, one object at a time, which costs a process that imported TensorFlow about 1 CPU
    second, torch about 0.6, and does nothing a finished command needs. What an exit must do still happens, in
    Py_Finalize's order: the threads still running are joined (with threading's exit callbacks: a thread pool's
    queued work), the atexit handlers run (the frameworks' own clean-up: TensorFlow's AutoGraph files, Ray's
    shutdown, temporary folders), then stdout and stderr are flushed. What no longer happens: the `__del__` of
    objects alive at exit and C++ static destructors. For the tool's own entry points only, from the main thread
    (the console script, `python -m shared.cli`, the child worker): a program that calls `main()` keeps its
    process."""
    import atexit
    import threading

    threading._shutdown()  # CPython's own names for the first two steps of Py_Finalize, private but long-lived
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe, a closed stream: nothing left to say there
            pass
    os._exit(code)


def run_guarded(func, args, *, debug: bool = False) -> int:
    """Run a command: a SuiteError prints one typed line and returns its exit code; anything else prints one line
    naming the exception (the traceback with --debug) and returns EXIT_CRASH; Ctrl-C returns 130 and SIGTERM 143,
    after the cleanups of whatever was being written have run."""
    import signal
    import threading
    import traceback

    from rich.markup import escape

    from ..errors import EXIT_CRASH, SuiteError, UnsupportedError

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    err = console(stderr=True)
    try:
        return func(args)
    except SuiteError as e:
        label = "unsupported:" if isinstance(e, UnsupportedError) else "[red]error:[/]"
        err.print(f"{label} {escape(str(e))}", soft_wrap=True)
        if debug:
            traceback.print_exc()
        return e.exit_code
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return 130
    except Terminated:
        err.print("[yellow]terminated (SIGTERM)[/]")
        return 143
    except Exception as e:  # noqa: BLE001 - the top of the tool: one line, never a bare traceback
        if debug:
            traceback.print_exc()
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        err.print(f"[red]unexpected error:[/] {type(e).__name__}: {escape(first)}"
                  + ("" if debug else " (run again with --debug for the traceback)"), soft_wrap=True)
        return EXIT_CRASH
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def console(stderr: bool = False):
    """The console every command prints through: no emoji codes (`digits:abc:` prints as written), no highlighting.
    Markup stays on for the tool's own styles, so a user-supplied string inside markup goes through `esc`."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, emoji=False, width=None if sys.stdout.isatty() else 130)


def esc(value) -> str:
    """A user-supplied value (a file name, a model or class name, an image spec) for console markup: printed as
    written, never read as a style tag (`x[red].npy`, `[/]`)."""
    from rich.markup import escape

    return escape(str(value))




def int_arg(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi]; anything else is bad usage (exit 2), the range named."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside [{lo}, {hi}]")
        return v

    parse.__name__ = "integer"
    return parse


def float_arg(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite float in the interval (open at an end where asked)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        above = v > lo if lo_open else v >= lo
        below = v < hi if hi_open else v <= hi
        if not (math.isfinite(v) and above and below):
            raise argparse.ArgumentTypeError(f"expected a number in {'(' if lo_open else '['}{lo}, {hi}"
                                             f"{')' if hi_open else ']'}, got {text!r}")
        return v

    parse.__name__ = "number"
    return parse


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'224x224', '60x100' or '224' -> (H, W); None stays None."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise UsageError(f"--image-size must be HxW (e.g. 224x224 or 60x100), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise UsageError(f"--image-size must be HxW with positive sizes, got {text!r}")
    return (parts[0], parts[1])


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file or directory (links and relative spellings included), existing or not."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def claim_output(path: str | Path | None, flag: str, *, force: bool, inputs=()) -> Path | None:
    """Refuse to write `path` (given by `flag`) over one of the command's `inputs`, even with --force, or over an
    existing file without --force; run before any work, so a refused command costs nothing. The write itself then
    uses `overwrite=force`, which closes the race with a concurrent writer."""
    if path is None:
        return None
    for src in inputs:
        if src is not None and same_file(path, src):
            raise OutputError(f"{flag} {path} is also this command's input {src}: refusing to write over it, "
                              f"even with --force")
    if Path(path).exists() and not force:
        raise OutputError(f"{flag} {path} exists; pass --force to replace it")
    return Path(path)




def load_npy(path: str, what: str, cfg: ViTConfig | None = None) -> np.ndarray:
    """A finite, non-empty NCHW float32 array from a .npy file, never unpickled; the header is checked against the
    file's size before anything is allocated (a header may claim a billion images). With `cfg`, also images that
    model can take (channels, a size divisible by the patch). Every error names the file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p}: no such file")
    if p.stat().st_size == 0:
        raise InvalidFileError(f"{what} {p}: an empty file (0 bytes), not a .npy array")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)  # never unpickle; maps, so nothing is read yet
    except (ValueError, OverflowError, TypeError, EOFError) as e:  # a pickle, a header claiming more than the file
        raise InvalidFileError(f"{what} {p}: not a plain .npy array, or its header does not match its size "
                               f"({type(e).__name__}: {e})") from None
    except OSError as e:
        raise InvalidFileError(f"{what} {p}: unreadable ({e})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive: np.load opened it as a dict of arrays
        close = getattr(arr, "close", None)
        if close:
            close()
        raise InvalidFileError(f"{what} {p}: an .npz archive, not a .npy array (save the images with np.save)")
    if arr.dtype.kind not in "fiub":
        raise InvalidFileError(f"{what} {p}: dtype {arr.dtype} is not numeric; expected float32 images")
    if arr.ndim != 4:
        raise UsageError(f"{what} {p}: expected NCHW (4-D) float array, got shape {arr.shape}")
    if arr.size == 0:
        raise UsageError(f"{what} {p}: an empty batch (shape {arr.shape})")
    if arr.size * 4 > NPY_MAX_BYTES:
        raise UsageError(f"{what} {p}: shape {arr.shape} is {arr.size * 4 / 2**30:.1f} GiB as float32, over the "
                         f"{NPY_MAX_BYTES / 2**30:.0f} GiB limit for one input")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: counted just below
        out = np.array(arr, dtype=np.float32)
    bad = out.size - int(np.isfinite(out).sum())
    if bad:
        raise UsageError(f"{what} {p}: {bad} of {out.size} values are NaN or infinite (after conversion to float32)")
    if cfg is not None:
        from ..errors import ConfigError
        from ..reference import check_images

        try:
            check_images(cfg, out)
        except ConfigError as e:
            raise UsageError(f"{what} {p}: {e}") from None
    return out


def write_npz(path: str | Path, arrays: dict, meta: dict, as_float32: bool = True, *, overwrite: bool = True) -> None:
    """Arrays (cast to float32 unless `as_float32` is False) and a JSON `__meta__` entry, written atomically."""
    arrays = {k: np.asarray(v, dtype=np.float32 if as_float32 else None) for k, v in arrays.items()}
    arrays["__meta__"] = np.array(json.dumps(meta))

    def write(tmp):
        # what np.savez writes, with the archive closed on every path: np.savez leaves a half-written ZipFile whose
        # finaliser prints a traceback when the disk fills up
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for k, v in arrays.items():
                with z.open(f"{k}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, v, allow_pickle=False)

    F.atomic_write(path, write, overwrite=overwrite)


def write_text(path: str | Path, text: str, *, overwrite: bool) -> Path:
    """A JSON / HTML output, atomically (overwrite=False: only if `path` does not exist)."""
    return F.atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)


def read_npz(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of a file written by `write_npz`."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("__")}
        meta = json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}
    return arrays, meta


def resolve_model(weights: str | None, preset: str | None, seed: int = 0):
    """(cfg, state, source, images, labels) from a canonical file, a preset's seeded weights, or the default.

    images/labels are the default model's held-out set, None otherwise.
    """
    from ..init import init_weights

    if weights:
        cfg, state = W.load(weights)
        return cfg, state, weights, None, None
    if preset:
        cfg = get_preset(preset)
        return cfg, init_weights(cfg, seed), f"preset {cfg.name} (seed {seed})", None, None
    return default_model()


def default_model() -> tuple[ViTConfig, dict, str, np.ndarray | None, np.ndarray | None]:
    """The built-in default: the shipped trained digits model with real digits, else a seeded tiny model."""
    from ..init import init_weights

    try:
        from ..training.data import default_model as shipped

        found = shipped()
    except ImportError:  # scikit-learn or Pillow missing: the data pipeline cannot rebuild the held-out set
        found = None
    if found is not None:
        return found
    cfg = get_preset(DEFAULT_PRESET)
    return cfg, init_weights(cfg, 0), f"preset {cfg.name} (seed 0)", None, None


def selected_backends(arg: str | None) -> list[str]:
    """--backends (any registered name, variants included) or every installed primary backend."""
    from ..backend import available_backends, backend_names  # here: `convert` never needs the registry

    wanted = arg.split(",") if arg else available_backends()
    unknown = [b for b in wanted if b not in backend_names()]
    if unknown:
        raise UsageError(f"unknown backend(s) {unknown}; registered: {backend_names()}")
    twice = sorted({b for b in wanted if wanted.count(b) > 1})
    if twice:  # one child per backend: a second would write the first's files
        raise UsageError(f"--backends names {', '.join(twice)} more than once")
    if not wanted:
        raise UsageError("no backend is installed: pip install 'vit-suite[all]'")
    return wanted
