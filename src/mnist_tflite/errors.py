"""The one exception type for user mistakes; the CLI prints it as one line and exits 2."""

from __future__ import annotations


class MnistTfliteError(Exception):
    """A problem with the user's input: a file, an option or a model.

    The message names the file (when there is one), what was found and what was expected.
    Anything else that escapes is a bug in mnist-tflite and keeps its traceback.
    """

    exit_code = 2


def fail(path: object, problem: str) -> MnistTfliteError:
    """Build an error whose message starts with the offending path."""
    return MnistTfliteError(f"{path}: {problem}")
