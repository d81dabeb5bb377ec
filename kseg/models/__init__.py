"""Model zoo. Importing this package registers every built-in builder."""

from kseg.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
