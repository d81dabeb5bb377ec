"""Loading cost of one ScanNet-sized scene for the `scannet3d` format: `read_ply` of a binary and an ASCII
``*_vh_clean_2.labels.ply`` (81,369 vertices and 153,587 faces, the size of scene0000_00) and `voxelize` to the
config's 48 x 96 x 96 grid of 0.1 m. Synthetic points in an 8 x 8 x 3 m room; times are the best of ``--repeat``.

Usage: python benchmarks/scannet3d_load.py [--repeat 3]
"""

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import data_fixtures as fx  # noqa: E402
from kseg.data.formats_3d import SCANNET20_NYU40_IDS, read_ply, voxelize  # noqa: E402

VERTICES, FACES = 81369, 153587


def best_of(repeat, fn):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    points = rng.uniform([0, 0, 0], [8, 8, 3], (VERTICES, 3)).astype(np.float32)
    labels = rng.choice(np.array((0,) + SCANNET20_NYU40_IDS), VERTICES)
    faces = rng.integers(0, VERTICES, (FACES, 3))
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("binary_little_endian", "ascii"):
            path = pathlib.Path(tmp) / f"{fmt}.ply"
            fx.write_ply(path, points, labels, fmt, faces=faces)
            seconds, vertices = best_of(args.repeat, lambda: read_ply(path))
            assert len(vertices) == VERTICES and (vertices["label"] == labels).all()
            print(f"read_ply {fmt:<21} {path.stat().st_size / 2**20:6.1f} MiB  {seconds * 1000:8.1f} ms")
    lut = np.full(41, 255)
    lut[list(SCANNET20_NYU40_IDS)] = np.arange(20)
    seconds, (_, grid, _) = best_of(args.repeat, lambda: voxelize(points, lut[labels], (48, 96, 96), 0.1))
    print(f"voxelize 48x96x96 @ 0.1 m  {seconds * 1000:8.1f} ms  ({int((grid != 255).sum())} labelled voxels); "
          f"a dense (voxels x 256 labels) int32 vote table would take {48 * 96 * 96 * 256 * 4 / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
