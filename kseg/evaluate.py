"""``kseg evaluate``: per-class table on a split and a report folder with pictures.

The report holds ``metrics.json``, ``table.txt``, ``confusion_matrix.png``, ``per_class_iou.png`` and
``samples.png`` (image, ground truth and prediction overlays). A ``.tflite`` model is scored through the edge
runtime, so the numbers are those the device will see.
"""

import json
import os

import numpy as np

from kseg import viz
from kseg.errors import ConfigError
from kseg.metrics import BoundaryF1, ConfusionMatrix


def refiner(name):
    """The refiner registered as ``name`` in ``kseg.postprocess`` (``"crf"``, ...), or ``None`` for ``None``.

    Raises:
        ConfigError: no refiner has that name (the message lists the registered ones).
    """
    if name is None:
        return None
    from kseg.postprocess import get_refiner

    try:
        return get_refiner(name)
    except ValueError as e:
        raise ConfigError(f"--refine: {e}") from None


def probabilities(logits):
    """Per-pixel class probabilities ``(H, W, C)`` of logits ``(H, W, C)``: the softmax, or ``[1 - p, p]`` with
    ``p = sigmoid`` for a one-channel binary model (the refiners' input contract, ``kseg.postprocess``)."""
    logits = np.asarray(logits, np.float32)
    if logits.shape[-1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits))
        return np.concatenate([1.0 - p, p], axis=-1)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def keras_predictor(model, refine=None):
    """A function ``uint8 RGB image (H, W, 3) -> class ids (H, W)`` for a loaded Keras model; with ``refine``
    (a refiner name, see ``refiner``) the model's probabilities are refined with the image before the argmax."""
    refine_fn = refiner(refine)

    def predict(image):
        logits = model(image[None].astype(np.float32), training=False).numpy()[0]
        if refine_fn is None:
            return np.argmax(logits, axis=-1)
        return np.argmax(refine_fn(image, probabilities(logits)), axis=-1)

    return predict


def predictor(model_path, refine=None):
    """A function ``uint8 RGB image (H, W, 3) -> class ids (H, W)`` for a ``.keras`` or ``.tflite`` model,
    optionally refined (``keras_predictor``; ``.keras`` models only)."""
    if os.fspath(model_path).endswith(".tflite"):
        if refine is not None:
            raise ConfigError(f"--refine {refine}: refiners take the probabilities of a .keras model; "
                              f"{model_path} is a .tflite model (evaluate its .keras source instead)")
        from edge.runtime import Segmenter

        seg = Segmenter(model_path)
        return lambda image: seg.segment(image, rgb=True).mask
    from kseg.saving import load_model

    return keras_predictor(load_model(model_path), refine)


def uint8_samples(data_cfg, split):
    """``(image uint8 RGB (H, W, 3), label (H, W))`` pairs of a split, un-augmented: the pixels a camera would
    give, so Keras and TFLite models are scored on the same input."""
    from kseg.data import build_dataset

    for images, labels in build_dataset(data_cfg, split, batch_size=1, augment=False, shuffle=False):
        yield np.clip(np.round(images.numpy()[0]), 0, 255).astype(np.uint8), labels.numpy()[0]


def evaluate(cfg, model_path=None, split="val", out_dir=None, num_samples=8, verbose=True, refine=None):
    """Score a model on ``split`` of the config's data and write the report.

    Args:
        cfg: a loaded config (``kseg.config.load_config``).
        model_path: ``.keras`` or ``.tflite``; default the run's ``best.keras``.
        out_dir: report folder; default ``<run dir>/report-<split>``.
        refine: a refiner name from ``kseg.postprocess`` (e.g. ``"crf"``) applied to the probabilities of a
            ``.keras`` model before the argmax; recorded in ``metrics.json``.

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    from kseg.data import dataset_info

    data_cfg = cfg["data"]
    run_dir = cfg["output"]["dir"]
    model_path = model_path or os.path.join(run_dir, "best.keras")
    out_dir = out_dir or os.path.join(run_dir, f"report-{split}")
    num_classes, ignore = int(data_cfg["num_classes"]), int(data_cfg["ignore_index"])
    info = dataset_info(data_cfg)
    names, colours = info["class_names"], info["palette"]
    predict = predictor(model_path, refine)

    cm, bf = ConfusionMatrix(num_classes, ignore), BoundaryF1(num_classes, ignore_index=ignore)
    samples, count = [], 0
    for image, label in uint8_samples(data_cfg, split):
        pred = predict(image)
        cm.update(label, pred)
        bf.update(label, pred)
        count += 1
        if len(samples) < num_samples:
            samples.append((image, label, pred))

    metrics = {"model": os.fspath(model_path), "split": split, "refine": refine, "num_images": count,
               **cm.summary(), "boundary_f1": bf.summary()}
    os.makedirs(out_dir, exist_ok=True)
    table = cm.table(names)
    with open(os.path.join(out_dir, "table.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=_jsonable)
    viz.confusion_matrix_figure(cm.matrix, names, os.path.join(out_dir, "confusion_matrix.png"))
    viz.per_class_iou_chart(cm.per_class_iou(), names, os.path.join(out_dir, "per_class_iou.png"))
    if samples:
        images, labels, preds = zip(*samples)
        viz.image_grid(list(images), list(labels), names, predictions=list(preds), palette=colours,
                       path=os.path.join(out_dir, "samples.png"))
    if verbose:
        print(table)
        print(f"boundary F1 {bf.mean_f1():.4f}")
        print(f"report written to {out_dir}")
    return metrics


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))
