"""What ``edgeres serve`` exposes, tested over raw sockets (issue 21): only the page, its
assets and the files the bundle's ``edgeres.json`` names answer 200; everything else in the
folder, symlinks swapped in while serving, traversal in any encoding and other methods do not.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from test_serve import _get, cli, fake_assets  # noqa: F401  (fake_assets is a fixture)

pytestmark = pytest.mark.slow  # the tiny bundle trains a model once per session

SECRET = b"SECRET-NOT-FOR-THE-NETWORK"


@pytest.fixture()
def served(tiny_bundle, fake_assets, tmp_path):  # noqa: F811
    """A copy of the tiny bundle with private files beside it, served on a free port."""
    from edgeres.serve import make_server, serve_in_thread

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "passwords.txt").write_bytes(SECRET)
    (bundle / ".env").write_bytes(SECRET)
    (bundle / "sub").mkdir()
    (bundle / "sub" / "inner.txt").write_bytes(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (bundle / "escape.txt").symlink_to(outside / "secret.txt")
    server = make_server(bundle, port=0, assets=fake_assets)
    serve_in_thread(server)
    yield server, bundle, outside
    server.shutdown()
    server.server_close()


def _raw(server, request: bytes) -> bytes:
    """Send ``request`` as written on a socket and return everything the server answers."""
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def test_only_the_files_edgeres_json_names_are_served(served):
    server, bundle, _ = served
    url = server.url
    info = json.loads((bundle / "edgeres.json").read_text())
    named = sorted({m["file"] for m in info["models"].values()} | {"labels.txt"}
                   | ({info["runtimes"]["probes"]["file"]} if "runtimes" in info else set()))
    status, body = _get(url, "/bundle/config.json")
    config = json.loads(body)
    assert status == 200 and config["files"] == named
    assert [m["variant"] for m in config["models"]] == ["int8", "float32"]
    assert _get(url, "/")[0] == 200 and b"<title>edgeres</title>" in _get(url, "/")[1]
    assert _get(url, "/bundle/labels.txt") == (200, (bundle / "labels.txt").read_bytes())
    assert _get(url, "/vendor/litertjs/core/index.js")[0] == 200
    for name in named:
        status, body = _get(url, f"/bundle/{name}")
        assert status == 200 and len(body) == (bundle / name).stat().st_size, name
    # Everything else in the bundle folder: edgeres wrote some of it, but the page needs none of it.
    others = sorted({p.name for p in bundle.iterdir()} - set(named))
    assert {"edgeres.json", "calibration.txt", "probes.npz", "passwords.txt", ".env", "sub", "escape.txt"} <= set(others)
    for name in others:
        status, body = _get(url, f"/bundle/{name}")
        assert status == 404 and SECRET not in body, name
    # Nothing lists a folder.
    for path in ("/bundle/", "/bundle", "/vendor/", "/vendor/litertjs/", "/bundle/sub/", "/web/"):
        status, body = _get(url, path)
        assert status == 404 and b"labels.txt" not in body and b"passwords" not in body, path


TRAVERSAL = [
    "/bundle/../edgeres/serve.py", "/bundle/..%2f..%2fsecret.txt", "/bundle/%2e%2e/secret.txt",
    "/%2e%2e/%2e%2e/etc/passwd", "/../../../../etc/passwd", "/vendor/../../serve.py",
    "/vendor/..%2F..%2F..%2Fserve.py", "/bundle//etc/passwd", "/bundle/%2Fetc%2Fpasswd",
    "/bundle/escape.txt", "/bundle/sub/inner.txt", "/bundle/./labels.txt", "/serve.py",
    "/edgeres/serve.py", "/web/app.js", "/copy_vendor.mjs", "/etc/passwd", "/bundle/..\\secret.txt",
    "/bundle/%252e%252e/secret.txt", "/bundle/..%252f..%252fetc%252fpasswd", "/bundle/%c0%ae%c0%ae/secret.txt",
    "/bundle/..%c0%af..%c0%afetc/passwd", "/bundle/%2e%2e%5csecret.txt", "/bundle/..;/secret.txt",
    "/bundle/labels.txt/../passwords.txt", "/bundle/passwords.txt%00.tflite", "/bundle/passwords.txt%00",
    "/bundle/model_int8.tflite/..", "/bundle/LABELS.TXT", "/bundle/labels.txt.", "/bundle/labels.txt%20",
    "/bundle/%6c%61%62%65%6c%73.txt/../passwords.txt", "/./bundle/passwords.txt", "//bundle/passwords.txt",
    "/bundle/.env", "/bundle/sub", "/vendor/litertjs/core/../../../../edgeres/serve.py",
    "/index.html/../../edgeres/serve.py", "/bundle/edgeres.json", "/bundle/calibration.txt",
    "/bundle/probes.npz", "/bundle/%2e%65nv", "/proc/self/environ", "/bundle/~/.ssh/id_rsa",
]


def test_traversal_in_any_encoding_is_404(served):
    server, _, _ = served
    assert len(TRAVERSAL) >= 40
    for path in TRAVERSAL:
        status, body = _get(server.url, path)
        assert status == 404, (path, status)
        assert SECRET not in body and b"root:" not in body and b"import " not in body, path


def test_symlinks_swapped_in_while_serving_are_404(served):
    server, bundle, outside = served
    url = server.url
    labels = (bundle / "labels.txt").read_bytes()
    model = (bundle / "model_int8.tflite").read_bytes()
    assert _get(url, "/bundle/labels.txt") == (200, labels)
    # labels.txt becomes a link out of the bundle after the server started.
    (bundle / "labels.txt").rename(bundle / "labels.real")
    (bundle / "labels.txt").symlink_to(outside / "secret.txt")
    status, body = _get(url, "/bundle/labels.txt")
    assert status == 404 and SECRET not in body
    # ... and to /etc/passwd (absolute), and through a linked folder.
    (bundle / "labels.txt").unlink()
    (bundle / "labels.txt").symlink_to("/etc/passwd")
    assert _get(url, "/bundle/labels.txt")[0] == 404
    (bundle / "labels.txt").unlink()
    (bundle / "linked").symlink_to(outside, target_is_directory=True)
    (bundle / "labels.txt").symlink_to("linked/secret.txt")
    assert _get(url, "/bundle/labels.txt")[0] == 404
    # A folder, a FIFO: not regular files, 404 (and no hang on the FIFO).
    (bundle / "labels.txt").unlink()
    (bundle / "labels.txt").mkdir()
    assert _get(url, "/bundle/labels.txt")[0] == 404
    (bundle / "labels.txt").rmdir()
    os.mkfifo(bundle / "labels.txt")
    assert _get(url, "/bundle/labels.txt")[0] == 404
    (bundle / "labels.txt").unlink()
    # A link that stays inside the bundle is the bundle's own file: served.
    (bundle / "labels.txt").symlink_to("labels.real")
    assert _get(url, "/bundle/labels.txt") == (200, labels)
    # The model cut short, or not a model any more: 404, never an error page with a traceback.
    (bundle / "model_int8.tflite").write_bytes(model[:5000])
    assert _get(url, "/bundle/model_int8.tflite")[0] == 404
    (bundle / "model_int8.tflite").write_bytes(b"garbage")
    assert _get(url, "/bundle/model_int8.tflite")[0] == 404
    (bundle / "model_int8.tflite").write_bytes(model)
    assert _get(url, "/bundle/model_int8.tflite")[0] == 200
    # The model replaced by a link to a copy outside: 404, although the bytes are a model.
    (outside / "model.tflite").write_bytes(model)
    (bundle / "model_int8.tflite").unlink()
    (bundle / "model_int8.tflite").symlink_to(outside / "model.tflite")
    assert _get(url, "/bundle/model_int8.tflite")[0] == 404
    assert _get(url, "/bundle/model_int8.tflite", method="HEAD")[0] == 404
    # The whole bundle folder swapped for a link elsewhere.
    moved = bundle.with_name("bundle.moved")
    bundle.rename(moved)
    bundle.symlink_to(outside, target_is_directory=True)
    (outside / "labels.txt").write_bytes(SECRET)
    status, body = _get(url, "/bundle/labels.txt")
    assert status == 404 and SECRET not in body


def test_only_get_and_head_are_answered(served):
    server, bundle, _ = served
    size = (bundle / "labels.txt").stat().st_size
    reply = _raw(server, b"HEAD /bundle/labels.txt HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and f"Content-Length: {size}".encode() in head and body == b""
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"):
        reply = _raw(server, f"{method} /bundle/labels.txt HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"405" and b"Allow: GET, HEAD" in head and body == b"", (method, reply)
    for method in ("PROPFIND", "MKCOL", "get", "BREW"):
        reply = _raw(server, f"{method} /bundle/labels.txt HTTP/1.0\r\n\r\n".encode())
        assert reply.split(b" ")[1] in (b"400", b"501") and (bundle / "labels.txt").read_bytes() not in reply, method
    # Odd request lines: an absolute URI, no leading slash, a bare '*', garbage, HTTP/0.9.
    for line in (b"GET http://127.0.0.1/bundle/passwords.txt HTTP/1.0", b"GET bundle/passwords.txt HTTP/1.0",
                 b"GET * HTTP/1.0", b"\x16\x03\x01\x00\xa5\x01", b"GET /bundle/passwords.txt",
                 b"GET /bundle/../../etc/passwd HTTP/1.1\r\nHost: x"):
        reply = _raw(server, line + b"\r\n\r\n")
        assert SECRET not in reply and b"root:" not in reply, line
        assert b" 200 " not in reply.split(b"\r\n")[0], (line, reply[:80])


def test_a_folder_that_is_not_a_bundle_is_refused_and_one_tflite_is_served_alone(tiny_bundle, fake_assets, tmp_path):  # noqa: F811
    from edgeres.serve import make_server, serve_in_thread

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_bundle / "model_int8.tflite", folder)
    (folder / "passwords.txt").write_bytes(SECRET)
    out = cli("serve", folder, "--port", 0, rc=2, env={"EDGERES_WEB_ASSETS": str(fake_assets)})
    assert "not an edgeres bundle" in out.stderr and f"edgeres serve {folder / 'model_int8.tflite'}" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    server = make_server(folder / "model_int8.tflite", port=0, assets=fake_assets)
    serve_in_thread(server)
    try:
        status, body = _get(server.url, "/bundle/config.json")
        config = json.loads(body)
        assert config["files"] == ["model_int8.tflite"] and config["labels"] == \
            json.loads((tiny_bundle / "edgeres.json").read_text())["labels"]
        assert _get(server.url, "/bundle/model_int8.tflite")[0] == 200
        for name in ("passwords.txt", "labels.txt", "edgeres.json"):
            assert _get(server.url, f"/bundle/{name}")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("meta", [
    "[1, 2]", "not json", '{"models": [1]}', '{"models": {"int8": "model_int8.tflite"}}',
    '{"models": {"int8": {"file": "../model_int8.tflite"}}}', '{"models": {"int8": {"file": "passwords.txt"}}}',
    '{"models": {"int8": {"file": "model_int8.tflite"}}, "labels": "cats"}',
    '{"models": {"int8": {"file": "model_int8.tflite"}}, "uncertain": {"threshold": 7}}',
    '{"models": {"int8": {"file": "model_int8.tflite"}}, "runtimes": {"probes": {"file": "/etc/passwd"}}}',
])
def test_serve_with_an_edgeres_json_of_the_wrong_shape_is_one_line(meta, tiny_bundle, fake_assets, tmp_path):  # noqa: F811
    from edgeres.serve import ServeError, load_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "edgeres.json").write_text(meta)
    with pytest.raises(ServeError, match="edgeres.json: .*re-export the bundle"):
        load_bundle(bundle)
    if meta.startswith('{"models": {"int8": "'):  # and once through the CLI: one line, rc 2
        out = cli("serve", bundle, "--port", 0, rc=2, env={"EDGERES_WEB_ASSETS": str(fake_assets)})
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr and '"models"."int8"' in out.stderr


def test_serve_errors_are_one_clear_line(tiny_bundle, fake_assets, tmp_path):  # noqa: F811
    # A port in use.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli("serve", tiny_bundle, "--port", port, rc=2, env={"EDGERES_WEB_ASSETS": str(fake_assets)})
    assert f"port {port}" in out.stderr and "in use" in out.stderr and "--port" in out.stderr
    assert "Traceback" not in out.stderr
    # A bundle without models.
    empty = tmp_path / "empty-bundle"
    empty.mkdir()
    (empty / "edgeres.json").write_text(json.dumps({"name": "x", "labels": ["a", "b"], "models": {}}))
    out = cli("serve", empty, rc=2, env={"EDGERES_WEB_ASSETS": str(fake_assets)})
    assert "no .tflite model" in out.stderr and "edgeres export" in out.stderr
    # Not a directory.
    out = cli("serve", tiny_bundle / "labels.txt", rc=2, env={"EDGERES_WEB_ASSETS": str(fake_assets)})
    assert "bundle directory" in out.stderr

