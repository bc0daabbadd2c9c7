"""edgeres serve: the page's pixels, the server's boundaries, and the page in a real Chromium.

The browser tests drive the Debian ``chromium`` over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no websocket library needed) with a fake camera that plays a
y4m clip made here from real photos, and compare what the page reports with ``edgeres predict``.
They need ``chromium`` and the LiteRT.js assets (``npm ci``, or fetched once from the npm registry).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeres import preprocess
from edgeres.preprocess import decode, to_pixels

from edgeres.serve import WEB_DIR as WEB

NODE = shutil.which("node")
# The tiny bundle fixture trains a model (about a minute, shared with the other tests that use it).
pytestmark = pytest.mark.slow
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def resize_rules() -> list[str]:
    """The resize rules edgeres.preprocess defines (one, unnamed, before rules were recorded)."""
    rule_enum = getattr(preprocess, "Resize", None)
    return [r.value for r in rule_enum] if rule_enum else ["antialias"]


def python_pixels(rgb: np.ndarray, size: tuple[int, int], rule: str) -> np.ndarray:
    if getattr(preprocess, "Resize", None) is None:
        return to_pixels(rgb, size)
    return to_pixels(rgb, size, rule)


def sample_photos(photos_root: Path, n: int) -> list[Path]:
    photos = sorted((photos_root / "validation" / "cats").glob("*.jpg"))[:n // 2]
    return photos + sorted((photos_root / "validation" / "dogs").glob("*.jpg"))[:n - len(photos)]


# -- the resize in JS is the resize in Python ---------------------------------------------------


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_js_pixels_equal_python_to_pixels(photos_root, tmp_path):
    """pixels.js's toPixels, run by node on decoded real photos, is byte-identical to to_pixels."""
    cases = []
    photos = sample_photos(photos_root, 8)
    for i, photo in enumerate(photos):
        rgb = np.asarray(decode(photo))
        h, w = rgb.shape[:2]
        (tmp_path / f"{i}.rgb").write_bytes(rgb.tobytes())
        # Model sizes, an upscale, one axis unchanged, a tall shrink (Pillow's other pass order).
        for size in ((64, 64), (160, 160), (224, 224), (h + 37, w * 2), (h, 50), (40, w), (h // 3, w - 9)):
            for rule in resize_rules():
                ref = python_pixels(rgb, size, rule)
                cases.append({"rgb": f"{i}.rgb", "w": w, "h": h, "oh": size[0], "ow": size[1], "rule": rule,
                              "sha": _digest(ref), "photo": photo.name})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = tmp_path / "check.mjs"
    script.write_text(_NODE_CHECK.replace("PIXELS_JS", (WEB / "pixels.js").as_uri()))
    run = subprocess.run([NODE, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    assert len(results) == len(cases) and len(cases) >= 8 * 7
    wrong = [f"{c['photo']} {c['w']}x{c['h']} -> {c['ow']}x{c['oh']} {c['rule']}"
             for c, r in zip(cases, results) if r != c["sha"]]
    assert not wrong, f"{len(wrong)} of {len(cases)} JS resizes differ from to_pixels: {wrong[:5]}"


def _digest(pixels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


_NODE_CHECK = r"""
import { toPixels } from 'PIXELS_JS';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
const dir = process.argv[2];
const cases = JSON.parse(readFileSync(`${dir}/cases.json`, 'utf8'));
const cache = {};
const out = cases.map((c) => {
  const rgb = cache[c.rgb] ??= readFileSync(`${dir}/${c.rgb}`);
  const px = toPixels(rgb, c.w, c.h, c.ow, c.oh, { channels: 3, resize: c.rule });
  return createHash('sha256').update(px).digest('hex');
});
console.log(JSON.stringify(out));
"""


# -- a headless Chromium driven over the DevTools protocol on a pipe ------------------------------


class Chromium:
    """Just enough CDP: open a page, evaluate JS, screenshot. Messages are JSON + NUL on fds 3/4."""

    def __init__(self, executable: str, *, camera_clip: Path | None = None, width: int = 1000, height: int = 900):
        self.profile = Path(tempfile.mkdtemp(prefix="edgeres-chromium-"))
        args = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
            f"--user-data-dir={self.profile}", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", "--remote-debugging-pipe", f"--window-size={width},{height}",
            "--autoplay-policy=no-user-gesture-required",
        ]
        if camera_clip is not None:
            args.append(f"--use-file-for-fake-video-capture={camera_clip}")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The browser reads commands on fd 3 and writes replies on fd 4.
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', executable, *args, "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = [b""]  # chunks; only the last may hold the end of a message
        self._next_id = 0
        self.console: list[str] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Runtime.enable", session=True)
        self.call("Page.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, *, session: bool = False, timeout: float = 60, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if reply.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                             for a in reply["params"]["args"]))
            elif reply.get("method") == "Runtime.exceptionThrown":
                self.console.append(str(reply["params"]["exceptionDetails"]))

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer[-1]:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 22)
            if not chunk:
                raise RuntimeError("Chromium exited")
            self._buffer.append(chunk)
        head, rest = self._buffer[-1].split(b"\0", 1)
        message = b"".join(self._buffer[:-1]) + head
        self._buffer = [rest]
        return json.loads(message)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def evaluate(self, expression: str, timeout: float = 60):
        result = self.call("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.1):
        """Poll ``expression`` until truthy; raises with the page's error and console if it never is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:  # the page is still loading
                value = None
            if value:
                return value
            error = self.evaluate("window.edgeres ? window.edgeres.app.error : null")
            if error:
                raise AssertionError(f"page failed: {error}")
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {expression}; console: {self.console[-10:]}")

    def screenshot(self) -> np.ndarray:
        png = base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])
        import io

        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


# -- the server -------------------------------------------------------------------------------

EDGERES = [sys.executable, "-m", "edgeres.cli"]
ENV = {**os.environ, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2"}


def cli(*args, rc: int | None = 0, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    out = subprocess.run([*EDGERES, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                         env={**ENV, **(env or {})})
    if rc is not None:
        assert out.returncode == rc, (out.returncode, out.stdout[-3000:], out.stderr[-3000:])
    return out


@pytest.fixture()
def fake_assets(tmp_path) -> Path:
    """Placeholder LiteRT.js files: enough for the server tests, which never run the page."""
    from edgeres.serve import REQUIRED_ASSETS

    root = tmp_path / "assets"
    for name in REQUIRED_ASSETS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("// placeholder\n")
    return root


def _get(server_url: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    """A raw request: http.client sends ``path`` as written (no normalisation of ``..``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(server_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_pin_batch_changes_only_the_signature(tiny_bundle):
    from edgeres.runtime import Classifier
    from edgeres.serve import pin_batch

    original = (tiny_bundle / "model_int8.tflite").read_bytes()
    pinned, count = pin_batch(original)
    assert count >= 2 and len(pinned) == len(original)  # input and output signatures at least
    changed = np.flatnonzero(np.frombuffer(pinned, np.uint8) != np.frombuffer(original, np.uint8))
    assert len(changed) == 4 * count  # each -1 (ff ff ff ff) became 1 (01 00 00 00)
    assert pin_batch(pinned)[1] == 0
    pinned_path = tiny_bundle.parent / "pinned_int8.tflite"
    pinned_path.write_bytes(pinned)
    try:
        a = Classifier(tiny_bundle / "model_int8.tflite", accelerator="cpu")
        b = Classifier(pinned_path, accelerator="cpu")
        x = np.random.default_rng(0).integers(0, 256, (*a.input_size, 3), dtype=np.uint8)
        assert np.array_equal(a.predict_pixels(x).probabilities, b.predict_pixels(x).probabilities)
    finally:
        pinned_path.unlink()


def test_serve_https_for_a_phone_prints_url_and_qr(tiny_bundle, fake_assets):
    """--host 0.0.0.0 --https: a self-signed certificate, the URLs, a QR code of the network URL,
    what the network can reach; and Ctrl+C stops it even when started with SIGINT ignored (as a
    background job or a test runner may start it: Python then never raises KeyboardInterrupt)."""
    import signal
    import ssl

    proc = subprocess.Popen([*EDGERES, "serve", str(tiny_bundle), "--host", "0.0.0.0", "--port", "0", "--https"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "EDGERES_WEB_ASSETS": str(fake_assets)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines = []
    try:
        deadline = time.monotonic() + 120
        while not any("Ctrl+C" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, (lines, proc.stderr.read() if proc.poll() is not None else "")
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        page = next(line.split("page: ")[1].strip() for line in lines if "page: " in line)
        assert page.startswith("https://127.0.0.1:")
        reachable = next(line for line in lines if "reachable by every network" in line)
        meta = json.loads((tiny_bundle / "edgeres.json").read_text())
        named = sorted({m["file"] for m in meta["models"].values()} | {"labels.txt"}
                       | ({meta["runtimes"]["probes"]["file"]} if "runtimes" in meta else set()))
        assert f"only: {', '.join(named)} (nothing else" in reachable, reachable
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        from urllib.parse import urlsplit
        from urllib.request import urlopen

        with urlopen(page + "bundle/labels.txt", context=context, timeout=10) as response:
            assert response.read() == (tiny_bundle / "labels.txt").read_bytes()
        certificate = ssl.get_server_certificate(("127.0.0.1", urlsplit(page).port))
        assert "BEGIN CERTIFICATE" in certificate
        lan = [line.split("on this network: ")[1].strip() for line in lines if "on this network: " in line]
        if lan:  # a machine on a network: the QR code of the first network URL, or how to get one
            try:
                import qrcode  # noqa: F401
            except ImportError:
                assert "pip install qrcode" in text
            else:
                assert _decode_terminal_qr(text) == lan[0]
    finally:
        proc.send_signal(signal.SIGINT)
        try:  # the server stops within its 0.5 s poll; the margin is for a loaded machine
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("edgeres serve did not stop on SIGINT")
    assert proc.returncode == 0 and "stopped" in out, (proc.returncode, err[-2000:])


def _decode_terminal_qr(text: str) -> str:
    """Read back the QR code drawn with half-block characters (qrcode's print_ascii) with OpenCV."""
    cv2 = pytest.importorskip("cv2")
    rows = [line for line in text.splitlines() if line and set(line) <= set("█▀▄ \xa0")]
    assert len(rows) > 8, text
    width = max(len(r) for r in rows)
    grid = np.ones((2 * len(rows), width), np.uint8)  # 1 = light
    for y, row in enumerate(rows):
        for x, ch in enumerate(row):
            # invert=True: a full block is a light module.
            grid[2 * y, x] = ch in "█▀"
            grid[2 * y + 1, x] = ch in "█▄"
    grid = np.pad(grid, 4, constant_values=1)
    image = np.kron(grid * 255, np.ones((8, 8), np.uint8)).astype(np.uint8)
    value, _, _ = cv2.QRCodeDetector().detectAndDecode(image)
    return value


# -- the page in a real browser -----------------------------------------------------------------

CLIP_SIZE = (640, 480)  # what the page asks the camera for, so Chrome need not rescale
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def write_y4m(frames: list[np.ndarray], path: Path, fps: int = 5, repeat: int = 3) -> None:
    """An I420 y4m clip (BT.601 studio range), each RGB frame held for ``repeat`` frames."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
            y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
            u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
            v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
            planes = [y] + [c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (u, v)]
            data = b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)
            for _ in range(repeat):
                f.write(b"FRAME\n" + data)


def predict_json(bundle: Path, paths: list[Path]) -> dict[str, dict]:
    """``edgeres predict BUNDLE ... --json --top-k 2`` by file name."""
    out = cli("predict", bundle, *paths, "--json", "--top-k", "2", "--accelerator", "cpu")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {Path(r["path"]).name: r for r in rows}


def _rgb(b64: str, h: int, w: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 3)


def _need_browser() -> None:
    """Skip, saying why, where the page cannot run: no Chromium, or no LiteRT.js for it."""
    from edgeres.serve import ServeError, check_assets

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    try:
        check_assets()
    except ServeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def page(tiny_bundle, photos_root, tmp_path_factory):
    """The tiny bundle served by ``edgeres serve``, open in Chromium whose camera plays a clip of
    real photos: 3 the model calls one label and 3 the other (per ``edgeres predict``)."""
    from edgeres.serve import make_server, serve_in_thread

    _need_browser()
    work = tmp_path_factory.mktemp("serve_page")
    pool = sample_photos(photos_root, 24)
    scenes = {p.stem: np.asarray(decode(p).resize(CLIP_SIZE, Image.BILINEAR)) for p in pool}
    (work / "scenes").mkdir()
    for name, rgb in scenes.items():
        Image.fromarray(rgb).save(work / "scenes" / f"{name}.png")
    scene_predictions = predict_json(tiny_bundle, sorted((work / "scenes").glob("*.png")))
    labels = json.loads((tiny_bundle / "edgeres.json").read_text())["labels"]
    chosen = []
    for label in labels[:2]:  # the 3 most confident scenes of each label, so the answer must change
        ranked = sorted((r for r in scene_predictions.values() if r["label"] == label), key=lambda r: -r["score"])
        chosen += [Path(r["path"]).stem for r in ranked[:3]]
    assert len({scene_predictions[f"{c}.png"]["label"] for c in chosen}) == 2, \
        f"the tiny model calls every scene the same: {scene_predictions}"
    clip = work / "clip.y4m"
    write_y4m([scenes[c] for c in chosen], clip)

    server = make_server(tiny_bundle, port=0)
    serve_in_thread(server)
    browser = Chromium(CHROMIUM, camera_clip=clip)
    try:
        browser.goto(server.url + "?autostart=1&record=6&frames=1&compare=1")
        browser.wait_for("window.edgeres && window.edgeres.app.ready", timeout=90)
        yield {"browser": browser, "server": server, "bundle": tiny_bundle, "work": work,
               "scenes": {c: scenes[c] for c in chosen}, "scene_predictions": scene_predictions}
    finally:
        browser.close()
        server.shutdown()
        server.server_close()


@needs_browser
def test_camera_labels_match_predict_on_the_same_frames(page):
    browser, bundle, work = page["browser"], page["bundle"], page["work"]
    # Collect frames until every scene of the clip has been seen (the clip loops every 3.6 s).
    # Chrome delivers each y4m frame several times: identical frames must get identical answers,
    # and are checked once.
    frames, seen, deadline = {}, set(), time.monotonic() + 60
    n_records = 0
    while len(seen) < len(page["scenes"]) and time.monotonic() < deadline:
        time.sleep(0.4)
        for r in browser.evaluate("window.edgeres.takeRecords()"):
            if r["source"] != "camera":
                continue
            n_records += 1
            answer = [(x["variant"], x["label"], x["score"]) for x in r["results"]]
            if r["image"] in frames:
                assert frames[r["image"]]["answer"] == answer, "the same frame got two answers"
                continue
            frame = _rgb(r["image"], r["height"], r["width"])
            coarse = frame[::4, ::4].astype(np.int16)
            distance = {name: float(np.abs(coarse - rgb[::4, ::4]).mean()) if rgb.shape == frame.shape else 1e9
                        for name, rgb in page["scenes"].items()}
            r.update(scene=min(distance, key=distance.get), frame_rgb=frame, answer=answer)
            r["distance"] = distance[r["scene"]]
            seen.add(r["scene"])
            frames[r["image"]] = r
    assert len(seen) == len(page["scenes"]), f"the page saw only {sorted(seen)} of the clip's scenes"
    records = list(frames.values())
    assert int(browser.evaluate("document.getElementById('result').dataset.frames")) >= n_records

    size = tuple(json.loads((bundle / "edgeres.json").read_text())["input"]["size"])
    config = page["server"].bundle.config
    # Each distinct frame as Chrome delivered it (after its YUV->RGB, and any rescaling), saved
    # lossless, then `edgeres predict` on exactly those frames.
    (work / "frames").mkdir(exist_ok=True)
    paths = []
    for i, r in enumerate(records):
        assert r["distance"] < 3, f"frame {i} is not a clip frame (mean |diff| {r['distance']:.1f})"
        # The page's model input is to_pixels of that frame, byte for byte.
        expected = python_pixels(r["frame_rgb"], size, config["resize"])
        assert np.array_equal(_rgb(r["pixels"], *size), expected), f"frame {i}: JS pixels differ from to_pixels"
        paths.append(work / "frames" / f"frame{i:03d}.png")
        Image.fromarray(r["frame_rgb"]).save(paths[-1], compress_level=1)
    predicted = predict_json(bundle, paths)
    for i, (r, path) in enumerate(zip(records, paths)):
        ref = predicted[path.name]
        int8 = next(x for x in r["results"] if x["variant"] == "int8")
        assert int8["label"] == ref["label"], (i, r["scene"], int8, ref)
        assert abs(int8["score"] - ref["score"]) < 1e-5, (i, int8, ref)  # same pixels, same kernels
    # And against predict on the clip's scenes themselves (before Chrome's YUV round trip).
    agree = np.mean([next(x for x in r["results"] if x["variant"] == "int8")["label"]
                     == page["scene_predictions"][f"{r['scene']}.png"]["label"] for r in records])
    assert agree >= 0.95, f"only {agree:.0%} of frames agree with predict on the source scenes"
    # float32 beside int8 on every frame, each against Python LiteRT on the same pixels.
    from edgeres.runtime import Classifier

    float_model = Classifier(bundle, variant="float32", accelerator="cpu")
    for r in records:
        f32 = next(x for x in r["results"] if x["variant"] == "float32")
        ref = float_model.predict_pixels(_rgb(r["pixels"], *size))
        assert f32["label"] == ref.label and abs(f32["score"] - ref.score) < 1e-4, (f32, ref)
    labels_seen = {next(x for x in r["results"] if x["variant"] == "int8")["label"] for r in records}
    assert len(labels_seen) == 2, "the page's answer never changed although the clip did"


@needs_browser
def test_the_picked_model_runs_on_every_frame_the_others_only_in_compare_mode(page):
    browser = page["browser"]

    def variants_per_frame(n: int = 4) -> list[list[str]]:
        browser.evaluate("window.edgeres.takeRecords()")  # drop frames from before the switch
        seen, deadline = [], time.monotonic() + 120
        while len(seen) < n and time.monotonic() < deadline:
            time.sleep(0.3)
            seen += [[x["variant"] for x in r["results"]] for r in browser.evaluate("window.edgeres.takeRecords()")
                     if r["source"] == "camera"]
        assert len(seen) >= n, f"only {len(seen)} camera frames in 120 s"
        return seen[1:]  # the first may have started before the switch

    try:
        browser.evaluate("window.edgeres.setCompare(false)")
        assert all(v == ["int8"] for v in variants_per_frame()), "compare off: only the picked int8 runs"
        result = browser.evaluate("({...document.getElementById('result').dataset})")
        assert result["model"] == "int8" and result["compare"] == "0"
        browser.evaluate("window.edgeres.pick('float32')")
        assert all(v == ["float32"] for v in variants_per_frame())
        assert browser.evaluate("document.getElementById('result').dataset.model") == "float32"
        browser.evaluate("window.edgeres.setCompare(true)")
        assert all(v == ["float32", "int8"] for v in variants_per_frame()), "compare: every model, picked first"
        assert browser.evaluate("document.getElementById('compare').checked") is True
    finally:  # the module's other tests expect int8 picked, compare on
        browser.evaluate("window.edgeres.pick('int8').then(() => window.edgeres.setCompare(true))")


@needs_browser
def test_screenshot_shows_the_overlay(page):
    browser = page["browser"]
    browser.wait_for("document.getElementById('result').dataset.source === 'camera' && "
                     "Number(document.getElementById('result').dataset.frames) > 2")
    rect = browser.evaluate("(() => { const r = document.getElementById('view').getBoundingClientRect();"
                            " return [r.left, r.top, r.width, r.height, document.getElementById('view').height]; })()")
    shot = browser.screenshot().astype(np.int16)
    left, top, width, height, canvas_h = rect
    scale = height / canvas_h
    n_lines = len(page["server"].bundle.variants) + 1
    line_h = max(16, round(canvas_h / 18))
    band_h = (n_lines * line_h + 2 * round(line_h / 3)) * scale
    x0, x1 = int(left) + 2, int(left + width) - 2
    band = shot[int(top) + 2:int(top + band_h) - 2, x0:x1]
    below = shot[int(top + band_h) + 4:int(top + height) - 2, x0:x1]
    background = (np.abs(band - 16) <= 4).all(axis=-1).mean()
    white = (band >= 235).all(axis=-1).mean()
    marker = ((np.abs(band - (26, 188, 156)) <= 12).all(axis=-1) | (np.abs(band - (230, 126, 34)) <= 12).all(axis=-1))
    assert background > 0.6, f"overlay band not found: {background:.0%} of its area has the band colour"
    assert white > 0.01, f"no text in the overlay band ({white:.2%} white)"
    assert marker.sum() > 20 * n_lines, "no per-model marker in the overlay"
    assert below.std() > 20, "the video is not drawn under the overlay"
    assert (np.abs(below - 16) <= 4).all(axis=-1).mean() < 0.2


@needs_browser
def test_dropped_photo_is_labelled_like_predict(page, photos_root):
    browser, bundle = page["browser"], page["bundle"]
    photos = sample_photos(photos_root, 30)[-4:]  # not the clip's scenes
    reference = predict_json(bundle, photos)
    size = tuple(json.loads((bundle / "edgeres.json").read_text())["input"]["size"])
    config = page["server"].bundle.config
    for photo in photos:
        data = base64.b64encode(photo.read_bytes()).decode()
        browser.evaluate(f"""(() => {{
            const bytes = Uint8Array.from(atob('{data}'), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], '{photo.name}', {{ type: 'image/jpeg' }}));
            document.getElementById('drop').dispatchEvent(
                new DragEvent('drop', {{ dataTransfer: transfer, bubbles: true, cancelable: true }}));
        }})()""")
        browser.wait_for(f"document.getElementById('result').dataset.source === 'file' && "
                         f"document.getElementById('result').textContent.includes('{photo.name}')")
        result = browser.evaluate("({...document.getElementById('result').dataset})")
        record = [r for r in browser.evaluate("window.edgeres.takeRecords()") if r["name"] == photo.name][-1]
        ref = reference[photo.name]
        assert result["label"] == ref["label"], (photo.name, result, ref)
        assert abs(float(result["score"]) - ref["score"]) < 0.02, (photo.name, result, ref)
        # Chrome's JPEG decoder against Pillow's: the model input should differ by little, if at all.
        page_pixels = _rgb(record["pixels"], *size).astype(np.int16)
        python = python_pixels(np.asarray(decode(photo)), size, config["resize"])
        assert np.abs(page_pixels - python).mean() < 1.0, photo.name


@needs_browser
def test_page_shows_the_bundle_facts(page):
    browser, bundle = page["browser"], page["bundle"]
    info = json.loads((bundle / "edgeres.json").read_text())
    assert browser.evaluate("document.getElementById('model-name').textContent") == info["name"]
    facts = browser.evaluate("document.getElementById('facts').textContent")
    assert ", ".join(info["labels"]) in facts
    table = browser.evaluate("document.getElementById('verification').textContent")
    for variant in ("int8", "float32"):
        assert f"{variant} accuracy{100 * info['verification'][variant]['accuracy']:.1f}%" in table
    assert f"{100 * info['verification']['agreement']:.1f}%" in table


# -- the page checks its own runtime (issue 22) and says "not sure" (issue 26) ----------------


def add_runtime_record(bundle: Path, photos: list[Path]) -> dict:
    """Write what export records for each runtime (CONTRACT.md): the probes' pixels as
    runtime_probes.bin and edgeres.json "runtimes", from the int8 model run here on LiteRT's
    XNNPACK and built-in kernels; plus one made-up runtime 3 steps off on 2 probes, so the
    page's comparison has a known difference to find."""
    import platform

    from edgeres.runtime import Classifier

    info = json.loads((bundle / "edgeres.json").read_text())
    outputs = {}
    for kernels in ("xnnpack", "builtin"):
        clf = Classifier(bundle / "model_int8.tflite", accelerator="cpu", kernels=kernels, threads=1, log=lambda m: None)
        pixels = np.stack([to_pixels(decode(p), clf.input_size, clf.resize) for p in photos])
        outputs[f"{kernels}/{platform.machine().lower()}"] = [
            clf.invoke(clf.quantize_input(px)).reshape(-1).astype(int).tolist() for px in pixels]
    xnnpack = next(iter(outputs.values()))
    perturbed = [row[:] for row in xnnpack]
    for i in (0, 3):
        top = int(np.argmax(perturbed[i]))
        perturbed[i][top] = max(0, perturbed[i][top] - 3)
    outputs["perturbed/test"] = perturbed
    (bundle / "runtime_probes.bin").write_bytes(pixels.tobytes())
    info["runtimes"] = {
        "model": "model_int8.tflite",
        "probes": {"file": "runtime_probes.bin", "n": len(photos), "shape": list(pixels.shape),
                   "sources": [p.name for p in photos]},
        "outputs": outputs, "tolerance_steps": 12, "pairs": [],
    }
    (bundle / "edgeres.json").write_text(json.dumps(info, indent=1))
    return info["runtimes"]


def expected_comparison(mine: list[list[int]], theirs: list[list[int]]) -> dict:
    a, b = np.array(mine), np.array(theirs)
    return {"n": len(a), "identical": int((a == b).all(axis=1).sum()), "max_steps": int(np.abs(a - b).max()),
            "flips": int((a.argmax(axis=1) != b.argmax(axis=1)).sum())}


@pytest.fixture(scope="module")
def checked_page(tiny_bundle, photos_root, tmp_path_factory):
    """The tiny bundle with a per-runtime record and an "uncertain" threshold between the top
    scores of the photos the tests drop, open in Chromium."""
    from edgeres.serve import make_server, serve_in_thread

    _need_browser()
    bundle = tmp_path_factory.mktemp("checked") / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    photos = sample_photos(photos_root, 60)
    runtimes = add_runtime_record(bundle, photos[:8] + photos[-8:])
    # The threshold in the widest gap between the top scores of 8 other photos, so that each
    # photo is clearly on one side (the page's scores equal predict's within 1e-5).
    dropped = photos[20:24] + photos[-24:-20]
    scores = predict_json(bundle, dropped)
    ranked = sorted(scores.values(), key=lambda r: r["score"])
    gap = max(range(1, len(ranked)), key=lambda i: ranked[i]["score"] - ranked[i - 1]["score"])
    threshold = round((ranked[gap]["score"] + ranked[gap - 1]["score"]) / 2, 4)
    assert ranked[gap]["score"] - ranked[gap - 1]["score"] > 0.01, [r["score"] for r in ranked]
    info = json.loads((bundle / "edgeres.json").read_text())
    info["uncertain"] = {"threshold": threshold, "source": "manual", "rule": "set by the test"}
    (bundle / "edgeres.json").write_text(json.dumps(info, indent=1))

    server = make_server(bundle, port=0)
    serve_in_thread(server)
    browser = Chromium(CHROMIUM)
    try:
        browser.goto(server.url + "?record=4")
        browser.wait_for("window.edgeres && window.edgeres.app.ready", timeout=90)
        yield {"browser": browser, "bundle": bundle, "runtimes": runtimes, "threshold": threshold,
               "dropped": dropped, "scores": scores}
    finally:
        browser.close()
        server.shutdown()
        server.server_close()


@needs_browser
def test_page_compares_its_runtime_with_the_bundle_record(checked_page):
    browser, runtimes = checked_page["browser"], checked_page["runtimes"]
    status = browser.wait_for("['done', 'error'].find((s) => (document.getElementById('result').dataset"
                              ".runtimeCheckStatus || '').startsWith(s)) && document.getElementById('result')"
                              ".dataset.runtimeCheckStatus", timeout=120)
    assert status == "done", status
    figure = json.loads(browser.evaluate("document.getElementById('result').dataset.runtimeCheck"))
    assert figure["runtime"] == "wasm" and figure["n"] == runtimes["probes"]["n"]
    assert set(figure["against"]) == set(runtimes["outputs"])
    mine = browser.evaluate("window.edgeres.app.runtimeCheck.outputs")
    for name, recorded in runtimes["outputs"].items():  # the figures are what the outputs say
        got = {k: figure["against"][name][k] for k in ("n", "identical", "max_steps", "flips")}
        assert got == expected_comparison(mine, recorded), name
    # LiteRT.js is XNNPACK compiled to WebAssembly: within the bundle's tolerance of x86 XNNPACK.
    xnnpack = next(name for name in runtimes["outputs"] if name.startswith("xnnpack/"))
    assert figure["against"][xnnpack]["max_steps"] <= runtimes["tolerance_steps"]
    # The made-up runtime differs from x86 XNNPACK by 3 steps on probes 0 and 3: the page sees it.
    wasm_vs_xnnpack = np.abs(np.array(mine) - np.array(runtimes["outputs"][xnnpack]))
    if wasm_vs_xnnpack.max() == 0:
        assert figure["against"]["perturbed/test"]["identical"] == figure["n"] - 2
        assert figure["against"]["perturbed/test"]["max_steps"] == 3
    shown = browser.evaluate("document.getElementById('runtime-check').textContent")
    c = figure["against"][xnnpack]
    assert f"WebAssembly vs {xnnpack}: {c['identical']}/{c['n']} identical, max {c['max_steps']} step" in shown
    assert f"{c['flips']} flip" in shown


@needs_browser
def test_an_answer_below_the_threshold_says_not_sure(checked_page):
    browser, threshold = checked_page["browser"], checked_page["threshold"]
    seen = set()
    for photo in checked_page["dropped"]:
        data = base64.b64encode(photo.read_bytes()).decode()
        browser.evaluate(f"""(async () => {{
            const bytes = Uint8Array.from(atob('{data}'), (c) => c.charCodeAt(0));
            await window.edgeres.classifyFile(new File([bytes], '{photo.name}', {{ type: 'image/jpeg' }}));
        }})()""", timeout=120)
        result = browser.evaluate("({...document.getElementById('result').dataset,"
                                  " text: document.getElementById('result').textContent})")
        ref = checked_page["scores"][photo.name]
        assert result["label"] == ref["label"] and ref["label"] in result["text"], (photo.name, result)
        below = ref["score"] < threshold
        assert result["uncertain"] == ("true" if below else "false"), (photo.name, ref["score"], threshold, result)
        assert ("not sure" in result["text"]) == below, (photo.name, result["text"])
        seen.add(below)
    assert seen == {True, False}, "the photos should fall on both sides of the threshold"
    facts = browser.evaluate("document.getElementById('facts').textContent")
    assert f"top score below {threshold}" in facts
