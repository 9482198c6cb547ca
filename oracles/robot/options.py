"""``[oracle] type = "robot"``: the options of the robot oracle and its plug-in builder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loop.errors import ConfigError, describe_validation_error
from oracles.context import BuildContext
from oracles.robot.credentials import DEFAULT_TOKEN_ENV, resolve_token
from oracles.robot.oracle import RobotOracle
from oracles.robot.safety import SafetyBound
from oracles.robot.transport import url_problem


class RobotOptions(BaseModel):
    """``[oracle]`` options of ``type = "robot"`` (see :class:`RobotOracle`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str
    token_env: str = Field(default=DEFAULT_TOKEN_ENV, min_length=1)
    token_secret_block: str | None = None
    program: str | None = None
    properties: dict[str, str] = {}
    """Extra reported properties (name → unit) besides the objectives."""
    poll_interval_s: float = Field(default=0.5, gt=0)
    max_poll_interval_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=3600.0, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    max_backoff_s: float = Field(default=5.0, gt=0)
    events: bool = True
    cancel_on_close: bool = True
    ack_wait_s: float = Field(default=30.0, ge=0)
    verify: bool | str = True
    safety: dict[str, SafetyBound] = {}

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        problem = url_problem(url)
        if problem:
            raise ValueError(problem)
        return url


_SECRET_KEYS = ("token", "api_key", "apikey", "password", "secret", "bearer")


def oracle_from_config(options: Mapping[str, Any], context: BuildContext) -> RobotOracle:
    """The plug-in builder for ``[oracle] type = "robot"``.

    Raises:
        ConfigError: an option is unknown or invalid, or a token is written in the file.
        OracleSetupError: no token in the environment variable or Secret block named.
    """
    leaked = [k for k in options if k.lower() in _SECRET_KEYS]
    if leaked:
        raise ConfigError(
            f"oracle.{leaked[0]}: secrets never go in the campaign file; put the token in the "
            f"environment variable named by 'token_env' (default {DEFAULT_TOKEN_ENV}) or in a Prefect "
            "Secret block named by 'token_secret_block'"
        )
    try:
        parsed = RobotOptions.model_validate(dict(options))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "oracle")) from None
    token = resolve_token(parsed.token_env, parsed.token_secret_block)
    properties = {o.name: o.unit for o in context.objectives} | parsed.properties
    return RobotOracle(
        url=parsed.url,
        token=token,
        campaign=context.campaign.name,
        properties=properties,
        program=parsed.program,
        poll_interval_s=parsed.poll_interval_s,
        max_poll_interval_s=parsed.max_poll_interval_s,
        timeout_s=parsed.timeout_s,
        request_timeout_s=parsed.request_timeout_s,
        max_attempts=parsed.max_attempts,
        max_backoff_s=parsed.max_backoff_s,
        safety=parsed.safety,
        events=parsed.events,
        cancel_on_close=parsed.cancel_on_close,
        ack_wait_s=parsed.ack_wait_s,
        verify=parsed.verify,
    )
