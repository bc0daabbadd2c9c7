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
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

try:
    import cv2
except ImportError as e:  # a device install without the camera extra
    raise ImportError("edgeres camera needs OpenCV: pip install 'edgeres[camera]' (or opencv-python).") from e

from edgeres.preprocess import ImageError, decode, is_image_file, to_pixels
from edgeres.runtime import Accelerator, Classifier

WINDOW = "edgeres camera"
# Reconnecting to a lost live source: one attempt after each of these pauses, then give up.
RECONNECT_BACKOFF_S = (0.25, 0.5, 1.0)
FOLDER_FPS = 30.0  # a folder of images played back (realtime=True) as a 30 FPS camera
DEFAULT_LIVE_SMOOTHING = 0.6
JOIN_TIMEOUT_S = 3.0
RECORD_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}  # H.264 is not in the OpenCV wheels
# Overlay colours (BGR). The banner is one flat colour so a screenshot test can find it.
BANNER_BGR = (32, 24, 16)
TEXT_BGR = (255, 255, 255)
AGREE_BGR = (80, 220, 80)
DISAGREE_BGR = (40, 160, 255)

NO_GUI_HELP = (
    "This OpenCV build has no window support (cv2.imshow is not implemented; "
    "opencv-python-headless is installed?). Either run without a window: --no-display "
    "(with --json and/or --record OUT.mp4), or install the GUI build: "
    "pip uninstall -y opencv-python-headless && pip install opencv-python"
)


class CameraError(RuntimeError):
    """A source, window or recording that cannot be used; the message says what to try."""


class SourceKind(str, Enum):
    DEVICE = "device"  # a camera: index or /dev/videoN
    STREAM = "stream"  # a URL: rtsp://, http://, ...
    FILE = "file"  # a video file
    FOLDER = "folder"  # a directory of images (or one image), sorted by name, one frame each


class EndReason(str, Enum):
    END_OF_SOURCE = "end of source"
    MAX_FRAMES = "max frames reached"
    QUIT = "quit key"
    WINDOW_CLOSED = "window closed"
    INTERRUPTED = "interrupted (Ctrl-C)"
    OUTPUT_CLOSED = "JSON output closed (broken pipe)"
    SOURCE_LOST = "source lost (reconnect attempts failed)"


# -- sources -------------------------------------------------------------------------------


class Source:
    """Frames in OpenCV's BGR uint8 order. ``read()`` follows ``cv2.VideoCapture.read``:
    ``(False, None)`` means no more frames (the end, or a live source lost), ``(True, frame)``
    a frame, which the pipeline checks and counts as corrupt when it is not ``uint8 [h, w, 3]``.

    Subclass it to feed frames from elsewhere; ``run_camera`` calls ``open``, ``read`` (from its
    capture thread) and ``close``, and ``open`` again to reconnect a ``live`` source.
    """

    kind: SourceKind = SourceKind.FILE
    live: bool = False
    fps: float = 0.0  # nominal frames per second; 0 when unknown
    frame_count: int | None = None

    def __init__(self, name: str):
        self.name = name

    def open(self) -> None:
        """Open (or reopen) the source; raise CameraError with what to try when it cannot."""

    def read(self) -> tuple[bool, np.ndarray | None]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class VideoSource(Source):
    """A camera (index or ``/dev/videoN``), a stream URL or a video file, through cv2.VideoCapture."""

    def __init__(self, target: int | str, kind: SourceKind):
        super().__init__(_redact(str(target)))
        self.target, self.kind = target, kind
        self.live = kind in (SourceKind.DEVICE, SourceKind.STREAM)
        self._cap = None

    def open(self) -> None:
        self.close()
        if self.kind is SourceKind.DEVICE and sys.platform.startswith("linux"):
            node = Path(f"/dev/video{self.target}" if isinstance(self.target, int) else self.target)
            if not node.exists():  # fail fast, and without OpenCV's backend-probing warnings
                raise CameraError(_no_camera_message(self.target))
        if self.kind is SourceKind.STREAM:
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, timeouts)
        else:
            cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            if self.kind is SourceKind.DEVICE:
                raise CameraError(_no_camera_message(self.target))
            if self.kind is SourceKind.STREAM:
                raise CameraError(f"Could not open stream {self.name}: check the URL, that the stream is "
                                  f"up (try it in VLC or ffplay), and credentials.")
            raise CameraError(f"{self.name}: OpenCV cannot decode this video (FFmpeg reads mp4, avi, mkv, "
                              f"mov, webm). For a folder of images pass the folder.")
        if self.kind is SourceKind.DEVICE:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one from a driver queue
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if self.kind is SourceKind.FILE and count > 0 else None
        self._cap = cap

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self._cap is None:
            return False, None
        return self._cap.read()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource(Source):
    """Images of a folder, sorted by name, one frame each; decoded like ``predict`` decodes them."""

    kind = SourceKind.FOLDER

    def __init__(self, path: str | Path):
        path = Path(path)
        super().__init__(str(path))
        self.paths = sorted(p for p in path.iterdir() if is_image_file(p)) if path.is_dir() else [path]
        self.fps, self.frame_count = FOLDER_FPS, len(self.paths)
        self._next = 0
        self.errors: list[str] = []  # why each corrupt image was skipped

    def open(self) -> None:
        if not self.paths:
            raise CameraError(f"{self.name}: no images in this folder (looked for "
                              f"{', '.join(('.jpg', '.png', '.bmp', '.webp'))}, ...).")
        self._next = 0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self._next >= len(self.paths):
            return False, None
        path = self.paths[self._next]
        self._next += 1
        try:
            rgb = np.asarray(decode(path), dtype=np.uint8)
        except ImageError as e:
            self.errors.append(str(e))
            return True, None
        # Back to OpenCV's order; the pipeline's BGR -> RGB restores these exact bytes.
        return True, np.ascontiguousarray(rgb[:, :, ::-1])


def open_source(source: str | int | Path | Source) -> Source:
    """Parse ``source`` (camera index, ``/dev/videoN``, URL, video file, image folder), open it."""
    src = source if isinstance(source, Source) else parse_source(source)
    src.open()
    return src


def parse_source(spec: str | int | Path) -> Source:
    """The Source for a camera index, ``/dev/videoN``, URL, video file, image or image folder (not opened)."""
    text = str(spec).strip()
    if isinstance(spec, int) or text.isdigit():
        return VideoSource(int(text), SourceKind.DEVICE)
    if text.startswith("/dev/video"):
        return VideoSource(text, SourceKind.DEVICE)
    if "://" in text:
        return VideoSource(text, SourceKind.STREAM)
    path = Path(text).expanduser()
    if path.is_dir() or (path.is_file() and is_image_file(path)):
        return FolderSource(path)
    if path.is_file():
        return VideoSource(str(path), SourceKind.FILE)
    raise CameraError(f"Source {text!r}: no such file or directory. Pass a camera index (0), /dev/videoN, "
                      f"a video file, a folder of images, or a stream URL (rtsp://...).")


def _no_camera_message(target: int | str) -> str:
    found = sorted(str(p) for p in Path("/dev").glob("video*")) if Path("/dev").is_dir() else []
    what = f"index {target}" if isinstance(target, int) else str(target)
    return (f"No camera at {what} (cameras found: {', '.join(found) or 'none'}). Try: another index "
            f"(--source 1), a video file or folder of images (--source FILE), or list cameras with "
            f"`ls /dev/video*` (Linux; check the user is in the 'video' group).")


def _redact(text: str) -> str:
    """``rtsp://user:secret@host`` -> ``rtsp://user:***@host``: sources end up in logs."""
    if "://" in text and "@" in text.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = text.split("://", 1)
        cred, host = rest.split("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else text
    return text


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraSummary:
    """What a camera run did; ``format()`` is the text the CLI prints to stderr."""

    source: str
    model: str
    backend: str
    frames: int  # processed: classified and reported
    dropped: int  # captured but replaced by a newer frame before the model got to it
    corrupt: int  # skipped: unreadable image, or not uint8 [h, w, 3]
    reconnects: int
    seconds: float
    fps: float  # processed frames per second of wall time
    latency_ms: float  # mean model time per frame (set input, invoke, read output)
    capture_to_result_p50_ms: float
    capture_to_result_p90_ms: float
    label_counts: dict[str, int]
    ended: EndReason
    compare_model: str | None = None
    disagreements: int | None = None
    record: str | None = None
    snapshots: tuple[str, ...] = ()

    @property
    def disagreement_rate(self) -> float | None:
        if self.disagreements is None:
            return None
        return self.disagreements / self.frames if self.frames else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ended"] = self.ended.value
        d["disagreement_rate"] = self.disagreement_rate
        d["snapshots"] = list(self.snapshots)
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}

    def format(self) -> str:
        lines = [
            f"edgeres camera: {self.frames} frames from {self.source} in {self.seconds:.1f} s "
            f"({self.fps:.1f} FPS); ended: {self.ended.value}",
            f"  model {self.model} on {self.backend}: {self.latency_ms:.1f} ms mean; capture to result "
            f"p50 {self.capture_to_result_p50_ms:.1f} ms, p90 {self.capture_to_result_p90_ms:.1f} ms",
            f"  dropped {self.dropped}, corrupt {self.corrupt}, reconnects {self.reconnects}",
            "  labels: " + (", ".join(f"{k} {v}" for k, v in self.label_counts.items()) or "none"),
        ]
        if self.compare_model is not None:
            lines.append(f"  disagreement with {self.compare_model}: {100 * self.disagreement_rate:.1f}% "
                         f"({self.disagreements} of {self.frames} frames)")
        if self.record:
            lines.append(f"  recording: {self.record}")
        lines += [f"  snapshot: {s}" for s in self.snapshots]
        return "\n".join(lines)


@dataclass
class _Frame:
    index: int  # position in the source, counting dropped and corrupt frames
    timestamp: float  # wall clock (Unix time) at capture
    captured: float  # perf_counter at capture
    image: np.ndarray  # BGR, owned by the pipeline
    pixels: dict = field(default_factory=dict)  # model input size -> RGB uint8 model input


@dataclass
class _Result:
    frame: _Frame
    label: str  # after smoothing: what the window shows
    score: float
    raw_label: str
    raw_score: float
    latency_ms: float
    capture_to_result_ms: float
    other: tuple[str, float, str, float, float] | None  # compare: label, score, raw label, raw score, ms


@dataclass
class _End:
    reason: EndReason


@dataclass
class _Failure:
    error: BaseException


# -- hand-off between threads ----------------------------------------------------------------


class _Mailbox:
    """Frames from capture to inference. ``latest_only``: one slot, a newer frame replaces an
    unread one (counted in ``dropped``). Otherwise a short queue whose ``put`` waits for room,
    so every frame is processed in order. ``put``/``get`` give up when ``stop`` is set."""

    def __init__(self, stop: threading.Event, *, latest_only: bool, capacity: int = 2):
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._stop, self._latest_only, self._capacity = stop, latest_only, capacity
        self.dropped = 0

    def put(self, item, *, droppable: bool = True) -> bool:
        with self._cond:
            if self._latest_only and droppable:
                while self._items and isinstance(self._items[-1], _Frame):
                    self._items.pop()
                    self.dropped += 1
            else:
                while len(self._items) >= self._capacity and not self._stop.is_set():
                    self._cond.wait(0.1)
            if self._stop.is_set():
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float):
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class _Capture(threading.Thread):
    """Reads frames, skips and counts corrupt ones, prepares model input, reconnects live sources."""

    def __init__(self, source: Source, mailbox: _Mailbox, sizes: set, *, pace: bool,
                 stop: threading.Event, paused: threading.Event, log):
        super().__init__(name="edgeres-capture", daemon=True)
        self.source, self.mailbox, self.sizes, self.pace = source, mailbox, sizes, pace
        self.stop, self.paused, self.log = stop, paused, log
        self.read_count = self.corrupt = self.reconnects = 0
        self.bad_reasons: collections.Counter = collections.Counter()

    def run(self) -> None:
        reason = EndReason.END_OF_SOURCE
        try:
            reason = self._loop()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            self.mailbox.put(_Failure(e), droppable=False)
        else:
            self.mailbox.put(_End(reason), droppable=False)
        finally:
            self.source.close()

    def _loop(self) -> EndReason:
        start = time.perf_counter()
        while not self.stop.is_set():
            ok, image = self.source.read()
            if not ok:
                if not self.source.live:
                    self._check_complete()
                    return EndReason.END_OF_SOURCE
                if not self._reconnect():
                    return EndReason.SOURCE_LOST
                continue
            index = self.read_count
            self.read_count += 1
            now = time.perf_counter()
            if self.pace and self.source.fps > 0:  # a file played back as if live
                due = start + index / self.source.fps
                if due > now and self.stop.wait(due - now):
                    break
                now = time.perf_counter()
            problem = _frame_problem(image)
            if problem:
                self.corrupt += 1
                self.bad_reasons[problem] += 1
                if self.bad_reasons[problem] == 1:
                    self.log(f"edgeres: skipping corrupt frame {index} of {self.source.name} ({problem}); "
                             f"further ones are counted in the summary.")
                continue
            if self.paused.is_set() and self.source.live:
                continue  # keep the camera's buffer fresh; nothing to classify while paused
            frame = _Frame(index, time.time(), now, image)
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            frame.pixels = {(size, resize): to_pixels(rgb, size, resize) for size, resize in self.sizes}
            if not self.mailbox.put(frame):
                break
        return EndReason.END_OF_SOURCE

    def _reconnect(self) -> bool:
        for attempt, pause in enumerate(RECONNECT_BACKOFF_S, start=1):
            self.log(f"edgeres: lost {self.source.name}; reconnecting in {pause:g} s "
                     f"(attempt {attempt} of {len(RECONNECT_BACKOFF_S)})")
            self.source.close()
            if self.stop.wait(pause):
                return False
            try:
                self.source.open()
            except CameraError as e:
                self.log(f"edgeres: reconnect failed: {e}")
                continue
            self.reconnects += 1
            return True
        return False

    def _check_complete(self) -> None:
        expected = self.source.frame_count
        if expected and self.read_count < expected - 1:  # container counts can be off by one
            self.log(f"edgeres: {self.source.name} ended after {self.read_count} of {expected} frames "
                     f"(truncated or damaged file?)")


def _frame_problem(image) -> str | None:
    if image is None:
        return "no image"
    if not isinstance(image, np.ndarray):
        return f"not an array: {type(image).__name__}"
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return f"expected uint8 [h, w, 3] BGR, got {image.dtype} {tuple(image.shape)}"
    if image.size == 0:
        return "empty frame"
    return None


class _Inference(threading.Thread):
    """Classifies prepared frames (and compares, and smooths) in order; results to the main thread."""

    def __init__(self, clf: Classifier, other: Classifier | None, inbox: _Mailbox, outbox: _Mailbox,
                 smoothing: float, *, stop: threading.Event, paused: threading.Event):
        super().__init__(name="edgeres-inference", daemon=True)
        self.clf, self.other, self.inbox, self.outbox = clf, other, inbox, outbox
        self.smoothing, self.stop, self.paused = smoothing, stop, paused
        self._ema: dict[int, np.ndarray] = {}

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.paused.is_set():
                    self.stop.wait(0.02)
                    continue
                item = self.inbox.get(0.1)
                if item is None:
                    continue
                if not isinstance(item, _Frame):  # _End or _Failure from capture: pass it on
                    self.outbox.put(item, droppable=False)
                    return
                self.outbox.put(self._classify(item), droppable=False)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            self.outbox.put(_Failure(e), droppable=False)

    def _classify(self, frame: _Frame) -> _Result:
        pred = self.clf.predict_pixels(frame.pixels[self.clf.input_size, self.clf.resize])
        label, score = self._smooth(0, pred, self.clf.labels)
        other = None
        if self.other is not None:
            o = self.other.predict_pixels(frame.pixels[self.other.input_size, self.other.resize])
            other = (*self._smooth(1, o, self.other.labels), o.label, o.score, o.latency_ms)
        done = (time.perf_counter() - frame.captured) * 1e3
        return _Result(frame, label, score, pred.label, pred.score, pred.latency_ms, done, other)

    def _smooth(self, key: int, pred, labels) -> tuple[str, float]:
        """Exponential moving average of the probabilities, so the label does not flicker."""
        if self.smoothing <= 0:
            return pred.label, pred.score
        prev = self._ema.get(key)
        ema = pred.probabilities if prev is None else self.smoothing * prev + (1 - self.smoothing) * pred.probabilities
        self._ema[key] = ema
        i = int(np.argmax(ema))
        return labels[i], float(ema[i])


# -- the run ---------------------------------------------------------------------------------


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
    record_path = _record_path(record) if record is not None else None
    if display:
        _check_display()
    def load(m):
        return m if isinstance(m, Classifier) else Classifier(m, threads=threads, accelerator=accelerator, log=log)

    clf = load(model)
    other = load(compare) if compare is not None else None
    src = open_source(source)
    realtime = src.live if realtime is None else realtime
    if smoothing is None:
        smoothing = DEFAULT_LIVE_SMOOTHING if src.live else 0.0

    stop, paused = threading.Event(), threading.Event()
    frames_box = _Mailbox(stop, latest_only=realtime, capacity=2)
    results_box = _Mailbox(stop, latest_only=False, capacity=4)
    sizes = {(clf.input_size, clf.resize)} | ({(other.input_size, other.resize)} if other else set())
    capture = _Capture(src, frames_box, sizes, pace=realtime and not src.live, stop=stop, paused=paused, log=log)
    inference = _Inference(clf, other, frames_box, results_box, smoothing, stop=stop, paused=paused)
    out = _Output(clf, other, display=display, record_path=record_path, json_out=json_out,
                  smoothing=smoothing, realtime=realtime, snapshot_dir=Path(snapshot_dir), fps_hint=src.fps,
                  log=log)

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


def _main_loop(out: "_Output", results: _Mailbox, inference: threading.Thread, paused: threading.Event,
               max_frames: int | None, display: bool) -> EndReason:
    while True:
        # Paused: leave the results queued, so the window stays on the frame it showed.
        item = None if paused.is_set() else results.get(0.005 if display else 0.1)
        if item is None and not paused.is_set() and not inference.is_alive():
            item = results.get(0.0)
            if item is None:  # cannot happen by design; but never wait on a dead thread
                raise RuntimeError("edgeres camera: the inference thread ended without a result.")
        if isinstance(item, _End):
            return item.reason
        if isinstance(item, _Failure):
            raise item.error
        if isinstance(item, _Result):
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


class _Output:
    """The main thread's side: overlay, window and keys, JSON lines, recording, statistics."""

    def __init__(self, clf: Classifier, other: Classifier | None, *, display: bool, record_path: Path | None,
                 json_out: TextIO | None, smoothing: float, realtime: bool, snapshot_dir: Path,
                 fps_hint: float, log):
        self.clf, self.other, self.display, self.smoothing, self.realtime = clf, other, display, smoothing, realtime
        self.record_path, self.json_out, self.snapshot_dir, self.log = record_path, json_out, snapshot_dir, log
        self.fps_hint = fps_hint if 1 <= fps_hint <= 240 else 30.0
        self.frames = self.disagreements = 0
        self.labels: collections.Counter = collections.Counter()
        self.latencies: list[float] = []
        self.capture_to_result: list[float] = []
        self.snapshots: list[str] = []
        self._times: collections.deque = collections.deque(maxlen=30)
        self._writer = None
        self._writer_size: tuple[int, int] | None = None
        self._partial: Path | None = None
        self._last: np.ndarray | None = None  # last annotated frame: redrawn while paused, snapshotted
        self._last_index = 0
        self._written_index = -1
        self._visibility_works = False  # some HighGUI backends cannot report it (-1)
        self._window_open = False

    # statistics and JSON ----------------------------------------------------------------

    def emit(self, r: _Result) -> None:
        self.frames += 1
        self._times.append(time.perf_counter())
        self.labels[r.label] += 1
        self.latencies.append(r.latency_ms)
        self.capture_to_result.append(r.capture_to_result_ms)
        agree = None
        if r.other is not None:
            agree = r.other[2] == r.raw_label
            self.disagreements += not agree
        if self.json_out is not None:
            self.json_out.write(json.dumps(self._record(r, agree)) + "\n")
            self.json_out.flush()
        if self.display or self.record_path is not None:
            annotated = self._annotate(r, agree)
            if self.record_path is not None:
                # Realtime: repeat the annotated frame over the frames the model skipped, so
                # the recording plays at the speed it happened. Otherwise one frame per result.
                gap = r.frame.index - self._written_index if self.realtime and self._written_index >= 0 else 1
                for _ in range(max(1, min(gap, int(2 * self.fps_hint)))):
                    self._write(annotated)
                self._written_index = r.frame.index
            if self.display:
                cv2.imshow(WINDOW, annotated)
                self._last, self._last_index = annotated, r.frame.index

    def _record(self, r: _Result, agree: bool | None) -> dict:
        d = {"frame": r.frame.index, "timestamp": round(r.frame.timestamp, 3), "label": r.label,
             "score": round(r.score, 6), "latency_ms": round(r.latency_ms, 3),
             "capture_to_result_ms": round(r.capture_to_result_ms, 3)}
        if self.smoothing > 0:
            d.update(raw_label=r.raw_label, raw_score=round(r.raw_score, 6))
        if r.other is not None:
            d.update(compare_label=r.other[0], compare_score=round(r.other[1], 6),
                     compare_latency_ms=round(r.other[4], 3), agree=agree)
        return d

    @property
    def fps(self) -> float:
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)

    # overlay ----------------------------------------------------------------------------

    def _annotate(self, r: _Result, agree: bool | None) -> np.ndarray:
        """The frame with a text panel *above* it: the picture itself stays whole (a panel drawn
        over the top of the frame hid the dog's head in the test clip)."""
        h, w = r.frame.image.shape[:2]
        scale = max(0.4, min(w, 2 * h) / 1000)
        line = int(32 * scale / 0.6)
        first = AGREE_BGR if agree is not False else DISAGREE_BGR
        texts = [(f"{r.label} {100 * r.score:.1f}%  ({_name(self.clf)})", first)]
        if r.other is not None:
            rate = 100 * self.disagreements / self.frames
            texts.append((f"{r.other[0]} {100 * r.other[1]:.1f}%  ({_name(self.other)})  "
                          f"disagree {rate:.1f}%", AGREE_BGR if agree else DISAGREE_BGR))
        texts.append((f"{self.fps:.1f} FPS  {r.latency_ms:.1f} ms model  "
                      f"{r.capture_to_result_ms:.0f} ms capture-to-result", TEXT_BGR))
        panel = line * len(texts) + line // 3
        panel += panel % 2  # even frame heights for the video codecs
        img = np.empty((panel + h, w, 3), dtype=np.uint8)
        img[:panel] = BANNER_BGR
        img[panel:] = r.frame.image  # a copy: the source's array is not ours to draw on
        for i, (text, colour) in enumerate(texts):
            cv2.putText(img, text, (int(10 * scale / 0.6), line * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, colour, 1 if scale < 0.8 else 2, cv2.LINE_AA)
        return img

    # window -----------------------------------------------------------------------------

    def open_window(self) -> None:
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
            self._window_open = True
        except cv2.error as e:
            if "not implemented" in str(e).lower():
                raise CameraError(NO_GUI_HELP) from e
            raise CameraError(f"Could not open a window ({str(e).strip()}). Use --no-display.") from e

    def poll_window(self, paused: threading.Event) -> EndReason | None:
        key = cv2.waitKey(30 if paused.is_set() else 1) & 0xFF
        if key in (ord("q"), ord("Q"), 27):
            return EndReason.QUIT
        if key == ord(" "):
            if paused.is_set():
                paused.clear()
            else:
                paused.set()
                if self._last is not None:
                    shown = self._last.copy()
                    cv2.putText(shown, "PAUSED (space to resume)", (10, shown.shape[0] - 16),
                                cv2.FONT_HERSHEY_SIMPLEX, 0.7, TEXT_BGR, 2, cv2.LINE_AA)
                    cv2.imshow(WINDOW, shown)
        elif key in (ord("s"), ord("S")):
            self.snapshot()
        visible = cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE)
        if visible >= 1:
            self._visibility_works = True
        elif self._visibility_works:  # it was visible, and the user closed it
            return EndReason.WINDOW_CLOSED
        return None

    def snapshot(self) -> None:
        if self._last is None:
            return
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = self.snapshot_dir / f"edgeres-{stamp}-frame{self._last_index:06d}.png"
        if cv2.imwrite(str(path), self._last):
            self.snapshots.append(str(path))
            self.log(f"edgeres: saved {path}")
        else:
            self.log(f"edgeres: could not write snapshot {path}")

    # recording --------------------------------------------------------------------------

    def _write(self, img: np.ndarray) -> None:
        if self._writer is None:
            self._open_writer(img.shape[1], img.shape[0])
        if (img.shape[1], img.shape[0]) != self._writer_size:  # a folder of mixed-size images
            img = cv2.resize(img, self._writer_size, interpolation=cv2.INTER_AREA)
        self._writer.write(img)

    def _open_writer(self, width: int, height: int) -> None:
        # Written under a temporary name and renamed when released, so OUT is always whole.
        path = self.record_path
        self._partial = path.with_name(f"{path.stem}.partial{path.suffix}")
        fourcc = cv2.VideoWriter_fourcc(*RECORD_CODECS[path.suffix.lower()])
        writer = cv2.VideoWriter(str(self._partial), fourcc, self.fps_hint, (width, height))
        if not writer.isOpened():
            raise CameraError(f"Could not open {path} for writing with codec "
                              f"{RECORD_CODECS[path.suffix.lower()]} (is the folder writable?).")
        if path.suffix.lower() == ".avi":
            writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
        self._writer, self._writer_size = writer, (width, height)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            os.replace(self._partial, self.record_path)
            self._writer = None
        if self._window_open:
            try:
                cv2.destroyWindow(WINDOW)
                cv2.waitKey(1)
            except cv2.error:
                pass

    def summary(self, src: Source, *, seconds: float, ended: EndReason, dropped: int, corrupt: int,
                reconnects: int) -> CameraSummary:
        c2r = np.asarray(self.capture_to_result or [0.0])
        return CameraSummary(
            source=src.name, model=str(self.clf.path), backend=self.clf.backend,
            frames=self.frames, dropped=dropped, corrupt=corrupt, reconnects=reconnects,
            seconds=seconds, fps=self.frames / seconds if seconds > 0 else 0.0,
            latency_ms=float(np.mean(self.latencies)) if self.latencies else 0.0,
            capture_to_result_p50_ms=float(np.percentile(c2r, 50)),
            capture_to_result_p90_ms=float(np.percentile(c2r, 90)),
            label_counts=dict(self.labels.most_common()), ended=ended,
            compare_model=str(self.other.path) if self.other is not None else None,
            disagreements=self.disagreements if self.other is not None else None,
            record=str(self.record_path) if self.record_path is not None and self.frames else None,
            snapshots=tuple(self.snapshots))


def _name(clf: Classifier) -> str:
    return clf.path.stem


def _record_path(record: str | Path) -> Path:
    path = Path(record).expanduser()
    if path.suffix.lower() not in RECORD_CODECS:
        raise CameraError(f"Cannot record to {path}: use a .mp4 (mp4v) or .avi (MJPG) file name. "
                          f"Received suffix: {path.suffix or 'none'!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _check_display() -> None:
    # Without a display the Qt build of OpenCV aborts the whole process rather than raising.
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise CameraError("No display to open a window on (DISPLAY is not set). Run with --no-display "
                          "(with --json and/or --record OUT.mp4), or from a desktop session / ssh -X.")
