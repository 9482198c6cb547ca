"""Candidates: the vocabulary every package speaks.

A :class:`Candidate` is one point of a search space, immutable, with a stable id: a hash of its
canonical parameters, so the same candidate is recognised wherever and whenever it turns up.
This module needs neither torch nor numpy, so oracles, lab servers and clients can import it
without loading the modelling stack.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

ParamValue: TypeAlias = float | int | str
_ID_DIGITS = 12  # significant digits that make two floats "the same" parameter value


@dataclass(frozen=True)
class Candidate:
    """One point of a search space: canonical parameters and the id derived from them."""

    params: Mapping[str, ParamValue]
    id: str = field(default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        if not self.id:
            object.__setattr__(self, "id", candidate_id(self.params))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(params=d["params"], id=d["id"])


def candidate_id(params: Mapping[str, ParamValue]) -> str:
    """A stable id: 16 hex digits of the SHA-256 of the canonical parameters.

    Numbers are compared to 12 significant digits, so ``0.1 + 0.2`` and ``0.3`` (or ``6`` and
    ``6.0``) give the same id; strings are kept apart from numbers.
    """
    canonical = {
        # ``+ 0.0`` turns -0.0 into 0.0: numerically equal values must share an id.
        name: (f"s:{value}" if isinstance(value, str) else format(float(value) + 0.0, f".{_ID_DIGITS}g"))
        for name, value in params.items()
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
