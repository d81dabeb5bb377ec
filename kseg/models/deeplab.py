"""DeepLab v1, v2 and v3, and the ASPP block that v3 shares with DeepLabv3+ (``kseg.models.deeplabv3plus``).

* v1: Chen, Papandreou, Kokkinos, Murphy and Yuille, "Semantic Image Segmentation with Deep Convolutional Nets and
  Fully Connected CRFs", ICLR 2015, arXiv 1412.7062.
* v2: Chen, Papandreou, Kokkinos, Murphy and Yuille, "DeepLab: Semantic Image Segmentation with Deep Convolutional
  Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017, arXiv 1606.00915.
* v3: Chen, Papandreou, Schroff and Adam, "Rethinking Atrous Convolution for Semantic Image Segmentation",
  arXiv 1706.05587.

The dense CRF post-processing of v1/v2 is not part of these networks.
"""

from kseg.models.backbones import build_backbone, check_multi_grid
from kseg.models.blocks import (check_input_shape, conv_bn_relu, get_keras, logits_head, separable_conv_bn_relu,
                                upsample_bilinear, upsample_logits)
from kseg.models.fcn import load_vgg16_classifier
from kseg.models.registry import register_model

# DeepLabv3's ASPP rates per output stride (doubled at stride 8 so that they cover the same image area).
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
OUTPUT_STRIDES = (8, 16)


@register_model
def deeplabv1(num_classes, input_shape=(512, 512, 3), backbone="vgg16", output_stride=8, fc_filters=1024,
              fc6_dilation=12, dropout=0.5, batch_norm=False, weights=None, keras_module=None, name="deeplabv1",
              backbone_kwargs=None):
    """DeepLab v1, the DeepLab-LargeFOV variant: atrous VGG16 and a small dilated fully convolutional head.

    The backbone runs at output stride 8 (VGG16: ``pool4``/``pool5`` at stride 1 as 3x3 max pooling and conv5
    dilated by 2; see ``kseg.models.backbones``). Head: fc6 as a 3x3 conv at dilation ``fc6_dilation`` (12) with
    ``fc_filters`` (1024) -> ReLU -> dropout -> fc7 as a 1x1 conv (1024) -> ReLU -> dropout -> fc8, a 1x1
    classifier; the logits are upsampled bilinearly to the input size (the paper upsampled its stride-8 scores
    bilinearly too, before the CRF).

    fc6/fc7 are initialised as in the paper when ``weights`` is a local VGG16 file with its classifier
    (``fc1``/``fc2``): VGG16's fully connected layers decimated to 3x3 taps and ``fc_filters`` filters
    (``kseg.models.fcn.load_vgg16_classifier``).

    Deviations from the paper: no fully connected CRF (a separate post-processing step); fc6/fc7 start from random
    weights with ``weights="imagenet"`` (keras.applications downloads the file without the top) or a file without
    the top; the filters kept by the decimation (every 4th of 4096) are the reduced VGG16 of ParseNet/SSD, which
    the paper's "subsample" does not spell out; VGG16's other pooling layers stay 2x2 (the paper's were 3x3,
    stride 2, padding 1).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by ``output_stride``.
        backbone: ``"vgg16"`` (the paper) or any name from ``list_backbones()``.
        output_stride: 8 (the paper) or 16.
        fc_filters: filters of fc6 and fc7 (1024 in LargeFOV).
        fc6_dilation: atrous rate of fc6 (12 in LargeFOV).
        dropout: dropout rate after fc6 and after fc7 (0.5 in the paper).
        batch_norm: BatchNormalization in fc6 and fc7 (Conv -> BN -> ReLU); the paper had none.
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path; a VGG16 file with the top also fills
            fc6/fc7 (needs ``batch_norm=False`` and ``fc_filters`` dividing 4096, else ``ModelFileError``).
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("deeplabv1", num_classes=21, input_shape=(512, 512, 3))
        >>> tuple(model.output.shape)
        (None, 512, 512, 21)
    """
    K = get_keras(keras_module)
    _check(input_shape, output_stride, dropout)
    _check_positive("fc_filters", fc_filters)
    if not isinstance(fc6_dilation, int) or fc6_dilation < 1:
        raise ValueError(f"fc6_dilation must be a positive integer, got {fc6_dilation!r}")

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, output_stride=output_stride, keras_module=K,
                              **(backbone_kwargs or {}))
    x = _fc_branch(K, features["P5"], fc_filters, fc6_dilation, dropout, batch_norm, name)
    x = logits_head(K, x, num_classes, f"{name}_fc8")
    outputs = upsample_logits(K, x, output_stride, f"{name}_upsample")
    model = K.Model(inputs, outputs, name=name)
    if backbone == "vgg16":
        load_vgg16_classifier(model, weights, name, subsample=True)
    return model


@register_model
def deeplabv2(num_classes, input_shape=(512, 512, 3), backbone="resnet50", output_stride=8, rates=(6, 12, 18, 24),
              branch_filters=1024, dropout=0.5, batch_norm=False, weights=None, keras_module=None, name="deeplabv2",
              backbone_kwargs=None):
    """DeepLab v2 with ASPP-L: parallel atrous branches whose class scores are summed.

    Each branch ``{name}_aspp{i}`` is a 3x3 conv at rate ``rates[i]`` (6/12/18/24) with ``branch_filters`` ->
    ReLU -> dropout -> 1x1 conv -> ReLU -> dropout -> 1x1 classifier (the paper's ASPP-L on VGG16, its Fig. 7);
    the four logits maps are added (``{name}_aspp_sum``) and upsampled bilinearly to the input size.

    Deviations from the paper: no fully connected CRF; ResNet50 by default (the paper's best model used
    ResNet-101; ``backbone`` takes any name from ``list_backbones()``), trained on one scale
    (the paper fused three input scales with max); for its ResNet-101 the paper used a single 3x3 atrous classifier
    per branch: ``branch_filters=None`` builds that head (``{name}_aspp{i}_logits``).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by ``output_stride``.
        backbone: ``"resnet50"`` or ``"vgg16"`` (any name from ``list_backbones()``).
        output_stride: 8 (the paper) or 16.
        rates: atrous rates of the branches (ASPP-S in the paper: 2/4/8/12).
        branch_filters: filters of the two hidden convs of each branch (1024 in the paper), or ``None`` for one
            3x3 atrous classifier per branch.
        dropout: dropout rate after the hidden convs (0.5 in the paper).
        batch_norm: BatchNormalization in the hidden convs (Conv -> BN -> ReLU); the paper had none.
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("deeplabv2", num_classes=21, input_shape=(512, 512, 3))
        >>> tuple(model.output.shape)
        (None, 512, 512, 21)
    """
    K = get_keras(keras_module)
    _check(input_shape, output_stride, dropout)
    if branch_filters is not None:
        _check_positive("branch_filters", branch_filters)
    if not rates or not all(isinstance(r, int) and r >= 1 for r in rates):
        raise ValueError(f"rates must be a non-empty sequence of positive integers, got {rates!r}")

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, output_stride=output_stride, keras_module=K,
                              **(backbone_kwargs or {}))
    branches = []
    for i, rate in enumerate(rates):
        prefix = f"{name}_aspp{i}"
        if branch_filters is None:
            branches.append(K.layers.Conv2D(num_classes, 3, padding="same", dilation_rate=rate, dtype="float32",
                                            name=f"{prefix}_logits")(features["P5"]))
        else:
            x = _fc_branch(K, features["P5"], branch_filters, rate, dropout, batch_norm, prefix)
            branches.append(logits_head(K, x, num_classes, f"{prefix}_logits"))
    x = K.layers.Add(dtype="float32", name=f"{name}_aspp_sum")(branches) if len(branches) > 1 else branches[0]
    outputs = upsample_logits(K, x, output_stride, f"{name}_upsample")
    return K.Model(inputs, outputs, name=name)


@register_model
def deeplabv3(num_classes, input_shape=(512, 512, 3), backbone="resnet50", output_stride=16, aspp_filters=256,
              dropout=0.1, multi_grid=(1, 2, 4), weights=None, keras_module=None, name="deeplabv3",
              backbone_kwargs=None):
    """DeepLab v3: a dilated backbone, ASPP with image-level features, a 1x1 classifier and bilinear upsampling.

    ASPP (``aspp``, shared with DeepLabv3+): a 1x1 conv, three 3x3 convs at rates 6/12/18 (12/24/36 at output
    stride 8) and image pooling (global average -> 1x1 conv -> resize back), each Conv -> BN -> ReLU with
    ``aspp_filters`` (256), concatenated, projected by a 1x1 conv-BN-ReLU, dropout; then a 1x1 classifier and a
    bilinear upsampling by ``output_stride`` to the input size.

    Multi-grid (sections 3.2 and 4.1): the three units of the last ResNet block (block4, Keras' ``conv5``) take
    their block's atrous rate times the unit rates ``multi_grid``, (1, 2, 4) as in the paper's ASPP model: 3x3
    rates 2, 4, 8 at output stride 16 and 4, 8, 16 at output stride 8 (``kseg.models.backbones`` defines the last
    block of the other backbones).

    Deviations from the paper: ResNet50 by default (the paper: ResNet-101); dropout after the ASPP projection
    (from the authors' released code, not in the paper); multi-grid on backbones other than ResNet is kseg's
    extension (the paper defines it for ResNet's block4).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by ``output_stride``.
        backbone: ``"resnet50"`` or ``"mobilenetv2"`` (any name from ``list_backbones()``).
        output_stride: 16 (the paper's training setting) or 8 (its best inference setting, about 4x the cost).
        aspp_filters: filters of every ASPP branch and of its projection.
        dropout: dropout rate after the ASPP projection.
        multi_grid: unit rates of the last block's units, ``(1, 2, 4)`` (the paper), or ``None`` for one rate
            per block (every 3x3 conv of the block at the block's rate).
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("deeplabv3", num_classes=21, input_shape=(512, 512, 3), output_stride=8)
        >>> tuple(model.output.shape)
        (None, 512, 512, 21)
    """
    K = get_keras(keras_module)
    _check(input_shape, output_stride, dropout)
    _check_positive("aspp_filters", aspp_filters)
    check_multi_grid(multi_grid)

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, output_stride=output_stride, keras_module=K,
                              multi_grid=multi_grid, **(backbone_kwargs or {}))
    x = aspp(K, features["P5"], aspp_filters, ATROUS_RATES[output_stride], dropout, f"{name}_aspp")
    x = logits_head(K, x, num_classes, f"{name}_logits")
    outputs = upsample_logits(K, x, output_stride, f"{name}_upsample")
    return K.Model(inputs, outputs, name=name)


def aspp(K, x, filters, rates, dropout, prefix, separable=False):
    """Atrous spatial pyramid pooling with an image-pooling branch (DeepLabv3, section 3.3).

    Layers: ``{prefix}_conv0`` (1x1), ``{prefix}_conv{i}`` (3x3 at ``rates[i - 1]``; depthwise-separable with
    ``separable``, as in DeepLabv3+), ``{prefix}_pool`` -> ``{prefix}_pool_conv`` -> ``{prefix}_pool_upsample``,
    ``{prefix}_concat``, ``{prefix}_project`` and ``{prefix}_dropout``; every conv is Conv -> BN -> ReLU with
    ``filters``.
    """
    height, width = int(x.shape[1]), int(x.shape[2])
    branches = [conv_bn_relu(K, x, filters, 1, f"{prefix}_conv0")]
    conv = separable_conv_bn_relu if separable else conv_bn_relu
    for i, rate in enumerate(rates, start=1):
        branches.append(conv(K, x, filters, 3, f"{prefix}_conv{i}", dilation_rate=rate))
    pooled = K.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_pool")(x)
    pooled = conv_bn_relu(K, pooled, filters, 1, f"{prefix}_pool_conv")
    # A static-size resize of a 1x1 map is a broadcast: one RESIZE_BILINEAR in TFLite, no TILE or dynamic shapes.
    branches.append(upsample_bilinear(K, pooled, (height, width), f"{prefix}_pool_upsample"))
    x = K.layers.Concatenate(name=f"{prefix}_concat")(branches)
    x = conv_bn_relu(K, x, filters, 1, f"{prefix}_project")
    if dropout:
        x = K.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    return x


def _fc_branch(K, x, filters, dilation, dropout, batch_norm, prefix):
    """DeepLab's convolutionalised VGG classifier: ``{prefix}_fc6`` (3x3 atrous) and ``{prefix}_fc7`` (1x1),
    each followed by ReLU and dropout."""
    for layer, kernel_size, rate in (("fc6", 3, dilation), ("fc7", 1, 1)):
        x = conv_bn_relu(K, x, filters, kernel_size, f"{prefix}_{layer}", dilation_rate=rate, batch_norm=batch_norm)
        if dropout:
            x = K.layers.Dropout(dropout, name=f"{prefix}_{layer}_dropout")(x)
    return x


def _check(input_shape, output_stride, dropout):
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    check_input_shape(input_shape, output_stride, f"output_stride={output_stride}")


def _check_positive(arg, value):
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{arg} must be a positive integer, got {value!r}")
