"""The ``edgeres`` command line: each command parses, calls one library function, prints.

Heavy imports (TensorFlow, OpenCV) happen inside the commands that need them, so the
runtime commands (predict, evaluate, bench, camera) start in well under a second.

    cli/common.py    the app, one-line errors, option types and checks, printing helpers
        training.py  train, calibrate, export (TensorFlow's side)
        device.py    predict, evaluate, bench, camera, doctor, serve (LiteRT only)
"""

from __future__ import annotations

from edgeres.cli.common import _reflow, app

# Importing a command module registers its commands on app, in this (--help) order.
from edgeres.cli import training  # noqa: E402,F401,I001
from edgeres.cli import device  # noqa: E402,F401
# After every command is registered: the docstrings become --help text.
for _command in app.registered_commands:
    if _command.help is None and _command.callback is not None and _command.callback.__doc__:
        _command.help = _reflow(_command.callback.__doc__)


def main() -> None:  # pragma: no cover
    app()

