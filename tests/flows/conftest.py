"""One Prefect test server for all flow tests, quiet; campaign files with an ``[execution]`` section."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

for _name in ("distributed", "prefect", "httpx"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[str]:
    """A temporary Prefect server and database for the whole session; yields its API URL."""
    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


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
