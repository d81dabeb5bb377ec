"""Segmentation losses for ``(labels (B, H, W), logits (B, H, W, C))`` on the TensorFlow backend; volumes
``(labels (B, D, H, W), logits (B, D, H, W, C))`` work the same (every spatial axis is summed alike).

Every loss here computes in float32 (logits are cast, so mixed-precision models are safe), skips the ignore label
everywhere (ignored pixels add nothing to the value or the gradient) and returns 0, not NaN, for a batch in which
every pixel is ignored. Each returns one scalar for the batch, so ``sample_weight`` is not supported: weight
classes with the loss's own arguments and drop pixels with the ignore label.
"""

import keras
import tensorflow as tf

__all__ = [
    "CrossEntropyLoss", "DiceLoss", "DistillationLoss", "FocalLoss", "LovaszSoftmaxLoss", "SegmentationLoss",
    "TverskyLoss",
]


def _as_tuple(values, what):
    """A per-class sequence as a tuple of floats (``get_config`` must be JSON-friendly, not a tensor)."""
    values = tuple(float(v) for v in values)
    if any(v < 0 for v in values):
        raise ValueError(f"{what} must be non-negative, got {list(values)}")
    return values


def _check_per_class(values, num_classes, what):
    if len(values) != num_classes:
        raise ValueError(f"{what} has {len(values)} entries but the logits have {num_classes} classes")


class SegmentationLoss(keras.losses.Loss):
    """Base class: turns ``(y_true, y_pred)`` into int labels, a validity mask and float32 logits.

    Subclasses implement :meth:`compute`. ``per_class_params`` names the arguments that hold one value per class,
    so that :func:`kseg.losses.build_loss` can check them against ``num_classes``.

    Args:
        ignore_index: label value excluded from the loss; ``None`` uses every pixel.
        name: name of the loss.
    """

    per_class_params = ()

    def __init__(self, ignore_index=255, name=None):
        super().__init__(name=name, dtype="float32")
        self.ignore_index = None if ignore_index is None else int(ignore_index)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} does not take sample_weight: weight classes with its arguments "
                "(class_weights / alpha) and exclude pixels with the ignore label"
            )
        loss = super().__call__(y_true, y_pred)
        # Keras divides a per-pixel loss by the replica count while reducing it; a scalar skips that reduction,
        # so do the same here or every replica's gradient would count in full (doubled on two replicas).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss / replicas if replicas > 1 else loss

    def call(self, y_true, y_pred):
        return self.compute(*self._prepare(y_true, y_pred))

    def _prepare(self, y_true, y_pred):
        logits = tf.cast(y_pred, tf.float32)
        labels = tf.cast(y_true, tf.int32)
        if labels.shape.rank == logits.shape.rank:
            labels = tf.squeeze(labels, axis=-1)
        if self.ignore_index is None:
            valid = tf.ones_like(labels, dtype=tf.bool)
        else:
            valid = tf.not_equal(labels, self.ignore_index)
        # Any in-range id keeps the gathers and one-hots defined at ignored pixels; their terms are masked out.
        return tf.where(valid, labels, 0), valid, logits

    def compute(self, labels, valid, logits):
        """The loss from ``labels`` (B, H, W) int32 (0 at ignored pixels), ``valid`` (B, H, W) bool, float32 logits."""
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "ignore_index": self.ignore_index}


@keras.saving.register_keras_serializable(package="kseg")
class CrossEntropyLoss(SegmentationLoss):
    """Softmax cross-entropy averaged over non-ignored pixels, with optional class weights.

    Weights follow PyTorch's ``CrossEntropyLoss(weight=w, ignore_index=i, reduction="mean")``: each pixel's term is
    scaled by the weight of its true class and the sum is divided by the summed weights of the non-ignored pixels,
    ``sum_i w[y_i] * nll_i / sum_i w[y_i]``, so the value stays on the scale of an unweighted mean.
    (Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.)

    Args:
        class_weights: optional non-negative weight per class, e.g. inverse class frequencies.
        ignore_index: label value excluded from the loss.
        name: name of the loss.

    Example:
        >>> loss = CrossEntropyLoss(class_weights=[0.2, 1.0, 1.0])
        >>> model.compile(optimizer="adam", loss=loss)  # doctest: +SKIP
    """

    per_class_params = ("class_weights",)

    def __init__(self, class_weights=None, ignore_index=255, name="cross_entropy"):
        super().__init__(ignore_index=ignore_index, name=name)
        self.class_weights = None if class_weights is None else _as_tuple(class_weights, "class_weights")

    def compute(self, labels, valid, logits):
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        weights = tf.cast(valid, tf.float32)
        if self.class_weights is not None:
            _check_per_class(self.class_weights, logits.shape[-1], "class_weights")
            weights *= tf.gather(tf.constant(self.class_weights, tf.float32), labels)
        # divide_no_nan also has a zero gradient when every pixel is ignored.
        return tf.math.divide_no_nan(tf.reduce_sum(weights * nll), tf.reduce_sum(weights))

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="kseg")
class DistillationLoss(keras.losses.Loss):
    """Per-pixel KL divergence from a teacher's class distribution to the student's, averaged over pixels.

    Hinton et al., "Distilling the Knowledge in a Neural Network", arXiv 1503.02531; as the target of
    quantization-aware training and pruning, Polino et al., "Model compression via distillation and quantization",
    ICLR 2018 (arXiv 1802.05668). ``y_true`` holds the teacher's logits, ``y_pred`` the student's, both
    ``(B, ..., C)``; one channel is read as a sigmoid logit. No ignore label: the teacher has an answer for every
    pixel. The value is 0 when the two agree, so it reads as the distance left to the teacher.

    Args:
        temperature: both distributions are softened by it; the gradient is scaled by its square, as in the paper.
        name: name of the loss.

    Example:
        >>> loss = DistillationLoss()
        >>> student.compile(optimizer="adam", loss=loss)  # doctest: +SKIP
        >>> student.fit(images.map(lambda x: (x, teacher(x))))  # doctest: +SKIP
    """

    def __init__(self, temperature=1.0, name="distillation"):
        super().__init__(name=name, dtype="float32")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        teacher = tf.cast(y_true, tf.float32) / self.temperature
        student = tf.cast(y_pred, tf.float32) / self.temperature
        if teacher.shape[-1] == 1:  # a sigmoid logit: the two-class softmax of (0, logit)
            teacher, student = (tf.concat([tf.zeros_like(t), t], -1) for t in (teacher, student))
        log_t, log_s = tf.nn.log_softmax(teacher), tf.nn.log_softmax(student)
        kl = tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1)
        return tf.reduce_mean(kl) * self.temperature ** 2

    def get_config(self):
        return {"name": self.name, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="kseg")
class FocalLoss(SegmentationLoss):
    """Softmax focal loss ``-alpha_t (1 - p_t)**gamma log p_t``, averaged over non-ignored pixels.

    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017. ``gamma`` down-weights pixels that are already
    well classified; with ``gamma=0`` and no ``alpha`` this is exactly :class:`CrossEntropyLoss`.

    Args:
        gamma: focusing parameter, >= 0.
        alpha: class balance. ``None``: no weighting. A float ``a``: the paper's binary weighting carried over to
            softmax, ``1 - a`` for class 0 (background) and ``a`` for every other class (``a=0.25`` is the paper's
            setting). A sequence: one weight per class. The mean is over pixels, not over weights (as in the paper).
        ignore_index: label value excluded from the loss.
        name: name of the loss.
    """

    per_class_params = ("alpha",)

    def __init__(self, gamma=2.0, alpha=None, ignore_index=255, name="focal"):
        super().__init__(ignore_index=ignore_index, name=name)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        if alpha is None or isinstance(alpha, (int, float)):
            if alpha is not None and not 0 <= alpha <= 1:
                raise ValueError(f"a scalar alpha must lie in [0, 1], got {alpha}")
            self.alpha = None if alpha is None else float(alpha)
        else:
            self.alpha = _as_tuple(alpha, "alpha")

    def compute(self, labels, valid, logits):
        log_p_t = tf.gather(tf.nn.log_softmax(logits), labels, batch_dims=labels.shape.rank)
        # expm1 keeps 1 - p_t accurate near p_t = 1; the floor keeps the pow's gradient finite for gamma < 1.
        modulator = tf.pow(tf.maximum(-tf.math.expm1(log_p_t), 1e-12), self.gamma)
        terms = -modulator * log_p_t
        if self.alpha is not None:
            num_classes = logits.shape[-1]
            if isinstance(self.alpha, float):
                alpha = [1.0 - self.alpha] + [self.alpha] * (num_classes - 1)
            else:
                _check_per_class(self.alpha, num_classes, "alpha")
                alpha = self.alpha
            terms *= tf.gather(tf.constant(alpha, tf.float32), labels)
        weights = tf.cast(valid, tf.float32)
        return tf.math.divide_no_nan(tf.reduce_sum(weights * terms), tf.reduce_sum(weights))

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha}


class _OverlapLoss(SegmentationLoss):
    """Base of the soft-overlap losses: ``1 - mean_c score(TP_c, FP_c, FN_c)`` from softmax probabilities.

    Soft counts are summed over the whole batch per class, ignored pixels excluded. A class with nothing to count
    (all three counts zero, possible with ``smooth=0``) scores 1: there is nothing to get wrong.
    """

    def __init__(self, smooth=1.0, include_background=True, ignore_index=255, name=None):
        super().__init__(ignore_index=ignore_index, name=name)
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def compute(self, labels, valid, logits):
        mask = tf.cast(valid, tf.float32)[..., tf.newaxis]
        probs = tf.nn.softmax(logits) * mask
        truth = tf.one_hot(labels, logits.shape[-1], dtype=tf.float32) * mask
        # Every axis but the classes: (B, H, W) images and (B, D, H, W) volumes alike.
        axes = list(range(logits.shape.rank - 1))
        tp = tf.reduce_sum(probs * truth, axis=axes)
        fp = tf.reduce_sum(probs, axis=axes) - tp
        fn = tf.reduce_sum(truth, axis=axes) - tp
        if not self.include_background:
            tp, fp, fn = tp[1:], fp[1:], fn[1:]
        num, den = self.score_terms(tp, fp, fn)
        score = tf.where(den > 0, tf.math.divide_no_nan(num, den), 1.0)
        return 1.0 - tf.reduce_mean(score)

    def score_terms(self, tp, fp, fn):
        """Numerator and denominator of the per-class score."""
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "include_background": self.include_background}


@keras.saving.register_keras_serializable(package="kseg")
class DiceLoss(_OverlapLoss):
    """Soft multi-class Dice loss ``1 - mean_c (2 TP_c + s) / (2 TP_c + FP_c + FN_c + s)``.

    Milletari et al., "V-Net", 3DV 2016 (soft Dice on probabilities), in its per-class, batch-summed form (Sudre et
    al., "Generalised Dice overlap as a deep learning loss function", DLMIA 2017), with ``TP = sum p g``,
    ``FP = sum p (1 - g)`` and ``FN = sum (1 - p) g`` over the batch.

    Args:
        smooth: additive smoothing ``s`` of numerator and denominator.
        include_background: whether class 0 takes part in the mean.
        ignore_index: label value excluded from the loss.
        name: name of the loss.
    """

    def __init__(self, smooth=1.0, include_background=True, ignore_index=255, name="dice"):
        super().__init__(smooth=smooth, include_background=include_background, ignore_index=ignore_index, name=name)

    def score_terms(self, tp, fp, fn):
        return 2 * tp + self.smooth, 2 * tp + fp + fn + self.smooth


@keras.saving.register_keras_serializable(package="kseg")
class TverskyLoss(_OverlapLoss):
    """Tversky loss ``1 - mean_c (TP_c + s) / (TP_c + alpha FP_c + beta FN_c + s)``.

    Salehi et al., "Tversky loss function for image segmentation using 3D fully convolutional deep networks",
    MLMI 2017. ``beta > alpha`` penalises missed pixels more than false alarms (better recall on small
    structures); ``alpha = beta = 0.5`` gives Dice.

    Args:
        alpha: weight of false positives.
        beta: weight of false negatives.
        smooth: additive smoothing ``s``.
        include_background: whether class 0 takes part in the mean.
        ignore_index: label value excluded from the loss.
        name: name of the loss.
    """

    def __init__(self, alpha=0.3, beta=0.7, smooth=1.0, include_background=True, ignore_index=255, name="tversky"):
        super().__init__(smooth=smooth, include_background=include_background, ignore_index=ignore_index, name=name)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def score_terms(self, tp, fp, fn):
        return tp + self.smooth, tp + self.alpha * fp + self.beta * fn + self.smooth

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package="kseg")
class LovaszSoftmaxLoss(SegmentationLoss):
    """Lovasz-softmax loss: a convex surrogate of the per-class Jaccard loss (1 - IoU).

    Berman et al., "The Lovasz-Softmax loss: A tractable surrogate for the optimization of the intersection-over-union
    measure in neural networks", CVPR 2018. Per class, pixel errors ``|g - p_c|`` are sorted in decreasing order and
    dotted with the increments of the Jaccard loss along that order (the Lovasz extension).

    Ignored pixels are not removed (that would make shapes dynamic): their error is set below every real error so the
    sort puts them last, where the Jaccard increments are zero, and their contribution is clamped to zero.

    Args:
        per_image: average the loss over images (skipping images with no scored pixel) instead of computing it on
            the whole batch as one image.
        classes: ``"present"`` averages over classes that occur in the labels (the paper's default), ``"all"`` over
            every class.
        ignore_index: label value excluded from the loss.
        name: name of the loss.
    """

    def __init__(self, per_image=False, classes="present", ignore_index=255, name="lovasz"):
        super().__init__(ignore_index=ignore_index, name=name)
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
        self.per_image = bool(per_image)
        self.classes = classes

    def compute(self, labels, valid, logits):
        num_classes = logits.shape[-1]
        groups = [tf.shape(labels)[0], -1] if self.per_image else [1, -1]
        valid = tf.reshape(valid, groups)
        probs = tf.reshape(tf.nn.softmax(logits), groups + [num_classes])
        truth = tf.one_hot(tf.reshape(labels, groups), num_classes) * tf.cast(valid, tf.float32)[..., tf.newaxis]
        # (groups, classes, pixels): one sort per group and class.
        truth = tf.transpose(truth, (0, 2, 1))
        errors = tf.where(valid[:, tf.newaxis, :], tf.abs(truth - tf.transpose(probs, (0, 2, 1))), -1.0)
        # A static k where the shape is known: XLA needs a compile-time sort length.
        num_pixels = errors.shape[-1] if errors.shape[-1] is not None else tf.shape(errors)[-1]
        errors_sorted, order = tf.math.top_k(errors, k=num_pixels)
        truth_sorted = tf.gather(truth, order, batch_dims=2)
        positives = tf.reduce_sum(truth_sorted, axis=-1, keepdims=True)
        intersection = positives - tf.cumsum(truth_sorted, axis=-1)
        union = positives + tf.cumsum(1.0 - truth_sorted, axis=-1)
        jaccard = 1.0 - tf.math.divide_no_nan(intersection, union)
        increments = tf.concat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)
        per_class = tf.reduce_sum(tf.maximum(errors_sorted, 0.0) * increments, axis=-1)
        scored = tf.reduce_any(valid, axis=1, keepdims=True)
        if self.classes == "present":
            counted = tf.cast(positives[..., 0] > 0, tf.float32)
        else:
            counted = tf.cast(tf.broadcast_to(scored, tf.shape(per_class)), tf.float32)
        per_group = tf.math.divide_no_nan(tf.reduce_sum(per_class * counted, -1), tf.reduce_sum(counted, -1))
        scored = tf.cast(scored[:, 0], tf.float32)
        return tf.math.divide_no_nan(tf.reduce_sum(per_group * scored), tf.reduce_sum(scored))

    def get_config(self):
        return {**super().get_config(), "per_image": self.per_image, "classes": self.classes}
