"""The ``kseg`` command: train, evaluate, predict, export, run, demo.

Example:
    kseg train configs/unet_membrane-512x512.yaml train.epochs=5
    kseg evaluate configs/unet_membrane-512x512.yaml --model runs/unet_membrane-512x512/best.keras
    kseg predict runs/unet_membrane-512x512/best.keras image.png --out preds/
    kseg export runs/unet_membrane-512x512/best.keras --to int8 --config configs/unet_membrane-512x512.yaml
    kseg export runs/unet_membrane-512x512/best.keras --to edgetpu --data configs/unet_membrane-512x512.yaml
    kseg run model_int8.tflite --source 0
    kseg data check configs/unet_membrane-512x512.yaml
"""

import argparse
import os
import sys

from kseg import argtypes
from kseg.errors import ConfigError, KsegError


def _add_config(p):
    p.add_argument("config", help="experiment YAML file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")


def _add_tta(p):
    p.add_argument("--tta", default="none", choices=("none", "flip", "d4"),
                   help="test-time augmentation (.keras models): average over the mirrored image (flip) or all "
                        "8 mirrors and quarter turns (d4)")


def _parser():
    # numpy and kseg.errors only: no TensorFlow at parse time
    from export.optimize import FINE_TUNE_LR, FINE_TUNE_TARGETS, QAT_LR

    ap = argparse.ArgumentParser(prog="kseg", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a config (resumes an interrupted run)")
    _add_config(p)
    p.add_argument("--quiet", action="store_true",
                   help="one line per epoch instead of a progress bar (the default when stdout is not a terminal)")

    p = sub.add_parser("evaluate", help="per-class table and a report with pictures")
    _add_config(p)
    p.add_argument("--model", help="a .keras or .tflite model (default: the run's best.keras)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", help="report folder (default: <run dir>/report-<split>)")
    p.add_argument("--samples", type=argtypes.count, default=8, help="overlay pictures in the report")
    p.add_argument("--refine", metavar="NAME", help="refine the probabilities with a post-processor from "
                   "kseg.postprocess (e.g. crf) before scoring (.keras models)")
    _add_tta(p)

    p = sub.add_parser("predict", help="write masks and overlays for an image or a folder")
    p.add_argument("model", help="a .keras model")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--alpha", type=argtypes.fraction, default=0.5, help="overlay opacity")
    p.add_argument("--refine", metavar="NAME", help="refine the probabilities with a post-processor from "
                   "kseg.postprocess (e.g. crf)")
    _add_tta(p)
    p.add_argument("--score-threshold", type=argtypes.fraction, default=0.5,
                   help="instance models: detections scoring below this are not drawn (default 0.5)")

    p = sub.add_parser("export", help="optimize and convert a trained model to a verified TFLite file")
    p.add_argument("model", help="a .keras model")
    p.add_argument("--to", default="int8", choices=("float32", "float16", "dynamic", "int8", "edgetpu"),
                   help="edgetpu: full int8 with an EdgeTPU-safe graph and an op-by-op analysis")
    p.add_argument("--config", "--data", dest="config",
                   help="the training config (its data calibrates int8, fine-tunes and verifies the export)")
    p.add_argument("--out", help="output .tflite path (default: beside the model)")
    p.add_argument("--calibration", type=argtypes.whole, default=64, help="training images used to calibrate int8")
    p.add_argument("--io", default="uint8", choices=("uint8", "int8"), help="int8 models: input/output type")
    p.add_argument("--prune", metavar="SPARSITY", help="magnitude pruning to this sparsity in (0, 1), or 2:4")
    p.add_argument("--cluster", type=int, metavar="K", help="weight clustering: K shared values per kernel")
    p.add_argument("--qat", action="store_true", help="quantization-aware fine-tuning before int8 conversion")
    p.add_argument("--steps", type=argtypes.whole, default=100,
                   help="fine-tuning steps for --prune / --cluster / --qat")
    p.add_argument("--lr", type=float, help=f"fine-tuning learning rate (Adam) for those steps (default "
                   f"{FINE_TUNE_LR:g} for --prune / --cluster, {QAT_LR:g} for --qat)")
    p.add_argument("--fine-tune-target", default="float", choices=FINE_TUNE_TARGETS,
                   help="what those steps fit: the trained model's own outputs (float: distillation, the default) "
                        "or the training labels with the config's loss")
    p.add_argument("--no-report", action="store_true", help="skip the verification report")

    p = sub.add_parser("run", help="run a .tflite model on a camera, video or images (kseg-edge run)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of kseg-edge run")

    p = sub.add_parser("data", help="check a dataset, picture its samples, list the supported layouts")
    p.add_argument("action", choices=("check", "show", "formats"))
    p.add_argument("source", nargs="?", help="an experiment YAML file or a dataset folder (check, show)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.root=...")
    p.add_argument("--format", help="dataset layout of a folder (kseg data formats lists them)")
    p.add_argument("--num-classes", type=argtypes.whole, help="for a folder of a format without a fixed class count")
    p.add_argument("--split", action="append", help="split(s) to check or show (default: all of the config's)")
    p.add_argument("--out", help="show: output PNG (default: <format>-samples.png)")
    p.add_argument("--num", type=argtypes.whole, default=8, help="show: number of samples")
    p.add_argument("--seed", type=int, default=0, help="show: which samples (random pick)")
    p.add_argument("--quiet", action="store_true", help="check: no progress bar")

    p = sub.add_parser("demo", help="train, export to int8, run on the edge runtime, report (make demo)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--minutes", type=argtypes.positive, default=3.0, help="training time budget")
    return ap


def _run(args):
    if args.command == "train":
        from kseg.config import load_config
        from kseg.train import train

        # a progress bar needs a terminal; in a log file Keras' bar drops the epoch's validation numbers
        live = not args.quiet and sys.stdout.isatty()
        result = train(load_config(args.config, args.overrides), verbose=1 if live else 2)
        name = {"val_mean_iou": "mIoU", "val_mask_ap": "mask AP"}[result["monitor"]]
        print(f"best val {name} {result['best_miou']:.4f}; run folder {result['run_dir']}")
    elif args.command == "evaluate":
        from kseg.config import load_config
        from kseg.evaluate import evaluate

        evaluate(load_config(args.config, args.overrides), model_path=args.model, split=args.split,
                 out_dir=args.out, num_samples=args.samples, refine=args.refine, tta=args.tta)
    elif args.command == "predict":
        from kseg.predict import predict

        predict(args.model, args.input, args.out, alpha=args.alpha, refine=args.refine, tta=args.tta,
                score_threshold=args.score_threshold)
    elif args.command == "export":
        from export.api import export_model

        export_model(args.model, mode=args.to, config_path=args.config, out_path=args.out,
                     num_calibration=args.calibration, io_dtype=args.io, prune=args.prune, cluster=args.cluster,
                     qat=args.qat, fine_tune_steps=args.steps, fine_tune_lr=args.lr,
                     fine_tune_target=args.fine_tune_target, report=not args.no_report)
    elif args.command == "run":
        from edge.cli import main as edge_main

        return edge_main(["run", *args.args])
    elif args.command == "data":
        from kseg.data.tool import main as data_main

        if args.action != "formats" and not args.source:
            raise ConfigError(f"kseg data {args.action} needs a config file or a dataset folder")
        return data_main(args)
    elif args.command == "demo":
        from kseg.demo import demo

        demo(args.out, minutes=args.minutes)
    return 0


def _start_tensorflow(args):
    """Loads TensorFlow for the commands that use it, with its start-up lines held back (``kseg.native_log``).

    TensorFlow's INFO and WARNING lines are for its developers; a user of a command wants the command's output.
    ``TF_CPP_MIN_LOG_LEVEL=0`` shows them. ``train`` leaves the devices uncreated: a multi-worker strategy must be
    set up before they are.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "run" or getattr(args, "action", None) == "formats":  # no TensorFlow in these
        return
    from kseg.native_log import start_tensorflow

    try:
        start_tensorflow(devices=args.command != "train")
    except ImportError as e:  # an edge-only install (numpy, OpenCV, LiteRT)
        raise ConfigError(f"kseg {args.command} needs TensorFlow ({e}): pip install 'kseg[train,export]'; "
                          "on a device, kseg-edge runs exported models without it") from None


def main(argv=None):
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a positional list at the first option, so `train cfg.yaml --quiet a=1` leaves
    # `a=1` over; overrides may stand anywhere on the line.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        _start_tensorflow(args)
        return _run(args)
    except KsegError as e:
        print(f"kseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nkseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
