import os

# Keep TensorFlow quiet and deterministic enough for tests on a 2-core machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")

import importlib.util
import pathlib

import pytest

import kseg  # noqa: F401  (its environment defaults, oneDNN on, before any test module loads TensorFlow)

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
MEMBRANE = SHARED / "data" / "isbi2012-membrane"


@pytest.fixture
def membrane_dir():
    if not (MEMBRANE / "train" / "image").is_dir():
        pytest.skip(f"real ISBI membrane data not found at {MEMBRANE} (it ships in ../shared beside the checkout)")
    return MEMBRANE


@pytest.fixture
def load_benchmark():
    """``load_benchmark("membrane")``: a script of benchmarks/ as a module (they are scripts, not a package)."""
    def load(name):
        path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
