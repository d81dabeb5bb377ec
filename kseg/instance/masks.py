"""Instance masks in numpy: fixed-size mask predictions pasted back into the image, detections as instances.

Numpy only (no TensorFlow, no pycocotools): the edge runtime imports this module on a Raspberry Pi.

Mask R-CNN (He, Gkioxari, Dollar, Girshick, "Mask R-CNN", ICCV 2017, arXiv 1703.06870) predicts an m x m (28 x 28)
mask of probabilities per detection, covering its box; at inference "the m x m floating-number mask output is then
resized to the RoI size, and binarized at a threshold of 0.5" (section 3.1). `paste_masks` does that resize by
bilinear sampling at the centres of the image pixels whose centres lie inside the box (continuous box coordinates,
no rounding of the box to whole pixels), so a mask of ones gives exactly the pixels of its box.

Box convention throughout kseg.instance: ``[y1, x1, y2, x2]`` in pixels, continuous coordinates, pixel ``(r, c)``
covering ``[r, r + 1) x [c, c + 1)``; a mask covering rows 2..9 has ``y1 = 2, y2 = 10``.

Example:
    >>> det = model.predict(images)            # the detection contract dict
    >>> inst = detections_to_instances(det, 0, image_size=images.shape[1:3])
    >>> inst["masks"].shape                     # (N, H, W) bool
"""

import numpy as np


def _interpolation_matrix(start, length, size, pixels):
    """(pixels, size) weights of linear interpolation of a ``size``-sample signal covering ``[start, start + length)``
    at the pixel centres ``0.5, 1.5, ...`` (relative to the first pixel), clamped at the signal's ends."""
    position = (np.arange(pixels) + 0.5 - start) / length * size - 0.5
    position = np.clip(position, 0, size - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    frac = position - low
    weights = np.zeros((pixels, size))
    rows = np.arange(pixels)
    np.add.at(weights, (rows, low), 1 - frac)
    np.add.at(weights, (rows, high), frac)
    return weights


def paste_masks(masks, boxes, image_size, threshold=0.5):
    """Resizes fixed-size mask probabilities into their boxes in a full-size image and binarises them.

    Args:
        masks: float (N, m, m) (or (N, mh, mw)) probabilities, each covering its box.
        boxes: float (N, 4) ``[y1, x1, y2, x2]`` in pixels of the image.
        image_size: (H, W) of the image.
        threshold: a pixel belongs to the instance when its interpolated probability is >= threshold.

    Returns:
        bool (N, H, W): pixels whose centres lie inside the box and whose bilinear sample of the mask (the mask's
        m samples spread evenly over the box, edge values held up to the box border) reaches ``threshold``.
    """
    masks = np.asarray(masks, np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    height, width = (int(v) for v in image_size)
    if masks.ndim != 3 or len(masks) != len(boxes):
        raise ValueError(f"paste_masks: masks must be (N, m, m) with one per box, got masks {masks.shape} and "
                         f"boxes {boxes.shape}")
    out = np.zeros((len(masks), height, width), bool)
    for i, (mask, (y1, x1, y2, x2)) in enumerate(zip(masks, boxes)):
        # pixels whose centres lie in [y1, y2) x [x1, x2), inside the image
        r0, r1 = max(int(np.ceil(y1 - 0.5)), 0), min(int(np.ceil(y2 - 0.5)), height)
        c0, c1 = max(int(np.ceil(x1 - 0.5)), 0), min(int(np.ceil(x2 - 0.5)), width)
        if r1 <= r0 or c1 <= c0:
            continue
        rows = _interpolation_matrix(y1 - r0, y2 - y1, mask.shape[0], r1 - r0)
        cols = _interpolation_matrix(x1 - c0, x2 - x1, mask.shape[1], c1 - c0)
        out[i, r0:r1, c0:c1] = rows @ mask @ cols.T >= threshold
    return out


def detections_to_instances(det, index=0, *, image_size, input_size=None, threshold=0.5, score_threshold=0.0):
    """One image of a detection-contract batch as plain numpy instances with full-size masks.

    Args:
        det: the detection contract dict (numpy arrays or tensors): ``boxes`` (B, D, 4) ``[y1, x1, y2, x2]``,
            ``scores`` (B, D), ``classes`` (B, D) (0 = empty slot), ``masks`` (B, D, m, m) probabilities,
            ``num_detections`` (B,).
        index: which image of the batch.
        image_size: (H, W) of the image to paste the masks into.
        input_size: (h, w) of the model input when it differs from ``image_size`` (the image was resized for the
            model): boxes are scaled from input to image pixels. None: the same size.
        threshold: mask binarisation threshold (0.5 in the paper).
        score_threshold: detections below this score are left out.

    Returns:
        dict of numpy arrays, detections in the model's order (by score): ``boxes`` float32 (N, 4)
        ``[y1, x1, y2, x2]`` in image pixels, ``scores`` float32 (N,), ``classes`` int32 (N,) (1..num_classes-1),
        ``masks`` bool (N, H, W).
    """
    count = int(np.asarray(det["num_detections"]).reshape(-1)[index])
    boxes = np.asarray(det["boxes"], np.float32)[index, :count]
    scores = np.asarray(det["scores"], np.float32)[index, :count]
    classes = np.asarray(det["classes"], np.int32)[index, :count]
    masks = np.asarray(det["masks"], np.float32)[index, :count]
    keep = (classes > 0) & (scores >= score_threshold)
    boxes, scores, classes, masks = boxes[keep], scores[keep], classes[keep], masks[keep]
    if input_size is not None:
        sy, sx = (float(i) / float(n) for i, n in zip(image_size, input_size))
        boxes = boxes * np.array([sy, sx, sy, sx], np.float32)
    return {"boxes": boxes, "scores": scores, "classes": classes,
            "masks": paste_masks(masks, boxes, image_size, threshold)}


def instances_to_label_map(masks, scores=None):
    """Instance label map of an image: 0 background, instance i painted as i + 1.

    Args:
        masks: bool (N, H, W).
        scores: float (N,) or None; where instances overlap, the higher score wins (None: the later instance).

    Returns:
        int32 (H, W).
    """
    masks = np.asarray(masks, bool)
    order = np.arange(len(masks)) if scores is None else np.argsort(np.asarray(scores), kind="stable")
    label = np.zeros(masks.shape[1:], np.int32)
    for i in order:
        label[masks[i]] = i + 1
    return label


def masks_to_boxes(masks):
    """Tight ``[y1, x1, y2, x2]`` boxes (pixel edges: the last row / column + 1) of bool (N, H, W) masks; empty
    masks get zeros. float32 (N, 4)."""
    masks = np.asarray(masks, bool)
    boxes = np.zeros((len(masks), 4), np.float32)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    for i in range(len(masks)):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys):
            boxes[i] = ys[0], xs[0], ys[-1] + 1, xs[-1] + 1
    return boxes
