"""3D volumes: the nifti format on tiny .nii.gz files in the Decathlon layout, sizing, errors, 3D augmentation,
losses and metrics on (B, D, H, W) labels, a V-Net learning a sphere, and a `kseg train` run on volumes."""

import numpy as np
import pytest
import yaml
from scipy import ndimage

pytest.importorskip("nibabel")

import data_fixtures as fx  # noqa: E402
from kseg.config import load_config  # noqa: E402
from kseg.data import build_dataset, check_dataset, data_errors, list_samples, load_sample  # noqa: E402
from kseg.data import validate_data_config  # noqa: E402
from kseg.data.volumes import augment_volume  # noqa: E402
from kseg.errors import ConfigError, DataError  # noqa: E402

SHAPE = (12, 16, 20)  # D, H, W of the fixture volumes: all different, so a transposed read shows up
IGNORE = 255


def nifti_cfg(root, **extra):
    return {"format": "nifti", "root": str(root), "volume_size": list(SHAPE), "num_classes": 3,
            "splits": {"train": "0-2", "val": "3"}, **extra}


def load(cfg, split, **kw):
    with data_errors():
        batches = list(build_dataset(cfg, split, batch_size=kw.pop("batch_size", 8), shuffle=False, **kw))
    return np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches])


def sample(cfg, index):
    """One sample of the train split, decoded and sized without augmentation."""
    cfg = validate_data_config(cfg)
    return load_sample(cfg, *list_samples(cfg, "train")[index])


def decode_classes(image):
    """The class encoded in the intensities by `data_fixtures.volume_from_classes` (channel 0)."""
    return np.rint((image[..., 0] - 50.0) / 100.0).astype(np.int32)


@pytest.fixture
def volumes(tmp_path):
    return fx.write_nifti(tmp_path)


def test_loads_through_a_config_file(tmp_path, volumes):
    root, cases = volumes
    path = tmp_path / "vnet.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "vnet", "input_shape": [None, None, None, 1]},
                                    "data": nifti_cfg(root), "loss": {"dice": 1.0}}))
    cfg = load_config(path)
    assert cfg["data"]["image_size"] == list(SHAPE) and cfg["data"]["channels"] == 1
    assert validate_data_config(cfg["data"]) == cfg["data"]  # run.yaml reads back the same
    # The ._case_0.nii.gz resource fork of the Decathlon archives is not a case.
    assert [p[0].rsplit("/", 1)[1] for p in list_samples(cfg["data"], "train")] == [
        "case_0.nii.gz", "case_1.nii.gz", "case_2.nii.gz"]
    images, labels = load(cfg["data"], "train")
    assert images.shape == (3, *SHAPE, 1) and images.dtype == np.float32
    assert labels.shape == (3, *SHAPE) and labels.dtype == np.int32
    for i in range(3):  # raw intensities, voxel for voxel, and the ignore label kept
        image, label = cases[f"case_{i}"]
        np.testing.assert_array_equal(images[i], image)
        np.testing.assert_array_equal(labels[i], label)
    assert IGNORE in labels and set(np.unique(labels)) == {0, 1, 2, IGNORE}
    assert load(cfg["data"], "val")[0].shape == (1, *SHAPE, 1)


def test_orientation_is_canonical(tmp_path, volumes):
    """A case stored with a flipped x axis (as in LPS-oriented scanners) loads like the RAS one."""
    root, cases = volumes
    image, label = cases["case_0"]
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    fx.write_nifti_volume(root / "imagesTr" / "case_0.nii.gz", image[..., 0][:, :, ::-1], flip)
    fx.write_nifti_volume(root / "labelsTr" / "case_0.nii.gz", label[:, :, ::-1].astype(np.uint8), flip)
    got_image, got_label = sample(nifti_cfg(root), 0)
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_label, label)


def test_multichannel_volumes(tmp_path):
    root, cases = fx.write_nifti(tmp_path, n=2, channels=2)
    cfg = nifti_cfg(root, channels=2, splits={"train": "0-1"})
    images, labels = load(cfg, "train")
    assert images.shape == (2, *SHAPE, 2)
    np.testing.assert_array_equal(images[1], cases["case_1"][0])
    with pytest.raises(DataError, match=r"case_0.nii.gz: image has 2 channel\(s\) but data.channels is 1"):
        check_dataset(nifti_cfg(root, splits={"train": "0-1"}), "train")


def test_sizing_modes(volumes):
    root, cases = volumes
    image, label = cases["case_0"]
    # stretch x2: nearest labels repeat every voxel twice along each axis; images stay aligned with them.
    big = [2 * s for s in SHAPE]
    got_image, got_label = sample(nifti_cfg(root, volume_size=big), 0)
    np.testing.assert_array_equal(got_label, label.repeat(2, 0).repeat(2, 1).repeat(2, 2))
    # Linear images and nearest labels may disagree only where blocks meet: inside them they agree exactly.
    inside = (ndimage.maximum_filter(got_label, 3) == ndimage.minimum_filter(got_label, 3)) & (got_label != IGNORE)
    assert inside.mean() > 0.3
    np.testing.assert_array_equal(decode_classes(got_image)[inside], got_label[inside])
    # center: D padded by 2 on each side (minimum intensity, ignore label), W cropped by 2 on each side.
    got_image, got_label = sample(nifti_cfg(root, volume_size=[16, 16, 16], resize="center"), 0)
    np.testing.assert_array_equal(got_label[2:14], label[:, :, 2:18])
    assert (got_label[:2] == IGNORE).all() and (got_label[14:] == IGNORE).all()
    assert (got_image[:2] == image.min()).all()
    # letterbox: one scale (the smallest ratio, 24 / 20) for all axes, the rest padded at the far end.
    got_image, got_label = sample(nifti_cfg(root, volume_size=[24, 24, 24], resize="letterbox"), 0)
    assert got_label.shape == (24, 24, 24)
    assert (got_label[14:] == IGNORE).all() and (got_label[:, 19:] == IGNORE).all()
    assert (got_label[:14, :19] != IGNORE).mean() > 0.99


def test_spacing_resamples_to_the_voxel_size(tmp_path, volumes):
    root, cases = volumes
    image, label = cases["case_1"]
    # x (= W) voxels of 2 mm: resampled to 1 mm they double along W.
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    fx.write_nifti_volume(root / "imagesTr" / "case_1.nii.gz", image[..., 0], affine)
    fx.write_nifti_volume(root / "labelsTr" / "case_1.nii.gz", label.astype(np.uint8), affine)
    cfg = nifti_cfg(root, spacing=[1, 1, 1], volume_size=[12, 16, 40], resize="center")
    _, got = sample(cfg, 1)
    np.testing.assert_array_equal(got, label.repeat(2, axis=2))


@pytest.mark.parametrize("kind", ["missing label", "shape mismatch", "label out of range", "unreadable",
                                  "non-integer label"])
def test_errors_name_the_file(volumes, kind):
    root, cases = volumes
    image, label = cases["case_2"]
    label_path = root / "labelsTr" / "case_2.nii.gz"
    if kind == "missing label":
        label_path.unlink()
        with pytest.raises(DataError, match=r"case_2.nii.gz: no label volume for this image; expected .*labelsTr"):
            list_samples(nifti_cfg(root), "train")
        return
    if kind == "shape mismatch":
        fx.write_nifti_volume(label_path, label[:, :, :16].astype(np.uint8))
        message = r"labelsTr/case_2.nii.gz: label volume is 12x16x16 but its image .*case_2.nii.gz is 12x16x20"
    elif kind == "label out of range":
        bad = label.copy()
        bad[3, 3, 3] = 7
        fx.write_nifti_volume(label_path, bad.astype(np.uint8))
        message = r"labelsTr/case_2.nii.gz: label values 7 are outside 0-2"
    elif kind == "unreadable":
        (root / "imagesTr" / "case_2.nii.gz").write_bytes(b"\x1f\x8b not really a gzip")
        message = r"imagesTr/case_2.nii.gz: cannot read NIfTI image"
    else:
        fx.write_nifti_volume(label_path, label.astype(np.float32) + 0.5)
        message = r"labelsTr/case_2.nii.gz: label volume has non-integer values"
    with pytest.raises(DataError, match=message):
        check_dataset(nifti_cfg(root), "train")
    with pytest.raises(DataError, match=message):  # the same message out of the tf.data pipeline
        load(nifti_cfg(root), "train")


@pytest.mark.parametrize("change, message", [
    ({"volume_size": None}, "data.volume_size is required"),
    ({"volume_size": [16, 16]}, r"data.volume_size must be \[depth, height, width\]"),
    ({"image_size": [16, 16]}, "differs from data.volume_size"),
    ({"image_size": 12}, "differs from data.volume_size"),
    ({"augment": {"elastic": {"alpha": 3}}}, "data.augment.elastic: unknown key for volumes"),
    ({"augment": {"intensity_scale": 2}}, r"intensity_scale must be in \[0, 0.9\]"),
    ({"crop_size": [16, 16, 16]}, "larger than data.image_size"),
    ({"crop_size": [8, 8]}, r"data.crop_size must be \[depth, height, width\]"),
    ({"spacing": [1, 1]}, "data.spacing must be null or"),
    ({"resize": "tile"}, "data.resize must be one of stretch, letterbox, center"),
])
def test_config_errors(volumes, change, message):
    cfg = {k: v for k, v in dict(nifti_cfg(volumes[0]), **change).items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        list_samples(cfg, "train")


def test_volume_keys_are_for_volume_formats(tmp_path):
    root, _ = fx.write_isbi(tmp_path, n=2)
    with pytest.raises(ConfigError, match="data.volume_size is for volume formats"):
        list_samples({"format": "isbi", "root": str(root), "image_size": 16, "volume_size": [8, 8, 8]}, "train")


ALL_AUGMENT = {"hflip": True, "vflip": True, "dflip": True, "rot90": True, "rotate": 0.0,
               "intensity_scale": 0.0, "intensity_shift": 0.0}


def cube_sample(seed, shape=(8, 12, 12)):
    classes = fx.blocks3d(range(3), seed, shape)
    return fx.volume_from_classes(classes, seed, channels=2), classes


def test_geometric_augmentation_moves_labels_with_the_image():
    seen = set()
    for seed in range(12):
        image, label = cube_sample(seed)
        rng = np.random.default_rng(seed)
        got_image, got_label = augment_volume(image, label, ALL_AUGMENT, (8, 12, 12), IGNORE, rng)
        # Flips, quarter turns and crops index voxels: the label decoded from the image is the label, exactly.
        np.testing.assert_array_equal(decode_classes(got_image), got_label)
        np.testing.assert_array_equal(decode_classes(got_image[..., 1:] - 1000.0), got_label)  # channels together
        seen.add(got_label.tobytes())
    assert len(seen) > 6  # the draws differ

    # Padded crops: padding is ignore in the label and the minimum intensity in the image.
    image, label = cube_sample(0)
    got_image, got_label = augment_volume(image, label, ALL_AUGMENT, (10, 16, 16), IGNORE, np.random.default_rng(0))
    pad = got_label == IGNORE
    assert pad.sum() == 10 * 16 * 16 - 8 * 12 * 12
    np.testing.assert_array_equal(decode_classes(got_image)[~pad], got_label[~pad])
    assert (got_image[pad] == image.min(axis=(0, 1, 2))).all()  # each channel's own minimum


def test_rotation_and_intensity_augmentation():
    image, label = cube_sample(3, shape=(4, 24, 24))
    spec = dict(ALL_AUGMENT, hflip=False, vflip=False, dflip=False, rot90=False, rotate=0.1)
    got_image, got_label = augment_volume(image, label, spec, None, IGNORE, np.random.default_rng(1))
    assert (got_label == IGNORE).any() and not np.array_equal(got_label, label)  # rotated, corners brought in
    valid = got_label != IGNORE
    # Linear image vs nearest label: they disagree only next to class borders.
    assert (decode_classes(got_image)[valid] == got_label[valid]).mean() > 0.9

    spec = dict(ALL_AUGMENT, hflip=False, vflip=False, dflip=False, rot90=False, intensity_scale=0.2,
                intensity_shift=0.5)
    got_image, got_label = augment_volume(image, label, spec, None, IGNORE, np.random.default_rng(2))
    np.testing.assert_array_equal(got_label, label)  # the image only
    for c in range(2):  # per channel: image * a + b with a in [0.8, 1.2]
        a, b = np.polyfit(image[..., c].ravel(), got_image[..., c].ravel(), 1)
        assert 0.8 <= a <= 1.2 and a != 1.0 and abs(b) > 0
        np.testing.assert_allclose(got_image[..., c], a * image[..., c] + b, rtol=1e-4, atol=1e-2)


def test_augmented_pipeline_is_aligned_static_and_reproducible(volumes):
    root, _ = volumes
    cfg = nifti_cfg(root, crop_size=[8, 16, 12], augment=dict(ALL_AUGMENT, rot90=True))
    ds = build_dataset(cfg, "train", batch_size=3, augment=True, shuffle=True, repeat=True, seed=4)
    assert tuple(ds.element_spec[0].shape) == (None, 8, 16, 12, 1) and tuple(ds.element_spec[1].shape) == (
        None, 8, 16, 12)
    batches = [next(iter(build_dataset(cfg, "train", 3, augment=True, shuffle=True, seed=4))) for _ in range(2)]
    np.testing.assert_array_equal(batches[0][0].numpy(), batches[1][0].numpy())
    images, labels = (t.numpy() for t in batches[0])
    valid = labels != IGNORE
    np.testing.assert_array_equal(decode_classes(images)[valid], labels[valid])


# --- losses and metrics on volumes ----------------------------------------------------------------------------

def test_losses_and_metric_on_volumes_equal_the_flattened_image():
    """(B, D, H, W) labels score like the same voxels laid out as a (B, D*H, W) image."""
    import keras

    from kseg.losses import build_loss
    from kseg.metrics.keras_metric import SegMeanIoU

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 4, 5, 6)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.1] = IGNORE
    logits = rng.normal(0, 2, (2, 4, 5, 6, 3)).astype(np.float32)
    flat_labels, flat_logits = labels.reshape(2, 20, 6), logits.reshape(2, 20, 6, 3)
    for spec in ("dice", "ce", "focal", "tversky", "lovasz", {"ce": 1.0, "dice": 1.0}):
        loss = build_loss(spec, 3)
        assert float(loss(labels, logits)) == pytest.approx(float(loss(flat_labels, flat_logits)), rel=1e-5), spec
    dice = build_loss({"dice": 1.0}, 3)
    perfect = keras.ops.one_hot(np.where(labels == IGNORE, 0, labels), 3) * 50.0
    assert float(dice(labels, perfect)) == pytest.approx(0.0, abs=1e-4)
    miou, flat = SegMeanIoU(3), SegMeanIoU(3)
    miou.update_state(labels, logits)
    flat.update_state(flat_labels, flat_logits)
    assert float(miou.result()) == pytest.approx(float(flat.result()))
    np.testing.assert_array_equal(miou.confusion_matrix().matrix, flat.confusion_matrix().matrix)


# --- V-Net ------------------------------------------------------------------------------------------------------

def sphere_volumes(n, size=32, seed=0):
    """Noisy volumes (intensity 100, +80 inside a sphere, noise sigma 20) and their sphere masks."""
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3).astype(np.float32)
    images, labels = [], []
    for _ in range(n):
        centre, radius = rng.uniform(0.4 * size, 0.6 * size, 3), rng.uniform(0.2 * size, 0.28 * size)
        inside = ((grid - centre[:, None, None, None]) ** 2).sum(0) < radius**2
        labels.append(inside.astype(np.int32))
        images.append((100 + 80 * inside + rng.normal(0, 20, inside.shape)).astype(np.float32)[..., None])
    return np.stack(images), np.stack(labels)


def test_vnet_learns_a_sphere_with_the_dice_loss():
    import keras

    import kseg
    from kseg.losses import build_loss

    images, labels = sphere_volumes(2)
    keras.utils.set_random_seed(0)
    # The paper's V-Net (no BN) at a small width; scale and offset standardise the intensities (mean ~108, std ~32).
    model = kseg.create_model("vnet", num_classes=2, input_shape=(32, 32, 32, 1), base_filters=4, depth=2,
                              kernel_size=3, scale=1 / 32, offset=-3.4)
    # Eager: tracing the 3D training graph costs more than the few steps here.
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=build_loss({"dice": 1.0}, 2), run_eagerly=True)

    def dice():
        pred = np.asarray(model(images, training=False)).argmax(-1)
        return 2 * ((pred == 1) & (labels == 1)).sum() / ((pred == 1).sum() + (labels == 1).sum())

    before = dice()
    losses = [float(model.train_on_batch(images, labels)) for _ in range(7)]
    after = dice()
    print(f"vnet sphere: dice loss {losses[0]:.3f} -> {losses[-1]:.3f}, Dice {before:.3f} -> {after:.3f}")
    assert losses[-1] < 0.5 * losses[0], losses
    assert after > 0.8 and after > before + 0.5, (before, after)


def test_kseg_train_on_volumes(tmp_path, volumes):
    import keras

    from kseg.train import evaluate_model, train

    root, _ = volumes
    path = tmp_path / "vnet.yaml"
    data = nifti_cfg(root, crop_size=[8, 8, 8], augment={"hflip": True, "rot90": True, "intensity_scale": 0.1})
    path.write_text(yaml.safe_dump({
        "model": {"name": "vnet", "base_filters": 2, "depth": 2, "kernel_size": 3, "scale": 0.01},
        "data": data, "loss": {"dice": 1.0},
        "train": {"epochs": 1, "batch_size": 2, "steps_per_epoch": 2}, "output": {"dir": str(tmp_path / "run")}}))
    cfg = load_config(path)
    result = train(cfg, verbose=0)
    assert result["steps"] == 2 and np.isfinite(result["best_miou"])
    # Trained on 8^3 crops, validated and saved at the full volume size.
    model = keras.saving.load_model(tmp_path / "run" / "best.keras")
    assert tuple(model.input.shape) == (None, *SHAPE, 1)
    cm = evaluate_model(model, build_dataset(cfg["data"], "val", 1), 3)
    assert cm.mean_iou() == pytest.approx(result["best_miou"], abs=1e-6)


def test_model_input_channels_must_agree_with_the_data(tmp_path, volumes):
    from kseg.errors import ConfigError
    from kseg.train import train

    root, _ = volumes
    path = tmp_path / "vnet.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "vnet", "input_shape": [None, None, None, 2]},
                                    "data": nifti_cfg(root), "output": {"dir": str(tmp_path / "run")}}))
    with pytest.raises(ConfigError, match="2 channels but data.channels is 1"):
        train(load_config(path), verbose=0)
