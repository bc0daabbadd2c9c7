"""``edgeres serve``: an export bundle live in a web page, on this machine or on a phone.

    server = make_server("export/cats-dogs", host="127.0.0.1", port=8000)
    server.serve_forever()          # or: serve(...), which prints the URL and blocks

The page (``edgeres/web/``: static HTML and JS, no build step) runs the bundle's ``.tflite``
files with LiteRT.js on WebAssembly (XNNPACK), the same kernels as the Python runtime, and
feeds them pixels that ``web/pixels.js`` computes with the resize of
:func:`edgeres.preprocess.to_pixels` (the tests require byte equality on real photos).

What is served is a list of exact URL paths made at start (:mod:`edgeres.serve_files`): the
page's own files, the pinned LiteRT.js files (:mod:`edgeres.serve_assets`), the files the
bundle's ``edgeres.json`` names (models, ``labels.txt``, runtime probes) and the page's
``/bundle/config.json``. Nothing is resolved from the request path, so ``..`` cannot escape,
nothing lists a folder, and every file is re-checked when it is read (a symlink swapped in
later that leaves its folder gives 404). Only GET and HEAD are answered.

Only the standard library (plus the LiteRT runtime, to read the models' quantization) is
imported; never TensorFlow.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edgeres.serve_assets import ASSETS_ENV, ASSETS_HINT, REQUIRED_ASSETS, check_assets, vendor_dir
from edgeres.serve_files import (CONFIG_NAME, MODEL_ORDER, PAGE_FILES, WEB_DIR, ServedBundle, ServeError, load_bundle,
                                 pin_batch, read_served)
from edgeres.tflite import is_tflite

__all__ = ["ASSETS_ENV", "ASSETS_HINT", "CONFIG_NAME", "CONTENT_TYPES", "MODEL_ORDER", "PAGE_FILES",
           "REQUIRED_ASSETS", "WEB_DIR", "ServeError", "ServedBundle", "check_assets", "lan_addresses",
           "load_bundle", "make_server", "pin_batch", "qr_text", "self_signed_certificate", "serve",
           "serve_in_thread", "vendor_dir"]

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".json": "application/json", ".wasm": "application/wasm", ".txt": "text/plain; charset=utf-8",
                 ".csv": "text/csv; charset=utf-8", ".png": "image/png", ".map": "application/json"}


# -- the HTTP server --------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgeres-serve"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(head=True)

    def _refuse(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse  # noqa: N815

    def _respond(self, head: bool) -> None:
        name = unquote(urlsplit(self.path).path)
        if name in ("", "/"):
            name = "/index.html"
        if name == "/favicon.ico":
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
            return
        route = self.server.routes.get(name)
        body = None
        if route is not None:
            root, file, model = route
            body = self.server.config_body if root is None else read_served(root, file)
            if body is not None and model:  # what is on disk now, if it still is a model
                body = _pinned(body)
        if body is None:
            self.send_error(HTTPStatus.NOT_FOUND, "Not served: only the page, its assets and the bundle's model files are.")
            return
        suffix = Path(name).suffix.lower()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPES.get(suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def end_headers(self) -> None:
        # Cross-origin isolation lets LiteRT.js use its threaded WASM build (SharedArrayBuffer).
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet: the page reports, not the log
        if self.server.verbose:
            super().log_message(format, *args)


def _pinned(data: bytes) -> bytes | None:
    if not is_tflite(data):
        return None
    try:
        return pin_batch(data)[0]
    except (struct.error, IndexError, ValueError):  # a cut or corrupt model file
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None
    verbose = False
    # exact URL path -> (resolved folder, file name inside it, is a model); folder None: config_body
    routes: dict[str, tuple[Path | None, str, bool]] = {}
    config_body = b""

    def get_request(self):
        sock, addr = super().get_request()
        if self.ssl_context is not None:  # handshake in the handler's thread, not the accept loop
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _routes(bundle: ServedBundle, assets: Path) -> dict[str, tuple[Path | None, str, bool]]:
    routes = {f"/{name}": (WEB_DIR, name, False) for name in PAGE_FILES}
    assets = assets.resolve()
    for file in sorted(assets.rglob("*")):
        if file.is_file() and not file.name.startswith("."):
            routes["/vendor/" + file.relative_to(assets).as_posix()] = (assets, file.relative_to(assets).as_posix(), False)
    for name in bundle.files:
        routes[f"/bundle/{name}"] = (bundle.root, name, name in bundle.models)
    routes[f"/bundle/{CONFIG_NAME}"] = (None, CONFIG_NAME, False)
    return routes


def make_server(bundle: str | Path | ServedBundle, *, host: str = "127.0.0.1", port: int = 8000,
                https: bool = False, assets: Path | None = None, cert_dir: Path | None = None) -> _Server:
    """Bind the server (not yet serving): ``server.url`` is the page, ``server.bundle`` what it serves."""
    served = bundle if isinstance(bundle, ServedBundle) else load_bundle(bundle)
    assets = check_assets(assets)
    server_class = _Server6 if ":" in host else _Server
    try:
        server = server_class((host, port), _Handler)
    except socket.gaierror as e:
        raise ServeError(f"--host {host}: not an address of this machine ({e.strerror}); "
                         f"use 127.0.0.1, or 0.0.0.0 for every network.") from e
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is in use (another edgeres serve?); pick another with "
                             f"--port {port + 1 if port else 8001}, or stop the other server.") from e
        if e.errno in (errno.EACCES, errno.EPERM):
            raise ServeError(f"port {port}: permission denied (ports below 1024 need root); use --port 8000.") from e
        if e.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"--host {host}: not an address of this machine; use 127.0.0.1 or 0.0.0.0.") from e
        raise
    server.routes = _routes(served, assets)
    server.config_body = json.dumps(served.config, indent=1).encode()
    server.bundle = served
    scheme = "https" if https else "http"
    if https:
        names = _certificate_hosts(host)
        cert, key = self_signed_certificate(cert_dir or Path(tempfile.mkdtemp(prefix="edgeres-tls-")), names)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.ssl_context = context
    bound_port = server.server_address[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    server.url = f"{scheme}://{_url_host(shown)}:{bound_port}/"
    server.lan_urls = ([f"{scheme}://{_url_host(ip)}:{bound_port}/" for ip in lan_addresses()]
                       if host in ("0.0.0.0", "::", "") else [])
    return server


def serve(bundle: str | Path, *, host: str = "127.0.0.1", port: int = 8000, https: bool = False,
          log=print) -> None:
    """Serve ``bundle`` until Ctrl+C, printing the URL (and a QR code for a phone)."""
    served = load_bundle(bundle)
    assets = check_assets(log=log)  # fetched once from the npm registry when not here yet
    server = make_server(served, host=host, port=port, https=https, assets=assets)
    models = ", ".join(f"{m['variant']} ({m['bytes'] / 1e6:.1f} MB)" for m in served.config["models"])
    log(f"edgeres serve: {served.config['name']}: {models}")
    if any(m["batch_pinned"] for m in served.config["models"]):
        log("  models are sent with their batch dimension pinned to 1 (LiteRT.js needs static shapes); "
            "files on disk are untouched")
    log(f"  page: {server.url}")
    for url in server.lan_urls:
        log(f"  on this network: {url}")
    if server.lan_urls:
        qr = qr_text(server.lan_urls[0])
        log(qr if qr else "  (pip install qrcode to get a QR code of this URL here)")
    if not is_loopback(host):
        log(f"  reachable by {'every network of this machine' if host in ('0.0.0.0', '::', '') else host} "
            f"on port {server.server_address[1]}: this page, its LiteRT.js files and, from "
            f"{served.path}, only: {', '.join(served.files)} (nothing else in that folder; anyone who can "
            f"reach this machine can download the model)")
    if https:
        log("  the certificate is self-signed: the browser warns once; accept it to reach the page")
    elif not is_loopback(host):
        log("  note: phones allow the camera only on https pages: add --https")
    with _stop_on_signals(server):  # before "Ctrl+C stops" is shown: a signal from then on stops
        log("  Ctrl+C stops")
        sys.stdout.flush()
        server.serve_forever()
    server.server_close()
    log("edgeres serve: stopped")


@contextlib.contextmanager
def _stop_on_signals(server: _Server):
    """SIGINT (Ctrl+C) and SIGTERM stop ``server.serve_forever`` cleanly.

    Explicit handlers, because Python turns SIGINT into KeyboardInterrupt only when the parent
    did not ignore it: a server started from a background job or a test runner inherits SIGINT
    ignored and would never stop. ``shutdown()`` blocks until the loop exits, so it runs in a
    thread of its own, never in the handler (which interrupts that very loop).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        threading.Thread(target=server.shutdown, name="edgeres-serve-stop", daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:  # a Ctrl+C that came before the handlers were set
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_in_thread(server: _Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="edgeres-serve", daemon=True)
    thread.start()
    return thread


# -- https and phones ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (the one with a default route first)."""
    found = []
    try:  # no packet is sent: connect() on UDP only picks the outgoing interface
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            found.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(info[4][0])
    except OSError:
        pass
    out = []
    for ip in found:
        if not ipaddress.ip_address(ip).is_loopback and ip not in out:
            out.append(ip)
    return out


def _certificate_hosts(host: str) -> list[str]:
    hosts = ["localhost", "127.0.0.1"]
    if host in ("0.0.0.0", "::", ""):
        hosts += lan_addresses()
    elif host not in hosts:
        hosts.append(host)
    return hosts


def self_signed_certificate(directory: Path, hosts: list[str], *, force: bool = False) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for ``hosts`` (valid 30 days) with ``cryptography`` or
    ``openssl``, by the rule every writer follows (:func:`edgeres.outputs.write_pem`): files already
    there are refused unless ``force``, which replaces only certificates edgeres made."""
    from edgeres.outputs import write_pem

    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        cert_pem, key_pem = _certificate_with_cryptography(hosts)
    except ImportError:
        cert_pem, key_pem = _certificate_with_openssl(hosts)
    write_pem(key, key_pem, force=force, private=True)
    write_pem(cert, cert_pem, force=force)
    return cert, key


def _certificate_with_openssl(hosts: list[str]) -> tuple[bytes, bytes]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServeError("--https needs a certificate and neither the `cryptography` package nor the `openssl` "
                         "program is here: pip install cryptography (or install openssl).")
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    with tempfile.TemporaryDirectory(prefix="edgeres-tls-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        result = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                                 "-subj", "/CN=edgeres serve", "-addext", f"subjectAltName={san}",
                                 "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True)
        if result.returncode != 0:
            raise ServeError(f"openssl could not make a certificate: {result.stderr.strip().splitlines()[-1:]}; "
                             f"pip install cryptography instead.")
        return cert.read_bytes(), key.read_bytes()


def _certificate_with_cryptography(hosts: list[str]) -> tuple[bytes, bytes]:
    """``(certificate, private key)`` as PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeres serve")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                   .sign(private, hashes.SHA256()))
    key = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def qr_text(url: str) -> str | None:
    """``url`` as a QR code drawn with block characters, or None when ``qrcode`` is not installed."""
    try:
        import qrcode
    except ImportError:
        return None
    import io

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(url)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue().rstrip("\n")
