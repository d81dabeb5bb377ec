"""``kseg data``: list the supported layouts, check a dataset, picture its samples.

``check`` reads every sample of every split as stored (no resizing) and collects every fault instead of stopping
at the first: files without their counterpart, unreadable files, image/label size mismatches, label values
outside the class list. It reports the counts per split, the pixels of each class (and of the ignore label) and
the image sizes. ``show`` writes a grid of samples, brought to ``data.image_size`` as training sees them, with
their labels overlaid (RGB-D: the depth channel beside each image; volumes: the middle axial slice).

Example:
    kseg data formats
    kseg data check configs/pspnet_resnet50_voc-480x480.yaml
    kseg data check ~/data/iccv09Data --format stanford_background
    kseg data show ~/data/VOCdevkit --format voc --out voc.png --num 8
"""

import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from kseg.data.config import validate_data_config
from kseg.data.formats import FORMATS, get_format
from kseg.errors import ConfigError, DataError

# Placeholders when a dataset is given as a folder: checking reads samples as stored, so sizes do not matter.
_PATH_DEFAULTS = {"image_size": [256, 256], "volume_size": [32, 32, 32], "voxel_size": 0.05}


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

        data = dict(load_config(path, list(overrides))["data"])
        if fmt and fmt != data["format"]:
            raise ConfigError(f"{path}: data.format is {data['format']!r} but --format says {fmt!r}; drop one")
        return validate_data_config(data)
    if not fmt:
        raise ConfigError(f"{source}: a dataset folder needs --format (one of {', '.join(sorted(FORMATS))})")
    if not path.exists():
        raise ConfigError(f"{source}: no such config file or dataset folder")
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
    fmt = get_format(cfg["format"])
    if fmt.default_split("train") is not None:
        return ["train", "val"]
    from kseg.data.formats import Format

    # every pair: the image/mask folders of folder-like layouts, all listed samples of the others
    cfg["splits"]["all"] = {} if type(fmt)._resolve is Format._resolve else "all"
    return ["all"]


class Progress:
    """A one-line progress bar on stderr for scans of more than ``min_total`` items."""

    def __init__(self, total, label, min_total=20, stream=None, width=30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.active = total >= min_total
        self.step = max(1, total // 100)

    def update(self, done):
        if self.active and (done % self.step == 0 or done == self.total):
            filled = self.width * done // self.total
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total}")
            if done == self.total:
                self.stream.write("\n")
            self.stream.flush()


def check(cfg, splits=None, progress=True):
    """Scans every sample of the given splits and collects faults and statistics.

    Args:
        cfg: validated data config.
        splits: split names; default `split_names`.
        progress: draw a progress bar on stderr for long scans.

    Returns:
        dict: ``samples`` {split: number of readable pairs listed}, ``problems`` [messages, each starting with
        the file], ``histogram`` int64 (num_classes,) pixels (voxels) per class, ``ignored`` pixels with the
        ignore label, ``sizes`` Counter of image sizes ``(W, H)`` (volumes ``(D, H, W)``).
    """
    fmt = get_format(cfg["format"])
    num_classes, ignore = cfg["num_classes"], cfg["ignore_index"]
    result = {"samples": {}, "problems": [], "histogram": np.zeros(num_classes, np.int64), "ignored": 0,
              "sizes": Counter()}
    for split in splits or split_names(cfg):
        try:
            pairs = fmt.samples(cfg, split, result["problems"])
        except (DataError, ConfigError) as exc:
            result["problems"].append(str(exc))
            result["samples"][split] = 0
            continue
        result["samples"][split] = len(pairs)
        bar = Progress(len(pairs), f"checking {split}") if progress else None
        for done, (image_ref, label_ref) in enumerate(pairs, start=1):
            try:
                image, label = fmt.read_pair(cfg, image_ref, label_ref)
            except DataError as exc:
                result["problems"].append(str(exc))
            else:
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
            if bar:
                bar.update(done)
    return result


def format_report(cfg, result, max_classes=60):
    """The text of a check report (what ``kseg data check`` prints)."""
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


def format_table():
    """The text of ``kseg data formats``: name, kind, classes and layout of every supported format."""
    rows = []
    for name in sorted(FORMATS):
        fmt = FORMATS[name]
        if fmt.class_counts:
            classes = " or ".join(map(str, fmt.class_counts))
        else:
            classes = str(fmt.num_classes or fmt.default_num_classes or "config")
        layout = re.split(r"(?<! al)\.\s", " ".join((fmt.__doc__ or "").split()))[0].replace("``", "")
        rows.append((name, fmt.kind, classes, layout))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'format':<{width}}  kind   classes    layout"]
    lines += [f"{n:<{width}}  {k:<5}  {c:<9}  {d}" for n, k, c, d in rows]
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
