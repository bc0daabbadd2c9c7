"""Each exported model checked through LiteRT on the validation split (int8 against float32),
and through the clients that deploy it (MediaPipe's ImageClassifier), as an app runs it."""

from __future__ import annotations

from pathlib import Path

from edgeres import data as data_lib
from edgeres.export.convert import ExportError


def verify(bundle: Path, files: dict, dataset: data_lib.Dataset, *, limit: int | None = None,
           threads: int | None = None, progress: bool = False) -> dict:
    """Each exported model through LiteRT on the validation split; int8 against float32."""
    return verify_scores(bundle, files, dataset, limit=limit, threads=threads, progress=progress)[0]


def verify_scores(bundle: Path, files: dict, dataset: data_lib.Dataset, *, limit: int | None = None,
                  threads: int | None = None, progress: bool = False):
    """:func:`verify`, and the Evaluation it made (every model's scores on every photo: what the
    uncertain band is measured on)."""
    from edgeres.evaluate import compare
    from edgeres.runtime import Classifier

    items = [(s.path, s.label) for s in dataset.validation.samples]
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    order = sorted(files, key=lambda f: f != "float32")  # float32 first: the reference
    classifiers = [Classifier(bundle / files[f]["file"], threads=threads, accelerator="cpu") for f in order]
    ev = compare(classifiers, items, tuple(dataset.classes), progress=progress)
    out = {"n": ev.models[0].n, "split": "validation"}
    for fmt, m in zip(order, ev.models):
        out[fmt] = {"accuracy": m.accuracy, "ci95": list(m.ci95), "bytes": files[fmt]["bytes"],
                    "mean_latency_ms": round(m.mean_latency_ms, 3)}
    if "float32" in files and "int8" in files:
        key = str(classifiers[order.index("int8")].path)
        out.update(
            agreement=ev.agreement[key],
            mean_abs_prob_diff=ev.mean_abs_prob_diff[key],
            p99_abs_prob_diff=ev.p99_abs_prob_diff[key],
            # In whole images over n, so a drop of exactly --max-drop is not pushed over by float error.
            accuracy_drop_pp=round(100 * (out["float32"]["accuracy"] - out["int8"]["accuracy"]), 9),
            size_ratio=files["int8"]["bytes"] / files["float32"]["bytes"],
            disagreements=[d["path"] for d in ev.disagreements[key]][:50],
        )
    return out, ev

def client_check_python(enabled: bool | None, log) -> str | None:
    """Before any work: the MediaPipe interpreter the client check will run, checked; None: no
    check. Asked for (``enabled``) or named by ``$EDGERES_MEDIAPIPE_PYTHON``, a missing or broken
    one is an error; one found by looking (``enabled=None``) that does not work is skipped, said once."""
    import os

    from edgeres.clients import MEDIAPIPE_ENV, ClientError, find_mediapipe_python, require_mediapipe_python

    if enabled is False:
        return None
    if find_mediapipe_python() is None and not enabled:
        log(f"Client check skipped: no MediaPipe interpreter (set ${MEDIAPIPE_ENV} to check the "
            "model in MediaPipe Tasks too).")
        return None
    try:
        return require_mediapipe_python()
    except ClientError as e:
        if enabled or os.environ.get(MEDIAPIPE_ENV):
            raise ExportError(f"{e} (Or pass --no-client-check.)") from None
        log(f"Client check skipped: {e}")
        return None


def client_checks(bundle: Path, files: dict, dataset: data_lib.Dataset, *, limit: int | None,
                  python: str | None, enabled: bool | None, log) -> dict:
    """The deployed model through MediaPipe ImageClassifier (decoding and resizing itself, as an
    app does) against edgeres on the same validation files, run by ``python``
    (:func:`client_check_python`; None: no check)."""
    from edgeres.clients import ClientError, check_mediapipe
    from edgeres.runtime import Classifier

    fmt = "int8" if "int8" in files else next(iter(files))
    if python is None:
        return {}
    items = [(s.path, s.label) for s in dataset.validation.samples]
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    log(f"Client check: {fmt} model through MediaPipe ImageClassifier on {len(items)} validation images ...")
    try:
        check = check_mediapipe(Classifier(bundle / files[fmt]["file"], accelerator="cpu"), items,
                                tuple(dataset.classes), python=python)
    except ClientError as e:
        if enabled:
            raise ExportError(str(e)) from e
        log(f"Client check failed to run: {e}")
        return {}
    log(f"  {check.summary()}")
    return {"mediapipe": {**check.to_dict(), "format": fmt, "model": files[fmt]["file"]}}
