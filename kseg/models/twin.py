"""Keras 2 (tf_keras) twins of kseg models, for tensorflow-model-optimization (pruning, clustering, QAT).

tfmot 0.8 works only on tf_keras models, so every builder can emit the same architecture on tf_keras from the same
definition (``keras_module=tf_keras``); trained Keras 3 weights move over by layer name and the outputs are checked.

Keras 3 and tf_keras can live in one process as long as tensorflow_model_optimization is not imported: importing
``tf_keras`` leaves ``TF_USE_LEGACY_KERAS`` unset and ``tf.keras`` stays Keras 3, whereas importing tfmot sets it
and turns ``tf.keras`` into tf_keras process-wide. So build the twin and transfer weights here, save the twin
(``.h5`` or SavedModel), and prune / quantize it in a separate process.

Example:
    >>> import kseg
    >>> from kseg.models.twin import build_twin, transfer_weights, max_output_difference
    >>> model = kseg.create_model("unet", num_classes=2, input_shape=(64, 64, 3), base_filters=8, depth=3)
    >>> twin = build_twin("unet", num_classes=2, input_shape=(64, 64, 3), base_filters=8, depth=3)
    >>> transfer_weights(model, twin)
    >>> max_output_difference(model, twin) < 1e-5
    True
"""

import numpy as np

from kseg.models.registry import create_model


def build_twin(name, **kwargs):
    """Build registered model ``name`` on tf_keras with the same builder arguments as the Keras 3 model."""
    import tf_keras

    return create_model(name, keras_module=tf_keras, **kwargs)


def transfer_weights(src_model, dst_model):
    """Copy every weight of ``src_model`` into ``dst_model`` layer by layer, matched by layer name.

    Within a layer the weights keep their order (the same in both frameworks: kernel, bias; gamma, beta, moving
    mean, moving variance). Works in either direction (Keras 3 -> tf_keras and back).

    Raises:
        ValueError: the models do not have the same weighted layers, or a layer's weight shapes differ
            (the message names the layers); nothing is copied then.
    """
    src = {layer.name: layer for layer in src_model.layers if layer.weights}
    dst = {layer.name: layer for layer in dst_model.layers if layer.weights}
    if set(src) != set(dst):
        only_src, only_dst = sorted(set(src) - set(dst)), sorted(set(dst) - set(src))
        raise ValueError(f"cannot transfer weights from {src_model.name!r} to {dst_model.name!r}: layers only in the "
                         f"source {only_src[:5]}, only in the destination {only_dst[:5]}; build both with the same "
                         "builder arguments")
    pairs = []
    for name, layer in src.items():
        values = layer.get_weights()
        want = [tuple(w.shape) for w in dst[name].get_weights()]
        if [v.shape for v in values] != want:
            raise ValueError(f"layer {name!r}: source weight shapes {[v.shape for v in values]} != destination "
                             f"{want}; build both with the same builder arguments")
        pairs.append((dst[name], values))
    for layer, values in pairs:
        layer.set_weights(values)


def max_output_difference(model_a, model_b, inputs=None, seed=0):
    """Largest absolute difference of the two models' inference outputs on ``inputs`` (default: one random
    image of raw pixels in [0, 255] shaped like the model input)."""
    if inputs is None:
        shape = [1] + [int(d) for d in model_a.inputs[0].shape[1:]]
        inputs = np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
    a = np.asarray(model_a(inputs, training=False))
    b = np.asarray(model_b(inputs, training=False))
    return float(np.max(np.abs(a - b)))
