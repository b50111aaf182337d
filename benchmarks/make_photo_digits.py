"""Write realistic photo/scan files of official MNIST test digits, with their true labels.

The generator lives in ``tests/photos.py`` (the tests use it too); this is its command line.

Usage:
    python benchmarks/make_photo_digits.py --count 2000 --out /tmp/photo_digits
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.photos import Render, make, render

__all__ = ["Render", "make", "render"]


def main() -> None:
    from mnist_tflite.core import data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    d = data.load("embedded", log=lambda m: None)
    made = make(d.x_test, d.y_test, args.out, count=args.count, seed=args.seed)
    (args.out / "renders.json").write_text(json.dumps([{"file": p.name, **asdict(r)} for p, r in made]))
    print(f"wrote {len(made)} files to {args.out}")


if __name__ == "__main__":
    main()
