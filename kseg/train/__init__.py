"""Training: ``train(cfg)`` behind ``kseg train``, and ``evaluate_model`` for scoring a model on a dataset.

Example:
    >>> from kseg.config import load_config
    >>> from kseg.train import train
    >>> result = train(load_config("configs/unet_synthetic-96x96.yaml", ["train.epochs=2"]))
    >>> result["best_miou"], result["run_dir"]  # doctest: +SKIP
"""

from kseg.train.evaluate import evaluate_model
from kseg.train.trainer import train

__all__ = ["evaluate_model", "train"]
