"""EdgeTPU-ready export: an edge-safe graph and an op analyser over the Coral op table.

The Coral Edge TPU runs only fully 8-bit quantized TFLite models with static shapes, tensors whose dimensions past
the innermost three are 1, and ops from its table (https://coral.ai/docs/edgetpu/models-intro/#supported-operations),
each with its limits. ``edgetpu_compiler`` maps ops in execution order and stops at the first op it cannot map: that
op and every op after it run on the CPU, even supported ones. ``analyse`` applies those rules to a ``.tflite`` file
op by op and says where the graph would be split, so a model can be checked without the compiler (its package
repository is unreachable here); ``compile_edgetpu`` runs the compiler when it is on PATH.

The edge-safe rewrite (``make_edge_safe``) sets ``half_pixel_centers=False`` on every RESIZE_BILINEAR /
RESIZE_NEAREST_NEIGHBOR op: Keras resizes with half-pixel centres, which EdgeTPU compilers are reported to reject
(DESIGN.md section 3). This moves the sampling grid by ``(s - 1) / (2 s)`` input pixels for an ``s``-times
upsampling, so the output differs slightly from Keras; the verification report measures by how much.

Example:
    >>> from export.edgetpu import analyse
    >>> report = analyse(open("model_edgetpu.tflite", "rb").read())   # doctest: +SKIP
    >>> report.mapped_share                                            # doctest: +SKIP
    1.0
"""

import dataclasses
import os
import shutil
import subprocess

from ai_edge_litert import schema_py_generated as schema

from export.flatbuffer import TYPE_NAMES, constant_value, dump, load, ops

QUANTIZED = (schema.TensorType.INT8, schema.TensorType.UINT8)
# Spatial axes of an NHWC tensor: the reductions, paddings and resizes the EdgeTPU allows act on these only.
XY_AXES = {1, 2}


def _no_fused_activation(op, model):
    act = getattr(op.options, "fusedActivationFunction", 0)
    return None if not act else "fused activation function"


def _concatenation(op, model):
    problem = _no_fused_activation(op, model)
    if problem:
        return problem
    constants = [t for t, c in zip(op.inputs, op.constant) if c]
    if constants:
        if len(op.inputs) != 2:
            return "a constant input with more than 2 inputs"
        value = constant_value(model, constants[0])
        if value is None or value.any():
            return "a constant input that is not all zeros"
    return None


def _same_dilation(op, model):
    o = op.options
    if o is not None and getattr(o, "dilationHFactor", 1) != getattr(o, "dilationWFactor", 1):
        return f"dilation {o.dilationHFactor}x{o.dilationWFactor} differs in x and y"
    return None


def _xy_reduction(op, model):
    axes = constant_value(model, op.inputs[1]) if len(op.inputs) > 1 and op.constant[1] else None
    if axes is None:
        return "reduction axes not constant"
    rank = len(op.inputs[0].shape)
    bad = sorted({int(a) % rank for a in axes.ravel()} - XY_AXES)
    return f"reduction along axes {bad} (only x and y)" if bad else None


def _xy_padding(op, model):
    pads = constant_value(model, op.inputs[1]) if op.constant[1] else None
    if pads is None:
        return "paddings not constant"
    bad = [axis for axis, (lo, hi) in enumerate(pads.reshape(-1, 2)) if (lo or hi) and axis not in XY_AXES]
    return f"padding along axes {bad} (only x and y)" if bad else None


def _legacy_resize_version(op):
    """The version TFLite gives a resize op without half-pixel centres or aligned corners (tflite op_version.cc:
    3 marks either, 2 an int8 input); edgetpu_compiler refuses the higher ones ("Operation version not
    supported")."""
    return 2 if op.inputs[0].type == schema.TensorType.INT8 else 1


def _resize(op, model):
    if getattr(op.options, "halfPixelCenters", False):
        return "half_pixel_centers=True (export with --to edgetpu to turn it off)"
    if op.version > _legacy_resize_version(op):
        return f"op version {op.version}, which edgetpu_compiler does not support (export with --to edgetpu)"
    return None


def _softmax(op, model):
    shape = [int(d) for d in op.inputs[0].shape]
    size = 1
    for d in shape:
        size *= d
    if sum(d > 1 for d in shape) > 1 or size > 16000:
        return f"input {shape}: only a 1-D input of at most 16000 elements"
    return None


def _strided_slice(op, model):
    o = op.options
    if o is not None and (o.ellipsisMask or o.newAxisMask):
        return "ellipsis or new-axis mask"
    strides = constant_value(model, op.inputs[3]) if len(op.inputs) > 3 and op.constant[3] else None
    if strides is None or (strides != 1).any():
        return "strides other than 1"
    return None


def _fully_connected(op, model):
    if getattr(op.options, "weightsFormat", 0) != 0:
        return "shuffled weights format"
    return None


def _not_batch(axis_attr):
    def check(op, model):
        axis = getattr(op.options, axis_attr, None)
        if axis is not None and axis % max(len(op.outputs[0].shape), 1) == 0:
            return "acts along the batch dimension"
        return None

    return check


def _prelu(op, model):
    return None if op.constant[1] else "alpha is not a constant"


# The Coral op table: TFLite op -> check returning the broken limit (None when fine). Ops absent here are not
# EdgeTPU ops (SOFTMAX over pixels, ARG_MAX, TILE, SPACE_TO_BATCH_ND, BATCH_MATMUL, DEQUANTIZE, ...).
EDGETPU_OPS = {
    "ADD": None, "SUB": None, "MUL": None, "MAXIMUM": None, "MINIMUM": None, "SQUARED_DIFFERENCE": None,
    "LOGISTIC": None, "RELU": None, "RELU6": None, "RELU_N1_TO_1": None, "TANH": None, "RSQRT": None,
    "L2_NORMALIZATION": None, "QUANTIZE": None, "RESHAPE": None, "EXPAND_DIMS": None, "SQUEEZE": None,
    "SLICE": None, "SPACE_TO_DEPTH": None, "TRANSPOSE_CONV": None, "DEPTH_TO_SPACE": None,
    "AVERAGE_POOL_2D": _no_fused_activation, "MAX_POOL_2D": _no_fused_activation,
    "CONCATENATION": _concatenation,
    "CONV_2D": _same_dilation, "DEPTHWISE_CONV_2D": _same_dilation,
    "FULLY_CONNECTED": _fully_connected,
    "MEAN": _xy_reduction, "SUM": _xy_reduction, "REDUCE_MAX": _xy_reduction, "REDUCE_MIN": _xy_reduction,
    "PAD": _xy_padding,
    "RESIZE_BILINEAR": _resize, "RESIZE_NEAREST_NEIGHBOR": _resize,
    "SOFTMAX": _softmax,
    "STRIDED_SLICE": _strided_slice,
    "PACK": _not_batch("axis"), "SPLIT": None, "TRANSPOSE": None,
    "PRELU": _prelu,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": None,
}


@dataclasses.dataclass
class OpVerdict:
    """The analyser's verdict on one op.

    Attributes:
        index: position in execution order.
        name: TFLite op name.
        supported: the op and its tensors meet the EdgeTPU rules.
        mapped: it would run on the EdgeTPU (supported and before the first unsupported op).
        reason: why it is not supported (empty when it is).
    """

    index: int
    name: str
    supported: bool
    mapped: bool
    reason: str


@dataclasses.dataclass
class Analysis:
    """Op-by-op EdgeTPU verdicts for one model.

    Attributes:
        ops: one ``OpVerdict`` per op.
        split_at: index of the first op that would run on the CPU, or ``None`` when every op maps.
    """

    ops: list
    split_at: int

    @property
    def mapped_share(self):
        """Fraction of ops that would run on the EdgeTPU."""
        return sum(v.mapped for v in self.ops) / max(len(self.ops), 1)

    @property
    def supported_share(self):
        """Fraction of ops that meet the rules (mapped or not)."""
        return sum(v.supported for v in self.ops) / max(len(self.ops), 1)

    def text(self):
        """A table: one line per op, then the split and the shares."""
        lines = [f"{'#':>4}  {'op':<26} {'edgetpu':<8} reason"]
        for v in self.ops:
            where = "yes" if v.mapped else ("cpu" if not v.supported else "cpu*")
            lines.append(f"{v.index:>4}  {v.name:<26} {where:<8} {v.reason}")
        if self.split_at is None:
            lines.append(f"every op maps to the EdgeTPU ({len(self.ops)} ops)")
        else:
            lines.append(f"split at op {self.split_at} ({self.ops[self.split_at].name}): it and every later op run "
                         "on the CPU (cpu* = supported but after the split)")
        lines.append(f"mapped {100 * self.mapped_share:.1f}% of ops, supported {100 * self.supported_share:.1f}%")
        return "\n".join(lines)


def _tensor_problem(tensor, constant):
    if tensor is None:
        return None
    shape = [int(d) for d in tensor.shape] if tensor.shape is not None else []
    signature = [int(d) for d in tensor.shapeSignature] if tensor.shapeSignature is not None else shape
    if any(d < 0 for d in signature):
        return f"dynamic shape {signature}"
    if constant:
        # weights are int8, biases int32 (with int8 activations) and shapes / axes int32: all EdgeTPU formats
        if tensor.type in QUANTIZED + (schema.TensorType.INT32,):
            return None
        return f"{TYPE_NAMES.get(tensor.type, tensor.type)} constant"
    if tensor.type not in QUANTIZED:
        return f"{TYPE_NAMES.get(tensor.type, tensor.type)} tensor (only int8 / uint8)"
    if len(shape) > 3 and any(d > 1 for d in shape[:-3]):
        return f"tensor {shape}: more than 3 dimensions larger than 1"
    return None


def analyse(flatbuffer, what="model"):
    """Check every op of a ``.tflite`` model against the Coral op table and the EdgeTPU tensor rules.

    Args:
        flatbuffer: the ``.tflite`` bytes.
        what: the file name, for error messages.

    Returns:
        An ``Analysis``.
    """
    model = load(flatbuffer, what)
    verdicts, split_at = [], None
    for op in ops(model):
        reason = None
        if op.name not in EDGETPU_OPS:
            reason = "not an EdgeTPU op"
        else:
            for tensor, constant in list(zip(op.inputs, op.constant)) + [(t, False) for t in op.outputs]:
                reason = _tensor_problem(tensor, constant)
                if reason:
                    break
            check = EDGETPU_OPS[op.name]
            if reason is None and check is not None:
                reason = check(op, model)
        if reason and split_at is None:
            split_at = op.index
        verdicts.append(OpVerdict(op.index, op.name, reason is None, split_at is None, reason or ""))
    return Analysis(verdicts, split_at)


def make_edge_safe(flatbuffer):
    """Turn off ``half_pixel_centers`` on every resize op (``align_corners`` stays off) and give the op the version
    TFLite gives that form: the converter wrote 3 for half-pixel centres, which edgetpu_compiler refuses even with
    the flag off.

    Returns:
        ``(bytes, number of resize ops changed)``.
    """
    model = load(flatbuffer)
    changed, versions = 0, {}  # op code -> version: every op of one kind and version shares one code
    for raw, op in zip(model.subgraphs[0].operators or [], ops(model)):
        if op.name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR") and op.options.halfPixelCenters:
            op.options.halfPixelCenters = False
            versions[raw.opcodeIndex] = max(versions.get(raw.opcodeIndex, 1), _legacy_resize_version(op))
            changed += 1
    for code, version in versions.items():
        model.operatorCodes[code].version = version
    return (dump(model) if changed else bytes(flatbuffer)), changed


def exact_upsampling(model):
    """``model`` at batch 1 with each bilinear ``UpSampling2D`` by even factors rebuilt from ops that
    ``make_edge_safe`` leaves exact, so the EdgeTPU file computes what Keras does (same layers otherwise, weights
    shared).

    Turning half-pixel centres off moves a bilinear resize's sampling grid by ``(s - 1) / (2 s)`` input pixels:
    on a DeepLabV3+ MobileNetV2 trained on thin membranes that cost 14 points of mIoU (docs/export.md). A
    nearest-neighbour resize by an integer factor samples the same pixels either way, and a half-pixel bilinear
    upsampling by an even factor ``s`` is exactly, along each axis: pad one edge pixel on each side (the resize
    clamps there), nearest upsampling by ``s``, crop ``s / 2`` on each side, and a fixed ``s + 1``-tap
    depthwise filter ``(box(s) * box(2)) / 2s`` (``[1, 2, 2, 2, 1] / 8`` for 4x). In TFLite: STRIDED_SLICE,
    CONCATENATION, RESIZE_NEAREST_NEIGHBOR and DEPTHWISE_CONV_2D, all EdgeTPU ops. Other resizes are kept.
    """
    import keras

    def exact(layer):
        size = tuple(getattr(layer, "size", ()))
        return (type(layer).__name__ == "UpSampling2D" and layer.interpolation == "bilinear" and len(size) == 2
                and all(s % 2 == 0 for s in size))

    if not any(exact(layer) for layer in model.layers):
        return model
    # batch 1 here, as the EdgeTPU file has it: the converter would otherwise clone the model again, and a
    # Lambda layer does not survive a clone through its config
    return keras.models.clone_model(
        model, input_tensors=keras.Input(batch_shape=(1,) + tuple(model.inputs[0].shape[1:])),
        clone_function=lambda layer: _half_pixel_bilinear(layer) if exact(layer) else layer)


def _half_pixel_bilinear(layer):
    import keras
    import numpy as np
    from keras import ops

    sizes = tuple(layer.size)

    def upsample(x, axis, s):
        def rows(a, start, stop):  # a[:, start:stop] along `axis`: STRIDED_SLICE with unit strides
            return a[:, start:stop] if axis == 1 else a[:, :, start:stop]

        n = x.shape[axis]
        x = ops.concatenate([rows(x, 0, 1), x, rows(x, n - 1, n)], axis=axis)
        shape = list(x.shape[1:3])
        shape[axis - 1] *= s
        x = rows(ops.image.resize(x, shape, interpolation="nearest"), s // 2, (n + 2) * s - s // 2)
        taps = np.convolve(np.ones(s), np.ones(2)) / (2 * s)
        kernel = np.tile(taps.reshape((-1, 1) if axis == 1 else (1, -1))[:, :, None, None], (1, 1, x.shape[-1], 1))
        return ops.depthwise_conv(x, kernel.astype("float32"), padding="valid")

    return keras.layers.Lambda(lambda x: upsample(upsample(x, 1, sizes[0]), 2, sizes[1]), name=layer.name,
                               dtype=layer.dtype_policy)


def compile_edgetpu(tflite_path, out_dir=None):
    """Run ``edgetpu_compiler`` on the file when it is on PATH.

    Returns:
        ``None`` without the compiler, else ``(return code, compiler log)``; the compiled model is written to
        ``out_dir`` (default: beside the input) as ``<name>_edgetpu.tflite``.
    """
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        return None
    out_dir = out_dir or os.path.dirname(os.path.abspath(tflite_path))
    run = subprocess.run([compiler, "-s", "-o", out_dir, tflite_path], capture_output=True, text=True)
    return run.returncode, run.stdout + run.stderr
