"""QAT's float control: how much of the QAT int8 mIoU drop is the fine-tuning itself, not the fake quantization.

For each model of a ``benchmarks/export.py`` run folder, the trained ``best.keras`` is fine-tuned exactly as the
QAT stage fine-tunes it (``export.optimize``: the same pool of augmented training samples, Adam at ``--lr``, batch
4, ``--steps`` steps, the config's loss, batch-norm statistics frozen) but in float32, without fake quantization,
and scored on the validation split through ``kseg.evaluate.evaluate``. The drop of this float model against the
trained one is the fine-tuning's share of the QAT drop that the run's ``export_benchmark.json`` reports.

Usage:
    .venv/bin/python benchmarks/qat_control.py RUN_DIR [--models unet,deeplabv3plus] [--steps 300] [--lr 2e-5]
    e.g. .venv/bin/python benchmarks/qat_control.py runs/export-bench-s18
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export.optimize import QAT_LR  # noqa: E402 (after the path and log-level set-up)


def float_fine_tune(model, cfg, steps, lr, batch_size=4):
    """``model`` fine-tuned in place as the QAT stage does, without fake quantization."""
    import keras

    from export.optimize import fine_tune_batches, fine_tune_pool, pool_size
    from kseg.losses import build_loss

    keras.utils.set_random_seed(0)
    x, y = fine_tune_pool(cfg["data"], pool_size(steps, batch_size))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    num_classes = int(model.outputs[0].shape[-1])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=build_loss(cfg["loss"], num_classes, 255))
    model.fit(fine_tune_batches(x, y, batch_size), epochs=1, steps_per_epoch=steps, verbose=0)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a benchmarks/export.py output folder (MODEL.yaml, MODEL/best.keras)")
    p.add_argument("--models", default="unet,deeplabv3plus")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (the export run's --steps)")
    p.add_argument("--lr", type=float, default=QAT_LR, help="fine-tuning rate (the export run's QAT rate)")
    args = p.parse_args(argv)

    from kseg.config import load_config
    from kseg.evaluate import evaluate
    from kseg.saving import load_model

    bench = os.path.join(args.run, "export_benchmark.json")
    qat = {}
    if os.path.isfile(bench):
        with open(bench) as f:
            qat = {name: row["qat"]["miou"] for name, row in json.load(f).items()
                   if isinstance(row, dict) and "qat" in row}
    print("| model | Keras mIoU | after float fine-tuning (drop, points) | QAT int8 (drop, points) |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        cfg = load_config(os.path.join(args.run, f"{name}.yaml"))
        trained = os.path.join(args.run, name, "best.keras")
        out = os.path.join(args.run, f"{name}-float-control")
        before = evaluate(cfg, trained, out_dir=os.path.join(out, "report-trained"), verbose=False)["mean_iou"]
        model = float_fine_tune(load_model(trained), cfg, args.steps, args.lr)
        model.save(os.path.join(out, "fine_tuned.keras"))
        after = evaluate(cfg, os.path.join(out, "fine_tuned.keras"), out_dir=os.path.join(out, "report"),
                         verbose=False)["mean_iou"]
        q = f"{qat[name]:.4f} ({100 * (before - qat[name]):.2f})" if name in qat else "-"
        print(f"| {name} | {before:.4f} | {after:.4f} ({100 * (before - after):.2f}) | {q} |", flush=True)


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    main()
