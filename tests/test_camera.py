"""edgeres.camera on short videos and folders built at test time from the shared photos.

Everything runs headless except ``test_window_overlay_under_xvfb``, which needs the ``Xvfb``
and ImageMagick ``import`` binaries (Debian/Ubuntu: apt-get install xvfb imagemagick) and
skips without them.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeres import camera
from edgeres.camera import (BANNER_BGR, CameraError, CameraSummary, EndReason, FolderSource, Source,
                            SourceKind, VideoSource, parse_source, run_camera)
from edgeres.runtime import Classifier

N_FRAMES = 12
SIZE = (640, 480)


# -- fixtures: frames from real photos, written as video and as lossless PNGs ---------------------


@pytest.fixture(scope="module")
def photo_paths(photos_root) -> list[Path]:
    """Cat, dog, cat, ...: a known photo per frame."""
    val = photos_root / "validation"
    cats, dogs = sorted((val / "cats").glob("*.jpg")), sorted((val / "dogs").glob("*.jpg"))
    return [p for pair in zip(cats[: N_FRAMES // 2], dogs[: N_FRAMES // 2]) for p in pair]


@pytest.fixture(scope="module")
def frames_bgr(photo_paths) -> list[np.ndarray]:
    return [cv2.resize(cv2.imread(str(p)), SIZE, interpolation=cv2.INTER_AREA) for p in photo_paths]


def _write_video(path: Path, frames, fourcc: str) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30, SIZE)
    if fourcc == "MJPG":
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture(scope="module")
def video_mp4(tmp_path_factory, frames_bgr) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames_bgr, "mp4v")


@pytest.fixture(scope="module")
def video_avi(tmp_path_factory, frames_bgr) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.avi", frames_bgr, "MJPG")


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory, frames_bgr) -> Path:
    d = tmp_path_factory.mktemp("png_frames")
    for i, f in enumerate(frames_bgr):
        cv2.imwrite(str(d / f"frame_{i:03d}.png"), f)
    return d


@pytest.fixture(scope="module")
def int8(tiny_bundle) -> Classifier:
    return Classifier(tiny_bundle / "model_int8.tflite", threads=2, accelerator="cpu")


@pytest.fixture(scope="module")
def float32(tiny_bundle) -> Classifier:
    return Classifier(tiny_bundle / "model_float32.tflite", threads=2, accelerator="cpu")


@pytest.fixture(autouse=True)
def no_threads_left_behind():
    yield
    deadline = time.monotonic() + 2
    while any(t.name.startswith("edgeres-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    left = [t.name for t in threading.enumerate() if t.name.startswith("edgeres-")]
    assert not left, f"camera threads still running after run_camera returned: {left}"


def _run_json(clf, source, **kw) -> tuple[CameraSummary, list[dict]]:
    out = io.StringIO()
    summary = run_camera(clf, source=source, display=False, json_out=out, log=lambda m: None, **kw)
    return summary, [json.loads(line) for line in out.getvalue().splitlines()]


def _read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def _rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# -- results equal predict on the same pixels ---------------------------------------------------------


def test_folder_of_pngs_equals_predict_exactly(int8, png_dir):
    summary, lines = _run_json(int8, png_dir)
    assert [d["frame"] for d in lines] == list(range(N_FRAMES))
    for d, path in zip(lines, sorted(png_dir.glob("*.png"))):
        pred = int8.predict(path)
        assert (d["label"], d["score"]) == (pred.label, round(pred.score, 6)), path.name
        assert d["uncertain"] is pred.uncertain  # the model's uncertain band, as predict says
    assert summary.frames == N_FRAMES and summary.dropped == 0 and summary.corrupt == 0
    assert summary.ended is EndReason.END_OF_SOURCE
    assert sum(summary.label_counts.values()) == N_FRAMES


def test_video_file_reports_every_frame_once_in_order(int8, video_mp4, photo_paths):
    summary, lines = _run_json(int8, video_mp4)
    assert [d["frame"] for d in lines] == list(range(N_FRAMES))
    assert set(lines[0]) == {"frame", "timestamp", "label", "score", "uncertain", "latency_ms",
                            "capture_to_result_ms"}
    decoded = _read_video(video_mp4)
    assert len(decoded) == N_FRAMES
    for d, frame in zip(lines, decoded):  # what the model saw: the decoded frame, BGR -> RGB
        pred = int8.predict(_rgb(frame))
        assert (d["label"], d["score"]) == (pred.label, round(pred.score, 6)), d["frame"]
        assert d["latency_ms"] > 0 and d["capture_to_result_ms"] >= d["latency_ms"]
    # Against the original photos: mp4v is lossy, and an untrained model's scores sit near 0.5,
    # so a borderline frame may flip; most must not.
    same = sum(d["label"] == int8.predict(p).label for d, p in zip(lines, photo_paths))
    assert same >= 0.75 * N_FRAMES, f"only {same} of {N_FRAMES} frames match predict on the photo"
    assert summary.frames == N_FRAMES and summary.dropped == 0 and summary.ended is EndReason.END_OF_SOURCE
    assert summary.latency_ms > 0 and summary.capture_to_result_p90_ms >= summary.capture_to_result_p50_ms > 0


def test_max_frames_stops_early(int8, video_avi):
    summary, lines = _run_json(int8, video_avi, max_frames=5)
    assert [d["frame"] for d in lines] == [0, 1, 2, 3, 4]
    assert summary.frames == 5 and summary.ended is EndReason.MAX_FRAMES


# -- recording ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_record_writes_a_readable_annotated_video(int8, png_dir, frames_bgr, tmp_path, suffix):
    out = tmp_path / f"annotated{suffix}"
    summary = run_camera(int8, source=png_dir, display=False, record=out, log=lambda m: None)
    assert summary.record == str(out) and summary.frames == N_FRAMES
    assert not list(tmp_path.glob("*.tmp*")), "the temporary recording was not renamed"
    frames = _read_video(out)
    assert len(frames) == N_FRAMES
    # The text panel sits above the picture (the codec is lossy: compare loosely); the whole
    # picture is below it, none of it covered.
    panel = frames[0].shape[0] - SIZE[1]
    assert frames[0].shape == (SIZE[1] + panel, SIZE[0], 3) and 40 <= panel <= 200
    top, raw_top = frames[0][4:20, 300:600].astype(int), frames_bgr[0][4:20, 300:600].astype(int)
    assert np.abs(top - BANNER_BGR).mean() < 12
    assert np.abs(raw_top - BANNER_BGR).mean() > 30
    assert np.abs(frames[0][panel:].astype(int) - frames_bgr[0]).mean() < 12


def test_record_rejects_unknown_container(int8, png_dir, tmp_path):
    with pytest.raises(CameraError, match=r"\.mp4.*\.avi"):
        run_camera(int8, source=png_dir, display=False, record=tmp_path / "out.mkv")


# -- faults --------------------------------------------------------------------------------------------


def test_corrupt_image_in_folder_is_skipped_and_counted(int8, png_dir, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for p in sorted(png_dir.glob("*.png")):
        (folder / p.name).symlink_to(p)
    (folder / "frame_004.png").unlink()
    (folder / "frame_004.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    messages = []
    out = io.StringIO()
    summary = run_camera(int8, source=folder, display=False, json_out=out, log=messages.append)
    frames = [json.loads(line)["frame"] for line in out.getvalue().splitlines()]
    assert frames == [i for i in range(N_FRAMES) if i != 4]
    assert summary.corrupt == 1 and summary.frames == N_FRAMES - 1
    assert summary.ended is EndReason.END_OF_SOURCE
    assert any("frame_004.png" in m for m in messages), messages


def test_truncated_video_ends_cleanly_and_says_so(int8, video_avi, tmp_path):
    data = video_avi.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    messages = []
    summary = run_camera(int8, source=cut, display=False, record=tmp_path / "rec.avi", log=messages.append)
    assert 0 < summary.frames < N_FRAMES
    assert summary.ended is EndReason.END_OF_SOURCE
    assert any(f"of {N_FRAMES} frames" in m for m in messages), messages
    assert len(_read_video(tmp_path / "rec.avi")) == summary.frames


class FlakyCamera(Source):
    """A live source: good frames mixed with corrupt ones, then unplugged; replugs once."""

    kind, live, fps = SourceKind.DEVICE, True, 30.0

    def __init__(self, frames, script):
        super().__init__("flaky-camera")
        self.frames, self.script, self.opens = frames, list(script), 0

    def open(self):
        self.opens += 1
        if self.opens == 3:  # the second reconnect attempt finds it replugged: three more frames
            self.script = ["good"] * 3
        elif self.opens > 1:
            raise CameraError("still unplugged")

    def read(self):
        if not self.script:
            return False, None
        kind = self.script.pop(0)
        frame = self.frames[len(self.script) % len(self.frames)]
        return True, {"good": frame, "none": None, "float": frame.astype(np.float32),
                      "empty": np.zeros((0, 0, 3), np.uint8), "gray": frame[:, :, 0]}[kind]


def test_live_source_corrupt_frames_unplug_and_reconnect(int8, frames_bgr, tmp_path, monkeypatch):
    monkeypatch.setattr(camera, "RECONNECT_BACKOFF_S", (0.01, 0.01, 0.01))
    src = FlakyCamera(frames_bgr, ["good", "none", "good", "float", "empty", "gray", "good", "good"])
    messages = []
    out = io.StringIO()
    summary = run_camera(int8, source=src, display=False, json_out=out, record=tmp_path / "rec.mp4",
                         realtime=False, log=messages.append)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["frame"] for d in lines] == [0, 2, 6, 7, 8, 9, 10]
    assert summary.corrupt == 4 and summary.frames == 7 and summary.reconnects == 1
    assert summary.ended is EndReason.SOURCE_LOST
    assert src.opens == 1 + 2 + 3  # first open; one failed and one good reconnect; three failed
    assert sum("reconnecting" in m for m in messages) == 5
    assert len(_read_video(tmp_path / "rec.mp4")) == 7  # finalised and playable
    # Live sources are smoothed by default; the raw prediction is reported beside it.
    assert {"raw_label", "raw_score"} <= set(lines[0])


def test_slow_model_on_live_source_drops_frames_not_time(int8, frames_bgr, tmp_path, monkeypatch):
    small = [cv2.resize(f, (64, 64)) for f in frames_bgr]

    class FastCamera(Source):
        kind, live, fps = SourceKind.DEVICE, True, 200.0

        def __init__(self):
            super().__init__("fast-camera")
            self.n = 0

        def read(self):
            if self.n >= 150:
                return False, None  # unplugged, and no reconnect attempts
            self.n += 1
            time.sleep(0.002)
            return True, small[self.n % len(small)]

    monkeypatch.setattr(camera, "RECONNECT_BACKOFF_S", ())
    clf = Classifier(int8.path, threads=1, accelerator="cpu")
    predict = clf.predict_pixels
    monkeypatch.setattr(clf, "predict_pixels", lambda px: (time.sleep(0.03), predict(px))[1])
    summary, lines = _run_json(clf, FastCamera(), record=tmp_path / "rec.avi")
    frames = [d["frame"] for d in lines]
    assert frames == sorted(set(frames)), "frames out of order or repeated"
    assert summary.dropped > 0 and summary.frames < 150
    assert summary.frames + summary.dropped + summary.corrupt == 150
    assert summary.ended is EndReason.SOURCE_LOST
    # The recording repeats each annotated frame over the ones the model skipped: real time.
    assert len(_read_video(tmp_path / "rec.avi")) == frames[-1] - frames[0] + 1


def test_ctrl_c_ends_cleanly_with_summary_and_recording(int8, png_dir, tmp_path):
    class InterruptingStream(io.StringIO):
        def write(self, s):
            if self.getvalue().count("\n") == 3:
                raise KeyboardInterrupt
            return super().write(s)

    out = InterruptingStream()
    summary = run_camera(int8, source=png_dir, display=False, json_out=out, record=tmp_path / "rec.avi",
                         log=lambda m: None)
    assert summary.ended is EndReason.INTERRUPTED
    assert out.getvalue().count("\n") == 3
    assert summary.frames == 4  # the fourth was classified; its line was interrupted
    assert len(_read_video(tmp_path / "rec.avi")) == 3


def test_closed_json_pipe_ends_the_run(int8, png_dir):
    class ClosedPipe(io.StringIO):
        def write(self, s):
            if self.getvalue().count("\n") == 2:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(s)

    summary = run_camera(int8, source=png_dir, display=False, json_out=ClosedPipe(), log=lambda m: None)
    assert summary.ended is EndReason.OUTPUT_CLOSED


@pytest.mark.parametrize("spec", ["7", 7, "/dev/video9"])
def test_no_camera_says_what_to_try(int8, spec):
    t0 = time.perf_counter()
    with pytest.raises(CameraError) as e:
        run_camera(int8, source=spec, display=False)
    msg = str(e.value)
    assert "No camera at" in msg and "--source FILE" in msg and "ls /dev/video*" in msg and "--source 1" in msg
    assert time.perf_counter() - t0 < 5


def test_missing_file_and_undecodable_video(int8, tmp_path):
    with pytest.raises(CameraError, match="no such file or directory"):
        run_camera(int8, source=tmp_path / "nope.mp4", display=False)
    bad = tmp_path / "notvideo.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(CameraError, match="cannot decode"):
        run_camera(int8, source=bad, display=False)


def test_bad_arguments(int8, png_dir):
    with pytest.raises(ValueError, match="smoothing"):
        run_camera(int8, source=png_dir, display=False, smoothing=1.0)
    with pytest.raises(ValueError, match="max_frames"):
        run_camera(int8, source=png_dir, display=False, max_frames=0)


# -- sources -------------------------------------------------------------------------------------------


def test_parse_source(png_dir, video_mp4):
    assert (parse_source("0").kind, parse_source("0").live) == (SourceKind.DEVICE, True)
    assert parse_source(2).target == 2
    assert parse_source("/dev/video3").kind is SourceKind.DEVICE
    stream = parse_source("rtsp://admin:hunter2@10.0.0.5/live")
    assert stream.kind is SourceKind.STREAM and stream.live and "hunter2" not in stream.name
    assert isinstance(parse_source(png_dir), FolderSource)
    one = parse_source(next(png_dir.glob("*.png")))
    assert isinstance(one, FolderSource) and one.frame_count == 1
    video = parse_source(video_mp4)
    assert isinstance(video, VideoSource) and video.kind is SourceKind.FILE and not video.live


# -- compare and smoothing -------------------------------------------------------------------------------


def test_compare_int8_with_float_on_the_same_frames(int8, float32, video_mp4):
    summary, lines = _run_json(int8, video_mp4, compare=float32)
    assert [d["frame"] for d in lines] == list(range(N_FRAMES))
    decoded = _read_video(video_mp4)
    for d, frame in zip(lines, decoded):
        ref = float32.predict(_rgb(frame))
        assert (d["compare_label"], d["compare_score"]) == (ref.label, round(ref.score, 6))
        assert d["agree"] == (d["label"] == d["compare_label"])
        # int8 follows float closely on the same pixels (an untrained model: loose tolerance).
        assert abs(d["score"] - ref.score if d["agree"] else d["score"] - (1 - ref.score)) < 0.05
    disagree = sum(not d["agree"] for d in lines)
    assert summary.disagreements == disagree
    assert 0.0 <= summary.disagreement_rate <= 1.0
    assert summary.disagreement_rate == pytest.approx(disagree / N_FRAMES)
    assert summary.compare_model == str(float32.path)


def test_smoothing_is_an_ema_of_probabilities(float32, png_dir):
    alpha = 0.8  # not 0.5: swapped weights would pass
    _, lines = _run_json(float32, png_dir, smoothing=alpha)
    ema = None
    for d in lines:
        p = np.zeros(2)
        i = float32.labels.index(d["raw_label"])
        p[i], p[1 - i] = d["raw_score"], 1 - d["raw_score"]
        ema = p if ema is None else alpha * ema + (1 - alpha) * p
        assert d["label"] == float32.labels[int(np.argmax(ema))]
        assert d["score"] == pytest.approx(ema.max(), abs=1e-5)


def test_summary_serialises_and_reads(int8, png_dir):
    summary, _ = _run_json(int8, png_dir)
    d = json.loads(json.dumps(summary.to_dict()))
    assert d["frames"] == N_FRAMES and d["ended"] == "end of source" and d["disagreement_rate"] is None
    text = summary.format()
    assert f"{N_FRAMES} frames" in text and "FPS" in text and "labels:" in text


# -- the window ------------------------------------------------------------------------------------------


def test_window_without_gui_support_says_how_to_get_one(int8, png_dir, monkeypatch):
    def not_implemented(*a, **k):
        raise cv2.error("OpenCV(4.10.0) error: (-2:Unspecified error) The function is not implemented. "
                        "Rebuild the library with Windows, GTK+ 2.x or Cocoa support.")

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "namedWindow", not_implemented)
    with pytest.raises(CameraError) as e:
        run_camera(int8, source=png_dir)
    assert "pip install opencv-python" in str(e.value) and "--no-display" in str(e.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY is how Linux finds a screen")
def test_window_without_display_fails_before_qt_can_abort(int8, png_dir, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(CameraError, match="--no-display"):
        run_camera(int8, source=png_dir)


def test_keys_snapshot_pause_and_quit(int8, png_dir, tmp_path, monkeypatch):
    """The key handling, with OpenCV's window calls replaced: s saves, space pauses, q quits."""
    shown = []
    # (press once this many images have been shown, key): s after frame 1; space after frame 2
    # pauses and shows the frame again marked PAUSED; space resumes; q after two more frames.
    script = [(2, ord("s")), (3, ord(" ")), (4, ord(" ")), (6, ord("q"))]

    def wait_key(delay):
        if script and len(shown) >= script[0][0]:
            return script.pop(0)[1]
        return -1

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "namedWindow", lambda *a, **k: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, img: shown.append(img.copy()))
    monkeypatch.setattr(cv2, "waitKey", wait_key)
    monkeypatch.setattr(cv2, "getWindowProperty", lambda *a: 1.0)
    monkeypatch.setattr(cv2, "destroyWindow", lambda *a: None)
    summary = run_camera(int8, source=png_dir, snapshot_dir=tmp_path / "snaps", log=lambda m: None)
    assert summary.ended is EndReason.QUIT
    assert summary.frames == 5
    assert len(summary.snapshots) == 1
    snap = cv2.imread(summary.snapshots[0])
    # The annotated frame: the text panel above the whole picture (as recorded, see above).
    assert snap is not None and snap.shape[1:] == (SIZE[0], 3) and 40 <= snap.shape[0] - SIZE[1] <= 200
    assert np.array_equal(snap, shown[1])  # the annotated frame on screen when s was pressed
    paused = np.abs(shown[3].astype(int) - shown[2]).sum(axis=2) > 0
    assert paused.any() and paused[-60:].sum() == paused.sum()  # same frame, "PAUSED" at the bottom


def test_window_closed_ends_the_run(int8, png_dir, monkeypatch):
    shown = []
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "namedWindow", lambda *a, **k: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, img: shown.append(1))
    monkeypatch.setattr(cv2, "waitKey", lambda delay: -1)
    monkeypatch.setattr(cv2, "getWindowProperty", lambda *a: 0.0 if len(shown) >= 3 else 1.0)
    monkeypatch.setattr(cv2, "destroyWindow", lambda *a: None)
    summary = run_camera(int8, source=png_dir, log=lambda m: None)
    assert summary.ended is EndReason.WINDOW_CLOSED and summary.frames == 3


@pytest.fixture
def xvfb(monkeypatch):
    if not shutil.which("Xvfb") or not shutil.which("import"):
        pytest.skip("needs the Xvfb and ImageMagick `import` binaries (apt-get install xvfb imagemagick)")
    number = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists()
                  and not Path(f"/tmp/.X{n}-lock").exists())
    display = f":{number}"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"Xvfb {display} did not start")
            time.sleep(0.05)
        monkeypatch.setenv("DISPLAY", display)
        monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
        yield display
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _remap_window(display: str, name: str) -> None:
    """Unmap and map the X window called ``name``, as a window manager would.

    Qt 5 (as bundled in the opencv-python wheel), on an X server with no window manager and a
    loaded CPU, sometimes misses the MapNotify of its first window and then never paints it;
    seen here in about one run in three with both cores busy. A fresh map makes it paint.
    """
    import ctypes
    import ctypes.util

    try:
        x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    except OSError:
        return  # no Xlib: nothing to nudge with
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XDefaultRootWindow.restype = ctypes.c_ulong
    dpy = ctypes.c_void_p(x11.XOpenDisplay(display.encode()))
    if not dpy.value:
        return
    root, parent, children, count = ctypes.c_ulong(), ctypes.c_ulong(), ctypes.POINTER(ctypes.c_ulong)(), ctypes.c_uint()
    x11.XQueryTree(dpy, ctypes.c_ulong(x11.XDefaultRootWindow(dpy)), ctypes.byref(root), ctypes.byref(parent),
                   ctypes.byref(children), ctypes.byref(count))
    for i in range(count.value):
        title = ctypes.c_char_p()
        if x11.XFetchName(dpy, ctypes.c_ulong(children[i]), ctypes.byref(title)) and title.value == name.encode():
            x11.XUnmapWindow(dpy, ctypes.c_ulong(children[i]))
            x11.XSync(dpy, 0)
            x11.XMapWindow(dpy, ctypes.c_ulong(children[i]))
            x11.XSync(dpy, 0)
    x11.XCloseDisplay(dpy)


def test_window_overlay_under_xvfb(int8, png_dir, frames_bgr, tmp_path, xvfb, monkeypatch):
    """The real window: screenshot the X screen mid-run and find the overlay banner and its text."""
    imshow, shown = cv2.imshow, []

    def counting_imshow(name, img):
        shown.append(img.shape)
        imshow(name, img)

    monkeypatch.setattr(cv2, "imshow", counting_imshow)
    shot = tmp_path / "screen.png"

    def banner_pixels(screen):
        return np.all(screen == BANNER_BGR, axis=2) if screen is not None else np.zeros((1, 1), bool)

    class ScreenshotSource(FolderSource):
        def read(self):
            if self._next == 8:  # by now the window has been shown a few annotated frames
                deadline = time.monotonic() + 15
                while len(shown) < 3 and time.monotonic() < deadline:
                    time.sleep(0.02)
                for attempt in range(40):  # X paints asynchronously: allow a loaded machine time
                    time.sleep(0.2)
                    subprocess.run(["import", "-display", xvfb, "-window", "root", str(shot)], check=True, timeout=20)
                    if banner_pixels(cv2.imread(str(shot))).sum() > 0 or time.monotonic() > deadline:
                        break
                    if attempt == 2:
                        _remap_window(xvfb, camera.WINDOW)
            return super().read()

    summary = run_camera(int8, source=ScreenshotSource(png_dir), max_frames=10, log=lambda m: None)
    assert summary.frames == 10 and summary.ended is EndReason.MAX_FRAMES
    screen = cv2.imread(str(shot))
    assert screen is not None, "no screenshot"
    banner = banner_pixels(screen)
    raw_banner = sum(int(np.all(f == BANNER_BGR, axis=2).sum()) for f in frames_bgr)
    assert raw_banner < 1000  # the photos themselves do not have this colour
    assert banner.sum() > 0.5 * SIZE[0] * 60, f"overlay banner not on screen ({banner.sum()} pixels)"
    rows, cols = np.nonzero(banner)
    box = screen[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    text = np.all(box > 200, axis=2).sum()  # white and green text on the banner
    assert text > 200, f"no text on the banner ({text} bright pixels)"
    assert box.shape[1] == SIZE[0]  # shown 1:1, the width of the frame


def test_overlay_says_not_sure_below_the_models_band(tiny_bundle, png_dir, tmp_path):
    """The overlay's first line says "not sure" exactly for the frames whose shown score is below
    the model's uncertain band; an app's own threshold (``uncertain_below``) moves it."""
    from edgeres.camera.output import Output
    from edgeres.camera.pipeline import Result

    clf = Classifier(tiny_bundle / "model_int8.tflite", threads=2, accelerator="cpu")
    assert clf.uncertain_below is not None  # the band export measured, read from the model's metadata
    _, lines = _run_json(clf, png_dir)
    scores = sorted({d["score"] for d in lines})
    clf.uncertain_below = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # frames either side
    out = Output(clf, None, display=False, record_path=None, json_out=None, smoothing=0.0, realtime=False,
                 snapshot_dir=tmp_path, fps_hint=30.0, log=lambda m: None)
    _, lines = _run_json(clf, png_dir)
    said = []
    for d in lines:
        r = Result(None, d["label"], d["score"], d["label"], d["score"], 1.0, 2.0, None)
        said.append("not sure" in out.overlay_lines(r, None)[0][0])
        assert said[-1] is d["uncertain"] is (d["score"] < clf.uncertain_below), d
    assert 0 < sum(said) < len(said), [d["score"] for d in lines]
