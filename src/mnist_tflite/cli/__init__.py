"""``mnist-tflite`` command line: parses arguments and calls the pipeline stages.

``parsing`` builds the parser, ``commands`` turns parsed arguments into calls to a stage,
``ending`` decides how a command ends when something goes wrong. Heavy imports
(TensorFlow, LiteRT, matplotlib) happen inside the command functions so that ``predict``
starts fast and never loads TensorFlow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from mnist_tflite.cli import ending
from mnist_tflite.cli.parsing import build_parser
from mnist_tflite.core.errors import PROG, MnistTfliteError, os_error
from mnist_tflite.core.procs import sigterm_as_interrupt, terminated

__all__ = ["build_parser", "entry", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors, with a one-line message)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    nul = next((a for a in argv if "\0" in a), None)
    if nul is not None:  # only a caller of main() can pass one; the OS would refuse the path
        return ending.report(f"argument {nul!r} contains a NUL byte; expected a plain value or path", 2)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        with sigterm_as_interrupt():  # `kill PID` cleans up like Ctrl-C: temp folders, children
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # here, not at exit: a closed pipe is then ours to report
            return code
    except BaseException as exc:
        # Ctrl-C or SIGTERM, even where a library turned the KeyboardInterrupt into its own error
        if isinstance(exc, KeyboardInterrupt) or terminated():
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        if isinstance(exc, BrokenPipeError):
            return ending.broken_pipe()
        if isinstance(exc, MnistTfliteError):
            return ending.report(str(exc), exc.exit_code)
        if isinstance(exc, ModuleNotFoundError) and (hint := ending.missing_extra(exc)) is not None:
            return ending.report(hint, 2)
        if isinstance(exc, OSError):  # the system refused (disk full, read-only, I/O error): not our bug
            return ending.report(str(os_error(exc, doing="failed")), 1)
        raise


def entry() -> None:
    code = main()
    if code == 130:
        # Interrupted: cleanup has run. Exit now, with 130: a KeyboardInterrupt raised inside C++
        # code (TensorFlow runs Python through PyRun_String) makes CPython's shutdown re-kill the
        # process with SIGINT even though it was handled.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
