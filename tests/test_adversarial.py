"""Adversarial training (Luc et al. 2016): one step updates both networks, the saved model is the plain segmentor,
an interrupted run resumes both networks and both optimizers, ``kseg train`` runs a ``trainer: adversarial``
config, and the config checks its options."""

import csv

import keras
import numpy as np
import pytest
import yaml

import kseg
from kseg.cli import main as kseg_main
from kseg.config import load_config
from kseg.data import num_samples
from kseg.errors import ConfigError
from kseg.losses import build_loss
from kseg.saving import load_model
from kseg.train import train
from kseg.train.adversarial import AdversarialModel, discriminator

TINY_MODEL = {"name": "unet", "base_filters": 8, "depth": 2}
ADVERSARIAL = {"name": "adversarial", "weight": 0.5, "filters": 8, "lr": 1e-3}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    data = {"format": "synthetic", "root": str(root), "image_size": [32, 32], "synthetic": {"num_images": 16},
            "splits": {"train": "0-11", "val": "12-15"}}
    num_samples(data, "train")
    return data


def write_config(folder, data, **train_section):
    section = {"epochs": 2, "batch_size": 4, "steps_per_epoch": 2, "checkpoint_every_steps": 100,
               "trainer": ADVERSARIAL, **train_section}
    path = folder / "adversarial.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "data": data, "train": section,
                                    "output": {"dir": str(folder / "run")}}))
    return path


def snapshot(variables):
    return [np.array(v.numpy()) for v in variables]


def state_of(model):
    """Every variable of both networks and both optimizers, by group."""
    return {"segmentor": snapshot(model.segmentor.weights), "discriminator": snapshot(model.discriminator.weights),
            "optimizer": snapshot(model.optimizer.variables), "d_optimizer": snapshot(model.d_optimizer.variables)}


def tiny_adversarial(seed):
    keras.utils.set_random_seed(seed)
    seg = kseg.create_model("unet", num_classes=3, input_shape=(32, 32, 3), base_filters=4, depth=2)
    disc = discriminator(3, (32, 32, 3), encoding="product", filters=4)
    model = AdversarialModel(seg, disc, weight=0.1, d_optimizer=keras.optimizers.Adam(1e-3))
    # Eager: one step does not pay for tracing the graph.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=build_loss("ce", 3), run_eagerly=True)
    model.build_optimizers()
    return model, seg, disc


def test_one_step_updates_both_networks_and_the_weights_file_holds_all_of_it(tmp_path):
    model, seg, disc = tiny_adversarial(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 3, (2, 32, 32)).astype(np.int32)
    y[:, :4] = 255  # ignored rows are zero in both label maps the discriminator sees
    before_s, before_d = snapshot(seg.trainable_variables), snapshot(disc.trainable_variables)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert {"loss", "d_loss", "adv_loss"} <= set(logs)
    assert np.isfinite(logs["d_loss"]) and logs["d_loss"] > 0 and np.isfinite(logs["adv_loss"])
    for before, net in ((before_s, seg), (before_d, disc)):
        changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, net.trainable_variables)]
        assert all(changed), f"{net.name}: {changed.count(False)} of {len(changed)} variables did not move"
    # The two optimizers keep to their own network.
    assert int(model.optimizer.iterations) == 1 and int(model.d_optimizer.iterations) == 1
    # Ignored pixels: the same map whatever label they carry.
    truth, fake = model._label_maps(y, seg(x))
    assert float(np.abs(truth[:, :4]).max()) == 0 and float(np.abs(fake[:, :4]).max()) == 0
    np.testing.assert_allclose(np.asarray(truth[:, 4:]).sum(-1), 1.0)

    # What the trainer's backup writes (save_weights) restores both networks and both optimizers exactly.
    model.save_weights(tmp_path / "ckpt.weights.h5")
    other, _, _ = tiny_adversarial(1)
    other.load_weights(tmp_path / "ckpt.weights.h5")
    saved, restored = state_of(model), state_of(other)
    assert len(saved["d_optimizer"]) == 2 + 2 * len(disc.trainable_variables)  # iterations, lr, two moments each
    for group, values in saved.items():
        assert len(restored[group]) == len(values), group
        for a, b in zip(values, restored[group]):
            np.testing.assert_array_equal(a, b, err_msg=group)


def test_discriminator_encodings():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (2, 16, 24, 3)).astype(np.float32)
    maps = keras.ops.one_hot(rng.integers(0, 5, (2, 16, 24)), 5)
    product = discriminator(5, (16, 24, 3), encoding="product", filters=4)
    # product: 3 image channels x 5 class maps feed the first convolution
    assert product.get_layer("disc_stage1_conv").kernel.shape == (3, 3, 15, 4)
    basic = discriminator(5, (16, 24, 3), encoding="basic", filters=4)
    assert basic.get_layer("disc_label_conv").kernel.shape == (5, 5, 5, 4)
    for net in (product, basic):
        out = net.predict_on_batch([image, maps])
        assert out.shape == (2, 1) and np.isfinite(out).all()


def test_discriminator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="encoding"):
        discriminator(2, (32, 32, 3), encoding="scaling")
    with pytest.raises(ValueError, match="volumes"):
        discriminator(2, (8, 32, 32, 1))


def test_interrupted_run_resumes_through_kseg_train_and_saves_the_plain_segmentor(tmp_path, shapes, capsys):
    class CtrlC(keras.callbacks.Callback):
        """Ctrl-C in epoch 2, after the epoch-end backup of epoch 1."""

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 3:
                raise KeyboardInterrupt

    # Training on crops: a full-size copy validates and is saved, filled by layer name through the wrapper.
    path = write_config(tmp_path, {**shapes, "crop_size": [24, 24]})
    with pytest.raises(KeyboardInterrupt):
        train(load_config(path), verbose=0, callbacks=[CtrlC()])
    assert "epoch 2, step 0 (global step 2)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="other settings.*train.trainer"):
        train(load_config(path, ["train.trainer.weight=0.2"]), verbose=0)

    assert kseg_main(["train", str(path), "--quiet"]) in (0, None)
    out = capsys.readouterr().out
    assert "adversarial (weight 0.5, product encoding)" in out and "resuming epoch 2 at step 0/2" in out
    run_dir = tmp_path / "run"
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, 2), (2, 4)]
    assert all(np.isfinite(float(r["d_loss"])) and r["val_mean_iou"] != "" for r in rows)
    assert not (run_dir / "backup").exists()
    # The saved model is the segmentor: kseg's loader reads it, and it has exactly the plain U-Net's layers.
    model = load_model(str(run_dir / "best.keras"))
    plain = kseg.create_model("unet", num_classes=4, input_shape=(32, 32, 3), base_filters=8, depth=2)
    assert [layer.name for layer in model.layers] == [layer.name for layer in plain.layers]
    assert load_config(run_dir / "run.yaml")["train"]["trainer"] == {**ADVERSARIAL, "encoding": "product"}


def test_config_checks_the_trainer_options(tmp_path, shapes):
    path = write_config(tmp_path, shapes)
    cfg = load_config(path, ["train.trainer=standard"])
    assert cfg["train"]["trainer"]["name"] == "standard"
    with pytest.raises(ConfigError, match="train.trainer.weight.*adversarial"):
        load_config(path, ["train.trainer={name: standard, weight: 0.3}"])
    with pytest.raises(ConfigError, match="train.trainer.encoding.*product, basic"):
        load_config(path, ["train.trainer.encoding=scaled"])
