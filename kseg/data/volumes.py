"""3D volumes: NIfTI reading (nibabel), resampling to a static size, 3D augmentation, the tf.data pipeline.

The ``nifti`` format (`kseg.data.formats.NiftiFormat`) lists ``(image, label)`` file pairs; this module turns them
into ``(image float32 (D, H, W, C), label int32 (D, H, W))`` samples:

1. Read with nibabel and reorient to the closest canonical (RAS+) orientation, so that every case has its axes in
   the same order and direction; the voxel array ``(x, y, z[, c])`` becomes ``(D, H, W, C) = (z, y, x, c)``: D
   runs inferior -> superior, so ``(H, W)`` planes are axial slices. Intensities stay raw (Hounsfield units for CT,
   scanner units for MRI): the model normalises them in its ``{name}_preprocess`` layer (V-Net's ``scale`` and
   ``offset``).
2. With ``data.spacing`` [d, h, w] (mm), resample to that voxel size first (the V-Net paper: 1 x 1 x 1.5 mm).
3. Bring to ``data.volume_size`` by ``data.resize``: ``stretch`` (resample every axis to its size),
   ``letterbox`` (one scale for all axes, then pad at the far end) or ``center`` (no resampling: crop or pad around
   the centre; with ``spacing``, the paper's recipe). Images resample linearly (Gaussian pre-smoothing along axes
   shrunk by more than 1.5x, against aliasing), labels by nearest neighbour, so both stay aligned.
   Padding is each channel's minimum intensity (air in CT, background in MRI) and ``ignore_index`` in the label.

Augmentation (``build_dataset(..., augment=True)``), per sample in numpy, labels always moved by the same indexing
or nearest-neighbour sampling as the image: random flips along each axis (``dflip``, ``vflip``, ``hflip``: D, H,
W), random multiples of 90 degrees in the axial plane (``rot90``; with H != W only 0 and 180 degrees, which keep the
shape static), a random axial rotation up to ``rotate`` of a full turn (borders: minimum intensity, ignore label),
a random ``crop_size`` window, then a random intensity scale ``1 +- intensity_scale`` and shift ``+-
intensity_shift`` standard deviations, per channel, on the image only.

Every failure a user can fix is a `kseg.errors.DataError` naming the file.
"""

import zlib

import numpy as np

from kseg.data.io import check_labels
from kseg.errors import DataError

# Intensity changes act on the image only; flips, rotations and crops act on both.
GEOMETRIC_KEYS = ("hflip", "vflip", "dflip", "rot90", "rotate")


def _read_nifti(path, kind):
    """The voxel array of a NIfTI file in (z, y, x[, c]) order after canonical reorientation, and its spacing."""
    import nibabel as nib

    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
        data = image.get_fdata(dtype=np.float32)
        spacing = np.asarray(image.header.get_zooms()[:3], np.float64)[::-1]
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: cannot read NIfTI {kind} ({exc}); replace or remove the file") from None
    if data.ndim == 5 and data.shape[3] == 1:  # (x, y, z, 1, c): NIfTI keeps time as axis 4, vectors as axis 5
        data = data[:, :, :, 0]
    if data.ndim not in (3, 4):
        raise DataError(f"{path}: NIfTI {kind} has shape {data.shape}, expected (x, y, z) or (x, y, z, channels); "
                        f"replace the file")
    order = (2, 1, 0) if data.ndim == 3 else (2, 1, 0, 3)
    return np.ascontiguousarray(data.transpose(order)), spacing


def read_image_volume(path, channels):
    """Reads an image volume.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        channels: the number of channels (modalities) expected; a 3-D file has one.

    Returns:
        (float32 array (D, H, W, C) of raw intensities, spacing (d, h, w) in the file's units, mm as a rule).
    """
    data, spacing = _read_nifti(path, "image")
    if data.ndim == 3:
        data = data[..., np.newaxis]
    if data.shape[-1] != channels:
        raise DataError(f"{path}: image has {data.shape[-1]} channel(s) but data.channels is {channels}; "
                        f"set data.channels or replace the file")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: image has NaN or infinite voxels; fix or replace the file")
    return data, spacing


def read_label_volume(path):
    """Reads a label volume as int32 class ids ``(D, H, W)``; non-integer values raise DataError."""
    data, _ = _read_nifti(path, "label")
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: label volume has shape {data.shape[::-1]} (x, y, z, ...), expected (x, y, z); "
                        f"labels are one class id per voxel")
    label = np.rint(data)
    if not np.isfinite(data).all() or np.abs(data - label).max(initial=0) > 1e-3:
        raise DataError(f"{path}: label volume has non-integer values; labels must be class ids")
    return label.astype(np.int32)


def resample(image, label, shape):
    """Resamples an image (linear) and its label (nearest) to ``shape`` (D, H, W), voxel centres aligned."""
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    if shape == label.shape:
        return image, label
    factors = [s / n for s, n in zip(shape, label.shape)]
    # Anti-aliasing before shrinking an axis (scikit-image's rule sigma = (1/f - 1) / 2).
    sigma = [max(0.0, (1 / f - 1) / 2) if f < 1 / 1.5 else 0.0 for f in factors]
    if any(sigma):
        image = ndimage.gaussian_filter(image, sigma + [0.0], mode="nearest")
    image = ndimage.zoom(image, factors + [1.0], order=1, mode="nearest", grid_mode=True)
    label = ndimage.zoom(label, factors, order=0, mode="nearest", grid_mode=True)
    return _edge_fit(image, shape), _edge_fit(label, shape)


def _edge_fit(array, shape):
    """zoom rounds each output size: a voxel too many is cut, one too few repeats the edge."""
    pad = [(0, max(0, s - n)) for s, n in zip(shape, array.shape)] + [(0, 0)] * (array.ndim - len(shape))
    return np.pad(array, pad, mode="edge")[tuple(slice(0, s) for s in shape)]


def _background(image):
    """The fill of voxels brought in from outside: each channel's minimum (air in CT, background in MRI)."""
    return image.reshape(-1, image.shape[-1]).min(axis=0)


def _crop_or_pad(image, label, shape, starts, fill, ignore_index):
    """The window of ``shape`` whose first voxel is at ``starts`` (negative or past the end: padded)."""
    out_image = np.full(tuple(shape) + image.shape[3:], fill, image.dtype)
    out_label = np.full(tuple(shape), ignore_index, label.dtype)
    src, dst = [], []
    for start, size, n in zip(starts, shape, label.shape):
        lo, hi = max(start, 0), min(start + size, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out_image[tuple(dst)] = image[tuple(src)]
    out_label[tuple(dst)] = label[tuple(src)]
    return out_image, out_label


def fit_volume(image, label, size, mode, ignore_index):
    """Brings a sample to ``size`` (D, H, W) by ``mode``: ``stretch``, ``letterbox`` or ``center`` (module doc)."""
    shape = np.array(label.shape)
    target = np.array(size)
    if mode == "stretch":
        return resample(image, label, target)
    if mode == "letterbox":
        scale = (target / shape).min()
        image, label = resample(image, label, np.maximum(1, np.round(shape * scale)).astype(int))
        starts = [0, 0, 0]
    else:
        starts = [int(s) for s in (shape - target) // 2]
    return _crop_or_pad(image, label, target, starts, _background(image), ignore_index)


def read_volume_pair(cfg, image_path, label_path):
    """The image ``(D, H, W, C)``, label ``(D, H, W)`` and spacing of a sample as stored, checked to share a grid."""
    image, spacing = read_image_volume(image_path, cfg["channels"])
    label = read_label_volume(label_path)
    if image.shape[:3] != label.shape:
        raise DataError(f"{label_path}: label volume is {'x'.join(map(str, label.shape))} but its image "
                        f"{image_path} is {'x'.join(map(str, image.shape[:3]))} (DxHxW); labels must have their "
                        f"image's voxel grid")
    return image, label, spacing


def load_volume(cfg, image_path, label_path):
    """Decodes, checks and sizes one volume sample (no augmentation).

    Args:
        cfg: validated data config of a volume format.
        image_path: image file.
        label_path: label file.

    Returns:
        (image float32 (D, H, W, C) raw intensities, label int32 (D, H, W)) at ``data.volume_size``.

    Raises:
        DataError: unreadable file, shape mismatch, label out of range, wrong channel count.
    """
    image, label, spacing = read_volume_pair(cfg, image_path, label_path)
    check_labels(label, cfg["num_classes"], cfg["ignore_index"], label_path)
    if cfg["spacing"] is not None:
        shape = np.maximum(1, np.round(np.array(label.shape) * spacing / np.array(cfg["spacing"]))).astype(int)
        image, label = resample(image, label, shape)
    image, label = fit_volume(image, label, cfg["volume_size"], cfg["resize"], cfg["ignore_index"])
    return image.astype(np.float32, copy=False), label.astype(np.int32, copy=False)


def random_crop_volume(image, label, size, rng, ignore_index):
    """A random ``size`` (D, H, W) window; where ``size`` exceeds the volume, it is padded (minimum intensity,
    ``ignore_index``) at a random position."""
    starts = [int(rng.integers(min(0, n - s), max(0, n - s) + 1)) for n, s in zip(label.shape, size)]
    return _crop_or_pad(image, label, size, starts, _background(image), ignore_index)


def augment_volume(image, label, spec, crop_size, ignore_index, rng):
    """Random 3D augmentation of one sample (the order and the laws are in the module doc).

    Args:
        image: (D, H, W, C) float32.
        label: (D, H, W) int32.
        spec: validated ``data.augment`` of a volume format.
        crop_size: (d, h, w) of the random window, or None.
        ignore_index: label of voxels brought in from outside.
        rng: numpy Generator.

    Returns:
        (image float32 (crop or D, H, W, C), label int32), aligned voxel for voxel.
    """
    from scipy import ndimage

    for axis, key in ((0, "dflip"), (1, "vflip"), (2, "hflip")):
        if spec[key] and rng.random() < 0.5:
            image, label = np.flip(image, axis), np.flip(label, axis)
    if spec["rot90"]:
        # A quarter turn swaps H and W: only half turns keep a non-square shape static.
        k = int(rng.integers(4)) if label.shape[1] == label.shape[2] else 2 * int(rng.integers(2))
        image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k, axes=(1, 2))
    if spec["rotate"]:
        angle = float(rng.uniform(-1, 1)) * spec["rotate"] * 360.0
        image = np.stack([ndimage.rotate(image[..., c], angle, axes=(1, 2), reshape=False, order=1, mode="constant",
                                         cval=fill) for c, fill in enumerate(_background(image))], axis=-1)
        label = ndimage.rotate(label, angle, axes=(1, 2), reshape=False, order=0, mode="constant",
                               cval=ignore_index)
    if crop_size is not None:
        image, label = random_crop_volume(image, label, crop_size, rng, ignore_index)
    scale, shift = spec["intensity_scale"], spec["intensity_shift"]
    if scale or shift:
        channels = image.shape[-1]
        std = image.reshape(-1, channels).std(axis=0)
        image = image * rng.uniform(1 - scale, 1 + scale, channels) + rng.uniform(-shift, shift, channels) * std
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(label, np.int32)


def build_volume_dataset(cfg, samples, batch_size, augment=False, shuffle=False, repeat=False, seed=None,
                         drop_remainder=False):
    """The tf.data pipeline of a volume format (`kseg.data.build_dataset` calls it).

    Returns:
        tf.data.Dataset of ``(image float32 (B, D, H, W, C), label int32 (B, D, H, W))`` with static D, H, W, C:
        ``data.crop_size`` when augmenting with crops, else ``data.volume_size``.
    """
    import tensorflow as tf

    from kseg.data.pipeline import decoded_samples, load_sample  # pipeline imports this module

    size = tuple(cfg["volume_size"])
    channels = cfg["channels"]
    deterministic = seed is not None or not shuffle

    def decode(image_path, label_path):
        return load_sample(cfg, image_path.decode(), label_path.decode())

    # float32: raw intensities are not 8-bit
    ds = decoded_samples(samples, decode, (tf.float32, size + (channels,)), size, cfg["cache"], shuffle, repeat,
                         seed)
    spec, crop = cfg["augment"], cfg["crop_size"]
    if augment and (crop is not None or any(spec.values())):
        out = tuple(crop or size)

        def numpy_augment(image, label, sample_seed):
            rng = np.random.default_rng(int(sample_seed) & (2**63 - 1))
            return augment_volume(image, label, spec, crop, cfg["ignore_index"], rng)

        def tf_augment(sample, sample_seed):
            image, label = tf.numpy_function(numpy_augment, [*sample, sample_seed], [tf.float32, tf.int32],
                                             stateful=False)
            return tf.ensure_shape(image, out + (channels,)), tf.ensure_shape(label, out)

        # One random draw per sample keeps the augmentation reproducible under parallel calls.
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed))
        ds = ds.map(tf_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
