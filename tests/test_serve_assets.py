"""``edgeres serve`` without Node (issue 24): the pinned LiteRT.js files are fetched once from
the npm registry, checked against package-lock.json's integrity, cached per user; offline or
tampered, one line says how to provide them.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from test_serve import CHROMIUM, ENV, Chromium, predict_json, sample_photos

REPO = Path(__file__).resolve().parents[1]


def test_pins_are_package_lock_s():
    from edgeres.serve_assets import PINNED

    lock = json.loads((REPO / "package-lock.json").read_text())["packages"]
    assert PINNED == {name: (lock[f"node_modules/{name}"]["version"], lock[f"node_modules/{name}"]["integrity"])
                      for name in PINNED}
    assert set(PINNED) == set(lock[""]["dependencies"])


def _package_without_vendor(tmp_path: Path) -> Path:
    """A copy of the edgeres package as a wheel built without `npm ci` holds it: no web/vendor/."""
    root = tmp_path / "site"
    shutil.copytree(REPO / "edgeres", root / "edgeres", ignore=shutil.ignore_patterns("vendor", "__pycache__"))
    assert not (root / "edgeres" / "web" / "vendor").exists()
    return root


def _env(site: Path, cache: Path, **extra) -> dict:
    env = {**ENV, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(cache), **extra}
    env.pop("EDGERES_WEB_ASSETS", None)
    return env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.slow  # the tiny bundle trains a model once per session
def test_offline_is_one_line_naming_the_ways_to_provide_them(tiny_bundle, tmp_path):
    from edgeres.serve_assets import ServeError, fetch_assets

    registry = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ServeError, match="npm ci.*EDGERES_WEB_ASSETS"):
        fetch_assets(registry=registry)
    # Through the CLI, from a package without web/vendor/: one line, rc 2, nothing cached.
    site, cache = _package_without_vendor(tmp_path), tmp_path / "cache"
    out = subprocess.run([sys.executable, "-m", "edgeres.cli", "serve", str(tiny_bundle), "--port", "0"], capture_output=True,
                         text=True, timeout=120, env=_env(site, cache, EDGERES_NPM_REGISTRY=registry), cwd=site)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert "cannot be fetched" in out.stderr and "npm ci" in out.stderr and "$EDGERES_WEB_ASSETS" in out.stderr
    assert not any((cache / "edgeres" / "litertjs").rglob("*.wasm"))


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    """A registry (or mirror) serving other bytes under the pinned name: refused before unpacking."""
    from edgeres.serve_assets import COPIES, PINNED, ServeError, cache_dir, fetch_assets

    fake = {}
    for package, (version, _) in PINNED.items():
        files = {member: b"// not LiteRT.js\n" for p, member, _ in COPIES if p == package}
        fake[f"/{package}/-/{package.split('/')[-1]}-{version}.tgz"] = _tarball(files)
    served = []

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            served.append(self.path)
            body = fake.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        with pytest.raises(ServeError, match="not the one package-lock.json pins.*refusing it"):
            fetch_assets(registry=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert served and not cache_dir().exists()
    # A tarball with the right name and hash is the only way in: the pinned hash is not this one.
    digest = base64.b64encode(__import__("hashlib").sha512(next(iter(fake.values()))).digest()).decode()
    assert all(digest not in integrity for _, integrity in PINNED.values())


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_serve_without_npm_fetches_litertjs_once_and_the_page_runs(tiny_bundle, photos_root, tmp_path):
    """From a package with no web/vendor/ (no Node, no npm ci): `edgeres serve` fetches the pinned
    files from registry.npmjs.org, and the page runs the model in headless Chromium like predict."""
    site, cache = _package_without_vendor(tmp_path), tmp_path / "cache"
    env = _env(site, cache)
    lines, proc = _start(tiny_bundle, env)
    try:
        text = "".join(lines)
        if proc.poll() is not None and "cannot be fetched" in text:
            pytest.skip(f"the npm registry is not reachable from here: {text.strip()}")
        assert "fetching the page's LiteRT.js" in text, text
        url = next(line.split("page: ")[1].strip() for line in lines if "page: " in line)
        fetched = cache / "edgeres" / "litertjs"
        wasm = next(fetched.rglob("litert_wasm_internal.wasm"))
        npm_copy = REPO / "edgeres" / "web" / "vendor" / "litertjs" / "wasm" / "litert_wasm_internal.wasm"
        if npm_copy.is_file():  # the same bytes `npm ci` installs
            assert wasm.read_bytes() == npm_copy.read_bytes()
        photo = sample_photos(photos_root, 40)[-1]
        expected = predict_json(tiny_bundle, [photo])[photo.name]
        browser = Chromium(CHROMIUM)
        try:
            browser.goto(url + "?models=int8")
            browser.wait_for("window.edgeres && window.edgeres.app.ready", timeout=120)
            data = base64.b64encode(photo.read_bytes()).decode()
            browser.evaluate(f"""(async () => {{
                const bytes = Uint8Array.from(atob('{data}'), (c) => c.charCodeAt(0));
                await window.edgeres.classifyFile(new File([bytes], '{photo.name}', {{ type: 'image/jpeg' }}));
            }})()""", timeout=120)
            result = browser.evaluate("({...document.getElementById('result').dataset})")
        finally:
            browser.close()
        assert result["label"] == expected["label"], (result, expected)
        assert abs(float(result["score"]) - expected["score"]) < 0.02, (result, expected)
    finally:
        _stop(proc)
    # Once: the next serve finds the cache and fetches nothing (the registry is not even asked).
    lines, proc = _start(tiny_bundle, _env(site, cache, EDGERES_NPM_REGISTRY=f"http://127.0.0.1:{_closed_port()}"))
    try:
        assert any("page: " in line for line in lines) and not any("fetching" in line for line in lines), lines
    finally:
        _stop(proc)


def _start(bundle: Path, env: dict) -> tuple[list[str], subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "edgeres.cli", "serve", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=env["PYTHONPATH"])  # not the checkout: its edgeres/ has web/vendor/
    lines, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl+C" in line:
            return lines, proc
    proc.wait(timeout=60)
    return lines, proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
