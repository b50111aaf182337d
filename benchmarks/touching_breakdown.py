"""Why touching numbers are misread: where the cut of touching digits goes wrong.

Renders the first ``--count`` touching numbers of ``bench_numbers.py`` (same seed, same
photos) with the composer's ground truth (which digit drew each pixel), reads them with
``Classifier.read_number`` and, for every component that had to be cut, asks: how many
digits it holds and into how many pieces it was cut; whether some candidate piece (the ink
between two candidate cuts) is that digit (>= 85 % of the piece's ink is the digit's and
>= 85 % of the digit's ink is in it); whether some chain of candidates reads the right
digits (the best any choice among these candidates could do); and what the model reads
when each digit is cut out by the ground truth itself (what any cut could do).

Usage:
    python benchmarks/touching_breakdown.py [--count 300] [--model tests/models/int8.tflite]
        [--reader src/mnist_tflite/edge/models/reader.tflite]
        [--out benchmarks/results/touching_breakdown.json]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_numbers import draw_numbers  # noqa: E402  (beside this script: the same photos)

from mnist_tflite.core import data  # noqa: E402
from mnist_tflite.core.atomic import write_json  # noqa: E402
from mnist_tflite.edge import segment  # noqa: E402
from mnist_tflite.edge.images import load_image  # noqa: E402
from mnist_tflite.edge.ink import ink_map  # noqa: E402
from mnist_tflite.edge.predict import Classifier  # noqa: E402
from mnist_tflite.edge.preprocess import ink_to_mnist, picture  # noqa: E402
from mnist_tflite.edge.reader import DEFAULT_READER, Reader  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "touching_breakdown.json"
PURE = 0.85  # a candidate is a digit: this share of its ink is the digit's, and of the digit's in it


def _recording(cuts: list[dict]):
    """Wrap segment's cut so each cut component's ink, box and pieces are recorded."""
    split, ink_of = segment._split, segment._ink_of
    last: dict = {}

    def ink_of_recorded(part, ink, labels):
        last["part"] = part
        return ink_of(part, ink, labels)

    def split_recorded(patch, height, width, judge):
        pieces = split(patch, height, width, judge)
        cuts.append({"part": last["part"], "patch": patch, "height": height, "pieces": pieces})
        return pieces

    segment._ink_of, segment._split = ink_of_recorded, split_recorded


def _chain_reads(spans, labels, truth: list[int], last: int) -> bool:
    """Some chain of candidate spans from the left end to the right reads ``truth``."""
    reached = {(0, 0)}
    for (i, j), label in sorted(zip(spans, labels, strict=True)):
        for q in range(len(truth)):
            if (i, q) in reached and label == truth[q]:
                reached.add((j, q + 1))
    return (last, len(truth)) in reached


def _own_ink(owner: np.ndarray) -> np.ndarray:
    """Ground truth grown by 3 pixels into unowned ink (a stroke's soft edge)."""
    o = owner.copy()
    for _ in range(3):
        pad = np.pad(o, 1)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near = pad[1 + dy : 1 + dy + o.shape[0], 1 + dx : 1 + dx + o.shape[1]]
                o = np.where((o == 0) & (near > 0), near, o)
    return o


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300, help="touching numbers (default: 300)")
    ap.add_argument("--model", type=Path, default=ROOT / "tests" / "models" / "int8.tflite")
    ap.add_argument("--seed", type=int, default=1, help="bench_numbers' touching set: its --seed + 1")
    ap.add_argument("--reader", type=Path, default=DEFAULT_READER, help="the touching-digit reader")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS.name})")
    args = ap.parse_args()
    d = data.load("embedded", log=lambda m: None)
    x, y = d.x_test, d.y_test.astype(int)
    clf = Classifier(args.model, reader=None)  # the cut chooser
    with_reader = Classifier(args.model, reader=args.reader)
    reader = Reader(args.reader)
    cuts: list[dict] = []
    _recording(cuts)
    n = collections.Counter()
    counts = collections.Counter()
    owners: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="touching_") as tmp:
        drawn = draw_numbers(x, y, args.count, args.seed, touching=True, owners=owners)
        for i, (_, photo, suffix, info) in enumerate(drawn):
            path = Path(tmp) / f"t{i:05d}{suffix}"
            path.write_bytes(photo)
            image = load_image(path)
            # the reader first: its narrow components are cut too, and are not the chooser's record
            read_r = "".join(dg.label for dg in with_reader.read_number(image).digits)
            cuts.clear()
            read = "".join(dg.label for dg in clf.read_number(image).digits)
            n["numbers"] += 1
            n["number_right"] += read == info.text
            n["count_right"] += len(read) == len(info.text)
            n["count_right_a_digit_wrong"] += len(read) == len(info.text) and read != info.text
            n["reader_number_right"] += read_r == info.text
            n["reader_count_right"] += len(read_r) == len(info.text)
            counts[len(read)] += 1
            shape = ink_map(picture(image)).shape
            owner = np.asarray(Image.fromarray(owners.pop()).resize(shape[::-1], Image.Resampling.NEAREST))
            for cut in cuts:
                p, patch, height = cut["part"], cut["patch"], cut["height"]
                own = owner[p.y0 : p.y1, p.x0 : p.x1]
                mass = {k: float(patch[own == k].sum()) for k in range(1, 5)}
                inside = [k for k in range(1, 5) if mass[k] > 0.2 * max(mass.values())]
                truth = [int(info.text[k - 1]) for k in inside]
                n["cut_components"] += 1
                pieces = np.stack([ink_to_mnist(q) for q in cut["pieces"]])
                chosen = [int(v) for v in clf._proba(pieces).argmax(axis=1)]
                n["chooser_reads_component_right"] += chosen == truth
                read_c = [int(np.argmax(r.probabilities)) for r in reader.read(patch)]
                n["reader_reads_component_right"] += read_c == truth
                n["reader_count_right_in_component"] += len(read_c) == len(truth)
                n["cut_into_the_right_count"] += len(cut["pieces"]) == len(inside)
                n["cut_into_fewer"] += len(cut["pieces"]) < len(inside)
                c = segment._candidates(patch, height)
                labels = clf._proba(np.stack([ink_to_mnist(a) for a in c.inks])).argmax(axis=1)
                for k, t in zip(inside, truth, strict=True):
                    n["digits_in_cut_components"] += 1
                    pure = [
                        a[own == k].sum() >= PURE * max(a.sum(), 1e-9) and a[own == k].sum() >= PURE * mass[k]
                        for a in c.inks
                    ]
                    n["digit_has_a_pure_candidate"] += any(pure)
                    n["digit_has_a_pure_candidate_read_right"] += any(
                        ok and lab == t for ok, lab in zip(pure, labels, strict=True)
                    )
                n["some_chain_of_candidates_reads_right"] += _chain_reads(
                    c.spans, labels, truth, len(c.edges) - 1
                )
                o = _own_ink(own)
                truly = clf._proba(np.stack([ink_to_mnist(patch * (o == k)) for k in inside])).argmax(axis=1)
                n["cut_by_ground_truth_reads_right"] += bool((truly == np.array(truth)).all())
    print(f"model {args.model.name}: first {args.count} touching numbers of bench_numbers.py")
    for key, value in n.items():
        print(f"{key:<42} {value:>6}")
    print("digits found:", dict(sorted(counts.items())))
    model = args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model
    write_json(args.out, {"model": str(model), **n, "digits_found": dict(sorted(counts.items()))})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
