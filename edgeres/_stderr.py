"""Capture what C++ libraries write to fd 2 (LiteRT's reasons, TensorFlow's start-up chatter)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

# Lines TensorFlow prints on import whatever TF_CPP_MIN_LOG_LEVEL says (TF 2.21, absl logging).
TF_IMPORT_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
                   "cpu_feature_guard.cc", "To enable the following instructions", "rebuild TensorFlow")


@contextlib.contextmanager
def captured_stderr():
    """Capture the C++ runtime's stderr (where LiteRT puts the real reason) at the fd level."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read().decode(errors="replace")


class _Captured:
    text = ""

    def read(self) -> str:
        return self.text


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up notices dropped; anything else it prints is kept."""
    if "tensorflow" in sys.modules:
        return
    with captured_stderr() as logs:
        import tensorflow  # noqa: F401
    for line in logs.read().splitlines():
        if line.strip() and not any(noise in line for noise in TF_IMPORT_NOISE):
            print(line, file=sys.stderr)


def track(iterable, *, total: int | None = None, description: str = ""):
    """A progress bar on stderr while the job runs, gone when it ends; nothing at all when stderr
    is not a terminal (a log file gets no bar residue, stdout stays clean for --json)."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return iterable
    from rich.progress import track as rich_track

    return rich_track(iterable, total=total, description=description, transient=True, console=console)
