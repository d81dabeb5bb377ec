"""Streaming confusion matrix: the one metric engine of kseg (numpy only).

Training reports, the exporter's verification and the edge runtime all score through this class, so a number
printed anywhere in kseg means the same thing. It must not import TensorFlow: the edge runtime installs without it.
"""

import numpy as np

__all__ = ["ConfusionMatrix"]


def _divide(num, den):
    """``num / den`` elementwise, NaN where ``den == 0`` (an undefined ratio, not a zero score)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values):
    """Mean over the defined (non-NaN) entries; NaN when none is defined, without numpy's RuntimeWarning."""
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    return float(values[defined].mean()) if defined.any() else float("nan")


class ConfusionMatrix:
    """Streaming confusion matrix over class ids, with the usual semantic-segmentation scores.

    ``matrix[i, j]`` counts pixels labelled ``i`` and predicted ``j``. Scores follow the definitions used by the
    Pascal VOC / Cityscapes benchmarks (Long et al., "Fully Convolutional Networks for Semantic Segmentation",
    CVPR 2015, section 5 for pixel accuracy, mean accuracy, mean IoU and frequency-weighted IoU).

    Absent classes: a per-class score whose denominator is zero is NaN, not 0, and every mean skips NaN entries.
    For IoU and Dice this happens when a class is absent from both labels and predictions; for per-class accuracy
    (recall) when a class has no labelled pixel. A scene without a class then neither rewards nor punishes it.
    Scores of an empty matrix are NaN.

    Args:
        num_classes: number of classes; labels and predictions are ids in ``[0, num_classes)``.
        ignore_index: label value that is never scored (255 by the kseg convention); ``None`` scores every pixel.

    Example:
        >>> cm = ConfusionMatrix(num_classes=3).update(np.array([[0, 1], [2, 255]]), np.array([[0, 1], [1, 2]]))
        >>> round(cm.mean_iou(), 3)
        0.5
        >>> print(cm.table(["sky", "road", "car"]))  # doctest: +SKIP
    """

    def __init__(self, num_classes, ignore_index=255):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is a valid class id for num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @classmethod
    def from_matrix(cls, matrix, ignore_index=255):
        """Wraps an existing ``(C, C)`` count matrix (rows: labels, columns: predictions).

        Integral counts are stored as int64; non-integral ones (weighted counts) keep float64.
        """
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"a confusion matrix must be square, got shape {matrix.shape}")
        if np.any(matrix < 0):
            raise ValueError("a confusion matrix cannot hold negative counts")
        cm = cls(matrix.shape[0], ignore_index=ignore_index)
        integral = np.all(np.mod(matrix, 1) == 0)
        cm._matrix = matrix.astype(np.int64 if integral else np.float64)
        return cm

    @property
    def matrix(self):
        """A copy of the ``(C, C)`` counts, rows = labels, columns = predictions."""
        return self._matrix.copy()

    def update(self, labels, preds):
        """Adds a batch of pixels.

        Args:
            labels: integer array of class ids (any shape, e.g. ``(B, H, W)``); ``ignore_index`` pixels are skipped.
            preds: integer array of predicted class ids, same shape as ``labels``.

        Returns:
            ``self``, so that calls chain.

        Raises:
            ValueError: shapes differ, or a label (other than ``ignore_index``) or a prediction lies outside
                ``[0, num_classes)``; the message names the offending values.
            TypeError: labels or predictions are not integers (pass argmaxed class ids, not scores).
        """
        labels = np.asarray(labels)
        preds = np.asarray(preds)
        if labels.shape != preds.shape:
            raise ValueError(f"labels shape {labels.shape} differs from predictions shape {preds.shape}")
        for what, arr in (("labels", labels), ("predictions", preds)):
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
                raise TypeError(f"{what} must be integer class ids, got dtype {arr.dtype}")
        labels = labels.ravel().astype(np.int64, copy=False)
        preds = preds.ravel().astype(np.int64, copy=False)
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            labels, preds = labels[keep], preds[keep]
        self._check_range("label", labels)
        self._check_range("prediction", preds)
        self._matrix += np.bincount(
            labels * self.num_classes + preds, minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)
        return self

    def _check_range(self, what, ids):
        bad = (ids < 0) | (ids >= self.num_classes)
        if bad.any():
            values = np.unique(ids[bad])
            shown = ", ".join(str(v) for v in values[:10]) + (", ..." if values.size > 10 else "")
            allowed = f"[0, {self.num_classes})"
            if what == "label" and self.ignore_index is not None:
                allowed += f" or the ignore index {self.ignore_index}"
            raise ValueError(f"{what} value(s) {shown} outside {allowed}")

    def merge(self, other):
        """Adds the counts of another ``ConfusionMatrix`` (e.g. from another worker or shard); returns ``self``."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a matrix with num_classes={other.num_classes}, ignore_index={other.ignore_index} "
                f"into one with num_classes={self.num_classes}, ignore_index={self.ignore_index}"
            )
        self._matrix = self._matrix + other._matrix
        return self

    def reset(self):
        """Clears all counts; returns ``self``."""
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        return self

    @property
    def total(self):
        """Number of scored pixels."""
        return self._matrix.sum()

    def _tp_fp_fn(self):
        tp = np.diag(self._matrix)
        return tp, self._matrix.sum(axis=0) - tp, self._matrix.sum(axis=1) - tp

    def per_class_iou(self):
        """Intersection over union ``TP / (TP + FP + FN)`` per class, NaN for absent classes."""
        tp, fp, fn = self._tp_fp_fn()
        return _divide(tp, tp + fp + fn)

    def mean_iou(self):
        """Mean of the per-class IoU over present classes (mIoU)."""
        return _nanmean(self.per_class_iou())

    def per_class_dice(self):
        """Dice coefficient / F1 score ``2 TP / (2 TP + FP + FN)`` per class, NaN for absent classes."""
        tp, fp, fn = self._tp_fp_fn()
        return _divide(2 * tp, 2 * tp + fp + fn)

    def mean_dice(self):
        """Mean of the per-class Dice over present classes."""
        return _nanmean(self.per_class_dice())

    def per_class_accuracy(self):
        """Recall ``TP / (TP + FN)`` per class, NaN for classes without labelled pixels."""
        tp, _, fn = self._tp_fp_fn()
        return _divide(tp, tp + fn)

    def mean_class_accuracy(self):
        """Mean of the per-class accuracy over classes that have labelled pixels."""
        return _nanmean(self.per_class_accuracy())

    def pixel_accuracy(self):
        """Fraction of scored pixels predicted correctly."""
        return float(_divide(np.trace(self._matrix), self.total))

    def frequency_weighted_iou(self):
        """Per-class IoU weighted by each class's share of the labelled pixels (fwIoU)."""
        freq = _divide(self._matrix.sum(axis=1), self.total)
        iou = self.per_class_iou()
        labelled = freq > 0
        return float(np.sum(freq[labelled] * iou[labelled])) if labelled.any() else float("nan")

    def summary(self):
        """All scores as a plain dict (Python floats and lists; NaN marks absent classes)."""
        return {
            "mean_iou": self.mean_iou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_class_accuracy": self.mean_class_accuracy(),
            "frequency_weighted_iou": self.frequency_weighted_iou(),
            "mean_dice": self.mean_dice(),
            "per_class_iou": self.per_class_iou().tolist(),
            "per_class_dice": self.per_class_dice().tolist(),
            "per_class_accuracy": self.per_class_accuracy().tolist(),
            "num_pixels": int(self.total),
        }

    def table(self, class_names=None):
        """A per-class text table (IoU, Dice, accuracy, labelled pixels) with the means below, for a CLI.

        Args:
            class_names: optional ``num_classes`` names; defaults to the class ids. Absent classes show ``-``.
        """
        if class_names is None:
            class_names = [str(i) for i in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"got {len(class_names)} class names for {self.num_classes} classes")

        def pct(value):
            return "-" if np.isnan(value) else f"{100 * value:.2f}"

        rows = [
            (str(name), pct(iou), pct(dice), pct(acc), str(int(n)))
            for name, iou, dice, acc, n in zip(
                class_names,
                self.per_class_iou(),
                self.per_class_dice(),
                self.per_class_accuracy(),
                self._matrix.sum(axis=1),
            )
        ]
        footer = [
            ("mean", *map(pct, (self.mean_iou(), self.mean_dice(), self.mean_class_accuracy())), str(int(self.total))),
            ("pixel acc", pct(self.pixel_accuracy()), "", "", ""),
            ("fwIoU", pct(self.frequency_weighted_iou()), "", "", ""),
        ]
        header = ("class", "IoU %", "Dice %", "Acc %", "pixels")
        widths = [max(len(r[i]) for r in [header, *rows, *footer]) for i in range(len(header))]

        def fmt(row):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

        rule = "-" * len(fmt(header))
        return "\n".join([fmt(header), rule, *map(fmt, rows), rule, *map(fmt, footer)])

    def __repr__(self):
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.total)}, mIoU={self.mean_iou():.4f})"
