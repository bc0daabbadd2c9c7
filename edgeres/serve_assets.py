"""The pinned LiteRT.js files the ``edgeres serve`` page runs the model with, without Node.

Where they are looked for, first found wins:

1. ``$EDGERES_WEB_ASSETS``, when set (a folder laid out as ``web/vendor/``; nothing else is tried);
2. ``edgeres/web/vendor/``: ``npm ci`` in a source checkout copies them there (the developers'
   route, see ``package.json``), and a wheel built after it ships them;
3. the per-user cache, ``~/.cache/edgeres/litertjs/VERSION/`` (``$XDG_CACHE_HOME`` honoured);
4. otherwise edgeres fetches them once from the npm registry into that cache: the tarballs of
   the versions pinned in ``package-lock.json`` (:data:`PINNED`, a test keeps the two equal),
   each checked against the lock file's sha512 integrity before a byte is unpacked.
   ``$EDGERES_NPM_REGISTRY`` points at a mirror.

Only the standard library.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent / "web"
ASSETS_ENV = "EDGERES_WEB_ASSETS"
REGISTRY_ENV = "EDGERES_NPM_REGISTRY"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
# package -> (version, integrity), exactly as package-lock.json pins them.
PINNED = {
    "@litertjs/core": ("2.5.3", "sha512-PlGmbMOq9WitX7FO0jhbdJw9GthatsyuCQXjTt/wJZo0FLaw48q4tz8IwqgqCIkviYGr9OFDL1kCnN4nzWoyJQ=="),
    "@litertjs/wasm-utils": ("2.5.3", "sha512-4fJiw6tBQnIs+0jH/OQ16nYOiSl8/+zZnn5h2ul8aTKHi05sVqZW580Tmk78pC2kT39A9OYBVdFawteZ/sI1kQ=="),
}
# (package, file in its tarball, where the page loads it from): what web/copy_vendor.mjs copies.
# The plain, compatibility (no relaxed SIMD) and threaded builds; not the JSPI one (WebGPU/WebNN).
COPIES = (
    ("@litertjs/core", "dist/index.js", "litertjs/core/index.js"),
    ("@litertjs/wasm-utils", "dist/index.js", "litertjs/wasm-utils/index.js"),
    *(("@litertjs/core", f"wasm/{build}{ext}", f"litertjs/wasm/{build}{ext}")
      for build in ("litert_wasm_internal", "litert_wasm_compat_internal", "litert_wasm_threaded_internal")
      for ext in (".js", ".wasm")),
)
# What the page cannot run without.
REQUIRED_ASSETS = (
    "litertjs/core/index.js",
    "litertjs/wasm-utils/index.js",
    "litertjs/wasm/litert_wasm_internal.js",
    "litertjs/wasm/litert_wasm_internal.wasm",
)
ASSETS_HINT = ("provide them with `npm ci` in the edgeres source checkout (Node.js 18+; it copies them into "
               "edgeres/web/vendor/), or point $EDGERES_WEB_ASSETS at a folder holding them")


class ServeError(RuntimeError):
    """A bundle, asset or network problem the user can fix; the message says how."""


def version() -> str:
    return PINNED["@litertjs/core"][0]


def vendor_dir() -> Path:
    return Path(os.environ.get(ASSETS_ENV) or WEB_DIR / "vendor")


def cache_dir() -> Path:
    """Where fetched LiteRT.js files are kept for this user: ``~/.cache/edgeres/litertjs/VERSION``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeres" / "litertjs" / version()


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in REQUIRED_ASSETS)


def check_assets(directory: Path | None = None, *, fetch: bool = True, log=lambda message: None) -> Path:
    """The folder holding the LiteRT.js files: ``directory`` when given, else the first of
    ``$EDGERES_WEB_ASSETS``, ``web/vendor/``, the user cache, or a fetch into that cache."""
    explicit = directory or os.environ.get(ASSETS_ENV)
    if explicit:
        directory = Path(explicit)
        missing = [name for name in REQUIRED_ASSETS if not (directory / name).is_file()]
        if missing:
            raise ServeError(f"the page's JS/WASM assets are missing from {directory} ({missing[0]}"
                             f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}): {ASSETS_HINT}.")
        return directory
    for candidate in (WEB_DIR / "vendor", cache_dir()):
        if _complete(candidate):
            return candidate
    if not fetch:
        raise ServeError(f"the page's LiteRT.js {version()} files are not here (looked in {WEB_DIR / 'vendor'} "
                         f"and {cache_dir()}): {ASSETS_HINT}.")
    return fetch_assets(log=log)


def fetch_assets(*, registry: str | None = None, log=lambda message: None) -> Path:
    """Download the pinned LiteRT.js tarballs, check their integrity, unpack the page's files
    into :func:`cache_dir` (whole or not at all) and return it."""
    registry = (registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY).rstrip("/")
    target = cache_dir()
    log(f"edgeres serve: fetching the page's LiteRT.js {version()} from {registry} (once; kept in {target})")
    tarballs = {name: _download(registry, name, *pin) for name, pin in PINNED.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for package, member, dest in COPIES:
            data = _member(tarballs[package], f"package/{member}", package)
            (staging / dest).parent.mkdir(parents=True, exist_ok=True)
            (staging / dest).write_bytes(data)
        versions = {name: pin[0] for name, pin in PINNED.items()}
        (staging / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")
        if _complete(target):  # another edgeres serve finished first
            return target
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download(registry: str, package: str, version_: str, integrity: str) -> bytes:
    url = f"{registry}/{package}/-/{package.split('/')[-1]}-{version_}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ServeError(f"the page's LiteRT.js {version_} is not on this machine and {url} cannot be fetched "
                         f"({reason}): {ASSETS_HINT}; or connect once and rerun.") from e
    algorithm, _, expected = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if got != expected:
        raise ServeError(f"{url}: its {algorithm} ({got[:16]}...) is not the one package-lock.json pins "
                         f"({expected[:16]}...); refusing it. Check {REGISTRY_ENV} (a mirror serving other bytes?), "
                         f"or {ASSETS_HINT}.")
    return data


def _member(tarball: bytes, name: str, package: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        try:
            member = tar.getmember(name)
        except KeyError:
            raise ServeError(f"{package}: its tarball has no {name}; {ASSETS_HINT}.") from None
        if not member.isfile():
            raise ServeError(f"{package}: {name} in its tarball is not a file; {ASSETS_HINT}.")
        return tar.extractfile(member).read()
