"""Export benchmark: the issue-6 targets on U-Net and DeepLabV3+ MobileNetV2 (plain and separable ASPP / decoder)
trained on the ISBI membrane data, and the deployability matrix over every registered model.

Targets (one run, per model): full-int8 file <= 0.27x float32; int8 latency <= 0.3x float32 (2 threads, this CPU);
mIoU drop against float: PTQ int8 <= 1.0 point, QAT int8 <= 0.3 point; 75% sparsity within 1 point with the gzip'd
int8 file <= 0.1x float32; EdgeTPU mode: 100% of ops mappable by the analyser.

Each model is trained from scratch through ``kseg.train.train`` on ``configs/unet_membrane-512x512.yaml`` at
``--size`` (default 256x256; the DeepLabV3+ variants take the config with its model section replaced) for
``--minutes``, then exported with ``export.api.export_model`` as float32, int8 (PTQ), int8 after QAT, int8 after 75%
pruning, int8 after 75% pruning and 16-cluster weight sharing (``pruned75c16``), those two followed by sparsity- (and
cluster-) preserving QAT (``pruned75qat``, ``pruned75c16qat``), and edgetpu. Numbers go to
``<out>/export_benchmark.json`` and a markdown table on stdout (docs/export.md).

Usage:
    .venv/bin/python benchmarks/export.py [--minutes 3] [--size 256] [--steps 150] [--models unet,deeplabv3plus]
    .venv/bin/python benchmarks/export.py --models unet,deeplabv3plus_plain,deeplabv3plus --minutes 10 --steps 300 \
        --stages float32,int8,qat,pruned75c16,edgetpu --out runs/export-bench-s24   # docs/export.md's table
    .venv/bin/python benchmarks/export.py --trained runs/export-bench --stages float32,qat   # re-export only
    .venv/bin/python benchmarks/export.py --matrix          # the deployability matrix table (tests' small configs)
    .venv/bin/python benchmarks/export.py --latency OUT/unet_float32.tflite OUT/unet_int8.tflite

The membrane data is expected in ``../shared/data/isbi2012-membrane``; without it the benchmark says so and exits 0.
"""

import argparse
import gzip
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export.optimize import FINE_TUNE_LR, FINE_TUNE_TARGETS, QAT_LR  # noqa: E402 (after the path and log set-up)

MODELS = {"unet": None,  # the config's own U-Net (base 16, depth 4, BN, transposed convs)
          "deeplabv3plus": {"name": "deeplabv3plus", "backbone": "mobilenetv2"},
          # plain 3x3 convs in the ASPP and the decoder (keras-io's DeepLabV3+ does this; the paper's are separable):
          # the variant the export issue's latency figures match (docs/export.md)
          "deeplabv3plus_plain": {"name": "deeplabv3plus", "backbone": "mobilenetv2", "separable": False}}


def train_model(name, args, out):
    import yaml

    from kseg.config import load_config
    from kseg.train import train

    with open(os.path.join(REPO, "configs", "unet_membrane-512x512.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["data"]["root"] = os.path.join(REPO, raw["data"]["root"]) if not os.path.isabs(raw["data"]["root"]) \
        else raw["data"]["root"]
    if MODELS[name] is not None:
        raw["model"] = dict(MODELS[name])
    raw["data"]["image_size"] = [args.size, args.size]
    raw["data"]["crop_size"] = None
    raw["train"]["time_budget_min"] = args.minutes
    raw["train"]["steps_per_epoch"] = 10  # the trainer checks the budget between epochs: keep them short
    raw["output"] = {"dir": os.path.join(out, name)}
    path = os.path.join(out, f"{name}.yaml")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    start = time.perf_counter()
    result = train(load_config(path), verbose=2)
    return path, os.path.join(result["run_dir"], "best.keras"), time.perf_counter() - start


STAGES = {"float32": dict(mode="float32"), "int8": dict(mode="int8"), "qat": dict(mode="int8", qat=True),
          "pruned75": dict(mode="int8", prune=0.75),
          # deep compression (Han et al. 2016): the 75% sparse model's weights then shared in 16 clusters
          # (sparsity-preserving), so the gzip of its int8 file also finds repeated values among the non-zeros
          "pruned75c16": dict(mode="int8", prune=0.75, cluster=16),
          # the same two, then quantization-aware training that keeps the zeros (and the clusters): tfmot's PQAT
          # and PCQAT schemes
          "pruned75qat": dict(mode="int8", prune=0.75, qat=True),
          "pruned75c16qat": dict(mode="int8", prune=0.75, cluster=16, qat=True), "edgetpu": dict(mode="edgetpu")}
# stages whose report compares with the pruned / clustered Keras model, not the trained one (after QAT, pruned or
# not, the report compares the int8 file with the trained model)
PRUNED_KERAS = ("pruned75", "pruned75c16")


def benchmark_model(name, args, out):
    from export.api import export_model

    if args.trained:  # the models of an earlier run of this benchmark: export only
        config, model, train_s = (os.path.join(args.trained, f"{name}.yaml"),
                                  os.path.join(args.trained, name, "best.keras"), None)
    else:
        config, model, train_s = train_model(name, args, out)
    row = {"train_seconds": train_s}
    for key in args.stages.split(","):
        kw = dict(STAGES[key])
        start = time.perf_counter()
        mode = kw.pop("mode")
        r = export_model(model, mode, config_path=config, out_path=os.path.join(out, f"{name}_{key}.tflite"),
                         num_calibration=args.calibration, fine_tune_steps=args.steps, fine_tune_lr=args.lr,
                         fine_tune_target=args.target,
                         verbose=False, **kw)
        with open(r["path"], "rb") as f:
            data = f.read()
        stage = r["report"]["stages"][mode]
        row[key] = {"size_bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9)), "miou": stage["miou"],
                    "keras_miou": r["keras_miou"], "latency_ms": stage["latency_ms"],
                    "agreement": stage["agreement"], "seconds": time.perf_counter() - start}
        if mode == "edgetpu":
            row[key]["edgetpu_mapped"] = r["edgetpu"].mapped_share
        if "optimized" in r["report"]:
            opt = r["report"]["optimized"]
            row[key]["sparsity"] = opt.get("sparsity")
        print(f"{name} {key}: {json.dumps({k: v for k, v in row[key].items() if k != 'sparsity'})}", flush=True)
    # the trained model's mIoU, which every drop is measured against: a pruned export's report compares with the
    # pruned Keras model instead, so a run of pruned stages only scores the trained model itself
    row["keras_miou"] = next((row[key]["keras_miou"] for key in row if key in STAGES and key not in PRUNED_KERAS), None)
    if row["keras_miou"] is None:
        from kseg.config import load_config
        from kseg.evaluate import evaluate

        row["keras_miou"] = evaluate(load_config(config), model, out_dir=os.path.join(out, f"{name}-trained-report"),
                                     verbose=False)["mean_iou"]
    return row


def targets(row):
    """target -> (measured, bound), for the targets whose stages are in ``row`` (``--stages``)."""
    keras_miou = row["keras_miou"]

    def latency_ratio(int8, f32):  # 2 threads; keys are ints, or strings after a JSON round trip
        return (int8["latency_ms"].get(2) or int8["latency_ms"]["2"]) / (f32["latency_ms"].get(2)
                                                                         or f32["latency_ms"]["2"])

    table = {
        "int8 size <= 0.27x float32": (("int8", "float32"), lambda i, f: i["size_bytes"] / f["size_bytes"], 0.27),
        "int8 latency (2 threads) <= 0.3x float32": (("int8", "float32"), latency_ratio, 0.3),
        "PTQ int8 mIoU drop <= 1.0 point": (("int8",), lambda i: 100 * (keras_miou - i["miou"]), 1.0),
        "QAT int8 mIoU drop <= 0.3 point": (("qat",), lambda q: 100 * (keras_miou - q["miou"]), 0.3),
        "EdgeTPU ops mapped = 100%": (("edgetpu",), lambda e: 100 * e["edgetpu_mapped"], 100.0),
    }
    for key, label in (("pruned75", "75% sparsity"), ("pruned75c16", "75% sparsity + 16 clusters"),
                       ("pruned75qat", "75% sparsity + QAT"), ("pruned75c16qat", "75% sparsity + 16 clusters + QAT")):
        table[f"{label}: mIoU drop <= 1 point"] = ((key,), lambda p: 100 * (keras_miou - p["miou"]), 1.0)
        table[f"{label}: int8 gzip <= 0.1x float32"] = ((key, "float32"),
                                                        lambda p, f: p["gzip_bytes"] / f["size_bytes"], 0.1)
    return {key: (value(*(row[s] for s in stages)), bound) for key, (stages, value, bound) in table.items()
            if all(s in row for s in stages)}


def paired_latency(reference, other, rounds=5):
    """Median invoke latency of two .tflite files measured in alternation (1 and 2 threads), and other / reference:
    on a shared machine the load changes between export stages minutes apart, not between neighbouring rounds."""
    from export.report import latency_ms

    blobs = [open(path, "rb").read() for path in (reference, other)]
    lines = [f"| threads | {os.path.basename(reference)} ms | {os.path.basename(other)} ms | ratio |",
             "|---|---|---|---|"]
    for threads in (1, 2):
        times = [[], []]
        for _ in range(rounds):
            for i, blob in enumerate(blobs):
                times[i].append(latency_ms(blob, threads))
        a, b = (float(sorted(t)[len(t) // 2]) for t in times)
        lines.append(f"| {threads} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    return "\n".join(lines)


def matrix(names=None):
    """The deployability matrix over the registry, or over ``names`` (small configs of tests/test_models.py), as a
    markdown table."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import kseg
    from test_export_matrix import matrix_row

    lines = ["| model | float32 max err (rel.) | int8 mean err (of logit range) | int8 argmax agreement | "
             "EdgeTPU ops mapped | supported | first op on the CPU, or why int8 fails |",
             "|---|---|---|---|---|---|---|"]
    for name in names or kseg.list_models(task="semantic"):
        row = matrix_row(name, float32=True)
        fmt = lambda k, f: "fails" if row.get(k) is None else f.format(row[k])  # noqa: E731
        failure = row.get("int8_failure") or row.get("float32_failure")
        lines.append(f"| {name} | {fmt('float32_error', '{:.1e}')} | {fmt('int8_error', '{:.3f}')} | "
                     f"{fmt('int8_agreement', '{:.3f}')} | {fmt('edgetpu_mapped', '{:.0%}')} | "
                     f"{fmt('edgetpu_supported', '{:.0%}')} | {row.get('split_op') or failure or '-'} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    p.add_argument("--size", type=int, default=256, help="input size (square)")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps of QAT and pruning")
    p.add_argument("--lr", type=float, default=None,
                   help=f"fine-tuning learning rate of QAT and pruning (default {FINE_TUNE_LR:g} / {QAT_LR:g})")
    p.add_argument("--target", default="float", choices=FINE_TUNE_TARGETS,
                   help="what QAT and pruning fine-tune towards: the float model's logits or the labels")
    p.add_argument("--calibration", type=int, default=20, help="int8 calibration images")
    p.add_argument("--models", default=None, help=f"of {','.join(MODELS)} (default: all); with --matrix: its rows "
                                                  "(default: every registered model)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"exports to run, of {','.join(STAGES)}")
    p.add_argument("--trained", default=None,
                   help="export the models an earlier run left in this folder (its --out) instead of training")
    p.add_argument("--out", default=os.path.join("runs", "export-bench"))
    p.add_argument("--matrix", action="store_true", help="print the deployability matrix instead")
    p.add_argument("--latency", nargs=2, metavar=("REFERENCE", "OTHER"),
                   help="only time two .tflite files in alternation, e.g. a float32 and an int8 export")
    args = p.parse_args(argv)
    if args.models is None and not args.matrix:
        args.models = ",".join(MODELS)
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        p.error(f"--stages: unknown {sorted(unknown)}; choose from {','.join(STAGES)}")
    if args.latency:
        print(paired_latency(*args.latency))
        return 0
    if args.matrix:
        print(matrix(args.models.split(",") if args.models else None))
        return 0
    data = os.path.join(REPO, "..", "shared", "data", "isbi2012-membrane", "train", "image")
    if not os.path.isdir(data):
        print(f"SKIPPED: ISBI 2012 membrane data not found at {data}")
        return 0
    load = os.getloadavg()[0]
    results = {}
    for name in args.models.split(","):
        results[name] = benchmark_model(name, args, args.out)
        results[name]["targets"] = {k: {"value": v, "target": t} for k, (v, t) in targets(results[name]).items()}
    results["load_average_at_start"] = load
    with open(os.path.join(args.out, "export_benchmark.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"\n| target | {' | '.join(args.models.split(','))} |\n|---|" + "---|" * len(args.models.split(",")))
    for key in targets(results[args.models.split(",")[0]]):
        cells = []
        for name in args.models.split(","):
            v, t = results[name]["targets"][key]["value"], results[name]["targets"][key]["target"]
            met = v >= t if key.startswith("EdgeTPU") else v <= t
            cells.append(f"{v:.3f} ({'met' if met else 'not met'})")
        print(f"| {key} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    from kseg.native_log import start_tensorflow

    start_tensorflow()  # its start-up lines are not for readers of the results
    sys.exit(main())
