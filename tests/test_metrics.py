"""kseg.metrics: the numpy engine against explicit per-class loops, boundary F1 on drawn shapes, the Keras metric."""

import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kseg.metrics import BoundaryF1, ConfusionMatrix, boundary_f1

REPO = pathlib.Path(__file__).resolve().parents[1]
IGNORE = 255


def random_batch(rng, shape=(3, 17, 23), num_classes=5, absent=(4,), ignore_frac=0.1):
    """Labels with ignored pixels and predictions, both avoiding the ``absent`` classes."""
    present = [c for c in range(num_classes) if c not in absent]
    labels = rng.choice(present, size=shape).astype(np.int32)
    preds = np.where(rng.random(shape) < 0.6, labels, rng.choice(present, size=shape)).astype(np.int32)
    labels[rng.random(shape) < ignore_frac] = IGNORE
    return labels, preds


def reference_scores(labels, preds, num_classes):
    """Scores from explicit per-class masks, independent of the engine's bincount/matrix arithmetic."""
    scored = labels != IGNORE
    lab, pred = labels[scored], preds[scored]
    iou, dice, acc, fw = [], [], [], 0.0
    for c in range(num_classes):
        is_l, is_p = lab == c, pred == c
        inter, union = np.sum(is_l & is_p), np.sum(is_l | is_p)
        iou.append(inter / union if union else np.nan)
        dice.append(2 * inter / (is_l.sum() + is_p.sum()) if union else np.nan)
        acc.append(inter / is_l.sum() if is_l.any() else np.nan)
        if is_l.any():
            fw += is_l.mean() * iou[-1]
    return {
        "per_class_iou": np.array(iou),
        "per_class_dice": np.array(dice),
        "per_class_accuracy": np.array(acc),
        "pixel_accuracy": np.mean(lab == pred),
        "frequency_weighted_iou": fw,
    }


# ---------------------------------------------------------------- confusion matrix


def test_scores_match_explicit_per_class_loops():
    rng = np.random.default_rng(0)
    labels, preds = random_batch(rng)
    cm = ConfusionMatrix(5).update(labels, preds)
    ref = reference_scores(labels, preds, 5)
    for key in ("per_class_iou", "per_class_dice", "per_class_accuracy"):
        np.testing.assert_allclose(getattr(cm, key)(), ref[key], rtol=1e-12, equal_nan=True, err_msg=key)
    assert cm.pixel_accuracy() == pytest.approx(ref["pixel_accuracy"], rel=1e-12)
    assert cm.frequency_weighted_iou() == pytest.approx(ref["frequency_weighted_iou"], rel=1e-12)
    assert cm.total == np.sum(labels != IGNORE)
    # Row i, column j counts label i predicted j.
    assert cm.matrix[1, 2] == np.sum((labels == 1) & (preds == 2))


def test_absent_class_is_nan_and_excluded_from_means():
    rng = np.random.default_rng(1)
    labels, preds = random_batch(rng, absent=(2, 4))
    cm = ConfusionMatrix(5).update(labels, preds)
    iou, dice, acc = cm.per_class_iou(), cm.per_class_dice(), cm.per_class_accuracy()
    assert np.isnan(iou[[2, 4]]).all() and np.isnan(dice[[2, 4]]).all() and np.isnan(acc[[2, 4]]).all()
    assert not np.isnan(iou[[0, 1, 3]]).any()
    assert cm.mean_iou() == pytest.approx(iou[[0, 1, 3]].mean())
    assert cm.mean_dice() == pytest.approx(dice[[0, 1, 3]].mean())
    assert cm.mean_class_accuracy() == pytest.approx(acc[[0, 1, 3]].mean())


def test_class_only_predicted_scores_zero_iou_but_nan_accuracy():
    cm = ConfusionMatrix(3).update(np.array([0, 0, 1]), np.array([0, 2, 1]))
    assert cm.per_class_iou()[2] == 0.0
    assert np.isnan(cm.per_class_accuracy()[2])
    assert cm.mean_iou() == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_ignored_pixels_are_not_counted():
    labels = np.array([[0, 1], [IGNORE, IGNORE]])
    cm = ConfusionMatrix(2).update(labels, np.array([[0, 1], [1, 0]]))
    assert cm.total == 2 and cm.pixel_accuracy() == 1.0 and cm.mean_iou() == 1.0
    empty = ConfusionMatrix(2).update(np.full((2, 2), IGNORE), np.zeros((2, 2), int))
    assert empty.total == 0 and np.isnan(empty.mean_iou()) and np.isnan(empty.pixel_accuracy())


def test_invalid_inputs_raise_with_the_value():
    cm = ConfusionMatrix(5)
    with pytest.raises(ValueError, match=r"label value\(s\) 7 outside \[0, 5\) or the ignore index 255"):
        cm.update(np.array([0, 7, IGNORE]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="-1"):
        cm.update(np.array([0, -1]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"prediction value\(s\) 5"):
        cm.update(np.array([0, 1]), np.array([0, 5]))
    with pytest.raises(ValueError, match="255"):
        ConfusionMatrix(5, ignore_index=None).update(np.array([IGNORE]), np.array([0]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(TypeError, match="integer class ids"):
        cm.update(np.zeros(3, int), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="ignore_index=3"):
        ConfusionMatrix(5, ignore_index=3)
    assert cm.total == 0, "a rejected batch must not be half-counted"


def test_streaming_and_merge_equal_one_shot():
    rng = np.random.default_rng(2)
    labels, preds = random_batch(rng, shape=(6, 9, 11))
    one_shot = ConfusionMatrix(5).update(labels, preds)
    streamed = ConfusionMatrix(5)
    for lab, pred in zip(labels, preds):
        streamed.update(lab, pred)
    np.testing.assert_array_equal(streamed.matrix, one_shot.matrix)
    shard_a = ConfusionMatrix(5).update(labels[:2], preds[:2])
    shard_b = ConfusionMatrix(5).update(labels[2:], preds[2:])
    np.testing.assert_array_equal(shard_a.merge(shard_b).matrix, one_shot.matrix)
    rebuilt = ConfusionMatrix.from_matrix(one_shot.matrix)
    assert rebuilt.matrix.dtype == np.int64 and rebuilt.mean_iou() == one_shot.mean_iou()
    with pytest.raises(ValueError, match="num_classes=4"):
        one_shot.merge(ConfusionMatrix(4))
    assert streamed.reset().total == 0


def test_summary_and_table():
    cm = ConfusionMatrix(3).update(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    summary = cm.summary()
    assert summary["mean_iou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert summary["num_pixels"] == 4 and np.isnan(summary["per_class_iou"][2])
    table = cm.table(["sky", "road", "car"])
    car = next(line for line in table.splitlines() if line.startswith("car"))
    assert car.split()[1:] == ["-", "-", "-", "0"]
    assert "50.00" in next(line for line in table.splitlines() if line.startswith("sky"))
    assert "58.33" in next(line for line in table.splitlines() if line.startswith("mean"))
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        cm.table(["a", "b"])


def test_import_does_not_load_tensorflow():
    code = "import sys, kseg.metrics; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- boundary F1


def square(size=64, top=16, left=16, side=32):
    mask = np.zeros((size, size), np.int32)
    mask[top : top + side, left : left + side] = 1
    return mask


def test_boundary_f1_identical_shifted_and_far():
    gt = square()
    np.testing.assert_array_equal(boundary_f1(gt, gt, 2), [1.0, 1.0])
    for shift in (1, 2):
        assert boundary_f1(gt, square(left=16 + shift), 2, tolerance=2) == pytest.approx([1.0, 1.0])
    far = boundary_f1(gt, square(left=28), 2, tolerance=2)
    # Only the parts of the top and bottom edges that still overlap match.
    assert (far < 0.6).all()
    assert boundary_f1(gt, np.zeros_like(gt), 2)[1] == 0.0
    assert np.isnan(boundary_f1(gt, gt, 3)[2])


def test_boundary_tolerance_as_fraction_of_diagonal():
    # 0.0075 * hypot(512, 512) = 5.43 -> 6 pixels.
    gt = square(size=512, top=100, left=100, side=300)
    assert boundary_f1(gt, square(size=512, top=100, left=106, side=300), 2)[1] == 1.0
    assert boundary_f1(gt, square(size=512, top=100, left=108, side=300), 2)[1] < 0.7


def test_boundary_ignores_contours_in_ignored_pixels():
    gt, pred = square(), square()
    gt[:8, :8] = IGNORE
    pred[2:6, 2:6] = 1  # a spurious blob, but where nothing is scored
    assert boundary_f1(gt, pred, 2)[1] == 1.0
    pred_outside = square()
    pred_outside[2:6, 50:54] = 1
    assert boundary_f1(gt, pred_outside, 2)[1] < 1.0


def test_boundary_streaming_averages_per_image_and_merges():
    gt = np.stack([square(), square()])
    pred = np.stack([square(), square(left=30)])
    per_image = np.stack([boundary_f1(g, p, 2) for g, p in zip(gt, pred)])
    stream = BoundaryF1(2).update(gt, pred)
    np.testing.assert_allclose(stream.per_class_f1(), per_image.mean(axis=0))
    assert stream.mean_f1() == pytest.approx(per_image.mean())
    merged = BoundaryF1(2).update(gt[0], pred[0]).merge(BoundaryF1(2).update(gt[1], pred[1]))
    np.testing.assert_allclose(merged.per_class_f1(), stream.per_class_f1())
    assert merged.summary()["num_images"] == stream.summary()["num_images"] == 2


# ---------------------------------------------------------------- Keras metric


@pytest.fixture(scope="module")
def keras_metric():
    pytest.importorskip("tensorflow")
    from kseg.metrics import keras_metric

    return keras_metric


def test_keras_metric_equals_engine_over_batches(keras_metric):
    import keras

    rng = np.random.default_rng(3)
    miou, acc = keras_metric.SegMeanIoU(5), keras_metric.SegPixelAccuracy(5)
    engine = ConfusionMatrix(5)
    for step in range(3):
        labels, _ = random_batch(rng, shape=(2, 6, 7))
        logits = rng.normal(size=(2, 6, 7, 5)).astype(np.float32)
        # Labels with a trailing channel axis, as some pipelines yield them, are accepted too.
        miou.update_state(labels[..., None] if step == 1 else labels, logits)
        acc.update_state(labels, logits)
        engine.update(labels, logits.argmax(-1))
    np.testing.assert_array_equal(miou.confusion_matrix().matrix, engine.matrix)
    assert float(miou.result()) == pytest.approx(engine.mean_iou(), rel=1e-6)
    assert float(acc.result()) == pytest.approx(engine.pixel_accuracy(), rel=1e-6)

    clone = keras.metrics.deserialize(keras.metrics.serialize(miou))
    assert type(clone) is keras_metric.SegMeanIoU and clone.get_config() == miou.get_config()
    miou.reset_state()
    assert np.isnan(float(miou.result()))


def test_keras_metric_sample_weight_and_invalid_labels(keras_metric):
    labels = np.array([[[0, 1], [1, IGNORE]]], np.int32)
    logits = np.eye(2, dtype=np.float32)[np.array([[[0, 1], [0, 0]]])]
    metric = keras_metric.SegPixelAccuracy(2)
    metric.update_state(labels, logits, sample_weight=np.array([[[1.0, 3.0], [0.0, 5.0]]]))
    assert float(metric.result()) == 1.0  # the only wrong pixel has weight 0

    metric = keras_metric.SegMeanIoU(2)
    metric.update_state(np.array([[[0, 7]]], np.int32), np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"1 pixel\(s\) had labels outside \[0, 2\)"):
        metric.confusion_matrix()


def test_keras_metric_in_compile_and_evaluate(keras_metric):
    import keras

    rng = np.random.default_rng(4)
    labels, _ = random_batch(rng, shape=(6, 8, 8), num_classes=3, absent=())
    images = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)])
    miou = keras_metric.SegMeanIoU(3)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE)
    model.compile(loss=ce, metrics=[miou, keras_metric.SegPixelAccuracy(3)])
    scores = model.evaluate(images, labels, batch_size=2, return_dict=True, verbose=0)
    engine = ConfusionMatrix(3).update(labels, model.predict(images, verbose=0).argmax(-1))
    np.testing.assert_array_equal(miou.confusion_matrix().matrix, engine.matrix)
    assert scores["mean_iou"] == pytest.approx(engine.mean_iou(), rel=1e-6)
    assert scores["pixel_accuracy"] == pytest.approx(engine.pixel_accuracy(), rel=1e-6)


MIRRORED = textwrap.dedent(
    """
    import json, numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from kseg.metrics import ConfusionMatrix, SegMeanIoU
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, (8, 8, 8)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.1] = 255
    images = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)])
        metric = SegMeanIoU(3)
        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
        model.compile(loss=ce, metrics=[metric])
    scores = model.evaluate(images, labels, batch_size=4, return_dict=True, verbose=0)
    engine = ConfusionMatrix(3).update(labels, np.asarray(model(images)).argmax(-1))
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "keras": scores["mean_iou"],
                      "numpy": engine.mean_iou(), "same_matrix": bool((metric.confusion_matrix().matrix
                                                                         == engine.matrix).all())}))
    """
)


def test_keras_metric_under_mirrored_strategy(keras_metric):
    out = subprocess.run([sys.executable, "-c", MIRRORED], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["same_matrix"], "per-replica counts must be summed on read"
    assert result["keras"] == pytest.approx(result["numpy"], rel=1e-6)


def test_isbi_pixel_error_hand_computed(load_benchmark):
    """1 - the best F-score of the cell pixels over thresholds: at 0.5, tp 1 fp 1 fn 1 (F 0.5); at 0.15, tp 2 fp 1
    (F 0.8, the best); at 0.05 all four are cell (F 2/3). Counts pool over slices, so splitting the pixels into two
    slices changes nothing."""
    membrane = load_benchmark("membrane")
    p, cell = np.array([0.9, 0.6, 0.2, 0.1]), np.array([1, 0, 1, 0])
    thresholds = np.array([0.05, 0.15, 0.5])
    error, threshold = membrane.isbi_pixel_error([(p, cell)], thresholds)
    assert error == pytest.approx(0.2) and threshold == 0.15
    assert membrane.isbi_pixel_error([(p[:1], cell[:1]), (p[1:], cell[1:])], thresholds) == (error, threshold)
    assert membrane.isbi_pixel_error([(p, cell)], np.array([0.5]))[0] == pytest.approx(0.5)


def test_isbi_pixel_error_of_a_model_on_the_real_slices(tmp_path, membrane_dir, load_benchmark):
    """``cell_probabilities`` gives p(cell) and the truth of each of the 4 validation slices; the error of a
    model whose p(cell) is the truth itself is 0."""
    import kseg
    from kseg.config import load_config

    membrane = load_benchmark("membrane")
    cfg = load_config(pathlib.Path(__file__).resolve().parents[1] / "configs" / "unet_membrane-512x512.yaml",
                      [f"data.root={membrane_dir}"])
    model = kseg.create_model("unet", num_classes=2, input_shape=(512, 512, 3), base_filters=4, depth=2)
    model.save(tmp_path / "m.keras")
    pairs = list(membrane.cell_probabilities(tmp_path / "m.keras", cfg["data"]))
    assert len(pairs) == 4
    for p, cell in pairs:
        assert p.shape == cell.shape == (512, 512) and 0 <= p.min() and p.max() <= 1
        assert 0.6 < cell.mean() < 0.9  # about 78% of the pixels are cell interior
    assert membrane.isbi_pixel_error([(c.astype(float), c) for _, c in pairs]) == (0.0, 0.05)
