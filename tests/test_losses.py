"""kseg.losses: hand-computed values, ignore handling, gradients, build_loss, serialization, one training step."""

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from kseg.errors import ConfigError, KsegError  # noqa: E402
from kseg.losses import (  # noqa: E402
    CrossEntropyLoss,
    DiceLoss,
    DistillationLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    TverskyLoss,
    WeightedSumLoss,
    build_loss,
    list_losses,
)

IGNORE = 255
LN3 = math.log(3.0)
# Two pixels, two classes. Pixel 0: logits (0, 0) -> p = (1/2, 1/2), label 0.
# Pixel 1: logits (0, ln 3) -> p = (1/4, 3/4), label 1.
LOGITS = np.array([[[[0.0, 0.0], [0.0, LN3]]]], np.float32)
LABELS = np.array([[[0, 1]]], np.int32)


def value(loss, labels=LABELS, logits=LOGITS):
    return float(loss(labels, logits))


def all_losses():
    """One instance of every registered loss plus a weighted sum, with non-default settings where they exist."""
    return [
        CrossEntropyLoss(class_weights=[0.5, 2.0, 1.0]),
        FocalLoss(gamma=2.0, alpha=0.25),
        DiceLoss(),
        TverskyLoss(),
        LovaszSoftmaxLoss(),
        LovaszSoftmaxLoss(per_image=True, classes="all"),
        build_loss({"ce": 1.0, "dice": 0.5, "lovasz": 0.25}, num_classes=3),
    ]


def loss_id(loss):
    return loss.name + ("_per_image" if getattr(loss, "per_image", False) else "")


def random_case(seed=0, shape=(2, 5, 6), num_classes=3, ignore_frac=0.2, scale=3.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, shape).astype(np.int32)
    labels[rng.random(shape) < ignore_frac] = IGNORE
    logits = (scale * rng.normal(size=(*shape, num_classes))).astype(np.float32)
    return labels, logits


# ---------------------------------------------------------------- hand-computed values


def test_cross_entropy_by_hand():
    assert value(CrossEntropyLoss()) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
    # PyTorch weight semantics: weighted sum over the summed weights.
    weighted = (2 * math.log(2) + 1 * math.log(4 / 3)) / (2 + 1)
    assert value(CrossEntropyLoss(class_weights=[2.0, 1.0])) == pytest.approx(weighted, rel=1e-6)
    assert value(CrossEntropyLoss(), labels=np.array([[[0, IGNORE]]])) == pytest.approx(math.log(2), rel=1e-6)
    # Labels with a trailing channel axis.
    assert value(CrossEntropyLoss(), labels=LABELS[..., None]) == pytest.approx(value(CrossEntropyLoss()))


def test_focal_by_hand_and_gamma_zero_is_cross_entropy():
    expected = ((1 / 2) ** 2 * math.log(2) + (1 / 4) ** 2 * math.log(4 / 3)) / 2
    assert value(FocalLoss(gamma=2.0)) == pytest.approx(expected, rel=1e-5)
    # A scalar alpha weights background (class 0) by 1 - alpha and the other classes by alpha.
    expected = (0.75 * (1 / 2) ** 2 * math.log(2) + 0.25 * (1 / 4) ** 2 * math.log(4 / 3)) / 2
    assert value(FocalLoss(gamma=2.0, alpha=0.25)) == pytest.approx(expected, rel=1e-5)
    labels, logits = random_case()
    assert value(FocalLoss(gamma=0.0), labels, logits) == pytest.approx(value(CrossEntropyLoss(), labels, logits))


def test_distillation_by_hand_zero_at_the_teacher_and_pulls_towards_it():
    # teacher pixel 1 is (1/4, 3/4), the student's (1/2, 1/2); pixel 0 agrees: KL = (1/4 ln 1/2 + 3/4 ln 3/2) / 2
    student = np.zeros_like(LOGITS)
    expected = (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)) / 2
    assert float(DistillationLoss()(LOGITS, student)) == pytest.approx(expected, rel=1e-5)
    assert float(DistillationLoss()(LOGITS, LOGITS + 5.0)) == pytest.approx(0.0, abs=1e-6)  # softmax is shift-free
    # one channel: a sigmoid logit, the two-class case of (0, logit)
    assert float(DistillationLoss()(LOGITS[..., 1:], student[..., 1:])) == pytest.approx(expected, rel=1e-5)
    # the temperature softens both sides and scales the value by its square: T = 2 halves the logits
    p = np.exp(LOGITS[0, 0, 1] / 2) / np.exp(LOGITS[0, 0, 1] / 2).sum()
    expected_t2 = 4 * float(np.sum(p * np.log(p / 0.5))) / 2
    assert float(DistillationLoss(temperature=2.0)(LOGITS, student)) == pytest.approx(expected_t2, rel=1e-5)
    student = tf.Variable(student)
    with tf.GradientTape() as tape:
        loss = DistillationLoss()(LOGITS, student)
    grad = tape.gradient(loss, student).numpy()
    # d KL / d student logits = (p_student - p_teacher) / pixels: the student's class-1 logit goes up
    np.testing.assert_allclose(grad[0, 0, 1], [(0.5 - 0.25) / 2, (0.5 - 0.75) / 2], atol=1e-6)
    np.testing.assert_allclose(grad[0, 0, 0], 0.0, atol=1e-7)
    clone = keras.losses.deserialize(keras.losses.serialize(DistillationLoss(temperature=2.0)))
    assert type(clone) is DistillationLoss and clone.temperature == 2.0
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(temperature=0)


def test_dice_and_tversky_by_hand():
    # Class 0: p = (1/2, 1/4), g = (1, 0). Class 1: p = (1/2, 3/4), g = (0, 1).
    tp, fp, fn = np.array([0.5, 0.75]), np.array([0.25, 0.5]), np.array([0.5, 0.25])
    dice = (2 * tp + 1) / (2 * tp + fp + fn + 1)
    assert value(DiceLoss(smooth=1.0)) == pytest.approx(1 - dice.mean(), rel=1e-6)
    assert value(DiceLoss(smooth=0.0, include_background=False)) == pytest.approx(1 - 1.5 / 2.25, rel=1e-6)
    tversky = tp / (tp + 0.3 * fp + 0.7 * fn)
    assert value(TverskyLoss(alpha=0.3, beta=0.7, smooth=0.0)) == pytest.approx(1 - tversky.mean(), rel=1e-6)
    # alpha = beta = 1/2 is Dice (with half the smoothing, since Dice doubles the numerator).
    labels, logits = random_case()
    assert value(TverskyLoss(alpha=0.5, beta=0.5, smooth=0.5), labels, logits) == pytest.approx(
        value(DiceLoss(smooth=1.0), labels, logits), rel=1e-6
    )


def jaccard_loss(mispredicted, truth):
    """Berman et al.'s set function: |M| / |G u M| for mispredicted set M and true set G."""
    union = truth | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def lovasz_reference(labels, probs, classes="present"):
    """Lovasz extension written out with explicit sets, over the non-ignored pixels of one flattened group."""
    keep = labels != IGNORE
    labels, probs = labels[keep], probs[keep]
    losses = []
    for c in range(probs.shape[-1]):
        truth = {i for i in range(len(labels)) if labels[i] == c}
        if classes == "present" and not truth:
            continue
        errors = np.abs((labels == c) - probs[:, c])
        order = np.argsort(-errors, kind="stable")
        total, previous = 0.0, 0.0
        for k in range(len(order)):
            current = jaccard_loss(set(order[: k + 1].tolist()), truth)
            total += errors[order[k]] * (current - previous)
            previous = current
        losses.append(total)
    return float(np.mean(losses)) if losses else 0.0


def test_lovasz_by_hand():
    # Class 0: errors (1/2, 1/4), sorted pixel 0 then 1; Jaccard loss 1/1 then 2/2 -> increments (1, 0): 1/2.
    # Class 1: errors (1/2, 1/4), pixel 0 is not class 1: 1/2 then 2/2 -> increments (1/2, 1/2): 3/8.
    assert value(LovaszSoftmaxLoss()) == pytest.approx((0.5 + 0.375) / 2, rel=1e-6)
    # Labels (0, 0): class 1 is absent. Class 0: errors (1/2, 3/4) -> 3/4 * 1/2 + 1/2 * 1/2 = 5/8.
    # Class 1 (only with classes="all"): no true pixel, so the loss is the largest error, 3/4.
    both_background = np.array([[[0, 0]]])
    assert value(LovaszSoftmaxLoss(), both_background) == pytest.approx(0.625, rel=1e-6)
    assert value(LovaszSoftmaxLoss(classes="all"), both_background) == pytest.approx((0.625 + 0.75) / 2, rel=1e-6)
    perfect = 30.0 * np.eye(2, dtype=np.float32)[LABELS]
    assert value(LovaszSoftmaxLoss(), LABELS, perfect) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_matches_set_reference_with_ignored_pixels(classes):
    labels, logits = random_case(seed=1, shape=(2, 3, 4))
    probs = tf.nn.softmax(logits).numpy()
    batch = lovasz_reference(labels.ravel(), probs.reshape(-1, 3), classes)
    assert value(LovaszSoftmaxLoss(classes=classes), labels, logits) == pytest.approx(batch, rel=1e-5)
    per_image = np.mean([lovasz_reference(l.ravel(), p.reshape(-1, 3), classes) for l, p in zip(labels, probs)])
    per_image_loss = LovaszSoftmaxLoss(per_image=True, classes=classes)
    assert value(per_image_loss, labels, logits) == pytest.approx(per_image, rel=1e-5)


def test_lovasz_per_image_skips_fully_ignored_images():
    labels, logits = random_case(seed=2, shape=(2, 4, 4))
    labels[1] = IGNORE
    alone = value(LovaszSoftmaxLoss(per_image=True), labels[:1], logits[:1])
    assert value(LovaszSoftmaxLoss(per_image=True), labels, logits) == pytest.approx(alone, rel=1e-6)


# ---------------------------------------------------------------- ignore index, gradients, precision


@pytest.mark.parametrize("loss", all_losses(), ids=loss_id)
def test_ignored_pixels_add_nothing_to_value_or_gradient(loss):
    labels, logits = random_case(seed=3, shape=(1, 6, 7))
    keep = labels != IGNORE
    # Batch-level losses see the same pixels whether the ignored ones are present or cut out.
    if not getattr(loss, "per_image", False):
        subset = value(loss, labels[keep][None, None], logits[keep][None, None])
        assert value(loss, labels, logits) == pytest.approx(subset, rel=1e-5)
    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        out = loss(labels, x)
    grad = tape.gradient(out, x).numpy()
    assert np.all(grad[~keep] == 0.0)
    assert np.abs(grad[keep]).sum() > 0
    changed = np.where(keep[..., None], logits, 100.0 * np.random.default_rng(0).normal(size=logits.shape))
    assert value(loss, labels, changed.astype(np.float32)) == pytest.approx(float(out), rel=1e-6)


@pytest.mark.parametrize("loss", all_losses(), ids=loss_id)
def test_all_ignored_batch_gives_zero_and_finite_gradient(loss):
    _, logits = random_case(seed=4)
    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        out = loss(np.full(logits.shape[:-1], IGNORE, np.int32), x)
    assert float(out) == 0.0
    grad = tape.gradient(out, x)
    assert grad is None or np.all(grad.numpy() == 0.0)


@pytest.mark.parametrize("loss", all_losses(), ids=loss_id)
@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_finite_gradients_and_float32_under_float16_logits(loss, scale):
    labels, logits = random_case(seed=5, scale=scale)
    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        out = loss(labels, x)
    grad = tape.gradient(out, x).numpy()
    assert np.isfinite(float(out)) and np.all(np.isfinite(grad))
    half = loss(labels, tf.constant(logits, tf.float16))
    assert half.dtype == tf.float32
    assert float(half) == pytest.approx(float(out), rel=2e-2, abs=2e-3)


def test_sample_weight_is_refused():
    with pytest.raises(ValueError, match="does not take sample_weight"):
        CrossEntropyLoss()(LABELS, LOGITS, sample_weight=np.ones((1,)))


# ---------------------------------------------------------------- build_loss


def test_build_loss_forms():
    assert list_losses() == ["acm", "ce", "dice", "focal", "lovasz", "tversky"]
    assert type(build_loss("ce", 2)) is CrossEntropyLoss
    focal = build_loss([{"name": "focal", "gamma": 1.5, "alpha": [0.2, 0.8]}], 2, ignore_index=0)
    assert type(focal) is FocalLoss and focal.gamma == 1.5 and focal.alpha == (0.2, 0.8) and focal.ignore_index == 0
    combo = build_loss({"ce": 1.0, "dice": 0.5}, 2)
    assert isinstance(combo, WeightedSumLoss) and combo.weights == [1.0, 0.5]
    expected = value(CrossEntropyLoss()) + 0.5 * value(DiceLoss())
    assert value(combo) == pytest.approx(expected, rel=1e-6)
    listed = build_loss(["ce", {"name": "tversky", "weight": 2, "alpha": 0.5, "beta": 0.5}], 2)
    assert [type(l) for l in listed.losses] == [CrossEntropyLoss, TverskyLoss] and listed.weights == [1.0, 2.0]
    assert isinstance(build_loss({"lovasz": 0.5}, 2), WeightedSumLoss)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cross_entropy", "unknown loss 'cross_entropy'; valid names: acm, ce, dice, focal, lovasz, tversky"),
        ({"ce": 1.0, "bce": 1.0}, "unknown loss 'bce'"),
        ([{"name": "focal", "gama": 2}], r"unknown parameter\(s\) gama; valid: gamma, alpha"),
        ([{"name": "ce", "ignore_index": 0}], "ignore_index is set once"),
        ([{"name": "focal", "gamma": -1}], "gamma must be >= 0"),
        ([{"name": "focal", "gamma": "two"}], "loss 'focal'"),
        ([{"name": "lovasz", "classes": "some"}], "'present' or 'all'"),
        ([{"name": "ce", "class_weights": [1, 2]}], "class_weights has 2 entries, expected num_classes=3"),
        ({"ce": -1}, "weight must be a non-negative number"),
        ({"ce": "1"}, "weight must be a non-negative number"),
        ({}, "empty"),
        ([{"weight": 1}], "with a 'name' key"),
        (3, "expected a name"),
    ],
)
def test_build_loss_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_loss(spec, num_classes=3)
    assert isinstance(info.value, KsegError)


# ---------------------------------------------------------------- serialization and training


@pytest.mark.parametrize("loss", all_losses(), ids=loss_id)
def test_serialization_round_trip(loss):
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
    labels, logits = random_case(seed=6)
    assert value(clone, labels, logits) == pytest.approx(value(loss, labels, logits), rel=1e-6)


@pytest.fixture(scope="module")
def learnable_data():
    rng = np.random.default_rng(7)
    images = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    labels = images.argmax(-1).astype(np.int32)  # a per-pixel rule a 1x1 conv can learn
    labels[:, :2] = IGNORE
    return images, labels


@pytest.mark.parametrize("loss", all_losses(), ids=loss_id)
def test_one_fit_step_lowers_the_loss(loss, learnable_data):
    images, labels = learnable_data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    before = model.evaluate(images, labels, batch_size=4, verbose=0)
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    after = model.evaluate(images, labels, batch_size=4, verbose=0)
    assert history.history["loss"][0] == pytest.approx(before, rel=1e-5)
    assert after < before
