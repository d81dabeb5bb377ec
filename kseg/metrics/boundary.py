"""Boundary F-score (BF score): how well predicted class contours match the true ones (numpy + OpenCV).

Region scores such as IoU barely move when a contour is off by a few pixels; the BF score of Csurka et al.,
"What is a good evaluation measure for semantic segmentation?", BMVC 2013, scores the contours themselves, with the
distance tolerance of the DAVIS benchmark (Perazzi et al., CVPR 2016).
"""

import cv2
import numpy as np

from kseg.metrics.confusion import _divide, _nanmean

__all__ = ["BoundaryF1", "boundary_f1"]

# A 4-connected erosion marks as boundary every pixel with a 4-neighbour outside the mask: one-pixel-thin contours.
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _tolerance_px(tolerance, shape):
    """DAVIS convention: below 1, a fraction of the image diagonal (rounded up); from 1, a distance in pixels."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    return float(tolerance) if tolerance >= 1 else float(np.ceil(tolerance * np.hypot(*shape)))


def _boundary(mask):
    """Inner contour of a binary mask. The image border is not a contour: erosion pads with the maximum there."""
    mask = mask.astype(np.uint8)
    return (mask - cv2.erode(mask, _CROSS)).astype(bool)


def _near(boundary, tol_px):
    """Pixels within ``tol_px`` (Euclidean) of any ``boundary`` pixel."""
    if not boundary.any():
        return np.zeros_like(boundary)
    # distanceTransform measures the distance to the nearest zero pixel, so the contour is the zero set.
    dist = cv2.distanceTransform((~boundary).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist <= tol_px


def _image_counts(labels, preds, num_classes, tol_px, ignore_index):
    """Per-class contour counts of one image: matched and total predicted, matched and total true contour pixels."""
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    if labels.ndim != 2 or labels.shape != preds.shape:
        raise ValueError(f"expected two (H, W) maps of the same shape, got {labels.shape} and {preds.shape}")
    scored = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    counts = np.zeros((4, num_classes), dtype=np.int64)
    for c in np.union1d(np.unique(labels[scored]), np.unique(preds[scored])):
        if not 0 <= c < num_classes:
            raise ValueError(f"class id {c} outside [0, {num_classes}) (ignore index: {ignore_index})")
        true_b = _boundary(labels == c)
        # A predicted contour inside an ignored region (e.g. the VOC border band) is neither right nor wrong.
        pred_b = _boundary(preds == c) & scored
        counts[:, c] = (
            np.count_nonzero(pred_b & _near(true_b, tol_px)),
            np.count_nonzero(pred_b),
            np.count_nonzero(true_b & _near(pred_b, tol_px)),
            np.count_nonzero(true_b),
        )
    return counts


def _scores(counts):
    """(precision, recall, F1) per class from contour counts; NaN where a class has no contour at all."""
    matched_pred, n_pred, matched_true, n_true = counts
    absent = (n_pred == 0) & (n_true == 0)
    # A contour on one side only is a complete miss (score 0), not an undefined ratio.
    precision = np.where(n_pred > 0, _divide(matched_pred, n_pred), 0.0)
    recall = np.where(n_true > 0, _divide(matched_true, n_true), 0.0)
    f1 = np.where(precision + recall > 0, _divide(2 * precision * recall, precision + recall), 0.0)
    nan = np.full(absent.shape, np.nan)
    return tuple(np.where(absent, nan, s) for s in (precision, recall, f1))


def boundary_f1(labels, preds, num_classes, tolerance=0.0075, ignore_index=255):
    """Boundary F1 score of one image, per class (Csurka et al., BMVC 2013).

    For each class, the contours of the true and predicted masks are extracted; precision is the share of predicted
    contour pixels lying within ``tolerance`` of a true contour pixel, recall the share of true contour pixels within
    ``tolerance`` of a predicted one, and the score is their harmonic mean. The image border is not a contour.
    Pixels labelled ``ignore_index`` are not scored: predicted contour pixels there are dropped.

    Args:
        labels: ``(H, W)`` integer class ids.
        preds: ``(H, W)`` predicted class ids.
        num_classes: number of classes.
        tolerance: match distance. Below 1 it is a fraction of the image diagonal, rounded up to whole pixels (the
            DAVIS convention; the default 0.0075 is Csurka et al.'s 0.75 %, 4 pixels at 512 x 512); from 1 on it is
            a distance in pixels.
        ignore_index: label value that is never scored; ``None`` scores every pixel.

    Returns:
        ``(num_classes,)`` float array of F1 scores in [0, 1]; NaN for classes with no contour in either map
        (absent classes, or a class filling the whole image).

    Example:
        >>> gt = np.zeros((64, 64), np.int32); gt[16:48, 16:48] = 1
        >>> boundary_f1(gt, gt, num_classes=2)
        array([1., 1.])
    """
    counts = _image_counts(labels, preds, num_classes, _tolerance_px(tolerance, np.shape(labels)), ignore_index)
    return _scores(counts)[2]


class BoundaryF1:
    """Streaming boundary F-score over a dataset, used like :class:`ConfusionMatrix`.

    Following Csurka et al. (BMVC 2013), the score is computed per image and per class and then averaged over the
    images in which the class has a contour; ``mean_f1`` averages those per-class means over classes.

    Args:
        num_classes: number of classes.
        tolerance: match distance, see :func:`boundary_f1`.
        ignore_index: label value that is never scored.

    Example:
        >>> bf = BoundaryF1(num_classes=2)
        >>> gt = np.zeros((2, 64, 64), np.int32); gt[:, 16:48, 16:48] = 1
        >>> bf.update(gt, gt).mean_f1()
        1.0
    """

    def __init__(self, num_classes, tolerance=0.0075, ignore_index=255):
        _tolerance_px(tolerance, (1, 1))
        self.num_classes = int(num_classes)
        self.tolerance = tolerance
        self.ignore_index = ignore_index
        self.reset()

    def reset(self):
        """Clears all accumulated scores; returns ``self``."""
        # Rows: summed precision, recall, F1; and the number of images each class was scored in.
        self._sums = np.zeros((3, self.num_classes))
        self._images = np.zeros(self.num_classes, dtype=np.int64)
        self._num_images = 0
        return self

    def update(self, labels, preds):
        """Adds one ``(H, W)`` image or a ``(B, H, W)`` batch; returns ``self``."""
        labels = np.asarray(labels)
        preds = np.asarray(preds)
        if labels.shape != preds.shape or labels.ndim not in (2, 3):
            raise ValueError(
                f"expected (H, W) or (B, H, W) maps of the same shape, got {labels.shape} and {preds.shape}"
            )
        if labels.ndim == 2:
            labels, preds = labels[None], preds[None]
        tol_px = _tolerance_px(self.tolerance, labels.shape[1:])
        for lab, pred in zip(labels, preds):
            scores = np.stack(_scores(_image_counts(lab, pred, self.num_classes, tol_px, self.ignore_index)))
            scored = ~np.isnan(scores[2])
            self._sums[:, scored] += scores[:, scored]
            self._images += scored
        self._num_images += len(labels)
        return self

    def merge(self, other):
        """Adds the accumulated scores of another ``BoundaryF1`` with the same settings; returns ``self``."""
        mine = (self.num_classes, self.tolerance, self.ignore_index)
        theirs = (other.num_classes, other.tolerance, other.ignore_index)
        if mine != theirs:
            raise ValueError(f"cannot merge BoundaryF1 with (classes, tolerance, ignore) {theirs} into {mine}")
        self._sums += other._sums
        self._images += other._images
        self._num_images += other._num_images
        return self

    def per_class_precision(self):
        """Mean contour precision per class over the images where the class has a contour; NaN if none."""
        return _divide(self._sums[0], self._images)

    def per_class_recall(self):
        """Mean contour recall per class over the images where the class has a contour; NaN if none."""
        return _divide(self._sums[1], self._images)

    def per_class_f1(self):
        """Mean boundary F1 per class over the images where the class has a contour; NaN if none."""
        return _divide(self._sums[2], self._images)

    def mean_f1(self):
        """Mean of the per-class boundary F1 over classes seen with a contour."""
        return _nanmean(self.per_class_f1())

    def summary(self):
        """Scores as a plain dict (NaN marks classes never seen with a contour)."""
        return {
            "mean_boundary_f1": self.mean_f1(),
            "per_class_boundary_f1": self.per_class_f1().tolist(),
            "per_class_boundary_precision": self.per_class_precision().tolist(),
            "per_class_boundary_recall": self.per_class_recall().tolist(),
            "num_images": self._num_images,
        }
