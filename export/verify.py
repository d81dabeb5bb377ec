"""Verification of an exported model against its Keras source, through the shared metrics engine."""

import numpy as np


def compare_on_split(keras_model, tflite_path, data_cfg, split="val"):
    """Score the Keras model and the TFLite model (run by the edge runtime) on the same images.

    Returns:
        ``keras_miou``, ``tflite_miou``, ``agreement`` (fraction of pixels where both predict the same
        class) and ``num_images``.
    """
    from edge.runtime import Segmenter
    from kseg.data import build_dataset
    from kseg.metrics import ConfusionMatrix

    num_classes = int(data_cfg["num_classes"])
    ignore = int(data_cfg.get("ignore_index", 255))
    seg = Segmenter(tflite_path)
    cm_keras, cm_lite = ConfusionMatrix(num_classes, ignore), ConfusionMatrix(num_classes, ignore)
    same = total = n = 0
    for images, labels in build_dataset(data_cfg, split, batch_size=1, augment=False, shuffle=False):
        # both models see the same uint8 pixels, as a camera would give them
        image = np.clip(np.round(images.numpy()[0]), 0, 255).astype(np.uint8)
        label = labels.numpy()[0]
        pred_keras = np.argmax(keras_model(image[None].astype(np.float32), training=False).numpy()[0], axis=-1)
        pred_lite = seg.segment(image, rgb=True).mask
        cm_keras.update(label, pred_keras)
        cm_lite.update(label, pred_lite)
        same += int((pred_keras == pred_lite).sum())
        total += pred_keras.size
        n += 1
    return {"keras_miou": float(cm_keras.mean_iou()), "tflite_miou": float(cm_lite.mean_iou()),
            "agreement": same / max(total, 1), "num_images": n}
