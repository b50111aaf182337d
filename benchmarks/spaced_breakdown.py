"""Why spaced numbers are misread: for each wrong digit, where its 28x28 went wrong.

Renders numbers ``--start`` to ``--start + --count`` of ``bench_numbers.py``'s spaced set
(same seed, same photos) with the composer's ground truth (which digit drew each pixel),
reads them with ``Classifier.read_number`` and, for every number read with the right count
but a digit wrong, sorts that digit into the first cause that fits:

- ``ceiling``: the model misreads the clean test array too (no cut can help);
- ``neighbour ink`` / ``stroke lost``: the piece we cut holds under 97 % of its ink from the
  digit, or under 95 % of the digit's ink, and the digit cut out by the ground truth reads right;
- ``faint strokes``: the digit cut out by the ground truth reads wrong when its ink is cut as
  the whole picture's (the ink map), right when cut against its own strokes (``_own_strokes``);
- ``made solid``: the other way round (a faint speck, or blur between two strokes, made solid);
- ``photo``: cut out by the ground truth it reads wrong either way (blur, a blotted or
  eroded stroke, JPEG); ``slant`` if the clean array, sheared as the number was, reads wrong;
- ``other``: the ground truth reads right and our piece is the digit's ink, yet ours reads wrong.

Usage:
    python benchmarks/spaced_breakdown.py [--start 0] [--count 500] [--model tests/models/int8.tflite]
        [--out benchmarks/results/spaced_breakdown.json] [--picture-wide]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_numbers import draw_numbers  # noqa: E402  (beside this script: the same photos)
from touching_breakdown import _own_ink  # noqa: E402

from mnist_tflite.core import data  # noqa: E402
from mnist_tflite.core.atomic import write_json  # noqa: E402
from mnist_tflite.edge import segment  # noqa: E402
from mnist_tflite.edge.images import load_image  # noqa: E402
from mnist_tflite.edge.ink import cut_ink, ink_strength  # noqa: E402
from mnist_tflite.edge.predict import Classifier  # noqa: E402
from mnist_tflite.edge.preprocess import ink_to_mnist, picture  # noqa: E402
from mnist_tflite.training.compose import shear  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "spaced_breakdown.json"
OWN_STROKES = segment._own_strokes  # the ground truth's digits are always cut this way


def _recording(pieces: list) -> None:
    """Wrap segment's box so each digit's part and piece (its ink) are recorded, in order."""
    box = segment._box

    def box_recorded(part, piece, shape):
        pieces.append((part, piece))
        return box(part, piece, shape)

    segment._box = box_recorded


def _cause(clf, r: dict) -> str:
    """The cause of one wrong digit (see the module's docstring)."""
    t, k = r["truth"], r["k"]
    if r["clean"] != t:
        return "ceiling"
    mine = r["full"] * r["mine"]
    rows, cols = np.nonzero(mine.any(axis=1))[0], np.nonzero(mine.any(axis=0))[0]
    alone = segment._Part([], int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1, 0.0)
    piece = mine[alone.y0 : alone.y1, alone.x0 : alone.x1]
    wide = ink_to_mnist(piece)  # cut as the whole picture is
    nothing = np.zeros(mine.shape, np.int32)  # no neighbour: the ground truth has cut it out
    own = ink_to_mnist(OWN_STROKES(alone, piece, r["strength"], nothing, r["peak"]))
    wide_label, own_label = clf._proba(np.stack([wide, own])).argmax(axis=1).tolist()
    piece, o = r["piece"], r["own_in_box"]
    ink = float(piece.sum())
    purity = float(piece[o == k].sum()) / max(ink, 1e-9)
    complete = float(piece[o == k].sum()) / max(float((r["full"] * mine).sum()), 1e-9)
    if own_label == t and purity < 0.97:
        return "neighbour ink"
    if own_label == t and complete < 0.95:
        return "stroke lost"
    if own_label == t and wide_label != t:
        return "faint strokes"
    if own_label != t and wide_label == t:
        return "made solid"
    if own_label != t:
        return "slant" if r["sheared"] != t else "photo"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", type=int, default=0, help="first number of the set (default: 0)")
    ap.add_argument("--count", type=int, default=500, help="numbers (default: 500)")
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    ap.add_argument("--seed", type=int, default=0, help="bench_numbers' --seed (its spaced set)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS.name})")
    ap.add_argument(
        "--picture-wide", action="store_true", help="read as before: each digit's ink cut as the picture's"
    )
    args = ap.parse_args()
    if args.picture_wide:
        segment._own_strokes = lambda part, piece, strength, labels, peak: piece
    d = data.load("embedded", log=lambda m: None)
    x, y = d.x_test, d.y_test.astype(int)
    clf = Classifier(args.model)
    pieces: list = []
    _recording(pieces)
    n, causes, examples = collections.Counter(), collections.Counter(), collections.defaultdict(list)
    owners: list[np.ndarray] = []
    drawn = draw_numbers(x, y, args.start + args.count, args.seed, touching=False, owners=owners)
    for i, (idx, photo, _, info) in itertools.islice(enumerate(drawn), args.start, None):
        image = load_image(photo)
        pieces.clear()
        read = "".join(dg.label for dg in clf.read_number(image).digits)
        owner_full = owners.pop()
        owners.clear()
        n["numbers"] += 1
        n["number_right"] += read == info.text
        n["count_right"] += len(read) == len(info.text)
        if read == info.text or len(read) != len(info.text) or len(pieces) != len(read):
            continue
        strength, peak = ink_strength(picture(image))
        full = cut_ink(strength, peak)
        owner = np.asarray(Image.fromarray(owner_full).resize(full.shape[::-1], Image.Resampling.NEAREST))
        own = _own_ink(owner)
        clean = clf._proba(x[idx].astype(np.float32) / 255.0).argmax(axis=1)
        for j in range(len(read)):
            if read[j] == info.text[j]:
                continue
            part, piece = pieces[j]
            sheared = shear(np.pad(x[idx[j]], 4), info.slant).astype(np.float32) / 255.0
            r = {
                "truth": int(info.text[j]),
                "k": j + 1,
                "clean": int(clean[j]),
                "sheared": int(clf._proba(ink_to_mnist(sheared)[None]).argmax()),
                "full": full,
                "strength": strength,
                "peak": peak,
                "mine": (own == j + 1).astype(np.float32),
                "piece": piece,
                "own_in_box": own[part.y0 : part.y1, part.x0 : part.x1],
            }
            cause = _cause(clf, r)
            causes[cause] += 1
            examples[cause].append(f"{i}: {info.text} read {read}")
    span = f"{args.start}-{args.start + args.count - 1}"
    print(f"model {args.model.name}: spaced numbers {span} of bench_numbers.py")
    for key, value in n.items():
        print(f"{key:<14} {value:>6}")
    print("wrong digits in numbers read with the right count, by cause:")
    for key, value in causes.most_common():
        print(f"  {key:<14} {value:>4}  e.g. {', '.join(examples[key][:3])}")
    model = args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model
    result = {
        "model": str(model),
        "numbers": span,
        "digits_cut": "picture-wide (as before)" if args.picture_wide else "against their own strokes",
        **n,
        "wrong_digits_by_cause": dict(causes.most_common()),
        "examples": {k: v[:10] for k, v in examples.items()},
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
