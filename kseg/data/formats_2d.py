"""2D scene-parsing layouts: PASCAL Context, MS COCO (instances), COCO-Stuff, COCO panoptic (as semantic labels),
ADE20K, Stanford Background.

Each reads the files as their authors distribute them; class lists, ignore labels and id mappings are the
authors' (references in each class). COCO polygons and RLE are decoded by pycocotools (the COCO authors' API).
"""

import functools
import json
import re
from pathlib import Path

import numpy as np

from kseg.data.formats import Format, join_ref, report, split_ref, voc_palette
from kseg.data.io import read_image, read_mask
from kseg.errors import DataError

# PASCAL Context (Mottaghi et al., "The Role of Context for Object Detection and Semantic Segmentation in the Wild",
# CVPR 2014): the 59 most frequent of the 459 labels, as the Detail API / OpenMMLab converters select them, by
# their ids in labels.txt, in increasing id order (class k of the 59 is the k-th smallest id).
PASCAL_CONTEXT_59_IDS = (2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113,
                         115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324,
                         326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458)
PASCAL_CONTEXT_59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door",
    "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain",
    "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window",
    "wood")

# MS COCO (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014, arXiv 1405.0312): the 80 thing
# categories and their (non-contiguous) ids, as in instances_*.json.
COCO_THINGS = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck", 9: "boat",
    10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench", 16: "bird",
    17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra",
    25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee",
    35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass", 47: "cup", 48: "fork",
    49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli",
    57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake", 62: "chair", 63: "couch",
    64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse",
    75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier",
    90: "toothbrush"}
# COCO-Stuff (Caesar et al., "COCO-Stuff: Thing and Stuff Classes in Context", CVPR 2018, arXiv 1612.03716):
# stuff ids 92-182 in this order; with the 80 things, 171 classes.
COCO_STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood")
COCO_STUFF_IDS = tuple(sorted(COCO_THINGS)) + tuple(range(92, 183))
# COCO panoptic (Kirillov et al., "Panoptic Segmentation", CVPR 2019, arXiv 1801.00868): the 53 stuff categories
# of panoptic_{train,val}2017.json (some COCO-Stuff classes kept, others merged into "-merged" ones) by id; with the
# 80 things, 133 categories.
COCO_PANOPTIC_STUFF = {
    92: "banner", 93: "blanket", 95: "bridge", 100: "cardboard", 107: "counter", 109: "curtain", 112: "door-stuff",
    118: "floor-wood", 119: "flower", 122: "fruit", 125: "gravel", 128: "house", 130: "light", 133: "mirror-stuff",
    138: "net", 141: "pillow", 144: "platform", 145: "playingfield", 147: "railroad", 148: "river", 149: "road",
    151: "roof", 154: "sand", 155: "sea", 156: "shelf", 159: "snow", 161: "stairs", 166: "tent", 168: "towel",
    171: "wall-brick", 175: "wall-stone", 176: "wall-tile", 177: "wall-wood", 178: "water-other",
    180: "window-blind", 181: "window-other", 184: "tree-merged", 185: "fence-merged", 186: "ceiling-merged",
    187: "sky-other-merged", 188: "cabinet-merged", 189: "table-merged", 190: "floor-other-merged",
    191: "pavement-merged", 192: "mountain-merged", 193: "grass-merged", 194: "dirt-merged", 195: "paper-merged",
    196: "food-other-merged", 197: "building-other-merged", 198: "rock-merged", 199: "wall-other-merged",
    200: "rug-merged"}

# ADE20K SceneParsing (Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017): the first name of each of
# the 150 classes of objectInfo150.txt (read from the dataset folder when it is there).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag")
# The SceneParsing colours of the 150 classes (the devkit's color150, as MIT CSAIL's semantic-segmentation-pytorch
# draws them), copied from OpenMMLab mmsegmentation mmseg/datasets/ade.py (ADE20KDataset.METAINFO["palette"],
# commit 088894b), whose class tuple is the one above.
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255))

# Stanford Background (Gould et al., "Decomposing a Scene into Geometric and Semantically Consistent Regions",
# ICCV 2009): region labels 0-7 of labels/*.regions.txt; -1 is "unknown".
STANFORD_BACKGROUND_CLASSES = ("sky", "tree", "road", "grass", "water", "building", "mountain", "foreground object")


def _lut_labels(label, lut, path, what):
    """Maps raw ids through a lookup table (-2: an id the dataset does not define, reported as a fault)."""
    if label.min() < 0 or label.max() >= len(lut):
        raise DataError(f"{path}: {what} values {label.min()}-{label.max()} are outside 0-{len(lut) - 1}; "
                        f"is it a {what} file?")
    out = lut[label]
    unknown = out == -2
    if unknown.any():
        values = ", ".join(str(v) for v in np.unique(label[unknown])[:8])
        raise DataError(f"{path}: {what} values {values} are not ids of this dataset; fix or remove the file")
    return out


class PascalContextFormat(Format):
    """PASCAL Context, the authors' release: ``JPEGImages/*.jpg`` of VOC 2010 with ``trainval/*.mat`` (``LabelMap``,
    the 459 labels of ``labels.txt``, 0 = unlabelled), splits ``ImageSets/SegmentationContext/{train,val}.txt``
    (4998 / 5105 images, the Detail API split). Root: ``VOC2010`` (or ``VOCdevkit``) with ``trainval/`` and
    ``labels.txt`` put into it. ``data.num_classes`` 59 (default: the 59 most frequent labels; the other 400 and
    unlabelled pixels are ignored) or 459 (label k -> class k - 1, unlabelled ignored)."""

    name = "pascal_context"
    class_counts = (59, 459)
    image_dir = "JPEGImages"
    mask_dir = "trainval"
    mask_exts = (".mat",)

    def locate(self, root):
        return root / "VOC2010" if (root / "VOC2010").is_dir() else root

    def default_split(self, split):
        return split

    def named_split(self, cfg, name):
        return f"ImageSets/SegmentationContext/{name}.txt"

    def class_names(self, cfg):
        if cfg["num_classes"] == 59:
            return PASCAL_CONTEXT_59_CLASSES
        labels = Path(cfg["root"]) / "labels.txt"
        if labels.is_file():  # "1: accordion" lines
            names = dict(line.split(":", 1) for line in labels.read_text().splitlines() if ":" in line)
            return tuple(names.get(str(i), f"label_{i}").strip() for i in range(1, 460))
        return tuple(f"label_{i}" for i in range(1, 460))

    def palette(self, cfg):
        # the authors' release defines no colours (labels.txt has names only): VOC-style colours
        return voc_palette(cfg["num_classes"])

    def read_label(self, path, cfg):
        import scipy.io

        try:
            label = np.asarray(scipy.io.loadmat(path)["LabelMap"], np.int64)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: cannot read PASCAL Context labels, expected a .mat with LabelMap ({exc}); "
                            f"replace the file") from None
        lut = np.full(460, cfg["ignore_index"], np.int32)
        if cfg["num_classes"] == 59:
            lut[list(PASCAL_CONTEXT_59_IDS)] = np.arange(59)
        else:
            lut[1:] = np.arange(459)
        return _lut_labels(label, lut, path, "LabelMap")


@functools.lru_cache(maxsize=4)
def load_coco_json(path):
    """The index of a COCO annotation file: ``images`` {id: image entry}, ``annotations`` {image id: [ann]},
    ``categories`` {id: name}. Cached: a training run reads the file once."""
    try:
        with open(path) as f:
            data = json.load(f)
        images = {int(im["id"]): im for im in data["images"]}
        categories = {int(c["id"]): c["name"] for c in data["categories"]}
        annotations = {}
        for ann in data.get("annotations", ()):
            annotations.setdefault(int(ann["image_id"]), []).append(ann)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: cannot read COCO annotations ({type(exc).__name__}: {exc}); expected the "
                        f"instances_*.json of the COCO release") from None
    return {"images": images, "annotations": annotations, "categories": categories}


def decode_segmentation(segmentation, height, width, path="annotation"):
    """One COCO ``segmentation`` (polygons, RLE or uncompressed RLE) as a (H, W) bool mask (pycocotools)."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE (crowd regions)
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: cannot decode a segmentation ({exc}); fix the annotation") from None


def read_instances(ref):
    """The instances of one COCO image, for instance segmentation (Mask R-CNN).

    Args:
        ref: the label reference of a ``coco`` sample (``"instances.json::image_id"``).

    Returns:
        dict: ``boxes`` float32 (N, 4) ``[x, y, w, h]`` in pixels, ``classes`` int32 (N,) contiguous ids 1..80
        (0 is background in the semantic view), ``category_ids`` int32 (N,) COCO ids, ``masks`` bool (N, H, W),
        ``crowd`` bool (N,) (crowd regions: not instances, to be ignored).
    """
    path, image_id = split_ref(ref)
    index = load_coco_json(path)
    image = index["images"][int(image_id)]
    height, width = int(image["height"]), int(image["width"])
    contiguous = {cid: i + 1 for i, cid in enumerate(sorted(index["categories"]))}
    anns = index["annotations"].get(int(image_id), [])
    masks = [decode_segmentation(a["segmentation"], height, width, path) for a in anns]
    return {"boxes": np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4),
            "classes": np.array([contiguous[int(a["category_id"])] for a in anns], np.int32),
            "category_ids": np.array([int(a["category_id"]) for a in anns], np.int32),
            "masks": np.array(masks, bool).reshape(-1, height, width),
            "crowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)}


class CocoFormat(Format):
    """MS COCO 2017 instances: ``{train,val}2017/*.jpg`` with ``annotations/instances_{train,val}2017.json``.
    The semantic view has 81 classes (0 background, then the 80 categories in id order); instances are painted
    in file order, crowd regions are ignore. `read_instances` gives the instances (Mask R-CNN). Splits: train,
    val (or a folder name such as val2017)."""

    name = "coco"
    num_classes = 81

    def default_split(self, split):
        return split

    def class_names(self, cfg):
        return ("background",) + tuple(COCO_THINGS[i] for i in sorted(COCO_THINGS))

    def palette(self, cfg):
        return voc_palette(81)

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        name = spec if spec[-1].isdigit() else f"{spec}2017"
        ann = root / "annotations" / f"instances_{name}.json"
        if not ann.is_file():
            raise DataError(f"{ann}: COCO annotation file not found; data.root must hold annotations/ and "
                            f"{name}/ (data.splits.{split} names the split, e.g. val2017)")
        index = load_coco_json(str(ann))
        pairs = []
        for image_id in sorted(index["images"]):
            image = root / name / index["images"][image_id]["file_name"]
            if image.is_file():
                pairs.append((str(image), join_ref(ann, image_id)))
            else:
                report(problems, f"{ann}: lists image {image_id} but {image} is missing; add the image")
        return pairs

    def read_label(self, ref, cfg):
        path, image_id = split_ref(ref)
        image = load_coco_json(path)["images"][int(image_id)]
        label = np.zeros((int(image["height"]), int(image["width"])), np.int32)
        inst = read_instances(ref)
        for cls, mask, crowd in zip(inst["classes"], inst["masks"], inst["crowd"]):
            label[mask] = cfg["ignore_index"] if crowd else cls
        return label


class CocoStuffFormat(Format):
    """COCO-Stuff 164k: ``images/{train,val}2017/*.jpg`` with ``annotations/{train,val}2017/*.png`` (the
    stuffthingmaps: value = COCO id - 1 over 182 ids, 255 unlabelled). The 171 ids in use (80 things, 91 stuff)
    become classes 0-170; 255 is ignore. Root: the ``dataset`` folder of the cocostuff repository's instructions
    (or the folder above it)."""

    name = "coco_stuff"
    num_classes = 171
    image_dir = "images"
    mask_dir = "annotations"

    def locate(self, root):
        return root / "dataset" if (root / "dataset" / "annotations").is_dir() else root

    def default_split(self, split):
        return split

    def named_split(self, cfg, name):
        name = name if name[-1].isdigit() else f"{name}2017"
        return {"image_dir": f"images/{name}", "mask_dir": f"annotations/{name}"}

    def class_names(self, cfg):
        return tuple(COCO_THINGS[i] for i in sorted(COCO_THINGS)) + COCO_STUFF

    def palette(self, cfg):
        # the release's label PNGs are grey index maps and it ships no per-class colour table: VOC-style colours
        return voc_palette(171)

    def read_label(self, path, cfg):
        lut = np.full(256, -2, np.int32)
        lut[[i - 1 for i in COCO_STUFF_IDS]] = np.arange(171)
        lut[255] = cfg["ignore_index"]
        return _lut_labels(read_mask(path), lut, path, "stuffthingmap")


@functools.lru_cache(maxsize=4)
def load_panoptic_json(path):
    """The index of a COCO panoptic annotation file: ``annotations`` {image id: annotation with ``file_name``
    (the PNG) and ``segments_info``}, ``categories`` [category entries in id order]. Cached."""
    try:
        with open(path) as f:
            data = json.load(f)
        annotations = {int(a["image_id"]): a for a in data["annotations"]}
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        images = {int(im["id"]): im for im in data["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: cannot read COCO panoptic annotations ({type(exc).__name__}: {exc}); expected "
                        f"the panoptic_*.json of the COCO panoptic release") from None
    return {"annotations": annotations, "categories": categories, "images": images}


class CocoPanopticFormat(Format):
    """COCO panoptic 2017 as semantic labels: ``{train,val}2017/*.jpg``, ``annotations/panoptic_{train,val}2017.json``
    and the PNGs ``panoptic_{train,val}2017/*.png`` (in data.root or, unzipped where the release puts the zip, in
    ``annotations/``) whose RGB encodes a segment id R + 256 G + 256^2 B, described by the json's
    ``segments_info`` (category_id, iscrowd). The 133 categories (80 things, 53 stuff) become classes 0-132 in
    category-id order; unlabelled pixels (id 0) and crowd segments are ignore. Splits: train, val (or a folder
    name such as val2017)."""

    name = "coco_panoptic"
    num_classes = 133

    def default_split(self, split):
        return split

    def _categories(self, cfg):
        """The json's category entries (of the first split file found), else None."""
        for name in ("val2017", "train2017"):
            ann = Path(cfg["root"]) / "annotations" / f"panoptic_{name}.json"
            if ann.is_file():
                return load_panoptic_json(str(ann))["categories"]
        return None

    def class_names(self, cfg):
        categories = self._categories(cfg)
        if categories:
            return tuple(c["name"] for c in categories)
        names = {**COCO_THINGS, **COCO_PANOPTIC_STUFF}
        return tuple(names[i] for i in sorted(names))

    def palette(self, cfg):
        # panopticapi's panoptic_coco_categories.json gives each category a colour; the release's json does not
        categories = self._categories(cfg)
        if categories and all("color" in c for c in categories):
            return tuple(tuple(int(v) for v in c["color"]) for c in categories)
        return voc_palette(133)

    def _resolve(self, cfg, spec, split, problems=None):
        root = Path(cfg["root"])
        name = spec if spec[-1].isdigit() else f"{spec}2017"
        ann = root / "annotations" / f"panoptic_{name}.json"
        if not ann.is_file():
            raise DataError(f"{ann}: COCO panoptic annotation file not found; data.root must hold annotations/, "
                            f"{name}/ and panoptic_{name}/ (data.splits.{split} names the split, e.g. val2017)")
        index = load_panoptic_json(str(ann))
        if len(index["categories"]) != 133:
            raise DataError(f"{ann}: {len(index['categories'])} categories, expected the 133 of COCO panoptic")
        pngs = root / f"panoptic_{name}"
        pngs = pngs if pngs.is_dir() else root / "annotations" / f"panoptic_{name}"
        pairs = []
        for image_id in sorted(index["images"]):
            image = root / name / index["images"][image_id]["file_name"]
            annotation = index["annotations"].get(image_id)
            if not image.is_file():
                report(problems, f"{ann}: lists image {image_id} but {image} is missing; add the image")
            elif annotation is None:
                report(problems, f"{ann}: image {image_id} ({image.name}) has no annotation entry; fix the file")
            elif not (pngs / annotation["file_name"]).is_file():
                report(problems, f"{image}: no panoptic PNG for this image; expected {pngs / annotation['file_name']}")
            else:
                pairs.append((str(image), join_ref(pngs / annotation["file_name"], ann, image_id)))
        return pairs

    def read_label(self, ref, cfg):
        png, ann, image_id = split_ref(ref)
        index = load_panoptic_json(ann)
        rgb = read_image(png).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        contiguous = {int(c["id"]): k for k, c in enumerate(index["categories"])}
        segments = {0: cfg["ignore_index"]}  # id 0: unlabelled (VOID)
        for segment in index["annotations"][int(image_id)]["segments_info"]:
            category = int(segment["category_id"])
            if category not in contiguous:
                raise DataError(f"{ann}: segment {segment['id']} of image {image_id} has category {category}, "
                                f"not among the json's categories; fix the annotation")
            segments[int(segment["id"])] = cfg["ignore_index"] if segment.get("iscrowd") else contiguous[category]
        found, inverse = np.unique(ids, return_inverse=True)
        unknown = [int(i) for i in found if int(i) not in segments]
        if unknown:
            raise DataError(f"{png}: segment ids {unknown[:8]} are not in segments_info of image {image_id} in "
                            f"{ann}; the PNG and the json do not match")
        return np.array([segments[int(i)] for i in found], np.int32)[inverse].reshape(ids.shape)


class Ade20kFormat(Format):
    """ADE20K SceneParsing (ADEChallengeData2016): ``images/{training,validation}/*.jpg`` with
    ``annotations/{training,validation}/*.png``; value 0 ("other") is ignore, 1-150 become classes 0-149.
    Splits: train (training), val (validation)."""

    name = "ade20k"
    num_classes = 150
    image_dir = "images"
    mask_dir = "annotations"

    def locate(self, root):
        return root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root

    def default_split(self, split):
        return split

    def named_split(self, cfg, name):
        folder = {"train": "training", "val": "validation"}.get(name, name)
        return {"image_dir": f"images/{folder}", "mask_dir": f"annotations/{folder}"}

    def class_names(self, cfg):
        info = Path(cfg["root"]) / "objectInfo150.txt"
        if info.is_file():  # Idx  Ratio  Train  Val  Name, tab-separated; synonyms "building, edifice"
            rows = [line.split("\t") for line in info.read_text().splitlines()[1:] if line.strip()]
            if len(rows) == 150:  # (the devkit's objectInfo150.csv separates synonyms with ";")
                return tuple(re.split(r"[,;]", row[-1])[0].strip() for row in rows)
        return ADE20K_CLASSES

    def palette(self, cfg):
        return ADE20K_PALETTE

    def read_label(self, path, cfg):
        lut = np.full(256, -2, np.int32)
        lut[0] = cfg["ignore_index"]
        lut[1:151] = np.arange(150)
        return _lut_labels(read_mask(path), lut, path, "annotation")


class StanfordBackgroundFormat(Format):
    """Stanford Background (iccv09Data): ``images/*.jpg`` with ``labels/*.regions.txt`` (one integer per pixel,
    0-7, -1 unknown -> ignore); 715 images, no official split: give index ranges."""

    name = "stanford_background"
    num_classes = 8
    image_dir = "images"
    mask_dir = "labels"
    mask_exts = (".regions.txt",)

    def locate(self, root):
        return root / "iccv09Data" if (root / "iccv09Data").is_dir() else root

    def class_names(self, cfg):
        return STANFORD_BACKGROUND_CLASSES

    def palette(self, cfg):
        return voc_palette(8)

    def masks_by_stem(self, mask_dir):
        if not mask_dir.is_dir():
            raise DataError(f"{mask_dir}: label folder not found; iccv09Data has images/ and labels/")
        return {p.name[:-len(".regions.txt")]: p for p in mask_dir.glob("*.regions.txt")}

    def read_label(self, path, cfg):
        try:
            label = np.loadtxt(path, dtype=np.int64, ndmin=2)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read region labels ({exc}); expected rows of integers") from None
        label = label.astype(np.int32)
        label[label == -1] = cfg["ignore_index"]
        return label


FORMATS_2D = (PascalContextFormat(), CocoFormat(), CocoStuffFormat(), CocoPanopticFormat(), Ade20kFormat(),
              StanfordBackgroundFormat())
