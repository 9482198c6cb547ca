"""The robot oracle: a campaign's client of a self-driving lab that speaks the alloop lab contract.

The contract (REST + JSON) is :mod:`oracles.lab.contract`, shared with the reference server
:mod:`oracles.lab`. The client is layered:

* :mod:`oracles.robot.oracle` — :class:`RobotOracle`: futures, batches, re-attachment,
  deadlines, the capabilities check;
* :mod:`oracles.robot.runs` — one run over the contract: submit under an idempotency key
  derived from (campaign name, candidate id), follow by events or polls, read the result,
  cancel;
* :mod:`oracles.robot.transport` — the ``httpx`` client on a background asyncio loop, with
  capped, jittered exponential back-off on connection errors, time-outs, 5xx, 408 and 429;
* :mod:`oracles.robot.safety` — the lab's advertised JSON Schema and the campaign's
  ``safety`` envelope: a candidate outside either fails with :class:`SafetyViolation` and
  never reaches the hardware;
* :mod:`oracles.robot.credentials` — the bearer token, from an environment variable
  (``token_env``, default ``ALLOOP_LAB_TOKEN``) or a Prefect Secret block
  (``token_secret_block``), never from the configuration file, never logged;
* :mod:`oracles.robot.options` — ``[oracle] type = "robot"`` and its plug-in builder.
"""

from __future__ import annotations

from oracles.lab.contract import TERMINAL, constraint_violations
from oracles.robot.credentials import DEFAULT_TOKEN_ENV, resolve_token
from oracles.robot.options import RobotOptions, oracle_from_config
from oracles.robot.oracle import RobotOracle
from oracles.robot.runs import LabRuns, idempotency_key
from oracles.robot.safety import SafetyBound, SafetyViolation, envelope_violations, schema_violations
from oracles.robot.transport import LabClient, LabUnreachable

__all__ = [
    "DEFAULT_TOKEN_ENV",
    "TERMINAL",
    "LabClient",
    "LabRuns",
    "LabUnreachable",
    "RobotOptions",
    "RobotOracle",
    "SafetyBound",
    "SafetyViolation",
    "constraint_violations",
    "envelope_violations",
    "idempotency_key",
    "oracle_from_config",
    "resolve_token",
    "schema_violations",
]
