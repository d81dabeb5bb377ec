"""Pruning, clustering and quantization-aware training with tensorflow-model-optimization, in a worker process.

tfmot works only on tf_keras models, and importing it turns ``tf.keras`` into tf_keras for the whole process
(DESIGN.md section 2). So the exporter builds the model's tf_keras twin here (``kseg.models.twin``), hands its
weights and a pool of augmented training samples to ``python -m export.optimize_worker``, and takes back the
stripped weights (moved into a Keras 3 copy of the model) or, after QAT, the int8 TFLite file.

- Pruning: magnitude pruning (Zhu & Gupta, "To prune, or not to prune", arXiv 1710.01878) with tfmot's polynomial
  decay schedule to the target sparsity, or 2:4 structured sparsity (two zeros in every four consecutive input
  weights, the NVIDIA Ampere pattern; tfmot ``sparsity_m_by_n``).
- Clustering: weight sharing (Han et al., "Deep Compression", ICLR 2016, arXiv 1510.00149), K centroids per kernel
  initialised linearly over the weights' range (the paper's best), sparsity preserved after pruning.
- QAT: fake-quantized fine-tuning (Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018, arXiv 1712.05877), pruning / cluster preserving after those.
- Each stage fine-tunes towards the trained model's own logits by default (distillation: Polino et al., "Model
  compression via distillation and quantization", ICLR 2018, arXiv 1802.05668), so that it recovers what the
  compression costs without drifting from the validated checkpoint; or on the labels (``target="labels"``).

Example:
    >>> from export.api import export_model
    >>> export_model("best.keras", "int8", config_path="unet.yaml", prune=0.75, fine_tune_steps=200)  # doctest: +SKIP
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from kseg.errors import ConfigError, DataError
from kseg.progress import Progress


def parse_prune(prune):
    """``prune`` as given (``0.75``, ``"0.75"`` or ``"2:4"``) -> a float sparsity in (0, 1) or ``"2:4"``."""
    if prune is None:
        return None
    if isinstance(prune, str) and ":" in prune:
        if prune.strip() != "2:4":
            raise ConfigError(f"--prune {prune!r}: the structured pattern supported is 2:4 (tfmot's M:N pruning)")
        return "2:4"
    try:
        sparsity = float(prune)
    except ValueError:
        raise ConfigError(f"--prune {prune!r}: give a sparsity in (0, 1), e.g. 0.75, or 2:4") from None
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"--prune {sparsity}: the sparsity must be in (0, 1) (the fraction of weights set to zero)")
    return sparsity


# Adam's rates for the fine-tuning (docs/export.md: the targets were measured at them). Pruning and clustering
# move the weights far and need the larger one; QAT starts from calibrated ranges at the float model's accuracy,
# and at 2e-4 its 300 steps drift a trained U-Net by 0.6 points whether fake-quantized or not.
FINE_TUNE_LR = 2e-4
QAT_LR = 2e-5


def stage_rates(lr):
    """``(pruning / clustering rate, QAT rate)``: ``lr`` for both when given, else the defaults."""
    return (FINE_TUNE_LR, QAT_LR) if lr is None else (lr, lr)


# What the fine-tuning aims at: the float model's own logits (distillation), or the training labels.
FINE_TUNE_TARGETS = ("float", "labels")


def check_options(prune, cluster, qat, mode, lr, target="float"):
    """Validate the optimization options before any work is done; raises ``ConfigError``."""
    parse_prune(prune)
    if target not in FINE_TUNE_TARGETS:
        raise ConfigError(f"--fine-tune-target {target!r}: choose one of {', '.join(FINE_TUNE_TARGETS)}")
    if lr is not None and (not isinstance(lr, (int, float)) or not 0 < lr < 1):
        raise ConfigError(f"--lr {lr!r}: the fine-tuning learning rate must be a number in (0, 1), e.g. {FINE_TUNE_LR}")
    if cluster is not None and (not isinstance(cluster, int) or cluster < 2):
        raise ConfigError(f"--cluster {cluster!r}: the number of clusters must be an integer >= 2")
    if qat and mode not in ("int8", "edgetpu"):
        raise ConfigError(f"--qat trains for int8 inference; use it with --to int8 or edgetpu, not {mode}")


# Layers QAT annotates and fine-tunes but whose int8 file fails, by class: (what happens, what to do instead),
# measured on the small test configurations by benchmarks/qat_coverage.py (docs/export.md, "QAT coverage").
NOT_INT8 = {
    "CrfRnn": ("its mean-field step divides messages by kernel sums, and with int8 tensors a divisor reaches the zero "
               "point: TFLite's int8 DIV kernel stops (div.cc 'data[i] != zero_point')",
               "export this model --to float16 or dynamic, or export its base network to int8 and refine its "
               "output with the CRF post-processor (kseg predict | evaluate --refine crf)"),
    "SequenceSweep": ("its recurrent WHILE loops crash TensorFlow 2.21's int8 converter, and unrolled (unroll: true) "
                      "the QAT model converts but the int8 file does not follow it (argmax agreement 31%, chance "
                      "33%): tfmot has no RNN cells, so the gates' inner tensors get no QAT range",
                      "export without --qat: plain post-training --to int8 of the model built with unroll: true "
                      "(docs/rnn.md: 88-94% agreement)"),
}


def check_qat_int8(model):
    """Raise ``ConfigError`` naming the first layer of ``model`` in ``NOT_INT8``, what fails and what to do."""
    for layer in model.layers:
        if type(layer).__name__ in NOT_INT8:
            reason, instead = NOT_INT8[type(layer).__name__]
            raise ConfigError(f"--qat: layer {layer.name!r} ({type(layer).__name__}) has no working QAT int8 form: "
                              f"{reason}. Instead, {instead}")


def pool_size(steps, batch_size):
    """How many samples ``fine_tune_pool`` draws for ``steps`` batches: half as many as the steps see (each is
    seen about twice), at least 16 and at most 256 (the pool goes to the worker in one file)."""
    return max(16, min(256, steps * batch_size // 2))


def fine_tune_pool(data_cfg, size, seed=0):
    """``size`` augmented training samples at the model's input size (no random crops) as uint8 arrays: the
    fine-tuning data handed to the worker process, which must not build Keras 3 input pipelines."""
    from kseg.data import build_dataset

    cfg = dict(data_cfg, crop_size=None)
    xs, ys = [], []
    for x, y in build_dataset(cfg, "train", batch_size=1, augment=bool(cfg.get("augment")), shuffle=True,
                              repeat=True, seed=seed):
        xs.append(np.clip(np.round(x.numpy()[0]), 0, 255).astype(np.uint8))
        ys.append(y.numpy()[0].astype(np.uint8))
        if len(xs) >= size:
            break
    if not xs:
        raise DataError("the config's train split is empty: pruning, clustering and QAT fine-tune on it")
    return np.stack(xs), np.stack(ys)


def fine_tune_batches(x, y, batch_size):
    """The fine-tuning stream of a ``fine_tune_pool``: float32 images, int32 labels, shuffled (seed 0), repeated,
    batched; the same for the worker's stages and for ``benchmarks/qat_control.py``'s float control."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y.astype(np.int32)))
    return data.shuffle(len(x), seed=0).repeat().batch(batch_size)


def run_worker(job_path, verbose=True):
    """Runs ``export.optimize_worker`` on ``job_path`` and, with ``verbose``, draws a progress bar per fine-tuning
    stage from the lines it reports. Its stderr (TensorFlow's) is kept, and shown only if it fails."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    bars = {}
    with tempfile.TemporaryFile("w+") as err:
        with subprocess.Popen([sys.executable, "-m", "export.optimize_worker", job_path], stdout=subprocess.PIPE,
                              stderr=err, text=True, env=env) as worker:
            for line in worker.stdout:  # also the converter's printf lines, which are not for users
                fields = line.rstrip("\n").split("\t")
                if verbose and len(fields) == 5 and fields[0] == "progress":
                    stage, done, total = fields[1], int(fields[2]), int(fields[3])
                    bar = bars.setdefault(stage, Progress(total, f"  {stage}", min_total=1))
                    bar.update(done, f"loss {fields[4]}")
        if worker.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"the optimization worker failed:\n{err.read()[-4000:]}")


def optimize(model, model_name, builder_kwargs, data_cfg, prune=None, cluster=None, qat=False, steps=100,
             batch_size=4, lr=None, loss="ce", target="float", calibration=None, mode="int8", io_dtype="uint8",
             work_dir=None, verbose=True):
    """Prune / cluster / QAT ``model`` on its tf_keras twin in a worker process; come back as TFLite.

    Args:
        model: the trained Keras 3 model.
        model_name, builder_kwargs: how it was built (``create_model(model_name, **builder_kwargs)``).
        data_cfg: the data section at the model's input size (fine-tuning data).
        prune: a sparsity in (0, 1) or ``"2:4"``.
        cluster: clusters per kernel (``None``: no clustering).
        qat: quantization-aware training; the worker converts the QAT model to full int8.
        steps, batch_size, lr: fine-tuning (Adam) for each of pruning, clustering and QAT; ``lr=None``:
            ``FINE_TUNE_LR`` for pruning and clustering, ``QAT_LR`` for QAT.
        loss: the fine-tuning loss, a ``kseg.losses.build_loss`` spec: the config's, so that fine-tuning keeps
            the objective the model was trained for (cross-entropy alone moves a CE + Dice model's membrane
            boundaries, docs/export.md).
        target: ``"float"``: each stage fine-tunes towards the trained float model's logits (distillation,
            ``kseg.losses.DistillationLoss``), so it recovers what pruning or quantization cost without drifting
            from the model the user validated; ``"labels"``: ``loss`` on the training labels.
        calibration: representative images for the int8 conversion.
        mode, io_dtype: the conversion (``export.convert.to_tflite``) of a pruned / clustered model.
        work_dir: where the worker's temporary folder goes.

    Returns:
        A dict: ``tflite`` (bytes), ``keras_model`` (the Keras 3 model with the pruned / clustered weights; the
        original model after QAT), per-layer ``sparsity`` and ``clusters``, ``m_by_n`` (2:4 share per layer),
        ``custom_quantize_configs`` and ``qat_int8_vs_fake_quant`` (the int8 file against the fake-quantized
        model: ``max_error``, ``max_error_steps``, ``agreement``) after QAT, the options, and ``gzip_ratio`` (gzip
        size of the result against the gzip size of the dense model converted the same way).
    """
    import gzip

    import keras

    from export.convert import to_tflite
    from kseg.models.registry import inference_model
    from kseg.models.twin import build_twin, transfer_weights

    prune = parse_prune(prune)
    check_options(prune, cluster, qat, mode, lr, target)
    if qat:
        check_qat_int8(model)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    kwargs = dict(builder_kwargs, num_classes=int(model.outputs[0].shape[-1]), input_shape=shape)
    twin = inference_model(build_twin(model_name, **kwargs))
    transfer_weights(model, twin)
    x, y = fine_tune_pool(data_cfg, pool_size(steps, batch_size))
    if work_dir is not None:  # the export's output folder, which may not exist yet
        os.makedirs(work_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".kseg-optimize-") as tmp:
        twin.save_weights(os.path.join(tmp, "twin.h5"))
        np.savez(os.path.join(tmp, "data.npz"), x=x, y=y)
        fine_tune_lr, qat_lr = stage_rates(lr)
        job = {"model": model_name, "builder_kwargs": kwargs, "weights": os.path.join(tmp, "twin.h5"),
               "data": os.path.join(tmp, "data.npz"), "prune": prune, "cluster": cluster, "qat": bool(qat),
               "steps": int(steps), "batch_size": int(batch_size), "lr": fine_tune_lr, "qat_lr": qat_lr, "loss": loss,
               "target": target, "io_dtype": io_dtype, "out": tmp}
        if qat:
            np.save(os.path.join(tmp, "calibration.npy"), np.stack(calibration).astype(np.float32))
            job["calibration"] = os.path.join(tmp, "calibration.npy")
        with open(os.path.join(tmp, "job.json"), "w") as f:
            json.dump(job, f)
        if verbose:
            aim = "the trained model's outputs (distillation)" if target == "float" else "the labels"
            print(f"fine-tuning the tf_keras twin in a worker process ({steps} steps per stage: "
                  f"{', '.join(k for k, v in (('prune', prune), ('cluster', cluster), ('qat', qat)) if v)}) "
                  f"towards {aim}")
        run_worker(os.path.join(tmp, "job.json"), verbose)
        with open(os.path.join(tmp, "result.json")) as f:
            result = json.load(f)
        twin.load_weights(os.path.join(tmp, "optimized.weights.h5"))
        optimized = keras.models.clone_model(model)
        transfer_weights(twin, optimized)
        qat_tflite = None
        if qat:
            with open(os.path.join(tmp, "qat.tflite"), "rb") as f:
                qat_tflite = f.read()
    convert_mode = "int8" if mode in ("int8", "edgetpu") else mode
    dense = to_tflite(model, convert_mode, representative_data=calibration, io_dtype=io_dtype)
    if qat:
        tflite, reference = qat_tflite, model
    else:
        tflite = to_tflite(optimized, convert_mode, representative_data=calibration, io_dtype=io_dtype)
        reference = optimized
    result.update(tflite=tflite, keras_model=reference, prune=prune, cluster=cluster, qat=bool(qat), steps=steps,
                  gzip_ratio=len(gzip.compress(tflite, 9)) / len(gzip.compress(dense, 9)))
    return result
