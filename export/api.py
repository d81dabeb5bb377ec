"""``kseg export``: a trained ``.keras`` model to a verified TFLite file with its metadata beside it."""

import json
import os

import numpy as np

from export.convert import to_tflite, write_atomic
from kseg.errors import ConfigError


def metadata_path(tflite_path):
    """The sidecar JSON the edge runtime reads (labels, palette, input size, output kind)."""
    return os.fspath(tflite_path) + ".json"


def calibration_images(data_cfg, num_images):
    """The first ``num_images`` training images, un-augmented, as float32 (H, W, C) arrays."""
    from kseg.data import build_dataset

    images = []
    for x, _ in build_dataset(data_cfg, "train", batch_size=1, augment=False, shuffle=False):
        images.append(x.numpy()[0])
        if len(images) >= num_images:
            break
    return images


def export_model(model_path, mode="int8", config_path=None, out_path=None, num_calibration=64, verbose=True):
    """Convert, write atomically, write metadata, and verify against Keras on the validation split.

    Args:
        model_path: a ``.keras`` model saved by ``kseg train``.
        mode: ``float32``, ``float16``, ``dynamic`` or ``int8`` (uint8 input and output).
        config_path: the training config; required for int8 (calibration data) and for verification.
        out_path: the ``.tflite`` to write (default: ``<model>_<mode>.tflite`` beside the model).
        num_calibration: training images used to calibrate int8.

    Returns:
        A dict with the output path, its size and, when a config is given, the verification numbers.
    """
    from kseg.saving import load_model

    model = load_model(model_path)
    cfg = None
    if config_path is not None:
        from kseg.config import load_config

        cfg = load_config(config_path)
    elif mode == "int8":
        raise ConfigError("int8 export needs --config: its training data calibrates the quantization")
    out_path = out_path or os.path.splitext(os.fspath(model_path))[0] + f"_{mode}.tflite"
    calib = calibration_images(cfg["data"], num_calibration) if mode == "int8" else None
    data = to_tflite(model, mode, representative_data=calib)
    write_atomic(out_path, data)
    meta = {"input_size": [int(d) for d in model.inputs[0].shape[1:3]], "normalization": "raw",
            "output_kind": "logits", "mode": mode}
    if cfg is not None:
        from kseg.data import dataset_info

        info = dataset_info(cfg["data"])
        meta.update(labels=list(info["class_names"]), palette=np.asarray(info["palette"]).astype(int).tolist())
    write_atomic(metadata_path(out_path), json.dumps(meta, indent=2).encode())
    result = {"path": out_path, "size_bytes": len(data), "mode": mode}
    if cfg is not None:
        from export.verify import compare_on_split

        result.update(compare_on_split(model, out_path, cfg["data"], "val"))
    if verbose:
        print(f"wrote {out_path} ({len(data) / 1e6:.2f} MB, {mode})")
        if "keras_miou" in result:
            print(f"val mIoU: Keras {result['keras_miou']:.4f}  TFLite {mode} {result['tflite_miou']:.4f}  "
                  f"(pixel agreement {result['agreement']:.4f})")
    return result
