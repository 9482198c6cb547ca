"""The error tree of alloop.

One small family, as in BoTorch: every error is an :class:`AlloopError`, and most also
derive from the builtin that fits (``ValueError`` for bad input, ``RuntimeError`` for a
state that went wrong) so callers can catch either.
"""

from __future__ import annotations


class AlloopError(Exception):
    """Base class of every error alloop raises on purpose."""


class ConfigError(AlloopError, ValueError):
    """A campaign configuration is malformed (unknown key, wrong type, bad bound, missing file)."""


class SpaceError(AlloopError, ValueError):
    """A search space or a candidate does not make sense (bad bounds, unknown parameter...)."""


class DuplicateCandidateError(SpaceError):
    """Two candidates carry the same id where ids must be unique."""


class LedgerError(AlloopError, RuntimeError):
    """The ledger refused a state change (wrong transition, unknown campaign...)."""


class CampaignError(AlloopError, RuntimeError):
    """A campaign cannot go on (nothing left to propose, incompatible resumed ledger...)."""
