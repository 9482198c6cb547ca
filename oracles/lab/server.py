"""The reference self-driving-lab server: the robot contract over HTTP, backed by the emulator.

:func:`create_app` builds the FastAPI application for a :class:`Lab`: ``k`` simulated
instruments working through a queue kept in the lab's own SQLite database
(:class:`~oracles.lab.store.LabStore`), with failure injection (failed runs, dropped
responses, 5xx, slow responses) and an e-stop. :class:`LabServer` runs it with uvicorn in a
background thread on a loopback port, for tests, benchmarks and examples.

The contract (every route but ``/v1/health`` needs ``Authorization: Bearer <token>``):

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

import asyncio
import json
import logging
import math
import random
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.concurrency import run_in_threadpool

from loop.candidate import Candidate
from oracles.errors import EvaluationFailed
from oracles.functions import GroundTruth, branin, thin_film
from oracles.lab.store import TERMINAL, KeyConflict, LabStore, RunRecord
from oracles.robot import constraint_violations
from oracles.simulated import EmulatedLab

log = logging.getLogger("alloop.lab")

API_VERSION = "1"
HEALTH_PATH = "/v1/health"
DEFAULT_MAX_BODY_BYTES = 64 * 1024

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


# --- programs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramParameter:
    """One input of a program with its safe range (numbers) or its allowed values."""

    name: str
    type: Literal["number", "integer", "string"]
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""


@dataclass(frozen=True)
class Program:
    """What one kind of run does: its inputs with safe bounds, what it measures, its truth.

    Args:
        name: The program's name, as clients ask for it.
        description: One line for the capabilities document.
        function: The emulator's ground truth.
        parameters: The inputs, with the bounds the hardware tolerates.
        properties: Measured property → unit.
        noise_sd: Measurement noise per property (same unit).
        constraints: Linear constraints ``{"coefficients": {name: c}, "rhs": r, "sense": s}``
            with sense ``"<="``, ``">="`` or ``"=="`` (tolerance 1e-6).
    """

    name: str
    description: str
    function: GroundTruth
    parameters: tuple[ProgramParameter, ...]
    properties: Mapping[str, str]
    noise_sd: Mapping[str, float] = field(default_factory=dict)
    constraints: tuple[Mapping[str, Any], ...] = ()

    def model(self) -> type[BaseModel]:
        """A pydantic model of the parameters: bounds, integer-ness, choices, no extras."""
        fields: dict[str, Any] = {}
        for p in self.parameters:
            described = {"description": p.unit and f"unit: {p.unit}"} if p.unit else {}
            if p.type == "string":
                fields[p.name] = (Literal[tuple(p.choices)], Field(..., **described))  # type: ignore[misc]
            elif p.type == "integer":
                fields[p.name] = (int, Field(..., ge=p.minimum, le=p.maximum, **described))
            else:
                fields[p.name] = (
                    float,
                    Field(..., ge=p.minimum, le=p.maximum, allow_inf_nan=False, **described),
                )
        return create_model(  # type: ignore[call-overload, no-any-return]
            f"{self.name}_parameters",
            __config__=ConfigDict(extra="forbid", strict=False),
            **fields,
        )

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the parameters, as published in the capabilities."""
        schema = self.model().model_json_schema()
        for p in self.parameters:
            if p.unit:
                schema["properties"][p.name]["x-unit"] = p.unit
        if self.constraints:
            schema["x-constraints"] = [dict(c) for c in self.constraints]
        return schema

    def validate(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical parameters, or :class:`RequestValidationError` listing every problem."""
        try:
            canonical = self.model().model_validate(dict(parameters)).model_dump()
        except ValidationError as exc:
            raise RequestValidationError(
                [
                    {
                        "type": e["type"],
                        "loc": ("body", "parameters", *e["loc"]),
                        "msg": e["msg"],
                        "input": e.get("input"),
                    }
                    for e in exc.errors(include_url=False)
                ]
            ) from None
        problems = [
            {"type": "constraint", "loc": ("body", "parameters"), "msg": message, "input": canonical}
            for message in constraint_violations(self.constraints, canonical)
        ]
        if problems:
            raise RequestValidationError(problems)
        return canonical


PROGRAMS: dict[str, Program] = {
    "branin": Program(
        name="branin",
        description="Branin test function as a measurement (minimum 0.397887).",
        function=branin,
        parameters=(
            ProgramParameter("x1", "number", -5.0, 10.0),
            ProgramParameter("x2", "number", 0.0, 15.0),
        ),
        properties={"y": ""},
        noise_sd={"y": 0.1},
    ),
    "thin_film": Program(
        name="thin_film",
        description="Thin-film deposition and anneal; measures conductivity and roughness.",
        function=thin_film,
        parameters=(
            ProgramParameter("x_cu", "number", 0.0, 1.0),
            ProgramParameter("x_ag", "number", 0.0, 1.0),
            ProgramParameter("x_au", "number", 0.0, 1.0),
            ProgramParameter("anneal_c", "number", 200.0, 600.0, unit="degC"),
            ProgramParameter("anneal_min", "integer", 5, 60, unit="min"),
            ProgramParameter("atmosphere", "string", choices=("air", "N2", "Ar")),
        ),
        properties={"conductivity": "1e5 S/cm", "roughness_nm": "nm"},
        noise_sd={"conductivity": 0.05, "roughness_nm": 0.02},
        constraints=({"coefficients": {"x_cu": 1.0, "x_ag": 1.0, "x_au": 1.0}, "rhs": 1.0, "sense": "=="},),
    ),
}


# --- the lab --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    """Failure injection. Run faults happen on the instrument; HTTP faults on the routes under
    ``/v1/runs`` (not the event stream), one draw per request.

    Args:
        failure_probability: A run fails, retryably (a sample broke, a drift check failed).
        fatal_probability: A run fails for good (retrying the same parameters cannot help).
        error_probability: A 5xx answer: half before the request is handled (503), half
            after it was (500: the work is done, the answer says otherwise).
        drop_probability: The request is handled, then the connection is cut mid-response.
        slow_probability: The request is handled, then its answer waits ``slow_s``.
        slow_s: How long a slow answer waits.
        seed: Seed of the HTTP fault draws (run faults follow the lab's seed).
    """

    failure_probability: float = 0.0
    fatal_probability: float = 0.0
    error_probability: float = 0.0
    drop_probability: float = 0.0
    slow_probability: float = 0.0
    slow_s: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        probabilities = {k: v for k, v in asdict(self).items() if k.endswith("_probability")}
        bad = [k for k, v in probabilities.items() if not 0 <= v <= 1]
        if bad or self.error_probability + self.drop_probability + self.slow_probability > 1:
            raise ValueError(f"fault probabilities must lie in [0, 1] (HTTP ones summing to <= 1): {bad}")
        if self.slow_s < 0:
            raise ValueError("slow_s must be >= 0")


class Lab:
    """A simulated self-driving lab: a queue of runs, ``instruments`` working in parallel.

    Args:
        store: The lab's database.
        instruments: How many runs execute at once (k).
        latency_s: How long one run occupies an instrument.
        faults: Failure injection.
        programs: Available programs (default: :data:`PROGRAMS`).
        default_program: The program of runs that name none.
        seed: Seed of the measurement noise and the run faults.
        name: The lab's name, in provenance.
        journal: Optional file where the emulator notes every experiment it starts and ends.
    """

    def __init__(
        self,
        store: LabStore,
        instruments: int = 4,
        latency_s: float = 0.5,
        faults: Faults | None = None,
        programs: Mapping[str, Program] | None = None,
        default_program: str = "branin",
        seed: int = 0,
        name: str = "alloop reference lab",
        journal: str | Path | None = None,
    ) -> None:
        if instruments < 1 or latency_s < 0:
            raise ValueError("instruments must be >= 1 and latency_s >= 0")
        self.store = store
        self.instruments = int(instruments)
        self.latency_s = float(latency_s)
        self.faults = faults or Faults()
        self.programs = dict(programs or PROGRAMS)
        if default_program not in self.programs:
            raise ValueError(f"unknown default program {default_program!r}; known: {sorted(self.programs)}")
        self.default_program = default_program
        self.seed, self.name = seed, name
        self._emulators = {
            program.name: EmulatedLab(
                program.function,
                properties=program.properties,
                noise_sd=dict(program.noise_sd),
                failure_probability=self.faults.failure_probability,
                capacity=self.instruments,
                seed=seed,
                journal=journal,
            )
            for program in self.programs.values()
        }
        self._fatal_rng = random.Random(f"fatal-{seed}")
        self._fault_rng = random.Random(f"http-{self.faults.seed}")
        self._rng_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._abort: set[str] = set()
        self._running: dict[str, str] = {}
        self._changes = 0
        self.fault_counts: dict[str, int] = dict.fromkeys(("error_before", "error_after", "drop", "slow"), 0)

    # --- life cycle ---

    def start(self) -> None:
        """Fail runs a dead lab process left on an instrument, then start the instruments."""
        if self._threads:
            return
        interrupted = self.store.fail_interrupted()
        if interrupted:
            log.warning(
                "%d run(s) were on an instrument when the lab last stopped: failed (retryable)", interrupted
            )
        self._stop.clear()
        for k in range(self.instruments):
            thread = threading.Thread(
                target=self._instrument, args=(f"instrument-{k}",), daemon=True, name=f"lab-instrument-{k}"
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "lab %r started: %d instrument(s), latency %.3g s, %d run(s) queued",
            self.name,
            self.instruments,
            self.latency_s,
            self.store.counts()["queued"],
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking runs; runs on an instrument finish first. Queued runs stay queued."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout if timeout is not None else self.latency_s + 10.0)
        self._threads = []

    @property
    def estopped(self) -> bool:
        return bool(self.store.get_state("estop", False))

    @property
    def changes(self) -> int:
        """A counter that moves whenever any run changes state (for event streams)."""
        return self._changes

    def _changed(self) -> None:
        self._changes += 1
        with self._wake:
            self._wake.notify_all()

    # --- operations ---

    def submit(
        self, key: str, campaign: str, candidate_id: str, program: str, parameters: Mapping[str, Any]
    ) -> tuple[RunRecord, bool]:
        run, created = self.store.create_run(key, campaign, candidate_id, program, parameters)
        if created:
            self._changed()
        return run, created

    def cancel(self, run_id: str) -> RunRecord | None:
        run = self.store.cancel(run_id)
        if run is not None and run.status == "running":
            self._abort.add(run_id)
        self._changed()
        return run

    def estop(self, reason: str) -> int:
        """Engage the e-stop: every queued and running run is cancelled, no new run starts."""
        self.store.set_state("estop", True)
        self._abort.update(self._running.values())
        cancelled = self.store.cancel_all(f"e-stop: {reason}")
        log.warning("E-STOP engaged (%s): %d run(s) cancelled", reason, cancelled)
        self._changed()
        return cancelled

    def release(self) -> None:
        self.store.set_state("estop", False)
        log.warning("e-stop released")
        self._changed()

    def draw_http_fault(self) -> str | None:
        """Which HTTP fault (if any) this request suffers."""
        f = self.faults
        with self._rng_lock:
            r = self._fault_rng.random()
            half = self._fault_rng.random() < 0.5
        if r < f.error_probability:
            kind = "error_before" if half else "error_after"
        elif r < f.error_probability + f.drop_probability:
            kind = "drop"
        elif r < f.error_probability + f.drop_probability + f.slow_probability:
            kind = "slow"
        else:
            return None
        self.fault_counts[kind] += 1
        return kind

    # --- instruments ---

    def _instrument(self, instrument: str) -> None:
        while not self._stop.is_set():
            if self.estopped:
                self._stop.wait(0.05)
                continue
            try:
                run = self.store.claim_next(instrument)
            except Exception:  # a locked or broken database must not kill the instrument
                log.exception("%s could not claim a run", instrument)
                self._stop.wait(0.5)
                continue
            if run is None:
                with self._wake:
                    self._wake.wait(0.05)
                continue
            self._running[instrument] = run.id
            self._changed()
            try:
                self._execute(instrument, run)
            except Exception as exc:  # never leave a run running because of a bug
                log.exception("%s failed on run %s", instrument, run.id)
                self.store.finish(run.id, "failed", error=f"lab error: {exc!r}", retryable=True)
            finally:
                self._running.pop(instrument, None)
                self._abort.discard(run.id)
                self._changed()

    def _execute(self, instrument: str, run: RunRecord) -> None:
        started = time.perf_counter()
        deadline = started + self.latency_s
        while (left := deadline - time.perf_counter()) > 0:  # the instrument is busy
            if run.id in self._abort:
                break
            time.sleep(min(0.01, left))
        if run.id in self._abort:
            self.store.finish(run.id, "cancelled", error="cancelled while running", retryable=True)
            return
        program = self.programs[run.program]
        candidate = Candidate(run.parameters)  # the emulator's id: a hash of the parameters
        with self._rng_lock:
            fatal = self._fatal_rng.random() < self.faults.fatal_probability
        try:
            result = self._emulators[run.program].evaluate(candidate)
        except EvaluationFailed as exc:
            self.store.finish(run.id, "failed", error=str(exc), retryable=exc.retryable)
            return
        except Exception as exc:  # the ground truth itself is broken: retrying cannot help
            self.store.finish(run.id, "failed", error=f"instrument fault: {exc}", retryable=False)
            return
        if fatal:
            self.store.finish(
                run.id, "failed", error="sample destroyed (injected fatal failure)", retryable=False
            )
            return
        seconds = time.perf_counter() - started
        values = {
            name: {"value": m.value, "uncertainty": m.uncertainty, "unit": m.unit}
            for name, m in result.measurements.items()
        }
        current = self.store.get(run.id)
        self.store.finish(
            run.id,
            "succeeded",
            result={
                "values": values,
                "cost": result.cost,
                "instrument": instrument,
                "seconds": round(seconds, 6),
                "program": program.name,
                "attempt": result.metadata.get("attempt"),
                "started_at": current.started_at if current else None,
            },
        )


# --- API models -----------------------------------------------------------------------------


class RunRequest(BaseModel):
    """Body of ``POST /v1/runs``."""

    model_config = ConfigDict(extra="forbid")
    campaign: str = Field(min_length=1, max_length=200)
    candidate_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")
    parameters: dict[str, Any]
    program: str | None = Field(default=None, max_length=100)


class RunView(BaseModel):
    """A run's status."""

    id: str
    campaign: str
    candidate_id: str
    program: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    retryable: bool | None = Field(None, description="For failed or cancelled runs: may a retry succeed?")
    error: str | None = None
    instrument: str | None = None
    cancel_requested: bool = False
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def of(cls, run: RunRecord) -> RunView:
        return cls(
            id=run.id,
            campaign=run.campaign,
            candidate_id=run.candidate_id,
            program=run.program,
            status=run.status,
            retryable=run.retryable,
            error=run.error,
            instrument=run.instrument,
            cancel_requested=run.cancel_requested,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )


class Value(BaseModel):
    value: float
    uncertainty: float | None = None
    unit: str = ""


class RunResult(BaseModel):
    """What a succeeded run measured."""

    run_id: str
    candidate_id: str
    program: str
    values: dict[str, Value]
    cost: float
    raw_data: str = Field(description="Where the instrument's raw record is (GET, same token).")
    provenance: dict[str, Any]


class EstopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="requested by a client", max_length=500)


def _problem(status: int, detail: str, code: str, headers: Mapping[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail={"message": detail, "code": code}, headers=headers)


# --- ASGI middleware ------------------------------------------------------------------------


async def _send_json(
    send: Callable[[Any], Awaitable[None]],
    status: int,
    body: Mapping[str, Any],
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class _Guard:
    """Bearer-token check (constant time) and request-size limit, before anything else runs:
    a request without the token never reaches a handler, and no body is read for it."""

    def __init__(self, app: ASGIApp, token: str, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["path"] != HEALTH_PATH:
            provided = headers.get(b"authorization")
            if provided is None or not secrets.compare_digest(provided, self._expected):
                error = "invalid_request" if provided is None else "invalid_token"
                await _send_json(
                    send,
                    401,
                    {"detail": {"message": "missing or wrong bearer token", "code": "unauthorized"}},
                    [(b"www-authenticate", f'Bearer realm="alloop-lab", error="{error}"'.encode())],
                )
                return
        declared = headers.get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_body_bytes
        except ValueError:
            await _send_json(send, 400, {"detail": {"message": "bad Content-Length", "code": "bad_request"}})
            return
        if too_big:
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:  # read the body here, within the limit, then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Any:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any) -> None:
        await _send_json(
            send,
            413,
            {
                "detail": {
                    "message": f"request body larger than {self.max_body_bytes} bytes",
                    "code": "too_large",
                }
            },
        )


class _FaultInjection:
    """Injects the lab's HTTP faults into the routes under ``/v1/runs``."""

    def __init__(self, app: ASGIApp, lab: Lab) -> None:
        self.app, self.lab = app, lab

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/runs") or path.endswith("/events"):
            await self.app(scope, receive, send)
            return
        fault = self.lab.draw_http_fault()
        if fault is None:
            await self.app(scope, receive, send)
            return
        log.info("injected fault %s on %s %s", fault, scope.get("method"), path)
        if fault == "error_before":
            await _send_json(
                send, 503, {"detail": {"message": "injected fault: unavailable", "code": "fault"}}
            )
            return
        messages: list[dict[str, Any]] = []

        async def capture(message: dict[str, Any]) -> None:
            messages.append(message)

        await self.app(scope, receive, capture)  # the request is handled in full
        if fault == "error_after":
            await _send_json(
                send, 500, {"detail": {"message": "injected fault: internal error", "code": "fault"}}
            )
            return
        if fault == "slow":
            await asyncio.sleep(self.lab.faults.slow_s)
            for message in messages:
                await send(message)
            return
        # drop: headers go out, half the body, then the connection is cut
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        start = next(m for m in messages if m["type"] == "http.response.start")
        await send(start)
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        # returning now leaves the response incomplete: the server closes the connection


class _QuietInjectedDrops(logging.Filter):
    """Uvicorn reports each injected drop as an error; the lab already logged it as a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


_DROP_FILTER = _QuietInjectedDrops()


# --- the application ------------------------------------------------------------------------


def create_app(
    lab: Lab, token: str, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, manage_lab: bool = True
) -> FastAPI:
    """The lab's FastAPI application.

    Args:
        lab: The lab it serves.
        token: The bearer token every route but ``/v1/health`` requires.
        max_body_bytes: Larger request bodies get 413.
        manage_lab: Start the lab's instruments with the application and stop them with it.

    Raises:
        ValueError: the token is empty or shorter than 8 characters.
    """
    if not token or len(token) < 8:
        raise ValueError("the lab needs a bearer token of at least 8 characters")
    if lab.faults.drop_probability > 0:
        logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lab:
            await run_in_threadpool(lab.start)
        try:
            yield
        finally:
            if manage_lab:
                await run_in_threadpool(lab.stop)

    bearer = HTTPBearer(auto_error=False, description="Bearer token (checked before any handler runs).")
    app = FastAPI(
        title="alloop reference self-driving lab",
        version=API_VERSION,
        description=(
            "Asynchronous, idempotent runs on simulated instruments. Every route but /v1/health "
            "needs 'Authorization: Bearer <token>'. POST /v1/runs needs an Idempotency-Key header."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/v1/openapi.json",
    )
    secured = APIRouter(prefix="/v1", dependencies=[Depends(bearer)])
    public = APIRouter(prefix="/v1")

    def run_or_404(run_id: str) -> RunRecord:
        run = lab.store.get(run_id)
        if run is None:
            raise _problem(404, f"no run {run_id}", "not_found")
        return run

    @public.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and e-stop state; needs no token."""
        return {"status": "estopped" if lab.estopped else "ok", "api_version": API_VERSION}

    @secured.get("/capabilities")
    def capabilities() -> dict[str, Any]:
        """Programs with the JSON Schema of their parameters (safe bounds), the lab's capacity."""
        return {
            "lab": lab.name,
            "api_version": API_VERSION,
            "instruments": lab.instruments,
            "latency_s": lab.latency_s,
            "events": True,
            "idempotency_header": "Idempotency-Key",
            "max_body_bytes": max_body_bytes,
            "default_program": lab.default_program,
            "estopped": lab.estopped,
            "programs": [
                {
                    "name": p.name,
                    "description": p.description,
                    "parameters": p.schema(),
                    "properties": dict(p.properties),
                }
                for p in lab.programs.values()
            ],
            "faults": asdict(lab.faults),
        }

    @secured.post(
        "/runs",
        status_code=201,
        responses={
            200: {"description": "a replay: the run this Idempotency-Key created before"},
            409: {"description": "e-stop engaged, or the key names another request"},
        },
    )
    def create_run(
        body: RunRequest,
        response: Response,
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", description="One key, one run.")
        ] = None,
    ) -> RunView:
        """Start a run of a program on a candidate's parameters (queued until an instrument is free)."""
        if not idempotency_key or len(idempotency_key) > 255 or not idempotency_key.isprintable():
            raise _problem(
                400,
                "an Idempotency-Key header (1-255 printable characters) is required",
                "idempotency_key_required",
            )
        program_name = body.program or lab.default_program
        program = lab.programs.get(program_name)
        if program is None:
            raise RequestValidationError(
                [
                    {
                        "type": "unknown_program",
                        "loc": ("body", "program"),
                        "msg": f"unknown program {program_name!r}; known: {sorted(lab.programs)}",
                        "input": program_name,
                    }
                ]
            )
        parameters = program.validate(body.parameters)
        if lab.estopped:
            replay = lab.store.by_key(idempotency_key)
            if replay is None:
                raise _problem(409, "the lab is e-stopped; no run starts until it is released", "estopped")
            response.status_code = 200
            return RunView.of(replay)
        try:
            run, created = lab.submit(
                idempotency_key, body.campaign, body.candidate_id, program.name, parameters
            )
        except KeyConflict as exc:
            raise _problem(409, str(exc), "idempotency_conflict") from None
        if not created:
            response.status_code = 200
            response.headers["Idempotent-Replayed"] = "true"
        else:
            log.info("run %s queued: campaign %r, candidate %s", run.id, run.campaign, run.candidate_id)
        response.headers["Location"] = f"/v1/runs/{run.id}"
        return RunView.of(run)

    @secured.get("/runs")
    def list_runs(
        campaign: Annotated[str | None, Query(max_length=200)] = None,
        status: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")] = None,
    ) -> list[RunView]:
        """Runs in submission order (for audits), optionally of one campaign and status."""
        return [RunView.of(r) for r in lab.store.runs(campaign, [status] if status else None)]

    @secured.get("/runs/{run_id}")
    def get_run(run_id: str) -> RunView:
        """A run's status; it only moves forward."""
        return RunView.of(run_or_404(run_id))

    @secured.get(
        "/runs/{run_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def run_events(run_id: str, request: Request) -> StreamingResponse:
        """Server-sent events: one ``status`` event per change of the run's status, ending
        with its final status (comment lines keep the stream alive)."""
        run = await run_in_threadpool(run_or_404, run_id)

        async def stream() -> AsyncIterator[str]:
            status, seen, last_sent = None, -1, time.monotonic()
            current: RunRecord | None = run
            while True:
                if lab.changes != seen:
                    seen = lab.changes
                    current = await run_in_threadpool(lab.store.get, run_id)
                    if current is None:
                        return
                    if current.status != status:
                        status, last_sent = current.status, time.monotonic()
                        yield f"event: status\ndata: {RunView.of(current).model_dump_json()}\n\n"
                    if current.status in TERMINAL:
                        return
                if time.monotonic() - last_sent > 2.0:
                    last_sent = time.monotonic()
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.01)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @secured.get("/runs/{run_id}/result", responses={409: {"description": "the run has not succeeded"}})
    def get_result(run_id: str, request: Request) -> RunResult:
        """Values with uncertainty and unit, raw-data link and provenance of a succeeded run."""
        run = run_or_404(run_id)
        if run.status != "succeeded" or run.result is None:
            raise _problem(
                409, f"run {run_id} is {run.status}; only succeeded runs have a result", "not_succeeded"
            )
        r = run.result
        return RunResult(
            run_id=run.id,
            candidate_id=run.candidate_id,
            program=run.program,
            values={k: Value(**v) for k, v in r["values"].items()},
            cost=r["cost"],
            raw_data=f"{str(request.base_url).rstrip('/')}/v1/runs/{run.id}/raw",
            provenance={
                "lab": lab.name,
                "api_version": API_VERSION,
                "run_id": run.id,
                "program": run.program,
                "instrument": r.get("instrument"),
                "created_at": run.created_at,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "seconds": r.get("seconds"),
                "attempt": r.get("attempt"),
                "seed": lab.seed,
                "emulator": "oracles.simulated.EmulatedLab",
            },
        )

    @secured.get("/runs/{run_id}/raw")
    def get_raw(run_id: str) -> dict[str, Any]:
        """The instrument's raw record of a succeeded run."""
        run = run_or_404(run_id)
        if run.status != "succeeded" or run.result is None:
            raise _problem(409, f"run {run_id} is {run.status}; it has no raw data", "not_succeeded")
        return {"run_id": run.id, "parameters": dict(run.parameters), "record": dict(run.result)}

    @secured.post("/runs/{run_id}/cancel")
    def cancel_run(run_id: str) -> RunView:
        """Cancel a run (idempotent): a queued run is cancelled at once, a running one as soon
        as its instrument stops; a finished run is returned unchanged."""
        run = lab.cancel(run_id)
        if run is None:
            raise _problem(404, f"no run {run_id}", "not_found")
        return RunView.of(run)

    @secured.post("/estop")
    def estop(body: EstopRequest | None = None) -> dict[str, Any]:
        """Emergency stop: cancel every queued and running run; refuse new runs until released."""
        cancelled = lab.estop((body or EstopRequest()).reason)
        return {"engaged": True, "cancelled": cancelled}

    @secured.post("/estop/release")
    def estop_release() -> dict[str, Any]:
        """Release the e-stop: new runs are accepted again."""
        lab.release()
        return {"engaged": False}

    app.include_router(public)
    app.include_router(secured)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # the offending input is echoed back, made JSON-safe (NaN and infinities as text)
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    app.add_middleware(_FaultInjection, lab=lab)  # type: ignore[arg-type]
    app.add_middleware(_Guard, token=token, max_body_bytes=max_body_bytes)  # type: ignore[arg-type]
    return app


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --- running it -----------------------------------------------------------------------------


class LabServer:
    """Serve a lab with uvicorn in a background thread (tests, benchmarks, examples).

    Args:
        lab: The lab to serve.
        token: Its bearer token.
        host: Where to listen (loopback by default).
        port: The port; 0 picks a free one (see :attr:`url`).
        max_body_bytes: Larger request bodies get 413.
    """

    def __init__(
        self,
        lab: Lab,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        import uvicorn

        self.lab = lab
        self.app = create_app(lab, token, max_body_bytes=max_body_bytes)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            http="h11",
            lifespan="on",
            timeout_graceful_shutdown=2,
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> LabServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True, name="lab-server"
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the lab server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: open connections close, runs on an instrument finish, queued ones stay."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> LabServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
