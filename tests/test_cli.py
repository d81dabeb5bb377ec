"""The ``kseg`` command end to end: train -> evaluate -> predict -> export int8 -> edge runtime, and its errors."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from kseg.cli import main

TINY = {
    "model": {"name": "unet", "base_filters": 8, "depth": 2},
    "data": {"format": "synthetic", "image_size": [64, 64], "num_classes": 3,
             "synthetic": {"num_images": 24, "seed": 0}, "splits": {"train": "0-15", "val": "16-23"},
             "augment": {"hflip": True}},
    "loss": {"ce": 1.0, "dice": 1.0},
    "train": {"epochs": 3, "batch_size": 4, "optimizer": {"name": "adam", "lr": 3e-3}},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the CLI, shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["root"] = str(root / "data")
    cfg["output"] = {"dir": str(root / "run")}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--quiet"]) == 0
    return root, path


def test_train_writes_run_folder(trained):
    root, _ = trained
    run = root / "run"
    for name in ("best.keras", "last.keras", "run.yaml", "history.csv"):
        assert (run / name).is_file(), name


def test_evaluate_writes_report_with_pictures(trained, capsys):
    root, path = trained
    out = root / "report"
    assert main(["evaluate", str(path), "--out", str(out), "--samples", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 8
    assert 0.0 <= metrics["mean_iou"] <= 1.0
    assert len(metrics["per_class_iou"]) == 3
    for name in ("confusion_matrix.png", "per_class_iou.png", "samples.png", "table.txt"):
        assert cv2.imread(str(out / name)) is not None or name.endswith(".txt"), name
    assert "IoU" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--out", str(root / "report-tta"), "--tta", "flip", "--samples", "0"]) == 0
    assert json.loads((root / "report-tta" / "metrics.json").read_text())["tta"] == "flip"


def test_evaluate_before_training_says_what_to_do(trained, tmp_path, capsys):
    _, path = trained
    assert main(["evaluate", str(path), f"output.dir={tmp_path / 'never-trained'}"]) == 2
    assert "holds no best.keras: train it first" in capsys.readouterr().err


def test_predict_folder_writes_masks_and_skips_bad_files(trained, tmp_path, capsys):
    root, _ = trained
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not a png")
    assert main(["predict", str(root / "run" / "best.keras"), str(images), "--out", str(tmp_path / "out")]) == 0
    mask = cv2.imread(str(tmp_path / "out" / "a_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (50, 70) and mask.max() < 3
    assert (tmp_path / "out" / "a_overlay.png").is_file()
    assert "broken.png" in capsys.readouterr().out


def test_predict_resizes_as_the_data_pipeline_does(trained, tmp_path):
    """An image larger than the model's input is shrunk as training and evaluation shrink theirs (area
    interpolation, ``kseg.data.io.resize_image``), and the mask comes back at the image's size."""
    from kseg.data.io import resize_image
    from kseg.saving import load_model

    root, _ = trained
    image = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, (150, 130, 3), dtype=np.uint8), (0, 0), 3)
    cv2.imwrite(str(tmp_path / "big.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    model = root / "run" / "best.keras"
    assert main(["predict", str(model), str(tmp_path / "big.png"), "--out", str(tmp_path / "out")]) == 0
    logits = load_model(model).predict(resize_image(image, (64, 64), "stretch")[0][None].astype(np.float32), verbose=0)
    expected = cv2.resize(np.argmax(logits[0], -1).astype(np.uint8), (130, 150), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "big_mask.png"), cv2.IMREAD_UNCHANGED), expected)


def test_export_int8_matches_keras_and_runs_on_edge(trained, tmp_path, capsys):
    root, path = trained
    tflite = tmp_path / "m.tflite"
    assert main(["export", str(root / "run" / "best.keras"), "--to", "int8", "--config", str(path),
                 "--out", str(tflite), "--calibration", "8"]) == 0
    assert "int8" in capsys.readouterr().out
    from edge.runtime import read_metadata

    meta = read_metadata(str(tflite))  # embedded in the flatbuffer
    assert meta["input_size"] == [64, 64] and len(meta["labels"]) == 3
    from export.verify import compare_on_split
    from kseg.config import load_config
    from kseg.saving import load_model

    scores = compare_on_split(load_model(root / "run" / "best.keras"), tflite, load_config(path)["data"])
    assert scores["num_images"] == 8
    # int8 of a small trained model agrees with float on nearly every pixel; a broken quantization does not
    assert scores["agreement"] > 0.95, scores
    assert abs(scores["keras_miou"] - scores["tflite_miou"]) < 0.05, scores
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "f.png"), np.full((48, 64, 3), 128, np.uint8))
    assert main(["run", str(tflite), "--source", str(frames), "--out", str(tmp_path / "views"), "--headless"]) == 0
    assert os.listdir(tmp_path / "views")
    # `kseg predict` takes the exported file too (run by the edge runtime) and agrees with the .keras model
    from kseg.evaluate import uint8_samples

    image = next(uint8_samples(load_config(path)["data"], "val"))[0]
    cv2.imwrite(str(frames / "f.png"), cv2.cvtColor(cv2.resize(image, (90, 70)), cv2.COLOR_RGB2BGR))
    masks = []
    for model in (tflite, root / "run" / "best.keras"):
        assert main(["predict", str(model), str(frames), "--out", str(tmp_path / model.suffix[1:])]) == 0
        masks.append(cv2.imread(str(tmp_path / model.suffix[1:] / "f_mask.png"), cv2.IMREAD_UNCHANGED))
    assert masks[0].shape == (70, 90) and (masks[0] == masks[1]).mean() > 0.9


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("not a model")
    cases = [
        ["predict", str(tmp_path / "missing.keras"), str(tmp_path)],
        ["predict", str(bad), str(tmp_path)],
        ["train", str(tmp_path / "missing.yaml")],
        ["export", str(bad), "--to", "float32"],
    ]
    for args in cases:
        proc = subprocess.run([sys.executable, "-m", "kseg.cli", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        # one line: TensorFlow's C++ start-up lines (absl, CUDA probing) are held back (kseg.native_log)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"kseg {args[0]}: error:"), proc.stderr


@pytest.mark.parametrize("argv", [
    ["export", "m.keras", "--steps", "0"], ["export", "m.keras", "--calibration", "-4"],
    ["predict", "m.keras", "x.png", "--alpha", "1.5"], ["predict", "m.keras", "x.png", "--score-threshold", "2"],
    ["evaluate", "c.yaml", "--samples", "-1"], ["demo", "--minutes", "0"], ["data", "show", "c.yaml", "--num", "x"],
])
def test_out_of_range_numbers_are_refused_before_anything_loads(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    flag = next(a for a in argv if a.startswith("--"))
    assert f"argument {flag}: expected " in capsys.readouterr().err


@pytest.mark.parametrize("user_value, expected", [(None, "1"), ("0", "0")])
def test_onednn_on_by_default_and_user_choice_kept(user_value, expected):
    # TensorFlow leaves its oneDNN kernels off on AVX2-only CPUs, where they train 1.45x faster; kseg turns them on
    # before TensorFlow loads unless the user chose otherwise.
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_value
    code = "import os, kseg.cli; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.strip() == expected, proc.stderr


@pytest.mark.parametrize("tty, quiet, verbose", [(True, False, 1), (True, True, 2), (False, False, 2)])
def test_train_shows_a_progress_bar_only_on_a_terminal(monkeypatch, tmp_path, tty, quiet, verbose):
    # Keras' bar, written to a log file, keeps the first step of each epoch and drops its validation numbers
    import kseg.train

    seen = {}

    def fake_train(cfg, verbose):
        seen["verbose"] = verbose
        return {"monitor": "val_mean_iou", "best_miou": 0.5, "run_dir": str(tmp_path)}

    monkeypatch.setattr(kseg.train, "train", fake_train)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    cfg = dict(TINY, data=dict(TINY["data"], root=str(tmp_path / "data")))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), *(["--quiet"] if quiet else [])]) == 0
    assert seen["verbose"] == verbose


def test_a_command_without_tensorflow_says_what_to_install(monkeypatch, capsys):
    # an edge-only install has `kseg` too; its training commands must say what is missing, not raise ImportError
    import kseg.native_log

    def missing():
        raise ImportError("No module named 'tensorflow'")

    monkeypatch.setattr(kseg.native_log, "import_tensorflow", missing)
    assert main(["predict", "m.keras", "img.png"]) == 2
    err = capsys.readouterr().err
    assert "needs TensorFlow" in err and "pip install 'kseg[train,export]'" in err
