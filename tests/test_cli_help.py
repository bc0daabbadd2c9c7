"""--help teaches: every command has an example, and no paragraph carries a hard line break
(Rich wraps paragraphs to the terminal; a hard break splits a sentence mid-way)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgeres.cli import app

COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_every_command_is_listed():
    assert {"train", "calibrate", "export", "predict", "evaluate", "bench", "camera"} <= set(
        n.replace("_cmd", "") for n in COMMANDS)


@pytest.mark.parametrize("command", app.registered_commands, ids=lambda c: c.name or c.callback.__name__)
def test_help_paragraphs_are_single_lines_and_there_is_an_example(command):
    assert command.help, "no help text"
    for paragraph in command.help.split("\n\n"):
        assert "\n" not in paragraph, paragraph
    assert "Example" in command.help


@pytest.mark.parametrize("columns", ["60", "200"])
def test_help_renders_at_any_width(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    result = CliRunner().invoke(app, ["evaluate", "--help"], terminal_width=int(columns))
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Example (float vs int8): edgeres evaluate" in text
