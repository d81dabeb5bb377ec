"""Keras -> TFLite conversion with a static batch of 1 (dynamic batches turn dilated convs into
SPACE_TO_BATCH_ND and transposed convs into SHAPE / STRIDED_SLICE ops; see DESIGN.md section 2)."""

import contextlib
import io
import os
import tempfile
import warnings

import numpy as np

from kseg.native_log import held_native_output

MODES = ("float32", "float16", "dynamic", "int8")


def to_tflite(model, mode="float32", representative_data=None, io_dtype="uint8"):
    """Convert a Keras model to a TFLite flatbuffer.

    Args:
        model: a ``keras.Model`` with one image input (batch dimension is fixed to 1 here).
        mode: one of ``MODES``.
        representative_data: for ``int8``, an iterable of float32 arrays shaped like one input
            (with or without the batch axis), drawn from the training data.
        io_dtype: for ``int8``, the input/output type: ``"uint8"`` (raw pixels in, as a camera gives
            them), ``"int8"`` or ``"float32"``.

    Returns:
        The model as ``bytes``.
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    import keras

    shape = [1] + [int(d) for d in model.inputs[0].shape[1:]]
    if model.inputs[0].shape[0] == 1:  # already static (e.g. Mask R-CNN's inference_model): no copy needed
        static = model
    else:
        static = keras.models.clone_model(model, input_tensors=keras.Input(batch_shape=shape))
        static.set_weights(model.get_weights())
    converter = tf.lite.TFLiteConverter.from_keras_model(static)
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        if representative_data is None:
            raise ValueError("int8 conversion needs representative_data (a few training images)")

        def gen():
            for x in representative_data:
                x = np.asarray(x, np.float32)
                yield [x.reshape(shape)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_dtype != "float32":
            converter.inference_input_type = getattr(tf, io_dtype)
            converter.inference_output_type = getattr(tf, io_dtype)
    # Keras' export step prints every captured variable; a user wants the result, not the trace. The converter
    # warns that int8 input statistics were not given: the representative data gives them.
    with contextlib.redirect_stdout(io.StringIO()), held_native_output(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def write_atomic(path, data):
    """Write bytes so that ``path`` holds either the old file or the complete new one, never a torn file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; give it the mode a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
