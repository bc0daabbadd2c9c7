"""Frames per second and capture-to-result latency of ``edgeres camera``, headless.

    python benchmarks/bench_camera.py export/cats-dogs/model_int8.tflite [--size 640x480] [--threads 2]

Writes a video from the shared photos into a temporary folder, then runs ``run_camera`` on it
twice, without a window and with JSON lines to /dev/null (what ``--no-display --json`` does):

  throughput  every frame, as fast as it goes (a file source: nothing dropped);
  live        the file played at its frame rate with only the newest frame kept, as a camera
              would be: FPS is capped by the source, latency is what a viewer sees.

and times the stages alone (decode, BGR->RGB + to_pixels, model) to say where the time goes.
Results and the machine they ran on are recorded in benchmarks/camera.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

from edgeres.camera import run_camera
from edgeres.preprocess import to_pixels
from edgeres.runtime import Classifier

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cats_and_dogs_filtered"


def make_video(path: Path, photos: Path, size: tuple[int, int], frames: int, fps: float) -> Path:
    files = sorted((photos / "validation" / "cats").glob("*.jpg"))[:10] + \
        sorted((photos / "validation" / "dogs").glob("*.jpg"))[:10]
    if not files:
        sys.exit(f"No photos under {photos}/validation/{{cats,dogs}}: pass --photos DIR.")
    images = [cv2.resize(cv2.imread(str(f)), size, interpolation=cv2.INTER_AREA) for f in files]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(images[i % len(images)])
    writer.release()
    return path


def time_stages(clf: Classifier, video: Path, repeats: int = 100) -> dict[str, float]:
    """Median milliseconds of each stage alone, on one thread (the model on its own threads)."""
    cap = cv2.VideoCapture(str(video))
    decode = []
    frame = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ok, f = cap.read()
        if not ok:
            break
        decode.append((time.perf_counter() - t0) * 1e3)
        frame = f
    cap.release()
    prep, model = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pixels = to_pixels(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), clf.input_size)
        prep.append((time.perf_counter() - t0) * 1e3)
        model.append(clf.predict_pixels(pixels).latency_ms)
    return {"decode": statistics.median(decode), "bgr2rgb+to_pixels": statistics.median(prep),
            "model": statistics.median(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a .tflite file or an export bundle")
    parser.add_argument("--size", default="640x480", help="video frame size WxH (default 640x480)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fps", type=float, default=30.0, help="the video's frame rate, for the live pass")
    parser.add_argument("--photos", type=Path, default=Path(os.environ.get("EDGERES_TEST_DATA", DEFAULT_PHOTOS)))
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    clf = Classifier(args.model, threads=args.threads, accelerator="cpu")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} before; {platform.python_version()}, OpenCV {cv2.__version__}")
    print(f"model: {clf.path} ({clf.input_size[0]}x{clf.input_size[1]} {clf.input_dtype.name}), {clf.backend}")
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "bench.mp4", args.photos, size, args.frames, args.fps)
        stages = time_stages(clf, video)
        print(f"video: {args.frames} frames {size[0]}x{size[1]} mp4v at {args.fps:g} FPS")
        print("stages alone (median ms): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
              + f"; serial sum {sum(stages.values()):.2f} ms = {1e3 / sum(stages.values()):.0f} FPS")
        with open(os.devnull, "w") as null:
            run_camera(clf, source=video, display=False, json_out=null, max_frames=30, log=lambda m: None)  # warm-up
            for name, realtime in (("throughput", False), ("live", True)):
                s = run_camera(clf, source=video, display=False, json_out=null, realtime=realtime,
                               smoothing=0.0, log=lambda m: None)
                print(f"{name:>10}: {s.fps:6.1f} FPS over {s.frames} frames ({s.dropped} dropped); model "
                      f"{s.latency_ms:.2f} ms mean; capture to result p50 {s.capture_to_result_p50_ms:.1f} ms, "
                      f"p90 {s.capture_to_result_p90_ms:.1f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
