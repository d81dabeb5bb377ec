"""The verification report of an export: size, op histogram, output error of each stage against Keras, validation
mIoU through ``kseg.metrics``, CPU latency with 1 and 2 threads; as text (``<model>.report.txt``) and a picture
(``<model>.report.png``).

Stages: ``keras`` (the model exported; after pruning / clustering / QAT, the optimized Keras model), ``float32``
(its plain TFLite conversion, the reference for size and speed) and the exported file. Output error is measured on
the dequantized output logits of the first validation images (random pixels without data) against Keras; an int8
file's error is also measured layer by layer (``layer_errors``), and the report names the layers where it rises
most.

Example:
    >>> from export.report import verification_report
    >>> numbers = verification_report(model, "m_int8.tflite", "int8", data_cfg)   # doctest: +SKIP
    >>> numbers["stages"]["int8"]["size_bytes"] / numbers["stages"]["float32"]["size_bytes"]   # doctest: +SKIP
"""

import collections
import gzip
import itertools
import os
import time

import numpy as np

from export.convert import write_atomic


LAYER_ERROR_IMAGES = 2  # validation images for the per-layer int8 error


def tflite_op_histogram(flatbuffer):
    """Counter of op names in a ``.tflite`` file (as written, before any delegate)."""
    from export.flatbuffer import load, ops

    return collections.Counter(op.name for op in ops(load(flatbuffer)))


def dequantized_output(interp, x):
    """Run a LiteRT interpreter on raw pixels ``x`` (1, H, W, C) and return float logits, dequantized."""
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    if inp["dtype"] == np.float32:
        feed = x.astype(np.float32)
    else:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        feed = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
    interp.set_tensor(inp["index"], feed)
    interp.invoke()
    y = interp.get_tensor(out["index"])
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def latency_ms(flatbuffer, threads, runs=20, warmup=3):
    """Median ``invoke`` time in milliseconds on this CPU with ``threads`` XNNPACK threads."""
    from edge.interpreter import load_interpreter

    interp = load_interpreter(model_content=flatbuffer, num_threads=threads)
    inp = interp.get_input_details()[0]
    x = np.zeros(inp["shape"], inp["dtype"])
    interp.set_tensor(inp["index"], x)
    times = []
    for i in range(warmup + runs):
        t = time.perf_counter()
        interp.invoke()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - t))
    return float(np.median(times))


def _samples(data_cfg, model, num, progress=None):
    """``(uint8 image, label)`` pairs, streamed: the validation split (with a ``progress`` bar), or ``num`` random
    images without data."""
    if data_cfg is None:
        shape = [int(d) for d in model.inputs[0].shape[1:]]
        rng = np.random.default_rng(0)
        return [(rng.uniform(0, 255, shape).round().astype(np.uint8), None) for _ in range(num)]
    from kseg.evaluate import uint8_samples

    return uint8_samples(data_cfg, "val", progress)


def score_stages(keras_model, flatbuffers, data_cfg=None, error_images=4, verbose=False):
    """Output error against Keras and validation mIoU of each TFLite stage (and mIoU of Keras).

    Args:
        keras_model: the Keras reference.
        flatbuffers: ``{stage name: .tflite bytes}``.
        data_cfg: the data section (validation split); ``None`` scores error on random pixels only.
        error_images: how many images measure the output error.
        verbose: a progress bar over the validation split.

    Returns:
        ``{stage: {"miou", "max_abs_error", "mean_abs_error", "agreement"}}`` plus ``"keras": {"miou"}``; mIoU
        and agreement (pixels where the stage's argmax equals Keras') are ``None`` without data.
    """
    from edge.interpreter import load_interpreter
    from kseg.metrics import ConfusionMatrix

    samples = _samples(data_cfg, keras_model, error_images, "scoring the stages on val" if verbose else None)
    num_classes = int(keras_model.outputs[0].shape[-1])
    ignore = int(data_cfg.get("ignore_index", 255)) if data_cfg is not None else 255
    interps = {k: load_interpreter(model_content=v) for k, v in flatbuffers.items()}
    cms = {k: ConfusionMatrix(max(num_classes, 2), ignore) for k in ["keras", *interps]}
    err = {k: [] for k in interps}
    same = {k: 0 for k in interps}
    total = 0
    for i, (image, label) in enumerate(samples):
        x = image[None].astype(np.float32)
        ref = np.asarray(keras_model(x, training=False))
        ids = {"keras": _ids(ref[0])}
        for name, interp in interps.items():
            y = dequantized_output(interp, x)
            ids[name] = _ids(y[0])
            if i < error_images:
                err[name].append(np.abs(y - ref))
            same[name] += int((ids[name] == ids["keras"]).sum())
        total += ids["keras"].size
        if label is not None:
            for name, pred in ids.items():
                cms[name].update(label, pred)
    have_labels = data_cfg is not None
    result = {"keras": {"miou": float(cms["keras"].mean_iou()) if have_labels else None}}
    for name in interps:
        e = np.concatenate([a.ravel() for a in err[name]])
        result[name] = {"miou": float(cms[name].mean_iou()) if have_labels else None,
                        "max_abs_error": float(e.max()), "mean_abs_error": float(e.mean()),
                        "agreement": same[name] / max(total, 1)}
    return result


def relative_error(value, reference):
    """Mean absolute difference of ``value`` from ``reference`` over the standard deviation of ``reference``."""
    return float(np.abs(value - reference).mean() / max(float(np.std(reference)), 1e-12))


def layer_errors(keras_model, flatbuffer, images):
    """Where a quantized file departs from its Keras model, layer by layer (what TensorFlow's quantization
    debugger does for post-training files, here for any file, QAT ones included).

    Every Keras layer whose output the file holds is matched by name (the converter names a tensor after the ops
    fused into it: ``model/layer/op`` parts, ``quant_`` before the layer's name in a QAT file) and shape; its
    error is the mean absolute difference of the dequantized tensor from the layer's output over that output's
    standard deviation, averaged over ``images`` (raw pixels, (H, W, C)). A layer whose error stands far above its
    inputs' is where the file computes something else (docs/export.md: a permuted concatenation found this way).

    Returns:
        ``[(layer name, error), ...]`` in model order.
    """
    import re

    import keras
    from ai_edge_litert.interpreter import OpResolverType

    from edge.interpreter import Interpreter

    order = {}
    outputs = []
    for layer in keras_model.layers[1:]:
        # a layer called more than once, or a nested model (whose own output lies in its inner graph), has no
        # single output in this graph; a layer with several outputs has no single TFLite tensor
        if len(layer._inbound_nodes) != 1 or isinstance(layer, keras.Model):
            continue
        if isinstance(layer.output, keras.KerasTensor):
            outputs.append(layer.output)
            order[layer.name] = len(order)
    probe = keras.Model(keras_model.input, outputs)
    # the interpreter's own kernels: a delegate's intermediate tensors are not kept
    interp = Interpreter(model_content=flatbuffer, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()

    def layer_of(part):
        bits = part.split("/")
        name = re.sub(r"^quant_", "", bits[1]) if len(bits) > 1 else ""
        return name if name in order else re.sub(r"_\d+$", "", name)

    errors = collections.defaultdict(list)
    for image in images:
        x = image[None].astype(np.float32)
        reference = dict(zip(order, (np.asarray(y) for y in probe(x, training=False))))
        dequantized_output(interp, x)
        last = {}  # a layer the converter splits into several ops (Rescaling: MUL, ADD): the last op's tensor
        for op in interp._get_ops_details():
            for index in op["outputs"]:
                detail = interp._get_tensor_details(index, 0)
                names = [layer_of(part) for part in detail["name"].split(";")]
                names = [n for n in names if n in order and reference[n].shape == tuple(detail["shape"])]
                if names:  # ops fused into one tensor: the last layer's output
                    last[max(names, key=order.get)] = detail
        for name, detail in last.items():
            scale, zero = detail["quantization"]
            value = interp.get_tensor(detail["index"]).astype(np.float32)
            value = (value - zero) * scale if scale else value
            errors[name].append(relative_error(value, reference[name]))
    return [(name, float(np.mean(errors[name]))) for name in sorted(errors, key=order.get)]


def largest_rises(errors, count=5):
    """The ``count`` layers of ``layer_errors`` whose error rises most over the layer before them (model order)."""
    rises = [(name, error, error - previous) for (name, error), (_, previous) in zip(errors[1:], errors)]
    return sorted(rises, key=lambda r: -r[2])[:count]


def _ids(logits):
    return (logits[..., 0] > 0).astype(np.int64) if logits.shape[-1] == 1 else np.argmax(logits, axis=-1)


def verification_report(keras_model, tflite_path, mode, data_cfg=None, stages=None, edgetpu=None, threads=(1, 2),
                        verbose=True):
    """Measure an exported file against its Keras model and the plain float32 conversion; write the report.

    Args:
        keras_model: the Keras model the file was converted from.
        tflite_path: the exported ``.tflite``.
        mode: its export mode (the stage name in the report).
        data_cfg: the data section for validation mIoU (``None``: output error on random pixels only).
        stages: extra numbers to carry into the report (``{"optimized": {...}}`` from ``export.optimize``).
        edgetpu: the ``export.edgetpu.Analysis`` of an EdgeTPU export.
        threads: the XNNPACK thread counts to time.

    Returns:
        The numbers: ``stages`` (per stage: ``size_bytes``, ``gzip_bytes``, ``latency_ms`` per thread count,
        ``miou``, errors), ``ops`` (histogram of the exported file), and the report paths.
    """
    from export.convert import to_tflite

    with open(tflite_path, "rb") as f:
        exported = f.read()
    files = {"float32": to_tflite(keras_model, "float32")}
    if mode != "float32":
        files[mode] = exported
    scores = score_stages(keras_model, files, data_cfg, verbose=verbose)
    numbers = {"stages": {"keras": scores["keras"]}, "ops": dict(tflite_op_histogram(exported))}
    for name, data in files.items():
        numbers["stages"][name] = {"size_bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9)),
                                   "latency_ms": {t: latency_ms(data, t) for t in threads}, **scores[name]}
    if mode in ("int8", "edgetpu"):
        # the first images only: the split is read as a stream, not decoded whole for two images
        samples = itertools.islice(_samples(data_cfg, keras_model, LAYER_ERROR_IMAGES), LAYER_ERROR_IMAGES)
        images = [image for image, _ in samples]
        numbers["layer_errors"] = layer_errors(keras_model, exported, images)
    for name, extra in (stages or {}).items():
        numbers[name] = {k: v for k, v in extra.items() if k not in ("tflite", "keras_model")}
    if edgetpu is not None:
        numbers["edgetpu_mapped_share"] = edgetpu.mapped_share
    base = os.path.splitext(tflite_path)[0]
    text = report_text(numbers, tflite_path, mode, edgetpu)
    write_atomic(base + ".report.txt", text.encode())
    report_figure(numbers, mode, base + ".report.png")
    numbers["paths"] = [base + ".report.txt", base + ".report.png"]
    if verbose:
        print(text)
    return numbers


def report_text(numbers, tflite_path, mode, edgetpu=None):
    stages = numbers["stages"]
    ref = stages["float32"]
    lines = [f"verification of {tflite_path} ({mode})", "",
             f"{'stage':<10} {'size KB':>9} {'x f32':>6} {'gzip KB':>8} "
             + " ".join(f"{f'{t} thr ms':>9}" for t in ref["latency_ms"])
             + f" {'max|err|':>9} {'mean|err|':>9} {'agree':>7} {'mIoU':>7}"]
    miou = stages["keras"]["miou"]
    lines.append(f"{'keras':<10} {'':>9} {'':>6} {'':>8} " + " ".join(f"{'':>9}" for _ in ref["latency_ms"])
                 + f" {'':>9} {'':>9} {'':>7} {_fmt(miou):>7}")
    for name, s in stages.items():
        if name == "keras":
            continue
        lines.append(f"{name:<10} {s['size_bytes'] / 1e3:>9.1f} {s['size_bytes'] / ref['size_bytes']:>6.3f} "
                     f"{s['gzip_bytes'] / 1e3:>8.1f} " + " ".join(f"{v:>9.2f}" for v in s["latency_ms"].values())
                     + f" {s['max_abs_error']:>9.2e} {s['mean_abs_error']:>9.2e} {s['agreement']:>7.4f}"
                     f" {_fmt(s['miou']):>7}")
    lines += ["", "ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(numbers["ops"].items(), key=lambda kv: -kv[1]))]
    opt = numbers.get("optimized")
    if opt:
        lines += ["", "optimization: " + ", ".join(f"{k}={v}" for k, v in opt.items() if not isinstance(v, dict))]
        for layer, sparsity in (opt.get("sparsity") or {}).items():
            lines.append(f"  {layer:<40} sparsity {sparsity:.3f}")
    if numbers.get("layer_errors"):
        lines += ["", f"int8 error by layer ({len(numbers['layer_errors'])} layers matched; mean |error| over the "
                      "Keras output's std), the largest rises over the layer before:"]
        lines += [f"  {name:<40} {error:.3f} (+{rise:.3f})" for name, error, rise in
                  largest_rises(numbers["layer_errors"])]
    if edgetpu is not None:
        lines += ["", "EdgeTPU op analysis (Coral op table):", edgetpu.text()]
    return "\n".join(lines) + "\n"


def _fmt(v):
    return "n/a" if v is None else f"{v:.4f}"


def report_figure(numbers, mode, path):
    """Four panels: size, latency per thread count, mIoU per stage, op histogram of the exported file."""
    from matplotlib.figure import Figure

    from kseg.viz import _save

    stages = {k: v for k, v in numbers["stages"].items() if k != "keras"}
    names = list(stages)
    fig = Figure(figsize=(10, 6))
    axes = fig.subplots(2, 2)
    axes[0, 0].bar(names, [s["size_bytes"] / 1e6 for s in stages.values()], color="tab:blue")
    axes[0, 0].set(title="file size (MB)")
    threads = list(stages[names[0]]["latency_ms"])
    width = 0.8 / len(threads)
    for j, t in enumerate(threads):
        axes[0, 1].bar(np.arange(len(names)) + j * width, [s["latency_ms"][t] for s in stages.values()], width,
                       label=f"{t} thread{'s' if t > 1 else ''}")
    axes[0, 1].set(title="CPU latency (ms, median)", xticks=np.arange(len(names)) + width * (len(threads) - 1) / 2)
    axes[0, 1].set_xticklabels(names)
    axes[0, 1].legend()
    mious = [numbers["stages"]["keras"]["miou"]] + [s["miou"] for s in stages.values()]
    if all(m is not None for m in mious):
        axes[1, 0].bar(["keras", *names], mious, color="tab:green")
        axes[1, 0].set(title="validation mIoU", ylim=(max(0.0, min(mious) - 0.1), min(1.0, max(mious) + 0.05)))
    else:
        axes[1, 0].bar(names, [s["agreement"] for s in stages.values()], color="tab:green")
        axes[1, 0].set(title="argmax agreement with Keras (random pixels)", ylim=(0, 1.05))
    ops = sorted(numbers["ops"].items(), key=lambda kv: -kv[1])
    axes[1, 1].barh([k for k, _ in ops], [v for _, v in ops], color="tab:gray")
    axes[1, 1].invert_yaxis()
    axes[1, 1].set(title=f"ops in the {mode} file")
    axes[1, 1].tick_params(axis="y", labelsize=7)
    _save(fig, path)
