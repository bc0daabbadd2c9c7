"""What every ``edgeres`` command shares: the Typer app, one-line errors, option types and
their checks, and the helpers that print results."""

from __future__ import annotations

import contextlib
import errno
import glob
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeres.runtime import Accelerator  # light: numpy + the runtime, no LiteRT import yet

app = typer.Typer(
    help="Folder of labelled photos -> ResNet-50 -> faithful int8 .tflite -> LiteRT on the edge.\n\n"
         "Typical flow: edgeres train --data DIR --out runs/NAME; edgeres export runs/NAME --int8; "
         "edgeres evaluate export/NAME/model_float32.tflite export/NAME/model_int8.tflite --data DIR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Errors a user can fix: printed as one line, no traceback.
EXIT_USAGE, EXIT_FAILED = 2, 1


def _user_errors() -> tuple[type[BaseException], ...]:
    from edgeres.calibrate import CalibrationError
    from edgeres.data import DataError
    from edgeres.files import BadFileError
    from edgeres.preprocess import ImageError
    from edgeres.runtime import AcceleratorError, ModelError

    errors = [CalibrationError, DataError, ImageError, ModelError, AcceleratorError, BadFileError,
              FileExistsError, FileNotFoundError]
    for module, name in (("edgeres.model", "WeightsError"), ("edgeres.export", "ExportError"),
                         ("edgeres.run_files", "OptionError"), ("edgeres.distribute", "ClusterError"),
                         ("edgeres.clients", "ClientError"), ("edgeres.qat_model", "QATError"),
                         ("edgeres.camera", "CameraError")):
        mod = sys.modules.get(module)  # only modules already imported can have raised
        if mod is not None and hasattr(mod, name):
            errors.append(getattr(mod, name))
    from edgeres.outputs import OutputError  # every writer's refusal (light: no heavy imports)

    errors.append(OutputError)
    return tuple(errors)


@contextlib.contextmanager
def _friendly_errors():
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(130)
    except ImportError as e:  # an extra that this install does not have
        hint = _MISSING_EXTRA.get((e.name or "").split(".")[0])
        if hint is None and "pip install" not in str(e):
            raise
        typer.secho(f"error: {hint or e}", fg="red", err=True)
        raise typer.Exit(EXIT_USAGE)
    except Exception as e:
        if isinstance(e, _user_errors()):
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(EXIT_USAGE)
        if isinstance(e, OSError) and e.errno in _DISK_ERRORS and e.filename:  # a disk full, or locked, meanwhile
            typer.secho(f"error: {e.filename}: {e.strerror}; {_DISK_ERRORS[e.errno]}.", fg="red", err=True)
            raise typer.Exit(EXIT_FAILED)
        if isinstance(e, OSError) and e.errno in _PATH_ERRNOS:  # a path given that no file can have
            name = str(e.filename or "")
            typer.secho(f"error: {name[:80] + '...' if len(name) > 80 else name}: {e.strerror}. "
                        f"Check the path you passed.", fg="red", err=True)
            raise typer.Exit(EXIT_USAGE)
        raise


_DISK_ERRORS = {errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
                errno.EROFS: "choose a folder on a writable disk", errno.ENOSPC: "free some space",
                errno.EDQUOT: "free some space"}
_PATH_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP)


_MISSING_EXTRA = {
    "tensorflow": "this command needs TensorFlow: pip install 'edgeres[train]'",
    "keras": "this command needs TensorFlow/Keras: pip install 'edgeres[train]'",
    "cv2": "edgeres camera needs OpenCV: pip install 'edgeres[camera]'",
    "matplotlib": "plots need matplotlib: pip install 'edgeres[train]' (or matplotlib)",
}


def _multiple_of_32(value):
    if value is not None and value % 32:
        raise typer.BadParameter(f"must be a multiple of 32 (ResNet downsamples by 32). Received: {value}.")
    return value


def _positive(value):
    value = _finite(value)
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be above 0. Received: {value}.")
    return value


def _finite(value):
    """Typer callback: reject NaN and infinities (click's min=/max= let NaN through)."""
    import math

    if value is not None and isinstance(value, float) and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number. Received: {value}.")
    return value


# -- options shared by several commands ------------------------------------------------------

ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="CPU threads (default: all cores; LiteRT's own default is 1). More than 4 per core is capped, with a note.")]
AcceleratorOpt = Annotated[Accelerator, typer.Option("--accelerator", case_sensitive=False, help="gpu uses LiteRT's GPU accelerator (a bundle runs its float16 model there). Any accelerator is checked against the CPU on probe inputs when it loads; when it is unavailable or disagrees, edgeres says why and runs on CPU.")]
DelegateOpt = Annotated[Optional[Path], typer.Option("--delegate", exists=True, dir_okay=False, help="External delegate library (.so), e.g. a TFLite GPU or Edge TPU delegate; checked against the CPU when it loads.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail instead of falling back to CPU when the accelerator or delegate is unavailable or disagrees with the CPU.")]


class Client(str, Enum):
    MEDIAPIPE = "mediapipe"


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


# -- printing --------------------------------------------------------------------------------


def _expand(paths: list[str]) -> tuple[list[Path], list[str]]:
    from edgeres.files import image_files

    files, missing = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = image_files(path)
            if not found:
                missing.append(f"{p}: folder has no images (JPEG, PNG, BMP, GIF, WebP, TIFF)")
            files += found
        elif path.is_file():
            files.append(path)
        elif any(c in p for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(p, recursive=True) if Path(f).is_file())
            files += found or []
            if not found:
                missing.append(f"{p}: pattern matches no file")
        else:
            missing.append(f"{p}: no such file or directory")
    return files, missing


def _print_predictions(rows, clf, top_k: int) -> None:
    from rich.table import Table

    table = Table(title=f"{clf.path.name} on {clf.backend}", title_justify="left")
    table.add_column("image")
    table.add_column("label")
    table.add_column("score", justify="right")
    if top_k > 1:
        table.add_column(f"top {top_k}")
    table.add_column("ms", justify="right")
    if clf.uncertain_below is not None:  # the model's uncertain band (edgeres export measured it)
        table.caption = f"not sure: top score below {clf.uncertain_below:.3g}, where paths may disagree"
    for f, pred in rows:
        cells = [str(f), f"{pred.label} (not sure)" if pred.uncertain else pred.label, f"{pred.score:.3f}"]
        if top_k > 1:
            cells.append(", ".join(f"{lbl} {s:.2f}" for lbl, s in pred.top_k(top_k, clf.labels)))
        table.add_row(*cells, f"{pred.latency_ms:.1f}")
    _print_table(table)


def _print_table(table) -> None:
    """A Rich table, whole. A terminal gets it fitted to its width; a file, pipe or CI log has
    no width to fit, so it gets the table at its natural width with the title on a line of its
    own: no cell cut to ``mode…``, no header folded, wherever the numbers are kept."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    if not console.is_terminal:
        unbounded = Console(width=1_000_000)
        width = Measurement.get(unbounded, unbounded.options, table).maximum
        console = Console(width=width, highlight=False)
        if table.title:
            console.print(table.title, soft_wrap=True)
            table.title = None
    console.print(table)


def _short_names(paths: list[str]) -> list[str]:
    """The shortest path tails that tell the models apart (``cats-dogs/model_int8.tflite``)."""
    parts = [Path(p).parts for p in paths]
    for k in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-k:]) for x in parts]
        if len(set(names)) == len(set(paths)):
            return names
    return list(paths)


def _reflow(doc: str) -> str:
    """A docstring as --help text: each paragraph one line (Rich wraps it to the terminal), each
    ``Example:`` line a paragraph of its own. Hard line breaks would split sentences mid-way."""
    import inspect

    paragraphs = []
    for block in inspect.cleandoc(doc).split("\n\n"):
        current: list[str] = []
        for line in block.splitlines():
            if line.lstrip().startswith("Example") and current:
                paragraphs.append(" ".join(current))
                current = []
            current.append(line.strip())
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)

