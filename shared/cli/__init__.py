"""The `vit-suite` tool: one module per command, one child-process worker, the console.

    check.py     check (the default command) and its HTML report (report.py)
    convert.py   convert        forward.py   forward, reference       inspect.py   inspect, init
    bench.py     bench          train.py     train, evaluate, predict grad.py      grad (= check --grad)
    sweep.py     sweep: a manifest's checkpoints x backends x dtypes, one check per cell, local or on Ray
                 (its reports: sweep_report.py)
    worker.py    the one entry point of every child process (forward, grad, bench tasks)
    common.py    the console, argument helpers, where a model comes from

The tool sits at the top: it imports the contract, shared.convert, shared.training and shared.testing; nothing
imports it. It reaches a framework only through the backend registry (shared/backend.py).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import EXIT_CODES, EXIT_USAGE
from .common import exit_process, run_guarded

#: the command modules, in the order `--help` lists them, and the commands each defines. A command line naming
#: one command imports only its module: `convert` never pays for the backend registry and the reference.
COMMANDS = {"check": ("check",), "sweep": ("sweep",), "convert": ("convert",), "forward": ("forward", "reference"),
            "inspect": ("inspect", "init"), "bench": ("bench",), "train": ("train", "evaluate", "predict"),
            "grad": ("grad",)}

DESCRIPTION = ("`vit-suite`: check conformance, sweep a model zoo, convert weights, inspect files, run one backend, benchmark, train.\n\n"
               "Exit codes: " + ", ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + ".")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of `command` alone (its module the only one imported)."""
    p = argparse.ArgumentParser(prog="vit-suite", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error (anywhere on "
                                                          "the command line)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, commands in COMMANDS.items():
        if command is None or command in commands:
            importlib.import_module(f".{name}", __name__).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["check", *argv]
    known = {c for commands in COMMANDS.values() for c in commands}
    parser = build_parser(argv[0] if argv[0] in known else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return run_guarded(args.func, args, debug=debug)


def run() -> None:
    """The console script `vit-suite`: main(), then the process ends without Python's teardown (exit_process)."""
    exit_process(main())
