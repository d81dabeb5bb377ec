"""PSPNet: Zhao, Shi, Qi, Wang and Jia, "Pyramid Scene Parsing Network", CVPR 2017, arXiv 1612.01105."""

from kseg.models.backbones import build_backbone, feature_strides
from kseg.models.blocks import (check_input_shape, conv_bn_relu, get_keras, logits_head, upsample_bilinear,
                                upsample_logits)
from kseg.models.registry import register_model

OUTPUT_STRIDES = (8, 16)


@register_model
def pspnet(num_classes, input_shape=(480, 480, 3), backbone="resnet50", output_stride=8, bins=(1, 2, 3, 6),
           pool_filters=None, head_filters=512, dropout=0.1, aux_head=False, aux_filters=256, weights=None,
           keras_module=None, name="pspnet", backbone_kwargs=None):
    """PSPNet: a dilated backbone and a pyramid pooling module that adds context pooled over bins of the image.

    Pyramid pooling module on the backbone's last features (``P5``, C channels, size h x w): for each bin count
    ``b`` in ``bins`` (1/2/3/6), ``AveragePooling2D`` into b x b cells (pool size and stride h/b x w/b,
    ``{name}_ppm{b}_pool``) -> 1x1 conv-BN-ReLU to ``pool_filters`` (C/4; ``{name}_ppm{b}_conv``) -> bilinear
    upsampling back to h x w by the integer factor h/b x w/b. The features and the branches are concatenated, then
    a 3x3 conv-BN-ReLU (``head_filters``, 512), dropout, a 1x1 classifier and a bilinear upsampling to the input
    size.

    With ``aux_head=True`` the model has a second output, the paper's auxiliary (deep supervision) classifier on
    the stride-16 features ``P4`` (``res4b22`` in the paper, ``conv4_block6_out`` for ResNet50): 3x3 conv-BN-ReLU
    (``aux_filters``) -> dropout -> 1x1 classifier -> bilinear upsampling to the input size. All its layers are named
    ``{name}_aux_*``, so a deploy model is ``keras.Model(model.input, model.outputs[0])``. The paper weighted its
    loss 0.4.

    Bins that divide the feature map (H and W divisible by ``output_stride * lcm(bins)``, e.g. 480 = 8 * 6 * 10)
    pool exact cells and upsample by an integer-factor ``UpSampling2D`` (the TFLite RESIZE_BILINEAR that
    quantization-aware training supports). Other bins (e.g. 3 and 6 on the 64 x 64 map of a 512 x 512 input) use
    b slightly overlapping windows every floor(size / b) cells that together cover the map (like the
    ceil-size windows of the paper's Caffe code, which can leave the last cells out), then a ``Resizing`` back (also RESIZE_BILINEAR in TFLite, but it needs a QAT config of its own).

    Deviations from the paper: its 473 x 473 crops give stride-8 maps of 60 x 60 with align-corners resizing, which
    has no exact equivalent here. ResNet50 from ``keras.applications`` (the paper: ResNet-50/101 with a three-conv
    deep stem).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by ``output_stride`` and at
            least ``output_stride * max(bins)``; exact bins when divisible by ``output_stride * lcm(bins)``.
        backbone: ``"resnet50"`` (the paper) or any name from ``list_backbones()``.
        output_stride: 8 (the paper) or 16.
        bins: the pyramid's bin counts per side.
        pool_filters: filters of each pyramid branch; ``None`` for C / len(bins) (the paper's C/4).
        head_filters: filters of the 3x3 conv after the concatenation (512 in the paper).
        dropout: dropout rate before the classifiers (0.1 in the paper's released model).
        aux_head: add the auxiliary classifier as a second output (for training only).
        aux_filters: filters of the auxiliary 3x3 conv.
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``; with ``aux_head`` it returns
        ``[logits, aux_logits]``, both that shape.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("pspnet", num_classes=21, input_shape=(480, 480, 3))
        >>> tuple(model.output.shape)
        (None, 480, 480, 21)
    """
    K = get_keras(keras_module)
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if not bins or not all(isinstance(b, int) and b >= 1 for b in bins) or len(set(bins)) != len(bins):
        raise ValueError(f"bins must be distinct positive integers, got {bins!r}")
    for arg, value in (("pool_filters", pool_filters), ("head_filters", head_filters), ("aux_filters", aux_filters)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    check_input_shape(input_shape, output_stride, f"output_stride={output_stride}")
    if min(input_shape[:2]) < output_stride * max(bins):
        raise ValueError(f"input_shape {tuple(input_shape)}: the stride-{output_stride} features must be at least "
                         f"{max(bins)} cells a side for bins {tuple(bins)}; use at least "
                         f"{output_stride * max(bins)}x{output_stride * max(bins)}")

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, output_stride=output_stride, keras_module=K,
                              **(backbone_kwargs or {}))
    x = features["P5"]
    height, width, channels = (int(d) for d in x.shape[1:])
    filters = pool_filters or max(1, channels // len(bins))
    branches = [x]
    for b in bins:
        if height % b or width % b:
            # b windows every floor(size / b) cells, just wide enough that the last one ends at the border;
            # back to size by a resize of a fractional factor.
            stride = (height // b, width // b)
            pool = (height - (b - 1) * stride[0], width - (b - 1) * stride[1])
            y = K.layers.AveragePooling2D(pool, strides=stride, name=f"{name}_ppm{b}_pool")(x)
            y = conv_bn_relu(K, y, filters, 1, f"{name}_ppm{b}_conv")
            y = K.layers.Resizing(height, width, interpolation="bilinear", name=f"{name}_ppm{b}_upsample")(y)
        else:
            cell = (height // b, width // b)
            y = K.layers.AveragePooling2D(cell, strides=cell, name=f"{name}_ppm{b}_pool")(x)
            y = conv_bn_relu(K, y, filters, 1, f"{name}_ppm{b}_conv")
            y = upsample_bilinear(K, y, cell, f"{name}_ppm{b}_upsample")
        branches.append(y)
    x = K.layers.Concatenate(name=f"{name}_ppm_concat")(branches)
    outputs = _classifier(K, x, num_classes, head_filters, dropout, output_stride, f"{name}_head", name)
    if not aux_head:
        return K.Model(inputs, outputs, name=name)
    aux = _classifier(K, features["P4"], num_classes, aux_filters, dropout, feature_strides(output_stride)["P4"],
                      f"{name}_aux", f"{name}_aux")
    return K.Model(inputs, [outputs, aux], name=name)


def _classifier(K, x, num_classes, filters, dropout, stride, prefix, output_prefix):
    """3x3 conv-BN-ReLU ``{prefix}_conv`` -> dropout -> ``{output_prefix}_logits`` -> ``{output_prefix}_upsample``
    by ``stride``, the input size."""
    x = conv_bn_relu(K, x, filters, 3, f"{prefix}_conv")
    if dropout:
        x = K.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    x = logits_head(K, x, num_classes, f"{output_prefix}_logits")
    return upsample_logits(K, x, stride, f"{output_prefix}_upsample")
