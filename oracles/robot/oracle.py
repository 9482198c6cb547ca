"""The robot oracle: a campaign's client of a self-driving lab that speaks the alloop lab contract
(:mod:`oracles.lab.contract`; the reference server is :mod:`oracles.lab`).

:class:`RobotOracle` gives the campaign one ``Future`` per candidate, like every oracle; under
it :class:`~oracles.robot.runs.LabRuns` follows each run, through a
:class:`~oracles.robot.transport.LabClient` that drives an ``httpx`` client on an asyncio
loop in a background thread and retries whatever fails in transit. Each ``POST`` carries an
idempotency key derived from (campaign name, candidate id): however often it is sent, and
from whichever process, the lab starts one run. The lab's run id is stored in the ledger
(``evaluations.external_id``), so a restarted campaign re-attaches to runs still in flight
(:meth:`RobotOracle.reattach`) instead of submitting them again. Before anything is sent,
each candidate is checked by :mod:`oracles.robot.safety`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from pydantic import ValidationError

from loop.candidate import Candidate
from loop.errors import ConfigError, DuplicateCandidateError
from oracles.base import Oracle, Reattachable, Result
from oracles.errors import EvaluationFailed, EvaluationTimeout, OracleSetupError
from oracles.lab.contract import (
    CAPABILITIES_PATH,
    ESTOP_PATH,
    Capabilities,
    EstopRequest,
    ProgramInfo,
)
from oracles.robot.runs import LabRuns
from oracles.robot.safety import SafetyBound, SafetyViolation, envelope_violations, schema_violations
from oracles.robot.transport import LabClient, LabUnreachable, json_body, url_problem

log = logging.getLogger("alloop.robot")


class RobotOracle(Oracle, Reattachable):
    """An oracle backed by a remote self-driving lab (see :mod:`oracles.robot`).

    Args:
        url: The lab's base URL (``http://127.0.0.1:8765``).
        token: Its bearer token (see :func:`~oracles.robot.credentials.resolve_token`).
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
        problem = url_problem(url)
        if problem:
            raise ConfigError(f"oracle.url: {problem}")
        if not token:
            raise OracleSetupError("the robot oracle needs a bearer token")
        if not properties:
            raise ConfigError("the robot oracle needs at least one property")
        self.url = url.rstrip("/")
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
        self._http = LabClient(
            self.url,
            token,
            request_timeout_s=self.request_timeout_s,
            max_backoff_s=self.max_backoff_s,
            verify=verify,
            stats=self.stats,
        )
        self._runs = LabRuns(
            self._http,
            campaign,
            self.units,
            program,
            poll_interval_s=self.poll_interval_s,
            max_poll_interval_s=self.max_poll_interval_s,
            request_timeout_s=self.request_timeout_s,
        )
        self._capabilities: dict[str, Any] | None = None
        self._program_spec: ProgramInfo | None = None
        self._inflight: dict[str, str | None] = {}
        self._posting: set[asyncio.Task[str]] = set()  # submissions the lab has not answered
        self._tasks: set[concurrent.futures.Future[Result]] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the token
        return f"RobotOracle(url={self.url!r}, campaign={self.campaign!r}, program={self.program!r})"

    # --- capabilities and checks ---

    def capabilities(self, refresh: bool = False) -> dict[str, Any]:
        """The lab's capabilities document (cached).

        Raises:
            OracleSetupError: the lab cannot be reached, refuses the token, or lacks the
                program or a property the campaign needs.
        """
        if self._capabilities is None or refresh:
            self._http.call(self._fetch_capabilities())
        assert self._capabilities is not None
        return self._capabilities

    async def _fetch_capabilities(self) -> None:
        try:
            response = await self._http.send("GET", CAPABILITIES_PATH, attempts=self.max_attempts)
        except LabUnreachable as exc:
            raise OracleSetupError(f"cannot reach the lab at {self.url}: {exc}") from None
        if response.status_code != 200:
            raise self._runs.refusal(response, f"GET {CAPABILITIES_PATH}")
        document = json_body(response)
        try:
            capabilities = Capabilities.model_validate(document)
        except ValidationError as exc:
            raise OracleSetupError(
                f"the lab at {self.url} published malformed capabilities: {exc.errors()[0]['msg']}"
            ) from None
        programs = {p.name: p for p in capabilities.programs}
        name = self.program or capabilities.default_program
        if name not in programs:
            raise OracleSetupError(
                f"the lab at {self.url} has no program {name!r}; it offers {sorted(programs)}"
            )
        spec = programs[name]
        missing = [p for p in self.implemented_properties if p not in spec.properties]
        if missing:
            raise OracleSetupError(
                f"program {name!r} of the lab at {self.url} does not measure {missing}; "
                f"it measures {sorted(spec.properties)}"
            )
        self.capacity = max(1, capabilities.instruments)
        self._runs.events = self.events and capabilities.events
        self._capabilities, self._program_spec = document, spec

    def check(self, candidate: Candidate) -> list[str]:
        """Why ``candidate`` must not be sent (the lab's bounds, then the campaign's safety
        envelope); empty when it may."""
        self.capabilities()
        assert self._program_spec is not None
        params = dict(candidate.params)
        program = self._program_spec
        return schema_violations(program.parameters, params, f"lab program {program.name!r}'s") + (
            envelope_violations(self.safety, params)
        )

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
        loop = self._http.start()
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
        loop = self._http.start()
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
                post = asyncio.ensure_future(self._runs.post(candidate, deadline))
                self._posting.add(post)
                post.add_done_callback(self._posting.discard)
                run_id = await post
                self._inflight[candidate.id] = run_id
            if ack is not None:
                ack.set_result(run_id)
            run = await self._runs.wait(candidate, run_id, deadline)
            return await self._runs.outcome(candidate, run, deadline)
        except asyncio.CancelledError:
            if run_id is not None and not self._http.closed:
                asyncio.get_running_loop().create_task(self._runs.cancel(run_id))
            raise
        except LabUnreachable as exc:
            if time.monotonic() < deadline:
                raise
            if run_id is not None:
                await self._runs.cancel(run_id)
            raise EvaluationTimeout(
                f"run {run_id or '(unacknowledged)'} of candidate {candidate.id} did not finish "
                f"within timeout_s = {self.timeout_s:g} s ({exc}); cancelled"
            ) from None
        finally:
            self._inflight.pop(candidate.id, None)
            if ack is not None and not ack.done():
                ack.set_exception(EvaluationFailed("not acknowledged"))

    def cancel_outstanding(self, timeout: float = 15.0) -> int:
        """Cancel every run this oracle is following (the campaign stopped); returns how many
        cancel requests the lab accepted.

        Submissions the lab has not answered yet may already have made runs: their answers
        are awaited for up to half of ``timeout`` so those runs are cancelled too. One still
        unanswered then is logged; a restarted campaign re-attaches to it by idempotency key.
        """
        if not self._http.started:
            return 0

        async def cancel_all() -> int:
            if self._posting:
                _, unanswered = await asyncio.wait(set(self._posting), timeout=timeout / 2)
                if unanswered:
                    log.warning(
                        "%d submission(s) still unanswered by the lab; a run it made for them is "
                        "not cancelled",
                        len(unanswered),
                    )
            run_ids = [r for r in self._inflight.values() if r is not None]
            done = await asyncio.gather(*(self._runs.cancel(r) for r in run_ids))
            return sum(done)

        try:
            return int(self._http.call(cancel_all(), timeout))
        except concurrent.futures.TimeoutError:
            return 0

    def estop(self, reason: str = "requested by the campaign") -> dict[str, Any]:
        """Engage the lab's e-stop (every run stops; the lab refuses new ones until released)."""

        async def post() -> dict[str, Any]:
            body = EstopRequest.model_construct(reason=reason).model_dump()
            response = await self._http.send("POST", ESTOP_PATH, json=body, attempts=self.max_attempts)
            if response.status_code != 200:
                raise self._runs.refusal(response, f"POST {ESTOP_PATH}")
            return json_body(response)

        return dict(self._http.call(post()))

    def close(self, cancel_runs: bool | None = None) -> None:
        """Cancel the runs in flight (unless ``cancel_on_close`` is off), stop the loop.
        Idempotent."""
        if self._http.closed or not self._http.started:
            self._http.closed = True
            return
        if self.cancel_on_close if cancel_runs is None else cancel_runs:
            n = self.cancel_outstanding()
            if n:
                log.warning("campaign stopped: cancelled %d run(s) still in flight", n)
        self._http.close()
