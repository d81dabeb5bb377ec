"""Instance segmentation datasets and the tf.data pipeline of Mask R-CNN training batches.

Formats (``data.format`` of an instance config):

- ``instance_synthetic``: the built-in demo data, textured shapes of ``num_classes - 1`` kinds (`kseg.data.synthetic`)
  overlapping on textured, noisy backgrounds; an instance's mask is what is left visible of its shape after the
  shapes painted over it. Generated in memory, image i depends only on (seed, i).
- ``coco``: MS COCO instances (``{train,val}2017/`` + ``annotations/instances_*.json``, read by
  `kseg.data.formats_2d.read_instances`); crowd regions are dropped. 81 classes.
- ``instance_folder``: ``image_dir/*`` with instance label maps ``mask_dir/*`` (8- or 16-bit PNG / TIFF, matched by
  stem; 0 = background, every other value one instance), optionally class maps ``class_dir/*`` (the class of an
  instance is the most frequent class under it); without ``class_dir`` every instance is class 1.
- ``nuclei``: the real fluorescence-nuclei image of the stardist 0.9.2 wheel (``stardist/data/images/img2d.tif`` +
  ``mask2d.tif``, 512 x 512, 125 nuclei; Schmidt, Weigert, Broaddus, Myers, "Cell Detection with Star-convex
  Polygons", MICCAI 2018, arXiv 1806.03535), cut into ``tile_size`` tiles. ``data.root`` holds the wheel (get it with
  ``pip download stardist==0.9.2 --no-deps -d ROOT``) or the two .tif files. Tile (row, column) of the grid is in
  ``val`` when ``(row + column) % 4 == 0`` (128-pixel tiles: 4 of 16, one per row and column), in ``train``
  otherwise; a nucleus cut by a tile border is kept in the tile when ``min_area`` of its pixels are there.

Every sample is brought to ``image_size`` (stretch or letterbox, masks by nearest neighbour); its boxes are the tight
boxes of its masks (recomputed after every resize, crop and flip) and instances left with fewer than ``min_area``
pixels are dropped.

Instance data config (the ``data:`` section when the model's task is "instance"; `validate_instance_data_config`)::

    data:
      format: instance_synthetic   # instance_synthetic | coco | instance_folder | nuclei
      root: runs/nuclei       # the dataset folder (instance_synthetic: not used, may be left out)
      image_size: [128, 128]  # [H, W] (or one int) of the training batch
      num_classes: 4          # counts background; instance_synthetic = 4 (2-8), coco 81, nuclei 2,
                              # instance_folder = 2 (or len(class_names); required with class_dir)
      class_names: null       # optional list of num_classes names, background first
      max_instances: 100      # M, instances per image in the batch (padding); more raise a DataError
      min_area: 16            # pixels; smaller instances (after cutting, resizing, cropping) are dropped
      resize: stretch         # stretch | letterbox (keep the aspect, pad bottom / right with 0)
      cache: false            # keep decoded, padded samples in memory (M x H x W bytes of masks each)
      splits: {train: "0-159", val: "160-199"}   # as in kseg.data: index ranges, list files, folder names;
                              # instance_synthetic: 80 / 20 % by default; coco: train, val (or val2017);
                              # nuclei: train, val, all (fixed tile split above)
      image_dir: images       # instance_folder
      mask_dir: masks         # instance_folder: instance label maps
      class_dir: null         # instance_folder: class maps (optional)
      synthetic: {num_images: 200, seed: 0}      # instance_synthetic
      tile_size: 128          # nuclei: tiles of tile_size x tile_size, a divisor of 512
      augment:                # build_instance_dataset(..., augment=True); numpy, per sample
        hflip: true           # = false
        vflip: false          # = false
        scale: [0.75, 1.25]   # = null; random zoom, then a random image_size crop (or zero padding)

Example:
    >>> from kseg.instance.data import build_instance_dataset
    >>> cfg = {"format": "instance_synthetic", "image_size": [128, 128], "max_instances": 16,
    ...        "augment": {"hflip": True, "scale": [0.8, 1.25]}}
    >>> batch = next(iter(build_instance_dataset(cfg, "train", batch_size=4, augment=True)))
    >>> batch["masks"].shape                    # (4, 16, 128, 128) uint8
"""

import functools
import io
import zipfile
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from kseg.data import synthetic
from kseg.data.config import _checked_copy, _choice, _class_names, _int, _resolve_root, _size, _typed
from kseg.data.formats import Format, get_format, join_ref, pick_range, split_ref
from kseg.data.formats_2d import read_instances
from kseg.data.io import read_image, read_mask, resize_image
from kseg.errors import ConfigError, DataError
from kseg.instance.masks import masks_to_boxes

FORMATS = ("instance_synthetic", "coco", "instance_folder", "nuclei")
NUCLEI_FILES = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")
NUCLEI_PIP = "pip download stardist==0.9.2 --no-deps -d"
NUCLEI_SIZE = 512
_KEYS = ("format", "root", "image_size", "num_classes", "class_names", "max_instances", "min_area", "resize",
         "cache", "splits", "image_dir", "mask_dir", "class_dir", "synthetic", "tile_size", "augment")
_FIXED_CLASSES = {"coco": 81, "nuclei": 2}


def validate_instance_data_config(cfg, base_dir=None):
    """Checks an instance data config and fills in its defaults (schema in the module docstring).

    Args:
        cfg: the ``data`` mapping.
        base_dir: folder of the config file; a relative ``root`` not found from the current directory is looked up
            there.

    Returns:
        A new dict with every key.

    Raises:
        ConfigError: unknown format or key, wrong type or value, missing root.
    """
    cfg = _checked_copy(cfg, _KEYS, "'format' and 'image_size'", "instance data")
    fmt = _choice(cfg.get("format"), FORMATS, "data.format (instance segmentation)")
    if fmt == "instance_synthetic":
        cfg["root"] = None if cfg.get("root") is None else str(_resolve_root(cfg["root"], base_dir, False))
    else:
        if cfg.get("root") is None:
            raise ConfigError(f"data.root is required for format '{fmt}'"
                              + (f"; for nuclei it is the folder where `{NUCLEI_PIP} ROOT` put the wheel"
                                 if fmt == "nuclei" else ""))
        # a missing nuclei folder is reported when it is read, with the command that fetches the data
        cfg["root"] = str(_resolve_root(cfg["root"], base_dir, fmt != "nuclei"))
    if cfg.get("image_size") is None:
        raise ConfigError("data.image_size is required ([H, W] of the training batch)")
    cfg["image_size"] = _size(cfg["image_size"], "data.image_size")
    cfg["class_dir"] = None if cfg.get("class_dir") is None else _typed(cfg["class_dir"], str, "data.class_dir")
    cfg["num_classes"] = _num_classes(cfg, fmt)
    cfg["class_names"] = _class_names(cfg.get("class_names"), cfg["num_classes"])
    cfg["max_instances"] = _int(cfg.get("max_instances", 100), "data.max_instances", 1)
    cfg["min_area"] = _int(cfg.get("min_area", 16), "data.min_area", 1)
    cfg["resize"] = _choice(cfg.get("resize", "stretch"), ("stretch", "letterbox"), "data.resize")
    cfg["cache"] = _typed(cfg.get("cache", False), bool, "data.cache")
    cfg["image_dir"] = _typed(cfg.get("image_dir", "images"), str, "data.image_dir")
    cfg["mask_dir"] = _typed(cfg.get("mask_dir", "masks"), str, "data.mask_dir")
    spec = dict(_typed(cfg.get("synthetic") or {}, Mapping, "data.synthetic"))
    if set(spec) - {"num_images", "seed"}:
        raise ConfigError(f"data.synthetic: unknown keys {sorted(set(spec) - {'num_images', 'seed'})}; "
                          f"known keys are num_images, seed")
    cfg["synthetic"] = {"num_images": _int(spec.get("num_images", 200), "data.synthetic.num_images", 2),
                        "seed": _int(spec.get("seed", 0), "data.synthetic.seed")}
    cfg["tile_size"] = _int(cfg.get("tile_size", 128), "data.tile_size", 16)
    if fmt == "nuclei" and NUCLEI_SIZE % cfg["tile_size"]:
        raise ConfigError(f"data.tile_size must divide {NUCLEI_SIZE} (the nuclei image), got {cfg['tile_size']}")
    cfg["splits"] = dict(_typed(cfg.get("splits") or {}, Mapping, "data.splits"))
    if fmt == "instance_synthetic" and not cfg["splits"]:
        n = cfg["synthetic"]["num_images"]
        cut = max(1, int(n * 0.8))
        cfg["splits"] = {"train": f"0-{cut - 1}", "val": f"{cut}-{n - 1}"}
    cfg["augment"] = _augment(cfg.get("augment"))
    return cfg


def _num_classes(cfg, fmt):
    given = cfg.get("num_classes")
    if fmt in _FIXED_CLASSES:
        if given is not None and given != _FIXED_CLASSES[fmt]:
            raise ConfigError(f"data.num_classes is {given} but format '{fmt}' has {_FIXED_CLASSES[fmt]} classes "
                              f"(background included); remove data.num_classes")
        return _FIXED_CLASSES[fmt]
    if given is None:
        if cfg.get("class_names"):
            given = len(cfg["class_names"])
        elif fmt == "instance_folder" and cfg["class_dir"]:
            raise ConfigError("data.num_classes is required with data.class_dir (class ids 1..num_classes-1)")
        else:
            given = 4 if fmt == "instance_synthetic" else 2
    num = _int(given, "data.num_classes", 2)
    if fmt == "instance_synthetic" and num > len(synthetic.SHAPES) + 1:
        raise ConfigError(f"data.num_classes must be <= {len(synthetic.SHAPES) + 1} for instance_synthetic, "
                          f"got {num}")
    if fmt == "instance_folder" and not cfg["class_dir"] and num != 2:
        raise ConfigError(f"data.num_classes is {num} but without data.class_dir every instance is class 1 "
                          f"(num_classes 2); give data.class_dir with the class maps")
    return num


def _augment(value):
    spec = dict(_typed(value or {}, Mapping, "data.augment"))
    extra = set(spec) - {"hflip", "vflip", "scale"}
    if extra:
        raise ConfigError(f"data.augment: unknown keys {sorted(extra)} for instance data; known keys are hflip, "
                          f"vflip, scale")
    scale = spec.get("scale")
    if scale is not None and (
            not isinstance(scale, (list, tuple)) or len(scale) != 2 or scale[0] > scale[1]
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in scale)):
        raise ConfigError(f"data.augment.scale must be [min, max] with 0 < min <= max, got {scale!r}")
    return {"hflip": _typed(spec.get("hflip", False), bool, "data.augment.hflip"),
            "vflip": _typed(spec.get("vflip", False), bool, "data.augment.vflip"),
            "scale": None if scale is None else [float(v) for v in scale]}


def instance_class_names(data_cfg):
    """The ``num_classes`` class names of an instance data config, ``background`` first."""
    cfg = validate_instance_data_config(data_cfg)
    if cfg["class_names"]:
        return tuple(cfg["class_names"])
    if cfg["format"] == "instance_synthetic":
        return synthetic.class_names(cfg["num_classes"])
    if cfg["format"] == "coco":
        return get_format("coco").class_names(cfg)
    if cfg["format"] == "nuclei":
        return ("background", "nucleus")
    return ("background",) + tuple(f"class_{i}" for i in range(1, cfg["num_classes"]))


# ---------------------------------------------------------------------------------------------------- raw samples


def _instances(image, masks, classes):
    """A sample dict from bool masks (N, H, W): boxes are the masks' tight boxes."""
    masks = np.asarray(masks, bool).reshape(-1, *image.shape[:2])
    return {"image": image, "boxes": masks_to_boxes(masks), "classes": np.asarray(classes, np.int32).reshape(-1),
            "masks": masks}


def _drop_small(sample, min_area):
    keep = sample["masks"].sum(axis=(1, 2)) >= min_area
    return _instances(sample["image"], sample["masks"][keep], sample["classes"][keep])


def synthetic_instances(index, image_size=(128, 128), num_classes=4, seed=0, min_area=16):
    """One image of the synthetic instance dataset.

    Shapes of kinds 1..num_classes-1 (disc, rectangle, triangle, ...; `kseg.data.synthetic`) are painted over a
    textured background, later ones on top; an instance's mask is the part of its shape left visible.

    Args:
        index: image number; the image depends only on (seed, index).
        image_size: (H, W).
        num_classes: 2 to 8, background included.
        seed: dataset seed.
        min_area: instances with fewer visible pixels are dropped (hidden under the others).

    Returns:
        dict: ``image`` uint8 (H, W, 3), ``boxes`` float32 (N, 4) ``[y1, x1, y2, x2]``, ``classes`` int32 (N,),
        ``masks`` bool (N, H, W).
    """
    height, width = image_size
    rng = np.random.default_rng([seed, index, 5])  # 5: not the stream of the semantic synthetic image `index`
    shapes = [synthetic.random_shape(rng, num_classes, height, width) for _ in range(rng.integers(2, 8))]
    image, regions = synthetic.render_layers(synthetic.random_background(rng, height, width), shapes, rng)
    visible = np.array(regions, bool)
    for i in range(len(visible) - 1):
        visible[i] &= ~np.any(visible[i + 1:], axis=0)
    return _drop_small(_instances(image, visible, [s["kind"] for s in shapes]), min_area)


def read_coco_sample(image_path, label_ref):
    """A COCO image with its instances, crowd regions dropped.

    Args:
        image_path: the image file.
        label_ref: the ``"instances.json::image_id"`` reference of a ``coco`` sample.

    Returns:
        dict as `synthetic_instances`; ``boxes`` are the annotations' ``bbox`` converted from ``[x, y, w, h]`` to
        ``[y1, x1, y2, x2]``, classes the contiguous ids 1..80.
    """
    image = read_image(image_path)
    inst = read_instances(label_ref)
    keep = ~inst["crowd"]
    if inst["masks"].shape[1:] != image.shape[:2]:
        raise DataError(f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but {split_ref(label_ref)[0]} "
                        f"gives {inst['masks'].shape[2]}x{inst['masks'].shape[1]} (WxH) for it; fix the annotation")
    x, y, w, h = inst["boxes"][keep].T
    return {"image": image, "boxes": np.stack([y, x, y + h, x + w], axis=1).astype(np.float32),
            "classes": inst["classes"][keep], "masks": inst["masks"][keep]}


def read_instance_maps(image_path, instance_path, class_path=None, num_classes=2):
    """An image with its instance label map (and class map).

    Args:
        image_path: the image file.
        instance_path: 8- or 16-bit PNG / TIFF, 0 background, every other value one instance.
        class_path: class map (class ids per pixel) or None (every instance is class 1).
        num_classes: classes, background included (checks the class map).

    Returns:
        dict as `synthetic_instances`, instances in increasing label value.
    """
    image = read_image(image_path)
    label = read_mask(instance_path)
    if label.shape != image.shape[:2]:
        raise DataError(f"{instance_path}: instance map is {label.shape[1]}x{label.shape[0]} but its image "
                        f"{image_path} is {image.shape[1]}x{image.shape[0]} (WxH); maps must have their image's size")
    ids = np.unique(label)
    ids = ids[ids != 0]
    masks = label[None] == ids[:, None, None]
    if class_path is None:
        return _instances(image, masks, np.ones(len(ids), np.int32))
    class_map = read_mask(class_path)
    if class_map.shape != label.shape:
        raise DataError(f"{class_path}: class map is {class_map.shape[1]}x{class_map.shape[0]} but the instance "
                        f"map {instance_path} is {label.shape[1]}x{label.shape[0]}; they must match")
    if class_map.min() < 0 or class_map.max() >= num_classes:
        raise DataError(f"{class_path}: class values {class_map.min()}-{class_map.max()} are outside "
                        f"0-{num_classes - 1}; fix the map or set data.num_classes")
    classes = np.array([np.bincount(class_map[m], minlength=num_classes).argmax() for m in masks], np.int32)
    if (classes == 0).any():
        raise DataError(f"{class_path}: instance {ids[classes == 0][0]} of {instance_path} lies mostly on class 0 "
                        f"(background); every instance needs a foreground class")
    return _instances(image, masks, classes)


@functools.lru_cache(maxsize=2)
def read_nuclei(root):
    """The stardist nuclei image and its instance map, from the wheel or the two .tif files in ``root``.

    Returns:
        (image uint8 (512, 512, 3) (the grey image in three channels), instance map int32 (512, 512)).

    Raises:
        DataError: neither is in ``root``, naming the folder and the pip command that fetches the wheel.
    """
    root = Path(root)
    files = [root / Path(name).name for name in NUCLEI_FILES]
    wheels = sorted(root.glob("stardist-0.9.2-*.whl"))
    try:
        # 16-bit greyscale TIFFs, which Pillow reads (mode I;16)
        if all(f.is_file() for f in files):
            image, label = (np.asarray(Image.open(f)) for f in files)
        elif wheels:
            with zipfile.ZipFile(wheels[0]) as wheel:
                image, label = (np.asarray(Image.open(io.BytesIO(wheel.read(name)))) for name in NUCLEI_FILES)
        else:
            raise DataError(f"{root}: holds neither the stardist 0.9.2 wheel nor img2d.tif + mask2d.tif; fetch the "
                            f"wheel with `{NUCLEI_PIP} {root}`")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{wheels[0] if wheels else root}: cannot read the nuclei image ({exc}); fetch the wheel "
                        f"again with `{NUCLEI_PIP} {root}`") from None
    if image.shape != (NUCLEI_SIZE, NUCLEI_SIZE) or label.shape != image.shape:
        raise DataError(f"{root}: expected 512x512 img2d.tif and mask2d.tif, got {image.shape} and {label.shape}")
    grey = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), label.astype(np.int32)


def nuclei_tiles(tile_size=128):
    """The (row, column) grid positions of the nuclei tiles, by split: ``{"train": [...], "val": [...]}``.

    A tile is in ``val`` when ``(row + column) % 4 == 0``: with 128-pixel tiles 4 of the 16, one per row and per
    column, so that validation covers the whole image.
    """
    n = NUCLEI_SIZE // tile_size
    grid = [(r, c) for r in range(n) for c in range(n)]
    return {"train": [t for t in grid if (t[0] + t[1]) % 4], "val": [t for t in grid if (t[0] + t[1]) % 4 == 0]}


def read_nuclei_tile(root, row, column, tile_size=128, min_area=16):
    """One tile of the nuclei image; nuclei cut by its border are kept when ``min_area`` pixels are inside.

    Returns:
        dict as `synthetic_instances`, every instance class 1.
    """
    image, label = read_nuclei(str(root))
    window = np.s_[row * tile_size:(row + 1) * tile_size, column * tile_size:(column + 1) * tile_size]
    label = label[window]
    ids = np.unique(label)
    ids = ids[ids != 0]
    sample = _instances(np.ascontiguousarray(image[window]), label[None] == ids[:, None, None],
                        np.ones(len(ids), np.int32))
    return _drop_small(sample, min_area)


# --------------------------------------------------------------------------------------------- samples of a split


def list_instance_samples(data_cfg, split):
    """The ``[(image_ref, label_ref), ...]`` of a split (files, or references inside generated / packed data)."""
    cfg = validate_instance_data_config(data_cfg)
    fmt = cfg["format"]
    if fmt == "instance_synthetic":
        n = cfg["synthetic"]["num_images"]
        return pick_range([(f"instance_synthetic image {i}", str(i)) for i in range(n)],
                          _split_spec(cfg, split), split, "data.synthetic.num_images")
    if fmt == "nuclei":
        tiles = nuclei_tiles(cfg["tile_size"])
        spec = _split_spec(cfg, split, split if split in ("train", "val", "all") else None)
        if spec not in ("train", "val", "all"):
            raise ConfigError(f"data.splits.{split} '{spec}': the nuclei tiles split into train, val (or all)")
        chosen = tiles["train"] + tiles["val"] if spec == "all" else tiles[spec]
        read_nuclei(cfg["root"])  # a missing file shows here, not inside tf.data
        return [(cfg["root"], join_ref(r, c)) for r, c in sorted(chosen)]
    if fmt == "coco":
        return get_format("coco").samples(cfg, split)
    pairs = Format().samples(cfg, split)
    if cfg["class_dir"] is None:
        return pairs
    class_maps = Format().masks_by_stem(Path(cfg["root"]) / cfg["class_dir"])
    out = []
    for image, instances in pairs:
        stem = Path(instances).stem
        if stem not in class_maps:
            raise DataError(f"{instances}: no class map for it in {Path(cfg['root']) / cfg['class_dir']} (matched by "
                            f"stem); add it or remove data.class_dir")
        out.append((image, join_ref(instances, class_maps[stem])))
    return out


def _split_spec(cfg, split, default=None):
    spec = cfg["splits"].get(split, default)
    if spec is None:
        raise ConfigError(f"data.splits has no '{split}' entry; add one, e.g. {split}: '0-99'")
    return spec


def read_instance_sample(cfg, image_ref, label_ref):
    """One sample of a validated config as stored (before sizing); dict as `synthetic_instances`."""
    fmt = cfg["format"]
    if fmt == "instance_synthetic":
        return synthetic_instances(int(label_ref), cfg["image_size"], cfg["num_classes"], cfg["synthetic"]["seed"],
                                   cfg["min_area"])
    if fmt == "nuclei":
        row, column = (int(v) for v in split_ref(label_ref))
        return read_nuclei_tile(image_ref, row, column, cfg["tile_size"], cfg["min_area"])
    if fmt == "coco":
        return read_coco_sample(image_ref, label_ref)
    return read_instance_maps(image_ref, *split_ref(label_ref), num_classes=cfg["num_classes"])


def load_instance_sample(data_cfg, image_ref, label_ref):
    """One sample brought to ``image_size``, small instances dropped, checked against ``max_instances``.

    Args:
        data_cfg: the instance data config (validated here).
        image_ref: image reference of `list_instance_samples`.
        label_ref: its label reference.

    Returns:
        dict: ``image`` uint8 (H, W, 3), ``boxes`` float32 (N, 4) (the masks' tight boxes), ``classes`` int32 (N,),
        ``masks`` bool (N, H, W), N <= ``max_instances``.

    Raises:
        DataError: unreadable or inconsistent files; more instances than ``data.max_instances``.
    """
    return _load(validate_instance_data_config(data_cfg), image_ref, label_ref)


def _load(cfg, image_ref, label_ref):
    """`load_instance_sample` of a validated config."""
    sample = fit_instances(read_instance_sample(cfg, image_ref, label_ref), cfg["image_size"], cfg["resize"])
    sample = _drop_small(sample, cfg["min_area"])
    if len(sample["classes"]) > cfg["max_instances"]:
        raise DataError(f"{image_ref}: {len(sample['classes'])} instances but data.max_instances is "
                        f"{cfg['max_instances']}; raise data.max_instances")
    return sample


def fit_instances(sample, size, mode="stretch"):
    """Brings a sample to ``size`` (H, W): ``stretch`` resizes, ``letterbox`` keeps the aspect and pads bottom / right
    with zeros. Masks by nearest neighbour; boxes recomputed from them."""
    height, width = size
    masks = sample["masks"]
    h, w = sample["image"].shape[:2]
    image, (rh, rw) = resize_image(sample["image"], size, mode)
    if (rh, rw) != (h, w):
        masks = _resize_masks(masks, (rh, rw))
    if (rh, rw) != (height, width):
        image = np.pad(image, ((0, height - rh), (0, width - rw), (0, 0)))
        masks = np.pad(masks, ((0, 0), (0, height - rh), (0, width - rw)))
    return _instances(image, masks, sample["classes"])


def _resize_masks(masks, size):
    out = np.zeros((len(masks), *size), bool)
    for i, mask in enumerate(masks):
        out[i] = cv2.resize(mask.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    return out


# ------------------------------------------------------------------------------------------------- augmentation


def augment_instances(sample, rng, augment, min_area=1):
    """Random flips, then a random zoom with a random crop (or zero padding) back to the sample's size.

    Args:
        sample: dict as `load_instance_sample`.
        rng: numpy Generator.
        augment: validated ``data.augment`` (``hflip``, ``vflip``, ``scale``).
        min_area: instances left with fewer pixels (cut off by the crop) are dropped.

    Returns:
        The augmented sample; boxes are the augmented masks' tight boxes.
    """
    image, masks = sample["image"], sample["masks"]
    if augment["hflip"] and rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    if augment["vflip"] and rng.random() < 0.5:
        image, masks = image[::-1], masks[:, ::-1]
    if augment["scale"] is not None:
        height, width = image.shape[:2]
        scale = rng.uniform(*augment["scale"])
        sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
        image = cv2.resize(np.ascontiguousarray(image), (sw, sh), interpolation=cv2.INTER_LINEAR)
        masks = _resize_masks(np.ascontiguousarray(masks), (sh, sw))
        # a window of the output size at a random place, over the zoomed image or around it
        top = int(rng.integers(min(0, sh - height), max(0, sh - height) + 1))
        left = int(rng.integers(min(0, sw - width), max(0, sw - width) + 1))
        out_image = np.zeros((height, width, 3), image.dtype)
        out_masks = np.zeros((len(masks), height, width), bool)
        y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + height, sh), min(left + width, sw)
        out_image[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
        out_masks[:, y0 - top:y1 - top, x0 - left:x1 - left] = masks[:, y0:y1, x0:x1]
        image, masks = out_image, out_masks
    return _drop_small(_instances(np.ascontiguousarray(image), np.ascontiguousarray(masks), sample["classes"]),
                       min_area)


def pad_instances(sample, max_instances):
    """The fixed-size arrays of one training-batch entry: ``(image uint8 (H, W, 3), boxes float32 (M, 4),
    classes int32 (M,), masks uint8 (M, H, W))``, zeros past the sample's instances (M = ``max_instances``)."""
    n = len(sample["classes"])
    height, width = sample["image"].shape[:2]
    boxes = np.zeros((max_instances, 4), np.float32)
    classes = np.zeros(max_instances, np.int32)
    masks = np.zeros((max_instances, height, width), np.uint8)
    boxes[:n], classes[:n], masks[:n] = sample["boxes"], sample["classes"], sample["masks"]
    return sample["image"], boxes, classes, masks


def unpad_instances(image, boxes, classes, masks):
    """The sample dict of one padded entry (`pad_instances`): the slots with a class > 0."""
    keep = np.asarray(classes) > 0
    return {"image": np.asarray(image), "boxes": np.asarray(boxes)[keep], "classes": np.asarray(classes)[keep],
            "masks": np.asarray(masks)[keep].astype(bool)}


# ------------------------------------------------------------------------------------------------------ tf.data


def build_instance_dataset(data_cfg, split, batch_size, augment=False, shuffle=None, repeat=False, seed=None,
                           drop_remainder=False):
    """The training / evaluation batches of a split (the training-batch contract of Mask R-CNN).

    Args:
        data_cfg: the instance data config (validated here).
        split: split name, e.g. "train".
        batch_size: images per batch.
        augment: apply ``data.augment`` (flips, zoom + crop; boxes follow the masks, vanished instances dropped).
        shuffle: reshuffle every epoch; None shuffles the "train" split only.
        repeat: repeat forever.
        seed: int for a reproducible order and augmentation, or None.
        drop_remainder: drop the last incomplete batch (static batch dimension).

    Returns:
        tf.data.Dataset of dicts: ``image`` float32 (B, H, W, 3) raw pixels in [0, 255], ``boxes`` float32 (B, M, 4)
        ``[y1, x1, y2, x2]`` pixels, ``classes`` int32 (B, M) (0: padding), ``masks`` uint8 (B, M, H, W);
        M = ``data.max_instances``. Decode errors surface as TF op errors carrying the DataError text
        (`kseg.data.data_errors` gives the DataError back).
    """
    import tensorflow as tf

    cfg = validate_instance_data_config(data_cfg)
    samples = list_instance_samples(cfg, split)
    shuffle = split == "train" if shuffle is None else shuffle
    height, width = cfg["image_size"]
    m = cfg["max_instances"]
    dtypes = [tf.uint8, tf.float32, tf.int32, tf.uint8]
    shapes = [(height, width, 3), (m, 4), (m,), (m, height, width)]

    def set_shapes(*arrays):
        return tuple(tf.ensure_shape(a, s) for a, s in zip(arrays, shapes))

    def decode(image_ref, label_ref):
        return pad_instances(_load(cfg, image_ref.decode(), label_ref.decode()), m)

    def tf_decode(refs):
        return set_shapes(*tf.numpy_function(decode, [refs[0], refs[1]], dtypes, stateful=False))

    ds = tf.data.Dataset.from_tensor_slices(np.array(samples, dtype=str))
    if cfg["cache"]:
        ds = ds.map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    deterministic = seed is not None or not shuffle
    if not cfg["cache"]:
        ds = ds.map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if augment and (cfg["augment"]["hflip"] or cfg["augment"]["vflip"] or cfg["augment"]["scale"]):
        def numpy_augment(image, boxes, classes, masks, draw):
            rng = np.random.default_rng(int(draw) & (2**63 - 1))
            sample = augment_instances(unpad_instances(image, boxes, classes, masks), rng, cfg["augment"],
                                       cfg["min_area"])
            return pad_instances(sample, m)

        def tf_augment(arrays, draw):
            return set_shapes(*tf.numpy_function(numpy_augment, [*arrays, draw], dtypes, stateful=False))

        # one random draw per sample keeps augmentation reproducible under parallel calls
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed))
        ds = ds.map(tf_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def to_contract(image, boxes, classes, masks):
        return {"image": tf.cast(image, tf.float32), "boxes": boxes, "classes": classes, "masks": masks}

    return ds.map(to_contract, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
