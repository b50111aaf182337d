"""Hostile inputs for the CLI, as data: bad option values, bad paths, and the workspace of
hostile files (corrupted models, sidecars, arrays, images, reports) the cases point at.

A case is an ``argv`` with placeholders (``{W}`` the workspace, ``{M}`` tests/models), the
exit codes it may end with, the text its one-line error must contain, and the output path
that must not exist afterwards. ``test_hostile_cli.py`` and ``test_hostile_files.py`` run them.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MODELS = Path(__file__).parent / "models"
ERROR_LINE = re.compile(r"^mnist-tflite: error: ")


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    codes: frozenset[int] = frozenset({2})
    name: str = ""  # must appear in the last line of stderr (the option or file)
    out: str | None = None  # must not exist afterwards

    def resolve(self, w: Path) -> tuple[list[str], str, Path | None]:
        def sub(s: str) -> str:
            return s.replace("{W}", str(w)).replace("{M}", str(MODELS))

        return [sub(a) for a in self.argv], sub(self.name), Path(sub(self.out)) if self.out else None


def check_outcome(case: Case, w: Path, code: object, stderr: str) -> None:
    """The contract: an allowed exit code, one ``mnist-tflite: error:`` line naming the
    option or file, no traceback, nothing left at the output path."""
    _, name, out = case.resolve(w)
    assert "Traceback" not in stderr, stderr
    assert code in case.codes, f"exit {code}, expected {sorted(case.codes)}; stderr:\n{stderr}"
    if code != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        assert lines, "no error message"
        assert ERROR_LINE.match(lines[-1]), lines[-1]
        assert name in lines[-1], f"{name!r} not named in: {lines[-1]}"
    if out is not None:
        assert not out.exists(), f"{out} was left behind"


# -- bad option values -----------------------------------------------------------------

NOT_AN_INT = {
    "word": "abc",
    "empty": "",
    "float": "1.5",
    "hex": "0x10",
    "exp": "1e3",
    "nan": "nan",
    "5000-digits": "9" * 5000,
    "unicode": "٣x",
}
HUGE = str(2**64)

# (command, option, out-of-range values); the base argv is otherwise valid
INT_OPTIONS: list[tuple[str, str, tuple[str, ...]]] = [
    ("run", "--epochs", ("-1", "0", "100001", HUGE, "-" + HUGE)),
    ("run", "--batch-size", ("-1", "0", "65537", HUGE)),
    ("run", "--seed", ("-1", str(2**32), HUGE, "-" + HUGE)),
    ("run", "--calibration-size", ("-5", "0", HUGE)),
    ("run", "--micro-images", ("-1", "0", HUGE)),
    ("train", "--epochs", ("-1", "0", "100001", HUGE)),
    ("train", "--batch-size", ("-1", "0", "65537", HUGE)),
    ("train", "--seed", ("-1", str(2**32), HUGE, "-" + HUGE)),
    ("convert", "--calibration-size", ("-5", "0", "-" + HUGE)),
    ("convert", "--seed", ("-1", str(2**32), HUGE)),
    ("evaluate", "--latency-samples", ("-1", "10001", HUGE)),
    ("predict", "--top-k", ("0", "-1", "11", HUGE)),
    ("predict", "--buffer-size", ("0", "-1", "65537", HUGE)),
    ("serve", "--port", ("-1", "65536", HUGE, "70000")),
]


def base_argv(command: str, tag: str) -> tuple[tuple[str, ...], str | None]:
    """A valid command line for ``command`` (if no option were bad) and its output path."""
    if command == "run":
        out = f"{{W}}/out/run-{tag}"
        return ("run", "--out", out, "--data", "embedded"), out
    if command == "train":
        out = f"{{W}}/out/train-{tag}.keras"
        return ("train", "--out", out, "--data", "embedded"), out
    if command == "convert":
        out = f"{{W}}/out/convert-{tag}.tflite"
        return ("convert", "{M}/model.keras", "--out", out, "--data", "embedded"), out
    if command == "evaluate":
        return ("evaluate", "{M}/int8.tflite", "--data", "embedded", "--json"), None
    if command == "predict":
        return ("predict", "{M}/int8.tflite", "{W}/digit.png"), None
    if command == "serve":
        return ("serve", "{M}/int8.tflite"), None
    if command == "export-micro":
        out = f"{{W}}/out/micro-{tag}"
        return ("export-micro", "{M}/int8.tflite", "--out", out), out
    raise ValueError(command)


def option_cases() -> list[Case]:
    cases = []
    for command, option, bad_range in INT_OPTIONS:
        values = {**NOT_AN_INT, **{f"range{v[:12]}": v for v in bad_range}}
        for label, value in values.items():
            tag = f"{command}-{option[2:]}-{label}"
            argv, out = base_argv(command, tag)
            cases.append(Case(tag, (*argv, option, value), name=option, out=out))
    text_options = [
        ("run", "--recipes", ("", ",", "int8,int8", "nope", " , ", "ALL", "int8,,float32")),
        ("convert", "--recipe", ("", "nope", "int8 ", "../int8", "ｉｎｔ８")),
        ("run", "--arch", ("", "nope", "SEED", "seed\n")),
        ("train", "--arch", ("", "nope", "tiny ")),
        ("export-micro", "--name", ("", "1abc", "a-b", "ümlaut", "a b", "a.b")),
        ("convert", "--sparsity", ("nan", "inf", "-1", "0", "1", "1.5", "abc")),
    ]
    for command, option, values in text_options:
        for i, value in enumerate(values):
            tag = f"{command}-{option[2:]}-{i}"
            argv, out = base_argv(command, tag)
            if option == "--sparsity":
                argv = (*argv, "--recipe", "pruned-int8")
            name = "" if option in ("--recipes", "--recipe", "--arch") else option
            cases.append(Case(tag, (*argv, option, value), name=name, out=out))
    return cases


# -- bad paths -------------------------------------------------------------------------

BAD_FILES = {
    "missing": "{W}/nope/model.tflite",
    "dir": "{W}/dir",
    "devnull": "/dev/null",
    "devzero": "/dev/zero",
    "fifo": "{W}/fifo",
    "empty": "{W}/empty",
    "text": "{W}/text.txt",
    "unicode": "{W}/nöpe-✓.tflite",
    "long": "{W}/" + "a" * 300,
    "under-file": "{W}/text.txt/x",
    "nul": "{W}/a\0b",
}


def path_cases() -> list[Case]:
    cases = []
    for label, p in BAD_FILES.items():
        name = "NUL" if label == "nul" else ("a" * 300 if label == "long" else p)
        positions = {
            "predict-model": (("predict", p, "{W}/digit.png"), None, {2}),
            "evaluate-model": (("evaluate", p, "--data", "embedded"), None, {2}),
            "evaluate-reference": (
                ("evaluate", "{M}/int8.tflite", "--data", "embedded", "--reference", p),
                None,
                {2},
            ),
            "serve-model": (("serve", p), None, {2}),
            "micro-model": (
                ("export-micro", p, "--out", f"{{W}}/out/micro-{label}"),
                f"{{W}}/out/micro-{label}",
                {2},
            ),
            "convert-model": (
                ("convert", p, "--recipe", "float32", "--out", f"{{W}}/out/c-{label}.tflite"),
                f"{{W}}/out/c-{label}.tflite",
                {2},
            ),
            "predict-input": (("predict", "{M}/int8.tflite", p), None, {1, 2}),
            "train-data": (
                ("train", "--data", p, "--out", f"{{W}}/out/t-{label}.keras"),
                f"{{W}}/out/t-{label}.keras",
                {2},
            ),
            "convert-data": (
                (
                    "convert",
                    "{M}/model.keras",
                    "--recipe",
                    "int8",
                    "--data",
                    p,
                    "--out",
                    f"{{W}}/out/cd-{label}.tflite",
                ),
                f"{{W}}/out/cd-{label}.tflite",
                {2},
            ),
            "evaluate-data": (("evaluate", "{M}/int8.tflite", "--data", p), None, {2}),
        }
        positions["run-data"] = (
            ("run", "--data", p, "--out", f"{{W}}/out/r-{label}"),
            f"{{W}}/out/r-{label}",
            {2},
        )
        if label in ("dir", "text"):  # a plausible --data: convert loads the Keras model (TF) first
            del positions["convert-data"]
        for pos, (argv, out, codes) in positions.items():
            if label == "long":  # ENAMETOOLONG from the system: exit 1 where it is not checked first
                codes = {1, *codes}
            cases.append(Case(f"{pos}-{label}", argv, frozenset(codes), name=name, out=out))
    bad_outs = {  # (path, the name the error must show); a file suffix is added where one is needed
        "devnull": ("/dev/null", "/dev/null"),
        "file": ("{W}/text.txt", "{W}/text.txt"),
        "under-file": ("{W}/text.txt/sub", "{W}/text.txt"),
        "proc": ("/proc/mnist-tflite-out", "/proc"),
        "long": ("{W}/" + "b" * 300, "b" * 300),
    }
    for label, (p, name) in bad_outs.items():
        suffixed = label in ("under-file", "proc", "long")
        for argv in (
            ("run", "--data", "embedded", "--out", p),
            ("train", "--data", "embedded", "--out", p + ".keras" if suffixed else p),
            ("convert", "{M}/model.keras", "--recipe", "float32", "--out", p + ".tflite" if suffixed else p),
            ("pareto", "{W}/goodrun", "--out", p),
            ("export-micro", "{M}/int8.tflite", "--out", p),
            ("predict", "{M}/int8.tflite", "{W}/digit.png", "--show-input", p),
        ):
            cases.append(Case(f"out-{argv[0]}-{label}", argv, frozenset({1, 2}), name=name))
    for command in ("train", "convert"):  # a directory where a file is expected, even with --force
        argv, _ = base_argv(command, "x")
        argv = tuple("{W}/dir" if a.startswith("{W}/out/") else a for a in argv)
        for force in ((), ("--force",)):
            cases.append(Case(f"out-dir-{command}{''.join(force)}", (*argv, *force), name="{W}/dir"))
    cases.append(
        Case(
            "convert-out-json",
            ("convert", "{M}/model.keras", "--out", "{W}/out/x.json"),
            name="{W}/out/x.json",
            out="{W}/out/x.json",
        )
    )
    cases.append(
        Case(
            "train-out-exists", ("train", "--data", "embedded", "--out", "{W}/text.txt"), name="{W}/text.txt"
        )
    )
    cases.append(
        Case("run-out-not-empty", ("run", "--data", "embedded", "--out", "{W}/goodrun"), name="{W}/goodrun")
    )
    return cases


# -- the workspace -----------------------------------------------------------------------


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def build_workspace(w: Path, digits: np.ndarray) -> Path:
    """The files the path cases point at: a real digit, an empty file, a FIFO, a valid run."""
    (w / "out").mkdir(parents=True)
    (w / "dir").mkdir()
    (w / "digit.png").write_bytes(png(digits[0]))
    np.save(w / "digits.npy", digits[:8])
    (w / "empty").write_bytes(b"")
    (w / "text.txt").write_text("hello\n")
    os.mkfifo(w / "fifo")
    run = w / "goodrun"
    run.mkdir()
    variants = [
        {"name": "float32", "status": "ok", "size_bytes": 143280, "accuracy": 0.987},
        {"name": "int8", "status": "ok", "size_bytes": 42080, "accuracy": 0.986},
    ]
    doc = {"format": "mnist-tflite-report/1", "train": {"config": {"arch": "seed"}}, "variants": variants}
    (run / "report.json").write_text(json.dumps(doc))
    return w


def leftovers(w: Path) -> list[str]:
    """Temporary or probe files anywhere under ``w/out``: signs of a half-written output."""
    return [str(p) for p in (w / "out").rglob("*") if p.name.startswith(".")]
