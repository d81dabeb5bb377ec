"""``kseg predict``: class-id masks and overlays for an image or a folder of images."""

import os

import cv2
import numpy as np

from kseg import viz
from kseg.data.io import IMAGE_EXTS, read_image
from kseg.errors import DataError


def _inputs(path):
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS))
        if not files:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
        return files
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such image or folder")
    return [path]


def predict(model_path, input_path, out_dir, alpha=0.5, verbose=True, refine=None):
    """Segment every image and write ``<name>_mask.png`` (class ids) and ``<name>_overlay.png``.

    Images of any size are resized to the model's input and the mask is resized back (nearest). An unreadable
    image is reported and skipped; the others are still written. ``refine``: a refiner name from
    ``kseg.postprocess`` (e.g. ``"crf"``) applied to the model's probabilities and the resized image.

    Returns:
        The list of mask paths written.
    """
    from kseg.evaluate import keras_predictor, refiner
    from kseg.saving import load_model

    refiner(refine)  # an unknown name fails before the model loads
    model = load_model(model_path)
    segment = keras_predictor(model, refine)
    in_h, in_w = (int(d) if d is not None else None for d in model.inputs[0].shape[1:3])
    num_classes = int(model.outputs[0].shape[-1])
    colours = viz.palette(num_classes)
    os.makedirs(out_dir, exist_ok=True)
    written, failed = [], []
    for path in _inputs(input_path):
        try:
            image = read_image(path)
        except DataError as e:
            print(f"skipped: {e}")
            failed.append(path)
            continue
        h, w = image.shape[:2]
        x = image if in_h is None else cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
        mask = segment(x).astype(np.uint8)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
        cv2.imwrite(stem + "_mask.png", mask)
        view = viz.overlay(image, mask, alpha, colours, order="rgb")
        cv2.imwrite(stem + "_overlay.png", cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
        written.append(stem + "_mask.png")
    if verbose:
        print(f"wrote {len(written)} masks and overlays to {out_dir}" + (f"; {len(failed)} skipped" if failed else ""))
    return written
