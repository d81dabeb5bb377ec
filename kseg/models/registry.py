"""One registry for every model family (timm style): ``register_model``, ``create_model``, ``list_models``."""

import fnmatch

_MODELS = {}
_TASKS = {}
TASKS = ("semantic", "instance")


def register_model(fn=None, *, name=None, task="semantic"):
    """Decorator registering a builder ``fn(num_classes, input_shape, **kw) -> keras.Model``.

    ``task`` says what the model predicts: ``"semantic"`` (per-pixel logits, the contract of docs/architecture.md)
    or ``"instance"`` (detections with masks, Mask R-CNN), so that tools and tests pick the models they can handle.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def wrap(f):
        key = name or f.__name__
        if key in _MODELS and _MODELS[key] is not f:
            raise ValueError(f"model {key!r} is registered twice")
        _MODELS[key] = f
        _TASKS[key] = task
        return f

    return wrap(fn) if fn is not None else wrap


def _load_builtin_models():
    import kseg.models  # noqa: F401  (registers the built-in builders on import)


def list_models(pattern="*", task=None):
    """Sorted names of registered models, optionally filtered by a glob pattern and by task
    (``"semantic"`` or ``"instance"``; None: all)."""
    _load_builtin_models()
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern) and task in (None, _TASKS[n]))


def model_task(name):
    """The task (``"semantic"`` or ``"instance"``) of a registered model."""
    get_builder(name)
    return _TASKS[name]


def get_builder(name):
    _load_builtin_models()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def create_model(name, **kwargs):
    """Build a registered model by name.

    Args:
        name: a name from ``list_models()``.
        **kwargs: builder arguments (``num_classes``, ``input_shape``, ``backbone``, ...).

    Returns:
        A ``keras.Model`` mapping raw RGB pixels in [0, 255] to per-pixel logits.
    """
    return get_builder(name)(**kwargs)


def inference_model(model):
    """The deployable view of a model built with auxiliary training outputs (deep supervision, e.g. PSPNet's
    ``aux_head=True``): the first output only, sharing the layers, so the auxiliary head is neither saved nor
    exported. A single-output model is returned unchanged.

    Example:
        >>> import kseg
        >>> from kseg.models.registry import inference_model
        >>> model = kseg.create_model("unet", num_classes=2, input_shape=(32, 32, 3), base_filters=4, depth=2)
        >>> inference_model(model) is model
        True
    """
    if len(model.outputs) == 1:
        return model
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as K
    else:
        import keras as K
    # model.input, not model.inputs: a one-element list would change the input structure, which clone_model
    # (the exporter's static-batch copy) and reloading reject.
    return K.Model(model.input, model.outputs[0], name=model.name)
