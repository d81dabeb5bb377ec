"""Segmentation datasets: on-disk layouts, a streaming tf.data pipeline, mask-aware augmentation.

`build_dataset` yields ``(image float32 (B, H, W, 3) raw RGB in [0, 255], label int32 (B, H, W))``
with static H, W; ``ignore_index`` (255) marks pixels that are never scored. TensorFlow and Keras
are imported on first use only. The ``nifti`` format yields volumes ``(image float32 (B, D, H, W, C)``
raw intensities, ``label int32 (B, D, H, W))`` (`kseg.data.volumes`).

Data config schema (the ``data:`` section of an experiment file; defaults after ``=``)::

    data:
      format: isbi            # list_formats(); `kseg data formats` and docs/datasets.md describe each layout
      root: ../shared/data/isbi2012-membrane
                              # relative: to the current directory, else to the config file's folder
      image_size: [256, 256]  # [H, W] (or one int) every sample is brought to
      num_classes: 2          # fixed by voc/sbd (21), cityscapes (19), isbi (2); synthetic = 4 (2-8);
                              # folder: required (or len(class_names) / len(palette))
      ignore_index: 255       # label never scored; also the fill of padding and of augmentation borders
      resize: stretch         # stretch to image_size | letterbox (keep aspect, pad bottom/right)
      crop_size: [256, 256]   # = null; [H, W] (or one int): with augment=True, random crops of this size
                              # cut after the batch augmentation and before rot90, elastic; without augment
                              # (validation) samples stay at image_size, for fully convolutional models
      crop_pad: false         # allow crop_size > image_size: the rest is image 0, label ignore_index
      cache: false            # keep the decoded, resized samples in memory (uint8) after the first
                              # epoch; for small datasets only: without it nothing grows with the data
      splits:                 # split name -> spec; each format says what a bare name means
        train: "0-19"         #   index range(s) over the naturally sorted pairs, e.g. "0-9,20-29"
        val: "20-23"          #   or "list.txt" (stems, relative to root), or {image_dir, mask_dir},
                              #   or a name: folder -> subfolder, voc -> ImageSets/Segmentation/NAME.txt,
                              #   sbd -> NAME.txt, cityscapes -> leftImg8bit/NAME
      image_dir: images       # folder format (format defaults: voc JPEGImages, sbd img, isbi train/image)
      mask_dir: masks         # (voc SegmentationClass, sbd cls, isbi train/label)
      palette: [[0, 0, 0], [255, 0, 0]]   # folder: colour masks -> class = index of its colour;
                              # palette ("P") PNGs and single-channel masks are read as class ids
      class_names: [background, lesion]   # folder (optional)
      synthetic: {num_images: 200, size: [H, W] = image_size, seed: 0}   # synthetic only; the data is
                              # generated into root on first use
      augment:                # applied when build_dataset(..., augment=True)
        hflip: true           # = false
        vflip: true           # = false
        rot90: true           # random quarter turns of each crop (exact; half turns only when H != W)
        rotate: 0.1           # max rotation, fraction of a full turn (0.1 = 36 degrees)
        scale: [0.75, 1.5]    # magnification range
        translate: 0.1        # max shift, fraction of H and W
        brightness: 0.2       # image only; fraction of 255
        contrast: 0.2         # image only
        elastic: {alpha: 34, sigma: 4, p: 1.0}   # pixels at image_size; per sample (crop), OpenCV
        fill: constant        # borders: constant (image 0, label ignore) | reflect

RGB-D formats (nyudv2, sunrgbd, scannet, sun3d, uwrgbd, stanford2d3d) add depth channels after RGB
(`kseg.data.depth`); ``channels`` is then set for the trainer (3, 4 or 6)::

      depth: raw              # = raw (4 channels) | hha (6) | none (RGB only)
      max_depth: 10.0         # metres mapped to 255 by raw depth

Volumes (``format: nifti``, the Medical Segmentation Decathlon layout ``imagesTr/<case>.nii.gz`` +
``labelsTr/<case>.nii.gz``; needs nibabel and scipy) replace ``image_size`` by ``volume_size`` and take
their own augmentations; crop_size is [D, H, W]; crop_pad, cache, splits, num_classes, ignore_index,
image_dir and mask_dir mean the same as for images::

    data:
      format: nifti
      root: ../shared/data/Task09_Spleen
      volume_size: [64, 128, 128]   # [D, H, W] every volume is brought to (image_size is set to it)
      channels: 1             # = 1; modalities in a 4-D image file
      spacing: [1.5, 1.0, 1.0] # = null; resample to this voxel size (mm, D H W) before sizing
      resize: stretch         # stretch | letterbox | center (crop/pad around the centre, no resampling)
      num_classes: 2
      splits: {train: "0-31", val: "32-40"}
      augment:
        dflip: true           # flips along D, H (vflip), W (hflip); = false
        vflip: true
        hflip: true
        rot90: true           # random quarter turns in the axial (H, W) plane; = false
        rotate: 0.03          # max axial rotation, fraction of a full turn; = 0
        intensity_scale: 0.1  # image x U(1 - s, 1 + s) per channel; = 0
        intensity_shift: 0.1  # image + U(-t, t) x its standard deviation per channel; = 0

Point clouds (``format: shapenet_part | sydney_urban | scannet3d``) are voxelised (`kseg.data.formats_3d`): like volumes they
take ``volume_size`` and the volume augmentations, plus ``voxel_size: 0.0625`` (required; the clouds' units),
one channel (occupancy).

Errors a user can fix are `kseg.errors.ConfigError` (the config) and `kseg.errors.DataError`
(``"<file>: <problem>; <what to do>"``). Decode errors happen inside tf.data; `data_errors()`
(or `reraise_data_error`) turns TensorFlow's wrapping back into the DataError, and `check_dataset`
scans a split eagerly.

Example:
    >>> from kseg.data import build_dataset
    >>> cfg = {"format": "synthetic", "root": "/tmp/kseg-shapes", "image_size": [128, 128]}
    >>> images, labels = next(iter(build_dataset(cfg, "train", batch_size=8, augment=True)))
"""

from kseg.data import synthetic
from kseg.data.config import validate_data_config
from kseg.data.formats import get_format, list_formats
from kseg.data.pipeline import (build_dataset, check_dataset, data_errors, list_samples, load_sample,
                                num_samples, reraise_data_error)

__all__ = ["build_dataset", "check_dataset", "data_errors", "dataset_info", "list_formats", "list_samples",
           "load_sample", "num_samples", "reraise_data_error", "synthetic", "validate_data_config"]


def dataset_info(data_cfg):
    """Returns ``{"num_classes", "class_names", "palette", "ignore_index"}`` of a data config."""
    cfg = validate_data_config(data_cfg)
    fmt = get_format(cfg["format"])
    return {"num_classes": cfg["num_classes"], "class_names": tuple(fmt.class_names(cfg)),
            "palette": tuple(fmt.palette(cfg)), "ignore_index": cfg["ignore_index"]}
