"""Run a ``.tflite`` model with LiteRT, the way the device does: NumPy in, NumPy out.

Never imports TensorFlow. Quantized inputs are quantized and outputs dequantized with the
tensor's own scale and zero point.

Speed (measured by ``benchmarks/bench_inference.py``): a model holds ``num_threads``
single-threaded interpreters. ``invoke()`` releases the GIL, so a large call is cut into
small chunks that the interpreters take in turn from parallel threads; on this small model
that beats one interpreter with several threads (which synchronise at every op) and big
batches (whose activations spill out of the L2 cache).

Thread safety: a ``TfliteModel`` may be shared by threads (e.g. a web server's request
handlers). Each call borrows free interpreters from the model's pool and returns them; a
call that finds none free waits for one. Results never depend on the batch size, the
number of interpreters or what runs beside them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tflite.core import sidecar
from mnist_tflite.core.data import MNIST_CLASSES
from mnist_tflite.core.errors import fail, first_line, read_user_file
from mnist_tflite.edge.flatbuffer import Node, output_kind, tensor_summary
from mnist_tflite.edge.probe import probe
from mnist_tflite.edge.quiet import stderr_silenced

TFLITE_IDENTIFIER = b"TFL3"
# images per invoke() when batch_size is not given (fastest on the seed model, 1 MiB L2 per
# core): float activations (~140 KB per image) outgrow the cache past ~16 images, 8-bit ones later
AUTO_BATCH = {"float": 8, "quantized": 32}
KERNELS = ("default", "builtin", "reference")
_banner_silenced = False
_RESOLVERS = dict(zip(KERNELS, ("AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF"), strict=True))


@dataclass(frozen=True)
class TensorInfo:
    """What the runner needs to know about the model's input or output tensor."""

    index: int
    dtype: np.dtype
    shape: tuple[int, ...]  # the signature: -1 for a dynamic dimension
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)

    def describe(self) -> dict[str, Any]:
        return tensor_summary(self.dtype.name, self.shape, self.scale, self.zero_point)


def _tensor_info(det: dict[str, Any]) -> TensorInfo:
    scale, zero_point = det["quantization"]
    sig = det.get("shape_signature")
    shape = tuple(int(s) for s in (sig if sig is not None and len(sig) else det["shape"]))
    return TensorInfo(int(det["index"]), np.dtype(det["dtype"]), shape, float(scale), int(zero_point))


def signature_problem(det: dict[str, Any], role: str) -> str | None:
    """Why a tensor's ``shape_signature`` contradicts its shape (a crafted model), or None.

    The signature may leave a size open (-1) but never state another one: the runner sizes
    its buffers from it, and LiteRT fills them from the shape. ``serve`` calls this too.
    """
    sig, shape = det.get("shape_signature"), det["shape"]
    if sig is None or not len(sig):
        return None
    if len(sig) == len(shape) and all(s in (-1, d) for s, d in zip(sig, shape, strict=True)):
        return None
    return (
        f"{role} tensor's shape_signature {[int(s) for s in sig]} disagrees with its shape "
        f"{[int(d) for d in shape]}; expected the same sizes (or -1 for the batch)"
    )


def _output_kind(flatbuffer: bytes) -> str:
    """``"logits"`` or ``"probabilities"``, from the op that makes the output (see flatbuffer.output_kind).

    Read from an interpreter without delegates: XNNPACK replaces the float graph by one node.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with stderr_silenced():
        interp = Interpreter(
            model_content=flatbuffer,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    try:
        details = interp._get_ops_details()
    except Exception:  # e.g. a corrupt custom-op name that is not UTF-8: read the flatbuffer instead
        from mnist_tflite.edge.flatbuffer import parse

        return parse(flatbuffer).output_kind
    nodes = [Node(d["op_name"], tuple(d["inputs"]), tuple(d["outputs"])) for d in details]
    return output_kind(nodes, interp.get_output_details()[0]["index"])


def io_details(flatbuffer: bytes) -> dict[str, Any]:
    """Input and output dtype, shape signature, scale and zero point, as LiteRT reads them.

    Also ``output_kind``: ``"logits"`` (the runner applies softmax on the host, in float32)
    or ``"probabilities"`` (the model ends in SOFTMAX), and ``host_postprocess`` accordingly.
    """
    from ai_edge_litert.interpreter import Interpreter

    with stderr_silenced():
        interp = Interpreter(model_content=flatbuffer)
    kind = _output_kind(flatbuffer)
    return {
        "input": _tensor_info(interp.get_input_details()[0]).describe(),
        "output": _tensor_info(interp.get_output_details()[0]).describe(),
        "output_kind": kind,
        "host_postprocess": "softmax" if kind == "logits" else "none",
    }


def read_model_bytes(
    path: str | os.PathLike[str], *, allow_modified: bool = False
) -> tuple[bytes, dict[str, Any] | None, bool]:
    """Read and vet a model file; returns (bytes, sidecar metadata or None, hash-verified)."""
    path = Path(path)
    data = read_user_file(path, "a TFLite flatbuffer (.tflite file)")
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        found = data[4:8] if len(data) >= 8 else data[:8]
        hint = ""
        if path.suffix in (".keras", ".h5") or data[:4] in (b"PK\x03\x04", b"\x89HDF"):
            hint = (
                f"; a Keras model: convert it first: mnist-tflite convert {path} --recipe int8 --out m.tflite"
            )
        raise fail(path, f"not a TFLite flatbuffer: file identifier {found!r}, expected b'TFL3'{hint}")
    meta = sidecar.read(path)
    verified = False if allow_modified else sidecar.check_hash(path, data, meta)
    return data, meta, verified


def vetted_model_bytes(
    path: str | os.PathLike[str], *, allow_modified: bool = False
) -> tuple[bytes, dict[str, Any] | None]:
    """:func:`read_model_bytes`, and a file its sidecar does not vouch for is probed first
    (a corrupt flatbuffer can crash LiteRT): (bytes, sidecar metadata or None)."""
    data, meta, verified = read_model_bytes(path, allow_modified=allow_modified)
    if not verified:
        problem = probe(data)
        if problem:
            raise fail(path, problem)
    return data, meta


def quantize(x: np.ndarray, dtype: Any, scale: float, zero_point: int) -> np.ndarray:
    """Real values -> an integer tensor: round(x / scale) + zero_point, clipped to ``dtype``.

    The one input quantization of the project (LiteRT runner, compiled C, TFLM checks): float32
    arithmetic, ties to even, as the TFLite converter's reference does.
    """
    info = np.iinfo(dtype)
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + np.float32(zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


class _Worker:
    """One interpreter of a model's pool, the batch it is allocated for and its input buffer."""

    __slots__ = ("batch", "buf", "interp", "rows")

    def __init__(self, interp: Any, batch: int = 1) -> None:
        self.interp, self.batch = interp, batch
        self.buf: np.ndarray | None = None
        self.rows: np.ndarray = np.empty((0, 28, 28))


class TfliteModel:
    """A ``.tflite`` classifier of 28x28 grayscale images, run by LiteRT.

    Args:
        path: the model file. A sidecar ``<name>.json`` (written by mnist-tflite) is read
            for class names and checked against the file's SHA-256.
        num_threads: CPU threads to use (default: all cores): that many single-threaded
            interpreters share large calls and serve concurrent callers.
        kernels: ``default`` (XNNPACK), ``builtin`` (TFLite's optimized builtin kernels, no
            delegate: the numerics TFLM shares) or ``reference``.
        allow_modified: use the file even if its SHA-256 differs from the sidecar.
        batch_size: images per ``invoke()`` (default: the fastest for the model's input type,
            see ``AUTO_BATCH``). Results are the same for any value.

    Example:
        >>> model = TfliteModel("runs/demo/int8.tflite")
        >>> probs = model.predict_proba(images)  # images: float (N, 28, 28) in [0, 1]
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        num_threads: int | None = None,
        kernels: str = "default",
        allow_modified: bool = False,
        batch_size: int | None = None,
    ) -> None:
        from ai_edge_litert.interpreter import OpResolverType

        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, received: {kernels!r}")
        self.path = Path(path)
        data, self.metadata = vetted_model_bytes(self.path, allow_modified=allow_modified)
        self._data, self._resolver = data, getattr(OpResolverType, _RESOLVERS[kernels])
        self.num_threads = max(1, int(num_threads or os.cpu_count() or 1))
        try:
            first = _Worker(self._new_interpreter())
        except (ValueError, RuntimeError) as exc:
            raise fail(self.path, f"LiteRT cannot load it: {first_line(exc, 2000)}") from None
        self.size_bytes = len(data)
        self.kernels = kernels
        ins, outs = first.interp.get_input_details(), first.interp.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise fail(self.path, f"expected 1 input and 1 output tensor, found {len(ins)} and {len(outs)}")
        for det, role in ((ins[0], "input"), (outs[0], "output")):
            problem = signature_problem(det, role)
            if problem:
                raise fail(self.path, problem)
        self.input, self.output = _tensor_info(ins[0]), _tensor_info(outs[0])
        self._check_shapes()
        names = (self.metadata or {}).get("class_names")
        n_out = self.output.shape[-1]
        if names and len(names) != n_out:
            raise fail(
                sidecar.sidecar_path(self.path),
                f"class_names has {len(names)} entries; expected {n_out}, the model's outputs",
            )
        self.class_names = (
            tuple(names)
            if names and len(names) == n_out
            else tuple(MNIST_CLASSES if n_out == 10 else (str(i) for i in range(n_out)))
        )
        auto = AUTO_BATCH["quantized" if self.input.quantized else "float"]
        self.batch_size = max(1, int(batch_size or auto)) if self._batchable else 1
        first.batch = int(ins[0]["shape"][0]) if self._has_batch_dim else 1
        # the pool: interpreters are not thread-safe, so each call borrows free ones
        self._free: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._free.put(first)
        for _ in range(self.num_threads - 1):
            self._free.put(_Worker(self._new_interpreter(), first.batch))
        # decided by the model itself (is the output made by SOFTMAX?), so a model without a
        # sidecar works too; our int8 recipes end in logits (see recipes.Recipe.output_logits)
        self.output_kind = _output_kind(data)

    def _new_interpreter(self) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        global _banner_silenced
        # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" once per process
        quiet = stderr_silenced() if not _banner_silenced else contextlib.nullcontext()
        with quiet:
            interp = Interpreter(
                model_content=self._data, num_threads=1, experimental_op_resolver_type=self._resolver
            )
            interp.allocate_tensors()
        _banner_silenced = True
        return interp

    # -- shapes --------------------------------------------------------------------------

    def _check_shapes(self) -> None:
        shape = self.input.shape
        image_dims = {(28, 28), (28, 28, 1)}
        if tuple(shape[1:]) in image_dims and len(shape) in (3, 4):
            self._has_batch_dim = True
            self._batchable = shape[0] in (-1, 1)
        elif tuple(shape) in image_dims:
            self._has_batch_dim, self._batchable = False, False
        else:
            raise fail(
                self.path,
                f"input shape {list(shape)} is not MNIST-shaped; expected [N, 28, 28, 1], "
                "[N, 28, 28], [28, 28, 1] or [28, 28]",
            )
        if len(self.output.shape) not in (1, 2):
            raise fail(self.path, f"output shape {list(self.output.shape)}; expected [N, classes]")
        if self.input.dtype not in (np.float32, np.int8, np.uint8, np.int16):
            raise fail(self.path, f"input type {self.input.dtype}; expected float32, int8, uint8 or int16")

    def _resize(self, worker: _Worker, batch: int) -> None:
        if not self._has_batch_dim:
            batch = 1
        elif batch != worker.batch:
            new_shape = [batch, *[abs(d) for d in self.input.shape[1:]]]
            try:
                worker.interp.resize_tensor_input(self.input.index, new_shape, strict=False)
                worker.interp.allocate_tensors()
            except (ValueError, RuntimeError):
                # graphs with a fixed-batch reshape cannot be resized; fall back to batch 1
                worker.interp.resize_tensor_input(self.input.index, [1, *new_shape[1:]], strict=False)
                worker.interp.allocate_tensors()
                self._batchable, self.batch_size, batch = False, 1, 1
            worker.batch = batch
        if worker.buf is None or worker.rows.shape[0] != batch:
            dims = [abs(d) for d in self.input.shape]
            worker.buf = np.zeros([batch, *dims[1:]] if self._has_batch_dim else dims, self.input.dtype)
            worker.rows = worker.buf.reshape(batch, 28, 28)

    # -- quantization --------------------------------------------------------------------

    def quantize_input(self, images: np.ndarray) -> np.ndarray:
        """float images in [0, 1] -> the input tensor's dtype, with its scale and zero point."""
        x = np.asarray(images, dtype=np.float32)
        if not self.input.quantized:
            return x.astype(self.input.dtype, copy=False)
        return quantize(x, self.input.dtype, self.input.scale, self.input.zero_point)

    def dequantize_output(self, raw: np.ndarray) -> np.ndarray:
        if not self.output.quantized:
            return raw.astype(np.float32, copy=False)
        return (raw.astype(np.float32) - np.float32(self.output.zero_point)) * np.float32(self.output.scale)

    # -- inference -----------------------------------------------------------------------

    def _as_images(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        if x.shape == (28, 28, 1):  # one image with a channel axis
            x = x[None]
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(
                f"Expected images of shape (N, 28, 28) or (N, 28, 28, 1), received: shape={np.shape(images)}"
            )
        return x

    def run_raw(self, images: np.ndarray) -> np.ndarray:
        """Images in [0, 1] -> the raw output tensor values (quantized for int8 models).

        Large calls are cut into ``batch_size`` chunks that every free interpreter of the
        pool takes in turn, each from its own thread (``invoke()`` releases the GIL).
        """
        x = self._as_images(images)
        n = len(x)
        out = np.empty((n, self.output.shape[-1]), dtype=self.output.dtype)
        if n == 0:
            return out
        chunk = min(self.batch_size, n)
        workers = [self._free.get()]  # waits while other callers hold every interpreter
        try:
            while len(workers) < min(self.num_threads, -(-n // chunk)):
                workers.append(self._free.get_nowait())
        except queue.Empty:
            pass  # busy with other callers: go with what is free
        jobs, errors = itertools.count(), []
        helpers = [
            threading.Thread(target=self._drain, args=(w, x, out, chunk, jobs, errors), daemon=True)
            for w in workers[1:]
        ]
        try:
            for t in helpers:
                t.start()
            self._drain(workers[0], x, out, chunk, jobs, errors)
        finally:
            for t in helpers:
                t.join()
            for w in workers:
                self._free.put(w)
        if errors:
            raise errors[0]
        return out

    def _drain(
        self,
        worker: _Worker,
        x: np.ndarray,
        out: np.ndarray,
        chunk: int,
        jobs: itertools.count,
        errors: list[BaseException],
    ) -> None:
        """Run chunks ``next(jobs)`` of ``x`` into ``out`` until none are left (one thread)."""
        try:
            self._resize(worker, chunk)
            interp, rows, inp, outp = worker.interp, worker.rows, self.input.index, self.output.index
            step = worker.batch  # == chunk unless the graph refused the resize
            for i in jobs:
                start = i * chunk
                if start >= len(x) or errors:
                    return
                for s in range(start, min(start + chunk, len(x)), step):
                    part = x[s : s + step]
                    # leftover rows of the last chunk are stale inputs; their outputs are dropped
                    rows[: len(part)] = part if not self.input.quantized else self.quantize_input(part)
                    interp.set_tensor(inp, worker.buf)
                    interp.invoke()
                    out[s : s + len(part)] = interp.get_tensor(outp).reshape(step, -1)[: len(part)]
        except BaseException as exc:
            errors.append(exc)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Images (N, 28, 28[, 1]) float in [0, 1] -> class probabilities, float32 (N, C).

        A model that outputs logits (``output_kind``) gets its softmax here, on the host.
        """
        out = self.dequantize_output(self.run_raw(images))
        if self.output_kind == "logits":  # softmax on the host, in float32
            e = np.exp(out - out.max(axis=1, keepdims=True))
            out = e / e.sum(axis=1, keepdims=True)
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Images -> predicted class indices (N,)."""
        return self.predict_proba(images).argmax(axis=1)

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "input": self.input.describe(),
            "output": self.output.describe(),
            "output_kind": self.output_kind,
            "recipe": (self.metadata or {}).get("recipe", {}).get("name"),
            "class_names": list(self.class_names),
        }
