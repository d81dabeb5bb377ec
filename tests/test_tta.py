"""Test-time augmentation of ``kseg evaluate`` / ``kseg predict`` (``kseg.evaluate.keras_predictor``): views and their
inverses, equality with a hand-made average, and the clear errors."""

import numpy as np
import pytest

from kseg.errors import ConfigError
from kseg.evaluate import TTA, _unview, _view, keras_predictor, probabilities


@pytest.mark.parametrize("k", range(8))
def test_each_view_is_undone_and_the_eight_are_distinct(k):
    image = np.arange(4 * 6 * 2).reshape(4, 6, 2)
    assert np.array_equal(_unview(_view(image, k), k), image)
    square = np.arange(25).reshape(5, 5)
    others = [_view(square, j) for j in range(8) if j != k]
    assert not any(np.array_equal(_view(square, k), o) for o in others)


def _model(input_shape):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(3, 3, padding="same")(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, x)


@pytest.mark.parametrize("tta", ["flip", "d4"])
@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_tta_is_the_mean_of_the_views_probabilities(tta, size):
    """A 3x3 conv is not mirror-symmetric, so the views differ; the prediction is the argmax of their mean softmax
    taken back to the image's frame (a non-square image goes through view by view)."""
    model = _model((None, None, 3))
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    probs = [_unview(probabilities(model(_view(image, k)[None].astype(np.float32)).numpy()[0]), k)
             for k in range(TTA[tta])]
    expected = np.argmax(np.mean(probs, axis=0), axis=-1)
    assert not all(np.array_equal(np.argmax(p, -1), np.argmax(probs[0], -1)) for p in probs)
    assert np.array_equal(keras_predictor(model, tta=tta)(image), expected)
    plain = np.argmax(model(image[None].astype(np.float32)).numpy()[0], axis=-1)
    assert np.array_equal(keras_predictor(model)(image), plain)


def test_bad_tta_settings_say_what_to_do(tmp_path):
    from kseg.evaluate import predictor

    with pytest.raises(ConfigError, match="one of none, flip, d4"):
        keras_predictor(_model((8, 8, 3)), tta="rot")
    with pytest.raises(ConfigError, match="fixed 8x12 input.*--tta flip"):
        keras_predictor(_model((8, 12, 3)), tta="d4")
    keras_predictor(_model((8, 12, 3)), tta="flip")  # mirrors keep the shape
    with pytest.raises(ConfigError, match=r"--tta flip.*\.tflite"):
        predictor(tmp_path / "model.tflite", tta="flip")
