"""Active contours on ISBI 2012 membrane: boundary F-score with and without the ACM loss and the ACM refiner.

1. A base U-Net: ``--init`` (a ``best.keras`` of ``configs/unet_membrane-512x512.yaml``, e.g. from
   ``benchmarks/membrane.py``), or trained here for ``--base-minutes`` through ``kseg train``.
2. Two fine-tunings of that same network for ``--steps`` steps each, same seed, same data, same schedule (AdamW
   ``--lr``, cosine, no warm-up): ``configs/unet_membrane-512x512.yaml`` (CE + Dice) and
   ``configs/unet_membraneacm-512x512.yaml`` (CE + Dice + ACM loss). The last model of each is scored (no
   checkpoint selection on the validation images, which are the scored ones).
3. Every network is scored on the validation slices at 512x512 as it is and through the ``acm`` refiner
   (morphological Chan-Vese with ``--iterations`` steps, and with 3x as many; morphological geodesic active
   contours): mIoU, boundary F1 (``kseg.metrics.BoundaryF1``, tolerance 0.75 % of the diagonal = 6 px here) and the
   refiner's cost per image.
4. ``--picture``: a crop of the first validation slice with ground truth, the base network, and the base network
   refined (default Chan-Vese), side by side.

Results: a markdown table on stdout and ``<out>/contour.json``.

Usage:
    .venv/bin/python benchmarks/contour.py [--init runs/membrane/best.keras | --base-minutes 10] [--steps 40]
        [--lr 1e-3] [--iterations 5] [--out runs/contour-bench] [--picture docs/img/active_contours_membrane.png]

The data set is expected in ``../shared/data/isbi2012-membrane``; without it the benchmark prints why and exits 0.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PLAIN = os.path.join(REPO, "configs", "unet_membrane-512x512.yaml")
WITH_ACM = os.path.join(REPO, "configs", "unet_membraneacm-512x512.yaml")
CROP = (slice(96, 288), slice(96, 288))  # 192 x 192 of the first validation slice


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", help="base network (.keras of the membrane U-Net); default: train one here")
    p.add_argument("--base-minutes", type=float, default=10.0, help="training budget of the base without --init")
    p.add_argument("--steps", type=int, default=40, help="fine-tuning steps with each loss")
    p.add_argument("--lr", type=float, default=1e-3, help="peak fine-tuning learning rate (cosine, no warm-up)")
    p.add_argument("--iterations", type=int, default=5, help="active-contour steps of the refiner")
    p.add_argument("--out", default=os.path.join("runs", "contour-bench"))
    p.add_argument("--picture", help="write the overlay picture (PNG) here")
    args = p.parse_args(argv)

    import keras

    from kseg.config import load_config
    from kseg.errors import KsegError
    from kseg.saving import load_model
    from kseg.train import train

    try:
        plain_cfg = load_config(PLAIN, [f"output.dir={os.path.join(args.out, 'base')}",
                                        f"train.time_budget_min={args.base_minutes}"])
    except KsegError as e:
        if "not found" in str(e):
            print(f"SKIPPED: ISBI 2012 membrane data not found ({e})")
            return 0
        raise
    load_start = os.getloadavg()
    base = args.init
    if base is None:
        base = os.path.join(train(plain_cfg, verbose=2)["run_dir"], "best.keras")
    base_model = load_model(base)

    class WarmStart(keras.callbacks.Callback):
        """Starts from the base network's weights (by layer name: the fine-tuned model trains on crops)."""

        def on_train_begin(self, logs=None):
            for layer in self.model.layers:
                if layer.weights:
                    layer.set_weights(base_model.get_layer(layer.name).get_weights())

    models = {"base": base}
    for name, config in (("fine-tuned CE + Dice", PLAIN), ("fine-tuned CE + Dice + ACM loss", WITH_ACM)):
        folder = os.path.join(args.out, "ft-acm" if config == WITH_ACM else "ft-plain")
        cfg = load_config(config, [f"output.dir={folder}", "train.time_budget_min=null", "train.epochs=1",
                                   f"train.steps_per_epoch={args.steps}", f"train.optimizer.lr={args.lr}",
                                   "train.schedule.warmup_epochs=0"])
        train(cfg, verbose=2, callbacks=[WarmStart()])
        models[name] = os.path.join(folder, "last.keras")

    refiners = {"none": None,
                f"acm chan_vese x{args.iterations}": {"method": "chan_vese", "iterations": args.iterations},
                f"acm chan_vese x{3 * args.iterations}": {"method": "chan_vese", "iterations": 3 * args.iterations},
                f"acm geodesic x{args.iterations}": {"method": "geodesic", "iterations": args.iterations}}
    rows, picture = [], {}
    samples = _samples(plain_cfg["data"])
    for model_name, path in models.items():
        model = load_model(path)
        probs = [_probabilities(model, image) for image, _ in samples]
        for refiner_name, options in refiners.items():
            row = _score(samples, probs, options, plain_cfg["data"])
            row.update(model=model_name, refiner=refiner_name)
            rows.append(row)
            print(f"{model_name:34s} {refiner_name:22s} mIoU {row['miou']:.4f}  BF1 {row['boundary_f1']:.4f}  "
                  f"{row['refine_s_per_image']:.3f} s/image", flush=True)
            if model_name == "base" and refiner_name in ("none", f"acm chan_vese x{args.iterations}"):
                picture[refiner_name] = row.pop("first_prediction")
            row.pop("first_prediction", None)

    summary = {"base": base, "steps": args.steps, "lr": args.lr, "iterations": args.iterations,
               "load_start": load_start, "load_end": os.getloadavg(), "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "contour.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    print("\n| network | refiner | val mIoU | boundary F1 (mean) | BF1 membrane / cell | refiner s / image |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['refiner']} | {r['miou']:.4f} | {r['boundary_f1']:.4f} | "
              f"{r['per_class_boundary_f1'][0]:.4f} / {r['per_class_boundary_f1'][1]:.4f} | "
              f"{r['refine_s_per_image']:.3f} |")
    print(f"load average start {'/'.join(f'{x:.2f}' for x in load_start)}, end "
          f"{'/'.join(f'{x:.2f}' for x in summary['load_end'])} (2 cores)")
    if args.picture:
        image, label = samples[0]
        _write_picture(args.picture, image, label, picture["none"], picture[f"acm chan_vese x{args.iterations}"])
        print(f"picture: {args.picture}")
    return 0


def _samples(data_cfg):
    from kseg.evaluate import uint8_samples

    return list(uint8_samples(data_cfg, "val"))


def _probabilities(model, image):
    from kseg.evaluate import probabilities

    return probabilities(model(image[None].astype("float32"), training=False).numpy()[0])


def _score(samples, probs, options, data_cfg):
    """mIoU, boundary F1 and refiner seconds per image of one network's probabilities, refined with ``options``."""
    import numpy as np

    from kseg.metrics import BoundaryF1, ConfusionMatrix
    from kseg.postprocess import get_refiner

    num_classes, ignore = data_cfg["num_classes"], data_cfg["ignore_index"]
    cm, bf = ConfusionMatrix(num_classes, ignore), BoundaryF1(num_classes, ignore_index=ignore)
    seconds, first = 0.0, None
    for (image, label), p in zip(samples, probs):
        if options is not None:
            start = time.perf_counter()
            p = get_refiner("acm")(image, p, **options)
            seconds += time.perf_counter() - start
        pred = np.argmax(p, -1)
        first = pred if first is None else first
        cm.update(label, pred)
        bf.update(label, pred)
    return {"miou": cm.mean_iou(), "boundary_f1": bf.mean_f1(), "per_class_boundary_f1": bf.per_class_f1().tolist(),
            "refine_s_per_image": seconds / len(samples), "first_prediction": first}


def _write_picture(path, image, label, before, after):
    """Image | ground truth | network | network + ACM refiner, overlays of a crop, with captions."""
    import cv2
    import numpy as np

    from kseg import viz

    # Membrane magenta, cell interior left nearly as it is: the thin class is what the contours move.
    colours = np.array([(230, 30, 200), (200, 230, 255)], np.uint8)
    crop = image[CROP]
    panels = [crop] + [viz.overlay(crop, m[CROP], alpha=0.45, palette=colours, order="rgb")
                       for m in (label, before, after)]
    captions = ["image", "ground truth", "network", "network + acm"]
    tiles = []
    for panel, caption in zip(panels, captions):
        tile = cv2.copyMakeBorder(panel, 22, 0, 0, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        cv2.putText(tile, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    sys.exit(main())
