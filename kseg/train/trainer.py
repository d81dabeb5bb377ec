"""The trainer behind ``kseg train``: one resolved config in, a run folder out."""

import json
import math
import os
import socket
import sys
import time

import keras
import tensorflow as tf

from kseg.config import dump_config
from kseg.errors import ConfigError
from kseg.models.registry import inference_model
from kseg.native_log import held_native_output
from kseg.train.callbacks import Backup, Progress, Recorder, RunState, TimeBudget
from kseg.train.distribute import adapt_model, build_strategy, is_chief
from kseg.train.schedules import WarmupSchedule, build_optimizer

__all__ = ["train"]


def _fingerprint(cfg, steps_per_epoch, global_batch):
    """What a resumed run must share with the interrupted one for its backup to mean the same thing."""
    t = cfg["train"]
    fp = {"model": cfg["model"], "loss": cfg["loss"], "data.num_classes": cfg["data"]["num_classes"],
          "data.image_size": cfg["data"]["image_size"], "train.epochs": t["epochs"], "train.optimizer": t["optimizer"],
          "train.schedule": t["schedule"], "train.mixed_precision": t["mixed_precision"],
          "global batch": global_batch, "steps per epoch": steps_per_epoch}
    if t["trainer"]["name"] != "standard":  # a backup of another trainer holds other networks
        fp["train.trainer"] = t["trainer"]
    return json.loads(json.dumps(fp))


def mixed_policy(setting):
    """The Keras policy for ``train.mixed_precision`` (true / "float16" / "bfloat16")."""
    return "mixed_bfloat16" if setting == "bfloat16" else "mixed_float16"


def _shard(ds, policy):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return ds.with_options(options)


def _build_model(cfg, schedule, size):
    """The compiled model at ``size`` (H, W); ``schedule=None`` for a model that only validates.

    With ``model.aux_weight`` the model is built with its auxiliary head (deep supervision) and each auxiliary
    output's loss counts with that weight; a validation-only model is the ``inference_model`` view without them.
    """
    import kseg

    data = cfg["data"]
    kwargs = {k: v for k, v in cfg["model"].items() if k not in ("name", "aux_weight")}
    shape = kwargs.pop("input_shape", None)
    # data.channels (volumes: modalities) decides; else model.input_shape's last entry; else RGB
    channels = data.get("channels") or (shape[-1] if shape and shape[-1] else 3)
    if shape and shape[-1] and shape[-1] != channels:
        raise ConfigError(f"model.input_shape has {shape[-1]} channels but data.channels is {channels}; "
                          "remove model.input_shape (the data decides)")
    aux_weight = float(cfg["model"].get("aux_weight", 0))
    if aux_weight and schedule is not None:
        kwargs["aux_head"] = True
    try:
        model = kseg.create_model(cfg["model"]["name"], num_classes=data["num_classes"],
                                  input_shape=(*size, channels), **kwargs)
    except ValueError as e:  # builders check their arguments; in a config they are the user's to fix
        raise ConfigError(f"model {cfg['model']['name']!r}: {e}") from None
    if _is_instance(cfg):
        # Mask R-CNN computes its losses in its own train_step / test_step: compile takes the optimizer only.
        model.compile(optimizer=build_optimizer(cfg["train"]["optimizer"], schedule))
        model.optimizer.build(model.trainable_variables)
        return model
    if schedule is None:
        model = inference_model(model)
    elif cfg["train"]["trainer"]["name"] == "adversarial":
        model = _adversarial(model, cfg)
    _compile(model, cfg, build_optimizer(cfg["train"]["optimizer"], schedule) if schedule is not None else "sgd",
             aux_weight)
    if schedule is not None:
        # Optimizer variables must exist (in the strategy's scope) before a backup can be loaded into them.
        if hasattr(model, "build_optimizers"):
            model.build_optimizers()
        else:
            model.optimizer.build(model.trainable_variables)
    return model


def _is_instance(cfg):
    from kseg.models.registry import model_task

    return model_task(cfg["model"]["name"]) == "instance"


def _datasets(cfg, batch_size, replicas, seed):
    """``(steps per epoch, training dataset, validation dataset)``: images and label maps, or for an instance model
    the Mask R-CNN training batches of ``kseg.instance.data``. ``batch_size`` is per replica."""
    from kseg.data import build_dataset, num_samples

    t = cfg["train"]
    global_batch = batch_size * replicas
    val_batch = global_batch
    if _is_instance(cfg):
        from kseg.instance.data import build_instance_dataset, list_instance_samples

        count = len(list_instance_samples(cfg["data"], "train"))
        build = build_instance_dataset
    else:
        count = num_samples(cfg["data"], "train")
        build = build_dataset
        if replicas > 1:
            val_batch = _validation_batch(num_samples(cfg["data"], "val"), batch_size, replicas)
    steps_per_epoch = t["steps_per_epoch"] or math.ceil(count / global_batch)
    train_ds = build(cfg["data"], "train", global_batch, augment=True, shuffle=True, repeat=True, seed=seed)
    val_ds = build(cfg["data"], "val", val_batch, augment=False, shuffle=False, seed=seed)
    return steps_per_epoch, train_ds, val_ds


def _validation_batch(count, batch_size, replicas):
    """The largest validation batch (``replicas`` x at most ``batch_size``) whose last, short batch still gives
    every replica a sample: on an empty replica batch TensorFlow's oneDNN convolution returns a wrongly shaped
    result (oneDNN is on in kseg, see kseg/__init__.py). The batch size changes nothing else in validation."""
    for per_replica in range(batch_size, 0, -1):
        rest = count % (per_replica * replicas)
        if rest == 0 or rest >= replicas:
            return per_replica * replicas
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1" and not tf.config.list_logical_devices("GPU"):
        raise ConfigError(f"the {count} validation samples cannot be split over {replicas} CPU replicas without "
                          f"leaving one empty, on which TensorFlow's oneDNN kernels fail: use a multiple of "
                          f"{replicas} validation samples, or run with TF_ENABLE_ONEDNN_OPTS=0")
    return batch_size * replicas


def _mask_ap_score(val_ds, num_classes):
    """The validation score of an instance model: COCO mask AP / AP50 and box AP (``kseg.evaluate``)."""

    def score(model):
        from kseg.evaluate import instance_scores

        scores = instance_scores(model, val_ds, num_classes)
        # COCOeval gives -1 (NaN here) when nothing was detected at all: for ``best.keras`` that is an AP of 0
        return {k: 0.0 if math.isnan(v) else v for k, v in scores.items()}

    return score


def _adversarial(segmentor, cfg):
    """``segmentor`` wrapped for adversarial training (``train.trainer``, see ``kseg.train.adversarial``)."""
    from kseg.train.adversarial import AdversarialModel, discriminator

    opts = cfg["train"]["trainer"]
    try:
        net = discriminator(cfg["data"]["num_classes"], tuple(segmentor.inputs[0].shape[1:]), opts["encoding"],
                            opts["filters"])
    except ValueError as e:
        raise ConfigError(f"train.trainer: {e}") from None
    return AdversarialModel(segmentor, net, opts["weight"], keras.optimizers.Adam(opts["lr"]),
                            cfg["data"]["ignore_index"])


def _segmentor(model):
    """The segmentation network itself (an adversarial model wraps it)."""
    return getattr(model, "segmentor", model)


def _compile(model, cfg, optimizer, aux_weight=0.0):
    """Compile with the config's loss on every output (auxiliary ones weighted ``aux_weight``) and the mean IoU
    of the first output."""
    from kseg.losses import build_loss
    from kseg.metrics.keras_metric import SegMeanIoU

    data = cfg["data"]
    loss = build_loss(cfg["loss"], data["num_classes"], data["ignore_index"])
    metric = SegMeanIoU(data["num_classes"], data["ignore_index"])
    extra = len(_segmentor(model).outputs) - 1
    if not extra:
        model.compile(optimizer=optimizer, loss=loss, metrics=[metric])
        return
    model.compile(optimizer=optimizer, loss=[loss] * (extra + 1), loss_weights=[1.0] + [aux_weight] * extra,
                  metrics=[[metric]] + [[] for _ in range(extra)])


def train(cfg, verbose=1, callbacks=()):
    """Trains the model of a resolved config (``kseg.config.load_config``); resumes an interrupted run.

    The run folder (``output.dir``) receives ``run.yaml`` (the resolved config), ``history.csv`` (one row per
    epoch), ``best.keras`` (best validation mIoU; instance models: best COCO mask AP), ``last.keras``, TensorBoard
    logs in ``logs/`` and, while the run is unfinished, ``backup/``. Running the same config again after an
    interruption (Ctrl-C, a kill, a crash) continues from the last backup, mid-epoch included, with the best score so
    far; a finished run starts over. While a run trains, its ``.lock`` keeps a second training out of the folder.

    Args:
        cfg: resolved config.
        verbose: Keras verbosity: 1 progress bar, 2 one line per epoch, 0 silent.
        callbacks: extra Keras callbacks, run after kseg's own (a step's backup is on disk when they see it).

    Returns:
        dict with ``run_dir``, ``monitor`` (``"val_mean_iou"``, or ``"val_mask_ap"`` for instance models),
        ``best_miou`` (best value of ``monitor``, NaN if never validated), ``best_epoch``, ``history`` (list of
        per-epoch dicts, as in history.csv), ``wall_time_s`` (this process), ``steps`` (optimizer steps in total),
        ``epochs_done``, ``replicas``, ``global_batch``, ``resumed_from`` (None, or the restored position
        ``{"epoch", "step", "global_step", "best_miou"}``), ``stopped_by_budget``.

    Raises:
        ConfigError: invalid strategy setup, or a backup made with other settings.
        DataError: a bad sample (the message names the file).
    """
    from kseg.data import data_errors

    start = time.monotonic()
    t = cfg["train"]
    # First: multi-worker collectives must be configured before TensorFlow runs anything. The devices exist from
    # here on; TensorFlow's CUDA probing lines are held back when it was asked for warnings only (kseg.native_log).
    with held_native_output():
        strategy = build_strategy(t["strategy"])
        tf.config.list_logical_devices()
    keras.utils.set_random_seed(t["seed"])
    chief = is_chief(strategy)
    run_dir = os.path.abspath(cfg["output"]["dir"])
    replicas = strategy.num_replicas_in_sync
    global_batch = t["batch_size"] * replicas
    instance = _is_instance(cfg)
    with data_errors():
        steps_per_epoch, train_ds, val_ds = _datasets(cfg, t["batch_size"], replicas, t["seed"])
    # Training batches are split among the workers; every worker scores the whole validation set, so that all
    # of them run the same number of steps (the summed confusion counts give the same mIoU).
    train_ds = _shard(train_ds, tf.data.experimental.AutoShardPolicy.DATA)
    val_ds = _shard(val_ds, tf.data.experimental.AutoShardPolicy.OFF)
    planned = t["epochs"] * steps_per_epoch

    lock = _lock_run_dir(run_dir) if chief else None
    policy = keras.mixed_precision.global_policy()
    if t["mixed_precision"]:
        keras.mixed_precision.set_global_policy(mixed_policy(t["mixed_precision"]))
    try:
        with strategy.scope():
            schedule = WarmupSchedule(t["schedule"]["name"], t["optimizer"]["lr"], planned,
                                      round(t["schedule"]["warmup_epochs"] * steps_per_epoch))
            image_size = tuple(cfg["data"]["image_size"])
            crop = cfg["data"].get("crop_size")
            # Training on crops: the model trains at the crop size and a full-size copy validates and is saved.
            model = _build_model(cfg, schedule, tuple(crop) if crop else image_size)
            deploy = None
            outputs = 1 if instance else len(_segmentor(model).outputs)
            if crop and tuple(crop) != image_size:
                deploy = _build_model(cfg, None, image_size)
            elif outputs > 1 or model is not _segmentor(model):
                # validate and save the inference view: without the auxiliary head, without a discriminator
                deploy = inference_model(_segmentor(model))
                _compile(deploy, cfg, "sgd")
        if outputs > 1:  # every auxiliary head learns the same labels
            train_ds = train_ds.map(lambda x, y: (x, (y,) * outputs))
        adapt_model(model, strategy)
        state = RunState(total_steps=planned)
        backup = Backup(os.path.join(run_dir, "backup"), state, t["checkpoint_every_steps"],
                        _fingerprint(cfg, steps_per_epoch, global_batch), write=chief)
        resumed = backup.restore(model, schedule)
        resumed_from = ({"epoch": state.epoch, "step": state.step, "global_step": state.global_step,
                         "best_miou": state.best_miou} if resumed else None)
        if chief:
            os.makedirs(run_dir, exist_ok=True)
            dump_config(cfg, os.path.join(run_dir, "run.yaml"))
        if verbose and chief:
            print(_describe(cfg, run_dir, strategy, global_batch, steps_per_epoch, state if resumed else None))

        recorder = Recorder(run_dir, val_ds, state, t["val_every"], t["epochs"], write=chief, deploy_model=deploy,
                            monitor="val_mask_ap" if instance else "val_mean_iou",
                            score=_mask_ap_score(val_ds, cfg["data"]["num_classes"]) if instance else None)
        budget = None
        own = [Progress(state, steps_per_epoch)]
        if t["time_budget_min"] is not None:
            budget = TimeBudget(t["time_budget_min"] * 60, state, schedule, planned, steps_per_epoch)
            own.append(budget)
        own.append(recorder)
        if chief:
            own.extend(_tensorboard(os.path.join(run_dir, "logs"), verbose))
        all_callbacks = [*own, backup, *callbacks]

        def fit(first_epoch, last_epoch, steps):
            model.fit(train_ds, initial_epoch=first_epoch, epochs=last_epoch, steps_per_epoch=steps,
                      callbacks=all_callbacks, verbose=verbose if chief else 0, shuffle=False)

        try:
            with data_errors():
                if state.step:
                    # Finish the interrupted epoch with its remaining steps only.
                    fit(state.epoch, state.epoch + 1, steps_per_epoch - state.step)
                if state.epoch < t["epochs"] and not model.stop_training:
                    fit(state.epoch, t["epochs"], steps_per_epoch)
        except KeyboardInterrupt:
            if chief:
                print(f"\nInterrupted. {backup.describe()}; run the same command again to resume.", file=sys.stderr)
            raise
        backup.delete()
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if lock is not None:
            lock.close()

    return {
        "run_dir": run_dir,
        "monitor": recorder.monitor,
        "best_miou": state.best_miou if state.best_epoch else float("nan"),
        "best_epoch": state.best_epoch or None,
        "history": recorder.history,
        "wall_time_s": time.monotonic() - start,
        "steps": state.global_step,
        "epochs_done": state.epoch,
        "replicas": replicas,
        "global_batch": global_batch,
        "resumed_from": resumed_from,
        "stopped_by_budget": bool(budget and budget.stopped),
    }


def _lock_run_dir(run_dir):
    """An exclusive lock on the run folder, held until ``close()`` or the process's end, however it ends: two
    trainings in one folder (the same command in two terminals) would overwrite each other's backups. ``None``
    where the file system or the OS has no ``flock`` (Windows, some network mounts)."""
    try:
        import fcntl
    except ImportError:
        return None
    os.makedirs(run_dir, exist_ok=True)
    f = open(os.path.join(run_dir, ".lock"), "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        f.close()
        raise ConfigError(f"{run_dir} is being trained by {owner}: wait for it to end, or train into another "
                          "folder (output.dir=...)") from None
    except OSError:
        f.close()
        return None
    f.truncate(0)
    f.write(f"process {os.getpid()} on {socket.gethostname()}")
    f.flush()
    return f


def _tensorboard(log_dir, verbose):
    """The TensorBoard callback, or none when the ``tensorboard`` package is missing (TF 2.21 no longer pulls it
    in, and Keras fails at the first summary without it)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if verbose:
            print("  no TensorBoard logs: `pip install tensorboard` to get them", file=sys.stderr)
        return []
    return [keras.callbacks.TensorBoard(log_dir, write_graph=False)]


def _describe(cfg, run_dir, strategy, global_batch, steps_per_epoch, resumed):
    t = cfg["train"]
    lines = [f"kseg train: {cfg['model']['name']} -> {run_dir}",
             f"  {type(strategy).__name__} x{strategy.num_replicas_in_sync} replica(s), global batch {global_batch}, "
             f"{t['epochs']} epochs x {steps_per_epoch} steps"
             + (f", {mixed_policy(t['mixed_precision'])}" if t["mixed_precision"] else "")
             + (f", adversarial (weight {t['trainer']['weight']}, {t['trainer']['encoding']} encoding)"
                if t["trainer"]["name"] == "adversarial" else "")
             + (f", time budget {t['time_budget_min']} min" if t["time_budget_min"] is not None else "")]
    if resumed:
        name = "mask AP" if _is_instance(cfg) else "mIoU"
        best = f", best val {name} {resumed.best_miou:.4f} (epoch {resumed.best_epoch})" if resumed.best_epoch else ""
        lines.append(f"  resuming epoch {resumed.epoch + 1} at step {resumed.step}/{steps_per_epoch} "
                     f"(global step {resumed.global_step}{best})")
    return "\n".join(lines)
