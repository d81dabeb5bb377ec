"""Data pipeline scale benchmark: peak memory must not grow with the number of images.

Writes a Cityscapes-layout dataset (512x1024) of each size, trains a tiny U-Net for one epoch on it
through ``kseg.data.build_dataset(..., augment=True)`` in a fresh subprocess per size, and prints peak
RSS and images/s of each run and the RSS ratio of the two extremes, measured in the same invocation
(the machine is shared, so only ratios within one run compare). Samples are decoded, flipped and
batched at 512x1024, then cut to 128x256 random crops (``data.crop_size``) for the model: a full-size
epoch of 2000 images takes hours on a 2-core CPU, and a small model makes growth of the data
pipeline's memory stand out.

Usage:
    .venv/bin/python benchmarks/data_scale.py [--sizes 200 2000] [--out DIR] [--data DIR]

The generated data lives in a temporary folder (under ``--data``, default /tmp) removed at the end.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

SIZE = (512, 1024)
CROP = (128, 256)
CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg")
# labelId and an RGB colour for each kind of region drawn; 0 (unlabeled) and 1 (ego vehicle) map to ignore.
SKY, BUILDING, VEGETATION, ROAD, SIDEWALK, CAR, POLE, PERSON, EGO = 23, 11, 21, 7, 8, 26, 17, 24, 1
COLOURS = {0: (0, 0, 0), SKY: (70, 130, 180), BUILDING: (70, 70, 70), VEGETATION: (107, 142, 35),
           ROAD: (128, 64, 128), SIDEWALK: (244, 35, 232), CAR: (0, 0, 142), POLE: (153, 153, 153),
           PERSON: (220, 20, 60), EGO: (20, 20, 20)}


def render_frame(rng, size=SIZE):
    """Draws a smooth street-like frame.

    Args:
        rng: numpy Generator.
        size: (H, W).

    Returns:
        (image uint8 (H, W, 3) RGB, labelIds uint8 (H, W)).
    """
    h, w = size
    ids = np.full((h, w), BUILDING, np.uint8)
    rows = np.arange(h)[:, None]
    # Skyline: a step function of building heights, sky above it.
    edges = np.sort(rng.integers(0, w, 11))
    skyline = (rng.uniform(0.1, 0.4, 12) * h)[np.searchsorted(edges, np.arange(w), side="right")]
    ids[rows < skyline[None]] = SKY
    horizon = int(h * rng.uniform(0.45, 0.55))
    cols = np.arange(w)[None, :]
    spread = (rows - horizon).clip(0) * w / (h - horizon) / 2  # the road widens towards the camera
    road = (rows >= horizon) & (np.abs(cols - w / 2) < spread * 0.9 + w * 0.02)
    ids[(rows >= horizon) & ~road] = SIDEWALK
    ids[road] = ROAD
    for _ in range(int(rng.integers(2, 5))):
        cx, cy, r = rng.integers(0, w), rng.integers(h // 4, horizon), rng.integers(h // 20, h // 8)
        cv2.circle(ids, (int(cx), int(cy)), int(r), VEGETATION, -1)
    for _ in range(int(rng.integers(2, 6))):
        x, y = int(rng.integers(0, w - w // 8)), int(rng.integers(horizon, h - h // 6))
        cv2.rectangle(ids, (x, y), (x + w // 10, y + h // 12), CAR, -1)
    for _ in range(int(rng.integers(1, 4))):
        x = int(rng.integers(0, w))
        cv2.rectangle(ids, (x, h // 5), (x + 4, horizon + h // 10), POLE, -1)
        cv2.rectangle(ids, (x + 20, horizon), (x + 30, horizon + h // 10), PERSON, -1)
    ids[h - h // 12:] = EGO
    ids[:, :6] = 0
    lut = np.zeros((256, 3), np.float32)
    for label_id, colour in COLOURS.items():
        lut[label_id] = colour
    shade = cv2.resize(rng.uniform(-25, 25, (8, 16)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    image = cv2.GaussianBlur(lut[ids], (5, 5), 0) + shade[..., None]
    return image.clip(0, 255).astype(np.uint8), ids


def write_cityscapes(root, num_images, size=SIZE, unique=8, seed=0):
    """Writes ``leftImg8bit/train/<city>/*_leftImg8bit.png`` and ``gtFine/train/<city>/*_gtFine_labelIds.png``.

    Only ``unique`` frames are drawn; the other files are hard links to them (copies where links fail):
    every sample is still its own path, read and decoded separately.

    Args:
        root: dataset folder (created).
        num_images: number of image/mask pairs.
        size: (H, W).
        unique: number of distinct frames.
        seed: seed of the drawing.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    first = []
    for i in range(num_images):
        city = CITIES[i % len(CITIES)]
        stem = f"{city}_{i:06d}_000019"
        paths = (root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png",
                 root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png")
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        if i < unique:
            image, ids = render_frame(rng, size)
            # Low compression: the point is many files, not small ones.
            assert cv2.imwrite(str(paths[0]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
            assert cv2.imwrite(str(paths[1]), ids, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            first.append(paths)
            continue
        for source, path in zip(first[i % unique], paths):
            try:
                os.link(source, path)
            except OSError:
                shutil.copyfile(source, path)
    return root


def train_one_epoch(root, batch_size):
    """Child process: one epoch of a tiny U-Net on ``root``; returns images/s after the first batch."""
    import keras

    import kseg
    from kseg.data import build_dataset, data_errors, num_samples

    cfg = {"format": "cityscapes", "root": str(root), "image_size": list(SIZE), "crop_size": list(CROP),
           "augment": {"hflip": True}}
    n = num_samples(cfg, "train")
    model = kseg.create_model("unet", num_classes=19, input_shape=(*CROP, 3), base_filters=4, depth=2)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))

    class Clock(keras.callbacks.Callback):
        # The first batch traces the graph; timing starts after it.
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter()

    clock = Clock()
    with data_errors():
        model.fit(build_dataset(cfg, "train", batch_size, augment=True), epochs=1, verbose=0, callbacks=[clock])
    return {"images": n, "images_per_s": (n - batch_size) / (time.perf_counter() - clock.start)}


def measure(root, batch_size):
    """Runs `train_one_epoch` in a fresh process; adds its peak RSS (MiB) from the kernel's accounting."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(root), "--batch-size", str(batch_size)],
                            stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the maximum over all children).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"benchmark child for {root} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    return dict(result, peak_rss_mib=usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000], help="dataset sizes (images)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", help="folder for data_scale.json (the results)")
    parser.add_argument("--data", help="parent folder of the temporary dataset (default: the system temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from kseg.native_log import start_tensorflow

        start_tensorflow()  # the parent, which prints the results, does not import TensorFlow
        print(json.dumps(train_one_epoch(args.child, args.batch_size)))
        return
    work = Path(tempfile.mkdtemp(prefix="kseg-data-scale-", dir=args.data))
    rows = []
    try:
        for n in args.sizes:
            start = time.perf_counter()
            root = write_cityscapes(work / f"n{n}", n)
            written = time.perf_counter() - start
            rows.append(dict(measure(root, args.batch_size), write_s=written))
            shutil.rmtree(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'images':>7} {'peak RSS MiB':>13} {'images/s':>9} {'write s':>8}")
    for row in rows:
        print(f"{row['images']:>7} {row['peak_rss_mib']:>13.0f} {row['images_per_s']:>9.1f} {row['write_s']:>8.1f}")
    ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"peak RSS ratio {rows[-1]['images']} / {rows[0]['images']} images: {ratio:.3f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "data_scale.json").write_text(json.dumps({"runs": rows, "rss_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
