"""Dense CRF on the ISBI 2012 membrane data: the same trained network scored with and without CRF refinement.

Steps (about 7 minutes on the 2-core CPU; ``--minutes`` sets the training part):

1. Train ``configs/unet_membrane-512x512.yaml`` through ``kseg.train.train`` for ``--minutes`` (a short budget:
   the point is the difference the CRF makes to one fixed network, not the network itself).
2. Choose the refiner's weights on training slices (``--tune-images``, default 0-1; never the validation split)
   from a small grid (``GRID``), by the sum of mIoU and boundary F1.
3. Score the validation split (slices 20-23, full 512x512) without refinement, with the ``crf`` refiner at its
   defaults, and at the chosen weights: mIoU and boundary F-score (``kseg.metrics``).
4. CRF-as-RNN: put a ``CrfRnn`` layer (``kseg.models.crf``) on the frozen trained U-Net, train only its weights
   and compatibility for ``--crf-steps`` steps on training crops, and score it on the validation split.
5. Write ``<out>/crf.json`` and, with ``--picture``, the overlay ``docs/img/crf_membrane.png`` (ground truth,
   without and with the CRF, on a crop of a validation slice).

``--timing`` only measures the cost per 512x512 image of the mean-field inference (5 iterations, window 7) for
2 and 21 classes at several ``downsample`` factors, in TF graph mode (the refiner's path), median of 3 runs.

Usage:
    .venv/bin/python benchmarks/crf.py [--minutes 3] [--out DIR] [--picture] [--model best.keras]
    .venv/bin/python benchmarks/crf.py --timing

Without the data set (``../shared/data/isbi2012-membrane``) the benchmark prints why and exits 0 (skipped).
"""

import argparse
import functools
import itertools
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The grid of step 2: Potts weights of the two kernels and the colour width (RGB units), messages on a 2x coarser
# grid (4x cheaper than full resolution). Small on purpose: each point refines every tuning slice.
GRID = {"spatial_weight": (0.0, 1.0), "bilateral_weight": (1.0, 3.0), "theta_beta": (8.0, 20.0), "downsample": (2,)}
PICTURE_CROP = (slice(96, 288), slice(96, 288))  # 192x192 of the first validation slice


def timing(repeats=3):
    """Median seconds per 512x512 image of the refiner (TF graph mode) for each setting; printed and returned."""
    from kseg.postprocess import get_refiner

    refine = get_refiner("crf")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    rows = []
    for classes, downsample in ((2, 1), (2, 2), (2, 4), (21, 4), (21, 2)):
        p = rng.uniform(0.1, 1.0, (512, 512, classes)).astype(np.float32)
        p /= p.sum(-1, keepdims=True)
        refine(image, p, downsample=downsample)  # untimed: imports TensorFlow, traces once per size and setting
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            refine(image, p, downsample=downsample)
            times.append(time.perf_counter() - start)
        rows.append({"classes": classes, "downsample": downsample, "seconds": float(np.median(times))})
        print(f"512x512, {classes:2d} classes, 5 iterations, window 7, downsample {downsample}: "
              f"{rows[-1]['seconds']:.3f} s (median of {repeats}; load average {os.getloadavg()[0]:.2f})",
              flush=True)
    return rows


def _scores(pairs, num_classes, ignore):
    from kseg.metrics import BoundaryF1, ConfusionMatrix

    cm, bf = ConfusionMatrix(num_classes, ignore), BoundaryF1(num_classes, ignore_index=ignore)
    for label, pred in pairs:
        cm.update(label, pred)
        bf.update(label, pred)
    return {"miou": float(cm.mean_iou()), "boundary_f1": float(bf.mean_f1()),
            "per_class_iou": [float(v) for v in cm.per_class_iou()]}


def _probabilities(model, samples):
    from kseg.evaluate import probabilities

    return [probabilities(model(image[None].astype(np.float32), training=False).numpy()[0]) for image, _ in samples]


def _refined_scores(refine, samples, probs, num_classes, ignore):
    pairs = [(label, np.argmax(refine(image, p), -1)) for (image, label), p in zip(samples, probs)]
    return _scores(pairs, num_classes, ignore), [pred for _, pred in pairs]


def tune(samples, probs, num_classes, ignore):
    """Grid search of the refiner's weights on ``samples``: the setting with the best mean of mIoU and BF."""
    from kseg.postprocess import get_refiner

    best = None
    for values in itertools.product(*GRID.values()):
        options = dict(zip(GRID, values))
        score, _ = _refined_scores(functools.partial(get_refiner("crf"), **options), samples, probs, num_classes,
                                   ignore)
        print(f"  tune {options}: mIoU {score['miou']:.4f}, BF {score['boundary_f1']:.4f}", flush=True)
        if best is None or score["miou"] + score["boundary_f1"] > best[1]["miou"] + best[1]["boundary_f1"]:
            best = (options, score)
    return best


def train_crf_layer(model, cfg, steps, seed=0):
    """CRF-as-RNN on a frozen network: a ``CrfRnn`` layer on its logits and image, only the CRF's weights and
    compatibility trained (Adam 1e-2, cross-entropy, batches of 4 augmented training crops, the network copied to
    the crop size). Returns the full-size model with the trained layer, and the layer."""
    import keras

    import kseg
    from kseg.data import build_dataset
    from kseg.models.crf import CrfRnn

    kwargs = {k: v for k, v in cfg["model"].items() if k not in ("name", "aux_weight", "input_shape")}
    num_classes = int(model.outputs[0].shape[-1])
    crop = kseg.create_model(cfg["model"]["name"], num_classes=num_classes,
                             input_shape=(*cfg["data"]["crop_size"], 3), **kwargs)
    crop.set_weights(model.get_weights())
    crop.trainable = model.trainable = False
    crf = CrfRnn(num_classes, dtype="float32", name="membrane_crf")
    train_model = keras.Model(crop.input, crf([crop.output, crop.input]))
    train_model.compile(keras.optimizers.Adam(1e-2),
                        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
                        jit_compile=False)  # XLA-compiling the unrolled CRF took minutes on this CPU
    train_ds = build_dataset(cfg["data"], "train", batch_size=4, augment=True, shuffle=True, repeat=True, seed=seed)
    train_model.fit(train_ds, steps_per_epoch=steps, epochs=1, verbose=2)
    return keras.Model(model.input, crf([model.output, model.input])), crf


def picture(sample, preds, names, path):
    """Ground truth, without CRF and with CRF as overlays on one crop, side by side, with titles."""
    import cv2

    from kseg import viz

    image, label = sample
    crop = PICTURE_CROP
    colours = viz.palette(len(names))
    panels = []
    for title, mask in [("ground truth", label), *preds]:
        view = viz.overlay(image[crop], np.where(mask[crop] == 255, 0, mask[crop]).astype(np.uint8), 0.4, colours,
                           order="rgb")
        view = cv2.copyMakeBorder(view, 22, 4, 4, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        cv2.putText(view, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        panels.append(view)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor(np.concatenate(panels, axis=1), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"picture written to {path} ({os.path.getsize(path) // 1024} KB)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="U-Net training budget (train.time_budget_min)")
    p.add_argument("--out", default=None, help="run folder (default runs/crf-bench-<time>)")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "unet_membrane-512x512.yaml"))
    p.add_argument("--tune-images", default="0-1", help="training slices for choosing the CRF weights")
    p.add_argument("--crf-steps", type=int, default=20, help="training steps of the CRF-as-RNN layer (0: skip)")
    p.add_argument("--picture", action="store_true", help="write docs/img/crf_membrane.png")
    p.add_argument("--model", help="score this trained .keras model (full-size input) instead of training one")
    p.add_argument("--timing", action="store_true", help="only time the mean-field inference at 512x512")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = p.parse_args(argv)
    if args.timing:
        timing()
        return 0

    from kseg.config import load_config
    from kseg.errors import KsegError

    out = args.out or os.path.join("runs", time.strftime("crf-bench-%Y%m%d-%H%M%S"))
    overrides = [f"train.time_budget_min={args.minutes}", f"output.dir={out}", *args.overrides]
    try:
        cfg = load_config(args.config, overrides)
    except KsegError as e:
        if "data.root" in str(e) and "not found" in str(e):
            print(f"SKIPPED: ISBI 2012 membrane data not found ({e})")
            return 0
        sys.exit(f"error: {e}")

    from kseg.data import dataset_info
    from kseg.evaluate import uint8_samples
    from kseg.postprocess import get_refiner
    from kseg.saving import load_model
    from kseg.train import train

    start = time.time()
    if args.model:
        result = {"run_dir": os.path.dirname(os.path.abspath(args.model)), "steps": None}
    else:
        print(f"load average at start: {os.getloadavg()[0]:.2f}; training {args.minutes} min", flush=True)
        result = train(cfg, verbose=2)
    model = load_model(args.model or os.path.join(result["run_dir"], "best.keras"))
    num_classes, ignore = int(cfg["data"]["num_classes"]), int(cfg["data"]["ignore_index"])
    names = list(dataset_info(cfg["data"])["class_names"])

    val = list(uint8_samples(cfg["data"], "val"))
    tune_cfg = load_config(args.config, overrides + [f"data.splits.val={args.tune_images}"])
    tune_samples = list(uint8_samples(tune_cfg["data"], "val"))
    val_probs, tune_probs = _probabilities(model, val), _probabilities(model, tune_samples)

    t0 = time.time()
    base_preds = [np.argmax(p, -1) for p in val_probs]
    summary = {"config": os.path.relpath(args.config, REPO), "minutes": args.minutes, "steps": result["steps"],
               "run_dir": result["run_dir"], "val_images": len(val), "tune_images": args.tune_images,
               "without_crf": _scores(zip((lab for _, lab in val), base_preds), num_classes, ignore)}
    summary["crf_default"], default_preds = _refined_scores(get_refiner("crf"), val, val_probs, num_classes, ignore)
    summary["crf_seconds_per_image"] = (time.time() - t0) / len(val)
    summary["tune_without_crf"] = _scores(zip((lab for _, lab in tune_samples), (np.argmax(p, -1) for p in tune_probs)),
                                          num_classes, ignore)
    print(f"choosing the CRF weights on training slices {args.tune_images} (without CRF: mIoU "
          f"{summary['tune_without_crf']['miou']:.4f}, BF {summary['tune_without_crf']['boundary_f1']:.4f})",
          flush=True)
    options, tune_score = tune(tune_samples, tune_probs, num_classes, ignore)
    summary["tuned_options"], summary["tuned_on_train"] = options, tune_score
    summary["crf_tuned"], tuned_preds = _refined_scores(functools.partial(get_refiner("crf"), **options), val,
                                                        val_probs, num_classes, ignore)
    if args.crf_steps:
        crf_model, crf = train_crf_layer(model, cfg, args.crf_steps)
        crf_preds = [np.argmax(crf_model(image[None].astype(np.float32), training=False).numpy()[0], -1)
                     for image, _ in val]
        summary["crfasrnn_layer"] = _scores(zip((lab for _, lab in val), crf_preds), num_classes, ignore)
        summary["crfasrnn_layer"]["learned"] = {w.name: np.asarray(w).round(3).tolist() for w in crf.weights}
        summary["crfasrnn_layer"]["steps"] = args.crf_steps
    summary["wall_time_s"] = time.time() - start

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "crf.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n=== dense CRF on ISBI 2012 membrane (validation slices 20-23, 512x512) ===")
    print(f"network: {args.model or f'U-Net trained {args.minutes} min'} ({result['steps']} steps); run "
          f"{result['run_dir']}")
    rows = [("without CRF", summary["without_crf"]), ("crf, defaults", summary["crf_default"]),
            (f"crf, tuned on train {options}", summary["crf_tuned"])]
    if "crfasrnn_layer" in summary:
        rows.append((f"CRF-as-RNN layer, {args.crf_steps} steps", summary["crfasrnn_layer"]))
    for title, s in rows:
        print(f"{title:70s} mIoU {s['miou']:.4f}  boundary F1 {s['boundary_f1']:.4f}")
    print(f"CRF cost {summary['crf_seconds_per_image']:.2f} s per image (defaults); whole benchmark "
          f"{summary['wall_time_s']:.0f} s")
    if args.picture:
        picture(val[0], [("without CRF", base_preds[0]), ("with CRF (tuned)", tuned_preds[0])], names,
                os.path.join(REPO, "docs", "img", "crf_membrane.png"))
    return 0


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    sys.exit(main())
