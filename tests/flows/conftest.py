"""Every flow test runs against the session's one Prefect test server (``prefect_server`` in
tests/conftest.py); campaign files with an ``[execution]`` section."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def flows_use_the_test_server(prefect_server: str) -> str:
    """The session's Prefect test server, for every test of this folder."""
    return prefect_server


@pytest.fixture
def flow_campaign(branin_config: Callable[..., Path]) -> Callable[..., Path]:
    """A Branin campaign file (see ``branin_config``) plus an ``[execution]`` section.

    ``execution`` is the section's TOML lines; the other keyword arguments go to ``branin_config``.
    """

    def write(execution: str = "", **fields: object) -> Path:
        path = branin_config(**fields)
        if execution:
            path.write_text(path.read_text() + "\n[execution]\n" + execution + "\n")
        return path

    return write
