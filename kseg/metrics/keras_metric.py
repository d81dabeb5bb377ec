"""Keras metrics on top of the numpy engine: confusion counts accumulate in the graph, scores match ConfusionMatrix.

The metric keeps only the ``(C, C)`` confusion counts, so every score the numpy :class:`ConfusionMatrix` offers can
be read from it after ``evaluate`` (:meth:`SegMeanIoU.confusion_matrix`) and reports use one engine.
"""

import keras
import tensorflow as tf

from kseg.metrics.confusion import ConfusionMatrix

__all__ = ["SegMeanIoU", "SegPixelAccuracy"]


class _ConfusionMetric(keras.metrics.Metric):
    """Base: accumulates a confusion matrix of ``(labels (B, H, W), logits (B, H, W, C))`` batches."""

    def __init__(self, num_classes, ignore_index=255, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        ConfusionMatrix(num_classes, ignore_index)  # validates the arguments with the engine's messages
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        # float64 counts stay exact up to 2**53 pixels (float32 stops counting at 2**24, two 4k frames); the variables
        # sum across replicas on read, so the metric is right under tf.distribute strategies.
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="float64", name="confusion"
        )
        self.invalid_labels = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="invalid_labels")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch.

        Args:
            y_true: integer labels ``(B, H, W)`` or ``(B, H, W, 1)``; ``ignore_index`` pixels are skipped.
            y_pred: logits (or probabilities) ``(B, H, W, C)``; the prediction is their argmax.
            sample_weight: optional weights per image ``(B,)`` or per pixel ``(B, H, W)``; counts become weighted.
        """
        y_pred = tf.convert_to_tensor(y_pred)
        labels = tf.cast(y_true, tf.int32)
        if labels.shape.rank == y_pred.shape.rank:
            labels = tf.squeeze(labels, axis=-1)
        preds = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        n = self.num_classes
        if sample_weight is None:
            weights = tf.ones_like(labels, dtype=tf.float64)
        else:
            weights = tf.cast(sample_weight, tf.float64)
            if weights.shape.rank == labels.shape.rank + 1:
                weights = tf.squeeze(weights, axis=-1)
            while weights.shape.rank < labels.shape.rank:
                weights = weights[..., tf.newaxis]
            weights = tf.broadcast_to(weights, tf.shape(labels))
        in_range = (labels >= 0) & (labels < n)
        invalid = ~in_range if self.ignore_index is None else ~in_range & (labels != self.ignore_index)
        # A graph cannot raise mid-step, so out-of-range labels go to their own bucket (n*n + 1) and
        # confusion_matrix() raises on them afterwards; ignored pixels go to bucket n*n and are dropped.
        bucket = tf.where(in_range, labels * n + preds, n * n + tf.cast(invalid, tf.int32))
        counts = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), tf.reshape(bucket, [-1]), n * n + 2)
        self.confusion.assign_add(tf.reshape(counts[: n * n], (n, n)))
        self.invalid_labels.assign_add(counts[n * n + 1])

    def _counts(self):
        cm = tf.convert_to_tensor(self.confusion)
        tp = tf.linalg.diag_part(cm)
        return cm, tp, tf.reduce_sum(cm, axis=0) - tp, tf.reduce_sum(cm, axis=1) - tp

    def confusion_matrix(self):
        """The accumulated counts as a numpy :class:`ConfusionMatrix` (summed over replicas).

        Raises:
            ValueError: some labels were outside ``[0, num_classes)`` and not the ignore index.
        """
        invalid = float(keras.ops.convert_to_numpy(self.invalid_labels))
        if invalid:
            raise ValueError(
                f"{invalid:g} pixel(s) had labels outside [0, {self.num_classes}) that are not the ignore index "
                f"{self.ignore_index}; check num_classes and the label maps"
            )
        return ConfusionMatrix.from_matrix(keras.ops.convert_to_numpy(self.confusion), ignore_index=self.ignore_index)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index}


@keras.saving.register_keras_serializable(package="kseg")
class SegMeanIoU(_ConfusionMetric):
    """Mean intersection over union of per-pixel argmax predictions, for ``model.compile(metrics=[...])``.

    Same definition as :meth:`ConfusionMatrix.mean_iou` (Long et al., CVPR 2015): the mean of ``TP / (TP + FP + FN)``
    over classes present in the labels or the predictions; NaN when no pixel was scored. Unlike
    ``keras.metrics.MeanIoU`` it takes logits directly and skips the ignore label.

    Args:
        num_classes: number of classes (the last axis of the logits).
        ignore_index: label value that is never scored; ``None`` scores every pixel.
        name: metric name in the training logs.
        dtype: dtype of the result.

    Example:
        >>> metric = SegMeanIoU(num_classes=21)
        >>> model.compile(optimizer="adam", loss=build_loss("ce", 21), metrics=[metric])  # doctest: +SKIP
        >>> model.evaluate(val_ds)  # doctest: +SKIP
        >>> print(metric.confusion_matrix().table())  # doctest: +SKIP
    """

    def __init__(self, num_classes, ignore_index=255, name="mean_iou", dtype=None):
        super().__init__(num_classes, ignore_index=ignore_index, name=name, dtype=dtype)

    def result(self):
        _, tp, fp, fn = self._counts()
        union = tp + fp + fn
        present = tf.reduce_sum(tf.cast(union > 0, tf.float64))
        # 0 / 0 = NaN when nothing was scored, as in the numpy engine.
        return tf.cast(tf.reduce_sum(tf.math.divide_no_nan(tp, union)) / present, self.dtype)


@keras.saving.register_keras_serializable(package="kseg")
class SegPixelAccuracy(_ConfusionMetric):
    """Fraction of non-ignored pixels whose argmax prediction equals the label (:meth:`ConfusionMatrix.pixel_accuracy`).

    Args:
        num_classes: number of classes (the last axis of the logits).
        ignore_index: label value that is never scored; ``None`` scores every pixel.
        name: metric name in the training logs.
        dtype: dtype of the result.
    """

    def __init__(self, num_classes, ignore_index=255, name="pixel_accuracy", dtype=None):
        super().__init__(num_classes, ignore_index=ignore_index, name=name, dtype=dtype)

    def result(self):
        cm, tp, _, _ = self._counts()
        return tf.cast(tf.reduce_sum(tp) / tf.reduce_sum(cm), self.dtype)
