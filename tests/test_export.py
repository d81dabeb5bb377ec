"""The exporter: EdgeTPU op analyser on hand-made graphs, the EdgeTPU-safe rewrite, metadata embedded in the
flatbuffer and read back without TensorFlow, ``kseg export`` end to end with its report, and its errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

import kseg
from edge.interpreter import load_interpreter, run_once
from edge.runtime import Segmenter, read_metadata
from export.convert import to_tflite
from export.edgetpu import analyse, make_edge_safe
from export.flatbuffer import dump, load, ops
from export.metadata import embed_metadata
from kseg.errors import ConfigError, DataError, ModelFileError

SIZE = 32
RNG_IMAGES = [np.random.default_rng(i).uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32) for i in range(4)]


def tiny(head):
    """conv -> pool -> conv -> ``head`` -> 1x1 logits conv, on 32x32 raw pixels."""
    import keras

    x = inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = head(x)
    return keras.Model(inputs, keras.layers.Conv2D(3, 1)(x))


def bilinear(x):
    import keras

    return keras.layers.UpSampling2D(interpolation="bilinear")(x)


@pytest.fixture(scope="module")
def bilinear_int8():
    return to_tflite(tiny(bilinear), "int8", RNG_IMAGES)


def test_analyser_maps_int8_conv_net_after_edge_safe_rewrite(bilinear_int8):
    before = analyse(bilinear_int8)
    resize = [v for v in before.ops if v.name == "RESIZE_BILINEAR"]
    assert len(resize) == 1 and not resize[0].supported and "half_pixel_centers" in resize[0].reason
    assert before.split_at == resize[0].index
    # every op from the split on runs on the CPU, supported or not
    assert all(not v.mapped for v in before.ops[before.split_at:])
    assert all(v.mapped for v in before.ops[:before.split_at])
    assert before.mapped_share == pytest.approx(before.split_at / len(before.ops))

    safe, changed = make_edge_safe(bilinear_int8)
    assert changed == 1
    after = analyse(safe)
    assert after.split_at is None and after.mapped_share == 1.0
    assert "every op maps" in after.text()
    # the converter marks half-pixel centres with op version 3, which edgetpu_compiler refuses ("Operation version
    # not supported") whatever the flag says; the rewrite gives the op int8's legacy version, 2
    assert _resize_versions(bilinear_int8) == [3] and _resize_versions(safe) == [2]
    flag_only = load(bilinear_int8)
    for op in ops(flag_only):
        if op.name == "RESIZE_BILINEAR":
            op.options.halfPixelCenters = False
    stale = [v for v in analyse(dump(flag_only)).ops if v.name == "RESIZE_BILINEAR"]
    assert not stale[0].supported and "op version 3" in stale[0].reason


def _resize_versions(flatbuffer):
    return [op.version for op in ops(load(flatbuffer)) if op.name.startswith("RESIZE")]


def test_analyser_rejects_float_tensors_and_ops_the_edgetpu_lacks():
    import keras

    float32 = analyse(to_tflite(tiny(lambda x: x), "float32"))
    assert float32.split_at == 0 and "FLOAT32" in float32.ops[0].reason and float32.mapped_share == 0.0

    # a per-pixel softmax is an EdgeTPU op only on 1-D inputs of at most 16000 elements
    softmax = analyse(to_tflite(_with_softmax(tiny(lambda x: x)), "int8", RNG_IMAGES))
    bad = [v for v in softmax.ops if not v.supported]
    assert [v.name for v in bad] == ["SOFTMAX"] and "1-D" in bad[0].reason
    assert softmax.split_at == bad[0].index

    # Keras 3 nearest upsampling is RESHAPE + TILE (BROADCAST_TO in newer converters): not EdgeTPU ops
    nearest = analyse(to_tflite(tiny(lambda x: keras.layers.UpSampling2D()(x)), "int8", RNG_IMAGES))
    bad = [v for v in nearest.ops if not v.supported]
    assert bad and any(v.name in ("TILE", "BROADCAST_TO") and v.reason == "not an EdgeTPU op" for v in bad), \
        nearest.text()
    assert 0.0 < nearest.mapped_share < 1.0


def _with_softmax(model):
    import keras

    return keras.Model(model.input, keras.layers.Softmax()(model.output))


def test_edge_safe_rewrite_samples_without_half_pixel_offset():
    """With half-pixel centres off, a 2x bilinear upsampling samples input row ``i / 2`` (TF1 / EdgeTPU legacy
    resize): even outputs copy the input, odd ones average two neighbours, the last row repeats. Keras (half-pixel
    centres) samples ``(i + 0.5) / 2 - 0.5`` instead; the float32 conversion keeps that exactly."""
    import keras

    inputs = keras.Input((4, 5, 2))
    model = keras.Model(inputs, keras.layers.UpSampling2D(interpolation="bilinear")(inputs))
    x = np.random.default_rng(0).uniform(0, 255, (1, 4, 5, 2)).astype(np.float32)
    f32 = to_tflite(model, "float32")
    np.testing.assert_allclose(run_once(load_interpreter(model_content=f32), x), np.asarray(model(x)), atol=1e-4)
    safe, changed = make_edge_safe(f32)
    assert changed == 1 and [v.name for v in analyse(safe).ops] == [v.name for v in analyse(f32).ops]

    def legacy(a, axis):
        nxt = np.concatenate([np.take(a, range(1, a.shape[axis]), axis), np.take(a, [-1], axis)], axis)
        return np.stack([a, (a + nxt) / 2], axis + 1).reshape(
            a.shape[:axis] + (2 * a.shape[axis],) + a.shape[axis + 1:])

    np.testing.assert_allclose(run_once(load_interpreter(model_content=safe), x), legacy(legacy(x, 1), 2),
                               atol=1e-3)


@pytest.mark.parametrize("factor", [2, 4])
def test_edgetpu_upsampling_stays_exact_without_half_pixel_centres(factor):
    """``exact_upsampling`` rebuilds bilinear upsampling from ops whose legacy (EdgeTPU) form samples the same
    pixels: after ``make_edge_safe`` the file matches Keras to float32 rounding, where the flag alone moves the
    grid (up to 70 units on 0-255 inputs here); its int8 file maps to the EdgeTPU in full."""
    import keras

    from export.edgetpu import exact_upsampling

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 12, 3))
    x = keras.layers.Conv2D(4, 3, strides=factor, padding="same", activation="relu")(inputs)
    x = keras.layers.UpSampling2D(factor, interpolation="bilinear")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(x))
    x = np.random.default_rng(0).uniform(0, 255, (1, 16, 12, 3)).astype(np.float32)
    reference = np.asarray(model(x))

    def edge_float32(m):
        return run_once(load_interpreter(model_content=make_edge_safe(to_tflite(m, "float32"))[0]), x)

    exact = exact_upsampling(model)
    assert np.abs(edge_float32(exact) - reference).max() <= 1e-5 * np.abs(reference).max()
    assert np.abs(edge_float32(model) - reference).max() >= 0.01 * np.abs(reference).max()
    calibration = list(np.random.default_rng(1).uniform(0, 255, (8, 16, 12, 3)).astype(np.float32))
    int8 = analyse(make_edge_safe(to_tflite(exact, "int8", calibration))[0])
    assert int8.mapped_share == 1.0, int8.text()
    assert {"RESIZE_NEAREST_NEIGHBOR", "DEPTHWISE_CONV_2D"} <= {v.name for v in int8.ops}


def test_metadata_embedded_and_read_without_tensorflow(bilinear_int8, tmp_path):
    meta = {"labels": ["bg", "cell", "edge"], "palette": [[0, 0, 0], [1, 2, 3], [4, 5, 6]],
            "input_size": [SIZE, SIZE], "normalization": "raw", "output_kind": "logits", "mode": "int8"}
    path = tmp_path / "m.tflite"
    data = embed_metadata(bilinear_int8, meta)
    path.write_bytes(embed_metadata(data, meta))  # a second embed replaces the entry, never adds one
    names = [m.name for m in load(path.read_bytes()).metadata]
    assert names.count(b"kseg") == 1 and b"min_runtime_version" in names
    # the model still runs and gives the same output
    x = np.random.default_rng(0).integers(0, 255, (1, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(run_once(load_interpreter(str(path)), x),
                                  run_once(load_interpreter(model_content=bilinear_int8), x))
    assert read_metadata(str(path)) == meta
    seg = Segmenter(str(path))
    assert seg.labels == meta["labels"] and seg.palette[2].tolist() == [4, 5, 6]

    # embedded metadata wins over a stale sidecar; the sidecar still serves files without embedded metadata
    (tmp_path / "m.tflite.json").write_text(json.dumps({"labels": ["x", "y", "z"]}))
    assert read_metadata(str(path))["labels"] == meta["labels"]
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(bilinear_int8)
    assert read_metadata(str(plain)) == {}
    (tmp_path / "plain.tflite.json").write_text(json.dumps({"labels": ["x", "y", "z"]}))
    assert read_metadata(str(plain)) == {"labels": ["x", "y", "z"]}
    (tmp_path / "bad.tflite").write_bytes(embed_metadata(bilinear_int8, ["not", "a", "dict"]))
    with pytest.raises(ModelFileError, match="JSON object"):
        read_metadata(str(tmp_path / "bad.tflite"))

    code = ("import sys; from edge.runtime import read_metadata; "
            f"m = read_metadata({str(path)!r}); assert m['labels'][1] == 'cell', m; "
            "assert 'tensorflow' not in sys.modules, 'edge.runtime imported TensorFlow'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, run.stderr[-2000:]


def test_rewritten_file_stores_equal_quantization_vectors_once(bilinear_int8):
    from ai_edge_litert import schema_py_generated as schema

    def zero_points(data):
        """(address in ``data``, length) of each per-channel zero-point vector."""
        buf = bytearray(data)
        graph = schema.Model.GetRootAs(buf, 0).Subgraphs(0)
        vectors = [graph.Tensors(i).Quantization().ZeroPointAsNumpy() for i in range(graph.TensorsLength())
                   if graph.Tensors(i).Quantization() is not None]
        return [(v.__array_interface__["data"][0], v.size) for v in vectors if not isinstance(v, int) and v.size > 1]

    rewritten = dump(load(bilinear_int8))
    before, after = zero_points(bilinear_int8), zero_points(rewritten)
    assert len(before) >= 2 and len(set(before)) == len(before)  # the converter: one vector per tensor
    assert len(after) == len(before) and len(set(after)) == len({n for _, n in before})  # one per length
    assert len(rewritten) < len(bilinear_int8)
    for old, new in zip(load(bilinear_int8).subgraphs[0].tensors, load(rewritten).subgraphs[0].tensors):
        if old.quantization is not None and old.quantization.scale is not None:
            np.testing.assert_array_equal(old.quantization.scale, new.quantization.scale)
            np.testing.assert_array_equal(old.quantization.zeroPoint, new.quantization.zeroPoint)
    x = np.random.default_rng(1).integers(0, 255, (1, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(run_once(load_interpreter(model_content=rewritten), x),
                                  run_once(load_interpreter(model_content=bilinear_int8), x))


TINY_CFG = {
    "model": {"name": "unet", "base_filters": 4, "depth": 2},
    "data": {"format": "synthetic", "image_size": [SIZE, SIZE], "num_classes": 3,
             "synthetic": {"num_images": 12, "seed": 0}, "splits": {"train": "0-7", "val": "8-11"}},
    "loss": {"ce": 1.0},
    "train": {"epochs": 1, "batch_size": 4, "optimizer": {"name": "adam", "lr": 3e-3}},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net fitted for 60 steps on the synthetic data (enough for confident logits), its config, and the
    data written once."""
    import keras

    from kseg.config import load_config
    from kseg.data import build_dataset

    root = tmp_path_factory.mktemp("export")
    cfg = json.loads(json.dumps(TINY_CFG))
    cfg["data"]["root"] = str(root / "data")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    data_cfg = load_config(path)["data"]
    keras.utils.set_random_seed(0)
    model = kseg.create_model("unet", num_classes=3, input_shape=(SIZE, SIZE, 3), base_filters=4, depth=2)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train = build_dataset(data_cfg, "train", batch_size=4, augment=False, repeat=True)
    model.fit(train, epochs=1, steps_per_epoch=60, verbose=0)
    model.save(root / "best.keras")
    return root, path


def test_export_edgetpu_end_to_end(trained, capsys):
    from kseg.cli import main

    root, path = trained
    out = root / "m_edgetpu.tflite"
    assert main(["export", str(root / "best.keras"), "--to", "edgetpu", "--data", str(path), "--out", str(out),
                 "--calibration", "4"]) == 0
    text = capsys.readouterr().out
    assert "every op maps to the EdgeTPU" in text
    meta = read_metadata(str(out))
    assert meta["mode"] == "edgetpu" and meta["input_size"] == [SIZE, SIZE] and len(meta["labels"]) == 3
    assert meta["interpolation"] == "area"  # as the data pipeline shrinks images (kseg.data.io.resize_image)
    assert not os.path.exists(str(out) + ".json")  # the file describes itself
    report = (root / "m_edgetpu.report.txt").read_text()
    for word in ("float32", "edgetpu", "1 thr ms", "2 thr ms", "mIoU", "CONV_2D", "EdgeTPU op analysis"):
        assert word in report, word
    import cv2

    picture = cv2.imread(str(root / "m_edgetpu.report.png"))
    assert picture is not None and picture.shape[0] > 300


def test_export_int8_report_numbers(trained):
    from export.api import export_model

    root, path = trained
    result = export_model(root / "best.keras", "int8", config_path=path, out_path=root / "m_int8.tflite",
                          num_calibration=8, verbose=False)
    stages = result["report"]["stages"]
    f32, int8 = stages["float32"], stages["int8"]
    # float32 TFLite is Keras up to float rounding; int8 keeps the argmax of nearly every pixel
    assert f32["max_abs_error"] <= 1e-3 and f32["agreement"] > 0.999
    assert int8["agreement"] >= 0.97, int8
    assert abs(int8["miou"] - stages["keras"]["miou"]) <= 0.03, stages
    assert int8["size_bytes"] < 0.6 * f32["size_bytes"]  # a 3k-parameter net: the flatbuffer overhead weighs in
    assert set(int8["latency_ms"]) == {1, 2} and all(v > 0 for v in int8["latency_ms"].values())
    assert result["keras_miou"] == stages["keras"]["miou"] and result["tflite_miou"] == int8["miou"]
    # the per-layer int8 error: every conv of the U-Net matched, all small, and named in the report text
    errors = dict(result["report"]["layer_errors"])
    assert "unet_bottleneck_conv2_relu" in errors and max(errors.values()) < 0.2, errors
    with open(root / "m_int8.report.txt") as f:
        assert "int8 error by layer" in f.read()


def test_layer_errors_point_at_the_layer_that_computes_something_else():
    """A file converted from a copy of the model whose middle conv has other weights: the per-layer error is small
    up to that conv and jumps there, so the report names it as the largest rise."""
    import keras

    from export.report import largest_rises, layer_errors

    keras.utils.set_random_seed(0)
    model = tiny(lambda x: keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="changed")(x))
    other = keras.models.clone_model(model)
    other.set_weights(model.get_weights())
    kernel, bias = other.get_layer("changed").get_weights()
    other.get_layer("changed").set_weights([np.random.default_rng(1).permutation(kernel.ravel()).reshape(kernel.shape),
                                            bias])
    errors = layer_errors(model, to_tflite(other, "int8", RNG_IMAGES), RNG_IMAGES[:2])
    names = [name for name, _ in errors]
    before = dict(errors[:names.index("changed")])
    assert before and max(before.values()) < 0.05, errors
    assert dict(errors)["changed"] > 0.5 and largest_rises(errors, 1)[0][0] == "changed", errors


def test_export_errors(trained, tmp_path):
    import keras

    from export.api import export_model

    root, path = trained
    classifier = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D(),
                                   keras.layers.Dense(3)])
    classifier.save(tmp_path / "classifier.keras")
    with pytest.raises(ModelFileError, match="not a kseg segmentation model"):
        export_model(tmp_path / "classifier.keras", "float32", report=False)
    (tmp_path / "junk.keras").write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="not a .keras model archive"):
        export_model(tmp_path / "junk.keras", "float32")

    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["root"] = str(tmp_path / "nowhere")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match="nowhere"):
        export_model(root / "best.keras", "int8", config_path=missing)
    with pytest.raises(ConfigError, match="needs --config"):
        export_model(root / "best.keras", "int8")
    for bad in ("0", "1", "1.5", "-0.2", "abc", "3:4"):
        with pytest.raises(ConfigError, match="prune"):
            export_model(root / "best.keras", "int8", config_path=path, prune=bad)
    with pytest.raises(ConfigError, match="cluster"):
        export_model(root / "best.keras", "int8", config_path=path, cluster=1)
    for bad in (0, -1e-4, 2.0, "fast"):
        with pytest.raises(ConfigError, match="--lr"):
            export_model(root / "best.keras", "int8", config_path=path, qat=True, fine_tune_lr=bad)
    with pytest.raises(ConfigError, match="--fine-tune-target 'teacher'.*float, labels"):
        export_model(root / "best.keras", "int8", config_path=path, qat=True, fine_tune_target="teacher")
