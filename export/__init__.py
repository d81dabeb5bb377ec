"""Optimise and convert trained kseg models: TFLite float32 / float16 / dynamic / full int8."""

import kseg  # noqa: F401  (sets its environment defaults, e.g. oneDNN, before TensorFlow loads)
