"""The ``slurm`` fixture: one local Slurm per test session, shared by pytest-xdist workers.

Slurm allows one controller per node name, so the workers of one session share a cluster: a
file lock guards a count of the workers using it; the first starts it, the last stops it.
Import the fixture into a test module (``from tests.slurm.fixture import slurm``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.slurm.cluster import LocalSlurm, SlurmUnavailable, missing_reason


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unavailable(reason: str) -> None:
    """Skip, except in CI, which installs Slurm: there a cluster that cannot start fails."""
    if os.environ.get("CI"):
        pytest.fail(f"Slurm did not start in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurm]:
    """A running single-node Slurm; ``SLURM_CONF`` points at it while the session lasts.

    Skips, with the reason, where Slurm is not installed or cannot start (fails in CI).
    """
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the session's workers
    cluster = LocalSlurm(base / "slurm")
    users, failed, lock = base / "slurm.users", base / "slurm.failed", base / "slurm.lock"
    with _locked(lock):
        if failed.is_file():
            _unavailable(failed.read_text())
        count = int(users.read_text()) if users.is_file() else 0
        if count == 0:
            cluster.root.mkdir(mode=0o700, exist_ok=True)
            try:
                cluster.start()
            except SlurmUnavailable as exc:
                failed.write_text(str(exc))
                _unavailable(str(exc))
        users.write_text(str(count + 1))
    before = {key: os.environ.get(key) for key in cluster.env}
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with _locked(lock):
            count = int(users.read_text()) - 1
            users.write_text(str(count))
            if count == 0:
                cluster.stop()
