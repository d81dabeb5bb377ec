"""Mask R-CNN through the tools: draw_instances, the edge runtime's decoding of the detection contract (on a
hand-made model whose outputs are known), and train / evaluate / predict / export / kseg-edge run on a tiny config."""

import pathlib
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from edge import cli as edge_cli
from edge.runtime import InstanceSegmenter, Segmenter, open_model
from kseg import viz
from kseg.errors import ModelFileError
from kseg.instance.masks import paste_masks

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32  # input of the hand-made detection model
FRAME = (48, 80)  # (H, W) of the test frames: another aspect ratio than the model's
# The hand-made model's detections: two real ones and an empty slot; masks come from the image (channel i / 255)
BOXES = np.array([[4, 4, 20, 24], [10.5, 12, 30, 31.5], [0, 0, 0, 0]], np.float32)
SCORES = np.array([0.9, 0.6, 0.0], np.float32)
CLASSES = np.array([1, 2, 0], np.int32)
NAMES = ["background", "disc", "square"]


# -- draw_instances ------------------------------------------------------------------------------------------------

def _two_instances():
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 5:20, 5:20] = True
    masks[1, 15:30, 15:35] = True  # overlaps the first at [15:20, 15:20]
    return {"masks": masks, "boxes": np.array([[5, 5, 20, 20], [15, 15, 30, 35]], np.float32),
            "scores": np.array([0.4, 0.8], np.float32), "classes": np.array([1, 2], np.int32)}


def test_draw_instances_colours_contours_order_and_labels():
    image = np.full((40, 40, 3), 100, np.uint8)
    inst = _two_instances()
    colours = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    plain = viz.draw_instances(image, inst, NAMES, palette=colours, alpha=0.5, contours=False, show_boxes=False)
    assert plain.shape == image.shape and plain.dtype == np.uint8
    assert plain[10, 10].tolist() == [178, 50, 50]  # instance 0 blended in red: 100 * 0.5 + 255 * 0.5, rounded
    assert plain[25, 30].tolist() == [50, 50, 178]  # instance 1 in blue
    assert plain[17, 17].tolist() == [50, 50, 178]  # overlap: the higher score (instance 1) lies on top
    assert (plain[35:, :] == 100).all() and (plain[:, :4] == 100).all()  # outside every mask: the image
    bgr = viz.draw_instances(image, inst, NAMES, palette=colours, contours=False, show_boxes=False, order="bgr")
    np.testing.assert_array_equal(bgr, plain[..., ::-1])  # the palette is RGB; a BGR frame gets it swapped

    outlined = viz.draw_instances(image, inst, NAMES, palette=colours, show_boxes=False)
    assert outlined[25, 34].tolist() == [0, 0, 255]  # the right edge of instance 1: its full colour
    assert outlined[25, 25].tolist() == plain[25, 25].tolist()  # interiors stay blended

    boxed = {**inst, "boxes": np.array([[3, 3, 23, 23], [15, 15, 30, 35]], np.float32)}  # box 0 around its mask
    labelled = viz.draw_instances(image, boxed, NAMES, palette=colours)
    assert labelled[22, 12].tolist() == [255, 0, 0]  # box 0's bottom edge (rows 3..22) in its colour
    assert outlined[22, 12].tolist() == [100, 100, 100]
    # no room above box 0: its label "disc 0.40" sits inside the box's top, white ink on red
    ink = np.all(labelled[3:20, 4:40] > 200, axis=-1)
    assert ink.sum() >= 10 and not np.all(outlined[3:20, 4:40] > 200, axis=-1).any()
    with pytest.raises(ValueError, match="masks"):
        viz.draw_instances(image, {"masks": np.zeros((1, 10, 10), bool)})
    with pytest.raises(ValueError, match="scores"):
        viz.draw_instances(image, {**inst, "scores": [0.5]})


def test_draw_instances_with_nothing_returns_the_image():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = viz.draw_instances(image, {"masks": np.zeros((0, 20, 30), bool), "boxes": np.zeros((0, 4)),
                                     "scores": np.zeros(0), "classes": np.zeros(0, int)})
    np.testing.assert_array_equal(out, image)


# -- the edge runtime on a hand-made detection model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A model with the detection contract's outputs: fixed boxes, scores and classes, and masks that are the
    image's channels (/ 255) resized to 28 x 28, converted to float32 TFLite with instance metadata."""
    keras = pytest.importorskip("keras")
    import tensorflow as tf

    from export.metadata import embed_metadata

    image = keras.Input((SIZE, SIZE, 3), batch_size=1, name="image")

    def contract(x):
        zero = keras.ops.sum(x) * 0.0  # ties the constants to the input, as a network's outputs are
        masks = keras.ops.transpose(keras.ops.image.resize(x / 255.0, (28, 28)), (0, 3, 1, 2))
        return {"boxes": keras.ops.convert_to_tensor(BOXES)[None] + zero,
                "scores": keras.ops.convert_to_tensor(SCORES)[None] + zero,
                "classes": keras.ops.convert_to_tensor(CLASSES)[None],
                "masks": masks, "num_detections": keras.ops.convert_to_tensor(np.array([2], np.int32))}

    outputs = keras.layers.Lambda(contract, name="contract")(image)
    model = keras.Model(image, {k: keras.layers.Identity(name=k)(v) for k, v in outputs.items()})
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    folder = tmp_path_factory.mktemp("detector")
    (folder / "plain.tflite").write_bytes(data)  # no metadata: a model exported elsewhere
    path = folder / "detector.tflite"
    path.write_bytes(embed_metadata(data, {"output_kind": "instance", "labels": NAMES, "num_classes": 3,
                                           "input_size": [SIZE, SIZE], "normalization": "raw"}))
    return str(path)


def _scene(seed):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (FRAME[0] // 8, FRAME[1] // 8, 3), dtype=np.uint8), FRAME[::-1])


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_instance_runtime_maps_boxes_and_pastes_masks(detector, resize):
    seg = open_model(detector, num_threads=1, resize=resize, score_threshold=0.5)
    assert isinstance(seg, InstanceSegmenter) and seg.labels == NAMES and seg.num_classes == 3
    frame = _scene(1)
    x, (top, left, nh, nw) = seg.preprocess(frame)
    det = seg.invoke(x)
    assert det["boxes"].shape == (3, 4) and det["masks"].shape == (3, 28, 28)
    np.testing.assert_allclose(det["boxes"], BOXES)
    result = seg.segment(frame)
    inst = result.instances
    # both real detections score >= 0.5; the empty slot (class 0) is never shown
    np.testing.assert_array_equal(inst["classes"], [1, 2])
    np.testing.assert_allclose(inst["scores"], SCORES[:2])
    # boxes go from input pixels to frame pixels: minus the letterbox offset, times frame / image-in-input size
    sy, sx = FRAME[0] / nh, FRAME[1] / nw
    expected = (BOXES[:2] - [top, left, top, left]) * [sy, sx, sy, sx]
    expected = np.clip(expected, 0, [FRAME[0], FRAME[1], FRAME[0], FRAME[1]])
    np.testing.assert_allclose(inst["boxes"], expected, rtol=1e-6, atol=1e-5)
    # masks: the model's 28 x 28 probabilities (channels of its own input / 255), pasted at the frame's size
    probs = cv2.resize(x[0] / 255.0, (28, 28), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    reference = paste_masks(probs[:2], expected, FRAME)
    assert inst["masks"].shape == (2, *FRAME)
    # TFLite and OpenCV resize at 28 x 28 differ by float rounding only: pixels right at 0.5 may flip
    assert (inst["masks"] != reference).mean() < 0.01
    assert result.mask.shape == FRAME and set(np.unique(result.mask)) <= {0, 1, 2}
    first, second = inst["masks"]
    assert (first & second).any()  # the two overlap; there the higher score (class 1, 0.9) wins
    assert (result.mask[first] == 1).all() and (result.mask[second & ~first] == 2).all()
    assert (result.mask[~first & ~second] == 0).all()

    only_best = open_model(detector, num_threads=1, resize=resize, score_threshold=0.7).segment(frame).instances
    np.testing.assert_array_equal(only_best["classes"], [1])


def test_instance_model_without_metadata_needs_output_kind(detector):
    with pytest.raises(ValueError, match="smoothing"):
        open_model(detector, smoothing=0.5)
    plain = str(pathlib.Path(detector).with_name("plain.tflite"))
    with pytest.raises(ModelFileError, match="instance"):  # without metadata it is taken for a semantic model
        open_model(plain)
    seg = open_model(plain, output_kind="instance", labels=NAMES)
    assert isinstance(seg, InstanceSegmenter) and seg.num_classes is None and seg.labels == NAMES
    unnamed = open_model(plain, output_kind="instance").segment(_scene(2))
    view = viz.draw_instances(_scene(2), unnamed.instances, None, order="bgr")  # class ids stand in for names
    assert view.shape == (*FRAME, 3) and len(unnamed.instances["classes"]) == 2


def test_edge_cli_runs_an_instance_model_on_a_video_without_tensorflow(detector, tmp_path):
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, FRAME[::-1])
    for i in range(6):
        writer.write(_scene(i))
    writer.release()
    views = tmp_path / "views"
    script = textwrap.dedent(f"""
        import sys
        import edge.cli
        assert edge.cli.main(["run", {detector!r}, "--source", {video!r}, "--headless", "--out", {str(views)!r},
                              "--threads", "1"]) == 0
        assert edge.cli.main(["bench", {detector!r}, "--frames", "5", "--size", "80x48"]) == 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print("HEAVY", heavy)
        sys.exit(1 if heavy else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "invoke" in proc.stdout and "pipeline" in proc.stdout
    files = sorted(views.iterdir())
    assert len(files) == 6
    # the view is draw_instances on the frame (the HUD text covers the top rows)
    seg = open_model(detector)
    cap = cv2.VideoCapture(video)
    _, frame = cap.read()
    cap.release()
    expected = seg.draw(frame, seg.segment(frame), 0.5)
    view = cv2.imread(str(files[0]))
    assert np.mean(np.abs(view[20:].astype(int) - expected[20:].astype(int))) < 1.0
    assert edge_cli.main(["run", detector, "--source", video, "--headless", "--smooth", "0.5"]) == 2


def test_semantic_segmenter_rejects_a_detection_model(detector):
    with pytest.raises(ModelFileError, match="instance"):
        Segmenter(detector)


# -- configs and the CLI on a tiny Mask R-CNN ----------------------------------------------------------------------

TINY = """
model:
  name: maskrcnn
  backbone: mobilenetv2
  backbone_kwargs: {alpha: 0.35}
  fpn_filters: 16
  box_head_units: 32
  mask_head_filters: 16
  anchor_sizes: [8, 16, 32, 64, 128]
  rpn_pre_nms_topk: [128, 64]
  rpn_post_nms_topk: [64, 32]
  rois_per_image: 16
  max_detections: 5
data:
  format: instance_synthetic
  image_size: [64, 64]
  num_classes: 3
  max_instances: 8
  synthetic: {num_images: 10, seed: 0}
  splits: {train: "0-5", val: "6-9"}
train:
  epochs: 1
  steps_per_epoch: 2
  batch_size: 2
  checkpoint_every_steps: 1
output:
  dir: RUN
"""


def _tiny_config(tmp_path, extra=""):
    path = tmp_path / "maskrcnn_tiny.yaml"
    path.write_text(TINY.replace("RUN", str(tmp_path / "run")) + extra)
    return str(path)


def test_instance_config_takes_instance_data_and_no_loss(tmp_path):
    from kseg.config import dump_config, load_config
    from kseg.errors import ConfigError

    cfg = load_config(_tiny_config(tmp_path))
    assert cfg["loss"] is None and cfg["data"]["max_instances"] == 8 and cfg["data"]["augment"]["scale"] is None
    dump_config(cfg, tmp_path / "run.yaml")  # what a run folder keeps reads back the same
    assert load_config(str(tmp_path / "run.yaml")) == cfg
    with pytest.raises(ConfigError, match="own losses"):
        load_config(_tiny_config(tmp_path, "loss: {ce: 1.0}\n"))
    with pytest.raises(ConfigError, match="data.ignore_index: unknown key for instance data"):
        load_config(_tiny_config(tmp_path), ["data.ignore_index=255"])
    from kseg.cli import main

    assert main(["evaluate", _tiny_config(tmp_path), "--refine", "crf"]) == 2


@pytest.mark.slow
def test_train_resume_evaluate_predict_export_and_edge_run_through_the_cli(tmp_path, capsys):
    """The whole path on a tiny Mask R-CNN: `kseg train` (2 steps, interrupted after 1 and resumed), `kseg evaluate`,
    `kseg predict`, `kseg export` to float32 TFLite and `kseg-edge run` on a generated video."""
    import json

    import keras

    from edge.runtime import read_metadata
    from kseg.cli import main
    from kseg.config import load_config
    from kseg.saving import load_model
    from kseg.train import train

    config = _tiny_config(tmp_path)
    run = tmp_path / "run"

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(config), verbose=0, callbacks=[Interrupt()])
    assert (run / "backup" / "state.json").is_file()
    result = train(load_config(config), verbose=0)
    assert result["resumed_from"]["step"] == 1 and result["steps"] == 2 and result["monitor"] == "val_mask_ap"
    assert (run / "best.keras").is_file() and (run / "last.keras").is_file() and not (run / "backup").exists()
    history = (run / "history.csv").read_text()
    assert "val_mask_ap" in history and "val_mask_loss" in history and "rpn_class_loss" in history

    assert main(["evaluate", config]) == 0
    metrics = json.loads((run / "report-val" / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and {"mask_ap", "mask_ap50", "box_ap"} <= set(metrics)
    assert "mask AP" in capsys.readouterr().out
    samples = cv2.imread(str(run / "report-val" / "samples.png"))
    assert samples.shape == (4 * 64, 2 * 64, 3)  # ground truth | detections, one row per sample

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), _scene(3))
    assert main(["predict", str(run / "best.keras"), str(images), "--out", str(tmp_path / "pred"),
                 "--score-threshold", "0"]) == 0
    label = cv2.imread(str(tmp_path / "pred" / "a_instances.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(tmp_path / "pred" / "a_overlay.png"))
    assert label.dtype == np.uint16 and label.shape == FRAME and overlay.shape == (*FRAME, 3)

    assert main(["export", str(run / "best.keras"), "--to", "float32", "--config", config]) == 0
    tflite = str(run / "best_float32.tflite")
    meta = read_metadata(tflite)
    assert meta["output_kind"] == "instance" and meta["num_classes"] == 3 and len(meta["labels"]) == 3
    report = (run / "best_float32.report.txt").read_text()
    assert "detection counts equal on 4/4" in report
    # the runtime's detections are Keras' inference graph's, to float rounding
    seg = open_model(tflite)
    net = load_model(str(run / "best.keras")).inference_model()
    frame = cv2.resize(_scene(4), (64, 64))
    x, _ = seg.preprocess(frame)
    lite, ref = seg.invoke(x), net.predict_on_batch(x)
    assert int(lite["num_detections"]) == int(np.asarray(ref["num_detections"])[0])
    np.testing.assert_allclose(lite["boxes"], np.asarray(ref["boxes"])[0], atol=1e-3)
    np.testing.assert_allclose(lite["masks"], np.asarray(ref["masks"])[0], atol=1e-4)

    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, FRAME[::-1])
    for i in range(4):
        writer.write(_scene(i))
    writer.release()
    assert edge_cli.main(["run", tflite, "--source", video, "--headless", "--out", str(tmp_path / "views"),
                          "--score-threshold", "0"]) == 0
    assert len(list((tmp_path / "views").iterdir())) == 4
    # `kseg predict` runs exported semantic models; for an exported detector it names the command that draws it
    assert main(["predict", tflite, str(images), "--out", str(tmp_path / "pred-lite")]) == 2
    assert "kseg-edge run" in capsys.readouterr().err
