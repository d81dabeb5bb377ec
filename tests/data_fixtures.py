"""Tiny datasets in the real on-disk layouts, written into a temporary folder.

Each writer returns what a test needs to check decoding: the root and the expected labels per stem.
Images are H x W = 24 x 32 (not square, so transposed reads show up).
"""

import cv2
import numpy as np
import scipy.io
from PIL import Image

from kseg.data.formats import voc_palette

H, W = 24, 32


def blocks(values, seed, h=H, w=W, block=8):
    """A label map of 8x8 blocks whose values cycle through ``values`` in a seeded order."""
    rng = np.random.default_rng(seed)
    grid = np.resize(rng.permutation(np.asarray(values)), (h // block) * (w // block))
    return np.kron(grid.reshape(h // block, w // block), np.ones((block, block), int)).astype(np.uint8)


def random_image(seed, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_gray(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values.astype(np.uint8))


def write_palette_png(path, indices, palette):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([v for colour in palette for v in colour])
    image.save(path)


def write_voc(tmp_path):
    """``VOCdevkit/VOC2012`` with two images, palette masks with a 255 boundary, train/val/trainval lists."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    labels = {}
    for i, stem in enumerate(("2007_000032", "2007_000039")):
        label = blocks([0, 1, 15, 20], seed=i)
        label[:, 7] = 255  # the boundary band VOC draws between objects
        write_rgb(root / "JPEGImages" / f"{stem}.jpg", random_image(i))
        write_palette_png(root / "SegmentationClass" / f"{stem}.png", label, voc_palette())
        labels[stem] = label.astype(np.int32)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n")
    (sets / "val.txt").write_text("2007_000039\n")
    (sets / "trainval.txt").write_text("2007_000032\n2007_000039\n")
    return tmp_path / "VOCdevkit", labels


def write_sbd(tmp_path):
    """``benchmark_RELEASE/dataset`` with ``img/*.jpg``, ``cls/*.mat`` (GTcls.Segmentation), train/val lists."""
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    labels = {}
    for i, stem in enumerate(("2008_000002", "2008_000003", "2008_000007")):
        label = blocks([0, 3, 12, 20], seed=10 + i)
        write_rgb(root / "img" / f"{stem}.jpg", random_image(10 + i))
        (root / "cls").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "cls" / f"{stem}.mat",
                         {"GTcls": {"Segmentation": label, "CategoriesPresent": np.unique(label[label > 0])}})
        labels[stem] = label.astype(np.int32)
    (root / "train.txt").write_text("2008_000002\n2008_000003\n")
    (root / "val.txt").write_text("2008_000007\n")
    return root.parent, labels


def write_cityscapes(tmp_path):
    """``leftImg8bit/{train,val}/{city}/*_leftImg8bit.png`` with ``gtFine/.../*_gtFine_labelIds.png``."""
    root = tmp_path / "cityscapes"
    label_ids = {}
    frames = (("train", "aachen", "000000_000019"), ("train", "bochum", "000000_000313"),
              ("val", "frankfurt", "000000_000294"))
    for i, (split, city, frame) in enumerate(frames):
        ids = blocks([0, 7, 26, 33, 4, 9, 24, 11], seed=20 + i)
        write_rgb(root / "leftImg8bit" / split / city / f"{city}_{frame}_leftImg8bit.png", random_image(20 + i))
        write_gray(root / "gtFine" / split / city / f"{city}_{frame}_gtFine_labelIds.png", ids)
        label_ids[f"{city}_{frame}"] = ids.astype(np.int32)
    return root, label_ids


def write_folder(tmp_path, n=4, masks="palette", palette=((0, 0, 0), (255, 0, 0), (0, 255, 0))):
    """``images/*.tif`` + ``masks/*.png``; masks are palette PNGs, colour PNGs or index PNGs."""
    root = tmp_path / "folder"
    labels = {}
    for i in range(n):
        stem = f"sample_{i}"
        label = blocks(range(len(palette)), seed=30 + i)
        write_rgb(root / "images" / f"{stem}.tif", random_image(30 + i))
        mask_path = root / "masks" / f"{stem}.png"
        if masks == "palette":
            write_palette_png(mask_path, label, palette)
        elif masks == "colour":
            write_rgb(mask_path, np.asarray(palette, np.uint8)[label])
        else:
            write_gray(mask_path, label)
        labels[stem] = label.astype(np.int32)
    return root, labels


def write_isbi(tmp_path, n=12):
    """ISBI 2012 layout: ``train/image/N.png`` and ``train/label/N.png`` (255 cell, 0 membrane), grayscale."""
    root = tmp_path / "isbi"
    labels = {}
    for i in range(n):
        cell = blocks([0, 1], seed=40 + i).astype(bool)
        # Near-threshold grey values as a resampled label would have: >= 128 is cell.
        grey = np.where(cell, 200, 40)
        grey[0, 0], grey[0, 1] = 128, 127
        write_gray(root / "train" / "image" / f"{i}.png", random_image(40 + i)[..., 0])
        write_gray(root / "train" / "label" / f"{i}.png", grey)
        labels[str(i)] = (grey >= 128).astype(np.int32)
    return root, labels


def blocks3d(values, seed, shape, block=4):
    """A label volume of ``block``-sized cubes whose values cycle through ``values`` in a seeded order."""
    rng = np.random.default_rng(seed)
    grid_shape = tuple(s // block for s in shape)
    grid = np.resize(rng.permutation(np.asarray(values)), int(np.prod(grid_shape))).reshape(grid_shape)
    return np.kron(grid, np.ones((block,) * 3, int)).astype(np.int32)


def volume_from_classes(classes, seed, channels=1):
    """Intensities that encode the class of every voxel: ``50 + 100 * class + noise in [0, 10)`` (channel k adds
    ``1000 * k``), so that ``round((v - 50) / 100)`` gives the class back after any voxel-exact transform."""
    noise = np.random.default_rng(seed).uniform(0, 10, classes.shape + (channels,))
    return (50.0 + 100.0 * classes[..., None] + noise + 1000.0 * np.arange(channels)).astype(np.float32)


def write_nifti_volume(path, volume, affine=None):
    """Writes a (D, H, W[, C]) array as NIfTI, whose voxel axes are (x, y, z[, c]) = (W, H, D[, C])."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    data = volume.transpose((2, 1, 0) if volume.ndim == 3 else (2, 1, 0, 3))
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def write_nifti(tmp_path, n=4, shape=(12, 16, 20), channels=1, num_classes=3):
    """Medical Segmentation Decathlon layout: ``imagesTr/case_N.nii.gz`` and ``labelsTr/case_N.nii.gz`` (float32
    intensities from `volume_from_classes`, uint8 labels with a few 255 = ignore voxels), plus a ``._case_0.nii.gz``
    resource-fork file as the Decathlon archives carry. Returns the root and ``{case: (image, label)}``, the
    arrays as the loader should give them (D, H, W, C) and (D, H, W)."""
    root = tmp_path / "Task00_Tiny"
    cases = {}
    for i in range(n):
        classes = blocks3d(range(num_classes), seed=50 + i, shape=shape)
        image = volume_from_classes(classes, seed=50 + i, channels=channels)
        label = classes.copy()
        label[0, 0, :3] = 255
        write_nifti_volume(root / "imagesTr" / f"case_{i}.nii.gz", image if channels > 1 else image[..., 0])
        write_nifti_volume(root / "labelsTr" / f"case_{i}.nii.gz", label.astype(np.uint8))
        cases[f"case_{i}"] = (image, label)
    (root / "imagesTr" / "._case_0.nii.gz").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    return root, cases
