"""On-disk dataset layouts.

A format turns a validated data config and a split name into a list of ``(image_ref, label_ref)``
string pairs, reads an image (``read_image``) and a label as int32 class ids (``read_label``, ignore pixels =
``data.ignore_index``), and decodes a sample at the config's size (``load``). A reference is a file path, or
several parts joined by `REF_SEP` (``"rgb.jpg::depth.png"``, ``"nyu_depth_v2_labeled.mat::17"``) where a sample
lives in several files or inside one. Listing checks what is cheap (folders, split files, a label for every
image); contents are checked at decode time. With a ``problems`` list, listing collects every missing or
unmatched file instead of raising on the first (``kseg data check``).

The registry (`FORMATS`) holds these and the formats of `kseg.data.formats_2d` (PASCAL Context, COCO,
COCO-Stuff, COCO panoptic, ADE20K, Stanford Background), `kseg.data.formats_rgbd` (NYU-Depth v2, SUN RGB-D, ScanNet,
SUN3D, UW RGB-D Object, Stanford 2D-3D-S) and `kseg.data.formats_3d` (ShapeNet part, Sydney Urban Objects, ScanNet
v2 scenes).
"""

import re
from pathlib import Path

import numpy as np

from kseg.data.io import IMAGE_EXTS, MASK_EXTS, check_labels, fit_size, natural_key, read_image, read_mask
from kseg.errors import ConfigError, DataError

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                      (0, 80, 100), (0, 0, 230), (119, 11, 32))
# labelId -> trainId of the 19 evaluated classes (cityscapesScripts helpers/labels.py); the rest is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

REF_SEP = "::"

_RANGES = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")


def voc_palette(n=256):
    """The Pascal VOC colour map (index i -> RGB by bit interleaving); index 255 is (224, 224, 192)."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return tuple(palette)


def parse_ranges(spec):
    """Parses ``"0-19"`` or ``"0-9, 20-29, 35"`` into a list of indices (inclusive ranges)."""
    indices = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        indices.extend(range(int(lo), int(hi or lo) + 1))
    return indices


def join_ref(*parts):
    """One sample reference from its parts (file paths, or a file and an index inside it)."""
    return REF_SEP.join(str(p) for p in parts)


def split_ref(ref):
    """The parts of a sample reference made by `join_ref`."""
    return str(ref).split(REF_SEP)


def report(problems, message):
    """Raises ``message`` as a DataError, or appends it to ``problems`` when collecting (``kseg data check``)."""
    if problems is None:
        raise DataError(message)
    problems.append(message)


def is_range_spec(spec):
    """True when a split spec is an index range such as ``"0-19"``."""
    return isinstance(spec, str) and bool(_RANGES.match(spec))


class Format:
    """A folder-of-images + folder-of-masks layout, matched by file stem; the base of the others.

    A split is given in ``data.splits`` as an index range over the naturally sorted pairs ("0-79"),
    a ``.txt`` file listing stems (relative to root), a ``{image_dir, mask_dir}`` mapping, or the
    name of a subfolder holding ``image_dir`` and ``mask_dir``.
    """

    name = "folder"
    num_classes = None
    image_dir = "images"
    mask_dir = "masks"
    mask_exts = MASK_EXTS
    root_must_exist = True
    volumetric = False  # True: samples are (D, H, W, C) volumes, loaded by kseg.data.volumes
    kind = "2D"  # what `kseg data formats` calls it: 2D, RGB-D (2.5D) or 3D
    rgbd = False  # True: data.depth adds depth channels (kseg.data.depth)
    points = False  # True: point clouds voxelised at data.voxel_size (kseg.data.points)
    # Formats whose authors define several class sets (PASCAL Context 59 / 459, NYU-Depth v2 40 / 13): the
    # allowed data.num_classes, the first being the default.
    class_counts = ()
    default_num_classes = None  # formats with a default class list that a config may replace (sun3d)

    def class_names(self, cfg):
        return tuple(cfg.get("class_names") or (f"class_{i}" for i in range(cfg["num_classes"])))

    def palette(self, cfg):
        return tuple(tuple(c) for c in cfg.get("palette") or voc_palette(cfg["num_classes"]))

    def locate(self, root):
        """Returns the dataset folder given the user's root (formats accept a parent folder)."""
        return root

    def channels(self, cfg):
        """Input channels of the images this format yields (RGB: 3)."""
        return 3

    def samples(self, cfg, split, problems=None):
        """Returns the split's ``[(image_ref, label_ref), ...]``; raises DataError if it is empty.

        With a ``problems`` list, files without their counterpart are reported there and left out instead of
        raising.
        """
        spec = cfg["splits"].get(split, self.default_split(split))
        if spec is None:
            raise ConfigError(f"data.splits has no '{split}' entry; add one, e.g. {split}: '0-99' (index range), "
                              f"'{split}.txt' (list of stems) or a subfolder name")
        pairs = self._resolve(cfg, spec, split, problems)
        if not pairs:
            raise DataError(f"{cfg['root']}: split '{split}' ({spec}) has no samples; check data.splits")
        return pairs

    def default_split(self, split):
        return None

    def named_split(self, cfg, name):
        """Turns a bare split name into a spec: here a subfolder."""
        return {"image_dir": f"{name}/{cfg['image_dir']}", "mask_dir": f"{name}/{cfg['mask_dir']}"}

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        if isinstance(spec, dict):
            return self.pair(root / spec.get("image_dir", cfg["image_dir"]),
                             root / spec.get("mask_dir", cfg["mask_dir"]), problems=problems)
        if is_range_spec(spec):
            return pick_range(self.pair(root / cfg["image_dir"], root / cfg["mask_dir"], problems=problems),
                              spec, split, root / cfg["image_dir"])
        if spec.endswith(".txt"):
            stems = [Path(line).stem for line in read_list(root / spec, split)]
            return self.pair(root / cfg["image_dir"], root / cfg["mask_dir"], stems, root / spec, problems)
        return self._resolve(cfg, self.named_split(cfg, spec), split, problems)

    def pair(self, image_dir, mask_dir, stems=None, list_file=None, problems=None):
        """Pairs images with masks by file stem, in natural order or in the order of ``stems``."""
        images = _by_stem(image_dir, IMAGE_EXTS, "image")
        masks = self.masks_by_stem(mask_dir)
        return pair_by_key(images, masks, stems, list_file, problems,
                           lambda stem: f"{mask_dir / stem}{self.mask_exts[0]} (masks are matched by file stem)",
                           "mask")

    def masks_by_stem(self, mask_dir):
        return _by_stem(mask_dir, self.mask_exts, "mask")

    def read_image(self, ref, cfg):
        """Reads the image of a sample: uint8 (H, W, 3) RGB, or float32 (H, W, C) with extra channels."""
        return read_image(ref)

    def read_pair(self, cfg, image_ref, label_ref):
        """The sample as stored (before sizing): ``(image, label)``, checked to have the same size."""
        image = self.read_image(image_ref, cfg)
        label = self.read_label(label_ref, cfg)
        if image.shape[:2] != label.shape:
            raise DataError(f"{label_ref}: mask is {label.shape[1]}x{label.shape[0]} but its image {image_ref} is "
                            f"{image.shape[1]}x{image.shape[0]} (WxH); masks must have their image's size")
        return image, label

    def load(self, cfg, image_ref, label_ref):
        """Decodes and checks one sample and brings it to ``data.image_size`` (see `kseg.data.load_sample`)."""
        image, label = self.read_pair(cfg, image_ref, label_ref)
        check_labels(label, cfg["num_classes"], cfg["ignore_index"], label_ref)
        return fit_size(image, label, cfg["image_size"], cfg["resize"], cfg["ignore_index"])

    def read_label(self, path, cfg):
        """Reads a mask as int32 class ids with ``cfg['ignore_index']`` for ignored pixels."""
        palette = cfg.get("palette")
        colour_map = {tuple(c): i for i, c in enumerate(palette)} if palette else None
        return read_mask(path, colour_map)


def read_list(list_file, split):
    """The non-empty lines of a split list (first column), or a DataError naming the file."""
    if not list_file.is_file():
        raise DataError(f"{list_file}: split file for '{split}' not found; check data.root and data.splits")
    return [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]


def pick_range(pairs, spec, split, where):
    """The pairs at the indices of a range spec such as ``"0-19"`` (``"all"``: every pair)."""
    if spec == "all":
        return pairs
    if not is_range_spec(spec):
        raise ConfigError(f"data.splits.{split} '{spec}' is not an index range such as '0-99' (nor a split this "
                          f"format names); see docs/datasets.md")
    indices = parse_ranges(spec)
    if max(indices) >= len(pairs):
        raise DataError(f"{where}: data.splits.{split} '{spec}' asks for index {max(indices)} but there are only "
                        f"{len(pairs)} samples (indices 0-{len(pairs) - 1})")
    return [pairs[i] for i in indices]


def pair_by_key(images, labels, keys=None, list_file=None, problems=None, expected=str, what="label"):
    """Pairs ``{key: image}`` with ``{key: label}``, in natural key order or in the order of ``keys``.

    A listed key without an image, an image without a label and (when no list is given) a label without an
    image are reported (`report`); ``expected(key)`` says where the missing label should be.
    """
    pairs = []
    for key in sorted(images, key=natural_key) if keys is None else keys:
        if key not in images:
            report(problems, f"{list_file}: lists '{key}' but there is no image for it; fix the list or add the image")
        elif key not in labels:
            report(problems, f"{images[key]}: no {what} for this image; expected {expected(key)}")
        else:
            pairs.append((str(images[key]), str(labels[key])))
    if keys is None and problems is not None:
        for key in sorted(set(labels) - set(images), key=natural_key):
            problems.append(f"{labels[key]}: {what} without an image; add the image or remove the {what}")
    return pairs


def _by_stem(folder, exts, kind):
    if not folder.is_dir():
        raise DataError(f"{folder}: {kind} folder not found; check data.root, data.image_dir and data.mask_dir")
    found = {}
    for path in folder.iterdir():
        if path.suffix.lower() in exts:
            if path.stem in found:
                raise DataError(f"{path}: same stem as {found[path.stem]}; {kind}s are matched by stem, keep one")
            found[path.stem] = path
    return found


class VocFormat(Format):
    """Pascal VOC 2012: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs, 255 = boundary),
    splits ``ImageSets/Segmentation/{train,val,trainval}.txt``. Root: ``VOC2012`` or ``VOCdevkit``."""

    name = "voc"
    num_classes = 21
    image_dir = "JPEGImages"
    mask_dir = "SegmentationClass"
    # Colour masks (e.g. re-saved as RGB) decode through the VOC colours; the boundary colour is ignore.
    _COLOURS = {c: (i if i < 21 else 255) for i, c in enumerate(voc_palette()) if i < 21 or i == 255}

    def class_names(self, cfg):
        return VOC_CLASSES

    def palette(self, cfg):
        return voc_palette(21)

    def locate(self, root):
        return root / "VOC2012" if (root / "VOC2012").is_dir() else root

    def default_split(self, split):
        return split

    def named_split(self, cfg, name):
        return f"ImageSets/Segmentation/{name}.txt"

    def read_label(self, path, cfg):
        label = read_mask(path, self._COLOURS, "the VOC palette")
        label[label == 255] = cfg["ignore_index"]
        return label


class SbdFormat(VocFormat):
    """SBD (Hariharan et al. 2011): ``img/*.jpg``, ``cls/*.mat`` (``GTcls.Segmentation``), ``train.txt``,
    ``val.txt``. Root: ``benchmark_RELEASE/dataset`` or ``benchmark_RELEASE``. VOC classes."""

    name = "sbd"
    image_dir = "img"
    mask_dir = "cls"
    mask_exts = (".mat",)

    def locate(self, root):
        return root / "dataset" if (root / "dataset" / "cls").is_dir() else root

    def named_split(self, cfg, name):
        return f"{name}.txt"

    def read_label(self, path, cfg):
        import scipy.io

        try:
            gt = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
            label = np.asarray(gt.Segmentation, dtype=np.int32)
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise DataError(f"{path}: cannot read SBD mask, expected a .mat with GTcls.Segmentation ({exc}); "
                            f"replace the file") from None
        if label.ndim != 2:
            raise DataError(f"{path}: GTcls.Segmentation has shape {label.shape}, expected (H, W); replace the file")
        return label


class CityscapesFormat(Format):
    """Cityscapes: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
    ``gtFine/{split}/{city}/*_gtFine_labelIds.png``; labelIds map to the 19 trainIds, the rest is ignore."""

    name = "cityscapes"
    num_classes = 19

    def class_names(self, cfg):
        return CITYSCAPES_CLASSES

    def palette(self, cfg):
        return CITYSCAPES_PALETTE

    def default_split(self, split):
        return split

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        image_root = root / "leftImg8bit" / spec
        if not image_root.is_dir():
            raise DataError(f"{image_root}: Cityscapes image folder not found; data.root must hold leftImg8bit/ "
                            f"and gtFine/, and data.splits.{split} name one of their split folders")
        pairs = []
        for image in sorted(image_root.glob("*/*_leftImg8bit.png"), key=natural_key):
            mask = root / "gtFine" / spec / image.parent.name / image.name.replace("_leftImg8bit.png",
                                                                                  "_gtFine_labelIds.png")
            if mask.is_file():
                pairs.append((str(image), str(mask)))
            else:
                report(problems, f"{image}: no mask for this image; expected {mask}")
        return pairs

    def read_label(self, path, cfg):
        lut = np.full(256, cfg["ignore_index"], dtype=np.int32)
        for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
            lut[label_id] = train_id
        label = read_mask(path)
        if label.max() > 255 or label.min() < 0:
            raise DataError(f"{path}: labelIds must be 8-bit (0-255), found {label.min()}-{label.max()}; "
                            f"use the *_gtFine_labelIds.png files")
        return lut[label]


class IsbiFormat(Format):
    """ISBI 2012 membranes (zhixuhao/unet layout): ``train/image/N.png``, ``train/label/N.png``,
    grayscale; label >= 128 (cell interior) -> 1, else (membrane) -> 0. Splits are index ranges."""

    name = "isbi"
    num_classes = 2
    image_dir = "train/image"
    mask_dir = "train/label"

    def class_names(self, cfg):
        return ("membrane", "cell")

    def palette(self, cfg):
        return ((0, 0, 0), (255, 255, 255))

    def read_label(self, path, cfg):
        return (read_mask(path) >= 128).astype(np.int32)


class SyntheticFormat(Format):
    """Built-in shapes dataset (`kseg.data.synthetic`), generated into ``root`` on first use."""

    name = "synthetic"
    root_must_exist = False

    def class_names(self, cfg):
        from kseg.data.synthetic import class_names

        return class_names(cfg["num_classes"])

    def samples(self, cfg, split, problems=None):
        from kseg.data.synthetic import ensure_generated

        ensure_generated(cfg)
        return super().samples(cfg, split, problems)

    def read_label(self, path, cfg):
        return read_mask(path)


NIFTI_EXTS = (".nii.gz", ".nii")


class NiftiFormat(Format):
    """NIfTI volumes in the Medical Segmentation Decathlon layout: ``imagesTr/<case>.nii.gz`` with
    ``labelsTr/<case>.nii.gz`` (or ``.nii``), matched by case name; reading, resampling and augmentation are in
    `kseg.data.volumes`. Files whose name starts with ``.`` (the ``._case.nii.gz`` resource forks of the
    Decathlon archives) are skipped."""

    name = "nifti"
    image_dir = "imagesTr"
    mask_dir = "labelsTr"
    mask_exts = NIFTI_EXTS
    volumetric = True
    kind = "3D"

    def channels(self, cfg):
        return cfg["channels"]

    def pair(self, image_dir, mask_dir, stems=None, list_file=None, problems=None):
        images = _nifti_by_case(image_dir, "image")
        labels = _nifti_by_case(mask_dir, "label")
        # A list file may give "case.nii.gz", whose stem (what Format._resolve passes) is "case.nii".
        cases = None if stems is None else [_case_name(s) for s in stems]
        return pair_by_key(images, labels, cases, list_file, problems,
                           lambda case: f"{mask_dir / case}.nii.gz (labels are matched by case name)",
                           "label volume")

    def read_image(self, ref, cfg):
        from kseg.data.volumes import read_image_volume

        return read_image_volume(ref, cfg["channels"])[0]

    def read_label(self, path, cfg):
        from kseg.data.volumes import read_label_volume

        return read_label_volume(path)

    def read_pair(self, cfg, image_ref, label_ref):
        from kseg.data.volumes import read_volume_pair

        return read_volume_pair(cfg, image_ref, label_ref)[:2]

    def load(self, cfg, image_ref, label_ref):
        from kseg.data.volumes import load_volume

        return load_volume(cfg, image_ref, label_ref)


def _case_name(name):
    for ext in NIFTI_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _nifti_by_case(folder, kind):
    if not folder.is_dir():
        raise DataError(f"{folder}: {kind} folder not found; check data.root, data.image_dir and data.mask_dir "
                        f"(the Decathlon layout has imagesTr/ and labelsTr/)")
    found = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or not path.name.endswith(NIFTI_EXTS):
            continue
        case = _case_name(path.name)
        if case in found:
            raise DataError(f"{path}: same case name as {found[case]}; {kind}s are matched by name, keep one")
        found[case] = path
    return found


def _registry():
    # The other layouts subclass Format: imported once this module's classes exist.
    from kseg.data.formats_2d import FORMATS_2D
    from kseg.data.formats_3d import FORMATS_3D
    from kseg.data.formats_rgbd import FORMATS_RGBD

    formats = (Format(), VocFormat(), SbdFormat(), CityscapesFormat(), IsbiFormat(), SyntheticFormat(),
               NiftiFormat(), *FORMATS_2D, *FORMATS_RGBD, *FORMATS_3D)
    return {f.name: f for f in formats}


FORMATS = _registry()


def list_formats():
    """Names of the supported dataset layouts."""
    return sorted(FORMATS)


def get_format(name):
    """Returns the format object; raises ConfigError for an unknown name."""
    if name not in FORMATS:
        raise ConfigError(f"data.format '{name}' is not supported; choose one of {', '.join(list_formats())}")
    return FORMATS[name]
