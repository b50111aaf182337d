"""Compile an int8 ``.tflite`` into a small, planned layer chain for the C code generator.

The passes, one module each:

1. ``read.py``: the flatbuffer into tensors and ops; refuses what is not int8 end to end,
   an op it has no kernel for, a corrupt file;
2. ``quantization.py``: scales into fixed-point multipliers and shifts, fused activations
   into clamps, biases with the input zero point folded in;
3. ``lower.py``: shape-only ops folded away (``fold.py``), the rest lowered into kernel calls
   with typed parameter structs (``params.py``), each CONV_2D fused with the MAX_POOL_2D after it;
4. ``plan.py``: one static activation buffer, tensors placed so that the live ones never
   overlap (a row-by-row layer may write over input rows it has finished with); or, with
   ``--ram-optimized``, ``stream.py``: rows streamed through line buffers.

Then ``codegen.py`` writes the C and ``build.py`` (the ``compile`` command) builds and runs it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from mnist_tflite.micro.aot.lower import lower
from mnist_tflite.micro.aot.params import Layer
from mnist_tflite.micro.aot.plan import Plan, align, plan_memory
from mnist_tflite.micro.aot.quantization import quantize_multiplier, softmax_params
from mnist_tflite.micro.aot.read import int8_problem, read_graph
from mnist_tflite.micro.aot.stream import Stream, plan_stream

__all__ = [
    "Program",
    "Quant",
    "compile_model",
    "int8_problem",
    "load_program",
    "quantize_multiplier",
    "softmax_params",
]


@dataclass(frozen=True)
class Quant:
    """An activation tensor as the caller sees it."""

    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": "int8",
            "shape": list(self.shape),
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


@dataclass
class Program:
    """A checked, folded, fused and planned int8 model, ready for the code generator."""

    model_bytes: int
    input: Quant
    output: Quant
    output_kind: str  # "logits" (ends in FULLY_CONNECTED) or "softmax" or the last op's name
    layers: list[Layer]
    folded: list[tuple[int, str]]  # nodes removed at compile time
    storage: dict[int, int]  # tensor -> tensor whose buffer it shares (RESHAPE aliases)
    input_tensor: int
    output_tensor: int
    plan: Plan
    macs_model: int
    stream: Stream | None = None  # --ram-optimized: the streaming driver's buffers (stream.py)

    @property
    def macs_computed(self) -> int:
        return sum(layer.macs_computed for layer in self.layers)

    def regions(self) -> list[tuple[str, int, int]]:
        """Where the activation buffer's parts live, as (what, offset, bytes): the streaming
        driver's buffers by offset, or the planned tensors by offset, then each layer's scratch."""
        if self.stream is not None:
            return list(self.stream.regions)
        plan = self.plan
        placed = sorted(
            ((root, off) for root, off in plan.offsets.items() if off is not None), key=lambda kv: kv[1]
        )
        out = [(f"tensor {root}", off, plan.sizes[root]) for root, off in placed]
        out += [
            (f"scratch of layer {i}", off, self.layers[i].scratch_bytes)
            for i, off in sorted(plan.scratch.items())
        ]
        return out

    def weight_bytes(self, kernels: str = "DSP") -> int:
        """Bytes of constant arrays the ``kernels`` (a target's ``kernel_isa``) link: the Winograd
        weights only with the DSP kernels, and with the Thumb-1 ones (M0) in their own layout, 4
        bytes more per output channel and tile position (the sums' start values); a plain C or
        MVE build does not hold them."""
        total = 0
        for layer in self.layers:
            for key, a in layer.arrays.items():
                if key != "wino" or kernels == "DSP":
                    total += a.nbytes
                elif kernels == "Thumb-1":
                    total += a.nbytes + 16 * 4 * layer.out_shape[-1]
        return total


def compile_model(data: bytes, path: object = "model", ram_optimized: bool = False) -> Program:
    """Check, fold, fuse and plan ``data`` (a .tflite flatbuffer). Raises MnistTfliteError.

    ``ram_optimized``: stream rows through line buffers (stream.py) instead of holding whole
    feature maps; a graph the streaming driver does not run is refused.
    """
    graph = read_graph(data, path)
    lowered = lower(graph, path)
    storage, tensors = lowered.storage, graph.tensors
    x, y = tensors[graph.input_tensor], tensors[graph.output_tensor]
    external = {storage[graph.input_tensor], storage[graph.output_tensor]}
    sizes = {
        storage[t]: align(math.prod(tensors[t].shape))
        for layer in lowered.layers
        for t in (layer.src, layer.dst)
    }
    layers, stream = lowered.layers, None
    if ram_optimized:
        layers, plan, stream = plan_stream(layers, storage, sizes, external, path)
    else:
        plan = plan_memory(layers, storage, sizes, external)
    names = [graph.ops[i].name for i in lowered.kept]
    last_op = next((name for name in reversed(names) if name != "RESHAPE"), "RESHAPE")
    return Program(
        model_bytes=len(data),
        input=Quant(tuple(x.shape), x.scale, x.zero_point),
        output=Quant(tuple(y.shape), y.scale, y.zero_point),
        output_kind={"FULLY_CONNECTED": "logits", "SOFTMAX": "softmax"}.get(last_op, last_op.lower()),
        layers=layers,
        folded=lowered.folded,
        storage=storage,
        input_tensor=graph.input_tensor,
        output_tensor=graph.output_tensor,
        plan=plan,
        macs_model=graph.info.macs,
        stream=stream,
    )


def load_program(
    path: str | os.PathLike[str], *, allow_modified: bool = False, ram_optimized: bool = False
) -> tuple[bytes, Program]:
    """Read a ``.tflite`` the user named, vetted as every command vets it (sidecar), and compile it."""
    from mnist_tflite.edge.infer import read_model_bytes

    data, _, _ = read_model_bytes(path, allow_modified=allow_modified)
    return data, compile_model(data, path, ram_optimized=ram_optimized)
