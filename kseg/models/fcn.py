"""FCN-32s, FCN-16s and FCN-8s: Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015, arXiv 1411.4038."""

import os

import numpy as np

from kseg.errors import ModelFileError
from kseg.models.backbones import build_backbone, read_named_weights
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
    * fc6/fc7 come from VGG16's fully connected layers only when ``weights`` is a local VGG16 file *with* its
      classifier (``fc1``/``fc2``, see ``load_vgg16_classifier``); otherwise (``"imagenet"``, which downloads the
      file without the top, or a file without the top) they start from random weights.
    * Trained at once, not in the paper's stages (FCN-32s, then 16s, then 8s, each from the previous).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by 32.
        backbone: ``"vgg16"`` (the paper) or any name from ``list_backbones()``.
        fc_filters: filters of fc6 and fc7 (4096 in the paper, i.e. VGG16's fully connected layers).
        dropout: dropout rate after fc6 and after fc7 (0.5 in the paper).
        batch_norm: BatchNormalization in fc6 and fc7 (Conv -> BN -> ReLU); the paper had none.
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path. A VGG16 file with the top
            (``keras.applications.VGG16(include_top=True)``'s, e.g. ``~/.keras/models/
            vgg16_weights_tf_dim_ordering_tf_kernels.h5``) also fills fc6 and fc7, the paper's
            convolutionalisation: fc6 = ``fc1``'s kernel reshaped to 7x7x512x4096, fc7 = ``fc2``'s to 1x1x4096x4096
            (needs ``fc_filters=4096`` and ``batch_norm=False``, else ``ModelFileError``).
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
    if backbone == "vgg16":
        load_vgg16_classifier(model, weights, name, subsample=False)
    return model


def load_vgg16_classifier(model, weights, prefix, subsample):
    """Fill the conv layers ``{prefix}_fc6`` / ``{prefix}_fc7`` from VGG16's fully connected ``fc1`` / ``fc2``.

    "Convolutionalization" (Long et al., FCN, section 3.1): ``fc1`` (25088 -> 4096) reads the flattened 7x7x512
    ``block5_pool`` in Keras' channels-last order, so its kernel reshaped to (7, 7, 512, 4096) is a 7x7 conv that
    gives, on every 7x7 window, the dense layer's output on that window; ``fc2`` (4096 -> 4096) is a 1x1 conv.
    With ``subsample`` (DeepLab v1, Chen et al., ICLR 2015, arXiv 1412.7062, sections 3.1 and 4.1: the first FC
    layer spatially subsampled by simple decimation, to 3x3 at input stride 12 for LargeFOV, and 1024 instead
    of 4096 filters in fc6 and fc7) the 7x7 taps are decimated to fc6's k x k (every 3rd tap for 3x3: rows and
    columns 0, 3, 6) and the filters of fc6 and fc7 (and fc7's inputs) to every (4096 / fc_filters)-th. The
    paper does not say which filters it kept; every 4th is the decimation of the reduced VGG16 ("VGG16-20M")
    of ParseNet and SSD. On a 7x7 window, the decimated fc6 at dilation 3 equals ``fc1`` on the taps it keeps
    (the others zero), restricted to the kept filters.

    Does nothing unless ``weights`` is a local file holding ``fc1`` (a file without the top, ``"imagenet"`` or
    ``None`` leave fc6/fc7 as built): a legacy ``.h5`` (the keras.applications download), or a Keras 3
    ``.weights.h5`` with layer-named groups or saved from ``VGG16(include_top=True)`` (``dense``, ``dense_1``).

    Args:
        model: the built model, with layers ``{prefix}_fc6`` (k x k conv on the backbone's last features) and
            ``{prefix}_fc7`` (1x1 conv).
        weights: the builder's ``weights`` argument.
        prefix: the model's layer-name prefix.
        subsample: decimate to fc6's kernel size and filter count (DeepLab v1); else they must match exactly.

    Returns:
        True when fc6/fc7 were loaded.

    Raises:
        ModelFileError: the file has ``fc1`` but not ``fc2``, or shapes that do not fit fc6/fc7 (the message says
            which builder argument to change).

    Example:
        >>> import kseg
        >>> model = kseg.create_model("fcn32s", num_classes=21, input_shape=(224, 224, 3),  # doctest: +SKIP
        ...                           weights="vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    """
    if weights is None or weights == "imagenet":
        return False
    path = os.fspath(weights)
    stored = read_named_weights(path, layers=("fc1", "fc2", "dense", "dense_1"))
    if "fc1" not in stored and path.endswith(".weights.h5"):
        # Keras 3 names an application's groups by class in layer order: VGG16's fc1, fc2 are dense, dense_1
        stored = {new: stored[old] for old, new in (("dense", "fc1"), ("dense_1", "fc2")) if old in stored}
    if "fc1" not in stored:
        return False
    fc6, fc7 = model.get_layer(f"{prefix}_fc6"), model.get_layer(f"{prefix}_fc7")
    hint = "or pass a VGG16 weights file without the classifier (include_top=False) to load the backbone only"
    if "fc2" not in stored or len(stored["fc1"]) != 2 or len(stored["fc2"]) != 2:
        shapes = {layer: [a.shape for a in arrays] for layer, arrays in stored.items()}
        raise ModelFileError(f"{path}: VGG16's classifier needs fc1 and fc2, each a kernel and a bias; found "
                             f"{shapes}")
    (w6, b6), (w7, b7) = stored["fc1"], stored["fc2"]
    k, _, channels, filters = fc6.get_weights()[0].shape
    width = w6.shape[-1]
    window = int(round((w6.shape[0] / channels) ** 0.5)) if w6.ndim == 2 else 0
    if window * window * channels != w6.shape[0] or w7.shape != (width, width) or b6.shape != (width,):
        raise ModelFileError(f"{path}: fc1 {w6.shape} and fc2 {w7.shape} are not VGG16's classifier on a "
                             f"flattened window of the backbone's last features (a square x square x {channels} "
                             f"window -> n, then n -> n); {hint}")
    if not (fc6.use_bias and fc7.use_bias):
        raise ModelFileError(f"{path} holds VGG16's fc1/fc2, which have biases, but {prefix}_fc6/fc7 are built "
                             f"with batch_norm=True (no bias): build with batch_norm=False {hint}")
    if subsample:
        if not 1 < k <= window or (window - 1) % (k - 1) or width % filters:
            raise ModelFileError(f"{path}: cannot decimate fc1 ({window}x{window}x{channels} -> {width}) to "
                                 f"{prefix}_fc6 ({k}x{k}x{channels} -> {filters}): (window - 1) must be a multiple "
                                 f"of (kernel - 1) and {width} of fc_filters; use fc_filters dividing {width}, "
                                 f"{hint}")
        tap, every = (window - 1) // (k - 1), width // filters
    elif (k, filters) != (window, width):
        raise ModelFileError(f"{path}: fc1 is a {window}x{window}x{channels} -> {width} classifier but "
                             f"{prefix}_fc6 is {k}x{k}x{channels} -> {filters}: build with fc_filters={width}, "
                             f"{hint}")
    else:
        tap, every = 1, 1
    kernel6 = w6.reshape(window, window, channels, width)[::tap, ::tap, :, ::every]
    fc6.set_weights([kernel6, b6[::every]])
    fc7.set_weights([w7[::every, ::every].reshape(1, 1, filters, filters), b7[::every]])
    return True


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
