"""Model zoo. Importing this package registers every built-in builder: each module of this package that is not
infrastructure is imported here, so a new model file registers itself without being listed anywhere."""

import importlib
import pkgutil

from kseg.models.backbones import build_backbone, list_backbones
from kseg.models.registry import create_model, inference_model, list_models, model_task, register_model

_INFRASTRUCTURE = {"backbones", "blocks", "registry", "twin"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["build_backbone", "create_model", "inference_model", "list_backbones", "list_models", "model_task",
           "register_model"]
