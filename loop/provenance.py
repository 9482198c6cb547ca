"""Provenance: what produced a row (package versions, host, process, config hash)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from functools import cache
from importlib import metadata
from typing import Any

_PACKAGES = (
    "alloop",
    "torch",
    "gpytorch",
    "botorch",
    "numpy",
    "pandas",
    "sqlalchemy",
    "ase",
    "pymatgen",
    "prefect",
)


@cache
def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a campaign's numbers (those installed)."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def config_hash(config: Any) -> str:
    """SHA-256 (16 hex digits) of a JSON-serialisable configuration, keys sorted."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def process_info() -> dict[str, Any]:
    """Host and process id of the current process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}
