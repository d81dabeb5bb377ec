"""Mean-field CRF (kseg.postprocess.crf), the CRF-as-RNN layer (kseg.models.crf) and ``--refine`` in predict /
evaluate. The registry tests (tests/test_models.py) cover the ``crfasrnn`` model itself."""

import numpy as np
import pytest

from kseg.postprocess import get_refiner, list_refiners
from kseg.postprocess.crf import mean_field, messages, pairwise_kernels


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _brute_force_messages(q, image, window, dilation, spacing, theta_alpha, theta_beta, theta_gamma):
    """The normalised spatial and bilateral messages of the module docstring, pixel by pixel, in float64."""
    height, width, _ = q.shape
    r = window // 2
    m_s, m_b = np.zeros_like(q), np.zeros_like(q)
    for i in range(height):
        for j in range(width):
            ks, kb = [], []
            neighbours = []
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    y, x = i + dy * dilation, j + dx * dilation
                    if (dy or dx) and 0 <= y < height and 0 <= x < width:
                        dist2 = ((dy * dilation) ** 2 + (dx * dilation) ** 2) * spacing**2
                        colour2 = np.sum((image[i, j] - image[y, x]) ** 2)
                        ks.append(np.exp(-dist2 / (2 * theta_gamma**2)))
                        kb.append(np.exp(-dist2 / (2 * theta_alpha**2) - colour2 / (2 * theta_beta**2)))
                        neighbours.append(q[y, x])
            neighbours = np.array(neighbours)
            m_s[i, j] = np.dot(ks, neighbours) / np.sum(ks)
            m_b[i, j] = np.dot(kb, neighbours) / np.sum(kb)
    return m_s, m_b


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    # colours within ~2 theta_beta of each other, so the bilateral weights vary instead of all underflowing
    return {"unary": rng.normal(0, 2, (7, 9, 3)), "image": rng.uniform(0, 60, (7, 9, 3))}


@pytest.mark.parametrize("window, dilation, spacing", [(3, 1, 1), (5, 2, 1), (3, 1, 2)])
def test_messages_equal_brute_force(tiny, window, dilation, spacing):
    import tensorflow as tf

    theta = dict(theta_alpha=2.5, theta_beta=20.0, theta_gamma=1.5)
    q = _softmax(tiny["unary"])
    offsets, spatial, bilateral = pairwise_kernels(tf.constant(tiny["image"][None], tf.float32), window, dilation,
                                                   spacing, **theta)
    m_s, m_b = messages(tf.constant(q[None], tf.float32), offsets, spatial, bilateral)
    want_s, want_b = _brute_force_messages(q, tiny["image"], window, dilation, spacing, **theta)
    # float32 against float64 on values in [0, 1]: rounding is ~1e-7; a wrong offset or normaliser is >1e-2
    np.testing.assert_allclose(np.asarray(m_s)[0], want_s, atol=1e-5)
    np.testing.assert_allclose(np.asarray(m_b)[0], want_b, atol=1e-5)


def test_mean_field_iterations_equal_brute_force(tiny):
    """Two iterations with per-class weights and a non-symmetric compatibility: checks the update's direction
    (``logits = U - mu (w_s m_s + w_b m_b)``, ``mu[l, l']`` the cost of label ``l`` next to ``l'``)."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    theta = dict(theta_alpha=2.5, theta_beta=20.0, theta_gamma=1.5)
    w_s, w_b, mu = rng.uniform(0.5, 3, 3), rng.uniform(0.5, 3, 3), rng.uniform(0, 2, (3, 3))
    logits = tiny["unary"]
    for _ in range(2):
        m_s, m_b = _brute_force_messages(_softmax(logits), tiny["image"], 5, 1, 1, **theta)
        logits = tiny["unary"] - (w_s * m_s + w_b * m_b) @ mu.T
    got = mean_field(tf.constant(tiny["unary"][None], tf.float32), tf.constant(tiny["image"][None], tf.float32),
                     w_s.astype(np.float32), w_b.astype(np.float32), mu.astype(np.float32), iterations=2, window=5,
                     **theta)
    np.testing.assert_allclose(np.asarray(got)[0], logits, atol=1e-4)  # logits up to ~10: float32 rounding ~1e-6


def test_zero_pairwise_weights_return_softmax_of_unary(tiny):
    import tensorflow as tf

    unary = tf.constant(tiny["unary"][None], tf.float32)
    logits = mean_field(unary, tf.constant(tiny["image"][None], tf.float32), 0.0, 0.0, iterations=5)
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy()[0], _softmax(tiny["unary"]), atol=1e-6)
    refined = get_refiner("crf")(tiny["image"], _softmax(tiny["unary"]), spatial_weight=0, bilateral_weight=0)
    np.testing.assert_allclose(refined, _softmax(tiny["unary"]), atol=1e-6)


def _noisy_square(seed=0, size=64):
    """A piecewise-constant image (a bright square on a dark background), its mask, and probabilities whose
    argmax is wrong on about a fifth of the pixels (independent per-pixel noise on the logit)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.int64)
    mask[16:48, 20:52] = 1
    image = np.where(mask[..., None] == 1, 190, 60).astype(np.float64) + rng.normal(0, 4, (size, size, 3))
    logit = 1.5 * (2 * mask - 1) + rng.normal(0, 1.8, mask.shape)
    p = 1 / (1 + np.exp(-logit))
    return np.clip(image, 0, 255).astype(np.uint8), mask, np.stack([1 - p, p], -1).astype(np.float32)


@pytest.mark.parametrize("options", [{}, {"downsample": 2}])
def test_crf_refiner_cleans_a_noisy_mask(options):
    image, mask, probabilities = _noisy_square()
    before = np.mean(np.argmax(probabilities, -1) != mask)
    refined = get_refiner("crf")(image, probabilities, **options)
    after = np.mean(np.argmax(refined, -1) != mask)
    assert refined.shape == probabilities.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(-1), 1.0, atol=1e-5)
    assert before > 0.15, before
    assert after < 0.03 and after < before / 5, (before, after)


def test_crf_refiner_rejects_bad_arguments():
    image, _, probabilities = _noisy_square()
    refine = get_refiner("crf")
    with pytest.raises(ValueError, match="same height and width"):
        refine(image[:32], probabilities)
    with pytest.raises(ValueError, match="downsample=3"):
        refine(image, probabilities, downsample=3)
    with pytest.raises(ValueError, match="window"):
        refine(image, probabilities, window=4)


def test_crf_rnn_layer_is_trainable_and_starts_at_potts():
    import keras

    from kseg.models.crf import CrfRnn

    layer = CrfRnn(num_classes=3, iterations=2, window=3, name="crf")
    unary = keras.Variable(np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype(np.float32))
    image = np.random.default_rng(1).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer([unary, image])))
    grads = tape.gradient(loss, layer.trainable_weights + [unary])
    np.testing.assert_array_equal(layer.compatibility.numpy(), 1 - np.eye(3))
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads), "gradient must reach weights and unary"
    clone = CrfRnn.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_refiner_registry_lists_crf():
    assert "crf" in list_refiners()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import kseg

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    kseg.create_model("unet", num_classes=2, input_shape=(32, 32, 3), base_filters=4, depth=2).save(path)
    return path


def test_predict_refine_applies_the_refiner(tiny_model, tmp_path):
    import cv2

    from kseg.cli import main
    from kseg.evaluate import probabilities
    from kseg.saving import load_model

    image, _, _ = _noisy_square(size=32)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert main(["predict", str(tiny_model), str(tmp_path / "a.png"), "--out", str(out), "--refine", "crf"]) == 0
    logits = load_model(tiny_model)(image[None].astype(np.float32), training=False).numpy()[0]
    want = np.argmax(get_refiner("crf")(image, probabilities(logits)), -1)
    got = cv2.imread(str(out / "a_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(got, want)


def test_unknown_refiner_is_a_clear_error(tiny_model, tmp_path, capsys):
    from kseg.cli import main
    from kseg.errors import ConfigError
    from kseg.evaluate import predictor

    assert main(["predict", str(tiny_model), str(tmp_path), "--refine", "no_such_refiner"]) == 2
    err = capsys.readouterr().err
    assert "unknown refiner 'no_such_refiner'" in err and "crf" in err, err
    with pytest.raises(ConfigError, match=r"\.tflite"):
        predictor(tmp_path / "model.tflite", refine="crf")


def test_crf_rnn_layer_with_downsample_and_dilation_converts_to_builtin_tflite():
    """The registry test converts ``crfasrnn`` at full resolution; the pooled-grid path adds AVERAGE_POOL_2D and
    RESIZE_BILINEAR, checked here on a one-conv network (same tolerance and op rules as the registry)."""
    import keras

    from kseg.models.crf import CrfRnn
    from model_case import run_tflite_test

    image = keras.Input((16, 24, 3))
    logits = keras.layers.Conv2D(3, 3, padding="same", name="net_logits")(
        keras.layers.Rescaling(1 / 255.0, name="net_preprocess")(image))
    outputs = CrfRnn(3, iterations=2, window=3, dilation=2, downsample=2, name="net_crf")([logits, image])
    _, ops = run_tflite_test(keras.Model(image, outputs, name="net"))
    assert ops["AVERAGE_POOL_2D"] and ops["RESIZE_BILINEAR"], dict(ops)
