"""Loss registry and ``build_loss``: a weighted sum of registered losses from a config value."""

import inspect
import numbers

import keras

from kseg.errors import ConfigError
from kseg.losses.segmentation import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    SegmentationLoss,
    TverskyLoss,
)

__all__ = ["WeightedSumLoss", "build_loss", "list_losses", "register_loss"]

_LOSSES = {}


def register_loss(name):
    """Decorator registering a :class:`SegmentationLoss` subclass under ``name`` for :func:`build_loss`."""

    def wrap(cls):
        if name in _LOSSES and _LOSSES[name] is not cls:
            raise ValueError(f"loss {name!r} is registered twice")
        _LOSSES[name] = cls
        return cls

    return wrap


for _name, _cls in (
    ("ce", CrossEntropyLoss),
    ("dice", DiceLoss),
    ("focal", FocalLoss),
    ("tversky", TverskyLoss),
    ("lovasz", LovaszSoftmaxLoss),
):
    register_loss(_name)(_cls)


def list_losses():
    """Sorted names accepted by :func:`build_loss`."""
    return sorted(_LOSSES)


@keras.saving.register_keras_serializable(package="kseg")
class WeightedSumLoss(SegmentationLoss):
    """``sum_i weight_i * loss_i``: several segmentation losses on the same ``(labels, logits)``.

    The labels and logits are prepared once and shared by the terms, which must agree on the ignore index.

    Args:
        losses: :class:`SegmentationLoss` instances (or their Keras-serialized dicts).
        weights: one non-negative weight per loss.
        name: name of the loss.
    """

    def __init__(self, losses, weights, name="weighted_sum"):
        losses = [keras.saving.deserialize_keras_object(l) if isinstance(l, dict) else l for l in losses]
        if not losses or len(losses) != len(weights):
            raise ValueError(f"need one weight per loss, got {len(losses)} losses and {len(weights)} weights")
        if not all(isinstance(l, SegmentationLoss) for l in losses):
            raise ValueError("every term must be a kseg SegmentationLoss")
        ignore = {l.ignore_index for l in losses}
        if len(ignore) != 1:
            raise ValueError(f"all terms must share one ignore index, got {sorted(ignore, key=str)}")
        super().__init__(ignore_index=ignore.pop(), name=name)
        self.losses = losses
        self.weights = [float(w) for w in weights]

    def compute(self, labels, valid, logits):
        return sum(w * l.compute(labels, valid, logits) for w, l in zip(self.weights, self.losses))

    def get_config(self):
        return {
            "name": self.name,
            "losses": [keras.saving.serialize_keras_object(l) for l in self.losses],
            "weights": self.weights,
        }


def _terms(spec):
    """``[(name, weight, params), ...]`` from the three spec forms."""
    if isinstance(spec, str):
        return [(spec, 1.0, {})]
    if isinstance(spec, dict):
        if not spec:
            raise ConfigError("loss: the dict is empty; give at least one {name: weight}")
        return [(name, weight, {}) for name, weight in spec.items()]
    if isinstance(spec, (list, tuple)) and spec:
        terms = []
        for i, item in enumerate(spec):
            if isinstance(item, str):
                item = {"name": item}
            if not isinstance(item, dict) or "name" not in item:
                raise ConfigError(f"loss[{i}]: expected a name or a dict with a 'name' key, got {item!r}")
            params = {k: v for k, v in item.items() if k not in ("name", "weight")}
            terms.append((item["name"], item.get("weight", 1.0), params))
        return terms
    raise ConfigError(
        f"loss: expected a name, a {{name: weight}} dict or a list of {{name: ..., weight: ..., <params>}} dicts, "
        f"got {spec!r}"
    )


def _build_term(name, weight, params, num_classes, ignore_index):
    where = f"loss {name!r}"
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid names: {', '.join(list_losses())}")
    if not isinstance(weight, numbers.Real) or isinstance(weight, bool) or weight < 0:
        raise ConfigError(f"{where}: weight must be a non-negative number, got {weight!r}")
    cls = _LOSSES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "ignore_index", "name")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        hint = " (ignore_index is set once for all terms)" if "ignore_index" in unknown else ""
        raise ConfigError(f"{where}: unknown parameter(s) {', '.join(unknown)}{hint}; valid: {', '.join(accepted)}")
    try:
        loss = cls(**params, ignore_index=ignore_index)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    for param in cls.per_class_params:
        value = getattr(loss, param)
        if isinstance(value, tuple) and len(value) != num_classes:
            raise ConfigError(f"{where}: {param} has {len(value)} entries, expected num_classes={num_classes}")
    return loss, float(weight)


def build_loss(spec, num_classes, ignore_index=255):
    """Builds the training loss from a config value.

    Args:
        spec: one of
            - a name: ``"ce"``;
            - a dict of name to weight: ``{"ce": 1.0, "dice": 0.5}``;
            - a list of dicts with ``name``, optional ``weight`` (default 1.0) and the loss's own arguments:
              ``[{"name": "focal", "weight": 1.0, "gamma": 2.0}, {"name": "lovasz", "weight": 0.5}]``.
            Names come from :func:`list_losses`.
        num_classes: number of classes, to check per-class arguments (``class_weights``, ``alpha``).
        ignore_index: label value excluded from every term (not settable per term).

    Returns:
        The loss itself for a single term of weight 1, otherwise a :class:`WeightedSumLoss`.

    Raises:
        ConfigError: unknown name (the message lists the valid ones), unknown or invalid parameter, bad weight.

    Example:
        >>> loss = build_loss({"ce": 1.0, "dice": 0.5}, num_classes=21)
        >>> model.compile(optimizer="adam", loss=loss)  # doctest: +SKIP
    """
    if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    built = [_build_term(name, weight, params, num_classes, ignore_index) for name, weight, params in _terms(spec)]
    if len(built) == 1 and built[0][1] == 1.0:
        return built[0][0]
    return WeightedSumLoss([loss for loss, _ in built], [weight for _, weight in built])
