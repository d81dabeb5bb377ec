"""kseg: Keras image segmentation, from training to int8 TFLite on the edge.

Heavy imports (TensorFlow, Keras) happen on first use so that the TF-free parts
(``kseg.metrics``, ``kseg.viz``) serve the edge runtime on a device without TensorFlow.

Example:
    >>> import kseg
    >>> model = kseg.create_model("unet", num_classes=2, input_shape=(256, 256, 3))
    >>> "deeplabv3plus" in kseg.list_models()
    True
"""

import os as _os

# TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI / BF16 or AMX. On an AVX2 CPU
# (this project's 2-core AMD EPYC) they make a U-Net training step 1.45x faster (docs/results.md). setdefault: a
# user's TF_ENABLE_ONEDNN_OPTS=0 wins; it takes effect only where kseg is imported before TensorFlow.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_task", "register_model", "__version__"]


def __getattr__(name):
    if name in ("create_model", "list_models", "model_task", "register_model"):
        from kseg.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'kseg' has no attribute {name!r}")
