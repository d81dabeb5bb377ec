"""DeepLabv3 with and without multi-grid: what the (1, 2, 4) unit rates of the last ResNet block cost.

Multi-grid (Chen et al. 2017, arXiv 1706.05587, section 3.2) changes only dilation rates, so parameters, MACs and
the float32 TFLite size must come out equal; the CPU latency of the two TFLite models is measured with their
invokes interleaved (A, B, A, B, ...) so that the load of this shared machine hits both alike, and reported as the
median of each and their ratio.

Usage:
    .venv/bin/python benchmarks/multigrid.py [--size 512] [--backbone resnet50] [--output-stride 16]
                                             [--runs 5] [--threads 2]
"""

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # before this script's folder, whose edge.py is not the edge package
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--output-stride", type=int, default=16)
    p.add_argument("--runs", type=int, default=5, help="timed invokes per model, interleaved, after one warm-up")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import numpy as np

    import kseg
    from edge.interpreter import load_interpreter, run_once
    from export.convert import to_tflite
    from models import _load, count_macs  # benchmarks/models.py, this script's folder

    variants = {"multi_grid=(1, 2, 4)": (1, 2, 4), "multi_grid=None": None}
    interpreters, rows = {}, {}
    for label, grid in variants.items():
        model = kseg.create_model("deeplabv3", num_classes=2, input_shape=(args.size, args.size, 3),
                                  backbone=args.backbone, output_stride=args.output_stride, multi_grid=grid)
        rates = [model.get_layer(f"conv5_block{i}_2_conv").dilation_rate[0] for i in (1, 2, 3)] \
            if args.backbone.startswith("resnet") else []
        flatbuffer = to_tflite(model, "float32")
        interpreters[label] = load_interpreter(model_content=flatbuffer, num_threads=args.threads)
        rows[label] = {"params": model.count_params(), "gmacs": count_macs(model) / 1e9,
                       "mb": len(flatbuffer) / 1e6, "rates": rates, "ms": []}
    frame = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype(np.float32)
    for interpreter in interpreters.values():
        run_once(interpreter, frame)  # warm-up: XNNPACK packs the weights on the first invoke
    for _ in range(args.runs):
        for label, interpreter in interpreters.items():
            start = time.perf_counter()
            run_once(interpreter, frame)
            rows[label]["ms"].append((time.perf_counter() - start) * 1e3)

    print(f"deeplabv3 {args.backbone} at {args.size}x{args.size}, output stride {args.output_stride}, "
          f"{args.threads} threads, {args.runs} interleaved runs; load average {_load()}")
    print("| variant | conv5 3x3 rates | params (M) | GMACs | TFLite f32 (MB) | CPU ms (median) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, row in rows.items():
        print(f"| {label} | {', '.join(map(str, row['rates']))} | {row['params'] / 1e6:.2f} | {row['gmacs']:.1f} | "
              f"{row['mb']:.1f} | {statistics.median(row['ms']):.0f} |")
    on, off = (statistics.median(rows[k]["ms"]) for k in variants)
    print(f"latency ratio with / without multi-grid: {on / off:.2f}; load average at the end {_load()}")
    return 0


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    sys.exit(main())
