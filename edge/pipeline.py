"""Capture, pre-processing and inference in their own threads, so throughput is that of the slowest stage, not of
their sum."""

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
    """capture thread -> pre-processing thread -> inference thread -> the caller, which iterates ``Output`` (and
    draws, shows, writes).

    The inference thread only runs the interpreter: resizing the frame to the model's input happens before it, in
    its own thread, and the argmax and resize back to the frame (``segmenter.finish``) happen in the caller's
    thread as each output is taken. So on a machine with a core to spare the frame rate is the interpreter's.

    Args:
        source: a frame source (``edge.sources``).
        segmenter: an ``edge.runtime.Segmenter`` or ``InstanceSegmenter``.
        keep_all: every frame reaches the caller (files, writing); default: latest-only for live sources.
        pace: play a file at its frame rate, dropping frames inference cannot keep up with (a camera rehearsal).
    """

    def __init__(self, source, segmenter, keep_all=None, pace=False):
        self.segmenter = segmenter
        self.reader = ThreadedReader(source, keep_all=keep_all, pace=pace)
        keep_all = self.reader.channel.keep_all
        self.inputs, self.results = Channel(keep_all=keep_all), Channel(keep_all=keep_all)
        self._threads = (start_stage("kseg-prepare", self._prepare, self.reader.channel, self.inputs),
                         start_stage("kseg-infer", self._infer, self.inputs, self.results))

    def _prepare(self, item):
        frame, captured_at = item
        t = time.perf_counter()
        x, box = self.segmenter.preprocess(frame.image)
        return frame, captured_at, x, box, {"pre": 1e3 * (time.perf_counter() - t)}

    def _infer(self, item):
        frame, captured_at, x, box, timings = item
        t = time.perf_counter()
        raw = self.segmenter.invoke(x)
        timings["invoke"] = 1e3 * (time.perf_counter() - t)
        return frame, captured_at, raw, box, timings

    def __iter__(self):
        while (item := self.results.get()) is not None:
            frame, captured_at, raw, box, timings = item
            t = time.perf_counter()
            mask, instances = self.segmenter.finish(raw, frame.image.shape[:2], box)
            timings["post"] = 1e3 * (time.perf_counter() - t)
            yield Output(frame, Result(mask, timings, instances), captured_at)

    @property
    def dropped(self):
        """Frames skipped because a later one arrived first (live sources only)."""
        return self.reader.dropped + self.inputs.dropped + self.results.dropped

    def close(self):
        self.results.close()
        for thread in reversed(self._threads):
            thread.join(timeout=2.0)
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def latency_ms(output):
    """Milliseconds from capture until now."""
    return 1e3 * (time.perf_counter() - output.captured_at)
