"""The pinned LiteRT.js files the ``edgeres serve`` page runs the model with.

Where they are looked for, first found wins: ``$EDGERES_WEB_ASSETS``; ``edgeres/web/vendor/``
(``npm ci`` in a source checkout copies them there, see ``package.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent / "web"
ASSETS_ENV = "EDGERES_WEB_ASSETS"
# What the page loads from the vendor folder (written by web/copy_vendor.mjs on `npm ci`).
REQUIRED_ASSETS = (
    "litertjs/core/index.js",
    "litertjs/wasm-utils/index.js",
    "litertjs/wasm/litert_wasm_internal.js",
    "litertjs/wasm/litert_wasm_internal.wasm",
)
ASSETS_HINT = ("get them with `npm ci` in the edgeres source checkout (needs Node.js 18+; it copies the "
               "pinned LiteRT.js files into edgeres/web/vendor/), or point $EDGERES_WEB_ASSETS at a folder "
               "holding them")


class ServeError(RuntimeError):
    """A bundle, asset or network problem the user can fix; the message says how."""


def vendor_dir() -> Path:
    return Path(os.environ.get(ASSETS_ENV) or WEB_DIR / "vendor")


def check_assets(directory: Path | None = None) -> Path:
    """The folder holding the LiteRT.js files, or ServeError naming what is missing."""
    directory = Path(directory or vendor_dir())
    missing = [name for name in REQUIRED_ASSETS if not (directory / name).is_file()]
    if missing:
        raise ServeError(f"the page's JS/WASM assets are missing from {directory} ({missing[0]}"
                         f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}): {ASSETS_HINT}.")
    return directory
