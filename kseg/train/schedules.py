"""Learning-rate schedules with linear warmup, and the optimizers of ``train.optimizer``."""

import math

import keras
from keras import ops

__all__ = ["WarmupSchedule", "build_optimizer"]


@keras.saving.register_keras_serializable(package="kseg")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``lr``, then cosine, polynomial (power 0.9, as in DeepLab) or constant decay to 0.

    The decay length lives in a variable so that a time budget can resize it while training runs
    (``set_total_steps``) without retracing the train step.

    Args:
        name: ``"cosine"``, ``"poly"`` or ``"constant"``.
        lr: peak learning rate.
        total_steps: optimizer steps over which the rate decays to 0.
        warmup_steps: steps of linear warmup from ``lr / warmup_steps``.

    Example:
        >>> schedule = WarmupSchedule("cosine", lr=1e-3, total_steps=1000, warmup_steps=50)
        >>> optimizer = keras.optimizers.Adam(learning_rate=schedule)
    """

    def __init__(self, name, lr, total_steps, warmup_steps=0):
        if name not in ("cosine", "poly", "constant"):
            raise ValueError(f"unknown schedule {name!r}; use cosine, poly or constant")
        self.name = name
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = keras.Variable(float(total_steps), dtype="float32", trainable=False, name="total_steps")

    def set_total_steps(self, steps):
        self.total_steps.assign(float(steps))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        # Warmup starts at lr / warmup_steps rather than 0 so that the first step already moves the weights.
        warm = self.lr * ops.minimum((step + 1.0) / warmup, 1.0)
        if self.name == "constant":
            return warm
        span = ops.maximum(ops.convert_to_tensor(self.total_steps) - self.warmup_steps, 1.0)
        t = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        if self.name == "cosine":
            decay = 0.5 * (1.0 + ops.cos(math.pi * t))
        else:
            decay = ops.power(1.0 - t, 0.9)
        return ops.where(step < self.warmup_steps, warm, self.lr * decay)

    def get_config(self):
        total = float(keras.ops.convert_to_numpy(self.total_steps))
        return {"name": self.name, "lr": self.lr, "total_steps": int(total), "warmup_steps": self.warmup_steps}


def build_optimizer(spec, schedule):
    """The optimizer of ``train.optimizer`` ({name, lr, weight_decay, momentum}) driven by ``schedule``.

    ``weight_decay`` is decoupled (AdamW style) for all three: Keras 3 applies it that way in every optimizer.
    ``momentum`` only applies to SGD.
    """
    decay = spec["weight_decay"] or None
    if spec["name"] == "adam":
        return keras.optimizers.Adam(learning_rate=schedule, weight_decay=decay)
    if spec["name"] == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=spec["weight_decay"])
    return keras.optimizers.SGD(learning_rate=schedule, momentum=spec["momentum"], weight_decay=decay)
