"""``kseg export`` of an instance model (Mask R-CNN, He et al., "Mask R-CNN", ICCV 2017, arXiv 1703.06870).

What runs where:

- **in the TFLite file** (builtin ops only, no Flex, no custom ops): the backbone and FPN, the RPN and its proposals
  (box decoding, per-level top-k, NMS), ROIAlign, the box and class head, class-aware NMS of the detections, the mask
  head and the pick of each detection's class mask. This is the model's ``inference_model()`` with a static batch of 1.
  Its signature outputs are named by the detection contract: ``boxes`` ``(1, D, 4)`` ``[y1, x1, y2, x2]`` input
  pixels, ``scores`` ``(1, D)``, ``classes`` ``(1, D)`` (0: empty slot), ``masks`` ``(1, D, 28, 28)`` probabilities
  inside each box, ``num_detections`` ``(1,)``.
- **in the runtime** (numpy + OpenCV, ``edge.runtime.InstanceSegmenter``): mapping the boxes back to the frame and
  pasting each 28 x 28 mask into its box at the frame's resolution (``kseg.instance.masks.paste_masks``, bilinear,
  threshold 0.5), which needs the frame size and would cost a full-size mask per detection slot inside the graph.

The metadata says ``output_kind: "instance"`` with the class names, so ``kseg-edge run`` picks the instance runtime.
Verification runs the Keras inference graph and the file on the same images: detection counts, box, score and mask
differences, and COCO mask AP of both on the validation split when the config is given.

Example:
    >>> from export.api import export_model
    >>> export_model("runs/maskrcnn_mobilenetv2_nuclei-256x256/best.keras", mode="float32",
    ...              config_path="configs/maskrcnn_mobilenetv2_nuclei-256x256.yaml")   # doctest: +SKIP
"""

import copy
import os

import numpy as np

from export.convert import to_tflite, write_atomic
from kseg.errors import ConfigError, DataError, ModelFileError

INSTANCE_MODES = ("float32", "float16", "dynamic", "int8")


def instance_data_config(cfg, model, config_path):
    """The config's (instance) data section at the model's input size."""
    data_cfg = copy.deepcopy(cfg["data"])
    data_cfg["image_size"] = [int(d) for d in model.inputs[0].shape[1:3]]
    root = data_cfg.get("root")
    if root is not None and not os.path.exists(root):
        raise DataError(f"{config_path}: data.root {root!r} does not exist; the export verifies the model on the "
                        "validation data (fix data.root or run from the right folder)")
    return data_cfg


def _images(data_cfg, split, count, shape):
    """``count`` uint8 RGB images of a split (``None`` data: smooth random images) with their batches."""
    if data_cfg is None:
        import cv2

        rng = np.random.default_rng(0)
        h, w = shape
        return [(cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h)), None)
                for _ in range(count)]
    from kseg.instance.data import build_instance_dataset

    out = []
    for batch in build_instance_dataset(data_cfg, split, batch_size=1, shuffle=False):
        batch = {k: np.asarray(v) for k, v in batch.items()}
        out.append((np.clip(np.round(batch["image"][0]), 0, 255).astype(np.uint8), batch))
        if len(out) >= count:
            break
    if not out:
        raise DataError(f"the {split} split is empty: the export needs its images")
    return out


def export_instance(model, model_path, mode="float32", cfg=None, config_path=None, out_path=None,
                    num_calibration=32, report=True, verbose=True):
    """Convert a Mask R-CNN (``kseg.models.maskrcnn``) to TFLite with its post-processing, embed the metadata, write
    atomically and verify against Keras.

    Args:
        model: the loaded Keras instance model.
        model_path: where it was loaded from (the default output lies beside it).
        mode: ``float32``, ``float16``, ``dynamic`` or ``int8`` (full integer kernels, float input and outputs;
            see docs/maskrcnn.md for what it gives).
        cfg: the loaded training config (class names, calibration and verification data), or None.
        config_path: its path, for messages.
        out_path: the ``.tflite`` to write (default ``<model>_<mode>.tflite``).
        num_calibration: training images calibrating int8.
        report: verify against Keras and write ``<out>.report.txt``.

    Returns:
        dict: ``path``, ``mode``, ``size_bytes``, ``ops`` (op histogram) and, with ``report``, ``verification``.

    Raises:
        ConfigError: a mode the instance export does not have, or int8 without a config.
        ModelFileError: the converter failed (the message carries its error).
    """
    from export.metadata import embed_metadata
    from export.report import tflite_op_histogram

    if mode not in INSTANCE_MODES:
        raise ConfigError(f"--to {mode}: an instance model exports to {', '.join(INSTANCE_MODES)} (the EdgeTPU has no "
                          "NMS, top-k or gather ops, the core of Mask R-CNN's post-processing)")
    if mode == "int8" and cfg is None:
        raise ConfigError("int8 export needs --config: its training images calibrate the quantization")
    net = model.inference_model()
    size = [int(d) for d in net.inputs[0].shape[1:3]]
    data_cfg = instance_data_config(cfg, net, config_path) if cfg is not None else None
    calibration = None
    if mode == "int8":
        calibration = [image.astype(np.float32) for image, _ in _images(data_cfg, "train", num_calibration, size)]
    try:
        data = to_tflite(net, mode, representative_data=calibration, io_dtype="float32")
    except Exception as e:  # the converter raises many types; the user needs what failed and what works
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{model_path}: the {mode} conversion of the Mask R-CNN graph failed ({first}); "
                             "export float32 or dynamic instead") from None
    ops = dict(tflite_op_histogram(data))
    foreign = sorted(op for op in ops if op.startswith("Flex") or op == "CUSTOM")
    if foreign:
        raise ModelFileError(f"{model_path}: the converted graph needs non-builtin ops {foreign}")
    meta = {"input_size": size, "normalization": "raw", "interpolation": "area", "output_kind": "instance",
            "mode": mode, "model": model.name,
            "num_classes": int(model.num_classes), "max_detections": int(net.output["scores"].shape[1]),
            "mask_size": [int(d) for d in net.output["masks"].shape[2:]]}
    if data_cfg is not None:
        from kseg.instance.data import instance_class_names

        meta["labels"] = list(instance_class_names(data_cfg))
    data = embed_metadata(data, meta)
    out_path = os.fspath(out_path or os.path.splitext(os.fspath(model_path))[0] + f"_{mode}.tflite")
    write_atomic(out_path, data)
    result = {"path": out_path, "mode": mode, "size_bytes": len(data), "ops": ops}
    if verbose:
        print(f"wrote {out_path} ({len(data) / 1e6:.2f} MB, {mode}, instance: {sum(ops.values())} ops, builtin only)")
    if report:
        result["verification"] = verify_instance(net, out_path, data_cfg, int(model.num_classes))
        text = verification_text(result["verification"], out_path, mode, ops)
        write_atomic(os.path.splitext(out_path)[0] + ".report.txt", text.encode("utf-8"))
        if verbose:
            print(text)
    return result


def verify_instance(net, tflite_path, data_cfg=None, num_classes=None, num_images=8, threads=(1, 2)):
    """The exported file against the Keras inference graph on the same images (validation images, or smooth random
    ones without data).

    Returns:
        dict: ``num_images``, ``same_count`` (images with equal detection counts), ``max_box_error`` (pixels),
        ``max_score_error``, ``mean_mask_error`` (probability, over the detections both found in the same order),
        ``class_agreement``; with data ``keras`` and ``tflite`` COCO numbers (``mask_ap``, ``mask_ap50``,
        ``box_ap``) on the whole validation split; ``latency_ms`` per thread count.
    """
    from edge.runtime import InstanceSegmenter
    from export.report import latency_ms

    size = [int(d) for d in net.inputs[0].shape[1:3]]
    seg = InstanceSegmenter(tflite_path, num_threads=1)
    split_size = None
    if data_cfg is not None:
        from kseg.instance.data import list_instance_samples

        split_size = len(list_instance_samples(data_cfg, "val"))
    samples = _images(data_cfg, "val", split_size or num_images, size)
    ap = None
    if data_cfg is not None:
        from kseg.instance.evaluate import MaskAP

        ap = {"keras": MaskAP(num_classes), "tflite": MaskAP(num_classes)}
    box_err = score_err = 0.0
    mask_err, same_count, agree, compared = [], 0, 0, 0
    for i, (image, batch) in enumerate(samples):
        ref = {k: np.asarray(v) for k, v in net.predict_on_batch(image[None].astype(np.float32)).items()}
        lite = {k: v[None] for k, v in seg.invoke(seg.preprocess(image, rgb=True)[0]).items()}
        if ap is not None:
            ap["keras"].update(batch, ref)
            ap["tflite"].update(batch, lite)
        if i >= num_images:
            continue
        n_ref, n_lite = int(ref["num_detections"][0]), int(lite["num_detections"][0])
        same_count += n_ref == n_lite
        n = min(n_ref, n_lite)
        if n:
            box_err = max(box_err, float(np.abs(ref["boxes"][0, :n] - lite["boxes"][0, :n]).max()))
            score_err = max(score_err, float(np.abs(ref["scores"][0, :n] - lite["scores"][0, :n]).max()))
            mask_err.append(np.abs(ref["masks"][0, :n] - lite["masks"][0, :n]).mean(axis=(1, 2)))
            agree += int((ref["classes"][0, :n] == lite["classes"][0, :n]).sum())
            compared += n
    shown = min(len(samples), num_images)
    out = {"num_images": shown, "same_count": same_count, "max_box_error": box_err, "max_score_error": score_err,
           "mean_mask_error": float(np.concatenate(mask_err).mean()) if mask_err else 0.0,
           "class_agreement": agree / compared if compared else 1.0}
    if ap is not None:
        for name, metric in ap.items():
            r = metric.result()
            out[name] = {k: r[k] for k in ("mask_ap", "mask_ap50", "box_ap")}
        out["val_images"] = len(samples)
    with open(tflite_path, "rb") as f:
        data = f.read()
    out["latency_ms"] = {t: latency_ms(data, t) for t in threads}
    return out


def verification_text(v, tflite_path, mode, ops):
    lines = [f"verification of {tflite_path} ({mode}) against the Keras inference graph, {v['num_images']} images",
             f"  detection counts equal on {v['same_count']}/{v['num_images']} images; over detections found by both "
             f"in the same order: max box error {v['max_box_error']:.3g} px, max score error "
             f"{v['max_score_error']:.3g}, mean mask error {v['mean_mask_error']:.3g}, classes equal "
             f"{100 * v['class_agreement']:.1f}%"]
    for name in ("keras", "tflite"):
        if name in v:
            s = v[name]
            lines.append(f"  {name:<6} val ({v['val_images']} images): mask AP {s['mask_ap']:.4f}  AP50 "
                         f"{s['mask_ap50']:.4f}  box AP {s['box_ap']:.4f}")
    lines.append("  invoke " + ", ".join(f"{ms:.1f} ms ({t} thread{'s' if t > 1 else ''})"
                                          for t, ms in v["latency_ms"].items()))
    top = sorted(ops.items(), key=lambda kv: -kv[1])
    lines.append("  ops: " + ", ".join(f"{name} {count}" for name, count in top))
    return "\n".join(lines)
