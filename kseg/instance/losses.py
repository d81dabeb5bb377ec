"""Mask R-CNN's five losses (He et al., "Mask R-CNN", ICCV 2017, arXiv 1703.06870, section 3; the RPN terms from
Ren et al., "Faster R-CNN", NIPS 2015, arXiv 1506.01497, eq. 1).

Normalisation (Detectron2's, which implements the papers' balancing): the RPN objectness loss is averaged over the
sampled anchors (Faster R-CNN's ``N_cls`` = 256 per image) and the RPN box loss is summed over positives and divided
by the same count (the paper divides by the number of anchor locations and weights by lambda = 10, which gives about
the same scale); the head class loss is averaged over the sampled ROIs and the box loss summed over foreground ROIs
divided by the sampled ROI count (Fast R-CNN's ``[u >= 1]`` term); the mask loss is the average per-pixel binary
cross-entropy over the foreground ROIs (the paper's ``L_mask``). Counts are taken over the whole batch and are at
least 1. Box losses are smooth L1 (Huber) with ``beta`` = 1/9 for the RPN and 1 for the head, as in Detectron.

Every function takes plain tensors and returns a float32 scalar.

Example:
    >>> import tensorflow as tf
    >>> from kseg.instance import losses
    >>> float(losses.rpn_class_loss(tf.constant([[1.0, 0.0]]), tf.constant([[0.0, 0.0]]), tf.constant([[1.0, 1.0]])))
    0.6931...
"""

import tensorflow as tf

RPN_BETA = 1.0 / 9.0
HEAD_BETA = 1.0


def smooth_l1(x, beta):
    """Elementwise smooth L1 (Fast R-CNN eq. 3 generalised): ``0.5 x**2 / beta`` if ``|x| < beta`` else
    ``|x| - 0.5 beta``."""
    ax = tf.abs(x)
    return tf.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def _count(weights):
    return tf.maximum(tf.reduce_sum(tf.cast(weights, tf.float32)), 1.0)


def rpn_class_loss(labels, logits, weights):
    """Binary cross-entropy of objectness ``logits`` against ``labels`` (1 object, 0 background), averaged over the
    sampled anchors (``weights`` 1, else 0). Shapes ``(B, S)``."""
    labels, weights = tf.cast(labels, tf.float32), tf.cast(weights, tf.float32)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(ce * weights) / _count(weights)


def rpn_box_loss(targets, deltas, positive, weights, beta=RPN_BETA):
    """Smooth L1 of the RPN ``deltas`` against ``targets`` ``(B, S, 4)``, summed over the positive anchors and
    divided by the number of sampled anchors (``weights``)."""
    per_anchor = tf.reduce_sum(smooth_l1(tf.cast(deltas, tf.float32) - targets, beta), -1)
    return tf.reduce_sum(per_anchor * tf.cast(positive, tf.float32)) / _count(weights)


def class_loss(classes, logits, weights):
    """Softmax cross-entropy of the head's ``logits`` ``(B, S, K)`` against int ``classes`` ``(B, S)``
    (0 = background), averaged over the sampled ROIs (``weights``)."""
    weights = tf.cast(weights, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(classes, tf.int32),
                                                        logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(ce * weights) / _count(weights)


def box_loss(targets, deltas, classes, positive, weights, beta=HEAD_BETA):
    """Smooth L1 of the head's class-specific ``deltas`` ``(B, S, 4 K)`` for the target class against
    ``targets`` ``(B, S, 4)``, summed over foreground ROIs (``positive``) and divided by the sampled ROI count."""
    num_classes = int(deltas.shape[-1]) // 4
    deltas = tf.reshape(tf.cast(deltas, tf.float32), tf.concat([tf.shape(classes), [num_classes, 4]], 0))
    chosen = tf.reduce_sum(deltas * tf.one_hot(tf.cast(classes, tf.int32), num_classes)[..., None], -2)
    per_roi = tf.reduce_sum(smooth_l1(chosen - targets, beta), -1)
    return tf.reduce_sum(per_roi * tf.cast(positive, tf.float32)) / _count(weights)


def mask_loss(targets, logits, positive):
    """Average per-pixel binary cross-entropy of the gt class's mask ``logits`` against binary ``targets`` (both
    ``(N, 28, 28)``) over the foreground ROIs (``positive`` ``(N,)``)."""
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))
    per_roi = tf.reduce_mean(ce, axis=[-2, -1])
    positive = tf.cast(positive, tf.float32)
    return tf.reduce_sum(per_roi * positive) / _count(positive)
