"""Callbacks of a training run: mid-epoch backup and resume, validation with best/last checkpoints and
history, and the time budget. They share one :class:`RunState`, which is what a resumed run restores."""

import csv
import dataclasses
import glob
import io
import json
import math
import os
import shutil
import statistics
import time

import keras

from export.convert import write_atomic
from kseg.errors import ConfigError

__all__ = ["RunState", "Progress", "Backup", "Recorder", "TimeBudget", "save_model_atomic"]


@dataclasses.dataclass
class RunState:
    """Progress that must survive a restart.

    Attributes:
        epoch: the epoch in progress (0-based); equals the number of completed epochs.
        step: optimizer steps done within ``epoch``.
        global_step: optimizer steps done in total.
        best_miou: best validation mIoU so far (``best.keras`` holds that model); -1 before any validation.
        best_epoch: 1-based epoch of ``best_miou``.
        elapsed_s: training wall time, summed over the processes of this run.
        total_steps: length of the learning-rate decay (shortened by a time budget).
    """

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_miou: float = -1.0
    best_epoch: int = 0
    elapsed_s: float = 0.0
    total_steps: int = 0

    def __post_init__(self):
        self._clock = time.monotonic() - self.elapsed_s

    def elapsed(self):
        """Seconds of training so far, including the processes before a resume."""
        return time.monotonic() - self._clock


def save_model_atomic(model, path):
    """``model.save(path)`` through a temporary file in the same folder, so ``path`` is never a torn file."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Progress(keras.callbacks.Callback):
    """Keeps ``state.epoch``/``step``/``global_step`` current; it goes first, so later callbacks see this step.

    A time budget can end an epoch early; then the position stays mid-epoch.
    """

    def __init__(self, state, steps_per_epoch):
        super().__init__()
        self.state = state
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        # A resumed run re-enters its interrupted epoch at the restored step.
        if epoch != self.state.epoch:
            self.state.epoch, self.state.step = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self.state.step += 1
        self.state.global_step += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.state.step >= self.steps_per_epoch:
            self.state.epoch, self.state.step = epoch + 1, 0


class Backup(keras.callbacks.Callback):
    """Backs up model, optimizer and :class:`RunState` every ``every_steps`` steps and at each epoch end.

    This replaces ``keras.callbacks.BackupAndRestore``, which in Keras 3.15 restores only the epoch number: a run
    killed mid-epoch repeats that epoch from its first step (more steps in total than asked for), and after a
    resume its mid-epoch backups record epoch 0. Here the state records the step too, and the trainer finishes
    the interrupted epoch with only its remaining steps. It goes last, so the epoch-end backup includes what the
    other callbacks updated (the best mIoU).

    Files in ``backup_dir``: ``state.json`` names the weights file it belongs to (``ckpt-<global step>.weights.h5``,
    model plus optimizer variables). The weights are written first and ``state.json`` replaced atomically after,
    so a kill at any moment leaves a consistent pair.

    Args:
        backup_dir: folder of the backup (only this callback writes there).
        state: the run's :class:`RunState`.
        every_steps: steps between mid-epoch backups.
        fingerprint: the settings a resumed run must share with the interrupted one.
        write: False on the non-chief workers of a multi-worker run (they only restore).
    """

    def __init__(self, backup_dir, state, every_steps, fingerprint, write=True):
        super().__init__()
        self.backup_dir = backup_dir
        self.state = state
        self.every_steps = every_steps
        self.fingerprint = fingerprint
        self.write = write
        self._state_path = os.path.join(backup_dir, "state.json")
        self._weights = None

    def restore(self, model, schedule):
        """Loads the backup into ``model`` (built, optimizer built) and ``self.state``.

        Returns:
            True when a backup was restored, False when there is none.

        Raises:
            ConfigError: the backup was made with different settings.
        """
        if not os.path.exists(self._state_path):
            return False
        with open(self._state_path, encoding="utf-8") as f:
            saved = json.load(f)
        changed = sorted(k for k in set(saved["fingerprint"]) | set(self.fingerprint)
                         if saved["fingerprint"].get(k) != self.fingerprint.get(k))
        if changed:
            raise ConfigError(f"{self.backup_dir} holds an interrupted run with other settings ({', '.join(changed)}); "
                              "restore them to resume it, or delete that folder to start over")
        model.load_weights(os.path.join(self.backup_dir, saved["weights"]))
        self._weights = saved["weights"]
        self.state.__dict__.update(RunState(**saved["state"]).__dict__)
        schedule.set_total_steps(self.state.total_steps)
        return True

    def on_train_batch_end(self, batch, logs=None):
        if self.state.global_step % self.every_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def save(self):
        """Writes the backup now."""
        if not self.write:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = f"ckpt-{self.state.global_step}.weights.h5"
        # The same step can be saved twice (a step backup, then the epoch end): state.json points at those
        # weights, which are still current, so they must not be rewritten in place.
        if weights != self._weights:
            self.model.save_weights(os.path.join(self.backup_dir, weights))
        self.state.elapsed_s = self.state.elapsed()
        text = json.dumps({"weights": weights, "state": dataclasses.asdict(self.state),
                           "fingerprint": self.fingerprint}, indent=1)
        write_atomic(self._state_path, text.encode("utf-8"))
        self._weights = weights
        for old in glob.glob(os.path.join(self.backup_dir, "ckpt-*.weights.h5")):
            if os.path.basename(old) != weights:
                os.remove(old)

    def describe(self):
        """Where a resume would start, for messages."""
        if self._weights is None:
            return f"No backup was written yet (the first comes after {self.every_steps} steps or one epoch)"
        with open(self._state_path, encoding="utf-8") as f:
            saved = json.load(f)["state"]
        return (f"The backup in {self.backup_dir} is intact: epoch {saved['epoch'] + 1}, step {saved['step']} "
                f"(global step {saved['global_step']})")

    def delete(self):
        """Removes the backup once the run has finished."""
        if self.write:
            shutil.rmtree(self.backup_dir, ignore_errors=True)


class Recorder(keras.callbacks.Callback):
    """At each epoch end: validates (every ``val_every`` epochs, after the last one and when training stops
    early), keeps ``best.keras`` (best validation mIoU) and ``last.keras``, and appends to ``history.csv``.

    It must come before the callbacks that log (TensorBoard, the progress bar) so that they see ``val_*``.

    Args:
        run_dir: the run folder.
        val_data: validation dataset.
        state: the run's :class:`RunState` (``best_miou`` survives a resume through it).
        val_every: epochs between validations.
        epochs: the last epoch (1-based) always validates.
        write: False on non-chief workers: they validate (it is a collective) but write nothing.
        deploy_model: what validates and what ``best.keras`` / ``last.keras`` hold, when it is not the trained
            model itself: the same architecture at the full image size when training runs on crops, and/or
            without the auxiliary heads (``kseg.models.inference_model``). It receives the trained weights by
            layer name. ``None``: the trained model itself.
        monitor: the validation log that picks ``best.keras`` (higher is better; ``state.best_miou`` holds its
            best value): ``val_mean_iou``, or ``val_mask_ap`` for instance models.
        score: optional ``fn(model) -> dict`` of further validation numbers (e.g. COCO mask AP), logged with a
            ``val_`` prefix at each validation.
    """

    def __init__(self, run_dir, val_data, state, val_every, epochs, write=True, deploy_model=None,
                 monitor="val_mean_iou", score=None):
        super().__init__()
        self.deploy_model = deploy_model
        self.monitor = monitor
        self.score = score
        self.run_dir = run_dir
        self.val_data = val_data
        self.state = state
        self.val_every = val_every
        self.epochs = epochs
        self.write = write
        self.history = _read_history(os.path.join(run_dir, "history.csv"), state.epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        deploy = self.model
        if self.deploy_model is not None:
            _copy_weights_by_name(self.model, self.deploy_model)
            deploy = self.deploy_model
        if (epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs or self.model.stop_training:
            val = deploy.evaluate(self.val_data, verbose=0, return_dict=True)
            if self.score is not None:
                val.update(self.score(deploy))
            logs.update({f"val_{k}": float(v) for k, v in val.items()})
        miou = logs.get(self.monitor)
        if miou is not None and not math.isnan(miou) and miou > self.state.best_miou:
            self.state.best_miou, self.state.best_epoch = miou, epoch + 1
            if self.write:
                save_model_atomic(deploy, os.path.join(self.run_dir, "best.keras"))
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if not self.write:
            return
        save_model_atomic(deploy, os.path.join(self.run_dir, "last.keras"))
        self.history.append({"epoch": epoch + 1, "step": self.state.global_step,
                             "time_s": round(self.state.elapsed(), 2), **logs})
        write_atomic(os.path.join(self.run_dir, "history.csv"), _history_csv(self.history))


def _copy_weights_by_name(src, dst):
    """Copy ``src``'s weights into every weighted layer of ``dst`` (one builder names the layers alike; ``dst``
    may lack auxiliary heads). Layers the two models share are skipped."""
    for layer in dst.layers:
        if layer.weights:
            source = src.get_layer(layer.name)
            if source is not layer:
                layer.set_weights(source.get_weights())


def _read_history(path, completed_epochs):
    """Rows of an earlier process of this run, up to the epoch it resumes from (a later row may have been written
    before the kill but after the backup, and that epoch runs again)."""
    if completed_epochs == 0 or not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        if int(row["epoch"]) <= completed_epochs:
            out.append({k: _number(v) for k, v in row.items() if v != ""})
    return out


def _number(text):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _history_csv(rows):
    first = ["epoch", "step", "time_s", "lr"]
    keys = first + sorted({k for row in rows for k in row} - set(first))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


class TimeBudget(keras.callbacks.Callback):
    """Stops training cleanly when ``budget_s`` would run out, and sizes the learning-rate decay to fit the budget.

    Two costs are measured: a step (median of recent steps, without the first step of an epoch) and the latest
    epoch end (validation, checkpoints, backup: from the last step of an epoch to the first of the next).
    At each epoch start and every ``every`` steps the decay length becomes ``min(planned steps, steps done + steps the remaining time
    allows)`` with each step charged its share of the epoch-end work, so the decay ends near the budget rather
    than being cut off at a high learning rate. Training stops when the time left no longer covers one step and
    one epoch end; that last epoch end still runs (validation included), so the best checkpoint sees the final
    model. Before the first epoch end has been measured only steps are charged.

    Args:
        budget_s: the budget in seconds, counted over every process of the run.
        state: the run's :class:`RunState` (``elapsed``, ``total_steps``).
        schedule: the :class:`~kseg.train.schedules.WarmupSchedule` to resize.
        planned_steps: ``epochs x steps_per_epoch``, the upper bound.
        steps_per_epoch: optimizer steps per epoch.
        every: steps between re-estimates.
    """

    def __init__(self, budget_s, state, schedule, planned_steps, steps_per_epoch, every=10):
        super().__init__()
        self.budget_s = budget_s
        self.state = state
        self.schedule = schedule
        self.planned_steps = planned_steps
        self.steps_per_epoch = steps_per_epoch
        self.every = every
        self.stopped = False
        self._steps = []
        self._epoch_end = 0.0
        self._last = None
        self._epoch_start = True

    def on_train_begin(self, logs=None):
        # The first step of a fit traces the graph: it is no sample of a step's cost.
        self._last = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._last is not None:
            self._epoch_end = time.monotonic() - self._last
            self._resize()
        self._epoch_start = True

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if self._last is not None and not self._epoch_start:
            self._steps = (self._steps + [now - self._last])[-50:]
        self._last, self._epoch_start = now, False
        if not self._steps:
            return
        if self.budget_s - self.state.elapsed() <= statistics.median(self._steps) + self._epoch_end:
            self.model.stop_training = self.stopped = True
        elif self.state.global_step % self.every == 0:
            self._resize()

    def _resize(self):
        if not self._steps:
            return
        per_step = statistics.median(self._steps) + self._epoch_end / self.steps_per_epoch
        left = self.budget_s - self.state.elapsed() - self._epoch_end
        fits = self.state.global_step + int(left / per_step)
        self.state.total_steps = max(self.state.global_step + 1, min(self.planned_steps, fits))
        self.schedule.set_total_steps(self.state.total_steps)
