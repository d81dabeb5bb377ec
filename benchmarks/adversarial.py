"""Adversarial training (Luc et al. 2016) against plain training on the same budget: validation mIoU and stability.

Trains the config (default ``configs/unet_synthetic-96x96.yaml``: U-Net base 12 on the built-in synthetic shapes,
4 classes, 200 training / 40 validation images) twice from the same seed for the same number of optimizer steps
(``--steps``; no time budget, so both get the same number of segmentor updates): once with ``train.trainer:
standard`` and once with ``train.trainer: adversarial`` (``--weight`` = lambda, ``--encoding``). For each run it
prints the validation mIoU per epoch, the best and the final one, the wall time, and for the adversarial run the
discriminator loss and the adversarial term per epoch (stable training: both finite, the discriminator loss
neither collapsing to 0, a discriminator that always wins, nor the adversarial term exploding). Summary in
``<out>/adversarial.json``.

Usage:
    .venv/bin/python benchmarks/adversarial.py [--steps 120] [--steps-per-epoch 20] [--weight 0.1]
                                               [--encoding product] [--out runs/adversarial-bench]
                                               [--config PATH] [key=value ...]
"""

import argparse
import json
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120, help="optimizer steps of each run")
    p.add_argument("--steps-per-epoch", type=int, default=20, help="steps between validations")
    p.add_argument("--weight", type=float, default=0.1, help="lambda: weight of the adversarial term")
    p.add_argument("--encoding", default="product", choices=("product", "basic"))
    p.add_argument("--out", default=os.path.join("runs", "adversarial-bench"))
    p.add_argument("--config", default=os.path.join(REPO, "configs", "unet_synthetic-96x96.yaml"))
    p.add_argument("--picture", help="write validation mIoU and the adversarial losses per epoch here (PNG)")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides for both runs")
    args = p.parse_args(argv)
    if args.steps % args.steps_per_epoch:
        p.error("--steps must be a multiple of --steps-per-epoch")

    from kseg.config import load_config
    from kseg.train import train

    load_start = os.getloadavg()
    runs = {}
    for trainer in ("standard", "adversarial"):
        overrides = [f"train.epochs={args.steps // args.steps_per_epoch}",
                     f"train.steps_per_epoch={args.steps_per_epoch}", "train.time_budget_min=null",
                     f"output.dir={os.path.join(args.out, trainer)}",
                     f"train.trainer.name={trainer}", *args.overrides]
        if trainer == "adversarial":
            overrides += [f"train.trainer.weight={args.weight}", f"train.trainer.encoding={args.encoding}"]
        cfg = load_config(args.config, overrides)
        result = train(cfg, verbose=2)
        history = result["history"]
        runs[trainer] = {
            "best_val_miou": result["best_miou"], "best_epoch": result["best_epoch"],
            "final_val_miou": history[-1].get("val_mean_iou", math.nan), "steps": result["steps"],
            "wall_time_s": result["wall_time_s"],
            "val_miou_per_epoch": [row.get("val_mean_iou") for row in history],
            "loss_per_epoch": [row.get("loss") for row in history],
            "d_loss_per_epoch": [row.get("d_loss") for row in history],
            "adv_loss_per_epoch": [row.get("adv_loss") for row in history],
        }
    load_end = os.getloadavg()
    summary = {"config": os.path.relpath(args.config, REPO), "overrides": args.overrides, "steps": args.steps,
               "weight": args.weight, "encoding": args.encoding, "load_start": load_start, "load_end": load_end,
               "runs": runs}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "adversarial.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)

    print(f"\n=== adversarial vs standard, {args.steps} steps each, {summary['config']} ===")
    print("| trainer | best val mIoU (epoch) | final val mIoU | wall time |")
    print("|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['best_val_miou']:.4f} ({r['best_epoch']}) | {r['final_val_miou']:.4f} | "
              f"{r['wall_time_s'] / 60:.1f} min |")
    adv = runs["adversarial"]
    print("val mIoU per epoch  standard:    " + " ".join(f"{v:.3f}" for v in runs["standard"]["val_miou_per_epoch"]))
    print("val mIoU per epoch  adversarial: " + " ".join(f"{v:.3f}" for v in adv["val_miou_per_epoch"]))
    print("discriminator loss per epoch:    " + " ".join(f"{v:.3f}" for v in adv["d_loss_per_epoch"]))
    print("adversarial term per epoch:      " + " ".join(f"{v:.3f}" for v in adv["adv_loss_per_epoch"]))
    print(f"load average start {'/'.join(f'{x:.2f}' for x in load_start)}, end "
          f"{'/'.join(f'{x:.2f}' for x in load_end)} (2 cores)")
    if args.picture:
        plot(summary, args.picture)
        print(f"picture: {args.picture}")
    return 0


def plot(summary, path):
    """Validation mIoU of both runs and the adversarial run's two losses, per epoch (matplotlib, small PNG)."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, no display

    fig = Figure(figsize=(8, 2.8))
    left, right = fig.subplots(1, 2)
    steps_per_epoch = summary["steps"] // len(summary["runs"]["standard"]["val_miou_per_epoch"])
    for name, run in summary["runs"].items():
        steps = [steps_per_epoch * (i + 1) for i in range(len(run["val_miou_per_epoch"]))]
        left.plot(steps, run["val_miou_per_epoch"], marker="o", label=name)
    left.set(xlabel="step", ylabel="val mIoU", title="validation mIoU")
    left.legend()
    adv = summary["runs"]["adversarial"]
    steps = [steps_per_epoch * (i + 1) for i in range(len(adv["d_loss_per_epoch"]))]
    right.plot(steps, adv["d_loss_per_epoch"], marker="o", label="discriminator BCE (real + fake)")
    right.plot(steps, adv["adv_loss_per_epoch"], marker="o", label="adversarial term BCE(a(x, s(x)), 1)")
    right.axhline(2 * 0.6931, color="grey", lw=0.8, ls="--", label="discriminator at chance (2 ln 2)")
    right.set(xlabel="step", title="adversarial losses (epoch means)")
    right.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    sys.exit(main())
