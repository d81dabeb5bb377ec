"""``make demo`` / ``kseg demo``: the whole pipeline in a few minutes on a laptop CPU.

1. generate the built-in synthetic dataset (textured shapes on noisy backgrounds) and train a small U-Net on it;
2. export the best checkpoint to full-int8 TFLite, calibrated on training images;
3. score the Keras model and the int8 model (through the edge runtime) on the same validation images;
4. run the edge runtime over a generated video, writing the overlay video and reporting FPS;
5. write overlay pictures of validation samples (ground truth | Keras | int8).
"""

import os
import subprocess
import sys
import time

from kseg.errors import KsegError


CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "unet_synthetic-96x96.yaml")


def demo(out_dir="demo_out", minutes=3.0, config_path=CONFIG):
    """Run the demo; returns the numbers it prints."""
    from export.api import export_model
    from kseg import viz
    from kseg.config import load_config
    from kseg.data import dataset_info
    from kseg.data.synthetic import write_video
    from kseg.evaluate import predictor, uint8_samples
    from kseg.train import train

    start = time.perf_counter()
    cfg = load_config(config_path, [f"output.dir={out_dir}/run", f"train.time_budget_min={minutes}"])
    print(f"[1/4] training {cfg['model']['name']} on synthetic data ({minutes:g} min budget)")
    trained = train(cfg, verbose=2)
    best = os.path.join(trained["run_dir"], "best.keras")

    print("[2/4] exporting to full-int8 TFLite and scoring both models on the validation images")
    tflite = os.path.join(out_dir, "model_int8.tflite")
    exported = export_model(best, "int8", config_path=config_path, out_path=tflite)

    print("[3/4] running the edge runtime over a generated video")
    video = os.path.join(out_dir, "video.avi")
    write_video(video, num_frames=150, size=(480, 640), seed=1)
    # in a process of its own, as on a device: without TensorFlow, so its summary's peak RSS is the runtime's
    edge = subprocess.run([sys.executable, "-m", "edge.cli", "run", tflite, "--source", video, "--out",
                           os.path.join(out_dir, "overlay.avi"), "--headless", "--threads", "2"])
    if edge.returncode:
        raise KsegError(f"the edge runtime failed on {tflite} (exit code {edge.returncode}; its message is above)")

    print("[4/4] writing overlay pictures")
    data_cfg = cfg["data"]
    info = dataset_info(data_cfg)
    names, colours = info["class_names"], info["palette"]
    keras_pred, lite_pred = predictor(best), predictor(tflite)
    for i, (image, label) in zip(range(6), uint8_samples(data_cfg, "val")):
        masks = [label, keras_pred(image), lite_pred(image)]
        viz.image_grid([image] * 3, masks, names, palette=colours, cols=3,
                       path=os.path.join(out_dir, "overlays", f"val_{i}_truth_keras_int8.png"))

    summary = {"keras_miou": exported["keras_miou"], "int8_miou": exported["tflite_miou"],
               "int8_size_mb": exported["size_bytes"] / 1e6, "minutes": (time.perf_counter() - start) / 60}
    print(f"\nDemo done in {summary['minutes']:.1f} min. Validation mIoU: Keras {summary['keras_miou']:.4f}, "
          f"int8 TFLite {summary['int8_miou']:.4f} ({summary['int8_size_mb']:.2f} MB). "
          f"Pictures and videos in {out_dir}/")
    return summary
