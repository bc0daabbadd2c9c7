"""The main thread's side of a camera run: overlay, window and keys, JSON lines, recording,
and the summary at the end. OpenCV's HighGUI must live on the main thread."""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from edgeres.camera.pipeline import EndReason, Result
from edgeres.camera.sources import CameraError, Source
from edgeres.files import temp_name
from edgeres.outputs import Kind, check_output, mark_recording, publish_file
from edgeres.runtime import Classifier

WINDOW = "edgeres camera"
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


class Output:
    """The main thread's side: overlay, window and keys, JSON lines, recording, statistics."""

    def __init__(self, clf: Classifier, other: Classifier | None, *, display: bool, record_path: Path | None,
                 json_out: TextIO | None, smoothing: float, realtime: bool, snapshot_dir: Path,
                 fps_hint: float, log, replace_record: bool = False):
        self.clf, self.other, self.display, self.smoothing, self.realtime = clf, other, display, smoothing, realtime
        self.record_path, self.json_out, self.snapshot_dir, self.log = record_path, json_out, snapshot_dir, log
        self.replace_record = replace_record  # --force: the recording there is edgeres's own (checked)
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

    def emit(self, r: Result) -> None:
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

    def _record(self, r: Result, agree: bool | None) -> dict:
        d = {"frame": r.frame.index, "timestamp": round(r.frame.timestamp, 3), "label": r.label,
             "score": round(r.score, 6), "uncertain": self._uncertain(r), "latency_ms": round(r.latency_ms, 3),
             "capture_to_result_ms": round(r.capture_to_result_ms, 3)}
        if self.smoothing > 0:
            d.update(raw_label=r.raw_label, raw_score=round(r.raw_score, 6))
        if r.other is not None:
            d.update(compare_label=r.other[0], compare_score=round(r.other[1], 6),
                     compare_latency_ms=round(r.other[4], 3), agree=agree)
        return d

    def _uncertain(self, r: Result) -> bool:
        """The shown (smoothed) top score is below the model's uncertain band (edgeres export)."""
        return self.clf.uncertain_below is not None and r.score < self.clf.uncertain_below

    @property
    def fps(self) -> float:
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)

    # overlay ----------------------------------------------------------------------------

    def _annotate(self, r: Result, agree: bool | None) -> np.ndarray:
        """The frame with a text panel *above* it: the picture itself stays whole (a panel drawn
        over the top of the frame hid the dog's head in the test clip)."""
        h, w = r.frame.image.shape[:2]
        scale = max(0.4, min(w, 2 * h) / 1000)
        line = int(32 * scale / 0.6)
        texts = self.overlay_lines(r, agree)
        panel = line * len(texts) + line // 3
        panel += panel % 2  # even frame heights for the video codecs
        img = np.empty((panel + h, w, 3), dtype=np.uint8)
        img[:panel] = BANNER_BGR
        img[panel:] = r.frame.image  # a copy: the source's array is not ours to draw on
        for i, (text, colour) in enumerate(texts):
            cv2.putText(img, text, (int(10 * scale / 0.6), line * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, colour, 1 if scale < 0.8 else 2, cv2.LINE_AA)
        return img

    def overlay_lines(self, r: Result, agree: bool | None) -> list[tuple[str, tuple[int, int, int]]]:
        """The panel's lines and their colours: the answer ("not sure" when its top score is below
        the model's uncertain band), the compared model's, and the timings."""
        first = AGREE_BGR if agree is not False else DISAGREE_BGR
        unsure = "  not sure" if self._uncertain(r) else ""
        texts = [(f"{r.label} {100 * r.score:.1f}%{unsure}  ({_name(self.clf)})", first)]
        if r.other is not None:
            rate = 100 * self.disagreements / max(1, self.frames)
            texts.append((f"{r.other[0]} {100 * r.other[1]:.1f}%  ({_name(self.other)})  "
                          f"disagree {rate:.1f}%", AGREE_BGR if agree else DISAGREE_BGR))
        texts.append((f"{self.fps:.1f} FPS  {r.latency_ms:.1f} ms model  "
                      f"{r.capture_to_result_ms:.0f} ms capture-to-result", TEXT_BGR))
        return texts

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
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = self.snapshot_dir / f"edgeres-{stamp}-frame{self._last_index:06d}.png"
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # the run goes on: a snapshot is not worth ending it
            self.log(f"edgeres: could not write snapshot {path}: {e.strerror}")
            return
        if path.exists():
            self.log(f"edgeres: {path} exists; snapshot not saved")
        elif cv2.imwrite(str(path), self._last):
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
        self._partial = temp_name(path)
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
            self._writer = None
            try:  # marked as edgeres's own, so that a later --force may replace it
                mark_recording(self._partial)
                publish_file(self._partial, self.record_path, replace=self.replace_record)
            finally:
                self._partial.unlink(missing_ok=True)
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


def check_record_path(record: str | Path, *, force: bool = False) -> Path:
    """``record`` as a recording target: a known container, and nothing there that is not an
    edgeres recording (replaced only with ``force``: :func:`edgeres.outputs.check_output`)."""
    path = Path(record).expanduser()
    if path.suffix.lower() not in RECORD_CODECS:
        raise CameraError(f"Cannot record to {path}: use a .mp4 (mp4v) or .avi (MJPG) file name. "
                          f"Received suffix: {path.suffix or 'none'!r}.")
    check_output(path, Kind.RECORDING, force=force, option="--record", instead=path.with_stem(path.stem + "-2").name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_display() -> None:
    # Without a display the Qt build of OpenCV aborts the whole process rather than raising.
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise CameraError("No display to open a window on (DISPLAY is not set). Run with --no-display "
                          "(with --json and/or --record OUT.mp4), or from a desktop session / ssh -X.")
