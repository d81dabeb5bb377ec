"""CRF-as-RNN: Zheng, Jayasumana, Romera-Paredes, Vineet, Su, Du, Huang and Torr, "Conditional Random Fields as
Recurrent Neural Networks", ICCV 2015, arXiv 1502.03240.

Mean-field inference in a CRF with a spatial Gaussian and a bilateral (position + RGB) kernel, unrolled for a fixed
number of iterations on the network's logits (the unary) and the raw image, so that the kernel weights (one per
class and kernel) and the ``C x C`` label compatibility (initialised to Potts, ``mu(l, l') = [l != l']``) train
end to end with the network; the kernel widths theta are fixed, as in the paper. The iteration itself is
``kseg.postprocess.crf.mean_field``, shared with the dense-CRF refiner, with its approximation: messages from a
truncated ``window x window`` neighbourhood (optionally dilated, optionally on a downsampled grid), the local
window of ConvCRF (Teichmann and Cipolla, BMVC 2019, arXiv 1805.04777), instead of the permutohedral lattice, whose
scatter/gather ops do not convert to builtin TFLite ops. Cost per 512x512 image, 5 iterations, window 7, on top of
the base network (``benchmarks/crf.py --timing``, 2-core CPU shared with other jobs at load average 8-9): 2 classes
3.4 s at full resolution, 0.36 s with ``downsample=4``; 21 classes 1.3 s with ``downsample=4``.

Every op of the layer is builtin in TFLite (PAD, STRIDED_SLICE, MUL, ADD, SUB, SQUARED_DIFFERENCE, EXP, SUM, DIV,
SOFTMAX, CONV_2D; AVERAGE_POOL_2D and RESIZE_BILINEAR with ``downsample``). It is written once with TensorFlow ops
and built for Keras 3 and for tf_keras by ``crf_rnn_layer_class``.

Example:
    >>> import numpy as np
    >>> from kseg.models.crf import CrfRnn
    >>> layer = CrfRnn(num_classes=2, iterations=5, window=7)
    >>> logits = layer([np.zeros((1, 16, 16, 2), np.float32), np.zeros((1, 16, 16, 3), np.float32)])
    >>> tuple(logits.shape), [w.name for w in layer.weights]
    ((1, 16, 16, 2), ['spatial_weight', 'bilateral_weight', 'compatibility'])
"""

import numpy as np

from kseg.models.blocks import check_input_shape, get_keras
from kseg.models.deeplab import deeplabv1
from kseg.models.fcn import fcn8s
from kseg.models.registry import register_model
from kseg.postprocess.crf import THETA_ALPHA, THETA_BETA, THETA_GAMMA, check_crf_arguments, mean_field

BASES = {"fcn8s": fcn8s, "deeplabv1": deeplabv1}
_LAYER_CLASSES = {}


def crf_rnn_layer_class(keras_module=None):
    """The ``CrfRnn`` layer class for ``keras_module`` (Keras 3 by default, or ``tf_keras``), created once per
    module from the same definition and registered serializable as ``kseg>CrfRnn`` in that module.

    ``CrfRnn(num_classes, ...)([logits, image])`` returns refined logits; its weights (in this order):
    ``spatial_weight`` ``(C,)``, ``bilateral_weight`` ``(C,)`` and ``compatibility`` ``(C, C)``. Importing
    ``kseg.models`` creates the Keras 3 class, so ``.keras`` files load without custom objects; a tf_keras model
    file needs ``crf_rnn_layer_class(tf_keras)`` called first (building the twin does it).
    """
    K = get_keras(keras_module)
    if K.__name__ not in _LAYER_CLASSES:
        _LAYER_CLASSES[K.__name__] = _make_layer_class(K)
    return _LAYER_CLASSES[K.__name__]


def _make_layer_class(K):

    @K.saving.register_keras_serializable(package="kseg")
    class CrfRnn(K.layers.Layer):
        """Mean-field CRF (CRF-as-RNN) on ``[logits (B, H, W, C), image (B, H, W, 3) in [0, 255]]`` ->
        refined logits; see ``kseg.models.crf``. Compute it in float32 (``dtype="float32"``)."""

        def __init__(self, num_classes, iterations=5, window=7, dilation=1, downsample=1, theta_alpha=THETA_ALPHA,
                     theta_beta=THETA_BETA, theta_gamma=THETA_GAMMA, spatial_weight=3.0, bilateral_weight=5.0,
                     **kwargs):
            super().__init__(**kwargs)
            check_crf_arguments(iterations, window, dilation, downsample)
            self.num_classes = int(num_classes)
            self.iterations, self.window, self.dilation, self.downsample = iterations, window, dilation, downsample
            self.theta_alpha, self.theta_beta, self.theta_gamma = theta_alpha, theta_beta, theta_gamma
            self.initial_weights = (float(spatial_weight), float(bilateral_weight))

        def build(self, input_shape):
            c = self.num_classes
            self.spatial_weight = self.add_weight(
                name="spatial_weight", shape=(c,), initializer=K.initializers.Constant(self.initial_weights[0]))
            self.bilateral_weight = self.add_weight(
                name="bilateral_weight", shape=(c,), initializer=K.initializers.Constant(self.initial_weights[1]))
            self.compatibility = self.add_weight(
                name="compatibility", shape=(c, c),
                initializer=K.initializers.Constant(1.0 - np.eye(c, dtype=np.float32)))
            super().build(input_shape)

        def call(self, inputs):
            unary, image = inputs
            return mean_field(unary, image, self.spatial_weight, self.bilateral_weight, self.compatibility,
                              self.iterations, self.window, self.dilation, self.downsample, self.theta_alpha,
                              self.theta_beta, self.theta_gamma)

        def compute_output_shape(self, input_shape):
            return tuple(input_shape[0])

        def get_config(self):
            return {**super().get_config(), "num_classes": self.num_classes, "iterations": self.iterations,
                    "window": self.window, "dilation": self.dilation, "downsample": self.downsample,
                    "theta_alpha": self.theta_alpha, "theta_beta": self.theta_beta, "theta_gamma": self.theta_gamma,
                    "spatial_weight": self.initial_weights[0], "bilateral_weight": self.initial_weights[1]}

    return CrfRnn


CrfRnn = crf_rnn_layer_class()


@register_model
def crfasrnn(num_classes, input_shape=(512, 512, 3), base="fcn8s", backbone="vgg16", iterations=5, window=7,
             dilation=1, downsample=1, theta_alpha=THETA_ALPHA, theta_beta=THETA_BETA, theta_gamma=THETA_GAMMA,
             spatial_weight=3.0, bilateral_weight=5.0, base_kwargs=None, weights=None, keras_module=None,
             name="crfasrnn", backbone_kwargs=None):
    """CRF-as-RNN: a segmentation network whose upsampled logits and the raw image feed a ``CrfRnn`` layer
    (``{name}_crf``), trained end to end.

    The base network is built by the registered ``fcn8s`` (the paper's) or ``deeplabv1`` builder with the same
    ``name``, so its layers are ``{name}_fc6``, ``{name}_score_fr``, ... and its weights transfer by name from a
    trained base built with ``name="crfasrnn"``.

    Deviations from the paper: the truncated-window message passing of ConvCRF instead of the permutohedral
    lattice (see ``kseg.postprocess.crf``; the kernels reach ``(window // 2) * dilation * downsample``
    pixels); one weight per class and kernel (the paper's Caffe layer learns a ``C x C`` matrix per kernel); the
    base's own deviations (``kseg.models.fcn``); trained in one stage or fine-tuned from a trained base (the paper
    trained FCN-8s first, then the whole with the CRF, 10 iterations at test time).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by the base's stride (32 for
            fcn8s, 8 for deeplabv1) and by ``downsample``.
        base: ``"fcn8s"`` or ``"deeplabv1"``.
        backbone: the base's backbone (any name from ``list_backbones()``).
        iterations: mean-field iterations (5 in the paper's training).
        window: side of the message-passing neighbourhood (odd, >= 3).
        dilation: spacing of the neighbours in (downsampled) pixels.
        downsample: messages on a grid ``downsample`` times coarser (ConvCRF's "blur").
        theta_alpha, theta_beta, theta_gamma: kernel widths (bilateral position, bilateral colour, spatial).
        spatial_weight, bilateral_weight: initial kernel weights of every class (3 and 5 in the paper's Caffe
            model, for a trained base; smaller ones let a randomly initialised base train: the CRF then amplifies
            its noise less).
        base_kwargs: extra base-builder arguments, e.g. ``{"fc_filters": 1024, "dropout": 0.5}``.
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("crfasrnn", num_classes=21, input_shape=(512, 512, 3), downsample=4)
        >>> tuple(model.output.shape)
        (None, 512, 512, 21)
    """
    K = get_keras(keras_module)
    if base not in BASES:
        raise ValueError(f"base must be one of {sorted(BASES)}, got {base!r}")
    check_crf_arguments(iterations, window, dilation, downsample)
    check_input_shape(input_shape, downsample, f"downsample={downsample}")
    base_model = BASES[base](num_classes, input_shape=input_shape, backbone=backbone, weights=weights,
                             keras_module=K, name=name, backbone_kwargs=backbone_kwargs, **(base_kwargs or {}))
    crf = crf_rnn_layer_class(K)(num_classes, iterations=iterations, window=window, dilation=dilation,
                                 downsample=downsample, theta_alpha=theta_alpha, theta_beta=theta_beta,
                                 theta_gamma=theta_gamma, spatial_weight=spatial_weight,
                                 bilateral_weight=bilateral_weight, dtype="float32", name=f"{name}_crf")
    outputs = crf([base_model.output, base_model.input])
    return K.Model(base_model.input, outputs, name=name)
