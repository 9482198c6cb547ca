"""The lab's bearer token: from an environment variable or a Prefect Secret block, never from
the campaign file, and never logged."""

from __future__ import annotations

import os
from typing import Any, cast

from oracles.errors import OracleSetupError

DEFAULT_TOKEN_ENV = "ALLOOP_LAB_TOKEN"


def resolve_token(token_env: str = DEFAULT_TOKEN_ENV, token_secret_block: str | None = None) -> str:
    """The lab's bearer token, from a Prefect Secret block (if named) or the environment.

    Raises:
        OracleSetupError: no token where it was looked for (the message names the place, never
            the value).
    """
    if token_secret_block:
        try:
            from prefect.blocks.system import Secret

            # prefect's async_dispatch types load() as Self | Coroutine; called from sync code it is Self
            secret = cast("Secret[Any]", Secret.load(token_secret_block))
            value = secret.get()
        except Exception as exc:
            raise OracleSetupError(
                f"cannot load the lab token from Prefect Secret block {token_secret_block!r}: "
                f"{type(exc).__name__}"
            ) from None
        token = str(value.get_secret_value() if hasattr(value, "get_secret_value") else value).strip()
        where = f"Prefect Secret block {token_secret_block!r}"
    else:
        token = os.environ.get(token_env, "").strip()
        where = f"environment variable {token_env}"
    if not token:
        raise OracleSetupError(f"no lab token: set {where} (tokens never go in the campaign file)")
    return token
