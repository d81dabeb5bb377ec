"""DeepLabv3+: Chen, Zhu, Papandreou, Schroff and Adam, "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation", ECCV 2018, arXiv 1802.02611 (ASPP from DeepLabv3, arXiv 1706.05587)."""

from kseg.models.backbones import build_backbone
from kseg.models.blocks import check_input_shape, conv_bn_relu, get_keras, logits_head, upsample_bilinear
from kseg.models.registry import register_model

_ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


@register_model
def deeplabv3plus(num_classes, input_shape=(512, 512, 3), backbone="mobilenetv2", output_stride=16,
                  aspp_filters=256, decoder_filters=256, low_level_filters=48, dropout=0.1, weights=None,
                  keras_module=None, name="deeplabv3plus", backbone_kwargs=None):
    """DeepLabv3+: a dilated backbone, atrous spatial pyramid pooling (ASPP) on its last features, and a decoder
    that refines the upsampled ASPP output with stride-4 features.

    ASPP: a 1x1 conv, three 3x3 convs at atrous rates 6/12/18 (12/24/36 at output stride 8) and image pooling
    (global average -> 1x1 conv -> bilinear resize back, a constant map), concatenated and projected by a 1x1 conv.
    The decoder upsamples that 4x (2x at output stride 8), concatenates a ``low_level_filters`` 1x1 projection of
    ``P2``, applies two 3x3 convs and a 1x1 classifier, and upsamples the logits 4x to the input size. Every conv
    is Conv -> BN -> ReLU; the paper's depthwise-separable ASPP/decoder convs are plain convs here.

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by ``output_stride`` (so that
            the upsampled ASPP output meets the stride-4 features exactly).
        backbone: ``"mobilenetv2"`` or ``"resnet50"`` (any name from ``list_backbones()``).
        output_stride: 16 or 8 (8 is finer and about 4x the ASPP cost).
        aspp_filters: filters of every ASPP branch and of its projection.
        decoder_filters: filters of the two decoder 3x3 convs.
        low_level_filters: filters of the ``P2`` projection (48 in the paper: few, so the encoder dominates).
        dropout: dropout rate after the ASPP projection.
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("deeplabv3plus", num_classes=21, input_shape=(512, 512, 3))
        >>> tuple(model.output.shape)
        (None, 512, 512, 21)
    """
    K = get_keras(keras_module)
    if output_stride not in _ATROUS_RATES:
        raise ValueError(f"output_stride must be one of {sorted(_ATROUS_RATES)}, got {output_stride!r}")
    check_input_shape(input_shape, output_stride, f"output_stride={output_stride}")

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, output_stride=output_stride, keras_module=K,
                              **(backbone_kwargs or {}))
    x = _aspp(K, features["P5"], aspp_filters, _ATROUS_RATES[output_stride], dropout, f"{name}_aspp")

    x = upsample_bilinear(K, x, output_stride // 4, f"{name}_decoder_upsample")
    low = conv_bn_relu(K, features["P2"], low_level_filters, 1, f"{name}_decoder_low")
    x = K.layers.Concatenate(name=f"{name}_decoder_concat")([x, low])
    x = conv_bn_relu(K, x, decoder_filters, 3, f"{name}_decoder_conv1")
    x = conv_bn_relu(K, x, decoder_filters, 3, f"{name}_decoder_conv2")
    x = logits_head(K, x, num_classes, f"{name}_logits")
    outputs = upsample_bilinear(K, x, 4, f"{name}_upsample")
    return K.Model(inputs, outputs, name=name)


def _aspp(K, x, filters, rates, dropout, prefix):
    """Atrous spatial pyramid pooling with an image-pooling branch (DeepLabv3, section 3.3)."""
    height, width = int(x.shape[1]), int(x.shape[2])
    branches = [conv_bn_relu(K, x, filters, 1, f"{prefix}_conv0")]
    for i, rate in enumerate(rates, start=1):
        branches.append(conv_bn_relu(K, x, filters, 3, f"{prefix}_conv{i}", dilation_rate=rate))
    pooled = K.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_pool")(x)
    pooled = conv_bn_relu(K, pooled, filters, 1, f"{prefix}_pool_conv")
    # A static-size resize of a 1x1 map is a broadcast: one RESIZE_BILINEAR in TFLite, no TILE or dynamic shapes.
    branches.append(upsample_bilinear(K, pooled, (height, width), f"{prefix}_pool_upsample"))
    x = K.layers.Concatenate(name=f"{prefix}_concat")(branches)
    x = conv_bn_relu(K, x, filters, 1, f"{prefix}_project")
    if dropout:
        x = K.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    return x
