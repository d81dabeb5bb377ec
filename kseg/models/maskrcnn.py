"""Mask R-CNN: He, Gkioxari, Dollar and Girshick, "Mask R-CNN", ICCV 2017, arXiv 1703.06870, with the FPN backbone
of Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017, arXiv 1612.03144, and the RPN of Ren et
al., "Faster R-CNN", NIPS 2015, arXiv 1506.01497.

The model is a ``keras.Model`` subclass (``MaskRCNN``) holding four functional sub-networks with fixed, prefixed
layer names: ``{name}_features`` (backbone through ``build_backbone`` + the FPN of ``kseg.models.fpn`` + P6),
``{name}_rpn_head`` (shared over P2..P6), ``{name}_box_head`` and ``{name}_mask_head``, and the non-learned steps as
serializable layers (``ProposalLayer``, ``ROIAlign``, ``DetectionLayer``, ``MaskSelect``) built on
``kseg.instance.ops``. Training runs in ``train_step`` (anchor matching, proposal sampling and the five losses of
``kseg.instance.losses``); calling the model runs inference and returns the detection contract of
docs/architecture.md. ``inference_model()`` is the same inference as a plain functional model with a static batch
of 1, which converts to TFLite with builtin ops only.

Keras 3 only: the network has no tf_keras twin (``keras_module`` is not an argument), so tensorflow-model-
optimization's QAT, pruning and clustering do not apply to it; it exports as float32, float16 or dynamic-range.
"""

import keras
import numpy as np
import tensorflow as tf

from kseg.instance import losses, ops
from kseg.models.backbones import build_backbone
from kseg.models.blocks import check_input_shape
from kseg.models.fpn import feature_pyramid
from kseg.models.registry import register_model

__all__ = ["DetectionLayer", "MaskRCNN", "MaskSelect", "ProposalLayer", "ROIAlign", "maskrcnn"]

BATCHNORM_MODES = ("train", "frozen")
LOSS_NAMES = ("rpn_class_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss")
BOX_ROI_SIZE = 7
MASK_ROI_SIZE = 14


def flatten_rpn(objectness_maps, delta_maps):
    """The RPN maps of every level, ``(B, h, w, A)`` and ``(B, h, w, 4 A)``, flattened in
    ``ops.generate_anchors`` order: ``(B, N)`` logits and ``(B, N, 4)`` deltas, float32."""
    objectness = [tf.reshape(tf.cast(o, tf.float32), [tf.shape(o)[0], -1]) for o in objectness_maps]
    deltas = [tf.reshape(tf.cast(d, tf.float32), [tf.shape(d)[0], -1, 4]) for d in delta_maps]
    return tf.concat(objectness, 1), tf.concat(deltas, 1)


@keras.saving.register_keras_serializable(package="kseg")
class ProposalLayer(keras.layers.Layer):
    """RPN proposals from the per-level RPN maps (``ops.generate_proposals``).

    Inputs: the five objectness maps then the five delta maps of P2..P6. Outputs: ``(B, post_nms_topk, 4)``
    proposals and their ``(B, post_nms_topk)`` 0/1 validity.
    """

    def __init__(self, image_size, anchor_sizes=ops.ANCHOR_SIZES, anchor_ratios=ops.ANCHOR_RATIOS,
                 pre_nms_topk=1000, post_nms_topk=1000, nms_threshold=0.7, **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(d) for d in image_size)
        self.anchor_sizes = tuple(float(s) for s in anchor_sizes)
        self.anchor_ratios = tuple(float(r) for r in anchor_ratios)
        self.pre_nms_topk, self.post_nms_topk = int(pre_nms_topk), int(post_nms_topk)
        self.nms_threshold = float(nms_threshold)
        self.anchors = ops.generate_anchors(self.image_size, self.anchor_sizes, self.anchor_ratios)
        self.level_sizes = [h * w * len(self.anchor_ratios) for h, w in ops.level_shapes(self.image_size)]

    def call(self, inputs):
        n = len(inputs) // 2
        objectness, deltas = flatten_rpn(inputs[:n], inputs[n:])
        return ops.generate_proposals(objectness, deltas, self.anchors, self.image_size, self.level_sizes,
                                      self.pre_nms_topk, self.post_nms_topk, self.nms_threshold)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "anchor_sizes": self.anchor_sizes,
                "anchor_ratios": self.anchor_ratios, "pre_nms_topk": self.pre_nms_topk,
                "post_nms_topk": self.post_nms_topk, "nms_threshold": self.nms_threshold}


@keras.saving.register_keras_serializable(package="kseg")
class ROIAlign(keras.layers.Layer):
    """``ops.roi_align`` as a layer. Inputs: ``[boxes (B, R, 4), P2, P3, P4, P5]``; output
    ``(B * R, output_size, output_size, C)``."""

    def __init__(self, output_size=7, sampling_ratio=2, canonical_size=224.0, **kwargs):
        super().__init__(**kwargs)
        self.output_size, self.sampling_ratio = int(output_size), int(sampling_ratio)
        self.canonical_size = float(canonical_size)

    def call(self, inputs):
        return ops.roi_align(list(inputs[1:]), inputs[0], self.output_size, self.sampling_ratio,
                             self.canonical_size)

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "sampling_ratio": self.sampling_ratio,
                "canonical_size": self.canonical_size}


@keras.saving.register_keras_serializable(package="kseg")
class DetectionLayer(keras.layers.Layer):
    """``ops.detect`` as a layer. Inputs: ``[rois (B, R, 4), roi_valid (B, R), class_logits (B * R, K),
    box_deltas (B * R, 4 K)]``; outputs boxes, scores, classes, num_detections."""

    def __init__(self, image_size, max_detections=100, score_threshold=0.05, nms_threshold=0.5, pre_nms_topk=1000,
                 **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(d) for d in image_size)
        self.max_detections, self.pre_nms_topk = int(max_detections), int(pre_nms_topk)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)

    def call(self, inputs):
        rois, valid, logits, deltas = inputs
        r = int(rois.shape[1])
        logits = tf.reshape(logits, [-1, r, int(logits.shape[-1])])
        deltas = tf.reshape(deltas, [-1, r, int(deltas.shape[-1])])
        return ops.detect(rois, valid, logits, deltas, self.image_size, self.max_detections,
                          self.score_threshold, self.nms_threshold, self.pre_nms_topk)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "max_detections": self.max_detections,
                "score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold,
                "pre_nms_topk": self.pre_nms_topk}


def select_class_masks(mask_logits, classes):
    """Each ROI's mask logits ``(B * D, S, S, K)`` for its class ``classes`` ``(B, D)``: ``(B * D, S, S)``
    (a one-hot product and sum: ONE_HOT, MUL, SUM in TFLite)."""
    num_classes = int(mask_logits.shape[-1])
    one_hot = tf.one_hot(tf.reshape(classes, [-1]), num_classes, dtype=tf.float32)
    return tf.reduce_sum(tf.cast(mask_logits, tf.float32) * one_hot[:, None, None, :], -1)


@keras.saving.register_keras_serializable(package="kseg")
class MaskSelect(keras.layers.Layer):
    """Mask probabilities of each detection's class. Inputs ``[mask_logits (B * D, S, S, K), classes (B, D)]``;
    output ``(B, D, S, S)`` sigmoid probabilities, zero for empty slots (class 0)."""

    def call(self, inputs):
        logits, classes = inputs
        size = int(logits.shape[1])
        probs = tf.sigmoid(select_class_masks(logits, classes))
        probs *= tf.cast(tf.reshape(classes, [-1]) > 0, tf.float32)[:, None, None]
        return tf.reshape(probs, [-1, int(classes.shape[1]), size, size])


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _fraction(name, value, low=0.0):
    if not low < float(value) <= 1.0:
        raise ValueError(f"{name} must be in ({low}, 1], got {value!r}")
    return float(value)


def _train_test(name, value):
    """A ``(training, inference)`` pair from an int or a pair."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an integer or a (training, inference) pair, got {value!r}")
    return tuple(_positive_int(name, v) for v in pair)


@keras.saving.register_keras_serializable(package="kseg")
class MaskRCNN(keras.Model):
    """Mask R-CNN with an FPN backbone; see ``maskrcnn`` for the arguments and the module docstring for the parts.

    Calling the model returns the detection contract: ``boxes`` ``(B, D, 4)`` ``[y1, x1, y2, x2]`` pixels,
    ``scores`` ``(B, D)``, ``classes`` int32 ``(B, D)`` (0 = empty slot), ``masks`` ``(B, D, 28, 28)`` mask
    probabilities of the detected class inside its box, ``num_detections`` int32 ``(B,)``. ``fit`` / ``evaluate``
    take batches ``{"image", "boxes", "classes", "masks"}`` (docs/architecture.md) and log ``loss`` and the five
    terms of ``LOSS_NAMES``.
    """

    def __init__(self, num_classes, input_shape=(512, 512, 3), backbone="resnet50", backbone_kwargs=None,
                 weights=None, fpn_filters=256, anchor_sizes=ops.ANCHOR_SIZES, anchor_ratios=ops.ANCHOR_RATIOS,
                 rpn_batch_per_image=256, rpn_positive_fraction=0.5, rpn_pre_nms_topk=(2000, 1000),
                 rpn_post_nms_topk=(2000, 1000), rpn_nms_threshold=0.7, rois_per_image=512,
                 roi_positive_fraction=0.25, roi_sampling_ratio=2, roi_canonical_size=224.0, box_head_units=1024,
                 mask_head_filters=256, max_detections=100, score_threshold=0.05, detection_nms_threshold=0.5,
                 backbone_batchnorm="train", name="maskrcnn", **kwargs):
        if backbone_batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"backbone_batchnorm must be one of {BATCHNORM_MODES}, got {backbone_batchnorm!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes counts the background (class 0) and must be >= 2, got {num_classes!r}")
        input_shape = tuple(input_shape)
        check_input_shape(input_shape, 64, "P6 of the feature pyramid has stride 64")
        anchor_sizes, anchor_ratios = tuple(anchor_sizes), tuple(anchor_ratios)
        if len(anchor_sizes) != len(ops.LEVELS) or min(anchor_sizes) <= 0:
            raise ValueError(f"anchor_sizes must be {len(ops.LEVELS)} positive sizes (pixels), one per level "
                             f"P2..P6, got {anchor_sizes!r}")
        if not anchor_ratios or min(anchor_ratios) <= 0:
            raise ValueError(f"anchor_ratios must be positive height/width ratios, got {anchor_ratios!r}")
        if not 0.0 < float(rpn_nms_threshold) <= 1.0 or not 0.0 < float(detection_nms_threshold) <= 1.0:
            raise ValueError("rpn_nms_threshold and detection_nms_threshold are IoUs in (0, 1], got "
                             f"{rpn_nms_threshold!r} and {detection_nms_threshold!r}")
        if not 0.0 <= float(score_threshold) < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold!r}")
        super().__init__(name=name, **kwargs)
        # compile(jit_compile="auto") would pick XLA: on CPU it takes minutes to compile this graph (NMS, gathers,
        # per-image loops) for no faster step
        self.supports_jit = False
        self.num_classes = int(num_classes)
        self.image_shape = input_shape
        self.backbone = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.fpn_filters = _positive_int("fpn_filters", fpn_filters)
        self.anchor_sizes, self.anchor_ratios = anchor_sizes, anchor_ratios
        self.rpn_batch_per_image = _positive_int("rpn_batch_per_image", rpn_batch_per_image)
        self.rpn_positive_fraction = _fraction("rpn_positive_fraction", rpn_positive_fraction)
        self.rpn_pre_nms_topk = _train_test("rpn_pre_nms_topk", rpn_pre_nms_topk)
        self.rpn_post_nms_topk = _train_test("rpn_post_nms_topk", rpn_post_nms_topk)
        self.rpn_nms_threshold = float(rpn_nms_threshold)
        self.rois_per_image = _positive_int("rois_per_image", rois_per_image)
        self.roi_positive_fraction = _fraction("roi_positive_fraction", roi_positive_fraction)
        self.roi_sampling_ratio = _positive_int("roi_sampling_ratio", roi_sampling_ratio)
        if not float(roi_canonical_size) > 0:
            raise ValueError(f"roi_canonical_size must be a positive box size in pixels, got {roi_canonical_size!r}")
        self.roi_canonical_size = float(roi_canonical_size)
        self.box_head_units = _positive_int("box_head_units", box_head_units)
        self.mask_head_filters = _positive_int("mask_head_filters", mask_head_filters)
        self.max_detections = _positive_int("max_detections", max_detections)
        self.score_threshold = float(score_threshold)
        self.detection_nms_threshold = float(detection_nms_threshold)
        self.backbone_batchnorm = backbone_batchnorm

        image_size = input_shape[:2]
        self.anchors = ops.generate_anchors(image_size, anchor_sizes, anchor_ratios)
        self.level_sizes = [h * w * len(anchor_ratios) for h, w in ops.level_shapes(image_size)]
        self.features = self._features_network(weights)
        self.rpn_head = self._rpn_network()
        self.box_head = self._box_network()
        self.mask_head = self._mask_network()
        # the non-learned steps compute in float32 under a mixed-precision policy (box coordinates, NMS, anchors)
        self.proposal_layer = ProposalLayer(image_size, anchor_sizes, anchor_ratios, self.rpn_pre_nms_topk[1],
                                            self.rpn_post_nms_topk[1], self.rpn_nms_threshold,
                                            dtype="float32", name=f"{name}_proposals")
        self.box_roi_align = ROIAlign(BOX_ROI_SIZE, self.roi_sampling_ratio, self.roi_canonical_size,
                                      dtype="float32", name=f"{name}_box_roi_align")
        self.mask_roi_align = ROIAlign(MASK_ROI_SIZE, self.roi_sampling_ratio, self.roi_canonical_size,
                                       dtype="float32", name=f"{name}_mask_roi_align")
        self.detection_layer = DetectionLayer(image_size, self.max_detections, self.score_threshold,
                                              self.detection_nms_threshold, dtype="float32",
                                              name=f"{name}_detections")
        self.mask_select = MaskSelect(dtype="float32", name=f"{name}_masks")
        self.trackers = [keras.metrics.Mean(name=n) for n in ("loss",) + LOSS_NAMES]
        self.built = True

    # -- sub-networks ------------------------------------------------------------------------------------------

    def _features_network(self, weights):
        """Image -> [P2, ..., P6]: the backbone, FPN's top-down pathway (``kseg.models.fpn.feature_pyramid``) and
        P6 as a stride-2 subsampling of P5 (FPN section 4.1)."""
        p = self.name
        image = keras.Input(self.image_shape, name=f"{p}_image")
        features = build_backbone(self.backbone, image, weights=weights, **self.backbone_kwargs)
        pyramid = feature_pyramid(keras, features, self.fpn_filters, f"{p}_fpn")
        p6 = keras.layers.MaxPooling2D(1, strides=2, name=f"{p}_fpn_p6")(pyramid["P5"])
        network = keras.Model(image, [pyramid[f"P{k}"] for k in (2, 3, 4, 5)] + [p6], name=f"{p}_features")
        if self.backbone_batchnorm == "frozen":
            for layer in network.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False  # Keras 3: a non-trainable BN always normalises with its moving stats
        return network

    def _rpn_network(self):
        """3x3 conv + ReLU, then 1x1 objectness (one logit per anchor) and 1x1 box deltas, shared by every level
        (FPN section 4.1); N(0, 0.01) initialisation as in Faster R-CNN."""
        p, init = self.name, keras.initializers.RandomNormal(stddev=0.01)
        anchors = len(self.anchor_ratios)
        x = inputs = keras.Input((None, None, self.fpn_filters), name=f"{p}_rpn_features")
        x = keras.layers.Conv2D(self.fpn_filters, 3, padding="same", activation="relu", kernel_initializer=init,
                                name=f"{p}_rpn_conv")(x)
        objectness = keras.layers.Conv2D(anchors, 1, kernel_initializer=init, dtype="float32",
                                         name=f"{p}_rpn_objectness")(x)
        deltas = keras.layers.Conv2D(4 * anchors, 1, kernel_initializer=init, dtype="float32",
                                     name=f"{p}_rpn_deltas")(x)
        return keras.Model(inputs, [objectness, deltas], name=f"{p}_rpn_head")

    def _box_network(self):
        """7x7 ROI features -> two FC layers with ReLU -> class logits and class-specific box deltas (the FPN
        paper's 2-fc head; ``box_head_units`` 1024 in the paper)."""
        p, k = self.name, self.num_classes
        x = inputs = keras.Input((BOX_ROI_SIZE, BOX_ROI_SIZE, self.fpn_filters), name=f"{p}_box_rois")
        x = keras.layers.Flatten(name=f"{p}_box_flatten")(x)
        for i in (1, 2):
            x = keras.layers.Dense(self.box_head_units, activation="relu", name=f"{p}_box_fc{i}")(x)
        logits = keras.layers.Dense(k, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                    dtype="float32", name=f"{p}_box_class_logits")(x)
        deltas = keras.layers.Dense(4 * k, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                                    dtype="float32", name=f"{p}_box_deltas")(x)
        return keras.Model(inputs, [logits, deltas], name=f"{p}_box_head")

    def _mask_network(self):
        """14x14 ROI features -> four 3x3 convs with ReLU -> 2x2 stride-2 transposed conv with ReLU -> 1x1 conv to
        one 28x28 mask logit map per class (Mask R-CNN figure 4, right)."""
        p = self.name
        x = inputs = keras.Input((MASK_ROI_SIZE, MASK_ROI_SIZE, self.fpn_filters), name=f"{p}_mask_rois")
        for i in range(1, 5):
            x = keras.layers.Conv2D(self.mask_head_filters, 3, padding="same", activation="relu",
                                    kernel_initializer="he_normal", name=f"{p}_mask_conv{i}")(x)
        x = keras.layers.Conv2DTranspose(self.mask_head_filters, 2, strides=2, activation="relu",
                                         kernel_initializer="he_normal", name=f"{p}_mask_upsample")(x)
        logits = keras.layers.Conv2D(self.num_classes, 1, dtype="float32", name=f"{p}_mask_logits")(x)
        return keras.Model(inputs, logits, name=f"{p}_mask_head")

    # -- inference ---------------------------------------------------------------------------------------------

    def _detect(self, images):
        """The inference graph on ``images`` (tensors or a Keras input): the detection contract dict."""
        pyramid = self.features(images)
        heads = [self.rpn_head(level) for level in pyramid]
        rois, valid = self.proposal_layer([o for o, _ in heads] + [d for _, d in heads])
        logits, deltas = self.box_head(self.box_roi_align([rois] + pyramid[:4]))
        boxes, scores, classes, num = self.detection_layer([rois, valid, logits, deltas])
        masks = self.mask_select([self.mask_head(self.mask_roi_align([boxes] + pyramid[:4])), classes])
        return {"boxes": boxes, "scores": scores, "classes": classes, "masks": masks, "num_detections": num}

    def call(self, images, training=False):
        return self._detect(images)

    def inference_model(self):
        """The inference graph as a plain functional model with a static batch of 1, sharing this model's
        layers: image ``(1, H, W, C)`` raw pixels -> the detection contract dict. Converts to TFLite with builtin
        ops only (``export.convert.to_tflite``).

        Example:
            >>> import kseg
            >>> model = kseg.create_model("maskrcnn", num_classes=3, input_shape=(64, 64, 3),
            ...                           backbone="mobilenetv2", backbone_kwargs={"alpha": 0.35},
            ...                           fpn_filters=16, box_head_units=32, mask_head_filters=16,
            ...                           anchor_sizes=(8, 16, 32, 64, 128), rpn_post_nms_topk=(64, 32),
            ...                           rois_per_image=16, max_detections=5)
            >>> sorted(model.inference_model().output)
            ['boxes', 'classes', 'masks', 'num_detections', 'scores']
        """
        image = keras.Input(batch_shape=(1, *self.image_shape), name=f"{self.name}_image")
        return keras.Model(image, self._detect(image), name=f"{self.name}_inference")

    # -- training ----------------------------------------------------------------------------------------------

    def compute_losses(self, data, training=False):
        """The five loss terms (``LOSS_NAMES``) on a batch ``{"image", "boxes", "classes", "masks"}``."""
        images = tf.cast(data["image"], tf.float32)
        gt_boxes = tf.cast(data["boxes"], tf.float32)
        gt_classes = tf.cast(data["classes"], tf.int32)
        gt_valid = gt_classes > 0
        pyramid = self.features(images, training=training)
        heads = [self.rpn_head(level, training=training) for level in pyramid]
        objectness, deltas = flatten_rpn([o for o, _ in heads], [d for _, d in heads])

        # RPN: 256 sampled anchors per image, half positive (Faster R-CNN section 3.1.3)
        labels, matched = ops.match_anchors(self.anchors, gt_boxes, gt_valid)
        idx, positive, sampled = ops.subsample(labels == 1, labels == 0, self.rpn_batch_per_image,
                                               self.rpn_positive_fraction)
        targets = ops.encode_boxes(ops.batched_gather(gt_boxes, ops.batched_gather(matched, idx)),
                                   tf.gather(self.anchors, idx), ops.RPN_WEIGHTS)
        terms = {"rpn_class_loss": losses.rpn_class_loss(positive, ops.batched_gather(objectness, idx), sampled),
                 "rpn_box_loss": losses.rpn_box_loss(targets, ops.batched_gather(deltas, idx), positive, sampled)}

        # heads on sampled proposals; no gradient flows into the proposals (approximate joint training)
        proposals, proposal_valid = ops.generate_proposals(
            tf.stop_gradient(objectness), tf.stop_gradient(deltas), self.anchors, self.image_shape[:2],
            self.level_sizes, self.rpn_pre_nms_topk[0], self.rpn_post_nms_topk[0], self.rpn_nms_threshold)
        s = ops.sample_rois(proposals, proposal_valid, gt_boxes, gt_classes, self.rois_per_image,
                            self.roi_positive_fraction)
        rois = s["rois"]
        num_rois = int(rois.shape[1])
        logits, box_deltas = self.box_head(self.box_roi_align([rois] + pyramid[:4]), training=training)
        logits = tf.reshape(logits, [-1, num_rois, self.num_classes])
        box_deltas = tf.reshape(box_deltas, [-1, num_rois, 4 * self.num_classes])
        box_targets = ops.encode_boxes(ops.batched_gather(gt_boxes, s["matched"]), rois, ops.HEAD_WEIGHTS)
        terms["class_loss"] = losses.class_loss(s["classes"], logits, s["valid"])
        terms["box_loss"] = losses.box_loss(box_targets, box_deltas, s["classes"], s["positive"], s["valid"])

        # masks on the foreground ROIs only, which sample_rois puts in the first slots
        fg = max(1, int(num_rois * self.roi_positive_fraction))
        fg_rois, fg_matched = rois[:, :fg], s["matched"][:, :fg]
        mask_logits = self.mask_head(self.mask_roi_align([fg_rois] + pyramid[:4]), training=training)
        mask_size = int(mask_logits.shape[1])
        mask_targets = ops.mask_targets(data["masks"], fg_matched, fg_rois, mask_size, self.roi_sampling_ratio)
        terms["mask_loss"] = losses.mask_loss(mask_targets, select_class_masks(mask_logits, s["classes"][:, :fg]),
                                              tf.reshape(s["positive"][:, :fg], [-1]))
        return terms

    @property
    def metrics(self):
        return list(self.trackers)

    def _log(self, terms, batch):
        loss = tf.add_n(list(terms.values()))
        for tracker, value in zip(self.trackers, [loss] + [terms[n] for n in LOSS_NAMES]):
            tracker.update_state(value, sample_weight=batch)
        return {t.name: t.result() for t in self.trackers}

    @staticmethod
    def _batch(data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def train_step(self, data):
        data = self._batch(data)
        variables = self.trainable_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms = self.compute_losses(data, training=True)
            # each replica's gradient is summed: divide like kseg's losses
            scaled = self.optimizer.scale_loss(tf.add_n(list(terms.values())) / replicas)
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return self._log(terms, tf.shape(data["image"])[0])

    def test_step(self, data):
        data = self._batch(data)
        return self._log(self.compute_losses(data, training=False), tf.shape(data["image"])[0])

    def get_config(self):
        return {"num_classes": self.num_classes, "input_shape": self.image_shape, "backbone": self.backbone,
                "backbone_kwargs": self.backbone_kwargs, "fpn_filters": self.fpn_filters,
                "anchor_sizes": self.anchor_sizes, "anchor_ratios": self.anchor_ratios,
                "rpn_batch_per_image": self.rpn_batch_per_image, "rpn_positive_fraction": self.rpn_positive_fraction,
                "rpn_pre_nms_topk": self.rpn_pre_nms_topk, "rpn_post_nms_topk": self.rpn_post_nms_topk,
                "rpn_nms_threshold": self.rpn_nms_threshold, "rois_per_image": self.rois_per_image,
                "roi_positive_fraction": self.roi_positive_fraction, "roi_sampling_ratio": self.roi_sampling_ratio,
                "roi_canonical_size": self.roi_canonical_size,
                "box_head_units": self.box_head_units, "mask_head_filters": self.mask_head_filters,
                "max_detections": self.max_detections, "score_threshold": self.score_threshold,
                "detection_nms_threshold": self.detection_nms_threshold,
                "backbone_batchnorm": self.backbone_batchnorm, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register_model(task="instance")
def maskrcnn(num_classes, input_shape=(512, 512, 3), backbone="resnet50", backbone_kwargs=None, weights=None,
             fpn_filters=256, max_detections=100, anchor_sizes=ops.ANCHOR_SIZES, anchor_ratios=ops.ANCHOR_RATIOS,
             rpn_batch_per_image=256, rpn_positive_fraction=0.5, rpn_pre_nms_topk=(2000, 1000),
             rpn_post_nms_topk=(2000, 1000), rpn_nms_threshold=0.7, rois_per_image=512, roi_positive_fraction=0.25,
             roi_sampling_ratio=2, roi_canonical_size=224.0, box_head_units=1024, mask_head_filters=256,
             score_threshold=0.05, detection_nms_threshold=0.5, backbone_batchnorm="train", name="maskrcnn"):
    """Mask R-CNN with a ResNet-FPN (or any kseg backbone) feature pyramid (He et al., ICCV 2017, arXiv 1703.06870).

    Parts, as in the papers: FPN P2..P6 (``fpn_filters`` channels; P6 subsamples P5); an RPN head shared over the
    levels with one anchor size per level and ``anchor_ratios`` (FPN); RPN training on ``rpn_batch_per_image``
    anchors (IoU >= 0.7 positive, < 0.3 negative, each box's best anchor positive); proposals: top
    ``rpn_pre_nms_topk`` per level, NMS at ``rpn_nms_threshold`` per level, top ``rpn_post_nms_topk`` per image
    (``(training, inference)`` pairs, Detectron's 2000/1000); ``rois_per_image`` training ROIs (25% foreground at
    IoU >= 0.5, gt boxes added); ROIAlign with ``roi_sampling_ratio``**2 samples per bin on the FPN level of each
    box; a 2-FC box head; a 4-conv mask head on 14x14 ROIs giving 28x28 masks per class; inference: softmax scores
    above ``score_threshold``, class-aware NMS at ``detection_nms_threshold``, the top ``max_detections``.

    Deviations: ROIAlign samples at half-pixel-aligned coordinates (Detectron2's ``aligned=True``); anchors crossing
    the image border are kept for training; anchor centres at cell centres; the backbone's BatchNormalization
    layers train normally (Detectron freezes them; kseg trains from scratch or fine-tunes on small images).
    Losses: see ``kseg.instance.losses``.

    Args:
        num_classes: classes including the background (class 0); COCO: 81.
        input_shape: static ``(H, W, C)``, raw pixels in [0, 255]; H and W divisible by 64 (P6's stride).
        backbone: a name from ``kseg.models.backbones.list_backbones()`` (ResNet50 in the paper).
        backbone_kwargs: extra backbone arguments, e.g. ``{"alpha": 0.35}`` for MobileNetV2.
        weights: backbone weights: ``None``, ``"imagenet"`` or a file path.
        fpn_filters: channels of the pyramid, the RPN conv and the ROI features (256 in the paper).
        max_detections: detection slots D per image (100 in the paper).
        anchor_sizes: anchor size in pixels for P2..P6 (32..512 in FPN for ~800-pixel images; scale them with
            the input, e.g. ``(8, 16, 32, 64, 128)`` for 128x128 images of small objects).
        roi_canonical_size: the box size that FPN eq. 1 pools from P4 (224, ImageNet's input size); boxes half
            as large come from P3, and so on, clamped to P2..P5. On small inputs every box may pool from P2.
        box_head_units: width of the box head's two FC layers (1024 in the paper).
        mask_head_filters: channels of the mask head's convs (256 in the paper).
        backbone_batchnorm: ``"train"`` (batch statistics in training) or ``"frozen"`` (the backbone's BN layers
            always use their moving statistics and their scale and offset do not train, as in Detectron).
        name: model name and layer-name prefix.
        Other arguments: as described above, with the papers' values as defaults.

    Returns:
        A ``MaskRCNN`` model (``keras.Model``): ``model(images)`` gives the detection contract dict, ``fit`` /
        ``evaluate`` train on ``{"image", "boxes", "classes", "masks"}`` batches, ``inference_model()`` is the
        exportable graph.

    Raises:
        ValueError: a bad argument (input size not divisible by 64, fewer than 2 classes, wrong number of anchor
            sizes, thresholds or fractions out of range).

    Example:
        >>> import kseg
        >>> model = kseg.create_model("maskrcnn", num_classes=81, input_shape=(512, 512, 3))
        >>> sorted(model(np.zeros((1, 512, 512, 3), np.float32)))     # doctest: +SKIP
        ['boxes', 'classes', 'masks', 'num_detections', 'scores']
    """
    return MaskRCNN(num_classes, input_shape=input_shape, backbone=backbone, backbone_kwargs=backbone_kwargs,
                    weights=weights, fpn_filters=fpn_filters, anchor_sizes=anchor_sizes, anchor_ratios=anchor_ratios,
                    rpn_batch_per_image=rpn_batch_per_image, rpn_positive_fraction=rpn_positive_fraction,
                    rpn_pre_nms_topk=rpn_pre_nms_topk, rpn_post_nms_topk=rpn_post_nms_topk,
                    rpn_nms_threshold=rpn_nms_threshold, rois_per_image=rois_per_image,
                    roi_positive_fraction=roi_positive_fraction, roi_sampling_ratio=roi_sampling_ratio,
                    roi_canonical_size=roi_canonical_size, box_head_units=box_head_units,
                    mask_head_filters=mask_head_filters,
                    max_detections=max_detections, score_threshold=score_threshold,
                    detection_nms_threshold=detection_nms_threshold, backbone_batchnorm=backbone_batchnorm,
                    name=name)
