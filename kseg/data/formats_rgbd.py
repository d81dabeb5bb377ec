"""RGB-D (2.5D) layouts: NYU-Depth v2, SUN RGB-D, ScanNet 2D frames, SUN3D, UW RGB-D Object, Stanford 2D-3D-S.

Every format reads colour, depth (converted to metres, 0 = missing) and, where the dataset has them, the camera
intrinsics; `kseg.data.depth` turns depth into the input channels that ``data.depth`` asks for (none, raw,
hha). Depth maps of another size than the colour image are resized to it (nearest neighbour).
"""

import functools
import json
from pathlib import Path

import cv2
import numpy as np

from kseg.data.depth import default_intrinsics, depth_channels_image
from kseg.data.formats import Format, join_ref, pick_range, read_list, report, split_ref, voc_palette
from kseg.data.io import natural_key, read_image, read_mask
from kseg.errors import DataError

# NYU-Depth v2 40 classes (Gupta et al., "Perceptual Organization and Recognition of Indoor Scenes from RGB-D
# Images", CVPR 2013): the 894 labels of the .mat map to them through classMapping40.mat (mapClass).
NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes", "ceiling",
    "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person",
    "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop")
# The colours of the NYU40 ids 1-40 in ScanNet's benchmark scripts (BenchmarkScripts/util.py,
# create_color_palette, whose entry 0 is the black of unlabelled).
SCANNET_NYU40_PALETTE = (
    (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34), (140, 86, 75),
    (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189), (196, 156, 148), (23, 190, 207),
    (178, 76, 76), (247, 182, 210), (66, 188, 102), (219, 219, 141), (140, 57, 197), (202, 185, 52),
    (51, 176, 203), (200, 54, 131), (92, 193, 61), (78, 71, 183), (172, 114, 82), (255, 127, 14), (91, 163, 138),
    (153, 98, 156), (140, 153, 101), (158, 218, 229), (100, 125, 154), (178, 127, 135), (120, 185, 128),
    (146, 111, 194), (44, 160, 44), (112, 128, 144), (96, 207, 209), (227, 119, 194), (213, 92, 176),
    (94, 106, 211), (82, 84, 163), (100, 85, 144))
# NYU-Depth v2 13 classes (Couprie et al., "Indoor Semantic Segmentation using depth information", ICLR 2013),
# and the class (1-13) of each of the 40 classes, as in the SceneNet / nyudv2_class_mapping tables.
NYU13_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table",
                 "tv", "wall", "window")
NYU40_TO_13 = (12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7,
               6, 7, 7, 7, 7, 7, 7, 6, 7)
# SUN RGB-D 37 classes (Song et al., "SUN RGB-D: A RGB-D Scene Understanding Benchmark Suite", CVPR 2015),
# the toolbox's seg37list names.
SUNRGBD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor_mat", "clothes", "ceiling", "books",
    "fridge", "tv", "paper", "towel", "shower_curtain", "box", "whiteboard", "person", "night_stand", "toilet",
    "sink", "lamp", "bathtub", "bag")
# Stanford 2D-3D-S (Armeni et al., "Joint 2D-3D-Semantic Data for Indoor Scene Understanding", arXiv 1702.01105).
STANFORD2D3D_CLASSES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
                        "bookcase", "board", "clutter")
# UW RGB-D Object (Lai et al., "A Large-Scale Hierarchical Multi-View RGB-D Object Dataset", ICRA 2011): 51
# categories; class 0 is the background around the object.
UWRGBD_CATEGORIES = (
    "apple", "ball", "banana", "bell_pepper", "binder", "bowl", "calculator", "camera", "cap", "cell_phone",
    "cereal_box", "coffee_mug", "comb", "dry_battery", "flashlight", "food_bag", "food_box", "food_can", "food_cup",
    "food_jar", "garlic", "glue_stick", "greens", "hand_towel", "instant_noodles", "keyboard", "kleenex", "lemon",
    "lightbulb", "lime", "marker", "mushroom", "notebook", "onion", "orange", "peach", "pear", "pitcher", "plate",
    "pliers", "potato", "rubber_eraser", "scissors", "shampoo", "soda_can", "sponge", "stapler", "tomato",
    "toothbrush", "toothpaste", "water_bottle")


def _norm(name):
    return str(name).strip().lower().replace(" ", "_")


def read_depth_png(path, scale, shifted=False, missing=None):
    """A 16-bit depth PNG in metres (0 = missing).

    Args:
        path: the PNG.
        scale: metres per unit (ScanNet, UW RGB-D: 0.001; Stanford 2D-3D-S: 1 / 512).
        shifted: SUN RGB-D / SUN3D store millimetres rotated left by 3 bits (the toolbox's
            ``bitor(bitshift(d, -3), bitshift(d, 16 - 3))``).
        missing: a raw value meaning "no measurement" besides 0 (Stanford 2D-3D-S: 65535).
    """
    raw = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
    if raw is None:
        raise DataError(f"{path}: cannot read depth image (missing, corrupt or not a PNG); replace or remove it")
    if raw.dtype != np.uint16:
        raise DataError(f"{path}: depth must be a 16-bit PNG, got {raw.dtype}; use the dataset's depth files")
    valid = raw != missing if missing is not None else np.ones(raw.shape, bool)
    if shifted:
        raw = (raw >> 3) | (raw << 13)
    return np.where(valid, raw.astype(np.float32) * scale, 0.0).astype(np.float32)


def read_intrinsics(path, shape):
    """A 3x3 (or 4x4) camera matrix from a whitespace text file, or the ``camera_k_matrix`` of a JSON pose file;
    the default (Kinect) one when the file is missing."""
    path = Path(path)
    if path.suffix == ".json" and path.is_file():
        try:
            return np.array(json.loads(path.read_text())["camera_k_matrix"], np.float64).reshape(3, 3)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: cannot read camera_k_matrix ({exc}); fix or remove the file") from None
    if path.is_file():
        values = np.array(path.read_text().split(), np.float64)
        if values.size in (9, 16):
            n = int(np.sqrt(values.size))
            return values.reshape(n, n)[:3, :3]
        raise DataError(f"{path}: expected a 3x3 or 4x4 camera matrix (9 or 16 numbers), got {values.size}")
    return default_intrinsics(*shape)


def _find_up(path, name):
    """``name`` in the closest folder above ``path`` that has it (a dataset's shared metadata file)."""
    for folder in Path(path).parents:
        if (folder / name).is_file():
            return str(folder / name)
    return str(Path(path).parent / name)  # not found: the reader's error names it


class RgbdFormat(Format):
    """The base of the RGB-D layouts: an image reference is ``rgb::depth[::intrinsics]``."""

    kind = "RGB-D"
    rgbd = True
    depth_scale = 0.001  # metres per unit of the depth PNGs
    depth_shifted = False
    depth_missing = None

    def channels(self, cfg):
        from kseg.data.config import depth_channels

        return depth_channels(cfg["depth"])

    def read_rgb_depth(self, ref):
        """``(rgb uint8 (H, W, 3), depth float32 metres (H, W), intrinsics 3x3)`` of an image reference."""
        rgb_path, depth_path, *rest = split_ref(ref)
        rgb = read_image(rgb_path)
        depth = read_depth_png(depth_path, self.depth_scale, self.depth_shifted, self.depth_missing)
        intrinsics = read_intrinsics(rest[0], depth.shape) if rest else default_intrinsics(*depth.shape)
        return rgb, depth, intrinsics

    def read_image(self, ref, cfg):
        rgb, depth, intrinsics = self.read_rgb_depth(ref)
        if depth.shape != rgb.shape[:2]:
            intrinsics = intrinsics.copy()
            intrinsics[0] *= rgb.shape[1] / depth.shape[1]
            intrinsics[1] *= rgb.shape[0] / depth.shape[0]
            depth = cv2.resize(depth, rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        return depth_channels_image(rgb, depth, cfg["depth"], cfg["max_depth"], intrinsics)

    def _select(self, cfg, pairs, spec, split, where):
        """A split of listed pairs: an index range, or a list file of keys (``key_of(pair)``)."""
        if isinstance(spec, str) and spec.endswith(".txt"):
            wanted = read_list(Path(cfg["root"]) / spec, split)
            by_key = {}
            for pair in pairs:
                by_key.setdefault(self.key_of(pair, cfg), []).append(pair)
            missing = [k for k in wanted if k not in by_key]
            if missing:
                raise DataError(f"{Path(cfg['root']) / spec}: lists {missing[:3]} but {where} has no such "
                                f"{self.key_name}; fix the list or data.root")
            return [p for k in wanted for p in by_key[k]]
        return pick_range(pairs, spec, split, where)

    key_name = "frame"

    def key_of(self, pair, cfg):
        return Path(split_ref(pair[0])[0]).stem


class NyuDepthV2Format(RgbdFormat):
    """NYU-Depth v2 labelled set (Silberman et al., ECCV 2012): ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5:
    images, depths in metres, 894-label maps, 1449 frames), ``splits.mat`` (trainNdxs / testNdxs, 795 / 654) and
    ``classMapping40.mat`` (mapClass, 894 -> 40, Gupta et al.) in data.root. data.num_classes 40 (default) or 13
    (Couprie et al., through the 40 classes); label 0 (unlabelled) is ignore. Splits: train, test (val = test) or
    index ranges."""

    name = "nyudv2"
    class_counts = (40, 13)
    mat_name = "nyu_depth_v2_labeled.mat"

    def default_split(self, split):
        return split

    def class_names(self, cfg):
        return NYU40_CLASSES if cfg["num_classes"] == 40 else NYU13_CLASSES

    def palette(self, cfg):
        return voc_palette(cfg["num_classes"])

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        mat = root / self.mat_name
        with _h5(mat) as f:
            total = f["images"].shape[0]
        refs = [(join_ref(mat, i), join_ref(mat, i)) for i in range(total)]
        if spec in ("train", "test", "val"):
            import scipy.io

            splits = root / "splits.mat"
            try:
                key = "trainNdxs" if spec == "train" else "testNdxs"
                indices = np.ravel(scipy.io.loadmat(splits)[key]).astype(int) - 1  # MATLAB counts from 1
            except (OSError, ValueError, KeyError) as exc:
                raise DataError(f"{splits}: cannot read the NYU split ({exc}); put the dataset's splits.mat in "
                                f"data.root or give index ranges in data.splits") from None
            return [refs[i] for i in indices if 0 <= i < total]
        return pick_range(refs, spec, split, mat)

    def read_rgb_depth(self, ref):
        path, index = split_ref(ref)
        i = int(index)
        with _h5(path) as f:
            # MATLAB writes column-major: (N, 3, W, H) and (N, W, H) in HDF5
            rgb = np.ascontiguousarray(f["images"][i].transpose(2, 1, 0)).astype(np.uint8)
            depth = np.ascontiguousarray(f["depths"][i].T).astype(np.float32)
        return rgb, depth, default_intrinsics(*depth.shape)

    def read_label(self, ref, cfg):
        path, index = split_ref(ref)
        with _h5(path) as f:
            raw = np.ascontiguousarray(f["labels"][int(index)].T).astype(np.int64)
        lut = np.full(895, cfg["ignore_index"], np.int32)
        lut[1:] = _nyu_mapping(str(Path(path).parent / "classMapping40.mat")) - 1
        if cfg["num_classes"] == 13:
            to13 = np.array(NYU40_TO_13, np.int32) - 1
            lut[1:] = to13[lut[1:]]
        if raw.max() >= 895:
            raise DataError(f"{path}: frame {index} has label {raw.max()}, outside the 894 NYU labels")
        return lut[raw]


def _h5(path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot open as MATLAB v7.3 / HDF5 ({exc}); download nyu_depth_v2_labeled.mat "
                        f"again") from None


@functools.lru_cache(maxsize=2)
def _nyu_mapping(path):
    import scipy.io

    try:
        mapping = np.ravel(scipy.io.loadmat(path)["mapClass"]).astype(np.int32)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read the 894 -> 40 class mapping ({exc}); put Gupta et al.'s "
                        f"classMapping40.mat (variable mapClass) in data.root") from None
    if mapping.size != 894 or mapping.min() < 1 or mapping.max() > 40:
        raise DataError(f"{path}: mapClass must hold 894 values in 1-40, got {mapping.size} in "
                        f"{mapping.min()}-{mapping.max()}")
    return mapping


class SunRgbdFormat(RgbdFormat):
    """SUN RGB-D as the authors distribute it: ``SUNRGBD/`` (SUNRGBD.zip: frame folders such as
    ``SUNRGBD/kv1/NYUdata/NYU0001/`` with ``image/*.jpg``, ``depth_bfx/*.png`` (else ``depth/``; 16-bit,
    millimetres rotated by 3 bits), ``intrinsics.txt``, ``seg.mat``) beside ``SUNRGBDtoolbox/`` (SUNRGBDtoolbox.zip).
    The 37-class labels are the toolbox's ``Metadata/SUNRGBD2Dseg.mat`` (MATLAB v7.3; ``seglabel`` holds the seg37
    ids 1-37 per frame, 0 unlabelled -> ignore) in the frame order of ``Metadata/SUNRGBDMeta.mat`` (sequenceName,
    rgbname, depthname); splits train / test (val = test) from ``traintestSUNRGBD/allsplit.mat`` (alltrain 5285,
    alltest 5050 frames), a ``.txt`` list of frame folders relative to data.root, or index ranges. Root: the folder
    holding SUNRGBD/ and SUNRGBDtoolbox/ (or SUNRGBD/ itself). Without the toolbox, labels come from each frame's
    ``seg.mat`` object names matched to the seg37 names (other names ignored)."""

    name = "sunrgbd"
    num_classes = 37
    depth_shifted = True
    key_name = "frame folder"

    def class_names(self, cfg):
        return SUNRGBD_CLASSES

    def palette(self, cfg):
        return voc_palette(37)

    def key_of(self, pair, cfg):
        return str(Path(split_ref(pair[0])[0]).parents[1].relative_to(cfg["root"]))

    def default_split(self, split):
        return split if split in ("train", "val", "test") else None

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        toolbox = _sunrgbd_toolbox(root)
        if toolbox is not None:
            pairs, sequences = self._toolbox_pairs(root, toolbox, problems)
        else:
            pairs, sequences = self._frame_pairs(root, problems), None
        if spec in ("train", "test", "val"):
            if toolbox is None:
                raise DataError(f"{root}: data.splits.{split} '{spec}' needs the toolbox's "
                                f"traintestSUNRGBD/allsplit.mat (SUNRGBDtoolbox/ beside SUNRGBD/); or give .txt "
                                f"lists of frame folders or index ranges")
            wanted = _sunrgbd_split(str(toolbox / "traintestSUNRGBD" / "allsplit.mat"),
                                    "alltrain" if spec == "train" else "alltest")
            return [pair for pair, sequence in zip(pairs, sequences) if sequence in wanted]
        return self._select(cfg, pairs, spec, split, root)

    @staticmethod
    def _toolbox_pairs(root, toolbox, problems):
        """The frames of SUNRGBDMeta.mat with their SUNRGBD2Dseg.mat labels, and their sequence names."""
        meta_path = toolbox / "Metadata" / "SUNRGBDMeta.mat"
        frames = _sunrgbd_frames(str(meta_path))
        base = root if (root / "SUNRGBD").is_dir() else root.parent  # sequence names start with SUNRGBD/
        seg = toolbox / "Metadata" / "SUNRGBD2Dseg.mat"
        pairs, sequences = [], []
        for i, (sequence, rgb_name, depth_name) in enumerate(frames):
            frame = base / sequence
            rgb = frame / "image" / rgb_name
            depth = frame / "depth_bfx" / depth_name
            depth = depth if depth.is_file() else frame / "depth" / depth_name
            if rgb.is_file() and depth.is_file():
                pairs.append((join_ref(rgb, depth, frame / "intrinsics.txt"), join_ref(seg, i)))
                sequences.append(sequence)
            else:
                report(problems, f"{meta_path}: frame {i + 1} is {frame} but {rgb if not rgb.is_file() else depth} "
                                 f"is missing; unzip SUNRGBD.zip beside SUNRGBDtoolbox/")
        return pairs, sequences

    @staticmethod
    def _frame_pairs(root, problems):
        pairs = []
        for seg in sorted(root.rglob("seg.mat"), key=natural_key):
            frame = seg.parent
            rgb = sorted((frame / "image").glob("*.jpg")) + sorted((frame / "image").glob("*.png"))
            depth_dir = frame / "depth_bfx" if (frame / "depth_bfx").is_dir() else frame / "depth"
            depth = sorted(depth_dir.glob("*.png"))
            if not rgb or not depth:
                report(problems, f"{frame}: frame folder without {'image/*.jpg' if not rgb else 'depth/*.png'}; "
                                 f"add it or remove the folder")
                continue
            pairs.append((join_ref(rgb[0], depth[0], frame / "intrinsics.txt"), str(seg)))
        if not pairs:
            raise DataError(f"{root}: no SUN RGB-D frame folder (with seg.mat) and no SUNRGBDtoolbox/ found; point "
                            f"data.root at the folder holding SUNRGBD/ and SUNRGBDtoolbox/")
        return pairs

    def read_label(self, ref, cfg):
        if ref.endswith("seg.mat"):
            return self._read_seg_mat(ref, cfg)
        path, index = split_ref(ref)
        with _h5(path) as f:
            try:
                refs = np.ravel(f["SUNRGBD2Dseg"]["seglabel"][()])
                raw = np.ascontiguousarray(np.asarray(f[refs[int(index)]]).T).astype(np.int64)  # column-major
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise DataError(f"{path}: no SUNRGBD2Dseg.seglabel for frame {int(index) + 1} ({exc}); use the "
                                f"toolbox's Metadata/SUNRGBD2Dseg.mat") from None
        if raw.min() < 0 or raw.max() > 37:
            raise DataError(f"{path}: frame {int(index) + 1} has seglabel values {raw.min()}-{raw.max()}, outside "
                            f"0-37 (the seg37 ids)")
        return np.where(raw == 0, cfg["ignore_index"], raw - 1).astype(np.int32)

    @staticmethod
    def _read_seg_mat(path, cfg):
        import scipy.io

        try:
            mat = scipy.io.loadmat(path, squeeze_me=True)
            seg = np.asarray(mat["seglabel"], np.int64)
            names = np.atleast_1d(mat["names"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: cannot read SUN RGB-D labels, expected seg.mat with seglabel and names "
                            f"({exc})") from None
        classes = {n: i for i, n in enumerate(SUNRGBD_CLASSES)}
        lut = np.full(len(names) + 1, cfg["ignore_index"], np.int32)
        for i, name in enumerate(names, start=1):
            lut[i] = classes.get(_norm(name), cfg["ignore_index"])
        if seg.min() < 0 or seg.max() > len(names):
            raise DataError(f"{path}: seglabel has values up to {seg.max()} but names lists {len(names)} objects")
        return lut[seg]


def _sunrgbd_toolbox(root):
    """The SUNRGBDtoolbox folder beside or inside data.root (its zip may nest it once), or None."""
    for candidate in (root / "SUNRGBDtoolbox", root.parent / "SUNRGBDtoolbox"):
        for folder in (candidate, candidate / "SUNRGBDtoolbox"):
            if (folder / "Metadata" / "SUNRGBD2Dseg.mat").is_file():
                return folder
    return None


@functools.lru_cache(maxsize=2)
def _sunrgbd_frames(path):
    """``(sequenceName, rgbname, depthname)`` of every frame of SUNRGBDMeta.mat (cached: the file is large)."""
    import scipy.io

    try:
        meta = np.atleast_1d(scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["SUNRGBDMeta"])
        return tuple((str(m.sequenceName).strip("/"), str(m.rgbname), str(m.depthname)) for m in meta)
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise DataError(f"{path}: cannot read SUNRGBDMeta (sequenceName, rgbname, depthname) ({exc}); unzip "
                        f"SUNRGBDtoolbox.zip again") from None


@functools.lru_cache(maxsize=4)
def _sunrgbd_split(path, key):
    """The sequence names (``SUNRGBD/kv1/...``) of allsplit.mat's alltrain or alltest, whose entries are absolute
    paths on the authors' server (``/n/fs/sun3d/data/SUNRGBD/...``)."""
    import scipy.io

    try:
        entries = np.atleast_1d(scipy.io.loadmat(path, squeeze_me=True)[key])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read {key} ({exc}); unzip SUNRGBDtoolbox.zip again") from None
    names = set()
    for entry in entries:
        entry = str(entry).rstrip("/")
        at = entry.find("SUNRGBD/")
        names.add(entry[at:] if at >= 0 else entry)
    return frozenset(names)


class ScanNetFormat(RgbdFormat):
    """ScanNet v2 2D frames (the SensReader / 2d-label-filt export): ``scans/<scene>/color/<n>.jpg``,
    ``depth/<n>.png`` (16-bit millimetres), ``label-filt/<n>.png`` (ScanNet label ids),
    ``intrinsic/intrinsic_depth.txt``; ``scannetv2-labels.combined.tsv`` in data.root maps the ids to NYU40
    (nyu40id; 0 -> ignore). Splits: train, val (``scannetv2_{train,val}.txt`` scene lists), a ``.txt`` scene list,
    or index ranges over all frames."""

    name = "scannet"
    num_classes = 40
    key_name = "scene"

    def default_split(self, split):
        return split

    def class_names(self, cfg):
        return NYU40_CLASSES

    def palette(self, cfg):
        return SCANNET_NYU40_PALETTE

    def key_of(self, pair, cfg):
        return Path(split_ref(pair[0])[0]).parents[1].name

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        scans = root / "scans" if (root / "scans").is_dir() else root
        pairs = []
        for color in sorted(scans.glob("*/color/*.jpg"), key=natural_key):
            scene = color.parents[1]
            depth, label = scene / "depth" / f"{color.stem}.png", scene / "label-filt" / f"{color.stem}.png"
            for needed in (depth, label):
                if not needed.is_file():
                    report(problems, f"{color}: no {needed.parent.name} image for this frame; expected {needed}")
            if depth.is_file() and label.is_file():
                pairs.append((join_ref(color, depth, scene / "intrinsic" / "intrinsic_depth.txt"), str(label)))
        if spec in ("train", "val", "test"):
            spec = f"scannetv2_{spec}.txt"
        return self._select(cfg, pairs, spec, split, scans)

    def read_pair(self, cfg, image_ref, label_ref):
        # The 2D label exports come at the colour size (1296 x 968) or at the benchmark's 640 x 480: the colour
        # (and depth) image follows the label.
        image = self.read_image(image_ref, cfg)
        label = self.read_label(label_ref, cfg)
        if image.shape[:2] != label.shape:
            image = cv2.resize(image, label.shape[::-1], interpolation=cv2.INTER_AREA).reshape(*label.shape, -1)
        return image, label

    def read_label(self, path, cfg):
        raw = read_mask(path).astype(np.int64)
        lut = _scannet_mapping(_find_up(path, "scannetv2-labels.combined.tsv"))
        table = np.where(lut > 0, lut - 1, cfg["ignore_index"]).astype(np.int32)
        if raw.max() >= len(table):
            raise DataError(f"{path}: label id {raw.max()} is not in scannetv2-labels.combined.tsv; fix the file")
        return table[raw]


@functools.lru_cache(maxsize=2)
def _scannet_mapping(path):
    """ScanNet id -> nyu40id (0 where the id is unknown) from the authors' TSV."""
    try:
        lines = Path(path).read_text().splitlines()
        header = lines[0].split("\t")
        col_id, col_nyu = header.index("id"), header.index("nyu40id")
        rows = [line.split("\t") for line in lines[1:] if line.strip()]
        pairs = [(int(r[col_id]), int(r[col_nyu] or 0)) for r in rows]
    except (OSError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: cannot read the ScanNet label mapping ({exc}); put the authors' "
                        f"scannetv2-labels.combined.tsv in data.root") from None
    lut = np.zeros(max(i for i, _ in pairs) + 1, np.int32)
    for i, nyu in pairs:
        lut[i] = nyu
    return lut


class Sun3dFormat(RgbdFormat):
    """SUN3D video sequences (Xiao et al., ICCV 2013): ``<sequence>/image/*.jpg``, ``<sequence>/depth/*.png``
    (16-bit, millimetres rotated by 3 bits), ``intrinsics.txt``, and ``annotation/index.json`` (the annotator's
    object polygons per frame: ``frames[i].polygon[j] = {x: [...], y: [...], object: k}``, ``objects[k].name``
    like ``"chair:3"``). Samples are the annotated frames; an object's class is its name before ":" among
    data.class_names (default: the SUN RGB-D 37 classes); other objects and unannotated pixels are ignore.
    Splits: index ranges, or a ``.txt`` list of sequences."""

    name = "sun3d"
    default_num_classes = len(SUNRGBD_CLASSES)
    depth_shifted = True
    key_name = "sequence"

    def class_names(self, cfg):
        return tuple(cfg.get("class_names") or SUNRGBD_CLASSES)

    def palette(self, cfg):
        return voc_palette(cfg["num_classes"])

    def key_of(self, pair, cfg):
        return str(Path(split_ref(pair[1])[0]).parents[1].relative_to(cfg["root"]))

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        pairs = []
        for index in sorted(root.rglob("annotation/index.json"), key=natural_key):
            sequence = index.parents[1]
            images = sorted((sequence / "image").glob("*.jpg"), key=natural_key)
            depths = {p.stem: p for p in (sequence / "depth").glob("*.png")}
            frames = _sun3d_index(str(index))["frames"]
            for i, frame in enumerate(frames):
                if not frame or not frame.get("polygon"):
                    continue
                if i >= len(images):
                    report(problems, f"{index}: frame {i} is annotated but {sequence / 'image'} has only "
                                     f"{len(images)} images")
                    continue
                depth = depths.get(images[i].stem) or _nearest_depth(depths, images[i].stem)
                if depth is None:
                    report(problems, f"{images[i]}: no depth image for this frame in {sequence / 'depth'}")
                    continue
                pairs.append((join_ref(images[i], depth, sequence / "intrinsics.txt"), join_ref(index, i)))
        return self._select(cfg, pairs, spec, split, root)

    def read_label(self, ref, cfg):
        path, frame = split_ref(ref)
        index = _sun3d_index(path)
        sequence = Path(path).parents[1]
        image = sorted((sequence / "image").glob("*.jpg"), key=natural_key)[int(frame)]
        height, width = read_image(image).shape[:2]
        classes = {_norm(n): i for i, n in enumerate(self.class_names(cfg))}
        label = np.full((height, width), cfg["ignore_index"], np.int32)
        for polygon in index["frames"][int(frame)]["polygon"]:
            name = index["objects"][int(polygon["object"])]["name"].split(":")[0]
            cls = classes.get(_norm(name))
            if cls is not None:
                points = np.stack([polygon["x"], polygon["y"]], axis=-1).round().astype(np.int32)
                cv2.fillPoly(label, [points], int(cls))
        return label


def _nearest_depth(depths, stem):
    """SUN3D names frames by index and timestamp (``0000001-000000000000``): match on the frame index."""
    prefix = stem.split("-")[0]
    found = [p for s, p in depths.items() if s.split("-")[0] == prefix]
    return found[0] if len(found) == 1 else None


@functools.lru_cache(maxsize=16)
def _sun3d_index(path):
    try:
        data = json.loads(Path(path).read_text())
        data["frames"], data["objects"]  # noqa: B018 - both keys must be there
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read the SUN3D annotation ({type(exc).__name__}: {exc}); expected "
                        f"index.json with frames and objects") from None
    return data


class UwRgbdFormat(RgbdFormat):
    """UW RGB-D Object dataset, cropped frames: ``<category>/<instance>/<instance>_<video>_<frame>_crop.png``
    with ``_depthcrop.png`` (16-bit millimetres) and ``_maskcrop.png`` (the object's mask). Classes: background,
    then the 51 categories; a frame's mask pixels get its category. Splits: index ranges, or a ``.txt`` list of
    instances (e.g. leave-one-instance-out)."""

    name = "uwrgbd"
    num_classes = 52
    key_name = "instance"

    def class_names(self, cfg):
        return ("background",) + UWRGBD_CATEGORIES

    def palette(self, cfg):
        return voc_palette(52)

    def key_of(self, pair, cfg):
        return Path(split_ref(pair[0])[0]).parent.name

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        root = root / "rgbd-dataset" if (root / "rgbd-dataset").is_dir() else root
        pairs = []
        for crop in sorted(root.glob("*/*/*_crop.png"), key=natural_key):
            depth = crop.with_name(crop.name.replace("_crop.png", "_depthcrop.png"))
            mask = crop.with_name(crop.name.replace("_crop.png", "_maskcrop.png"))
            if crop.parents[1].name not in UWRGBD_CATEGORIES:
                report(problems, f"{crop}: category folder '{crop.parents[1].name}' is not one of the 51 UW RGB-D "
                                 f"categories")
                continue
            for needed in (depth, mask):
                if not needed.is_file():
                    report(problems, f"{crop}: no {needed.name.rsplit('_', 1)[-1]} for this frame; expected "
                                     f"{needed}")
            if depth.is_file() and mask.is_file():
                pairs.append((join_ref(crop, depth), str(mask)))
        return self._select(cfg, pairs, spec, split, root)

    def read_label(self, path, cfg):
        category = Path(path).parents[1].name
        mask = read_mask(path)
        return np.where(mask > 0, UWRGBD_CATEGORIES.index(category) + 1, 0).astype(np.int32)


class Stanford2d3dFormat(RgbdFormat):
    """Stanford 2D-3D-S, the 2D modalities: ``area_<n>/data/<kind>/<camera>_<room>_frame_<i>_domain_<kind>.png``
    for kind rgb, depth, semantic (depth 16-bit in 1/512 m, 65535 missing; semantic: an RGB-encoded index
    R*65536 + G*256 + B into ``assets/semantic_labels.json``, whose entries ``<class>_<instance>_<room>_<area>``
    give the 13 classes; ``<UNK>`` and indices past the list are ignore), intrinsics from
    ``data/pose/*_pose.json`` (camera_k_matrix). Splits: areas (``area_5``, or ``area_1,area_2,...``; the common
    fold 1 trains on 1, 2, 3, 4, 6 and tests on 5) or index ranges."""

    name = "stanford2d3d"
    num_classes = 13
    depth_scale = 1 / 512
    depth_missing = 65535
    key_name = "area"

    def class_names(self, cfg):
        return STANFORD2D3D_CLASSES

    def palette(self, cfg):
        return voc_palette(13)

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        pairs = []
        for rgb in sorted(root.glob("area_*/data/rgb/*_domain_rgb.png"), key=natural_key):
            data = rgb.parents[1]
            stem = rgb.name[:-len("_domain_rgb.png")]
            depth, semantic = data / "depth" / f"{stem}_domain_depth.png", data / "semantic" / f"{stem}_domain_semantic.png"
            for needed in (depth, semantic):
                if not needed.is_file():
                    report(problems, f"{rgb}: no {needed.parent.name} image for this frame; expected {needed}")
            if depth.is_file() and semantic.is_file():
                pairs.append((join_ref(rgb, depth, data / "pose" / f"{stem}_domain_pose.json"), str(semantic)))
        if isinstance(spec, str) and spec.startswith("area_"):
            areas = [a.strip() for a in spec.split(",")]
            missing = [a for a in areas if not (root / a).is_dir()]
            if missing:
                raise DataError(f"{root}: data.splits.{split} names {missing} but there is no such area folder")
            return [p for p in pairs if Path(split_ref(p[0])[0]).parents[2].name in areas]
        return self._select(cfg, pairs, spec, split, root)

    def read_label(self, path, cfg):
        labels = _stanford_labels(_find_up(path, "assets/semantic_labels.json"))
        rgb = read_image(path).astype(np.int64)
        index = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        classes = {n: i for i, n in enumerate(STANFORD2D3D_CLASSES)}
        lut = np.array([classes.get(entry.split("_")[0], cfg["ignore_index"]) for entry in labels], np.int32)
        return np.where(index < len(lut), lut[np.minimum(index, len(lut) - 1)], cfg["ignore_index"]).astype(np.int32)


@functools.lru_cache(maxsize=2)
def _stanford_labels(path):
    try:
        labels = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the semantic label list ({exc}); put the dataset's "
                        f"assets/semantic_labels.json in data.root") from None
    return tuple(str(entry) for entry in labels)


FORMATS_RGBD = (NyuDepthV2Format(), SunRgbdFormat(), ScanNetFormat(), Sun3dFormat(), UwRgbdFormat(),
                Stanford2d3dFormat())
