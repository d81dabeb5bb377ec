"""Shared checks for every kseg model (keras-hub style): each ``run_*_test`` takes a built model and asserts one
property of the kseg contract (docs/architecture.md). ``tests/test_models.py`` runs them over the registry."""

import collections

import numpy as np

# Ops a converted float model must not contain: Flex ops need the TF runtime on the device; TILE (Keras 3
# nearest UpSampling2D) and SPACE_TO_BATCH_ND (dilated convs traced with a dynamic batch) are not EdgeTPU ops.
FORBIDDEN_TFLITE_OPS = ("TILE", "SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND")


def random_images(model, batch=1, seed=0):
    """Raw pixels in [0, 255] shaped like the model input (the contract's input)."""
    shape = [batch] + [int(d) for d in model.inputs[0].shape[1:]]
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def randomize_batchnorm(model, seed=0):
    """Give every BatchNormalization layer non-trivial statistics and affine terms.

    A freshly built model has moving mean 0 and variance 1, so BN is nearly the identity and a converter or a
    weight transfer that mishandles BN folding would still pass; with these values it cannot.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma * rng.uniform(0.5, 1.5, gamma.shape), beta + rng.normal(0, 0.1, beta.shape),
                               mean + rng.normal(0, 0.1, mean.shape), var * rng.uniform(0.5, 1.5, var.shape)])


def tolerance(reference, rel):
    """``rel * (1 + max |reference|)``: float32 rounding grows with the magnitude of the logits."""
    return rel * (1.0 + float(np.max(np.abs(reference))))


def run_output_shape_test(model, num_classes):
    """Logits ``(B, H, W, num_classes)`` float32 for raw pixels ``(B, H, W, C)``, a batch of 2, all finite
    (volumes: ``(B, D, H, W, ...)``)."""
    x = random_images(model, batch=2)
    y = np.asarray(model(x, training=False))
    assert y.shape == x.shape[:-1] + (num_classes,), y.shape
    assert y.dtype == np.float32
    assert np.isfinite(y).all()
    assert model.outputs[0].dtype == "float32"


def run_training_step_test(model, num_classes, steps=3):
    """A few ``train_on_batch`` steps with sparse categorical cross-entropy on logits lower the loss on a fixed
    batch (the gradient reaches the weights and the output is usable as logits).

    Runs eagerly: tracing the training graph of a backbone model costs about 50 s of CPU here (XLA, Keras'
    default "auto", several minutes) against 12 s for the eager steps, and adds nothing model-specific: the
    forward graph is traced by the TFLite test and graph-mode fitting is the trainer's test.
    """
    import keras

    x = random_images(model, batch=2, seed=1)
    spatial = x.shape[1:-1]
    # A learnable target: class by quadrant of the first two spatial axes (H, W; D, H for volumes).
    grid = np.indices(spatial)
    labels = ((grid[0] >= spatial[0] // 2) * 2 + (grid[1] >= spatial[1] // 2)) % num_classes
    y = np.broadcast_to(labels, (2, *spatial)).astype(np.int32)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    losses = [float(model.train_on_batch(x, y)) for _ in range(steps + 1)]
    assert np.isfinite(losses).all(), losses
    assert losses[-1] < losses[0], losses


def run_saving_test(model, tmp_path):
    """Save as ``.keras``, reload without custom objects, and get the same outputs within 1e-6."""
    import keras

    x = random_images(model)
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    diff = np.max(np.abs(np.asarray(model(x, training=False)) - np.asarray(restored(x, training=False))))
    assert diff <= 1e-6, diff


def tflite_ops(flatbuffer):
    """Counter of the builtin op names in a TFLite model (read without delegates, so none are fused away)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=flatbuffer,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return collections.Counter(op["op_name"] for op in interp._get_ops_details())


def run_tflite_test(model, rel_tol=1e-4, quantile=1.0, min_agreement=None):
    """float32 TFLite (``export.convert.to_tflite``, run by ``edge.interpreter``) matches Keras, with clean ops.

    Tolerance: max |tflite - keras| <= ``rel_tol * (1 + max |keras logit|)`` with ``rel_tol = 1e-4``. Both sides
    compute in float32 (eps 1.2e-7); they differ only by BN folded into the conv kernels and by summation order,
    which across a ResNet50-deep graph stays around 1e-6 relative (measured up to 9e-7). 1e-4 leaves 100x margin
    for other CPUs' kernels yet fails on any real conversion fault: a wrong resize mode, padding or BN fold moves
    logits by 1e-2 relative or more (keras-hub #2495 passed loose thresholds while 60% off).

    For a model that is not continuous in its input (SegNet's unpooling at near-ties), ``quantile`` < 1 takes the
    error at that quantile of |tflite - keras| instead of the maximum, and ``min_agreement`` bounds the share of
    pixels whose argmax agrees.

    Returns:
        ``(error, Counter of op names)`` for reporting.
    """
    from edge.interpreter import load_interpreter, run_once
    from export.convert import to_tflite

    randomize_batchnorm(model)
    x = random_images(model)
    expected = np.asarray(model(x, training=False))
    flatbuffer = to_tflite(model, "float32")
    got = run_once(load_interpreter(model_content=flatbuffer), x)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    err = float(np.quantile(np.abs(got - expected), quantile))
    assert err <= tolerance(expected, rel_tol), (err, tolerance(expected, rel_tol))
    if min_agreement is not None:
        agreement = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
        assert agreement >= min_agreement, agreement

    ops = tflite_ops(flatbuffer)
    bad = [op for op in ops if op in FORBIDDEN_TFLITE_OPS or "FLEX" in op.upper() or op == "CUSTOM"]
    assert not bad, f"ops not fit for the edge: {bad} in {dict(ops)}"
    return err, ops


def run_twin_test(model, name, kwargs, rel_tol=1e-5):
    """The tf_keras twin builds from the same definition, takes the weights and gives the same outputs.

    Tolerance ``rel_tol * (1 + max |logit|)`` with 1e-5: the same TF kernels run in both frameworks except BN
    (fused in tf_keras, unfused in Keras 3), so differences are float32 rounding (measured <= 6e-7 relative).
    """
    from kseg.models.twin import build_twin, max_output_difference, transfer_weights

    randomize_batchnorm(model)
    twin = build_twin(name, **kwargs)
    assert type(twin).__module__.startswith("tf_keras"), type(twin)
    assert sorted(layer.name for layer in twin.layers) == sorted(layer.name for layer in model.layers)
    transfer_weights(model, twin)
    x = random_images(model)
    diff = max_output_difference(model, twin, x)
    assert diff <= tolerance(np.asarray(model(x, training=False)), rel_tol), diff
    return diff
