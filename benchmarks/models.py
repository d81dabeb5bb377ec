"""The model table: every 2D model of the registry side by side, each number measured here in one run.

For each row (a registered model with its paper's default arguments, see ``ROWS``):

* **params**: trainable + non-trainable weights of the Keras model.
* **GMACs**: multiply-accumulates of one 512x512 forward pass, computed from the frozen TensorFlow graph by the
  TF profiler (``float_operation`` counts 2 flops per MAC; BN, adds and resizes add a little).
* **TFLite MB**: size of the float32 ``.tflite`` (``export.convert.to_tflite``, static batch 1).
* **CPU ms**: median latency of that ``.tflite`` in the edge interpreter (XNNPACK, ``--threads``) on a 512x512
  frame, and its ratio to U-Net's median measured in the same run (the machine is shared and noisy: compare the
  ratios, not the milliseconds, across runs).
* **membrane mIoU**: validation mIoU (images 20-23 at 512x512, the shared metrics engine) of ``best.keras`` after
  training from scratch for ``--minutes`` of wall-clock time through ``kseg train`` with the recipe of
  ``configs/unet_membrane-512x512.yaml`` (192x192 crops, batch 4, AdamW 4e-3, cosine, CE + Dice, augmentation),
  with only the model section replaced. One budget for all is the point: heavy models do fewer steps.

Results go to ``<out>/models.json`` (one entry per finished row: an interrupted run resumes where it stopped) and
``<out>/models.md`` (the table for docs/models.md).

Usage:
    .venv/bin/python benchmarks/models.py [--minutes 3] [--threads 2] [--only fcn8s,unet] [--no-train]
                                          [--out runs/model-table]

The membrane data is expected in ``../shared/data/isbi2012-membrane``; without it the training column is skipped.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIZE = 512
NUM_CLASSES = 2  # the membrane task: membrane / cell interior
BASE_CONFIG = os.path.join(REPO, "configs", "unet_membrane-512x512.yaml")
REFERENCE = "unet"

# (row label, registered name, builder arguments): the paper's default configuration of each model.
ROWS = [
    ("fcn32s", "fcn32s", {}),
    ("fcn16s", "fcn16s", {}),
    ("fcn8s", "fcn8s", {}),
    ("crfasrnn-fcn8s", "crfasrnn", {}),
    ("segnet", "segnet", {}),
    ("unet", "unet", {}),
    ("hrnetv2-w18", "hrnetv2", {"width": 18}),
    ("hrnetv2-w48", "hrnetv2", {"width": 48}),
    ("fpn-resnet50", "fpn", {"backbone": "resnet50"}),
    ("pspnet-resnet50", "pspnet", {"backbone": "resnet50"}),
    ("deeplabv1", "deeplabv1", {}),
    ("deeplabv2-resnet50", "deeplabv2", {"backbone": "resnet50"}),
    ("deeplabv3-resnet50", "deeplabv3", {"backbone": "resnet50"}),
    ("deeplabv3plus-mobilenetv2", "deeplabv3plus", {"backbone": "mobilenetv2"}),
    ("deeplabv3plus-resnet50", "deeplabv3plus", {"backbone": "resnet50"}),
    ("reseg-gru", "reseg", {"cell": "gru"}),
    ("reseg-lstm", "reseg", {"cell": "lstm"}),
    ("attention_to_scale", "attention_to_scale", {}),
    ("ran-resnet50", "ran", {"backbone": "resnet50"}),
    ("danet-resnet50", "danet", {"backbone": "resnet50"}),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per model (0 or --no-train: none)")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads for the latency column")
    p.add_argument("--runs", type=int, default=5, help="timed invokes per model (after one warm-up)")
    p.add_argument("--only", default=None, help="comma-separated row labels (default: all rows)")
    p.add_argument("--no-train", action="store_true", help="static columns only (params, MACs, size, latency)")
    p.add_argument("--out", default=os.path.join("runs", "model-table"))
    args = p.parse_args(argv)

    import kseg

    missing = [n for n in kseg.list_models(task="semantic") if n not in {r[1] for r in ROWS} and not _is_volumetric(n)]
    if missing:
        sys.exit(f"error: registered 2D models without a row in ROWS: {missing}; add them to {__file__}")
    rows = [r for r in ROWS if args.only is None or r[0] in args.only.split(",")]
    if args.only and REFERENCE not in {r[0] for r in rows}:
        rows.insert(0, next(r for r in ROWS if r[0] == REFERENCE))  # the latency ratio needs the peer
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "models.json")
    results = _read_json(results_path)
    train = not args.no_train and args.minutes > 0 and _membrane_present()

    print(f"{len(rows)} models at {SIZE}x{SIZE}, {args.threads} threads; training "
          f"{f'{args.minutes} min each on the membrane data' if train else 'skipped'}; load average "
          f"{_load()}", flush=True)
    for label, name, kwargs in rows:
        entry = results.get(label, {})
        if "latency_ms" not in entry:
            entry.update(measure(name, kwargs, args.threads, args.runs))
            entry.update({"model": name, "kwargs": kwargs})
            results[label] = entry
            _write_json(results_path, results)
        print(f"{label:28s} {entry['params'] / 1e6:7.2f} M params {entry['gmacs']:8.1f} GMACs "
              f"{entry['tflite_mb']:8.1f} MB {entry['latency_ms']:9.1f} ms", flush=True)
    for label, name, kwargs in rows:
        entry = results[label]
        if train and entry.get("minutes") != args.minutes:
            entry.update(train_and_score(label, name, kwargs, args.minutes, args.out))
            entry["minutes"] = args.minutes
            _write_json(results_path, results)
            print(f"{label:28s} membrane val mIoU {entry['miou']:.4f} after {entry['steps']} steps", flush=True)

    table = markdown_table([(label, results[label]) for label, _, _ in rows], args.threads)
    with open(os.path.join(args.out, "models.md"), "w") as f:
        f.write(table)
    print("\n" + table)
    print(f"load average at the end: {_load()} (2 cores: above ~2 the machine was shared)")
    return 0


def measure(name, kwargs, threads, runs):
    """Params, GMACs, float32 TFLite size and median CPU latency of one model at SIZE x SIZE."""
    import kseg
    from edge.interpreter import load_interpreter, run_once
    from export.convert import to_tflite
    import numpy as np

    model = kseg.create_model(name, num_classes=NUM_CLASSES, input_shape=(SIZE, SIZE, 3), **kwargs)
    gmacs = count_macs(model) / 1e9
    flatbuffer = to_tflite(model, "float32")
    interpreter = load_interpreter(model_content=flatbuffer, num_threads=threads)
    frame = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    run_once(interpreter, frame)  # warm-up: XNNPACK packs the weights on the first invoke
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once(interpreter, frame)
        times.append((time.perf_counter() - start) * 1e3)
    return {"params": int(model.count_params()), "gmacs": gmacs, "tflite_mb": len(flatbuffer) / 1e6,
            "latency_ms": statistics.median(times)}


def count_macs(model):
    """Multiply-accumulates of one forward pass with batch 1, from the frozen graph (TF profiler flops / 2)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec([1, *model.inputs[0].shape[1:]], tf.float32)
    frozen = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    verbosity = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # the v1 profiler logs a deprecation warning per call
    try:
        flops = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options).total_float_ops
    finally:
        tf.get_logger().setLevel(verbosity)
    return flops / 2


def train_and_score(label, name, kwargs, minutes, out):
    """Train with the membrane recipe for ``minutes`` and score best.keras on the validation split."""
    import keras
    import yaml

    from kseg.config import load_config
    from kseg.data import build_dataset
    from kseg.train import evaluate_model, train

    with open(BASE_CONFIG) as f:
        raw = yaml.safe_load(f)
    raw["model"] = {"name": name, **kwargs}
    raw["data"]["root"] = os.path.join(REPO, "..", "shared", "data", "isbi2012-membrane")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(raw, f)
    try:
        cfg = load_config(f.name, [f"train.time_budget_min={minutes}",
                                   f"output.dir={os.path.join(out, 'runs', label)}"])
    finally:
        os.unlink(f.name)
    result = train(cfg, verbose=0)
    best = keras.saving.load_model(os.path.join(result["run_dir"], "best.keras"), compile=False)
    cm = evaluate_model(best, build_dataset(cfg["data"], "val", 1), NUM_CLASSES)
    return {"miou": cm.mean_iou(), "pixel_accuracy": cm.pixel_accuracy(), "steps": result["steps"],
            "train_s": result["wall_time_s"]}


def markdown_table(entries, threads):
    reference = dict(entries).get(REFERENCE, {}).get("latency_ms")
    lines = ["| model | builder arguments | params (M) | GMACs @512 | TFLite f32 (MB) | "
             f"CPU ms ({threads} thr) | x U-Net | membrane mIoU | steps |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, e in entries:
        args = ", ".join(f"{k}={v}" for k, v in e["kwargs"].items()) or "defaults"
        ratio = f"{e['latency_ms'] / reference:.2f}" if reference else "-"
        miou = f"{e['miou']:.3f}" if "miou" in e else "-"
        lines.append(f"| {label} | `{e['model']}` {args} | {e['params'] / 1e6:.2f} | {e['gmacs']:.1f} | "
                     f"{e['tflite_mb']:.1f} | {e['latency_ms']:.0f} | {ratio} | {miou} | {e.get('steps', '-')} |")
    return "\n".join(lines) + "\n"


def _is_volumetric(name):
    import inspect

    from kseg.models.registry import get_builder

    default = inspect.signature(get_builder(name)).parameters["input_shape"].default
    return len(default) == 4


def _membrane_present():
    ok = os.path.isdir(os.path.join(REPO, "..", "shared", "data", "isbi2012-membrane", "train", "image"))
    if not ok:
        print("membrane data not found in ../shared/data/isbi2012-membrane: training column skipped")
    return ok


def _read_json(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_json(path, data):
    from export.convert import write_atomic

    write_atomic(path, json.dumps(data, indent=2).encode())


def _load():
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    sys.exit(main())
