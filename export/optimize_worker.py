"""The tensorflow-model-optimization half of ``export.optimize``, run as ``python -m export.optimize_worker JOB``.

Importing tfmot sets ``TF_USE_LEGACY_KERAS`` and turns ``tf.keras`` into tf_keras for the whole process (DESIGN.md
section 2), so this module runs only in its own process, on the tf_keras twin of a kseg model: prune (magnitude,
polynomial decay, or 2:4), cluster, quantization-aware training, each with fine-tuning on the user's data; it strips
the wrappers and writes the weights (and, after QAT, the int8 TFLite file) back for the parent.

Job (JSON): ``model``, ``builder_kwargs``, ``weights`` (tf_keras ``.h5``), ``data`` (``.npz`` of ``x`` uint8
images, ``y`` uint8 labels), ``calibration`` (``.npy``), ``prune`` (float or ``"2:4"``), ``cluster`` (int),
``qat`` (bool), ``steps``, ``batch_size``, ``lr`` (pruning, clustering), ``qat_lr``, ``loss`` (a
``kseg.losses.build_loss`` spec), ``target`` (``"float"``: fine-tune towards the float model's own logits;
``"labels"``: ``loss`` on the labels), ``io_dtype``, ``out`` (folder).

QuantizeConfigs for layers outside tfmot's default 8-bit registry that the kseg zoo uses, found by annotating every
registered model's twin (tests/test_export_optimize.py): ``Rescaling`` (every model's ``*_preprocess``; RAN's
negations), ``Subtract`` (SegNet, RAN), ``Multiply`` (RAN, attention to scale), ``Dot`` (DANet's attention
products), DANet's ``LearnableScale``, ``Resizing`` (PSPNet), ``Reshape``-based nearest upsampling and ``Conv3D`` /
``Conv3DTranspose`` / ``PReLU`` / ``BatchNormalization`` after a 3-D conv (V-Net), the ``CrfRnn`` layer
(crfasrnn) and ReSeg's ``SequenceSweep``. Layers that only move or interpolate values (``Reshape``, ``Resizing``)
keep their input's quantization; the others quantize their output, and their weights where they hold any worth
an 8-bit range (kernels, PReLU slopes, the CRF's kernel weights and compatibility, the RNN kernels; 8-bit symmetric
per tensor). Attention to scale's nested network is inlined first (tfmot rejects a model inside a model). CRF-as-RNN
and ReSeg annotate and train, but their int8 files do not work; ``export.optimize.NOT_INT8`` stops them first.

Three corrections to tfmot 0.8.1's QAT, without which DeepLabV3+ MobileNetV2 lost 0.8 mIoU points in QAT where
post-training int8 lost 0.1 (docs/export.md): layers with several inputs keep their order
(``_layers_in_given_order``), depthwise kernels get a range per channel (``QuantizeScheme``), and activation ranges
start calibrated (``calibrate_ranges``).
"""

import json
import os
import sys

import numpy as np
import tensorflow_model_optimization as tfmot  # first: flips tf.keras to tf_keras in this process only

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (  # noqa: E402
    cluster_preserve_quantize_registry as cluster_preserve)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (  # noqa: E402
    prune_preserve_quantize_registry as prune_preserve)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # noqa: E402
    default_8bit_quantize_registry, default_8bit_quantize_scheme)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (  # noqa: E402
    model_transformer)
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper  # noqa: E402

from export.optimize import fine_tune_batches  # noqa: E402
from kseg.losses import DistillationLoss, build_loss  # noqa: E402
from kseg.models.registry import inference_model  # noqa: E402
from kseg.models.twin import build_twin  # noqa: E402

quant = tfmot.quantization.keras
_quantizers = quant.quantizers


def _layers_in_given_order(self, layer_names):
    """``ModelTransformer._get_layers`` that returns the layers in the order of ``layer_names``: tfmot 0.8.1
    returns them in model order, and a pattern matched at a layer with several inputs then rewires them in that
    order (tensorflow/model-optimization issues 1061 and 1179): DeepLabV3+'s QAT model concatenated its ASPP
    branches image pooling first, so the projection read permuted channels (int8 mIoU -0.8 points before any
    training, docs/export.md)."""
    layers = {layer["config"]["name"]: layer for layer in self._config["layers"]}
    # each layer once, as tfmot's own (it removes the layers it returns from the model, one by one)
    return [layers[name] for name in dict.fromkeys(layer_names) if name in layers]


model_transformer.ModelTransformer._get_layers = _layers_in_given_order


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
    and its output; the weights by attribute name, per layer class (``WEIGHT_ATTRIBUTES``)."""

    def _names(self, layer):
        return WEIGHT_ATTRIBUTES[type(layer).__name__]

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, name), _weight_quantizer()) for name in self._names(layer)]

    def set_quantize_weights(self, layer, quantize_weights):
        for name, value in zip(self._names(layer), quantize_weights):
            setattr(layer, name, value)


class RecurrentQuantizeConfig(OutputQuantizeConfig):
    """``SequenceSweep`` (ReSeg): the input and recurrent kernels of the cell of each direction of the wrapped
    ``Bidirectional`` RNN (8-bit symmetric per tensor) and the sweep's output. tfmot's registry has no RNN cells
    (they are commented out in 0.8.1), so the gates' inner tensors get no fake-quant range, and the int8 file of
    the (unrolled) model does not follow it: ``export.optimize.NOT_INT8`` stops a QAT export of ReSeg; this
    config lets the model annotate and fine-tune."""

    ATTRIBUTES = ("kernel", "recurrent_kernel")

    @staticmethod
    def _cells(layer):
        return [layer.layer.forward_layer.cell, layer.layer.backward_layer.cell]

    def get_weights_and_quantizers(self, layer):
        return [(getattr(cell, name), _weight_quantizer()) for cell in self._cells(layer) for name in self.ATTRIBUTES]

    def set_quantize_weights(self, layer, quantize_weights):
        values = iter(quantize_weights)
        for cell in self._cells(layer):
            for name in self.ATTRIBUTES:
                setattr(cell, name, next(values))


class DepthwiseKernelQuantizer(_quantizers.LastValueQuantizer):
    """8-bit symmetric, one range per output channel of a depthwise kernel ``(kh, kw, channels, multiplier)``,
    as the converter quantizes it. tfmot's conv quantizer ranges over the kernel's last axis, which for a
    depthwise kernel is the depth multiplier (tensorflow/model-optimization issue 808): one range for every
    channel, so QAT trains against a coarser kernel than the int8 file holds, and the converter, which folds batch
    norm into the kernel and quantizes it per channel, no longer matches the fake-quantized model."""

    def __init__(self):
        super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    def build(self, tensor_shape, name, layer):
        channels = int(tensor_shape[-2]) * int(tensor_shape[-1])
        return {f"{kind}_var": layer.add_weight(f"{name}_{kind}", shape=(channels,), trainable=False,
                                                initializer=tf_keras.initializers.Constant(bound))
                for kind, bound in (("min", -6.0), ("max", 6.0))}

    def __call__(self, inputs, training, weights, **kwargs):
        kh, kw, channels, multiplier = inputs.shape
        # TFLite's depthwise kernel is (1, kh, kw, channels * multiplier): its output channels on the last axis
        flat = tf.reshape(inputs, (kh, kw, 1, channels * multiplier))
        return tf.reshape(super().__call__(flat, training, weights, **kwargs), (kh, kw, channels, multiplier))


class DepthwiseQuantizeConfig(default_8bit_quantize_registry.Default8BitConvQuantizeConfig):
    """tfmot's DepthwiseConv2D config with ``DepthwiseKernelQuantizer``."""

    def __init__(self, weight_attrs=("depthwise_kernel",), activation_attrs=("activation",), quantize_output=False):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = DepthwiseKernelQuantizer()


class QuantizeRegistry(default_8bit_quantize_registry.Default8BitQuantizeRegistry):
    """tfmot's default 8-bit registry, DepthwiseConv2D quantized per channel (``DepthwiseQuantizeConfig``). A
    registry entry, not an annotation: tfmot folds batch norm only after layers without a custom config."""

    def __init__(self):
        super().__init__()
        self._layer_quantize_map[tf_keras.layers.DepthwiseConv2D] = DepthwiseQuantizeConfig()


class QuantizeScheme(default_8bit_quantize_scheme.Default8BitQuantizeScheme):
    """tfmot's default 8-bit scheme with ``QuantizeRegistry``."""

    def get_quantize_registry(self):
        return QuantizeRegistry()


TRANSPOSE_CONFIG = "Default8BitConvTransposeQuantizeConfig"


def _preserving_registry(base, info, quantizer, apply):
    """A tfmot pruning- or clustering-preserving registry (``base``) that also covers ``Conv2DTranspose`` and starts
    from ``QuantizeRegistry``'s configs (depthwise ranges per channel).

    tfmot 0.8.1's preserving registries know only Conv2D, Dense and DepthwiseConv2D: QAT after pruning or clustering
    failed on U-Net's up-convolutions ("Conv2DTranspose is not supported"). A transposed kernel is quantized per
    tensor, so the per-tensor preserving quantizer (``quantizer``) keeps its zeros / shared values as it does a
    Dense kernel's. ``apply`` is the base's method that swaps the preserving quantizer into a config.
    """

    class Registry(base):
        _LAYERS_CONFIG_MAP = {**base._LAYERS_CONFIG_MAP,
                              tf_keras.layers.Conv2DTranspose: info(["kernel"], [TRANSPOSE_CONFIG])}

        def __init__(self, *args):
            super().__init__(*args)
            self._config_quantizer_map[TRANSPOSE_CONFIG] = quantizer(*args)

        def get_quantize_config(self, layer):
            return getattr(self, apply)(layer, QuantizeRegistry().get_quantize_config(layer))

    return Registry


PrunePreserveRegistry = _preserving_registry(
    prune_preserve.Default8bitPrunePreserveQuantizeRegistry, prune_preserve._PrunePreserveInfo,
    prune_preserve.PrunePreserveDefault8BitWeightsQuantizer, "apply_sparsity_preserve_quantize_config")
ClusterPreserveRegistry = _preserving_registry(
    cluster_preserve.Default8bitClusterPreserveQuantizeRegistry, cluster_preserve._ClusterPreserveInfo,
    cluster_preserve.ClusterPreserveDefault8BitWeightsQuantizer, "apply_cluster_preserve_quantize_config")


class PrunePreserveScheme(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
    """tfmot's pruning-preserving QAT (PQAT) with ``PrunePreserveRegistry``."""

    def get_quantize_registry(self):
        return PrunePreserveRegistry()


class ClusterPreserveScheme(tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme):
    """tfmot's cluster- (and pruning-) preserving QAT (CQAT, PCQAT) with ``ClusterPreserveRegistry``."""

    def get_quantize_registry(self):
        return ClusterPreserveRegistry(self.preserve_sparsity)


def _weight_quantizer():
    return _quantizers.LastValueQuantizer(num_bits=8, per_axis=False, symmetric=True, narrow_range=True)


# the weights WeightsQuantizeConfig quantizes, by layer class
WEIGHT_ATTRIBUTES = {"Conv3D": ("kernel",), "Conv3DTranspose": ("kernel",), "PReLU": ("alpha",),
                     "CrfRnn": ("spatial_weight", "bilateral_weight", "compatibility")}
CUSTOM_CONFIGS = {"Rescaling": OutputQuantizeConfig, "Subtract": OutputQuantizeConfig,
                  "Multiply": OutputQuantizeConfig, "Dot": OutputQuantizeConfig,
                  "BatchNormalization": OutputQuantizeConfig, "LearnableScale": OutputQuantizeConfig,
                  "Resizing": PassThroughQuantizeConfig, "Reshape": PassThroughQuantizeConfig,
                  **{kind: WeightsQuantizeConfig for kind in WEIGHT_ATTRIBUTES},
                  "SequenceSweep": RecurrentQuantizeConfig}
SCOPE = {cls.__name__: cls for cls in (OutputQuantizeConfig, PassThroughQuantizeConfig, WeightsQuantizeConfig,
                                       RecurrentQuantizeConfig, DepthwiseQuantizeConfig)}


def annotate_for_qat(model, registry=None):
    """Annotate every layer: the registry where it covers the layer, ``CUSTOM_CONFIGS`` otherwise. The registry is
    ``QuantizeRegistry`` and, when given, a preserving scheme's ``registry`` too (it claims every layer without
    weights, Rescaling included, then has no config for those the default registry lacks).
    Nested models (attention to scale's shared network) are first inlined (``flatten_nested``): tfmot rejects a
    model inside a model.

    Returns:
        ``(annotated model, {layer name: config class name} of the custom-annotated layers)``.
    """
    registries = [QuantizeRegistry()] + ([registry] if registry is not None else [])
    custom = {}
    model = flatten_nested(model)
    calls = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            calls[node.layer.name] = calls.get(node.layer.name, 0) + 1

    def annotate(layer):
        kind = type(layer).__name__
        # BatchNormalization after a Conv2D / DepthwiseConv2D / Dense folds into it (tfmot's layout transforms);
        # after anything else (V-Net's Conv3D), or when the pair is shared by several calls (attention to scale's
        # network, once per scale: tfmot transforms no shared layer), it stays a layer of its own that quantizes
        # its output
        if all(r.supports(layer) for r in registries) or kind == "InputLayer" or (kind == "BatchNormalization" and
                                                                  _folds(layer, calls)):
            return layer
        if kind not in CUSTOM_CONFIGS:
            raise ValueError(f"layer {layer.name!r} ({kind}) has no QuantizeConfig: add one to "
                             "export.optimize_worker.CUSTOM_CONFIGS")
        custom[layer.name] = CUSTOM_CONFIGS[kind].__name__
        return quant.quantize_annotate_layer(layer, quantize_config=CUSTOM_CONFIGS[kind]())

    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    return quant.quantize_annotate_model(annotated), custom  # the rest with the scheme's registry


def flatten_nested(model):
    """``model`` with every nested model inlined: the same layer objects (weights shared with ``model``) called
    on the outer tensors, so a sub-model called twice becomes layers shared by two calls. ``model`` itself when it
    nests none."""
    if not any(isinstance(layer, tf_keras.Model) for layer in model.layers):
        return model
    inputs = [tf_keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name.split(":")[0].split("/")[0])
              for t in model.inputs]
    outputs = _call_inlined(model, inputs)
    return tf_keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                          name=model.name)


def _call_inlined(model, inputs):
    """``model``'s graph (tf_keras ``Functional._run_internal_graph``) on ``inputs``, nested models inlined."""
    tensors = {}
    for reference, tensor in zip(model.inputs, inputs):
        tensors[str(id(reference))] = [tensor] * model._tensor_usage_count[str(id(reference))]
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(i not in tensors for i in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(tensors)
            if isinstance(node.layer, tf_keras.Model):
                outputs = _call_inlined(node.layer, tf.nest.flatten(args))
            else:
                outputs = node.layer(*args, **kwargs)
            for i, y in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                tensors[i] = [y] * model._tensor_usage_count[i]
    return [tensors[str(id(x))].pop() for x in model.outputs]


def quantize_model(model, scheme=None, calibration=None, batch_size=4):
    """``annotate_for_qat`` then ``quantize_apply`` with ``scheme`` (``QuantizeScheme`` by default; a pruning-
    or clustering-preserving one), and with ``calibration`` images, ``calibrate_ranges`` on batches of
    ``batch_size``: ``(fake-quantized model, {layer name: custom config class name})``."""
    scheme = scheme or QuantizeScheme()
    annotated, custom = annotate_for_qat(model, scheme.get_quantize_registry())
    with quant.quantize_scope(SCOPE):
        qat = quant.quantize_apply(annotated, scheme)
    if calibration is not None:
        calibrate_ranges(qat, model, (calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)))
    return qat, custom


def _output_ranges(qat):
    """``{float layer name: [{"min_var", "max_var"}, ...]}``: the moving-average activation ranges of the
    fake-quantized model, by the float layer whose output they quantize (a wrapper's output or its fused
    activation's output; ranges before a sigmoid or softmax, which tfmot also keeps, are left as they are)."""

    def moving(quantizer):
        return isinstance(quantizer, _quantizers.MovingAverageQuantizer)

    ranges = {}
    for layer in qat.layers:
        if not isinstance(layer, QuantizeWrapper):
            continue
        pairs = [a._post_activation_vars for a in layer._quantize_activations
                 if moving(a.quantizer) and hasattr(a, "_post_activation_vars")]
        if layer._output_quantizers and moving(layer._output_quantizers[0]):
            pairs.append(layer._output_quantizer_vars)
        if pairs:
            ranges[layer.layer.name] = pairs
    return ranges


def calibrate_ranges(qat, model, batches):
    """Start the activation ranges of ``qat`` (``quantize_model(model)``) from the ranges ``model``'s float
    activations take on ``batches`` (image arrays), not from tfmot's [-6, 6].

    tfmot moves each range towards the batch's by 0.1% a step (decay 0.999, no bias correction), so after the
    few hundred steps of a fine-tuning the ranges are still three quarters [-6, 6]: activations that span more
    (logits, linear bottlenecks, sums) are clipped in QAT and in the int8 file, those that span less are
    quantized coarsely. Each range starts at the mean over ``batches`` of the batch's range, the value tfmot's
    average settles at. A forward pass in training mode on each batch sets the other ranges (weights: the last
    value; the input: all values seen), so that the model is ready for inference without a training step.
    Returns the number of moving-average ranges set."""
    ranges = _output_ranges(qat)
    flat = flatten_nested(model)
    probes = [(name, i) for name in ranges for i in range(len(flat.get_layer(name).inbound_nodes))
              # a layer of a nested model is also called inside it: only its calls in the flattened graph
              if f"{name}_ib-{i}" in flat._network_nodes]
    probe = tf_keras.Model(flat.inputs, [flat.get_layer(name).get_output_at(i) for name, i in probes])
    lows, highs = {}, {}
    for images in batches:
        images = tf.constant(images, tf.float32)
        qat(images, training=True)  # the weight and input ranges, which tfmot sets from the values it sees
        outputs = probe(images, training=False)
        for (name, _), y in zip(probes, outputs if len(probes) > 1 else [outputs]):
            lows.setdefault(name, []).append(float(tf.reduce_min(y)))
            highs.setdefault(name, []).append(float(tf.reduce_max(y)))
    for name, pairs in ranges.items():
        # tfmot's asymmetric activation ranges always hold 0; an output that is 0 everywhere still needs a width
        low = min(float(np.mean(lows[name])), 0.0)
        high = max(float(np.mean(highs[name])), low + 1e-3)
        for pair in pairs:
            pair["min_var"].assign(tf.fill(pair["min_var"].shape, low))
            pair["max_var"].assign(tf.fill(pair["max_var"].shape, high))
    return sum(len(pairs) for pairs in ranges.values())


def _folds(batch_norm, calls):
    inbound = batch_norm.inbound_nodes[0].inbound_layers
    return (type(inbound).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense") and
            calls[batch_norm.name] == calls[inbound.name] == 1)


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


class ReportProgress(tf_keras.callbacks.Callback):
    """After each step, a line ``progress<TAB>stage<TAB>done<TAB>total<TAB>loss`` on stdout, from which the parent
    (``export.optimize.run_worker``) draws its progress bar."""

    def __init__(self, stage, total):
        super().__init__()
        self.stage, self.total = stage, total

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss", float("nan"))
        print("progress", self.stage, batch + 1, self.total, f"{float(loss):.4f}", sep="\t", flush=True)


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
    fit(wrapped, [sparsity.UpdatePruningStep()], "pruning")
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
    fit(wrapped, [], "clustering")
    return clustering.strip_clustering(wrapped)


def freeze_batch_norm(model):
    """Quantization-aware training with the trained batch-norm statistics, not those of each small batch.

    Jacob et al. (arXiv 1712.05877, section 3.2) freeze batch-norm statistics for the end of quantization-aware
    training; here the model comes trained (QAT moves its weights little), so they stay frozen throughout and
    batches of 4 add no noise to them. Not for pruning and clustering: they change the weights enough that the
    statistics must follow (membrane U-Net, 75% pruning with frozen statistics: int8 val mIoU -6 points, against
    -1.4 with them updating; docs/export.md). A non-trainable tf_keras BatchNormalization runs in inference mode,
    also inside the quantization wrappers, which keep the flag when they clone the layer.
    """
    for layer in model.submodules:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False


def main(job_path):
    with open(job_path) as f:
        job = json.load(f)
    tf_keras.utils.set_random_seed(0)
    model = inference_model(build_twin(job["model"], **job["builder_kwargs"]))
    model.load_weights(job["weights"])
    data = np.load(job["data"])
    num_classes = int(model.outputs[0].shape[-1])
    dataset = fine_tune_batches(data["x"], data["y"], job["batch_size"])
    steps = int(job["steps"])

    # kseg's losses are Keras 3 objects over TensorFlow ops: tf_keras calls them like any loss function
    if job["target"] == "float":
        teacher = inference_model(build_twin(job["model"], **job["builder_kwargs"]))
        teacher.load_weights(job["weights"])
        teacher.trainable = False
        dataset = dataset.map(lambda x, y: (x, teacher(x, training=False)))
        loss = DistillationLoss()
    else:
        loss = build_loss(job.get("loss", "ce"), num_classes, 255)

    def fit(m, callbacks, stage, lr=job["lr"]):
        m.compile(optimizer=tf_keras.optimizers.Adam(lr), loss=loss)
        m.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[*callbacks, ReportProgress(stage, steps)],
              verbose=0)

    log = {}
    if job.get("prune") is not None:
        model = prune_model(model, job["prune"], steps, fit)
    if job.get("cluster"):
        model = cluster_model(model, int(job["cluster"]), job.get("prune") is not None, fit)
    sparsity, clusters, m_by_n = kernel_stats(model)
    log.update(sparsity=sparsity, clusters=clusters, m_by_n=m_by_n)
    model.save_weights(os.path.join(job["out"], "optimized.weights.h5"))
    if job.get("qat"):
        scheme = None
        if job.get("cluster"):
            scheme = ClusterPreserveScheme(job.get("prune") is not None)
        elif job.get("prune") is not None:
            scheme = PrunePreserveScheme()
        freeze_batch_norm(model)
        calibration = np.load(job["calibration"])
        qat, log["custom_quantize_configs"] = quantize_model(model, scheme, calibration, job["batch_size"])
        fit(qat, [], "quantization-aware training", job["qat_lr"])
        flatbuffer = convert_qat(qat, calibration, job["io_dtype"])
        log["qat_int8_vs_fake_quant"] = int8_agreement(qat, flatbuffer, calibration[:4])
        with open(os.path.join(job["out"], "qat.tflite"), "wb") as f:
            f.write(flatbuffer)
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



def int8_agreement(model, flatbuffer, images):
    """How closely the int8 TFLite ``flatbuffer`` follows the fake-quantized Keras ``model`` it was converted
    from, on ``images`` (raw pixels in [0, 255]): ``max_error`` (largest absolute difference of the dequantized
    logits, over the range of the Keras logits), ``max_error_steps`` (the same difference in steps of the int8
    output's scale: 1 is one rounding step) and ``agreement`` (share of pixels with the same argmax)."""
    from edge.interpreter import load_interpreter, run_once

    interp = load_interpreter(model_content=flatbuffer)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    errors, steps, agree = [], [], []
    for image in images:
        image = image.reshape([1] + [int(d) for d in model.inputs[0].shape[1:]]).astype(np.float32)
        scale, zero = inp["quantization"]
        x = np.clip(np.round(image / scale + zero), *_limits(inp["dtype"])) if scale else image
        got = run_once(interp, x).astype(np.float32)
        scale, zero = out["quantization"]
        got = (got - zero) * scale if scale else got
        expected = np.asarray(model(image, training=False))
        error = float(np.max(np.abs(got - expected)))
        errors.append(error / max(float(np.ptp(expected)), 1e-12))
        steps.append(error / scale if scale else 0.0)
        agree.append(np.mean(got.argmax(-1) == expected.argmax(-1)) if expected.shape[-1] > 1 else
                     np.mean((got > 0) == (expected > 0)))
    return {"max_error": float(np.max(errors)), "max_error_steps": float(np.max(steps)),
            "agreement": float(np.mean(agree))}


def _limits(dtype):
    info = np.iinfo(dtype)
    return info.min, info.max


if __name__ == "__main__":
    main(sys.argv[1])
