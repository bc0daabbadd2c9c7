"""In-browser latency and FPS of a bundle's models: the `edgeres serve` page in headless Chromium.

    python benchmarks/bench_browser.py benchmarks/out/ref-serve --runs 20 --seconds 20

The page runs the picked model on every frame and the others only in compare mode. For each
model picked alone (with 1 thread, and with the page's default: threads when the page is
cross-origin isolated), and for compare mode (every model on every frame), it times
``window.edgeres.classify`` on a real photo's pixels (input + invoke + output, as ``edgeres
bench`` does), then runs the live loop on Chromium's fake camera (a clip of real photos) and
reads the page's FPS. Python LiteRT on the same pixels is timed too,
for reference. Prints a Markdown table (benchmarks/browser.md records one).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_serve import CHROMIUM, Chromium, write_y4m  # noqa: E402  (the tests' CDP driver)

from edgeres import preprocess  # noqa: E402
from edgeres.preprocess import decode, to_pixels  # noqa: E402
from edgeres.runtime import Classifier  # noqa: E402
from edgeres.serve import load_bundle, make_server, serve_in_thread  # noqa: E402

DATA = Path(os.environ.get("EDGERES_TEST_DATA", REPO.parent / "shared" / "data" / "cats_and_dogs_filtered"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--runs", type=int, default=20, help="timed classify() calls per setting")
    parser.add_argument("--seconds", type=float, default=20, help="live camera loop per setting")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("chromium is not installed (apt-get install chromium)")

    served = load_bundle(args.bundle)
    config = served.config
    size = tuple(config["input"]["size"])
    photo = sorted((DATA / "validation" / "cats").glob("*.jpg"))[0]
    pixels = (to_pixels(decode(photo), size, config["resize"]) if hasattr(preprocess, "Resize")
              else to_pixels(decode(photo), size))
    work = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    photos = sorted((DATA / "validation" / "cats").glob("*.jpg"))[:3] + sorted((DATA / "validation" / "dogs").glob("*.jpg"))[:3]
    write_y4m([np.asarray(decode(p).resize((640, 480), Image.BILINEAR)) for p in photos], work / "clip.y4m", fps=30, repeat=15)

    server = make_server(served, port=0)
    serve_in_thread(server)
    rows, checks = [], []
    browser = Chromium(CHROMIUM, camera_clip=work / "clip.y4m")
    try:
        variants = served.variants
        settings = [(f"{v} picked", f"?model={v}" + t) for v in variants for t in ("&threads=0", "")]
        settings.append(("compare", "?compare=1"))
        for mode, query in settings:
            browser.goto(server.url + query)
            browser.wait_for("window.edgeres && window.edgeres.app.ready", timeout=600)
            runtime = browser.evaluate("window.edgeres.app.runtime")
            # The page checks its runtime on the bundle's probes when it loads: let it finish first.
            browser.wait_for("(document.getElementById('result').dataset.runtimeCheckStatus || 'done') !== 'running'",
                             timeout=1800)
            if not checks and config.get("runtimes"):
                checks.append((runtime, browser.evaluate("document.getElementById('result').dataset.runtimeCheckStatus"),
                               browser.evaluate("[...document.querySelectorAll('#runtime-check li')].map((li) => li.textContent)")))
            b64 = base64.b64encode(pixels.tobytes()).decode()
            timings = browser.evaluate(f"""(async () => {{
                const px = Uint8Array.from(atob('{b64}'), (c) => c.charCodeAt(0));
                for (let i = 0; i < 3; i++) await window.edgeres.classify(px);  // warm-up
                const out = [];
                for (let i = 0; i < {args.runs}; i++) out.push((await window.edgeres.classify(px)).map((r) => [r.variant, r.latencyMs]));
                return out;
            }})()""", timeout=1800)
            browser.evaluate("window.edgeres.startCamera()")
            browser.wait_for("Number(document.getElementById('result').dataset.frames) >= 2", timeout=300)
            f0, t0 = int(browser.evaluate("document.getElementById('result').dataset.frames")), time.monotonic()
            time.sleep(args.seconds)
            f1, t1 = int(browser.evaluate("document.getElementById('result').dataset.frames")), time.monotonic()
            browser.evaluate("window.edgeres.stopCamera()")
            fps = (f1 - f0) / (t1 - t0)
            for i, (variant, _) in enumerate(timings[0]):
                ms = [t[i][1] for t in timings]
                rows.append({"mode": mode, "variant": variant, "runtime": runtime,
                             "median_ms": statistics.median(ms), "p90_ms": float(np.percentile(ms, 90)),
                             "camera_fps": fps})
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        browser.close()
        server.shutdown()
        server.server_close()

    python_rows = []
    for variant in served.variants:
        for threads in (1, os.cpu_count() or 1):
            clf = Classifier(args.bundle, variant=variant, threads=threads, accelerator="cpu", log=lambda m: None)
            for _ in range(3):
                clf.predict_pixels(pixels)
            ms = [clf.predict_pixels(pixels).latency_ms for _ in range(args.runs)]
            python_rows.append((variant, threads, statistics.median(ms), float(np.percentile(ms, 90))))

    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"Bundle `{args.bundle}` ({config['name']}, {config.get('arch')}, {size[0]}x{size[1]}); "
          f"{chromium}, headless; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| page mode | model | runtime | latency median (ms) | p90 (ms) | live camera FPS |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['mode']} | {r['variant']} | {r['runtime']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
              f"{r['camera_fps']:.2f} |")
    for runtime, status, lines in checks:
        n = config["runtimes"]["probes"]["n"]
        print(f"\nThe page's runtime check on load ({runtime}; {n} probes, {status}):\n")
        for line in lines:
            print(f"- {line}")
    print("\nPython LiteRT (`Classifier.predict_pixels`, XNNPACK) on the same pixels:\n")
    print("| model | threads | latency median (ms) | p90 (ms) |")
    print("| --- | ---: | ---: | ---: |")
    for variant, threads, median, p90 in python_rows:
        print(f"| {variant} | {threads} | {median:.1f} | {p90:.1f} |")


if __name__ == "__main__":
    main()
