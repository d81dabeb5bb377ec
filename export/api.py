"""``kseg export``: a trained ``.keras`` model to a verified TFLite file that describes itself.

Stages: [prune / cluster / QAT on the tf_keras twin, in a subprocess (``export.optimize``)] -> convert
(``export.convert``) -> [EdgeTPU-safe rewrite and op analysis (``export.edgetpu``)] -> metadata embedded in the
flatbuffer (``export.metadata``) -> written atomically -> verification report against Keras (``export.report``).

Example:
    >>> from export.api import export_model
    >>> result = export_model("runs/unet/best.keras", mode="int8",
    ...                       config_path="configs/unet_membrane-512x512.yaml")   # doctest: +SKIP
    >>> result["path"], result["report"]["stages"]["int8"]["miou"]                # doctest: +SKIP
"""

import copy
import os

import numpy as np

from export.convert import MODES, to_tflite, write_atomic
from export.optimize import check_options, optimize
from kseg.errors import ConfigError, DataError, ModelFileError

EXPORT_MODES = MODES + ("edgetpu",)


def check_kseg_model(model, path):
    """Raise ``ModelFileError`` unless ``model`` keeps the kseg contract: one image input ``(B, H, W, C)`` (or a
    volume ``(B, D, H, W, C)``) and per-pixel logits ``(B, H, W, num_classes)`` of the same spatial size."""
    inputs, outputs = model.inputs, model.outputs
    in_shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
    out_shape = tuple(outputs[0].shape) if outputs else ()
    if (len(inputs) != 1 or len(in_shape) not in (4, 5) or len(out_shape) != len(in_shape)
            or in_shape[1:-1] != out_shape[1:-1] or None in in_shape[1:]):
        raise ModelFileError(f"{path} is not a kseg segmentation model: expected one image input (B, H, W, C) with a "
                             f"static size and per-pixel logits (B, H, W, classes), got inputs "
                             f"{[tuple(t.shape) for t in inputs]} -> outputs {[tuple(t.shape) for t in outputs]}; "
                             "export a model saved by `kseg train`")


def without_softmax(model):
    """The model up to its logits when its last layer is a softmax (a per-pixel softmax is no EdgeTPU op and
    changes nothing for argmax); otherwise the model itself."""
    import keras

    last = model.layers[-1]
    is_softmax = type(last).__name__ == "Softmax" or (
        type(last).__name__ == "Activation" and getattr(last.activation, "__name__", "") == "softmax")
    if not is_softmax:
        return model
    return keras.Model(model.input, last.input, name=model.name)


def data_config(cfg, model, config_path):
    """The config's data section at the model's input size (calibration and verification feed the model as it
    is exported, whatever size it was trained at); a missing data folder is a clear error."""
    data_cfg = copy.deepcopy(cfg["data"])
    size = [int(d) for d in model.inputs[0].shape[1:-1]]
    data_cfg["image_size"] = size
    root = data_cfg.get("root")
    if root is not None and not os.path.exists(root):
        raise DataError(f"{config_path}: data.root {root!r} does not exist; the export needs the training data to "
                        "calibrate int8 and to verify the model (fix data.root or run from the right folder)")
    return data_cfg


def calibration_images(data_cfg, num_images, pool_factor=4):
    """``num_images`` training images drawn class-balanced, un-augmented, as float32 ``(H, W, C)`` arrays.

    From the first ``pool_factor * num_images`` images, classes take turns picking the image with the largest share
    of their pixels that is not chosen yet, so rare classes are in the calibration set and their activation ranges
    are measured (the first N images of a scene dataset are mostly road and sky).
    """
    from kseg.data import build_dataset

    images, histograms = [], []
    num_classes = int(data_cfg["num_classes"])
    try:
        for x, y in build_dataset(data_cfg, "train", batch_size=1, augment=False, shuffle=False):
            images.append(x.numpy()[0])
            labels = y.numpy()[0].ravel()
            counts = np.bincount(labels[labels < num_classes], minlength=num_classes)[:num_classes]
            histograms.append(counts / max(counts.sum(), 1))
            if len(images) >= pool_factor * num_images:
                break
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the training data for calibration: {e}") from None
    if not images:
        raise DataError("the config's train split is empty: int8 calibration needs training images")
    if len(images) <= num_images:
        return images
    shares = np.stack(histograms)
    chosen = []
    while len(chosen) < num_images:
        for c in range(num_classes):
            order = [i for i in np.argsort(-shares[:, c], kind="stable") if i not in chosen]
            if order and len(chosen) < num_images:
                chosen.append(int(order[0]))
    return [images[i] for i in sorted(chosen)]


def export_model(model_path, mode="int8", config_path=None, out_path=None, num_calibration=64, io_dtype="uint8",
                 prune=None, cluster=None, qat=False, fine_tune_steps=100, fine_tune_lr=None, fine_tune_target="float",
                 report=True, verbose=True):
    """Optimize, convert, embed metadata, write atomically and verify against Keras.

    Args:
        model_path: a ``.keras`` model saved by ``kseg train``.
        mode: ``float32``, ``float16``, ``dynamic``, ``int8`` or ``edgetpu`` (int8 with the EdgeTPU-safe rewrite
            and the op analysis).
        config_path: the training config; required for int8 / edgetpu (calibration data), for pruning,
            clustering and QAT (fine-tuning data) and for the verification's mIoU.
        out_path: the ``.tflite`` to write (default: ``<model>_<mode>.tflite`` beside the model).
        num_calibration: training images used to calibrate int8.
        io_dtype: int8 input / output type, ``"uint8"`` (raw camera bytes) or ``"int8"``.
        prune: target sparsity in (0, 1), or ``"2:4"`` for 2:4 structured sparsity.
        cluster: number of weight clusters per kernel.
        qat: quantization-aware fine-tuning before the int8 conversion.
        fine_tune_steps: training steps of the prune / cluster / QAT fine-tuning.
        fine_tune_lr: Adam learning rate of that fine-tuning (default: ``export.optimize.FINE_TUNE_LR`` for
            pruning and clustering, ``QAT_LR`` for QAT).
        fine_tune_target: ``"float"`` (the trained model's own logits, by distillation) or ``"labels"`` (the
            config's loss on the training labels); ``export.optimize.optimize``'s ``target``.
        report: write the verification report (``<out>.report.txt`` and ``.png``).

    Returns:
        A dict with the output path, its size, the EdgeTPU analysis (edgetpu mode) and the report numbers. An
        instance model (Mask R-CNN) goes to ``export.instance.export_instance`` (its own verification).
    """
    from kseg.saving import load_model

    if mode not in EXPORT_MODES:
        raise ConfigError(f"--to must be one of {EXPORT_MODES}, got {mode!r}")
    if io_dtype not in ("uint8", "int8"):
        raise ConfigError(f"io_dtype must be 'uint8' or 'int8', got {io_dtype!r}")
    optimizing = prune is not None or cluster is not None or qat
    if optimizing:
        check_options(prune, cluster, qat, mode, fine_tune_lr, fine_tune_target)
    model = load_model(model_path)
    from kseg.evaluate import is_instance_model

    if is_instance_model(model):
        if optimizing:
            raise ConfigError("--prune / --cluster / --qat: the tf_keras twin they need exists for semantic models "
                              "only; export the instance model without them")
        from export.instance import export_instance
        from kseg.config import load_config

        cfg = load_config(config_path) if config_path is not None else None
        return export_instance(model, model_path, mode, cfg, config_path, out_path, num_calibration, report, verbose)
    check_kseg_model(model, model_path)
    quantized = mode in ("int8", "edgetpu")
    cfg = None
    if config_path is not None:
        from kseg.config import load_config

        cfg = load_config(config_path)
    elif quantized or optimizing:
        raise ConfigError(f"{mode} export{' with pruning / clustering / QAT' if optimizing else ''} needs --config: "
                          "its training data calibrates the quantization and fine-tunes the model")
    if mode == "edgetpu":
        model = without_softmax(model)
    data_cfg = data_config(cfg, model, config_path) if cfg is not None else None
    out_path = os.fspath(out_path or os.path.splitext(os.fspath(model_path))[0] + f"_{mode}.tflite")
    calib = calibration_images(data_cfg, num_calibration) if quantized else None

    stages = {}
    if optimizing:
        model_name = cfg["model"]["name"]
        builder_kwargs = {k: v for k, v in cfg["model"].items() if k not in ("name", "aux_weight")}
        opt = optimize(model, model_name, builder_kwargs, data_cfg, prune=prune, cluster=cluster, qat=qat,
                       steps=fine_tune_steps, lr=fine_tune_lr, loss=cfg["loss"], target=fine_tune_target,
                       calibration=calib, mode=mode, io_dtype=io_dtype,
                       work_dir=os.path.dirname(os.path.abspath(out_path)), verbose=verbose)
        data, stages["optimized"] = opt["tflite"], opt
        keras_reference = opt.get("keras_model", model)
    else:
        converted = model
        if mode == "edgetpu":
            from export.edgetpu import exact_upsampling

            converted = exact_upsampling(model)
        data = to_tflite(converted, "int8" if quantized else mode, representative_data=calib, io_dtype=io_dtype)
        keras_reference = model

    result = {"path": out_path, "mode": mode}
    if mode == "edgetpu":
        from export.edgetpu import analyse, compile_edgetpu, make_edge_safe

        data, result["resize_ops_changed"] = make_edge_safe(data)
        result["edgetpu"] = analyse(data, out_path)
    meta = {"input_size": [int(d) for d in model.inputs[0].shape[1:3]], "normalization": "raw", "interpolation": "area",
            "output_kind": "logits", "mode": mode, "model": model.name}
    if optimizing:
        meta["optimization"] = {k: v for k, v in (("prune", prune), ("cluster", cluster), ("qat", qat)) if v}
    if data_cfg is not None:
        from kseg.data import dataset_info

        info = dataset_info(data_cfg)
        meta.update(labels=list(info["class_names"]), palette=np.asarray(info["palette"]).astype(int).tolist())
    from export.metadata import embed_metadata

    data = embed_metadata(data, meta)
    write_atomic(out_path, data)
    result["size_bytes"] = len(data)
    if mode == "edgetpu":
        result["edgetpu_compiler"] = compile_edgetpu(out_path)
    if verbose:
        print(f"wrote {out_path} ({len(data) / 1e6:.2f} MB, {mode})")
        if "edgetpu" in result:
            print(result["edgetpu"].text())
            if result["edgetpu_compiler"] is None:
                print("edgetpu_compiler is not on PATH: the analysis above follows the Coral op table; compile on a "
                      "machine that has it")
    if report:
        from export.report import verification_report

        result["report"] = verification_report(keras_reference, out_path, mode, data_cfg, stages=stages,
                                               edgetpu=result.get("edgetpu"), verbose=verbose)
        scores = result["report"]["stages"]
        result.update(keras_miou=scores["keras"]["miou"], tflite_miou=scores[mode]["miou"],
                      agreement=scores[mode]["agreement"])
    return result
