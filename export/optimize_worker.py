"""The tensorflow-model-optimization half of ``export.optimize``, run as ``python -m export.optimize_worker JOB``.

Importing tfmot sets ``TF_USE_LEGACY_KERAS`` and turns ``tf.keras`` into tf_keras for the whole process (DESIGN.md
section 2), so this module runs only in its own process, on the tf_keras twin of a kseg model: prune (magnitude,
polynomial decay, or 2:4), cluster, quantization-aware training, each with fine-tuning on the user's data; it strips
the wrappers and writes the weights (and, after QAT, the int8 TFLite file) back for the parent.

Job (JSON): ``model``, ``builder_kwargs``, ``weights`` (tf_keras ``.h5``), ``data`` (``.npz`` of ``x`` uint8
images, ``y`` uint8 labels), ``calibration`` (``.npy``), ``prune`` (float or ``"2:4"``), ``cluster`` (int),
``qat`` (bool), ``steps``, ``batch_size``, ``lr``, ``io_dtype``, ``out`` (folder).

QuantizeConfigs for layers outside tfmot's default 8-bit registry that the kseg zoo uses, found by annotating every
registered model's twin (tests/test_export_optimize.py): ``Rescaling`` (every model's ``*_preprocess``),
``Subtract`` (SegNet), ``Resizing`` (PSPNet), ``Reshape``-based nearest upsampling and ``Conv3D`` /
``Conv3DTranspose`` / ``PReLU`` / ``BatchNormalization`` after a 3-D conv (V-Net). Layers that only move or
interpolate values (``Reshape``, ``Resizing``) keep their input's quantization; the others quantize their output (and
kernels, 8-bit symmetric per tensor).
"""

import json
import os
import sys

import numpy as np
import tensorflow_model_optimization as tfmot  # first: flips tf.keras to tf_keras in this process only

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from kseg.models.registry import inference_model  # noqa: E402
from kseg.models.twin import build_twin  # noqa: E402

quant = tfmot.quantization.keras
_quantizers = quant.quantizers


class OutputQuantizeConfig(quant.QuantizeConfig):
    """Quantize a weightless layer's output (Rescaling, Subtract): the int8 kernel needs its own output range."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [_quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


class PassThroughQuantizeConfig(OutputQuantizeConfig):
    """No new range: layers that move or interpolate values (Reshape, Resizing) keep their input's."""

    def get_output_quantizers(self, layer):
        return []


class WeightsQuantizeConfig(OutputQuantizeConfig):
    """Quantize the layer's weights (8-bit symmetric per tensor, narrow range, as TFLite int8 kernels expect)
    and its output: Conv3D / Conv3DTranspose kernels, PReLU slopes."""

    WEIGHTS = ("kernel", "alpha")

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, name), _quantizers.LastValueQuantizer(num_bits=8, per_axis=False, symmetric=True,
                                                                       narrow_range=True))
                for name in self.WEIGHTS if hasattr(layer, name)]

    def set_quantize_weights(self, layer, quantize_weights):
        for name, value in zip([n for n in self.WEIGHTS if hasattr(layer, n)], quantize_weights):
            setattr(layer, name, value)


CUSTOM_CONFIGS = {"Rescaling": OutputQuantizeConfig, "Subtract": OutputQuantizeConfig,
                  "BatchNormalization": OutputQuantizeConfig,
                  "Resizing": PassThroughQuantizeConfig, "Reshape": PassThroughQuantizeConfig,
                  "Conv3D": WeightsQuantizeConfig, "Conv3DTranspose": WeightsQuantizeConfig,
                  "PReLU": WeightsQuantizeConfig}
SCOPE = {"OutputQuantizeConfig": OutputQuantizeConfig, "PassThroughQuantizeConfig": PassThroughQuantizeConfig,
         "WeightsQuantizeConfig": WeightsQuantizeConfig}


def annotate_for_qat(model):
    """Annotate every layer: tfmot's default registry where it covers the layer, ``CUSTOM_CONFIGS`` otherwise.

    Returns:
        ``(annotated model, {layer name: config class name} of the custom-annotated layers)``.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
        default_8bit_quantize_registry as registry

    supported = registry.Default8BitQuantizeRegistry()
    custom = {}

    def annotate(layer):
        kind = type(layer).__name__
        # BatchNormalization after a Conv2D / DepthwiseConv2D / Dense folds into it (tfmot's layout transforms);
        # after anything else (V-Net's Conv3D) it stays a layer of its own that quantizes its output
        if supported.supports(layer) or kind == "InputLayer" or (kind == "BatchNormalization" and _folds(layer)):
            return layer
        if kind not in CUSTOM_CONFIGS:
            raise ValueError(f"layer {layer.name!r} ({kind}) has no QuantizeConfig: add one to "
                             "export.optimize_worker.CUSTOM_CONFIGS")
        custom[layer.name] = CUSTOM_CONFIGS[kind].__name__
        return quant.quantize_annotate_layer(layer, quantize_config=CUSTOM_CONFIGS[kind]())

    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    return quant.quantize_annotate_model(annotated), custom  # the rest with the default registry


def _folds(batch_norm):
    inbound = batch_norm.inbound_nodes[0].inbound_layers
    return type(inbound).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")


def kernel_stats(model):
    """``({layer: sparsity}, {layer: distinct values}, {layer: 2:4 share})`` of every conv / dense kernel
    (the 2:4 share: fraction of groups of 4 input weights with at least 2 zeros)."""
    sparsity, clusters, m_by_n = {}, {}, {}
    for layer in model.layers:
        if _kernel(layer) is None:
            continue
        k = np.asarray(_kernel(layer))
        sparsity[layer.name] = float(np.mean(k == 0))
        clusters[layer.name] = int(np.unique(k).size)
        groups = _groups_of_4(k) if getattr(layer, "kernel", None) is not None else None
        if groups is not None:
            m_by_n[layer.name] = float(np.mean((groups == 0).sum(axis=-1) >= 2))
    return sparsity, clusters, m_by_n


def _groups_of_4(kernel):
    """The kernel as groups of 4 consecutive input channels, per output channel (tfmot's 2:4 layout)."""
    if kernel.ndim < 2 or kernel.shape[-2] % 4:
        return None
    k = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1, kernel.shape[-2])
    return k.reshape(k.shape[0], k.shape[1], -1, 4)


def _kernel(layer):
    kernel = getattr(layer, "kernel", None)
    return kernel if kernel is not None else getattr(layer, "depthwise_kernel", None)


def _prunable(layer, m_by_n):
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    if _kernel(layer) is None or not prune_registry.PruneRegistry.supports(layer):
        return False
    # 2:4 groups run along the input channels of a dense kernel: a first conv on 3 colour channels, or a
    # depthwise kernel (one input channel per filter), cannot hold the pattern
    return not m_by_n or (getattr(layer, "kernel", None) is not None and int(layer.kernel.shape[-2]) % 4 == 0)


def prune_model(model, prune, steps, fit):
    sparsity = tfmot.sparsity.keras
    frequency = max(1, steps // 10)
    if prune == "2:4":
        kwargs = {"pruning_schedule": sparsity.ConstantSparsity(0.5, begin_step=0, frequency=frequency),
                  "sparsity_m_by_n": (2, 4)}
    else:
        # reach the target at 60% of the steps (a multiple of the update frequency, so the last update hits it),
        # then fine-tune the remaining weights at that sparsity
        end = frequency * max(1, int(0.6 * steps) // frequency)
        kwargs = {"pruning_schedule": sparsity.PolynomialDecay(0.0, float(prune), begin_step=0, end_step=end,
                                                               frequency=frequency)}
    # the wrappers take the trained layer objects themselves (as tfmot's whole-model call does); the layers tfmot
    # cannot prune (Rescaling, ...) are shared unchanged instead of failing the whole model
    wrapped = tf_keras.models.clone_model(model, clone_function=lambda layer: sparsity.prune_low_magnitude(
        layer, **kwargs) if _prunable(layer, prune == "2:4") else layer)
    fit(wrapped, [sparsity.UpdatePruningStep()])
    return sparsity.strip_pruning(wrapped)


def cluster_model(model, k, preserve_sparsity, fit):
    clustering = tfmot.clustering.keras
    from tensorflow_model_optimization.python.core.clustering.keras import clustering_registry

    def wrap(layer):
        kernel = _kernel(layer)
        # a kernel of at most k weights holds at most k values already
        if kernel is not None and int(np.prod(kernel.shape)) > k and \
                clustering_registry.ClusteringRegistry.supports(layer):
            # linear centroid initialisation over the trained weights' range: the best of the three in Deep
            # Compression (large weights keep their own centroids), and defined for any number of weights
            return clustering.cluster_weights(layer, number_of_clusters=k, preserve_sparsity=preserve_sparsity,
                                              cluster_centroids_init=clustering.CentroidInitialization.LINEAR)
        return layer

    wrapped = tf_keras.models.clone_model(model, clone_function=wrap)
    fit(wrapped, [])
    return clustering.strip_clustering(wrapped)


def main(job_path):
    with open(job_path) as f:
        job = json.load(f)
    tf_keras.utils.set_random_seed(0)
    model = inference_model(build_twin(job["model"], **job["builder_kwargs"]))
    model.load_weights(job["weights"])
    data = np.load(job["data"])
    x, y = data["x"].astype(np.float32), data["y"].astype(np.int32)
    num_classes = int(model.outputs[0].shape[-1])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).repeat().batch(job["batch_size"])
    steps = int(job["steps"])

    def fit(m, callbacks):
        loss = (tf_keras.losses.BinaryCrossentropy(from_logits=True) if num_classes == 1 else
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))
        m.compile(optimizer=tf_keras.optimizers.Adam(job["lr"]), loss=loss)
        m.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=callbacks, verbose=0)

    log = {}
    if job.get("prune") is not None:
        model = prune_model(model, job["prune"], steps, fit)
    if job.get("cluster"):
        model = cluster_model(model, int(job["cluster"]), job.get("prune") is not None, fit)
    sparsity, clusters, m_by_n = kernel_stats(model)
    log.update(sparsity=sparsity, clusters=clusters, m_by_n=m_by_n)
    model.save_weights(os.path.join(job["out"], "optimized.weights.h5"))
    if job.get("qat"):
        annotated, custom = annotate_for_qat(model)
        log["custom_quantize_configs"] = custom
        scheme = None
        if job.get("cluster"):
            scheme = tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(job.get("prune") is not None)
        elif job.get("prune") is not None:
            scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        with quant.quantize_scope(SCOPE):
            qat = quant.quantize_apply(annotated, scheme) if scheme else quant.quantize_apply(annotated)
        fit(qat, [])
        with open(os.path.join(job["out"], "qat.tflite"), "wb") as f:
            f.write(convert_qat(qat, np.load(job["calibration"]), job["io_dtype"]))
    with open(os.path.join(job["out"], "result.json"), "w") as f:
        json.dump(log, f)


def convert_qat(model, calibration, io_dtype):
    """The QAT model to a full-int8 TFLite flatbuffer with a static batch of 1."""
    shape = [1] + [int(d) for d in model.inputs[0].shape[1:]]
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([c.reshape(shape).astype(np.float32)] for c in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = getattr(tf, io_dtype)
    converter.inference_output_type = getattr(tf, io_dtype)
    return converter.convert()


if __name__ == "__main__":
    main(sys.argv[1])
