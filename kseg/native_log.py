"""What TensorFlow's C++ side prints where ``TF_CPP_MIN_LOG_LEVEL`` does not reach it.

TensorFlow 2.21 logs through absl, which nobody initialises: a dozen start-up lines on every import (oneDNN, CUDA
probing, CPU features) ignore the level, and the TFLite converter prints its settings with ``printf``. kseg's
commands set ``TF_CPP_MIN_LOG_LEVEL=2`` unless the user set it, and hold these lines back; a user who wants them
sets ``TF_CPP_MIN_LOG_LEVEL=0``.
"""

import contextlib
import os
import sys
import tempfile

__all__ = ["quiet_requested", "held_native_output", "import_tensorflow", "start_tensorflow"]


def quiet_requested():
    """True when ``TF_CPP_MIN_LOG_LEVEL`` asks for warnings and errors only (2) or less."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")) >= 2
    except ValueError:
        return False


@contextlib.contextmanager
def held_native_output(fds=(1, 2)):
    """Sends what is written to the file descriptors ``fds`` while the block runs (by C++ code too) to a temporary
    file: dropped when the block succeeds, written back when it raises, since it then may explain the failure.
    Does nothing unless :func:`quiet_requested`.
    """
    held = None
    if quiet_requested():
        # no writable temporary folder (a read-only device image): better chatty than broken
        with contextlib.suppress(OSError):
            held = tempfile.TemporaryFile()
    if held is None:
        yield
        return
    saved = []
    with held:
        _flush()
        try:
            for fd in fds:
                saved.append((fd, os.dup(fd)))
                os.dup2(held.fileno(), fd)
            yield
        except BaseException:
            _restore(saved)
            held.seek(0)
            text = held.read()
            if text:
                os.write(2, text)
            raise
        finally:
            _restore(saved)


def import_tensorflow():
    """Imports TensorFlow with its start-up lines held back (:func:`held_native_output`)."""
    with held_native_output():
        import tensorflow as tf
    return tf


def start_tensorflow(devices=True):
    """Imports TensorFlow as a command does: ``TF_CPP_MIN_LOG_LEVEL=2`` unless the user set it, the start-up lines
    held back and, with ``devices``, its devices created with their CUDA probing lines held back too ("failed call
    to cuInit" on a machine without a usable GPU). A multi-worker strategy must be set up before the devices are
    created: ``devices=False`` leaves that to it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = import_tensorflow()
    if devices:
        with held_native_output():
            tf.config.list_logical_devices()
    return tf


def _flush():
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _restore(saved):
    """Puts the original descriptors back (once: the list is emptied)."""
    _flush()
    while saved:
        fd, copy = saved.pop()
        os.dup2(copy, fd)
        os.close(copy)
