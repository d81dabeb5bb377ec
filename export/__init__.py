"""Optimise and convert trained kseg models: TFLite float32 / float16 / dynamic / full int8."""
