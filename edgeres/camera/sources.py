"""Where frames come from: a camera, a stream URL, a video file or a folder of images.

A :class:`Source` yields OpenCV BGR uint8 frames; ``parse_source`` picks one from what the user
typed (``0``, ``/dev/video2``, ``rtsp://...``, ``clip.mp4``, ``photos/``).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import cv2
import numpy as np

from edgeres.files import image_files
from edgeres.preprocess import IMAGE_SUFFIXES, ImageError, decode, is_image_file

FOLDER_FPS = 30.0  # a folder of images played back (realtime=True) as a 30 FPS camera


class CameraError(RuntimeError):
    """A source, window or recording that cannot be used; the message says what to try."""


class SourceKind(str, Enum):
    DEVICE = "device"  # a camera: index or /dev/videoN
    STREAM = "stream"  # a URL: rtsp://, http://, ...
    FILE = "file"  # a video file
    FOLDER = "folder"  # a directory of images (or one image), sorted by name, one frame each


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
    """The images of a folder and its subfolders (:func:`edgeres.files.image_files`, the rule
    training and ``predict`` use), sorted by path, one frame each; decoded like ``predict``."""

    kind = SourceKind.FOLDER

    def __init__(self, path: str | Path):
        path = Path(path)
        super().__init__(str(path))
        self.paths = image_files(path) if path.is_dir() else [path]
        self.fps, self.frame_count = FOLDER_FPS, len(self.paths)
        self._next = 0
        self.errors: list[str] = []  # why each corrupt image was skipped

    def open(self) -> None:
        if not self.paths:
            raise CameraError(f"{self.name}: no images in this folder or its subfolders (looked for "
                              f"{', '.join(IMAGE_SUFFIXES)}).")
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
