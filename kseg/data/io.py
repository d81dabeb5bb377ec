"""Reading images and masks from disk (numpy + OpenCV + Pillow, no TensorFlow).

Every failure is a `DataError` whose message starts with the file and says what to do.
"""

import re

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from kseg.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp", ".gif")


def natural_key(name):
    """Sort key that orders ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def read_image(path):
    """Reads an image file as RGB.

    Args:
        path: PNG, JPEG, TIFF or BMP file.

    Returns:
        uint8 array (H, W, 3); grayscale, 16-bit and alpha images are converted.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot read image (missing, corrupt or not PNG/JPEG/TIFF/BMP); "
                        f"replace or remove the file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path, colour_map=None, palette_name="data.palette"):
    """Reads a mask as class indices.

    Palette ("P") PNGs give their palette indices (OpenCV would expand them to colours, so Pillow
    reads masks). Single-channel masks give their values. Colour masks go through ``colour_map``.

    Args:
        path: mask file.
        colour_map: dict ``(R, G, B) -> class id`` for colour masks, or None.
        palette_name: how error messages call the palette.

    Returns:
        int32 array (H, W).
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            mask = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read mask ({exc}); replace or remove the file") from None
    if mode == "P" or mask.ndim == 2:
        return mask.astype(np.int32)
    rgb = mask[..., :3] if mask.shape[-1] >= 3 else mask[..., :1].repeat(3, axis=-1)
    if colour_map is None:
        if (rgb == rgb[..., :1]).all():
            return rgb[..., 0].astype(np.int32)
        raise DataError(f"{path}: colour mask but no palette; give {palette_name} (one [R, G, B] per class) "
                        f"or save masks as class-index PNGs")
    return map_colours(rgb, colour_map, path, palette_name)


def map_colours(rgb, colour_map, path, palette_name="data.palette"):
    """Maps an (H, W, 3) colour mask to class ids through ``colour_map``; unknown colours raise."""
    codes = _colour_codes(rgb)
    items = sorted((int(_colour_codes(np.array(c))), cls) for c, cls in colour_map.items())
    keys = np.array([k for k, _ in items], dtype=np.int64)
    values = np.array([cls for _, cls in items], dtype=np.int32)
    pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    known = keys[pos] == codes
    if not known.all():
        ys, xs = np.nonzero(~known)
        colour = tuple(int(v) for v in rgb[ys[0], xs[0]])
        count = int((codes == codes[ys[0], xs[0]]).sum())
        raise DataError(f"{path}: colour {colour} ({count} pixels, first at row {ys[0]}, column {xs[0]}) "
                        f"is not in {palette_name}; add it to the palette or fix the mask")
    return values[pos]


def _colour_codes(rgb):
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def resize_image(image, size, mode):
    """Resizes an image for ``fit_size``: to ``size`` (H, W) for ``"stretch"``, to the largest size of the same aspect
    ratio inside it for ``"letterbox"`` (the caller pads). Returns ``(image, (h, w) it now has)``."""
    height, width = size
    h, w = image.shape[:2]
    if mode == "letterbox":
        scale = min(height / h, width / w)
        rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    else:
        rh, rw = height, width
    if (rh, rw) != (h, w):
        image = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if rh < h else cv2.INTER_LINEAR)
    return image, (rh, rw)


def fit_size(image, label, size, mode, ignore_index):
    """Brings an image and its label to a static size.

    Args:
        image: (h, w, C) array.
        label: (h, w) int32 array.
        size: (H, W).
        mode: "stretch" resizes to (H, W); "letterbox" keeps the aspect ratio and pads bottom/right
            (image with 0, label with ``ignore_index``).
        ignore_index: label fill value.

    Returns:
        (image (H, W, C) of the input's dtype, label int32 (H, W)).
    """
    height, width = size
    h, w = label.shape
    image, (rh, rw) = resize_image(image, size, mode)
    if (rh, rw) != (h, w):
        # float32 keeps any class id (and a negative ignore) exact through OpenCV's nearest resize.
        label = cv2.resize(label.astype(np.float32), (rw, rh), interpolation=cv2.INTER_NEAREST)
    image = image.reshape(rh, rw, -1)
    label = label.astype(np.int32)
    if (rh, rw) != (height, width):
        image = np.pad(image, ((0, height - rh), (0, width - rw), (0, 0)))
        label = np.pad(label, ((0, height - rh), (0, width - rw)), constant_values=ignore_index)
    return image, label


def check_labels(label, num_classes, ignore_index, path):
    """Raises DataError when a label is neither a class id nor the ignore index."""
    bad = ((label < 0) | (label >= num_classes)) & (label != ignore_index)
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise DataError(f"{path}: label values {shown} are outside 0-{num_classes - 1} and not the ignore index "
                        f"{ignore_index}; fix the mask or set data.num_classes")
