"""U-Net: Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, arXiv 1505.04597."""

from kseg.models.backbones import build_backbone
from kseg.models.blocks import check_input_shape, conv_bn_relu, get_keras, logits_head, upsample_bilinear
from kseg.models.registry import register_model

UPSAMPLING = ("transpose", "bilinear")


@register_model
def unet(num_classes, input_shape=(256, 256, 3), base_filters=32, depth=4, backbone=None, batch_norm=True,
         dropout=0.0, upsampling="transpose", weights=None, keras_module=None, name="unet", backbone_kwargs=None):
    """U-Net: a contracting path of double 3x3 conv blocks and an expanding path that concatenates the encoder
    features of the same resolution (skip connections).

    Convolutions use "same" padding (the paper used "valid" and cropped), so the output has the input's size.
    The level at stride ``2**k`` has ``base_filters * 2**k`` filters (the paper: 64 at the top, 1024 at depth 4).

    With ``backbone`` the contracting path is that backbone's pyramid (``P1``..``P{depth}``, see
    ``kseg.models.backbones``); the decoder is the same, with no skip at full resolution.

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, C)``; H and W divisible by ``2**depth``. Raw pixels in [0, 255]; C may be
            other than 3 without a backbone (e.g. RGB-D).
        base_filters: filters of the full-resolution level.
        depth: number of 2x downsamplings (1..5 with a backbone).
        backbone: ``None`` (the classic encoder) or a name from ``kseg.models.backbones.list_backbones()``.
        batch_norm: BatchNormalization after every conv of the classic encoder and of the decoder (the paper had
            none; it makes training from scratch far less sensitive to the learning rate).
        dropout: dropout rate on the bottleneck features (the paper's implementation used 0.5 there).
        upsampling: ``"transpose"`` (the paper's 2x2 up-convolution, halving the filters) or ``"bilinear"``.
        weights: backbone weights (``None``, ``"imagenet"`` or a file path); only with a backbone.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw pixels ``(B, H, W, C)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("unet", num_classes=2, input_shape=(512, 512, 1), base_filters=64)
        >>> tuple(model.output.shape)
        (None, 512, 512, 2)
    """
    K = get_keras(keras_module)
    if upsampling not in UPSAMPLING:
        raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
    max_depth = 5 if backbone else 8
    if not isinstance(depth, int) or not 1 <= depth <= max_depth:
        raise ValueError(f"depth must be an integer in 1..{max_depth}, got {depth!r}")
    if weights is not None and backbone is None:
        raise ValueError("weights are for a pretrained backbone; pass backbone=... or weights=None")
    check_input_shape(input_shape, 2**depth, f"depth={depth} halves them {depth} times")

    inputs = K.Input(input_shape, name=f"{name}_image")
    if backbone is None:
        x = K.layers.Rescaling(1.0 / 255.0, name=f"{name}_preprocess")(inputs)
        skips = []
        for level in range(depth):
            x = _double_conv(K, x, base_filters * 2**level, f"{name}_enc{level}", batch_norm)
            skips.append(x)
            x = K.layers.MaxPooling2D(2, name=f"{name}_enc{level}_pool")(x)
        x = _double_conv(K, x, base_filters * 2**depth, f"{name}_bottleneck", batch_norm)
    else:
        features = build_backbone(backbone, inputs, weights=weights, keras_module=K, **(backbone_kwargs or {}))
        skips = [None] + [features[f"P{level}"] for level in range(1, depth)]
        x = features[f"P{depth}"]
    if dropout:
        x = K.layers.Dropout(dropout, name=f"{name}_bottleneck_dropout")(x)

    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        if upsampling == "transpose":
            x = K.layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_dec{level}_upconv")(x)
        else:
            x = upsample_bilinear(K, x, 2, f"{name}_dec{level}_upsample")
        if skips[level] is not None:
            x = K.layers.Concatenate(name=f"{name}_dec{level}_concat")([x, skips[level]])
        x = _double_conv(K, x, filters, f"{name}_dec{level}", batch_norm)
    outputs = logits_head(K, x, num_classes, f"{name}_logits")
    return K.Model(inputs, outputs, name=name)


def _double_conv(K, x, filters, prefix, batch_norm):
    """Two 3x3 convs (the U-Net unit), named ``{prefix}_conv1`` and ``{prefix}_conv2``."""
    for i in (1, 2):
        x = conv_bn_relu(K, x, filters, 3, f"{prefix}_conv{i}", batch_norm=batch_norm)
    return x
