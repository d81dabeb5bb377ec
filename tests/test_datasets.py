"""Datasets II: every layout loads its tiny fixture (real on-disk formats) through a config and trains one step."""

import numpy as np
import pytest
import yaml

import data_fixtures as fx
from kseg.config import load_config
from kseg.data import build_dataset, list_formats, list_samples, load_sample
from kseg.data.formats import get_format

SIZE = [fx.H, fx.W]  # the fixtures' native size: loading must give the expected labels exactly
VOLUME = [16, 16, 16]

# format -> (fixture writer, data config entries besides format and root, training split)
CASES = {
    "pascal_context": (fx.write_pascal_context, {}, "train"),
    "coco": (fx.write_coco, {}, "train"),
    "coco_stuff": (fx.write_coco_stuff, {}, "train"),
    "ade20k": (fx.write_ade20k, {}, "train"),
    "stanford_background": (fx.write_stanford_background, {"splits": {"train": "0-1", "val": "2"}}, "train"),
    "nyudv2": (fx.write_nyudv2, {}, "train"),
    "sunrgbd": (fx.write_sunrgbd, {"splits": {"train": "0-1", "val": "2"}}, "train"),
    "scannet": (fx.write_scannet, {"depth": "hha"}, "train"),
    "sun3d": (fx.write_sun3d, {"splits": {"train": "0-1"}}, "train"),
    "uwrgbd": (fx.write_uwrgbd, {"splits": {"train": "0-3"}}, "train"),
    "stanford2d3d": (fx.write_stanford2d3d, {"splits": {"train": "area_1", "val": "area_5"}}, "train"),
    "shapenet_part": (fx.write_shapenet_part, {"voxel_size": 0.125}, "train"),
    "sydney_urban": (fx.write_sydney_urban, {"voxel_size": 0.5, "splits": {"train": "fold0"}}, "train"),
    "voc": (fx.write_voc, {}, "train"),
    "sbd": (fx.write_sbd, {}, "train"),
    "cityscapes": (fx.write_cityscapes, {}, "train"),
    "isbi": (fx.write_isbi, {"splits": {"train": "0-3"}}, "train"),
    "folder": (fx.write_folder, {"num_classes": 3, "splits": {"train": "0-3"}}, "train"),
    "nifti": (fx.write_nifti, {"num_classes": 3, "splits": {"train": "0-1"}}, "train"),
}
# Their decoding is checked pixel by pixel in test_data.py and test_volumes.py.
CHECKED_ELSEWHERE = {"voc", "sbd", "cityscapes", "isbi", "folder", "nifti"}


def write_config(tmp_path, fmt, root, extra):
    data = {"format": fmt, "root": str(root), **extra}
    if get_format(fmt).volumetric:
        data["volume_size"] = VOLUME
        model = {"name": "vnet", "base_filters": 4, "depth": 2}
    else:
        data["image_size"] = SIZE
        model = {"name": "unet", "base_filters": 4, "depth": 2}
    path = tmp_path / f"tiny_{fmt}.yaml"
    path.write_text(yaml.safe_dump({"model": model, "data": data, "train": {"batch_size": 2},
                                    "output": {"dir": str(tmp_path / "run")}}))
    return load_config(path)


def expected_grid(cfg, cloud):
    from kseg.data.formats_3d import voxelize

    points, labels = cloud
    return voxelize(points, labels, cfg["volume_size"], cfg["voxel_size"], cfg["ignore_index"])[1]


def test_every_layout_of_the_issue_is_registered():
    assert set(CASES) | {"synthetic"} == set(list_formats())


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_layout_loads_its_fixture_and_trains_one_step(fmt, tmp_path):
    import keras

    import kseg
    from kseg.losses import build_loss

    writer, extra, split = CASES[fmt]
    root, expected = writer(tmp_path)
    cfg = write_config(tmp_path, fmt, root, extra)
    data = cfg["data"]
    samples = list_samples(data, split)
    assert samples
    for image_ref, label_ref in samples:
        image, label = load_sample(data, image_ref, label_ref)
        assert image.shape[-1] == data["channels"]
        if fmt in CHECKED_ELSEWHERE:
            continue
        key = fx.sample_key(image_ref)
        if fmt in ("shapenet_part", "sydney_urban"):
            np.testing.assert_array_equal(label, expected_grid(data, expected[key]))
        else:
            np.testing.assert_array_equal(label, expected[key], err_msg=f"{fmt} {key}")
    # one training step on an augmented batch of the config
    images, labels = next(iter(build_dataset(data, split, batch_size=2, augment=True, seed=0)))
    model = kseg.create_model(cfg["model"]["name"], num_classes=data["num_classes"],
                              input_shape=(*data["image_size"], data["channels"]),
                              **{k: v for k, v in cfg["model"].items() if k != "name"})
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=build_loss(cfg["loss"], data["num_classes"],
                                                                        data["ignore_index"]))
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss), loss
