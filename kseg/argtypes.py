"""Argument types that ``kseg`` and ``kseg-edge`` share: a number out of range is refused by argparse, naming the
option, before any model loads."""

import argparse

__all__ = ["count", "fraction", "positive", "whole"]


def _number(text, kind, ok, expected):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def whole(text):
    """A whole number of at least 1 (threads, steps, images)."""
    return _number(text, int, lambda v: v >= 1, "a whole number of at least 1")


def count(text):
    """A whole number of at least 0 (how many pictures)."""
    return _number(text, int, lambda v: v >= 0, "a whole number of at least 0")


def fraction(text):
    """A number in [0, 1] (opacity, score threshold)."""
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "a number from 0 to 1")


def positive(text):
    """A number above 0 (minutes)."""
    return _number(text, float, lambda v: v > 0.0, "a number above 0")
