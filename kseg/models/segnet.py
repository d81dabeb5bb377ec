"""SegNet: Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
Segmentation", TPAMI 2017, arXiv 1511.00561.

Max unpooling with the encoder's pooling indices is built from core layers only: TFLite has no builtin
MaxPoolWithArgmax (it needs Flex or a custom op) and Keras' nearest ``UpSampling2D`` becomes TILE. See
``max_unpool``.
"""

import os

from kseg.errors import ModelFileError
from kseg.models.blocks import BN_MOMENTUM, check_input_shape, conv_bn_relu, get_keras, logits_head
from kseg.models.registry import register_model

# VGG16's blocks: convs per block and width multiplier of the first block's filters.
_VGG16_BLOCKS = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))
_CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)  # the VGG16 "caffe" means, as in kseg.models.backbones
# The switches: off = min(1, 2**24 * gap), gap = window max - feature (see max_unpool): any gap above 6e-8 (about
# one float32 ulp at 1.0) switches a position fully off, so `off` is 0/1 with zero gradient almost everywhere,
# like real indices. The scale is applied in clipped stages of x256 by fixed 1x1 depthwise convs, and the
# switched-off values are pushed below zero by subtracting 2**15 (post-ReLU features are far smaller) and cut
# by a ReLU, not multiplied by a mask: found by converting to full int8 with TF 2.21, where a single large scale
# overflows a quantized SUB's rescaling (at most 2**19), and in SegNet the input of a MUL (Rescaling, Multiply)
# got the MUL output's quantization range, which rounded the 0/1 switches away (tests/test_segnet.py checks int8).
_SWITCH_STAGE_SCALE = 256.0
_SWITCH_STAGES = 3
_SWITCH_OFF_SHIFT = 2.0**15  # below float16's max: the chain also works under mixed precision


def upsample_nearest2x(K, x, name):
    """2x nearest-neighbour upsampling from CONCATENATION and RESHAPE only (no TILE, unlike
    ``UpSampling2D("nearest")`` in TFLite): ``out[2i + a, 2j + b] = x[i, j]`` for ``a, b`` in {0, 1}.

    Concatenating ``[x, x]`` on channels and reshaping ``(H, W, 2C)`` to ``(H, 2W, C)`` repeats every column
    (row-major order puts the two copies of pixel ``j`` at columns ``2j`` and ``2j + 1``); concatenating ``[y, y]``
    on the width and reshaping ``(H, 4W, C)`` to ``(2H, 2W, C)`` repeats every row the same way.

    Layers: ``{name}_wcat``, ``{name}_wreshape``, ``{name}_hcat``, ``{name}_hreshape``.
    """
    height, width, channels = (int(d) for d in x.shape[1:])
    x = K.layers.Concatenate(axis=-1, name=f"{name}_wcat")([x, x])
    x = K.layers.Reshape((height, 2 * width, channels), name=f"{name}_wreshape")(x)
    x = K.layers.Concatenate(axis=2, name=f"{name}_hcat")([x, x])
    return K.layers.Reshape((2 * height, 2 * width, channels), name=f"{name}_hreshape")(x)


def max_unpool(K, x, features, pooled, name):
    """Max unpooling with the pooling indices ("switches") of a 2x2 stride-2 max pooling, from core layers only.

    ``pooled = MaxPooling2D(2)(features)``; ``x`` has ``pooled``'s shape (the decoder's features) and must be
    non-negative (e.g. after a ReLU, as every tensor SegNet unpools). The result has ``features``' shape: each
    value of ``x`` goes to the position(s) of its window where ``features`` reached the maximum, zeros
    elsewhere. The switches are not stored as indices but recomputed::

        up(v)  = v upsampled 2x by nearest neighbour             (upsample_nearest2x)
        off    = min(1, 2**24 * (up(pooled) - features))          (0 where features equal their window's max, else 1)
        output = relu(up(x) - 2**15 * off)                        (= up(x) * (1 - off) for 0 <= x < 2**15)

    Ties: every position of a window that equals the maximum receives the value (MaxPoolWithArgmax would keep
    only the first). After a ReLU an all-zero window is a tie of four, so there the value goes to all four
    positions, i.e. plain nearest-neighbour upsampling; in an int8 model, values that quantize to the same level
    tie too. The switches have zero gradient (except for gaps below 6e-8), like indices.

    TFLite: CONCATENATION, RESHAPE, SUB, MINIMUM, RELU and DEPTHWISE_CONV_2D (fixed 1x1 scales, non-trainable
    layers ``{name}_gapscale{i}`` and ``{name}_offshift``), all builtin, also in full int8. Quantization-aware
    training: ``Subtract`` is outside tensorflow-model-optimization's default registry and needs a QuantizeConfig.

    Args:
        K: the Keras module (``keras`` or ``tf_keras``).
        x: tensor ``(B, h, w, C)`` to unpool.
        features: the pre-pooling tensor ``(B, 2h, 2w, C)``.
        pooled: ``MaxPooling2D(2)(features)``, ``(B, h, w, C)``.
        name: prefix of the layer names.

    Returns:
        A tensor ``(B, 2h, 2w, C)``.

    Example:
        >>> import keras
        >>> from kseg.models.segnet import max_unpool
        >>> features = keras.Input((8, 8, 4))
        >>> pooled = keras.layers.MaxPooling2D(2)(features)
        >>> tuple(max_unpool(keras, pooled, features, pooled, "unpool").shape)
        (None, 8, 8, 4)
    """
    if tuple(x.shape[1:]) != tuple(pooled.shape[1:]) or tuple(features.shape[1:]) != (
            2 * pooled.shape[1], 2 * pooled.shape[2], pooled.shape[3]):
        raise ValueError(f"max_unpool {name!r}: x {tuple(x.shape[1:])} and pooled {tuple(pooled.shape[1:])} must "
                         f"have one shape, and features {tuple(features.shape[1:])} twice its height and width")
    gap = K.layers.Subtract(name=f"{name}_gap")([upsample_nearest2x(K, pooled, f"{name}_maxup"), features])
    off = K.layers.ReLU(max_value=1.0, name=f"{name}_off0")(gap)
    for i in range(1, _SWITCH_STAGES + 1):
        off = _fixed_scale(K, off, _SWITCH_STAGE_SCALE, f"{name}_gapscale{i}")
        off = K.layers.ReLU(max_value=1.0, name=f"{name}_off{i}")(off)
    shift = _fixed_scale(K, off, _SWITCH_OFF_SHIFT, f"{name}_offshift")
    x = K.layers.Subtract(name=f"{name}_apply")([upsample_nearest2x(K, x, f"{name}_up"), shift])
    return K.layers.ReLU(name=f"{name}_relu")(x)


def _fixed_scale(K, x, scale, name):
    """``x * scale`` as a frozen 1x1 depthwise conv (a Rescaling is a MUL, which int8 conversion mishandles here,
    see the comment on ``_SWITCH_STAGE_SCALE``)."""
    return K.layers.DepthwiseConv2D(1, use_bias=False, trainable=False, name=name,
                                    depthwise_initializer=K.initializers.Constant(scale))(x)


@register_model
def segnet(num_classes, input_shape=(352, 480, 3), base_filters=64, depth=5, weights=None, keras_module=None,
           name="segnet"):
    """SegNet: the VGG16 encoder (13 convs) with batch norm, and a mirrored decoder (13 convs) that upsamples with
    the encoder's max-pooling indices.

    Encoder block ``b`` (1..5) has 2, 2, 3, 3, 3 convs of ``base_filters * (1, 2, 4, 8, 8)[b - 1]`` filters,
    each Conv -> BN -> ReLU, then 2x2 max pooling. The decoder visits the blocks in reverse: it unpools with that
    block's switches (``max_unpool``) and applies as many 3x3 Conv -> BN -> ReLU as the block has, the last one
    narrowing to the width of the block above (the paper's decoder); a 1x1 conv then gives the class logits.

    Deviations from the paper: the last decoder conv keeps ``base_filters`` outputs and a 1x1 classifier follows
    (the paper's last 3x3 conv outputs the classes directly); on ties within a pooling window, e.g. an all-zero
    window after ReLU, every tied position receives the decoder value (see ``max_unpool``). The encoder convs
    keep their bias although BN follows (so that VGG16 kernel and bias load as they are).

    Normalisation (``{name}_preprocess``): VGG16's caffe mode without the channel flip, i.e. the RGB means
    subtracted from raw RGB; when pretrained (BGR) weights are loaded the input-channel axis of ``block1_conv1``'s
    kernel is flipped instead (as in ``kseg.models.backbones``). Inputs with other than 3 channels get 127.5
    subtracted from every channel and cannot take pretrained weights.

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, C)``, raw pixels in [0, 255]; H and W divisible by ``2**depth`` (the default:
            the paper's CamVid 360x480 cut to 352 rows, since unpooling with switches needs even sizes at every level).
        base_filters: filters of the first block (64 in VGG16; smaller for a narrow network).
        depth: number of encoder blocks, 1..5 (5: the full VGG16 encoder).
        weights: ``None`` (random init), ``"imagenet"`` (downloaded by keras.applications, needs internet) or
            the path of a VGG16 weights file (loaded by layer name into the encoder convs ``block1_conv1`` ..
            ``block5_conv3``, any format ``kseg.models.backbones.build_backbone`` reads); needs
            ``base_filters=64`` and 3 input channels.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and prefix of the non-VGG16 layer names (decoder ``{name}_dec{b}_conv{j}``).

    Returns:
        A model from raw pixels ``(B, H, W, C)`` to logits ``(B, H, W, num_classes)``.

    Raises:
        ValueError: invalid arguments.
        ModelFileError: the weights file is missing or not a VGG16 weights file.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("segnet", num_classes=12, input_shape=(352, 480, 3))
        >>> tuple(model.output.shape)
        (None, 352, 480, 12)
    """
    K = get_keras(keras_module)
    if not isinstance(depth, int) or not 1 <= depth <= len(_VGG16_BLOCKS):
        raise ValueError(f"depth must be an integer in 1..{len(_VGG16_BLOCKS)}, got {depth!r}")
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be a positive integer, got {base_filters!r}")
    check_input_shape(input_shape, 2**depth, f"depth={depth} halves them {depth} times")
    if weights is not None and (base_filters != 64 or input_shape[-1] != 3):
        raise ValueError("pretrained VGG16 weights need base_filters=64 and 3 input channels, got "
                         f"base_filters={base_filters} and input_shape={tuple(input_shape)}; or pass weights=None")
    if weights is not None and weights != "imagenet" and not os.path.isfile(os.fspath(weights)):
        raise ModelFileError(f"SegNet weights file not found: {weights} (pass weights=None, 'imagenet' or the path "
                             "of a VGG16 weights file)")

    inputs = K.Input(input_shape, name=f"{name}_image")
    offset = [-m for m in _CAFFE_MEAN_RGB] if input_shape[-1] == 3 else -127.5
    x = K.layers.Rescaling(1.0, offset=offset, name=f"{name}_preprocess")(inputs)
    blocks = _VGG16_BLOCKS[:depth]
    switches = []  # (pre-pool features, pooled) per block
    for b, (convs, multiple) in enumerate(blocks, start=1):
        for j in range(1, convs + 1):
            x = _encoder_conv(K, x, base_filters * multiple, f"block{b}_conv{j}")
        pooled = K.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        switches.append((x, pooled))
        x = pooled

    for b in reversed(range(1, depth + 1)):
        convs, multiple = blocks[b - 1]
        features, pooled = switches[b - 1]
        x = max_unpool(K, x, features, pooled, f"{name}_dec{b}_unpool")
        for j in range(1, convs + 1):
            filters = base_filters * (blocks[b - 2][1] if j == convs and b > 1 else multiple)
            x = conv_bn_relu(K, x, filters, 3, f"{name}_dec{b}_conv{j}")
    outputs = logits_head(K, x, num_classes, f"{name}_logits")
    model = K.Model(inputs, outputs, name=name)
    if weights is not None:
        _load_vgg16_weights(K, model, weights, depth)
    return model


def _encoder_conv(K, x, filters, name):
    """``conv_bn_relu`` with the conv's bias kept: redundant before BN, but the layer is then VGG16's own
    (kernel and bias), so pretrained weights load as they are and the untrained BN leaves their output as is."""
    x = K.layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=name)(x)
    x = K.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return K.layers.ReLU(name=f"{name}_relu")(x)


def _load_vgg16_weights(K, model, weights, depth):
    """Copy VGG16 conv kernels and biases into the encoder by layer name, checked by
    ``kseg.models.backbones`` (ModelFileError on a missing layer or a shape mismatch)."""
    from kseg.models.backbones import _load_weights_file

    # The weights do not depend on the input size: a small reference network suffices.
    reference = K.applications.VGG16(input_shape=(32, 32, 3), include_top=False,
                                     weights="imagenet" if weights == "imagenet" else None)
    if weights != "imagenet":
        _load_weights_file(reference, os.fspath(weights))
    for b, (convs, _) in enumerate(_VGG16_BLOCKS[:depth], start=1):
        for j in range(1, convs + 1):
            kernel, bias = reference.get_layer(f"block{b}_conv{j}").get_weights()
            if (b, j) == (1, 1):  # BGR (caffe) kernel on RGB input, see the docstring
                kernel = kernel[:, :, ::-1, :]
            model.get_layer(f"block{b}_conv{j}").set_weights([kernel, bias])
