"""Mask R-CNN runs of docs/maskrcnn.md: validation mask AP of trained runs, the overlay pictures of docs/img, and the
TFLite exports (float32, dynamic range, and an attempt at full int8) verified against Keras.

Train first (each config stops at its ``train.time_budget_min``)::

    kseg train configs/maskrcnn_mobilenetv2_synthetic-128x128.yaml
    pip download stardist==0.9.2 --no-deps -d runs/nuclei
    kseg train configs/maskrcnn_mobilenetv2_nuclei-256x256.yaml

then::

    python benchmarks/maskrcnn.py                      # mask AP table + docs/img/maskrcnn_<dataset>.png
    python benchmarks/maskrcnn.py --export             # + float32 / dynamic / int8 TFLite, verified

The AP is COCO's (pycocotools COCOeval on the validation split, ``kseg.instance.evaluate``) of the run's
``best.keras`` (the epoch with the best validation mask AP).
"""

import argparse
import csv
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = {"synthetic": "configs/maskrcnn_mobilenetv2_synthetic-128x128.yaml",
           "nuclei": "configs/maskrcnn_mobilenetv2_nuclei-256x256.yaml"}
PICTURE_BYTES = 200_000  # docs pictures stay small


def _history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return {"epochs": len(rows), "steps": int(rows[-1]["step"]), "time_min": float(rows[-1]["time_s"]) / 60}


def _picture(samples_png, path):
    """The report's samples (ground truth | detections per row) as a docs picture under ``PICTURE_BYTES``."""
    import cv2

    image = cv2.imread(samples_png)
    while True:
        ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if len(png) <= PICTURE_BYTES or image.shape[1] < 200:
            break
        image = cv2.resize(image, (image.shape[1] * 3 // 4, image.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)
    with open(path, "wb") as f:
        f.write(png.tobytes())
    return len(png)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--export", action="store_true", help="also export float32 / dynamic / int8 and verify them")
    ap.add_argument("--samples", type=int, default=3, help="validation images in the picture")
    args = ap.parse_args(argv)

    from kseg.config import load_config
    from kseg.errors import KsegError
    from kseg.evaluate import evaluate_instances

    rows = []
    for name in args.datasets:
        cfg = load_config(CONFIGS[name])
        run_dir = cfg["output"]["dir"]
        model = os.path.join(run_dir, "best.keras")
        if not os.path.isfile(model):
            print(f"{name}: no {model}; run `kseg train {CONFIGS[name]}` first")
            continue
        report = os.path.join(run_dir, "report-val")
        metrics = evaluate_instances(cfg, model, out_dir=report, num_samples=args.samples, verbose=False)
        picture = os.path.join("docs", "img", f"maskrcnn_{name}.png")
        size = _picture(os.path.join(report, "samples.png"), picture)
        rows.append((name, _history(run_dir), metrics))
        print(f"{name}: {metrics['num_images']} val images, mask AP {metrics['mask_ap']:.4f} AP50 "
              f"{metrics['mask_ap50']:.4f} AP75 {metrics['mask_ap75']:.4f}, box AP {metrics['box_ap']:.4f} AP50 "
              f"{metrics['box_ap50']:.4f}; picture {picture} ({size / 1e3:.0f} KB)")
        if args.export:
            from export.api import export_model

            for mode in ("float32", "dynamic", "int8"):
                out = os.path.join(run_dir, f"best_{mode}.tflite")
                try:
                    result = export_model(model, mode=mode, config_path=CONFIGS[name], out_path=out, verbose=False)
                except KsegError as e:
                    print(f"  {mode}: FAILED: {e}")
                    continue
                v = result["verification"]
                print(f"  {mode}: {result['size_bytes'] / 1e6:.2f} MB, invoke "
                      + ", ".join(f"{ms:.1f} ms ({t} thr)" for t, ms in v["latency_ms"].items())
                      + f", counts equal {v['same_count']}/{v['num_images']}, max box err {v['max_box_error']:.3g} "
                        f"px, mask err {v['mean_mask_error']:.3g}; val mask AP keras {v['keras']['mask_ap']:.4f} "
                        f"tflite {v['tflite']['mask_ap']:.4f} (AP50 {v['keras']['mask_ap50']:.4f} / "
                        f"{v['tflite']['mask_ap50']:.4f})")
    if rows:
        print("\n| data | epochs | steps | train min | val mask AP | AP50 | AP75 | box AP | box AP50 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, h, m in rows:
            print(f"| {name} | {h['epochs']} | {h['steps']} | {h['time_min']:.1f} | {m['mask_ap']:.3f} | "
                  f"{m['mask_ap50']:.3f} | {m['mask_ap75']:.3f} | {m['box_ap']:.3f} | {m['box_ap50']:.3f} |")
    return 0


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    sys.exit(main())
