"""Segmentation metrics: one numpy confusion-matrix engine, boundary F-score, and Keras metrics on top.

Importing this package does not import TensorFlow or Keras, so the edge runtime scores with the same code on a
device without them; ``SegMeanIoU`` and ``SegPixelAccuracy`` load ``kseg.metrics.keras_metric`` on first access.

Example:
    >>> import numpy as np
    >>> from kseg.metrics import ConfusionMatrix
    >>> cm = ConfusionMatrix(num_classes=2)
    >>> cm.update(np.array([[0, 1], [1, 255]]), np.array([[0, 1], [0, 0]])).pixel_accuracy()
    0.6666666666666666
"""

from kseg.metrics.boundary import BoundaryF1, boundary_f1
from kseg.metrics.confusion import ConfusionMatrix

__all__ = ["BoundaryF1", "ConfusionMatrix", "SegMeanIoU", "SegPixelAccuracy", "boundary_f1"]

_KERAS_METRICS = ("SegMeanIoU", "SegPixelAccuracy")


def __getattr__(name):
    if name in _KERAS_METRICS:
        from kseg.metrics import keras_metric

        return getattr(keras_metric, name)
    raise AttributeError(f"module 'kseg.metrics' has no attribute {name!r}")
