"""TFLM computes the int8 logits with TFLite's reference integer arithmetic, bit for bit.

The last layer of the int8 model (FULLY_CONNECTED, per-channel weights) is recomputed in
NumPy from LiteRT's input to it (the layers before agree bit for bit) with the reference
requantization: ``MultiplyByQuantizedMultiplier`` = SaturatingRoundingDoublingHighMul then
RoundingDivideByPOT. TFLM matches it on every row; LiteRT 2.3's builtin kernels differ from
it by one step on a few rows, which is why ``micro.check.disagreement`` allows one step.
"""

from __future__ import annotations

from tests.conftest import require

require("tflite_micro")  # before the imports that need them

import numpy as np

from mnist_tflite.core import data
from mnist_tflite.edge.infer import TfliteModel
from mnist_tflite.micro.tflm.interpreter import map_in_children, run_batch

N = 1000


def _quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: ``real = m * 2**(shift - 31)``, m in [2**30, 2**31)."""
    mantissa, shift = np.frexp(np.float64(real))
    m = int(np.round(mantissa * (1 << 31)))
    if m == 1 << 31:
        m, shift = m // 2, shift + 1
    return m, int(shift)


def _reference_requantize(acc: np.ndarray, m: int, shift: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul + RoundingDivideByPOT (int64 NumPy)."""
    acc = acc * (1 << max(shift, 0))
    prod = acc * m
    nudged = prod + np.where(prod >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))  # C division truncates
    right = max(-shift, 0)
    if right == 0:
        return high
    mask = (1 << right) - 1
    return (high >> right) + ((high & mask) > ((mask >> 1) + (high < 0)))


def test_tflm_logits_equal_the_reference_arithmetic(models_dir, mnist):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = models_dir / "int8.tflite"
    flatbuffer = path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    graph = model.subgraphs[0]
    fc = graph.operators[-1]
    assert model.operatorCodes[fc.opcodeIndex].builtinCode == schema.BuiltinOperator.FULLY_CONNECTED

    def const(i: int, dtype: type) -> np.ndarray:
        t = graph.tensors[i]
        return np.frombuffer(bytes(bytearray(model.buffers[t.buffer].data)), dtype).reshape(t.shape)

    weights, bias = const(fc.inputs[1], np.int8).astype(np.int64), const(fc.inputs[2], np.int32)
    q_in, q_w, q_out = (graph.tensors[i].quantization for i in (fc.inputs[0], fc.inputs[1], fc.outputs[0]))

    runner = TfliteModel(path, kernels="builtin")
    x = runner.quantize_input(data.normalize(mnist.x_test[:N]))
    interp = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    inp = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(inp, [1, 28, 28, 1])
    interp.allocate_tensors()
    features, litert = [], []
    for row in x:
        interp.set_tensor(inp, row[None, ..., None] if row.ndim == 2 else row[None])
        interp.invoke()
        features.append(interp.get_tensor(fc.inputs[0]).reshape(-1).astype(np.int64))
        litert.append(interp.get_tensor(fc.outputs[0]).reshape(-1).copy())
    acc = (np.array(features) - int(q_in.zeroPoint[0])) @ weights.T + bias
    reference = np.empty_like(acc)
    for c in range(acc.shape[1]):
        w_scale = q_w.scale[c] if len(q_w.scale) > 1 else q_w.scale[0]
        m, shift = _quantize_multiplier(q_in.scale[0] * w_scale / q_out.scale[0])
        reference[:, c] = _reference_requantize(acc[:, c], m, shift)
    reference = np.clip(reference + int(q_out.zeroPoint[0]), -128, 127)

    (res,) = map_in_children(run_batch, [(flatbuffer, 64 * 1024, x)])
    assert res.ok, res
    tflm = res.value.reshape(N, -1)
    np.testing.assert_array_equal(tflm, reference)  # bit for bit, every row
    litert = np.array(litert)
    assert np.abs(litert.astype(int) - tflm).max() <= 1  # LiteRT: one step off on a few rows
