"""``train.strategy``: the tf.distribute strategy a run trains under.

- ``default``: one device (the first GPU, else the CPU); ``devices: [name]`` pins it.
- ``mirrored``: ``MirroredStrategy`` over ``devices`` (default: every local GPU). Naming more CPUs than the host
  shows (``devices: ["/cpu:0", "/cpu:1"]``) splits the CPU into logical devices, which works only before
  TensorFlow has initialised: that is how the tests run it on a CPU-only machine.
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured by the ``TF_CONFIG`` environment variable; every
  worker runs the same command and must see the same output folder (a shared file system) to resume.

``train.batch_size`` is per replica; the datasets are batched with ``batch_size x num_replicas_in_sync``.
"""

import os

import tensorflow as tf

from kseg.errors import ConfigError

__all__ = ["build_strategy", "is_chief", "adapt_model"]


def _split_cpu(devices):
    cpus = [d for d in devices if d.lower().lstrip("/").startswith(("cpu:", "device:cpu:"))]
    if len(cpus) < 2:
        return
    try:
        # Must come first: listing logical devices would initialise TensorFlow and freeze the layout.
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration() for _ in cpus]
        )
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < len(cpus):
            raise ConfigError(f"train.strategy.devices names {len(cpus)} CPU devices but TensorFlow already "
                              f"started with {have}; run training in a fresh process") from None


def build_strategy(spec):
    """Creates the strategy of ``train.strategy`` ({name, devices}).

    Raises:
        ConfigError: ``multi_worker`` without ``TF_CONFIG``, devices on a multi-worker run, or a strategy that
            needs a fresh process.
    """
    name, devices = spec["name"], spec.get("devices")
    if name == "multi_worker":
        if devices:
            raise ConfigError("train.strategy.devices: not used by multi_worker (each worker uses its local GPUs)")
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.strategy multi_worker needs the TF_CONFIG environment variable "
                              '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                              '"task": {"type": "worker", "index": 0}})')
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"train.strategy multi_worker: {e} (it must be created before TensorFlow runs "
                              "anything; train in a fresh process)") from None
    if devices:
        _split_cpu(devices)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if devices:
        if len(devices) != 1:
            raise ConfigError(f"train.strategy.devices: default uses one device, got {devices}; use mirrored")
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this process writes the run folder: always, except on non-chief multi-worker processes."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def adapt_model(model, strategy):
    """Works around two Keras 3.15 failures on ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585).

    1. Before training or evaluating, Keras reduces the first ``(images, labels)`` batch across replicas with one
       ``strategy.reduce`` call, which the multi-worker strategy cannot do for a tuple. The batch only provides
       shapes, so this worker's first local share of it serves instead.
    2. Every step reduces its scalar logs with ``strategy.reduce("MEAN", v, axis=0)``, invalid for scalars. The
       step logs only feed the progress bar, so they come from the first local replica; epoch logs and
       ``evaluate`` results are read from the metric variables, which aggregate over all workers.

    Other strategies are left alone. The second fix replaces a module function of Keras in this process, which
    is one worker of a multi-worker run.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = _first_local(strategy, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = symbolic_build
    reduce_per_replica = tf_trainer.reduce_per_replica
    if getattr(reduce_per_replica, "kseg_multi_worker", False):
        return

    def reduce_logs(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return _first_local(strategy, values)
        return reduce_per_replica(values, strategy, reduction)

    reduce_logs.kseg_multi_worker = True
    tf_trainer.reduce_per_replica = reduce_logs


def _first_local(strategy, values):
    return tf.nest.map_structure(
        lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v,
        values,
    )
