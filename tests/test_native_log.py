"""kseg.native_log: TensorFlow's C++ lines held back where TF_CPP_MIN_LOG_LEVEL does not reach them."""

import os

import numpy as np
import pytest

from kseg.native_log import held_native_output


def _native_write(text):
    os.write(2, text.encode())  # below sys.stderr, as C++ code writes


def test_held_output_is_dropped_when_the_block_succeeds(monkeypatch, capfd):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with held_native_output():
        _native_write("I0000 start-up chatter\n")
    print("after")
    out, err = capfd.readouterr()
    assert err == "" and out == "after\n"


def test_held_output_is_shown_when_the_block_fails(monkeypatch, capfd):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with pytest.raises(RuntimeError):
        with held_native_output():
            _native_write("E0000 the reason it failed\n")
            raise RuntimeError("boom")
    assert "the reason it failed" in capfd.readouterr().err
    _native_write("descriptor restored\n")
    assert capfd.readouterr().err == "descriptor restored\n"


@pytest.mark.parametrize("level", ["0", "1", None])
def test_nothing_is_held_unless_the_user_asked_for_quiet(monkeypatch, capfd, level):
    if level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    with held_native_output():
        _native_write("visible\n")
    assert capfd.readouterr().err == "visible\n"


def test_int8_conversion_prints_nothing_when_quiet(monkeypatch, capfd):
    # the converter prints its settings with printf and warns about input statistics the representative data gives
    import keras

    from export.convert import to_tflite

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    x = keras.Input((8, 8, 3))
    model = keras.Model(x, keras.layers.Conv2D(2, 3, padding="same")(x))
    calibration = [np.random.default_rng(i).uniform(0, 255, (8, 8, 3)).astype(np.float32) for i in range(4)]
    capfd.readouterr()
    assert to_tflite(model, "int8", representative_data=calibration)[4:8] == b"TFL3"
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)


def test_without_a_temporary_folder_output_is_simply_not_held(monkeypatch, capfd):
    import tempfile

    def no_space():
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setattr(tempfile, "TemporaryFile", no_space)
    with held_native_output():
        _native_write("still works\n")
    assert capfd.readouterr().err == "still works\n"
