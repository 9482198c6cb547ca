"""One run's life over the lab contract: submitted under an idempotency key, followed (by
server-sent events or polls) until final, its result read, or cancelled.

:class:`LabRuns` is the robot oracle's protocol layer: it speaks :mod:`oracles.lab.contract`
through a :class:`~oracles.robot.transport.LabClient` and turns the lab's answers into
:class:`~oracles.base.Result` objects or the oracle's errors; the oracle above it deals in
futures, batches, deadlines and safety.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import ValidationError

from loop.candidate import Candidate
from oracles.base import Measurement, Result
from oracles.errors import EvaluationFailed
from oracles.lab.contract import IDEMPOTENCY_HEADER, RUNS_PATH, TERMINAL, RunRequest, RunResult, run_path
from oracles.robot.transport import LabClient, LabUnreachable, json_body, refusal

log = logging.getLogger("alloop.robot")


def idempotency_key(campaign: str, candidate_id: str) -> str:
    """The ``Idempotency-Key`` of a candidate's run: the same for every process of a campaign."""
    digest = hashlib.sha256(f"alloop/robot/v1\x00{campaign}\x00{candidate_id}".encode()).hexdigest()
    return f"alloop-{digest[:40]}"


class LabRuns:
    """Submit, follow, read and cancel runs of one campaign on one lab.

    Args:
        http: The client of the lab.
        campaign: The campaign's name (with the candidate id, the idempotency key).
        units: Property → unit, for values the lab reports without a unit.
        program: The lab program to run; ``None``: the lab's default program.
        poll_interval_s: First wait between status polls; it grows by half each poll up to
            ``max_poll_interval_s``.
        max_poll_interval_s: Longest wait between polls.
        request_timeout_s: Time-out of one HTTP request (the event stream reads for at least
            10 s).
    """

    def __init__(
        self,
        http: LabClient,
        campaign: str,
        units: Mapping[str, str],
        program: str | None,
        *,
        poll_interval_s: float,
        max_poll_interval_s: float,
        request_timeout_s: float,
    ) -> None:
        self._http, self.campaign, self.units, self.program = http, campaign, dict(units), program
        self.poll_interval_s, self.max_poll_interval_s = poll_interval_s, max_poll_interval_s
        self.request_timeout_s = request_timeout_s
        #: Follow runs by server-sent events (the oracle sets it once the lab offers them).
        self.events = False

    def refusal(self, response: httpx.Response, what: str) -> Exception:
        """The error for a 4xx answer the lab gave to ``what``."""
        return refusal(response, what, self._http.url, self.campaign)

    async def post(self, candidate: Candidate, deadline: float) -> str:
        """Submit a candidate's run (a replay gets the run its key made before); its run id."""
        request = RunRequest.model_construct(  # the lab validates; the client only sends
            campaign=self.campaign,
            candidate_id=candidate.id,
            parameters=dict(candidate.params),
            program=self.program,
        )
        key = idempotency_key(self.campaign, candidate.id)
        self._http.stats["posts"] += 1
        response = await self._http.send(
            "POST",
            RUNS_PATH,
            json=request.model_dump(exclude_none=True),
            headers={IDEMPOTENCY_HEADER: key},
            deadline=deadline,
        )
        if response.status_code not in (200, 201):
            raise self.refusal(response, f"candidate {candidate.id}")
        run = json_body(response)
        if response.status_code == 200:
            self._http.stats["replays"] += 1
        log.info("candidate %s: lab run %s (%s)", candidate.id, run["id"], run["status"])
        return str(run["id"])

    async def wait(self, candidate: Candidate, run_id: str, deadline: float) -> dict[str, Any]:
        """The run once it is final: from the event stream while it works, else by polling."""
        use_events = self.events
        broken_streams = 0
        interval = self.poll_interval_s
        while True:
            if use_events:
                try:
                    run = await self.listen(run_id, deadline)
                except (httpx.HTTPError, ValueError, KeyError, TimeoutError) as exc:
                    log.debug("event stream of %s broke (%s); polling", run_id, type(exc).__name__)
                    run = None
                if run is not None:
                    return run
                broken_streams += 1  # the stream ended before the run did
                use_events = broken_streams < 3
            self._http.stats["polls"] += 1
            response = await self._http.send("GET", run_path(run_id), deadline=deadline)
            if response.status_code == 404:
                raise EvaluationFailed(
                    f"the lab has no run {run_id} (candidate {candidate.id}); it may have lost it",
                    retryable=True,
                )
            if response.status_code != 200:
                raise self.refusal(response, f"GET {run_path(run_id)}")
            run = json_body(response)
            if run["status"] in TERMINAL:
                return run
            if time.monotonic() + interval > deadline:
                raise LabUnreachable(f"run {run_id} still {run['status']}")
            if not use_events:
                await asyncio.sleep(interval)
                interval = min(interval * 1.5, self.max_poll_interval_s)

    async def listen(self, run_id: str, deadline: float) -> dict[str, Any] | None:
        """Follow the run's server-sent events; its final status, or ``None`` if the stream
        ended first."""
        timeout = httpx.Timeout(self.request_timeout_s, read=max(10.0, self.request_timeout_s))
        self._http.stats["streams"] += 1

        async def follow() -> dict[str, Any] | None:
            async with self._http.stream("GET", run_path(run_id, "events"), timeout=timeout) as response:
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

    async def outcome(self, candidate: Candidate, run: Mapping[str, Any], deadline: float) -> Result:
        """The result of a final run, or the error its failure or cancellation means."""
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
        response = await self._http.send("GET", run_path(run_id, "result"), deadline=deadline)
        if response.status_code != 200:
            raise self.refusal(response, f"GET {run_path(run_id, 'result')}")
        return self.result(candidate, json_body(response))

    def result(self, candidate: Candidate, payload: Mapping[str, Any]) -> Result:
        """A result payload (:class:`~oracles.lab.contract.RunResult`) as the oracle's result."""
        if payload.get("candidate_id") != candidate.id:
            raise EvaluationFailed(
                f"the lab answered for candidate {payload.get('candidate_id')!r} "
                f"when asked about {candidate.id}",
                retryable=False,
            )
        try:
            result = RunResult.model_validate(payload)
        except ValidationError as exc:
            raise EvaluationFailed(f"malformed result from the lab: {exc!r}", retryable=False) from None
        measurements = {
            name: Measurement(v.value, v.uncertainty, v.unit or self.units.get(name, ""))
            for name, v in result.values.items()
        }
        metadata = {
            "run_id": result.run_id,
            "program": result.program,
            "raw_data": result.raw_data,
            "provenance": result.provenance,
        }
        return Result(candidate.id, measurements, cost=result.cost, metadata=metadata)

    # --- cancelling and closing ---

    async def cancel(self, run_id: str) -> bool:
        """Ask the lab to cancel a run; whether it accepted."""
        try:
            response = await self._http.send("POST", run_path(run_id, "cancel"), attempts=3)
        except LabUnreachable as exc:
            log.warning("could not cancel run %s: %s", run_id, exc)
            return False
        ok = response.status_code == 200
        if ok:
            self._http.stats["cancelled"] += 1
            log.info("cancelled lab run %s", run_id)
        return ok
