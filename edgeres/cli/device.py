"""The commands that run an exported model through LiteRT, with no TensorFlow: predict,
evaluate, bench, camera, serve; and doctor, which says what this machine can do."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeres.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    AcceleratorOpt,
    Client,
    DelegateOpt,
    JsonOpt,
    StrictOpt,
    ThreadsOpt,
    _expand,
    _finite,
    _friendly_errors,
    _print_predictions,
    _print_table,
    _short_names,
    app,
)
from edgeres.runtime import Accelerator, Kernels


# -- runtime commands ----------------------------------------------------------------------


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A .tflite file or an export bundle directory (uses its int8 model).")],
    paths: Annotated[list[str], typer.Argument(help="Images, folders (searched recursively) or globs.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Show the K best classes.")] = 1,
    json_out: JsonOpt = False,
    threads: ThreadsOpt = None,
    accelerator: AcceleratorOpt = Accelerator.AUTO,
    delegate: DelegateOpt = None,
    strict: StrictOpt = False,
):
    """Classify images with an exported model through LiteRT (no TensorFlow needed).

    Unreadable images are reported and skipped; the exit code is 1 if any failed. An answer whose
    top score is below the model's uncertain band (measured at export, carried in its metadata) is
    marked "(not sure)", "uncertain": true in --json: there float32 and int8, or two runtimes, may disagree.

    Example: edgeres predict export/cats-dogs photo.jpg photos/ --top-k 2
    """
    with _friendly_errors():
        from edgeres.preprocess import ImageError
        from edgeres.runtime import Classifier

        clf = Classifier(model, threads=threads, accelerator=accelerator, delegate=delegate, strict=strict)
        files, problems = _expand(paths)
        rows = []
        for f in files:
            try:
                pred = clf.predict(f)
            except ImageError as e:
                problems.append(str(e))
                continue
            rows.append((f, pred))
            if json_out:
                record = {"path": str(f), **pred.to_dict()}
                if top_k > 1:
                    record["top_k"] = [{"label": lbl, "score": round(s, 6)} for lbl, s in pred.top_k(top_k, clf.labels)]
                typer.echo(json.dumps(record))
        if not json_out and rows:
            _print_predictions(rows, clf, top_k)
        for p in problems:
            typer.secho(f"skipped: {p}", fg="yellow", err=True)
        if problems or not rows:
            raise typer.Exit(EXIT_FAILED)


@app.command()
def evaluate(
    models: Annotated[list[Path], typer.Argument(help="One or more .tflite files, bundles or training run directories (a run's Keras model in TensorFlow; a QAT run with its fake quantization on); the first is the reference for agreement.")],
    data: Annotated[Optional[Path], typer.Option(help="Labelled folder: ROOT/validation/<class>/* (or val/test), or ROOT/<class>/*. Default: $EDGERES_DATA, a local cats_and_dogs_filtered copy, else its download.")] = None,
    split: Annotated[str, typer.Option(help="Split folder to use when ROOT has splits: ROOT/<split>/<class>/* (train, validation, val, test...). validation falls back to val/ or test/; the title names the one read.")] = "validation",
    limit: Annotated[Optional[int], typer.Option(min=1, help="At most N images, spread over the classes.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write report.json, misclassified.csv, disagreements.csv, confusion PNGs and a risk-coverage plot here.")] = None,
    accelerator: Annotated[Accelerator, typer.Option("--accelerator", case_sensitive=False, help="cpu (default: the reference) | gpu | auto. gpu runs a bundle's float16 model on LiteRT's GPU accelerator after a self-check against the CPU.")] = Accelerator.CPU,
    client: Annotated[Optional[Client], typer.Option(help="Also run each model through this client on the same files and report its accuracy and agreement with edgeres. mediapipe: MediaPipe Tasks ImageClassifier, decoding and resizing the files itself as an app does (interpreter: $EDGERES_MEDIAPIPE_PYTHON, else .venv-mediapipe).")] = None,
    json_out: JsonOpt = False,
    threads: ThreadsOpt = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --report folder; only a report edgeres evaluate wrote is ever replaced.")] = False,
):
    """Accuracy (95% CI), per-class precision/recall and confusion of each model; agreement between them.

    All models see byte-identical input pixels, made by each model's own resize rule; --client
    mediapipe also runs each model through MediaPipe Tasks as an app would and reports agreement.
    For a model with an uncertain band: the share it flags, accuracy and agreement on its confident
    answers; --report adds risk_coverage.png.

    Example (float vs int8): edgeres evaluate export/cats-dogs/model_float32.tflite export/cats-dogs/model_int8.tflite --data DIR

    Example (a QAT run vs its int8 export): edgeres evaluate runs/cats-dogs-qat export/cats-dogs-qat/model_int8.tflite --data DIR
    """
    with _friendly_errors():
        from edgeres.evaluate import evaluate as run_eval
        from edgeres.outputs import Kind, check_not_inside, check_output

        if report:  # before any work: a target that may not be written, or inside the photos
            check_output(report, Kind.REPORT, force=force, option="--report")
            if data or os.environ.get("EDGERES_DATA"):
                check_not_inside(report, data or os.environ["EDGERES_DATA"], "--report", "--data",
                                 "its confusion PNGs would be read as a class of photos")
        from edgeres.data import resolve_data_dir

        if client is Client.MEDIAPIPE:  # asked for: checked before any work, an error when missing
            from edgeres.clients import require_mediapipe_python

            mediapipe_python = require_mediapipe_python()

        data = resolve_data_dir(data, log=lambda m: typer.echo(m, err=True) if not json_out else None)
        if any((Path(m) / "model.keras").is_file() for m in models):  # only then is TensorFlow imported
            from edgeres.keras_classifier import KerasClassifier, is_run_dir

            models = [KerasClassifier(m) if is_run_dir(m) else m for m in models]
        ev = run_eval(models, data, split=split, threads=threads, limit=limit, progress=not json_out,
                      accelerator=accelerator)
        checks = []
        if client is Client.MEDIAPIPE:
            from edgeres.clients import check_mediapipe
            from edgeres.evaluate import labelled_images
            from edgeres.runtime import Classifier

            classes, items = labelled_images(data, split)
            if limit:
                items = items[:: max(1, len(items) // limit)][:limit]
            checks = [check_mediapipe(Classifier(m, threads=threads, accelerator="cpu"), items, classes,
                                      python=mediapipe_python)
                      for m in models if not hasattr(m, "predict_pixels")]  # .tflite models only
        if report:
            ev.write_report(report, force=force, extra={"clients.json": [c.to_dict() for c in checks]} if checks else None)
        if json_out:
            typer.echo(json.dumps({**ev.to_dict(), **({"clients": [c.to_dict() for c in checks]} if checks else {})}))
            return
        from rich.table import Table

        table = Table(title=f"{data} ({ev.split if ev.split != 'all' else 'every image'})", title_justify="left")
        names = dict(zip((m.path for m in ev.models), _short_names([m.path for m in ev.models])))
        for col in ("model", "n", "accuracy", "95% CI", *[f"{c} P/R" for c in ev.classes], "ms"):
            # The model column never truncates: float32 and int8 must stay tellable apart.
            table.add_column(col, justify="left" if col == "model" else "right",
                             no_wrap=col != "model", overflow="fold", min_width=len(max(names.values(), key=len)) if col == "model" else None)
        for m in ev.models:
            pr = [f"{m.per_class[c]['precision']:.2f}/{m.per_class[c]['recall']:.2f}" for c in ev.classes]
            table.add_row(names[m.path], str(m.n), f"{m.accuracy:.2%}", f"{m.ci95[0]:.1%}-{m.ci95[1]:.1%}", *pr,
                          f"{m.mean_latency_ms:.1f}")
        _print_table(table)
        for other, agree in ev.agreement.items():
            typer.echo(f"agreement with {names[ev.models[0].path]}: {names.get(other, other)} {agree:.2%} "
                       f"({len(ev.disagreements[other])} disagreements), mean |dp| {ev.mean_abs_prob_diff.get(other, float('nan')):.4f}, "
                       f"p99 |dp| {ev.p99_abs_prob_diff.get(other, float('nan')):.4f}")
        for name, u in ev.to_dict()["uncertain"].items():  # the models' uncertain bands (edgeres export)
            if u["threshold"] is not None:
                pct = lambda x: "n/a" if x is None else f"{x:.2%}"  # noqa: E731
                typer.echo(f"{names.get(name, name)}: not sure below top score {u['threshold']:.3g}: flags {u['flagged']:.1%}; "
                           f"accuracy on confident answers {pct(u['accuracy_confident'])} (all {u['accuracy']:.2%})"
                           + (f"; agreement on confident {pct(u['agreement_confident'])}, {u['disagreements_outside']} "
                              f"disagreement(s) outside the band" if "agreement_confident" in u else ""))
        for check in checks:
            typer.echo(f"{_short_names([check.model])[0]}: {check.summary()}")
        if ev.skipped:
            typer.secho(f"skipped {len(ev.skipped)} unreadable image(s)", fg="yellow", err=True)
        if report:
            typer.echo(f"Report: {report}")


@app.command()
def bench(
    models: Annotated[list[Path], typer.Argument(help="One or more .tflite files or bundles; ratios are against the first.")],
    threads: ThreadsOpt = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per model.")] = 100,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 10,
    accelerator: AcceleratorOpt = Accelerator.CPU,
    delegate: DelegateOpt = None,
    strict: StrictOpt = False,
    runtime_check: Annotated[bool, typer.Option("--check", help="Also run `edgeres check` on each bundle: does this runtime compute its int8 model as export recorded?")] = False,
    json_out: JsonOpt = False,
):
    """Latency (p50/p90/p99), throughput, load time and memory of each model, batch 1.

    With --accelerator gpu or --delegate, also the accelerator's self-check against the CPU.

    Example (the headline): edgeres bench export/cats-dogs/model_float32.tflite export/cats-dogs/model_int8.tflite --threads 2
    """
    with _friendly_errors():
        from edgeres.bench import bench as run_bench
        from edgeres.bench import ratios

        results = run_bench(models, threads=threads, runs=runs, warmup=warmup, accelerator=accelerator,
                            delegate=delegate, strict=strict)
        speedups = ratios(results)
        checks = {}
        if runtime_check:
            from edgeres.check import check as run_check

            checks = {str(m): run_check(m, threads=threads).to_dict() for m in models if m.is_dir()}
        if json_out:
            typer.echo(json.dumps({"models": [r.to_dict() for r in results], "speedup_vs_first": speedups,
                                   **({"runtime_checks": checks} if runtime_check else {})}))
            return
        from rich.table import Table

        table = Table(title=f"batch 1, {results[0].threads} threads, {runs} runs", title_justify="left")
        for col in ("model", "input", "backend", "load ms", "p50 ms", "p90 ms", "p99 ms", "img/s", "RSS MB", "vs first"):
            table.add_column(col, justify="left" if col in ("model", "input", "backend") else "right")
        for r in results:
            table.add_row(Path(r.path).name, r.input, r.backend, f"{r.load_ms:.0f}", f"{r.p50_ms:.2f}",
                          f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.throughput_ips:.1f}", f"{r.rss_mb:.0f}",
                          f"{speedups.get(r.path, 1.0):.2f}x")
        _print_table(table)
        for r in results:
            if r.self_check:
                typer.echo(f"{Path(r.path).name}: {r.self_check_summary}")
        for model, result in checks.items():
            typer.echo(f"{model}: {result['line']}")


@app.command()
def camera(
    model: Annotated[Path, typer.Argument(help="A .tflite file or an export bundle directory (uses its int8 model).")],
    source: Annotated[str, typer.Option("--source", "-s", help="Camera index (0), /dev/videoN, a video FILE, a stream URL (rtsp://, http://) or a DIR of images.")] = "0",
    no_display: Annotated[bool, typer.Option("--no-display", help="No window (devices without a screen): use --json and/or --record.")] = False,
    record: Annotated[Optional[Path], typer.Option(help="Write the annotated video: .mp4 (mp4v) or .avi (MJPG).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing --record file; only a recording edgeres camera made is ever replaced.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per processed frame on stdout (index, timestamp, label, score, latency).")] = False,
    compare: Annotated[Optional[Path], typer.Option(help="A second model run on the same frames (e.g. float32 beside int8), with the running disagreement rate.")] = None,
    realtime: Annotated[Optional[bool], typer.Option("--realtime/--every-frame", help="Keep only the newest frame (default for cameras and URLs) or process every frame (default for files and folders: reproducible).")] = None,
    smoothing: Annotated[Optional[float], typer.Option(min=0.0, max=0.99, callback=_finite, help="Average probabilities over frames, 0..0.99 (default 0.6 live, 0 for files), so the label does not flicker.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(min=1, help="Stop after N processed frames.")] = None,
    snapshot_dir: Annotated[Path, typer.Option(help="Where the s key saves snapshots.")] = Path("."),
    accelerator: AcceleratorOpt = Accelerator.AUTO,
    threads: ThreadsOpt = None,
):
    """Live cat/dog (or any) classification from a camera, video, stream or folder of images.

    The window shows label, confidence, FPS and latency. Keys: q or Esc quit, space pauses,
    s saves a snapshot. Capture runs on its own thread keeping only the newest frame, so a slow
    model drops frames instead of falling behind. Ends cleanly (recording finalised, summary
    printed) on q, Ctrl-C, the end of a file, or a camera that stays unplugged.

    Example: edgeres camera export/cats-dogs --source 0
    Example (headless): edgeres camera export/cats-dogs --source clip.mp4 --no-display --json --record out.mp4
    """
    with _friendly_errors():
        from edgeres.camera import EndReason, run_camera

        summary = run_camera(
            model, source=source, display=not no_display, record=record,
            json_out=sys.stdout if json_out else None, compare=compare, accelerator=accelerator,
            threads=threads, realtime=realtime, smoothing=smoothing, max_frames=max_frames,
            snapshot_dir=snapshot_dir, force=force,
        )
        typer.echo(summary.format(), err=True)
        if summary.ended is EndReason.INTERRUPTED:
            raise typer.Exit(130)
        # The exit code tells whether the asked-for work happened: a lost source or no frame is not success.
        failed = None
        if summary.ended is EndReason.SOURCE_LOST:
            failed = (f"source {summary.source} was lost and did not come back after {summary.reconnects} "
                      f"reconnect(s); {summary.frames} frame(s) were classified before that.")
        elif summary.frames == 0 and summary.ended is EndReason.END_OF_SOURCE:
            failed = (f"no frame could be classified from {summary.source} ({summary.corrupt} unreadable): "
                      f"it holds no frame, or none that decodes. Check that it plays (ffplay, VLC) or opens.")
        if failed:
            typer.secho(f"error: {failed}", fg="red", err=True)
            raise typer.Exit(EXIT_FAILED)


@app.command()
def check(
    bundle: Annotated[Path, typer.Argument(help="An export bundle directory (its int8 model and runtime records).")],
    kernels: Annotated[Kernels, typer.Option("--kernels", case_sensitive=False, help="CPU kernels: xnnpack (LiteRT's default) or builtin (LiteRT's built-in kernels, as a runtime without XNNPACK).")] = Kernels.XNNPACK,
    accelerator: Annotated[Accelerator, typer.Option("--accelerator", case_sensitive=False, help="cpu (default) | gpu | auto: run the probes there (after its self-check against the CPU).")] = Accelerator.CPU,
    delegate: DelegateOpt = None,
    tolerance: Annotated[Optional[int], typer.Option("--tolerance", min=0, help="Largest allowed difference in uint8 output steps (default: the bundle's tolerance_steps).")] = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
):
    """Does this machine compute the bundle's int8 model as export recorded? Runs the bundle's
    probe photos (those nearest the decision boundary) on this runtime and compares with the
    outputs recorded for each runtime (x86-64 XNNPACK, built-in kernels, ...): one line with the
    verdict, the largest difference, the top-1 flips, and which recorded runtime it matches.

    Exits 1 beyond the tolerance, or when a probe outside the bundle's uncertain band changes label.

    Example: edgeres check export/cats-dogs
    """
    with _friendly_errors():
        from edgeres.check import check as run_check

        result = run_check(bundle, kernels=kernels, accelerator=accelerator, delegate=delegate, threads=threads,
                           tolerance=tolerance)
        for note in result.notes:
            typer.echo(note, err=True)
        typer.echo(json.dumps(result.to_dict()) if json_out else result.line())
        if not result.passed:
            raise typer.Exit(EXIT_FAILED)


# -- doctor --------------------------------------------------------------------------------


@app.command()
def doctor(
    json_out: JsonOpt = False,
    need: Annotated[Optional[list[str]], typer.Option("--need", help="What your next command needs: train | gpu | camera | mediapipe (repeatable). Missing, it is a problem (exit 1); otherwise a note.")] = None,
    cameras: Annotated[int, typer.Option(min=0, max=16, help="Try camera indices 0..N-1 (each in its own process, a few seconds' timeout).")] = 4,
    model: Annotated[Optional[Path], typer.Option("--model", exists=True, help="Also load this .tflite or bundle on the accelerator (--accelerator, default gpu) and report its self-check against the CPU: the gap, and whether the accelerator is used.")] = None,
    accelerator: AcceleratorOpt = Accelerator.GPU,
    delegate: DelegateOpt = None,
):
    """What this machine can do: Python and packages, TensorFlow's devices (and whether training
    uses mixed precision and XLA), LiteRT's CPU and GPU accelerators, OpenCV's video and GUI
    backends, cameras, a MediaPipe interpreter, disk space.

    Exits 1 when something the next command needs is broken, with the fix on the same line.

    Example: edgeres doctor --need train --need gpu
    """
    from edgeres.doctor import NEEDS, diagnose, format_report

    wanted = [n.strip() for item in (need or []) for n in item.split(",") if n.strip()]
    bad = [n for n in wanted if n not in NEEDS]
    if bad:
        raise typer.BadParameter(f"{', '.join(bad)}: choose from {', '.join(NEEDS)}.", param_hint="--need")
    report = diagnose(need=wanted, cameras=range(cameras))
    if model is not None:
        with _friendly_errors():
            from edgeres.runtime import check_accelerator

            report["model_check"] = check_accelerator(model, accelerator=accelerator, delegate=delegate)
            if model.is_dir():  # this machine's CPU against the runtimes the bundle recorded
                from edgeres.check import CheckError
                from edgeres.check import check as run_check

                try:
                    report["runtime_check"] = run_check(model).to_dict()
                    report["ok"] = report["ok"] and report["runtime_check"]["passed"]
                except CheckError as e:
                    report["runtime_check"] = {"line": f"not checked: {e}", "passed": None}
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(format_report(report))
    if not report["ok"]:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="An export bundle directory (edgeres export RUN --int8 --out DIR), or one .tflite file.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on: 127.0.0.1 for this machine only; 0.0.0.0 for every network this machine is on (a phone on the same Wi-Fi, and anyone else who can reach it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0 picks a free one).")] = 8000,
    https: Annotated[bool, typer.Option("--https", help="Serve https with a self-signed certificate made now (phones allow the camera only on https).")] = False,
):
    """The bundle's model live in a browser: camera, photos, int8 and float32 side by side.

    The page runs the .tflite files in the browser (LiteRT.js, WebAssembly) on the pixels edgeres defines, and shows label, score, FPS and latency over the video, with the bundle's labels and verification numbers. Everything is served from this machine (works offline); only the page, its JS/WASM files and the files the bundle's edgeres.json names (its models, labels.txt, runtime probes) are served, never the rest of the folder. A folder without edgeres.json is refused; one .tflite file can be served by itself. Ctrl+C stops.

    The page's JS/WASM files (LiteRT.js, pinned) come from `npm ci` in a checkout, or edgeres fetches them once from the npm registry (checked against package-lock.json's hash, cached in ~/.cache/edgeres); no Node needed. A phone needs --host 0.0.0.0 --https (browsers allow the camera only on https or localhost): scan the QR code printed here and accept the self-signed certificate once.

    Example: edgeres serve export/cats-dogs
    Example (phone on the same Wi-Fi): edgeres serve export/cats-dogs --host 0.0.0.0 --https
    """
    with _friendly_errors():
        from edgeres.serve import ServeError, serve as serve_bundle

        try:
            serve_bundle(bundle, host=host, port=port, https=https, log=typer.echo)
        except ServeError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(EXIT_USAGE)

