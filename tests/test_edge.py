"""The edge runtime on a tiny model converted here: masks equal the references, the CLI writes what it read,
sources survive disconnects and broken files, and nothing pulls in TensorFlow."""

import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import numpy as np
import pytest

from edge import cli
from edge.interpreter import load_interpreter, run_once
from edge.pipeline import Output, Pipeline
from edge.runtime import Result, Segmenter, class_ids
from edge.sources import (CaptureSource, Channel, GeneratedSource, SourceError, open_source, opencv_log_level,
                          yield_to_inference)
from kseg import viz
from kseg.errors import ModelFileError

SIZE = 32  # model input
FRAME = (60, 80)  # (H, W) of the test frames: another aspect ratio than the model's
HUD_ROWS = 20  # the FPS text covers the top rows of every view
NO_GUI = re.search(r"GUI:\s+NONE", cv2.getBuildInformation()) is not None  # opencv-python-headless


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 3-class two-conv model (normalising inside, as the contract says), as Keras, float32 and int8 TFLite."""
    keras = pytest.importorskip("keras")
    from export.convert import to_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="tiny_preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="tiny_conv1")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="tiny_logits")(x))
    binary = keras.Model(inputs, keras.layers.Conv2D(1, 1, name="tiny_binary_logits")(x))
    rng = np.random.default_rng(0)
    representative = [rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.float32) for _ in range(8)]
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, (m, kw) in {"float32": (model, {"mode": "float32"}),
                          "int8": (model, {"mode": "int8", "representative_data": representative}),
                          "int8io": (model, {"mode": "int8", "representative_data": representative,
                                             "io_dtype": "int8"}),
                          "binary": (binary, {"mode": "float32"})}.items():
        paths[name] = str(folder / f"tiny_{name}.tflite")
        with open(paths[name], "wb") as f:
            f.write(to_tflite(m, **kw))
    return {"keras": model, "keras_binary": binary, **paths}


def scene(seed, size=FRAME):
    """A smooth random BGR frame: blobs of many classes after the tiny model."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8), size[::-1])


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, FRAME[::-1])
    for i in range(12):
        writer.write(scene(i))
    writer.release()
    return path


def keras_reference(model, x, box, frame_size):
    """Keras argmax on the runtime's own model input, cut to the image box and resized as the runtime does."""
    ids = np.argmax(model(x.astype(np.float32), training=False).numpy()[0], axis=-1).astype(np.uint8)
    top, left, h, w = box
    return cv2.resize(ids[top:top + h, left:left + w], frame_size[::-1], interpolation=cv2.INTER_NEAREST)


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_float_mask_equals_keras_argmax(models, resize):
    seg = Segmenter(models["float32"], num_threads=1, resize=resize)
    frame = scene(1)
    x, box = seg.preprocess(frame)
    assert x.dtype == np.float32 and x.shape == (1, SIZE, SIZE, 3)
    assert box == ((0, 0, SIZE, SIZE) if resize == "stretch" else (4, 0, 24, SIZE))  # 80x60 -> 32x24, padded
    top, left, h, w = box
    rgb = cv2.cvtColor(cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(x[0, top:top + h], rgb)  # raw [0, 255] pixels, RGB
    assert (x[0, :top] == 0).all() and (x[0, top + h:] == 0).all()
    result = seg.segment(frame)
    assert result.mask.shape == FRAME and result.mask.dtype == np.uint8
    assert set(result.timings) == {"pre", "invoke", "post"}
    expected = keras_reference(models["keras"], x, box, FRAME)
    assert len(np.unique(expected)) >= 2  # a meaningful comparison: not one flat class
    np.testing.assert_array_equal(result.mask, expected)


def test_int8_mask_equals_direct_invoke(models):
    seg = Segmenter(models["int8"], num_threads=1)
    details = seg.input_details
    assert details["dtype"] == np.uint8 and details["quantization"] == (1.0, 0)
    frame = scene(2)
    x, box = seg.preprocess(frame)
    rgb = cv2.cvtColor(cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(x[0], rgb)  # camera bytes go in unchanged
    raw = run_once(load_interpreter(models["int8"], num_threads=1), x)[0]
    expected = cv2.resize(np.argmax(raw, axis=-1).astype(np.uint8), FRAME[::-1], interpolation=cv2.INTER_NEAREST)
    mask = seg.segment(frame).mask
    np.testing.assert_array_equal(mask, expected)
    float_mask = Segmenter(models["float32"], num_threads=1).segment(frame).mask
    assert (mask == float_mask).mean() > 0.9  # int8 is close to float: quantization did not wreck the model


def test_int8_input_with_zero_point_is_quantized(models):
    seg = Segmenter(models["int8io"], num_threads=1)
    assert seg.input_details["dtype"] == np.int8 and seg.input_details["quantization"] == (1.0, -128)
    frame = scene(6, (SIZE, SIZE))
    x, _ = seg.preprocess(frame)
    expected_input = (cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.int16) - 128).astype(np.int8)
    np.testing.assert_array_equal(x[0], expected_input)
    raw = run_once(load_interpreter(models["int8io"], num_threads=1), x)[0]
    np.testing.assert_array_equal(seg.segment(frame).mask, np.argmax(raw, axis=-1))


@pytest.mark.parametrize("output_kind, threshold", [("logits", 0.0), ("probabilities", 0.5)])
def test_one_channel_output_is_thresholded(models, tmp_path, output_kind, threshold):
    path = str(tmp_path / "binary.tflite")
    shutil.copy(models["binary"], path)
    with open(path + ".json", "w") as f:
        json.dump({"output_kind": output_kind}, f)
    seg = Segmenter(path, num_threads=1)
    assert seg.num_classes == 1 and seg.labels == ["0", "1"]
    frame = scene(7, (SIZE, SIZE))
    x, _ = seg.preprocess(frame)
    scores = models["keras_binary"](x, training=False).numpy()[0, ..., 0]
    expected = scores > threshold
    assert 0 < expected.mean() < 1
    np.testing.assert_array_equal(seg.segment(frame).mask, expected)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float32])
@pytest.mark.parametrize("num_classes", [2, 21, 256, 300])
def test_class_ids_equal_numpy_argmax_ties_included(dtype, num_classes):
    low = 0 if dtype == np.uint8 else -3
    scores = np.random.default_rng(num_classes).integers(low, low + 5, (19, 23, num_classes)).astype(dtype)
    for view in (scores, scores[2:15, 3:17]):  # the letterbox crop is a strided view
        ids = class_ids(view)
        np.testing.assert_array_equal(ids, np.argmax(view, axis=-1))
        assert ids.dtype == (np.uint8 if num_classes <= 256 else np.int32)


def test_drawing_colours_every_class_id_255_included(models):
    """255 is the data's ignore index, but in a model's mask it is the 256th class: the runtime draws it."""
    seg = Segmenter(models["float32"], num_threads=1)
    seg.palette = viz.palette(256)
    frame, mask = scene(8), np.full(FRAME, 255, np.uint8)
    result = Result(mask, {})
    expected = cv2.addWeighted(frame, 0.5, viz.colorize(mask, seg.palette[:, ::-1], ignore_index=None), 0.5, 0.0)
    np.testing.assert_array_equal(seg.draw(frame, result, 0.5), expected)
    assert (cli.render(frame, result, "mask", seg, 0.5) == seg.palette[255, ::-1]).all()


def test_smoothing_is_ema_of_scores(models):
    seg = Segmenter(models["float32"], num_threads=1, smoothing=0.75)
    a, b = scene(3, (SIZE, SIZE)), scene(4, (SIZE, SIZE))
    scores = [seg.invoke(seg.preprocess(f)[0]) for f in (a, b)]
    first = seg.segment(a).mask
    np.testing.assert_array_equal(first, np.argmax(scores[0], axis=-1))
    smoothed = seg.segment(b).mask
    np.testing.assert_array_equal(smoothed, np.argmax(0.75 * scores[0] + 0.25 * scores[1], axis=-1))
    assert not np.array_equal(smoothed, np.argmax(scores[1], axis=-1))
    seg.reset()
    np.testing.assert_array_equal(seg.segment(b).mask, np.argmax(scores[1], axis=-1))


def test_sidecar_metadata_and_overrides(models, tmp_path):
    path = str(tmp_path / "m.tflite")
    shutil.copy(models["float32"], path)
    meta = {"labels": ["bg", "road", "car"], "palette": [[0, 0, 0], [10, 20, 30], [40, 50, 60]],
            "input_size": [SIZE, SIZE], "normalization": "raw", "output_kind": "logits"}
    with open(path + ".json", "w") as f:
        json.dump(meta, f)
    seg = Segmenter(path)
    assert seg.labels == ["bg", "road", "car"] and seg.palette[1].tolist() == [10, 20, 30]
    assert Segmenter(path, labels=["a", "b", "c"]).labels == ["a", "b", "c"]

    meta["normalization"] = "unit"  # a [0, 1] model: the runtime divides by 255
    with open(path + ".json", "w") as f:
        json.dump(meta, f)
    x, _ = Segmenter(path).preprocess(scene(5))
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5

    meta["input_size"] = [64, 64]
    with open(path + ".json", "w") as f:
        json.dump(meta, f)
    with pytest.raises(ModelFileError, match="input_size"):
        Segmenter(path)
    with pytest.raises(ModelFileError, match="2 labels"):
        Segmenter(models["float32"], labels=["a", "b"])


def test_flags_stand_in_for_missing_metadata(models, video, tmp_path, capsys):
    """A model exported elsewhere has no metadata: the flags say how to feed it and read it."""
    mean, std = [120.0, 110.0, 100.0], [60.0, 50.0, 40.0]
    x, _ = Segmenter(models["float32"], normalization={"mean": mean, "std": std}).preprocess(scene(5))
    raw, _ = Segmenter(models["float32"]).preprocess(scene(5))
    np.testing.assert_allclose(x, (raw - np.float32(mean)) / np.float32(std), rtol=1e-6)
    assert Segmenter(models["float32"], output_kind="probabilities")._threshold == 0.5
    with pytest.raises(ModelFileError, match="output_kind"):
        Segmenter(models["float32"], output_kind="scores")
    out = str(tmp_path / "views")
    argv = ["run", models["float32"], "--source", video, "--out", out, "--headless", "--max-frames", "2",
            "--normalization", "120,110,100/60,50,40", "--output-kind", "logits"]
    assert cli.main(argv) == 0 and len(os.listdir(out)) == 2
    with pytest.raises(SystemExit):
        cli.main(argv[:-4] + ["--normalization", "1,2/3,4"])
    assert "MEAN/STD" in capsys.readouterr().err


def test_interpolation_from_flag_or_metadata(models, video, tmp_path, capsys):
    """Frames shrink with area averaging, as kseg's data pipeline does, unless the model (its metadata or the flag)
    was trained on bilinear shrinking, as MediaPipe's are."""
    frame = scene(7)
    expected = {name: cv2.cvtColor(cv2.resize(frame, (SIZE, SIZE), interpolation=flag), cv2.COLOR_BGR2RGB)
                for name, flag in (("area", cv2.INTER_AREA), ("linear", cv2.INTER_LINEAR))}
    assert not np.array_equal(expected["area"], expected["linear"])
    for kw, name in (({}, "area"), ({"interpolation": "linear"}, "linear")):
        np.testing.assert_array_equal(Segmenter(models["float32"], **kw).preprocess(frame)[0][0], expected[name])
    path = str(tmp_path / "m.tflite")
    shutil.copy(models["float32"], path)
    for value in ("linear", "cubic"):
        with open(path + ".json", "w") as f:
            json.dump({"interpolation": value}, f)
        if value == "linear":
            np.testing.assert_array_equal(Segmenter(path).preprocess(frame)[0][0], expected["linear"])
            np.testing.assert_array_equal(Segmenter(path, interpolation="area").preprocess(frame)[0][0],
                                          expected["area"])
        else:
            with pytest.raises(ModelFileError, match="interpolation must be one of"):
                Segmenter(path)
    out = str(tmp_path / "views")
    argv = ["run", models["float32"], "--source", video, "--out", out, "--headless", "--max-frames", "1"]
    assert cli.main(argv + ["--interpolation", "linear"]) == 0 and len(os.listdir(out)) == 1
    with pytest.raises(SystemExit):
        cli.main(argv + ["--interpolation", "cubic"])
    assert "--interpolation" in capsys.readouterr().err


def test_cli_run_writes_every_frame_of_a_video(models, video, tmp_path, capsys):
    out = str(tmp_path / "out.avi")
    assert cli.main(["run", models["float32"], "--source", video, "--out", out, "--headless", "--threads", "1"]) == 0
    assert re.search(r"12 frames in .* 0 dropped, peak RSS \d+ MB; wrote ", capsys.readouterr().out)
    seg = Segmenter(models["float32"], num_threads=1)
    src, dst = cv2.VideoCapture(video), cv2.VideoCapture(out)
    count = 0
    while True:
        ok, frame = src.read()
        ok_out, written = dst.read()
        assert ok == ok_out, "output and input differ in frame count"
        if not ok:
            break
        count += 1
        expected = viz.overlay(frame, seg.segment(frame).mask, 0.5, seg.palette)
        below_text = slice(HUD_ROWS, None)
        diff = np.abs(written[below_text].astype(int) - expected[below_text]).mean()
        assert diff < 15, f"frame {count}: output is not the overlay (mean diff {diff:.1f} after MJPG)"
        assert np.abs(written[below_text].astype(int) - frame[below_text]).mean() > 4 * diff  # colours drawn
    assert count == 12


def test_on_screen_line_refreshes_twice_a_second_and_is_drawn_from_a_cache(monkeypatch):
    """The FPS / latency / invoke line holds for half a second (its means over that window; the first frame's has
    no rate, and the first rate comes 10 frames later), and the cached stamp draws what two anti-aliased putText
    passes (dark outline, white text) draw, within rounding, on the top rows only; a frame narrower than the text
    gets it clipped."""
    clock = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def tick(meter, step_s, invoke_ms, latency_ms):
        clock[0] += step_s
        result = Result(np.zeros((2, 2), np.uint8), {"invoke": invoke_ms}, None)
        meter.tick(Output(None, result, clock[0] - latency_ms / 1e3))
        return meter.label

    slow = cli.Meter()  # 8 frames a second: the 0.5-s refresh comes first
    assert tick(slow, 0.125, 3.0, 20.0) == "20 ms  invoke 3.0 ms"  # 100.125 s: no rate from one frame
    assert [tick(slow, 0.125, 5.0, 40.0) for _ in range(3)] == ["20 ms  invoke 3.0 ms"] * 3  # the line holds
    assert tick(slow, 0.125, 7.0, 40.0) == "8.0 FPS  40 ms  invoke 5.5 ms"  # 0.5 s on: 4 frames
    fast = cli.Meter()  # 100 frames a second: the first rate after 10 frames, then twice a second
    tick(fast, 0.01, 3.0, 20.0)
    lines = [tick(fast, 0.01, 3.0, 20.0) for _ in range(10)]
    assert lines[-2:] == ["20 ms  invoke 3.0 ms", "100.0 FPS  20 ms  invoke 3.0 ms"]
    assert len({tick(fast, 0.01, 4.0, 20.0) for _ in range(49)}) == 1
    assert tick(fast, 0.01, 4.0, 20.0) == "100.0 FPS  20 ms  invoke 4.0 ms"

    text = "30.0 FPS  12 ms  invoke 3.2 ms"
    for w, h in ((640, 480), (1280, 720)):
        frame = np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)
        direct, cached = frame.copy(), frame.copy()
        scale = max(0.35, w / 1400)
        for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(direct, text, (6, int(8 + 22 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness,
                        cv2.LINE_AA)
        cli.draw_text(cached, text)
        assert np.abs(direct.astype(int) - cached).max() <= 6
        changed = np.argwhere((cached != frame).any(axis=-1))
        assert len(changed) > 200 and changed[:, 0].max() < 40
    small = np.zeros((HUD_ROWS, 30, 3), np.uint8)
    cli.draw_text(small, text)
    assert small.max() > 200  # the first letters, anti-aliased at the small scale


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux scheduling policies")
def test_helper_threads_yield_to_inference_and_get_their_policy_back():
    """``yield_to_inference`` makes the calling thread a batch thread for the block, and restores the policy it
    had, also when the block raises."""
    before = os.sched_getscheduler(0)
    with pytest.raises(RuntimeError):
        with yield_to_inference():
            assert os.sched_getscheduler(0) == os.SCHED_BATCH
            raise RuntimeError("a frame loop that fails")
    assert os.sched_getscheduler(0) == before


def test_cli_run_folder_skips_corrupt_image(models, tmp_path, capsys):
    folder, out = tmp_path / "images", tmp_path / "views"
    folder.mkdir()
    frames = {f"img{i}": scene(10 + i) for i in range(3)}
    for name, frame in frames.items():
        cv2.imwrite(str(folder / f"{name}.png"), frame)
    (folder / "img1b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (folder / "notes.txt").write_text("not an image, not listed")
    code = cli.main(["run", models["float32"], "--source", str(folder), "--out", str(out), "--headless",
                     "--mode", "side"])
    assert code == 0
    captured = capsys.readouterr()
    assert "img1b.png" in captured.err and "skipped" in captured.err
    assert "3 frames" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    seg = Segmenter(models["float32"])
    for name, frame in frames.items():
        view = cv2.imread(str(out / f"{name}.png"))
        expected = np.concatenate([frame, viz.overlay(frame, seg.segment(frame).mask, 0.5, seg.palette)], axis=1)
        np.testing.assert_array_equal(view[HUD_ROWS:], expected[HUD_ROWS:])  # PNG: exact


class FlakyCamera:
    """A cv2.VideoCapture look-alike: yields ``frames`` then fails a read, like an unplugged USB camera."""

    def __init__(self, opened, frames):
        self.opened, self.frames = opened, list(frames)

    def isOpened(self):
        return self.opened

    def read(self):
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def get(self, prop):
        return 0.0

    def release(self):
        self.opened = False


def test_camera_dropout_is_reopened_and_the_loop_goes_on(models, caplog):
    # first open: 3 frames (one broken), then lost; 1st reopen fails; 2nd gives 3 frames; then lost for good
    broken = np.zeros((0, 0, 3), np.uint8)
    captures = iter([FlakyCamera(True, [scene(20), broken, scene(21)]), FlakyCamera(False, []),
                     FlakyCamera(True, [scene(22), scene(23), scene(24)])])
    source = CaptureSource(0, live=True, reopen_attempts=3, reopen_delay=0.01,
                           opener=lambda target: next(captures, FlakyCamera(False, [])))
    seen = []
    with caplog.at_level(logging.WARNING, logger="kseg.edge"), Pipeline(source, Segmenter(models["int8"]),
                                                                          keep_all=True) as pipe:
        with pytest.raises(SourceError, match="camera 0 lost and not reopened after 3 attempts"):
            for out in pipe:
                assert out.result.mask.shape == FRAME
                seen.append(out.frame.index)
    assert seen == [0, 2, 3, 4, 5]  # frame 1 was broken; numbering goes on across the reopen
    assert "broken frame frame_000001 skipped" in caplog.text and "camera 0 reopened" in caplog.text


def test_a_missing_camera_is_reported_in_one_line(capfd, monkeypatch):
    # each of OpenCV's capture backends logs its own failure; kseg-edge says it once, unless OPENCV_LOG_LEVEL
    # asks OpenCV to speak
    monkeypatch.delenv("OPENCV_LOG_LEVEL", raising=False)
    with pytest.raises(SourceError, match="cannot open source camera 99"):
        CaptureSource(99, live=True)
    assert capfd.readouterr().err == ""
    level = cv2.getLogLevel()
    monkeypatch.setenv("OPENCV_LOG_LEVEL", "INFO")
    with opencv_log_level(0):
        assert cv2.getLogLevel() == level


def test_latest_only_channel_drops_stale_frames():
    latest = Channel(keep_all=False)
    for i in range(5):
        assert latest.put(i)
    assert latest.get() == 4 and latest.dropped == 4
    latest.close()
    assert latest.get() is None and not latest.put(5)

    every = Channel(keep_all=True, capacity=2)
    every.put(0)
    every.put(1)
    with pytest.raises(TimeoutError):
        Channel(keep_all=True).get(timeout=0.01)
    every.close(error=SourceError("gone"))
    assert [every.get(), every.get()] == [0, 1]  # what was queued still arrives, then the error
    with pytest.raises(SourceError, match="gone"):
        every.get()


def test_live_reader_delivers_fresh_frames_to_a_slow_consumer(models):
    source = GeneratedSource(lambda i: np.full((*FRAME, 3), i % 256, np.uint8), count=400)
    source.live = True  # a camera: frames keep coming whether or not anyone is ready
    with Pipeline(source, Segmenter(models["int8"])) as pipe:
        indices = [out.frame.index for out in pipe]
    assert indices == sorted(indices) and indices[-1] == 399
    assert len(indices) + pipe.dropped == 400 and pipe.dropped > 0


def test_pipeline_splits_the_work_over_threads_and_matches_segment(models):
    """Pre-processing runs in the capture thread, as a batch thread that yields to inference (Linux); the inference
    thread only invokes, at the normal policy; the argmax / resize back runs in the consuming thread. Masks (with
    temporal smoothing, whose state follows the frame order) equal those of ``Segmenter.segment`` frame by
    frame."""
    frames = [np.random.default_rng(i).integers(0, 256, (*FRAME, 3), dtype=np.uint8) for i in range(6)]
    reference = Segmenter(models["int8"], smoothing=0.5)
    expected = [reference.segment(f).mask for f in frames]
    seg, where, policies = Segmenter(models["int8"], smoothing=0.5), {}, {}
    for name in ("preprocess", "invoke", "finish"):
        def traced(*args, _name=name, _call=getattr(seg, name), **kwargs):
            where.setdefault(_name, set()).add(threading.current_thread().name)
            if hasattr(os, "sched_getscheduler"):
                policies.setdefault(_name, set()).add(os.sched_getscheduler(0))
            return _call(*args, **kwargs)
        setattr(seg, name, traced)
    with Pipeline(GeneratedSource(lambda i: frames[i], count=len(frames)), seg) as pipe:
        outputs = list(pipe)
    assert where == {"preprocess": {"kseg-capture"}, "invoke": {"kseg-infer"},
                     "finish": {threading.current_thread().name}}
    if sys.platform == "linux":
        assert policies["preprocess"] == {os.SCHED_BATCH} and policies["invoke"] == {os.SCHED_OTHER}
    for out, mask in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(out.result.mask, mask)
        assert set(out.result.timings) == {"pre", "invoke", "post"}


def _slow_on_black(segmenter, delay, threads=None):
    """``segmenter`` whose invoke of an all-black input takes ``delay`` seconds longer, and whose replicas do
    the same; ``threads`` collects the names of the threads that invoked."""
    threads, invoke = set() if threads is None else threads, segmenter.invoke

    def slow(x):
        threads.add(threading.current_thread().name)
        if not x.any():
            time.sleep(delay)
        return invoke(x)

    segmenter.invoke = slow
    segmenter.replica = lambda: _slow_on_black(Segmenter(segmenter.model_path, smoothing=segmenter.smoothing),
                                               delay, threads)[0]
    return segmenter, threads


def test_workers_segment_frames_in_parallel_and_keep_their_order(models):
    """Two interpreters take frames in turn; a frame that takes longer (the black one) does not overtake or get
    overtaken in the output, and the smoothing state follows the frame order: masks equal ``segment``'s."""
    frames = [np.random.default_rng(i).integers(0, 256, (*FRAME, 3), dtype=np.uint8) for i in range(8)]
    frames[1][:] = 0
    reference = Segmenter(models["int8"], smoothing=0.5)
    expected = [reference.segment(f).mask for f in frames]
    seg, threads = _slow_on_black(Segmenter(models["int8"], smoothing=0.5), delay=0.3)
    with Pipeline(GeneratedSource(lambda i: frames[i], count=len(frames)), seg, workers=2) as pipe:
        outputs = list(pipe)
    assert [out.frame.index for out in outputs] == list(range(len(frames)))
    for out, mask in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(out.result.mask, mask)
    assert threads == {"kseg-infer-0", "kseg-infer-1"}


def test_live_workers_drop_a_frame_overtaken_in_inference(models):
    """Live: a frame that comes out of inference after a later one was shown is dropped (and counted), so the
    view never steps back in time."""
    frames = [np.full((*FRAME, 3), 0 if i == 0 else 100, np.uint8) for i in range(30)]

    def slow_camera(i):
        time.sleep(0.02)  # one frame at a time reaches the workers: frame 0 is not replaced before one takes it
        return frames[i]

    source = GeneratedSource(slow_camera, count=len(frames))
    source.live = True
    seg, _ = _slow_on_black(Segmenter(models["int8"]), delay=0.3)
    with Pipeline(source, seg, workers=2) as pipe:
        indices = [out.frame.index for out in pipe]
    assert indices == sorted(indices) and 0 not in indices and indices[-1] == len(frames) - 1
    assert len(indices) + pipe.dropped == len(frames)


def test_replica_has_its_own_interpreter_and_the_same_output(models):
    seg = Segmenter(models["int8"])
    twin = seg.replica()
    x, _ = seg.preprocess(np.random.default_rng(0).integers(0, 256, (*FRAME, 3), dtype=np.uint8))
    assert twin.interpreter is not seg.interpreter
    np.testing.assert_array_equal(twin.invoke(x), seg.invoke(x))


def test_workers_need_a_cpu_interpreter(models, video, capsys, monkeypatch):
    """Replicas (``--workers``) of a model on the Coral are refused; where the delegate does not load (no
    libedgetpu here) the model runs on the CPU and its replicas work."""
    fallback = Segmenter(models["int8"], edgetpu=True)
    assert "EdgeTPU delegate unavailable" in capsys.readouterr().out and not fallback.edgetpu
    assert fallback.replica().interpreter is not fallback.interpreter
    edgetpu = Segmenter(models["int8"])
    edgetpu.edgetpu = True  # as if the Coral delegate had loaded
    with pytest.raises(ValueError, match="one EdgeTPU runs one interpreter"):
        edgetpu.replica()
    with pytest.raises(ValueError, match="at least 1"):
        Pipeline(GeneratedSource(lambda i: None, count=0), Segmenter(models["int8"]), workers=0)
    monkeypatch.setattr(cli, "_segmenter", lambda *a, **k: edgetpu)
    assert cli.main(["run", models["int8"], "--source", video, "--headless", "--edgetpu", "--workers", "2"]) == 2
    assert "--workers needs the CPU" in capsys.readouterr().err


def test_sink_writes_in_order_and_reports_a_failed_write(tmp_path, monkeypatch):
    sink = cli.Sink(str(tmp_path / "views"), 30.0)
    for i in range(5):
        sink.write(f"f{i}", np.full((8, 8, 3), i, np.uint8))
    sink.close()
    assert [cv2.imread(str(tmp_path / "views" / f"f{i}.png"))[0, 0, 0] for i in range(5)] == list(range(5))

    monkeypatch.setattr(cv2, "imwrite", lambda *a: False)  # a full disk, a removed folder
    sink = cli.Sink(str(tmp_path / "views"), 30.0)
    with pytest.raises(cli.OutputError, match="cannot write .*f0.png"):
        for i in range(50):  # the writer's error surfaces at a later write (the queue holds two), never a hang
            sink.write(f"f{i}", np.zeros((8, 8, 3), np.uint8))
        sink.close()


@pytest.mark.parametrize("name, jpeg", [("out.avi", True), ("out.mp4", False)])
def test_sink_writes_a_video_that_reads_back(tmp_path, capfd, name, jpeg):
    """An .avi is encoded frame by frame with cv2.imencode and only muxed by FFmpeg; other containers go through
    the codec's own writer. Both keep every frame, in order, and an .avi stays silent on OpenCV 4.12 (which logs
    a false 'Failed to write frame' for each pre-encoded frame)."""
    frames = [scene(i) for i in range(6)]
    sink = cli.Sink(str(tmp_path / name), 30.0)
    for i, frame in enumerate(frames):
        sink.write(str(i), frame)
    assert sink._jpeg is jpeg
    sink.close()
    cap, read = cv2.VideoCapture(str(tmp_path / name)), []
    while (frame := cap.read()[1]) is not None:
        read.append(frame)
    assert len(read) == len(frames)
    diffs = np.array([[np.abs(back.astype(int) - frame).mean() for frame in frames] for back in read])
    assert (diffs.argmin(axis=1) == np.arange(len(frames))).all(), "frames lost their order"
    assert diffs.diagonal().max() < 8  # JPEG's chroma subsampling on these saturated 80x60 scenes: about 6
    assert "Failed to write" not in capfd.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "missing.tflite", "--source", "0", "--headless"], "model file not found: missing.tflite"),
    (["run", "{garbage}", "--source", "0", "--headless"], "is not a valid TFLite model"),
    (["run", "{model}", "--source", "no/such/clip.mp4", "--headless"], "source not found: no/such/clip.mp4"),
    pytest.param(["run", "{model}", "--source", "{video}"], "cannot open a window",
                 marks=pytest.mark.skipif(not NO_GUI, reason="this OpenCV can open windows")),
    (["bench", "missing.tflite"], "model file not found"),
])
def test_cli_errors_are_one_line_exit_2(models, video, tmp_path, capsys, argv, message):
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    argv = [a.format(garbage=garbage, model=models["float32"], video=video) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("kseg-edge: error:")] == [err.strip().splitlines()[-1]]


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--workers", "-1"), ("--max-frames", "two"),
                                         ("--alpha", "3")])
def test_cli_rejects_out_of_range_numbers(models, video, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", models["int8"], "--source", video, "--headless", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_cli_bench_prints_every_stage_with_its_ratio_to_invoke(models, capsys):
    argv = ["bench", models["int8"], "--threads", "1", "2", "--frames", "12", "--size", "64x48", "80x60"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+x\d+\s", line)]
    stages = {"1": ("invoke", "sequential", "pipeline", "live"),
              "2": ("invoke", "sequential", "pipeline", "live", "workers", "wlive")}
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (size, threads, stage) for size in ("64x48", "80x60") for threads in ("1", "2") for stage in stages[threads]]
    invoke_fps = {(r[0], r[1]): float(r[5]) for r in rows if r[2] == "invoke"}
    for r in rows:
        p50, p90, fps, ratio = map(float, r[3:7])
        assert 0 < p50 <= p90 and fps > 0
        # ratio has 3 decimals and FPS one, and this tiny model invokes 100-1000x faster than a frame decodes
        assert abs(ratio - fps / invoke_fps[(r[0], r[1])]) <= 0.0006, r
        assert r[2] != "invoke" or ratio == 1.0
    assert re.search(r"latency p50 [\d.]+ / p90 [\d.]+ intervals", out)
    # each thread count, and its --workers, in a fresh `kseg-edge run` process: a real peak of a real run
    peaks = re.search(r"peak RSS of kseg-edge run \(64x48 video, MJPG out\): 1 thread\(s\) (\d+) MB, "
                      r"2 thread\(s\) (\d+) MB, --workers 2 --threads 1 (\d+) MB$", out, re.M)
    assert peaks and all(20 < int(mb) < 1000 for mb in peaks.groups()), out[-500:]


def test_cli_bench_takes_turns_and_prints_medians(models, capsys, monkeypatch):
    """``--repeats 3``: every stage is measured three times, each against the invoke rate just before it; a row
    gives the median FPS and the median of the three ratios, not one FPS over another measured far apart."""
    invoke_rates, pipeline_rates = iter([100.0, 200.0, 400.0]), iter([90.0, 100.0, 360.0])
    monkeypatch.setattr(cli, "_invoke_times", lambda *a: [1e3 / next(invoke_rates)] * 4)
    monkeypatch.setattr(cli, "_sequential", lambda *a: (50.0, [10.0, 20.0], 0))
    monkeypatch.setattr(cli, "_threaded", lambda *a: (next(pipeline_rates) if not a[3] else 30.0, [5.0, 6.0], 1))
    assert cli.main(["bench", models["int8"], "--frames", "4", "--repeats", "3", "--size", "64x48"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[2]: line.split() for line in out.splitlines() if re.match(r"\s+\d+x\d+\s", line)}
    assert rows["invoke"][5:7] == ["200.0", "1.000"]
    assert rows["pipeline"][5:7] == ["100.0", "0.900"]  # ratios 0.9, 0.5, 0.9; FPS / median invoke would be 0.5
    assert rows["sequential"][5:7] == ["50.0", "0.250"]
    assert "3 dropped" in " ".join(rows["live"])


def test_open_source_kinds(video, tmp_path):
    assert open_source(video).live is False
    image = tmp_path / "one.jpg"
    cv2.imwrite(str(image), scene(30))
    frames = list(open_source(str(image)))
    assert len(frames) == 1 and frames[0].name == "one" and frames[0].image.shape == (*FRAME, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "empty"))


def test_runtime_never_imports_tensorflow(models, video, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import edge.cli, edge.runtime, edge.sources, kseg.viz
        seg = edge.runtime.Segmenter({models["int8"]!r})
        assert seg.segment(np.zeros((48, 64, 3), np.uint8)).mask.shape == (48, 64)
        assert edge.cli.main(["run", {models["float32"]!r}, "--source", {video!r}, "--headless",
                              "--out", {str(tmp_path / "views")!r}]) == 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print("HEAVY", heavy)
        sys.exit(1 if heavy else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=str(pathlib.Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list((tmp_path / "views").iterdir())) == 12


def _resident_kb(path):
    """Resident kB of this process's maps of ``path`` (Linux ``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(os.path.realpath(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux /proc needed to read resident pages")
def test_interpreter_leaves_the_model_file_to_the_page_cache_and_still_runs(tmp_path):
    """After loading, the interpreter's map of a 0.6 MB model holds at most a tenth of it in resident pages (XNNPACK
    has its own packed weights), and the outputs equal those of an interpreter reading the model from memory."""
    keras = pytest.importorskip("keras")
    from export.convert import to_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(256, 3, padding="same", activation="relu")(x)
    path = tmp_path / "wide.tflite"
    path.write_bytes(to_tflite(keras.Model(inputs, keras.layers.Conv2D(3, 1)(x)), mode="float32"))
    interp = load_interpreter(str(path), num_threads=1)
    assert _resident_kb(path) * 1024 <= path.stat().st_size / 10, (_resident_kb(path), path.stat().st_size)
    x = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    reference = run_once(load_interpreter(model_content=path.read_bytes(), num_threads=1), x)
    np.testing.assert_array_equal(run_once(interp, x), reference)


@pytest.mark.parametrize("environ, calls", [({}, [(-8, 1)]), ({"MALLOC_ARENA_MAX": "4"}, [])])
def test_malloc_arenas_are_capped_unless_the_user_set_them(monkeypatch, environ, calls):
    """``kseg-edge`` caps glibc's arenas at one before its threads start (M_ARENA_MAX is mallopt's -8); a user's
    ``MALLOC_ARENA_MAX`` is left to glibc."""
    from edge import interpreter

    made = []

    class FakeLibc:
        def mallopt(self, param, value):
            made.append((param, value))
            return 1

    monkeypatch.setattr(interpreter, "_glibc", FakeLibc)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    interpreter.limit_malloc_arenas()
    assert made == calls



@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux /proc needed to read resident pages")
def test_release_file_pages_drops_clean_file_pages_and_keeps_modified_ones(tmp_path):
    """``release_file_pages()`` (run by ``kseg-edge`` after its imports and before its frame loop) leaves the
    resident pages of read-only file maps to the page cache, while a read-only map with privately modified pages
    (as relocated library data is) keeps its data and the libraries keep working. In a fresh process, since it
    touches every library of the process."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 4096)  # 1 MB, 256 pages
    script = textwrap.dedent(f"""
        import ctypes, mmap, re, sys
        import cv2, numpy as np
        sys.path.insert(0, {str(pathlib.Path(__file__).resolve().parents[1])!r})
        from edge.interpreter import release_file_pages

        def resident_kb(path):
            maps = re.split(r"\\n(?=[0-9a-f]+-[0-9a-f]+ )", open("/proc/self/smaps").read())
            return sum(int(re.search(r"^Rss:\\s+(\\d+)", m, re.M).group(1)) for m in maps
                       if m.split("\\n", 1)[0].endswith(path))

        f = open({str(blob)!r}, "rb")
        clean = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        modified = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        assert sum(clean[::4096]) + sum(modified[::4096]) == 0  # faults in every page of both
        modified[:4] = b"kseg"
        libc = ctypes.CDLL("libc.so.6")
        address = ctypes.addressof(ctypes.c_char.from_buffer(modified))
        assert libc.mprotect(ctypes.c_void_p(address), ctypes.c_size_t(len(modified)), mmap.PROT_READ) == 0
        image = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
        before = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)
        release_file_pages()
        assert modified[:5] == b"kseg\\x04", "a privately modified map lost its data"
        assert np.array_equal(cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA), before)
        print(resident_kb({str(blob)!r}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # the modified map keeps its 1 MB resident; the clean map gives all of its pages back
    assert 1024 <= int(out.stdout.split()[-1]) <= 1024 + 64, out.stdout


def _cached_pages(path):
    """How many pages of ``path`` the page cache holds (``mincore`` on a map of it that touches nothing)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    size = os.path.getsize(path)
    vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec) == 0, ctypes.get_errno()
        libc.munmap(ctypes.c_void_p(address), ctypes.c_size_t(size))
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


def _cached_file(path, size=1 << 20):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())  # the page cache drops clean pages only
    return path.read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page cache control (fadvise, mincore) is Linux's")
def test_release_file_pages_lets_the_page_cache_forget_the_released_file(tmp_path):
    """A file read whole sits in the page cache in large folios, which a fault maps whole (docs/edge.md): after
    ``release_file_pages(path)`` (as ``load_interpreter`` does for the model) its pages have left the cache, to come
    back from the disk in read-around pieces, and the map still reads the same bytes."""
    import mmap

    from edge.interpreter import release_file_pages

    control = tmp_path / "control.bin"
    _cached_file(control)
    fd = os.open(control, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if _cached_pages(control):
        pytest.skip(f"the file system of {tmp_path} keeps its pages cached (tmpfs): nothing to forget there")
    blob = tmp_path / "model.bin"
    data = _cached_file(blob)
    with open(blob, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[::4096] == data[::4096]  # faults every page in
        assert _cached_pages(blob) == 256
        release_file_pages(str(blob))
        assert _cached_pages(blob) == 0
        assert m[:] == data
