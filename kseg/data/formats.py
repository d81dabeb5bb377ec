"""On-disk dataset layouts.

A format turns a validated data config and a split name into a list of ``(image_path, mask_path)``
pairs and reads a mask as int32 class ids (ignore pixels = ``data.ignore_index``). Listing checks what
is cheap (folders, split files, a mask for every image); mask contents are checked at decode time.
"""

import re
from pathlib import Path

import numpy as np

from kseg.data.io import IMAGE_EXTS, MASK_EXTS, natural_key, read_mask
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

    def class_names(self, cfg):
        return tuple(cfg.get("class_names") or (f"class_{i}" for i in range(cfg["num_classes"])))

    def palette(self, cfg):
        return tuple(tuple(c) for c in cfg.get("palette") or voc_palette(cfg["num_classes"]))

    def locate(self, root):
        """Returns the dataset folder given the user's root (formats accept a parent folder)."""
        return root

    def samples(self, cfg, split):
        """Returns the split's ``[(image_path, mask_path), ...]``; raises DataError if it is empty."""
        spec = cfg["splits"].get(split, self.default_split(split))
        if spec is None:
            raise ConfigError(f"data.splits has no '{split}' entry; add one, e.g. {split}: '0-99' (index range), "
                              f"'{split}.txt' (list of stems) or a subfolder name")
        pairs = self._resolve(cfg, spec, split)
        if not pairs:
            raise DataError(f"{cfg['root']}: split '{split}' ({spec}) has no samples; check data.splits")
        return pairs

    def default_split(self, split):
        return None

    def named_split(self, cfg, name):
        """Turns a bare split name into a spec: here a subfolder."""
        return {"image_dir": f"{name}/{cfg['image_dir']}", "mask_dir": f"{name}/{cfg['mask_dir']}"}

    def _resolve(self, cfg, spec, split):
        root = Path(cfg["root"])
        if isinstance(spec, dict):
            return self.pair(root / spec.get("image_dir", cfg["image_dir"]),
                             root / spec.get("mask_dir", cfg["mask_dir"]))
        if is_range_spec(spec):
            pairs = self.pair(root / cfg["image_dir"], root / cfg["mask_dir"])
            indices = parse_ranges(spec)
            if max(indices) >= len(pairs):
                raise DataError(f"{root / cfg['image_dir']}: data.splits.{split} '{spec}' asks for index "
                                f"{max(indices)} but there are only {len(pairs)} samples (indices 0-{len(pairs) - 1})")
            return [pairs[i] for i in indices]
        if spec.endswith(".txt"):
            list_file = root / spec
            if not list_file.is_file():
                raise DataError(f"{list_file}: split file for '{split}' not found; check data.root and data.splits")
            stems = [Path(line.split()[0]).stem for line in list_file.read_text().splitlines() if line.strip()]
            return self.pair(root / cfg["image_dir"], root / cfg["mask_dir"], stems, list_file)
        return self._resolve(cfg, self.named_split(cfg, spec), split)

    def pair(self, image_dir, mask_dir, stems=None, list_file=None):
        """Pairs images with masks by file stem, in natural order or in the order of ``stems``."""
        images = _by_stem(image_dir, IMAGE_EXTS, "image")
        masks = _by_stem(mask_dir, self.mask_exts, "mask")
        pairs = []
        for stem in sorted(images, key=natural_key) if stems is None else stems:
            if stem not in images:
                raise DataError(f"{list_file}: lists '{stem}' but {image_dir} has no image {stem}.*; "
                                f"fix the list or add the image")
            if stem not in masks:
                raise DataError(f"{images[stem]}: no mask for this image; expected {mask_dir / stem}"
                                f"{self.mask_exts[0]} (masks are matched by file stem)")
            pairs.append((str(images[stem]), str(masks[stem])))
        return pairs

    def read_label(self, path, cfg):
        """Reads a mask as int32 class ids with ``cfg['ignore_index']`` for ignored pixels."""
        palette = cfg.get("palette")
        colour_map = {tuple(c): i for i, c in enumerate(palette)} if palette else None
        return read_mask(path, colour_map)


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

    def _resolve(self, cfg, spec, split):
        root = Path(cfg["root"])
        image_root = root / "leftImg8bit" / spec
        if not image_root.is_dir():
            raise DataError(f"{image_root}: Cityscapes image folder not found; data.root must hold leftImg8bit/ "
                            f"and gtFine/, and data.splits.{split} name one of their split folders")
        pairs = []
        for image in sorted(image_root.glob("*/*_leftImg8bit.png"), key=natural_key):
            mask = root / "gtFine" / spec / image.parent.name / image.name.replace("_leftImg8bit.png",
                                                                                  "_gtFine_labelIds.png")
            if not mask.is_file():
                raise DataError(f"{image}: no mask for this image; expected {mask}")
            pairs.append((str(image), str(mask)))
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

    def samples(self, cfg, split):
        from kseg.data.synthetic import ensure_generated

        ensure_generated(cfg)
        return super().samples(cfg, split)

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

    def pair(self, image_dir, mask_dir, stems=None, list_file=None):
        images = _nifti_by_case(image_dir, "image")
        labels = _nifti_by_case(mask_dir, "label")
        pairs = []
        # A list file may give "case.nii.gz", whose stem (what Format._resolve passes) is "case.nii".
        cases = sorted(images, key=natural_key) if stems is None else [_case_name(s) for s in stems]
        for case in cases:
            if case not in images:
                raise DataError(f"{list_file}: lists '{case}' but {image_dir} has no volume {case}.nii.gz; "
                                f"fix the list or add the volume")
            if case not in labels:
                raise DataError(f"{images[case]}: no label volume for this image; expected "
                                f"{mask_dir / case}.nii.gz (labels are matched by case name)")
            pairs.append((str(images[case]), str(labels[case])))
        return pairs

    def read_label(self, path, cfg):
        from kseg.data.volumes import read_label_volume

        return read_label_volume(path)


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


FORMATS = {f.name: f for f in (Format(), VocFormat(), SbdFormat(), CityscapesFormat(), IsbiFormat(),
                               SyntheticFormat(), NiftiFormat())}


def list_formats():
    """Names of the supported dataset layouts."""
    return sorted(FORMATS)


def get_format(name):
    """Returns the format object; raises ConfigError for an unknown name."""
    if name not in FORMATS:
        raise ConfigError(f"data.format '{name}' is not supported; choose one of {', '.join(list_formats())}")
    return FORMATS[name]
