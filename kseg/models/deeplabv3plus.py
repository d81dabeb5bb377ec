"""DeepLabv3+: Chen, Zhu, Papandreou, Schroff and Adam, "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation", ECCV 2018, arXiv 1802.02611 (ASPP from DeepLabv3, arXiv 1706.05587,
shared with ``kseg.models.deeplab``)."""

from kseg.models.backbones import build_backbone
from kseg.models.blocks import (check_input_shape, conv_bn_relu, get_keras, logits_head, separable_conv_bn_relu,
                                upsample_bilinear, upsample_logits)
from kseg.models.deeplab import ATROUS_RATES, aspp
from kseg.models.registry import register_model


@register_model
def deeplabv3plus(num_classes, input_shape=(512, 512, 3), backbone="mobilenetv2", output_stride=16,
                  aspp_filters=256, decoder_filters=256, low_level_filters=48, dropout=0.1, separable=True,
                  weights=None, keras_module=None, name="deeplabv3plus", backbone_kwargs=None):
    """DeepLabv3+: a dilated backbone, atrous spatial pyramid pooling (ASPP) on its last features, and a decoder
    that refines the upsampled ASPP output with stride-4 features.

    ASPP: a 1x1 conv, three 3x3 convs at atrous rates 6/12/18 (12/24/36 at output stride 8) and image pooling
    (global average -> 1x1 conv -> bilinear resize back, a constant map), concatenated and projected by a 1x1 conv.
    The decoder upsamples that 4x (2x at output stride 8), concatenates a ``low_level_filters`` 1x1 projection of
    ``P2``, applies two 3x3 convs and a 1x1 classifier, and upsamples the logits 4x to the input size. Every conv
    is Conv -> BN -> ReLU. The ASPP's atrous convs and the decoder's convs are depthwise-separable as in the paper
    (section 3.2; with BN and ReLU after the depthwise step too, as in its reference code): at 256x256 with
    MobileNetV2 that is 1.5 instead of 9.1 GMACs, most of the plain version's cost being the stride-4 decoder.

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
        separable: depthwise-separable ASPP and decoder convs (the paper); ``False`` for plain 3x3 convs.
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
    if output_stride not in ATROUS_RATES:
        raise ValueError(f"output_stride must be one of {sorted(ATROUS_RATES)}, got {output_stride!r}")
    check_input_shape(input_shape, output_stride, f"output_stride={output_stride}")

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, output_stride=output_stride, keras_module=K,
                              **(backbone_kwargs or {}))
    x = aspp(K, features["P5"], aspp_filters, ATROUS_RATES[output_stride], dropout, f"{name}_aspp",
             separable=separable)

    x = upsample_bilinear(K, x, output_stride // 4, f"{name}_decoder_upsample")
    low = conv_bn_relu(K, features["P2"], low_level_filters, 1, f"{name}_decoder_low")
    x = K.layers.Concatenate(name=f"{name}_decoder_concat")([x, low])
    conv = separable_conv_bn_relu if separable else conv_bn_relu
    x = conv(K, x, decoder_filters, 3, f"{name}_decoder_conv1")
    x = conv(K, x, decoder_filters, 3, f"{name}_decoder_conv2")
    x = logits_head(K, x, num_classes, f"{name}_logits")
    outputs = upsample_logits(K, x, 4, f"{name}_upsample")
    return K.Model(inputs, outputs, name=name)
