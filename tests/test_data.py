"""kseg.data: formats on tiny fixtures in the real layouts, the tf.data pipeline, errors, augmentation."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import data_fixtures as fx
from kseg.data import (build_dataset, check_dataset, data_errors, dataset_info, list_formats, list_samples,
                       num_samples, reraise_data_error, synthetic, validate_data_config)
from kseg.errors import ConfigError, DataError

SIZE = [fx.H, fx.W]


def load(cfg, split, **kw):
    """All batches of a split as numpy arrays, in file order, with DataErrors unwrapped."""
    with data_errors():
        batches = list(build_dataset(cfg, split, batch_size=kw.pop("batch_size", 8), shuffle=False, **kw))
    return (np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches]))


def stems(cfg, split):
    return [Path(image).stem for image, _ in list_samples(cfg, split)]


def test_list_formats():
    assert {"cityscapes", "folder", "isbi", "nifti", "sbd", "synthetic", "voc"} <= set(list_formats())


def test_voc_palette_masks_and_boundary(tmp_path):
    root, labels = fx.write_voc(tmp_path)
    cfg = {"format": "voc", "root": str(root), "image_size": SIZE}  # VOCdevkit is accepted for VOC2012
    assert [num_samples(cfg, s) for s in ("train", "val", "trainval")] == [1, 1, 2]
    images, got = load(cfg, "trainval")
    assert images.shape == (2, fx.H, fx.W, 3) and images.dtype == np.float32 and got.dtype == np.int32
    expected = np.stack([labels[s] for s in stems(cfg, "trainval")])
    np.testing.assert_array_equal(got, expected)  # palette indices, not colours; boundary stays 255
    assert set(np.unique(got)) == {0, 1, 15, 20, 255}
    info = dataset_info(cfg)
    assert info["num_classes"] == 21 and info["class_names"][15] == "person" and info["palette"][1] == (128, 0, 0)


def test_sbd_mat_masks(tmp_path):
    root, labels = fx.write_sbd(tmp_path)
    cfg = {"format": "sbd", "root": str(root), "image_size": SIZE}
    images, got = load(cfg, "train")
    assert images.shape == (2, fx.H, fx.W, 3)
    np.testing.assert_array_equal(got, np.stack([labels[s] for s in stems(cfg, "train")]))
    assert num_samples(cfg, "val") == 1


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    root, label_ids = fx.write_cityscapes(tmp_path)
    cfg = {"format": "cityscapes", "root": str(root), "image_size": SIZE}
    assert num_samples(cfg, "train") == 2 and num_samples(cfg, "val") == 1
    _, got = load(cfg, "train")
    ids = np.stack([label_ids[s.replace("_leftImg8bit", "")] for s in stems(cfg, "train")])
    for label_id, train_id in ((7, 0), (26, 13), (33, 18), (24, 11), (11, 2), (0, 255), (4, 255), (9, 255)):
        assert (got[ids == label_id] == train_id).all(), (label_id, train_id)
    info = dataset_info(cfg)
    assert info["num_classes"] == 19 and info["class_names"][13] == "car" and info["palette"][0] == (128, 64, 128)


def test_folder_tiff_images_and_palette_pngs(tmp_path):
    root, labels = fx.write_folder(tmp_path, n=4, masks="palette")
    cfg = {"format": "folder", "root": str(root), "num_classes": 3, "image_size": SIZE,
           "splits": {"train": "0-2", "val": "3"}}
    images, got = load(cfg, "train")
    assert images.shape == (3, fx.H, fx.W, 3)
    np.testing.assert_array_equal(images[0], fx.random_image(30))  # TIFF read as RGB, not BGR
    np.testing.assert_array_equal(got, np.stack([labels[f"sample_{i}"] for i in range(3)]))
    assert stems(cfg, "val") == ["sample_3"]


def test_folder_colour_masks_through_palette(tmp_path):
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    root, labels = fx.write_folder(tmp_path, n=2, masks="colour", palette=palette)
    cfg = {"format": "folder", "root": str(root), "palette": palette, "image_size": SIZE,
           "splits": {"train": "0-1"}}
    _, got = load(cfg, "train")
    np.testing.assert_array_equal(got, np.stack([labels["sample_0"], labels["sample_1"]]))
    assert validate_data_config(cfg)["num_classes"] == 3  # from the palette


def test_isbi_threshold_and_natural_order(tmp_path):
    root, labels = fx.write_isbi(tmp_path)
    cfg = {"format": "isbi", "root": str(root), "image_size": SIZE, "splits": {"train": "0-8", "val": "9-10"}}
    assert stems(cfg, "val") == ["9", "10"]
    images, got = load(cfg, "val")
    np.testing.assert_array_equal(got, np.stack([labels["9"], labels["10"]]))
    assert got[0, 0, 0] == 1 and got[0, 0, 1] == 0  # grey 128 is cell, 127 membrane
    assert (images[..., 0] == images[..., 2]).all()  # grayscale expanded to RGB


def test_real_isbi_membranes(membrane_dir):
    cfg = {"format": "isbi", "root": str(membrane_dir), "image_size": [128, 128],
           "splits": {"train": "0-19", "val": "20-23"}}
    assert num_samples(cfg, "train") == 20
    images, labels = load(cfg, "val", batch_size=4)
    assert images.shape == (4, 128, 128, 3) and labels.shape == (4, 128, 128)
    membrane = (labels == 0).mean()
    assert set(np.unique(labels)) == {0, 1} and 0.1 < membrane < 0.4  # thin membranes, mostly cell interior
    assert 20 < images.mean() < 235 and images.std() > 20
    assert check_dataset(cfg, "train", raise_first=False) == []


def test_letterbox_pads_with_ignore_and_stretch_keeps_classes(tmp_path):
    root, _ = fx.write_folder(tmp_path, n=1, masks="index")
    cfg = {"format": "folder", "root": str(root), "num_classes": 3, "image_size": [32, 32], "resize": "letterbox",
           "splits": {"train": "0"}}
    images, labels = load(cfg, "train")
    assert labels.shape == (1, 32, 32)
    assert (labels[0, fx.H:] == 255).all() and (images[0, fx.H:] == 0).all()
    assert set(np.unique(labels[0, :fx.H])) <= {0, 1, 2}
    _, stretched = load(dict(cfg, resize="stretch", image_size=[50, 70]), "train")
    assert stretched.shape == (1, 50, 70) and set(np.unique(stretched)) <= {0, 1, 2}  # nearest: no new values


# ---------------------------------------------------------------------------------------------------- errors

def _break(kind, root):
    """Damages a folder fixture one way; returns the file the error must name and a phrase it must contain."""
    mask = root / "masks" / "sample_1.png"
    image = root / "images" / "sample_1.tif"
    if kind == "missing mask":
        mask.unlink()
        return image, "no mask"
    if kind == "size mismatch":
        fx.write_gray(mask, np.zeros((fx.H, fx.W + 2)))
        return mask, "masks must have their image's size"
    if kind == "label out of range":
        fx.write_gray(mask, np.full((fx.H, fx.W), 7))
        return mask, "label values 7"
    if kind == "unknown colour":
        fx.write_rgb(mask, np.full((fx.H, fx.W, 3), (10, 20, 30), np.uint8))
        return mask, "colour (10, 20, 30)"
    if kind == "corrupt image":
        image.write_bytes(b"not a tiff")
        return image, "cannot read image"
    mask.write_bytes(b"\x89PNG truncated")
    return mask, "cannot read mask"


ERRORS = ["missing mask", "size mismatch", "label out of range", "unknown colour", "corrupt image", "corrupt mask"]


@pytest.mark.parametrize("kind", ERRORS)
def test_errors_name_the_file(tmp_path, kind):
    root, _ = fx.write_folder(tmp_path, n=3, masks="index")
    palette = [[0, 0, 0], [1, 1, 1], [2, 2, 2]] if kind == "unknown colour" else None
    cfg = {"format": "folder", "root": str(root), "num_classes": 3, "image_size": SIZE, "splits": {"train": "0-2"},
           "palette": palette}
    path, phrase = _break(kind, root)
    with pytest.raises(DataError) as pipeline_error:
        load(cfg, "train")
    with pytest.raises(DataError) as check_error:
        check_dataset(cfg, "train")
    for exc in (pipeline_error.value, check_error.value):
        assert str(path) in str(exc) and phrase in str(exc), str(exc)


def test_empty_split_and_out_of_range_split(tmp_path):
    root, _ = fx.write_folder(tmp_path, n=2, masks="index")
    (root / "empty.txt").write_text("\n")
    cfg = {"format": "folder", "root": str(root), "num_classes": 3, "image_size": SIZE,
           "splits": {"train": "empty.txt", "val": "1-5"}}
    with pytest.raises(DataError, match="split 'train'.*has no samples"):
        build_dataset(cfg, "train", 2)
    with pytest.raises(DataError, match="index 5 but there are only 2 samples"):
        num_samples(cfg, "val")
    with pytest.raises(ConfigError, match="no 'test' entry"):
        num_samples(cfg, "test")


def test_wrapped_error_unwraps_and_check_collects(tmp_path):
    root, _ = fx.write_folder(tmp_path, n=3, masks="index")
    cfg = {"format": "folder", "root": str(root), "num_classes": 3, "image_size": SIZE, "splits": {"train": "0-2"}}
    fx.write_gray(root / "masks" / "sample_0.png", np.full((fx.H, fx.W), 9))
    fx.write_gray(root / "masks" / "sample_2.png", np.full((fx.H, fx.W), 5))
    with pytest.raises(Exception) as raw:  # TensorFlow's own wrapping, as model.fit would raise it
        list(build_dataset(cfg, "train", 3, shuffle=False))
    assert not isinstance(raw.value, DataError)
    with pytest.raises(DataError, match=r"sample_0\.png: label values 9 ") as unwrapped:
        reraise_data_error(raw.value)
    assert unwrapped.value.__cause__ is raw.value
    with pytest.raises(KeyError):
        reraise_data_error(KeyError("unrelated"))
    problems = check_dataset(cfg, "train", raise_first=False)
    assert len(problems) == 2 and "sample_0.png" in problems[0] and "sample_2.png" in problems[1]


# ---------------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("change, message", [
    ({"format": "coco-panoptic"}, "data.format 'coco-panoptic' is not supported; choose one of"),
    ({"root": "/nonexistent/kseg"}, "data.root '/nonexistent/kseg' not found"),
    ({"root": None}, "data.root is required"),
    ({"image_size": "256"}, "data.image_size must be"),
    ({"image_size": [256, 0]}, "data.image_size must be"),
    ({"num_classes": "3"}, "data.num_classes must be int"),
    ({"ignore_index": 1}, "data.ignore_index 1 is a class id"),
    ({"colour_space": "rgb"}, "data.colour_space: unknown key"),
    ({"augment": {"hflip": "yes"}}, "data.augment.hflip must be bool"),
    ({"augment": {"scale": [1.5, 0.5]}}, "data.augment.scale must be"),
    ({"augment": {"flip": True}}, "data.augment.flip: unknown key"),
    ({"palette": [[0, 0]]}, "data.palette must be a list of"),
    ({"resize": "crop"}, "data.resize must be one of stretch, letterbox"),
    ({"crop_size": [0, 4]}, "data.crop_size must be [height, width]"),
    ({"crop_size": [4, 16]}, "data.crop_size [4, 16] is larger than data.image_size [8, 8]"),
    ({"crop_pad": 1}, "data.crop_pad must be bool"),
    ({"cache": "yes"}, "data.cache must be bool"),
])
def test_config_errors(tmp_path, change, message):
    cfg = dict({"format": "folder", "root": str(tmp_path), "num_classes": 3, "image_size": [8, 8]}, **change)
    with pytest.raises(ConfigError) as exc:
        validate_data_config(cfg)
    assert message in str(exc.value)


def test_config_defaults_and_relative_root(tmp_path, monkeypatch):
    root, _ = fx.write_isbi(tmp_path, n=2)
    monkeypatch.chdir(tmp_path / "isbi")
    cfg = validate_data_config({"format": "isbi", "root": "isbi", "image_size": 64}, base_dir=tmp_path)
    assert cfg["root"] == str(root) and cfg["image_size"] == [64, 64] and cfg["num_classes"] == 2
    assert cfg["ignore_index"] == 255 and cfg["mask_dir"] == "train/label" and cfg["augment"]["hflip"] is False
    assert cfg["crop_size"] is None and cfg["crop_pad"] is False and cfg["cache"] is False
    assert validate_data_config(cfg) == cfg
    with pytest.raises(ConfigError, match="format 'isbi' has 2 classes"):
        validate_data_config(dict(cfg, num_classes=3))


# ---------------------------------------------------------------------------------------------------- augmentation

def _encoded_dataset(tmp_path):
    """Folder dataset whose image value encodes the label: class c -> 60 c, ignore -> 240."""
    root = tmp_path / "enc"
    for i in range(4):
        label = fx.blocks([1, 2, 3], seed=50 + i, h=48, w=48)
        label[16:32, 16:32] = 255
        fx.write_rgb(root / "images" / f"{i}.png", np.repeat(np.where(label == 255, 240, label * 60)[..., None], 3, -1)
                     .astype(np.uint8))
        fx.write_gray(root / "masks" / f"{i}.png", label)
    return {"format": "folder", "root": str(root), "num_classes": 4, "image_size": [48, 48],
            "splits": {"train": "0-3"}}


def _assert_aligned(images, labels):
    """Where a label is uniform over its 5x5 neighbourhood, the image value must encode it."""
    codes = np.where(labels == 255, -1, labels).astype(np.float32)
    # Outside the image counts as another class: the image is interpolated against the fill there.
    border = {"borderType": cv2.BORDER_CONSTANT, "borderValue": -2}
    uniform = np.stack([cv2.erode(c, np.ones((5, 5)), **border) == cv2.dilate(c, np.ones((5, 5)), **border)
                        for c in codes])
    expected_values = {c: [60.0 * c] for c in (1, 2, 3)} | {255: [240.0, 0.0]}  # ignore: source or fill
    value = images[..., 0]
    for c, targets in expected_values.items():
        sel = uniform & (labels == c)
        assert sel.sum() > 20, c
        close = np.min([np.abs(value[sel] - t) for t in targets], axis=0) < 20
        assert close.mean() > 0.995, (c, close.mean())
    assert set(np.unique(labels)) <= {1, 2, 3, 255}


def test_geometric_augmentation_keeps_mask_aligned_and_fills_ignore(tmp_path):
    cfg = _encoded_dataset(tmp_path)
    cfg["augment"] = {"hflip": True, "vflip": True, "rotate": 0.1, "scale": [0.6, 1.4], "translate": 0.2}
    _, plain = load(cfg, "train")
    images, labels = load(cfg, "train", augment=True, seed=3)
    assert images.shape == (4, 48, 48, 3) and labels.dtype == np.int32
    assert (labels != plain).mean() > 0.2  # something moved
    _assert_aligned(images, labels)
    filled = (labels == 255) & (images[..., 0] < 20)
    assert filled.sum() > 0  # borders brought in are ignore, not class 0


def test_reflect_fill_and_colour_jitter_leave_labels_valid(tmp_path):
    cfg = _encoded_dataset(tmp_path)
    cfg["augment"] = {"rotate": 0.1, "fill": "reflect", "brightness": 0.2, "contrast": 0.3}
    images, labels = load(cfg, "train", augment=True, seed=4)
    _, plain = load(cfg, "train")
    assert (labels == 255).mean() <= (plain == 255).mean() + 0.05  # reflected content, no ignore border
    assert 0 <= images.min() and images.max() <= 255


def test_elastic_deformation_keeps_mask_aligned(tmp_path):
    cfg = _encoded_dataset(tmp_path)
    cfg["augment"] = {"elastic": {"alpha": 200, "sigma": 5}}
    _, plain = load(cfg, "train")
    images, labels = load(cfg, "train", augment=True, seed=5)
    assert (labels != plain).mean() > 0.02
    _assert_aligned(images, labels)
    again = load(cfg, "train", augment=True, seed=5)[1]
    np.testing.assert_array_equal(labels, again)  # reproducible by seed


# ---------------------------------------------------------------------------------------------------- crops, cache

def _windows(full, crop):
    """Every (top, left) where ``crop`` occurs in ``full``."""
    (fh, fw), (ch, cw) = full.shape[:2], crop.shape[:2]
    return [(y, x) for y in range(fh - ch + 1) for x in range(fw - cw + 1)
            if np.array_equal(full[y:y + ch, x:x + cw], crop)]


def _window_offset(full, crop):
    """(top, left) where ``crop`` occurs in ``full``; asserts that there is exactly one."""
    hits = _windows(full, crop)
    assert len(hits) == 1, hits
    return hits[0]


def test_random_crops_are_aligned_windows_and_validation_stays_full(tmp_path):
    root, labels = fx.write_folder(tmp_path, n=4, masks="index")
    cfg = {"format": "folder", "root": str(root), "num_classes": 3, "image_size": SIZE, "crop_size": [16, 20],
           "splits": {"train": "0-3", "val": "0-3"}}
    full_images, full_labels = load(cfg, "val")
    assert full_images.shape == (4, fx.H, fx.W, 3)  # no augmentation: no crop
    images, got = load(cfg, "train", augment=True, seed=1)
    assert images.shape == (4, 16, 20, 3) and got.shape == (4, 16, 20) and images.dtype == np.float32
    offsets = set()
    for full_image, full_label, image, label in zip(full_images, full_labels, images, got):
        top, left = _window_offset(full_image, image)  # random-valued images: a unique window
        np.testing.assert_array_equal(label, full_label[top:top + 16, left:left + 20])
        offsets.add((top, left))
    assert len(offsets) > 1
    np.testing.assert_array_equal(got, load(cfg, "train", augment=True, seed=1)[1])  # reproducible by seed


@pytest.mark.parametrize("crop, turns", [([16, 16], {0, 1, 2, 3}), ([16, 20], {0, 2})])
def test_rot90_turns_crops_exactly(tmp_path, crop, turns):
    root, _ = fx.write_folder(tmp_path, n=4, masks="index")
    cfg = {"format": "folder", "root": str(root), "num_classes": 3, "image_size": SIZE, "crop_size": crop,
           "augment": {"rot90": True}, "splits": {"train": "0-3"}}
    full_images, full_labels = load(cfg, "train")
    seen = set()
    for seed in range(6):
        images, labels = load(cfg, "train", augment=True, seed=seed)
        assert images.shape == (4, *crop, 3)
        for full_image, full_label, image, label in zip(full_images, full_labels, images, labels):
            # Random-valued images: exactly one quarter turn back makes the crop a window of the sample.
            (k, (top, left)), = [(k, hit) for k in range(4) for hit in _windows(full_image, np.rot90(image, -k))]
            h, w = np.rot90(label, -k).shape
            np.testing.assert_array_equal(np.rot90(label, -k), full_label[top:top + h, left:left + w])
            seen.add(k)
    assert seen == turns


def test_crops_after_geometric_and_elastic_augmentation_stay_aligned(tmp_path):
    cfg = dict(_encoded_dataset(tmp_path), crop_size=[32, 40])
    cfg["augment"] = {"hflip": True, "rotate": 0.05, "scale": [0.8, 1.2], "elastic": {"alpha": 34, "sigma": 4}}
    images, labels = load(cfg, "train", augment=True, seed=2)
    assert images.shape == (4, 32, 40, 3)
    _assert_aligned(images, labels)


def test_crop_larger_than_image_pads_with_ignore(tmp_path):
    root, _ = fx.write_folder(tmp_path, n=2, masks="index")
    cfg = {"format": "folder", "root": str(root), "num_classes": 3, "image_size": SIZE, "splits": {"train": "0-1"},
           "crop_size": [fx.H + 6, fx.W + 8], "crop_pad": True}
    full_images, full_labels = load(cfg, "train")
    images, labels = load(cfg, "train", augment=True, seed=3)
    assert images.shape == (2, fx.H + 6, fx.W + 8, 3)
    for full_image, full_label, image, label in zip(full_images, full_labels, images, labels):
        rows, cols = np.nonzero(label != 255)  # the fixture has no ignore pixels: inside = the sample
        top, left = rows.min(), cols.min()
        assert rows.max() - top + 1 == fx.H and cols.max() - left + 1 == fx.W
        np.testing.assert_array_equal(label[top:top + fx.H, left:left + fx.W], full_label)
        np.testing.assert_array_equal(image[top:top + fx.H, left:left + fx.W], full_image)
        assert (label == 255).sum() == label.size - fx.H * fx.W and image[label == 255].max() == 0


@pytest.mark.parametrize("cache", [False, True])
def test_cache_decodes_each_sample_once(tmp_path, monkeypatch, cache):
    import kseg.data.pipeline as pipeline

    root, _ = fx.write_folder(tmp_path, n=3, masks="index")
    cfg = {"format": "folder", "root": str(root), "num_classes": 3, "image_size": SIZE, "crop_size": [16, 16],
           "cache": cache, "augment": {"hflip": True}, "splits": {"train": "0-2"}}
    decoded, original = [], pipeline.load_sample

    def counting_load(data_cfg, image_path, mask_path):
        decoded.append(image_path)
        return original(data_cfg, image_path, mask_path)

    monkeypatch.setattr(pipeline, "load_sample", counting_load)
    epochs = [batch[0].numpy() for batch in build_dataset(cfg, "train", 3, augment=True, repeat=True).take(3)]
    assert (len(decoded) == 3) if cache else (len(decoded) >= 9)
    assert not np.array_equal(epochs[0], epochs[1])  # augmentation after the cache: not frozen
    plain = load(dict(cfg, cache=False), "train")
    np.testing.assert_array_equal(load(cfg, "train")[1], plain[1])


def test_scale_benchmark_writes_a_cityscapes_dataset(tmp_path, load_benchmark):
    # The benchmark itself (benchmarks/data_scale.py) is too long for the suite; its data must stay readable.
    data_scale = load_benchmark("data_scale")
    root = data_scale.write_cityscapes(tmp_path / "cs", 5, size=(32, 64), unique=2)
    cfg = {"format": "cityscapes", "root": str(root), "image_size": [32, 64]}
    samples = list_samples(cfg, "train")
    assert len(samples) == 5 and len({image for image, _ in samples}) == 5
    images, labels = load(cfg, "train")
    assert images.shape == (5, 32, 64, 3) and images.std() > 10
    assert len(set(np.unique(labels)) - {255}) >= 4 and (labels == 255).any()  # several classes and ignore
    np.testing.assert_array_equal(labels[0], labels[2])  # copies of the first frames under new names
    assert not np.array_equal(labels[0], labels[1])


# ---------------------------------------------------------------------------------------------------- synthetic

def test_synthetic_generate_is_deterministic_and_layered(tmp_path):
    a = synthetic.generate(tmp_path / "a", 6, image_size=(64, 80), num_classes=5, seed=7)
    b = synthetic.generate(tmp_path / "b", 6, image_size=(64, 80), num_classes=5, seed=7)
    c = synthetic.generate(tmp_path / "c", 6, image_size=(64, 80), num_classes=5, seed=8)
    read = lambda root, kind: [(root / kind / f"{i:05d}.png").read_bytes() for i in range(6)]  # noqa: E731
    assert read(a, "images") == read(b, "images") and read(a, "masks") == read(b, "masks")
    assert read(a, "images") != read(c, "images")
    masks = np.stack([cv2.imread(str(a / "masks" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED) for i in range(6)])
    assert masks.shape == (6, 64, 80) and set(np.unique(masks)) <= set(range(5)) and len(np.unique(masks)) >= 3
    assert 0.3 < (masks == 0).mean() < 0.95


def test_synthetic_format_generates_once_into_root(tmp_path):
    cfg = {"format": "synthetic", "root": str(tmp_path / "shapes"), "image_size": [32, 32],
           "synthetic": {"num_images": 10, "seed": 1}}
    assert num_samples(cfg, "train") == 8 and num_samples(cfg, "val") == 2
    marker = tmp_path / "shapes" / "synthetic.json"
    assert json.loads(marker.read_text())["num_images"] == 10
    stamp = marker.stat().st_mtime_ns
    images, labels = load(cfg, "val")
    assert images.shape == (2, 32, 32, 3) and labels.max() <= 3 and marker.stat().st_mtime_ns == stamp
    assert dataset_info(cfg)["class_names"] == ("background", "disc", "rectangle", "triangle")
    with pytest.raises(ConfigError, match="generated with"):
        num_samples(dict(cfg, synthetic={"num_images": 12}), "train")


def test_synthetic_video(tmp_path):
    masks = synthetic.write_video(tmp_path / "demo.avi", num_frames=12, size=(48, 64), seed=2)
    assert masks.shape == (12, 48, 64) and masks.dtype == np.uint8 and masks.max() >= 1
    assert (masks[0] != masks[-1]).any()  # shapes move
    capture = cv2.VideoCapture(str(tmp_path / "demo.avi"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 12 and frames[0].shape == (48, 64, 3)
