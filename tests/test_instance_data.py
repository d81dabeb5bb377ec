"""Instance datasets, the training-batch pipeline, mask pasting and COCO mask AP (kseg.instance)."""

import os
import pathlib

import cv2
import numpy as np
import pytest
from PIL import Image

import data_fixtures as fx
from kseg.data import data_errors
from kseg.errors import ConfigError, DataError
from kseg.instance import data as idata
from kseg.instance.evaluate import MaskAP, coco_ap, instances_to_coco
from kseg.instance.masks import detections_to_instances, instances_to_label_map, masks_to_boxes, paste_masks

NUCLEI = pathlib.Path(os.environ.get("KSEG_NUCLEI_DIR",
                                    pathlib.Path(__file__).resolve().parents[1] / "runs" / "nuclei"))


def _check_consistent(sample, min_area):
    """Boxes are the masks' tight boxes, every instance has min_area pixels and a foreground class."""
    masks = np.asarray(sample["masks"], bool)
    np.testing.assert_array_equal(sample["boxes"], masks_to_boxes(masks))
    assert (masks.sum(axis=(1, 2)) >= min_area).all()
    assert (np.asarray(sample["classes"]) > 0).all()


def test_synthetic_instances_deterministic_occluded_and_consistent():
    a = idata.synthetic_instances(3, (64, 80), num_classes=4, seed=7)
    b = idata.synthetic_instances(3, (64, 80), num_classes=4, seed=7)
    c = idata.synthetic_instances(3, (64, 80), num_classes=4, seed=8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].shape == (64, 80, 3) and a["image"].dtype == np.uint8
    assert set(a["classes"].tolist()) <= {1, 2, 3} and len(a["classes"]) >= 1
    # masks are what is visible after occlusion: no pixel belongs to two instances
    assert a["masks"].sum(axis=0).max() == 1
    _check_consistent(a, 16)
    counts = [len(idata.synthetic_instances(i, (64, 80), 4, 0)["classes"]) for i in range(8)]
    assert max(counts) >= 3  # overlapping scenes, not one shape per image


def test_coco_sample_drops_crowd_and_converts_boxes(tmp_path):
    root, _ = fx.write_coco(tmp_path)
    cfg = {"format": "coco", "root": str(root), "image_size": [fx.H, fx.W], "max_instances": 4, "min_area": 1}
    samples = idata.list_instance_samples(cfg, "train")
    assert len(samples) == 2
    raw = idata.read_coco_sample(*samples[0])
    # person polygon 4..12 x 2..10 and dog polygon 8..20 x 6..14 (bbox [x, y, w, h]); the crowd region is dropped
    np.testing.assert_array_equal(raw["boxes"], [[2, 4, 10, 12], [6, 8, 14, 20]])
    np.testing.assert_array_equal(raw["boxes"], masks_to_boxes(raw["masks"]))
    np.testing.assert_array_equal(raw["classes"], [1, 17])  # COCO ids 1 (person), 18 (dog) -> contiguous 1, 17

    batch = next(iter(idata.build_instance_dataset(cfg, "train", batch_size=2, shuffle=False)))
    assert batch["image"].shape == (2, fx.H, fx.W, 3) and batch["image"].dtype.name == "float32"
    assert batch["boxes"].shape == (2, 4, 4) and batch["boxes"].dtype.name == "float32"
    assert batch["classes"].shape == (2, 4) and batch["classes"].dtype.name == "int32"
    assert batch["masks"].shape == (2, 4, fx.H, fx.W) and batch["masks"].dtype.name == "uint8"
    classes, boxes, masks = (batch[k].numpy() for k in ("classes", "boxes", "masks"))
    np.testing.assert_array_equal(classes, [[1, 17, 0, 0]] * 2)
    assert not boxes[:, 2:].any() and not masks[:, 2:].any()  # padding is zeros
    np.testing.assert_array_equal(boxes[:, :2], [raw["boxes"]] * 2)
    np.testing.assert_array_equal(masks[0, :2], raw["masks"])
    np.testing.assert_array_equal(batch["image"].numpy()[0], cv2.imread(samples[0][0])[..., ::-1])


def test_too_many_instances_names_the_file_and_setting(tmp_path):
    root, _ = fx.write_coco(tmp_path)
    cfg = {"format": "coco", "root": str(root), "image_size": [fx.H, fx.W], "max_instances": 1, "min_area": 1}
    image, ref = idata.list_instance_samples(cfg, "val")[0]
    with pytest.raises(DataError, match=rf"{image}: 2 instances but data.max_instances is 1; raise"):
        idata.load_instance_sample(cfg, image, ref)
    with pytest.raises(DataError, match="data.max_instances"), data_errors():
        next(iter(idata.build_instance_dataset(cfg, "val", batch_size=1)))


def _write_instance_folder(root):
    """Two images: a 16-bit PNG instance map (ids 300, 1000, 1001) with a class map, an 8-bit TIFF map (id 7)."""
    h, w = 20, 24
    inst = np.zeros((h, w), np.uint16)
    inst[2:8, 3:9], inst[10:18, 12:22], inst[0:4, 18:24] = 300, 1000, 1001
    cls = np.zeros((h, w), np.uint8)
    cls[inst == 300], cls[inst == 1000], cls[inst == 1001] = 2, 1, 2
    cls[10, 12] = 2  # one stray pixel: the majority decides the class
    fx.write_rgb(root / "images" / "a.png", fx.random_image(1, h, w))
    fx.write_rgb(root / "images" / "b.png", fx.random_image(2, h, w))
    (root / "masks").mkdir(parents=True)
    (root / "classes").mkdir()
    assert cv2.imwrite(str(root / "masks" / "a.png"), inst)
    Image.fromarray(cls).save(root / "classes" / "a.png")
    b = np.zeros((h, w), np.uint8)
    b[5:15, 5:10] = 7
    Image.fromarray(b).save(root / "masks" / "b.tif")
    Image.fromarray((b > 0).astype(np.uint8) * 3).save(root / "classes" / "b.png")
    return inst, b


def test_instance_map_folder(tmp_path):
    root = tmp_path / "cells"
    inst, b = _write_instance_folder(root)
    cfg = {"format": "instance_folder", "root": str(root), "image_size": [20, 24], "num_classes": 4,
           "class_dir": "classes", "splits": {"train": "0-1"}, "min_area": 1}
    samples = idata.list_instance_samples(cfg, "train")
    a_sample = idata.load_instance_sample(cfg, *samples[0])
    np.testing.assert_array_equal(a_sample["classes"], [2, 1, 2])
    np.testing.assert_array_equal(a_sample["masks"], [inst == 300, inst == 1000, inst == 1001])
    np.testing.assert_array_equal(a_sample["boxes"], [[2, 3, 8, 9], [10, 12, 18, 22], [0, 18, 4, 24]])
    b_sample = idata.load_instance_sample(cfg, *samples[1])
    np.testing.assert_array_equal(b_sample["classes"], [3])
    np.testing.assert_array_equal(b_sample["masks"], [b == 7])
    # one class: no class maps, every instance class 1; stretched to another size, boxes follow the masks
    one_cfg = {**cfg, "class_dir": None, "num_classes": 2, "image_size": [40, 48]}
    one = idata.load_instance_sample(one_cfg, *idata.list_instance_samples(one_cfg, "train")[0])
    np.testing.assert_array_equal(one["classes"], [1, 1, 1])
    np.testing.assert_array_equal(one["boxes"], [[4, 6, 16, 18], [20, 24, 36, 44], [0, 36, 8, 48]])


def test_instance_map_errors_name_the_file(tmp_path):
    root = tmp_path / "cells"
    _write_instance_folder(root)
    cls = np.zeros((20, 24), np.uint8)
    Image.fromarray(cls).save(root / "classes" / "b.png")  # instance 7 now lies on background
    cfg = {"format": "instance_folder", "root": str(root), "image_size": [20, 24], "num_classes": 4,
           "class_dir": "classes", "splits": {"train": "0-1"}}
    samples = idata.list_instance_samples(cfg, "train")
    with pytest.raises(DataError, match=rf"{root / 'classes' / 'b.png'}: instance 7 of .*b.tif lies mostly on class 0"):
        idata.load_instance_sample(cfg, *samples[1])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "b.tif")
    with pytest.raises(DataError, match=rf"{root / 'masks' / 'b.tif'}: instance map is 10x10 but its image"):
        idata.load_instance_sample(cfg, *samples[1])
    with pytest.raises(ConfigError, match="data.num_classes is required with data.class_dir"):
        idata.validate_instance_data_config({**cfg, "num_classes": None})
    with pytest.raises(ConfigError, match="data.augment: unknown keys"):
        idata.validate_instance_data_config({**cfg, "augment": {"rotate": 0.1}})


def test_augmentation_keeps_boxes_on_masks_and_drops_vanished():
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:6, 1:5] = True
    masks[1, 10:18, 20:29] = True
    sample = {"image": np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3), "masks": masks,
              "boxes": masks_to_boxes(masks), "classes": np.array([1, 2], np.int32)}
    flipped = idata.augment_instances(sample, np.random.default_rng(0), {"hflip": True, "vflip": False,
                                                                          "scale": None})
    rng = np.random.default_rng(0)
    if rng.random() < 0.5:  # the same draw decides the flip
        np.testing.assert_array_equal(flipped["masks"], masks[:, :, ::-1])
        np.testing.assert_array_equal(flipped["boxes"], [[2, 25, 6, 29], [10, 1, 18, 10]])
        np.testing.assert_array_equal(flipped["image"], sample["image"][:, ::-1])
    else:
        np.testing.assert_array_equal(flipped["masks"], masks)
    seen = set()
    for seed in range(30):
        out = idata.augment_instances(sample, np.random.default_rng(seed),
                                      {"hflip": True, "vflip": True, "scale": [1.5, 3.0]}, min_area=4)
        _check_consistent(out, 4)
        assert out["image"].shape == (20, 30, 3) and out["masks"].shape[1:] == (20, 30)
        seen.add(len(out["classes"]))
    assert 2 in seen and min(seen) < 2  # zoomed crops sometimes cut an instance away; it is dropped


def test_pipeline_augmentation_is_seeded_and_consistent():
    cfg = {"format": "instance_synthetic", "image_size": [48, 64], "max_instances": 10, "min_area": 8,
           "synthetic": {"num_images": 10}, "augment": {"hflip": True, "scale": [0.6, 1.6]}}
    first = next(iter(idata.build_instance_dataset(cfg, "train", batch_size=4, augment=True, seed=3)))
    again = next(iter(idata.build_instance_dataset(cfg, "train", batch_size=4, augment=True, seed=3)))
    for key in first:
        np.testing.assert_array_equal(first[key].numpy(), again[key].numpy())
    for i in range(4):
        sample = idata.unpad_instances(*(first[k].numpy()[i] for k in ("image", "boxes", "classes", "masks")))
        _check_consistent(sample, 8)
        padding = first["classes"].numpy()[i] == 0
        assert not first["masks"].numpy()[i][padding].any() and not first["boxes"].numpy()[i][padding].any()


def test_nuclei_missing_names_the_folder_and_pip_command(tmp_path):
    cfg = {"format": "nuclei", "root": str(tmp_path), "image_size": 128}
    with pytest.raises(DataError, match=rf"{tmp_path}: holds neither.*pip download stardist==0.9.2 --no-deps -d"):
        idata.list_instance_samples(cfg, "train")
    missing = tmp_path / "not-there"
    with pytest.raises(DataError, match=rf"{missing}: holds neither.*pip download stardist==0.9.2 --no-deps -d"):
        idata.list_instance_samples({**cfg, "root": str(missing)}, "val")
    with pytest.raises(ConfigError, match="data.tile_size must divide 512"):
        idata.validate_instance_data_config({**cfg, "tile_size": 100})


def test_nuclei_tiles():
    if not any(NUCLEI.glob("stardist-0.9.2-*.whl")) and not (NUCLEI / "img2d.tif").is_file():
        pytest.skip(f"nuclei data not found in {NUCLEI}: run `pip download stardist==0.9.2 --no-deps -d {NUCLEI}` "
                    f"(or set KSEG_NUCLEI_DIR)")
    cfg = {"format": "nuclei", "root": str(NUCLEI), "image_size": 128, "max_instances": 40}
    train, val = (idata.list_instance_samples(cfg, s) for s in ("train", "val"))
    assert len(train) == 12 and len(val) == 4
    image, label = idata.read_nuclei(str(NUCLEI))
    assert image.shape == (512, 512, 3) and len(np.unique(label)) == 126  # 125 nuclei + background
    counts = []
    for ref in train + val:
        sample = idata.load_instance_sample(cfg, *ref)
        _check_consistent(sample, 16)
        counts.append(len(sample["classes"]))
    # every nucleus lies in at least one tile (those cut by borders in several)
    assert 125 <= sum(counts) <= 125 + 60 and min(counts) >= 3


def _bilinear(mask, y, x):
    """Direct bilinear sample of a (m, m) mask at continuous (row, column), edges held."""
    y, x = np.clip(y, 0, mask.shape[0] - 1), np.clip(x, 0, mask.shape[1] - 1)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, mask.shape[0] - 1), min(x0 + 1, mask.shape[1] - 1)
    fy, fx_ = y - y0, x - x0
    return ((1 - fy) * (1 - fx_) * mask[y0, x0] + (1 - fy) * fx_ * mask[y0, x1]
            + fy * (1 - fx_) * mask[y1, x0] + fy * fx_ * mask[y1, x1])


def test_paste_masks_matches_direct_computation():
    rng = np.random.default_rng(0)
    h, w = 30, 36
    masks = rng.uniform(0, 1, (4, 28, 28))
    boxes = np.array([[3.3, 4.7, 20.2, 15.9], [-5.0, 20.5, 12.0, 44.0], [10.0, 10.0, 11.0, 12.0],
                      [0.0, 0.0, 30.0, 36.0]])
    pasted = paste_masks(masks, boxes, (h, w), threshold=0.5)
    expected = np.zeros_like(pasted)
    for k, (y1, x1, y2, x2) in enumerate(boxes):
        for r in range(h):
            for c in range(w):
                if y1 <= r + 0.5 < y2 and x1 <= c + 0.5 < x2:
                    v = _bilinear(masks[k], (r + 0.5 - y1) / (y2 - y1) * 28 - 0.5,
                                  (c + 0.5 - x1) / (x2 - x1) * 28 - 0.5)
                    expected[k, r, c] = v >= 0.5
    np.testing.assert_array_equal(pasted, expected)
    # a mask of ones fills exactly its box
    np.testing.assert_array_equal(paste_masks(np.ones((1, 28, 28)), [[2, 4, 10, 12]], (16, 16))[0].nonzero(),
                                  np.mgrid[2:10, 4:12].reshape(2, -1))


def _detections(boxes, classes, scores, slots=5):
    n = len(boxes)
    det = {"boxes": np.zeros((1, slots, 4), np.float32), "classes": np.zeros((1, slots), np.int32),
           "scores": np.zeros((1, slots), np.float32), "masks": np.zeros((1, slots, 28, 28), np.float32),
           "num_detections": np.array([n], np.int32)}
    if n:
        det["boxes"][0, :n], det["classes"][0, :n], det["scores"][0, :n] = boxes, classes, scores
        det["masks"][0, :n] = 1
    return det


def test_detections_to_instances():
    det = _detections([[2, 2, 6, 8], [1, 1, 3, 3]], [2, 1], [0.9, 0.3])
    det["classes"][0, 2] = 1  # a slot past num_detections is ignored
    inst = detections_to_instances(det, 0, image_size=(10, 12))
    np.testing.assert_array_equal(inst["classes"], [2, 1])
    np.testing.assert_array_equal(inst["masks"][0], np.pad(np.ones((4, 6), bool), ((2, 4), (2, 4))))
    # boxes from a 10x12 model input into a 20x36 image
    big = detections_to_instances(det, 0, image_size=(20, 36), input_size=(10, 12), score_threshold=0.5)
    np.testing.assert_array_equal(big["boxes"], [[4, 6, 12, 24]])
    assert big["masks"].shape == (1, 20, 36) and big["masks"].sum() == 8 * 18
    label = instances_to_label_map(inst["masks"], inst["scores"])
    assert label[2, 2] == 1 and label[1, 1] == 2 and label[0, 0] == 0


def _ground_truth():
    masks = np.zeros((1, 3, 32, 32), np.uint8)
    masks[0, 0, 2:12, 2:12] = 1
    masks[0, 1, 16:26, 16:28] = 1
    return {"boxes": np.array([[[2, 2, 12, 12], [16, 16, 26, 28], [0, 0, 0, 0]]], np.float32),
            "classes": np.array([[1, 1, 0]], np.int32), "masks": masks}


def _ap(batch, det, num_classes=2):
    metric = MaskAP(num_classes)
    metric.update(batch, det)
    return metric.result()


def test_mask_ap_hand_made_cases():
    gt = _ground_truth()
    perfect = _ap(gt, _detections([[2, 2, 12, 12], [16, 16, 26, 28]], [1, 1], [0.9, 0.8]))
    assert perfect["mask_ap"] == perfect["mask_ap50"] == perfect["box_ap"] == 1.0
    # the first instance shifted 2 columns: IoU 80 / 120 = 0.667, a true positive at IoU thresholds 0.50-0.65 (4
    # of 10); at 0.70-0.95 it is a false positive ranked first and recall stops at 1/2: precision 1/2 at recall
    # 1/2 (the next detection is a true positive), so COCO's 101-point interpolation holds 1/2 over points 0-50
    shifted = _ap(gt, _detections([[2, 4, 12, 14], [16, 16, 26, 28]], [1, 1], [0.9, 0.8]))
    assert shifted["mask_ap50"] == 1.0
    assert shifted["mask_ap"] == pytest.approx((4 + 6 * 0.5 * 51 / 101) / 10, abs=1e-9)
    assert shifted["box_ap"] == pytest.approx((4 + 6 * 0.5 * 51 / 101) / 10, abs=1e-9)
    # one of two instances missing: recall 1/2 at precision 1 -> 51 of 101 recall points
    missing = _ap(gt, _detections([[16, 16, 26, 28]], [1], [0.8]))
    assert missing["mask_ap"] == pytest.approx(51 / 101, abs=1e-9)
    empty = _ap(gt, _detections([], [], []))
    assert empty["mask_ap"] == empty["mask_ap50"] == empty["box_ap"] == 0.0
    # a wrong class is no match; AP averages over the categories with ground truth
    gt2 = dict(gt, classes=np.array([[1, 2, 0]], np.int32))
    wrong = _ap(gt2, _detections([[2, 2, 12, 12], [16, 16, 26, 28]], [1, 1], [0.9, 0.8]), num_classes=3)
    assert wrong["mask_ap"] == pytest.approx(0.5, abs=1e-9)


def test_coco_ap_on_a_coco_json(tmp_path):
    from kseg.data.formats_2d import read_instances

    root, _ = fx.write_coco(tmp_path)
    ann = root / "annotations" / "instances_train2017.json"
    results = []
    for image_id in (9, 25):
        inst = read_instances(f"{ann}::{image_id}")
        keep = ~inst["crowd"]
        x, y, w, h = inst["boxes"][keep].T
        results += instances_to_coco({"boxes": np.stack([y, x, y + h, x + w], 1), "masks": inst["masks"][keep],
                                      "classes": inst["category_ids"][keep], "scores": np.ones(keep.sum())},
                                     image_id)
    # perfect masks of the non-crowd instances; the crowd region is ignored, not a missed instance
    scores = coco_ap(str(ann), results)
    assert scores["mask_ap"] == 1.0 and scores["box_ap"] == 1.0
    assert coco_ap(str(ann), results[1:])["mask_ap50"] < 1.0
