"""Point-cloud layouts voxelised for the 3D models: ShapeNet part segmentation and Sydney Urban Objects.

A cloud becomes a labelled occupancy grid of ``data.volume_size`` (D, H, W) voxels of ``data.voxel_size`` (the
cloud's units: metres for Sydney, the unit-sphere normalised coordinates of ShapeNet): the cloud's bounding-box
centre sits at the grid centre, z runs along D, y along H, x along W. The image is one channel, 1 where a voxel
holds a point (255, on the [0, 255] image scale) and 0 elsewhere; a voxel's label is the most frequent label of
its points, and empty voxels are ``data.ignore_index`` (the loss and the metrics see occupied voxels only).
Points outside the grid are dropped from the grid. `point_labels` maps a predicted grid back to the points for
per-point evaluation.
"""

import json
from pathlib import Path

import numpy as np

from kseg.data.formats import Format, pick_range, read_list, report, voc_palette
from kseg.data.io import check_labels, natural_key
from kseg.errors import DataError

# ShapeNet part annotation (Yi et al., "A Scalable Active Framework for Region Annotation in 3D Shape
# Collections", SIGGRAPH Asia 2016), as PointNet / PointNet++ use it: 16 categories with 50 parts in all, numbered
# 0-49 in this category order (synsetoffset2category.txt sorted by name).
SHAPENET_PARTS = (("Airplane", "02691156", 4), ("Bag", "02773838", 2), ("Cap", "02954340", 2),
                  ("Car", "02958343", 4), ("Chair", "03001627", 4), ("Earphone", "03261776", 3),
                  ("Guitar", "03467517", 3), ("Knife", "03624134", 2), ("Lamp", "03636649", 4),
                  ("Laptop", "03642806", 2), ("Motorbike", "03790512", 6), ("Mug", "03797390", 2),
                  ("Pistol", "03948459", 3), ("Rocket", "04099429", 3), ("Skateboard", "04225987", 3),
                  ("Table", "04379243", 3))
# Sydney Urban Objects (De Deuge et al., "Unsupervised Feature Learning for Classification of Outdoor 3D Scans",
# ACRA 2013): the 26 object classes of the file names (``<class>.<instance>.<scan>.bin``).
SYDNEY_CLASSES = ("4wd", "bench", "bicycle", "biker", "building", "bus", "car", "cyclist", "excavator",
                  "pedestrian", "pillar", "pole", "post", "scooter", "ticket_machine", "traffic_lights",
                  "traffic_sign", "trailer", "trash", "tree", "truck", "trunk", "umbrella", "ute", "van",
                  "vegetation")
# The record of one point in Sydney's .bin files (the dataset's own Python reader).
SYDNEY_POINT = np.dtype([("t", "<i8"), ("intensity", "u1"), ("id", "u1"), ("x", "<f4"), ("y", "<f4"),
                         ("z", "<f4"), ("azimuth", "<f4"), ("range", "<f4"), ("pid", "<i4")])


def voxel_indices(points, volume_size, voxel_size):
    """The (D, H, W) voxel of every point, or -1 for points outside the grid.

    Args:
        points: (N, 3) x, y, z.
        volume_size: (D, H, W).
        voxel_size: edge of a voxel in the points' units.

    Returns:
        int64 (N, 3) indices (d, h, w), rows of -1 outside.
    """
    points = np.asarray(points, np.float64)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2 if len(points) else np.zeros(3)
    zyx = (points - centre)[:, ::-1] / voxel_size + np.array(volume_size) / 2
    index = np.floor(zyx).astype(np.int64)
    inside = ((index >= 0) & (index < np.array(volume_size))).all(axis=1)
    index[~inside] = -1
    return index


def voxelize(points, labels, volume_size, voxel_size, ignore_index=255):
    """A labelled occupancy grid of a point cloud (module doc).

    Returns:
        (image float32 (D, H, W, 1): 255 occupied / 0 empty, label int32 (D, H, W): majority label of the points,
        ``ignore_index`` where empty, index int64 (N, 3) of every point's voxel (-1 outside)).
    """
    index = voxel_indices(points, volume_size, voxel_size)
    inside = index[:, 0] >= 0
    flat = np.ravel_multi_index(index[inside].T, volume_size)
    labels = np.asarray(labels, np.int64)[inside]
    num_labels = int(labels.max()) + 1 if labels.size else 1
    votes = np.zeros((int(np.prod(volume_size)), num_labels), np.int32)
    np.add.at(votes, (flat, labels), 1)
    occupied = votes.sum(axis=1) > 0
    label = np.where(occupied, votes.argmax(axis=1), ignore_index).reshape(volume_size).astype(np.int32)
    image = (occupied.reshape(volume_size) * 255.0).astype(np.float32)[..., None]
    return image, label, index


def point_labels(grid, index, ignore_index=255):
    """Maps a (D, H, W) grid of labels (a prediction) back to the points: ``grid`` at each point's voxel,
    ``ignore_index`` for points outside the grid (``index`` from `voxelize`)."""
    out = np.full(len(index), ignore_index, np.int32)
    inside = index[:, 0] >= 0
    out[inside] = grid[tuple(index[inside].T)]
    return out


class PointCloudFormat(Format):
    """The base of the point-cloud layouts: ``read_points(ref) -> (points (N, 3), labels (N,))``."""

    volumetric = True
    points = True
    kind = "3D"

    def channels(self, cfg):
        return 1

    def read_image(self, ref, cfg):
        return self.read_pair(cfg, ref, ref)[0]

    def read_label(self, ref, cfg):
        return self.read_points(ref, cfg)[1]

    def read_pair(self, cfg, image_ref, label_ref):
        points, labels = self.read_points(label_ref, cfg)
        check_labels(labels, cfg["num_classes"], cfg["ignore_index"], label_ref)
        image, label, _ = voxelize(points, labels, cfg["volume_size"], cfg["voxel_size"], cfg["ignore_index"])
        return image, label

    def load(self, cfg, image_ref, label_ref):
        return self.read_pair(cfg, image_ref, label_ref)


class ShapeNetPartFormat(PointCloudFormat):
    """ShapeNet part segmentation, the PointNet++ release (shapenetcore_partanno_segmentation_benchmark_v0_normal):
    ``<synset>/<model>.txt`` rows ``x y z nx ny nz part`` (part 0-49 over the 16 categories),
    ``synsetoffset2category.txt``, ``train_test_split/shuffled_{train,val,test}_file_list.json``
    (``"shape_data/<synset>/<model>"`` entries); or the original release (shapenetcore_partanno_segmentation_
    benchmark_v0): ``<synset>/points/<model>.pts`` (x y z) with ``<synset>/points_label/<model>.seg`` (the
    category's parts 1..k, made global in the same category order). 50 part classes. Splits: train, val, test, or
    index ranges."""

    name = "shapenet_part"
    num_classes = 50

    def default_split(self, split):
        return split

    def class_names(self, cfg):
        return tuple(f"{category.lower()}_{k}" for category, _, parts in SHAPENET_PARTS for k in range(parts))

    def palette(self, cfg):
        return voc_palette(50)

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        if spec in ("train", "val", "test"):
            listing = root / "train_test_split" / f"shuffled_{spec}_file_list.json"
            try:
                entries = json.loads(listing.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"{listing}: cannot read the split ({exc}); data.root must be the "
                                f"shapenetcore_partanno_segmentation_benchmark_v0_normal folder") from None
            pairs = []
            for entry in entries:
                synset, model = entry.split("/")[-2:]
                pair = self._pair(root, synset, model)
                if pair:
                    pairs.append(pair)
                else:
                    report(problems, f"{listing}: lists {entry} but neither {root / synset / model}.txt nor "
                                     f"{root / synset / 'points' / model}.pts is there; add the file")
            return pairs
        synsets = {synset for _, synset, _ in SHAPENET_PARTS}
        found = sorted((p for p in list(root.glob("*/*.txt")) + list(root.glob("*/points/*.pts"))
                        if (p.parent.name if p.suffix == ".txt" else p.parents[1].name) in synsets), key=natural_key)
        pairs = []
        for path in found:
            synset = path.parent.name if path.suffix == ".txt" else path.parents[1].name
            pair = self._pair(root, synset, path.stem)
            if pair:
                pairs.append(pair)
            else:
                report(problems, f"{path}: no part labels for these points; expected "
                                 f"{root / synset / 'points_label' / path.stem}.seg")
        return pick_range(pairs, spec, split, root)

    @staticmethod
    def _pair(root, synset, model):
        """``(points, labels)`` files of a shape in either release, or None."""
        txt = root / synset / f"{model}.txt"
        if txt.is_file():
            return str(txt), str(txt)
        pts, seg = root / synset / "points" / f"{model}.pts", root / synset / "points_label" / f"{model}.seg"
        return (str(pts), str(seg)) if pts.is_file() and seg.is_file() else None

    def read_pair(self, cfg, image_ref, label_ref):
        if image_ref == label_ref:
            return super().read_pair(cfg, image_ref, label_ref)
        points, labels = _read_pts_seg(image_ref, label_ref)
        check_labels(labels, cfg["num_classes"], cfg["ignore_index"], label_ref)
        image, label, _ = voxelize(points, labels, cfg["volume_size"], cfg["voxel_size"], cfg["ignore_index"])
        return image, label

    def read_points(self, path, cfg):
        try:
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read points ({exc}); expected rows 'x y z nx ny nz part'") from None
        if rows.shape[1] != 7:
            raise DataError(f"{path}: rows have {rows.shape[1]} numbers, expected 7 (x y z nx ny nz part)")
        return rows[:, :3], rows[:, 6].astype(np.int32)


class SydneyUrbanFormat(PointCloudFormat):
    """Sydney Urban Objects: ``objects/<class>.<instance>.<scan>.bin`` (packed point records: t int64, intensity,
    id uint8, x y z azimuth range float32, pid int32; metres) and ``folds/fold{0-3}.txt`` (file names). Every point
    of a file has the file's class. Splits: a fold list (``folds/fold0.txt``, or fold0 ... fold3), or index
    ranges."""

    name = "sydney_urban"
    num_classes = len(SYDNEY_CLASSES)

    def default_split(self, split):
        return split if split.startswith("fold") else None

    def class_names(self, cfg):
        return SYDNEY_CLASSES

    def palette(self, cfg):
        return voc_palette(len(SYDNEY_CLASSES))

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        objects = root / "objects"
        if not objects.is_dir():
            raise DataError(f"{objects}: folder not found; data.root must be the sydney-urban-objects-dataset folder")
        if isinstance(spec, str) and (spec.startswith("fold") or spec.endswith(".txt")):
            listing = spec if spec.endswith(".txt") else f"folds/{spec}.txt"
            pairs = []
            for name in read_list(root / listing, split):
                path = objects / name
                if path.is_file():
                    pairs.append((str(path), str(path)))
                else:
                    report(problems, f"{root / listing}: lists {name} but {path} is missing")
            return pairs
        files = sorted(objects.glob("*.bin"), key=natural_key)
        return pick_range([(str(p), str(p)) for p in files], spec, split, objects)

    def read_points(self, path, cfg):
        name = Path(path).name.split(".")[0]
        if name not in SYDNEY_CLASSES:
            raise DataError(f"{path}: class '{name}' of the file name is not a Sydney Urban Objects class")
        data = _read_bin(path)
        points = np.stack([data["x"], data["y"], data["z"]], axis=-1).astype(np.float64)
        return points, np.full(len(points), SYDNEY_CLASSES.index(name), np.int32)


def _read_pts_seg(pts, seg):
    """Points of the original ShapeNet part release and their global part ids (category offset + part - 1)."""
    synset = Path(pts).parents[1].name
    offsets, start = {}, 0
    for _, sid, parts in SHAPENET_PARTS:
        offsets[sid] = (start, parts)
        start += parts
    try:
        points = np.loadtxt(pts, dtype=np.float64, ndmin=2)
        parts = np.loadtxt(seg, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as exc:
        raise DataError(f"{pts}: cannot read points or their labels ({exc}); expected 'x y z' rows and one part "
                        f"number per line in {seg}") from None
    if points.shape[1] != 3 or len(parts) != len(points):
        raise DataError(f"{seg}: {len(parts)} part labels for {len(points)} points of {pts} (rows of 'x y z'); "
                        f"the files must match line for line")
    offset, count = offsets[synset]
    if parts.min() < 1 or parts.max() > count:
        raise DataError(f"{seg}: part numbers {parts.min()}-{parts.max()} outside 1-{count} of this category")
    return points, (parts - 1 + offset).astype(np.int32)


def _read_bin(path):
    raw = Path(path).read_bytes()
    if len(raw) % SYDNEY_POINT.itemsize:
        raise DataError(f"{path}: {len(raw)} bytes is not a whole number of {SYDNEY_POINT.itemsize}-byte point "
                        f"records; the file is truncated or not a Sydney .bin")
    return np.frombuffer(raw, SYDNEY_POINT)


FORMATS_3D = (ShapeNetPartFormat(), SydneyUrbanFormat())
