"""Validation of the ``data:`` section of an experiment config (schema in `kseg.data`)."""

import copy
import os
from collections.abc import Mapping
from pathlib import Path

from kseg.data.formats import get_format
from kseg.errors import ConfigError

_KEYS = ("format", "root", "num_classes", "image_size", "ignore_index", "splits", "augment", "resize",
         "image_dir", "mask_dir", "palette", "class_names", "synthetic", "crop_size", "crop_pad", "cache",
         "volume_size", "channels", "spacing", "depth", "max_depth", "voxel_size")
_AUGMENT_KEYS = ("hflip", "vflip", "rot90", "rotate", "scale", "translate", "brightness", "contrast", "elastic", "fill")
# Volume formats (nifti): their own keys and augmentations (kseg.data.volumes).
_VOLUME_KEYS = ("volume_size", "channels", "spacing")
_VOLUME_AUGMENT_KEYS = ("hflip", "vflip", "dflip", "rot90", "rotate", "intensity_scale", "intensity_shift")
_SYNTHETIC_MAX_CLASSES = 8
# RGB-D formats: depth as extra input channels (kseg.data.depth)
_DEPTH_CHANNELS = {"none": 3, "raw": 4, "hha": 6}


def validate_data_config(cfg, base_dir=None):
    """Checks a data config and fills in defaults.

    Args:
        cfg: the ``data`` mapping.
        base_dir: folder of the config file; a relative ``root`` not found from the current
            directory is looked up there.

    Returns:
        A new dict: absolute ``root``, every key present (see the schema in `kseg.data`).

    Raises:
        ConfigError: unknown format or key, missing root, wrong type or value.
    """
    cfg = _checked_copy(cfg, _KEYS, "'format', 'root' and 'image_size'")
    fmt = get_format(_require(cfg, "format", str))
    cfg["root"] = str(fmt.locate(_resolve_root(_require(cfg, "root", (str, os.PathLike)), base_dir,
                                               fmt.root_must_exist)))
    _depth(cfg, fmt)
    if fmt.volumetric:
        _volume(cfg, fmt)
    else:
        for key in _VOLUME_KEYS:
            # channels is derived for images; a validated config carries it and may be validated again
            if key in cfg and not (key == "channels" and cfg[key] == fmt.channels(cfg)):
                raise ConfigError(f"data.{key} is for volume formats (nifti) only; format '{fmt.name}' has images"
                                  + ("; RGB-D formats take data.depth: none | raw | hha" if key == "channels" else ""))
        cfg["image_size"] = _size(_require(cfg, "image_size", (int, list, tuple)), "data.image_size")
        cfg["channels"] = fmt.channels(cfg)
    cfg["num_classes"] = _num_classes(cfg, fmt)
    cfg["ignore_index"] = _int(cfg.get("ignore_index", 255), "data.ignore_index")
    if 0 <= cfg["ignore_index"] < cfg["num_classes"]:
        raise ConfigError(f"data.ignore_index {cfg['ignore_index']} is a class id (num_classes "
                          f"{cfg['num_classes']}); use "
                          + ("255" if cfg["num_classes"] <= 255 else "a value past the classes, e.g. 65535"))
    cfg["resize"] = _choice(cfg.get("resize", "stretch"),
                            ("stretch", "letterbox", "center") if fmt.volumetric else ("stretch", "letterbox"),
                            "data.resize")
    cfg["image_dir"] = _typed(cfg.get("image_dir", fmt.image_dir), str, "data.image_dir")
    cfg["mask_dir"] = _typed(cfg.get("mask_dir", fmt.mask_dir), str, "data.mask_dir")
    cfg["palette"] = _palette(cfg.get("palette"))
    cfg["class_names"] = _class_names(cfg.get("class_names"), cfg["num_classes"])
    cfg["synthetic"] = _synthetic(cfg) if fmt.name == "synthetic" else None
    cfg["splits"] = _splits(cfg)
    cfg["augment"] = _volume_augment(cfg.get("augment")) if fmt.volumetric else _augment(cfg.get("augment"))
    cfg["crop_pad"] = _typed(cfg.get("crop_pad", False), bool, "data.crop_pad")
    cfg["crop_size"] = _crop_size(cfg)
    cfg["cache"] = _typed(cfg.get("cache", False), bool, "data.cache")
    return cfg


def _checked_copy(cfg, keys, required, kind=""):
    """A deep copy of a data section after checking it is a mapping of known keys (``kind`` names the data kind in
    the message, e.g. "instance data")."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"data: expected a mapping with at least {required}, got {cfg!r}")
    for key in cfg:
        if key not in keys:
            raise ConfigError(f"data.{key}: unknown key{' for ' + kind if kind else ''}; known keys are "
                              f"{', '.join(keys)}")
    return copy.deepcopy(dict(cfg))


def _require(cfg, key, types):
    if cfg.get(key) is None:
        raise ConfigError(f"data.{key} is required")
    return _typed(cfg[key], types, f"data.{key}")


def _typed(value, types, name):
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        names = " or ".join(t.__name__ for t in _as_tuple(types))
        raise ConfigError(f"{name} must be {names}, got {value!r}")
    return value


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _int(value, name, minimum=None):
    _typed(value, int, name)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _number(value, name, lo, hi):
    _typed(value, (int, float), name)
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
    return float(value)


def _choice(value, choices, name):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _resolve_root(root, base_dir, must_exist):
    root = Path(root).expanduser()
    candidates = [root] if root.is_absolute() else [Path.cwd() / root] + ([Path(base_dir) / root] if base_dir else [])
    for path in candidates:
        if path.exists():
            return path.resolve()
    if must_exist:
        raise ConfigError(f"data.root '{root}' not found (looked for {' and '.join(map(str, candidates))}); "
                          f"point it at the dataset folder")
    return candidates[0].resolve()


def _size(value, name, n=2):
    size = [value] * n if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(size, (list, tuple)) or len(size) != n
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        axes = "[height, width]" if n == 2 else "[depth, height, width]"
        raise ConfigError(f"{name} must be {axes} (positive integers), got {value!r}")
    return list(size)


def _depth(cfg, fmt):
    """``depth`` (none | raw | hha, = raw) and ``max_depth`` (metres, = 10) of RGB-D formats."""
    if not fmt.rgbd:
        for key in ("depth", "max_depth"):
            if key in cfg:
                raise ConfigError(f"data.{key} is for RGB-D formats only; format '{fmt.name}' has no depth")
        return
    cfg["depth"] = _choice(cfg.get("depth", "raw"), tuple(_DEPTH_CHANNELS), "data.depth")
    cfg["max_depth"] = _number(cfg.get("max_depth", 10.0), "data.max_depth (metres)", 0.1, 1000)


def depth_channels(depth):
    """Input channels for a ``data.depth`` setting: RGB 3, RGB + raw depth 4, RGB + HHA 6."""
    return _DEPTH_CHANNELS[depth]


def _volume(cfg, fmt):
    """``volume_size`` [D, H, W] (required; ``image_size`` becomes the same, for the trainer), ``channels``
    (= 1) and ``spacing`` (= null: no resampling to a voxel size first); point-cloud formats take
    ``voxel_size`` (metres or the cloud's units, required) instead of ``spacing`` and have one channel
    (occupancy)."""
    if fmt.points:
        if cfg.get("spacing") is not None:
            raise ConfigError(f"data.spacing is for NIfTI volumes; format '{fmt.name}' voxelises point clouds "
                              f"at data.voxel_size")
        cfg["voxel_size"] = _number(_require(cfg, "voxel_size", (int, float)), "data.voxel_size", 1e-6, 1e6)
        if cfg.get("channels", 1) != 1:
            raise ConfigError(f"data.channels must be 1 for format '{fmt.name}' (occupancy), got {cfg['channels']}")
    elif cfg.get("voxel_size") is not None:
        raise ConfigError("data.voxel_size is for point-cloud formats; NIfTI volumes take data.spacing")
    cfg["volume_size"] = _size(_require(cfg, "volume_size", (int, list, tuple)), "data.volume_size", 3)
    given = cfg.get("image_size")
    if given is not None and (not isinstance(given, (list, tuple)) or list(given) != cfg["volume_size"]):
        raise ConfigError(f"data.image_size {given!r} differs from data.volume_size "
                          f"{cfg['volume_size']}; for volumes give data.volume_size only")
    cfg["image_size"] = list(cfg["volume_size"])
    cfg["channels"] = _int(cfg.get("channels", 1), "data.channels", 1)
    spacing = cfg.get("spacing")
    if spacing is not None and (
            not isinstance(spacing, (list, tuple)) or len(spacing) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in spacing)):
        raise ConfigError(f"data.spacing must be null or [depth, height, width] voxel sizes in mm (positive), "
                          f"got {spacing!r}")
    cfg["spacing"] = None if spacing is None else [float(v) for v in spacing]


def _crop_size(cfg):
    if cfg.get("crop_size") is None:
        return None
    crop = _size(cfg["crop_size"], "data.crop_size", len(cfg["image_size"]))
    if not cfg["crop_pad"] and any(c > s for c, s in zip(crop, cfg["image_size"])):
        raise ConfigError(f"data.crop_size {crop} is larger than data.image_size {cfg['image_size']} (crops are "
                          f"cut from the image brought to image_size); lower crop_size, raise image_size, or set "
                          f"data.crop_pad: true to pad crops with data.ignore_index")
    return crop


def _num_classes(cfg, fmt):
    given = cfg.get("num_classes")
    if fmt.class_counts:
        given = fmt.class_counts[0] if given is None else given
        if given not in fmt.class_counts:
            raise ConfigError(f"data.num_classes is {given!r} but format '{fmt.name}' has "
                              f"{' or '.join(map(str, fmt.class_counts))} classes; choose one")
        return given
    if fmt.num_classes is not None:
        if given is not None and given != fmt.num_classes:
            raise ConfigError(f"data.num_classes is {given} but format '{fmt.name}' has {fmt.num_classes} classes; "
                              f"remove data.num_classes")
        return fmt.num_classes
    if given is None:
        known = cfg.get("class_names") or cfg.get("palette")
        if fmt.name == "synthetic":
            given = 4
        elif known:
            given = len(known)
        elif fmt.default_num_classes:
            given = fmt.default_num_classes
        else:
            raise ConfigError(f"data.num_classes is required for format '{fmt.name}' (or give data.class_names)")
    limit = _SYNTHETIC_MAX_CLASSES if fmt.name == "synthetic" else None
    num = _int(given, "data.num_classes", 2 if fmt.name == "synthetic" else 1)
    if limit and num > limit:
        raise ConfigError(f"data.num_classes must be <= {limit} for the synthetic dataset, got {num}")
    return num


def _palette(value):
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in value)
    if not ok:
        raise ConfigError(f"data.palette must be a list of [R, G, B] triples (0-255), one per class; got {value!r}")
    colours = [tuple(c) for c in value]
    if len(set(colours)) != len(colours):
        raise ConfigError("data.palette lists the same colour twice; each class needs its own colour")
    return [list(c) for c in colours]


def _class_names(value, num_classes):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != num_classes or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"data.class_names must be a list of {num_classes} strings, got {value!r}")
    return list(value)


def _synthetic(cfg):
    spec = dict(_typed(cfg.get("synthetic") or {}, Mapping, "data.synthetic"))
    for key in spec:
        if key not in ("num_images", "size", "seed"):
            raise ConfigError(f"data.synthetic.{key}: unknown key; known keys are num_images, size, seed")
    return {"num_images": _int(spec.get("num_images", 200), "data.synthetic.num_images", 2),
            "size": _size(spec.get("size", cfg["image_size"]), "data.synthetic.size"),
            "seed": _int(spec.get("seed", 0), "data.synthetic.seed")}


def _splits(cfg):
    splits = dict(_typed(cfg.get("splits") or {}, Mapping, "data.splits"))
    if cfg["synthetic"] and not splits:
        n = cfg["synthetic"]["num_images"]
        cut = max(1, int(n * 0.8))
        splits = {"train": f"0-{cut - 1}", "val": f"{cut}-{n - 1}"}
    for name, spec in splits.items():
        if isinstance(spec, Mapping):
            extra = set(spec) - {"image_dir", "mask_dir"}
            if extra:
                raise ConfigError(f"data.splits.{name}: unknown keys {sorted(extra)}; use image_dir and mask_dir")
            splits[name] = dict(spec)
        else:
            _typed(spec, str, f"data.splits.{name}")
    return splits


def _volume_augment(value):
    spec = dict(_typed(value or {}, Mapping, "data.augment"))
    for key in spec:
        if key not in _VOLUME_AUGMENT_KEYS:
            raise ConfigError(f"data.augment.{key}: unknown key for volumes; known keys are "
                              f"{', '.join(_VOLUME_AUGMENT_KEYS)}")
    out = {key: _typed(spec.get(key, False), bool, f"data.augment.{key}")
           for key in ("hflip", "vflip", "dflip", "rot90")}
    out["rotate"] = _number(spec.get("rotate", 0.0), "data.augment.rotate (fraction of a full turn)", 0, 0.5)
    out["intensity_scale"] = _number(spec.get("intensity_scale", 0.0), "data.augment.intensity_scale", 0, 0.9)
    out["intensity_shift"] = _number(spec.get("intensity_shift", 0.0), "data.augment.intensity_shift", 0, 10)
    return out


def _augment(value):
    spec = dict(_typed(value or {}, Mapping, "data.augment"))
    for key in spec:
        if key not in _AUGMENT_KEYS:
            raise ConfigError(f"data.augment.{key}: unknown key; known keys are {', '.join(_AUGMENT_KEYS)}")
    out = {"hflip": _typed(spec.get("hflip", False), bool, "data.augment.hflip"),
           "vflip": _typed(spec.get("vflip", False), bool, "data.augment.vflip"),
           "rot90": _typed(spec.get("rot90", False), bool, "data.augment.rot90"),
           "rotate": _number(spec.get("rotate", 0.0), "data.augment.rotate (fraction of a full turn)", 0, 0.5),
           "translate": _number(spec.get("translate", 0.0), "data.augment.translate", 0, 0.9),
           "brightness": _number(spec.get("brightness", 0.0), "data.augment.brightness", 0, 1),
           "contrast": _number(spec.get("contrast", 0.0), "data.augment.contrast", 0, 1),
           "fill": _choice(spec.get("fill", "constant"), ("constant", "reflect"), "data.augment.fill"),
           "scale": None, "elastic": None}
    if spec.get("scale") is not None:
        scale = spec["scale"]
        if (not isinstance(scale, (list, tuple)) or len(scale) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in scale)
                or scale[0] > scale[1]):
            raise ConfigError(f"data.augment.scale must be [min, max] with 0 < min <= max, got {scale!r}")
        out["scale"] = [float(v) for v in scale]
    if spec.get("elastic") is not None:
        elastic = dict(_typed(spec["elastic"], Mapping, "data.augment.elastic"))
        extra = set(elastic) - {"alpha", "sigma", "p"}
        if extra:
            raise ConfigError(f"data.augment.elastic: unknown keys {sorted(extra)}; use alpha, sigma, p")
        out["elastic"] = {"alpha": _number(elastic.get("alpha", 34), "data.augment.elastic.alpha", 0, 1e4),
                          "sigma": _number(elastic.get("sigma", 4), "data.augment.elastic.sigma", 0.1, 1e3),
                          "p": _number(elastic.get("p", 1.0), "data.augment.elastic.p", 0, 1)}
    return out
