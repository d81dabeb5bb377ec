"""Does ReSeg convert to full-int8 TFLite? Each (cell, unroll, framework) case in its own process (a converter
crash must not take the others with it), on a small ReSeg (64x64, MobileNetV2 alpha 0.35, 2 ReNet layers of 8
units) with random weights and random calibration images.

* ``keras3``: the Keras 3 model through ``export.convert.to_tflite(model, "int8")`` (uint8 in and out).
* ``tf_keras``: its tf_keras twin (weights transferred) through a concrete function, as the QAT worker converts.

For each case: whether it converts, the ops, and how far the dequantized int8 logits are from the float model's
(max abs error over the logit range, and the share of pixels whose argmax agrees).

Usage:
    .venv/bin/python benchmarks/reseg_int8.py [--cells gru,lstm] [--unroll false,true] [--out runs/reseg-int8.json]
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = dict(num_classes=3, input_shape=(64, 64, 3), backbone="mobilenetv2", renet_units=(8, 8),
              upsample_filters=8, backbone_kwargs={"alpha": 0.35})
FRAMEWORKS = ("keras3", "tf_keras")


def run_case(cell, unroll, framework):
    import collections

    import numpy as np
    import tensorflow as tf

    import kseg
    from edge.interpreter import load_interpreter, run_once

    kwargs = dict(CONFIG, cell=cell, unroll=unroll)
    model = kseg.create_model("reseg", **kwargs)
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(0, 255, (1, 64, 64, 3)).astype(np.float32) for _ in range(8)]
    # BN statistics of real activations (one training-mode pass at momentum 0): with the initial ones the random
    # MobileNetV2 shrinks its features to about 1e-10 and the int8 error would be measured on noise.
    batchnorms = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    for layer in batchnorms:
        layer.momentum = 0.0
    model(np.concatenate(calibration), training=True)
    image = rng.integers(0, 256, (1, 64, 64, 3)).astype(np.uint8)
    if framework == "keras3":
        from export.convert import to_tflite

        flatbuffer = to_tflite(model, "int8", calibration)
    else:
        from kseg.models.twin import build_twin, transfer_weights

        twin = build_twin("reseg", **kwargs)
        transfer_weights(model, twin)
        fn = tf.function(lambda x: twin(x, training=False)).get_concrete_function(
            tf.TensorSpec((1, 64, 64, 3), tf.float32))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], twin)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([c] for c in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
        flatbuffer = converter.convert()
    interp = load_interpreter(model_content=flatbuffer)
    quantized = run_once(interp, image)
    scale, zero = interp.get_output_details()[0]["quantization"]
    got = (quantized.astype(np.float32) - zero) * scale
    expected = np.asarray(model(image.astype(np.float32), training=False))
    ops = collections.Counter(op["op_name"] for op in interp._get_ops_details())
    return {"converts": True, "ops": dict(ops),
            "max_abs_err_over_range": float(np.max(np.abs(got - expected)) / np.ptp(expected)),
            "argmax_agreement": float(np.mean(got.argmax(-1) == expected.argmax(-1)))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="gru,lstm")
    p.add_argument("--unroll", default="false,true", help="which of unroll=false / true to run")
    p.add_argument("--out", default=os.path.join("runs", "reseg-int8.json"))
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # cell,unroll,framework: run one, print JSON
    args = p.parse_args(argv)
    if args.case:
        cell, unroll, framework = args.case.split(",")
        print("RESULT " + json.dumps(run_case(cell, unroll == "True", framework)))
        return
    results = {}
    for cell in args.cells.split(","):
        for unroll in [u == "true" for u in args.unroll.split(",")]:
            for framework in FRAMEWORKS:
                key = f"{cell} unroll={unroll} {framework}"
                proc = subprocess.run([sys.executable, __file__, "--case", f"{cell},{unroll},{framework}"],
                                      capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if lines:
                    results[key] = json.loads(lines[-1][len("RESULT "):])
                elif proc.returncode < 0:  # the converter crashed the process (SIGSEGV was seen)
                    results[key] = {"converts": False, "error": f"process killed by signal {-proc.returncode}"}
                else:
                    errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln and "cuInit" not in ln]
                    results[key] = {"converts": False, "exit_code": proc.returncode,
                                    "error": (errors or proc.stderr.splitlines() or ["?"])[-1][:300]}
                print(key, json.dumps(results[key]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    main()
