"""Scoring a model on a dataset with the numpy engine, the same one reports and the edge runtime use."""

import numpy as np

from kseg.metrics.confusion import ConfusionMatrix

__all__ = ["evaluate_model"]


def evaluate_model(model, dataset, num_classes, ignore_index=255):
    """Accumulates the confusion matrix of ``model`` over ``dataset``.

    Args:
        model: a Keras model mapping images to logits ``(B, H, W, C)``.
        dataset: iterable of ``(images, labels)`` batches, e.g. ``kseg.data.build_dataset(cfg, "val", 8)``.
        num_classes: number of classes.
        ignore_index: label value never scored.

    Returns:
        A :class:`kseg.metrics.ConfusionMatrix`.

    Raises:
        DataError: a bad sample in ``dataset``.

    Example:
        >>> cm = evaluate_model(model, build_dataset(cfg["data"], "val", 8), 4)  # doctest: +SKIP
        >>> print(cm.table())  # doctest: +SKIP
    """
    from kseg.data import data_errors

    cm = ConfusionMatrix(num_classes, ignore_index)
    with data_errors():
        for images, labels in dataset:
            # argmax in numpy, as on the edge: the graph never holds an argmax.
            logits = np.asarray(model.predict_on_batch(images))
            cm.update(np.asarray(labels), logits.argmax(axis=-1))
    return cm
