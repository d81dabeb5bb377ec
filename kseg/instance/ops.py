"""TensorFlow ops of Mask R-CNN: anchors, box coding, IoU, anchor matching and sampling, proposals, proposal
sampling, ROIAlign, mask targets and class-aware NMS.

He, Gkioxari, Dollar and Girshick, "Mask R-CNN", ICCV 2017, arXiv 1703.06870; Lin et al., "Feature Pyramid Networks
for Object Detection", CVPR 2017, arXiv 1612.03144; Ren, He, Girshick and Sun, "Faster R-CNN: Towards Real-Time
Object Detection with Region Proposal Networks", NIPS 2015, arXiv 1506.01497.

Conventions: boxes are ``[y1, x1, y2, x2]`` float32 in input-image pixels, a pixel ``(i, j)`` covering
``[i, i + 1) x [j, j + 1)`` (so a box over the whole ``H x W`` image is ``[0, 0, H, W]``); widths are ``x2 - x1``
(no "+1"). Every op takes batched, statically shaped tensors. What runs at inference (``generate_proposals``,
``roi_align``, ``detect``) uses only ops that convert to TFLite builtins: GATHER on flattened tensors instead of
``crop_and_resize`` or ``gather_nd`` with batch dims, TOPK_V2, NON_MAX_SUPPRESSION_V4, and a Python loop over a
static batch (a ``tf.map_fn`` only when the batch is unknown, i.e. in training).

Example:
    >>> import numpy as np
    >>> from kseg.instance import ops
    >>> anchors = ops.generate_anchors((64, 64), sizes=(8, 16, 32, 64, 128))
    >>> anchors.shape            # 3 ratios x (16*16 + 8*8 + 4*4 + 2*2 + 1*1) positions
    (1023, 4)
"""

import math

import numpy as np
import tensorflow as tf

LEVELS = (2, 3, 4, 5, 6)
ROI_LEVELS = (2, 3, 4, 5)
ANCHOR_SIZES = (32, 64, 128, 256, 512)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Faster R-CNN / Detectron: no box grows more than 1000/16 times its anchor in one decoding
DELTA_CLIP = math.log(1000.0 / 16)


def level_shapes(image_size, levels=LEVELS):
    """``[(h, w), ...]`` of the feature maps at strides ``2**k`` for ``k`` in ``levels`` (image size divisible by
    the largest stride)."""
    return [(image_size[0] // 2**k, image_size[1] // 2**k) for k in levels]


def generate_anchors(image_size, sizes=ANCHOR_SIZES, ratios=ANCHOR_RATIOS, levels=LEVELS):
    """All anchors of the pyramid, in the order the RPN's outputs are flattened.

    Order: level (P2 first), then row, then column, then ratio, i.e. what reshaping each level's
    ``(B, h, w, A)`` RPN map to ``(B, h * w * A)`` and concatenating the levels gives. Level ``P{k}`` has one
    anchor size ``sizes[k - 2]`` (FPN: 32..512 on P2..P6 for ~800-pixel images; pass smaller sizes for small
    inputs), centred on its cells, ``(i + 0.5) * 2**k``, with aspect ratios ``h / w`` in ``ratios`` and area
    ``size**2``. Anchors crossing the image border are kept (as Detectron2 and torchvision do; Faster R-CNN
    ignores them in training, which on small inputs removes every P5/P6 anchor).

    Args:
        image_size: ``(H, W)`` of the input.
        sizes: one anchor size (pixels) per level.
        ratios: aspect ratios ``h / w``.
        levels: pyramid levels ``k`` (stride ``2**k``).

    Returns:
        float32 numpy ``(N, 4)`` ``[y1, x1, y2, x2]``.
    """
    if len(sizes) != len(levels):
        raise ValueError(f"anchor sizes must give one size per level {levels}, got {tuple(sizes)}")
    out = []
    for k, size, (h, w) in zip(levels, sizes, level_shapes(image_size, levels)):
        stride = 2.0**k
        cy, cx = np.meshgrid((np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride, indexing="ij")
        half_h = np.array([size * math.sqrt(r) / 2 for r in ratios])
        half_w = np.array([size / math.sqrt(r) / 2 for r in ratios])
        cy, cx = cy[..., None], cx[..., None]
        out.append(np.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], -1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def encode_boxes(boxes, anchors, weights=RPN_WEIGHTS):
    """Regression targets ``(dy, dx, dh, dw)`` of ``boxes`` relative to ``anchors`` (Faster R-CNN eq. 2), times
    ``weights`` (1 for the RPN, ``(10, 10, 5, 5)`` for the box head, as in Detectron). Broadcasts."""
    anchors = tf.cast(anchors, tf.float32)
    ha, wa = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ya, xa = anchors[..., 0] + 0.5 * ha, anchors[..., 1] + 0.5 * wa
    h, w = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    y, x = boxes[..., 0] + 0.5 * h, boxes[..., 1] + 0.5 * w
    # degenerate (padding) boxes would give log(0): their targets are never used, keep them finite
    h, w = tf.maximum(h, 1e-6), tf.maximum(w, 1e-6)
    ha, wa = tf.maximum(ha, 1e-6), tf.maximum(wa, 1e-6)
    wy, wx, wh, ww = weights
    return tf.stack([wy * (y - ya) / ha, wx * (x - xa) / wa, wh * tf.math.log(h / ha), ww * tf.math.log(w / wa)], -1)


def decode_boxes(deltas, anchors, weights=RPN_WEIGHTS):
    """Inverse of ``encode_boxes``; ``dh`` and ``dw`` are clipped to ``log(1000 / 16)``. Broadcasts."""
    anchors = tf.cast(anchors, tf.float32)
    ha, wa = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ya, xa = anchors[..., 0] + 0.5 * ha, anchors[..., 1] + 0.5 * wa
    wy, wx, wh, ww = weights
    dy, dx = deltas[..., 0] / wy, deltas[..., 1] / wx
    dh = tf.minimum(deltas[..., 2] / wh, DELTA_CLIP)
    dw = tf.minimum(deltas[..., 3] / ww, DELTA_CLIP)
    y, x = ya + dy * ha, xa + dx * wa
    h, w = ha * tf.exp(dh), wa * tf.exp(dw)
    return tf.stack([y - 0.5 * h, x - 0.5 * w, y + 0.5 * h, x + 0.5 * w], -1)


def clip_boxes(boxes, image_size):
    """Boxes clipped to the ``(H, W)`` image."""
    limit = tf.constant([image_size[0], image_size[1], image_size[0], image_size[1]], tf.float32)
    return tf.minimum(tf.maximum(boxes, 0.0), limit)


def box_iou(a, b):
    """Pairwise IoU of ``a`` ``(..., N, 4)`` and ``b`` ``(..., M, 4)``: ``(..., N, M)``; 0 where the union is
    empty."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    ih = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    iw = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = ih * iw
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return tf.where(union > 0, inter / tf.maximum(union, 1e-9), 0.0)


def match_anchors(anchors, gt_boxes, gt_valid, positive_iou=0.7, negative_iou=0.3):
    """Label anchors for the RPN (Faster R-CNN section 3.1.2).

    Positive: IoU >= ``positive_iou`` with some ground-truth box, or the anchor(s) of highest IoU with a
    ground-truth box (every box then has at least one positive anchor; ties all count, as in Detectron). Negative:
    IoU < ``negative_iou`` with every box and not positive. The rest is ignored. Padding boxes
    (``gt_valid`` False) match nothing; an image without boxes has only negatives.

    Args:
        anchors: ``(N, 4)``.
        gt_boxes: ``(B, M, 4)``.
        gt_valid: bool ``(B, M)``.

    Returns:
        ``(labels, matched)``: int32 ``(B, N)`` labels 1 (positive), 0 (negative), -1 (ignored), and int32
        ``(B, N)`` index of the anchor's best box (meaningful for positives).
    """
    anchors = tf.cast(anchors, tf.float32)
    iou = box_iou(anchors[None], gt_boxes)  # (B, N, M)
    iou = tf.where(gt_valid[:, None, :], iou, -1.0)
    best = tf.reduce_max(iou, axis=2)
    matched = tf.argmax(iou, axis=2, output_type=tf.int32)
    gt_best = tf.reduce_max(iou, axis=1, keepdims=True)  # (B, 1, M)
    is_best = tf.reduce_any((iou == gt_best) & (gt_best > 0) & gt_valid[:, None, :], axis=2)
    positive = (best >= positive_iou) | is_best
    negative = (best < negative_iou) & ~positive
    labels = tf.where(positive, 1, tf.where(negative, 0, -1))
    return labels, matched


def subsample(positive, negative, num, positive_fraction, seed=None):
    """Random sample of ``num`` elements per image with at most ``num * positive_fraction`` positives, the rest
    negatives (Faster R-CNN's 256 anchors, half positive; Fast R-CNN's ROIs, 25% positive).

    Args:
        positive, negative: bool ``(B, N)``, disjoint.
        num: elements per image (at most N).
        positive_fraction: the largest share of positives.
        seed: op seed of the random draw.

    Returns:
        ``(indices, is_positive, is_valid)``, each ``(B, num)``: the sampled positions (positives first), whether
        each is a positive, and whether the slot holds a sample at all (False when an image has too few
        candidates).
    """
    n = int(positive.shape[-1])
    num = min(num, n)
    max_pos = max(1, int(num * positive_fraction))
    u = tf.random.uniform(tf.shape(positive), 0.0, 1.0, seed=seed)
    # the max_pos-th best random draw among positives: positives at or above it are kept (ties have probability 0)
    kth = tf.math.top_k(tf.where(positive, u, -1.0), k=min(max_pos, n)).values[:, -1:]
    kept = positive & (u >= kth)
    priority = tf.where(kept, 2.0 + u, tf.where(negative, 1.0 + u, 0.0))
    values, indices = tf.math.top_k(priority, k=num)
    return indices, values >= 2.0, values >= 1.0


def batched_gather(params, indices):
    """``params[b, indices[b, i]]`` for ``params`` ``(B, N, ...)`` and int32 ``indices`` ``(B, K)``, as one
    GATHER on the flattened tensor (TFLite's GATHER with ``batch_dims`` is not universally supported)."""
    shape = tf.shape(params)
    flat = tf.reshape(params, tf.concat([[shape[0] * shape[1]], shape[2:]], 0))
    offsets = tf.range(shape[0])[:, None] * shape[1]
    return tf.gather(flat, indices + offsets)


def map_images(fn, elems, output_dtypes):
    """Apply ``fn(*per_image_tensors)`` to every image: a Python loop over a static batch (converts to plain
    TFLite ops), ``tf.map_fn`` when the batch size is unknown. Returns a tuple of stacked outputs."""
    batch = elems[0].shape[0]
    if batch is not None:
        outs = [fn(*(e[i] for e in elems)) for i in range(batch)]
        return tuple(tf.stack(list(o)) for o in zip(*outs))
    return tuple(tf.map_fn(lambda t: fn(*t), tuple(elems), fn_output_signature=tuple(output_dtypes)))


def _nms(boxes, scores, max_output, iou_threshold, score_threshold=float("-inf")):
    """Indices (padded with 0) and validity of NMS on one image: NonMaxSuppressionV4, TFLite's builtin
    NON_MAX_SUPPRESSION_V4. Indices are sorted by decreasing score."""
    indices, count = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes, scores=scores, max_output_size=max_output, iou_threshold=iou_threshold,
        score_threshold=score_threshold, pad_to_max_output_size=True)
    return indices, tf.range(max_output) < count


def generate_proposals(objectness, deltas, anchors, image_size, level_sizes, pre_nms_topk=1000,
                       post_nms_topk=1000, nms_threshold=0.7):
    """RPN proposals (FPN section 4.1 as in Detectron2): per level the ``pre_nms_topk`` best anchors are decoded
    and clipped to the image, NMS at ``nms_threshold`` runs per level (one NMS with the levels moved apart), and
    the ``post_nms_topk`` best boxes of the image are kept.

    Args:
        objectness: ``(B, N)`` logits, ``deltas`` ``(B, N, 4)`` (RPN weights), ``anchors`` ``(N, 4)``, all in
            ``generate_anchors`` order.
        image_size: ``(H, W)``.
        level_sizes: anchors per level (to split N).

    Returns:
        ``(proposals, valid)``: ``(B, post_nms_topk, 4)`` boxes by decreasing objectness, zero where ``valid``
        ``(B, post_nms_topk)`` (float 0/1) is 0.
    """
    anchors = tf.constant(anchors) if isinstance(anchors, np.ndarray) else anchors
    boxes, scores, level_ids, start = [], [], [], 0
    for level, n in enumerate(level_sizes):
        k = min(pre_nms_topk, n)
        top, idx = tf.math.top_k(objectness[:, start:start + n], k=k)
        level_deltas = batched_gather(deltas[:, start:start + n], idx)
        level_anchors = tf.gather(anchors[start:start + n], idx)
        boxes.append(clip_boxes(decode_boxes(level_deltas, level_anchors), image_size))
        scores.append(top)
        level_ids.append(tf.fill([k], float(level)))
        start += n
    boxes, scores = tf.concat(boxes, 1), tf.concat(scores, 1)
    # NMS per level in one call: boxes of different levels never overlap once moved apart
    shift = (tf.concat(level_ids, 0) * float(max(image_size) + 1))[:, None]

    def one(b, s):
        idx, valid = _nms(b + shift, s, post_nms_topk, nms_threshold)
        valid = tf.cast(valid, tf.float32)
        return tf.gather(b, idx) * valid[:, None], valid

    return map_images(one, (boxes, scores), (tf.float32, tf.float32))


def sample_rois(proposals, proposal_valid, gt_boxes, gt_classes, num=512, positive_fraction=0.25,
                positive_iou=0.5, seed=None):
    """Training ROIs for the heads (Fast R-CNN / Mask R-CNN): the ground-truth boxes are added to the proposals,
    each candidate takes the class of its best-overlapping box if IoU >= ``positive_iou`` (foreground) and
    background otherwise, and ``num`` are sampled with at most ``positive_fraction`` foreground.

    Args:
        proposals: ``(B, P, 4)``, ``proposal_valid`` ``(B, P)``.
        gt_boxes: ``(B, M, 4)``, ``gt_classes`` int32 ``(B, M)`` (0 = padding).

    Returns:
        dict of ``(B, num)`` tensors (``rois`` ``(B, num, 4)``): ``rois``, ``classes`` (int32 target class,
        0 = background), ``matched`` (int32 index of the box, meaningful for foreground), ``positive`` and
        ``valid`` (bool). Foreground ROIs come first: all of them are in the first ``num * positive_fraction``
        slots.
    """
    gt_valid = gt_classes > 0
    candidates = tf.concat([proposals, gt_boxes], 1)
    candidate_valid = tf.concat([proposal_valid > 0, gt_valid], 1)
    iou = tf.where(gt_valid[:, None, :], box_iou(candidates, gt_boxes), -1.0)
    best = tf.reduce_max(iou, axis=2)
    matched = tf.argmax(iou, axis=2, output_type=tf.int32)
    positive = candidate_valid & (best >= positive_iou)
    negative = candidate_valid & ~positive
    idx, is_pos, is_valid = subsample(positive, negative, num, positive_fraction, seed=seed)
    matched = batched_gather(matched, idx)
    classes = tf.where(is_pos, batched_gather(gt_classes, matched), 0)
    return {"rois": batched_gather(candidates, idx), "classes": classes, "matched": matched,
            "positive": is_pos, "valid": is_valid}


def roi_levels(boxes, canonical_size=224.0, canonical_level=4, min_level=2, max_level=5):
    """FPN eq. 1: ``k = floor(k0 + log2(sqrt(w h) / 224))`` clamped to ``[min_level, max_level]`` (int32)."""
    area = tf.maximum((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]), 1e-6)
    k = tf.floor(canonical_level + tf.math.log(tf.sqrt(area) / canonical_size) / math.log(2.0) + 1e-6)
    return tf.cast(tf.clip_by_value(k, min_level, max_level), tf.int32)


def bilinear_bins(flat, base, height, width, boxes, output_size, sampling_ratio):
    """ROIAlign's core: the average of ``sampling_ratio x sampling_ratio`` bilinear samples in each of
    ``output_size x output_size`` bins of each box, gathered from one flattened tensor.

    Box ``r`` lies on a ``height[r] x width[r]`` map stored row-major in ``flat`` from row ``base[r]``, and is given
    in that map's continuous coordinates, where sample ``(y, x)`` interpolates the values at integer positions
    (pixel centres). Sample points are ``y1 + (t + 0.5) * (y2 - y1) / (output_size * sampling_ratio)``; a point
    more than one pixel outside the map contributes 0, others are clamped to the map (Detectron's rule).

    Args:
        flat: ``(rows, C)`` values.
        base: int32 ``(R,)``; ``height``, ``width``: float32 ``(R,)``.
        boxes: ``(R, 4)`` float32.

    Returns:
        ``(R, output_size, output_size, C)`` in ``flat``'s dtype cast to float32.
    """
    s = output_size * sampling_ratio
    grid = (tf.range(s, dtype=tf.float32) + 0.5) / s  # (S,)

    def axis(lo, hi, size):
        p = lo[:, None] + grid[None, :] * (hi - lo)[:, None]  # (R, S)
        inside = tf.cast((p >= -1.0) & (p <= size[:, None]), tf.float32)
        p = tf.clip_by_value(p, 0.0, size[:, None] - 1.0)
        p0 = tf.floor(p)
        p1 = tf.minimum(p0 + 1.0, size[:, None] - 1.0)
        frac = p - p0
        return tf.cast(p0, tf.int32), tf.cast(p1, tf.int32), (1.0 - frac) * inside, frac * inside

    y0, y1, wy0, wy1 = axis(boxes[:, 0], boxes[:, 2], height)
    x0, x1, wx0, wx1 = axis(boxes[:, 1], boxes[:, 3], width)
    row = base[:, None, None]
    w_int = tf.cast(width, tf.int32)[:, None, None]
    out = 0.0
    for yi, wy in ((y0, wy0), (y1, wy1)):
        for xi, wx in ((x0, wx0), (x1, wx1)):
            index = row + yi[:, :, None] * w_int + xi[:, None, :]  # (R, S, S)
            values = tf.cast(tf.gather(flat, index), tf.float32)  # (R, S, S, C)
            out += values * (wy[:, :, None] * wx[:, None, :])[..., None]
    if sampling_ratio == 1:
        return out
    # the sampling_ratio**2 average per bin, with reshapes of rank <= 4 (TFLite's MEAN)
    channels = out.shape[-1]
    out = tf.reduce_mean(tf.reshape(out, [-1, output_size, sampling_ratio, s * channels]), axis=2)
    out = tf.reduce_mean(tf.reshape(out, [-1, output_size, output_size, sampling_ratio, channels]), axis=3)
    return out


def roi_align(features, boxes, output_size=7, sampling_ratio=2, canonical_size=224.0):
    """ROIAlign (Mask R-CNN section 3) on the FPN levels P2..P5.

    Each box is pooled from level ``roi_levels(box)`` (FPN eq. 1). Its coordinates are divided by the level's
    stride and shifted by half a pixel (``y / 2**k - 0.5``: Detectron2's ``aligned=True``, which makes a feature
    value sit at its pixel centre; the paper's original has no shift), then each of the ``output_size**2`` bins
    averages ``sampling_ratio**2`` bilinear samples (the paper uses 2x2). All levels are flattened into one
    ``(B * sum(h w), C)`` tensor and each sample's four neighbours are gathered with a per-box row offset, so the
    op converts to TFLite builtins (GATHER, no ``crop_and_resize``).

    Args:
        features: ``[P2, P3, P4, P5]``, ``(B, h_k, w_k, C)`` at strides 4, 8, 16, 32.
        boxes: ``(B, R, 4)`` in input pixels.

    Returns:
        ``(B * R, output_size, output_size, C)`` float32, box ``r`` of image ``b`` at row ``b * R + r``.

    Example:
        >>> import tensorflow as tf
        >>> p = [tf.ones((1, 64 // 2**k, 64 // 2**k, 8)) for k in (2, 3, 4, 5)]
        >>> roi_align(p, tf.constant([[[0.0, 0.0, 32.0, 32.0]]])).shape
        TensorShape([1, 7, 7, 8])
    """
    shapes = [tuple(int(d) for d in f.shape[1:3]) for f in features]
    sizes = [h * w for h, w in shapes]
    total = sum(sizes)
    channels = int(features[0].shape[-1])
    flat = tf.concat([tf.reshape(tf.cast(f, tf.float32), [-1, n, channels]) for f, n in zip(features, sizes)], 1)
    batch, rois = tf.shape(boxes)[0], int(boxes.shape[1])
    flat = tf.reshape(flat, [-1, channels])
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    level = roi_levels(boxes, canonical_size) - ROI_LEVELS[0]  # 0..3

    def table(values, dtype):
        return tf.gather(tf.constant(values, dtype), level)

    offsets = np.cumsum([0] + sizes[:-1]).tolist()
    image = tf.reshape(tf.tile(tf.range(batch)[:, None], [1, rois]), [-1])
    base = image * total + table(offsets, tf.int32)
    scale = table([1.0 / 2**k for k in ROI_LEVELS], tf.float32)
    scaled = boxes * scale[:, None] - 0.5
    return bilinear_bins(flat, base, table([float(h) for h, _ in shapes], tf.float32),
                         table([float(w) for _, w in shapes], tf.float32), scaled, output_size, sampling_ratio)


def mask_targets(gt_masks, matched, rois, output_size=28, sampling_ratio=2):
    """Mask R-CNN's mask targets: each ROI's matched ground-truth mask cropped to the ROI and resampled to
    ``output_size x output_size`` with ROIAlign's bilinear sampling (stride 1, half-pixel aligned), then
    binarised at 0.5.

    Args:
        gt_masks: ``(B, M, H, W)`` binary (uint8 or bool), ``matched`` int32 ``(B, R)``, ``rois`` ``(B, R, 4)``.

    Returns:
        float32 ``(B * R, output_size, output_size)`` of 0/1.
    """
    shape = gt_masks.shape
    m, h, w = int(shape[1]), int(shape[2]), int(shape[3])
    flat = tf.reshape(tf.cast(gt_masks, tf.uint8), [-1, 1])
    image = tf.tile(tf.range(tf.shape(matched)[0])[:, None], [1, int(matched.shape[1])])
    base = tf.reshape((image * m + matched) * (h * w), [-1])
    n = tf.shape(base)[0]
    crops = bilinear_bins(flat, base, tf.fill([n], float(h)), tf.fill([n], float(w)),
                          tf.reshape(tf.cast(rois, tf.float32), [-1, 4]) - 0.5, output_size, sampling_ratio)
    return tf.cast(crops[..., 0] >= 0.5, tf.float32)


def detect(rois, roi_valid, class_logits, box_deltas, image_size, max_detections=100, score_threshold=0.05,
           nms_threshold=0.5, pre_nms_topk=1000):
    """Final detections (Mask R-CNN section 3.1, inference): per-class boxes decoded from each ROI, softmax
    scores, score threshold, class-aware NMS and the top ``max_detections``.

    Class-aware NMS is one NON_MAX_SUPPRESSION_V4 over boxes moved apart by ``class * (max(H, W) + 1)``, so boxes
    of different classes never suppress each other. Before it, the ``pre_nms_topk`` best (ROI, class) pairs are
    kept (TOPK_V2), which bounds the NMS cost for many classes.

    Args:
        rois: ``(B, R, 4)``, ``roi_valid`` ``(B, R)`` (0/1), ``class_logits`` ``(B, R, K)``,
            ``box_deltas`` ``(B, R, 4 K)`` (head weights).
        image_size: ``(H, W)``.

    Returns:
        ``(boxes, scores, classes, num_detections)``: ``(B, D, 4)``, ``(B, D)``, int32 ``(B, D)``, int32 ``(B,)``,
        zero past ``num_detections``, by decreasing score.
    """
    num_classes = int(class_logits.shape[-1])
    r = int(rois.shape[1])
    probs = tf.nn.softmax(tf.cast(class_logits, tf.float32))[..., 1:] * roi_valid[..., None]  # (B, R, K-1)
    deltas = tf.reshape(tf.cast(box_deltas, tf.float32), [-1, r, num_classes, 4])[:, :, 1:]
    boxes = clip_boxes(decode_boxes(deltas, rois[:, :, None, :], HEAD_WEIGHTS), image_size)  # (B, R, K-1, 4)
    n = r * (num_classes - 1)
    boxes = tf.reshape(boxes, [-1, n, 4])
    scores = tf.reshape(probs, [-1, n])
    labels = tf.constant(np.tile(np.arange(1, num_classes, dtype=np.int32), r))
    k = min(pre_nms_topk, n)
    shift = float(max(image_size) + 1)

    def one(b, s):
        top, idx = tf.math.top_k(s, k=k)
        b, cls = tf.gather(b, idx), tf.gather(labels, idx)
        keep, valid = _nms(b + tf.cast(cls, tf.float32)[:, None] * shift, top, max_detections, nms_threshold,
                           score_threshold)
        valid_f = tf.cast(valid, tf.float32)
        return (tf.gather(b, keep) * valid_f[:, None], tf.gather(top, keep) * valid_f,
                tf.gather(cls, keep) * tf.cast(valid, tf.int32), tf.reduce_sum(tf.cast(valid, tf.int32)))

    return map_images(one, (boxes, scores), (tf.float32, tf.float32, tf.int32, tf.int32))
