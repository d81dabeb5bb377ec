"""Model zoo. Importing this package registers every built-in builder."""

from kseg.models import deeplabv3plus, unet  # noqa: F401  (registration happens on import)
from kseg.models.backbones import build_backbone, list_backbones
from kseg.models.registry import create_model, list_models, register_model

__all__ = ["build_backbone", "create_model", "list_backbones", "list_models", "register_model"]
