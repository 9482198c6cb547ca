"""The lab contract: what the robot oracle (client) and the reference lab (server) both speak.

One module for both sides, so that neither defines the wire by convention: the routes, the
idempotency header, the run status and its forward-only order, the request, run, result and
capabilities models, the error body and its codes, and the linear-constraint extension of the
parameter schema. Only pydantic and the standard library: the client imports it without
FastAPI, the server without httpx.

=========================  ===========================================================
``POST /v1/runs``          start a run; ``Idempotency-Key`` header required; a replay
                           returns the same run (200), a new key creates one (201)
``GET /v1/runs/{id}``      status: queued → running → succeeded | failed | cancelled
``GET /v1/runs/{id}/events``  the same as server-sent events, until the run is final
``GET /v1/runs/{id}/result``  values with uncertainty and unit, raw-data link, provenance
``POST /v1/runs/{id}/cancel`` idempotent
``GET /v1/capabilities``   programs, JSON Schema of their parameters with safe bounds
``GET /v1/health``         liveness and e-stop state (no token needed)
``POST /v1/estop``         stop everything now; ``POST /v1/estop/release`` to resume
=========================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "1"
PREFIX = "/v1"
HEALTH_PATH = f"{PREFIX}/health"
CAPABILITIES_PATH = f"{PREFIX}/capabilities"
RUNS_PATH = f"{PREFIX}/runs"
ESTOP_PATH = f"{PREFIX}/estop"
ESTOP_RELEASE_PATH = f"{PREFIX}/estop/release"
OPENAPI_PATH = f"{PREFIX}/openapi.json"

IDEMPOTENCY_HEADER = "Idempotency-Key"
"""Header of ``POST /v1/runs``: one key is one run, for ever."""
REPLAYED_HEADER = "Idempotent-Replayed"
"""Set (``true``) on the answer to a ``POST`` that returned an existing run."""


def run_path(run_id: str, action: Literal["", "events", "result", "raw", "cancel"] = "") -> str:
    """The route of one run (``/v1/runs/{id}``) or of one of its actions (``.../result``)."""
    return f"{RUNS_PATH}/{run_id}" + (f"/{action}" if action else "")


# --- run status -----------------------------------------------------------------------------

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[RunStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
"""Every status, in the order a run moves through them."""
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ALLOWED_FROM: Mapping[str, tuple[str, ...]] = {
    "running": ("queued",),
    "succeeded": ("running",),
    "failed": ("queued", "running"),
    "cancelled": ("queued", "running"),
}
"""Status → the statuses a run may move to it from: status only moves forward."""


# --- errors ---------------------------------------------------------------------------------


class ErrorCode(StrEnum):
    """The ``code`` of an error body: what a client may act on (the message is for people)."""

    NOT_FOUND = "not_found"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    ESTOPPED = "estopped"
    NOT_SUCCEEDED = "not_succeeded"
    UNAUTHORIZED = "unauthorized"
    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    FAULT = "fault"


class Problem(BaseModel):
    """The ``detail`` of an error answer (422 answers carry a list of validation errors)."""

    message: str
    code: str


def error_body(message: str, code: ErrorCode) -> dict[str, Any]:
    """An error answer's JSON body: ``{"detail": {"message", "code"}}``."""
    return {"detail": Problem(message=message, code=code.value).model_dump()}


def error_code(body: Any) -> str | None:
    """The ``code`` of an error answer's JSON body; ``None`` when it has none."""
    detail = body.get("detail") if isinstance(body, Mapping) else None
    code = detail.get("code") if isinstance(detail, Mapping) else None
    return code if isinstance(code, str) else None


# --- requests and answers -------------------------------------------------------------------


class RunRequest(BaseModel):
    """Body of ``POST /v1/runs``."""

    model_config = ConfigDict(extra="forbid")
    campaign: str = Field(min_length=1, max_length=200)
    candidate_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")
    parameters: dict[str, Any]
    program: str | None = Field(default=None, max_length=100)


class RunView(BaseModel):
    """A run's status (built from any object with these attributes)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    campaign: str
    candidate_id: str
    program: str
    status: RunStatus
    retryable: bool | None = Field(None, description="For failed or cancelled runs: may a retry succeed?")
    error: str | None = None
    instrument: str | None = None
    cancel_requested: bool = False
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None


class Value(BaseModel):
    """One measured property: its value with uncertainty (same unit) and unit."""

    value: float
    uncertainty: float | None = None
    unit: str | None = ""


class RunResult(BaseModel):
    """What a succeeded run measured (``GET /v1/runs/{id}/result``)."""

    run_id: str | None = None
    candidate_id: str
    program: str | None = None
    values: dict[str, Value]
    cost: float = 1.0
    raw_data: str | None = Field(None, description="Where the instrument's raw record is (GET, same token).")
    provenance: dict[str, Any] = {}


class EstopRequest(BaseModel):
    """Body of ``POST /v1/estop``."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="requested by a client", max_length=500)


class ProgramInfo(BaseModel):
    """One program in the capabilities: the JSON Schema of its parameters, what it measures."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(
        default={}, description="JSON Schema with safe bounds and linear 'x-constraints'."
    )
    properties: dict[str, str] = Field(default={}, description="Measured property → unit.")


class Capabilities(BaseModel):
    """``GET /v1/capabilities``: what the lab runs and how many runs at once."""

    lab: str = ""
    api_version: str = API_VERSION
    instruments: int = 1
    latency_s: float | None = None
    events: bool = Field(False, description="Whether GET /v1/runs/{id}/events is served.")
    idempotency_header: str = IDEMPOTENCY_HEADER
    max_body_bytes: int | None = None
    default_program: str | None = None
    estopped: bool = False
    programs: list[ProgramInfo] = []
    faults: dict[str, Any] | None = None


# --- the parameter schema's constraint extension --------------------------------------------


def constraint_violations(constraints: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> list[str]:
    """Messages for the linear constraints ``{"coefficients": {name: c}, "rhs": r, "sense": s}``
    (a schema's ``x-constraints``) that ``params`` violate (tolerance 1e-6)."""
    messages = []
    for c in constraints:
        coefficients = c["coefficients"]
        if any(name not in params for name in coefficients):
            continue
        lhs = sum(float(k) * float(params[name]) for name, k in coefficients.items())
        rhs, sense = float(c["rhs"]), c.get("sense", "<=")
        gap = {"<=": lhs - rhs, ">=": rhs - lhs, "==": abs(lhs - rhs)}[sense]
        if gap > 1e-6:
            terms = " + ".join(f"{k:g}*{name}" for name, k in coefficients.items())
            messages.append(f"constraint {terms} {sense} {rhs:g} violated ({lhs:.6g})")
    return messages
