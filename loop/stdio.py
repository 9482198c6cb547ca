"""Keeping stdout for a command's JSON report."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what this process and the processes it starts write to stdout to stderr instead.

    mace-torch prints a notice when imported, in every process that imports it (the committee's
    training workers too); this keeps a JSON report on stdout clean.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
