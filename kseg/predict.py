"""``kseg predict``: class-id masks and overlays for an image or a folder of images; for an instance model (Mask
R-CNN) instance label maps and pictures of the detections (coloured masks, contours, class and score)."""

import os

import cv2
import numpy as np

from kseg import viz
from kseg.data.io import IMAGE_EXTS, read_image, resize_image
from kseg.errors import ConfigError, DataError
from kseg.instance.masks import instances_to_label_map
from kseg.progress import Progress


def _inputs(path):
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS))
        if not files:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
        return files
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such image or folder")
    return [path]


def predict(model_path, input_path, out_dir, alpha=0.5, verbose=True, refine=None, score_threshold=0.5,
            class_names=None, tta="none"):
    """Segment every image and write ``<name>_mask.png`` (class ids) and ``<name>_overlay.png``.

    ``model_path``: a ``.keras`` model, or a semantic ``.tflite`` export (run by the edge runtime, as on the device).
    Images of any size are resized to the model's input and the mask is resized back (nearest). An unreadable
    image is reported and skipped; the others are still written. ``refine``: a refiner name from
    ``kseg.postprocess`` (e.g. ``"crf"``) applied to the model's probabilities and the resized image; ``tta``:
    test-time augmentation (``none``, ``flip``, ``d4``; ``kseg.evaluate.keras_predictor``).

    An instance model writes ``<name>_instances.png`` (16-bit instance label map: 0 background, detection i as i + 1,
    the best score on top) and ``<name>_overlay.png`` (``kseg.viz.draw_instances``) of the detections scoring at
    least ``score_threshold``; ``class_names`` label them (default: those of the ``run.yaml`` beside the model,
    else class ids).

    Returns:
        The list of mask paths written.
    """
    from kseg.evaluate import is_instance_model, keras_predictor, probability_option, refiner
    from kseg.saving import load_model

    refiner(refine)  # an unknown name fails before the model loads
    if os.fspath(model_path).endswith(".tflite"):
        segment, colours = _tflite_predictor(model_path, input_path, out_dir, refine, tta)
        instance, in_h, in_w = False, None, None  # the runtime resizes to its input and the mask back
    else:
        model = load_model(model_path)
        instance = is_instance_model(model)
        option = probability_option(refine, tta)
        if instance and option:
            raise ConfigError(f"{option}: works on per-pixel class probabilities; {model_path} is an instance model")
        if instance:
            model = model.inference_model()  # the deployable graph, batch 1: what `kseg export` converts
            segment = _instance_predictor(model, score_threshold)
            class_names = class_names if class_names is not None else _run_class_names(model_path)
        else:
            segment = keras_predictor(model, refine, tta)
        in_h, in_w = (int(d) if d is not None else None for d in model.inputs[0].shape[1:3])
        colours = None if instance else viz.palette(int(model.outputs[0].shape[-1]))
    os.makedirs(out_dir, exist_ok=True)
    written, failed = [], []
    paths = _inputs(input_path)
    bar = Progress(len(paths), "predicting") if verbose else None
    for done, path in enumerate(paths, 1):
        if bar:
            bar.update(done - 1)
        try:
            image = read_image(path)
        except DataError as e:
            print(f"skipped: {e}")
            failed.append(path)
            continue
        h, w = image.shape[:2]
        x = image if in_h is None else resize_image(image, (in_h, in_w), "stretch")[0]  # as the data pipeline does
        stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
        if instance:
            found = segment(x, (h, w))
            label = instances_to_label_map(found["masks"], found["scores"]).astype(np.uint16)
            cv2.imwrite(stem + "_instances.png", label)
            view = viz.draw_instances(image, found, class_names, alpha=alpha)
            written.append(stem + "_instances.png")
        else:
            mask = cv2.resize(segment(x).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(stem + "_mask.png", mask)
            view = viz.overlay(image, mask, alpha, colours, order="rgb")
            written.append(stem + "_mask.png")
        cv2.imwrite(stem + "_overlay.png", cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
    if bar:
        bar.update(len(paths))
    if verbose:
        print(f"wrote {len(written)} masks and overlays to {out_dir}" + (f"; {len(failed)} skipped" if failed else ""))
    return written


def _tflite_predictor(model_path, input_path, out_dir, refine, tta):
    """``(segment, palette)`` of an exported semantic model, run by the edge runtime (``kseg.evaluate.predictor``),
    as ``kseg evaluate --model`` scores it."""
    from edge.runtime import read_metadata
    from kseg.evaluate import predictor

    meta = read_metadata(os.fspath(model_path))
    if meta.get("output_kind") == "instance":
        raise ConfigError(f"{model_path} is an exported instance model: draw its detections with "
                          f"`kseg-edge run {model_path} --source {input_path} --headless --out {out_dir}`, or "
                          "predict with its .keras source")
    return predictor(model_path, refine, tta), meta.get("palette")


def _run_class_names(model_path):
    """The class names of the training run a model comes from (its ``run.yaml``), or None."""
    from kseg.config import load_config
    from kseg.errors import KsegError
    from kseg.instance.data import instance_class_names

    run_config = os.path.join(os.path.dirname(os.path.abspath(model_path)), "run.yaml")
    if not os.path.isfile(run_config):
        return None
    try:
        return list(instance_class_names(load_config(run_config)["data"]))
    except KsegError:  # a moved run whose data is gone: the ids still say which class
        return None


def _instance_predictor(model, score_threshold):
    """``(image at the model's input size, (H, W) of the original) -> instances at (H, W)`` of an instance model's
    inference graph (the 28 x 28 masks are pasted at the original's resolution, not the input's)."""
    from kseg.instance.masks import detections_to_instances

    def predict(x, size):
        det = {k: np.asarray(v) for k, v in model.predict_on_batch(x[None].astype(np.float32)).items()}
        return detections_to_instances(det, 0, image_size=size, input_size=x.shape[:2],
                                       score_threshold=score_threshold)

    return predict
