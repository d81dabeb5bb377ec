"""Where does full-int8 TFLite lose its speed on this CPU? Each op the zoo's decoders use, alone in a one-layer
model at a decoder-like shape, timed as float32 and as full int8 in the same run; the ratio int8 / float32 says
which ops XNNPACK runs faster in int8 and which fall back to slower kernels.

    python benchmarks/int8_ops.py [--threads 1,2] [--runs 30] [--size 128] [--channels 64]

Prints a markdown table (docs/export.md quotes it) with the median invoke time per op and mode, and the ratio.
The op histogram column shows what the converter emitted, so a QUANTIZE/DEQUANTIZE pair around an op (a float
fallback inside the int8 graph) is visible.
"""

import argparse
import os
import re
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def op_models(size, channels):
    """One-layer Keras models keyed by the op they exercise; input (1, size, size, channels), raw floats."""
    import keras
    from keras import layers

    def model(name, build, in_size=size):
        x = keras.Input(batch_shape=(1, in_size, in_size, channels))
        # the model name becomes a TF function name: letters, digits and underscores only
        return name, keras.Model(x, build(x), name=re.sub(r"\W+", "_", name))

    return [
        model("conv 3x3", lambda x: layers.Conv2D(channels, 3, padding="same")(x)),
        model("conv 1x1", lambda x: layers.Conv2D(channels, 1)(x)),
        model("depthwise 3x3", lambda x: layers.DepthwiseConv2D(3, padding="same")(x)),
        model("conv 3x3 dilated 2", lambda x: layers.Conv2D(channels, 3, padding="same", dilation_rate=2)(x)),
        model("transposed conv 2x2/2", lambda x: layers.Conv2DTranspose(channels, 2, strides=2)(x), size // 2),
        model("transposed conv 4x4/2", lambda x: layers.Conv2DTranspose(channels, 4, strides=2, padding="same")(x),
              size // 2),
        model("resize bilinear 2x", lambda x: layers.Resizing(size, size, interpolation="bilinear")(x), size // 2),
        model("concat + conv 1x1", lambda x: layers.Conv2D(channels, 1)(layers.Concatenate()([x, layers.ReLU()(x)]))),
        model("add", lambda x: layers.Add()([x, layers.ReLU()(x)])),
        model("max pool 2x2", lambda x: layers.MaxPooling2D()(x)),
        model("batchnorm + relu", lambda x: layers.ReLU()(layers.BatchNormalization()(x))),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated XNNPACK thread counts")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--size", type=int, default=128, help="feature map side")
    p.add_argument("--channels", type=int, default=64)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from export.convert import to_tflite
    from export.report import latency_ms, tflite_op_histogram

    threads = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)
    head = " | ".join(f"float32 {t}t ms | int8 {t}t ms | ratio {t}t" for t in threads)
    print(f"| op ({args.size}x{args.size}x{args.channels}) | {head} | int8 ops |")
    print("|---|" + "---|" * (3 * len(threads)) + "---|")
    for name, model in op_models(args.size, args.channels):
        shape = [int(d) for d in model.inputs[0].shape]
        calib = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(8)]
        f32 = to_tflite(model, "float32")
        i8 = to_tflite(model, "int8", representative_data=calib, io_dtype="int8")
        cells = []
        for t in threads:
            a, b = latency_ms(f32, t, runs=args.runs), latency_ms(i8, t, runs=args.runs)
            cells.append(f"{a:.3f} | {b:.3f} | {b / a:.2f}")
        ops = ", ".join(f"{k} {v}" for k, v in sorted(tflite_op_histogram(i8).items()))
        print(f"| {name} | {' | '.join(cells)} | {ops} |", flush=True)


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    main()
