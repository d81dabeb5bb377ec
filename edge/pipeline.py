"""Capture and inference in their own threads, so throughput is that of the slowest stage, not of their sum."""

import functools
import itertools
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
    """capture thread (decoding and pre-processing) -> inference thread(s) -> the caller, which iterates ``Output``
    (and draws, shows, writes).

    The inference threads only run the interpreter: resizing the frame to the model's input happens before them, in
    the capture thread, and the argmax and resize back to the frame (``segmenter.finish``) happen in the caller's
    thread as each output is taken. The capture thread yields to them (``edge.sources.yield_to_inference``; the
    caller's loop should too), so on a machine with a core to spare the frame rate is the interpreter's.

    Args:
        source: a frame source (``edge.sources``).
        segmenter: an ``edge.runtime.Segmenter`` or ``InstanceSegmenter``.
        keep_all: every frame reaches the caller (files, writing); default: latest-only for live sources.
        pace: play a file at its frame rate, dropping frames inference cannot keep up with (a camera rehearsal).
        workers: inference threads, each with its own interpreter (``segmenter.replica()``) working on its own
            frame. Frames still come out in capture order (live sources: a frame older than one already out is
            dropped). Two 1-thread interpreters get through more frames than one 2-thread interpreter, at the
            latency of a 1-thread invoke (docs/edge.md).
    """

    def __init__(self, source, segmenter, keep_all=None, pace=False, workers=1):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        models = [segmenter] + [segmenter.replica() for _ in range(workers - 1)]
        self.segmenter, self._order, self._late = segmenter, itertools.count(), 0
        self.reader = ThreadedReader(source, keep_all=keep_all, pace=pace, prepare=self._prepare)
        self._keep_all = self.reader.channel.keep_all
        self.results = Channel(keep_all=self._keep_all)
        self._threads = start_stage("kseg-infer", [functools.partial(self._infer, m) for m in models],
                                    self.reader.channel, self.results)

    def _prepare(self, item):
        frame, captured_at = item
        t = time.perf_counter()
        x, box = self.segmenter.preprocess(frame.image)
        return next(self._order), frame, captured_at, x, box, {"pre": 1e3 * (time.perf_counter() - t)}

    @staticmethod
    def _infer(model, item):
        order, frame, captured_at, x, box, timings = item
        t = time.perf_counter()
        raw = model.invoke(x)
        timings["invoke"] = 1e3 * (time.perf_counter() - t)
        return order, frame, captured_at, raw, box, timings

    def __iter__(self):
        pending, expected = {}, 0  # every frame kept: outputs wait here for the earlier frames still in inference
        while (item := self.results.get()) is not None:
            if self._keep_all:
                pending[item[0]] = item
                while expected in pending:
                    yield self._finish(pending.pop(expected))
                    expected += 1
            elif item[0] >= expected:
                expected = item[0] + 1
                yield self._finish(item)
            else:
                self._late += 1

    def _finish(self, item):
        _, frame, captured_at, raw, box, timings = item
        t = time.perf_counter()
        mask, instances = self.segmenter.finish(raw, frame.image.shape[:2], box)
        timings["post"] = 1e3 * (time.perf_counter() - t)
        return Output(frame, Result(mask, timings, instances), captured_at)

    @property
    def dropped(self):
        """Frames skipped because a later one arrived (or came out of inference) first; live sources only."""
        return self.reader.dropped + self.results.dropped + self._late

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
