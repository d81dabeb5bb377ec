"""ReSeg: Visin, Ciccone, Romero, Kastner, Cho, Bengio, Matteucci and Courville, "ReSeg: A Recurrent Neural
Network-based Model for Semantic Segmentation", CVPR Workshops 2016, arXiv 1511.07053; its ReNet layer from Visin,
Kastner, Cho, Matteucci, Courville and Bengio, "ReNet: A Recurrent Neural Network Based Alternative to
Convolutional Networks", arXiv 1505.00393.
"""

import math

from kseg.models.backbones import build_backbone, feature_strides
from kseg.models.blocks import check_input_shape, get_keras, logits_head
from kseg.models.registry import register_model

CELLS = ("gru", "lstm")


@register_model
def reseg(num_classes, input_shape=(512, 512, 3), backbone="vgg16", feature_level="P2", cell="gru",
          renet_units=(100, 100), patch_sizes=((2, 2), (1, 1)), upsample_filters=100, unroll=False, weights=None,
          keras_module=None, name="reseg", backbone_kwargs=None):
    """ReSeg: backbone features, stacked ReNet layers (recurrent sweeps over the whole map), transposed-conv head.

    Each ReNet layer ``{name}_renet{i}`` cuts its input into non-overlapping ``patch_sizes[i]`` patches (flattened
    by a reshape), sweeps every column of patches with a bidirectional RNN (``{name}_renet{i}_vertical``, up and
    down) and then every row of the result (``{name}_renet{i}_horizontal``, left and right), so each output
    position has seen the whole feature map. Each sweep is one ``Bidirectional(GRU | LSTM)`` run on all rows (or,
    after a ``Permute``, all columns) at once by ``SequenceSweep``, which folds them into the batch; the same code
    builds in Keras 3 and tf_keras. The head upsamples by the total stride
    with 3x3 stride-2 transposed convolutions (``{name}_up{j}``, ``upsample_filters`` each, ReLU) and ends with a
    1x1 classifier at the input size.

    The default backbone level is VGG16's ``block3_conv3`` (``P2``, stride 4), the paper's "first 7 layers" of
    VGG16; any backbone and level can be used.

    Deviations from the paper: the paper's upsampling used per-dataset filter counts and kernel sizes, here one
    ``upsample_filters`` and 3x3 kernels for every transposed convolution; no dropout or weight noise.

    Args:
        num_classes: number of output channels (logits).
        input_shape: static ``(H, W, 3)``, raw RGB in [0, 255]; H and W divisible by the total stride
            (feature stride times the product of the patch sizes; 8 by default), a power of two.
        backbone: ``"vgg16"`` (the paper) or any name from ``list_backbones()``.
        feature_level: backbone level fed to the ReNet layers, ``"P1"`` .. ``"P5"`` (stride 2 .. 32).
        cell: ``"gru"`` (the paper) or ``"lstm"``.
        renet_units: units of each direction's RNN, one entry per ReNet layer (the paper: 2 layers of 100).
        patch_sizes: non-overlapping patch ``(height, width)`` of each ReNet layer.
        upsample_filters: filters of every transposed convolution.
        unroll: unroll the RNN loops (no WHILE op in TFLite, a larger graph; see docs/rnn.md on int8).
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        keras_module: ``keras`` (default) or ``tf_keras`` for the Keras 2 twin.
        name: model name and layer-name prefix.
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.

    Returns:
        A model from raw RGB ``(B, H, W, 3)`` to logits ``(B, H, W, num_classes)``.

    Example:
        >>> import kseg
        >>> model = kseg.create_model("reseg", num_classes=11, input_shape=(256, 256, 3), cell="lstm")
        >>> tuple(model.output.shape)
        (None, 256, 256, 11)
    """
    K = get_keras(keras_module)
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    if feature_level not in feature_strides():
        raise ValueError(f"feature_level must be one of {sorted(feature_strides())}, got {feature_level!r}")
    if not renet_units or not all(isinstance(u, int) and u >= 1 for u in renet_units):
        raise ValueError(f"renet_units must be a non-empty sequence of positive integers, got {renet_units!r}")
    patch_sizes = [tuple(p) if isinstance(p, (list, tuple)) else p for p in patch_sizes]
    if len(patch_sizes) != len(renet_units) or not all(
            isinstance(p, tuple) and len(p) == 2 and all(isinstance(d, int) and d >= 1 for d in p)
            for p in patch_sizes):
        raise ValueError(f"patch_sizes must hold one (height, width) pair of positive integers per ReNet layer "
                         f"({len(renet_units)} for renet_units={tuple(renet_units)}), got {patch_sizes!r}")
    if not isinstance(upsample_filters, int) or upsample_filters < 1:
        raise ValueError(f"upsample_filters must be a positive integer, got {upsample_filters!r}")
    stride_h = feature_strides()[feature_level] * math.prod(p[0] for p in patch_sizes)
    stride_w = feature_strides()[feature_level] * math.prod(p[1] for p in patch_sizes)
    if stride_h != stride_w or stride_h & (stride_h - 1):
        raise ValueError(f"the total stride (feature stride x patch sizes) must be one power of two for height and "
                         f"width, got {stride_h}x{stride_w} from feature_level={feature_level!r}, "
                         f"patch_sizes={patch_sizes!r}")
    check_input_shape(input_shape, stride_h, f"feature_level={feature_level!r} and patch_sizes={patch_sizes}")

    inputs = K.Input(input_shape, name=f"{name}_image")
    x = build_backbone(backbone, inputs, weights=weights, keras_module=K, **(backbone_kwargs or {}))[feature_level]
    for i, (units, patch) in enumerate(zip(renet_units, patch_sizes)):
        x = renet_layer(K, x, units, patch, cell, f"{name}_renet{i}", unroll=unroll)
    for j in range(int(math.log2(stride_h))):
        x = K.layers.Conv2DTranspose(upsample_filters, 3, strides=2, padding="same", kernel_initializer="he_normal",
                                     name=f"{name}_up{j}")(x)
        x = K.layers.ReLU(name=f"{name}_up{j}_relu")(x)
    outputs = logits_head(K, x, num_classes, f"{name}_logits")
    return K.Model(inputs, outputs, name=name)


def renet_layer(K, x, units, patch_size, cell, prefix, unroll=False):
    """One ReNet layer on a static ``(B, H, W, C)`` map: ``(B, H / ph, W / pw, 2 * units)``.

    Layers: ``{prefix}_patches`` (+ ``_patches_permute``, ``_patches_flatten``) when the patch is larger than
    1x1, ``{prefix}_columns``, ``{prefix}_vertical``, ``{prefix}_rows`` and ``{prefix}_horizontal``.
    """
    height, width, channels = (int(d) for d in x.shape[1:])
    ph, pw = patch_size
    if height % ph or width % pw:
        raise ValueError(f"{prefix}: a {height}x{width} map does not split into {ph}x{pw} patches")
    rows, cols = height // ph, width // pw
    if (ph, pw) != (1, 1):
        # Space-to-depth by reshapes: each patch becomes one vector of ph * pw * C values, as in ReNet.
        x = K.layers.Reshape((rows, ph, cols, pw * channels), name=f"{prefix}_patches")(x)
        x = K.layers.Permute((1, 3, 2, 4), name=f"{prefix}_patches_permute")(x)
        x = K.layers.Reshape((rows, cols, ph * pw * channels), name=f"{prefix}_patches_flatten")(x)
    x = K.layers.Permute((2, 1, 3), name=f"{prefix}_columns")(x)
    x = _sweep(K, x, units, cell, f"{prefix}_vertical", unroll)
    x = K.layers.Permute((2, 1, 3), name=f"{prefix}_rows")(x)
    return _sweep(K, x, units, cell, f"{prefix}_horizontal", unroll)


def _sweep(K, x, units, cell, name, unroll):
    """A bidirectional RNN along axis 2 of ``(B, N, T, C)``, run on each of the N sequences."""
    rnn = {"gru": K.layers.GRU, "lstm": K.layers.LSTM}[cell](units, return_sequences=True, unroll=unroll,
                                                             name=f"{name}_{cell}")
    return sequence_sweep_layer(K)(K.layers.Bidirectional(rnn, name=f"{name}_bidirectional"), name=name)(x)


_SWEEP_LAYERS = {}


def sequence_sweep_layer(K):
    """The ``SequenceSweep`` wrapper class of Keras module ``K``: runs a sequence layer on every one of the N
    sequences of a ``(B, N, T, C)`` tensor by folding N into the batch (one RNN over B * N sequences), registered
    serializable as ``kseg>SequenceSweep`` in that framework.

    Keras 3's ``TimeDistributed`` calls the wrapped layer once per step of a static axis (here: N separate RNNs,
    N WHILE loops in TFLite, minutes to trace); tf_keras's reshapes. This layer reshapes in both frameworks (two
    RESHAPE ops in TFLite around one recurrent loop per direction).

    Example:
        >>> import keras
        >>> from kseg.models.reseg import sequence_sweep_layer
        >>> sweep = sequence_sweep_layer(keras)(keras.layers.GRU(4, return_sequences=True))
        >>> tuple(sweep(keras.ops.ones((2, 3, 5, 6))).shape)
        (2, 3, 5, 4)
    """
    if K.__name__ not in _SWEEP_LAYERS:
        class SequenceSweep(K.layers.Wrapper):
            def build(self, input_shape):
                if not self.layer.built:
                    self.layer.build((None, *input_shape[2:]))
                self.built = True

            def call(self, inputs, training=None):
                import tensorflow as tf

                n, t, c = (int(d) for d in inputs.shape[1:])
                y = self.layer(tf.reshape(inputs, (-1, t, c)), training=training)
                return tf.reshape(y, (-1, n, t, int(y.shape[-1])))

            def compute_output_shape(self, input_shape):
                inner = self.layer.compute_output_shape((None, *input_shape[2:]))
                return (*input_shape[:3], inner[-1])

        _SWEEP_LAYERS[K.__name__] = K.saving.register_keras_serializable(package="kseg")(SequenceSweep)
    return _SWEEP_LAYERS[K.__name__]
