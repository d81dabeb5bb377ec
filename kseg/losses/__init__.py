"""Segmentation losses for ``(labels int (B, H, W), logits (B, H, W, C))``, ignore label masked everywhere.

Example:
    >>> from kseg.losses import build_loss
    >>> loss = build_loss([{"name": "ce"}, {"name": "lovasz", "weight": 0.5}], num_classes=19)
    >>> model.compile(optimizer="adam", loss=loss)  # doctest: +SKIP
"""

from kseg.losses.active_contour import ActiveContourLoss
from kseg.losses.builder import WeightedSumLoss, build_loss, list_losses, register_loss
from kseg.losses.segmentation import (
    CrossEntropyLoss,
    DiceLoss,
    DistillationLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    SegmentationLoss,
    TverskyLoss,
)

__all__ = [
    "ActiveContourLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "DistillationLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "SegmentationLoss",
    "TverskyLoss",
    "WeightedSumLoss",
    "build_loss",
    "list_losses",
    "register_loss",
]
