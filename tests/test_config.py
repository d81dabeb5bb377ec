"""kseg.config: overrides, validation messages (file, key, what is expected), defaults, data root resolution."""

import os

import pytest
import yaml

from kseg.config import dump_config, load_config, parse_override
from kseg.errors import ConfigError


def write_config(folder, text=None, **sections):
    """A config with a synthetic data section; ``sections`` replace or add top-level sections."""
    cfg = {"model": {"name": "unet"},
           "data": {"format": "synthetic", "root": str(folder / "shapes"), "image_size": [32, 32],
                    "synthetic": {"num_images": 4}}}
    cfg.update(sections)
    path = folder / "exp.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(cfg))
    return path


def error(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_defaults_are_filled(tmp_path):
    cfg = load_config(write_config(tmp_path))
    assert cfg["loss"] == {"ce": 1.0, "dice": 1.0}
    assert cfg["output"]["dir"] == os.path.join("runs", "exp")
    t = cfg["train"]
    assert (t["epochs"], t["batch_size"], t["steps_per_epoch"], t["val_every"]) == (10, 8, None, 1)
    assert t["optimizer"] == {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9}
    assert t["schedule"] == {"name": "cosine", "warmup_epochs": 0}
    assert t["strategy"] == {"name": "default", "devices": None}
    assert t["mixed_precision"] is False and t["time_budget_min"] is None
    assert cfg["data"]["num_classes"] == 4 and os.path.isabs(cfg["data"]["root"])


def test_overrides_are_yaml_scalars(tmp_path):
    cfg = load_config(write_config(tmp_path), [
        "train.epochs=5", "train.optimizer.lr=3e-4", "train.mixed_precision=true", "train.strategy=mirrored",
        "train.optimizer=sgd", "train.time_budget_min=1.5", "output.dir=out/x", "model.base_filters=4",
    ])
    t = cfg["train"]
    assert t["epochs"] == 5 and t["mixed_precision"] is True and t["time_budget_min"] == 1.5
    # "sgd" replaces the whole optimizer mapping (shorthand), so the lr override set before it is gone.
    assert t["optimizer"] == {"name": "sgd", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9}
    assert t["strategy"] == {"name": "mirrored", "devices": None}
    assert cfg["output"]["dir"] == "out/x" and cfg["model"]["base_filters"] == 4
    assert parse_override("train.optimizer.lr=1e-3") == (["train", "optimizer", "lr"], 1e-3)
    assert parse_override("train.strategy.devices=[/cpu:0, /cpu:1]")[1] == ["/cpu:0", "/cpu:1"]


def test_float_with_exponent_in_file(tmp_path):
    path = write_config(tmp_path, train={"optimizer": {"lr": "PLACEHOLDER"}})
    path.write_text(path.read_text().replace("PLACEHOLDER", "5e-4"))
    assert load_config(path)["train"]["optimizer"]["lr"] == 5e-4


@pytest.mark.parametrize("text", ["train.epochs", "=3", "train..epochs=3"])
def test_malformed_override(tmp_path, text):
    assert "must look like section.key=value" in error(write_config(tmp_path), [text])


def test_unknown_key_suggests_the_closest(tmp_path):
    path = write_config(tmp_path, train={"epocs": 3})
    msg = error(path)
    assert str(path) in msg and "train.epocs" in msg and "did you mean 'epochs'?" in msg
    assert "valid keys: epochs, batch_size" in msg


def test_unknown_override_names_the_override(tmp_path):
    msg = error(write_config(tmp_path), ["train.optimizer.lrr=0.1"])
    assert "override 'train.optimizer.lrr=0.1'" in msg and "did you mean 'lr'?" in msg


def test_unknown_section(tmp_path):
    assert "did you mean 'train'?" in error(write_config(tmp_path, trian={"epochs": 1}))


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=ten", "train.epochs: expected an integer >= 1, got 'ten' (str)"),
    ("train.epochs=0", "train.epochs: expected an integer >= 1, got 0"),
    ("train.epochs=true", "train.epochs: expected an integer"),
    ("train.mixed_precision=1", "train.mixed_precision: expected one of false, true, float16, bfloat16, got 1"),
    ("train.mixed_precision=bf16",
     "expected one of false, true, float16, bfloat16, got 'bf16' (did you mean 'bfloat16'?)"),
    ("train.optimizer.momentum=1.5", "train.optimizer.momentum: expected a number in [0, 1], got 1.5"),
    ("train.optimizer.name=adamm", "expected one of adam, adamw, sgd, got 'adamm' (did you mean 'adam'?)"),
    ("train.schedule=step", "train.schedule.name: expected one of cosine, constant, poly"),
    ("train.strategy=horovod", "train.strategy.name: expected one of default, mirrored, multi_worker"),
])
def test_bad_values_say_what_is_expected(tmp_path, override, expected):
    path = write_config(tmp_path)
    msg = error(path, [override])
    assert expected in msg and str(path) in msg


def test_model_name_and_arguments(tmp_path):
    msg = error(write_config(tmp_path, model={"name": "unte"}))
    assert "unknown model 'unte'; did you mean 'unet'?" in msg and "available:" in msg
    assert "data.num_classes" in error(write_config(tmp_path, model={"name": "unet", "num_classes": 3}))
    assert "unet has no argument 'no_such_arg'" in error(write_config(tmp_path), ["model.no_such_arg=1"])


def test_data_and_loss_errors_name_the_file(tmp_path):
    path = write_config(tmp_path)
    msg = error(path, ["data.format=nope"])
    assert msg.startswith(f"{path}: ") and "data.format" in msg and "override" in msg
    msg = error(path, ["loss=cee"])
    assert msg.startswith(f"{path}: loss: ") and "cee" in msg


def test_missing_and_broken_files(tmp_path):
    assert "not found" in error(tmp_path / "nope.yaml")
    assert "not valid YAML" in error(write_config(tmp_path, text="train: [1,"))
    assert "missing section 'data'" in error(write_config(tmp_path, text="model: {name: unet}\n"))
    model = tmp_path / "best.keras"  # a model where the config goes (kseg evaluate best.keras ...)
    model.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00\x87\xff")
    assert "not a text file" in error(model) and "--model" in error(model)


def test_time_budget_is_single_process(tmp_path):
    msg = error(write_config(tmp_path), ["train.strategy=multi_worker", "train.time_budget_min=1"])
    assert "train.time_budget_min" in msg and "multi_worker" in msg


def test_relative_data_root_falls_back_to_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "shapes").mkdir()
    path = write_config(folder)
    path.write_text(path.read_text().replace(str(folder / "shapes"), "shapes"))
    monkeypatch.chdir(tmp_path)
    assert load_config(path)["data"]["root"] == str(folder / "shapes")
    (tmp_path / "shapes").mkdir()  # the current directory wins when the folder exists there
    assert load_config(path)["data"]["root"] == str(tmp_path / "shapes")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write_config(tmp_path), ["train.strategy=mirrored", "train.optimizer.lr=2e-4"])
    dump_config(cfg, tmp_path / "run.yaml")
    assert load_config(tmp_path / "run.yaml") == cfg
