"""Segment camera frames with a ``.tflite`` model: pre-process, invoke, argmax (or paste instance masks), map back
to the frame.

Never imports TensorFlow. The model follows docs/architecture.md: raw RGB pixels in (uint8 for int8 models, with
scale 1 and zero point 0; float32 [0, 255] otherwise), logits ``(1, h, w, C)`` out; an instance model (metadata
``output_kind: instance``, Mask R-CNN) returns the detection contract instead (``InstanceSegmenter``, docs/maskrcnn.md).
``open_model`` picks the right class from the metadata.

Example:
    >>> seg = Segmenter("model.tflite", num_threads=2)
    >>> result = seg.segment(frame_bgr)          # doctest: +SKIP
    >>> result.mask.shape == frame_bgr.shape[:2]  # doctest: +SKIP
    True
"""

import copy
import dataclasses
import json
import mmap
import os
import struct
import time

import cv2
import numpy as np

from edge.interpreter import edgetpu_delegate, load_interpreter
from kseg import viz
from kseg.errors import ModelFileError

RESIZE_MODES = ("stretch", "letterbox")
NORMALIZATIONS = ("raw", "unit")
OUTPUT_KINDS = ("logits", "probabilities")
# how a frame shrinks to the model input: "area" is what kseg's data pipeline does (kseg.data.io.resize_image),
# "linear" what MediaPipe's image-to-tensor converter does (cv::INTER_LINEAR), 8x faster at 640x480 -> 256x256
INTERPOLATIONS = ("area", "linear")


@dataclasses.dataclass
class Result:
    """One segmented frame.

    Attributes:
        mask: ``(H, W)`` class ids at the frame's size (uint8, or int32 past 256 classes); from an instance model
            the class of the best-scoring instance on each pixel (0 elsewhere).
        timings: milliseconds per stage: ``pre``, ``invoke``, ``post``.
        instances: from an instance model, the detections at the frame's size: ``boxes`` float32 ``(N, 4)``
            ``[y1, x1, y2, x2]`` pixels, ``scores`` float32 ``(N,)``, ``classes`` int32 ``(N,)``, ``masks`` bool
            ``(N, H, W)``; ``None`` from a semantic model.
    """

    mask: np.ndarray
    timings: dict
    instances: dict = None


def read_metadata(model_path):
    """The model's metadata: the JSON the exporter embeds in the ``.tflite`` flatbuffer (metadata entry ``"kseg"``),
    else the sidecar ``MODEL.tflite.json`` of older exports, else ``{}``.

    Keys (all optional): ``labels`` (class names), ``palette`` (``[[r, g, b], ...]``), ``input_size`` (``[h, w]``),
    ``normalization`` (``"raw"``: pixels in [0, 255], the kseg contract; ``"unit"``: [0, 1]; or
    ``{"mean": [..], "std": [..]}`` applied to [0, 255] pixels), ``interpolation`` (how frames are shrunk to the
    input: ``"area"``, as kseg trains, or ``"linear"``), ``output_kind`` (``"logits"`` or
    ``"probabilities"``; with one output channel it sets the foreground threshold, 0 or 0.5; ``"instance"``: a
    Mask R-CNN with the detection outputs, ``InstanceSegmenter``), ``num_classes`` (instance models, background
    included) and ``mode`` (the export mode, e.g. ``"int8"``).
    """
    meta = _embedded_metadata(model_path)
    source = f"{model_path} (embedded metadata)"
    if meta is None:
        path = f"{model_path}.json"
        if not os.path.isfile(path):
            return {}
        try:
            with open(path, encoding="utf-8") as f:
                meta = f.read()
        except OSError as e:
            raise ModelFileError(f"{path}: unreadable model metadata ({e.strerror}); fix or delete it") from None
        source = path
    try:
        meta = json.loads(meta)
    except ValueError as e:
        raise ModelFileError(f"{source}: unreadable model metadata ({e}); fix it or re-export the model") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{source}: model metadata must be a JSON object")
    return meta


METADATA_NAME = b"kseg"


def _embedded_metadata(model_path):
    """The bytes of the flatbuffer's metadata entry ``"kseg"``, or ``None``.

    Parsed with ``struct`` from the TFLite schema (Model: field 4 ``buffers``, field 6 ``metadata``; Metadata:
    ``name``, ``buffer``; Buffer: ``data``, or ``offset`` / ``size`` past the flatbuffer in files over 2 GB), so it
    needs neither TensorFlow nor the ``flatbuffers`` package, which tflite-runtime installs lack.
    """
    try:
        # mapped, not read: only the pages parsed become resident, and no model-sized buffer is freed (which would
        # raise glibc's mmap threshold, so that later frame buffers stay on the heap: +5 MB peak RSS measured)
        with open(model_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _metadata_payload(model_path, data)
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return None  # the interpreter reports the missing, unreadable or empty file


def _metadata_payload(model_path, data):
    """``_embedded_metadata`` of the flatbuffer bytes ``data``."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        return None
    try:
        root = _u32(data, 0)
        metadata, buffers = _field(data, root, 6), _field(data, root, 4)
        if metadata is None or buffers is None:
            return None
        for entry in _vector_tables(data, metadata):
            name = _field(data, entry, 0)
            if name is None or _string(data, name) != METADATA_NAME:
                continue
            index = _field(data, entry, 1)
            buffer = _vector_tables(data, buffers)[_u32(data, index) if index is not None else 0]
            payload = _field(data, buffer, 0)
            if payload is not None:
                start = payload + _u32(data, payload)
                return data[start + 4:start + 4 + _u32(data, start)]
            offset, size = _field(data, buffer, 1), _field(data, buffer, 2)
            if offset is not None and size is not None:
                offset, size = struct.unpack_from("<Q", data, offset)[0], struct.unpack_from("<Q", data, size)[0]
                return data[offset:offset + size]
            return None
    except (struct.error, IndexError):
        raise ModelFileError(f"{model_path}: corrupt TFLite flatbuffer (metadata list unreadable); "
                             "re-export the model") from None
    return None


def _u32(data, offset):
    return struct.unpack_from("<I", data, offset)[0]


def _field(data, table, index):
    """Absolute offset of field ``index`` of the flatbuffer table at ``table``, or ``None`` when absent."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    slot = 4 + 2 * index
    if slot >= struct.unpack_from("<H", data, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", data, vtable + slot)[0]
    return table + offset if offset else None


def _vector_tables(data, field):
    start = field + _u32(data, field)
    return [start + 4 + 4 * i + _u32(data, start + 4 + 4 * i) for i in range(_u32(data, start))]


def _string(data, field):
    start = field + _u32(data, field)
    return data[start + 4:start + 4 + _u32(data, start)]


class _FrameModel:
    """What every kseg TFLite model shares: the interpreter, one ``(1, h, w, 3)`` image input, the input
    normalisation and the frame -> input resize (``Segmenter`` and ``InstanceSegmenter`` add their outputs).

    Subclasses provide ``invoke(x) -> raw outputs``, ``finish(raw, frame_size, box) -> (mask, instances)`` and
    ``draw(frame, result, alpha) -> view``.
    """

    def __init__(self, model_path, meta, num_threads, edgetpu, resize, normalization, interpolation):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        interpolation = interpolation if interpolation is not None else meta.get("interpolation", "area")
        if interpolation not in INTERPOLATIONS:
            raise ModelFileError(f"{model_path}: interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self._shrink = cv2.INTER_AREA if interpolation == "area" else cv2.INTER_LINEAR
        delegate = edgetpu_delegate() if edgetpu else None
        # on the Coral only when its delegate loaded: a fallback to the CPU runs like any CPU model (replicas too)
        self.model_path, self.num_threads, self.edgetpu = model_path, num_threads, delegate is not None
        self.interpreter = load_interpreter(model_path, num_threads=num_threads, delegate=delegate)
        self.input_details = self.interpreter.get_input_details()[0]
        in_shape = self.input_details["shape"]
        if len(in_shape) != 4 or in_shape[0] != 1 or in_shape[3] != 3:
            raise ModelFileError(f"{model_path}: expected a (1, h, w, 3) image input, got {list(in_shape)}")
        self.input_size = (int(in_shape[1]), int(in_shape[2]))
        if "input_size" in meta and tuple(meta["input_size"]) != self.input_size:
            raise ModelFileError(f"the metadata of {model_path} says input_size {meta['input_size']} but the model "
                                 f"takes {list(self.input_size)}; re-export the model")
        self.resize = resize
        self._offset, self._scale = _normalization(
            normalization if normalization is not None else meta.get("normalization", "raw"), model_path)

    def replica(self):
        """A copy with its own interpreter, for a second inference thread (an interpreter runs one invoke at a time;
        everything else is shared). A Coral runs one model instance, so an EdgeTPU model has no replicas."""
        if self.edgetpu:
            raise ValueError("one EdgeTPU runs one interpreter at a time: use a single worker with --edgetpu")
        twin = copy.copy(self)
        twin.interpreter = load_interpreter(self.model_path, num_threads=self.num_threads)
        return twin

    def segment(self, frame, rgb=False):
        """Segment one frame.

        Args:
            frame: ``(H, W, 3)`` uint8 image, BGR as OpenCV captures it (``rgb=True`` for RGB images).

        Returns:
            A ``Result`` whose mask has the frame's ``(H, W)`` (and, from an instance model, the instances).
        """
        t0 = time.perf_counter()
        x, box = self.preprocess(frame, rgb=rgb)
        t1 = time.perf_counter()
        raw = self.invoke(x)
        t2 = time.perf_counter()
        mask, instances = self.finish(raw, frame.shape[:2], box)
        t3 = time.perf_counter()
        return Result(mask, {"pre": 1e3 * (t1 - t0), "invoke": 1e3 * (t2 - t1), "post": 1e3 * (t3 - t2)},
                      instances)

    def preprocess(self, frame, rgb=False):
        """Frame -> model input ``(1, h, w, 3)`` in the input dtype, and the ``(top, left, h, w)`` box the image
        occupies inside it (the whole input unless letterboxed)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
        h, w = self.input_size
        fh, fw = frame.shape[:2]
        if self.resize == "letterbox":
            s = min(h / fh, w / fw)
            nh, nw = max(1, round(fh * s)), max(1, round(fw * s))
        else:
            nh, nw = h, w
        top, left = (h - nh) // 2, (w - nw) // 2
        image = frame if (nh, nw) == (fh, fw) else cv2.resize(
            frame, (nw, nh), interpolation=self._shrink if nh < fh else cv2.INTER_LINEAR)
        if not rgb:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # after the resize: fewer pixels to swap
        if (nh, nw) != (h, w):
            image = cv2.copyMakeBorder(image, top, h - nh - top, left, w - nw - left, cv2.BORDER_CONSTANT, value=0)
        return self._to_input(image)[None], (top, left, nh, nw)

    def _to_input(self, image):
        dtype = self.input_details["dtype"]
        scale, zero = self.input_details["quantization"]
        if self._offset is None and abs(scale - 1.0) < 1e-3:
            if dtype == np.uint8 and zero == 0:  # the kseg int8 contract: camera bytes go straight in
                return image
            if dtype == np.int8 and zero == -128:  # `--io int8`: byte - 128, which flipping the top bit is
                return (image ^ np.uint8(0x80)).view(np.int8)
        x = image.astype(np.float32)
        if self._offset is not None:  # in place: the same float32 arithmetic, without two input-sized temporaries
            x -= self._offset
            x /= self._scale
        if dtype == np.float32:
            return x
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


class Segmenter(_FrameModel):
    """A TFLite segmentation model wrapped for BGR camera frames.

    Args:
        model_path: the ``.tflite`` file (its metadata, embedded or a sidecar ``.json``, supplies labels, palette
            and the input normalisation; arguments given here override it).
        num_threads: interpreter threads; ``None`` lets LiteRT decide.
        edgetpu: use the Coral delegate when ``libedgetpu.so.1`` loads (falls back to the CPU).
        resize: ``"stretch"`` the frame to the model input, or ``"letterbox"`` it (keep the aspect ratio, pad with
            black; the padding is cut off the mask again).
        labels: class names (a list, or a text file with one name a line).
        smoothing: EMA weight of the previous frames' scores in [0, 1); 0 turns temporal smoothing off. Smoothing the
            raw quantized scores gives the same argmax as smoothing dequantized ones (the map is affine).
        normalization: how pixels in [0, 255] become the model's input (see ``read_metadata``); overrides the
            metadata, for models exported elsewhere (a MediaPipe model takes ``"unit"``).
        interpolation: ``"area"`` or ``"linear"``, how frames are shrunk to the input (overrides the metadata;
            default ``"area"``, as kseg's data pipeline; a MediaPipe model was trained on ``"linear"``).
        output_kind: ``"logits"`` or ``"probabilities"``; overrides the metadata.
    """

    def __init__(self, model_path, num_threads=None, edgetpu=False, resize="stretch", labels=None, smoothing=0.0,
                 normalization=None, output_kind=None, interpolation=None):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        model_path = os.fspath(model_path)
        meta = read_metadata(model_path)
        super().__init__(model_path, meta, num_threads, edgetpu, resize, normalization, interpolation)
        self.output_details = self.interpreter.get_output_details()[0]
        out_shape = self.output_details["shape"]
        if len(out_shape) != 4:
            raise ModelFileError(f"{model_path}: expected a (1, h, w, C) output, got {list(out_shape)} "
                                 "(an instance model needs output_kind 'instance' in its metadata)")
        self.num_classes = int(out_shape[3])
        self.smoothing = smoothing
        self.labels = _labels(labels if labels is not None else meta.get("labels"), self.num_classes)
        self.palette = np.asarray(meta["palette"], np.uint8) if "palette" in meta else viz.palette(len(self.labels))
        output_kind = output_kind if output_kind is not None else meta.get("output_kind", "logits")
        if output_kind not in OUTPUT_KINDS:
            raise ModelFileError(f"{model_path}: output_kind must be one of {OUTPUT_KINDS}, got {output_kind!r}")
        self._threshold = self._raw_threshold(0.5 if output_kind == "probabilities" else 0.0)
        self._ema = None

    def invoke(self, x):
        """Run the model on a pre-processed input; returns the raw output ``(h, w, C)`` (quantized if int8)."""
        self.interpreter.set_tensor(self.input_details["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_details["index"])[0]

    def postprocess(self, scores, frame_size, box=None):
        """Raw scores ``(h, w, C)`` -> class ids at ``frame_size`` ``(H, W)``, cutting away letterbox padding.

        No dequantization: a positive scale keeps the order of the scores, so argmax is the same.
        """
        if self.smoothing:
            scores = scores.astype(np.float32)
            if self._ema is None or self._ema.shape != scores.shape:
                self._ema = scores
            else:
                self._ema = self.smoothing * self._ema + (1.0 - self.smoothing) * scores
            scores = self._ema
        if self.num_classes == 1:
            ids = (scores[..., 0] > self._threshold).astype(np.uint8)
        else:
            ids = class_ids(scores)
        if box is not None:
            top, left, nh, nw = box
            ids = ids[top:top + nh, left:left + nw]
        fh, fw = frame_size
        if ids.shape != (fh, fw):
            if ids.dtype != np.uint8:  # cv2.resize rejects int32; float32 holds these ids exactly
                return cv2.resize(ids.astype(np.float32), (fw, fh), interpolation=cv2.INTER_NEAREST).astype(ids.dtype)
            ids = cv2.resize(ids, (fw, fh), interpolation=cv2.INTER_NEAREST)
        return ids

    def finish(self, scores, frame_size, box):
        """``postprocess``, as ``(mask, None)``: the raw-output -> result step of ``segment``."""
        return self.postprocess(scores, frame_size, box), None

    def draw(self, frame, result, alpha=0.5):
        """The class colours of ``result`` blended over the BGR ``frame``, with class boundaries."""
        # a model's mask has no ignored pixels: id 255 is the 256th class, and the check would cost a pass per frame
        return viz.overlay(frame, result.mask, alpha, self.palette, ignore_index=None)

    def reset(self):
        """Forget the smoothing state (call on a scene cut or a new video)."""
        self._ema = None

    def _raw_threshold(self, value):
        scale, zero = self.output_details["quantization"]
        return value / scale + zero if self.output_details["dtype"] != np.float32 and scale else value


DETECTION_OUTPUTS = ("boxes", "scores", "classes", "masks", "num_detections")


class InstanceSegmenter(_FrameModel):
    """A TFLite instance segmentation model (Mask R-CNN exported by ``kseg export``) wrapped for BGR camera frames.

    The model holds the network and its post-processing up to non-maximum suppression; it returns the detection
    contract (docs/maskrcnn.md) as named signature outputs ``boxes`` ``(1, D, 4)`` ``[y1, x1, y2, x2]`` input
    pixels, ``scores`` ``(1, D)``, ``classes`` ``(1, D)`` (0: empty slot), ``masks`` ``(1, D, m, m)`` probabilities
    inside each box and ``num_detections`` ``(1,)``. Here the boxes are mapped back to the frame (undoing the
    stretch or the letterbox) and each ``m x m`` mask is pasted into its box at the frame's resolution
    (``kseg.instance.masks.paste_masks``, bilinear, threshold 0.5 as in He et al., "Mask R-CNN", ICCV 2017,
    arXiv 1703.06870).

    Args:
        model_path: the ``.tflite`` file; its metadata supplies class names and the input normalisation.
        num_threads, edgetpu, resize, normalization, interpolation: as for ``Segmenter``.
        labels: class names, background first (a list, or a text file with one name a line).
        score_threshold: detections scoring below it are dropped.
        mask_threshold: a pixel belongs to an instance where its pasted probability reaches this.

    Example:
        >>> seg = InstanceSegmenter("maskrcnn_float32.tflite")     # doctest: +SKIP
        >>> result = seg.segment(frame_bgr)                          # doctest: +SKIP
        >>> result.instances["masks"].shape[1:] == frame_bgr.shape[:2]   # doctest: +SKIP
        True
    """

    def __init__(self, model_path, num_threads=None, edgetpu=False, resize="stretch", labels=None,
                 normalization=None, score_threshold=0.5, mask_threshold=0.5, interpolation=None):
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1] and mask_threshold in (0, 1), got {score_threshold} "
                             f"and {mask_threshold}")
        model_path = os.fspath(model_path)
        meta = read_metadata(model_path)
        super().__init__(model_path, meta, num_threads, edgetpu, resize, normalization, interpolation)
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise ModelFileError(f"{model_path}: an instance model needs its signature (outputs named "
                                 f"{', '.join(DETECTION_OUTPUTS)}); re-export it with `kseg export`")
        outputs = self.interpreter.get_signature_runner(next(iter(signatures))).get_output_details()
        missing = [name for name in DETECTION_OUTPUTS if name not in outputs]
        if missing:
            raise ModelFileError(f"{model_path}: the model's outputs {sorted(outputs)} lack {', '.join(missing)} of "
                                 "the detection contract; export a Mask R-CNN with `kseg export`")
        self.output_details = {name: outputs[name] for name in DETECTION_OUTPUTS}
        self.num_classes = int(meta["num_classes"]) if "num_classes" in meta else None
        names = labels if labels is not None else meta.get("labels")
        # without the class count (a model exported elsewhere) labels are taken as given, else class ids are shown
        self.labels = _labels(names, self.num_classes) if names is not None or self.num_classes else None
        self.palette = (np.asarray(meta["palette"], np.uint8) if "palette" in meta
                        else viz.palette(len(self.labels) if self.labels else 256))
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold

    def invoke(self, x):
        """Run the model on a pre-processed input; returns the detection contract of the one image, dequantized."""
        self.interpreter.set_tensor(self.input_details["index"], x)
        self.interpreter.invoke()
        return {name: _dequantize(self.interpreter.get_tensor(d["index"])[0], d)
                for name, d in self.output_details.items()}

    def postprocess(self, det, frame_size, box=None):
        """The detection contract of one image (input pixels) -> instances at ``frame_size`` (see ``Result``)."""
        from kseg.instance.masks import paste_masks

        count = int(np.asarray(det["num_detections"]).reshape(-1)[0])
        scores = np.asarray(det["scores"], np.float32)[:count]
        classes = np.asarray(det["classes"]).astype(np.int32)[:count]
        keep = (classes > 0) & (scores >= self.score_threshold)
        boxes = np.asarray(det["boxes"], np.float32)[:count][keep]
        top, left, nh, nw = box if box is not None else (0, 0, *self.input_size)
        fh, fw = frame_size
        scale = np.array([fh / nh, fw / nw, fh / nh, fw / nw], np.float32)
        boxes = (boxes - np.array([top, left, top, left], np.float32)) * scale
        boxes = np.clip(boxes, 0, np.array([fh, fw, fh, fw], np.float32))
        masks = paste_masks(np.asarray(det["masks"], np.float32)[:count][keep], boxes, frame_size,
                            self.mask_threshold)
        return {"boxes": boxes, "scores": scores[keep], "classes": classes[keep], "masks": masks}

    def finish(self, det, frame_size, box):
        """``postprocess`` -> ``(mask, instances)``: the raw-output -> result step of ``segment``."""
        instances = self.postprocess(det, frame_size, box)
        ids = np.zeros(frame_size, np.uint8 if (self.num_classes or 0) <= 256 else np.int32)
        for i in np.argsort(instances["scores"], kind="stable"):  # the best score ends on top
            ids[instances["masks"][i]] = instances["classes"][i]
        return ids, instances

    def draw(self, frame, result, alpha=0.5):
        """Each instance of ``result`` drawn on the BGR ``frame``: mask colour, contour, box, class and score."""
        return viz.draw_instances(frame, result.instances, self.labels, alpha=alpha, order="bgr")

    def reset(self):
        """Nothing carries over between frames of an instance model."""


def class_ids(scores):
    """``np.argmax(scores, axis=-1)``: uint8 for up to 256 classes, else int32; the first of equal scores wins.

    8-bit scores (an int8 model's raw output) go through one plane per class and OpenCV's vector compare, since
    numpy reduces each pixel's short row of classes on its own: for 21 classes at 256x256 on this project's host
    0.95 against 1.5 ms (a model's scores; 0.8 against 2.2 on random ones), for two 0.05 against 0.3-0.5 ms
    (docs/edge.md). OpenCV's split of float planes is slower than numpy, so float scores stay with numpy.
    """
    num_classes = scores.shape[-1]
    if scores.dtype not in (np.int8, np.uint8) or num_classes > 256:
        return np.argmax(scores, axis=-1).astype(np.uint8 if num_classes <= 256 else np.int32)
    planes = cv2.split(scores)
    best, ids, fill = planes[0].copy(), np.zeros(scores.shape[:2], np.uint8), np.empty(scores.shape[:2], np.uint8)
    for c in range(1, num_classes):
        better = cv2.compare(planes[c], best, cv2.CMP_GT)
        cv2.max(best, planes[c], dst=best)
        fill.fill(c)
        cv2.copyTo(fill, better, ids)
    return ids


def _dequantize(value, details):
    scale, zero = details["quantization"]
    if details["dtype"] == np.float32 or not scale:  # float, or a plain integer output (classes, counts)
        return value
    return (value.astype(np.float32) - zero) * scale


def open_model(model_path, num_threads=None, edgetpu=False, resize="stretch", labels=None, normalization=None,
               output_kind=None, smoothing=0.0, score_threshold=0.5, interpolation=None):
    """The runtime for a ``.tflite`` model: an ``InstanceSegmenter`` when its metadata (or ``output_kind``) says
    ``"instance"``, else a ``Segmenter``. ``smoothing`` is for semantic models, ``score_threshold`` for instance
    models; the other arguments are those of both."""
    kind = output_kind if output_kind is not None else read_metadata(os.fspath(model_path)).get("output_kind")
    common = {"num_threads": num_threads, "edgetpu": edgetpu, "resize": resize, "labels": labels,
              "normalization": normalization, "interpolation": interpolation}
    if kind == "instance":
        if smoothing:
            raise ValueError("smoothing averages per-pixel scores over frames; an instance model has none (drop it)")
        return InstanceSegmenter(model_path, score_threshold=score_threshold, **common)
    return Segmenter(model_path, smoothing=smoothing, output_kind=output_kind, **common)


def _labels(labels, num_classes):
    """Class names from a list or a file, checked against ``num_classes`` (``None``: any count)."""
    need = max(num_classes, 2) if num_classes is not None else None  # a one-channel output: background + foreground
    if labels is None:
        return [str(i) for i in range(need)]
    if isinstance(labels, (str, os.PathLike)):
        try:
            with open(labels, encoding="utf-8") as f:
                labels = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise ModelFileError(f"cannot read labels file {labels}: {e.strerror}") from None
    labels = [str(n) for n in labels]
    if need is not None and len(labels) != need:
        raise ModelFileError(f"{len(labels)} labels given but the model has {need} classes")
    return labels


def _normalization(spec, model_path):
    """``(offset, scale)`` arrays for ``(pixels - offset) / scale``, or ``(None, None)`` for raw pixels."""
    if spec == "raw":
        return None, None
    if spec == "unit":
        return np.float32(0.0), np.float32(255.0)
    if isinstance(spec, dict) and {"mean", "std"} <= spec.keys():
        return np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    raise ModelFileError(f"{model_path}: normalization must be {NORMALIZATIONS} or {{'mean', 'std'}}, "
                         f"got {spec!r}")
