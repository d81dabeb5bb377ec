"""Post-processors that refine a network's per-pixel class probabilities with the image (dense CRF, active
contours). Each module of this package registers its refiners itself, as the model zoo does.

A refiner is ``refine(image, probabilities, **options) -> probabilities``: ``image`` is the (H, W, 3) uint8 RGB
input, ``probabilities`` an (H, W, C) float32 array summing to one per pixel (softmax of the logits; for one-channel
binary models, ``[1 - p, p]``), and the result has the same shape and meaning, so refiners chain and every consumer
takes the argmax.

Example:
    >>> from kseg.postprocess import list_refiners, get_refiner
    >>> refine = get_refiner("crf")                    # doctest: +SKIP
    >>> refined = refine(image, probabilities)         # doctest: +SKIP
"""

import importlib
import pkgutil

_REFINERS = {}


def register_refiner(name):
    """Decorator: register ``fn`` as refiner ``name``."""

    def wrap(fn):
        if name in _REFINERS:
            raise ValueError(f"refiner {name!r} is registered twice")
        _REFINERS[name] = fn
        return fn

    return wrap


def list_refiners():
    """Names of every registered refiner, sorted."""
    return sorted(_REFINERS)


def get_refiner(name):
    """The refiner registered as ``name``; a ValueError lists the known ones."""
    if name not in _REFINERS:
        raise ValueError(f"unknown refiner {name!r}; choose one of {list_refiners()}")
    return _REFINERS[name]


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["get_refiner", "list_refiners", "register_refiner"]
