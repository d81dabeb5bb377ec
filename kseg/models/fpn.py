"""FPN semantic segmentation: Kirillov, Girshick, He and Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019,
arXiv 1901.02446, on the pyramid of Lin, Dollar, Girshick, He, Hariharan and Belongie, "Feature Pyramid Networks
for Object Detection", CVPR 2017, arXiv 1612.03144."""

from kseg.models.backbones import build_backbone
from kseg.models.blocks import (check_input_shape, conv_bn_relu, get_keras, logits_head, upsample_bilinear,
                                upsample_logits)
from kseg.models.registry import register_model

LEVELS = (2, 3, 4, 5)


def feature_pyramid(K, features, filters, name):
    """The FPN top-down pathway with lateral connections on backbone features ``P2``..``P5``.

    ``M5 = lateral(C5)``, ``M{k} = lateral(C{k}) + up2(M{k+1})``, ``P{k} = conv3x3(M{k})``, where ``lateral`` is
    a 1x1 conv to ``filters`` channels and ``up2`` a 2x bilinear upsampling. The lateral and output convs are
    linear with a bias, as in the paper (no norm, no activation). Deviation: the paper upsamples by nearest
    neighbour, which becomes TILE in TFLite (not an EdgeTPU op); bilinear is one RESIZE_BILINEAR.

    Layers: ``{name}_lateral{k}``, ``{name}_topdown{k}_upsample``, ``{name}_topdown{k}_add``, ``{name}_output{k}``.

    Args:
        K: the Keras module (``keras`` or ``tf_keras``).
        features: ``{"P2": ..., "P5": ...}`` at strides 4, 8, 16, 32 (``build_backbone``'s contract; other keys
            are ignored), each level exactly twice the size of the next.
        filters: channels of every pyramid level (256 in the paper).
        name: prefix of the layer names.

    Returns:
        ``{"P2": ..., "P5": ...}``, every level with ``filters`` channels, at the input levels' sizes.

    Example:
        >>> import keras
        >>> from kseg.models.backbones import build_backbone
        >>> from kseg.models.fpn import feature_pyramid
        >>> image = keras.Input((64, 64, 3))
        >>> pyramid = feature_pyramid(keras, build_backbone("resnet50", image), 256, "fpn")
        >>> tuple(pyramid["P2"].shape)
        (None, 16, 16, 256)
    """
    merged = None
    outputs = {}
    for k in reversed(LEVELS):
        feature = features[f"P{k}"]
        if merged is not None and tuple(feature.shape[1:3]) != tuple(2 * d for d in merged.shape[1:3]):
            raise ValueError(f"feature_pyramid {name!r}: P{k} is {tuple(feature.shape[1:3])}, not twice "
                             f"P{k + 1}'s {tuple(merged.shape[1:3])}; build the backbone at output stride 32")
        lateral = K.layers.Conv2D(filters, 1, name=f"{name}_lateral{k}")(feature)
        if merged is None:
            merged = lateral
        else:
            up = upsample_bilinear(K, merged, 2, f"{name}_topdown{k}_upsample")
            merged = K.layers.Add(name=f"{name}_topdown{k}_add")([lateral, up])
        outputs[f"P{k}"] = K.layers.Conv2D(filters, 3, padding="same", name=f"{name}_output{k}")(merged)
    return {f"P{k}": outputs[f"P{k}"] for k in LEVELS}


@register_model
def fpn(num_classes, input_shape=(512, 512, 3), backbone="resnet50", pyramid_filters=256, head_filters=128,
        weights=None, keras_module=None, name="fpn", backbone_kwargs=None):
    """Panoptic FPN's semantic segmentation branch: a feature pyramid on the backbone and a head that merges all
    its levels at stride 4.

    From each pyramid level ``P{k}`` the head repeats (3x3 Conv -> BN -> ReLU with ``head_filters``, 2x bilinear
    upsampling) until stride 4 (``P2``: one conv, no upsampling), sums the four maps, applies a 1x1 classifier and
    upsamples the logits 4x bilinearly to the input size.

    Deviations from the paper: BatchNormalization instead of GroupNorm in the head (GroupNorm is not in
    tensorflow-model-optimization's quantization registry and does not fold into the conv for TFLite); bilinear
    instead of nearest-neighbour upsampling in the top-down pathway (see ``feature_pyramid``).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by 32.
        backbone: a name from ``kseg.models.backbones.list_backbones()`` (ResNet50 in the paper).
        pyramid_filters: channels of every pyramid level (256 in the paper).
        head_filters: channels of the semantic head's convs (128 in the paper).
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("fpn", num_classes=19, input_shape=(512, 1024, 3))
        >>> tuple(model.output.shape)
        (None, 512, 1024, 19)
    """
    K = get_keras(keras_module)
    for arg, value in (("pyramid_filters", pyramid_filters), ("head_filters", head_filters)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    check_input_shape(input_shape, 32, "the backbone halves them 5 times")

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, keras_module=K, **(backbone_kwargs or {}))
    pyramid = feature_pyramid(K, features, pyramid_filters, f"{name}_pyramid")

    merged = []
    for k in LEVELS:
        x = pyramid[f"P{k}"]
        for i in range(1, max(1, k - 2) + 1):  # P2 gets one conv, P{k} k-2 upsampling stages
            x = conv_bn_relu(K, x, head_filters, 3, f"{name}_head{k}_conv{i}")
            if k > 2:
                x = upsample_bilinear(K, x, 2, f"{name}_head{k}_upsample{i}")
        merged.append(x)
    x = K.layers.Add(name=f"{name}_head_sum")(merged)
    x = logits_head(K, x, num_classes, f"{name}_logits")
    outputs = upsample_logits(K, x, 4, f"{name}_upsample")
    return K.Model(inputs, outputs, name=name)
