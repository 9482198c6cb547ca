"""The error tree of alloop.

One small family, as in BoTorch: every error is an :class:`AlloopError`, and most also
derive from the builtin that fits (``ValueError`` for bad input, ``RuntimeError`` for a
state that went wrong) so callers can catch either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound="BaseModel")


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


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem of a pydantic ``ValidationError``, each naming its key.

    The one formatter every configuration section uses, so that a wrong key reads the same
    wherever it is: ``oracle.noise_sd: Input should be greater than or equal to 0``;
    ``acquisition.betta: unknown key``.

    Args:
        exc: The error pydantic raised.
        prefix: The section's dotted name, put before each location (``"oracle"``).
    """
    problems = []
    for error in exc.errors():
        location = ".".join([*([prefix] if prefix else []), *(str(part) for part in error["loc"])])
        unknown = error["type"] in ("extra_forbidden", "unexpected_keyword_argument")  # models, dataclasses
        message = "unknown key" if unknown else error["msg"]
        message = message.removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)


def validate_section(model: type[ModelT], data: Any, prefix: str = "") -> ModelT:
    """``model.model_validate(data)``, with pydantic's error turned into one :class:`ConfigError`."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix)) from None
