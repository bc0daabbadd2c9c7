"""Capture what C++ libraries write to fd 2 (LiteRT's reasons, TensorFlow's start-up chatter)."""

from __future__ import annotations

import atexit
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


# Runs in its own small process, reading what this one writes to fd 2 once it is exiting.
_EXIT_FILTER = r"""
import sys
for line in sys.stdin.buffer:
    if not line.startswith(b"INFO: ["):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""
_exit_filter_registered = False


def drop_litert_info_at_exit() -> None:
    """Keep LiteRT's INFO lines out of the program's last output.

    LiteRT's Python ``TensorBuffer`` makes a process-wide environment that ends in a C++ static
    destructor, after Python has finished, printing ``INFO: [accelerator_registry.cc:43]
    DestroyAccelerator: ...`` for each accelerator on fd 2. From Python's exit on, fd 2 goes
    through a small filter process that drops LiteRT's ``INFO: [`` lines and passes everything
    else (warnings, errors, Python's own last words) through unchanged. Registered once, by the
    code that starts LiteRT's CompiledModel.
    """
    global _exit_filter_registered
    if not _exit_filter_registered and hasattr(os, "posix_spawn"):
        atexit.register(_filter_stderr_from_now_on)
        _exit_filter_registered = True


def _filter_stderr_from_now_on() -> None:
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    try:
        read, write = os.pipe()
        os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", "-c", _EXIT_FILTER], os.environ,
                       file_actions=[(os.POSIX_SPAWN_DUP2, read, 0), (os.POSIX_SPAWN_DUP2, 2, 1)])
    except OSError:  # no filter: the lines show, nothing else changes
        return
    os.close(read)
    os.dup2(write, 2)  # the filter sees end-of-file when this process has gone
    os.close(write)


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
