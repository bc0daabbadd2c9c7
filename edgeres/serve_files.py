"""What ``edgeres serve`` sends, and nothing else: the page's own files, the pinned LiteRT.js
files (:mod:`edgeres.serve_assets`), and from the bundle only what its ``edgeres.json`` names:
the model files, ``labels.txt``, and the runtime probes (``runtimes.probes.file``), plus the
page's ``config.json`` made here. A folder without ``edgeres.json`` is refused; a single
``.tflite`` file can be served by itself (its labels come from its metadata).

Every file is opened and checked on every request (:func:`read_served`): the file actually
opened must be a regular file inside the folder it was listed from, so a symlink swapped in
after start leads nowhere. Only the standard library, flatbuffers and the LiteRT runtime;
never TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from edgeres.serve_assets import ServeError

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_FILES = ("index.html", "app.js", "pixels.js", "runtime_check.js", "style.css")
CONFIG_NAME = "config.json"  # served as /bundle/config.json, made here from edgeres.json + the models
MODEL_ORDER = ("int8", "float16", "dynamic", "float32")
LABELS_FILE = "labels.txt"


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


# -- reading a served file, checked every time ----------------------------------------------------


def read_served(root: Path, name: str) -> bytes | None:
    """The bytes of ``root/name``, or None unless the file opened is a regular file inside ``root``.

    ``root`` is a resolved folder. The check is made on the open file descriptor (Linux: its
    ``/proc/self/fd`` link names what was really opened), so a symlink swapped in between a
    check and the read cannot send a file from elsewhere.
    """
    try:
        fd = os.open(root / name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        link = f"/proc/self/fd/{fd}"
        real = Path(os.readlink(link)) if os.path.islink(link) else (root / name).resolve()
        if not real.is_relative_to(root) or real == root:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


# -- the bundle as the page sees it -------------------------------------------------------------


@dataclass(frozen=True)
class ServedBundle:
    """A bundle as the page sees it: the files served (by name, under one resolved folder),
    the models' bytes with the batch pinned, and the page config."""

    path: Path  # as given: a bundle folder, or one .tflite file
    root: Path  # the resolved folder every served file must stay in
    files: tuple[str, ...]  # the top-level names served from ``root``
    models: dict[str, bytes]  # file name -> bytes served (batch pinned), as read at start
    config: dict

    @property
    def variants(self) -> list[str]:
        return [m["variant"] for m in self.config["models"]]


def load_bundle(path: str | Path) -> ServedBundle:
    """Read a bundle folder (``edgeres.json`` and the files it names) or one ``.tflite`` file."""
    from edgeres.runtime import BUNDLE_JSON

    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".tflite":
        root = path.resolve().parent
        return _served(path, root, {}, [(path.stem.removeprefix("model_"), path.resolve().name)], [])
    if not path.is_dir():
        what = "a file that is not a .tflite" if path.exists() else "no such directory"
        raise ServeError(f"{path}: {what}; pass an export bundle directory (edgeres export RUN --int8 --out DIR) "
                         f"or one .tflite file.")
    root = path.resolve()
    meta = read_served(root, BUNDLE_JSON)
    if meta is None:
        found = sorted(p.name for p in path.glob("*.tflite"))
        hint = f"serve one model by itself: edgeres serve {path / found[0]}" if found else \
            "export one with: edgeres export RUN --int8 --out DIR"
        raise ServeError(f"{path}: not an edgeres bundle (no {BUNDLE_JSON}); only bundles are served, so the "
                         f"folder's other files stay private. {hint[0].upper()}{hint[1:]}.")
    info = bundle_json(path / BUNDLE_JSON, meta)
    listed = [(v, m["file"]) for v, m in sorted(info["models"].items(), key=lambda vm: _variant_rank(vm[0]))]
    candidates = [(v, f) for v, f in listed if read_served(root, f) is not None]
    if not candidates:
        raise ServeError(f"{path}: no .tflite model in this bundle (edgeres.json lists "
                         f"{', '.join(f for _, f in listed) or 'none'}); export one with: "
                         f"edgeres export RUN --int8 --out {path}")
    extra = [LABELS_FILE] if read_served(root, LABELS_FILE) is not None else []
    runtimes = info.get("runtimes")
    if runtimes:
        extra.append(_check_probes(path, root, runtimes))
    return _served(path, root, info, candidates, extra)


def _served(path: Path, root: Path, info: dict, candidates: list[tuple[str, str]], extra: list[str]) -> ServedBundle:
    from edgeres.runtime import Classifier, ModelError

    models, described = {}, []
    for variant, name in candidates:
        clf = Classifier(root / name, accelerator="cpu", threads=1, log=lambda m: None)
        d = {**clf.describe(), "resize": clf.resize.value}
        del clf
        data, pinned = pin_batch(read_served(root, name) or b"")
        models[name] = data
        described.append({"variant": variant, "file": name, "url": f"bundle/{name}", "bytes": len(data),
                          "input": d["input"], "output": d["output"], "labels": d["labels"],
                          "resize": d["resize"], "batch_pinned": pinned})
    labels = described[0]["labels"]
    for m in described[1:]:
        if m["labels"] != labels:
            raise ModelError(f"{path}: {m['file']} has labels {m['labels']} but {described[0]['file']} has "
                             f"{labels}; re-export the bundle.")
    files = tuple(sorted({*models, *extra}))
    config = {
        "name": info.get("name") or (root.name if path.is_dir() else path.stem),
        "labels": labels,
        "input": {**(info.get("input") or {}), "size": described[0]["input"]["size"]},
        "resize": described[0]["resize"],  # the rule Classifier (edgeres predict) uses for this model
        "models": described,
        "verification": info.get("verification"),
        "status": info.get("status"),
        "arch": info.get("arch"),
        "versions": info.get("versions"),
        "runtimes": _page_runtimes(info.get("runtimes"), files),
        "uncertain": info.get("uncertain"),
        "files": list(files),
    }
    return ServedBundle(path, root, files, models, config)


def bundle_json(meta_path: Path, data: bytes) -> dict:
    """``edgeres.json`` parsed and checked for the shape serve relies on; ServeError names what is wrong."""
    def bad(what: str) -> ServeError:
        return ServeError(f"{meta_path}: {what}; this is not an edgeres.json edgeres wrote: re-export the bundle "
                          f"(edgeres export RUN --int8 --out {meta_path.parent}).")

    try:
        info = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"not valid JSON ({e})") from e
    if not isinstance(info, dict):
        raise bad(f"holds a JSON {type(info).__name__}, not an object")
    models = info.get("models")
    if not isinstance(models, dict):
        raise bad(f'"models" is {_kind(models)}, not an object of variant -> {{"file": ...}}')
    for variant, m in models.items():
        if not isinstance(m, dict):
            raise bad(f'"models"."{variant}" is {_kind(m)}, not {{"file": "NAME.tflite"}}')
        if not _plain_name(m.get("file"), ".tflite"):
            raise bad(f'"models"."{variant}"."file" is {m.get("file")!r}, not the name of a .tflite file in the '
                      f'bundle folder itself')
    for key, kind in (("name", str), ("labels", list), ("input", dict), ("runtimes", dict), ("uncertain", dict)):
        if info.get(key) is not None and not isinstance(info[key], kind):
            raise bad(f'"{key}" is {_kind(info[key])}, not {"a string" if kind is str else "an " + kind.__name__}'
                      .replace("an dict", "an object").replace("an list", "a list"))
    threshold = (info.get("uncertain") or {}).get("threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise bad(f'"uncertain"."threshold" is {threshold!r}, not a top score between 0 and 1 (or null)')
    if info.get("runtimes"):
        _check_runtimes(info["runtimes"], bad)
    return info


def _check_runtimes(runtimes: dict, bad) -> None:
    probes = runtimes.get("probes")
    if not isinstance(probes, dict) or not _plain_name(probes.get("file"), ".bin"):
        raise bad('"runtimes"."probes" is not {"file": "NAME.bin", "n": N, "shape": [N, H, W, 3]}')
    shape = probes.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(x, int) and x > 0 for x in shape)
            and shape[3] == 3 and shape[0] == probes.get("n")):
        raise bad(f'"runtimes"."probes"."shape" is {shape!r}, not [n, H, W, 3] with n = "n" ({probes.get("n")!r})')
    outputs = runtimes.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        raise bad('"runtimes"."outputs" is not an object of runtime name -> one uint8 output per probe')
    for name, rows in outputs.items():
        if not (isinstance(rows, list) and len(rows) == shape[0] and all(
                isinstance(r, list) and r and all(isinstance(q, int) and 0 <= q <= 255 for q in r) for r in rows)):
            raise bad(f'"runtimes"."outputs"."{name}" is not {shape[0]} lists of uint8 outputs (one per probe)')
    if not _plain_name(runtimes.get("model"), ".tflite"):
        raise bad('"runtimes"."model" does not name the bundle\'s .tflite the outputs were computed with')


def _check_probes(path: Path, root: Path, runtimes: dict) -> str:
    probes = runtimes["probes"]
    data = read_served(root, probes["file"])
    expected = math.prod(probes["shape"])
    if data is None or len(data) != expected:
        got = "missing" if data is None else f"{len(data)} bytes"
        raise ServeError(f"{path / probes['file']}: {got}, edgeres.json's runtimes.probes says {probes['shape']} "
                         f"uint8 ({expected} bytes); re-export the bundle.")
    return probes["file"]


def _page_runtimes(runtimes: dict | None, files: tuple[str, ...]) -> dict | None:
    """What the page needs to check its own runtime: the probes' URL and shape, each runtime's outputs."""
    if not runtimes or runtimes["model"] not in files:
        return None
    probes = runtimes["probes"]
    return {"model": runtimes["model"], "probes": {"url": f"bundle/{probes['file']}", "n": probes["n"],
                                                   "shape": probes["shape"]},
            "outputs": runtimes["outputs"], "tolerance_steps": runtimes.get("tolerance_steps"),
            "pairs": runtimes.get("pairs")}


def _plain_name(name, suffix: str) -> bool:
    """A file name in the bundle folder itself: no folder part, not hidden, with ``suffix``."""
    return (isinstance(name, str) and name.lower().endswith(suffix) and "/" not in name and "\\" not in name
            and not name.startswith(".") and "\0" not in name)


def _kind(value) -> str:
    return "missing" if value is None else f"a {type(value).__name__} ({json.dumps(value)[:40]})"


def _variant_rank(variant: str) -> int:
    return MODEL_ORDER.index(variant) if variant in MODEL_ORDER else len(MODEL_ORDER)
