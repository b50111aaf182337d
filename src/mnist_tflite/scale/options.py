"""What ``tune`` is asked to do: its options, their defaults and limits, checked before any work.

A new search takes them from the command line; ``--resume`` from the ``search.json`` the
search saved, checked as strictly (a hand-edited ``"flash": "16KB"`` is one line, not a
traceback). The output folder is checked here too: tune writes only into a new or empty
folder, or into the one of the search it resumes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mnist_tflite.core.errors import MnistTfliteError, fail, first_line, read_user_file
from mnist_tflite.core.values import check_int_range, check_out_dir, check_seed

__all__ = ["DEFAULTS", "EXPERIMENT", "SETTINGS_FILE", "TuneOptions", "parse_size", "prepare"]

SETTINGS_FILE = "search.json"
EXPERIMENT = "ray"


DEFAULTS: dict[str, Any] = {
    "trials": 30,
    "max_epochs": 30,
    "seed": 0,
    "data": "auto",  # all 60,000 training images (the Keras cache or the embedded copy)
    "ram": None,
    # trials and cross-validation train on a seeded subset of this many training images (all of
    # them when there are fewer: the 5k sample); only the front's refit sees the whole set
    "search_images": 12_000,
    "folds": 3,  # a trial holds out fold 0 of the search images: 4,000 of 12,000; finalists: all 3
    "finalists": 10,
    "refit_epochs": None,  # None: min(--max-epochs, REFIT_EPOCHS)
}
REFIT_EPOCHS = 15  # on 60,000 images, 7.5 times a trial's 8,000 per epoch
MIN_SEARCH_IMAGES = 100
MAX_FOLDS = 10
MAX_SIZE = 16 << 20  # flash and RAM budgets: above any microcontroller's, below a ladder of 20 equal files
MAX_TRIALS = 100_000
MAX_EPOCHS = 10_000
MAX_IMAGES = 1 << 31


@dataclass(frozen=True)
class TuneOptions:
    """``mnist-tflite tune``'s options; sizes in bytes. None: the default (or, with
    ``resume``, the value the search was started with)."""

    out: Path
    flash: int | None = None
    ram: int | None = None
    trials: int | None = None
    max_epochs: int | None = None
    address: str | None = None
    resume: bool = False
    seed: int | None = None
    data: str | None = None
    folds: int | None = None
    finalists: int | None = None
    search_images: int | None = None
    refit_epochs: int | None = None

    def settings(self) -> dict[str, Any]:
        """What the trials need, and what ``--resume`` restores."""
        return {
            "flash": self.flash,
            "ram": self.ram,
            "trials": self.trials,
            "max_epochs": self.max_epochs,
            "seed": self.seed,
            "data": self.data,
            "folds": self.folds,
            "finalists": self.finalists,
            "search_images": self.search_images,
            "refit_epochs": self.refit_epochs,
            "val_fraction": 1 / self.folds if self.folds else None,
        }


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)


def parse_size(text: str, option: str = "--flash") -> int:
    """``16KB`` / ``16k`` / ``16KiB`` -> 16384 (1 KB = 1,024 bytes); ``9000`` -> 9000 bytes."""
    m = _SIZE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise MnistTfliteError(f"{option} {text!r}: expected a positive size such as 16KB, 512KB or 9000")
    unit = (m.group(2) or "b").lower()[0]
    size = int(float(m.group(1)) * {"b": 1, "k": 1024, "m": 1024 * 1024}[unit])
    if not 1 <= size <= MAX_SIZE:
        raise MnistTfliteError(f"{option} {text!r}: expected a size from 1 byte to {MAX_SIZE >> 20} MB")
    return size


def prepare(options: TuneOptions) -> tuple[TuneOptions, Path]:
    """Options with every value set (from the saved search on --resume), checked, and the output dir."""
    out = Path(options.out)
    if options.resume:
        return _resumed(options, out), out
    if options.flash is None:
        raise MnistTfliteError("--flash is required (e.g. --flash 16KB), unless --resume")
    options = replace(options, **{k: v for k, v in DEFAULTS.items() if getattr(options, k) is None})
    if options.refit_epochs is None:
        options = replace(options, refit_epochs=min(options.max_epochs or 1, REFIT_EPOCHS))
    _check(options)
    if out.exists() and not out.is_dir():
        raise fail(out, "exists and is not a directory")
    if (out / SETTINGS_FILE).exists() or (out / EXPERIMENT).exists():
        raise fail(out, "already holds a search; pass --resume to continue it, or choose another --out")
    if out.exists() and any(out.iterdir()):  # "/", a project folder: tune's files would mix with the user's
        raise fail(out, "is a folder tune did not make and it is not empty; expected a new or empty --out")
    check_out_dir(out)  # a read-only place or a path under a file: now, not after the search
    return options, out


def _resumed(options: TuneOptions, out: Path) -> TuneOptions:
    """The options of the search saved in ``out``; a changed option or a damaged file is one line."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        raise fail(out, f"no search to resume (no {SETTINGS_FILE}); start one without --resume")
    raw = read_user_file(path, "the search settings tune wrote", max_bytes=1 << 20)
    try:
        saved = json.loads(raw.decode("utf-8"))["settings"]
        # a search saved before these settings existed trained on all its data, refit as searched
        legacy = {"search_images": MAX_IMAGES, "refit_epochs": saved.get("max_epochs")}
        saved = {k: saved[k] if k in saved or k not in legacy else legacy[k] for k in _KEYS}
    except RecursionError:
        raise fail(path, "nested too deeply; expected the search settings tune wrote") from None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise fail(path, f"unreadable search settings ({first_line(exc)})") from None
    for key, value in saved.items():
        wanted = str if key == "data" else int
        fits = isinstance(value, wanted) and not isinstance(value, bool)
        if not fits and not (key == "ram" and value is None):
            raise fail(path, f"{key!r} is {value!r:.40}; expected {_EXPECTED[wanted]} as tune writes it")
    changed = [k for k in _KEYS if getattr(options, k) is not None and getattr(options, k) != saved[k]]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise MnistTfliteError(
            f"--resume continues the search as it was started: {flags} differ from {path} (leave them out)"
        )
    options = replace(options, **saved)
    _check(options, f"{path}: ")
    return options


_KEYS = ("flash", "ram", "trials", "max_epochs", "seed", "data", "folds", "finalists")
_KEYS += ("search_images", "refit_epochs")
_EXPECTED = {int: "a whole number", str: "a text"}


def _check(options: TuneOptions, where: str = "") -> None:
    """Every value in its range (``where``: the saved file's name, on --resume)."""
    name = (lambda k: f'{where}"{k}"') if where else (lambda k: "--" + k.replace("_", "-"))
    check_int_range(options.flash or 0, name("flash"), 1, MAX_SIZE)
    if options.ram is not None:
        check_int_range(options.ram, name("ram"), 1, MAX_SIZE)
    for key, low, high in (
        ("trials", 1, MAX_TRIALS),
        ("max_epochs", 1, MAX_EPOCHS),
        ("refit_epochs", 1, MAX_EPOCHS),
        ("finalists", 1, MAX_TRIALS),
        ("search_images", MIN_SEARCH_IMAGES, MAX_IMAGES),
    ):
        check_int_range(getattr(options, key), name(key), low, high)
    if not 2 <= (options.folds or 0) <= MAX_FOLDS:
        raise MnistTfliteError(f"{name('folds')} must be 2 to {MAX_FOLDS}, received: {options.folds}")
    check_seed(options.seed, name("seed"))  # type: ignore[arg-type]
