"""The reference lab's FastAPI application: the routes of the lab contract over a :class:`Lab`.

Every route but ``/v1/health`` needs the bearer token (checked by
:class:`~oracles.lab.middleware.Guard` before any handler runs); the wire models, routes and
error codes are those of :mod:`oracles.lab.contract`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from oracles.lab.contract import (
    API_VERSION,
    CAPABILITIES_PATH,
    ESTOP_PATH,
    ESTOP_RELEASE_PATH,
    HEALTH_PATH,
    IDEMPOTENCY_HEADER,
    OPENAPI_PATH,
    REPLAYED_HEADER,
    RUNS_PATH,
    STATUSES,
    TERMINAL,
    Capabilities,
    ErrorCode,
    EstopRequest,
    ProgramInfo,
    RunRequest,
    RunResult,
    RunView,
    Value,
    error_body,
    run_path,
)
from oracles.lab.instruments import Lab
from oracles.lab.middleware import DROP_FILTER, FaultInjection, Guard
from oracles.lab.store import KeyConflict, RunRecord

log = logging.getLogger("alloop.lab")

DEFAULT_MAX_BODY_BYTES = 64 * 1024
_STATUS_PATTERN = f"^({'|'.join(STATUSES)})$"


def _view(run: RunRecord) -> RunView:
    return RunView.model_validate(run, from_attributes=True)


def _problem(status: int, message: str, code: ErrorCode) -> HTTPException:
    """An error answer with the contract's body (``{"detail": {"message", "code"}}``)."""
    return HTTPException(status_code=status, detail=error_body(message, code)["detail"])


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
        logging.getLogger("uvicorn.error").addFilter(DROP_FILTER)

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
        openapi_url=OPENAPI_PATH,
    )
    secured = APIRouter(dependencies=[Depends(bearer)])
    public = APIRouter()

    def run_or_404(run_id: str) -> RunRecord:
        run = lab.store.get(run_id)
        if run is None:
            raise _problem(404, f"no run {run_id}", ErrorCode.NOT_FOUND)
        return run

    @public.get(HEALTH_PATH)
    def health() -> dict[str, Any]:
        """Liveness and e-stop state; needs no token."""
        return {"status": "estopped" if lab.estopped else "ok", "api_version": API_VERSION}

    @secured.get(CAPABILITIES_PATH)
    def capabilities() -> Capabilities:
        """Programs with the JSON Schema of their parameters (safe bounds), the lab's capacity."""
        return Capabilities(
            lab=lab.name,
            api_version=API_VERSION,
            instruments=lab.instruments,
            latency_s=lab.latency_s,
            events=True,
            idempotency_header=IDEMPOTENCY_HEADER,
            max_body_bytes=max_body_bytes,
            default_program=lab.default_program,
            estopped=lab.estopped,
            programs=[
                ProgramInfo(
                    name=p.name,
                    description=p.description,
                    parameters=p.schema(),
                    properties=dict(p.properties),
                )
                for p in lab.programs.values()
            ],
            faults=asdict(lab.faults),
        )

    @secured.post(
        RUNS_PATH,
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
            str | None, Header(alias=IDEMPOTENCY_HEADER, description="One key, one run.")
        ] = None,
    ) -> RunView:
        """Start a run of a program on a candidate's parameters (queued until an instrument is free)."""
        if not idempotency_key or len(idempotency_key) > 255 or not idempotency_key.isprintable():
            raise _problem(
                400,
                "an Idempotency-Key header (1-255 printable characters) is required",
                ErrorCode.IDEMPOTENCY_KEY_REQUIRED,
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
                raise _problem(
                    409, "the lab is e-stopped; no run starts until it is released", ErrorCode.ESTOPPED
                )
            response.status_code = 200
            return _view(replay)
        try:
            run, created = lab.submit(
                idempotency_key, body.campaign, body.candidate_id, program.name, parameters
            )
        except KeyConflict as exc:
            raise _problem(409, str(exc), ErrorCode.IDEMPOTENCY_CONFLICT) from None
        if not created:
            response.status_code = 200
            response.headers[REPLAYED_HEADER] = "true"
        else:
            log.info("run %s queued: campaign %r, candidate %s", run.id, run.campaign, run.candidate_id)
        response.headers["Location"] = run_path(run.id)
        return _view(run)

    @secured.get(RUNS_PATH)
    def list_runs(
        campaign: Annotated[str | None, Query(max_length=200)] = None,
        status: Annotated[str | None, Query(pattern=_STATUS_PATTERN)] = None,
    ) -> list[RunView]:
        """Runs in submission order (for audits), optionally of one campaign and status."""
        return [_view(r) for r in lab.store.runs(campaign, [status] if status else None)]

    @secured.get(run_path("{run_id}"))
    def get_run(run_id: str) -> RunView:
        """A run's status; it only moves forward."""
        return _view(run_or_404(run_id))

    @secured.get(
        run_path("{run_id}", "events"),
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
                        yield f"event: status\ndata: {_view(current).model_dump_json()}\n\n"
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

    @secured.get(
        run_path("{run_id}", "result"), responses={409: {"description": "the run has not succeeded"}}
    )
    def get_result(run_id: str, request: Request) -> RunResult:
        """Values with uncertainty and unit, raw-data link and provenance of a succeeded run."""
        run = run_or_404(run_id)
        if run.status != "succeeded" or run.result is None:
            raise _problem(
                409,
                f"run {run_id} is {run.status}; only succeeded runs have a result",
                ErrorCode.NOT_SUCCEEDED,
            )
        r = run.result
        return RunResult(
            run_id=run.id,
            candidate_id=run.candidate_id,
            program=run.program,
            values={k: Value(**v) for k, v in r["values"].items()},
            cost=r["cost"],
            raw_data=f"{str(request.base_url).rstrip('/')}{run_path(run.id, 'raw')}",
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

    @secured.get(run_path("{run_id}", "raw"))
    def get_raw(run_id: str) -> dict[str, Any]:
        """The instrument's raw record of a succeeded run."""
        run = run_or_404(run_id)
        if run.status != "succeeded" or run.result is None:
            raise _problem(409, f"run {run_id} is {run.status}; it has no raw data", ErrorCode.NOT_SUCCEEDED)
        return {"run_id": run.id, "parameters": dict(run.parameters), "record": dict(run.result)}

    @secured.post(run_path("{run_id}", "cancel"))
    def cancel_run(run_id: str) -> RunView:
        """Cancel a run (idempotent): a queued run is cancelled at once, a running one as soon
        as its instrument stops; a finished run is returned unchanged."""
        run = lab.cancel(run_id)
        if run is None:
            raise _problem(404, f"no run {run_id}", ErrorCode.NOT_FOUND)
        return _view(run)

    @secured.post(ESTOP_PATH)
    def estop(body: EstopRequest | None = None) -> dict[str, Any]:
        """Emergency stop: cancel every queued and running run; refuse new runs until released."""
        cancelled = lab.estop((body or EstopRequest()).reason)
        return {"engaged": True, "cancelled": cancelled}

    @secured.post(ESTOP_RELEASE_PATH)
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

    app.add_middleware(FaultInjection, lab=lab)
    app.add_middleware(Guard, token=token, max_body_bytes=max_body_bytes)
    return app


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
