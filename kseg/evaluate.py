"""``kseg evaluate``: per-class table on a split and a report folder with pictures.

The report holds ``metrics.json``, ``table.txt``, ``confusion_matrix.png``, ``per_class_iou.png`` and
``samples.png`` (image, ground truth and prediction overlays). A ``.tflite`` model is scored through the edge
runtime, so the numbers are those the device will see. ``--tta flip`` / ``--tta d4`` average the probabilities over
mirrored (and, for ``d4``, rotated) copies of each image, the test-time augmentation of the U-Net paper's
successors (e.g. the ISBI 2012 entries); ``metrics.json`` records it.

An instance model (Mask R-CNN, ``kseg.model_task(name) == "instance"``) is scored by COCO mask AP, AP50, AP75 and
box AP (``kseg.instance.evaluate``); its report holds ``metrics.json`` and ``samples.png`` (ground truth and
detections drawn by ``kseg.viz.draw_instances``).
"""

import json
import os

import cv2
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


# test-time augmentation -> number of views: the first 2 of the square's 8 symmetries are identity and mirror
TTA = {"none": 1, "flip": 2, "d4": 8}


def _view(image, k):
    """The k-th symmetry of the square applied to ``image`` (H, W, ...): mirrored if k is odd, then k // 2 quarter
    turns."""
    return np.rot90(image[:, ::-1] if k % 2 else image, k // 2)


def _unview(image, k):
    """The inverse of ``_view(., k)``."""
    image = np.rot90(image, -(k // 2))
    return image[:, ::-1] if k % 2 else image


def keras_predictor(model, refine=None, tta="none"):
    """A function ``uint8 RGB image (H, W, 3) -> class ids (H, W)`` for a loaded Keras model; with ``refine``
    (a refiner name, see ``refiner``) the model's probabilities are refined with the image before the argmax;
    with ``tta`` (``TTA``) the probabilities are averaged over that many mirrored / rotated views, one batch.

    Raises:
        ConfigError: an unknown ``tta``, or ``d4`` on a model whose fixed input is not square.
    """
    refine_fn = refiner(refine)
    if tta not in TTA:
        raise ConfigError(f"--tta must be one of {', '.join(TTA)}, got {tta!r}")
    views = TTA[tta]
    in_h, in_w = model.inputs[0].shape[1:3]
    if views > 2 and in_h is not None and in_h != in_w:
        raise ConfigError(f"--tta {tta} rotates the image a quarter turn, which a model with a fixed {in_h}x{in_w} "
                          "input cannot take; use --tta flip")

    def predict(image):
        batch = [_view(image, k).astype(np.float32) for k in range(views)]
        if image.shape[0] == image.shape[1]:
            logits = model(np.stack(batch), training=False).numpy()
        else:  # quarter turns change the shape: mirrors and turned views go through one at a time
            logits = [model(x[None], training=False).numpy()[0] for x in batch]
        if views == 1 and refine_fn is None:
            return np.argmax(logits[0], axis=-1)
        probs = np.mean([_unview(probabilities(x), k) for k, x in enumerate(logits)], axis=0)
        return np.argmax(probs if refine_fn is None else refine_fn(image, probs), axis=-1)

    return predict


def probability_option(refine=None, tta="none"):
    """The option, as typed (``--refine crf``, ``--tta d4``), that works on a Keras model's class probabilities,
    or None: for the errors on models that have none (``.tflite`` files, instance models)."""
    if refine is not None:
        return f"--refine {refine}"
    return f"--tta {tta}" if tta != "none" else None


def predictor(model_path, refine=None, tta="none"):
    """A function ``uint8 RGB image (H, W, 3) -> class ids (H, W)`` for a ``.keras`` or ``.tflite`` model,
    optionally refined and test-time augmented (``keras_predictor``; ``.keras`` models only)."""
    if os.fspath(model_path).endswith(".tflite"):
        option = probability_option(refine, tta)
        if option:
            raise ConfigError(f"{option}: takes the probabilities of a .keras model; "
                              f"{model_path} is a .tflite model (use its .keras source instead)")
        from edge.runtime import Segmenter

        seg = Segmenter(model_path)
        return lambda image: seg.segment(image, rgb=True).mask
    from kseg.saving import load_model

    return keras_predictor(load_model(model_path), refine, tta)


def uint8_samples(data_cfg, split, progress=None):
    """``(image uint8 RGB (H, W, 3), label (H, W))`` pairs of a split, un-augmented: the pixels a camera would
    give, so Keras and TFLite models are scored on the same input. ``progress``: the label of a progress bar on
    stderr (``kseg.progress``; splits of 20 images or more whose size the pipeline knows)."""
    from kseg.data import build_dataset
    from kseg.progress import Progress

    dataset = build_dataset(data_cfg, split, batch_size=1, augment=False, shuffle=False)
    total = int(dataset.cardinality())
    bar = Progress(total, progress) if progress and total > 0 else None
    for done, (images, labels) in enumerate(dataset, 1):
        yield np.clip(np.round(images.numpy()[0]), 0, 255).astype(np.uint8), labels.numpy()[0]
        if bar:
            bar.update(done)


def is_instance_model(model):
    """Whether a loaded Keras model is an instance model (Mask R-CNN: it has an ``inference_model()`` method giving
    the deployable network with the detection outputs)."""
    return callable(getattr(model, "inference_model", None))


def _numpy(tensors):
    return {k: np.asarray(v) for k, v in tensors.items()}


def instance_scores(model, dataset, num_classes):
    """COCO ``mask_ap``, ``mask_ap50`` and ``box_ap`` of a Keras instance model on a dataset of Mask R-CNN training
    batches (``kseg.instance.data.build_instance_dataset``)."""
    from kseg.instance.evaluate import MaskAP

    metric = MaskAP(num_classes)
    for batch in dataset:
        metric.update(_numpy(batch), _numpy(model.predict_on_batch(batch["image"])))
    result = metric.result()
    return {k: result[k] for k in ("mask_ap", "mask_ap50", "box_ap")}


def instance_detector(model_path):
    """A function ``uint8 RGB image (H, W, 3) at the model's input size -> detection contract of a batch of one``
    (numpy dict) for a ``.keras`` instance model or its ``.tflite`` export (run by the edge runtime)."""
    if os.fspath(model_path).endswith(".tflite"):
        from edge.runtime import InstanceSegmenter

        seg = InstanceSegmenter(model_path)
        return lambda image: {k: v[None] for k, v in seg.invoke(seg.preprocess(image, rgb=True)[0]).items()}
    from kseg.saving import load_model

    model = load_model(model_path)
    if not is_instance_model(model):
        raise ConfigError(f"{model_path} is a semantic segmentation model, but the config's model is an instance "
                          "model; pass the model this config trained")
    net = model.inference_model()  # batch 1, the graph `kseg export` converts
    return lambda image: _numpy(net.predict_on_batch(image[None].astype(np.float32)))


def _run_model(run_dir):
    """The ``best.keras`` of the config's run folder, the model to score when none is given."""
    path = os.path.join(run_dir, "best.keras")
    if not os.path.isfile(path):
        raise ConfigError(f"no --model given and the config's run folder {run_dir} holds no best.keras: train it "
                          "first (kseg train CONFIG), set output.dir=RUN_FOLDER, or pass --model")
    return path


def evaluate_instances(cfg, model_path=None, split="val", out_dir=None, num_samples=8, verbose=True,
                       score_threshold=0.5):
    """Score an instance model on ``split`` (COCO mask AP over every detection) and write the report: ``metrics.json``
    and ``samples.png`` (per sample: ground truth, then the detections scoring at least ``score_threshold``).

    Returns:
        The metrics dict written to ``metrics.json`` (``mask_ap``, ``mask_ap50``, ``mask_ap75``, ``box_ap``, ...).
    """
    from kseg.instance.data import build_instance_dataset, instance_class_names
    from kseg.instance.evaluate import MaskAP
    from kseg.instance.masks import detections_to_instances

    data_cfg = cfg["data"]
    run_dir = cfg["output"]["dir"]
    model_path = model_path or _run_model(run_dir)
    out_dir = out_dir or os.path.join(run_dir, f"report-{split}")
    names = instance_class_names(data_cfg)
    detect = instance_detector(model_path)
    metric = MaskAP(int(data_cfg["num_classes"]))
    tiles, count = [], 0
    for batch in build_instance_dataset(data_cfg, split, batch_size=1, shuffle=False):
        batch = _numpy(batch)
        image = np.clip(np.round(batch["image"][0]), 0, 255).astype(np.uint8)
        det = detect(image)
        metric.update(batch, det)
        count += 1
        if len(tiles) < num_samples:
            keep = batch["classes"][0] > 0
            truth = {"boxes": batch["boxes"][0][keep], "classes": batch["classes"][0][keep],
                     "masks": batch["masks"][0][keep].astype(bool)}
            found = detections_to_instances(det, 0, image_size=image.shape[:2], score_threshold=score_threshold)
            tiles.append(np.concatenate([viz.draw_instances(image, truth, names),
                                         viz.draw_instances(image, found, names)], axis=1))
    metrics = {"model": os.fspath(model_path), "split": split, "num_images": count, **metric.result()}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=_jsonable)
    if tiles:
        grid = np.concatenate(tiles, axis=0)
        cv2.imwrite(os.path.join(out_dir, "samples.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if verbose:
        print(f"{split}: {count} images  mask AP {metrics['mask_ap']:.4f}  AP50 {metrics['mask_ap50']:.4f}  "
              f"AP75 {metrics['mask_ap75']:.4f}  box AP {metrics['box_ap']:.4f}  box AP50 {metrics['box_ap50']:.4f}")
        print(f"report written to {out_dir} (samples.png: ground truth | detections >= {score_threshold})")
    return metrics


def evaluate(cfg, model_path=None, split="val", out_dir=None, num_samples=8, verbose=True, refine=None,
             tta="none"):
    """Score a model on ``split`` of the config's data and write the report.

    Args:
        cfg: a loaded config (``kseg.config.load_config``).
        model_path: ``.keras`` or ``.tflite``; default the run's ``best.keras``.
        out_dir: report folder; default ``<run dir>/report-<split>``.
        refine: a refiner name from ``kseg.postprocess`` (e.g. ``"crf"``) applied to the probabilities of a
            ``.keras`` model before the argmax; recorded in ``metrics.json``.
        tta: test-time augmentation of a ``.keras`` model (``none``, ``flip``, ``d4``; ``keras_predictor``),
            recorded in ``metrics.json``.

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    from kseg.data import dataset_info
    from kseg.models.registry import model_task

    if model_task(cfg["model"]["name"]) == "instance":
        option = probability_option(refine, tta)
        if option:
            raise ConfigError(f"{option}: works on per-pixel class probabilities; "
                              f"{cfg['model']['name']} is an instance model")
        return evaluate_instances(cfg, model_path, split, out_dir, num_samples, verbose)

    data_cfg = cfg["data"]
    run_dir = cfg["output"]["dir"]
    model_path = model_path or _run_model(run_dir)
    out_dir = out_dir or os.path.join(run_dir, f"report-{split}")
    num_classes, ignore = int(data_cfg["num_classes"]), int(data_cfg["ignore_index"])
    info = dataset_info(data_cfg)
    names, colours = info["class_names"], info["palette"]
    predict = predictor(model_path, refine, tta)

    cm, bf = ConfusionMatrix(num_classes, ignore), BoundaryF1(num_classes, ignore_index=ignore)
    samples, count = [], 0
    for image, label in uint8_samples(data_cfg, split, f"evaluating {split}" if verbose else None):
        pred = predict(image)
        cm.update(label, pred)
        bf.update(label, pred)
        count += 1
        if len(samples) < num_samples:
            samples.append((image, label, pred))

    metrics = {"model": os.fspath(model_path), "split": split, "refine": refine, "tta": tta, "num_images": count,
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
