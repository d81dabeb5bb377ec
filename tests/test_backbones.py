"""Backbone-contract features beyond the registry checks of ``test_models.py``: FCN / DeepLab v1 fc6 and fc7 from
VGG16's classifier in a keras.applications weights file, DeepLabv3's multi-grid, and EfficientNet B4-B7."""

import math

import h5py
import numpy as np
import pytest

import kseg
from kseg.errors import ModelFileError
from kseg.models.backbones import _dilation_overrides, _efficientnet_spec, build_backbone
from kseg.models.fcn import load_vgg16_classifier

# float32 sums of 25088 products: the conv and the dense layer add them in different orders
RTOL = 1e-5


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def _write_legacy_h5(path, layers):
    """The layout of keras.applications' weights downloads (Keras 2 ``save_weights`` to HDF5): root attributes
    ``layer_names``, ``backend`` and ``keras_version``; one group per layer (weightless ones too) whose
    ``weight_names`` attribute lists its datasets ``<layer>/kernel:0``, ``<layer>/bias:0``."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{kind}:0" for kind in ("kernel", "bias")][:len(layer.get_weights())]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, layer.get_weights()):
                group.create_dataset(n, data=w)


@pytest.fixture(scope="module")
def vgg16_with_top(tmp_path_factory):
    """A VGG16 weights file *with* the classifier, in the download layout, random values: the real conv layers and
    a classifier 16 wide instead of 4096 (the real ``fc1`` alone is 411 MB). Returns the path, the conv layers
    (``keras.applications.VGG16(include_top=False)``) and the classifier (``flatten`` -> ``fc1`` -> ReLU ->
    ``fc2`` -> ReLU -> ``predictions``, a Keras model on the 7x7x512 pool5)."""
    import keras

    rng = np.random.default_rng(0)
    convs = keras.applications.VGG16(input_shape=(32, 32, 3), include_top=False, weights=None)
    pool5 = keras.Input((7, 7, 512))
    x = keras.layers.Flatten(name="flatten")(pool5)
    x = keras.layers.ReLU()(keras.layers.Dense(16, name="fc1")(x))
    x = keras.layers.ReLU()(keras.layers.Dense(16, name="fc2")(x))
    head = keras.Model(pool5, keras.layers.Dense(10, name="predictions")(x))
    for layer in head.layers:  # non-zero biases, so that a lost bias shows
        if layer.weights:
            layer.set_weights([w + rng.normal(0, 0.1, w.shape).astype(np.float32) for w in layer.get_weights()])
    path = tmp_path_factory.mktemp("vgg16") / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    _write_legacy_h5(path, convs.layers + [head.get_layer(n) for n in ("flatten", "fc1", "fc2", "predictions")])

    # Keras itself reads the file into VGG16-with-top's architecture (input 224: pool5 is 7x7)
    image = keras.Input((224, 224, 3))
    body = keras.applications.VGG16(input_tensor=image, include_top=False, weights=None)
    x = keras.layers.Flatten(name="flatten")(body.output)
    x = keras.layers.Dense(16, activation="relu", name="fc1")(x)
    fc2 = keras.layers.Dense(16, activation="relu", name="fc2")(x)
    with_top = keras.Model(image, [fc2, keras.layers.Dense(10, name="predictions")(fc2)])
    with_top.load_weights(path)
    for n in ("block5_conv3", "fc1", "fc2"):
        want = (convs if n.startswith("block") else head).get_layer(n).get_weights()
        for got, w in zip(with_top.get_layer(n).get_weights(), want, strict=True):
            np.testing.assert_array_equal(got, w)
    return path, convs, head, with_top


def _dense(head, window):
    """fc1 (pre-activation) and fc2 after ReLU of the reference classifier on a (1, 7, 7, 512) window."""
    fc1 = np.asarray(head.get_layer("fc1")(head.get_layer("flatten")(window)))
    fc2 = np.asarray(head.get_layer("fc2")(np.maximum(fc1, 0)))
    return fc1[0], np.maximum(fc2, 0)[0]


def test_fcn_fc6_fc7_are_vgg16_classifier_convolutionalized(vgg16_with_top, tmp_path):
    """FCN (Long et al., sec. 3.1): fc6 = fc1's kernel reshaped to 7x7x512, fc7 = fc2's to 1x1; on a 7x7 window
    the convs compute exactly what the dense layers compute on the window flattened by Keras' Flatten."""
    path, convs, head, with_top = vgg16_with_top
    model = kseg.create_model("fcn32s", num_classes=3, input_shape=(32, 32, 3), fc_filters=16, weights=str(path))
    fc6, fc7 = model.get_layer("fcn32s_fc6"), model.get_layer("fcn32s_fc7")
    (w1, b1), (w2, b2) = head.get_layer("fc1").get_weights(), head.get_layer("fc2").get_weights()
    for got, want in zip(fc6.get_weights() + fc7.get_weights(),
                         (w1.reshape(7, 7, 512, 16), b1, w2.reshape(1, 1, 16, 16), b2), strict=True):
        np.testing.assert_array_equal(got, want)

    window = np.random.default_rng(1).normal(size=(1, 7, 7, 512)).astype(np.float32)
    conv6 = np.asarray(fc6(window))  # "same" padding: the centre output sees exactly the 7x7 window
    conv7 = np.asarray(model.get_layer("fcn32s_fc7_relu")(fc7(model.get_layer("fcn32s_fc6_relu")(conv6))))
    dense6, dense7 = _dense(head, window)
    _close(conv6[0, 3, 3], dense6)
    _close(conv7[0, 3, 3], dense7)
    # the same file filled the backbone
    np.testing.assert_array_equal(model.get_layer("block5_conv3").get_weights()[0],
                                  convs.get_layer("block5_conv3").get_weights()[0])

    # Keras 3's save_weights of the network with the top names its groups by class (dense, dense_1, ...)
    keras3 = tmp_path / "vgg16_top.weights.h5"
    with_top.save_weights(keras3)
    again = kseg.create_model("fcn32s", num_classes=3, input_shape=(32, 32, 3), fc_filters=16, weights=str(keras3))
    for name in ("fcn32s_fc6", "fcn32s_fc7", "block5_conv3"):
        for got, want in zip(again.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)


def test_deeplabv1_fc6_fc7_are_decimated_vgg16_classifier(vgg16_with_top):
    """DeepLab v1 (Chen et al. 2015, sec. 3.1 / 4.1): fc6 keeps fc1's taps 0, 3, 6 of the 7x7 and every
    (width / fc_filters)-th filter, fc7 the same filters of fc2. The stride-8 features are 4x denser than pool5,
    so fc6 at dilation 12 = 3 x 4 reads where fc1 read taps 0, 3, 6: on such a map it equals fc1 on the window
    with its other taps zeroed, for the kept filters."""
    path, _, head, _ = vgg16_with_top
    model = kseg.create_model("deeplabv1", num_classes=3, input_shape=(32, 32, 3), fc_filters=4, weights=str(path))
    fc6, fc7 = model.get_layer("deeplabv1_fc6"), model.get_layer("deeplabv1_fc7")
    (w1, b1), (w2, b2) = head.get_layer("fc1").get_weights(), head.get_layer("fc2").get_weights()
    want = (w1.reshape(7, 7, 512, 16)[::3, ::3, :, ::4], b1[::4], w2[::4, ::4].reshape(1, 1, 4, 4), b2[::4])
    for got, w in zip(fc6.get_weights() + fc7.get_weights(), want, strict=True):
        np.testing.assert_array_equal(got, w)
    assert fc6.dilation_rate == (12, 12)

    window = np.zeros((1, 7, 7, 512), np.float32)
    kept = np.ix_([0], [0, 3, 6], [0, 3, 6])
    window[kept] = np.random.default_rng(2).normal(size=(1, 3, 3, 512))
    dense = np.zeros((1, 25, 25, 512), np.float32)  # pool5's 7x7 grid at stride 8: every 4th position
    dense[:, ::4, ::4] = window
    conv6 = np.asarray(fc6(dense))[0, 12, 12]
    conv7 = np.asarray(model.get_layer("deeplabv1_fc7_relu")(fc7(np.maximum(conv6, 0)[None, None, None])))
    fc1 = np.asarray(head.get_layer("fc1")(head.get_layer("flatten")(window)))[0, ::4]
    _close(conv6, fc1)
    _close(conv7[0, 0, 0], np.maximum(np.maximum(fc1, 0) @ w2[::4, ::4] + b2[::4], 0))


@pytest.mark.slow
def test_fcn_at_224_is_vgg16_with_top(vgg16_with_top):
    """End to end at VGG16's own 224x224: FCN-32s's fc7 at the centre of the 7x7 stride-32 map equals the
    classifier network's fc2 on the same image (kseg on raw RGB, Keras' VGG16 on its caffe preprocessing)."""
    import keras

    path, _, _, with_top = vgg16_with_top
    model = kseg.create_model("fcn32s", num_classes=3, input_shape=(224, 224, 3), fc_filters=16, weights=str(path))
    fc7 = keras.Model(model.input, model.get_layer("fcn32s_fc7_relu").output)
    x = np.random.default_rng(3).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    want = np.asarray(with_top(keras.applications.vgg16.preprocess_input(x.copy()))[0])[0]
    _close(np.asarray(fc7(x))[0, 3, 3], want)


def test_vgg16_classifier_mismatch_is_refused(vgg16_with_top, tmp_path):
    path, _, head, _ = vgg16_with_top
    with pytest.raises(ModelFileError, match="build with fc_filters=16"):
        kseg.create_model("fcn8s", num_classes=2, input_shape=(32, 32, 3), fc_filters=8, weights=str(path))

    # the checks run before any weight is set: first the file, then its fit to the built fc6/fc7
    import keras

    fc_only = [head.get_layer(n) for n in ("flatten", "fc1", "fc2")]
    _write_legacy_h5(tmp_path / "top.h5", fc_only)
    _write_legacy_h5(tmp_path / "fc1_only.h5", fc_only[:2])

    def model(name, **kwargs):
        return kseg.create_model(name, num_classes=2, input_shape=(32, 32, 3), **kwargs)

    deeplab = model("deeplabv1", fc_filters=5, dropout=0.0)
    with pytest.raises(ModelFileError, match="fc_filters dividing 16"):
        load_vgg16_classifier(deeplab, tmp_path / "top.h5", "deeplabv1", subsample=True)
    with pytest.raises(ModelFileError, match="needs fc1 and fc2"):
        load_vgg16_classifier(deeplab, tmp_path / "fc1_only.h5", "deeplabv1", subsample=True)
    other = keras.Sequential([keras.Input((7, 7, 256)), keras.layers.Flatten(name="flatten"),
                              keras.layers.Dense(16, name="fc1"), keras.layers.Dense(16, name="fc2")])
    _write_legacy_h5(tmp_path / "other.h5", other.layers)
    with pytest.raises(ModelFileError, match="not VGG16's classifier"):
        load_vgg16_classifier(deeplab, tmp_path / "other.h5", "deeplabv1", subsample=True)
    bn = model("fcn32s", fc_filters=16, batch_norm=True)
    with pytest.raises(ModelFileError, match="batch_norm=False"):
        load_vgg16_classifier(bn, tmp_path / "top.h5", "fcn32s", subsample=False)
    # a file without the classifier (or weights=None / "imagenet") leaves fc6/fc7 as built
    assert not load_vgg16_classifier(deeplab, None, "deeplabv1", subsample=True)


# output stride 8: the same rule at twice the rates, a second ResNet50 build (slow, to keep make test in 30 minutes)
@pytest.mark.parametrize("output_stride, conv4_rate, conv5_rates", [
    (16, 1, (2, 4, 8)), pytest.param(8, 2, (4, 8, 16), marks=pytest.mark.slow)])
def test_deeplabv3_multi_grid(output_stride, conv4_rate, conv5_rates):
    """DeepLabv3 (Chen et al. 2017, sec. 3.2 / 4.1): the three units of ResNet's last block take the block's rate
    times Multi_Grid = (1, 2, 4), e.g. 2 * (1, 2, 4) at output stride 16; the other blocks and every shape stay."""
    model = kseg.create_model("deeplabv3", num_classes=2, input_shape=(64, 64, 3), backbone="resnet50",
                              output_stride=output_stride, aspp_filters=8)
    assert [model.get_layer(f"conv5_block{i}_2_conv").dilation_rate for i in (1, 2, 3)] == [(r, r) for r in conv5_rates]
    assert {model.get_layer(f"conv4_block{i}_2_conv").dilation_rate for i in range(1, 7)} == {(conv4_rate,) * 2}
    assert model.get_layer("conv5_block3_out").output.shape[1:3] == (64 // output_stride,) * 2
    assert tuple(model.output.shape) == (None, 64, 64, 2)  # the registry tests run deeplabv3 with multi-grid


def test_multi_grid_on_other_backbones():
    """The last block is the deepest stage with k x k convs after its downsampling layer; one with another number
    of units than the grid takes the unit rates in turn (EfficientNet-B0: 6b, 6c, 6d, 7a; undilated, output
    stride 32, so no layer of the application is consulted); VGG16's is block5, at stride 16."""
    import keras

    stages = _efficientnet_spec(0)["stages"]
    overrides = _dilation_overrides(None, stages, 32, (1, 2, 4))
    assert {n: o["dilation_rate"][0] for n, o in overrides.items()} == {
        "block6b_dwconv": 1, "block6c_dwconv": 2, "block6d_dwconv": 4, "block7a_dwconv": 1}
    assert _dilation_overrides(None, stages, 32) == {}

    image = keras.Input((64, 64, 3))
    vgg = keras.Model(image, build_backbone("vgg16", image, output_stride=8, multi_grid=(1, 2, 4))["P5"])
    assert [vgg.get_layer(f"block5_conv{i}").dilation_rate for i in (1, 2, 3)] == [(2, 2), (4, 4), (8, 8)]
    assert tuple(vgg.output.shape[1:3]) == (8, 8)
    for bad in ((), (1, 0), "124", (1.0, 2.0), 2):
        with pytest.raises(ValueError, match="multi_grid"):
            build_backbone("vgg16", image, multi_grid=bad)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("variant", [4, 5, 6, 7])
def test_efficientnet_b4_b7_layer_names_match_keras(variant, monkeypatch):
    """Without building B4-B7 (5-15 s each here; built in the slow tests): kseg's stage layer names for variant
    ``variant`` are the block names Keras generates from its own depth coefficient and block table."""
    import keras
    import keras.src.applications.efficientnet as efficientnet

    captured = {}

    def record(width_coefficient, depth_coefficient, default_size, *args, **kwargs):
        captured.update(depth=depth_coefficient, size=default_size)
        raise _Stop

    monkeypatch.setattr(efficientnet, "EfficientNet", record)
    with pytest.raises(_Stop):
        getattr(keras.applications, f"EfficientNetB{variant}")(weights=None)
    blocks = [[f"block{s}{chr(ord('a') + j)}" for j in range(math.ceil(captured["depth"] * args["repeats"]))]
              for s, args in enumerate(efficientnet.DEFAULT_BLOCKS_ARGS, start=1)]
    spec = _efficientnet_spec(variant)
    assert spec["application"] == f"EfficientNetB{variant}"
    assert spec["stages"][16][1] == tuple(f"{b}_dwconv" for b in blocks[3][1:] + blocks[4])
    assert spec["stages"][32][1] == tuple(f"{b}_dwconv" for b in blocks[5][1:] + blocks[6])
    assert [efficientnet.DEFAULT_BLOCKS_ARGS[i]["strides"] for i in (3, 5)] == [2, 2]  # stages 4 and 6 halve
    assert f"efficientnetb{variant}" in kseg.models.list_backbones()


@pytest.mark.slow
@pytest.mark.parametrize("variant, size", [(4, 380), (5, 456), (6, 528), (7, 600)])
def test_efficientnet_b4_b7_full_size(variant, size):
    """At its paper resolution: P1..P5 at strides 2..32, and the backbone has the application's weights (every
    parameter except the replaced Normalization's statistics)."""
    import keras

    name = f"efficientnetb{variant}"
    application = getattr(keras.applications, f"EfficientNetB{variant}")(
        input_shape=(size, size, 3), include_top=False, weights=None)
    image = keras.Input((size, size, 3))
    features = build_backbone(name, image)
    # the paper sizes are not multiples of 32: each stride-2 layer rounds up
    assert [tuple(features[f"P{k}"].shape[1:3]) for k in range(1, 6)] == [(math.ceil(size / 2**k),) * 2
                                                                          for k in range(1, 6)]
    backbone = keras.Model(image, features["P5"])
    normalization = sum(w.size for layer in application.layers if type(layer).__name__ == "Normalization"
                        for w in layer.get_weights())
    assert backbone.count_params() == application.count_params() - normalization
    print(f"{name} at {size}: {backbone.count_params() / 1e6:.2f} M parameters")
