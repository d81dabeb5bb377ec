"""Mask R-CNN: ops (ROIAlign against a direct computation, anchor matching, box coding, sampling, NMS), loss
values, and the network (training, save/reload, TFLite export)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from kseg.instance import losses, ops


def _bilinear(f, y, x):
    """Direct bilinear interpolation of ``f`` (H, W, C) at (y, x) with Detectron's border rule."""
    h, w = f.shape[:2]
    if y < -1 or y > h or x < -1 or x > w:
        return np.zeros(f.shape[-1])
    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x1] + ly * (1 - lx) * f[y1, x0]
            + ly * lx * f[y1, x1])


def _roi_align_reference(features, image, box, out, ratio):
    """ROIAlign of one box by definition: FPN level, half-pixel-aligned coordinates, ratio x ratio samples per bin."""
    k = int(np.clip(math.floor(4 + math.log2(math.sqrt((box[2] - box[0]) * (box[3] - box[1])) / 224)), 2, 5))
    f = features[k - 2][image].astype(np.float64)
    y1, x1, y2, x2 = np.asarray(box, np.float64) / 2**k - 0.5
    bh, bw = (y2 - y1) / out, (x2 - x1) / out
    res = np.zeros((out, out, f.shape[-1]))
    for i in range(out):
        for j in range(out):
            for iy in range(ratio):
                for ix in range(ratio):
                    res[i, j] += _bilinear(f, y1 + (i + (iy + 0.5) / ratio) * bh, x1 + (j + (ix + 0.5) / ratio) * bw)
    return res / ratio**2, k


@pytest.mark.parametrize("out,ratio", [(7, 2), (4, 1), (3, 3)])
def test_roi_align_matches_direct_bilinear_sampling(out, ratio):
    rng = np.random.default_rng(out)
    features = [rng.random((2, 512 // 2**k, 512 // 2**k, 3)).astype(np.float32) for k in (2, 3, 4, 5)]
    # sides chosen for every level (sqrt(wh) ~ 50, 150, 300, 480), one box crossing the image border
    boxes = np.array([[[10.3, 20.7, 60.1, 75.2], [100.5, 40.2, 250.9, 190.4], [50.0, 60.0, 360.0, 350.0],
                       [0.0, 0.0, 500.0, 470.0]],
                      [[-8.0, 400.0, 40.0, 530.0], [200.2, 200.9, 330.0, 370.0], [5.5, 7.5, 12.0, 9.0],
                       [30.0, 10.0, 330.0, 300.0]]], np.float32)
    got = ops.roi_align([tf.constant(f) for f in features], tf.constant(boxes), out, ratio).numpy()
    levels = set()
    for b in range(2):
        for r in range(4):
            want, k = _roi_align_reference(features, b, boxes[b, r], out, ratio)
            levels.add(k)
            np.testing.assert_allclose(got[b * 4 + r], want, atol=1e-5, rtol=0)
    assert levels == {2, 3, 4, 5}


def test_anchor_order_matches_rpn_flattening():
    anchors = ops.generate_anchors((128, 128), sizes=(8, 16, 32, 64, 128))
    assert anchors.shape == (3 * sum((128 // 2**k) ** 2 for k in range(2, 7)), 4)
    # P2 cell (row 1, col 2), third ratio (h/w = 2): flat index (1 * 32 + 2) * 3 + 2
    y1, x1, y2, x2 = anchors[(1 * 32 + 2) * 3 + 2]
    np.testing.assert_allclose([(y1 + y2) / 2, (x1 + x2) / 2], [6.0, 10.0])
    np.testing.assert_allclose([(y2 - y1) / (x2 - x1), (y2 - y1) * (x2 - x1)], [2.0, 64.0], rtol=1e-5)
    # first P6 anchor: centre of the one 64-stride cell (0, 0), size 128
    first_p6 = 3 * sum((128 // 2**k) ** 2 for k in range(2, 6))
    np.testing.assert_allclose(anchors[first_p6 + 1], [-32.0, -32.0, 96.0, 96.0])


def test_anchor_matching_hand_made_case():
    anchors = np.array([[0, 0, 10, 10],        # IoU 1 with gt0: positive
                        [0, 0, 10, 20],        # IoU 0.5 with gt0: ignored
                        [20, 20, 30, 30],      # IoU 0.25 with gt1: negative
                        [20, 20, 32, 32],      # IoU 0.36 with gt1 but gt1's best anchor: positive
                        [50, 50, 60, 60],      # exactly the padded box: negative
                        [100, 100, 110, 110]], np.float32)
    gt = tf.constant([[[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]],
                      [[50, 50, 60, 60], [0, 0, 0, 0], [0, 0, 0, 0]]], tf.float32)
    valid = tf.constant([[True, True, False], [False, False, False]])
    labels, matched = ops.match_anchors(anchors, gt, valid)
    np.testing.assert_array_equal(labels.numpy(), [[1, -1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]])
    assert matched.numpy()[0, 0] == 0 and matched.numpy()[0, 3] == 1


@pytest.mark.parametrize("weights", [ops.RPN_WEIGHTS, ops.HEAD_WEIGHTS])
def test_box_encode_decode_round_trip(weights):
    rng = np.random.default_rng(0)
    corner = rng.random((50, 2)) * 100
    boxes = np.concatenate([corner, corner + 1 + rng.random((50, 2)) * 80], 1).astype(np.float32)
    corner = rng.random((50, 2)) * 100
    anchors = np.concatenate([corner, corner + 1 + rng.random((50, 2)) * 80], 1).astype(np.float32)
    deltas = ops.encode_boxes(tf.constant(boxes), anchors, weights)
    np.testing.assert_allclose(ops.decode_boxes(deltas, anchors, weights).numpy(), boxes, atol=1e-3)
    np.testing.assert_allclose(ops.encode_boxes(tf.constant(anchors), anchors, weights).numpy(), 0, atol=1e-6)
    # dh, dw are clipped: a box never grows past 1000/16 times its anchor
    huge = ops.decode_boxes(tf.constant([[0.0, 0.0, 100.0, 100.0]]), anchors[:1], weights).numpy()[0]
    ha = anchors[0, 2] - anchors[0, 0]
    np.testing.assert_allclose(huge[2] - huge[0], ha * 1000 / 16, rtol=1e-4)


def test_subsample_caps_positives_and_fills_with_negatives():
    positive = tf.constant(np.arange(1000)[None] < 300)
    negative = ~positive
    idx, is_pos, is_valid = ops.subsample(positive, negative, 256, 0.5, seed=1)
    idx, is_pos = idx.numpy()[0], is_pos.numpy()[0]
    assert is_pos.sum() == 128 and is_valid.numpy().all() and len(set(idx)) == 256
    assert (idx[is_pos] < 300).all() and (idx[~is_pos] >= 300).all()
    few = tf.constant(np.arange(1000)[None] < 10)
    idx, is_pos, is_valid = ops.subsample(few, ~few & tf.constant(np.arange(1000)[None] < 100), 256, 0.5)
    assert is_pos.numpy().sum() == 10 and is_valid.numpy().sum() == 100


def test_sample_rois_adds_gt_boxes_and_puts_foreground_first():
    proposals = tf.constant([[[0, 0, 10, 10], [60, 60, 90, 90], [0, 0, 0, 0]]], tf.float32)
    valid = tf.constant([[1.0, 1.0, 0.0]])
    gt = tf.constant([[[1, 1, 10, 10], [30, 30, 50, 50]]], tf.float32)
    out = ops.sample_rois(proposals, valid, gt, tf.constant([[3, 5]]), num=4, positive_fraction=0.5, seed=0)
    pos = out["positive"].numpy()[0]
    assert pos.tolist() == [True, True, False, False] and out["valid"].numpy()[0].tolist() == [True] * 3 + [False]
    # positives: the proposal matching gt0 (IoU 0.81) and both gt boxes, at most 2 kept; one negative
    assert set(out["classes"].numpy()[0][:2]) <= {3, 5} and out["classes"].numpy()[0][2] == 0
    np.testing.assert_array_equal(out["rois"].numpy()[0][2], [60, 60, 90, 90])


def test_mask_targets_crop_gt_masks():
    masks = np.zeros((1, 2, 32, 32), np.uint8)
    masks[0, 1, 8:24, 8:16] = 1  # left half of the box [8, 8, 24, 24] in instance 1
    t = ops.mask_targets(tf.constant(masks), tf.constant([[1, 0]]), tf.constant([[[8.0, 8, 24, 24]] * 2]), 28).numpy()
    expected = np.zeros((28, 28))
    expected[:, :14] = 1
    np.testing.assert_array_equal(t[0], expected)
    assert t[1].sum() == 0


def test_detect_is_class_aware():
    rois = tf.constant([[[10, 10, 50, 50], [12, 10, 50, 50], [11, 10, 50, 50]]], tf.float32)
    # 3 classes; ROI 0 and 1 say class 1 (overlap: the weaker one is suppressed), ROI 2 says class 2 (kept)
    logits = tf.math.log(tf.constant([[[0.05, 0.9, 0.05], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]]]))
    boxes, scores, classes, num = ops.detect(rois, tf.ones((1, 3)), logits, tf.zeros((1, 3, 12)), (64, 64),
                                             max_detections=4, score_threshold=0.2)
    assert num.numpy().tolist() == [2]
    np.testing.assert_allclose(scores.numpy()[0], [0.9, 0.9, 0, 0], atol=1e-6)
    assert sorted(classes.numpy()[0][:2].tolist()) == [1, 2] and classes.numpy()[0][2:].tolist() == [0, 0]
    np.testing.assert_allclose(boxes.numpy()[0][2:], 0)


def test_generate_proposals_nms_and_padding():
    anchors = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30], [0, 0, 4, 4]], np.float32)
    obj = tf.constant([[3.0, 2.0, 1.0, -5.0]])
    props, valid = ops.generate_proposals(obj, tf.zeros((1, 4, 4)), anchors, (32, 32), [3, 1], pre_nms_topk=3,
                                          post_nms_topk=4, nms_threshold=0.7)
    # anchor 1 overlaps anchor 0 (IoU 0.9) on the same level: suppressed; anchor 3 is another level: kept
    np.testing.assert_array_equal(valid.numpy(), [[1, 1, 1, 0]])
    np.testing.assert_allclose(props.numpy()[0], [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 4, 4], [0, 0, 0, 0]])


def test_loss_values_by_hand():
    bce = losses.rpn_class_loss(tf.constant([[1.0, 0.0, 1.0]]), tf.constant([[0.0, 2.0, -1.0]]),
                                tf.constant([[1.0, 1.0, 0.0]]))
    assert float(bce) == pytest.approx((math.log(2) + math.log(1 + math.exp(2))) / 2, rel=1e-6)
    rpn_box = losses.rpn_box_loss(tf.zeros((1, 2, 4)), tf.constant([[[0.05, 0, 0, 0], [1.0, 0, 0, 0]]]),
                                  tf.constant([[1.0, 0.0]]), tf.constant([[1.0, 1.0]]))
    assert float(rpn_box) == pytest.approx(0.5 * 0.05**2 * 9 / 2, rel=1e-5)
    ce = losses.class_loss(tf.constant([[1, 0]]), tf.constant([[[0.0, 0.0], [math.log(3), 0.0]]]),
                           tf.constant([[1.0, 1.0]]))
    assert float(ce) == pytest.approx((math.log(2) - math.log(0.75)) / 2, rel=1e-6)
    deltas = tf.constant([[[9.0, 9, 9, 9, 0.5, 2.0, 0, 0], [9.0] * 8]])  # class 1 of ROI 0 counts; ROI 1 is background
    box = losses.box_loss(tf.zeros((1, 2, 4)), deltas, tf.constant([[1, 0]]), tf.constant([[1.0, 0.0]]),
                          tf.constant([[1.0, 1.0]]))
    assert float(box) == pytest.approx((0.125 + 1.5) / 2, rel=1e-6)
    targets = tf.constant([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    logits = tf.constant([[[0.0, 0.0], [1.0, -1.0]], [[5.0, 5.0], [5.0, 5.0]]])
    want = (math.log(2) * 2 + math.log(1 + math.exp(1)) * 2) / 4  # ROI 1 is not foreground
    assert float(losses.mask_loss(targets, logits, tf.constant([1.0, 0.0]))) == pytest.approx(want, rel=1e-6)


# -- the network ---------------------------------------------------------------------------------------------------

TINY = dict(num_classes=3, input_shape=(64, 64, 3), backbone="mobilenetv2", backbone_kwargs={"alpha": 0.35},
            fpn_filters=32, box_head_units=64, mask_head_filters=32, anchor_sizes=(8, 16, 32, 64, 128),
            rpn_pre_nms_topk=(200, 100), rpn_post_nms_topk=(100, 50), rois_per_image=64, max_detections=10)


def synthetic_batch(batch=2, size=64, max_instances=4, seed=0):
    """Images of 1-3 shapes on a noisy background: class 1 = bright rectangle, class 2 = dark ellipse; the
    training-batch contract (image, boxes [y1, x1, y2, x2], classes, masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(128, 10, (batch, size, size, 3))
    boxes = np.zeros((batch, max_instances, 4), np.float32)
    classes = np.zeros((batch, max_instances), np.int32)
    masks = np.zeros((batch, max_instances, size, size), np.uint8)
    for b in range(batch):
        for i in range(rng.integers(1, 4)):
            h, w = rng.integers(size // 5, size // 2, 2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            cls = int(rng.integers(1, 3))
            if cls == 1:
                mask = (yy >= y) & (yy < y + h) & (xx >= x) & (xx < x + w)
            else:
                mask = ((yy + 0.5 - y - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - x - w / 2) / (w / 2)) ** 2 <= 1
            images[b][mask] = (230.0, 200.0, 60.0) if cls == 1 else (30.0, 60.0, 200.0)
            for j in range(i):  # later shapes cover earlier ones
                masks[b, j] &= ~mask
            masks[b, i] = mask
            boxes[b, i] = (y, x, y + h, x + w)
            classes[b, i] = cls
    return {"image": np.clip(images, 0, 255).astype(np.float32), "boxes": boxes, "classes": classes, "masks": masks}


def _total_loss(model, batch):
    tf.random.set_seed(0)  # the same anchor and ROI draws before and after training
    # training-mode BN (batch statistics): a few steps barely move the moving averages inference mode uses
    return float(tf.add_n(list(model.compute_losses(batch, training=True).values())))


@pytest.fixture(scope="module")
def trained():
    """The tiny model after a few eager training steps (eager: tracing the training graph takes minutes on two
    busy cores; the graph path runs in the slow test)."""
    import keras

    import kseg

    keras.utils.set_random_seed(0)
    model = kseg.create_model("maskrcnn", **TINY)
    batch = synthetic_batch()
    before = _total_loss(model, batch)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    logs = [model.train_on_batch(batch, return_dict=True) for _ in range(4)]
    return model, batch, before, logs


def test_training_steps_lower_the_loss(trained):
    model, batch, before, logs = trained
    assert set(logs[-1]) == {"loss", "rpn_class_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss"}
    assert all(np.isfinite(v) for log in logs for v in log.values())
    after = _total_loss(model, batch)
    assert after < 0.85 * before, (before, after)


def test_detection_contract_and_save_reload(trained, tmp_path):
    import keras

    model, batch, _, _ = trained
    images = batch["image"]
    out = {k: v.numpy() for k, v in model(images).items()}
    d = TINY["max_detections"]
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "boxes": ((2, d, 4), np.float32), "scores": ((2, d), np.float32), "classes": ((2, d), np.int32),
        "masks": ((2, d, 28, 28), np.float32), "num_detections": ((2,), np.int32)}
    n = out["num_detections"]
    assert (n > 0).all()
    for b in range(2):  # empty slots are zero, present ones are sorted valid detections
        assert (out["classes"][b, n[b]:] == 0).all() and not out["boxes"][b, n[b]:].any()
        assert not out["masks"][b, n[b]:].any() and not out["scores"][b, n[b]:].any()
        assert ((out["classes"][b, :n[b]] >= 1) & (out["classes"][b, :n[b]] <= 2)).all()
        assert (np.diff(out["scores"][b, :n[b]]) <= 0).all() and (out["scores"][b, :n[b]] >= 0.05).all()
        present = out["boxes"][b, :n[b]]
        assert (present >= 0).all() and (present <= 64).all() and (present[:, 2:] >= present[:, :2]).all()
    path = tmp_path / "maskrcnn.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    again = reloaded(images)
    for key, value in out.items():
        np.testing.assert_array_equal(again[key].numpy(), value, err_msg=key)


def test_inference_model_converts_to_builtin_tflite_and_matches(trained):
    from ai_edge_litert.interpreter import Interpreter

    from export.convert import to_tflite
    from export.flatbuffer import load, ops as tflite_ops
    model, batch, _, _ = trained
    image = batch["image"][:1]
    flatbuffer = to_tflite(model.inference_model(), "float32")
    names = {op.name for op in tflite_ops(load(flatbuffer))}
    assert "NON_MAX_SUPPRESSION_V4" in names and "GATHER" in names
    assert not any(n.startswith(("Flex", "BUILTIN_")) or n == "CUSTOM" for n in names), names
    runner = Interpreter(model_content=flatbuffer).get_signature_runner()
    got = runner(**{runner.get_input_details().popitem()[0]: image})
    want = {k: v.numpy() for k, v in model(image).items()}
    n = int(want["num_detections"][0])
    assert n > 0 and int(got["num_detections"][0]) == n
    np.testing.assert_array_equal(got["classes"], want["classes"])
    # float32 kernels (XNNPACK) against TensorFlow's: measured differences are ~4e-6 pixels and ~3e-7 in scores
    # and mask probabilities (benchmarks/maskrcnn_network.py); the bounds leave a 100x margin
    np.testing.assert_allclose(got["boxes"][0, :n], want["boxes"][0, :n], atol=1e-3)
    np.testing.assert_allclose(got["scores"][0, :n], want["scores"][0, :n], atol=1e-5)
    np.testing.assert_allclose(got["masks"][0, :n], want["masks"][0, :n], atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"input_shape": (96, 96, 3)}, "divisible by 64"),
    ({"num_classes": 1}, "background"),
    ({"anchor_sizes": (8, 16, 32)}, "anchor_sizes"),
    ({"roi_positive_fraction": 0.0}, "roi_positive_fraction"),
    ({"rpn_post_nms_topk": (10, 10, 10)}, "rpn_post_nms_topk"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    import kseg

    with pytest.raises(ValueError, match=match):
        kseg.create_model("maskrcnn", **{**TINY, **kwargs})


def test_registered_as_instance_model():
    import kseg

    assert kseg.model_task("maskrcnn") == "instance"
    assert "maskrcnn" not in kseg.list_models(task="semantic")


def _match_rate(model, batch):
    """Share of ground-truth instances with a detection of the right class, score >= 0.5 and box IoU >= 0.5, and
    the mean pixel IoU of those detections' 28x28 masks (> 0.5) with the gt mask resampled into the detected box."""
    out = model.predict(batch["image"], verbose=0)  # graph mode, unknown batch size: the tf.map_fn path
    found, mask_ious, total = 0, [], 0
    for b in range(len(batch["image"])):
        n = int(out["num_detections"][b])
        for i in np.flatnonzero(batch["classes"][b]):
            total += 1
            iou = ops.box_iou(tf.constant(batch["boxes"][b, i:i + 1]), tf.constant(out["boxes"][b, :n])).numpy()[0]
            ok = (out["classes"][b, :n] == batch["classes"][b, i]) & (out["scores"][b, :n] >= 0.5) & (iou >= 0.5)
            if ok.any():
                found += 1
                j = int(np.flatnonzero(ok)[0])
                target = ops.mask_targets(batch["masks"][b:b + 1, i:i + 1], tf.zeros((1, 1), tf.int32),
                                          tf.constant(out["boxes"][b:b + 1, j:j + 1])).numpy()[0] > 0
                pred = out["masks"][b, j] > 0.5
                mask_ious.append((pred & target).sum() / max((pred | target).sum(), 1))
    return found / total, float(np.mean(mask_ious)) if mask_ious else 0.0


@pytest.mark.slow
def test_training_makes_detections_correct():
    """fit() in graph mode (tf.map_fn over an unknown batch) on 32 synthetic images until the boxes, classes and
    masks of the training images are found."""
    import keras

    import kseg

    keras.utils.set_random_seed(1)
    model = kseg.create_model("maskrcnn", **TINY)
    data = synthetic_batch(batch=32, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    dataset = tf.data.Dataset.from_tensor_slices(data).shuffle(32, seed=0).batch(4).repeat()
    history = model.fit(dataset, epochs=6, steps_per_epoch=100, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"]
    evaluated = model.evaluate(tf.data.Dataset.from_tensor_slices(data).batch(8), return_dict=True, verbose=0)
    assert set(evaluated) == {"loss", "rpn_class_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss"}
    recall, mask_iou = _match_rate(model, {k: v[:16] for k, v in data.items()})
    print(f"recall {recall:.3f}, mask IoU {mask_iou:.3f}, losses {history['loss']}")
    assert recall >= 0.8 and mask_iou >= 0.7, (recall, mask_iou)
