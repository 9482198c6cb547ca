"""The robot oracle: a campaign's client of a self-driving lab that speaks the alloop contract.

The contract (REST + JSON; the reference server is :mod:`oracles.lab`):

===============================  ==============================================================
``POST /v1/runs``                body ``{campaign, candidate_id, parameters, program?}``, header
                                 ``Idempotency-Key``; a replay returns the same run
``GET /v1/runs/{id}``            status: queued → running → succeeded | failed | cancelled,
                                 failures say whether they are ``retryable``
``GET /v1/runs/{id}/events``     optional: the same as server-sent events
``GET /v1/runs/{id}/result``     values with uncertainty and unit, raw-data link, provenance
``POST /v1/runs/{id}/cancel``    idempotent
``GET /v1/capabilities``         programs, JSON Schema of their parameters and safe bounds
``GET /v1/health``               liveness (the only route without the bearer token)
``POST /v1/estop``               stop everything
===============================  ==============================================================

:class:`RobotOracle` gives the campaign one ``Future`` per candidate, like every oracle; under
it an asyncio loop in a background thread drives an ``httpx`` client. Every request that
fails in transit (connection refused or cut, time-out, 5xx, 429) is retried with capped,
jittered exponential back-off, which is safe because reads and cancels are idempotent and
each ``POST`` carries an idempotency key derived from (campaign name, candidate id): however
often it is sent, and from whichever process, the lab starts one run. The lab's run id is
stored in the ledger (``evaluations.external_id``), so a restarted campaign re-attaches to
runs still in flight (:meth:`RobotOracle.reattach`) instead of submitting them again.

Before anything is sent, each candidate's parameters are checked against the lab's
advertised JSON Schema (types, bounds, choices, linear constraints) and the campaign's own
``safety`` envelope; a candidate outside either fails with :class:`SafetyViolation` and never
reaches the hardware.

The bearer token comes from an environment variable (``token_env``, default
``ALLOOP_LAB_TOKEN``) or a Prefect Secret block (``token_secret_block``); never from the
configuration file, and it is never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loop.candidate import Candidate
from loop.errors import ConfigError, DuplicateCandidateError, describe_validation_error
from oracles.base import Measurement, Oracle, Reattachable, Result
from oracles.errors import EvaluationFailed, EvaluationTimeout, OracleSetupError

if TYPE_CHECKING:
    from loop.config import CampaignConfig

log = logging.getLogger("alloop.robot")

DEFAULT_TOKEN_ENV = "ALLOOP_LAB_TOKEN"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_FIRST_BACKOFF_S = 0.1


class SafetyViolation(EvaluationFailed):
    """A candidate lies outside the lab's advertised bounds or the campaign's safety envelope;
    it was not sent. Never retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class LabUnreachable(EvaluationFailed):
    """Retries ran out (attempts or time) before the lab answered."""


def idempotency_key(campaign: str, candidate_id: str) -> str:
    """The ``Idempotency-Key`` of a candidate's run: the same for every process of a campaign."""
    digest = hashlib.sha256(f"alloop/robot/v1\x00{campaign}\x00{candidate_id}".encode()).hexdigest()
    return f"alloop-{digest[:40]}"


# --- parameter checks -----------------------------------------------------------------------


def constraint_violations(constraints: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> list[str]:
    """Messages for the linear constraints ``{"coefficients": {name: c}, "rhs": r, "sense": s}``
    that ``params`` violate (tolerance 1e-6)."""
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


def schema_violations(
    schema: Mapping[str, Any], params: Mapping[str, Any], who: str = "the lab's"
) -> list[str]:
    """What in ``params`` breaks an advertised parameter schema (the subset of JSON Schema a
    lab uses for parameters: type, minimum/maximum, exclusive bounds, enum/const, required,
    additionalProperties, ``x-constraints``)."""
    problems: list[str] = []
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in params:
            problems.append(f"{name} is missing ({who} program requires it)")
    if schema.get("additionalProperties") is False:
        problems += [
            f"{name} is not a parameter of {who} program" for name in params if name not in properties
        ]
    for name, value in params.items():
        spec = properties.get(name)
        if spec is None:
            continue
        choices = spec.get("enum", [spec["const"]] if "const" in spec else None)
        if choices is not None:
            if value not in choices:
                problems.append(f"{name} = {value!r} is not one of {who} allowed values {choices}")
            continue
        kind = spec.get("type")
        if kind in ("number", "integer"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{name} = {value!r} is not a number")
                continue
            if value != value or value in (float("inf"), float("-inf")):
                problems.append(f"{name} = {value!r} is not finite")
                continue
            if kind == "integer" and float(value) != int(value):
                problems.append(f"{name} = {value!r} is not an integer")
            for key, test, words in (
                ("minimum", lambda v, b: v < b, "below"),
                ("maximum", lambda v, b: v > b, "above"),
                ("exclusiveMinimum", lambda v, b: v <= b, "not above"),
                ("exclusiveMaximum", lambda v, b: v >= b, "not below"),
            ):
                bound = spec.get(key)
                if bound is not None and test(value, bound):
                    problems.append(f"{name} = {value:g} is {words} {who} {key} {bound:g}")
        elif kind == "string" and not isinstance(value, str):
            problems.append(f"{name} = {value!r} is not a string")
    problems += constraint_violations(schema.get("x-constraints", []), params)
    return problems


class SafetyBound(BaseModel):
    """The campaign's own limit on one parameter: a range, or the values it may take."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: float | None = None
    max: float | None = None
    allowed: list[str | float] | None = None

    @model_validator(mode="after")
    def _meaningful(self) -> SafetyBound:
        if self.min is None and self.max is None and self.allowed is None:
            raise ValueError("give 'min', 'max' or 'allowed'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def violations(self, name: str, value: Any) -> list[str]:
        if self.allowed is not None and value not in self.allowed:
            return [f"{name} = {value!r} is not among the safety envelope's allowed values {self.allowed}"]
        if self.min is None and self.max is None:
            return []
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{name} = {value!r} is not a number (the safety envelope bounds it)"]
        if self.min is not None and value < self.min:
            return [f"{name} = {value:g} is below the safety envelope's minimum {self.min:g}"]
        if self.max is not None and value > self.max:
            return [f"{name} = {value:g} is above the safety envelope's maximum {self.max:g}"]
        return []


def envelope_violations(envelope: Mapping[str, SafetyBound], params: Mapping[str, Any]) -> list[str]:
    """What in ``params`` leaves the campaign's safety envelope (a bounded parameter that is
    missing counts as outside)."""
    problems = []
    for name, bound in envelope.items():
        if name not in params:
            problems.append(f"{name} is missing (the safety envelope bounds it)")
        else:
            problems += bound.violations(name, params[name])
    return problems


# --- token ----------------------------------------------------------------------------------


def resolve_token(token_env: str = DEFAULT_TOKEN_ENV, token_secret_block: str | None = None) -> str:
    """The lab's bearer token, from a Prefect Secret block (if named) or the environment.

    Raises:
        OracleSetupError: no token where it was looked for (the message names the place, never
            the value).
    """
    if token_secret_block:
        try:
            from prefect.blocks.system import Secret

            value = Secret.load(token_secret_block).get()
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


# --- the oracle -----------------------------------------------------------------------------


class RobotOracle(Oracle, Reattachable):
    """An oracle backed by a remote self-driving lab (see the module docstring).

    Args:
        url: The lab's base URL (``http://127.0.0.1:8765``).
        token: Its bearer token (see :func:`resolve_token`).
        campaign: The campaign's name: with the candidate id it makes the idempotency key,
            so it must be unique among the campaigns a lab serves.
        properties: Property → unit this oracle reports (the objectives at least).
        program: The lab program to run; default: the lab's default program.
        poll_interval_s: First wait between status polls; it grows by half each poll up to
            ``max_poll_interval_s``.
        max_poll_interval_s: Longest wait between polls.
        timeout_s: Wall-time limit of one run, from submission; past it the run is cancelled
            and fails with :class:`~oracles.errors.EvaluationTimeout`.
        request_timeout_s: Time-out of one HTTP request.
        max_attempts: Attempts of requests that have no run deadline (capabilities, cancel).
            Submissions and polls are retried until the run's deadline.
        max_backoff_s: Longest wait between two attempts.
        safety: The campaign's safety envelope, parameter → :class:`SafetyBound`.
        events: Follow runs through server-sent events when the lab offers them (falls back
            to polling whenever a stream breaks).
        cancel_on_close: Cancel the runs still in flight when the oracle is closed (the
            campaign stopped). A killed process cancels nothing: its successor re-attaches.
        ack_wait_s: How long :meth:`submit` waits for the lab to acknowledge the batch (to
            store the run ids); unacknowledged submissions go on in the background.
        verify: TLS verification: ``True``, ``False`` or a CA bundle path.
    """

    def __init__(
        self,
        url: str,
        token: str,
        campaign: str,
        properties: Mapping[str, str],
        program: str | None = None,
        poll_interval_s: float = 0.5,
        max_poll_interval_s: float = 5.0,
        timeout_s: float = 3600.0,
        request_timeout_s: float = 10.0,
        max_attempts: int = 8,
        max_backoff_s: float = 5.0,
        safety: Mapping[str, SafetyBound | Mapping[str, Any]] | None = None,
        events: bool = True,
        cancel_on_close: bool = True,
        ack_wait_s: float = 30.0,
        verify: bool | str = True,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"oracle.url: {url!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ConfigError(
                "oracle.url: credentials do not go in the URL; the token comes from the environment"
            )
        if not token:
            raise OracleSetupError("the robot oracle needs a bearer token")
        if not properties:
            raise ConfigError("the robot oracle needs at least one property")
        self.url = url.rstrip("/")
        self.__token = token
        self.campaign = campaign
        self.implemented_properties = tuple(properties)
        self.units = dict(properties)
        self.program = program
        self.poll_interval_s, self.max_poll_interval_s = float(poll_interval_s), float(max_poll_interval_s)
        self.timeout_s, self.request_timeout_s = float(timeout_s), float(request_timeout_s)
        self.max_attempts, self.max_backoff_s = int(max_attempts), float(max_backoff_s)
        self.safety = {
            k: v if isinstance(v, SafetyBound) else SafetyBound(**v) for k, v in (safety or {}).items()
        }
        self.events, self.cancel_on_close = bool(events), bool(cancel_on_close)
        self.ack_wait_s, self.verify = float(ack_wait_s), verify
        #: Counters: requests, retries, replays (a POST answered with an existing run), polls...
        self.stats: Counter[str] = Counter()
        self._capabilities: dict[str, Any] | None = None
        self._program_spec: dict[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._inflight: dict[str, str | None] = {}
        self._tasks: set[concurrent.futures.Future[Result]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._jitter = random.Random()

    def __repr__(self) -> str:  # never the token
        return f"RobotOracle(url={self.url!r}, campaign={self.campaign!r}, program={self.program!r})"

    # --- the event loop ---

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise OracleSetupError("the robot oracle is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, daemon=True, name="robot-oracle")
                self._thread.start()
                self._loop = loop
                asyncio.run_coroutine_threadsafe(self._open_client(), loop).result()
            return self._loop

    async def _open_client(self) -> None:
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.__token}", "User-Agent": "alloop-robot/1"},
            timeout=httpx.Timeout(self.request_timeout_s),
            verify=self.verify,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def _call(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run a coroutine on the oracle's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._start()).result(timeout)

    # --- HTTP with retries ---

    async def _send(
        self,
        method: str,
        path: str,
        *,
        deadline: float | None = None,
        attempts: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """A request, retried on transport errors, 5xx, 408 and 429 until ``attempts`` or
        ``deadline`` run out; any other answer is returned to the caller to interpret.

        Raises:
            LabUnreachable: retries ran out.
        """
        assert self._client is not None
        attempt = 0
        while True:
            attempt += 1
            self.stats["requests"] += 1
            retry_after = None
            try:
                response = await self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # refused, cut, timed out, dropped mid-response
                problem = f"{type(exc).__name__}"
            else:
                if response.status_code < 500 and response.status_code not in (408, 429):
                    return response
                problem = f"HTTP {response.status_code}"
                retry_after = _retry_after(response)
            delay = min(self.max_backoff_s, _FIRST_BACKOFF_S * 2 ** (attempt - 1))
            delay *= 0.5 + 0.5 * self._jitter.random()
            if retry_after is not None:
                delay = max(delay, min(retry_after, 4 * self.max_backoff_s))
            if (attempts is not None and attempt >= attempts) or (
                deadline is not None and time.monotonic() + delay > deadline
            ):
                raise LabUnreachable(f"{method} {path}: {problem}; gave up after {attempt} attempt(s)")
            self.stats["retries"] += 1
            log.debug("%s %s: %s; retrying in %.2f s (attempt %d)", method, path, problem, delay, attempt)
            await asyncio.sleep(delay)

    def _refusal(self, response: httpx.Response, what: str) -> Exception:
        """The error for a 4xx answer the lab gave to ``what``."""
        detail = _detail(response)
        code = response.status_code
        if code in (401, 403):
            return OracleSetupError(f"the lab at {self.url} refused the token (HTTP {code}) for {what}")
        if code == 409 and "estop" in detail:
            return OracleSetupError(f"the lab at {self.url} is e-stopped: {detail}")
        if code == 409 and "idempotency" in detail:
            return OracleSetupError(
                f"{what}: {detail}; another campaign named {self.campaign!r} used this lab — "
                "give the campaign a unique name"
            )
        if code == 422:
            return EvaluationFailed(f"the lab refused {what} (HTTP 422): {detail}", retryable=False)
        if code == 413:
            return EvaluationFailed(f"the lab refused {what} as too large (HTTP 413)", retryable=False)
        return OracleSetupError(f"unexpected answer to {what} from {self.url}: HTTP {code}: {detail}")

    # --- capabilities and checks ---

    def capabilities(self, refresh: bool = False) -> dict[str, Any]:
        """The lab's capabilities document (cached).

        Raises:
            OracleSetupError: the lab cannot be reached, refuses the token, or lacks the
                program or a property the campaign needs.
        """
        if self._capabilities is None or refresh:
            self._call(self._fetch_capabilities())
        assert self._capabilities is not None
        return self._capabilities

    async def _fetch_capabilities(self) -> None:
        try:
            response = await self._send("GET", "/v1/capabilities", attempts=self.max_attempts)
        except LabUnreachable as exc:
            raise OracleSetupError(f"cannot reach the lab at {self.url}: {exc}") from None
        if response.status_code != 200:
            raise self._refusal(response, "GET /v1/capabilities")
        capabilities = _json(response)
        programs = {p["name"]: p for p in capabilities.get("programs", [])}
        name = self.program or capabilities.get("default_program")
        if name not in programs:
            raise OracleSetupError(
                f"the lab at {self.url} has no program {name!r}; it offers {sorted(programs)}"
            )
        spec = programs[name]
        missing = [p for p in self.implemented_properties if p not in spec.get("properties", {})]
        if missing:
            raise OracleSetupError(
                f"program {name!r} of the lab at {self.url} does not measure {missing}; "
                f"it measures {sorted(spec.get('properties', {}))}"
            )
        self.capacity = max(1, int(capabilities.get("instruments", 1)))
        self._capabilities, self._program_spec = capabilities, spec

    def check(self, candidate: Candidate) -> list[str]:
        """Why ``candidate`` must not be sent (the lab's bounds, then the campaign's safety
        envelope); empty when it may."""
        self.capabilities()
        assert self._program_spec is not None
        params = dict(candidate.params)
        program = self._program_spec["name"]
        return schema_violations(
            self._program_spec.get("parameters", {}), params, f"lab program {program!r}'s"
        ) + (envelope_violations(self.safety, params))

    def _rejected(self, candidate: Candidate) -> Future[Result] | None:
        problems = self.check(candidate)
        if not problems:
            return None
        message = f"candidate {candidate.id} {dict(candidate.params)} not sent to the lab: " + "; ".join(
            problems
        )
        log.warning("%s", message)
        self.stats["rejected"] += 1
        future: Future[Result] = Future()
        future.set_exception(SafetyViolation(message))
        future.external_id = None  # type: ignore[attr-defined]
        return future

    # --- the oracle contract ---

    def evaluate(self, candidate: Candidate) -> Result:
        return self.submit([candidate])[0].result()

    def submit(
        self, candidates: Sequence[Candidate], on_start: Callable[[Candidate], None] | None = None
    ) -> list[Future[Result]]:
        """Check the batch, send what is safe, and return one future per candidate.

        Returns once the lab has acknowledged every submission (or ``ack_wait_s`` passed), so
        that each future's ``external_id`` is the lab's run id.

        Raises:
            DuplicateCandidateError: the batch names a candidate twice.
            OracleSetupError: the lab cannot be reached or does not fit the campaign (nothing
                was sent then).
        """
        ids = [c.id for c in candidates]
        if len(set(ids)) != len(ids):
            raise DuplicateCandidateError(f"batch names a candidate twice: {ids}")
        loop = self._start()
        self.capabilities()
        futures: list[Future[Result]] = []
        acks: dict[Future[Result], Future[str]] = {}
        for candidate in candidates:
            rejected = self._rejected(candidate)
            if rejected is not None:
                futures.append(rejected)
                continue
            if on_start is not None:
                on_start(candidate)
            ack: Future[str] = Future()
            future = self._schedule(loop, candidate, None, ack)
            acks[future] = ack
            futures.append(future)
        if acks:
            concurrent.futures.wait(list(acks.values()), timeout=self.ack_wait_s)
        for future, ack in acks.items():
            if ack.done() and not ack.cancelled() and ack.exception() is None:
                future.external_id = ack.result()  # type: ignore[attr-defined]
        return futures

    def reattach(self, candidate: Candidate, external_id: str | None) -> Future[Result]:
        """Follow a run an earlier process submitted (by its run id), or, if it never learnt
        the id, submit again with the same idempotency key, which gives the same run."""
        loop = self._start()
        if external_id is None:
            rejected = self._rejected(candidate)
            if rejected is not None:
                return rejected
        else:
            log.info("re-attaching to run %s of candidate %s", external_id, candidate.id)
            self.stats["reattached"] += 1
        return self._schedule(loop, candidate, external_id, None)

    def _schedule(
        self,
        loop: asyncio.AbstractEventLoop,
        candidate: Candidate,
        run_id: str | None,
        ack: Future[str] | None,
    ) -> Future[Result]:
        future = asyncio.run_coroutine_threadsafe(self._run(candidate, run_id, ack), loop)
        future.external_id = run_id  # type: ignore[attr-defined]
        with self._lock:
            self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)
        return future

    def handle(self, future: Future[Result]) -> str | None:
        return getattr(future, "external_id", None)

    # --- one run ---

    async def _run(self, candidate: Candidate, run_id: str | None, ack: Future[str] | None) -> Result:
        deadline = time.monotonic() + self.timeout_s
        self._inflight[candidate.id] = run_id
        try:
            if run_id is None:
                run_id = await self._post(candidate, deadline)
                self._inflight[candidate.id] = run_id
            if ack is not None:
                ack.set_result(run_id)
            run = await self._wait(candidate, run_id, deadline)
            return await self._outcome(candidate, run, deadline)
        except asyncio.CancelledError:
            if run_id is not None and not self._closed:
                asyncio.get_running_loop().create_task(self._cancel(run_id))
            raise
        except LabUnreachable as exc:
            if time.monotonic() < deadline:
                raise
            if run_id is not None:
                await self._cancel(run_id)
            raise EvaluationTimeout(
                f"run {run_id or '(unacknowledged)'} of candidate {candidate.id} did not finish "
                f"within timeout_s = {self.timeout_s:g} s ({exc}); cancelled"
            ) from None
        finally:
            self._inflight.pop(candidate.id, None)
            if ack is not None and not ack.done():
                ack.set_exception(EvaluationFailed("not acknowledged"))

    async def _post(self, candidate: Candidate, deadline: float) -> str:
        body: dict[str, Any] = {
            "campaign": self.campaign,
            "candidate_id": candidate.id,
            "parameters": dict(candidate.params),
        }
        if self.program is not None:
            body["program"] = self.program
        key = idempotency_key(self.campaign, candidate.id)
        self.stats["posts"] += 1
        response = await self._send(
            "POST", "/v1/runs", json=body, headers={"Idempotency-Key": key}, deadline=deadline
        )
        if response.status_code not in (200, 201):
            raise self._refusal(response, f"candidate {candidate.id}")
        run = _json(response)
        if response.status_code == 200:
            self.stats["replays"] += 1
        log.info("candidate %s: lab run %s (%s)", candidate.id, run["id"], run["status"])
        return str(run["id"])

    async def _wait(self, candidate: Candidate, run_id: str, deadline: float) -> dict[str, Any]:
        """The run once it is final: from the event stream while it works, else by polling."""
        use_events = self.events and bool((self._capabilities or {}).get("events"))
        broken_streams = 0
        interval = self.poll_interval_s
        while True:
            if use_events:
                try:
                    run = await self._listen(run_id, deadline)
                except (httpx.HTTPError, ValueError, KeyError, TimeoutError) as exc:
                    log.debug("event stream of %s broke (%s); polling", run_id, type(exc).__name__)
                    run = None
                if run is not None:
                    return run
                broken_streams += 1  # the stream ended before the run did
                use_events = broken_streams < 3
            self.stats["polls"] += 1
            response = await self._send("GET", f"/v1/runs/{run_id}", deadline=deadline)
            if response.status_code == 404:
                raise EvaluationFailed(
                    f"the lab has no run {run_id} (candidate {candidate.id}); it may have lost it",
                    retryable=True,
                )
            if response.status_code != 200:
                raise self._refusal(response, f"GET /v1/runs/{run_id}")
            run = _json(response)
            if run["status"] in TERMINAL:
                return run
            if time.monotonic() + interval > deadline:
                raise LabUnreachable(f"run {run_id} still {run['status']}")
            if not use_events:
                await asyncio.sleep(interval)
                interval = min(interval * 1.5, self.max_poll_interval_s)

    async def _listen(self, run_id: str, deadline: float) -> dict[str, Any] | None:
        """Follow the run's server-sent events; its final status, or ``None`` if the stream
        ended first."""
        assert self._client is not None
        timeout = httpx.Timeout(self.request_timeout_s, read=max(10.0, self.request_timeout_s))
        self.stats["streams"] += 1

        async def follow() -> dict[str, Any] | None:
            assert self._client is not None
            async with self._client.stream("GET", f"/v1/runs/{run_id}/events", timeout=timeout) as response:
                if response.status_code != 200:
                    return None  # the poll that follows interprets the status
                data: list[str] = []
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        run = json.loads("\n".join(data))
                        data = []
                        if run["status"] in TERMINAL:
                            return dict(run)
            return None

        return await asyncio.wait_for(follow(), timeout=max(0.0, deadline - time.monotonic()))

    async def _outcome(self, candidate: Candidate, run: Mapping[str, Any], deadline: float) -> Result:
        run_id, status = run["id"], run["status"]
        if status == "failed":
            retryable = run.get("retryable")
            raise EvaluationFailed(
                f"lab run {run_id} failed: {run.get('error') or 'no reason given'}",
                retryable=True if retryable is None else bool(retryable),
            )
        if status == "cancelled":
            raise EvaluationFailed(
                f"lab run {run_id} was cancelled: {run.get('error') or 'no reason given'}", retryable=True
            )
        response = await self._send("GET", f"/v1/runs/{run_id}/result", deadline=deadline)
        if response.status_code != 200:
            raise self._refusal(response, f"GET /v1/runs/{run_id}/result")
        return self._result(candidate, _json(response))

    def _result(self, candidate: Candidate, payload: Mapping[str, Any]) -> Result:
        if payload.get("candidate_id") != candidate.id:
            raise EvaluationFailed(
                f"the lab answered for candidate {payload.get('candidate_id')!r} "
                f"when asked about {candidate.id}",
                retryable=False,
            )
        try:
            measurements = {
                name: Measurement(
                    float(v["value"]),
                    None if v.get("uncertainty") is None else float(v["uncertainty"]),
                    str(v.get("unit") or self.units.get(name, "")),
                )
                for name, v in payload["values"].items()
            }
            cost = float(payload.get("cost", 1.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise EvaluationFailed(f"malformed result from the lab: {exc!r}", retryable=False) from None
        metadata = {
            "run_id": payload.get("run_id"),
            "program": payload.get("program"),
            "raw_data": payload.get("raw_data"),
            "provenance": payload.get("provenance", {}),
        }
        return Result(candidate.id, measurements, cost=cost, metadata=metadata)

    # --- cancelling and closing ---

    async def _cancel(self, run_id: str) -> bool:
        try:
            response = await self._send("POST", f"/v1/runs/{run_id}/cancel", attempts=3)
        except LabUnreachable as exc:
            log.warning("could not cancel run %s: %s", run_id, exc)
            return False
        ok = response.status_code == 200
        if ok:
            self.stats["cancelled"] += 1
            log.info("cancelled lab run %s", run_id)
        return ok

    def cancel_outstanding(self, timeout: float = 15.0) -> int:
        """Cancel every run this oracle is following (the campaign stopped); returns how many
        cancel requests the lab accepted."""
        if self._loop is None:
            return 0

        async def cancel_all() -> int:
            run_ids = [r for r in self._inflight.values() if r is not None]
            done = await asyncio.gather(*(self._cancel(r) for r in run_ids))
            return sum(done)

        try:
            return int(self._call(cancel_all(), timeout))
        except concurrent.futures.TimeoutError:
            return 0

    def estop(self, reason: str = "requested by the campaign") -> dict[str, Any]:
        """Engage the lab's e-stop (every run stops; the lab refuses new ones until released)."""

        async def post() -> dict[str, Any]:
            response = await self._send(
                "POST", "/v1/estop", json={"reason": reason}, attempts=self.max_attempts
            )
            if response.status_code != 200:
                raise self._refusal(response, "POST /v1/estop")
            return _json(response)

        return dict(self._call(post()))

    def close(self, cancel_runs: bool | None = None) -> None:
        """Cancel the runs in flight (unless ``cancel_on_close`` is off), stop the loop.
        Idempotent."""
        if self._closed or self._loop is None:
            self._closed = True
            return
        if self.cancel_on_close if cancel_runs is None else cancel_runs:
            n = self.cancel_outstanding()
            if n:
                log.warning("campaign stopped: cancelled %d run(s) still in flight", n)
        self._closed = True
        loop = self._loop

        async def shutdown() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            if self._client is not None:
                await self._client.aclose()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        except Exception:  # closing must not raise
            log.debug("robot oracle shutdown was not clean", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if not loop.is_running():
            loop.close()
        self._loop = None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise EvaluationFailed(
            f"the lab answered HTTP {response.status_code} with something that is not JSON", retryable=True
        ) from None
    if not isinstance(data, dict):
        raise EvaluationFailed(f"the lab answered with unexpected JSON: {str(data)[:200]}", retryable=True)
    return data


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return text[:1000]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


# --- configuration --------------------------------------------------------------------------


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
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("credentials do not go in the URL; the token comes from the environment")
        return url


_SECRET_KEYS = ("token", "api_key", "apikey", "password", "secret", "bearer")


def oracle_from_config(options: Mapping[str, Any], config: CampaignConfig) -> RobotOracle:
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
    properties = {o.name: o.unit for o in config.objectives} | parsed.properties
    return RobotOracle(
        url=parsed.url,
        token=token,
        campaign=config.campaign.name,
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
