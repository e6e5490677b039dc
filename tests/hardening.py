"""Helpers of the hardening tests (issue 18): the CLI run in this process, and what one line means."""

import logging
import os
from pathlib import Path

from click.testing import CliRunner

from search.cli import cli as command


def cli(*args, cwd: str | Path | None = None):
    """`search ARGS` in this process (no start-up cost): returncode, stdout, stderr (warnings included).
    Asserts that no exception escaped the CLI: every error must become its one line."""
    logging.getLogger("search").handlers.clear()  # the CLI attaches its handler to this run's stderr
    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(command, [str(arg) for arg in args])
    finally:
        os.chdir(here)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    result.returncode = result.exit_code
    return result


def one_line(text: str) -> bool:
    """A single line and no traceback."""
    return len(text.strip().splitlines()) == 1 and "Traceback" not in text
