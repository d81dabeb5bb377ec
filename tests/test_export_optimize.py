"""Pruning, clustering and QAT on the tf_keras twin in a worker process (``export.optimize``): the sparsity and
cluster counts reached per layer, 2:4 structure, QAT's int8 agreement, and QuantizeConfigs for every zoo model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from export.optimize import optimize
from kseg.config import load_config
from test_export import trained  # noqa: F401  (the tiny trained U-Net fixture)


def _optimize(trained, **kw):  # noqa: F811
    from kseg.saving import load_model

    root, path = trained
    cfg = load_config(path)
    model = load_model(root / "best.keras")
    kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    return model, optimize(model, "unet", kwargs, cfg["data"], work_dir=str(root), verbose=False, **kw)


def test_prune_then_cluster_reach_sparsity_and_cluster_count_per_layer(trained):  # noqa: F811
    """75% magnitude pruning then 8 clusters (sparsity preserved): every pruned kernel is within 1% of 75% zeros
    and holds at most 8 distinct values; the weights come back into the Keras 3 model."""
    model, result = _optimize(trained, prune=0.75, cluster=8, steps=20, mode="float32")
    assert result["sparsity"] and set(result["sparsity"]) == set(result["clusters"])
    for layer, sparsity in result["sparsity"].items():
        assert abs(sparsity - 0.75) <= 0.01, (layer, sparsity)
        assert result["clusters"][layer] <= 8, (layer, result["clusters"][layer])
    optimized = result["keras_model"]
    assert optimized is not model and type(optimized).__module__.startswith("keras")
    kernel = optimized.get_layer("unet_bottleneck_conv2").kernel.numpy()
    assert abs(np.mean(kernel == 0) - 0.75) <= 0.01 and np.unique(kernel).size <= 8
    # sparse, shared weights compress: the gzip size falls well below the dense model's
    assert result["gzip_ratio"] < 0.6, result["gzip_ratio"]


@pytest.mark.slow
def test_two_four_structured_sparsity(trained):  # noqa: F811
    _, result = _optimize(trained, prune="2:4", steps=10, mode="float32")
    # every layer whose input channels come in fours holds the pattern in every group; the first conv (3 colour
    # channels) cannot and stays dense
    assert result["sparsity"]["unet_enc0_conv1"] == 0.0
    for layer, share in result["m_by_n"].items():
        assert share == 1.0 and abs(result["sparsity"][layer] - 0.5) <= 0.01, (layer, share)


@pytest.mark.slow
def test_qat_int8_agrees_with_keras(trained):  # noqa: F811
    from export.api import export_model

    root, path = trained
    result = export_model(root / "best.keras", "int8", config_path=path, out_path=root / "qat.tflite",
                          num_calibration=8, qat=True, fine_tune_steps=30, verbose=False)
    assert result["report"]["optimized"]["custom_quantize_configs"] == {"unet_preprocess": "OutputQuantizeConfig"}
    int8 = result["report"]["stages"]["int8"]
    assert int8["agreement"] >= 0.9 and abs(int8["miou"] - result["keras_miou"]) <= 0.05, int8


# Models of the original zoo: QAT must cover them; models added later report their verdict (docs/export.md).
QAT_COVERED = ("unet", "deeplabv3plus", "segnet", "fpn", "fcn32s", "fcn16s", "fcn8s", "deeplabv1", "deeplabv2",
               "deeplabv3", "pspnet", "hrnetv2", "vnet")


@pytest.mark.slow
def test_every_zoo_model_annotates_for_qat():
    """Every registered model's twin (small test config) goes through ``quantize_apply`` with the default registry
    plus ``CUSTOM_CONFIGS``, or fails with a message naming the uncovered layer."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"""
import sys, json
sys.path.insert(0, {here!r})
from export.optimize_worker import annotate_for_qat, quant, SCOPE
from test_models import SMALL_CONFIGS
from kseg.models.registry import inference_model, list_models
from kseg.models.twin import build_twin
import tf_keras
verdicts = {{}}
for name in list_models(task="semantic"):
    tf_keras.backend.clear_session()  # each model from a clean graph, as the worker process builds it
    try:
        annotated, c = annotate_for_qat(inference_model(build_twin(name, **SMALL_CONFIGS[name])))
        with quant.quantize_scope(SCOPE):
            quant.quantize_apply(annotated)
        verdicts[name] = sorted(set(c.values()))
    except Exception as e:
        verdicts[name] = type(e).__name__ + ": " + str(e).splitlines()[0]
print(json.dumps(verdicts))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(here))
    assert run.returncode == 0, run.stderr[-3000:]
    verdicts = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(verdicts, indent=1))
    for name in QAT_COVERED:
        assert isinstance(verdicts[name], list), (name, verdicts[name])
    for name, verdict in verdicts.items():
        assert isinstance(verdict, list) or "QuantizeConfig" in verdict or "layer" in verdict, (name, verdict)
    assert verdicts["unet"] == ["OutputQuantizeConfig"]  # only the Rescaling preprocess is outside the registry
    assert "WeightsQuantizeConfig" in verdicts["vnet"]  # Conv3D and PReLU
