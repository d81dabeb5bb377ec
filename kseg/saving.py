"""Loading saved kseg models with clear errors."""

import os
import zipfile

from kseg.errors import ModelFileError


def load_model(path):
    """Load a ``.keras`` model saved by kseg for inference (not compiled).

    Raises:
        ModelFileError: the file is missing, is not a ``.keras`` archive, or does not load.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a .keras model archive (expected the best.keras / last.keras a "
                             "`kseg train` run writes)")
    import keras

    import kseg.losses  # noqa: F401  (registers kseg objects a saved model may reference)
    import kseg.metrics.keras_metric  # noqa: F401
    import kseg.models  # noqa: F401

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a broken archive; the user needs one message
        raise ModelFileError(f"could not load {path}: {e}") from None
