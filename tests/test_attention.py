"""Model-specific checks of the attention and recurrent models (the registry checks are in test_models.py): the
attention behaves as the papers define it, on intermediate outputs of small models."""

import numpy as np
import pytest

import kseg
from kseg.models.registry import inference_model
from model_case import random_images, randomize_batchnorm, run_tflite_test, run_twin_test
from test_models import SMALL_CONFIGS


def _probe(model, layer_names):
    """A model from the input to the named layers' outputs (sharing the weights)."""
    import keras

    return keras.Model(model.input, [model.get_layer(n).output for n in layer_names])


def _outputs(model, layer_names, images):
    return [np.asarray(y) for y in _probe(model, layer_names)(images, training=False)]


def _calibrate_batchnorm(model, layers):
    """Set the moving statistics of the BatchNormalization layers among ``layers`` to those of real activations
    (one training-mode pass at momentum 0). With the initial statistics (mean 0, variance 1) the small random
    MobileNetV2 shrinks its activations layer by layer to features that hardly depend on the image (logits
    around 1e-10), which would hide what these tests look for."""
    batchnorms = [layer for layer in layers if type(layer).__name__ == "BatchNormalization"]
    momenta = [layer.momentum for layer in batchnorms]
    for layer in batchnorms:
        layer.momentum = 0.0
    model(random_images(model, batch=4, seed=2), training=True)
    for layer, momentum in zip(batchnorms, momenta):
        layer.momentum = momentum


@pytest.fixture(scope="module")
def attention_to_scale_model():
    model = kseg.create_model("attention_to_scale", **SMALL_CONFIGS["attention_to_scale"])
    # The BN layers of the shared network are inside the nested model, out of reach of the registry checks'
    # randomize_batchnorm.
    _calibrate_batchnorm(model, model.get_layer("attention_to_scale_shared").layers)
    return model


def test_attention_to_scale_weights_are_a_softmax_over_scales(attention_to_scale_model):
    model = attention_to_scale_model
    import keras

    # each scale's scores at the merge resolution are the first inputs of the merge's products
    scores = [model.get_layer(f"attention_to_scale_merge_product{i}").input[0] for i in range(2)]
    probe = keras.Model(model.input, [model.get_layer("attention_to_scale_attention").output, *scores,
                                      model.get_layer("attention_to_scale_merge").output])
    a, b = (random_images(model, batch=2, seed=seed) for seed in (0, 1))
    weights, score1, score05, merged = (np.asarray(y) for y in probe(a, training=False))
    assert weights.shape == (2, 8, 8, 2)  # stride-8 map of a 64x64 input, one weight per scale
    assert np.all(weights > 0) and np.all(weights < 1)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-6)
    # the merged scores are the attention-weighted sum of the per-scale scores (float32 rounding only)
    expected = weights[..., :1] * score1 + weights[..., 1:] * score05
    np.testing.assert_allclose(merged, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # the weights depend on the image (not a constant split) and on the pixel
    other = np.asarray(probe(b, training=False)[0])
    assert np.max(np.abs(other - weights)) > 1e-3
    assert np.std(weights[0, ..., 0]) > 1e-4


def test_attention_to_scale_tflite_and_twin_with_the_shared_network_randomised(attention_to_scale_model):
    """The registry's TFLite (1e-4 relative) and twin (1e-5 relative) checks, with BN statistics of real
    activations in the nested shared network, whose logits are then far from zero."""
    model = attention_to_scale_model
    assert np.max(np.abs(np.asarray(model(random_images(model), training=False)))) > 1e-2
    run_tflite_test(model)
    run_twin_test(model, "attention_to_scale", SMALL_CONFIGS["attention_to_scale"])


def test_attention_to_scale_aux_outputs_share_one_network():
    model = kseg.create_model("attention_to_scale", aux_head=True, **SMALL_CONFIGS["attention_to_scale"])
    shared = model.get_layer("attention_to_scale_shared")
    # one set of backbone / head weights for both scales: the nested network is called once per scale
    assert len(shared._inbound_nodes) == 2
    assert len(model.outputs) == 3  # merged scores and one extra supervision per scale
    x = random_images(model)
    deploy = inference_model(model)
    assert len(deploy.outputs) == 1
    np.testing.assert_array_equal(np.asarray(deploy(x, training=False)), np.asarray(model(x, training=False)[0]))


@pytest.fixture(scope="module")
def danet_model():
    model = kseg.create_model("danet", **SMALL_CONFIGS["danet"])
    randomize_batchnorm(model)
    return model


def test_danet_attention_maps_are_row_stochastic(danet_model):
    model = danet_model
    x = random_images(model, batch=2)
    pam, cam, query, key = _outputs(model, ["danet_pam_attention", "danet_cam_attention", "danet_pam_query_flat",
                                           "danet_pam_key_flat"], x)
    assert pam.shape == (2, 64, 64)  # N x N for the 8x8 map
    assert cam.shape == (2, 16, 16)  # C x C for inter_filters=16
    for attention in (pam, cam):
        assert np.all(attention >= 0)
        np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=1e-5)
    assert query.shape[-1] == 16 // 8  # query/key reduced to C / 8
    energy = np.einsum("bic,bjc->bij", query, key)
    expected = np.exp(energy - energy.max(-1, keepdims=True))
    np.testing.assert_allclose(pam, expected / expected.sum(-1, keepdims=True), atol=1e-5)


def test_danet_with_gamma_zero_is_its_head_path(danet_model):
    model = danet_model
    x = random_images(model)
    names = ["danet_pam", "danet_pam_in_relu", "danet_cam", "danet_cam_in_relu"]
    pam, pam_in, cam, cam_in = _outputs(model, names, x)
    # gamma starts at 0: each module passes its input through exactly
    assert model.get_layer("danet_pam_gamma").get_weights()[0] == 0.0
    np.testing.assert_array_equal(pam, pam_in)
    np.testing.assert_array_equal(cam, cam_in)
    before = np.asarray(model(x, training=False))
    try:
        for module in ("pam", "cam"):
            model.get_layer(f"danet_{module}_gamma").set_weights([np.float32(1.0)])
        pam, pam_in = _outputs(model, ["danet_pam", "danet_pam_in_relu"], x)
        assert np.max(np.abs(pam - pam_in)) > 1e-3
        assert np.max(np.abs(np.asarray(model(x, training=False)) - before)) > 1e-4
    finally:
        for module in ("pam", "cam"):
            model.get_layer(f"danet_{module}_gamma").set_weights([np.float32(0.0)])


def test_ran_reverse_attention_combination():
    model = kseg.create_model("ran", **SMALL_CONFIGS["ran"])
    randomize_batchnorm(model)
    x = random_images(model, batch=2)
    direct, reverse, mask, combined = _outputs(model, ["ran_direct", "ran_reverse", "ran_mask", "ran_combined"], x)
    assert np.all(mask > 0) and np.all(mask < 1)
    np.testing.assert_allclose(mask, 1 / (1 + np.exp(direct)), rtol=1e-5, atol=1e-7)  # sigmoid(-direct)
    expected = direct - reverse * mask
    np.testing.assert_allclose(combined, expected, rtol=1e-5, atol=1e-6 * (1 + np.abs(expected).max()))
    assert np.max(np.abs(reverse * mask)) > 1e-4, "the reverse branch must change the prediction"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_reseg_sweeps_see_the_whole_image(cell):
    """One input pixel in a corner changes the ReNet output and the logits at the opposite corner, while the
    backbone features there (a local receptive field) stay the same."""
    import keras

    model = kseg.create_model("reseg", **dict(SMALL_CONFIGS["reseg"], cell=cell))
    rnn = model.get_layer("reseg_renet0_vertical").layer.forward_layer
    assert isinstance(rnn, {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}[cell])
    _calibrate_batchnorm(model, model.layers)
    x = random_images(model)
    y = x.copy()
    y[0, 0, 0, :] = 255.0 - y[0, 0, 0, :]
    names = ["block_3_expand_relu", "reseg_renet1_horizontal", "reseg_logits"]  # mobilenetv2 P2: stride 4
    before = _outputs(model, names, x)
    after = _outputs(model, names, y)
    features, renet, logits = (np.abs(a - b)[0, -1, -1] for a, b in zip(before, after))
    assert before[0].shape[1:3] == (16, 16) and before[1].shape[1:3] == (8, 8)
    assert np.max(features) == 0.0, "the far corner of the backbone features must not see the pixel"
    # Everything here is deterministic, so without a path from the pixel both differences would be exactly 0;
    # one pixel through two small random GRU layers moves the far corner by about 1e-6 to 1e-5.
    assert np.max(renet) > 1e-7 and np.max(logits) > 1e-8


# int8 of a small random-weight ReSeg (GRU, unrolled, Keras 3): this test measured a mean |int8 - float| of 0.040
# of the logit range and 65.5% argmax agreement (3 classes whose random logits are close, chance is 1/3). The bounds
# leave 2x margin on the error; a broken quantization (wrong scales, a float op fed int8) gives errors of the order
# of the range and chance-level agreement.
INT8_TOLERANCE = 0.08
INT8_ARGMAX_AGREEMENT = 0.5


@pytest.mark.slow
def test_reseg_unrolled_converts_to_int8():
    """Full-int8 TFLite of ReSeg works with ``unroll=True`` (no WHILE op; the recurrent loops crash the int8
    converter, see docs/rnn.md): the converted model runs on uint8 pixels and keeps most of the float argmax."""
    from edge.interpreter import load_interpreter, run_once
    from export.convert import to_tflite
    from model_case import tflite_ops

    model = kseg.create_model("reseg", **dict(SMALL_CONFIGS["reseg"], unroll=True))
    _calibrate_batchnorm(model, model.layers)
    calibration = [random_images(model, seed=seed) for seed in range(8)]
    flatbuffer = to_tflite(model, "int8", calibration)
    ops = tflite_ops(flatbuffer)
    assert "WHILE" not in ops and not any("FLEX" in op.upper() or op == "CUSTOM" for op in ops), dict(ops)
    image = np.random.default_rng(9).integers(0, 256, (1, 64, 64, 3)).astype(np.uint8)
    interp = load_interpreter(model_content=flatbuffer)
    quantized = run_once(interp, image)
    scale, zero = interp.get_output_details()[0]["quantization"]
    got = (quantized.astype(np.float32) - zero) * scale
    expected = np.asarray(model(image.astype(np.float32), training=False))
    err, agreement = np.mean(np.abs(got - expected)) / np.ptp(expected), np.mean(got.argmax(-1) == expected.argmax(-1))
    print(f"reseg int8: mean abs error {err:.3f} of the logit range, argmax agreement {agreement:.3f}")
    assert err <= INT8_TOLERANCE and agreement >= INT8_ARGMAX_AGREEMENT
