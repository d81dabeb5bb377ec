"""The tf.data pipeline: file list in memory, parallel decode from disk, static size, augmentation."""

import contextlib
import re

import numpy as np

from kseg.data.augment import batch_augmenter, elastic_deform
from kseg.data.config import validate_data_config
from kseg.data.formats import get_format
from kseg.data.io import check_labels, fit_size, read_image
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


def load_sample(cfg, image_path, mask_path, rng=None):
    """Decodes and checks one sample and brings it to ``image_size``.

    Args:
        cfg: validated data config.
        image_path: image file.
        mask_path: mask file.
        rng: numpy Generator for per-sample augmentation (elastic), or None for none.

    Returns:
        (image float32 (H, W, 3) in [0, 255], label int32 (H, W)).

    Raises:
        DataError: unreadable file, size mismatch, label out of range, unknown colour.
    """
    image = read_image(image_path)
    label = get_format(cfg["format"]).read_label(mask_path, cfg)
    if image.shape[:2] != label.shape:
        raise DataError(f"{mask_path}: mask is {label.shape[1]}x{label.shape[0]} but its image {image_path} is "
                        f"{image.shape[1]}x{image.shape[0]} (WxH); masks must have their image's size")
    check_labels(label, cfg["num_classes"], cfg["ignore_index"], mask_path)
    image, label = fit_size(image, label, cfg["image_size"], cfg["resize"], cfg["ignore_index"])
    elastic = cfg["augment"]["elastic"]
    if rng is not None and elastic and rng.random() < elastic["p"]:
        image, label = elastic_deform(image, label, rng, elastic["alpha"], elastic["sigma"])
    return image, label


def build_dataset(data_cfg, split, batch_size, augment=False, shuffle=None, repeat=False, seed=None,
                  drop_remainder=False):
    """Builds the streaming dataset of a split.

    Args:
        data_cfg: the ``data`` config (validated here).
        split: split name, e.g. "train".
        batch_size: samples per batch.
        augment: apply ``data.augment``.
        shuffle: reshuffle every epoch; None means shuffle the "train" split only.
        repeat: repeat forever.
        seed: int for reproducible order and augmentation (batch augmentation then runs on one
            thread), or None.
        drop_remainder: drop the last incomplete batch (gives a static batch dimension).

    Returns:
        tf.data.Dataset of ``(image float32 (B, H, W, 3), label int32 (B, H, W))`` with static H, W.
        Decode errors surface as TF op errors carrying the DataError text; wrap iteration (or
        ``model.fit``) in `data_errors()` to get the DataError back.
    """
    import tensorflow as tf

    cfg = validate_data_config(data_cfg)
    samples = get_format(cfg["format"]).samples(cfg, split)
    height, width = cfg["image_size"]
    shuffle = split == "train" if shuffle is None else shuffle

    def decode(image_path, mask_path, sample_seed):
        rng = np.random.default_rng(int(sample_seed) & (2**63 - 1)) if augment else None
        return load_sample(cfg, image_path.decode(), mask_path.decode(), rng)

    def tf_decode(paths, sample_seed):
        image, label = tf.numpy_function(decode, [paths[0], paths[1], sample_seed], [tf.float32, tf.int32],
                                         stateful=False)
        return tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(label, (height, width))

    ds = tf.data.Dataset.from_tensor_slices(np.array(samples, dtype=str))
    if shuffle:
        ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # One random draw per sample keeps elastic deformation reproducible under parallel decoding.
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed))
    ds = ds.map(tf_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None or not shuffle)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    augmenter = batch_augmenter(cfg["augment"], cfg["ignore_index"], seed) if augment else None
    if augmenter is not None:
        # The layers draw from one seed generator; parallel calls would hand its draws out in any order.
        ds = ds.map(augmenter, num_parallel_calls=None if seed is not None else tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


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
        List of problem messages (empty when the split is clean).

    Raises:
        DataError: the first problem, when ``raise_first``; listing problems always raise.
    """
    cfg = validate_data_config(data_cfg)
    problems = []
    for image_path, mask_path in get_format(cfg["format"]).samples(cfg, split):
        try:
            load_sample(cfg, image_path, mask_path)
        except DataError as exc:
            if raise_first:
                raise
            problems.append(str(exc))
    return problems
