"""Instance data: what the nuclei tiles and the synthetic instances hold, how fast the training pipeline runs, and
the mask AP ceiling of 28 x 28 masks.

The ceiling: every ground-truth mask is cut to its box, brought to 28 x 28 and binarised at 0.5 (what Mask R-CNN's
mask head learns, He et al., ICCV 2017, arXiv 1703.06870), pasted back with `kseg.instance.masks.paste_masks` and
scored as a perfect detection with COCO mask AP (`kseg.instance.evaluate.MaskAP`): the AP a model with perfect boxes
and classes would reach.

    .venv/bin/python benchmarks/nuclei_tiles.py [--nuclei runs/nuclei] [--batches 20]

The nuclei part needs the stardist 0.9.2 wheel in --nuclei (`pip download stardist==0.9.2 --no-deps -d DIR`).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kseg.errors import ConfigError, DataError  # noqa: E402
from kseg.instance import data as idata  # noqa: E402
from kseg.instance.evaluate import MaskAP  # noqa: E402


def ceiling_detections(batch, size=28):
    """Perfect detections whose masks are the ground truth at size x size inside their boxes."""
    classes, boxes, masks = batch["classes"], batch["boxes"], batch["masks"]
    b, m = classes.shape
    small = np.zeros((b, m, size, size), np.float32)
    for i in range(b):
        for k in np.flatnonzero(classes[i]):
            y1, x1, y2, x2 = boxes[i, k].astype(int)
            crop = masks[i, k, y1:y2, x1:x2].astype(np.float32)
            small[i, k] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA) >= 0.5
    return {"boxes": boxes, "classes": classes, "scores": (classes > 0).astype(np.float32), "masks": small,
            "num_detections": (classes > 0).sum(axis=1).astype(np.int32)}


def report(name, cfg, split, batches):
    samples = [idata.load_instance_sample(cfg, *ref) for ref in idata.list_instance_samples(cfg, split)]
    counts = np.array([len(s["classes"]) for s in samples])
    areas = np.concatenate([s["masks"].sum(axis=(1, 2)) for s in samples])
    print(f"{name} {split}: {len(samples)} images, instances per image {counts.min()}-{counts.max()} "
          f"(mean {counts.mean():.1f}), area px median {np.median(areas):.0f} (10-90%: "
          f"{np.percentile(areas, 10):.0f}-{np.percentile(areas, 90):.0f})")
    metric = MaskAP(cfg.get("num_classes"))
    for batch in idata.build_instance_dataset(cfg, split, batch_size=4, shuffle=False):
        batch = {k: v.numpy() for k, v in batch.items()}
        metric.update(batch, ceiling_detections(batch))
    scores = metric.result()
    print(f"{name} {split}: 28x28 ceiling mask AP {scores['mask_ap']:.4f} AP50 {scores['mask_ap50']:.4f} "
          f"AP75 {scores['mask_ap75']:.4f} (box AP {scores['box_ap']:.4f})")
    ds = idata.build_instance_dataset(cfg, "train", batch_size=8, augment=True, repeat=True, seed=0)
    it = iter(ds)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * 8 / (time.perf_counter() - start)
    print(f"{name} train pipeline with augmentation: {rate:.0f} images/s (batch 8, {batches} batches)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nuclei", default="runs/nuclei", help="folder holding the stardist 0.9.2 wheel")
    parser.add_argument("--batches", type=int, default=20, help="batches timed per dataset")
    args = parser.parse_args()
    augment = {"hflip": True, "vflip": True, "scale": [0.75, 1.25]}
    report("instance_synthetic", {"format": "instance_synthetic", "image_size": [128, 128], "max_instances": 16,
                                  "synthetic": {"num_images": 200}, "augment": augment}, "val", args.batches)
    try:
        report("nuclei", {"format": "nuclei", "root": args.nuclei, "image_size": [128, 128], "max_instances": 32,
                          "augment": augment}, "val", args.batches)
    except (ConfigError, DataError) as exc:
        print(f"nuclei skipped: {exc}")


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    main()
