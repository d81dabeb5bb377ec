"""The deployability matrix: for a registered model at a small size, does it convert to float32 TFLite and how far
is it from Keras, does it convert to full int8 and how well does it agree, and what share of its ops would run on
the EdgeTPU after the EdgeTPU-safe rewrite.

``tests/test_export_matrix.py`` runs it over every registered model (the small configs of tests/test_models.py)
with strict thresholds; ``benchmarks/export.py --matrix`` writes the table in docs/export.md.

Example:
    >>> import kseg
    >>> from export.matrix import deployability
    >>> row = deployability(kseg.create_model("unet", num_classes=3, input_shape=(64, 64, 3), base_filters=8,
    ...                                       depth=3))  # doctest: +SKIP
    >>> row["edgetpu_mapped"]                            # doctest: +SKIP
    1.0
"""

import inspect

import numpy as np


def int8_build_kwargs(name, **kwargs):
    """Builder arguments for registered model ``name`` on the int8 route: a recurrent model unrolled (its WHILE
    loops crash TensorFlow 2.21's int8 converter with SIGSEGV, docs/rnn.md)."""
    from kseg.models.registry import get_builder

    if "unroll" in inspect.signature(get_builder(name)).parameters:
        kwargs["unroll"] = True
    return kwargs


def _failure(e):
    """One line for the table: the exception type and the first line of its message."""
    message = str(e).strip()
    return f"{type(e).__name__}: {message.splitlines()[0][:200]}" if message else type(e).__name__


def random_pixels(model, count, seed=0):
    shape = [int(d) for d in model.inputs[0].shape[1:]]
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, shape).astype(np.float32) for _ in range(count)]


def deployability(model, float32=True, num_images=4):
    """One row of the matrix.

    Args:
        model: a Keras 3 kseg model (logits out).
        float32: also convert to float32 and measure its error (the int8 columns need only one conversion).
        num_images: random-pixel images, used both to calibrate int8 and to measure (the ranges then cover the
            measured inputs, so the columns measure the quantization, not the calibration's coverage).

    Returns:
        A dict: ``float32_error`` (max |TFLite - Keras| / (1 + max |Keras|)), ``int8_error`` (mean |dequantized
        int8 - Keras| over the logit range), ``int8_agreement`` (argmax agreement with Keras), ``edgetpu_mapped`` /
        ``edgetpu_supported`` (op shares), ``split_op`` (first op left to the CPU), and the op counts; a failed
        conversion leaves its columns ``None`` and puts the error in ``float32_failure`` / ``int8_failure``.
    """
    from edge.interpreter import load_interpreter
    from export.convert import to_tflite
    from export.edgetpu import analyse, exact_upsampling, make_edge_safe
    from export.report import dequantized_output

    images = random_pixels(model, num_images)
    refs = [np.asarray(model(x[None], training=False)) for x in images]
    row = {}
    if float32:
        try:
            interp = load_interpreter(model_content=to_tflite(model, "float32"))
            row["float32_error"] = max(float(np.max(np.abs(dequantized_output(interp, x[None]) - r)))
                                       / (1.0 + float(np.max(np.abs(r)))) for x, r in zip(images, refs))
        except Exception as e:  # the matrix reports every failure instead of stopping at the first model
            row["float32_failure"] = _failure(e)
    errors, same, total = [], 0, 0
    try:  # a file can convert and still fail in a kernel (crfasrnn's int8 DIV, docs/export.md)
        int8 = to_tflite(model, "int8", representative_data=images)
        interp = load_interpreter(model_content=int8)
        for x, r in zip(images, refs):
            y = dequantized_output(interp, x[None])
            errors.append(float(np.mean(np.abs(y - r))) / max(float(np.ptp(r)), 1e-6))
            same += int((np.argmax(y, -1) == np.argmax(r, -1)).sum())
            total += r[..., 0].size
        # the graph `kseg export --to edgetpu` converts (the plain int8 file keeps the cheaper bilinear resizes)
        edge_model = exact_upsampling(model)
        edge_int8 = int8 if edge_model is model else to_tflite(edge_model, "int8", representative_data=images)
    except Exception as e:
        row["int8_failure"] = _failure(e)
        return row
    safe, _ = make_edge_safe(edge_int8)
    analysis = analyse(safe)
    row.update(int8_error=float(np.mean(errors)), int8_agreement=same / total,
               edgetpu_mapped=analysis.mapped_share, edgetpu_supported=analysis.supported_share,
               num_ops=len(analysis.ops),
               split_op=None if analysis.split_at is None else
               f"{analysis.ops[analysis.split_at].name}: {analysis.ops[analysis.split_at].reason}")
    return row
