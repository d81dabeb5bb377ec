"""Edge runtime benchmark: the targets of the edge issue, measured by ``kseg-edge bench`` in one run.

Two models, each through ``kseg-edge bench`` in its own process (the runtime alone, no TensorFlow), at 1 and 2
threads and 640x480 and 1280x720 frames:

- the zoo's DeepLabV3+ MobileNetV2 at 256x256, full int8 (built here with 21 classes and calibrated on the
  built-in synthetic images: speed does not depend on what the weights learned);
- the MediaPipe selfie segmentation model (256x256 float, [0, 1] input, one probability channel), a model nobody
  here wrote, as the peer: ``--mediapipe PATH`` or ``runs/peers/selfie_segmentation.tflite``. Without it its rows
  are skipped with the command that fetches it (DESIGN.md section 5).

For every row ``kseg-edge bench`` prints the bare invoke rate, a plain sequential OpenCV loop (decode, segment,
overlay, write: the peer loop), the threaded pipeline exactly as ``kseg-edge run --headless --out`` drives it, and
the same fed live (paced at 30 FPS, latest frame only) for capture-to-output latency; with 2 threads, also the
pipeline with two 1-thread interpreters (``--workers 2 --threads 1``); and the peak RSS of ``kseg-edge run``
processes on each model (640x480 video), beside that of a process that only imports TensorFlow.

Usage:
    .venv/bin/python benchmarks/edge.py [--frames 200] [--repeats 3] [--mediapipe PATH] [--out runs/bench-edge]

Everything printed is also written to ``<out>/edge.md``. The machine is shared: compare ratios within one run.
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PEER = os.path.join(REPO, "runs", "peers", "selfie_segmentation.tflite")
FETCH_PEER = ("mkdir -p runs/peers && cd runs/peers && npm pack @mediapipe/selfie_segmentation@0.1.1675465747 && "
              "tar xzf mediapipe-selfie_segmentation-0.1.1675465747.tgz --strip-components 1 "
              "package/selfie_segmentation.tflite")
ROW = re.compile(r"^\s*(\d+x\d+)\s+(\d+)\s+(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)(.*)$")


def build_zoo_model(path, size=256, num_classes=21):
    """DeepLabV3+ MobileNetV2, full int8 with uint8 input and output, written to ``path``."""
    import glob
    import tempfile

    import numpy as np

    import kseg
    from export.convert import to_tflite, write_atomic
    from kseg.data.io import read_image
    from kseg.data.synthetic import generate

    model = kseg.create_model("deeplabv3plus", num_classes=num_classes, input_shape=(size, size, 3))
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, 32, image_size=(size, size))
        calibration = [read_image(f).astype(np.float32) for f in sorted(glob.glob(f"{tmp}/images/*.png"))]
    write_atomic(path, to_tflite(model, "int8", representative_data=calibration))
    return path


def bench(model, flags, frames, repeats):
    """Run ``kseg-edge bench`` in a fresh process; returns its stdout and the parsed rows."""
    cmd = [sys.executable, "-m", "edge.cli", "bench", model, "--threads", "1", "2", "--frames", str(frames),
           "--repeats", str(repeats), "--size", "640x480", "1280x720", *flags]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out, [m.groups() for m in map(ROW.match, out.splitlines()) if m]


def peak_rss_mb(cmd):
    """Peak resident memory of ``cmd``, measured by a fresh parent so that no other child counts."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=REPO, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200, help="frames per measurement (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="turns of every measurement, medians (default 3)")
    p.add_argument("--mediapipe", default=PEER, help="the MediaPipe selfie segmentation .tflite")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "bench-edge"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lines = [f"# kseg-edge bench, {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}", ""]

    zoo = build_zoo_model(os.path.join(args.out, "deeplabv3plus_mobilenetv2_256_int8.tflite"))
    models = [("DeepLabV3+ MobileNetV2 256x256 int8 (kseg zoo)", zoo, [])]
    if os.path.isfile(args.mediapipe):
        models.append(("MediaPipe selfie segmentation 256x256 float (peer)", args.mediapipe,
                       ["--normalization", "unit", "--interpolation", "linear", "--output-kind", "probabilities"]))
    else:
        lines.append(f"MediaPipe peer skipped: {args.mediapipe} not found; fetch it with: {FETCH_PEER}\n")

    lines += ["| model | frame | threads | invoke FPS | sequential loop (ratio) | kseg-edge pipeline (ratio) | "
              "live FPS | live latency p50 / p90 (ms) | pipeline, `--workers N --threads 1` (ratio) | "
              "its live latency p50 / p90 (ms) |", "|---|---|---|---|---|---|---|---|---|---|"]
    memory = {}
    for title, path, flags in models:
        out, rows = bench(path, flags, args.frames, args.repeats)
        print(out)
        memory[title] = next((line for line in out.splitlines() if line.startswith("peak RSS of kseg-edge run")),
                             "no peak RSS line")
        by = {(r[0], r[1], r[2]): r for r in rows}

        def fps(frame, threads, stage):
            r = by.get((frame, threads, stage))
            return f"{float(r[5]):.1f} ({float(r[6]):.2f})" if r else "-"

        def latency(frame, threads, stage):
            r = by.get((frame, threads, stage))
            return f"{float(r[3]):.1f} / {float(r[4]):.1f}" if r else "-"

        for frame, threads in sorted({(r[0], r[1]) for r in rows}, key=lambda k: (int(k[0].split("x")[0]), k[1])):
            lines.append(f"| {title} | {frame} | {threads} | {float(by[(frame, threads, 'invoke')][5]):.1f} | "
                         f"{fps(frame, threads, 'sequential')} | {fps(frame, threads, 'pipeline')} | "
                         f"{float(by[(frame, threads, 'live')][5]):.1f} | {latency(frame, threads, 'live')} | "
                         f"{fps(frame, threads, 'workers')} | {latency(frame, threads, 'wlive')} |")

    lines += ["", *(f"{title}: {memory[title]}" for title in memory),
              f"peak RSS of a process that only imports TensorFlow: "
              f"{peak_rss_mb([sys.executable, '-c', 'import tensorflow']):.0f} MB",
              f"load average at the end {os.getloadavg()[0]:.2f}"]
    report = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "edge.md"), "w", encoding="utf-8") as f:
        f.write(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
