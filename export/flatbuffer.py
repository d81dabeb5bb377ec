"""Read and rewrite a ``.tflite`` flatbuffer through the schema module that ai-edge-litert ships (its object API),
so the exporter can list ops with their options, change op options and add metadata without TensorFlow's
private tools.

Example:
    >>> from export.flatbuffer import load, ops      # doctest: +SKIP
    >>> [op.name for op in ops(load(flatbuffer))]     # doctest: +SKIP
    ['QUANTIZE', 'CONV_2D', ..., 'QUANTIZE']
"""

import dataclasses
import hashlib

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from kseg.errors import ModelFileError

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


@dataclasses.dataclass
class Op:
    """One operator of subgraph 0, in execution order.

    Attributes:
        index: position in the execution order.
        name: builtin op name (``"CONV_2D"``), or the custom code for a custom op.
        options: the op's builtin options object (``None`` when it has none).
        inputs, outputs: the ``schema.TensorT`` of its inputs and outputs (``None`` for an omitted optional input).
        constant: per input, whether it is a compile-time constant (a weight, bias or shape).
        version: the op's version in the file (the converter raises it for features such as half-pixel centres;
            an older runtime or compiler refuses versions it does not know).
    """

    index: int
    name: str
    options: object
    inputs: list
    outputs: list
    constant: list
    version: int = 1


def load(flatbuffer, what="model"):
    """The mutable ``schema.ModelT`` of a ``.tflite`` file's bytes.

    Raises:
        ModelFileError: the bytes are not a TFLite flatbuffer (``what`` names the file in the message).
    """
    data = bytes(flatbuffer)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFileError(f"{what} is not a TFLite model (no TFL3 flatbuffer identifier)")
    return schema.ModelT.InitFromPackedBuf(bytearray(data), 0)


class _SharingBuilder(flatbuffers.Builder):
    """A builder that writes each distinct array once and points every later copy at it.

    The converter gives each per-channel quantized tensor its own int64 zero-point vector (all zeros) beside its
    scales: 8 bytes per output channel of every kernel and bias, 0.34 MB of a 5.1 MB int8 DeepLabV3+ MobileNetV2.
    A flatbuffer may reference one vector from many tables, and the interpreter only reads them, so sharing equal
    vectors changes no value (tests/test_export.py compares outputs).
    """

    def __init__(self, size):
        super().__init__(size)
        self._written = {}

    def CreateNumpyVector(self, x):  # noqa: N802 - the flatbuffers API's name
        data = np.ascontiguousarray(x)
        key = (data.dtype.str, data.size, hashlib.blake2b(data.tobytes(), digest_size=16).digest())
        if key not in self._written:
            self._written[key] = super().CreateNumpyVector(data)
        return self._written[key]


def dump(model):
    """``schema.ModelT`` -> ``.tflite`` bytes, with equal arrays stored once."""
    builder = _SharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_name(model, opcode_index):
    code = model.operatorCodes[opcode_index]
    # builtin codes past 127 live in builtinCode only; older files keep the small ones in the deprecated field
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return (code.customCode or b"CUSTOM").decode()
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def ops(model):
    """The ``Op`` list of subgraph 0."""
    graph = model.subgraphs[0]
    result = []
    for i, op in enumerate(graph.operators or []):
        inputs = [graph.tensors[t] if t >= 0 else None for t in (op.inputs if op.inputs is not None else [])]
        outputs = [graph.tensors[t] for t in (op.outputs if op.outputs is not None else [])]
        constant = [t is not None and _has_data(model, t) for t in inputs]
        result.append(Op(i, op_name(model, op.opcodeIndex), op.builtinOptions, inputs, outputs, constant,
                         model.operatorCodes[op.opcodeIndex].version))
    return result


def _has_data(model, tensor):
    buf = model.buffers[tensor.buffer]
    return (buf.data is not None and len(buf.data) > 0) or bool(buf.size)


def constant_value(model, tensor):
    """The numpy value of a constant tensor (shape tensors, axes, paddings), or ``None``."""
    import numpy as np

    buf = model.buffers[tensor.buffer]
    if buf.data is None or len(buf.data) == 0:
        return None
    dtype = {schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64,
             schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8,
             schema.TensorType.UINT8: np.uint8}.get(tensor.type)
    if dtype is None:
        return None
    shape = [int(d) for d in tensor.shape] if tensor.shape is not None else []
    return np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), dtype).reshape(shape)
