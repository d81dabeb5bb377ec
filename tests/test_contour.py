"""Active contours: the ACM loss (hand-computed value, length term, ignore index, gradients, config use) and the
``acm`` refiner (probabilities stay probabilities; a noisy, shifted disc mask snaps back onto the disc)."""

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from kseg.errors import ConfigError  # noqa: E402
from kseg.losses import ActiveContourLoss, CrossEntropyLoss, build_loss  # noqa: E402
from kseg.postprocess import get_refiner, list_refiners  # noqa: E402

LN3 = math.log(3.0)
# One 2x2 image, two classes: p(class 1) = [[1/2, 3/4], [1/2, 1/2]], labels [[0, 1], [1, 1]].
LOGITS = np.array([[[[0, 0], [0, LN3]], [[0, 0], [0, 0]]]], np.float32)
LABELS = np.array([[[0, 1], [1, 1]]], np.int32)
EPS = 1e-8
# The one 2x2 neighbourhood: du/dx = +-1/4, du/dy = 0 in both classes.
LENGTH = math.sqrt(0.25**2 + EPS) - math.sqrt(EPS)


def acm(labels=LABELS, logits=LOGITS, **kw):
    return float(ActiveContourLoss(**kw)(labels, logits))


def test_value_by_hand():
    # Region, class 1 per pixel: u (v - 1)^2 + (1 - u) v^2 = 1/2, 1/4, 1/2, 1/2; class 0 the same (complements).
    region = 2 * (0.5 + 0.25 + 0.5 + 0.5) / 8
    assert acm() == pytest.approx(LENGTH + region, rel=1e-6)
    assert acm(length_weight=0.0) == pytest.approx(region, rel=1e-6)
    assert acm(region_weight=0.0) == pytest.approx(LENGTH, rel=1e-6)
    assert acm(length_weight=2.0, region_weight=0.5) == pytest.approx(2 * LENGTH + 0.5 * region, rel=1e-6)


def test_length_is_zero_on_a_constant_map():
    logits = np.broadcast_to(np.array([0.3, -1.2, 2.0], np.float32), (2, 7, 9, 3))
    labels = np.random.default_rng(0).integers(0, 3, (2, 7, 9)).astype(np.int32)
    assert acm(labels, logits, region_weight=0.0) == 0.0


def test_ignore_index_is_honoured():
    labels = LABELS.copy()
    labels[0, 1, 1] = 255
    # Pixel (1, 1) leaves the regions; the neighbourhood (0,0)-(0,1)-(1,0) is still fully scored.
    assert acm(labels) == pytest.approx(LENGTH + 2 * (0.5 + 0.25 + 0.5) / 6, rel=1e-6)
    labels[0, 1, 0] = 255
    # Now the only neighbourhood touches an ignored pixel: no length term.
    assert acm(labels) == pytest.approx(2 * (0.5 + 0.25) / 4, rel=1e-6)
    # Whatever the logits at ignored pixels, neither the value nor the gradient changes.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (2, 6, 8)).astype(np.int32)
    labels[:, 2:4, 3:6] = 255
    logits = tf.Variable(rng.normal(size=(2, 6, 8, 3)).astype(np.float32))
    loss = ActiveContourLoss()
    with tf.GradientTape() as tape:
        value = loss(labels, logits)
    grad = tape.gradient(value, logits).numpy()
    assert np.abs(grad[labels == 255]).max() == 0
    other = logits.numpy()
    other[labels == 255] += 5.0
    assert float(loss(labels, other)) == pytest.approx(float(value), abs=1e-7)
    # Everything ignored: 0, not NaN.
    assert acm(np.full_like(LABELS, 255)) == 0.0


@pytest.mark.parametrize("shape", [(2, 6, 8), (1, 3, 4, 5)], ids=["image", "volume"])
def test_gradient_is_finite(shape):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, shape).astype(np.int32)
    for logits in (rng.normal(size=(*shape, 3)), np.zeros((*shape, 3))):  # the constant map: sqrt at eps
        var = tf.Variable(logits.astype(np.float32))
        with tf.GradientTape() as tape:
            value = ActiveContourLoss()(labels, var)
        grad = tape.gradient(value, var).numpy()
        assert np.isfinite(float(value)) and np.isfinite(grad).all()
    assert np.abs(grad).max() > 0  # the region terms pull even where the length has no gradient


def test_combines_with_other_losses_from_a_config():
    loss = build_loss([{"name": "ce"}, {"name": "acm", "weight": 0.5, "length_weight": 0.1}], num_classes=2)
    expected = float(CrossEntropyLoss()(LABELS, LOGITS)) + 0.5 * acm(length_weight=0.1)
    assert float(loss(LABELS, LOGITS)) == pytest.approx(expected, rel=1e-6)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert float(again(LABELS, LOGITS)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="acm.*length_weight"):
        build_loss([{"name": "acm", "length": 1.0}], num_classes=2)


# ---------------------------------------------------------------- the refiner


def disc_case(seed=0, size=96):
    """A bright disc on a dark, noisy background and a network's guess: shifted, too small, with 5% flipped
    pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 < 25**2
    grey = np.clip(np.where(disc, 170, 70) + rng.normal(0, 30, disc.shape), 0, 255).astype(np.uint8)
    guess = (yy - 40) ** 2 + (xx - 55) ** 2 < 22**2
    p = np.clip(np.where(guess, 0.8, 0.2) + rng.normal(0, 0.1, disc.shape), 0.01, 0.99)
    p = np.where(rng.random(disc.shape) < 0.05, 1 - p, p)
    return np.repeat(grey[..., None], 3, -1), np.stack([1 - p, p], -1).astype(np.float32), disc


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_refiner_is_registered_and_keeps_probabilities():
    assert "acm" in list_refiners()
    image, probs, _ = disc_case()
    for method in ("chan_vese", "geodesic"):
        out = get_refiner("acm")(image, probs, method=method, iterations=5)
        assert out.shape == probs.shape and out.dtype == np.float32 and (out >= 0).all()
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)


def test_chan_vese_snaps_a_shifted_noisy_mask_onto_the_disc():
    image, probs, disc = disc_case()
    before = iou(probs.argmax(-1) == 1, disc)
    after = iou(get_refiner("acm")(image, probs, iterations=10).argmax(-1) == 1, disc)
    assert before < 0.5 and after > before + 0.35, (before, after)


def test_per_class_refinement_of_three_classes():
    image, probs, disc = disc_case()
    # Class 2: a second, darker square the network sees exactly; one-vs-rest must not hand it to the disc.
    square = np.zeros(disc.shape, bool)
    square[5:20, 5:20] = True
    image = image.copy()
    image[square] = 120
    three = np.concatenate([probs[..., :1], probs[..., 1:], np.zeros_like(probs[..., :1])], -1)
    three[square] = [0.1, 0.1, 0.8]
    out = get_refiner("acm")(image, three, iterations=10)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)
    labels = out.argmax(-1)
    assert iou(labels == 1, disc) > iou(three.argmax(-1) == 1, disc) + 0.3
    assert iou(labels == 2, square) > 0.95


def test_refiner_rejects_bad_arguments():
    image, probs, _ = disc_case()
    refine = get_refiner("acm")
    with pytest.raises(ValueError, match="method"):
        refine(image, probs, method="snake")
    with pytest.raises(ValueError, match="probabilities"):
        refine(image, probs[..., 1])
    with pytest.raises(ValueError, match="image"):
        refine(image[:10], probs)
    with pytest.raises(ValueError, match="vote"):
        refine(image, probs, vote=1.5)
