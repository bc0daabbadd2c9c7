"""edgeres serve: the page's pixels, the server's boundaries, and the page in a real Chromium.

The browser tests drive the Debian ``chromium`` over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no websocket library needed) with a fake camera that plays a
y4m clip made here from real photos, and compare what the page reports with ``edgeres predict``.
They need ``chromium`` and the LiteRT.js assets (``npm ci``); CI installs both.
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

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "edgeres" / "web"
NODE = shutil.which("node")
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
        self._buffer = b""
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

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
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
