"""kseg.train: a tiny run end to end, kill and resume mid-epoch, Ctrl-C, time budget, mixed precision,
MirroredStrategy over two logical CPUs and a two-process MultiWorkerMirroredStrategy run (subprocesses)."""

import csv
import json
import os
import pathlib
import socket
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import yaml

from kseg.config import load_config
from kseg.data import build_dataset, num_samples
from kseg.errors import ConfigError, DataError
from kseg.losses import build_loss
from kseg.train import callbacks, evaluate_model, train, trainer
from kseg.train.schedules import WarmupSchedule

REPO = pathlib.Path(__file__).resolve().parents[1]
# The smallest U-Net the builder allows keeps every run here to a few seconds on two cores.
TINY_MODEL = {"name": "unet", "base_filters": 8, "depth": 2}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The synthetic dataset, generated once (workers of a multi-worker run must not race to write it)."""
    root = tmp_path_factory.mktemp("data") / "shapes"
    data = {"format": "synthetic", "root": str(root), "image_size": [64, 64], "synthetic": {"num_images": 24}}
    num_samples(data, "train")
    return data


def make_config(folder, data, *overrides, **train):
    """A resolved config writing into ``folder/run``; ``train`` entries go to the train section."""
    section = {"epochs": 2, "batch_size": 4, "steps_per_epoch": 4, "checkpoint_every_steps": 2, **train}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "data": data, "train": section,
                                    "output": {"dir": str(folder / "run")}}))
    return path, load_config(path, list(overrides))


def read_history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


class StepLog(keras.callbacks.Callback):
    """Records the optimizer step at which each fit starts and how many steps this process ran."""

    def __init__(self):
        super().__init__()
        self.starts, self.steps = [], 0

    def on_train_begin(self, logs=None):
        self.starts.append(int(self.model.optimizer.iterations.numpy()))

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def test_tiny_run_learns_and_writes_the_run_folder(tmp_path, shapes):
    _, cfg = make_config(tmp_path, shapes, "train.optimizer.lr=3e-3", "train.schedule=constant", epochs=3)
    result = train(cfg, verbose=0)
    run_dir = result["run_dir"]
    # .lock: the flock that keeps a second training out while this one runs (the file stays, unlocked)
    assert sorted(os.listdir(run_dir)) == [".lock", "best.keras", "history.csv", "last.keras", "logs", "run.yaml"]
    assert load_config(os.path.join(run_dir, "run.yaml")) == cfg
    rows = read_history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and [int(r["step"]) for r in rows] == [4, 8, 12]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert result["steps"] == 12 and result["resumed_from"] is None and not result["stopped_by_budget"]
    best = max(float(r["val_mean_iou"]) for r in rows)
    assert result["best_miou"] == pytest.approx(best)
    assert os.listdir(os.path.join(run_dir, "logs"))  # TensorBoard event files

    # best.keras reloads and scores exactly what training recorded for it, through the numpy engine.
    model = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    val = build_dataset(cfg["data"], "val", 4)
    cm = evaluate_model(model, val, cfg["data"]["num_classes"], cfg["data"]["ignore_index"])
    assert cm.mean_iou() == pytest.approx(result["best_miou"], abs=1e-6)
    images = next(iter(val))[0]
    again = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    np.testing.assert_array_equal(model.predict_on_batch(images), again.predict_on_batch(images))


KILL_AT_STEP = """
import os, signal, sys
import keras
from kseg.config import load_config
from kseg.train import train

class Kill(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        # kseg's backup callback runs before user callbacks: the backup of step 8 is on disk here.
        if int(self.model.optimizer.iterations.numpy()) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

train(load_config(sys.argv[1]), verbose=0, callbacks=[Kill()])
"""


def test_killed_mid_epoch_resumes_at_the_saved_step(tmp_path, shapes):
    path, cfg = make_config(tmp_path, shapes, epochs=3, steps_per_epoch=6, checkpoint_every_steps=4)
    # SIGKILL at step 9, in epoch 2: the last backup is from step 8 (epoch 2, step 2), after epoch 1's validation.
    proc = subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(path), "9"], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == -9, proc.stderr[-3000:]
    run_dir = cfg["output"]["dir"]
    with open(os.path.join(run_dir, "backup", "state.json")) as f:
        saved = json.load(f)["state"]
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (1, 2, 8)
    first_epoch = read_history(run_dir)
    assert len(first_epoch) == 1 and saved["best_miou"] == pytest.approx(float(first_epoch[0]["val_mean_iou"]))

    with pytest.raises(ConfigError, match="other settings.*train.optimizer"):
        train(load_config(path, ["train.optimizer.lr=0.5"]), verbose=0)

    log = StepLog()
    result = train(cfg, verbose=0, callbacks=[log])
    assert result["resumed_from"] == {"epoch": 1, "step": 2, "global_step": 8, "best_miou": saved["best_miou"]}
    # The interrupted epoch finishes with its 4 remaining steps, then epoch 3 runs: 10 steps, 18 in total.
    assert log.starts == [8, 12] and log.steps == 10 and result["steps"] == 18
    rows = read_history(run_dir)
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, 6), (2, 12), (3, 18)]
    assert rows[0] == first_epoch[0]
    assert result["best_miou"] == pytest.approx(max(float(r["val_mean_iou"]) for r in rows))
    assert not os.path.exists(os.path.join(run_dir, "backup"))


def test_ctrl_c_keeps_the_backup_and_says_how_to_resume(tmp_path, shapes, capsys):
    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise KeyboardInterrupt

    _, cfg = make_config(tmp_path, shapes, epochs=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, verbose=0, callbacks=[CtrlC()])
    err = capsys.readouterr().err
    assert "epoch 1, step 2 (global step 2)" in err and "run the same command again to resume" in err
    assert os.path.exists(os.path.join(cfg["output"]["dir"], "backup", "ckpt-2.weights.h5"))


def test_a_run_folder_in_training_is_refused_until_freed(tmp_path, shapes):
    # the same command in a second terminal would overwrite the first one's backups; flock conflicts between two
    # opens of the file within one process too, so this process stands in for the other one
    _, cfg = make_config(tmp_path, shapes, epochs=1, steps_per_epoch=2)
    held = trainer._lock_run_dir(cfg["output"]["dir"])
    try:
        with pytest.raises(ConfigError, match=rf"is being trained by process {os.getpid()} on .+: wait for it"):
            train(cfg, verbose=0)
    finally:
        held.close()
    assert train(cfg, verbose=0)["steps"] == 2


def test_time_budget_stops_cleanly(tmp_path, shapes):
    _, cfg = make_config(tmp_path, shapes, "train.time_budget_min=0.2", epochs=200, steps_per_epoch=2)
    result = train(cfg, verbose=0)
    assert result["stopped_by_budget"] and result["epochs_done"] < 200
    rows = read_history(result["run_dir"])
    assert rows[-1]["val_mean_iou"] != ""  # the final model was validated
    # How close to the budget it stops depends on the machine's load (graph tracing, mostly); the arithmetic is
    # checked with a fake clock below.


def test_time_budget_sizes_the_decay_to_the_budget(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    state = callbacks.RunState(total_steps=1000)
    schedule = WarmupSchedule("cosine", 1e-3, total_steps=1000)
    model = types.SimpleNamespace(stop_training=False)
    budget = callbacks.TimeBudget(100.0, state, schedule, planned_steps=1000, steps_per_epoch=10)
    budget.set_model(model)
    budget.on_train_begin()
    # Steps take 1 s, each epoch end 5 s: 1.5 s per step in all, so about 60 of the 1000 planned steps fit.
    while not model.stop_training:
        budget.on_epoch_begin(state.epoch)
        for _ in range(10):
            clock[0] += 1.0
            state.global_step += 1
            budget.on_train_batch_end(0)
            if model.stop_training:
                break
        clock[0] += 5.0
        state.epoch += 1
    assert 90 <= state.elapsed() <= 100 + 1
    assert abs(state.total_steps - state.global_step) <= 3
    assert float(schedule(state.global_step)) < 1e-5


@pytest.mark.parametrize("setting, policy", [("true", "mixed_float16"), ("bfloat16", "mixed_bfloat16")])
def test_mixed_precision_runs_and_restores_the_policy(tmp_path, shapes, setting, policy):
    _, cfg = make_config(tmp_path, shapes, f"train.mixed_precision={setting}", epochs=1, steps_per_epoch=2)
    result = train(cfg, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert np.isfinite(float(read_history(result["run_dir"])[0]["loss"]))
    model = keras.saving.load_model(os.path.join(result["run_dir"], "last.keras"), compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} >= {policy}
    assert model.output.dtype == "float32"


def test_bad_sample_raises_data_error_naming_the_file(tmp_path, shapes):
    src = pathlib.Path(shapes["root"])
    folder = tmp_path / "folder"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for f in sorted((src / sub).iterdir()):
            (folder / sub / f.name).write_bytes(f.read_bytes())
    broken = sorted((folder / "images").iterdir())[0]
    broken.write_bytes(b"not a png")
    data = {"format": "folder", "root": str(folder), "image_size": [64, 64], "num_classes": 4,
            "splits": {"train": "0-19", "val": "20-23"}}
    _, cfg = make_config(tmp_path, data, "train.batch_size=24", epochs=1, steps_per_epoch=1)
    with pytest.raises(DataError, match=broken.name):
        train(cfg, verbose=0)


STRATEGY_RUN = """
import json, sys
import keras
import numpy as np
from kseg.config import load_config
from kseg.train import train

class Weights(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.total = float(sum(np.abs(w.numpy()).sum() for w in self.model.trainable_weights))

weights = Weights()
result = train(load_config(sys.argv[1], sys.argv[2:]), verbose=0, callbacks=[weights])
print("RESULT " + json.dumps({"replicas": result["replicas"], "global_batch": result["global_batch"],
                              "steps": result["steps"], "best_miou": result["best_miou"], "weights": weights.total}))
"""


def parse_result(proc):
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def two_replica_data(data):
    """``data`` with 6 validation samples: 2 CPU replicas cannot split 5 without an empty one (see
    test_validation_batch_leaves_no_replica_empty)."""
    return {**data, "splits": {"train": "0-17", "val": "18-23"}}


def test_validation_batch_leaves_no_replica_empty(monkeypatch):
    from kseg.train.trainer import _validation_batch

    assert _validation_batch(6, 2, 2) == 4  # batches 4 + 2: each replica gets 2, then 1
    assert _validation_batch(9, 4, 2) == 6  # 8 + 1 would leave a replica empty; 6 + 3 does not
    assert _validation_batch(8, 4, 2) == 8
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    with pytest.raises(ConfigError, match="5 validation samples cannot be split over 2 CPU replicas"):
        _validation_batch(5, 2, 2)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # without oneDNN an empty replica batch is fine
    assert _validation_batch(5, 2, 2) == 4


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory, shapes):
    """One epoch under MirroredStrategy over two logical CPUs, in a fresh process."""
    folder = tmp_path_factory.mktemp("mirrored")
    path, cfg = make_config(folder, two_replica_data(shapes), batch_size=2, epochs=1)
    proc = subprocess.run([sys.executable, "-c", STRATEGY_RUN, str(path), "train.strategy.name=mirrored",
                           "train.strategy.devices=[/cpu:0, /cpu:1]"], cwd=REPO, capture_output=True, text=True,
                          timeout=240)
    return cfg, parse_result(proc)


def test_mirrored_strategy_on_two_logical_cpus(mirrored_run):
    cfg, result = mirrored_run
    assert (result["replicas"], result["global_batch"], result["steps"]) == (2, 4, 4)
    rows = read_history(cfg["output"]["dir"])
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"])) and rows[0]["val_mean_iou"] != ""


def test_mirrored_loss_is_averaged_over_replicas(mirrored_run):
    # The validation loss under two replicas must match the same model's loss on one device; a loss returning
    # an unscaled scalar per replica is summed instead (twice the value, and twice the gradient).
    cfg, _ = mirrored_run
    rows = read_history(cfg["output"]["dir"])
    model = keras.saving.load_model(os.path.join(cfg["output"]["dir"], "last.keras"), compile=False)
    model.compile(loss=build_loss(cfg["loss"], cfg["data"]["num_classes"], cfg["data"]["ignore_index"]))
    single = model.evaluate(build_dataset(cfg["data"], "val", 4), verbose=0, return_dict=True)
    assert float(rows[-1]["val_loss"]) == pytest.approx(single["loss"], rel=0.05)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# slow: two TensorFlow processes (about 20 s on an idle 2-core machine); the mirrored strategy tests stay in the
# default run
@pytest.mark.slow
def test_multi_worker_with_two_local_processes(tmp_path, shapes):
    path, cfg = make_config(tmp_path, two_replica_data(shapes), batch_size=2, epochs=1)
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        env = {**os.environ, "TF_CONFIG": tf_config, "TF_CPP_MIN_LOG_LEVEL": "2"}
        procs.append(subprocess.Popen([sys.executable, "-c", STRATEGY_RUN, str(path), "train.strategy=multi_worker"],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            outputs.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    chief, other = (parse_result(p) for p in outputs)
    assert (chief["replicas"], chief["global_batch"], chief["steps"]) == (2, 4, 4)
    # Synchronous training: both workers end with the same weights and the same (all-reduced) validation score.
    assert chief["weights"] == pytest.approx(other["weights"], rel=1e-6)
    assert chief["best_miou"] == pytest.approx(other["best_miou"])
    run_dir = cfg["output"]["dir"]
    assert {"best.keras", "last.keras", "history.csv"} <= set(os.listdir(run_dir))
    assert len(read_history(run_dir)) == 1


def test_crop_training_saves_a_full_size_model(tmp_path, shapes):
    """Training on 32x32 crops validates and saves the same weights at the full 64x64 size."""
    data = {**shapes, "crop_size": [32, 32]}
    _, cfg = make_config(tmp_path, data, epochs=1)
    result = train(cfg, verbose=0)
    assert not np.isnan(result["best_miou"])
    best = keras.saving.load_model(os.path.join(result["run_dir"], "best.keras"), compile=False)
    assert tuple(best.inputs[0].shape[1:3]) == (64, 64)
    # the saved full-size model scores what the trainer reported for it
    cm = evaluate_model(best, build_dataset(cfg["data"], "val", 4), cfg["data"]["num_classes"])
    assert cm.mean_iou() == pytest.approx(result["best_miou"], abs=1e-6)


# the crop case trains at 192x192 (about 40 s on an idle 2-core machine): slow; test_crop_training_saves_a_full_size_model
# covers crop training in the default run
@pytest.mark.parametrize("size, crop", [(96, None), pytest.param(192, 96, marks=pytest.mark.slow)])
def test_auxiliary_head_trains_and_is_dropped_from_the_saved_model(tmp_path, size, crop):
    """``model.aux_weight`` trains PSPNet with its auxiliary head (two losses); what validates and is saved is the
    single-output inference model, also when training on crops. (PSPNet's 6-bin pooling at output stride 16
    needs sides divisible by 96.)"""
    data = {"format": "synthetic", "root": str(tmp_path / "shapes"), "image_size": [size, size],
            "synthetic": {"num_images": 8}, **({"crop_size": [crop, crop]} if crop else {})}
    path = tmp_path / "aux.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "pspnet", "backbone": "mobilenetv2", "backbone_kwargs": {"alpha": 0.35},
                  "output_stride": 16, "aux_weight": 0.4},
        "data": data, "train": {"epochs": 1, "batch_size": 2, "steps_per_epoch": 2},
        "output": {"dir": str(tmp_path / "run")}}))
    cfg = load_config(path)
    result = train(cfg, verbose=0)
    assert not np.isnan(result["best_miou"])
    best = keras.saving.load_model(os.path.join(result["run_dir"], "best.keras"), compile=False)
    assert len(best.outputs) == 1
    assert not [layer.name for layer in best.layers if layer.name.startswith("pspnet_aux")]
    cm = evaluate_model(best, build_dataset(cfg["data"], "val", 2), cfg["data"]["num_classes"])
    assert cm.mean_iou() == pytest.approx(result["best_miou"], abs=1e-6)


def test_aux_weight_needs_a_model_with_an_auxiliary_head(tmp_path, shapes):
    with pytest.raises(ConfigError, match="model.aux_weight.*no auxiliary head"):
        make_config(tmp_path, shapes, "model.aux_weight=0.4")
