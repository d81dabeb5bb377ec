"""The backbone contract: ``build_backbone`` returns pyramid features ``{"P1": ..., "P5": ...}``.

``P{k}`` is the feature map at stride ``2**k`` (2, 4, 8, 16, 32), so decoders never name backbone layers.
Backbones come from ``keras.applications`` (or ``tf_keras.applications``) with their own layer names
(``block1_conv1``, ``conv4_block6_out``, ``block_13_expand_relu``), which keeps pretrained weights loadable by name.

Dilated variants (output stride 16 or 8, Chen et al. 2017, "Rethinking Atrous Convolution", arXiv 1706.05587):
``keras.applications`` has no dilation option, so the application's graph is rebuilt layer by layer from its config
with the resolution-halving layers set to stride 1 and the 3x3 layers after them dilated; every weight keeps its
shape and is copied over. Features past the output stride stay at the output-stride resolution.

Normalisation is the first layer of the backbone (``{name}_preprocess``), so inputs are raw RGB in [0, 255]:

* MobileNetV2: ``x / 127.5 - 1``.
* VGG16, ResNet50 ("caffe" mode, BGR mean subtraction): the RGB means are subtracted in RGB order, and instead of
  flipping the channels in the graph (REVERSE_V2 or GATHER, neither an EdgeTPU op) the input-channel axis of the
  first conv kernel is flipped when pretrained (BGR) weights are loaded. The result is exactly the original
  network on BGR input at zero cost; the first kernel in a kseg model is therefore stored in RGB order.

Only 3-channel inputs are supported for now (the caffe means and pretrained first convs are RGB); build RGB-D
models without a backbone.
"""

import os

from kseg.errors import ModelFileError
from kseg.models.blocks import get_keras

_CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)


def _vgg16_spec():
    return {
        "application": "VGG16",
        "caffe": True,
        "first_conv": "block1_conv1",
        "features": ("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3", "block5_pool"),
        # stride reached -> (layers that halve the resolution into it, 3x3 layers working at it)
        "stages": {
            16: (("block4_pool",), ("block5_conv1", "block5_conv2", "block5_conv3")),
            32: (("block5_pool",), ()),
        },
    }


def _resnet50_spec():
    # Keras' ResNet50 (v1) puts the stride on the first 1x1 conv of a stage and on its shortcut.
    return {
        "application": "ResNet50",
        "caffe": True,
        "first_conv": "conv1_conv",
        "features": ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        "stages": {
            16: (("conv4_block1_0_conv", "conv4_block1_1_conv"), tuple(f"conv4_block{i}_2_conv" for i in range(1, 7))),
            32: (("conv5_block1_0_conv", "conv5_block1_1_conv"), tuple(f"conv5_block{i}_2_conv" for i in range(1, 4))),
        },
    }


def _mobilenetv2_spec():
    return {
        "application": "MobileNetV2",
        "caffe": False,
        "first_conv": "Conv1",
        "features": ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
                     "out_relu"),
        "stages": {
            16: (("block_6_pad", "block_6_depthwise"), tuple(f"block_{i}_depthwise" for i in range(7, 13))),
            32: (("block_13_pad", "block_13_depthwise"), tuple(f"block_{i}_depthwise" for i in range(14, 17))),
        },
    }


_SPECS = {"mobilenetv2": _mobilenetv2_spec, "resnet50": _resnet50_spec, "vgg16": _vgg16_spec}
OUTPUT_STRIDES = (8, 16, 32)


def list_backbones():
    """Sorted names accepted by ``build_backbone``."""
    return sorted(_SPECS)


def feature_strides(output_stride=32):
    """Stride of each pyramid level for a backbone built at ``output_stride``: ``{"P1": 2, ..., "P5": ...}``."""
    return {f"P{k}": min(2**k, output_stride) for k in range(1, 6)}


def build_backbone(name, inputs, weights=None, output_stride=32, keras_module=None, **application_kwargs):
    """Attach a ``keras.applications`` backbone to ``inputs`` and return its pyramid features.

    Args:
        name: one of ``list_backbones()``.
        inputs: the model's image tensor, raw RGB in [0, 255], static shape ``(B, H, W, 3)``.
        weights: ``None`` (random init; nothing downloads), ``"imagenet"`` (downloaded by keras.applications,
            needs internet), or the path of a local weights file. A file is matched by layer name: a legacy
            ``.h5`` (``keras.applications`` downloads, tf_keras ``save_weights``, Keras ``model.save("x.h5")``), or
            a Keras 3 ``.weights.h5`` whose groups carry the layer names; a ``.weights.h5`` saved from the same
            ``keras.applications`` model (generic group names) is loaded by that model's structure instead.
            Layers of the file that the backbone lacks are ignored (e.g. a classifier head).
        output_stride: 32 (the plain network), 16 or 8 (dilated).
        keras_module: ``keras`` (default) or ``tf_keras``.
        **application_kwargs: passed to the application, e.g. ``alpha=0.35`` for MobileNetV2.

    Returns:
        ``{"P1": ..., "P5": ...}``, the feature tensors at strides ``feature_strides(output_stride)``.

    Raises:
        ValueError: unknown name, unsupported output stride or input channels.
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
    shape = tuple(inputs.shape[1:])
    if shape[-1] != 3:
        raise ValueError(f"backbone {name!r} takes 3-channel RGB input, got input shape {shape}; "
                         "for other channel counts build the model with backbone=None")
    spec = _SPECS[name]()
    app_weights = "imagenet" if weights == "imagenet" else None
    if weights not in (None, "imagenet") and not os.path.isfile(os.fspath(weights)):
        raise ModelFileError(f"backbone weights file not found: {weights} (pass weights=None, 'imagenet' or a path)")
    application = getattr(K.applications, spec["application"])(
        input_shape=shape, include_top=False, weights=app_weights, **application_kwargs)
    if weights not in (None, "imagenet"):
        _load_weights_file(application, os.fspath(weights))

    if spec["caffe"]:
        x = K.layers.Rescaling(1.0, offset=[-m for m in _CAFFE_MEAN_RGB], name=f"{name}_preprocess")(inputs)
    else:
        x = K.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{name}_preprocess")(inputs)
    layers = _rebuild(application, x, _dilation_overrides(application, spec["stages"], output_stride))
    if spec["caffe"] and weights is not None:
        kernel, *rest = layers[spec["first_conv"]].get_weights()
        layers[spec["first_conv"]].set_weights([kernel[:, :, ::-1, :], *rest])
    return {f"P{k}": layers[layer].output for k, layer in enumerate(spec["features"], start=1)}


def _dilation_overrides(application, stages, output_stride):
    """Config changes that keep the resolution at ``output_stride`` (DeepLab's rule: the layer that would
    downsample runs at stride 1 with the current rate, the layers after it at twice the rate)."""
    overrides, rate = {}, 1
    for stride in sorted(stages):
        if stride <= output_stride:
            continue
        reducers, followers = stages[stride]
        for layer_name in reducers:
            overrides[layer_name] = _without_stride(application.get_layer(layer_name), rate)
        rate *= 2
        for layer_name in followers:
            overrides[layer_name] = {"dilation_rate": (rate, rate)}
    return overrides


def _without_stride(layer, rate):
    kind = type(layer).__name__
    if kind == "ZeroPadding2D":  # precedes MobileNetV2's 3x3 "valid" stride-2 conv: pad like "same" at `rate`
        return {"padding": ((rate, rate), (rate, rate))}
    if kind == "MaxPooling2D":  # DeepLab v1: 3x3 stride-1 pooling keeps the size and the receptive field
        return {"pool_size": (3, 3), "strides": (1, 1), "padding": "same"}
    if tuple(layer.kernel_size) == (1, 1):
        return {"strides": (1, 1)}
    return {"strides": (1, 1), "dilation_rate": (rate, rate)}


def _rebuild(application, x, overrides):
    """Re-create ``application``'s layers on tensor ``x`` (in the caller's graph, not nested), applying
    ``overrides`` (layer name -> config changes), and copy every weight. Returns ``{layer name: new layer}``.

    Walks the model config: Keras 3 and tf_keras both serialise a functional model as layers in topological
    order with named inbound layers (``clone_model`` onto a non-Input tensor hangs in tf_keras 2.21).
    """
    tensors, layers = {}, {}
    for entry in application.get_config()["layers"]:
        old = application.get_layer(entry["config"]["name"])
        if type(old).__name__ == "InputLayer":
            tensors[old.name] = x
            continue
        config = old.get_config()
        config.update(overrides.get(old.name, {}))
        new = type(old).from_config(config)
        args = [tensors[n] for n in _inbound_layer_names(entry["inbound_nodes"])]
        tensors[old.name] = new(args[0] if len(args) == 1 else args)
        new.set_weights(old.get_weights())
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
    stored = _read_named_weights(path)
    targets = [layer for layer in application.layers if layer.weights]
    if path.endswith(".weights.h5") and not any(layer.name in stored for layer in targets):
        try:  # Keras 3 names the groups of an application's weights by class: load it by structure
            application.load_weights(path)
            return
        except Exception as e:  # noqa: BLE001 - Keras raises ValueError, KeyError or OSError here
            raise ModelFileError(
                f"{path}: no group is named after a layer of this backbone (e.g. {targets[0].name!r}) and it does "
                f"not load as a {application.name} weights file either ({type(e).__name__}: {e})") from None
    missing = [layer.name for layer in targets if layer.name not in stored]
    if missing:
        raise ModelFileError(f"{path}: no weights for backbone layers {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}; is it a {application.name} weights file?")
    for layer in targets:
        want = [tuple(w.shape) for w in layer.get_weights()]
        got = [a.shape for a in stored[layer.name]]
        if want != got:
            raise ModelFileError(f"{path}: layer {layer.name!r} has weight shapes {got} in the file but the backbone "
                                 f"needs {want} (different input channels, width multiplier or architecture?)")
        layer.set_weights(stored[layer.name])


def _read_named_weights(path):
    """``{layer name: [arrays]}`` from a legacy ``.h5`` (``layer_names`` attribute) or from the named groups of a
    Keras 3 ``.weights.h5`` (``.../<layer name>/vars/0..n``)."""
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
                group = root[_text(layer_name)]
                out[_text(layer_name)] = [group[_text(w)][()] for w in group.attrs.get("weight_names", [])]
            return out
        out = {}

        def visit(group_path, obj):
            if isinstance(obj, h5py.Group) and isinstance(obj.get("vars"), h5py.Group) and len(obj["vars"]):
                out[group_path.rsplit("/", 1)[-1]] = [obj["vars"][k][()] for k in sorted(obj["vars"], key=int)]

        f.visititems(visit)
        return out


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else value
