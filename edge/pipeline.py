"""Capture and inference in their own threads, so throughput is that of the slowest stage, not of their sum."""

import time
from typing import NamedTuple

from edge.runtime import Result
from edge.sources import Channel, Frame, ThreadedReader, start_stage


class Output(NamedTuple):
    """A segmented frame; ``captured_at`` is its ``time.perf_counter()`` capture time, for end-to-end latency."""

    frame: Frame
    result: Result
    captured_at: float


class Pipeline:
    """capture thread -> inference thread -> the caller, which iterates ``Output`` (and draws, shows, writes).

    Args:
        source: a frame source (``edge.sources``).
        segmenter: an ``edge.runtime.Segmenter`` (used by the inference thread only).
        keep_all: every frame reaches the caller (files, writing); default: latest-only for live sources.
        pace: play a file at its frame rate, dropping frames inference cannot keep up with (a camera rehearsal).
    """

    def __init__(self, source, segmenter, keep_all=None, pace=False):
        self.segmenter = segmenter
        self.reader = ThreadedReader(source, keep_all=keep_all, pace=pace)
        self.results = Channel(keep_all=self.reader.channel.keep_all)
        self._thread = start_stage("kseg-infer", self._infer, self.reader.channel, self.results)

    def _infer(self, item):
        frame, captured_at = item
        return Output(frame, self.segmenter.segment(frame.image), captured_at)

    def __iter__(self):
        while (out := self.results.get()) is not None:
            yield out

    @property
    def dropped(self):
        """Frames skipped because a later one arrived first (live sources only)."""
        return self.reader.dropped + self.results.dropped

    def close(self):
        self.results.close()
        self._thread.join(timeout=2.0)
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def latency_ms(output):
    """Milliseconds from capture until now."""
    return 1e3 * (time.perf_counter() - output.captured_at)
