"""The tf.data pipeline: file list in memory, parallel decode from disk, static size, augmentation."""

import contextlib
import re

import numpy as np

from kseg.data.augment import batch_augmenter, sample_augmenter
from kseg.data.config import validate_data_config
from kseg.data.formats import get_format
from kseg.data.volumes import build_volume_dataset
from kseg.errors import DataError

# TF wraps an exception raised in tf.numpy_function into an OpError whose text ends in the traceback,
# whose last line is "kseg.errors.DataError: <message>".
_WRAPPED = re.compile(r"DataError: (.+)")


def list_samples(data_cfg, split):
    """Returns ``[(image_path, mask_path), ...]`` of a split (checks pairing, not contents)."""
    cfg = validate_data_config(data_cfg)
    return get_format(cfg["format"]).samples(cfg, split)


def num_samples(data_cfg, split):
    """Number of samples in a split."""
    return len(list_samples(data_cfg, split))


def load_sample(cfg, image_path, mask_path):
    """Decodes and checks one sample and brings it to ``image_size`` (no augmentation).

    Args:
        cfg: validated data config.
        image_path: image file (or reference, see `kseg.data.formats`).
        mask_path: mask file (or reference).

    Returns:
        (image uint8 (H, W, 3), label int32 (H, W)); with extra input channels (RGB-D: ``data.channels`` > 3)
        the image is float32 (H, W, C); volume formats: (image float32 (D, H, W, C), label int32 (D, H, W)),
        see `kseg.data.volumes`.

    Raises:
        DataError: unreadable file, size mismatch, label out of range, unknown colour.
    """
    return get_format(cfg["format"]).load(cfg, image_path, mask_path)


def build_dataset(data_cfg, split, batch_size, augment=False, shuffle=None, repeat=False, seed=None,
                  drop_remainder=False):
    """Builds the streaming dataset of a split.

    Samples are decoded in parallel and, with ``data.cache``, decoded once and kept in memory (before
    any augmentation); otherwise only the file list is held and memory does not grow with the dataset.

    Args:
        data_cfg: the ``data`` config (validated here).
        split: split name, e.g. "train".
        batch_size: samples per batch.
        augment: apply ``data.augment`` and cut ``data.crop_size`` random crops.
        shuffle: reshuffle every epoch; None means shuffle the "train" split only.
        repeat: repeat forever.
        seed: int for reproducible order and augmentation (batch augmentation then runs on one
            thread), or None.
        drop_remainder: drop the last incomplete batch (gives a static batch dimension).

    Returns:
        tf.data.Dataset of ``(image float32 (B, H, W, C), label int32 (B, H, W))`` with static H, W (C =
        ``data.channels``: 3, or 4 / 6 for RGB-D with raw depth / HHA):
        ``data.crop_size`` when augmenting with crops, else ``data.image_size`` (volume formats:
        ``(B, D, H, W, C)`` and ``(B, D, H, W)``, see `kseg.data.volumes`). Decode errors surface as
        TF op errors carrying the DataError text; wrap iteration (or ``model.fit``) in `data_errors()` to
        get the DataError back.
    """
    import tensorflow as tf

    cfg = validate_data_config(data_cfg)
    samples = get_format(cfg["format"]).samples(cfg, split)
    shuffle = split == "train" if shuffle is None else shuffle
    if get_format(cfg["format"]).volumetric:
        return build_volume_dataset(cfg, samples, batch_size, augment, shuffle, repeat, seed, drop_remainder)
    height, width = cfg["image_size"]
    deterministic = seed is not None or not shuffle

    def decode(image_path, mask_path):
        return load_sample(cfg, image_path.decode(), mask_path.decode())

    channels = cfg["channels"]
    # uint8 keeps the cache 4x smaller than float32; depth channels are not 8-bit
    ds = decoded_samples(samples, decode, (tf.uint8 if channels == 3 else tf.float32, (height, width, channels)),
                         (height, width), cfg["cache"], shuffle, repeat, seed)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    augmenter = batch_augmenter(cfg["augment"], cfg["ignore_index"], seed) if augment else None

    def to_float_and_augment(images, labels):
        images = tf.cast(images, tf.float32)
        return augmenter(images, labels) if augmenter else (images, labels)

    # The layers draw from one seed generator; parallel calls would hand its draws out in any order.
    ds = ds.map(to_float_and_augment,
                num_parallel_calls=None if augmenter and seed is not None else tf.data.AUTOTUNE)
    per_sample = sample_augmenter(cfg["crop_size"], cfg["augment"]["rot90"], cfg["augment"]["elastic"],
                                  cfg["ignore_index"])
    if augment and per_sample is not None:
        out_h, out_w = cfg["crop_size"] or cfg["image_size"]

        def numpy_augment(images, labels, batch_seed):
            return per_sample(images, labels, np.random.default_rng(int(batch_seed) & (2**63 - 1)))

        def tf_augment(batch, batch_seed):
            images, labels = tf.numpy_function(numpy_augment, [*batch, batch_seed], [tf.float32, tf.int32],
                                               stateful=False)
            return (tf.ensure_shape(images, (None, out_h, out_w, channels)),
                    tf.ensure_shape(labels, (None, out_h, out_w)))

        # One random draw per batch keeps crops and deformations reproducible under parallel calls.
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed))
        ds = ds.map(tf_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


def decoded_samples(samples, decode, image_spec, label_shape, cache, shuffle, repeat, seed):
    """The dataset of decoded ``(image, label)`` pairs, one per ``(image path, label path)`` of ``samples``.

    ``decode(image_path: bytes, label_path: bytes) -> (image, int32 label)`` runs in parallel through
    ``tf.numpy_function``; ``image_spec`` is ``(dtype, static shape)`` of its image. With ``cache`` the pairs are
    decoded once and kept in memory, before shuffling (and the caller's augmentation), so that every epoch
    reshuffles and re-augments; without it only the file list is held.
    """
    import tensorflow as tf

    dtype, image_shape = image_spec

    def tf_decode(paths):
        image, label = tf.numpy_function(decode, [paths[0], paths[1]], [dtype, tf.int32], stateful=False)
        return tf.ensure_shape(image, image_shape), tf.ensure_shape(label, label_shape)

    ds = tf.data.Dataset.from_tensor_slices(np.array(samples, dtype=str))
    if cache:
        ds = ds.map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if not cache:
        ds = ds.map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None or not shuffle)
    return ds


def reraise_data_error(exc):
    """Re-raises ``exc``, as the DataError it wraps when it came out of a tf.data decode.

    Args:
        exc: an exception caught around dataset iteration or ``model.fit``.

    Raises:
        DataError: with the original message, when ``exc`` carries one; else ``exc`` itself.
    """
    if not isinstance(exc, DataError):
        match = _WRAPPED.search(str(exc))
        if match:
            raise DataError(match.group(1).strip()) from exc
    raise exc


@contextlib.contextmanager
def data_errors():
    """Context manager that turns DataErrors wrapped by TensorFlow back into DataErrors.

    Example:
        >>> with kseg.data.data_errors():
        ...     model.fit(build_dataset(cfg, "train", 8), epochs=1)
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - everything else is re-raised unchanged
        reraise_data_error(exc)


def check_dataset(data_cfg, split, raise_first=True):
    """Decodes every sample of a split eagerly and reports what is wrong.

    Args:
        data_cfg: the ``data`` config.
        split: split name.
        raise_first: raise the first problem instead of collecting them.

    Returns:
        List of problem messages (empty when the split is clean), listing problems (files without their
        counterpart) first.

    Raises:
        DataError: the first problem, when ``raise_first``; a split without any sample always raises.
    """
    cfg = validate_data_config(data_cfg)
    problems = None if raise_first else []
    fmt = get_format(cfg["format"])
    for image_path, mask_path in fmt.samples(cfg, split, problems):
        try:
            load_sample(cfg, image_path, mask_path)
        except DataError as exc:
            if raise_first:
                raise
            problems.append(str(exc))
    return problems or []
