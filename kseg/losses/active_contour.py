"""Active contour (ACM) loss: Chan-Vese region terms plus a contour-length term on the predicted probabilities."""

import keras
import tensorflow as tf

from kseg.losses.builder import register_loss
from kseg.losses.segmentation import SegmentationLoss

__all__ = ["ActiveContourLoss"]


@register_loss("acm")
@keras.saving.register_keras_serializable(package="kseg")
class ActiveContourLoss(SegmentationLoss):
    """Active contour loss ``length_weight * Length + region_weight * (Region_in + Region_out)``, per class.

    Chen, Williams, Vallabhaneni, Czanner, Williams, Zheng, "Learning Active Contour Models for Medical Image
    Segmentation", CVPR 2019. For class ``c`` with softmax probability ``u`` and one-hot truth ``v``:

    - ``Length = sum_pixels sqrt(|du/dx|^2 + |du/dy|^2 + eps) - sqrt(eps)``: the total variation of ``u``, i.e. the
      length of its contour (forward differences; volumes add ``du/dz``). The paper has no ``- sqrt(eps)``; here it
      makes the term exactly 0 on a constant map without changing the gradient.
    - ``Region_in = sum u (v - c1)^2`` and ``Region_out = sum (1 - u) (v - c2)^2`` with ``c1 = 1``, ``c2 = 0`` (the
      Chan-Vese fitting terms with the ground truth as the image, as in the paper's code).

    The paper sums over pixels; here each term is a mean (over scored pixels for the region terms, over pixel
    neighbourhoods whose pixels are all scored for the length), so the loss does not grow with the image size and
    its weights compare with cross-entropy's. For several classes the per-class losses are averaged (one-vs-rest).
    Ignored pixels add nothing: they are outside both regions, and a difference that touches one is not counted.

    Args:
        length_weight: weight of the length term (the paper's implicit 1).
        region_weight: weight of the region terms (the paper's lambda, 1 in its code).
        eps: the square root's smoothing (1e-8 in the paper's code).
        ignore_index: label value excluded from the loss.
        name: name of the loss.

    Example:
        >>> from kseg.losses import build_loss
        >>> loss = build_loss([{"name": "ce"}, {"name": "acm", "weight": 0.5, "length_weight": 0.1}],
        ...                   num_classes=2)
        >>> model.compile(optimizer="adam", loss=loss)  # doctest: +SKIP
    """

    def __init__(self, length_weight=1.0, region_weight=1.0, eps=1e-8, ignore_index=255, name="active_contour"):
        super().__init__(ignore_index=ignore_index, name=name)
        if length_weight < 0 or region_weight < 0:
            raise ValueError(f"length_weight and region_weight must be >= 0, got {length_weight}, {region_weight}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0 (it keeps the square root's gradient finite), got {eps}")
        self.length_weight = float(length_weight)
        self.region_weight = float(region_weight)
        self.eps = float(eps)

    def compute(self, labels, valid, logits):
        mask = tf.cast(valid, tf.float32)[..., tf.newaxis]
        probs = tf.nn.softmax(logits)
        truth = tf.one_hot(labels, logits.shape[-1], dtype=tf.float32)
        pixels = tf.reduce_sum(mask)
        # Mean over scored pixels and classes: c1 = 1 inside, c2 = 0 outside.
        region = tf.math.divide_no_nan(
            tf.reduce_sum(mask * (probs * (truth - 1.0) ** 2 + (1.0 - probs) * truth**2)),
            pixels * logits.shape[-1])
        length = self._length(probs, mask)
        return self.length_weight * length + self.region_weight * region

    def _length(self, probs, mask):
        """Mean per pixel and class of ``sqrt(sum_axis diff^2 + eps) - sqrt(eps)`` over fully scored neighbourhoods."""
        spatial = range(1, probs.shape.rank - 1)
        # Every map cropped to the pixels that have a forward neighbour along each axis.
        base = (slice(None),) + tuple(slice(None, -1) for _ in spatial)
        squares, scored = 0.0, mask[base]
        for axis in spatial:
            ahead = list(base)
            ahead[axis] = slice(1, None)
            squares += (probs[tuple(ahead)] - probs[base]) ** 2
            scored *= mask[tuple(ahead)]
        eps = tf.constant(self.eps, tf.float32)
        tv = tf.sqrt(squares + eps) - tf.sqrt(eps)
        return tf.math.divide_no_nan(tf.reduce_sum(scored * tv), tf.reduce_sum(scored) * probs.shape[-1])

    def get_config(self):
        return {**super().get_config(), "length_weight": self.length_weight, "region_weight": self.region_weight,
                "eps": self.eps}
