"""V-Net: Milletari, Navab and Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
Segmentation", 3DV 2016, arXiv 1606.04797."""

from kseg.models.blocks import BN_MOMENTUM, get_keras
from kseg.models.registry import register_model


@register_model
def vnet(num_classes, input_shape=(64, 128, 128, 1), base_filters=16, depth=4, kernel_size=5, batch_norm=False,
         scale=1.0 / 255.0, offset=0.0, weights=None, keras_module=None, name="vnet"):
    """V-Net: a 3D encoder-decoder of residual stages for volumes, trained with a soft Dice loss.

    Compression path: stages of 1, 2, 3, 3, 3 convolutions (``kernel_size``\\ :sup:`3`, "same" padding, PReLU) whose
    input is added to their output (residual stages), each followed by a 2x2x2 stride-2 convolution that halves the
    resolution and doubles the channels (``base_filters`` at full resolution, 256 at the bottom with the defaults).
    Decompression path: a 2x2x2 stride-2 ``Conv3DTranspose`` (half the stage's channels), concatenation with the
    compression features of the same resolution, and a residual stage of 3, 3, 2, 1 convolutions (mirroring the
    compression path) with twice the compression stage's channels; a final 1x1x1 convolution gives the logits.
    Train it with ``build_loss({"dice": 1.0}, ...)`` (``loss: {dice: 1.0}`` in a config), the paper's objective.

    Deviations from the paper:

    - The paper's final 1x1x1 convolution is followed by a voxel-wise softmax; here the output is logits (the kseg
      contract: the losses and metrics take logits, and softmax breaks int8 export).
    - Activation order inside a stage: conv -> [BN] -> PReLU for all but the last convolution, whose output is added
      to the stage input before its PReLU (the ResNet order, which quantization-aware training recognises); the
      paper's figure does not fix where the last PReLU sits.
    - ``batch_norm=True`` adds BatchNormalization after every convolution (conv -> BN -> PReLU); the paper has none.
    - The first stage adds the input replicated ``base_filters / C`` times along the channels, as the paper does
      with its one-channel input; when ``C`` does not divide ``base_filters`` a 1x1x1 convolution projects it
      instead.
    - ``depth`` and ``kernel_size`` generalise the paper's 4 downsamplings and 5x5x5 kernels; stages below the third
      keep 3 convolutions.

    Input normalisation is the first layer, ``{name}_preprocess = Rescaling(scale, offset)``: the data pipeline
    gives raw intensities (``kseg.data`` reads NIfTI volumes without rescaling them). The default ``1/255`` suits
    8-bit data; set it for the modality, e.g. ``scale=1/1000, offset=0`` for CT in Hounsfield units or
    ``scale=1/s, offset=-m/s`` for an MRI intensity mean ``m`` and spread ``s`` of the training set.

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(D, H, W, C)``; D, H and W divisible by ``2**depth``. The paper used 64x128x128x1
            (128x128x64 voxels of 1x1x1.5 mm prostate MRI).
        base_filters: channels of the full-resolution compression stage (the paper: 16).
        depth: number of 2x2x2 downsamplings (the paper: 4).
        kernel_size: odd edge of the cubic convolution kernels (the paper: 5).
        batch_norm: BatchNormalization after every convolution (not in the paper; steadies training from scratch).
        scale: multiplier of the input intensities in ``{name}_preprocess``.
        offset: added after ``scale``.
        weights: must be None (there are no pretrained V-Net weights).
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.

    Returns:
        A model from raw intensities ``(B, D, H, W, C)`` to float32 logits ``(B, D, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("vnet", num_classes=2, input_shape=(64, 128, 128, 1))
        >>> tuple(model.output.shape)
        (None, 64, 128, 128, 2)
    """
    K = get_keras(keras_module)
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 6:
        raise ValueError(f"depth must be an integer in 1..6, got {depth!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be a positive integer, got {base_filters!r}")
    if weights is not None:
        raise ValueError("vnet has no pretrained weights; use weights=None")
    _check_volume_shape(input_shape, 2**depth, depth)

    inputs = K.Input(tuple(input_shape), name=f"{name}_volume")
    x = K.layers.Rescaling(scale, offset=offset, name=f"{name}_preprocess")(inputs)
    channels = input_shape[-1]
    if base_filters % channels == 0:
        # The paper's first stage adds its one-channel input to all 16 feature maps: replicate the channels.
        shortcut = (K.layers.Concatenate(name=f"{name}_enc0_replicate")([x] * (base_filters // channels))
                    if base_filters > channels else x)
    else:
        shortcut = K.layers.Conv3D(base_filters, 1, name=f"{name}_enc0_project")(x)
    skips = []
    for level in range(depth + 1):
        prefix = f"{name}_enc{level}" if level < depth else f"{name}_bottom"
        x = _residual_stage(K, x, shortcut, base_filters * 2**level, min(level + 1, 3), kernel_size, batch_norm,
                            prefix)
        if level < depth:
            skips.append(x)
            x = shortcut = _conv_prelu(K, x, base_filters * 2 ** (level + 1), 2, batch_norm, f"{prefix}_down",
                                       strides=2)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = _conv_prelu(K, x, filters, 2, batch_norm, f"{name}_dec{level}_up", strides=2, transpose=True)
        x = shortcut = K.layers.Concatenate(name=f"{name}_dec{level}_concat")([x, skips[level]])
        x = _residual_stage(K, x, shortcut, 2 * filters, min(level + 1, 3), kernel_size, batch_norm,
                            f"{name}_dec{level}")
    # float32 under a mixed-precision policy: the output contract.
    outputs = K.layers.Conv3D(num_classes, 1, dtype="float32", name=f"{name}_logits")(x)
    return K.Model(inputs, outputs, name=name)


def _check_volume_shape(input_shape, multiple, depth):
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)):
        raise ValueError(f"input_shape must be a static (depth, height, width, channels) tuple, got {input_shape!r}")
    spatial = input_shape[:3]
    if any(d % multiple for d in spatial):
        fix = "x".join(str(max(multiple, round(d / multiple) * multiple)) for d in spatial)
        raise ValueError(f"input_shape {tuple(input_shape)}: depth, height and width must be divisible by "
                         f"{multiple} (depth={depth} halves them {depth} times); use e.g. {fix}")


def _conv_prelu(K, x, filters, kernel_size, batch_norm, name, strides=1, transpose=False, activate=True):
    """Conv3D (or Conv3DTranspose) -> [BN] -> PReLU, named ``name``, ``{name}_bn``, ``{name}_prelu``."""
    conv = K.layers.Conv3DTranspose if transpose else K.layers.Conv3D
    x = conv(filters, kernel_size, strides=strides, padding="same", use_bias=not batch_norm,
             kernel_initializer="he_normal", name=name)(x)
    if batch_norm:
        x = K.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return _prelu(K, x, f"{name}_prelu") if activate else x


def _prelu(K, x, name):
    """Per-channel PReLU (the paper's), applied to the volume seen as ``(B, D, H*W, C)``.

    TFLite's PRELU kernel takes tensors of rank 4 at most and the converter fuses Keras' PReLU into it, so a
    5-D PReLU does not convert; the two RESHAPEs around it only relabel the same memory. One slope per channel
    (Keras' default would learn one per voxel); 0.25 is He et al.'s initial slope.
    """
    depth, height, width, channels = x.shape[1:]
    x = K.layers.Reshape((depth, height * width, channels), name=f"{name}_flatten")(x)
    x = K.layers.PReLU(alpha_initializer=K.initializers.Constant(0.25), shared_axes=[1, 2], name=name)(x)
    return K.layers.Reshape((depth, height, width, channels), name=f"{name}_unflatten")(x)


def _residual_stage(K, x, shortcut, filters, num_convs, kernel_size, batch_norm, prefix):
    """``num_convs`` convolutions ``{prefix}_conv{i}``; the stage input ``shortcut`` is added before the last
    PReLU (``{prefix}_add``, ``{prefix}_prelu``)."""
    for i in range(1, num_convs + 1):
        x = _conv_prelu(K, x, filters, kernel_size, batch_norm, f"{prefix}_conv{i}", activate=i < num_convs)
    x = K.layers.Add(name=f"{prefix}_add")([x, shortcut])
    return _prelu(K, x, f"{prefix}_prelu")
