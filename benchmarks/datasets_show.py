"""Writes docs/img/datasets_show_nyudv2.png: `kseg data show` on the tiny NYU-Depth v2 fixture of the tests.

Usage: python benchmarks/datasets_show.py [--out docs/img/datasets_show_nyudv2.png]
"""

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import data_fixtures as fx  # noqa: E402
from kseg.data.tool import data_config, show  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "datasets_show_nyudv2.png"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, _ = fx.write_nyudv2(pathlib.Path(tmp))
        cfg = data_config(root, "nyudv2")
        cfg["image_size"] = [72, 96]  # the 24 x 32 fixture, enlarged to be seen (random pixels: PNG stays < 200 KB)
        n = show(cfg, args.out, split="train", num=3, cols=3)
    print(f"wrote {n} samples to {args.out}")


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    main()
