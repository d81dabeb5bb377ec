"""COCO mask AP and box AP of instance predictions, by the COCO evaluation code (pycocotools' COCOeval).

AP is COCO's AP@[.5:.95]: precision averaged over 101 recall points, the IoU thresholds 0.50:0.05:0.95 and the
categories with ground truth (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014, arXiv 1405.0312);
AP50 and AP75 at one threshold. Mask IoU is computed on run-length encodings (pycocotools.mask), as for the COCO
leaderboard and in the Mask R-CNN paper (He et al., ICCV 2017, arXiv 1703.06870).

Ground truth comes as training batches (`kseg.instance.data.build_instance_dataset`) or a COCO annotation file /
dict; predictions in the detection contract (the model's output dict: 28 x 28 masks pasted into their boxes by
`kseg.instance.masks.paste_masks`) or as COCO result dicts.

Example:
    >>> metric = MaskAP()
    >>> for batch in build_instance_dataset(cfg, "val", batch_size=4):
    ...     metric.update(batch, model.predict_on_batch(batch["image"]))
    >>> metric.result()["mask_ap"]
"""

import contextlib
import io
import json

import numpy as np

from kseg.instance.masks import detections_to_instances

# COCOeval.stats, in the order of its summary
_STATS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
_PREFIX = {"segm": "mask", "bbox": "box"}


def encode_masks(masks):
    """COCO run-length encodings of bool (N, H, W) masks, ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks, bool)
    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def instances_to_coco(instances, image_id, first_id=1):
    """COCO annotation (or result, with ``scores``) dicts of one image's instances.

    Args:
        instances: dict with ``boxes`` (N, 4) ``[y1, x1, y2, x2]`` pixels, ``classes`` (N,) (the category ids),
            ``masks`` bool (N, H, W), and optionally ``scores`` (N,) (then the dicts are detection results).
        image_id: the image's id.
        first_id: id of the first annotation.

    Returns:
        list of dicts: ``id``, ``image_id``, ``category_id``, ``segmentation`` (RLE), ``area`` (mask pixels),
        ``bbox`` ``[x, y, w, h]``, ``iscrowd`` 0 (and ``score``).
    """
    masks = np.asarray(instances["masks"], bool)
    boxes = np.asarray(instances["boxes"], np.float64).reshape(-1, 4)
    out = []
    for k, (rle, (y1, x1, y2, x2), cls) in enumerate(zip(encode_masks(masks), boxes, instances["classes"])):
        ann = {"id": first_id + k, "image_id": int(image_id), "category_id": int(cls), "segmentation": rle,
               "area": float(masks[k].sum()), "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}
        if "scores" in instances:
            ann["score"] = float(instances["scores"][k])
        out.append(ann)
    return out


def coco_ap(ground_truth, results, iou_types=("segm", "bbox"), max_detections=100):
    """AP, AP50, AP75 and AP by object size of detection results, by COCOeval.

    Args:
        ground_truth: a COCO annotation dict (``images`` with height and width, ``annotations``, ``categories``) or
            the path of an instances_*.json file.
        results: COCO result dicts (``image_id``, ``category_id``, ``segmentation`` RLE, ``bbox``, ``score``), e.g.
            from `instances_to_coco`; may be empty.
        iou_types: "segm" (mask AP) and / or "bbox" (box AP).
        max_detections: detections per image that count (COCO: 100).

    Returns:
        dict: ``mask_ap``, ``mask_ap50``, ``mask_ap75``, ``mask_ap_small`` / ``_medium`` / ``_large`` (and the same
        with ``box_``), in [0, 1]; NaN where COCOeval has nothing to score (no ground truth, or none of that size).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not isinstance(ground_truth, dict):
        with open(ground_truth) as f:
            ground_truth = json.load(f)
    out = {}
    for iou_type in iou_types:
        gt, dt = COCO(), COCO()
        with contextlib.redirect_stdout(io.StringIO()):  # COCO and COCOeval print their progress
            gt.dataset = {"images": ground_truth["images"], "categories": ground_truth["categories"],
                          "annotations": [dict(a, iscrowd=a.get("iscrowd", 0)) for a in ground_truth["annotations"]]}
            gt.createIndex()
            detections = []
            for k, r in enumerate(results):
                # COCO's loadRes: a detection's area is its mask's for segm, its box's for bbox
                area = r["bbox"][2] * r["bbox"][3] if iou_type == "bbox" else r.get("area", r["bbox"][2] * r["bbox"][3])
                detections.append(dict(r, id=k + 1, area=float(area), iscrowd=0))
            dt.dataset = {"images": ground_truth["images"], "categories": ground_truth["categories"],
                          "annotations": detections}
            dt.createIndex()
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.params.maxDets = [1, 10, max_detections]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(_STATS, evaluator.stats):
            out[f"{_PREFIX[iou_type]}_{name}"] = float(value) if value >= 0 else float("nan")
    return out


class MaskAP:
    """Accumulates ground truth and predictions batch by batch; `result` runs COCOeval over all of them.

    Args:
        num_classes: classes, background included: categories 1..num_classes-1 are scored (those with ground truth
            in the data, as in COCO). None: the classes seen in the ground truth.
        iou_types: "segm" (mask AP) and / or "bbox" (box AP).
        mask_threshold: binarisation threshold of the pasted mask probabilities (0.5 in the paper).
        max_detections: detections per image that count (COCO: 100).

    Example:
        >>> metric = MaskAP(num_classes=4)
        >>> metric.update(batch, detections)        # training-batch dict, detection-contract dict
        >>> metric.result()                         # {"mask_ap": ..., "mask_ap50": ..., "box_ap": ..., ...}
    """

    def __init__(self, num_classes=None, iou_types=("segm", "bbox"), mask_threshold=0.5, max_detections=100):
        self.num_classes = num_classes
        self.iou_types = tuple(iou_types)
        self.mask_threshold = mask_threshold
        self.max_detections = max_detections
        self.reset()

    def reset(self):
        """Forgets everything accumulated."""
        self.images, self.ground_truth, self.results = [], [], []

    def update(self, batch, detections):
        """Adds one batch.

        Args:
            batch: training-batch dict (numpy or tensors): ``boxes`` (B, M, 4), ``classes`` (B, M) (0: padding),
                ``masks`` (B, M, H, W); ``image`` is not needed.
            detections: detection-contract dict for the same images: ``boxes``, ``scores``, ``classes``, ``masks``
                (B, D, m, m) probabilities, ``num_detections``.
        """
        classes = np.asarray(batch["classes"])
        masks = np.asarray(batch["masks"])
        boxes = np.asarray(batch["boxes"])
        height, width = masks.shape[2:]
        for i in range(len(classes)):
            image_id = len(self.images) + 1
            self.images.append({"id": image_id, "height": int(height), "width": int(width)})
            keep = classes[i] > 0
            self.ground_truth += instances_to_coco(
                {"boxes": boxes[i][keep], "classes": classes[i][keep], "masks": masks[i][keep].astype(bool)},
                image_id, len(self.ground_truth) + 1)
            pred = detections_to_instances(detections, i, image_size=(height, width), threshold=self.mask_threshold)
            self.results += instances_to_coco(pred, image_id)

    def result(self):
        """The COCO numbers over everything added: dict as `coco_ap` (``mask_ap``, ``mask_ap50``, ``box_ap``, ...)."""
        seen = {a["category_id"] for a in self.ground_truth}
        ids = range(1, self.num_classes) if self.num_classes else sorted(seen)
        ground_truth = {"images": self.images, "annotations": self.ground_truth,
                        "categories": [{"id": int(c), "name": str(c)} for c in ids]}
        return coco_ap(ground_truth, self.results, self.iou_types, self.max_detections)
