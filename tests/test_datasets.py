"""Datasets II: every layout loads its tiny fixture (real on-disk formats) through a config and trains one step."""

import numpy as np
import pytest
import yaml

import data_fixtures as fx
from kseg.config import load_config
from kseg.data import build_dataset, list_formats, list_samples, load_sample, validate_data_config
from kseg.data.formats import get_format

SIZE = [fx.H, fx.W]  # the fixtures' native size: loading must give the expected labels exactly
VOLUME = [16, 16, 16]

# format -> (fixture writer, data config entries besides format and root, training split)
CASES = {
    "pascal_context": (fx.write_pascal_context, {}, "train"),
    "coco": (fx.write_coco, {}, "train"),
    "coco_stuff": (fx.write_coco_stuff, {}, "train"),
    "coco_panoptic": (fx.write_coco_panoptic, {}, "train"),
    "ade20k": (fx.write_ade20k, {}, "train"),
    "stanford_background": (fx.write_stanford_background, {"splits": {"train": "0-1", "val": "2"}}, "train"),
    "nyudv2": (fx.write_nyudv2, {}, "train"),
    "sunrgbd": (fx.write_sunrgbd, {"splits": {"train": "train", "val": "test"}}, "train"),
    "scannet": (fx.write_scannet, {"depth": "hha"}, "train"),
    "sun3d": (fx.write_sun3d, {"splits": {"train": "0-1"}}, "train"),
    "uwrgbd": (fx.write_uwrgbd, {"splits": {"train": "0-3"}}, "train"),
    "stanford2d3d": (fx.write_stanford2d3d, {"splits": {"train": "area_1", "val": "area_5"}}, "train"),
    "shapenet_part": (fx.write_shapenet_part, {"voxel_size": 0.125}, "train"),
    "sydney_urban": (fx.write_sydney_urban, {"voxel_size": 0.5, "splits": {"train": "fold0"}}, "train"),
    "scannet3d": (fx.write_scannet3d, {"voxel_size": 0.25}, "train"),
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
        if get_format(fmt).points:
            np.testing.assert_array_equal(label, expected_grid(data, expected[key]))
        else:
            np.testing.assert_array_equal(label, expected[key], err_msg=f"{fmt} {key}")
    # one training step on a batch of the config (augmented where extra channels must go through augmentation)
    augment = get_format(fmt).rgbd or get_format(fmt).points
    images, labels = next(iter(build_dataset(dict(data, augment={"hflip": True, "brightness": 0.2}) if
                                             get_format(fmt).rgbd else data, split, batch_size=2, augment=augment,
                                             seed=0)))
    assert images.shape[-1] == data["channels"]
    model = kseg.create_model(cfg["model"]["name"], num_classes=data["num_classes"],
                              input_shape=(*data["image_size"], data["channels"]),
                              **{k: v for k, v in cfg["model"].items() if k != "name"})
    # eager: one step does not repay tracing a graph
    model.compile(optimizer=keras.optimizers.SGD(0.01), run_eagerly=True,
                  loss=build_loss(cfg["loss"], data["num_classes"], data["ignore_index"]))
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss), loss


# ------------------------------------------------------------------------------------------ RGB-D channels

def _forward(name, channels, **kwargs):
    import kseg

    model = kseg.create_model(name, num_classes=3, input_shape=(64, 64, channels), **kwargs)
    out = model(np.random.default_rng(0).uniform(0, 255, (1, 64, 64, channels)).astype(np.float32))
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert tuple(out.shape) == (1, 64, 64, 3) and np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("name, kwargs, channels", [
    ("unet", {"base_filters": 4, "depth": 2}, 4), ("unet", {"base_filters": 4, "depth": 2}, 6),
    ("deeplabv3plus", {"backbone": "mobilenetv2", "backbone_kwargs": {"alpha": 0.35}}, 6)])
def test_models_take_rgbd_input(name, kwargs, channels):
    _forward(name, channels, **kwargs)


def _two_d_models():
    import kseg

    return [m for m in kseg.list_models(task="semantic") if m != "vnet"]


@pytest.mark.slow
@pytest.mark.parametrize("channels", [4, 6])
@pytest.mark.parametrize("name", _two_d_models())
def test_every_2d_model_takes_rgbd_input(name, channels):
    _forward(name, channels)


@pytest.mark.parametrize("backbone", ["vgg16"])
def test_rgbd_first_conv_gets_the_mean_of_the_rgb_kernels(backbone, tmp_path):
    """Pretrained (file) weights: RGB kernels as loaded (caffe backbones flip BGR -> RGB), extra channels = mean."""
    import keras

    from kseg.models.backbones import application_name, build_backbone

    kw = {"alpha": 0.35} if backbone == "mobilenetv2" else {}
    source = getattr(keras.applications, application_name(backbone))(input_shape=(32, 32, 3), include_top=False,
                                                                      weights=None, **kw)
    path = tmp_path / f"{backbone}.weights.h5"
    source.save_weights(path)
    first = {"vgg16": "block1_conv1", "mobilenetv2": "Conv1"}[backbone]
    rgb = source.get_layer(first).get_weights()[0]
    inputs = keras.Input((32, 32, 5))
    feats = build_backbone(backbone, inputs, weights=str(path), **kw)
    model = keras.Model(inputs, feats["P5"])
    kernel = model.get_layer(first).get_weights()[0]
    expected_rgb = rgb[:, :, ::-1] if backbone == "vgg16" else rgb  # caffe weights are BGR
    np.testing.assert_array_equal(kernel[:, :, :3], expected_rgb)
    for extra in (3, 4):
        np.testing.assert_allclose(kernel[:, :, extra], rgb.mean(axis=2), rtol=1e-6, atol=1e-7)
    scale, offset = (np.broadcast_to(v, (5,)) for v in (model.get_layer(f"{backbone}_preprocess").scale,
                                                          model.get_layer(f"{backbone}_preprocess").offset))
    np.testing.assert_allclose(scale[3:], np.mean(scale[:3]))
    np.testing.assert_allclose(offset[3:], np.mean(offset[:3]))


def test_raw_depth_and_hha_channels(tmp_path):
    """NYU depth (metres) -> raw channel depth * 255 / max_depth; HHA in [0, 255] with 0 where depth is missing."""
    root, _ = fx.write_nyudv2(tmp_path)
    base = {"format": "nyudv2", "root": str(root), "image_size": SIZE}
    ref = list_samples(base, "train")[0]
    image, _ = load_sample(validate_data_config(dict(base, max_depth=8.0)), *ref)
    index = int(fx.sample_key(ref[0]))
    np.testing.assert_allclose(image[..., 3], np.clip(fx.depth_map(100 + index) * 255 / 8.0, 0, 255), rtol=1e-5)
    np.testing.assert_array_equal(image[..., :3], fx.random_image(100 + index))
    hha, _ = load_sample(validate_data_config(dict(base, depth="hha")), *ref)
    assert hha.shape[-1] == 6 and hha[..., 3:].min() >= 0 and hha[..., 3:].max() <= 255
    assert (hha[0, :2, 3:] == 0).all()  # missing depth
    rgb, _ = load_sample(validate_data_config(dict(base, depth="none")), *ref)
    assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3


def test_hha_of_a_floor_and_a_wall():
    """A level camera 1.5 m above a floor looking at a wall 3 m away: the floor's normals point up (angle 0), the
    wall's are horizontal (90 degrees); height grows from the floor up; disparity is 127.5 / z."""
    from kseg.data.depth import KINECT_INTRINSICS, hha

    h, w = 480, 640
    fy, cy = KINECT_INTRINSICS[1, 1], KINECT_INTRINSICS[1, 2]
    v = np.arange(h, dtype=np.float64)[:, None].repeat(w, axis=1)
    floor_z = np.where(v > cy + 1, 1.5 * fy / np.maximum(v - cy, 1e-6), np.inf)  # ray hits y = +1.5 m
    depth = np.minimum(floor_z, 6.0).astype(np.float32)  # the wall 6 m away meets the floor at row ~384
    out = hha(depth, KINECT_INTRINSICS)
    wall, floor = (slice(50, 150), slice(200, 400)), (slice(420, 470), slice(200, 400))
    np.testing.assert_allclose(out[wall][..., 0], 127.5 / 6.0, rtol=1e-5)
    np.testing.assert_allclose(out[floor][..., 2], 0.0, atol=2.0)  # angle channel: 255 / 180 per degree
    np.testing.assert_allclose(out[wall][..., 2], 127.5, atol=2.0)
    assert out[50, 300, 1] > out[300, 300, 1] > out[460, 300, 1]  # height above ground decreases downwards
    np.testing.assert_allclose(out[460, 300, 1], 0.0, atol=3.0)


def test_colour_jitter_leaves_depth_channels_alone(tmp_path):
    root, _ = fx.write_nyudv2(tmp_path)
    data = {"format": "nyudv2", "root": str(root), "image_size": SIZE, "splits": {"train": "0-3"},
            "augment": {"brightness": 0.5, "contrast": 0.5}}
    plain = next(iter(build_dataset(data, "train", 4, shuffle=False)))[0].numpy()
    jittered = next(iter(build_dataset(data, "train", 4, augment=True, shuffle=False, seed=1)))[0].numpy()
    assert not np.allclose(plain[..., :3], jittered[..., :3])
    np.testing.assert_array_equal(plain[..., 3], jittered[..., 3])


# ------------------------------------------------------------------------------------------ label mappings

def test_nyudv2_13_classes_go_through_the_40(tmp_path):
    from kseg.data.formats_rgbd import NYU40_TO_13

    root, labels40 = fx.write_nyudv2(tmp_path)
    data = validate_data_config({"format": "nyudv2", "root": str(root), "image_size": SIZE, "num_classes": 13})
    assert [fx.sample_key(r[0]) for r in list_samples(data, "val")] == ["3"]  # testNdxs is 1-based
    for image_ref, label_ref in list_samples(data, "train"):
        _, label = load_sample(data, image_ref, label_ref)
        want = labels40[fx.sample_key(image_ref)]
        to13 = np.array(NYU40_TO_13) - 1
        np.testing.assert_array_equal(label, np.where(want == 255, 255, to13[np.minimum(want, 39)]))


def test_pascal_context_459_labels(tmp_path):
    import scipy.io

    root, _ = fx.write_pascal_context(tmp_path)
    data = validate_data_config({"format": "pascal_context", "root": str(root), "image_size": SIZE,
                                 "num_classes": 459, "ignore_index": 65535})
    image_ref, label_ref = list_samples(data, "val")[0]
    raw = scipy.io.loadmat(label_ref)["LabelMap"].astype(np.int32)
    np.testing.assert_array_equal(load_sample(data, image_ref, label_ref)[1], np.where(raw == 0, 65535, raw - 1))
    from kseg.data import dataset_info

    assert dataset_info(data)["class_names"][1] == "aeroplane"  # labels.txt id 2
    assert dataset_info(dict(data, num_classes=59, ignore_index=255))["class_names"][:2] == ("aeroplane", "bag")


def test_coco_instances(tmp_path):
    from kseg.data.formats_2d import read_instances

    root, labels = fx.write_coco(tmp_path)
    data = {"format": "coco", "root": str(root), "image_size": SIZE}
    image_ref, label_ref = list_samples(data, "val")[0]
    inst = read_instances(label_ref)
    assert inst["masks"].shape == (3, fx.H, fx.W) and inst["crowd"].tolist() == [False, False, True]
    assert inst["category_ids"].tolist() == [1, 18, 3] and inst["classes"].tolist() == [1, 17, 3]
    np.testing.assert_array_equal(inst["boxes"][0], [4, 2, 8, 8])
    assert inst["masks"][2].sum() == 36 and inst["masks"][2][16:22, 24:30].all()


def test_voxelised_labels_map_back_to_the_points(tmp_path):
    from kseg.data.formats_3d import point_labels, voxelize

    root, clouds = fx.write_sydney_urban(tmp_path)
    points, labels = clouds["car.0.2446"]
    labels = np.where(points[:, 0] > points[:, 0].mean(), 4, 6)  # two labels, split along x
    image, grid, index = voxelize(points, labels, (16, 16, 16), 0.5)
    assert image.shape == (16, 16, 16, 1) and set(np.unique(image)) == {0.0, 255.0}
    assert ((image[..., 0] > 0) == (grid != 255)).all()
    back = point_labels(grid, index)
    inside = index[:, 0] >= 0
    assert inside.all()  # the 16 x 0.5 m grid holds the 2.1 m wide object
    # a voxel straddling the split votes by majority; nearly every point keeps its label
    assert (back == labels).mean() > 0.95
    # a grid too small drops points: they map to ignore
    _, small, small_index = voxelize(points, labels, (2, 2, 2), 0.5)
    assert (point_labels(small, small_index)[small_index[:, 0] < 0] == 255).all() and (small_index[:, 0] < 0).any()


def test_shapenet_part_original_release(tmp_path):
    root, shapes = fx.write_shapenet_part_v0(tmp_path)
    data = validate_data_config({"format": "shapenet_part", "root": str(root), "volume_size": VOLUME,
                                 "voxel_size": 0.125, "splits": {"all": "0-1"}})
    assert len(list_samples(data, "train")) == 1
    for image_ref, label_ref in list_samples(data, "all"):
        _, label = load_sample(data, image_ref, label_ref)
        np.testing.assert_array_equal(label, expected_grid(data, shapes[fx.sample_key(image_ref)]))


def test_coco_panoptic_val_pngs_under_annotations_and_json_class_names(tmp_path):
    root, labels = fx.write_coco_panoptic(tmp_path)
    data = validate_data_config({"format": "coco_panoptic", "root": str(root), "image_size": SIZE})
    (image_ref, label_ref), = list_samples(data, "val")
    assert "annotations/panoptic_val2017/000000000139.png" in label_ref
    np.testing.assert_array_equal(load_sample(data, image_ref, label_ref)[1], labels["000000000139"])
    from kseg.data import dataset_info

    names = dataset_info(data)["class_names"]
    assert len(names) == 133 and names[0] == "person" and names[80] == "banner" and names[-1] == "rug-merged"


def test_coco_panoptic_segment_missing_from_the_json_is_a_fault(tmp_path):
    from kseg.data.tool import check, data_config

    root, _ = fx.write_coco_panoptic(tmp_path)
    png = root / "annotations" / "panoptic_val2017" / "000000000139.png"
    fx.write_rgb(png, np.full((fx.H, fx.W, 3), 9, np.uint8))  # id 9 + 256 * 9 + 65536 * 9, in no segments_info
    (root / "train2017" / "000000000009.jpg").unlink()
    problems = check(data_config(root, "coco_panoptic"), progress=False)["problems"]
    assert any(p.startswith(str(png)) and "are not in segments_info" in p for p in problems), problems
    assert any("000000000009.jpg is missing" in p for p in problems), problems


def test_ade20k_names_from_object_info_and_the_challenge_palette(tmp_path):
    from kseg.data import dataset_info
    from kseg.data.formats_2d import ADE20K_PALETTE

    root, _ = fx.write_ade20k(tmp_path)
    info = dataset_info({"format": "ade20k", "root": str(root), "image_size": SIZE})
    assert info["class_names"][:3] == ("name1", "building", "name3")  # first synonym of "building, alias"
    assert info["palette"] == ADE20K_PALETTE
    assert ADE20K_PALETTE[:3] == ((120, 120, 120), (180, 120, 120), (6, 230, 230))
    assert ADE20K_PALETTE[-1] == (92, 0, 255) and len(ADE20K_PALETTE) == 150


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_read_ply_gives_the_vertices_of_every_encoding(fmt, tmp_path):
    from kseg.data.formats_3d import read_ply

    points = np.array([[0.5, -1.25, 2.0], [3.0, 0.0, -0.75], [1e-3, 2.5, 1.0]], np.float32)
    labels = np.array([1, 39, 300])
    fx.write_ply(tmp_path / "a.ply", points, labels, fmt, faces=[(0, 1, 2)])
    vertices = read_ply(tmp_path / "a.ply")
    assert vertices.dtype.names == ("x", "y", "z", "red", "green", "blue", "alpha", "label")
    np.testing.assert_array_equal(np.stack([vertices["x"], vertices["y"], vertices["z"]], -1), points)
    np.testing.assert_array_equal(vertices["label"], labels)
    assert vertices["red"][0] == 174 and vertices["alpha"].tolist() == [255] * 3  # wall colour of ScanNet


def test_scannet3d_splits_and_ply_faults(tmp_path):
    from kseg.data.tool import check, data_config

    from kseg.data import dataset_info

    root, _ = fx.write_scannet3d(tmp_path)
    data = validate_data_config({"format": "scannet3d", "root": str(root), "volume_size": VOLUME,
                                 "voxel_size": 0.25})
    info = dataset_info(data)  # ScanNet's colours of NYU40 wall (1) and otherfurniture (39)
    assert info["palette"][0] == (174, 199, 232) and info["palette"][19] == (82, 84, 163)
    assert info["class_names"][19] == "otherfurniture" and len(info["palette"]) == 20
    assert [fx.sample_key(r[0]) for r in list_samples(data, "val")] == ["scene0001_00_vh_clean_2.labels"]
    binary = root / "scans" / "scene0000_00" / "scene0000_00_vh_clean_2.labels.ply"
    binary.write_bytes(binary.read_bytes()[:-2000])  # cut into the vertices
    (root / "scannetv2_val.txt").write_text("scene0001_00\nscene0002_00\n")
    problems = check(data_config(root, "scannet3d"), progress=False)["problems"]
    assert any(p.startswith(str(binary)) and "the file is truncated" in p for p in problems), problems
    assert any("lists scene0002_00 but" in p for p in problems), problems


def test_voxel_majority_vote_matches_a_dense_count():
    """The sparse vote of `voxelize` against a dense (voxels x labels) count: argmax, ties to the smaller label."""
    from kseg.data.formats_3d import voxelize

    rng = np.random.default_rng(3)
    points = rng.uniform(-1, 1, (3000, 3))
    labels = rng.choice([0, 1, 2, 7, 255], len(points), p=[0.3, 0.3, 0.2, 0.1, 0.1])
    image, grid, index = voxelize(points, labels, (6, 5, 4), 0.4)
    inside = index[:, 0] >= 0
    votes = np.zeros((6 * 5 * 4, 256), np.int64)
    np.add.at(votes, (np.ravel_multi_index(index[inside].T, (6, 5, 4)), labels[inside]), 1)
    occupied = votes.sum(axis=1) > 0
    np.testing.assert_array_equal(grid.ravel(), np.where(occupied, votes.argmax(axis=1), 255))
    np.testing.assert_array_equal(image[..., 0].ravel() > 0, occupied)
    assert (~inside).any() and occupied.sum() > 60  # a grid smaller than the cloud, mostly filled


def test_sunrgbd_toolbox_split_and_frame_name_fallback(tmp_path):
    import shutil

    root, labels = fx.write_sunrgbd(tmp_path)
    data = validate_data_config({"format": "sunrgbd", "root": str(root / "SUNRGBD"), "image_size": SIZE,
                                 "splits": {"val": "test"}})
    assert [fx.sample_key(r[0]) for r in list_samples(data, "val")] == ["NYU0003"]  # alltest
    shutil.rmtree(root / "SUNRGBDtoolbox")  # without the toolbox: seg.mat names matched to the seg37 names
    data = validate_data_config(dict(data, splits={"all": "0-2"}))
    for image_ref, label_ref in list_samples(data, "all"):
        label = load_sample(data, image_ref, label_ref)[1]
        want = labels[fx.sample_key(image_ref)]
        np.testing.assert_array_equal(label, np.where(want == 34, 255, want))  # "lamp shade" is no seg37 name


def test_sunrgbd_check_finds_missing_frames_and_bad_label_ids(tmp_path):
    import h5py

    from kseg.data.tool import check, data_config

    root, _ = fx.write_sunrgbd(tmp_path)
    missing = root / "SUNRGBD" / "kv1" / "NYUdata" / "NYU0002" / "image" / "NYU0002.jpg"
    missing.unlink()
    with h5py.File(root / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBD2Dseg.mat", "a") as f:
        f["#refs#"]["s2"][0, 0] = 40
    problems = check(data_config(root, "sunrgbd"), ["train", "val"], progress=False)["problems"]
    assert any(f"{missing} is missing" in p for p in problems), problems
    assert any("frame 3 has seglabel values 0-40, outside 0-37" in p for p in problems), problems
