"""FCN-32s, FCN-16s and FCN-8s: Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015, arXiv 1411.4038."""

import numpy as np

from kseg.models.backbones import build_backbone
from kseg.models.blocks import check_input_shape, conv_bn_relu, get_keras, logits_head, upsample_logits
from kseg.models.registry import register_model


@register_model
def fcn32s(num_classes, input_shape=(512, 512, 3), backbone="vgg16", fc_filters=4096, dropout=0.5,
           batch_norm=False, weights=None, keras_module=None, name="fcn32s", backbone_kwargs=None):
    """FCN-32s: the backbone's stride-32 features, fc6/fc7 as convolutions, a 1x1 score layer, and one 32x
    bilinear upsampling of the scores (no skips). See ``fcn8s`` for the arguments and deviations.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("fcn32s", num_classes=21, input_shape=(512, 512, 3))
        >>> tuple(model.output.shape)
        (None, 512, 512, 21)
    """
    return _fcn(num_classes, input_shape, backbone, fc_filters, dropout, batch_norm, weights, keras_module, name,
                backbone_kwargs, skips=0)


@register_model
def fcn16s(num_classes, input_shape=(512, 512, 3), backbone="vgg16", fc_filters=4096, dropout=0.5,
           batch_norm=False, weights=None, keras_module=None, name="fcn16s", backbone_kwargs=None):
    """FCN-16s: FCN-32s whose scores are upsampled 2x by a learned transposed conv and summed with a score of the
    stride-16 features (``P4``) before a 16x bilinear upsampling. See ``fcn8s`` for the arguments and deviations.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("fcn16s", num_classes=21, input_shape=(512, 512, 3))
        >>> tuple(model.output.shape)
        (None, 512, 512, 21)
    """
    return _fcn(num_classes, input_shape, backbone, fc_filters, dropout, batch_norm, weights, keras_module, name,
                backbone_kwargs, skips=1)


@register_model
def fcn8s(num_classes, input_shape=(512, 512, 3), backbone="vgg16", fc_filters=4096, dropout=0.5,
          batch_norm=False, weights=None, keras_module=None, name="fcn8s", backbone_kwargs=None):
    """FCN-8s: FCN-16s with one more skip, a score of the stride-8 features (``P3``), and an 8x final upsampling.

    The network: backbone features at stride 32 (``P5``, ``block5_pool`` for VGG16) -> fc6 as a 7x7 conv ->
    ReLU -> dropout -> fc7 as a 1x1 conv -> ReLU -> dropout -> 1x1 score conv (``{name}_score_fr``). Each skip
    upsamples the running scores 2x with a ``Conv2DTranspose`` (4x4, stride 2, no bias) initialised to bilinear
    interpolation and learned (``{name}_upscore_p4``, ``{name}_upscore_p3``), and adds a 1x1 score of the skip
    features (``{name}_score_p4``, ``{name}_score_p3``), zero-initialised as in the paper so that training starts
    from the coarser net's prediction. The last upsampling to the input size is fixed bilinear interpolation, as
    the paper's final deconvolution was.

    Deviations from the paper:

    * The skips tap the backbone contract's ``P4``/``P3``, the last features at strides 16/8: ``block5_conv3`` and
      ``block4_conv3`` for VGG16, where the paper tapped ``pool4`` and ``pool3`` (the inputs of those blocks).
    * "same" padding everywhere and H, W divisible by 32, instead of the paper's 100-pixel input padding and
      cropping offsets; so the 2x upsamplings meet the skip features exactly.
    * fc6/fc7 start from random weights: ``keras.applications`` has no convolutionalised VGG16 classifier (the
      paper initialised them from VGG16's fully connected layers); ``weights`` loads the backbone only.
    * Trained at once, not in the paper's stages (FCN-32s, then 16s, then 8s, each from the previous).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by 32.
        backbone: ``"vgg16"`` (the paper) or any name from ``list_backbones()``.
        fc_filters: filters of fc6 and fc7 (4096 in the paper, i.e. VGG16's fully connected layers).
        dropout: dropout rate after fc6 and after fc7 (0.5 in the paper).
        batch_norm: BatchNormalization in fc6 and fc7 (Conv -> BN -> ReLU); the paper had none.
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("fcn8s", num_classes=21, input_shape=(512, 512, 3))
        >>> tuple(model.output.shape)
        (None, 512, 512, 21)
    """
    return _fcn(num_classes, input_shape, backbone, fc_filters, dropout, batch_norm, weights, keras_module, name,
                backbone_kwargs, skips=2)


def _fcn(num_classes, input_shape, backbone, fc_filters, dropout, batch_norm, weights, keras_module, name,
         backbone_kwargs, skips):
    """The FCN with ``skips`` skip connections (0: FCN-32s, 1: FCN-16s, 2: FCN-8s)."""
    K = get_keras(keras_module)
    if not isinstance(fc_filters, int) or fc_filters < 1:
        raise ValueError(f"fc_filters must be a positive integer, got {fc_filters!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    check_input_shape(input_shape, 32, "the backbone downsamples them 32x")

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, keras_module=K, **(backbone_kwargs or {}))
    x = features["P5"]
    for layer, kernel_size in (("fc6", 7), ("fc7", 1)):
        x = conv_bn_relu(K, x, fc_filters, kernel_size, f"{name}_{layer}", batch_norm=batch_norm)
        if dropout:
            x = K.layers.Dropout(dropout, name=f"{name}_{layer}_dropout")(x)
    x = logits_head(K, x, num_classes, f"{name}_score_fr")

    upscores = []
    for level in (4, 3)[:skips]:
        up = K.layers.Conv2DTranspose(num_classes, 4, strides=2, padding="same", use_bias=False, dtype="float32",
                                      name=f"{name}_upscore_p{level}")
        x = up(x)
        upscores.append(up)
        # zero init: the new skip adds nothing at first, so training starts from the coarser net (paper, sec. 4.2)
        score = K.layers.Conv2D(num_classes, 1, kernel_initializer="zeros", dtype="float32",
                                name=f"{name}_score_p{level}")(features[f"P{level}"])
        x = K.layers.Add(dtype="float32", name=f"{name}_fuse_p{level}")([x, score])
    outputs = upsample_logits(K, x, 32 // 2**skips, f"{name}_upsample")
    model = K.Model(inputs, outputs, name=name)
    for up in upscores:
        up.set_weights([bilinear_kernel(4, num_classes)])
    return model


def bilinear_kernel(size, channels):
    """``(size, size, channels, channels)`` transposed-conv kernel that upsamples each channel separately by
    bilinear interpolation (factor ``(size + 1) // 2``). With ``size = 2 * factor`` and "same" padding it equals
    half-pixel bilinear resizing away from the border (zero padding darkens the outermost output pixels)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(size) - center) / factor
    kernel = np.zeros((size, size, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(taps, taps)[:, :, None]
    return kernel
