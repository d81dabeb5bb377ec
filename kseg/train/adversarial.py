"""Adversarial training of any registered segmentor (Luc et al. 2016): a discriminator on (image, label map) pairs
and the hybrid loss, as a Keras custom ``train_step``. Selected with ``train.trainer: adversarial``.

Example:
    >>> import kseg
    >>> from kseg.losses import build_loss
    >>> from kseg.train.adversarial import AdversarialModel, discriminator
    >>> seg = kseg.create_model("unet", num_classes=2, input_shape=(64, 64, 3), base_filters=8, depth=2)
    >>> model = AdversarialModel(seg, discriminator(2, (64, 64, 3)), weight=0.1)
    >>> model.compile(optimizer="adam", loss=build_loss("ce", 2))
    >>> model.fit(dataset, epochs=1)                 # doctest: +SKIP
    >>> seg.save("segmentor.keras")                  # the deployable model: the segmentor alone  # doctest: +SKIP
"""

import keras
import tensorflow as tf

__all__ = ["AdversarialModel", "ENCODINGS", "discriminator"]

ENCODINGS = ("product", "basic")


def discriminator(num_classes, input_shape, encoding="product", filters=32, name="disc"):
    """The adversarial network: ``(image, label map) -> logit`` that the label map is the ground truth.

    Luc, Couprie, Chintala, Verbeek, "Semantic Segmentation using Adversarial Networks", NIPS Workshop on
    Adversarial Training 2016, arXiv 1611.08408. Input encodings (section 3.2 of the paper):

    - ``"product"``: the image is multiplied by each class's label map and the ``3 * C`` products are the input, so
      the network sees the pixels of every class separately;
    - ``"basic"``: the label map and the image each go through their own first convolution (the image through two,
      with fewer filters) and the features are concatenated.

    Then three stages of 3x3 conv + ReLU + 2x2 max-pool (``filters``, ``2 filters``, ``4 filters``), a 3x3 conv with
    ``8 filters`` and a 3x3 conv to one channel averaged over the image: one logit per image, like the paper's
    Pascal VOC ("large field of view") discriminator, for any input of at least 8x8 pixels. The network computes in
    float32 under a mixed-precision policy (it is small, and its loss then needs no scaling).

    Args:
        num_classes: channels of the label map.
        input_shape: ``(H, W, channels)`` of the image (raw pixels in [0, 255]).
        encoding: ``"product"`` or ``"basic"``.
        filters: width of the first stage.
        name: model name and layer prefix.

    Returns:
        A functional ``keras.Model`` with inputs ``[image, label_map]`` and a ``(B, 1)`` float32 logit output.

    Example:
        >>> d = discriminator(21, (64, 64, 3), encoding="basic", filters=16)
        >>> [tuple(t.shape) for t in d.inputs], tuple(d.output.shape)
        ([(None, 64, 64, 3), (None, 64, 64, 21)], (None, 1))
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if len(input_shape) != 3:
        raise ValueError(f"the discriminator takes (H, W, channels) images, got input_shape {input_shape}; "
                         "adversarial training of volumes is not supported")
    if int(filters) < 1:
        raise ValueError(f"filters must be >= 1, got {filters}")
    p, f, dtype = f"{name}_", int(filters), "float32"
    image = keras.Input(input_shape, name=f"{p}image")
    labels = keras.Input((*input_shape[:2], num_classes), name=f"{p}label_map")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, dtype=dtype, name=f"{p}preprocess")(image)

    def conv(t, width, suffix, size=3):
        return keras.layers.Conv2D(width, size, padding="same", activation="relu", dtype=dtype,
                                   name=f"{p}{suffix}")(t)

    if encoding == "product":
        channels = input_shape[-1]
        # (B, H, W, C, 1) x (B, H, W, 1, ch) -> C * ch maps: each class's pixels of every image channel
        products = keras.layers.Lambda(
            lambda t: tf.reshape(t[1][..., :, None] * t[0][..., None, :],
                                 tf.concat([tf.shape(t[0])[:-1], [num_classes * channels]], 0)),
            output_shape=(*input_shape[:2], num_classes * channels), dtype=dtype, name=f"{p}product")([x, labels])
        x = conv(products, f, "stage1_conv")
    else:
        image_branch = conv(conv(x, max(f // 4, 1), "image_conv1", 5), f, "image_conv2", 5)
        label_branch = conv(labels, f, "label_conv", 5)
        x = keras.layers.Concatenate(dtype=dtype, name=f"{p}concat")([image_branch, label_branch])
        x = conv(x, f, "stage1_conv")
    for stage, width in ((1, f), (2, 2 * f), (3, 4 * f)):
        if stage > 1:
            x = conv(x, width, f"stage{stage}_conv")
        x = keras.layers.MaxPooling2D(2, dtype=dtype, name=f"{p}stage{stage}_pool")(x)
    x = conv(x, 8 * f, "stage4_conv")
    x = keras.layers.Conv2D(1, 3, padding="same", dtype=dtype, name=f"{p}logit_conv")(x)
    logit = keras.layers.GlobalAveragePooling2D(dtype=dtype, name=f"{p}logit")(x)
    return keras.Model([image, labels], logit, name=name)


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _bce(target, logits):
    """Mean binary cross-entropy of logits against a constant target, divided by the replica count like kseg's
    losses (each replica's gradient is summed)."""
    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(logits), target),
                                                                   logits=logits))
    return loss / _replicas()


class AdversarialModel(keras.Model):
    """A segmentor trained against a discriminator with the hybrid loss of Luc et al. (2016, arXiv 1611.08408).

    Each ``train_step`` makes one update of each network, alternating as in the paper, from one forward pass of the
    segmentor ``s`` on the batch ``(x, y)``:

    1. segmentor: ``loss(y, s(x)) + weight * BCE(a(x, softmax(s(x))), 1)``, the compiled (multi-class) loss plus
       the paper's "flipped" adversarial term (eq. 3: maximise the discriminator's error rather than minimise its
       success, which gives stronger gradients early on); the discriminator is fixed;
    2. discriminator ``a``: ``BCE(a(x, onehot(y)), 1) + BCE(a(x, softmax(s(x))), 0)`` (eq. 2) with its own
       optimizer, on the predictions of step 1's forward pass (no gradient into the segmentor).

    Pixels with the ignore label are zero in both the one-hot ground truth and the prediction, so they tell the
    discriminator nothing. Calling the model calls the segmentor; what is deployed, saved and exported is
    ``model.segmentor`` alone. ``save_weights`` / ``load_weights`` hold both networks and both optimizers, which is
    what a resumed run restores. Layer lookups by name (``get_layer``) reach the layers of both networks.

    Args:
        segmentor: any kseg model (logits first output; auxiliary heads are trained by the compiled loss).
        discriminator: a model ``[image, label_map] -> (B, 1)`` logit, e.g. :func:`discriminator`.
        weight: the paper's lambda, weight of the adversarial term in the segmentor's loss.
        d_optimizer: the discriminator's optimizer (default Adam, learning rate 1e-4).
        ignore_index: label value that is not a class.

    Example:
        >>> model = AdversarialModel(seg, discriminator(2, (64, 64, 3)), weight=0.1)    # doctest: +SKIP
        >>> model.compile(optimizer="adam", loss=build_loss("ce", 2))                  # doctest: +SKIP
    """

    def __init__(self, segmentor, discriminator, weight=0.1, d_optimizer=None, ignore_index=255, **kwargs):
        super().__init__(name=kwargs.pop("name", f"{segmentor.name}_adversarial"), **kwargs)
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.segmentor = segmentor
        self.discriminator = discriminator
        self.weight = float(weight)
        self.ignore_index = ignore_index
        self.d_optimizer = d_optimizer if d_optimizer is not None else keras.optimizers.Adam(1e-4)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.adv_loss_tracker = keras.metrics.Mean(name="adv_loss")
        self.num_classes = int(discriminator.inputs[1].shape[-1])
        self.built = True

    def call(self, inputs, training=False):
        return self.segmentor(inputs, training=training)

    def get_layer(self, name=None, index=None):
        if name is not None:
            for net in (self.segmentor, self.discriminator):
                if any(layer.name == name for layer in net.layers):
                    return net.get_layer(name)
        return super().get_layer(name, index)

    def build_optimizers(self):
        """Creates both optimizers' variables (a backup can be loaded into them only then)."""
        self.optimizer.build(self.segmentor.trainable_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)

    def _label_maps(self, labels, logits):
        """One-hot ground truth and softmax prediction, both zero at ignored pixels."""
        labels = tf.cast(labels, tf.int32)
        if labels.shape.rank == logits.shape.rank:
            labels = tf.squeeze(labels, -1)
        valid = tf.cast(tf.not_equal(labels, self.ignore_index), tf.float32)[..., None]
        truth = tf.one_hot(tf.where(valid[..., 0] > 0, labels, 0), self.num_classes) * valid
        return truth, tf.nn.softmax(tf.cast(logits, tf.float32)) * valid

    def train_step(self, data):
        # One image tensor (the discriminator sees it too); numpy when run eagerly.
        x, y = tf.convert_to_tensor(data[0]), data[1]
        labels = y[0] if isinstance(y, (tuple, list)) else y
        seg_vars = self.segmentor.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = self.segmentor(x, training=True)
            logits = y_pred[0] if isinstance(y_pred, (tuple, list)) else y_pred
            seg_loss = self.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            truth, fake = self._label_maps(labels, logits)
            adv_loss = _bce(1.0, self.discriminator([x, fake], training=False))
            loss = seg_loss + self.weight * adv_loss
            scaled = self.optimizer.scale_loss(loss)
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, seg_vars), seg_vars))

        fake = tf.stop_gradient(fake)
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            d_loss = (_bce(1.0, self.discriminator([x, truth], training=True))
                      + _bce(0.0, self.discriminator([x, fake], training=True)))
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, d_vars), d_vars))

        batch, replicas = tf.shape(x)[0], _replicas()
        for tracker, value in ((self._loss_tracker, loss), (self.d_loss_tracker, d_loss),
                               (self.adv_loss_tracker, adv_loss)):
            tracker.update_state(value * replicas, sample_weight=batch)
        return self.compute_metrics(x, y, y_pred)
