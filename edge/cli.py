"""``kseg-edge``: live segmentation of a camera, stream, video or image folder, and a latency benchmark.

Usage:
    kseg-edge run MODEL.tflite --source 0|video.mp4|rtsp://..|folder [--out out.mp4|outdir] [--headless]
                  [--threads N] [--edgetpu] [--alpha A] [--letterbox] [--mode overlay|mask|side] [--smooth S]
                  [--labels FILE] [--realtime] [--max-frames N] [--score-threshold T]
    kseg-edge bench MODEL.tflite [--threads 1 2] [--frames N] [--repeats R] [--size 640x480 1280x720]

Live sources (cameras, streams) hand over the newest frame only; files are processed frame by frame
(``--realtime`` plays them at their frame rate and drops what inference cannot keep up with). A Mask R-CNN export
(metadata ``output_kind: instance``) shows each instance with its mask colour, contour, box, class and score. Errors
a user can fix are printed on one line, exit code 2.

Keys in the window: ``m`` next view (overlay / mask / side by side), ``s`` save the frame, ``q`` or Esc quit.
"""

import argparse
import contextlib
import functools
import logging
import os
import re
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

from edge.interpreter import limit_malloc_arenas, release_file_pages
from edge.pipeline import Pipeline, latency_ms
from edge.runtime import INTERPOLATIONS, open_model
from edge.sources import (CV_LOG_ERROR, CaptureSource, Channel, open_source, opencv_log_level, start_stage,
                          yield_to_inference)
from kseg import argtypes, viz
from kseg.errors import ConfigError, KsegError

MODES = ("overlay", "mask", "side")
VIDEO_EXTENSIONS = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
WINDOW = "kseg-edge"
JPEG_QUALITY = 90  # of the frames of a written .avi (Motion JPEG)
# OpenCV < 4.13 logs "Failed to write frame" for every pre-encoded frame it writes successfully (opencv PR 27737)
_RAW_WRITE_WARNS = tuple(int(v) for v in cv2.__version__.split(".")[:2]) < (4, 13)


class OutputError(KsegError):
    """The output file or folder cannot be written, or no window can be opened."""


def main(argv=None):
    """Entry point of ``kseg-edge``; returns the exit code (2 for errors a user can fix)."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # LiteRT's INFO lines are not for users (kseg.native_log)
    log = logging.getLogger("kseg.edge")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("kseg-edge: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    limit_malloc_arenas()
    release_file_pages()  # what the imports' read-ahead mapped (OpenCV, LiteRT, numpy): see its docstring
    # The pipeline's threads are the parallelism: OpenCV splitting a 0.1-ms resize over its own worker threads
    # wakes one on the core the interpreter runs on (0.25 ms of CPU a 640x480 frame, nearly all of it waking up
    # and going back to sleep; docs/edge.md).
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return args.func(args)
    except KsegError as e:
        print(f"kseg-edge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        cv2.setNumThreads(cv_threads)


def _parser():
    p = argparse.ArgumentParser(prog="kseg-edge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(s):
        s.add_argument("model", help="the .tflite model (its kseg metadata, or a MODEL.tflite.json beside it, "
                                     "supplies labels and palette)")
        s.add_argument("--edgetpu", action="store_true", help="use a Coral EdgeTPU when one is attached")
        s.add_argument("--letterbox", action="store_true", help="keep the aspect ratio (pad) instead of stretching")
        s.add_argument("--labels", help="class names, one a line (overrides the model's metadata)")
        s.add_argument("--normalization", type=_normalization,
                       help="input pixels: raw ([0, 255], the kseg contract), unit ([0, 1]) or MEAN/STD with three "
                            "comma-separated values each, e.g. 123.7,116.3,103.5/58.4,57.1,57.4 (overrides the "
                            "model's metadata; for models exported elsewhere)")
        s.add_argument("--interpolation", choices=INTERPOLATIONS,
                       help="how frames are shrunk to the model input: area (kseg's training pipeline, the default) "
                            "or linear (bilinear, as MediaPipe models were trained; overrides the metadata)")
        s.add_argument("--output-kind", choices=("logits", "probabilities", "instance"),
                       help="what the model outputs (overrides the metadata; one channel: threshold 0 or 0.5; "
                            "instance: a Mask R-CNN with the detection outputs)")
        s.add_argument("--score-threshold", type=argtypes.fraction, default=0.5,
                       help="instance models: detections scoring below this are not shown (default 0.5)")

    run = sub.add_parser("run", help="segment a camera, stream, video or image folder")
    model_args(run)
    run.add_argument("--source", required=True, help="camera index, rtsp/http URL, video file, image or folder")
    run.add_argument("--out", help="write the views: a video (.mp4 .avi .mkv .mov) or a folder of PNGs")
    run.add_argument("--headless", action="store_true", help="no window (on a device without a display)")
    run.add_argument("--threads", type=argtypes.whole, help="interpreter threads (default: LiteRT decides)")
    run.add_argument("--workers", type=argtypes.whole, default=1,
                     help="interpreters, each segmenting its own frame (default 1); on a CPU, --workers 2 "
                          "--threads 1 gets through more frames than --threads 2 (docs/edge.md)")
    run.add_argument("--alpha", type=argtypes.fraction, default=0.5, help="overlay opacity (default 0.5)")
    run.add_argument("--mode", choices=MODES, default="overlay", help="first view; key m cycles them")
    run.add_argument("--smooth", type=float, default=0.0, help="EMA weight of past frames' scores, [0, 1)")
    run.add_argument("--realtime", action="store_true",
                     help="play a video file at its frame rate and drop frames inference cannot keep up with "
                          "(default for files: process every frame)")
    run.add_argument("--max-frames", type=argtypes.whole, help="stop after this many frames")
    run.set_defaults(func=_run)

    bench = sub.add_parser("bench", help="latency and FPS of invoke alone and of the whole pipeline")
    model_args(bench)
    bench.add_argument("--threads", type=argtypes.whole, nargs="+", default=[1], help="thread counts to compare")
    bench.add_argument("--frames", type=argtypes.whole, default=200, help="frames per measurement (default 200)")
    bench.add_argument("--repeats", type=argtypes.whole, default=1,
                       help="measure everything this many times in turns; medians (default 1)")
    bench.add_argument("--size", type=_size, nargs="+", default=[(640, 480)],
                       help="generated frame sizes WxH (default 640x480)")
    bench.set_defaults(func=_bench)
    return p


def _size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be WxH like 640x480, got {text!r}")
    return w, h


def _normalization(text):
    if text in ("raw", "unit"):
        return text
    try:
        mean, std = ([float(v) for v in part.split(",")] for part in text.split("/"))
    except ValueError:
        mean = std = None
    if mean is None or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise argparse.ArgumentTypeError(f"normalization must be raw, unit or MEAN/STD with three values each "
                                         f"(std > 0), got {text!r}")
    return {"mean": mean, "std": std}


def _segmenter(args, threads, smoothing=0.0):
    try:
        return open_model(args.model, num_threads=threads, edgetpu=args.edgetpu,
                          resize="letterbox" if args.letterbox else "stretch", labels=args.labels,
                          smoothing=smoothing, normalization=args.normalization, output_kind=args.output_kind,
                          score_threshold=args.score_threshold, interpolation=args.interpolation)
    except ValueError as e:  # an option that does not fit this model (--smooth on an instance model, a threshold)
        raise ConfigError(f"{args.model}: {e}") from None


def render(image, result, mode, segmenter, alpha):
    """The view of one BGR frame: the overlay (class colours, or instances with contours, class and score), the
    colour mask alone, or frame and overlay side by side."""
    if mode == "mask":
        return viz.colorize(result.mask, segmenter.palette[:, ::-1], ignore_index=None)
    view = segmenter.draw(image, result, alpha)
    return np.concatenate([image, view], axis=1) if mode == "side" else view


def draw_text(image, text):
    """Draw ``text`` at the top left, scaled to the image, white on a dark outline (readable on any scene)."""
    patch, ink, rest = _text_stamp(text, image.shape[1])
    h, w = min(ink.shape[0], image.shape[0]), min(ink.shape[1], image.shape[1])  # clipped to a small frame
    roi = image[:h, :w]
    roi[:] = cv2.blendLinear(patch[:h, :w], roi, ink[:h, :w], rest[:h, :w])


@functools.lru_cache(maxsize=8)
def _text_stamp(text, width):
    """``text`` rendered once, as a colour patch and its per-pixel blend weights: the on-screen line changes twice a
    second, and anti-aliased text drawn on every frame costs 0.25 ms of a 640x480 frame's budget (Meter)."""
    scale = max(0.35, width / 1400)
    (tw, _), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
    origin = (6, int(8 + 22 * scale))
    size = (origin[1] + base + 3, origin[0] + tw + 3)
    outline, patch = np.zeros(size, np.uint8), np.zeros((*size, 3), np.uint8)
    cv2.putText(outline, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 3, cv2.LINE_AA)
    cv2.putText(patch, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    ink = outline.astype(np.float32) / 255.0
    return patch, ink, 1.0 - ink


class Sink:
    """Writes views to a video (created at the first frame, with its size) or to ``folder/NAME.png``.

    Encoding runs in its own thread (a frame costs as much to encode as a small model takes to run), behind a
    two-frame queue: a writer that falls behind slows the loop down instead of filling the memory. A write error
    is raised by the next ``write`` or by ``close``.
    """

    def __init__(self, path, fps):
        self.path, self.fps, self._video = path, fps, None
        self.fourcc = VIDEO_EXTENSIONS.get(os.path.splitext(path)[1].lower())
        folder = os.path.dirname(os.path.abspath(path)) if self.fourcc else path
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output folder {folder}: {e.strerror}") from None
        self._queue, self._status = Channel(keep_all=True), Channel()
        (self._thread,) = start_stage("kseg-write", self._drain, None, self._status)

    def write(self, name, view):
        """Queue ``view`` (not to be modified afterwards) for writing as ``name``."""
        if not self._queue.put((name, view)):
            self.close()

    def close(self):
        """Write what is queued, release the video; raises the writer's error, if any."""
        self._queue.close()
        self._thread.join()
        if self._video is not None:
            self._video.release()
            self._video = None
        self._status.get()

    def _drain(self, status):
        try:
            with yield_to_inference():
                while (item := self._queue.get()) is not None:
                    self._write(*item)
        finally:
            self._queue.close()  # a failed writer must not leave the loop blocked on a full queue

    def _write(self, name, view):
        if self.fourcc is None:
            if not cv2.imwrite(os.path.join(self.path, f"{name}.png"), view):
                raise OutputError(f"cannot write {os.path.join(self.path, name)}.png")
            return
        if self._video is None:
            self._size = (view.shape[1], view.shape[0])
            self._video, self._jpeg = open_video_writer(self.path, self.fourcc, self.fps, self._size)
        if (view.shape[1], view.shape[0]) != self._size:  # the view mode changed mid-video; a video has one size
            view = cv2.resize(view, self._size, interpolation=cv2.INTER_AREA)
        if not self._jpeg:
            self._video.write(view)
            return
        data = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
        # only around the write: a camera's warnings stay visible
        with opencv_log_level(CV_LOG_ERROR) if _RAW_WRITE_WARNS else contextlib.nullcontext():
            self._video.write(data.reshape(1, -1))


def open_video_writer(path, fourcc, fps, size):
    """``(writer, jpeg)``: an open ``cv2.VideoWriter`` for ``path``, and whether it takes JPEG bytes (of
    ``cv2.imencode``) instead of frames.

    A Motion-JPEG video is encoded by libjpeg-turbo (``cv2.imencode``) and only muxed by FFmpeg: FFmpeg's own MJPEG
    encoder costs 3.4x the CPU time a frame (7.4 against 2.2 ms at 1280x720 on this project's host, docs/edge.md),
    as much as a small model's invoke, on the same cores.
    """
    raw = getattr(cv2, "VIDEOWRITER_PROP_RAW_VIDEO", None)  # OpenCV >= 4.9 (a Pi's system OpenCV may be older)
    if fourcc == "MJPG" and raw is not None:
        video = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), fps, size, [raw, 1])
        if video.isOpened():
            return video, True
    video = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not video.isOpened():
        raise OutputError(f"cannot write video {path} (codec {fourcc}); try .avi or a folder")
    return video, False


class Meter:
    """Frame rate and end-to-end latencies of a run. ``label`` is the on-screen line (frame rate, latency and invoke
    time over the last half second): refreshed twice a second, as numbers that change every frame cannot be read.
    The first frame's line has no rate (its wait holds the start-up); the first rate comes 10 frames later."""

    REFRESH_S, FIRST_RATE_FRAMES = 0.5, 10

    def __init__(self):
        self.start = self._shown_at = time.perf_counter()
        self.latencies, self.label, self._invokes = [], "", []

    def tick(self, output):
        now = time.perf_counter()
        self.latencies.append(latency_ms(output))
        self._invokes.append(output.result.timings["invoke"])
        n = len(self._invokes)
        if len(self.latencies) == 1:
            self.label = f"{self.latencies[0]:.0f} ms  invoke {self._invokes[0]:.1f} ms"
        elif now - self._shown_at >= self.REFRESH_S or len(self.latencies) == self.FIRST_RATE_FRAMES + 1:
            self.label = (f"{n / max(now - self._shown_at, 1e-6):.1f} FPS  {np.mean(self.latencies[-n:]):.0f} ms  "
                          f"invoke {np.mean(self._invokes):.1f} ms")
        else:
            return
        self._shown_at, self._invokes = now, []

    def summary(self, dropped):
        n, wall = len(self.latencies), time.perf_counter() - self.start
        if not n:
            return "no frames processed"
        p50, p90 = np.percentile(self.latencies, [50, 90])
        return (f"{n} frames in {wall:.1f} s ({n / wall:.1f} FPS), latency p50 {p50:.1f} ms p90 {p90:.1f} ms, "
                f"{dropped} dropped, peak RSS {_peak_rss_mb():.0f} MB")


def _run(args):
    segmenter = _segmenter(args, args.threads, args.smooth)
    if args.workers > 1 and segmenter.edgetpu:
        raise ConfigError("--workers needs the CPU: one EdgeTPU runs one interpreter at a time (drop --workers)")
    source = open_source(args.source)
    sink = Sink(args.out, source.fps) if args.out else None
    if not args.headless:
        _open_window()
    meter, dropped = Meter(), 0
    try:
        with Pipeline(source, segmenter, keep_all=False if args.realtime else None, pace=args.realtime,
                      workers=args.workers) as pipe:
            try:  # Ctrl-C ends the run like q: the video is finalised and the stats printed
                _loop(pipe, segmenter, sink, meter, args)
            except KeyboardInterrupt:
                pass
            dropped = pipe.dropped
    finally:
        if sink:
            sink.close()
        if not args.headless:
            cv2.destroyAllWindows()
    print(f"kseg-edge: {meter.summary(dropped)}" + (f"; wrote {args.out}" if sink and meter.latencies else ""))
    return 0


def _loop(pipe, segmenter, sink, meter, args):
    mode = args.mode
    snapshots = args.out if sink and sink.fourcc is None else "."
    release_file_pages()  # the libraries' start-up code has run; the frame loop faults back what it uses
    with yield_to_inference():
        for out in pipe:
            view = render(out.frame.image, out.result, mode, segmenter, args.alpha)
            meter.tick(out)
            draw_text(view, meter.label)
            if sink:
                sink.write(out.frame.name, view)
            key = -1 if args.headless else _show(view)
            if key in (ord("q"), 27) or len(meter.latencies) == args.max_frames:
                return
            if key == ord("m"):
                mode = MODES[(MODES.index(mode) + 1) % len(MODES)]
            elif key == ord("s"):
                path = os.path.join(snapshots, f"kseg_edge_{out.frame.name}_{mode}.png")
                print(f"kseg-edge: saved {path}" if cv2.imwrite(path, view) else f"kseg-edge: cannot write {path}")


def _open_window():
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise OutputError("cannot open a window: this OpenCV has no GUI (opencv-python-headless, or no display); "
                          "use --headless, with --out to keep the views") from None


def _show(view):
    """Show ``view``; returns the key pressed, -1 for none."""
    cv2.imshow(WINDOW, view)
    key = cv2.waitKey(1)
    return key & 0xFF if key >= 0 else -1


def _bench(args):
    """Per frame size and thread count: bare invoke, a plain sequential OpenCV loop (the peer), the threaded
    pipeline exactly as ``run --headless --out`` drives it (decode, pre-process, invoke, post-process, overlay,
    write) and the same fed live (frames paced at 30 FPS, latest only) for capture-to-output latency. With N > 1
    threads, also ``workers`` / ``wlive``: the pipeline with N 1-thread interpreters (``run --workers N --threads
    1``), against the same N-thread invoke rate.

    With ``--repeats R`` every measurement is taken R times in turns, each stage's ratio against the invoke rate
    measured just before it; a row gives the median FPS and median ratio (on a shared machine the speed drifts
    between seconds, and a ratio of two runs far apart measures the drift)."""
    print(f"model {args.model}  {args.frames} frames per measurement, {args.repeats} turn(s); ratio = FPS / bare "
          "invoke FPS of the same turn (median over turns); latency = capture to written view (live: also in "
          "intervals of its output frame rate)")
    print(f"{'frame':>9} {'threads':>7}  {'stage':<11}{'p50 ms':>8}{'p90 ms':>8}{'FPS':>8}{'ratio':>7}")
    for w, h in args.size:
        with tempfile.TemporaryDirectory() as tmp:
            video = write_bench_video(os.path.join(tmp, "bench.avi"), (w, h), args.frames)
            for threads in args.threads:
                segmenter = _segmenter(args, threads)
                stages = {"sequential": functools.partial(_sequential, segmenter, video, os.path.join(tmp, "s.avi"))}
                # with several threads: also as many 1-thread interpreters, each on its own frame (--workers)
                for workers in (1, threads) if threads > 1 else (1,):
                    model = segmenter if workers == 1 else _segmenter(args, 1)
                    for live in (False, True):
                        stage = ("live" if live else "pipeline") if workers == 1 else ("wlive" if live else "workers")
                        stages[stage] = functools.partial(_threaded, model, video, os.path.join(tmp, "o.avi"), live,
                                                          workers)
                turns = {name: [] for name in ("invoke", *stages)}
                for _ in range(args.repeats):
                    times = _invoke_times(segmenter, video, args.frames)
                    invoke_fps = 1e3 / np.mean(times)
                    turns["invoke"].append((invoke_fps, times, 1.0, 0))
                    for name, measure in stages.items():
                        fps, latencies, dropped = measure()
                        turns[name].append((fps, latencies, fps / invoke_fps, dropped))
                for name, runs in turns.items():
                    _row(f"{w}x{h}", threads, name, runs)
    _bench_run_memory(args)
    return 0


def _bench_run_memory(args):
    """Peak RSS of ``kseg-edge run --headless --out X.avi`` on the first frame size, in fresh processes (this one
    holds every interpreter and pipeline the benchmark built), for each thread count and its ``--workers``."""
    w, h = args.size[0]
    flags = [args.model, *(["--edgetpu"] if args.edgetpu else []), *(["--letterbox"] if args.letterbox else []),
             "--score-threshold", str(args.score_threshold)]
    for name in ("labels", "interpolation", "output_kind"):
        if getattr(args, name) is not None:
            flags += [f"--{name.replace('_', '-')}", getattr(args, name)]
    if isinstance(args.normalization, dict):
        flags += ["--normalization", "/".join(",".join(map(str, args.normalization[k])) for k in ("mean", "std"))]
    elif args.normalization is not None:
        flags += ["--normalization", args.normalization]
    runs = [(f"{t} thread(s)", ["--threads", str(t)]) for t in args.threads]
    runs += [(f"--workers {t} --threads 1", ["--threads", "1", "--workers", str(t)]) for t in args.threads if t > 1]
    peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        video = write_bench_video(os.path.join(tmp, "bench.avi"), (w, h), args.frames)
        for title, extra in runs:
            cmd = [sys.executable, "-m", "edge.cli", "run", *flags, "--source", video, "--headless",
                   "--out", os.path.join(tmp, "out.avi"), *extra]
            done = subprocess.run(cmd, capture_output=True, text=True)
            found = re.search(r"peak RSS (\d+) MB", done.stdout)
            peaks.append(f"{title} {found.group(1)} MB" if found else f"{title} failed ({done.stderr.strip()[-200:]})")
    print(f"peak RSS of kseg-edge run ({w}x{h} video, MJPG out): " + ", ".join(peaks))


def _peak_rss_mb():
    """Peak resident memory of this process image. Linux's ``VmHWM`` starts afresh at exec, where ``ru_maxrss``
    carries over the parent's peak (a benchmark that loaded TensorFlow and then launched this reads 1.2 GB)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_bench_video(path, size, frames, fps=30.0):
    """A ``frames``-long MJPG video of smooth random scenes with a moving bright disc (decoding it is the capture
    stage of the benchmark)."""
    w, h = size
    rng = np.random.default_rng(0)
    scenes = [cv2.resize(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8), (w, h))
              for _ in range(4)]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for i in range(frames):
        frame = scenes[i % len(scenes)].copy()
        cv2.circle(frame, ((i * 7) % w, h // 2), h // 6, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def _invoke_times(segmenter, video, frames):
    cap = cv2.VideoCapture(video)
    _, image = cap.read()
    cap.release()
    x, _ = segmenter.preprocess(image)
    segmenter.interpreter.set_tensor(segmenter.input_details["index"], x)
    times = []
    for _ in range(frames + 5):  # the first invokes allocate and warm caches
        t = time.perf_counter()
        segmenter.interpreter.invoke()
        times.append(1e3 * (time.perf_counter() - t))
    return times[5:]


def _sequential(segmenter, video, out):
    """The peer: one loop doing every stage in turn, as a plain OpenCV script would."""
    cap, writer, latencies = cv2.VideoCapture(video), None, []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        ok, image = cap.read()
        if not ok:
            break
        view = render(image, segmenter.segment(image), "overlay", segmenter, 0.5)
        if writer is None:
            writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (view.shape[1], view.shape[0]))
        writer.write(view)
        latencies.append(1e3 * (time.perf_counter() - t))
    wall = time.perf_counter() - start
    cap.release()
    writer.release()
    return len(latencies) / wall, latencies, 0


def _threaded(segmenter, video, out, live, workers=1):
    """What ``run --headless --out`` does; ``live`` paces the file at its frame rate, latest frame only."""
    opts = argparse.Namespace(mode="overlay", alpha=0.5, headless=True, max_frames=None)
    sink, meter = Sink(out, 30.0), Meter()
    with Pipeline(CaptureSource(video, live=False), segmenter, keep_all=not live, pace=live, workers=workers) as pipe:
        _loop(pipe, segmenter, sink, meter, opts)
        dropped = pipe.dropped
    sink.close()
    return len(meter.latencies) / (time.perf_counter() - meter.start), meter.latencies, dropped


def _row(frame, threads, stage, runs):
    """One printed row from the turns ``(fps, latencies_ms, ratio, dropped)`` of a stage: median FPS and ratio,
    latency percentiles over every turn's frames; live rows also in frame intervals."""
    fps, ratio = np.median([r[0] for r in runs]), np.median([r[2] for r in runs])
    latencies = np.concatenate([r[1] for r in runs])
    p50, p90 = np.percentile(latencies, [50, 90])
    note = (f"  latency p50 {p50 * fps / 1e3:.2f} / p90 {p90 * fps / 1e3:.2f} intervals, "
            f"{sum(r[3] for r in runs)} dropped" if stage in ("live", "wlive") else "")
    print(f"{frame:>9} {threads:>7}  {stage:<11}{p50:>8.2f}{p90:>8.2f}{fps:>8.1f}{ratio:>7.3f}{note}")


if __name__ == "__main__":
    sys.exit(main())
