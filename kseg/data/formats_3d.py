"""Point-cloud layouts voxelised for the 3D models: ShapeNet part segmentation, Sydney Urban Objects and ScanNet v2
scenes (PLY meshes, read by `read_ply`).

A cloud becomes a labelled occupancy grid of ``data.volume_size`` (D, H, W) voxels of ``data.voxel_size`` (the
cloud's units: metres for Sydney, the unit-sphere normalised coordinates of ShapeNet): the cloud's bounding-box
centre sits at the grid centre, z runs along D, y along H, x along W. The image is one channel, 1 where a voxel
holds a point (255, on the [0, 255] image scale) and 0 elsewhere; a voxel's label is the most frequent label of
its points (points with the ignore label vote too: a voxel of mostly unlabelled points is ignored), and empty
voxels are ``data.ignore_index`` (the loss and the metrics see occupied voxels only).
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


# ScanNet v2 (Dai et al., "ScanNet: Richly-annotated 3D Reconstructions of Indoor Scenes", CVPR 2017, arXiv
# 1702.04405): the 20 classes of the 3D semantic label benchmark and their NYU40 ids (BenchmarkScripts/
# 3d_evaluation/evaluate_semantic_label.py); every other id is ignored.
SCANNET20_CLASSES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                     "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
                     "bathtub", "otherfurniture")
SCANNET20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)

# PLY property types (Turk, "The PLY Polygon File Format", 1994) as numpy types.
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


def read_ply(path, element="vertex"):
    """One element of a PLY file (ASCII or binary, either byte order) as a numpy structured array.

    The elements stored before ``element`` are skipped; in binary files they must have fixed-size properties
    (list properties, such as faces, may only follow it, as in every PLY written by a mesh or scanning tool).

    Args:
        path: the ``.ply`` file.
        element: the element to read (``vertex``: one record per point, fields named as the properties, e.g.
            ``x``, ``y``, ``z``, ``red``, ``label``).

    Returns:
        numpy structured array (N,).

    Example:
        >>> cloud = read_ply("scene0000_00_vh_clean_2.labels.ply")  # doctest: +SKIP
        >>> points = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=-1); labels = cloud["label"]
    """
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise DataError(f"{path}: not a PLY file (no 'ply' magic line or no end_header); replace the file")
    body = data.index(b"\n", end) + 1
    elements, fmt = [], None  # [(name, count, [(property, numpy type) or (property, None) for lists])]
    try:
        for line in data[:end].decode("ascii").splitlines():
            words = line.split()
            if not words:
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property":
                is_list = words[1] == "list"
                elements[-1][2].append((words[-1], None if is_list else _PLY_TYPES[words[1]]))
    except (UnicodeDecodeError, ValueError, IndexError, KeyError) as exc:
        raise DataError(f"{path}: malformed PLY header ({type(exc).__name__}: {exc}); replace the file") from None
    if fmt not in _PLY_FORMATS:
        raise DataError(f"{path}: PLY format '{fmt}' is not ascii, binary_little_endian or binary_big_endian")
    names = [name for name, _, _ in elements]
    if element not in names:
        raise DataError(f"{path}: no '{element}' element in the PLY header (elements: {', '.join(names)})")
    before = elements[:names.index(element)]
    _, count, props = elements[names.index(element)]
    if any(t is None for _, t in props) or any(t is None for _, _, ps in before for _, t in ps):
        raise DataError(f"{path}: list properties in or before the '{element}' element are not supported")
    order = _PLY_FORMATS[fmt]
    dtype = np.dtype([(name, (order or "<") + t) for name, t in props])
    if order is None:  # ASCII: one line per element record
        lines = data[body:].decode("ascii", "replace").splitlines()
        skip = sum(n for _, n, _ in before)
        rows = lines[skip:skip + count]
        try:
            values = np.array(" ".join(rows).split(), np.float64).reshape(count, len(props))
        except ValueError:
            raise DataError(f"{path}: expected {count} '{element}' lines of {len(props)} numbers after the header; "
                            f"the file is truncated or malformed") from None
        out = np.empty(count, dtype)
        for k, (name, _) in enumerate(props):
            out[name] = values[:, k]
        return out
    offset = body + sum(n * np.dtype([(p, order + t) for p, t in ps]).itemsize for _, n, ps in before)
    if len(data) < offset + count * dtype.itemsize:
        raise DataError(f"{path}: {len(data) - offset} bytes for {count} '{element}' records of {dtype.itemsize} "
                        f"bytes; the file is truncated")
    return np.frombuffer(data, dtype, count, offset).copy()  # writable, like the ASCII result


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
    # votes of the (voxel, label) pairs that occur: a dense (voxels, labels) table would not fit a scene's grid
    pairs, votes = np.unique(flat * num_labels + labels, return_counts=True)
    voxel, label_of = np.divmod(pairs, num_labels)
    order = np.lexsort((-votes, voxel))  # per voxel, most votes first; ties: the smaller label (stable sort)
    voxel, label_of = voxel[order], label_of[order]
    first = np.r_[True, voxel[1:] != voxel[:-1]]
    label = np.full(int(np.prod(volume_size)), ignore_index, np.int32)
    label[voxel[first]] = label_of[first]
    occupied = np.zeros(int(np.prod(volume_size)), bool)
    occupied[voxel] = True
    image = (occupied.reshape(volume_size) * 255.0).astype(np.float32)[..., None]
    return image, label.reshape(volume_size), index


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


class ScanNet3dFormat(PointCloudFormat):
    """ScanNet v2 scenes in 3D: ``scans/<scene>/<scene>_vh_clean_2.labels.ply`` (binary PLY mesh; vertex x y z in
    metres, red green blue alpha, ``label`` = NYU40 id, 0 unlabelled). The 20 benchmark classes; other ids are
    ignore. Splits: train, val, test (``scannetv2_{train,val,test}.txt`` scene lists in data.root, the benchmark's
    files), a ``.txt`` scene list, or index ranges over the scenes."""

    name = "scannet3d"
    num_classes = len(SCANNET20_CLASSES)

    def default_split(self, split):
        return split

    def class_names(self, cfg):
        return SCANNET20_CLASSES

    def palette(self, cfg):
        from kseg.data.formats_rgbd import SCANNET_NYU40_PALETTE

        return tuple(SCANNET_NYU40_PALETTE[i - 1] for i in SCANNET20_NYU40_IDS)

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        scans = root / "scans" if (root / "scans").is_dir() else root
        if isinstance(spec, str) and (spec in ("train", "val", "test") or spec.endswith(".txt")):
            listing = root / (f"scannetv2_{spec}.txt" if spec in ("train", "val", "test") else spec)
            pairs = []
            for scene in read_list(listing, split):
                ply = scans / scene / f"{scene}_vh_clean_2.labels.ply"
                if ply.is_file():
                    pairs.append((str(ply), str(ply)))
                else:
                    report(problems, f"{listing}: lists {scene} but {ply} is missing; add the scene's labels.ply")
            return pairs
        files = sorted(scans.glob("*/*_vh_clean_2.labels.ply"), key=natural_key)
        return pick_range([(str(p), str(p)) for p in files], spec, split, scans)

    def read_points(self, path, cfg):
        vertices = read_ply(path)
        missing = [k for k in ("x", "y", "z", "label") if k not in (vertices.dtype.names or ())]
        if missing:
            raise DataError(f"{path}: vertices have no {', '.join(missing)} property; use the scene's "
                            f"*_vh_clean_2.labels.ply")
        points = np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=-1).astype(np.float64)
        lut = np.full(max(int(vertices["label"].max(initial=0)), 40) + 1, cfg["ignore_index"], np.int32)
        lut[list(SCANNET20_NYU40_IDS)] = np.arange(len(SCANNET20_NYU40_IDS))
        return points, lut[vertices["label"].astype(np.int64)]


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


FORMATS_3D = (ShapeNetPartFormat(), SydneyUrbanFormat(), ScanNet3dFormat())
