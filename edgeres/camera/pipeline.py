"""The threads of a camera run and what passes between them.

    capture  (reads, checks and prepares frames)  ──mailbox──>  inference  ──results──>  main

A live source's mailbox keeps only the newest frame, so a slow model drops frames instead of
falling behind; a file or folder goes through a short queue, every frame in order.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

import cv2
import numpy as np

from edgeres.camera.sources import CameraError, Source
from edgeres.preprocess import to_pixels
from edgeres.runtime import Classifier


class EndReason(str, Enum):
    END_OF_SOURCE = "end of source"
    MAX_FRAMES = "max frames reached"
    QUIT = "quit key"
    WINDOW_CLOSED = "window closed"
    INTERRUPTED = "interrupted (Ctrl-C)"
    OUTPUT_CLOSED = "JSON output closed (broken pipe)"
    SOURCE_LOST = "source lost (reconnect attempts failed)"


@dataclass
class Frame:
    index: int  # position in the source, counting dropped and corrupt frames
    timestamp: float  # wall clock (Unix time) at capture
    captured: float  # perf_counter at capture
    image: np.ndarray  # BGR, owned by the pipeline
    pixels: dict = field(default_factory=dict)  # model input size -> RGB uint8 model input


@dataclass
class Result:
    frame: Frame
    label: str  # after smoothing: what the window shows
    score: float
    raw_label: str
    raw_score: float
    latency_ms: float
    capture_to_result_ms: float
    other: tuple[str, float, str, float, float] | None  # compare: label, score, raw label, raw score, ms


@dataclass
class End:
    reason: EndReason


@dataclass
class Failure:
    error: BaseException



class Mailbox:
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
                while self._items and isinstance(self._items[-1], Frame):
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


class Capture(threading.Thread):
    """Reads frames, skips and counts corrupt ones, prepares model input, reconnects live sources."""

    def __init__(self, source: Source, mailbox: Mailbox, sizes: set, *, pace: bool, backoff: tuple[float, ...],
                 stop: threading.Event, paused: threading.Event, log):
        super().__init__(name="edgeres-capture", daemon=True)
        self.source, self.mailbox, self.sizes, self.pace, self.backoff = source, mailbox, sizes, pace, backoff
        self.stop, self.paused, self.log = stop, paused, log
        self.read_count = self.corrupt = self.reconnects = 0
        self.bad_reasons: collections.Counter = collections.Counter()

    def run(self) -> None:
        reason = EndReason.END_OF_SOURCE
        try:
            reason = self._loop()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            self.mailbox.put(Failure(e), droppable=False)
        else:
            self.mailbox.put(End(reason), droppable=False)
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
            frame = Frame(index, time.time(), now, image)
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            frame.pixels = {(size, resize): to_pixels(rgb, size, resize) for size, resize in self.sizes}
            if not self.mailbox.put(frame):
                break
        return EndReason.END_OF_SOURCE

    def _reconnect(self) -> bool:
        for attempt, pause in enumerate(self.backoff, start=1):
            self.log(f"edgeres: lost {self.source.name}; reconnecting in {pause:g} s "
                     f"(attempt {attempt} of {len(self.backoff)})")
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


class Inference(threading.Thread):
    """Classifies prepared frames (and compares, and smooths) in order; results to the main thread."""

    def __init__(self, clf: Classifier, other: Classifier | None, inbox: Mailbox, outbox: Mailbox,
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
                if not isinstance(item, Frame):  # End or Failure from capture: pass it on
                    self.outbox.put(item, droppable=False)
                    return
                self.outbox.put(self._classify(item), droppable=False)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            self.outbox.put(Failure(e), droppable=False)

    def _classify(self, frame: Frame) -> Result:
        pred = self.clf.predict_pixels(frame.pixels[self.clf.input_size, self.clf.resize])
        label, score = self._smooth(0, pred, self.clf.labels)
        other = None
        if self.other is not None:
            o = self.other.predict_pixels(frame.pixels[self.other.input_size, self.other.resize])
            other = (*self._smooth(1, o, self.other.labels), o.label, o.score, o.latency_ms)
        done = (time.perf_counter() - frame.captured) * 1e3
        return Result(frame, label, score, pred.label, pred.score, pred.latency_ms, done, other)

    def _smooth(self, key: int, pred, labels) -> tuple[str, float]:
        """Exponential moving average of the probabilities, so the label does not flicker."""
        if self.smoothing <= 0:
            return pred.label, pred.score
        prev = self._ema.get(key)
        ema = pred.probabilities if prev is None else self.smoothing * prev + (1 - self.smoothing) * pred.probabilities
        self._ema[key] = ema
        i = int(np.argmax(ema))
        return labels[i], float(ema[i])
