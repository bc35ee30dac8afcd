"""Writing files and directories safely: the one writer path of the suite, and its temporary folders.

Every file or directory the suite writes goes through `atomic_write` or `write_dir_atomically`:

    .NAME.PID.XXXX.partial/          a staging folder beside the destination NAME (one recognisable name)
        NAME                         what the writer writes (a file, or a directory), under the destination's own
                                     name, so a library that insists on a suffix (.keras, .weights.h5, .ckpt) gets it
        tmpXXXX/, NAME.tmp, ...      the library's own temporary files: Python's `tempfile` points here while the
                                     writer runs (Keras' `tmpXXXX/assets`), and a library that writes `NAME.tmp`
                                     beside its target (MindSpore) writes it here too

then NAME is moved into place (replaced, or created exclusively) and the staging folder is removed, on success and
on every failure path (SIGTERM and Ctrl-C included: the tool turns both into exceptions). A writer called inside
another's staging folder writes directly: no writer wraps a second atomic writer around the first. After a SIGKILL
the next write to the same destination removes the staging folders of dead processes (and the nested temporary
names an earlier version of the suite left: `..NAME.PID.XXXX.partial.SUFFIX.PID.YYYY.partial...`).

Any I/O failure of a writer (an OSError, safetensors' "Error while serializing: I/O error", torch's
"[enforce fail at inline_container...]", HDF5's "file write failed") is an UnwritableError (exit 2) naming the
destination; folders the writer created for it are removed again.

Work folders in the system temp folder (`work_dir`: `vit-suite-KIND-PID-*`) follow the same rule: removed when the
`with` ends, and those of dead processes by the next run that uses that kind.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
import threading
import time
import types
from pathlib import Path

from . import limits as L
from .errors import OutputError, SuiteError, UnwritableError

#: the suffix of every staging folder (and, from older versions, staging file) beside a destination
PARTIAL = ".partial"


def umask_mode(directory: bool = False) -> int:
    """The mode the process umask gives a new file (0o666 & ~umask) or directory (0o777 & ~umask). Temporary files
    are created 0600 (and MindSpore writes 0400): a written file gets this mode back, so teammates and later CI
    stages can read what the suite writes exactly as far as the umask allows."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


# ------------------------------------------------------------------- the system temp folder
#: .outer: the real temp folder while a writer (in the main thread) redirects `tempfile` into its stage; one for the
#: process, not per thread, since the redirect is process-wide: another thread's work_dir must not land in the stage
_redirect = types.SimpleNamespace(outer=None)


def system_tempdir() -> str:
    """The system temp folder, also while a writer points Python's `tempfile` at its staging folder."""
    return getattr(_redirect, "outer", None) or tempfile.gettempdir()


def remove_stale_tempdirs(prefix: str) -> None:
    """Remove `PREFIX<pid>-*` directories in the system temp folder whose process is dead (a run killed before its
    cleanup ran: SIGKILL, a crash)."""
    for d in Path(system_tempdir()).glob(f"{glob.escape(prefix)}*"):
        pid = d.name[len(prefix):].split("-", 1)[0]
        try:
            if pid.isdigit() and not pid_alive(int(pid)) and d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


def work_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary directory `vit-suite-KIND-PID-*` in the system temp folder, removed when the `with` ends; those of
    dead processes (killed before their cleanup ran) are removed first, so none outlives a later run."""
    prefix = f"vit-suite-{kind}-"
    remove_stale_tempdirs(prefix)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=system_tempdir())


# ------------------------------------------------------------------- staging folders
def temp_prefix(name: str) -> str:
    """`.NAME.PID.`: the prefix of the staging folder beside a destination NAME (the PID tells a later run whether
    its writer is still alive)."""
    return f".{name}.{os.getpid()}."


def _stale_pattern(name: str) -> re.Pattern:
    # `.NAME.PID.XXXX.partial`, and the nested names of older versions, `..NAME.PID.XXXX.partial.SUFFIX.PID.YYYY
    # .partial[.tmp|.SUFFIX]`: the first PID is the writer's
    return re.compile(r"\.\.?" + re.escape(name) + r"\.(?P<pid>\d+)\.[a-z0-9_]{8}" + re.escape(PARTIAL)
                      + r"(?:\..*)?", re.DOTALL)


def remove_stale_partials(directory: str | os.PathLike, name: str) -> list[Path]:
    """Remove the staging folders (and files) beside destination NAME whose writer is dead (killed before it could
    clean up), whatever they hold, and the PID-less `.NAME.XXXX.partial` of older versions once older than
    STALE_PARTIAL_SECONDS. Returns them."""
    removed = []
    pattern = _stale_pattern(name)
    try:
        entries = [p for p in Path(directory).iterdir() if p.name.startswith(".")]
    except OSError:
        return removed
    for p in entries:
        m = pattern.fullmatch(p.name)
        try:
            if m:
                stale = not pid_alive(int(m["pid"]))
            else:
                middle = p.name[len(name) + 2:-len(PARTIAL)] if p.name.endswith(PARTIAL) else ""
                stale = (p.name.startswith(f".{name}.") and middle and "." not in middle
                         and time.time() - p.lstat().st_mtime > L.STALE_PARTIAL_SECONDS)
            if stale:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


_active = threading.local()  # .stages: the staging folders of the writers running in this thread


def _inside_stage(path: Path) -> bool:
    return any(path.parent == s for s in getattr(_active, "stages", ()))


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, deepest first (removed again if the write fails)."""
    missing = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_made(made: list[Path]) -> None:
    for d in made:
        try:
            os.rmdir(d)
        except OSError:
            break


def _open_stage(dest: Path) -> tuple[Path, list[Path]]:
    made: list[Path] = []
    try:
        made = _make_parents(dest.parent)
        remove_stale_partials(dest.parent, dest.name)
        stage = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name), suffix=PARTIAL, dir=dest.parent))
    except OSError as e:
        _remove_made(made)
        raise UnwritableError(f"{dest}: cannot write there ({type(e).__name__}: {e.strerror or e})") from None
    return stage, made


@contextlib.contextmanager
def _staging(stage: Path):
    """While a writer runs: its stage is active in this thread (an atomic writer called inside writes directly), and
    in the main thread Python's `tempfile` points into it, so a library's own temporary files land there too."""
    stages = _active.__dict__.setdefault("stages", [])
    stages.append(stage)
    redirect = threading.current_thread() is threading.main_thread() and getattr(_redirect, "outer", None) is None
    if redirect:
        _redirect.outer, saved = tempfile.gettempdir(), tempfile.tempdir
        tempfile.tempdir = str(stage)
    try:
        yield
    finally:
        if redirect:
            tempfile.tempdir, _redirect.outer = saved, None
        stages.remove(stage)


#: checks that refuse a write before it is moved into place (`checks_before_commit`), per thread
_commit = threading.local()


@contextlib.contextmanager
def checks_before_commit(checks: list):
    """While the `with` runs, every atomic writer of this thread calls each of `checks` (callables that raise to
    refuse) once its writer has written and before the result is moved into place: a source's own verification (a
    digest, a CRC-32, started on a thread by `in_background`) runs beside the writing, and a source that fails it
    leaves nothing behind, with the error it would have raised before anything was written. The list is read when
    each writer finishes: checks appended meanwhile count."""
    outer = getattr(_commit, "checks", None)
    _commit.checks = checks if outer is None else outer + checks
    try:
        yield
    finally:
        _commit.checks = outer


def _run_commit_checks() -> None:
    for check in getattr(_commit, "checks", None) or ():
        check()


def in_background(fn, *args):
    """fn(*args) started on a daemon thread (for work that releases the GIL: hashing, CRC-32, NumPy); returns a
    callable that waits for it and raises what it raised (each call)."""
    outcome: list = []

    def run():
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised by settle, in the caller's thread
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True, name=f"vit-suite-{getattr(fn, '__name__', 'check')}")
    t.start()

    def settle() -> None:
        t.join()
        if outcome:
            raise outcome[0]
    return settle


def checked_beside(check, deferred: list | None, work):
    """work() while `check` (a source's own verification: fn and args for `in_background`) runs on a thread. If work
    raises, the check's error comes first (a damaged source says so, not what its damage broke). Then the check is
    waited for now, or, with `deferred` (`checks_before_commit`'s list), appended to it: the caller writes with the
    result, and the check settles before the write is moved into place."""
    settle = in_background(*check)
    try:
        out = work()
    except Exception:
        settle()
        raise
    if deferred is None:
        settle()
    else:
        deferred.append(settle)
    return out


class BackgroundWriter:
    """A file object (`w`: a file, a zip member) written in order on one thread, so that producing the next bytes
    (a transposed band: `weights.write_c_order`) overlaps writing the last (and a zip member's CRC-32 of it). write()
    returns at once with a ticket: what was passed must stay unchanged until `wait(ticket)`; pieces under
    COALESCE_BYTES are copied (free at once) and handed over together, so the thread is not woken per piece.
    `band(shape, dtype)` lends one of BANDS buffers, reused round the ring (each allocated once: fresh pages are
    what costs), free once the write that follows it is done. close() (the `with`'s end) waits for every write; the
    first failure is raised by the next call, and by close."""

    COALESCE_BYTES, BANDS = 64 << 10, 3

    def __init__(self, w):
        import queue

        self.w, self.queue, self.issued, self.done = w, queue.SimpleQueue(), 0, 0
        self.small = bytearray()
        self.ring: list = [None] * self.BANDS
        self.ring_tickets, self.lent, self.next = [0] * self.BANDS, None, 0
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True, name="vit-suite-writer")
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.w.write(data)
                except BaseException as e:  # noqa: BLE001 - raised in the caller's thread by the next call
                    self.error = e
            with self.cond:
                self.done += 1
                self.cond.notify_all()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _put(self, data) -> int:
        self.queue.put(data)
        self.issued += 1
        return self.issued

    def _put_small(self) -> None:
        if self.small:
            self._put(self.small)
            self.small = bytearray()

    def write(self, data) -> int:
        self._raise()
        data = memoryview(data).cast("B")
        if len(data) < self.COALESCE_BYTES:
            self.small += data
            if len(self.small) >= self.COALESCE_BYTES:
                self._put_small()
            ticket = self.issued
        else:
            self._put_small()
            ticket = self._put(data)
        if self.lent is not None:  # the write of the band lent last: its buffer is free once this is done
            self.ring_tickets[self.lent], self.lent = ticket, None
        return ticket

    def band(self, shape: tuple[int, ...], dtype):
        """A buffer of `shape` and `dtype` from the ring, free to fill (its last write done); write it next."""
        import numpy as np

        k, self.next = self.next, (self.next + 1) % self.BANDS
        self.wait(self.ring_tickets[k])
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if self.ring[k] is None or self.ring[k].nbytes < nbytes:
            self.ring[k] = np.empty(nbytes, np.uint8)
        self.lent = k
        return self.ring[k][:nbytes].view(dtype).reshape(shape)

    def wait(self, ticket: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.done >= ticket)
        self._raise()

    def close(self) -> None:
        if self.thread.is_alive():
            self._put_small()
            self.queue.put(None)
            self.thread.join()
        self._raise()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
            return
        self.error = self.error or exc[1]  # a failing caller: the queued writes are dropped, the thread ends
        self.queue.put(None)
        self.thread.join()


#: what an I/O failure says when a library does not raise it as an OSError
_IO_MARKERS = ("I/O error", "os error", "No space left", "Disk quota", "Read-only file system", "Permission denied",
               "File too large", "[Errno", "errno =", "file write failed", "inline_container", "PytorchStreamWriter")


def io_failure(e: BaseException) -> str | None:
    """'Type: what failed' when `e` (or what caused it) is an I/O failure, else None: an OSError, or a library's
    error that reports one (safetensors' SafetensorError, torch's RuntimeError from its zip writer, h5py's)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen and not isinstance(e, SuiteError):
        seen.add(id(e))
        if isinstance(e, OSError):
            return f"{type(e).__name__}: {e.strerror or e}"
        text = str(e).strip()
        if isinstance(e, Exception) and any(m in text for m in _IO_MARKERS):
            return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"
        e = e.__cause__ or e.__context__
    return None


def _failed(e: BaseException, dest: Path) -> BaseException:
    """The exception to raise for a failed write: an I/O failure becomes UnwritableError naming the destination."""
    what = io_failure(e)
    if what is None:
        return e
    return UnwritableError(f"{dest}: writing failed ({what}); nothing was left behind")


def atomic_write(path: str | os.PathLike, write_fn, *, overwrite: bool = True) -> Path:
    """Call write_fn(tmp) on `STAGE/NAME` in a staging folder `.NAME.PID.XXXX.partial` beside `path`, then move it
    into place with the umask's mode and remove the staging folder.

    On any failure (SIGTERM and Ctrl-C included) the staging folder and the folders made for `path` are removed and
    `path` is left untouched; stale staging folders of dead writers to the same destination are removed first.
    overwrite=False creates `path` only if it does not exist, atomically (a hard link): of two concurrent writers the
    second gets OutputError. A destination that cannot be written (permissions, read-only, disk full) is an
    UnwritableError (exit 2) naming it, never a bare OSError or a library's I/O error. Called inside another writer's
    staging folder, it writes `path` directly (the outer writer already makes it atomic).
    """
    path = Path(path)
    if _inside_stage(path):  # the outer writer stages, moves and names the destination in its errors
        write_fn(str(path))
        return path
    stage, made = _open_stage(path)
    tmp = stage / path.name
    try:
        with _staging(stage):
            write_fn(str(tmp))
        if not tmp.is_file():
            raise UnwritableError(f"{path}: the writer wrote nothing")
        _run_commit_checks()
        os.chmod(tmp, umask_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _create_exclusively(tmp, path)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_made(made)
        err = _failed(e, path)
        if err is e:
            raise
        raise err from None
    shutil.rmtree(stage, ignore_errors=True)
    return path


def _create_exclusively(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails if `path` exists, whoever created it in the meantime
    except FileExistsError:
        raise OutputError(f"{path} exists (written by another process meanwhile?); pass --force to replace "
                          f"it") from None
    except OSError:  # a filesystem without hard links: check, then rename (not atomic against a concurrent writer)
        if os.path.lexists(path):
            raise OutputError(f"{path} exists; pass --force to replace it") from None
        os.replace(tmp, path)


def write_dir_atomically(directory: str | os.PathLike, write_files, *, overwrite: bool = False) -> Path:
    """Call write_files(tmp_dir) on a directory in a staging folder beside `directory`, then move it into place with
    the umask's modes: on any failure nothing is left behind and an existing `directory` is untouched. An existing,
    non-empty `directory` (or a file of that name) is replaced only with overwrite=True, and what it replaces is
    moved into the staging folder and removed with it; otherwise the name is claimed exclusively (an empty directory
    the user made is taken over; of two concurrent writers the second fails with OutputError)."""
    directory = Path(directory)
    if os.path.lexists(directory) and (not directory.is_dir() or any(directory.iterdir())) and not overwrite:
        raise OutputError(f"{directory}: exists and is not empty; pass --force to replace it")
    stage, made = _open_stage(directory)
    tmp, old = stage / "new", stage / "old"
    moved = claimed = False
    try:
        os.mkdir(tmp)
        with _staging(stage):
            write_files(tmp)
        _run_commit_checks()
        for root, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), umask_mode(directory=True))
            for f in files:
                os.chmod(os.path.join(root, f), umask_mode())
        os.chmod(tmp, umask_mode(directory=True))
        if overwrite and os.path.lexists(directory):
            os.replace(directory, old)
            moved = True
        elif not overwrite:
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
            try:
                os.mkdir(directory)
            except FileExistsError:
                raise OutputError(f"{directory}: exists (written by another process meanwhile?); pass --force to "
                                  f"replace it") from None
            claimed = True
        os.replace(tmp, directory)  # onto nothing, or onto the empty directory this writer just created
    except BaseException as e:
        if claimed and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        if moved and not os.path.lexists(directory):
            os.replace(old, directory)
        shutil.rmtree(stage, ignore_errors=True)
        _remove_made(made)
        err = _failed(e, directory)
        if err is e:
            raise
        raise err from None
    shutil.rmtree(stage, ignore_errors=True)
    return directory
