"""Quantization-aware training for every registered semantic model: annotate, fine-tune, convert to full int8.

Each model runs in its own process (importing tfmot turns ``tf.keras`` into tf_keras, and a converter crash must
not take the other models with it), as ``export.optimize_worker`` runs it: the tf_keras twin of the model's small
test configuration (``tests/test_models.py::SMALL_CONFIGS``), random weights with batch-norm statistics from one
batch of random images (the initial statistics shrink a random MobileNetV2's features to about 1e-10, and the
int8 error would be measured on noise), recurrent loops unrolled (``unroll=True``), ``quantize_model``
(tfmot's registry plus ``CUSTOM_CONFIGS``, activation ranges calibrated on the 8 training images), ``--steps``
Adam steps of QAT fine-tuning on random images and labels,
``convert_qat`` (uint8 in and out), and ``int8_agreement``: the int8 TFLite logits against the fake-quantized
Keras model's on 4 other random images.

Prints one JSON line per model: the custom configs used, ``float_error`` (the mean absolute difference of the
fake-quantized model's logits from the float model's before fine-tuning, over the float logits' standard
deviation: a QAT model that computes something else, such as a concatenation in another order, shows here),
whether the loss is finite, the int8 TFLite ops, ``max_error`` over the logit range, ``agreement`` of the argmax,
and the seconds of each stage.

Usage:
    .venv/bin/python benchmarks/qat_coverage.py [--models danet,reseg] [--steps 2] [--out runs/qat-coverage.json]
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_case(name, steps):
    import collections

    sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
    import numpy as np

    from export.matrix import int8_build_kwargs
    from export.report import relative_error
    from export.optimize_worker import (convert_qat, flatten_nested, freeze_batch_norm, int8_agreement, quantize_model,
                                        tf_keras)
    from kseg.models.registry import inference_model
    from kseg.models.twin import build_twin
    from test_models import SMALL_CONFIGS

    tf_keras.utils.set_random_seed(0)
    kwargs = int8_build_kwargs(name, **SMALL_CONFIGS[name])
    timings = {}
    start = time.perf_counter()
    model = inference_model(build_twin(name, **kwargs))
    rng = np.random.default_rng(0)
    shape = [int(d) for d in model.inputs[0].shape[1:]]
    images = rng.uniform(0, 255, [12] + shape).astype(np.float32)
    for layer in flatten_nested(model).layers:  # with the layers of a nested model (attention to scale)
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(images[:8], training=True)
    freeze_batch_norm(model)  # as the worker does for QAT
    qat, custom = quantize_model(model, calibration=images[:8])
    timings["quantize_s"] = time.perf_counter() - start
    expected = model(images[8:], training=False).numpy()
    float_error = relative_error(qat(images[8:], training=False).numpy(), expected)

    start = time.perf_counter()
    num_classes = int(model.outputs[0].shape[-1])
    labels = rng.integers(0, num_classes, [8] + shape[:-1])
    qat.compile(optimizer=tf_keras.optimizers.Adam(2e-4),
                loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(images[:8], labels, batch_size=4, epochs=1, steps_per_epoch=steps, verbose=0)
    timings["fine_tune_s"] = time.perf_counter() - start

    start = time.perf_counter()
    flatbuffer = convert_qat(qat, images[:8], "uint8")
    timings["convert_s"] = time.perf_counter() - start
    from edge.interpreter import load_interpreter

    ops = collections.Counter(op["op_name"] for op in load_interpreter(model_content=flatbuffer)._get_ops_details())
    result = {"custom_quantize_configs": sorted(set(custom.values())), "float_error": float_error,
              "loss_finite": bool(np.all(np.isfinite(history.history["loss"]))), "ops": dict(ops),
              **int8_agreement(qat, flatbuffer, images[8:]), **{k: round(v, 1) for k, v in timings.items()}}
    return result


def run(models, steps):
    """``{model: result}``, each model in its own process; a failure is ``{"error": last line}``."""
    results = {}
    for name in models:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", name, "--steps", str(steps)],
                              capture_output=True, text=True, cwd=REPO)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if lines:
            results[name] = json.loads(lines[-1][len("RESULT "):])
        else:
            errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln and "cuInit" not in ln]
            results[name] = {"error": (errors or proc.stderr.splitlines() or [f"exit {proc.returncode}"])[-1][:400]}
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "ops"}), flush=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated (default: every semantic model)")
    p.add_argument("--steps", type=int, default=2, help="QAT fine-tuning steps (batch 4)")
    p.add_argument("--out", default=os.path.join("runs", "qat-coverage.json"))
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # run one model here, print JSON
    args = p.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.steps)))
        return
    sys.path.insert(0, REPO)
    from kseg.models.registry import list_models

    results = run(args.models.split(",") if args.models else list_models(task="semantic"), args.steps)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    main()
