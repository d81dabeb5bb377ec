"""Pictures of segmentations: palettes, colour masks, overlays, instance drawings, confusion matrices, per-class IoU
charts.

numpy + OpenCV only (the edge runtime draws with these on a device without TensorFlow); matplotlib is imported
inside the two chart functions. Colour order: palettes are **RGB** (as datasets and PNG legends use them);
``overlay`` defaults to **BGR** because it mostly draws on OpenCV camera frames; every function says which it uses.

Example:
    >>> import numpy as np
    >>> from kseg import viz
    >>> mask = np.array([[0, 1], [2, 255]], np.uint8)
    >>> viz.colorize(mask, viz.palette(3))[0, 1].tolist()  # class 1, RGB
    [128, 0, 0]
"""

import io

import cv2
import numpy as np

IGNORE_INDEX = 255


def palette(num_classes):
    """The Pascal VOC bit-interleaved palette.

    Args:
        num_classes: number of colours wanted (any size; colours repeat after 256).

    Returns:
        ``(num_classes, 3)`` uint8 **RGB** colours; class 0 is black, class 1 dark red, class 15 the VOC person pink.
    """
    ids = np.arange(num_classes) % 256
    colors = np.zeros((num_classes, 3), np.uint8)
    for shift in range(7, -1, -1):  # VOC spreads the id's bits over the high bits of r, g, b
        for channel in range(3):
            colors[:, channel] |= ((ids >> (3 * (7 - shift) + channel)) & 1).astype(np.uint8) << shift
    return colors


_palette = palette  # for the functions below whose ``palette`` argument shadows it


def _lut(colors, ignore_index, ignore_color):
    """A 256-entry colour table: class ids index it directly, ids past the palette wrap around it."""
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)
    lut = np.ascontiguousarray(colors[np.arange(256) % len(colors)])
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = ignore_color
    return lut


def colorize(mask, palette_rgb=None, ignore_index=IGNORE_INDEX, ignore_color=(0, 0, 0)):
    """Paint a class-id mask.

    Args:
        mask: ``(H, W)`` integer class ids.
        palette_rgb: ``(N, 3)`` colours; default ``palette(256)``. The output has the palette's channel order
            (RGB for ``palette``; pass ``palette[:, ::-1]`` for BGR).
        ignore_index: id painted ``ignore_color`` instead of a class colour.
        ignore_color: colour of ignored pixels, in the palette's order.

    Returns:
        ``(H, W, 3)`` uint8 image.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    lut = _lut(palette(256) if palette_rgb is None else palette_rgb, ignore_index, ignore_color)
    ids = _ids8(mask)
    # one pass of OpenCV's colour-map lookup: 0.13 ms at 640x480 here, where merging three planes and cv2.LUT take
    # 0.33 (0.86 in a fresh buffer) and numpy's fancy indexing 5x that
    return cv2.applyColorMap(ids, lut.reshape(256, 1, 3))


def _ids8(mask):
    return mask if mask.dtype == np.uint8 else (mask % 256).astype(np.uint8)


def overlay(image, mask, alpha=0.5, palette=None, contours=True, ignore_index=IGNORE_INDEX, order="bgr"):
    """Blend class colours over an image (real time at 640x480: one LUT lookup, ``cv2.addWeighted``, one morphology).

    Args:
        image: ``(H, W, 3)`` uint8 image in ``order`` (OpenCV frames are BGR, dataset images RGB).
        mask: ``(H, W)`` class ids, same size as ``image``.
        alpha: weight of the class colours.
        palette: ``(N, 3)`` **RGB** colours; default VOC ``palette(256)``. Converted to ``order`` here.
        contours: draw class boundaries in full-strength class colour.
        ignore_index: pixels with this id keep the original image (no colour, no contour).
        order: ``"bgr"`` or ``"rgb"``: the channel order of ``image`` and of the result.

    Returns:
        ``(H, W, 3)`` uint8 image in ``order``.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape} must be (H, W, 3) with the mask's (H, W) {mask.shape}")
    if order not in ("bgr", "rgb"):
        raise ValueError(f"order must be 'bgr' or 'rgb', got {order!r}")
    colors = _palette(256) if palette is None else np.asarray(palette, np.uint8)
    if order == "bgr":
        colors = colors[:, ::-1]
    color = colorize(mask, colors, ignore_index=ignore_index)
    out = cv2.addWeighted(image, 1.0 - alpha, color, alpha, 0.0)
    # cv2.copyTo with a uint8 mask, not np.copyto(where=...): 100x faster at 640x480.
    if contours:
        edge = cv2.morphologyEx(_ids8(mask), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        out = cv2.copyTo(color, edge, out)
    if ignore_index is not None:
        out = cv2.copyTo(image, (mask == ignore_index).view(np.uint8), out)
    return out


def draw_instances(image, instances, class_names=None, palette=None, alpha=0.5, contours=True, show_boxes=True,
                   order="rgb"):
    """Draw instance detections: each instance's mask in its own colour, its contour, box, class name and score.

    Instances are drawn from the lowest score up, so a confident detection lies on top of a doubtful one it overlaps.

    Args:
        image: ``(H, W, 3)`` uint8 image in ``order``.
        instances: a dict with ``masks`` ``(N, H, W)`` bool at the image's size and, each optional, ``boxes``
            ``(N, 4)`` ``[y1, x1, y2, x2]`` pixels, ``scores`` ``(N,)`` and ``classes`` ``(N,)`` (class ids, 1 is
            the first foreground class), as ``kseg.instance.masks.detections_to_instances`` returns them.
        class_names: names indexed by class id (``class_names[0]`` is the background); default the ids.
        palette: ``(K, 3)`` **RGB** colours; instance ``i`` (in the given order) takes ``palette[i % K]``. Default:
            the VOC palette without its black, so instances of one class still differ.
        alpha: weight of the mask colour.
        contours: outline each mask in full-strength colour.
        show_boxes: draw the boxes and the ``name score`` labels (labels need ``boxes``).
        order: ``"rgb"`` or ``"bgr"``: the channel order of ``image`` and of the result (OpenCV frames are BGR).

    Returns:
        ``(H, W, 3)`` uint8 image in ``order``.

    Example:
        >>> import numpy as np
        >>> masks = np.zeros((1, 32, 32), bool); masks[0, 8:24, 8:24] = True
        >>> out = draw_instances(np.zeros((32, 32, 3), np.uint8), {"masks": masks, "boxes": [[8, 8, 24, 24]],
        ...                      "scores": [0.9], "classes": [1]}, class_names=["bg", "cell"])
        >>> out.shape, bool(out[16, 16].any())
        ((32, 32, 3), True)
    """
    image = np.asarray(image)
    masks = np.asarray(instances["masks"], bool)
    n = len(masks)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"instances['masks'] must be (N, H, W) with the image's (H, W) {image.shape[:2]}, "
                         f"got {masks.shape}")
    if order not in ("bgr", "rgb"):
        raise ValueError(f"order must be 'bgr' or 'rgb', got {order!r}")
    fields = {}
    for key in ("boxes", "scores", "classes"):
        if instances.get(key) is not None:
            fields[key] = np.asarray(instances[key])
            if len(fields[key]) != n:
                raise ValueError(f"instances['{key}'] has {len(fields[key])} entries for {n} masks")
    colors = _palette(257)[1:] if palette is None else np.asarray(palette, np.uint8).reshape(-1, 3)
    if order == "bgr":
        colors = colors[:, ::-1]
    scores = fields.get("scores")
    draw_order = np.argsort(scores, kind="stable") if scores is not None else np.arange(n)
    # One id map (later instances overwrite earlier ones) and one blend, as ``overlay`` does for classes.
    ids = np.zeros(image.shape[:2], np.int32)
    for i in draw_order:
        ids[masks[i]] = i + 1
    lut = np.zeros((n + 1, 3), np.uint8)
    lut[1:] = colors[np.arange(n) % len(colors)]
    painted = ids > 0
    out = image.copy()
    out[painted] = (image[painted] * (1.0 - alpha) + lut[ids[painted]] * alpha + 0.5).astype(np.uint8)
    for i in draw_order:
        color = tuple(int(c) for c in lut[i + 1])
        if contours and masks[i].any():
            outline, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, outline, -1, color, 1, cv2.LINE_8)
        if show_boxes and "boxes" in fields:
            y1, x1, y2, x2 = (int(round(float(v))) for v in fields["boxes"][i])
            cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), color, 1)
            _label(out, _instance_text(i, fields, class_names), (x1, y1), color)
    return out


def _instance_text(i, fields, class_names):
    parts = []
    if "classes" in fields:
        c = int(fields["classes"][i])
        parts.append(str(class_names[c]) if class_names is not None and 0 <= c < len(class_names) else str(c))
    if "scores" in fields:
        parts.append(f"{float(fields['scores'][i]):.2f}")
    return " ".join(parts)


def _label(out, text, corner, color):
    """``text`` on a filled box of ``color`` just above ``corner`` (inside the image when there is no room)."""
    if not text:
        return
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, min(out.shape[:2]) / 800)
    (w, h), base = cv2.getTextSize(text, font, scale, 1)
    x = min(max(corner[0], 0), max(out.shape[1] - w - 2, 0))
    y = corner[1] - 2 if corner[1] - h - base - 2 >= 0 else min(corner[1] + h + 2, out.shape[0] - base)
    cv2.rectangle(out, (x, y - h - 2), (x + w + 2, y + base), color, -1)
    ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)  # dark text on light colours
    cv2.putText(out, text, (x + 1, y), font, scale, ink, 1, cv2.LINE_AA)


def legend(class_names, palette_rgb=None, width=None, row_height=20):
    """A legend strip: a colour swatch and the name of each class, wrapped to ``width``.

    Returns:
        ``(h, width, 3)`` uint8 **RGB** image on white.
    """
    colors = palette(len(class_names)) if palette_rgb is None else np.asarray(palette_rgb, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, row_height / 40
    cells = [row_height + 8 + cv2.getTextSize(str(n), font, scale, 1)[0][0] + 12 for n in class_names]
    width = width or sum(cells)
    rows, x = [[]], 0
    for i, cell in enumerate(cells):
        if x + cell > width and rows[-1]:
            rows.append([])
            x = 0
        rows[-1].append((i, x))
        x += cell
    out = np.full((row_height * len(rows), width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y = r * row_height
        for i, x in row:
            color = tuple(int(c) for c in colors[i % len(colors)])
            cv2.rectangle(out, (x + 2, y + 3), (x + row_height - 3, y + row_height - 3), color, -1)
            cv2.rectangle(out, (x + 2, y + 3), (x + row_height - 3, y + row_height - 3), (0, 0, 0), 1)
            cv2.putText(out, str(class_names[i]), (x + row_height + 4, y + int(row_height * 0.72)), font, scale,
                        (0, 0, 0), 1, cv2.LINE_AA)
    return out


def image_grid(images, masks, class_names, predictions=None, palette=None, alpha=0.5, cols=None,
               ignore_index=IGNORE_INDEX, path=None):
    """Sample overlays in a grid with a legend of class names underneath.

    Each sample is one tile (image + label overlay) or, with ``predictions``, two side by side (label, prediction).

    Args:
        images: sequence of ``(H, W, 3)`` uint8 **RGB** images (tiles are scaled to the first one's size).
        masks: sequence of ``(H, W)`` label ids (``ignore_index`` left uncoloured).
        class_names: names for the legend; also fixes the number of palette colours.
        predictions: optional sequence of predicted ``(H, W)`` ids.
        palette: ``(N, 3)`` **RGB** colours; default ``palette(len(class_names))``.
        cols: samples per row; default about square.
        path: also write the grid as a PNG there.

    Returns:
        The grid, ``(h, w, 3)`` uint8 **RGB**.
    """
    if len(images) == 0 or len(images) != len(masks):
        raise ValueError(f"need as many masks as images (and at least one), got {len(images)} and {len(masks)}")
    colors = _palette(len(class_names)) if palette is None else np.asarray(palette, np.uint8)
    tiles = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        tile = [overlay(image, mask, alpha, colors, ignore_index=ignore_index, order="rgb")]
        if predictions is not None:
            tile.append(overlay(image, predictions[i], alpha, colors, ignore_index=ignore_index, order="rgb"))
        tile = np.concatenate(tile, axis=1)
        if tiles and tile.shape != tiles[0].shape:  # datasets such as VOC mix image sizes; a grid needs one
            tile = cv2.resize(tile, tiles[0].shape[1::-1], interpolation=cv2.INTER_AREA)
        tiles.append(tile)
    cols = cols or int(np.ceil(np.sqrt(len(tiles))))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % cols)
    rows = [np.concatenate(tiles[r:r + cols], axis=1) for r in range(0, len(tiles), cols)]
    grid = np.concatenate(rows, axis=0)
    grid = np.concatenate([grid, legend(class_names, colors, width=grid.shape[1])], axis=0)
    if path is not None:
        ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        _write(path, png.tobytes())
    return grid


def confusion_matrix_figure(cm, class_names, path, normalize=True, title="Confusion matrix"):
    """Write a confusion-matrix heat map (rows: true class, columns: predicted) as a PNG.

    Args:
        cm: ``(C, C)`` counts, rows = ground truth.
        class_names: ``C`` names.
        path: the PNG to write (atomically).
        normalize: colour and annotate each row as fractions of that class's pixels (empty rows stay 0).
    """
    cm = np.asarray(cm, np.float64)
    if cm.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(class_names)} class names")
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    n = len(class_names)
    size = min(4 + 0.45 * n, 24)
    fig, ax = _figure((size, size * 0.85))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(class_names, rotation=60, ha="right")
    ax.set_yticklabels(class_names)
    if n <= 25:  # past that the numbers no longer fit in the cells
        high = shown.max() / 2 if shown.size else 0
        for (r, c), v in np.ndenumerate(shown):
            ax.text(c, r, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=7,
                    color="white" if v > high else "black")
    _save(fig, path)


def per_class_iou_chart(ious, class_names, path, title="Per-class IoU"):
    """Write a horizontal bar chart of per-class IoU with the mean as a line; NaN (class absent) shows as n/a.

    Args:
        ious: ``C`` IoUs in [0, 1] (NaN for classes never seen nor predicted).
        class_names: ``C`` names.
        path: the PNG to write (atomically).
    """
    ious = np.asarray(ious, np.float64)
    if ious.shape != (len(class_names),):
        raise ValueError(f"{ious.shape[0] if ious.ndim else 0} IoUs for {len(class_names)} class names")
    n = len(class_names)
    fig, ax = _figure((7, 1.2 + 0.3 * n))
    colors = palette(n) / 255.0
    colors[colors.sum(axis=1) == 0] = 0.5  # a black bar for class 0 would hide its label line
    ax.barh(range(n), np.nan_to_num(ious), color=colors, edgecolor="black")
    for i, v in enumerate(ious):
        ax.text(0.01 if np.isnan(v) else v + 0.01, i, "n/a" if np.isnan(v) else f"{v:.3f}", va="center", fontsize=8)
    if not np.all(np.isnan(ious)):
        mean = np.nanmean(ious)
        ax.axvline(mean, color="red", linestyle="--", label=f"mIoU {mean:.3f}")
        ax.legend(loc="lower right")
    ax.set(yticks=range(n), xlim=(0, 1.1), xlabel="IoU", title=title)
    ax.set_yticklabels(class_names)
    ax.invert_yaxis()
    _save(fig, path)


def _figure(figsize):
    # A bare Figure renders with Agg without pyplot: no display needed, and the caller's backend is left alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig, path):
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _write(path, buf.getvalue())


def _write(path, data):
    from export.convert import write_atomic  # numpy-only module; TensorFlow is imported inside to_tflite alone

    write_atomic(path, data)
