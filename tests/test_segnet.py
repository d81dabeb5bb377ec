"""SegNet's unpooling with pooling indices from core layers (``max_unpool``), checked against a direct numpy
max unpooling, and its VGG16 encoder weights. The registry-wide checks are in test_models.py."""

import numpy as np
import pytest

import kseg
from kseg.errors import ModelFileError
from kseg.models.segnet import max_unpool, upsample_nearest2x


def _keras(framework):
    if framework == "tf_keras":
        import tf_keras

        return tf_keras
    import keras

    return keras


def numpy_max_unpool(x, features):
    """Reference: MaxPoolWithArgmax's switches, then each ``x`` value scattered to its window's argmax."""
    out = np.zeros_like(features)
    batch, height, width, channels = x.shape
    for n, i, j, c in np.ndindex(batch, height, width, channels):
        window = features[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
        a, b = np.unravel_index(np.argmax(window), (2, 2))
        out[n, 2 * i + a, 2 * j + b, c] = x[n, i, j, c]
    return out


def pooled_of(x):
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


def unpool_model(K, shape):
    """``(x, features) -> max_unpool(x, features, MaxPooling2D(2)(features))``."""
    height, width, channels = shape
    x = K.Input((height // 2, width // 2, channels))
    features = K.Input(shape)
    pooled = K.layers.MaxPooling2D(2)(features)
    return K.Model([x, features], max_unpool(K, x, features, pooled, "unpool"))


@pytest.mark.parametrize("framework", ["keras", "tf_keras"])
def test_upsample_nearest2x_element_order(framework):
    K = _keras(framework)
    v = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    inputs = K.Input(v.shape[1:])
    got = np.asarray(K.Model(inputs, upsample_nearest2x(K, inputs, "up"))(v))
    np.testing.assert_array_equal(got, v.repeat(2, axis=1).repeat(2, axis=2))


@pytest.mark.parametrize("framework", ["keras", "tf_keras"])
def test_max_unpool_matches_numpy(framework):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 6, 10, 4)).astype(np.float32)
    windows = features.reshape(2, 3, 2, 5, 2, 4).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    top2 = np.sort(windows, axis=1)[:, -2:]
    assert np.all(top2[:, 1] > top2[:, 0]), "the reference needs inputs without ties"
    x = rng.uniform(0, 10, (2, 3, 5, 4)).astype(np.float32)  # non-negative, as after a ReLU
    got = np.asarray(unpool_model(_keras(framework), features.shape[1:])([x, features]))
    np.testing.assert_array_equal(got, numpy_max_unpool(x, features))


def test_max_unpool_ties_go_to_every_tied_position():
    import keras

    features = np.zeros((1, 2, 4, 1), np.float32)  # window 0: all zero (a ReLU's dead window)
    features[0, :, 2:, 0] = [[3.0, 1.0], [3.0, 2.0]]  # window 1: the maximum 3 twice
    x = np.array([[[[5.0], [7.0]]]], np.float32)
    got = np.asarray(unpool_model(keras, (2, 4, 1))([x, features]))[0, :, :, 0]
    np.testing.assert_array_equal(got, [[5, 5, 7, 0], [5, 5, 7, 0]])


def test_max_unpool_switches_have_no_gradient():
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(2)
    features = tf.Variable(rng.normal(size=(1, 4, 6, 3)).astype(np.float32))
    x = tf.Variable(rng.uniform(1, 2, (1, 2, 3, 3)).astype(np.float32))
    model = unpool_model(keras, (4, 6, 3))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(model([x, features]))
    grad_x, grad_features = tape.gradient(total, [x, features])
    np.testing.assert_array_equal(np.asarray(grad_x), np.ones(x.shape))  # one position per window passes x on
    assert grad_features is None or not np.any(np.asarray(grad_features))


def test_max_unpool_exact_in_int8():
    """Full-int8 TFLite: with features on the int8 grid (integers 0..255, scale 1) the switches are exact."""
    import keras

    from edge.interpreter import load_interpreter, run_once
    from export.convert import to_tflite

    rng = np.random.default_rng(3)
    image = keras.Input((8, 8, 2))
    pooled = keras.layers.MaxPooling2D(2)(image)
    model = keras.Model(image, max_unpool(keras, pooled, image, pooled, "unpool"))
    # distinct integers (no ties) spanning 0..255 in every sample: the input scale is exactly 1
    data = [rng.permutation(np.r_[0, 255, rng.choice(np.arange(1, 255), 126, replace=False)])
            .reshape(1, 8, 8, 2).astype(np.float32) for _ in range(8)]
    flatbuffer = to_tflite(model, "int8", data, io_dtype="float32")
    x = data[0]
    got = run_once(load_interpreter(model_content=flatbuffer), x)
    expected = numpy_max_unpool(pooled_of(x), x)
    np.testing.assert_allclose(got, expected, atol=1.0)  # output requantized; no value misplaced
    assert np.array_equal(got > 0.5, expected > 0.5)


def test_max_unpool_rejects_mismatched_shapes():
    import keras

    features = keras.Input((8, 8, 4))
    with pytest.raises(ValueError, match="max_unpool"):
        max_unpool(keras, keras.Input((4, 4, 3)), features, keras.layers.MaxPooling2D(2)(features), "unpool")


# --- the network ---------------------------------------------------------------------------------------------------

def test_segnet_layout():
    model = kseg.create_model("segnet", num_classes=5, input_shape=(32, 32, 3))
    encoder = [layer.name for layer in model.layers if layer.name.startswith("block") and
               type(layer).__name__ == "Conv2D"]
    assert encoder == [f"block{b}_conv{j}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for j in range(1, n + 1)]
    decoder = [layer for layer in model.layers if layer.name.startswith("segnet_dec") and
               type(layer).__name__ == "Conv2D"]
    assert [layer.filters for layer in decoder] == [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64, 64]
    assert decoder[0].name == "segnet_dec5_conv1" and decoder[-1].name == "segnet_dec1_conv2"
    # The paper's 29.5M parameters, plus the 1x1 classifier and BN terms instead of a 3x3 classifier conv.
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert abs(params - 29.5e6) / 29.5e6 < 0.01, params

    shallow = kseg.create_model("segnet", num_classes=2, input_shape=(8, 12, 1), base_filters=2, depth=2)
    assert shallow.output.shape[1:] == (8, 12, 2)
    assert "block3_conv1" not in [layer.name for layer in shallow.layers]


def _identity_batchnorm(model):
    """BN as the identity in inference (moving variance 1 - eps), so the encoder computes plain VGG16."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([np.ones_like(gamma), np.zeros_like(beta), np.zeros_like(mean),
                               np.full_like(var, 1.0 - layer.epsilon)])


@pytest.mark.parametrize("file_format", ["legacy.h5", "keras3.weights.h5"])
def test_segnet_loads_vgg16_weights(file_format, tmp_path):
    import keras

    reference = keras.applications.VGG16(input_shape=(32, 32, 3), include_top=False, weights=None)
    path = tmp_path / f"vgg16_{file_format}"
    if file_format == "legacy.h5":
        reference.save(path)
    else:
        reference.save_weights(path)
    model = kseg.create_model("segnet", num_classes=2, input_shape=(32, 32, 3), weights=str(path))
    kernel, bias = model.get_layer("block1_conv1").get_weights()
    want_kernel, want_bias = reference.get_layer("block1_conv1").get_weights()
    np.testing.assert_array_equal(kernel, want_kernel[:, :, ::-1, :])  # caffe BGR kernel stored for RGB input
    np.testing.assert_array_equal(bias, want_bias)
    for name in ("block3_conv2", "block5_conv3"):
        for got, want in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)

    # On raw RGB the encoder is VGG16 on its own caffe preprocessing.
    _identity_batchnorm(model)
    encoder = keras.Model(model.input, model.get_layer("block5_pool").output)
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(reference(keras.applications.vgg16.preprocess_input(x.copy())))
    np.testing.assert_allclose(np.asarray(encoder(x)), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_segnet_imagenet_weights_come_from_keras_applications(monkeypatch):
    import keras

    made = {}
    original = keras.applications.VGG16

    def fake_vgg16(**kwargs):  # offline stand-in for the download
        assert kwargs["weights"] == "imagenet"
        made["model"] = original(**dict(kwargs, weights=None))
        return made["model"]

    monkeypatch.setattr(keras.applications, "VGG16", fake_vgg16)
    model = kseg.create_model("segnet", num_classes=2, input_shape=(32, 32, 3), weights="imagenet")
    for got, want in zip(model.get_layer("block2_conv1").get_weights(),
                         made["model"].get_layer("block2_conv1").get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_segnet_weights_file_errors(tmp_path):
    import keras

    with pytest.raises(ModelFileError, match="not found"):
        kseg.create_model("segnet", num_classes=2, input_shape=(32, 32, 3), weights=str(tmp_path / "none.h5"))
    gray = keras.applications.VGG16(input_shape=(32, 32, 1), include_top=False, weights=None)
    gray.save(tmp_path / "gray.h5")
    with pytest.raises(ModelFileError, match="block1_conv1.*input channels"):
        kseg.create_model("segnet", num_classes=2, input_shape=(32, 32, 3), weights=str(tmp_path / "gray.h5"))
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, name="fc")])
    other.save(tmp_path / "other.h5")
    with pytest.raises(ModelFileError, match="no weights for backbone layers"):
        kseg.create_model("segnet", num_classes=2, input_shape=(32, 32, 3), weights=str(tmp_path / "other.h5"))
