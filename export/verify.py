"""Verification of an exported model against its Keras source, through the shared metrics engine."""

def compare_on_split(keras_model, tflite_path, data_cfg, split="val"):
    """Score the Keras model and the TFLite model (run by the edge runtime) on the same images.

    Returns:
        ``keras_miou``, ``tflite_miou``, ``agreement`` (fraction of pixels where both predict the same
        class) and ``num_images``.
    """
    from kseg.evaluate import keras_predictor, predictor, uint8_samples
    from kseg.metrics import ConfusionMatrix

    num_classes = int(data_cfg["num_classes"])
    ignore = int(data_cfg.get("ignore_index", 255))
    predict_keras, predict_lite = keras_predictor(keras_model), predictor(tflite_path)
    cm_keras, cm_lite = ConfusionMatrix(num_classes, ignore), ConfusionMatrix(num_classes, ignore)
    same = total = n = 0
    for image, label in uint8_samples(data_cfg, split):
        pred_keras, pred_lite = predict_keras(image), predict_lite(image)
        cm_keras.update(label, pred_keras)
        cm_lite.update(label, pred_lite)
        same += int((pred_keras == pred_lite).sum())
        total += pred_keras.size
        n += 1
    return {"keras_miou": float(cm_keras.mean_iou()), "tflite_miou": float(cm_lite.mean_iou()),
            "agreement": same / max(total, 1), "num_images": n}
