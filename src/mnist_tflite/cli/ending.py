"""How the CLI ends when something goes wrong: one line on stderr, a meaningful exit code.

``cli.main`` calls these for the failures a user can meet without a bug in mnist-tflite: a
user error, a missing optional dependency, a closed pipe (``mnist-tflite ... | head``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

from mnist_tflite.core.errors import PROG, MnistTfliteError, printable

SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for `yes | head`

# top-level module -> the extra of pyproject.toml that installs it
EXTRAS = {
    "tensorflow": "train",
    "keras": "train",
    "tf_keras": "qat",
    "tensorflow_model_optimization": "qat",
    "tflite_micro": "micro",
    "fastapi": "serve",
    "fastapi_offline": "serve",
    "uvicorn": "serve",
    "pydantic": "serve",
    "starlette": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "httptools": "serve",
}
CORE = ("numpy", "PIL", "ai_edge_litert", "matplotlib")


def report(message: str, code: int) -> int:
    """Print ``mnist-tflite: error: <message>`` as exactly one line; return ``code``."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"{PROG}: error: {printable(line)}", file=sys.stderr)
    return code


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The pip command that installs a missing module, or None if it is not one of ours."""
    top = (exc.name or "").split(".")[0]
    if top in EXTRAS:
        extra = EXTRAS[top]
        return (
            f"this command needs the Python module {top!r}, which is not installed; "
            f"install it with: pip install 'mnist-tflite[{extra}]'"
        )
    if top in CORE:
        return (
            f"the Python module {top!r} is not installed (a core dependency); "
            "reinstall with: pip install mnist-tflite"
        )
    return None


def require(*modules: str) -> None:
    """Fail with the pip command now, before any output, if an optional module is missing.

    Commands call this first, so that a missing TensorFlow is reported before an output
    folder is created, not when the training stage first imports it.
    """
    for name in modules:
        present = sys.modules[name] is not None if name in sys.modules else _findable(name)
        if not present:
            exc = ModuleNotFoundError(f"No module named {name!r}", name=name)
            raise MnistTfliteError(missing_extra(exc) or str(exc))


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def broken_pipe() -> int:
    """stdout's reader went away (``| head``): stop quietly, like other Unix tools."""
    # Python would try to flush stdout again at exit and print "Exception ignored"
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return SIGPIPE_EXIT
