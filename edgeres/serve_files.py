"""What ``edgeres serve`` sends, decided once at start: the page's own files, the pinned
LiteRT.js files (``web/vendor/``, or ``$EDGERES_WEB_ASSETS``), and the bundle, read through
the LiteRT runtime: its top-level files, its models with the batch pinned to 1, and the page's
``config.json``. Only the standard library, flatbuffers and the runtime; never TensorFlow.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_FILES = ("index.html", "app.js", "pixels.js", "style.css")
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
CONFIG_NAME = "config.json"  # served as /bundle/config.json, made here from edgeres.json + the models
MODEL_ORDER = ("int8", "float16", "dynamic", "float32")


class ServeError(RuntimeError):
    """A bundle, asset or network problem the user can fix; the message says how."""


def vendor_dir() -> Path:
    return Path(os.environ.get(ASSETS_ENV) or WEB_DIR / "vendor")


def check_assets(directory: Path | None = None) -> Path:
    """The folder holding the LiteRT.js files, or :class:`ServeError` naming what is missing."""
    directory = Path(directory or vendor_dir())
    missing = [name for name in REQUIRED_ASSETS if not (directory / name).is_file()]
    if missing:
        raise ServeError(f"the page's JS/WASM assets are missing from {directory} ({missing[0]}"
                         f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}): {ASSETS_HINT}.")
    return directory


def pin_batch(data: bytes) -> tuple[bytes, int]:
    """The model with every ``shape_signature`` batch of -1 set to 1, and how many were set.

    LiteRT.js checks input buffers against the signature and has no resize call, so a
    ``[-1, H, W, 3]`` input cannot be fed. The model is already allocated at batch 1 (its
    ``shape``); only the signature's ``-1`` changes, in place, so the graph and weights are
    byte-identical to the file on disk.
    """
    import flatbuffers
    from flatbuffers.table import Table

    buf = bytearray(data)

    def tables(t: Table, slot: int) -> list[Table]:
        o = t.Offset(4 + 2 * slot)
        if not o:
            return []
        vec = t.Vector(o)
        return [Table(buf, t.Indirect(vec + 4 * i)) for i in range(t.VectorLen(o))]

    root = Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    pinned = 0
    for subgraph in tables(root, 2):  # Model.subgraphs
        for tensor in tables(subgraph, 0):  # SubGraph.tensors
            o = tensor.Offset(4 + 2 * 7)  # Tensor.shape_signature
            if o and tensor.VectorLen(o) and struct.unpack_from("<i", buf, tensor.Vector(o))[0] == -1:
                struct.pack_into("<i", buf, tensor.Vector(o), 1)
                pinned += 1
    return bytes(buf), pinned


@dataclass(frozen=True)
class ServedBundle:
    """A bundle as the page sees it: its files by name, models pinned, and the page config."""

    path: Path
    files: dict[str, Path]  # top-level regular files, by name
    models: dict[str, bytes]  # file name -> bytes served (batch pinned)
    config: dict

    @property
    def variants(self) -> list[str]:
        return [m["variant"] for m in self.config["models"]]


def load_bundle(path: str | Path) -> ServedBundle:
    """Read a bundle directory: its files, its models' I/O (through LiteRT) and ``edgeres.json``."""
    from edgeres.runtime import BUNDLE_JSON, Classifier, ModelError

    path = Path(path)
    if not path.is_dir():
        what = "a file" if path.exists() else "no such directory"
        raise ServeError(f"{path}: {what}; pass an export bundle directory (edgeres export RUN --int8 --out DIR).")
    root = path.resolve()
    files = {}
    for entry in sorted(path.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if not entry.resolve().is_relative_to(root):  # a symlink out of the bundle is not its file
            continue
        files[entry.name] = entry
    info = {}
    if BUNDLE_JSON in files:
        try:
            info = json.loads(files[BUNDLE_JSON].read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ServeError(f"{files[BUNDLE_JSON]}: unreadable ({e}); re-export the bundle.") from e
    listed = {name: m.get("file") for name, m in (info.get("models") or {}).items()}
    if listed:
        candidates = [(v, listed[v]) for v in sorted(listed, key=_variant_rank)]
    else:  # a folder of .tflite files without edgeres.json
        candidates = [(Path(n).stem.removeprefix("model_"), n) for n in files if n.endswith(".tflite")]
    candidates = [(v, f) for v, f in candidates if f in files]
    if not candidates:
        raise ServeError(f"{path}: no .tflite model in this bundle (edgeres.json lists "
                         f"{', '.join(listed) or 'none'}); export one with: edgeres export RUN --int8 --out {path}")
    models, described = {}, []
    for variant, name in candidates:
        clf = Classifier(files[name], accelerator="cpu", threads=1, log=lambda m: None)
        d = clf.describe()
        data, pinned = pin_batch(files[name].read_bytes())
        models[name] = data
        described.append({"variant": variant, "file": name, "url": f"bundle/{name}", "bytes": len(data),
                          "input": d["input"], "output": d["output"], "labels": d["labels"],
                          "batch_pinned": pinned})
        del clf
    labels = described[0]["labels"]
    for m in described[1:]:
        if m["labels"] != labels:
            raise ModelError(f"{path}: {m['file']} has labels {m['labels']} but {described[0]['file']} has "
                             f"{labels}; re-export the bundle.")
    config = {
        "name": info.get("name") or path.resolve().name,
        "labels": labels,
        "input": {**(info.get("input") or {}), "size": described[0]["input"]["size"]},
        "resize": _resize_rule(info),
        "models": described,
        "verification": info.get("verification"),
        "status": info.get("status"),
        "arch": info.get("arch"),
        "versions": info.get("versions"),
        "files": sorted(files),
    }
    return ServedBundle(path, files, models, config)


def _resize_rule(info: dict) -> str:
    """The resize rule the bundle's model was validated with, by the name pixels.js knows."""
    from edgeres import preprocess

    resize_of = getattr(preprocess, "resize_of", None)
    return resize_of(info).value if resize_of else "antialias"  # edgeres 0.1: Pillow's resize only


def _variant_rank(variant: str) -> int:
    return MODEL_ORDER.index(variant) if variant in MODEL_ORDER else len(MODEL_ORDER)
