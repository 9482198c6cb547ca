"""Shared fixtures: campaign files written on the fly, and the benchmark data beside the checkout."""

from __future__ import annotations

import os

# Small GPs are fastest on one thread, and far slower on several when the cores are busy;
# set before torch is imported so that subprocesses (the CLI) inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Prefect, where a test runs a flow: quiet, no analytics (read when prefect is first imported).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

import logging
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path

import pytest
import torch

from oracles.lab import Lab, LabServer, LabStore
from tests.backends import ledger_location, postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.helpers import LAB_TOKEN

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


for _name in ("distributed", "prefect", "httpx"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """The session's one temporary Prefect server and database (flow tests, and benchmarks that
    run flows); yields its API URL. Prefect is imported only where a test asks for it."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def mlip_workers() -> Iterator[Executor]:
    """Two MACE training processes that the tests' committees share: a fresh one costs ~10 s
    (importing mace-torch, compiling its TorchScript) before it trains anything."""
    from surrogates.mlip import training_pool

    with training_pool(2) as pool:
        yield pool


@pytest.fixture
def shared_data() -> Path:
    """``shared/data`` beside the checkout (Liang et al., Rohr et al.); skips when absent."""
    if not (SHARED_DATA / "crossed_barrel" / "crossed_barrel.csv").is_file():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (shared/ beside the checkout)")
    return SHARED_DATA


BRANIN_CAMPAIGN = """
[campaign]
name = "branin"
seed = {seed}
ledger = "{ledger}"

[[space.parameters]]
name = "x1"
type = "continuous"
lower = -5.0
upper = 10.0

[[space.parameters]]
name = "x2"
type = "continuous"
lower = 0.0
upper = 15.0

[[objectives]]
name = "y"
direction = "minimize"

[acquisition]
type = "{acquisition}"
batch_size = {batch_size}
initial_designs = {initial_designs}
num_restarts = 2
raw_samples = 64
mc_samples = 32
max_iterations = 30

[oracle]
type = "emulator"
function = "branin"
{oracle_extra}

[stopping]
max_experiments = {max_experiments}
{stopping_extra}
"""


@pytest.fixture
def branin_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a Branin campaign file into ``tmp_path``; keyword arguments fill its blanks.

    ``oracle_extra`` and ``stopping_extra`` are extra TOML lines for those sections.
    """

    def write(name: str = "campaign.toml", **fields: object) -> Path:
        values: dict[str, object] = {
            "seed": 0,
            "ledger": "ledger.db",
            "acquisition": "qlognei",
            "batch_size": 2,
            "initial_designs": 4,
            "max_experiments": 10,
            "oracle_extra": "",
            "stopping_extra": "",
        }
        values.update(fields)
        path = tmp_path / name
        path.write_text(textwrap.dedent(BRANIN_CAMPAIGN.format(**values)))
        return path

    return write


@pytest.fixture
def reference_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabServer]:
    """The reference lab over HTTP on 127.0.0.1 (two instruments, 0.05 s per run, its runs in
    ``tmp_path/lab.db``), its token in ``ALLOOP_LAB_TOKEN`` for the robot oracle to read."""
    monkeypatch.setenv("ALLOOP_LAB_TOKEN", LAB_TOKEN)
    with LabServer(Lab(LabStore(tmp_path / "lab.db"), instruments=2, latency_s=0.05), LAB_TOKEN) as server:
        yield server
