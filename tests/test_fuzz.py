"""Fuzz: corrupted models and images never crash the process that classifies them.

Over 500 variants of a real model (truncations, random byte flips, zeroed regions) and of
real photo files (PNG, JPEG) go through our own loader in child processes, a chunk of
variants per child. A signal (SIGSEGV, SIGABRT...) would kill the child and show up as a
negative return code; every variant must end in a prediction or a ``MnistTfliteError``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

N_MODEL_VARIANTS = 320
N_IMAGE_VARIANTS = 240
CHUNK = 80

# Runs in the child: one JSON line per variant. Anything but MnistTfliteError is a bug.
CHILD = """
import json, sys
import numpy as np
from mnist_tflite.core.errors import MnistTfliteError
from mnist_tflite.edge.predict import Classifier

kind, model, digits = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
clf = Classifier(model) if kind == "image" else None
for line in sys.stdin:
    path = line.strip()
    try:
        if kind == "model":
            probs = Classifier(path, allow_modified=True).classify(digits)
            outcome = f"ok {[p.index for p in probs]}"
        else:
            outcome = f"ok {clf.predict(path).label}"
    except MnistTfliteError as exc:
        outcome = "error " + str(exc).splitlines()[0]
    except Exception as exc:
        outcome = f"bug {type(exc).__name__}: {exc}"
    print(json.dumps({"variant": path, "outcome": outcome}), flush=True)
"""


def _corrupt(data: bytes, rng: np.random.Generator, i: int) -> bytes:
    """One corrupted copy of ``data``: which kind cycles with ``i``, where is random."""
    b = bytearray(data)
    kind = i % 5
    if kind == 0:  # truncated anywhere, including inside the header
        cut = int(rng.integers(0, len(b))) if i % 2 else int(rng.integers(0, min(256, len(b))))
        return bytes(b[:cut])
    if kind == 1:  # a few random bytes changed
        for j in rng.integers(0, len(b), int(rng.choice([1, 4, 16]))):
            b[j] ^= int(rng.integers(1, 256))
    elif kind == 2:  # many random bytes changed
        for j in rng.integers(0, len(b), int(rng.choice([64, 512]))):
            b[j] = int(rng.integers(0, 256))
    elif kind == 3:  # a zeroed region (a bad sector, a partial copy)
        start, length = int(rng.integers(0, len(b))), int(rng.choice([4, 64, 1024, 8192]))
        b[start : start + length] = bytes(len(b[start : start + length]))
    else:  # the structure itself: header, tables and offsets near the start
        for j in rng.integers(0, min(512, len(b)), int(rng.choice([1, 2, 8]))):
            b[j] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def _images(digits: np.ndarray) -> list[tuple[str, bytes]]:
    """Real digits as the files people send: RGB PNG, grayscale PNG, JPEG, light on dark."""
    out = []
    for k, d in enumerate(digits):
        big = Image.fromarray(255 - d if k % 2 else d).resize((112, 112), Image.Resampling.BICUBIC)
        for fmt, img in (("PNG", big.convert("RGB")), ("PNG", big), ("JPEG", big.convert("RGB"))):
            buf = io.BytesIO()
            img.save(buf, fmt)
            out.append((fmt.lower(), buf.getvalue()))
    return out


def _run_chunks(kind: str, paths: list[Path], model: Path, digits: Path) -> list[dict]:
    """Run the child on chunks of ``paths``, two at a time; check each exited normally."""
    results = []
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    for pair in (chunks[i : i + 2] for i in range(0, len(chunks), 2)):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, kind, str(model), str(digits)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in pair
        ]
        for proc, chunk in zip(procs, pair, strict=True):
            out, err = proc.communicate("\n".join(map(str, chunk)) + "\n", timeout=300)
            lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            assert proc.returncode >= 0, (
                f"child killed by signal {-proc.returncode} after {len(lines)} variants"
            )
            assert proc.returncode == 0, err[-2000:]
            assert len(lines) == len(chunk), err[-2000:]
            results.extend(lines)
    return results


def test_corrupt_models_and_images_never_crash(models_dir, test_images, tmp_path):
    rng = np.random.default_rng(1234)
    x, _ = test_images
    digits = tmp_path / "digits.npy"
    np.save(digits, x[:4].astype(np.float32) / 255.0)

    model_paths = []
    sources = [models_dir / "int8.tflite", models_dir / "float32.tflite"]
    for i in range(N_MODEL_VARIANTS):
        src = sources[i % 2]
        path = tmp_path / f"model{i:04d}.tflite"
        path.write_bytes(_corrupt(src.read_bytes(), rng, i // 2))
        if i % 4 < 2:  # half carry their sidecar: allow_modified must skip the hash, then probe
            shutil.copy(src.with_suffix(".json"), path.with_suffix(".json"))
        model_paths.append(path)

    image_paths = []
    originals = _images(x[4:12])
    for i in range(N_IMAGE_VARIANTS):
        suffix, blob = originals[i % len(originals)]
        path = tmp_path / f"image{i:04d}.{suffix}"
        path.write_bytes(_corrupt(blob, rng, i // len(originals)))
        image_paths.append(path)

    results = _run_chunks("model", model_paths, models_dir / "int8.tflite", digits)
    results += _run_chunks("image", image_paths, models_dir / "int8.tflite", digits)
    assert len(results) == N_MODEL_VARIANTS + N_IMAGE_VARIANTS >= 500
    bugs = [r for r in results if r["outcome"].startswith("bug")]
    assert not bugs, bugs[:5]
    outcomes = [r["outcome"].split()[0] for r in results]
    # the corruptions are real: many variants are refused, and some still run (silently wrong)
    assert outcomes.count("error") >= 100 and outcomes.count("ok") >= 50
    # every refusal names its file
    assert all(r["variant"] in r["outcome"] for r in results if r["outcome"].startswith("error"))
