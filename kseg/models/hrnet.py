"""HRNetV2: Wang, Sun, Cheng, Jiang, Deng, Zhao, Liu, Mu, Tan, Wang, Liu and Xiao, "Deep High-Resolution
Representation Learning for Visual Recognition", TPAMI 2020, arXiv 1908.07919; the backbone from Sun, Xiao, Liu and
Wang, "Deep High-Resolution Representation Learning for Human Pose Estimation", CVPR 2019, arXiv 1902.09212."""

from kseg.models.blocks import (BN_MOMENTUM, check_input_shape, conv_bn_relu, get_keras, logits_head, upsample_bilinear,
                                upsample_logits)
from kseg.models.registry import register_model

_NUM_STAGES = 4
# Bottleneck units of stage 1 widen their input 4x (ResNet's expansion).
_BOTTLENECK_EXPANSION = 4


@register_model
def hrnetv2(num_classes, input_shape=(512, 1024, 3), width=48, num_modules=(1, 1, 4, 3), num_blocks=4,
            stem_filters=64, weights=None, keras_module=None, name="hrnetv2"):
    """HRNetV2: a network that keeps a high-resolution branch from start to end and adds lower-resolution branches
    stage by stage, exchanging information between all resolutions again and again; the segmentation head
    concatenates every branch at the highest resolution.

    Layout (the paper's, with its defaults):

    * stem: two stride-2 3x3 conv-bn-relu with ``stem_filters`` (64) filters, to stride 4;
    * stage 1: ``num_blocks`` (4) bottleneck residual units, ``stem_filters`` wide inside and 4x that (256) out;
    * stages 2, 3, 4: 2, 3, 4 parallel branches at strides 4, 8, 16, 32 with ``width * (1, 2, 4, 8)`` channels,
      made of ``num_modules[s-1]`` (1, 4, 3) modules. A module is ``num_blocks`` (4) basic residual blocks per
      branch followed by multi-resolution fusion: every output branch sums all input branches, a higher resolution
      brought down by repeated stride-2 3x3 conv-bn (ReLU between them, none after the last), a lower one brought
      up by a 1x1 conv-bn and bilinear upsampling by the integer factor, then a ReLU. A transition before each
      stage adds the new lowest-resolution branch with a stride-2 3x3 conv-bn-relu of the previous lowest one (and
      maps stage 1's output to ``width`` channels with a 3x3 conv-bn-relu);
    * head: the four branches upsampled bilinearly to stride 4 and concatenated (``15 * width`` channels), a 1x1
      conv-bn-relu keeping that width, a 1x1 classifier, and bilinear 4x upsampling of the logits to the input size.

    Every conv is Conv -> BN (-> ReLU), and residual blocks add before their last ReLU (keras.applications ResNet
    order), as quantization-aware training needs. Layers are named ``{name}_stem_conv1``,
    ``{name}_stage{s}_transition_b{k}``, ``{name}_stage{s}_m{m}_b{k}_block{n}_conv{i}`` (residual units),
    ``{name}_stage{s}_m{m}_b{k}_fuse_b{j}_...`` (fusion of input branch ``j`` into output branch ``k``) and
    ``{name}_head_...``, all 1-based (branch 1 is stride 4).

    Deviations from the paper and its reference implementation (HRNet/HRNet-Semantic-Segmentation):

    * Normalisation is ``x / 127.5 - 1`` (``{name}_preprocess``), not ImageNet mean/std: kseg trains HRNetV2 from
      scratch (no pretrained HRNet weights ship offline). Porting ImageNet weights would fold the per-channel
      mean/std difference into the first conv kernel and bias.
    * The width is the only variant argument: ``width=48`` (the default, the paper's Cityscapes/PASCAL-Context
      model) or ``width=18`` for HRNetV2-W18 (``width=32``/``40`` also build). The HRNetV2-W18-Small models, which
      also cut blocks and modules: Small-v2 is ``width=18, num_modules=(1, 1, 3, 2), num_blocks=2``; Small-v1
      (32-wide stage-1 bottlenecks under a 64-filter stem) is not expressible.
    * Bilinear upsampling is Keras' (``align_corners=False``); the reference code used ``align_corners=True`` in
      some releases. Stride-2 "same" convs pad bottom/right (TensorFlow) rather than symmetrically (PyTorch): equal
      for training from scratch, it matters only when porting weights.
    * The head's 1x1 conv has no bias (BN follows it); the reference had one. The final upsampling to the input
      size is in the graph (the reference resized logits in the loss), as kseg's output contract asks.

    Parameter counts at 19 classes (Cityscapes), trainable (the paper's count, without BN moving statistics):
    W48 65.86M (paper: 65.9M), W18 9.64M (paper: 9.6M); see ``tests/test_models.py::test_hrnetv2_parameter_count``.

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, C)``, raw pixels in [0, 255]; H and W divisible by 32 (the lowest branch
            runs at stride 32 and must meet the others exactly when upsampled).
        width: ``C``, the channels of the stride-4 branch; the branches have ``C, 2C, 4C, 8C``.
        num_modules: modules per stage, 4 positive integers (stage 1 has one branch, so its modules just repeat
            bottleneck groups).
        num_blocks: residual units per branch in every module (the bottlenecks of stage 1 included).
        stem_filters: filters of the stem convs and inner width of stage 1's bottlenecks (their output is 4x).
        weights: must be ``None``: kseg has no pretrained HRNet weights; restore a trained model with
            ``model.load_weights``.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.

    Returns:
        A model from raw pixels ``(B, H, W, C)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("hrnetv2", num_classes=19, input_shape=(512, 1024, 3), width=18)
        >>> tuple(model.output.shape)
        (None, 512, 1024, 19)
    """
    K = get_keras(keras_module)
    for arg, value in (("width", width), ("num_blocks", num_blocks), ("stem_filters", stem_filters)):
        if not _is_positive_int(value):
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    if (not isinstance(num_modules, (tuple, list)) or len(num_modules) != _NUM_STAGES
            or not all(_is_positive_int(m) for m in num_modules)):
        raise ValueError(f"num_modules must be {_NUM_STAGES} positive integers (modules per stage), "
                         f"got {num_modules!r}")
    if weights is not None:
        raise ValueError(f"hrnetv2 has no pretrained weights (got weights={weights!r}); use weights=None and "
                         "model.load_weights(...) for a trained kseg model")
    check_input_shape(input_shape, 2 ** (_NUM_STAGES + 1), "the lowest-resolution branch runs at stride 32")

    inputs = K.Input(input_shape, name=f"{name}_image")
    x = K.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{name}_preprocess")(inputs)
    x = conv_bn_relu(K, x, stem_filters, 3, f"{name}_stem_conv1", strides=2)
    x = conv_bn_relu(K, x, stem_filters, 3, f"{name}_stem_conv2", strides=2)

    for m in range(1, num_modules[0] + 1):
        for n in range(1, num_blocks + 1):
            x = _bottleneck(K, x, stem_filters, f"{name}_stage1_m{m}_b1_block{n}")

    branches = [x]
    widths = [width * 2**k for k in range(_NUM_STAGES)]
    for stage in range(2, _NUM_STAGES + 1):
        branches = _transition(K, branches, widths[:stage], f"{name}_stage{stage}_transition")
        for m in range(1, num_modules[stage - 1] + 1):
            prefix = f"{name}_stage{stage}_m{m}"
            branches = [_residual_branch(K, x, num_blocks, f"{prefix}_b{k}") for k, x in enumerate(branches, 1)]
            branches = _fuse(K, branches, widths[:stage], prefix)

    upsampled = [branches[0]] + [upsample_bilinear(K, x, 2**k, f"{name}_head_b{k + 1}_upsample")
                                 for k, x in enumerate(branches[1:], 1)]
    x = K.layers.Concatenate(name=f"{name}_head_concat")(upsampled)
    x = conv_bn_relu(K, x, sum(widths), 1, f"{name}_head_conv")
    x = logits_head(K, x, num_classes, f"{name}_logits")
    outputs = upsample_logits(K, x, 4, f"{name}_upsample")
    return K.Model(inputs, outputs, name=name)


def _is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _conv_bn(K, x, filters, kernel_size, name, strides=1):
    """Conv2D -> BatchNormalization without activation (before a residual add or a fusion sum)."""
    x = K.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                        kernel_initializer="he_normal", name=name)(x)
    return K.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)


def _residual_out(K, x, shortcut, prefix):
    """The residual add before the final ReLU."""
    x = K.layers.Add(name=f"{prefix}_add")([shortcut, x])
    return K.layers.ReLU(name=f"{prefix}_out")(x)


def _bottleneck(K, x, filters, prefix):
    """1x1 (``filters``) -> 3x3 (``filters``) -> 1x1 (``4 * filters``); a 1x1 conv-bn shortcut when the channels
    change (the first unit of stage 1)."""
    out_filters = filters * _BOTTLENECK_EXPANSION
    shortcut = x if x.shape[-1] == out_filters else _conv_bn(K, x, out_filters, 1, f"{prefix}_shortcut")
    y = conv_bn_relu(K, x, filters, 1, f"{prefix}_conv1")
    y = conv_bn_relu(K, y, filters, 3, f"{prefix}_conv2")
    y = _conv_bn(K, y, out_filters, 1, f"{prefix}_conv3")
    return _residual_out(K, y, shortcut, prefix)


def _residual_branch(K, x, num_blocks, prefix):
    """``num_blocks`` basic blocks (two 3x3 convs) at the branch's width; transitions already set the width."""
    filters = int(x.shape[-1])
    for n in range(1, num_blocks + 1):
        block = f"{prefix}_block{n}"
        y = conv_bn_relu(K, x, filters, 3, f"{block}_conv1")
        y = _conv_bn(K, y, filters, 3, f"{block}_conv2")
        x = _residual_out(K, y, x, block)
    return x


def _transition(K, branches, widths, prefix):
    """Adapt the existing branches to ``widths`` (a 3x3 conv-bn-relu only where the channels differ) and add the
    next lower-resolution branch from the lowest one with a stride-2 3x3 conv-bn-relu."""
    out = [x if x.shape[-1] == w else conv_bn_relu(K, x, w, 3, f"{prefix}_b{k}")
           for k, (x, w) in enumerate(zip(branches, widths), 1)]
    new = len(widths)
    out.append(conv_bn_relu(K, branches[-1], widths[-1], 3, f"{prefix}_b{new}", strides=2))
    return out


def _fuse(K, branches, widths, prefix):
    """Multi-resolution fusion: output branch ``i`` is ReLU(sum over input branches ``j`` brought to ``i``)."""
    fused = []
    for i, width in enumerate(widths, 1):
        terms = []
        for j, x in enumerate(branches, 1):
            path = f"{prefix}_b{i}_fuse_b{j}"
            if j > i:
                x = _conv_bn(K, x, width, 1, f"{path}_conv")
                x = upsample_bilinear(K, x, 2 ** (j - i), f"{path}_upsample")
            elif j < i:
                for step in range(1, i - j + 1):
                    if step < i - j:  # intermediate halvings keep the source width
                        x = conv_bn_relu(K, x, widths[j - 1], 3, f"{path}_down{step}", strides=2)
                    else:
                        x = _conv_bn(K, x, width, 3, f"{path}_down{step}", strides=2)
            terms.append(x)
        x = K.layers.Add(name=f"{prefix}_b{i}_fuse_add")(terms)
        fused.append(K.layers.ReLU(name=f"{prefix}_b{i}_fuse_relu")(x))
    return fused
