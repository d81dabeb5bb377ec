"""Mask R-CNN network costs on this machine: build, training step (eager and graph, with the graph's one-off trace),
inference (Keras), and the float32 TFLite export of ``inference_model()`` (conversion time, size, latency, op list,
largest output difference to Keras).

The model is the test suite's tiny configuration (64x64, MobileNetV2 alpha 0.35, FPN 32) unless ``--size`` /
``--alpha`` / ``--fpn`` say otherwise; batches are the tests' synthetic rectangles and ellipses.

Usage:
    .venv/bin/python benchmarks/maskrcnn_network.py [--size 64] [--alpha 0.35] [--fpn 32] [--steps 5] [--no-tflite]
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _timed(fn, repeat=1):
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return out, (time.perf_counter() - start) / repeat


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="input height and width (multiple of 64)")
    p.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width multiplier")
    p.add_argument("--fpn", type=int, default=32, help="fpn_filters")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed training steps of each mode")
    p.add_argument("--no-tflite", action="store_true", help="skip the TFLite export")
    args = p.parse_args(argv)

    import keras
    import numpy as np

    import kseg
    from test_maskrcnn import TINY, synthetic_batch

    scale = args.size / 64
    config = {**TINY, "input_shape": (args.size, args.size, 3), "backbone_kwargs": {"alpha": args.alpha},
              "fpn_filters": args.fpn, "anchor_sizes": tuple(int(s * scale) for s in TINY["anchor_sizes"])}
    model, seconds = _timed(lambda: kseg.create_model("maskrcnn", **config))
    print(f"config: {config}\nbuild: {seconds:.1f} s, {model.count_params():,} parameters")
    batch = synthetic_batch(batch=args.batch, size=args.size)

    for eager in (True, False):
        keras.utils.set_random_seed(0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=eager)
        _, first = _timed(lambda: model.train_on_batch(batch))
        _, step = _timed(lambda: model.train_on_batch(batch), args.steps)
        print(f"train step ({'eager' if eager else 'graph'}, batch {args.batch}): first {first:.1f} s (trace), "
              f"then {step * 1000:.0f} ms")
    images = batch["image"][:1]
    _, first = _timed(lambda: model(images))
    _, call = _timed(lambda: model(images), args.steps)
    print(f"inference (eager call, 1 image): first {first:.1f} s, then {call * 1000:.0f} ms")
    if args.no_tflite:
        return

    from ai_edge_litert.interpreter import Interpreter

    from export.convert import to_tflite
    from export.flatbuffer import load, ops

    flatbuffer, seconds = _timed(lambda: to_tflite(model.inference_model(), "float32"))
    names = sorted({op.name for op in ops(load(flatbuffer))})
    print(f"TFLite float32: conversion {seconds:.1f} s, {len(flatbuffer) / 1e6:.2f} MB, ops: {', '.join(names)}")
    runner = Interpreter(model_content=flatbuffer, num_threads=2).get_signature_runner()
    key = next(iter(runner.get_input_details()))
    got, latency = _timed(lambda: runner(**{key: images}), args.steps)
    want = {k: v.numpy() for k, v in model(images).items()}
    n = int(want["num_detections"][0])
    diffs = {k: float(np.abs(got[k][0, :n] - want[k][0, :n]).max()) if n else 0.0
             for k in ("boxes", "scores", "masks")}
    print(f"TFLite latency (2 threads): {latency * 1000:.0f} ms; detections Keras {n}, TFLite "
          f"{int(got['num_detections'][0])}; max |TFLite - Keras| over them: {diffs}")


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    main()
