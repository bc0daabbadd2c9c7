"""Live classification: a camera, stream, video file or folder of images through a Classifier.

    summary = run_camera("export/cats-dogs", source="0")                  # window, q to quit
    summary = run_camera(model, source="clip.mp4", display=False,         # one JSON line per
                         json_out=sys.stdout, record="annotated.mp4")     # frame, and a video

Three threads, so a slow model drops frames instead of falling behind:

    capture  (reads, checks and prepares frames)  ──mailbox──>  inference  ──results──>  main
                                                                                 (window, keys,
                                                                                  JSON, recording)

For a live source (camera, URL) the mailbox keeps only the newest frame. A video file or folder
is read frame by frame with nothing dropped (unless ``realtime=True``), so its results repeat
exactly and equal ``Classifier.predict`` on the same frame: every frame goes BGR -> RGB ->
``to_pixels``, the one preprocessing path. The window lives on the main thread because
OpenCV's HighGUI must.

    sources.py   Source, VideoSource, FolderSource, parse_source
    pipeline.py  the capture and inference threads, the mailbox between them
    output.py    overlay, window and keys, JSON lines, recording, CameraSummary
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

try:
    import cv2  # noqa: F401 -- checked here, used by every part
except ImportError as e:  # a device install without the camera extra
    raise ImportError("edgeres camera needs OpenCV: pip install 'edgeres[camera]' (or opencv-python).") from e

from edgeres.camera.output import (BANNER_BGR, NO_GUI_HELP, RECORD_CODECS, WINDOW, CameraSummary, Output,
                                   check_display, check_record_path)
from edgeres.camera.pipeline import Capture, End, EndReason, Failure, Inference, Mailbox, Result
from edgeres.camera.sources import (FOLDER_FPS, CameraError, FolderSource, Source, SourceKind, VideoSource,
                                    open_source, parse_source)
from edgeres.outputs import check_writable
from edgeres.runtime import Accelerator, Classifier

__all__ = ["BANNER_BGR", "FOLDER_FPS", "NO_GUI_HELP", "RECORD_CODECS", "WINDOW", "CameraError", "CameraSummary",
           "EndReason", "FolderSource", "Source", "SourceKind", "VideoSource", "open_source", "parse_source",
           "run_camera"]

# Reconnecting to a lost live source: one attempt after each of these pauses, then give up.
RECONNECT_BACKOFF_S = (0.25, 0.5, 1.0)
DEFAULT_LIVE_SMOOTHING = 0.6
JOIN_TIMEOUT_S = 3.0


def run_camera(
    model: str | Path | Classifier,
    *,
    source: str | int | Path | Source = "0",
    display: bool = True,
    record: str | Path | None = None,
    json_out: TextIO | None = None,
    compare: str | Path | Classifier | None = None,
    accelerator: Accelerator | str = Accelerator.AUTO,
    threads: int | None = None,
    realtime: bool | None = None,
    smoothing: float | None = None,
    max_frames: int | None = None,
    snapshot_dir: str | Path = ".",
    log: Callable[[str], None] | None = None,
    force: bool = False,
) -> CameraSummary:
    """Classify frames from a camera, stream, video file or image folder until it ends or you quit.

    ``display``: a window with label, confidence, FPS and latency; keys q/Esc quit, space pauses,
    s saves a snapshot PNG into ``snapshot_dir``. ``json_out``: one JSON line per processed frame.
    ``record``: the annotated video (.mp4 as mp4v, .avi as MJPG). ``compare``: a second model on
    the same frames (float against int8, say), with the rate at which their labels disagree.
    ``realtime`` (default: true for cameras and URLs, false for files and folders) keeps only
    the newest frame, dropping what a slow model cannot keep up with; a file is then played at
    its own frame rate. ``smoothing`` in [0, 1) averages probabilities over frames (default
    0.6 live, 0 otherwise). A lost live source is reopened a few times; Ctrl-C, the end of the
    source and ``max_frames`` all end cleanly with the recording finalised.

    Raises CameraError when the source, window or recording cannot be opened.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1. Received: max_frames={max_frames}")
    if smoothing is not None and not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1). Received: smoothing={smoothing}")
    record_path = check_record_path(record, force=force) if record is not None else None
    if display:
        check_display()
        if Path(snapshot_dir).exists() and not Path(snapshot_dir).is_dir():  # the s key writes there
            raise CameraError(f"--snapshot-dir {snapshot_dir} is a file, not a folder. Choose another --snapshot-dir.")
        check_writable(Path(snapshot_dir) / "snapshot.png", "--snapshot-dir")
    def load(m):
        return m if isinstance(m, Classifier) else Classifier(m, threads=threads, accelerator=accelerator, log=log)

    clf = load(model)
    other = load(compare) if compare is not None else None
    src = open_source(source)
    realtime = src.live if realtime is None else realtime
    if smoothing is None:
        smoothing = DEFAULT_LIVE_SMOOTHING if src.live else 0.0

    stop, paused = threading.Event(), threading.Event()
    frames_box = Mailbox(stop, latest_only=realtime, capacity=2)
    results_box = Mailbox(stop, latest_only=False, capacity=4)
    sizes = {(clf.input_size, clf.resize)} | ({(other.input_size, other.resize)} if other else set())
    capture = Capture(src, frames_box, sizes, pace=realtime and not src.live, backoff=tuple(RECONNECT_BACKOFF_S),
                      stop=stop, paused=paused, log=log)
    inference = Inference(clf, other, frames_box, results_box, smoothing, stop=stop, paused=paused)
    out = Output(clf, other, display=display, record_path=record_path, json_out=json_out,
                  smoothing=smoothing, realtime=realtime, snapshot_dir=Path(snapshot_dir), fps_hint=src.fps,
                  log=log, replace_record=force)

    t0 = time.perf_counter()
    reason = EndReason.END_OF_SOURCE
    try:
        if display:
            out.open_window()
        capture.start()
        inference.start()
        reason = _main_loop(out, results_box, inference, paused, max_frames, display)
    except KeyboardInterrupt:
        reason = EndReason.INTERRUPTED
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        frames_box.wake()
        results_box.wake()
        for thread in (inference, capture):
            if thread.is_alive():  # never started when opening the window failed
                thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log(f"edgeres: {thread.name} thread did not stop within {JOIN_TIMEOUT_S:g} s "
                    f"(blocked in a read?); leaving it behind.")
        if not capture.is_alive() and not capture.ident:  # never started: close here
            src.close()
        out.close()

    if isinstance(src, FolderSource) and src.errors:
        for err in src.errors[:3]:
            log(f"edgeres: skipped {err}")
    return out.summary(src, seconds=seconds, ended=reason, dropped=frames_box.dropped,
                       corrupt=capture.corrupt, reconnects=capture.reconnects)


def _main_loop(out: Output, results: Mailbox, inference: threading.Thread, paused: threading.Event,
               max_frames: int | None, display: bool) -> EndReason:
    while True:
        # Paused: leave the results queued, so the window stays on the frame it showed.
        item = None if paused.is_set() else results.get(0.005 if display else 0.1)
        if item is None and not paused.is_set() and not inference.is_alive():
            item = results.get(0.0)
            if item is None:  # cannot happen by design; but never wait on a dead thread
                raise RuntimeError("edgeres camera: the inference thread ended without a result.")
        if isinstance(item, End):
            return item.reason
        if isinstance(item, Failure):
            raise item.error
        if isinstance(item, Result):
            try:
                out.emit(item)
            except BrokenPipeError:  # `edgeres camera --json ... | head -5`
                return EndReason.OUTPUT_CLOSED
            if max_frames is not None and out.frames >= max_frames:
                return EndReason.MAX_FRAMES
        if display:
            action = out.poll_window(paused)
            if action is not None:
                return action
