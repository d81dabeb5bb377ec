"""Attention models: attention to scale, reverse attention (RAN) and dual attention (DANet).

* Chen, Yang, Wang, Xu and Yuille, "Attention to Scale: Scale-aware Semantic Image Segmentation", CVPR 2016,
  arXiv 1511.03339.
* Huang, Xia, Wu, Li, Wang, Song and Kuo, "Semantic Segmentation with Reverse Attention", BMVC 2017,
  arXiv 1707.06426.
* Fu, Liu, Tian, Li, Bao, Fang and Lu, "Dual Attention Network for Scene Segmentation", CVPR 2019,
  arXiv 1809.02983.

All three are built from core layers (``Dot``, ``Reshape``, ``Softmax``, ``Multiply``, ``Cropping2D``) except
DANet's scalar ``gamma``, one small layer (``LearnableScale``) written once for both frameworks.
"""

from kseg.models.backbones import build_backbone
from kseg.models.blocks import check_input_shape, conv_bn_relu, get_keras, logits_head, upsample_logits
from kseg.models.deeplab import _check, _check_positive, _fc_branch
from kseg.models.registry import register_model


@register_model
def attention_to_scale(num_classes, input_shape=(512, 512, 3), backbone="vgg16", scales=(1.0, 0.5),
                       output_stride=8, fc_filters=1024, fc6_dilation=12, attention_filters=512, dropout=0.5,
                       aux_head=False, weights=None, keras_module=None, name="attention_to_scale",
                       backbone_kwargs=None):
    """Attention to scale: one DeepLab-LargeFOV network shared by 2 or 3 input scales, merged by per-pixel
    softmax weights over the scales.

    The shared network ``{name}_shared`` (one nested model, so every scale uses the same weights) is the backbone
    and DeepLab v1's fc6/fc7 head (``kseg.models.deeplab``) with a 1x1 classifier ``{name}_fc8``; it returns fc7
    features and class scores. Scale ``s`` sees the normalised image average-pooled by ``1 / s``
    (``{name}_scale{i}_downsample``); its features and scores are upsampled bilinearly back to the stride of
    scale 1. The attention head (``{name}_attention_conv``, 3x3, ``attention_filters``, ReLU, dropout, then
    ``{name}_attention_logits``, 1x1 with one channel per scale) reads the concatenated features of all scales;
    ``{name}_attention`` is the softmax over scales, and the merged scores are ``sum_s w_s * score_s``
    (``{name}_merge``), upsampled to the input size.

    With ``aux_head=True`` the model also returns each scale's own scores upsampled to the input size
    (``{name}_aux_scale{i}``): the paper's extra supervision, trained by kseg's ``model.aux_weight``.

    Deviations from the paper: scales must be ``1 / k`` for integers ``k`` (1, 0.5, 0.25): downscaling is a
    ``k x k`` average pooling (equal to bilinear resizing for ``k = 2``), because a ``Resizing`` layer in front
    of the nested network gave wrong Keras 3 eager outputs here (the paper's 3-scale model used 1, 0.75, 0.5);
    fc6/fc7 start from random weights; the extra supervision uses full-size labels for every scale.

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by ``output_stride / s`` for
            every scale ``s``.
        backbone: ``"vgg16"`` (the paper) or any name from ``list_backbones()``.
        scales: 2 or 3 distinct input scales ``1 / k`` including 1.0, in the order of the attention's channels.
        output_stride: 8 (the paper) or 16.
        fc_filters: filters of fc6 and fc7 (1024 in LargeFOV).
        fc6_dilation: atrous rate of fc6 (12 in LargeFOV).
        attention_filters: filters of the attention head's 3x3 conv (512 in the paper).
        dropout: dropout rate after fc6, fc7 and the attention conv (0.5 in the paper).
        aux_head: also return the per-scale scores (for training only).
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``; with ``aux_head`` a list of
        that and one more such output per scale.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("attention_to_scale", num_classes=21, input_shape=(320, 320, 3),
        ...                           scales=(1.0, 0.5))
        >>> tuple(model.output.shape)
        (None, 320, 320, 21)
    """
    K = get_keras(keras_module)
    factors = _scale_factors(scales)
    _check(input_shape, output_stride, dropout)
    for arg, value in (("fc_filters", fc_filters), ("fc6_dilation", fc6_dilation),
                       ("attention_filters", attention_filters)):
        _check_positive(arg, value)
    check_input_shape(input_shape, output_stride * max(factors),
                      f"output_stride={output_stride} at scale {min(scales)}")

    # The shared network takes normalised images of any size: it is built on a (None, None, C) input and cut
    # after the backbone's normalisation, which the outer model applies once, first, to the raw input.
    raw = K.Input((None, None, input_shape[-1]), name=f"{name}_shared_image")
    features = build_backbone(backbone, raw, weights=weights, output_stride=output_stride, keras_module=K,
                              **(backbone_kwargs or {}))
    fc7 = _fc_branch(K, features["P5"], fc_filters, fc6_dilation, dropout, False, name)
    scores = logits_head(K, fc7, num_classes, f"{name}_fc8")
    normalise = K.Model(raw, scores).get_layer(f"{backbone}_preprocess")
    shared = K.Model(normalise.output, [fc7, scores], name=f"{name}_shared")

    inputs = K.Input(input_shape, name=f"{name}_image")
    image = normalise(inputs)
    scale_features, scale_scores = [], []
    for i, k in enumerate(factors):
        x = image if k == 1 else K.layers.AveragePooling2D(k, name=f"{name}_scale{i}_downsample")(image)
        feats, score = shared(x)
        if k > 1:
            feats = K.layers.UpSampling2D(k, interpolation="bilinear", name=f"{name}_scale{i}_features_up")(feats)
            score = upsample_logits(K, score, k, f"{name}_scale{i}_scores_up")
        scale_features.append(feats)
        scale_scores.append(score)

    x = K.layers.Concatenate(name=f"{name}_attention_concat")(scale_features)
    x = conv_bn_relu(K, x, attention_filters, 3, f"{name}_attention_conv", batch_norm=False)
    if dropout:
        x = K.layers.Dropout(dropout, name=f"{name}_attention_dropout")(x)
    x = logits_head(K, x, len(factors), f"{name}_attention_logits")
    attention = K.layers.Softmax(axis=-1, dtype="float32", name=f"{name}_attention")(x)
    outputs = upsample_logits(K, weighted_sum(K, attention, scale_scores, f"{name}_merge"), output_stride,
                              f"{name}_upsample")
    if not aux_head:
        return K.Model(inputs, outputs, name=name)
    aux = [upsample_logits(K, s, output_stride, f"{name}_aux_scale{i}") for i, s in enumerate(scale_scores)]
    return K.Model(inputs, [outputs, *aux], name=name)


def weighted_sum(K, weights, maps, prefix):
    """``sum_i weights[..., i:i+1] * maps[i]`` for ``weights`` ``(B, H, W, n)`` and ``n`` maps ``(B, H, W, C)``.

    Channel ``i`` is cut out by ``Cropping2D`` on a ``(B, H * W, n, 1)`` view (a STRIDED_SLICE in TFLite; Keras has
    no slicing layer and Lambda layers are not allowed). Layers ``{prefix}_weights``, ``{prefix}_weight{i}``,
    ``{prefix}_weight{i}_map``, ``{prefix}_product{i}`` and ``{prefix}`` (the sum), all float32.
    """
    height, width, n = (int(d) for d in weights.shape[1:])
    flat = K.layers.Reshape((height * width, n, 1), dtype="float32", name=f"{prefix}_weights")(weights)
    products = []
    for i, x in enumerate(maps):
        w = K.layers.Cropping2D(((0, 0), (i, n - 1 - i)), dtype="float32", name=f"{prefix}_weight{i}")(flat)
        w = K.layers.Reshape((height, width, 1), dtype="float32", name=f"{prefix}_weight{i}_map")(w)
        products.append(K.layers.Multiply(dtype="float32", name=f"{prefix}_product{i}")([x, w]))
    return K.layers.Add(dtype="float32", name=prefix)(products)


@register_model
def ran(num_classes, input_shape=(512, 512, 3), backbone="resnet50", output_stride=8, head_filters=512,
        dropout=0.1, aux_head=False, weights=None, keras_module=None, name="ran", backbone_kwargs=None):
    """Reverse Attention Network: a direct branch, a reverse branch that learns what is *not* each class, and a
    reverse attention mask that lets the reverse scores correct the direct ones.

    On the dilated backbone's last features, ``{name}_head`` (3x3 Conv -> BN -> ReLU, ``head_filters``, dropout)
    feeds three branches:

    * direct: ``{name}_direct``, a 1x1 classifier (the usual prediction);
    * reverse: the head features negated (``{name}_reverse_negate``) and a 1x1 classifier ``{name}_reverse``,
      the per-class "not this class" scores;
    * reverse attention: ``{name}_mask = sigmoid(-direct)`` (``{name}_mask_negate``), large where the direct
      branch is not confident of a class.

    Combined prediction ``{name}_combined = direct - reverse * mask`` (``{name}_reverse_attended``), upsampled
    bilinearly to the input size. With ``aux_head=True`` the direct scores upsampled to the input size are a
    second output (``{name}_aux_direct``), the paper's extra loss on the direct branch.

    Deviations from the paper: one reverse-attention module on the last features (the paper's RAN-s/RAN-d also
    fuse modules at a second, shallower level); the mask is computed from the direct class scores themselves
    (the paper's attention branch has its own conv); no separate loss on the reverse branch (its labels would be
    the inverted ground truth, which kseg's auxiliary heads do not take); ResNet50 by default (the paper: VGG16
    DeepLab-LargeFOV and ResNet-101).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by ``output_stride``.
        backbone: ``"resnet50"`` or any name from ``list_backbones()``.
        output_stride: 8 (the paper, via DeepLab) or 16.
        head_filters: filters of the shared 3x3 head conv.
        dropout: dropout rate after the head conv.
        aux_head: also return the direct branch's scores (for training only).
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)`` (with ``aux_head``:
        ``[combined, direct]``, both that shape).

    Example:
        >>> import kseg
        >>> model = kseg.create_model("ran", num_classes=21, input_shape=(512, 512, 3))
        >>> tuple(model.output.shape)
        (None, 512, 512, 21)
    """
    K = get_keras(keras_module)
    _check(input_shape, output_stride, dropout)
    _check_positive("head_filters", head_filters)

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, output_stride=output_stride, keras_module=K,
                              **(backbone_kwargs or {}))
    x = conv_bn_relu(K, features["P5"], head_filters, 3, f"{name}_head")
    if dropout:
        x = K.layers.Dropout(dropout, name=f"{name}_head_dropout")(x)
    direct = logits_head(K, x, num_classes, f"{name}_direct")
    negated = K.layers.Rescaling(-1.0, name=f"{name}_reverse_negate")(x)
    reverse = logits_head(K, negated, num_classes, f"{name}_reverse")
    mask = K.layers.Rescaling(-1.0, dtype="float32", name=f"{name}_mask_negate")(direct)
    mask = K.layers.Activation("sigmoid", dtype="float32", name=f"{name}_mask")(mask)
    attended = K.layers.Multiply(dtype="float32", name=f"{name}_reverse_attended")([reverse, mask])
    combined = K.layers.Subtract(dtype="float32", name=f"{name}_combined")([direct, attended])
    outputs = upsample_logits(K, combined, output_stride, f"{name}_upsample")
    if not aux_head:
        return K.Model(inputs, outputs, name=name)
    return K.Model(inputs, [outputs, upsample_logits(K, direct, output_stride, f"{name}_aux_direct")], name=name)


@register_model
def danet(num_classes, input_shape=(512, 512, 3), backbone="resnet50", output_stride=8, inter_filters=512,
          reduction=8, dropout=0.1, aux_head=False, weights=None, keras_module=None, name="danet",
          backbone_kwargs=None):
    """Dual Attention Network: a position attention module and a channel attention module on a dilated backbone,
    their outputs summed.

    Two parallel branches on the backbone's last features, each 3x3 Conv -> BN -> ReLU to ``inter_filters``
    (``{name}_pam_in`` / ``{name}_cam_in``), the attention module (``position_attention`` /
    ``channel_attention``), and another 3x3 Conv -> BN -> ReLU (``{name}_pam_out`` / ``{name}_cam_out``); they are
    added (``{name}_sum``), then dropout and a 1x1 classifier, upsampled bilinearly to the input size. With
    ``aux_head=True`` each branch's own 1x1 classifier (``{name}_aux_pam`` / ``{name}_aux_cam``, upsampled) is an
    extra output, as in the authors' code.

    Each module ends with ``gamma * attention_output + input`` where ``gamma`` is one learnable scalar initialised
    to 0 (a ``LearnableScale`` layer holding a single weight), so the network starts as its plain head path.

    Deviations from the paper: ResNet50 by default (the paper: ResNet-101, with multi-grid); the channel module
    takes the softmax of the energies themselves as the paper writes it (the authors' code used
    ``max(energy) - energy``).

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by ``output_stride``.
        backbone: ``"resnet50"`` or any name from ``list_backbones()``.
        output_stride: 8 (the paper) or 16.
        inter_filters: channels inside both modules (512 in the paper: 2048 / 4).
        reduction: the position module's query/key channels are ``inter_filters // reduction`` (8 in the paper).
        dropout: dropout rate before the classifiers (0.1 in the authors' code).
        aux_head: also return each branch's scores (for training only).
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)`` (with ``aux_head``:
        ``[logits, pam_logits, cam_logits]``, all that shape).

    Example:
        >>> import kseg
        >>> model = kseg.create_model("danet", num_classes=19, input_shape=(256, 512, 3))
        >>> tuple(model.output.shape)
        (None, 256, 512, 19)
    """
    K = get_keras(keras_module)
    _check(input_shape, output_stride, dropout)
    _check_positive("inter_filters", inter_filters)
    _check_positive("reduction", reduction)
    if inter_filters < reduction:
        raise ValueError(f"inter_filters ({inter_filters}) must be at least reduction ({reduction}): the position "
                         "module's query/key get inter_filters // reduction channels")

    inputs = K.Input(input_shape, name=f"{name}_image")
    features = build_backbone(backbone, inputs, weights=weights, output_stride=output_stride, keras_module=K,
                              **(backbone_kwargs or {}))["P5"]
    branches = []
    for branch, module in (("pam", position_attention), ("cam", channel_attention)):
        x = conv_bn_relu(K, features, inter_filters, 3, f"{name}_{branch}_in")
        x = module(K, x, f"{name}_{branch}", **({"reduction": reduction} if branch == "pam" else {}))
        branches.append(conv_bn_relu(K, x, inter_filters, 3, f"{name}_{branch}_out"))
    x = K.layers.Add(name=f"{name}_sum")(branches)
    outputs = _classifier(K, x, num_classes, dropout, output_stride, name)
    if not aux_head:
        return K.Model(inputs, outputs, name=name)
    aux = [_classifier(K, b, num_classes, dropout, output_stride, f"{name}_aux_{branch}")
           for b, branch in zip(branches, ("pam", "cam"))]
    return K.Model(inputs, [outputs, *aux], name=name)


def position_attention(K, x, prefix, reduction=8):
    """DANet's position attention module on a static ``(B, H, W, C)`` map (paper section 3.2).

    ``{prefix}_query`` / ``{prefix}_key`` (1x1, ``C // reduction``) and ``{prefix}_value`` (1x1, ``C``) are
    flattened to ``(B, N, .)`` with N = H * W; ``{prefix}_attention`` is the softmax over positions of
    query . key (``(B, N, N)``, row j = where position j looks), the output ``attention @ value`` goes back to
    ``(B, H, W, C)``, and ``{prefix}`` = ``gamma * output + x`` with ``{prefix}_gamma`` initialised to 0.
    """
    height, width, channels = (int(d) for d in x.shape[1:])
    n = height * width

    def flat(t, c, suffix):
        return K.layers.Reshape((n, c), name=f"{prefix}_{suffix}_flat")(t)

    query = flat(K.layers.Conv2D(channels // reduction, 1, name=f"{prefix}_query")(x), channels // reduction, "query")
    key = flat(K.layers.Conv2D(channels // reduction, 1, name=f"{prefix}_key")(x), channels // reduction, "key")
    value = flat(K.layers.Conv2D(channels, 1, name=f"{prefix}_value")(x), channels, "value")
    # Energies and softmax in float32: N terms per dot product overflow float16 under mixed precision.
    energy = K.layers.Dot(axes=(2, 2), dtype="float32", name=f"{prefix}_energy")([query, key])
    attention = K.layers.Softmax(axis=-1, dtype="float32", name=f"{prefix}_attention")(energy)
    out = K.layers.Dot(axes=(2, 1), name=f"{prefix}_context")([attention, value])
    out = K.layers.Reshape((height, width, channels), name=f"{prefix}_context_map")(out)
    return _residual_scale(K, out, x, prefix)


def channel_attention(K, x, prefix):
    """DANet's channel attention module on a static ``(B, H, W, C)`` map (paper section 3.3).

    ``{prefix}_attention`` is the softmax over channels of the channel Gram matrix (``(B, C, C)``, row j = the
    channels that channel j gathers), the output ``x @ attention^T`` goes back to ``(B, H, W, C)``, and
    ``{prefix}`` = ``gamma * output + x`` with ``{prefix}_gamma`` initialised to 0.
    """
    height, width, channels = (int(d) for d in x.shape[1:])
    flat = K.layers.Reshape((height * width, channels), name=f"{prefix}_flat")(x)
    energy = K.layers.Dot(axes=(1, 1), dtype="float32", name=f"{prefix}_energy")([flat, flat])
    attention = K.layers.Softmax(axis=-1, dtype="float32", name=f"{prefix}_attention")(energy)
    out = K.layers.Dot(axes=(2, 2), name=f"{prefix}_context")([flat, attention])
    out = K.layers.Reshape((height, width, channels), name=f"{prefix}_context_map")(out)
    return _residual_scale(K, out, x, prefix)


def _residual_scale(K, out, x, prefix):
    out = learnable_scale_layer(K)(0.0, name=f"{prefix}_gamma")(out)
    return K.layers.Add(name=prefix)([out, x])


def _classifier(K, x, num_classes, dropout, output_stride, prefix):
    if dropout:
        x = K.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    x = logits_head(K, x, num_classes, f"{prefix}_logits")
    return upsample_logits(K, x, output_stride, f"{prefix}_upsample")


_SCALE_LAYERS = {}


def learnable_scale_layer(K):
    """The ``LearnableScale`` layer class of Keras module ``K``: ``x * gamma`` with one trainable scalar ``gamma``
    (``initial_value``, default 0), registered serializable as ``kseg>LearnableScale`` in that framework.

    No core layer holds a single scalar weight (``DepthwiseConv2D`` would learn one per channel), so the class is
    written once and created for each framework; in TFLite it is one MUL by a constant.

    Example:
        >>> import keras
        >>> from kseg.models.attention import learnable_scale_layer
        >>> layer = learnable_scale_layer(keras)(2.0, name="scale")
        >>> float(layer(keras.ops.ones((1, 2)))[0, 0])
        2.0
    """
    if K.__name__ not in _SCALE_LAYERS:
        class LearnableScale(K.layers.Layer):
            def __init__(self, initial_value=0.0, **kwargs):
                super().__init__(**kwargs)
                self.initial_value = float(initial_value)

            def build(self, input_shape):
                self.gamma = self.add_weight(name="gamma", shape=(), trainable=True,
                                             initializer=K.initializers.Constant(self.initial_value))
                super().build(input_shape)

            def call(self, inputs):
                return inputs * self.gamma

            def compute_output_shape(self, input_shape):
                return input_shape

            def get_config(self):
                return {**super().get_config(), "initial_value": self.initial_value}

        _SCALE_LAYERS[K.__name__] = K.saving.register_keras_serializable(package="kseg")(LearnableScale)
    return _SCALE_LAYERS[K.__name__]


def _scale_factors(scales):
    """The integer downscaling factors ``1 / s`` of ``scales``, validated."""
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of numbers, got {scales!r}") from None
    factors = tuple(round(1 / s) if 0 < s <= 1 else 0 for s in scales)
    if (not 2 <= len(scales) <= 3 or 1 not in factors or len(set(factors)) != len(factors)
            or any(k < 1 or abs(1 / k - s) > 1e-6 for k, s in zip(factors, scales))):
        raise ValueError(f"scales must be 2 or 3 distinct values 1/k (k a positive integer: 1.0, 0.5, 0.25, ...) "
                         f"including 1.0, got {scales!r}")
    return factors
