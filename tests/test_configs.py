"""Every shipped config: named {model}_{backbone}_{dataset}-{HxW}.yaml and valid against its dataset's layout."""

import pathlib
import re

import pytest

import kseg
import data_fixtures
from data_fixtures import write_cityscapes, write_isbi, write_nifti, write_voc
from kseg.config import load_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
# The model part is a registered name (some have underscores, e.g. attention_to_scale), longest first; backbone
# and dataset have none, so the split is unambiguous. Volumes: {D}x{H}x{W}.
_MODEL_NAMES = "|".join(re.escape(n) for n in sorted(kseg.list_models(), key=len, reverse=True))
NAME = re.compile(rf"^(?P<model>{_MODEL_NAMES})(_(?P<backbone>[a-z0-9]+))?_(?P<dataset>[a-z0-9]+)"
                  r"-((?P<d>\d+)x)?(?P<h>\d+)x(?P<w>\d+)$")
# ISBI has 30 training images; the configs split them by index
FIXTURES = {"voc": write_voc, "cityscapes": write_cityscapes, "isbi": lambda tmp: write_isbi(tmp, n=30),
            "nifti": lambda tmp: write_nifti(tmp, n=2, channels=2)}
# Datasets II: every format's fixture writer is data_fixtures.write_<format>
FIXTURES.update({fmt: getattr(data_fixtures, f"write_{fmt}") for fmt in (
    "pascal_context", "coco", "coco_stuff", "coco_panoptic", "ade20k", "stanford_background", "nyudv2", "sunrgbd",
    "scannet", "scannet3d", "sun3d", "uwrgbd", "stanford2d3d", "shapenet_part", "sydney_urban")})
# nuclei (Mask R-CNN): validation only checks that the folder exists; the wheel is read when the data is loaded
FIXTURES["nuclei"] = lambda tmp: (tmp,)


def test_there_are_configs():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_named_and_valid(path, tmp_path):
    parts = NAME.match(path.stem)
    assert parts, (f"{path.name} does not follow {{model}}_{{backbone}}_{{dataset}}-{{H}}x{{W}}.yaml "
                   "with a name from kseg.list_models()")
    text = path.read_text()
    fmt = re.search(r"^\s+format:\s*(\w+)", text, re.M).group(1)
    overrides = []
    if fmt in FIXTURES:  # the real data is not here: point the config at a tiny copy in the real layout
        root = FIXTURES[fmt](tmp_path)[0]
        overrides.append(f"data.root={root}")
    elif fmt == "synthetic":
        overrides.append(f"data.root={tmp_path / 'synthetic'}")
    cfg = load_config(path, overrides)
    assert cfg["model"]["name"] == parts["model"] and parts["model"] in kseg.list_models()
    if parts["backbone"]:
        assert cfg["model"].get("backbone") == parts["backbone"]
    size = [int(parts[k]) for k in ("d", "h", "w") if parts[k]]
    assert list(cfg["data"]["image_size"]) == size
