"""Building blocks shared by every kseg model, written once for Keras 3 and tf_keras.

Every builder takes ``keras_module`` (Keras 3 by default, ``tf_keras`` for tensorflow-model-optimization) and
builds from these helpers only, so that the two frameworks get the same architecture from one definition. Only
layers whose constructor arguments mean the same in both frameworks are used here; no ``keras.ops`` or raw
TensorFlow ops appear in a graph (they do not exist in tf_keras, and raw ops need QAT configs).
"""

# Every batch norm of a kseg model, the keras.applications backbones' included (they ship 0.99 or 0.999): the
# moving statistics must keep up with the weights within the few hundred steps of a CPU training budget, or
# validation, which uses them, lags far behind training (a 10-minute DeepLabV3+ MobileNetV2 at 0.999 predicted
# one class in inference mode, docs/export.md).
BN_MOMENTUM = 0.9


def get_keras(keras_module=None):
    """The Keras module to build with: ``keras_module`` if given, else Keras 3."""
    if keras_module is not None:
        return keras_module
    import keras

    return keras


def check_input_shape(input_shape, multiple, arg_hint):
    """Validate a static ``(H, W, C)`` shape whose height and width are multiples of ``multiple``.

    Raises:
        ValueError: naming the shape and the nearest valid sizes.
    """
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape must be a static (height, width, channels) tuple, got {input_shape!r}")
    height, width = input_shape[:2]
    if height % multiple or width % multiple:
        fix = tuple(max(multiple, round(d / multiple) * multiple) for d in (height, width))
        raise ValueError(
            f"input_shape {tuple(input_shape)}: height and width must be divisible by {multiple} ({arg_hint}); "
            f"use e.g. {fix[0]}x{fix[1]}"
        )


def conv_bn_relu(K, x, filters, kernel_size, name, strides=1, dilation_rate=1, batch_norm=True):
    """Conv2D -> BatchNormalization -> ReLU, the order quantization-aware training folds and quantizes.

    Layers are named ``name``, ``{name}_bn`` and ``{name}_relu``. The conv has a bias only without BN (BN adds one).
    """
    x = K.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", dilation_rate=dilation_rate,
                        use_bias=not batch_norm, kernel_initializer="he_normal", name=name)(x)
    if batch_norm:
        x = K.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return K.layers.ReLU(name=f"{name}_relu")(x)


def separable_conv_bn_relu(K, x, filters, kernel_size, name, dilation_rate=1):
    """Depthwise-separable conv as DeepLabv3+ uses it: DepthwiseConv2D -> BN -> ReLU, then a 1x1 Conv -> BN -> ReLU.

    Layers are ``{name}_depthwise`` (+ ``_bn``, ``_relu``) and then those of ``conv_bn_relu(..., name)``. About
    ``kernel_size**2`` times fewer multiply-adds than a plain conv at the same width, in the order QAT folds.
    """
    x = K.layers.DepthwiseConv2D(kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False,
                                 name=f"{name}_depthwise")(x)
    x = K.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_depthwise_bn")(x)
    x = K.layers.ReLU(name=f"{name}_depthwise_relu")(x)
    return conv_bn_relu(K, x, filters, 1, name)


def upsample_bilinear(K, x, size, name):
    """Static-size bilinear upsampling by an integer factor ``size`` (int or ``(fh, fw)``).

    ``UpSampling2D(interpolation="bilinear")`` lowers to one RESIZE_BILINEAR op in TFLite in both frameworks and
    is in tensorflow-model-optimization's quantize registry; the ``"nearest"`` mode becomes RESHAPE + TILE in Keras 3
    (not an EdgeTPU op), and ``Resizing`` needs a custom QAT config.
    """
    return K.layers.UpSampling2D(size=size, interpolation="bilinear", name=name)(x)


def upsample_logits(K, x, size, name):
    """``upsample_bilinear`` of logits to the input size, computed in float32: under a ``mixed_float16`` policy
    a default-dtype resize would hand float16 logits to the loss and break the output contract."""
    return K.layers.UpSampling2D(size=size, interpolation="bilinear", dtype="float32", name=name)(x)


def logits_head(K, x, num_classes, name):
    """1x1 conv to per-pixel class logits, kept float32 under a mixed-precision policy (the output contract)."""
    return K.layers.Conv2D(num_classes, 1, padding="same", dtype="float32", name=name)(x)
