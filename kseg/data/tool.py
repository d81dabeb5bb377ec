"""``kseg data``: list the supported layouts, check a dataset, picture its samples.

``check`` reads every sample of every split as stored (no resizing) and collects every fault instead of stopping
at the first: files without their counterpart, unreadable files, image/label size mismatches, label values
outside the class list. It reports the counts per split, the pixels of each class (and of the ignore label) and
the image sizes. ``show`` writes a grid of samples, brought to ``data.image_size`` as training sees them, with
their labels overlaid (RGB-D: the depth channel beside each image; volumes: the middle axial slice).

Instance datasets (`kseg.instance.data`: a config whose model is an instance model such as ``maskrcnn``, or a
folder of format ``instance_folder``, ``nuclei`` or ``instance_synthetic``) are checked per instance: besides
unreadable files and instance / class maps of another size, a class outside the class list and more instances
than ``data.max_instances`` are faults; instances that training drops (fewer than ``data.min_area`` pixels at
``data.image_size``) and images without an instance are warnings. The report gives the instances per image, their
areas and classes. ``show`` draws each instance's mask, contour, box and class (`kseg.viz.draw_instances`).

Example:
    kseg data formats
    kseg data check configs/pspnet_resnet50_voc-480x480.yaml
    kseg data check ~/data/iccv09Data --format stanford_background
    kseg data show ~/data/VOCdevkit --format voc --out voc.png --num 8
    kseg data check ~/data/cells --format instance_folder
"""

import re
from collections import Counter
from pathlib import Path

import numpy as np

from kseg.data.config import validate_data_config
from kseg.data.formats import FORMATS, Format, get_format, join_ref, split_ref
from kseg.errors import ConfigError, DataError
from kseg.instance import data as idata
from kseg.progress import Progress

# Placeholders when a dataset is given as a folder: checking reads samples as stored, so sizes do not matter
# (instance datasets: data.min_area and data.max_instances are checked at this image_size).
_PATH_DEFAULTS = {"image_size": [256, 256], "volume_size": [32, 32, 32], "voxel_size": 0.05}
# Instance formats a folder can name: "coco" names the semantic view there (a maskrcnn config reads its instances).
_INSTANCE_ONLY = tuple(name for name in idata.FORMATS if name not in FORMATS)
# What `kseg data formats` says of the instance formats (classes, layout under data.root).
INSTANCE_LAYOUTS = {
    "coco": ("81", "MS COCO instances: {train,val}2017/*.jpg, annotations/instances_{train,val}2017.json; crowd "
                   "regions dropped"),
    "instance_folder": ("2 or config", "images/* with instance label maps masks/* (0 background, one value per "
                                       "instance), optional class maps (data.class_dir), matched by stem"),
    "instance_synthetic": ("4 (2-8)", "built-in textured shapes that occlude each other, generated in memory"),
    "nuclei": ("2", "stardist 0.9.2 wheel (pip download stardist==0.9.2 --no-deps -d ROOT) or its img2d.tif + "
                    "mask2d.tif: 512x512 fluorescence nuclei cut into data.tile_size tiles"),
}
# COCO's object size ranges (pixels of the segment as stored): small < 32^2 <= medium < 96^2 <= large.
_COCO_AREAS = (32 ** 2, 96 ** 2)


def data_config(source, fmt=None, num_classes=None, overrides=()):
    """The ``data`` section to inspect: from an experiment YAML file, or a dataset folder and its format.

    Args:
        source: a config file (``.yaml``/``.yml``) or a dataset folder.
        fmt: the format name (``--format``); required for a folder, overrides the config's otherwise.
        num_classes: for formats without a fixed class list (folder) or with several (pascal_context, nyudv2).
        overrides: ``key=value`` config overrides (config files only).

    Returns:
        The validated data config.
    """
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        from kseg.config import load_config
        from kseg.models.registry import model_task

        config = load_config(path, list(overrides))
        data = dict(config["data"])
        if fmt and fmt != data["format"]:
            raise ConfigError(f"{path}: data.format is {data['format']!r} but --format says {fmt!r}; drop one")
        if model_task(config["model"]["name"]) == "instance":
            return idata.validate_instance_data_config(data)
        return validate_data_config(data)
    if not fmt:
        raise ConfigError(f"{source}: a dataset folder needs --format (one of "
                          f"{', '.join(sorted(set(FORMATS) | set(_INSTANCE_ONLY)))})")
    if not path.exists():
        raise ConfigError(f"{source}: no such config file or dataset folder")
    if fmt in _INSTANCE_ONLY:
        data = {"format": fmt, "root": str(path), "image_size": _PATH_DEFAULTS["image_size"]}
        if num_classes is not None:
            data["num_classes"] = num_classes
        cfg = idata.validate_instance_data_config(data)
        if fmt == "nuclei":  # its tiles as they are
            cfg = idata.validate_instance_data_config({**cfg, "image_size": [cfg["tile_size"]] * 2})
        return cfg
    spec = get_format(fmt)
    data = {"format": fmt, "root": str(path)}
    if spec.volumetric:
        data["volume_size"] = _PATH_DEFAULTS["volume_size"]
        if spec.points:
            data["voxel_size"] = _PATH_DEFAULTS["voxel_size"]
    else:
        data["image_size"] = _PATH_DEFAULTS["image_size"]
    if num_classes is not None:
        data["num_classes"] = num_classes
    return validate_data_config(data)


def split_names(cfg):
    """The splits to scan: those of ``data.splits``; else train and val where the format names its own
    splits; else ``all`` (every image of the layout's image/mask folders)."""
    if cfg["splits"]:
        return list(cfg["splits"])
    if is_instance_config(cfg):
        if cfg["format"] != "instance_folder":
            return ["train", "val"]
        cfg["splits"]["all"] = {}
        return ["all"]
    fmt = get_format(cfg["format"])
    if fmt.default_split("train") is not None:
        return ["train", "val"]
    from kseg.data.formats import Format

    # every pair: the image/mask folders of folder-like layouts, all listed samples of the others
    cfg["splits"]["all"] = {} if type(fmt)._resolve is Format._resolve else "all"
    return ["all"]


def is_instance_config(cfg):
    """True for a validated instance data config (`kseg.instance.data.validate_instance_data_config` always sets
    ``max_instances``, a key the semantic schema does not have)."""
    return "max_instances" in cfg


def check(cfg, splits=None, progress=True):
    """Scans every sample of the given splits and collects faults and statistics.

    Instance configs (`is_instance_config`) are scanned by `check_instances`.

    Args:
        cfg: validated data config.
        splits: split names; default `split_names`.
        progress: draw a progress bar on stderr for long scans.

    Returns:
        dict: ``samples`` {split: number of readable pairs listed}, ``problems`` [messages, each starting with
        the file], ``histogram`` int64 (num_classes,) pixels (voxels) per class, ``ignored`` pixels with the
        ignore label, ``sizes`` Counter of image sizes ``(W, H)`` (volumes ``(D, H, W)``).
    """
    if is_instance_config(cfg):
        return check_instances(cfg, splits, progress)
    fmt = get_format(cfg["format"])
    num_classes, ignore = cfg["num_classes"], cfg["ignore_index"]
    result = {"samples": {}, "problems": [], "histogram": np.zeros(num_classes, np.int64), "ignored": 0,
              "sizes": Counter()}
    for image_ref, label_ref in _each_sample(cfg, splits, fmt.samples, result, progress):
        try:
            image, label = fmt.read_pair(cfg, image_ref, label_ref)
        except DataError as exc:
            result["problems"].append(str(exc))
            continue
        result["sizes"][label.shape if fmt.volumetric else label.shape[::-1]] += 1
        valid = (label >= 0) & (label < num_classes)
        result["histogram"] += np.bincount(label[valid].ravel(), minlength=num_classes)
        result["ignored"] += int((label == ignore).sum())
        bad = np.unique(label[~valid & (label != ignore)])
        if bad.size:
            shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            result["problems"].append(
                f"{label_ref}: label values {shown} are outside the class list 0-{num_classes - 1} and not "
                f"the ignore index {ignore} ({int((~valid & (label != ignore)).sum())} pixels); fix the "
                f"label or the config's num_classes")
    return result


def _each_sample(cfg, splits, list_pairs, result, progress):
    """Yields the ``(image_ref, label_ref)`` pairs of every split, counting them in ``result["samples"]``; a split
    that cannot be listed is one problem, not the end of the check."""
    for split in splits or split_names(cfg):
        try:
            pairs = list_pairs(cfg, split, result["problems"])
        except (DataError, ConfigError) as exc:
            result["problems"].append(str(exc))
            result["samples"][split] = 0
            continue
        result["samples"][split] = len(pairs)
        bar = Progress(len(pairs), f"checking {split}") if progress else None
        for done, pair in enumerate(pairs, start=1):
            yield pair
            if bar:
                bar.update(done)


def instance_samples(cfg, split, problems):
    """`kseg.instance.data.list_instance_samples`, except that ``instance_folder`` files without their counterpart
    (image, instance map, class map) are reported in ``problems`` and left out instead of stopping the scan."""
    if cfg["format"] != "instance_folder":
        return idata.list_instance_samples(cfg, split)
    pairs = Format().samples(cfg, split, problems)
    if cfg["class_dir"] is None:
        return pairs
    class_dir = Path(cfg["root"]) / cfg["class_dir"]
    class_maps = Format().masks_by_stem(class_dir)
    out = []
    for image, instances in pairs:
        stem = Path(instances).stem
        if stem in class_maps:
            out.append((image, join_ref(instances, class_maps[stem])))
        else:
            problems.append(f"{instances}: no class map for it in {class_dir} (matched by stem); add it or remove "
                            f"data.class_dir")
    return out


def check_instances(cfg, splits=None, progress=True):
    """Scans every sample of an instance dataset and collects faults, warnings and statistics.

    Each sample is read as stored, then brought to ``data.image_size`` as training does to count the instances
    training keeps (at least ``data.min_area`` pixels there).

    Args:
        cfg: validated instance data config.
        splits: split names; default `split_names`.
        progress: draw a progress bar on stderr for long scans.

    Returns:
        dict: ``samples`` {split: images listed}, ``problems`` [faults, each starting with the file: unreadable
        files, files without their counterpart, maps of another size, classes outside the class list, more
        instances than ``data.max_instances``], ``warnings`` [the same for images without an instance and
        instances that training drops], ``sizes`` Counter of image sizes ``(W, H)``, ``counts`` int64 (images,)
        instances per readable image, ``areas`` int64 (instances,) pixels of each instance as stored, ``classes``
        int64 (num_classes,) instances per class, ``dropped`` instances below ``min_area`` at ``image_size``.
    """
    result = {"samples": {}, "problems": [], "warnings": [], "sizes": Counter(), "counts": [], "areas": [],
              "classes": np.zeros(cfg["num_classes"], np.int64), "dropped": 0}
    for image_ref, label_ref in _each_sample(cfg, splits, instance_samples, result, progress):
        _check_instance_sample(cfg, image_ref, label_ref, result)
    result["counts"] = np.asarray(result["counts"], np.int64)
    result["areas"] = np.concatenate(result["areas"]).astype(np.int64) if result["areas"] else np.zeros(0, np.int64)
    return result


def _sample_name(cfg, image_ref, label_ref):
    """The file (or place) a sample's report names: the instance map of a folder, the tile of the nuclei image."""
    if cfg["format"] == "instance_folder":
        return split_ref(label_ref)[0]
    if cfg["format"] == "nuclei":
        row, column = split_ref(label_ref)
        return f"{image_ref} tile (row {row}, column {column})"
    return image_ref


def _check_instance_sample(cfg, image_ref, label_ref, result):
    num_classes, min_area, max_instances = cfg["num_classes"], cfg["min_area"], cfg["max_instances"]
    name = _sample_name(cfg, image_ref, label_ref)
    try:
        sample = idata.read_instance_sample(cfg, image_ref, label_ref)
    except DataError as exc:
        result["problems"].append(str(exc))
        return
    classes = np.asarray(sample["classes"], np.int64)
    height, width = sample["image"].shape[:2]
    result["sizes"][(width, height)] += 1
    result["counts"].append(len(classes))
    result["areas"].append(sample["masks"].sum(axis=(1, 2)))
    valid = (classes >= 1) & (classes < num_classes)
    result["classes"] += np.bincount(classes[valid], minlength=num_classes)
    if not valid.all():
        result["problems"].append(
            f"{name}: instance classes {', '.join(map(str, np.unique(classes[~valid])))} are outside the class list "
            f"1-{num_classes - 1}; fix the annotation or data.num_classes")
    if not len(classes):
        result["warnings"].append(f"{name}: no instance; it trains as background only")
        return
    # as training sees it (kseg.instance.data.load_instance_sample): at image_size, small instances dropped
    areas = idata.fit_instances(sample, cfg["image_size"], cfg["resize"])["masks"].sum(axis=(1, 2))
    small = int((areas < min_area).sum())
    kept = len(classes) - small
    result["dropped"] += small
    if small:
        size = "x".join(map(str, cfg["image_size"]))
        result["warnings"].append(
            f"{name}: {small} of {len(classes)} instances have fewer than data.min_area {min_area} pixels at "
            f"{size} (HxW) and are dropped in training" + ("; no instance is left" if not kept else ""))
    if kept > max_instances:
        result["problems"].append(f"{name}: {kept} instances but data.max_instances is {max_instances}; raise "
                                  f"data.max_instances")


def _spread(values):
    """``min, median, max`` of integers as text."""
    return f"min {values.min()}, median {np.median(values):g}, max {values.max()}" if len(values) else "-"


def format_instance_report(cfg, result, max_classes=60, max_warnings=30):
    """The text of an instance dataset's check report (what ``kseg data check`` prints)."""
    names = idata.instance_class_names(cfg)
    size = "x".join(map(str, cfg["image_size"]))
    where = f"at {cfg['root']}" if cfg["root"] else "(generated in memory)"
    lines = [f"instance dataset: {cfg['format']} {where} ({cfg['num_classes']} classes with background, "
             f"max_instances {cfg['max_instances']}, min_area {cfg['min_area']} pixels at {size} (HxW, "
             f"{cfg['resize']}))"]
    lines += [f"  split {split}: {n} images" for split, n in result["samples"].items()]
    sizes = ", ".join(f"{'x'.join(map(str, s))} ({n})" for s, n in result["sizes"].most_common(10))
    more = len(result["sizes"]) - 10
    lines.append(f"image sizes (WxH): {sizes or '-'}" + (f" and {more} more" if more > 0 else ""))
    counts, areas = result["counts"], result["areas"]
    lines.append(f"instances per image: {_spread(counts)} ({len(areas)} instances in {len(counts)} images, "
                 f"{int((counts == 0).sum())} without any)")
    if len(areas):
        q = np.percentile(areas, [5, 25, 50, 75, 95], method="lower")
        lines.append(f"instance area (pixels as stored): min {areas.min()}, 5% {q[0]:g}, 25% {q[1]:g}, median "
                     f"{q[2]:g}, 75% {q[3]:g}, 95% {q[4]:g}, max {areas.max()}")
        small, large = int((areas < _COCO_AREAS[0]).sum()), int((areas >= _COCO_AREAS[1]).sum())
        lines.append(f"  COCO size ranges: small (< 32x32) {small}, medium {len(areas) - small - large}, large "
                     f"(>= 96x96) {large}")
    lines.append(f"  dropped in training (< {cfg['min_area']} pixels at {size}): {result['dropped']}")
    lines.append("instances per class:")
    total = max(int(result["classes"].sum()), 1)
    foreground = np.arange(1, len(names))
    if len(foreground) > max_classes:
        foreground = 1 + np.argsort(-result["classes"][1:], kind="stable")[:max_classes]
    for i in foreground:
        count = int(result["classes"][i])
        lines.append(f"  {i:4d} {names[i]:<24} {count:10d} {100 * count / total:6.2f}%")
    if len(names) - 1 > max_classes:
        lines.append(f"  ({len(names) - 1 - max_classes} less frequent classes not shown)")
    absent = [names[i] for i in range(1, len(names)) if result["classes"][i] == 0]
    if absent and len(absent) < len(names) - 1:
        lines.append(f"classes without an instance: {len(absent)} ({', '.join(absent[:10])}"
                     f"{', ...' if len(absent) > 10 else ''})")
    problems, warnings = result["problems"], result["warnings"]
    lines.append(f"faults: {len(problems)}" + (" (the dataset is clean)" if not problems else ""))
    lines.extend(f"  {p}" for p in problems)
    lines.append(f"warnings: {len(warnings)}" + (" (training drops these instances, or the images hold none; not "
                                                 "faults)" if warnings else ""))
    lines.extend(f"  {w}" for w in warnings[:max_warnings])
    if len(warnings) > max_warnings:
        lines.append(f"  ... and {len(warnings) - max_warnings} more")
    return "\n".join(lines)


def format_report(cfg, result, max_classes=60):
    """The text of a check report (what ``kseg data check`` prints)."""
    if is_instance_config(cfg):
        return format_instance_report(cfg, result, max_classes)
    names = get_format(cfg["format"]).class_names(cfg)
    lines = [f"dataset: {cfg['format']} at {cfg['root']} ({cfg['num_classes']} classes, ignore label "
             f"{cfg['ignore_index']})"]
    for split, n in result["samples"].items():
        lines.append(f"  split {split}: {n} samples")
    what = "volume sizes (DxHxW)" if get_format(cfg["format"]).volumetric else "image sizes (WxH)"
    sizes = ", ".join(f"{'x'.join(map(str, s))} ({n})" for s, n in result["sizes"].most_common(10))
    more = len(result["sizes"]) - 10
    lines.append(f"{what}: {sizes or '-'}" + (f" and {more} more" if more > 0 else ""))
    total = int(result["histogram"].sum()) + result["ignored"]
    lines.append("class pixels:")
    order = range(len(names)) if len(names) <= max_classes else np.argsort(-result["histogram"])[:max_classes]
    for i in order:
        count = int(result["histogram"][i])
        lines.append(f"  {i:4d} {names[i]:<24} {count:12d} {100 * count / max(total, 1):6.2f}%")
    if len(names) > max_classes:
        lines.append(f"  ({len(names) - max_classes} less frequent classes not shown)")
    lines.append(f"  {cfg['ignore_index']:4d} {'(ignore)':<24} {result['ignored']:12d} "
                 f"{100 * result['ignored'] / max(total, 1):6.2f}%")
    absent = [names[i] for i in range(len(names)) if result["histogram"][i] == 0]
    if absent and len(absent) < len(names):
        lines.append(f"classes with no pixel: {len(absent)} ({', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''})")
    problems = result["problems"]
    lines.append(f"faults: {len(problems)}" + (" (the dataset is clean)" if not problems else ""))
    lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines)


def show(cfg, out, split=None, num=8, cols=None, seed=0):
    """Writes a grid of samples with their labels overlaid as a PNG.

    Args:
        cfg: validated data config.
        out: output PNG path.
        split: split to draw from; default the first of `split_names`.
        num: number of samples (spread evenly over the split; ``seed`` shuffles which).
        cols: samples per row.
        seed: None for the first ``num`` samples in order, else a seed for a random pick.

    Returns:
        The number of samples drawn.
    """
    import cv2

    from kseg import viz

    if is_instance_config(cfg):
        return show_instances(cfg, out, split, num, cols, seed)
    fmt = get_format(cfg["format"])
    split = split or split_names(cfg)[0]
    pairs = fmt.samples(cfg, split)
    order = np.arange(len(pairs)) if seed is None else np.random.default_rng(seed).permutation(len(pairs))
    images, labels = [], []
    for index in sorted(order[:num]):
        image, label = fmt.load(cfg, *pairs[index])
        if fmt.volumetric:  # the middle axial slice, first channel scaled to 0-255
            middle = label.shape[0] // 2
            plane = image[middle, ..., 0]
            span = float(plane.max() - plane.min()) or 1.0
            grey = ((plane - plane.min()) * (255.0 / span)).astype(np.uint8)
            image, label = np.repeat(grey[..., None], 3, axis=-1), label[middle]
        elif image.shape[-1] > 3:  # RGB-D: the first depth channel beside the colour image
            depth = cv2.applyColorMap(np.clip(image[..., 3], 0, 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
            image = np.concatenate([np.clip(image[..., :3], 0, 255).astype(np.uint8), depth[..., ::-1]], axis=1)
            label = np.concatenate([label, np.full_like(label, cfg["ignore_index"])], axis=1)
        images.append(np.ascontiguousarray(image, np.uint8))
        labels.append(label)
    names = fmt.class_names(cfg)
    palette = np.asarray(fmt.palette(cfg), np.uint8)[:len(names)]
    viz.image_grid(images, labels, names, palette=palette, cols=cols, ignore_index=cfg["ignore_index"],
                   path=str(out))
    return len(images)


def show_instances(cfg, out, split=None, num=8, cols=None, seed=0):
    """Writes a grid of instance samples as a PNG: each sample at ``data.image_size`` as training sees it, every
    instance's mask in its own colour with its contour and, with several foreground classes, its box and class name
    (`kseg.viz.draw_instances`).

    Args and return value as `show`.
    """
    import cv2

    from kseg import viz

    split = split or split_names(cfg)[0]
    pairs = idata.list_instance_samples(cfg, split)
    order = np.arange(len(pairs)) if seed is None else np.random.default_rng(seed).permutation(len(pairs))
    names = idata.instance_class_names(cfg)
    tiles = []
    for index in sorted(order[:num]):
        sample = idata.load_instance_sample(cfg, *pairs[index])
        # boxes and class names only tell instances of several classes apart; one class: masks and contours
        tiles.append(viz.draw_instances(sample["image"], sample, names, show_boxes=len(names) > 2))
    count = len(tiles)
    cols = cols or int(np.ceil(np.sqrt(count)))
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    grid = np.concatenate([np.concatenate(tiles[r:r + cols], axis=1) for r in range(0, len(tiles), cols)], axis=0)
    if not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise DataError(f"{out}: cannot write the picture; check the folder exists and the name ends in .png")
    return count


def format_table():
    """The text of ``kseg data formats``: name, kind, classes and layout of every supported format (instance
    datasets, read by `kseg.instance.data` for Mask R-CNN, are of kind ``instance``)."""
    rows = []
    for name in sorted(FORMATS):
        fmt = FORMATS[name]
        if fmt.class_counts:
            classes = " or ".join(map(str, fmt.class_counts))
        else:
            classes = str(fmt.num_classes or fmt.default_num_classes or "config")
        layout = re.split(r"(?<! al)\.\s", " ".join((fmt.__doc__ or "").split()))[0].replace("``", "")
        rows.append((name, fmt.kind, classes, layout))
    rows += [(name, "instance", *INSTANCE_LAYOUTS[name]) for name in idata.FORMATS]
    rows.sort(key=lambda row: (row[0], row[1]))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'format':<{width}}  {'kind':<9}  {'classes':<11}  layout"]
    lines += [f"{n:<{width}}  {k:<9}  {c:<11}  {d}" for n, k, c, d in rows]
    return "\n".join(lines)


def main(args):
    """Runs ``kseg data`` from parsed CLI arguments; returns the exit status (1: the check found faults)."""
    if args.action == "formats":
        print(format_table())
        return 0
    cfg = data_config(args.source, args.format, args.num_classes, args.overrides)
    if args.action == "check":
        result = check(cfg, args.split, progress=not args.quiet)
        print(format_report(cfg, result))
        return 1 if result["problems"] else 0
    out = Path(args.out or f"{cfg['format']}-samples.png")
    n = show(cfg, out, args.split[0] if args.split else None, num=args.num, seed=args.seed)
    print(f"wrote {n} samples to {out}")
    return 0
