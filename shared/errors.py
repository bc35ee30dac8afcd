"""Every exception of the suite, and the exit code `vit-suite` returns for it: one table, one place.

    0  EXIT_OK              success
    1  EXIT_CRASH           a backend (or the tool) crashed: an unexpected exception, not one of these classes
    2  EXIT_USAGE           bad usage: an unknown preset, backend or flag value, a config that cannot work,
                            facts a file does not determine (pass --preset)
    3  EXIT_INVALID_FILE    an invalid or unsafe file: not the format it claims, truncated, a pickle with code
    4  EXIT_MISMATCH        keys, shapes or dtypes that disagree with the config; a conversion the target
                            format cannot represent
    5  EXIT_OUT_OF_BOUNDS   a backend computed something outside its tolerance bound (check, grad)
    6  EXIT_UNSUPPORTED     the backend does not support what was asked: a dtype, or a training or
                            benchmark hook it does not implement; `check` and `grad` show it as unsupported
    7  EXIT_NONFINITE       an output holds NaN or Inf: a backend's (check), the reference's, or what
                            `forward` / `reference` wrote (each stage named, with its count)
    8  EXIT_UNPROVEN        the source library could not run the source file, so the conversion is not proven
                            (`convert`'s proof, `check --against`): never reported as a numeric failure

The tool maps an exception to its code through `exit_code`; nothing else spells these numbers.
This module imports nothing from the suite but `shared.limits` (constants only): every other module may import it.
"""
from __future__ import annotations

from .limits import MAX_LISTED_PROBLEMS

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_USAGE = 2
EXIT_INVALID_FILE = 3
EXIT_MISMATCH = 4
EXIT_OUT_OF_BOUNDS = 5
EXIT_UNSUPPORTED = 6
EXIT_NONFINITE = 7
EXIT_UNPROVEN = 8

#: exit code -> what it means (the README and `vit-suite --help` print this table)
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_CRASH: "a backend crashed",
    EXIT_USAGE: "bad usage",
    EXIT_INVALID_FILE: "invalid or unsafe file",
    EXIT_MISMATCH: "key/shape mismatch",
    EXIT_OUT_OF_BOUNDS: "a backend out of its bound",
    EXIT_UNSUPPORTED: "the backend does not support the dtype or hook",
    EXIT_NONFINITE: "non-finite (NaN/Inf) output",
    EXIT_UNPROVEN: "the source library could not run the source: not proven",
}


class SuiteError(Exception):
    """Base of every error the suite raises on purpose; `exit_code` is what the command line returns."""

    exit_code = EXIT_CRASH


class UsageError(SuiteError):
    """A command-line argument that cannot work (the message says which and why)."""

    exit_code = EXIT_USAGE


class OutputError(UsageError, FileExistsError):
    """A destination that exists (replaced only with --force), or that is one of the command's own inputs (never
    written over, even with --force). Also a FileExistsError, for Python callers of the writers."""


class UnwritableError(UsageError, OSError):
    """A destination that cannot be written: no permission, a read-only file system, a full disk. Nothing is left
    behind. Also an OSError, for Python callers."""


class ConfigError(SuiteError, ValueError):
    """A ViTConfig that cannot describe a working model."""

    exit_code = EXIT_USAGE


class BackendError(SuiteError, RuntimeError):
    """A backend that is unknown, unavailable, or misconfigured."""

    exit_code = EXIT_USAGE


class UnsupportedError(BackendError):
    """A backend asked for something it does not offer: a dtype, or an optional training / benchmark hook."""

    exit_code = EXIT_UNSUPPORTED


class NonFiniteError(SuiteError, ArithmeticError):
    """A computed output (or the reference itself) holds NaN or Inf; the message names each stage and its count."""

    exit_code = EXIT_NONFINITE


class SourceError(SuiteError):
    """The source library could not run the source file (`convert`'s proof, `check --against`): the conversion is
    neither proven nor disproven. The message is one line: the library, the file and what it raised."""

    exit_code = EXIT_UNPROVEN


class WeightsError(SuiteError):
    """Base of weight-file errors."""

    exit_code = EXIT_INVALID_FILE


class InvalidFileError(WeightsError):
    """Not a readable, safe weight file (not safetensors, truncated, lying header, no config, pickle...)."""

    exit_code = EXIT_INVALID_FILE


def capped_list(items: list[str], sep: str = "\n  ", limit: int = MAX_LISTED_PROBLEMS) -> str:
    """The first `limit` items joined, then "... and N more": a message stays short whatever a file holds (each
    item is cut at 300 characters too)."""
    shown = [i if len(i) <= 300 else i[:297] + "..." for i in items[:limit]]
    if len(items) > limit:
        shown.append(f"... and {len(items) - limit:,} more")
    return sep.join(shown)


class MismatchError(WeightsError):
    """Keys, shapes, dtypes or values disagree with what the config requires; every problem is kept in `problems`,
    the message lists the first MAX_LISTED_PROBLEMS."""

    exit_code = EXIT_MISMATCH

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        super().__init__(f"{source}: {len(problems)} problem(s) with the weights:\n  " + capped_list(problems))


class ConversionError(WeightsError, ValueError):
    """The checkpoint (or config) uses something the target format cannot represent."""

    exit_code = EXIT_MISMATCH


class MissingFactsError(ConversionError):
    """The file does not determine the model and nothing was given to fill the gap (use --preset NAME)."""

    exit_code = EXIT_USAGE


class ConversionWarning(UserWarning):
    """A conversion dropped or overrode something; the message says what and why."""
