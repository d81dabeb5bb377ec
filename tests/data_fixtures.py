"""Tiny datasets in the real on-disk layouts, written into a temporary folder.

Each writer returns what a test needs to check decoding: the root and the expected labels per stem.
Images are H x W = 24 x 32 (not square, so transposed reads show up).
"""

import json
import os

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


# ------------------------------------------------------------------------------------- Datasets II (issue 8)
# Each writer returns (root, {key: expected int32 label}) where key is the stem of the sample's first file
# (see `sample_key`); labels are what the loader must give at the native 24 x 32 size.

def sample_key(image_ref):
    """The key of a sample in the writers' expected labels: the stem of its first file, plus the index inside a
    container file (``nyu_depth_v2_labeled.mat::3`` -> ``3``)."""
    from kseg.data.formats import split_ref

    parts = split_ref(image_ref)
    if parts[0].endswith(".mat"):
        return parts[1]
    folder, name = os.path.split(parts[0])
    stem = name.rsplit(".", 1)[0]
    # ScanNet numbers frames per scene
    return f"{os.path.basename(os.path.dirname(folder))}/{stem}" if os.path.basename(folder) == "color" else stem


def write_depth_png(path, metres, scale=0.001, shifted=False):
    """A 16-bit depth PNG (``metres / scale`` units; SUN RGB-D / SUN3D rotate the millimetres left by 3 bits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.round(metres / scale).astype(np.uint16)
    if shifted:
        raw = (raw << 3) | (raw >> 13)
    assert cv2.imwrite(str(path), raw)


def depth_map(seed, h=H, w=W):
    """A depth map in metres (0.5-6 m) with a few missing (0) pixels."""
    depth = np.random.default_rng(seed).uniform(0.5, 6.0, (h, w)).astype(np.float32)
    depth[0, :2] = 0
    return np.round(depth * 1000) / 1000


def write_pascal_context(tmp_path):
    """``VOC2010`` with ``JPEGImages``, ``trainval/*.mat`` (LabelMap over the 459 labels, 0 unlabelled),
    ``labels.txt`` and ``ImageSets/SegmentationContext/{train,val}.txt``. Expected labels are the 59-class ones."""
    from kseg.data.formats_2d import PASCAL_CONTEXT_59_IDS

    root = tmp_path / "VOCdevkit" / "VOC2010"
    labels = {}
    for i, stem in enumerate(("2008_000002", "2008_000003")):
        # 1 and 3 are not among the 59
        raw = np.array([0, 2, 458, 1, 260, 3], np.uint16)[blocks(range(6), seed=60 + i)]
        write_rgb(root / "JPEGImages" / f"{stem}.jpg", random_image(60 + i))
        (root / "trainval").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "trainval" / f"{stem}.mat", {"LabelMap": raw})
        lut = np.full(460, 255, np.int32)
        lut[list(PASCAL_CONTEXT_59_IDS)] = np.arange(59)
        labels[stem] = lut[raw]
    (root / "labels.txt").write_text("".join(f"{i}: label{i}\n" for i in range(1, 460)).replace(
        "2: label2", "2: aeroplane"))
    sets = root / "ImageSets" / "SegmentationContext"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2008_000002\n")
    (sets / "val.txt").write_text("2008_000003\n")
    return tmp_path / "VOCdevkit", labels


def _polygon(x0, y0, x1, y1):
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def write_coco(tmp_path):
    """``annotations/instances_{train,val}2017.json`` (the 80 categories, polygon and crowd RLE segmentations) and
    ``{train,val}2017/*.jpg``. Expected semantic labels: 0 background, contiguous class ids, crowd = 255."""
    from pycocotools import mask as mask_utils

    from kseg.data.formats_2d import COCO_THINGS

    root = tmp_path / "coco"
    categories = [{"id": i, "name": n, "supercategory": "thing"} for i, n in sorted(COCO_THINGS.items())]
    contiguous = {cid: k + 1 for k, cid in enumerate(sorted(COCO_THINGS))}
    labels = {}
    for split, image_ids in (("train2017", (9, 25)), ("val2017", (139,))):
        images, anns = [], []
        for image_id in image_ids:
            name = f"{image_id:012d}.jpg"
            write_rgb(root / split / name, random_image(image_id))
            images.append({"id": image_id, "file_name": name, "height": H, "width": W})
            label = np.zeros((H, W), np.int32)
            # a person box (polygon, pixels 4..11 x 2..9 inclusive in pycocotools' rasterisation), then a dog
            # polygon over part of it, then a crowd region as uncompressed RLE
            anns.append({"id": len(anns) + 100 * image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                         "segmentation": [_polygon(4, 2, 12, 10)], "bbox": [4, 2, 8, 8], "area": 64})
            anns.append({"id": len(anns) + 100 * image_id, "image_id": image_id, "category_id": 18, "iscrowd": 0,
                         "segmentation": [_polygon(8, 6, 20, 14)], "bbox": [8, 6, 12, 8], "area": 96})
            crowd = np.zeros((H, W), np.uint8, order="F")
            crowd[16:22, 24:30] = 1
            counts = _uncompressed_rle(crowd)
            anns.append({"id": len(anns) + 100 * image_id, "image_id": image_id, "category_id": 3, "iscrowd": 1,
                         "segmentation": {"size": [H, W], "counts": counts}, "bbox": [24, 16, 6, 6], "area": 36})
            for ann in anns[-3:]:
                seg = ann["segmentation"]
                rle = (mask_utils.merge(mask_utils.frPyObjects(seg, H, W)) if isinstance(seg, list)
                       else mask_utils.frPyObjects(seg, H, W))
                mask = mask_utils.decode(rle).astype(bool)
                label[mask] = 255 if ann["iscrowd"] else contiguous[ann["category_id"]]
            labels[f"{image_id:012d}"] = label
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": categories}))
    return root, labels


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def write_coco_stuff(tmp_path):
    """``images/{train,val}2017/*.jpg`` with ``annotations/{train,val}2017/*.png`` stuffthingmaps (COCO id - 1,
    255 unlabelled)."""
    from kseg.data.formats_2d import COCO_STUFF_IDS

    root = tmp_path / "cocostuff" / "dataset"  # the cocostuff repository's README unpacks into dataset/
    labels = {}
    for i, (split, stem) in enumerate((("train2017", "000000000009"), ("val2017", "000000000139"))):
        raw = blocks([0, 17, 91, 181, 255, 123], seed=70 + i)  # person, dog, banner, wood, unlabelled, sky-other
        write_rgb(root / "images" / split / f"{stem}.jpg", random_image(70 + i))
        write_gray(root / "annotations" / split / f"{stem}.png", raw)
        lut = np.full(256, 255, np.int32)
        lut[[k - 1 for k in COCO_STUFF_IDS]] = np.arange(171)
        labels[stem] = lut[raw]
    return root.parent, labels


def write_coco_panoptic(tmp_path):
    """``{train,val}2017/*.jpg``, ``annotations/panoptic_{train,val}2017.json`` (the 133 categories) and the
    segment-id PNGs (id = R + 256 G + 256^2 B): train's in ``panoptic_train2017/`` (the detectron2 place), val's in
    ``annotations/panoptic_val2017/`` (where the release's zip unpacks). Expected: contiguous ids in category-id
    order, unlabelled (0) and crowd = 255."""
    from kseg.data.formats_2d import COCO_PANOPTIC_STUFF, COCO_THINGS

    root = tmp_path / "coco"
    names = {**COCO_THINGS, **COCO_PANOPTIC_STUFF}
    categories = [{"id": i, "name": n, "supercategory": "x", "isthing": int(i in COCO_THINGS)}
                  for i, n in sorted(names.items())]
    contiguous = {cid: k for k, cid in enumerate(sorted(names))}
    labels = {}
    for split, image_id, png_dir in (("train2017", 9, root / "panoptic_train2017"),
                                     ("val2017", 139, root / "annotations" / "panoptic_val2017")):
        # person, sky-other-merged, a crowd of cars, and unlabelled (0); ids use all three colour channels
        segments = [(5 + 256 * 3 + 65536 * 2, 1, 0), (7, 187, 0), (300, 3, 1)]
        choice = blocks(range(4), seed=75 + image_id)
        ids = np.array([0] + [seg for seg, _, _ in segments], np.int64)[choice]
        write_rgb(png_dir / f"{image_id:012d}.png", np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1)
                  .astype(np.uint8))
        write_rgb(root / split / f"{image_id:012d}.jpg", random_image(75 + image_id))
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps({
            "images": [{"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": H, "width": W}],
            "annotations": [{"image_id": image_id, "file_name": f"{image_id:012d}.png", "segments_info": [
                {"id": seg, "category_id": cat, "iscrowd": crowd, "bbox": [0, 0, 1, 1], "area": 1}
                for seg, cat, crowd in segments]}],
            "categories": categories}))
        labels[f"{image_id:012d}"] = np.array([255, contiguous[1], contiguous[187], 255], np.int32)[choice]
    return root, labels


def write_ade20k(tmp_path):
    """``ADEChallengeData2016/images/{training,validation}/*.jpg`` + ``annotations/.../*.png`` (0 other, 1-150),
    ``objectInfo150.txt``."""
    root = tmp_path / "ADEChallengeData2016"
    labels = {}
    for i, (folder, stem) in enumerate((("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001"))):
        raw = blocks([0, 1, 13, 150], seed=80 + i)
        write_rgb(root / "images" / folder / f"{stem}.jpg", random_image(80 + i))
        write_gray(root / "annotations" / folder / f"{stem}.png", raw)
        labels[stem] = np.where(raw == 0, 255, raw.astype(np.int32) - 1)
    rows = "".join(f"{k}\t0.01\t100\t10\tname{k}, alias\n" for k in range(1, 151))
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" + rows.replace("name2,", "building,"))
    return tmp_path, labels


def write_stanford_background(tmp_path):
    """``iccv09Data/images/*.jpg`` with ``labels/*.regions.txt`` (0-7, -1 unknown)."""
    root = tmp_path / "iccv09Data"
    labels = {}
    for i, stem in enumerate(("0000047", "0000051", "0000059")):
        raw = blocks([0, 1, 5, 7, 9], seed=90 + i).astype(np.int64)
        raw[raw == 9] = -1
        write_rgb(root / "images" / f"{stem}.jpg", random_image(90 + i))
        (root / "labels").mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "labels" / f"{stem}.regions.txt", raw, fmt="%d")
        labels[stem] = np.where(raw == -1, 255, raw).astype(np.int32)
    return tmp_path, labels


def write_nyudv2(tmp_path, n=4):
    """``nyu_depth_v2_labeled.mat`` as MATLAB v7.3 writes it (HDF5, column-major: images (N, 3, W, H), depths
    (N, W, H) metres, labels (N, W, H) over 894 ids), ``splits.mat`` (1-based trainNdxs / testNdxs) and
    ``classMapping40.mat`` (mapClass). Expected labels: the 40-class ones; depth i is ``depth_map(100 + i)``."""
    import h5py

    root = tmp_path / "nyudv2"
    root.mkdir(parents=True)
    mapping = (np.arange(894) % 40 + 1).astype(np.float64)  # a fixed 894 -> 40 table for the test
    images = np.stack([random_image(100 + i) for i in range(n)])
    depths = np.stack([depth_map(100 + i) for i in range(n)])
    raw = np.stack([np.array([0, 1, 41, 894, 300], np.uint16)[blocks(range(5), seed=100 + i)] for i in range(n)])
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w", userblock_size=512) as f:
        f["images"] = images.transpose(0, 3, 2, 1)
        f["depths"] = depths.transpose(0, 2, 1)
        f["labels"] = raw.transpose(0, 2, 1)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.arange(1, n).reshape(-1, 1),
                                           "testNdxs": np.array([[n]])})
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": mapping.reshape(1, -1)})
    labels = {str(i): np.where(raw[i] == 0, 255, mapping[np.maximum(raw[i], 1) - 1] - 1).astype(np.int32)
              for i in range(n)}
    return root, labels


def write_sunrgbd(tmp_path):
    """SUN RGB-D as distributed: ``SUNRGBD/kv1/NYUdata/NYU000N/`` frame folders (``image/*.jpg``,
    ``depth_bfx/*.png`` bit-rotated mm, ``intrinsics.txt``, ``seg.mat`` with seglabel over names) beside
    ``SUNRGBDtoolbox/`` (``Metadata/SUNRGBDMeta.mat``, ``Metadata/SUNRGBD2Dseg.mat`` as MATLAB v7.3 with one
    object reference per frame, ``Metadata/seg37list.mat``, ``traintestSUNRGBD/allsplit.mat``: frames 1-2 train,
    3 test). Expected labels: the toolbox's 37-class ones, where "lamp shade" is lamp (a synonym the toolbox's
    labels map and frame-name matching does not)."""
    import h5py

    from kseg.data.formats_rgbd import SUNRGBD_CLASSES

    root = tmp_path / "sunrgbd"
    toolbox = root / "SUNRGBDtoolbox"
    (toolbox / "Metadata").mkdir(parents=True)
    (toolbox / "traintestSUNRGBD").mkdir()
    labels, seg37, meta = {}, [], []
    for i in range(3):
        stem = f"NYU{i + 1:04d}"
        sequence = f"SUNRGBD/kv1/NYUdata/{stem}"
        frame = root / sequence
        write_rgb(frame / "image" / f"{stem}.jpg", random_image(110 + i))
        write_depth_png(frame / "depth_bfx" / f"{stem}.png", depth_map(110 + i), shifted=True)
        (frame / "intrinsics.txt").write_text("518.86 0 325.58\n0 519.47 253.74\n0 0 1\n")
        names = np.array(["wall", "night_stand", "Chair", "lamp shade"], dtype=object)
        seg = blocks([0, 1, 2, 3, 4], seed=110 + i)
        scipy.io.savemat(frame / "seg.mat", {"seglabel": seg.astype(np.uint16), "names": names})
        # seg37 ids (1-based, 0 unlabelled): wall 1, night_stand 32, chair 5, lamp 35
        seg37.append(np.array([0, 1, 32, 5, 35])[seg])
        labels[stem] = np.where(seg37[-1] == 0, 255, seg37[-1] - 1).astype(np.int32)
        meta.append((sequence, f"{stem}.jpg", f"{stem}.png"))
    records = np.zeros((1, len(meta)), [("sequenceName", "O"), ("rgbname", "O"), ("depthname", "O")])
    for k, entry in enumerate(meta):
        records[0, k] = entry
    scipy.io.savemat(toolbox / "Metadata" / "SUNRGBDMeta.mat", {"SUNRGBDMeta": records})
    with h5py.File(toolbox / "Metadata" / "SUNRGBD2Dseg.mat", "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        pointers = [refs.create_dataset(f"s{k}", data=label.T.astype(np.float64)).ref for k, label in enumerate(seg37)]
        f.create_group("SUNRGBD2Dseg").create_dataset("seglabel", data=np.array(pointers).reshape(-1, 1),
                                                      dtype=h5py.ref_dtype)
    scipy.io.savemat(toolbox / "Metadata" / "seg37list.mat", {"seg37list": np.array(SUNRGBD_CLASSES, dtype=object)})
    server = "/n/fs/sun3d/data/"
    scipy.io.savemat(toolbox / "traintestSUNRGBD" / "allsplit.mat", {
        "alltrain": np.array([server + m[0] for m in meta[:2]], dtype=object),
        "alltest": np.array([server + m[0] + "/" for m in meta[2:]], dtype=object)})
    return root, labels


def write_scannet(tmp_path):
    """``scans/scene000N_00/{color,depth,label-filt,intrinsic}`` and ``scannetv2-labels.combined.tsv``,
    ``scannetv2_{train,val}.txt``."""
    root = tmp_path / "scannet"
    tsv = ["id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class"]
    tsv += ["1\twall\twall\t8277\t1\t12\twall\twall", "2\tchair\tchair\t4646\t5\t4\tchair\tchair",
            "40\tbackpack\tbackpack\t479\t37\t7\tbag\tbag", "1357\tsome thing\tsome thing\t1\t\t\t\t"]
    root.mkdir(parents=True)
    (root / "scannetv2-labels.combined.tsv").write_text("\n".join(tsv) + "\n")
    labels = {}
    for s, scene in enumerate(("scene0000_00", "scene0001_00")):
        folder = root / "scans" / scene
        (folder / "intrinsic").mkdir(parents=True)
        (folder / "intrinsic" / "intrinsic_depth.txt").write_text(
            "577.59 0 318.9 0\n0 578.73 242.68 0\n0 0 1 0\n0 0 0 1\n")
        for frame in (0, 20):
            index = blocks(range(5), seed=120 + frame + s)
            raw = np.array([0, 1, 2, 40, 1357], np.uint16)[index]
            write_rgb(folder / "color" / f"{frame}.jpg", random_image(120 + frame + s))
            # depth at half the colour size, as ScanNet's 640x480 depth beside 1296x968 colour
            write_depth_png(folder / "depth" / f"{frame}.png", depth_map(120 + frame + s, H // 2, W // 2))
            (folder / "label-filt").mkdir(exist_ok=True)
            assert cv2.imwrite(str(folder / "label-filt" / f"{frame}.png"), raw)
            # ids 0 and 1357 (no nyu40id) are ignore; wall, chair, backpack (bag) are NYU40 1, 5, 37
            labels[f"{scene}/{frame}"] = np.array([255, 0, 4, 36, 255], np.int32)[index]
    (root / "scannetv2_train.txt").write_text("scene0000_00\n")
    (root / "scannetv2_val.txt").write_text("scene0001_00\n")
    return root, labels


def write_sun3d(tmp_path):
    """One SUN3D sequence: ``image/*.jpg``, ``depth/*.png`` (bit-rotated mm), ``intrinsics.txt`` and
    ``annotation/index.json`` with object polygons on frames 0 and 2 (frame 1 unannotated)."""
    root = tmp_path / "sun3d"
    seq = root / "hotel_umd" / "maryland_hotel3"
    frames = []
    labels = {}
    for i in range(3):
        stem = f"{i + 1:07d}-{1000 * i:012d}"
        write_rgb(seq / "image" / f"{stem}.jpg", random_image(130 + i))
        write_depth_png(seq / "depth" / f"{stem}.png", depth_map(130 + i), shifted=True)
        label = np.full((H, W), 255, np.int32)
        if i == 1:
            frames.append({})
            continue
        # a chair rectangle and a bed rectangle (cv2.fillPoly includes the corner pixels)
        polys = [{"x": [2, 10, 10, 2], "y": [3, 3, 12, 12], "object": 0},
                 {"x": [14, 28, 28, 14], "y": [5, 5, 20, 20], "object": 1},
                 {"x": [0, 4, 4, 0], "y": [18, 18, 23, 23], "object": 2}]
        label[3:13, 2:11] = 4  # chair
        label[5:21, 14:29] = 3  # bed
        frames.append({"polygon": polys})
        labels[stem] = label
    (seq / "intrinsics.txt").write_text("570.3 0 320\n0 570.3 240\n0 0 1\n")
    (seq / "annotation").mkdir()
    (seq / "annotation" / "index.json").write_text(json.dumps(
        {"date": "2013", "name": "maryland_hotel3", "frames": frames,
         "objects": [{"name": "chair:1"}, {"name": "bed:1"}, {"name": "unicorn:1"}], "conflictList": []}))
    return root, labels


def write_uwrgbd(tmp_path):
    """``rgbd-dataset/<category>/<instance>/<instance>_1_<n>_{crop,depthcrop,maskcrop}.png`` (varying crop sizes)."""
    from kseg.data.formats_rgbd import UWRGBD_CATEGORIES

    root = tmp_path / "rgbd-dataset"
    labels = {}
    for i, (category, instance) in enumerate((("apple", "apple_1"), ("water_bottle", "water_bottle_2"))):
        for frame in (1, 5):
            stem = f"{instance}_1_{frame}"
            folder = root / category / instance
            write_rgb(folder / f"{stem}_crop.png", random_image(140 + i + frame))
            write_depth_png(folder / f"{stem}_depthcrop.png", depth_map(140 + i + frame))
            mask = blocks([0, 1], seed=140 + i + frame)
            write_gray(folder / f"{stem}_maskcrop.png", mask * 255)
            labels[f"{stem}_crop"] = np.where(mask > 0, UWRGBD_CATEGORIES.index(category) + 1, 0).astype(np.int32)
    return tmp_path, labels


def write_stanford2d3d(tmp_path):
    """``area_{1,5}/data/{rgb,depth,semantic,pose}`` and ``assets/semantic_labels.json``; semantic PNGs encode
    the label index as R*65536 + G*256 + B (0x0D0D0D past the list = missing)."""
    root = tmp_path / "2D-3D-S"
    entries = ["<UNK>_0_<UNK>_0", "ceiling_1_office_1_Area_1", "chair_3_office_1_Area_1", "wall_2_office_1_Area_1",
               "clutter_7_office_1_Area_1"]
    (root / "assets").mkdir(parents=True)
    (root / "assets" / "semantic_labels.json").write_text(json.dumps(entries))
    classes = np.array([255, 0, 8, 2, 12, 255])
    labels = {}
    for i, area in enumerate(("area_1", "area_5")):
        stem = f"camera_{i}abc_office_1_frame_{i}"
        data = root / area / "data"
        write_rgb(data / "rgb" / f"{stem}_domain_rgb.png", random_image(150 + i))
        depth = depth_map(150 + i)
        write_depth_png(data / "depth" / f"{stem}_domain_depth.png", depth, scale=1 / 512)
        index = blocks([0, 1, 2, 3, 4, 5], seed=150 + i).astype(np.int64)
        codes = np.where(index == 5, 0x0D0D0D, index)
        rgb = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8)
        write_rgb(data / "semantic" / f"{stem}_domain_semantic.png", rgb)
        (data / "pose").mkdir(parents=True, exist_ok=True)
        (data / "pose" / f"{stem}_domain_pose.json").write_text(json.dumps(
            {"camera_k_matrix": [[1075.0, 0, 540], [0, 1075.0, 540], [0, 0, 1]]}))
        labels[f"{stem}_domain_rgb"] = classes[index].astype(np.int32)
    return root, labels


def _cloud(seed, n=200, labels=(0, 1)):
    """A cloud of ``n`` points in two clusters (x < 0 and x > 0) with one label each."""
    rng = np.random.default_rng(seed)
    half = n // 2
    points = np.concatenate([rng.uniform([-0.8, -0.4, -0.4], [-0.1, 0.4, 0.4], (half, 3)),
                             rng.uniform([0.1, -0.4, -0.4], [0.8, 0.4, 0.4], (n - half, 3))])
    return points, np.repeat(np.asarray(labels), [half, n - half])


def write_shapenet_part(tmp_path):
    """``shapenetcore_partanno_segmentation_benchmark_v0_normal``: ``<synset>/<model>.txt`` (x y z nx ny nz part),
    ``synsetoffset2category.txt``, ``train_test_split/shuffled_*_file_list.json``. Returns ``{stem: (points,
    part labels)}`` as the expected values."""
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    shapes = {}
    entries = {"train": [], "val": [], "test": []}
    for i, (synset, model, parts, split) in enumerate((("02691156", "1a04e3eab45ca15dd86060f189eb133", (0, 3), "train"),
                                                       ("03001627", "1a6f615e8b1b5ae4dbbc9440457e303e", (12, 14), "train"),
                                                       ("02691156", "1a9b552befd6306cc8f2d5fe7449af61", (1, 2), "val"))):
        points, labels = _cloud(160 + i, labels=parts)
        normals = np.tile([0.0, 0.0, 1.0], (len(points), 1))
        (root / synset).mkdir(parents=True, exist_ok=True)
        np.savetxt(root / synset / f"{model}.txt", np.concatenate([points, normals, labels[:, None]], axis=1),
                   fmt="%.6f")
        entries[split].append(f"shape_data/{synset}/{model}")
        shapes[model] = (points, labels)
    (root / "synsetoffset2category.txt").write_text("Airplane\t02691156\nChair\t03001627\n")
    (root / "train_test_split").mkdir()
    for split, listed in entries.items():
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(listed))
    return root, shapes


def write_sydney_urban(tmp_path):
    """``sydney-urban-objects-dataset/objects/<class>.<instance>.<scan>.bin`` (packed records) and
    ``folds/fold{0,1}.txt``. Returns ``{stem: (points, labels)}``."""
    from kseg.data.formats_3d import SYDNEY_CLASSES, SYDNEY_POINT

    root = tmp_path / "sydney-urban-objects-dataset"
    (root / "objects").mkdir(parents=True)
    clouds = {}
    for i, name in enumerate(("car.0.2446", "pedestrian.3.8244", "tree.11.270")):
        points, _ = _cloud(170 + i, n=150)
        points = points * 3.0 + np.array([10.0, -4.0, 1.0])  # metres, away from the origin
        record = np.zeros(len(points), SYDNEY_POINT)
        record["x"], record["y"], record["z"] = points.T
        record["intensity"] = 40
        record.tofile(root / "objects" / f"{name}.bin")
        clouds[name] = (points.astype(np.float32).astype(np.float64),
                        np.full(len(points), SYDNEY_CLASSES.index(name.split(".")[0])))
    (root / "folds").mkdir()
    (root / "folds" / "fold0.txt").write_text("car.0.2446.bin\npedestrian.3.8244.bin\n")
    (root / "folds" / "fold1.txt").write_text("tree.11.270.bin\n")
    return root, clouds


def write_shapenet_part_v0(tmp_path):
    """The original ShapeNet part release: ``<synset>/points/<model>.pts`` (x y z) and ``points_label/<model>.seg``
    (parts 1..k of the category). Returns ``{model: (points, global part labels)}``."""
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0"
    shapes = {}
    # Chair's parts are global 12-15 (after Airplane 4, Bag 2, Cap 2, Car 4); Airplane's 0-3
    for i, (synset, model, parts, offset) in enumerate((("03001627", "1a6f615e8b1b5ae4dbbc9440457e303e", (1, 3), 12),
                                                         ("02691156", "1a04e3eab45ca15dd86060f189eb133", (2, 4), 0))):
        points, labels = _cloud(180 + i, labels=parts)
        (root / synset / "points").mkdir(parents=True)
        (root / synset / "points_label").mkdir()
        np.savetxt(root / synset / "points" / f"{model}.pts", points, fmt="%.6f")
        np.savetxt(root / synset / "points_label" / f"{model}.seg", labels, fmt="%d")
        shapes[model] = (points, labels - 1 + offset)
    (root / "train_test_split").mkdir()
    (root / "train_test_split" / "shuffled_train_file_list.json").write_text(json.dumps(
        [f"shape_data/03001627/{next(iter(shapes))}"]))
    return root, shapes


def write_ply(path, points, labels, fmt="binary_little_endian", faces=()):
    """A ScanNet ``*_vh_clean_2.labels.ply``: vertex x y z (float), red green blue alpha (uchar), label (ushort),
    then the faces (``list uchar int vertex_indices``), in ``fmt`` (ascii, binary_little_endian or
    binary_big_endian)."""
    from kseg.data.formats_rgbd import SCANNET_NYU40_PALETTE

    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"ply\nformat {fmt} 1.0\ncomment written by the kseg tests\nelement vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nproperty uchar alpha\nproperty ushort label\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    palette = np.array([(0, 0, 0)] + list(SCANNET_NYU40_PALETTE), np.uint8)
    colours = palette[np.where(np.asarray(labels) <= 40, labels, 0)]
    if fmt == "ascii":
        rows = [f"{x:.6f} {y:.6f} {z:.6f} {r} {g} {b} 255 {label}"
                for (x, y, z), (r, g, b), label in zip(points, colours, labels)]
        rows += [f"{len(face)} " + " ".join(map(str, face)) for face in faces]
        path.write_text(header + "\n".join(rows) + "\n")
        return
    order = "<" if fmt == "binary_little_endian" else ">"
    vertex = np.zeros(len(points), [("x", order + "f4"), ("y", order + "f4"), ("z", order + "f4"), ("red", "u1"),
                                    ("green", "u1"), ("blue", "u1"), ("alpha", "u1"), ("label", order + "u2")])
    vertex["x"], vertex["y"], vertex["z"] = np.asarray(points, np.float32).T
    vertex["red"], vertex["green"], vertex["blue"] = colours.T
    vertex["alpha"], vertex["label"] = 255, labels
    face_bytes = b"".join(np.uint8(len(f)).tobytes() + np.asarray(f, order + "i4").tobytes() for f in faces)
    path.write_bytes(header.encode() + vertex.tobytes() + face_bytes)


def write_scannet3d(tmp_path):
    """``scans/scene000N_00/scene000N_00_vh_clean_2.labels.ply`` (scene 0 binary with faces, scene 1 ASCII) and
    ``scannetv2_{train,val}.txt``. Returns ``{file stem: (points in metres, 20-class labels, 255 ignore)}``."""
    root = tmp_path / "scannet"
    scenes = {}
    # NYU40 ids: wall (1 -> 0), chair (5 -> 4), otherfurniture (39 -> 19), floor mat (20: not a benchmark class),
    # unlabelled (0)
    nyu40 = np.array([1, 5, 39, 20, 0])
    classes = np.array([0, 4, 19, 255, 255])
    for s, (scene, fmt) in enumerate((("scene0000_00", "binary_little_endian"), ("scene0001_00", "ascii"))):
        rng = np.random.default_rng(190 + s)
        points = (rng.uniform([0, 0, 0], [4.0, 3.0, 2.5], (300, 3))).astype(np.float32)
        which = rng.integers(0, len(nyu40), len(points))
        faces = [(0, 1, 2), (2, 3, 4)]
        write_ply(root / "scans" / scene / f"{scene}_vh_clean_2.labels.ply", points, nyu40[which], fmt, faces)
        scenes[f"{scene}_vh_clean_2.labels"] = (points.astype(np.float64), classes[which])
    (root / "scannetv2_train.txt").write_text("scene0000_00\nscene0001_00\n")
    (root / "scannetv2_val.txt").write_text("scene0001_00\n")
    return root, scenes
