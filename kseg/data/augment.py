"""Mask-aware augmentation.

Geometric transforms and colour jitter are Keras 3 preprocessing layers applied to whole batches
inside the tf.data pipeline (the layers move masks with nearest interpolation). Random crops, quarter
turns and elastic deformation come after them, per sample, in numpy/OpenCV: turning and deforming the
crop only is cheaper than transforming the whole image, and a quarter turn moves pixels exactly.
"""

import itertools

import cv2
import numpy as np


def elastic_deform(image, label, rng, alpha, sigma):
    """Elastic deformation (Simard et al. 2003), as used for the U-Net membrane task.

    Args:
        image: (H, W, C) float32.
        label: (H, W) int32.
        rng: numpy Generator.
        alpha: displacement scale in pixels.
        sigma: smoothness (Gaussian sigma, pixels) of the displacement field.

    Returns:
        (image, label) warped by the same field; labels by nearest neighbour, borders reflected so
        that no pixel is invented.
    """
    h, w = label.shape
    dx, dy = (cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma) * alpha
              for _ in range(2))
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = gx + dx, gy + dy
    image = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    label = cv2.remap(label.astype(np.float32), map_x, map_y, cv2.INTER_NEAREST,
                      borderMode=cv2.BORDER_REFLECT_101)
    return image.reshape(h, w, -1), label.astype(np.int32)


def random_crop(image, label, size, rng, ignore_index):
    """Cuts a random window of ``size`` out of a sample.

    Args:
        image: (H, W, C) array.
        label: (H, W) array.
        size: (h, w) of the window; where it is larger than the sample, the window is placed at a
            random position around the sample and the rest is image 0, label ``ignore_index``.
        rng: numpy Generator.
        ignore_index: label of the padding.

    Returns:
        (image (h, w, C), label (h, w)), same dtypes.
    """
    (height, width), (ch, cw) = label.shape, size
    top = int(rng.integers(min(0, height - ch), max(0, height - ch) + 1))
    left = int(rng.integers(min(0, width - cw), max(0, width - cw) + 1))
    out_image = np.zeros((ch, cw, image.shape[-1]), image.dtype)
    out_label = np.full((ch, cw), ignore_index, label.dtype)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + ch, height), min(left + cw, width)
    out_image[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
    out_label[y0 - top:y1 - top, x0 - left:x1 - left] = label[y0:y1, x0:x1]
    return out_image, out_label


def random_rot90(image, label, rng):
    """Turns a sample by a random multiple of 90 degrees; a non-square one only by 0 or 180 (static shape)."""
    k = int(rng.integers(4)) if label.shape[0] == label.shape[1] else 2 * int(rng.integers(2))
    return np.rot90(image, k), np.rot90(label, k)


def sample_augmenter(crop_size, rot90, elastic, ignore_index):
    """Builds ``fn(images, labels, rng) -> (images, labels)``: per-sample random crop, quarter turn, then elastic
    deformation.

    Args:
        crop_size: (h, w) of the random crops, or None.
        rot90: turn each sample by a random multiple of 90 degrees (``data.augment.rot90``).
        elastic: validated ``data.augment.elastic`` dict, or None.
        ignore_index: label of crop padding.

    Returns:
        The function over numpy batches, or None when none of them is asked for.
    """
    if crop_size is None and not rot90 and elastic is None:
        return None

    def augment(images, labels, rng):
        out = []
        for image, label in zip(images, labels):
            if crop_size is not None:
                image, label = random_crop(image, label, crop_size, rng, ignore_index)
            if rot90:
                image, label = random_rot90(image, label, rng)
            if elastic is not None and rng.random() < elastic["p"]:
                image, label = elastic_deform(image, label, rng, elastic["alpha"], elastic["sigma"])
            out.append((image, label))
        images, labels = zip(*out)
        return np.ascontiguousarray(np.stack(images)), np.ascontiguousarray(np.stack(labels))

    return augment


def batch_augmenter(spec, ignore_index, seed=None):
    """Builds ``fn(images, labels) -> (images, labels)`` for batches, from ``data.augment``.

    Args:
        spec: validated ``data.augment`` dict.
        ignore_index: label value for pixels that geometric transforms bring in from outside.
        seed: int for reproducible draws, or None.

    Returns:
        The function, or None when ``spec`` asks for no batch-level transform.
    """
    import keras
    import tensorflow as tf

    seeds = itertools.count(seed) if seed is not None else itertools.repeat(None)
    # float32 whatever the global dtype policy: the data contract does not follow mixed precision.
    common = {"dtype": "float32"}
    fill = dict(common, fill_mode=spec["fill"], fill_value=0.0)
    geometric = []
    flip = {(True, False): "horizontal", (False, True): "vertical", (True, True): "horizontal_and_vertical"}
    if spec["hflip"] or spec["vflip"]:
        geometric.append(keras.layers.RandomFlip(flip[spec["hflip"], spec["vflip"]], seed=next(seeds), **common))
    if spec["rotate"]:
        geometric.append(keras.layers.RandomRotation(spec["rotate"], seed=next(seeds), **fill))
    if spec["scale"]:
        # RandomZoom's factor f shows the image at magnification 1 / (1 + f).
        lo, hi = spec["scale"]
        geometric.append(keras.layers.RandomZoom((1 / hi - 1, 1 / lo - 1), seed=next(seeds), **fill))
    if spec["translate"]:
        t = spec["translate"]
        geometric.append(keras.layers.RandomTranslation(t, t, seed=next(seeds), **fill))
    colour = []
    if spec["brightness"]:
        colour.append(keras.layers.RandomBrightness(spec["brightness"], (0, 255), seed=next(seeds), **common))
    if spec["contrast"]:
        colour.append(keras.layers.RandomContrast(spec["contrast"], (0, 255), seed=next(seeds), **common))
    if not geometric and not colour:
        return None

    def augment(images, labels):
        if geometric:
            # The layers fill masks with the images' constant (0): shift labels by one so that 0 means
            # "outside" and becomes the ignore index afterwards.
            masks = tf.cast(tf.where(labels == ignore_index, 0, labels + 1), tf.float32)[..., None]
            data = {"images": images, "segmentation_masks": masks}
            for layer in geometric:
                data = layer(data, training=True)
            images = data["images"]
            shifted = tf.cast(tf.round(data["segmentation_masks"][..., 0]), tf.int32)
            labels = tf.where(shifted == 0, ignore_index, shifted - 1)
        if colour:
            # Colour jitter is for colour: extra channels (depth, HHA) keep their values.
            rgb, extra = images[..., :3], images[..., 3:]
            for layer in colour:
                rgb = layer(rgb, training=True)
            images = tf.concat([rgb, extra], axis=-1) if images.shape[-1] != 3 else rgb
        return images, labels

    return augment
