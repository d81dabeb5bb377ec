"""`kseg data formats | check | show`."""

import cv2
import numpy as np
import pytest

import data_fixtures as fx
from kseg.cli import main
from kseg.data.tool import check, data_config

ISSUE_FORMATS = ("folder voc sbd cityscapes isbi pascal_context coco coco_stuff ade20k stanford_background nyudv2 "
                 "sunrgbd sun3d scannet uwrgbd stanford2d3d shapenet_part sydney_urban nifti "
                 "coco_panoptic scannet3d").split()  # the last two: issue 8's closing note


def test_formats_lists_every_layout_of_the_issue(capsys):
    assert main(["data", "formats"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(ISSUE_FORMATS) <= listed


def break_folder(root):
    """One fault of each kind in a copy of the folder fixture; returns {file: phrase its report must contain}."""
    images, masks = root / "images", root / "masks"
    (masks / "sample_0.png").unlink()                                            # missing mask
    fx.write_gray(masks / "orphan.png", np.zeros((fx.H, fx.W)))                  # mask without image
    (images / "sample_1.tif").write_bytes(b"not a tiff")                         # unreadable image
    fx.write_gray(masks / "sample_2.png", np.zeros((fx.H, fx.W + 4)))            # size mismatch
    fx.write_gray(masks / "sample_3.png", np.full((fx.H, fx.W), 7))              # label outside the class list
    (masks / "sample_4.png").write_bytes(b"\x89PNG truncated")                   # unreadable mask
    return {images / "sample_0.tif": "no mask for this image",
            masks / "orphan.png": "mask without an image",
            images / "sample_1.tif": "cannot read image",
            masks / "sample_2.png": "masks must have their image's size",
            masks / "sample_3.png": "label values 7 are outside the class list 0-2",
            masks / "sample_4.png": "cannot read mask"}


def test_check_reports_every_fault_of_a_broken_copy(tmp_path, capsys):
    root, labels = fx.write_folder(tmp_path, n=7, masks="index")
    clean = check(data_config(root, "folder", num_classes=3), progress=False)
    assert clean["problems"] == [] and clean["samples"] == {"all": 7}
    expected_histogram = np.bincount(np.concatenate([v.ravel() for v in labels.values()]), minlength=3)
    np.testing.assert_array_equal(clean["histogram"], expected_histogram)
    assert clean["sizes"] == {(fx.W, fx.H): 7}

    faults = break_folder(root)
    result = check(data_config(root, "folder", num_classes=3), progress=False)
    assert len(result["problems"]) == len(faults), result["problems"]
    for path, phrase in faults.items():
        assert any(p.startswith(str(path)) and phrase in p for p in result["problems"]), (path, result["problems"])
    # the readable samples still count: 5, 6 (and 3, whose valid pixels are none)
    assert result["histogram"].sum() == labels["sample_5"].size + labels["sample_6"].size

    assert main(["data", "check", str(root), "--format", "folder", "--num-classes", "3", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "faults: 6" in out and "image sizes (WxH): 32x24" in out and "class pixels:" in out


def test_check_reports_faults_of_rgbd_and_point_layouts(tmp_path):
    root, _ = fx.write_scannet(tmp_path)
    (root / "scans" / "scene0000_00" / "depth" / "20.png").unlink()
    fx.write_gray(root / "scans" / "scene0001_00" / "depth" / "0.png", np.zeros((4, 4)))  # 8-bit, not depth
    result = check(data_config(root, "scannet"), progress=False)
    assert any("20.jpg: no depth image" in p for p in result["problems"]), result["problems"]
    assert any("0.png: depth must be a 16-bit PNG" in p for p in result["problems"]), result["problems"]

    root, _ = fx.write_sydney_urban(tmp_path)
    (root / "objects" / "car.0.2446.bin").write_bytes(b"\x00" * 35)
    result = check(data_config(root, "sydney_urban"), ["fold0"], progress=False)
    assert [p for p in result["problems"] if "not a whole number of 34-byte point records" in p]


def test_progress_bar_on_long_scans(tmp_path, capsys):
    root, _ = fx.write_folder(tmp_path, n=24, masks="index")
    check(data_config(root, "folder", num_classes=3))
    assert "checking all [" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["voc", "nyudv2", "shapenet_part"])
def test_show_writes_a_grid_with_overlays(tmp_path, fmt):
    writers = {"voc": fx.write_voc, "nyudv2": fx.write_nyudv2, "shapenet_part": fx.write_shapenet_part}
    root, _ = writers[fmt](tmp_path)
    out = tmp_path / "grid.png"
    assert main(["data", "show", str(root), "--format", fmt, "--out", str(out), "--num", "2"]) == 0
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[0] > fx.H and grid.std() > 0


def test_check_a_config_file_with_overrides(tmp_path, capsys):
    import yaml

    root, _ = fx.write_nyudv2(tmp_path)
    config = tmp_path / "nyu.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "unet"}, "data": {
        "format": "nyudv2", "root": "/nonexistent", "image_size": [24, 32], "splits": {"train": "train", "val": "test"}}}))
    assert main(["data", "check", str(config), f"data.root={root}", "data.num_classes=13", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nyudv2" in out and "13 classes" in out and "split train: 3 samples" in out and "split val: 1 samples" in out
    assert "faults: 0" in out
    assert main(["data", "check", str(config), f"data.root={root}", "--format", "voc"]) == 2  # config: nyudv2
    assert "data.format is 'nyudv2' but --format says 'voc'" in capsys.readouterr().err
