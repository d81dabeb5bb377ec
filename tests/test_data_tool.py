"""`kseg data formats | check | show`."""

import io

import cv2
import numpy as np
import pytest

import data_fixtures as fx
from kseg.cli import main
from kseg.data.tool import check, data_config, split_names
from kseg.progress import Progress

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
    # a terminal gets a live bar; a log file one line at the end, not a hundred carriage returns
    root, _ = fx.write_folder(tmp_path, n=24, masks="index")
    check(data_config(root, "folder", num_classes=3))
    assert capsys.readouterr().err == "checking all: 24/24\n"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = Progress(24, "checking all", stream=Terminal())
    for done in range(1, 25):
        bar.update(done)
    term = bar.stream.getvalue()
    assert term.count("\r") == 24 and term.endswith("\rchecking all [" + "#" * 30 + "] 24/24\033[K\n")


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


# -- instance datasets ---------------------------------------------------------------------------------------------

def write_instance_folder(root, n=8):
    """Image i holds (i % 3) + 1 instances of 6x8 pixels; instance k has id 1000 + k (a 16-bit map) and class
    1 + k % 2 in the class map. Returns the instances per image."""
    counts = [i % 3 + 1 for i in range(n)]
    for i, count in enumerate(counts):
        fx.write_rgb(root / "images" / f"cell_{i}.png", fx.random_image(i))
        inst, cls = np.zeros((fx.H, fx.W), np.uint16), np.zeros((fx.H, fx.W), np.uint8)
        for k in range(count):
            window = np.s_[2:8, 2 + 10 * k:10 + 10 * k]
            inst[window], cls[window] = 1000 + k, 1 + k % 2
        (root / "masks").mkdir(exist_ok=True)
        assert cv2.imwrite(str(root / "masks" / f"cell_{i}.png"), inst)
        fx.write_gray(root / "classes" / f"cell_{i}.png", cls)
    return counts


def instance_config(tmp_path, root):
    import yaml

    config = tmp_path / "maskrcnn_cells.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "maskrcnn"}, "data": {
        "format": "instance_folder", "root": str(root), "image_size": [fx.H, fx.W], "num_classes": 3,
        "class_dir": "classes", "max_instances": 3, "min_area": 10}}))
    return config


def break_instance_folder(root):
    """One fault or warning of each kind; returns ({file: phrase of its fault}, {file: phrase of its warning})."""
    images, masks, classes = root / "images", root / "masks", root / "classes"
    (images / "cell_0.png").write_bytes(b"\x89PNG truncated")                     # unreadable image
    fx.write_gray(masks / "cell_1.png", np.ones((fx.H, fx.W + 4)))                 # map of another size
    many = np.zeros((fx.H, fx.W), np.uint8)
    many[10:14, 0:30] = np.repeat(np.arange(1, 6), 6)                            # 5 instances of 24 pixels
    fx.write_gray(masks / "cell_2.png", many)
    fx.write_gray(classes / "cell_2.png", (many > 0) * 1)
    cls = cv2.imread(str(classes / "cell_3.png"), cv2.IMREAD_UNCHANGED)
    fx.write_gray(classes / "cell_3.png", np.where(cls > 0, 5, 0))               # class outside 0-2
    tiny, cls = (cv2.imread(str(folder / "cell_4.png"), cv2.IMREAD_UNCHANGED) for folder in (masks, classes))
    tiny[20:23, 30], cls[20:23, 30] = 7, 1                                       # a 3-pixel instance
    assert cv2.imwrite(str(masks / "cell_4.png"), tiny) and cv2.imwrite(str(classes / "cell_4.png"), cls)
    fx.write_gray(masks / "cell_5.png", np.zeros((fx.H, fx.W)))                  # no instance
    (masks / "cell_6.png").unlink()                                              # image without its map
    (classes / "cell_7.png").unlink()                                            # map without its class map
    fx.write_gray(masks / "orphan.png", np.zeros((fx.H, fx.W)))                  # map without an image
    faults = {images / "cell_0.png": "cannot read image",
              masks / "cell_1.png": "instance map is 36x24 but its image",
              masks / "cell_2.png": "5 instances but data.max_instances is 3",
              classes / "cell_3.png": "class values 0-5 are outside 0-2",
              images / "cell_6.png": "no mask for this image",
              masks / "cell_7.png": "no class map for it",
              masks / "orphan.png": "mask without an image"}
    warnings = {masks / "cell_4.png": "1 of 3 instances have fewer than data.min_area 10 pixels at 24x32",
                masks / "cell_5.png": "no instance"}
    return faults, warnings


def test_check_instance_dataset_statistics_and_every_fault(tmp_path, capsys):
    root = tmp_path / "cells"
    counts = write_instance_folder(root)
    config = instance_config(tmp_path, root)
    clean = check(data_config(config), progress=False)
    assert clean["problems"] == [] and clean["warnings"] == [] and clean["samples"] == {"all": 8}
    np.testing.assert_array_equal(clean["counts"], counts)
    np.testing.assert_array_equal(clean["areas"], [48] * sum(counts))
    # instance k is class 1 + k % 2: k = 0 in every image, k = 2 in those with three
    np.testing.assert_array_equal(clean["classes"],
                                  [0, len(counts) + counts.count(3), counts.count(2) + counts.count(3)])
    assert clean["sizes"] == {(fx.W, fx.H): 8} and clean["dropped"] == 0
    # a folder without a config: no class maps, every instance class 1
    assert main(["data", "check", str(root), "--format", "instance_folder", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "instance dataset: instance_folder" in out and "instances per image: min 1, median 2, max 3" in out
    assert f"1 class_1                          {sum(counts)} 100.00%" in out and "faults: 0" in out

    faults, warnings = break_instance_folder(root)
    result = check(data_config(config), progress=False)
    assert len(result["problems"]) == len(faults), result["problems"]
    for path, phrase in faults.items():
        assert any(p.startswith(str(path)) and phrase in p for p in result["problems"]), (path, result["problems"])
    assert len(result["warnings"]) == len(warnings), result["warnings"]
    for path, phrase in warnings.items():
        assert any(w.startswith(str(path)) and phrase in w for w in result["warnings"]), (path, result["warnings"])
    assert result["dropped"] == 1 and result["samples"] == {"all": 6}  # cell_6 and cell_7 left out
    assert main(["data", "check", str(config), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "faults: 7" in out and "warnings: 2" in out and "dropped in training (< 10 pixels at 24x32): 1" in out


def test_show_instance_dataset_draws_each_instance(tmp_path):
    from kseg import viz
    from kseg.instance import data as idata

    root = tmp_path / "cells"
    write_instance_folder(root, n=5)
    config = instance_config(tmp_path, root)
    out = tmp_path / "cells.png"
    assert main(["data", "show", str(config), "--out", str(out), "--num", "4", "--seed", "0"]) == 0
    grid = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert grid.shape == (2 * fx.H, 2 * fx.W, 3)  # 2 x 2 tiles at data.image_size
    cfg = data_config(config)
    pairs = idata.list_instance_samples(cfg, split_names(cfg)[0])  # "all": every image of the folder
    first = idata.load_instance_sample(cfg, *pairs[sorted(np.random.default_rng(0).permutation(5)[:4])[0]])
    np.testing.assert_array_equal(grid[:fx.H, :fx.W], viz.draw_instances(first["image"], first,
                                                                          idata.instance_class_names(cfg)))
    painted = first["masks"].any(axis=0)
    assert (grid[:fx.H, :fx.W][painted] != first["image"][painted]).any(axis=-1).mean() > 0.9


def test_formats_lists_the_instance_datasets(capsys):
    assert main(["data", "formats"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert {name for name, kind in rows if kind == "instance"} == {"coco", "instance_synthetic", "instance_folder",
                                                                   "nuclei"}
    assert ["coco", "2D"] in rows  # COCO read as semantic labels stays listed
