"""Frame sources (camera, video file, network stream, image folder, single image, generated frames) and the
threaded reader that hands the consumer the latest frame only, so latency stays bounded on a slow device.

Every source is an iterable of ``Frame`` (BGR uint8, as OpenCV decodes). Problems a user can fix raise
``SourceError``; a broken frame or unreadable image is logged (by name) and skipped; a camera or stream that drops
out is reopened with exponential backoff.

Example:
    >>> source = open_source("0")                     # doctest: +SKIP
    >>> with ThreadedReader(source) as reader:        # doctest: +SKIP
    ...     while (item := reader.get()) is not None:
    ...         frame, captured_at = item
"""

import collections
import contextlib
import logging
import os
import threading
import time
from typing import NamedTuple

import cv2
import numpy as np

from kseg.errors import KsegError

log = logging.getLogger("kseg.edge")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(KsegError):
    """A frame source cannot be opened, or a live source was lost for good."""


class Frame(NamedTuple):
    """One frame: ``image`` is ``(H, W, 3)`` uint8 BGR; ``name`` identifies it in messages and output files."""

    index: int
    name: str
    image: np.ndarray


def open_source(spec, reopen_attempts=5, reopen_delay=0.5):
    """Open what ``--source`` names: a camera index (``"0"``), an rtsp/http URL, a video file, an image folder or
    a single image.

    Raises:
        SourceError: the file or folder does not exist, holds no images, or OpenCV cannot open it.
    """
    spec = str(spec)
    if spec.isdigit():
        return CaptureSource(int(spec), live=True, reopen_attempts=reopen_attempts, reopen_delay=reopen_delay)
    if spec.lower().startswith(STREAM_PREFIXES):
        return CaptureSource(spec, live=True, reopen_attempts=reopen_attempts, reopen_delay=reopen_delay)
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {spec}")
        return ImageSource(paths)
    if not os.path.isfile(spec):
        raise SourceError(f"source not found: {spec} (give a camera index, a URL, a video, an image or a folder)")
    if spec.lower().endswith(IMAGE_EXTENSIONS):
        return ImageSource([spec])
    return CaptureSource(spec, live=False)


CV_LOG_ERROR = 2  # cv2.setLogLevel's level that keeps errors, drops warnings
_CV_LOG_LOCK = threading.Lock()


@contextlib.contextmanager
def opencv_log_level(level):
    """OpenCV's log level lowered to ``level`` (never raised) while the block runs, unless the user chose one with
    ``OPENCV_LOG_LEVEL``. The level is process-wide and the capture and writer threads both lower it: one block at
    a time, so that neither restores the other's level."""
    with _CV_LOG_LOCK:
        old = cv2.getLogLevel()
        if "OPENCV_LOG_LEVEL" not in os.environ:
            cv2.setLogLevel(min(old, level))
        try:
            yield
        finally:
            cv2.setLogLevel(old)


@contextlib.contextmanager
def yield_to_inference():
    """While the block runs, the calling thread is a batch thread (Linux ``SCHED_BATCH``): it keeps its share of the
    CPU but never preempts a running thread when it wakes up. The capture, drawing and writing threads run so, so
    that they fill the gaps of the inference threads instead of cutting into their invokes (on 2 cores, with the
    MediaPipe selfie model at 640x480, 1 thread: the pipeline at 0.89 of the bare invoke rate instead of 0.70;
    docs/edge.md). Elsewhere, or where the policy cannot be set, nothing changes."""
    try:
        previous = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or a policy this thread may not leave (SCHED_FIFO, say)
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, *previous)


class CaptureSource:
    """Frames from ``cv2.VideoCapture`` (or a look-alike made by ``opener``).

    Args:
        target: camera index, URL or video path.
        live: a camera or stream: a failed read means the device dropped out, so it is reopened (up to
            ``reopen_attempts`` times, waiting ``reopen_delay`` seconds, doubling each time, at most 8 s).
            For a file a failed read is the end.
        opener: ``target -> capture`` with ``isOpened()``, ``read()`` and ``release()``; the hook for fake cameras.
    """

    def __init__(self, target, live, reopen_attempts=5, reopen_delay=0.5, opener=cv2.VideoCapture):
        self.target, self.live, self.name = target, live, f"camera {target}" if isinstance(target, int) else target
        self.reopen_attempts, self.reopen_delay, self._opener = reopen_attempts, reopen_delay, opener
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(f"cannot open source {self.name} (is it connected / a video OpenCV can decode?)")
        fps = self._cap.get(cv2.CAP_PROP_FPS) if hasattr(self._cap, "get") else 0.0
        self.fps = fps if 1.0 <= fps <= 240.0 else 30.0  # cameras and streams often report 0 or nonsense

    def _open(self):
        # A camera that is not there makes each of OpenCV's backends log why; kseg-edge's own message (and the
        # reopening log) says it once.
        try:
            with opencv_log_level(0):
                cap = self._opener(self.target)
        except cv2.error:
            return None
        if cap.isOpened():
            if self.live and hasattr(cap, "set"):
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # a driver queue of old frames would add their age to latency
            return cap
        cap.release()
        return None

    def _reopen(self):
        self._cap.release()
        delay = self.reopen_delay
        for attempt in range(1, self.reopen_attempts + 1):
            log.warning("%s lost; reopening in %.1f s (attempt %d/%d)", self.name, delay, attempt,
                        self.reopen_attempts)
            time.sleep(delay)
            cap = self._open()
            if cap is not None:
                log.warning("%s reopened", self.name)
                return cap
            delay = min(2 * delay, 8.0)
        raise SourceError(f"{self.name} lost and not reopened after {self.reopen_attempts} attempts; "
                          "check the cable, power or URL")

    def __iter__(self):
        index = 0
        while True:
            try:
                ok, image = self._cap.read()
            except cv2.error:
                ok, image = False, None
            if not ok:
                if not self.live:
                    return
                self._cap = self._reopen()
                continue
            name = f"frame_{index:06d}"
            image = as_bgr(image)
            if image is None:
                log.warning("%s: broken frame %s skipped", self.name, name)
            else:
                yield Frame(index, name, image)
            index += 1

    def close(self):
        self._cap.release()


class ImageSource:
    """Frames from image files, in the given order; unreadable files are logged and skipped."""

    live = False
    fps = 30.0

    def __init__(self, paths):
        self.paths = list(paths)
        self.name = (os.path.dirname(self.paths[0]) or ".") if len(self.paths) > 1 else self.paths[0]

    def __iter__(self):
        for index, path in enumerate(self.paths):
            image = as_bgr(cv2.imread(path, cv2.IMREAD_UNCHANGED))
            if image is None:
                log.warning("cannot read image %s (not an image, or corrupt); skipped", path)
                continue
            yield Frame(index, os.path.splitext(os.path.basename(path))[0], image)

    def close(self):
        pass


class GeneratedSource:
    """Frames made by ``make_frame(index) -> (H, W, 3) uint8 BGR`` (benchmarks, tests); ``count=None`` runs on."""

    live = False
    name = "generated"

    def __init__(self, make_frame, count=None, fps=30.0):
        self.make_frame, self.count, self.fps = make_frame, count, fps

    def __iter__(self):
        index = 0
        while self.count is None or index < self.count:
            yield Frame(index, f"frame_{index:06d}", self.make_frame(index))
            index += 1

    def close(self):
        pass


def as_bgr(image):
    """A decoded image as ``(H, W, 3)`` uint8 BGR (gray and BGRA converted, 16-bit scaled), or None if unusable."""
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        return None
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        return None
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    return None


class Channel:
    """A hand-over between two threads.

    ``keep_all=False``: holds only the newest item; a put replaces an unread one (counted in ``dropped``), so a
    slow consumer always gets the freshest frame. ``keep_all=True``: a bounded queue; a put waits while it is full,
    so every item arrives and memory stays bounded. ``close(error)`` ends it: ``get`` returns what is left, then
    None (or raises ``error``).
    """

    def __init__(self, keep_all=False, capacity=2):
        self.keep_all, self.dropped = keep_all, 0
        self._items = collections.deque(maxlen=None if keep_all else 1)
        self._capacity = capacity if keep_all else 1
        self._cond = threading.Condition()
        self._closed, self._error = False, None

    def put(self, item):
        """Hand over ``item``; False once the channel is closed (the producer should stop)."""
        with self._cond:
            while self.keep_all and len(self._items) >= self._capacity and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout=None):
        """The next item; None at the end. Raises the producer's error, or TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise TimeoutError("no frame arrived in time")
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            if self._error is not None:
                raise self._error
            return None

    def close(self, error=None):
        with self._cond:
            if not self._closed:
                self._closed, self._error = True, error
            self._cond.notify_all()


def start_stage(name, work, inbox, outbox):
    """Run ``work`` in a daemon thread: ``work(outbox)`` for a producer (``inbox=None``), else
    ``outbox.put(work(item))`` for each item from ``inbox``. Closes ``outbox`` at the end, passing an error on
    (and closes ``inbox`` so the stage before stops too).

    A list of callables runs one thread each, all taking from ``inbox`` (parallel workers, e.g. one interpreter
    each); ``outbox`` closes when the last of them ends, or at once on an error. Returns the threads.
    """
    works = list(work) if isinstance(work, (list, tuple)) else [work]
    lock, running = threading.Lock(), [len(works)]

    def finish(error=None):
        with lock:
            running[0] -= 1
            last = running[0] == 0
        if error is not None or last:
            outbox.close(error)

    def loop(fn):
        try:
            if inbox is None:
                fn(outbox)
            else:
                while (item := inbox.get()) is not None:
                    if not outbox.put(fn(item)):
                        break
            finish()
        except BaseException as e:  # handed to the consuming thread, which re-raises it
            finish(e)
        finally:
            if inbox is not None:
                inbox.close()

    threads = [threading.Thread(target=loop, args=(fn,), name=name if len(works) == 1 else f"{name}-{i}", daemon=True)
               for i, fn in enumerate(works)]
    for thread in threads:
        thread.start()
    return threads


class ThreadedReader:
    """Reads a source in a background thread.

    Args:
        source: a frame source.
        keep_all: deliver every frame (files, evaluation, writing); default: the latest only for live sources,
            every frame for files.
        pace: for files with ``keep_all=False``, release frames at the file's frame rate, like a camera would.
        prepare: a function run on each ``(Frame, captured_at)`` in the reader thread; ``get()`` then returns what
            it returns (the pipeline pre-processes there: one thread hand-over less a frame).

    ``get()`` returns ``(Frame, captured_at)`` (``time.perf_counter()`` seconds) or None at the end.
    """

    def __init__(self, source, keep_all=None, pace=False, prepare=None):
        self.source, self._prepare = source, prepare
        keep_all = not source.live if keep_all is None else keep_all
        self.channel = Channel(keep_all=keep_all)
        self._pace = pace and not keep_all and not source.live
        (self._thread,) = start_stage("kseg-capture", self._read, None, self.channel)

    def _read(self, outbox):
        start = time.perf_counter()
        with yield_to_inference():
            for frame in self.source:
                if self._pace:
                    time.sleep(max(0.0, start + frame.index / self.source.fps - time.perf_counter()))
                item = (frame, time.perf_counter())
                if not outbox.put(item if self._prepare is None else self._prepare(item)):
                    return

    def get(self, timeout=None):
        return self.channel.get(timeout)

    @property
    def dropped(self):
        """Frames replaced before anyone read them."""
        return self.channel.dropped

    def close(self):
        self.channel.close()
        self._thread.join(timeout=2.0)
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
